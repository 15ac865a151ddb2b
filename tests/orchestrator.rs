//! Runs on local agents and the lease-based execution queue: lifecycle, approvals, governance
//! blocks, idempotency, claim races, lease loss and recovery, cancel against complete in both
//! orders, and the sweeper against completions.

mod common;

use std::collections::HashSet;

use common::{TestServer, code};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Setup {
    s: TestServer,
    admin: String,
    agent: String,
    target: String,
}

async fn setup() -> Setup {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (_, admin) = s.add_member(&owner, "admin@alpha.test", "ADMIN").await;
    let (st, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &owner,
            json!({ "name": "worker", "kind": "LOCAL_AGENT" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let target = t["id"].as_str().unwrap().to_owned();
    let (st, k) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "agent", "targetId": target }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let agent = k["key"].as_str().unwrap().to_owned();
    Setup {
        s,
        admin,
        agent,
        target,
    }
}

impl Setup {
    async fn run(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let mut body = body;
        body["targetId"] = json!(self.target);
        self.s.post("/v1/orchestrator/runs", key, body).await
    }

    async fn get_run(&self, id: &str) -> Value {
        let (st, r) = self
            .s
            .get(&format!("/v1/orchestrator/runs/{id}"), &self.s.owner_key)
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        r
    }

    async fn exec(&self, id: &str, action: &str, body: Value) -> (StatusCode, Value) {
        self.s
            .post(
                &format!("/v1/agents/executions/{id}/{action}"),
                &self.agent,
                body,
            )
            .await
    }

    /// Creates a run and returns (run id, execution id).
    async fn dispatched(&self, input: Value) -> (String, String) {
        let (st, r) = self
            .run(&self.s.owner_key.clone(), json!({ "input": input }))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        assert_eq!(r["state"], "dispatched");
        (
            r["id"].as_str().unwrap().to_owned(),
            r["execution"]["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn sweep(&self) -> usize {
        memesh::jobs::recover_leases(&self.s.state).await.unwrap()
    }
}

fn kinds(run: &Value) -> Vec<String> {
    run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_through_the_queue() {
    let t = setup().await;
    let (run, exe) = t
        .dispatched(json!({ "task": "build", "ref": "main" }))
        .await;
    assert!(run.starts_with("run_") && exe.starts_with("exe_"));

    let (st, list) = t.s.get("/v1/agents/executions", &t.agent).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["executions"][0]["id"], exe.as_str());
    assert_eq!(
        list["executions"][0]["input"],
        json!({ "task": "build", "ref": "main" })
    );

    let (st, claimed) = t
        .exec(
            &exe,
            "claim",
            json!({ "claimToken": "tok-1", "workerId": "w1" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["state"], "claimed");
    assert_eq!(
        claimed["leaseExpiresAt"], "2026-03-20T09:00:30.000Z",
        "30 s lease"
    );
    assert_eq!(claimed["heartbeatIntervalSeconds"], 10);
    assert_eq!(t.get_run(&run).await["state"], "running");
    let (_, list) = t.s.get("/v1/agents/executions", &t.agent).await;
    assert_eq!(
        list["executions"],
        json!([]),
        "claimed executions are no longer pending"
    );

    t.s.clock.advance_ms(20_000);
    let (st, hb) = t
        .exec(
            &exe,
            "heartbeat",
            json!({ "claimToken": "tok-1", "progressMessage": "compiling" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        hb["leaseExpiresAt"], "2026-03-20T09:00:50.000Z",
        "lease extended from now"
    );
    assert_eq!(hb["cancelRequested"], false);

    let (st, done) = t
        .exec(
            &exe,
            "complete",
            json!({ "claimToken": "tok-1", "result": { "ok": true } }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{done}");
    let r = t.get_run(&run).await;
    assert_eq!(r["state"], "succeeded");
    assert_eq!(r["result"], json!({ "ok": true }));
    assert_eq!(
        kinds(&r),
        ["created", "dispatched", "claimed", "progress", "completed"]
    );
    assert_eq!(r["events"][3]["detail"]["message"], "compiling");
    assert_eq!(r["control"]["actions"]["cancel"]["allowed"], false);
    let (_, control) =
        t.s.get(
            &format!("/v1/orchestrator/runs/{run}/control"),
            &t.s.owner_key,
        )
        .await;
    assert_eq!(control["actions"]["reconcile"]["allowed"], false);
    let (st, err) =
        t.s.post(
            &format!("/v1/orchestrator/runs/{run}/reconcile"),
            &t.s.owner_key,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "invalid_run_state")
    );

    let (_, runs) =
        t.s.get("/v1/orchestrator/runs?state=succeeded", &t.s.owner_key)
            .await;
    assert_eq!(runs["total"], 1);
    let (_, audit) =
        t.s.get(
            &format!("/v1/audit/logs?resource={run}&limit=100"),
            &t.s.owner_key,
        )
        .await;
    assert_eq!(
        audit["logs"].as_array().unwrap().len(),
        3,
        "every transition audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_return_the_same_run() {
    let t = setup().await;
    let owner = t.s.owner_key.clone();
    let (st, first) = t
        .run(
            &owner,
            json!({ "input": { "n": 1 }, "idempotencyKey": "deploy-42" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, again) = t
        .run(
            &owner,
            json!({ "input": { "n": 1 }, "idempotencyKey": "deploy-42" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
    let (st, err) = t
        .run(
            &owner,
            json!({ "input": { "n": 2 }, "idempotencyKey": "deploy-42" }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "idempotency_key_reused")
    );
    let (_, list) = t.s.get("/v1/agents/executions", &t.agent).await;
    assert_eq!(
        list["executions"].as_array().unwrap().len(),
        1,
        "one execution, not two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_decided_by_someone_else() {
    let t = setup().await;
    let owner = t.s.owner_key.clone();
    let (st, r) = t
        .run(&owner, json!({ "input": {}, "requiresApproval": true }))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(r["state"], "awaiting_approval");
    let run = r["id"].as_str().unwrap().to_owned();
    let approval = r["approvals"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/orchestrator/runs/{run}/approvals/{approval}/approve");
    let (st, err) = t.s.post(&path, &owner, json!({})).await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "self_review_blocked")
    );
    let (st, ok) =
        t.s.post(&path, &t.admin, json!({ "note": "looks fine" }))
            .await;
    assert_eq!(st, StatusCode::OK, "{ok}");
    assert_eq!(ok["state"], "dispatched");
    assert_eq!(ok["approvals"][0]["note"], "looks fine");
    let (st, err) = t.s.post(&path, &t.admin, json!({})).await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "approval_already_decided")
    );

    let (_, r2) = t
        .run(&t.admin, json!({ "input": {}, "requiresApproval": true }))
        .await;
    let reject = format!(
        "/v1/orchestrator/runs/{}/approvals/{}/reject",
        r2["id"].as_str().unwrap(),
        r2["approvals"][0]["id"].as_str().unwrap()
    );
    let (st, rejected) =
        t.s.call(reqwest::Method::POST, &reject, Some(&owner), None)
            .await;
    assert_eq!(st, StatusCode::OK, "no body is fine: {rejected}");
    assert_eq!(rejected["state"], "rejected");
    let (_, list) = t.s.get("/v1/agents/executions", &t.agent).await;
    assert_eq!(
        list["executions"].as_array().unwrap().len(),
        1,
        "only the approved run reached the queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_target_blocks_runs_until_released() {
    let t = setup().await;
    let owner = t.s.owner_key.clone();
    let (_, target) =
        t.s.get(&format!("/v1/agents/dispatch-targets/{}", t.target), &owner)
            .await;
    let tok = target["runtime"]["runtimeUpdatedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, held) =
        t.s.post(
            &format!("/v1/agents/dispatch-targets/{}/hold", t.target),
            &owner,
            json!({ "reason": "maintenance", "expectedRuntimeUpdatedAt": tok }),
        )
        .await;
    let (st, r) = t.run(&owner, json!({ "input": { "x": 1 } })).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        (r["state"].as_str(), r["blockReason"].as_str()),
        (Some("blocked"), Some("MANUAL_HOLD"))
    );
    let run = r["id"].as_str().unwrap().to_owned();
    let (_, gov) =
        t.s.get(
            &format!("/v1/agents/dispatch-targets/{}/governance", t.target),
            &owner,
        )
        .await;
    assert_eq!(gov["affectedWork"][0]["id"], run.as_str());
    let (_, list) = t.s.get("/v1/agents/executions", &t.agent).await;
    assert_eq!(list["executions"], json!([]));
    let (st, err) =
        t.s.delete(&format!("/v1/agents/dispatch-targets/{}", t.target), &owner)
            .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "target_has_active_runs"),
        "active work keeps the target"
    );

    let tok = held["runtime"]["runtimeUpdatedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, _) =
        t.s.post(
            &format!("/v1/agents/dispatch-targets/{}/release", t.target),
            &owner,
            json!({ "expectedRuntimeUpdatedAt": tok }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let r = t.get_run(&run).await;
    assert_eq!(r["state"], "dispatched", "dispatched when the hold lifts");
    assert_eq!(kinds(&r), ["created", "blocked", "dispatched"]);
    let (_, list) = t.s.get("/v1/agents/executions", &t.agent).await;
    assert_eq!(list["executions"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_many_claimants_wins() {
    let t = setup().await;
    for round in 0..10 {
        let (_, exe) = t.dispatched(json!({ "round": round })).await;
        let calls = (0..8).map(|w| {
            let (t, exe) = (&t, exe.clone());
            async move {
                t.exec(
                    &exe,
                    "claim",
                    json!({ "claimToken": format!("r{round}-w{w}") }),
                )
                .await
            }
        });
        let results = futures_util::future::join_all(calls).await;
        let winners: Vec<&Value> = results
            .iter()
            .filter(|(st, _)| *st == StatusCode::OK)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .filter(|(st, _)| *st != StatusCode::OK)
                .all(|(st, b)| *st == StatusCode::CONFLICT && code(b) == "duplicate_claim")
        );
        let token = format!(
            "r{round}-w{}",
            (0..8).find(|w| results[*w].0 == StatusCode::OK).unwrap()
        );
        let (st, again) = t.exec(&exe, "claim", json!({ "claimToken": token })).await;
        assert_eq!(
            st,
            StatusCode::OK,
            "the winner claiming again is idempotent"
        );
        assert_eq!(again["leaseExpiresAt"], winners[0]["leaseExpiresAt"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_recovered_and_the_old_holder_is_told() {
    let t = setup().await;
    let (run, exe) = t.dispatched(json!({})).await;
    t.exec(&exe, "claim", json!({ "claimToken": "old" })).await;
    t.s.clock.advance_ms(29_000);
    assert_eq!(t.sweep().await, 0, "not expired yet");
    t.s.clock.advance_ms(2_000);
    assert_eq!(t.sweep().await, 1);
    let r = t.get_run(&run).await;
    assert_eq!(
        (r["state"].as_str(), r["execution"]["attempt"].as_i64()),
        (Some("dispatched"), Some(2))
    );
    for action in ["heartbeat", "complete", "ack-cancel"] {
        let (st, err) = t.exec(&exe, action, json!({ "claimToken": "old" })).await;
        assert_eq!(
            (st, code(&err)),
            (StatusCode::CONFLICT, "lease_lost"),
            "{action}"
        );
    }
    let (st, _) = t.exec(&exe, "claim", json!({ "claimToken": "new" })).await;
    assert_eq!(st, StatusCode::OK);
    let (st, err) = t
        .exec(&exe, "heartbeat", json!({ "claimToken": "old" }))
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "lease_lost"),
        "reclaimed by another token"
    );

    // Three attempts in all: the third expiry fails the run.
    t.s.clock.advance_ms(31_000);
    t.sweep().await;
    t.exec(&exe, "claim", json!({ "claimToken": "third" }))
        .await;
    t.s.clock.advance_ms(31_000);
    assert_eq!(t.sweep().await, 1);
    let r = t.get_run(&run).await;
    assert_eq!(
        (r["state"].as_str(), r["execution"]["state"].as_str()),
        (Some("failed"), Some("failed"))
    );
    assert_eq!(kinds(&r).last().unwrap(), "lease_expired_final");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_complete_in_both_orders() {
    let t = setup().await;
    let owner = t.s.owner_key.clone();
    // Cancel, then the worker completes anyway: completion wins.
    let (run, exe) = t.dispatched(json!({ "case": 1 })).await;
    t.exec(&exe, "claim", json!({ "claimToken": "a" })).await;
    let (st, c) =
        t.s.post(
            &format!("/v1/orchestrator/runs/{run}/cancel"),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, c["state"].as_str()),
        (StatusCode::OK, Some("cancel_requested"))
    );
    let (_, hb) = t
        .exec(&exe, "heartbeat", json!({ "claimToken": "a" }))
        .await;
    assert_eq!(
        hb["cancelRequested"], true,
        "the worker learns through its heartbeat"
    );
    let (st, _) = t
        .exec(
            &exe,
            "complete",
            json!({ "claimToken": "a", "result": "done" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(t.get_run(&run).await["state"], "succeeded");

    // Cancel, the worker acknowledges; a late completion is refused.
    let (run, exe) = t.dispatched(json!({ "case": 2 })).await;
    t.exec(&exe, "claim", json!({ "claimToken": "b" })).await;
    let (st, err) = t
        .exec(&exe, "ack-cancel", json!({ "claimToken": "b" }))
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "cancel_not_requested")
    );
    t.s.post(
        &format!("/v1/orchestrator/runs/{run}/cancel"),
        &owner,
        json!({}),
    )
    .await;
    let (st, _) = t
        .exec(
            &exe,
            "ack-cancel",
            json!({ "claimToken": "b", "note": "stopped" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(t.get_run(&run).await["state"], "canceled");
    let (st, err) = t.exec(&exe, "complete", json!({ "claimToken": "b" })).await;
    assert_eq!((st, code(&err)), (StatusCode::CONFLICT, "lease_lost"));

    // Complete first; a later cancel is refused.
    let (run, exe) = t.dispatched(json!({ "case": 3 })).await;
    t.exec(&exe, "claim", json!({ "claimToken": "c" })).await;
    t.exec(&exe, "complete", json!({ "claimToken": "c" })).await;
    let (st, err) =
        t.s.post(
            &format!("/v1/orchestrator/runs/{run}/cancel"),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "invalid_run_state")
    );

    // Cancel before any claim: immediate, and the execution leaves the queue.
    let (run, exe) = t.dispatched(json!({ "case": 4 })).await;
    let (_, c) =
        t.s.post(
            &format!("/v1/orchestrator/runs/{run}/cancel"),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(c["state"], "canceled");
    let (st, err) = t.exec(&exe, "claim", json!({ "claimToken": "d" })).await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "execution_not_claimable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_never_overwrites_a_completion() {
    let t = setup().await;
    let mut outcomes = HashSet::new();
    for i in 0..20 {
        let (run, exe) = t.dispatched(json!({ "i": i })).await;
        t.exec(&exe, "claim", json!({ "claimToken": format!("t{i}") }))
            .await;
        t.s.clock.advance_ms(31_000);
        // The worker completes just as its lease runs out, racing the sweeper; each side is
        // given a head start of a few milliseconds in turn, so both orders happen.
        let head_start = |mine: bool| async move {
            if mine {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        let complete = async {
            head_start(i % 2 == 0).await;
            t.exec(&exe, "complete", json!({ "claimToken": format!("t{i}") }))
                .await
        };
        let sweep = async {
            head_start(i % 2 == 1).await;
            t.sweep().await
        };
        let ((st, _), _) = tokio::join!(complete, sweep);
        let r = t.get_run(&run).await;
        if st == StatusCode::OK {
            assert_eq!(
                (r["state"].as_str(), r["execution"]["state"].as_str()),
                (Some("succeeded"), Some("completed")),
                "{r}"
            );
            outcomes.insert("completed");
        } else {
            assert_eq!(st, StatusCode::CONFLICT);
            assert_eq!(
                (r["state"].as_str(), r["execution"]["state"].as_str()),
                (Some("dispatched"), Some("pending")),
                "{r}"
            );
            outcomes.insert("recovered");
        }
        assert_eq!(t.sweep().await, 0, "nothing left to recover");
    }
    assert_eq!(
        outcomes,
        HashSet::from(["completed", "recovered"]),
        "both orders of the race were seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_replays_are_idempotent() {
    let t = setup().await;
    let (_, exe) = t.dispatched(json!({})).await;
    t.exec(&exe, "claim", json!({ "claimToken": "k" })).await;
    let body = json!({ "claimToken": "k", "result": { "v": 1 }, "idempotencyKey": "c-1" });
    let (st, first) = t.exec(&exe, "complete", body.clone()).await;
    assert_eq!(st, StatusCode::OK);
    let (st, replay) = t.exec(&exe, "complete", body).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(replay, first, "the original outcome");
    let (st, err) = t
        .exec(
            &exe,
            "complete",
            json!({ "claimToken": "k", "result": { "v": 2 }, "idempotencyKey": "c-1" }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "idempotency_key_reused")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_for_agent_keys_of_the_target() {
    let t = setup().await;
    let owner = t.s.owner_key.clone();
    let (_, exe) = t.dispatched(json!({})).await;
    let (st, err) = t.s.get("/v1/agents/executions", &owner).await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "agent_key_required")
    );
    let (_, other) =
        t.s.post(
            "/v1/agents/dispatch-targets",
            &owner,
            json!({ "name": "other", "kind": "LOCAL_AGENT" }),
        )
        .await;
    let (_, k) =
        t.s.post(
            "/v1/keys",
            &owner,
            json!({ "name": "other agent", "targetId": other["id"] }),
        )
        .await;
    let other_agent = k["key"].as_str().unwrap();
    let (_, list) = t.s.get("/v1/agents/executions", other_agent).await;
    assert_eq!(list["executions"], json!([]));
    let (st, _) =
        t.s.post(
            &format!("/v1/agents/executions/{exe}/claim"),
            other_agent,
            json!({ "claimToken": "x" }),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "another target's execution does not exist for it"
    );
    let (st, err) = t.exec(&exe, "claim", json!({ "claimToken": "" })).await;
    assert_eq!(
        (st, err["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("claimToken"))
    );
    let (st, _) =
        t.s.post(
            "/v1/orchestrator/runs",
            &t.agent,
            json!({ "targetId": t.target, "input": {} }),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "an agent key does not dispatch work"
    );
    let beta = t.s.create_tenant("beta", "o@beta.test");
    let (st, _) =
        t.s.post(
            "/v1/orchestrator/runs",
            &beta.owner_key,
            json!({ "targetId": t.target, "input": {} }),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// The reason codes of a runtime-health answer.
fn reason_codes(h: &Value) -> Vec<String> {
    h["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET /v1/orchestrator/runtime-health` says what needs doing: approvals waiting (attention),
/// queued work with no live worker (degraded) until the target's agent key polls or a worker
/// holds a lease, a worker gone quiet, governance (holds, incidents), and another tenant's
/// targets are not in it.
#[tokio::test]
async fn runtime_health_tells_what_needs_doing() {
    let t = setup().await;
    let owner = t.s.owner_key.clone();
    let health = |key: String| {
        let s = &t.s;
        async move {
            let (st, h) = s.get("/v1/orchestrator/runtime-health", &key).await;
            assert_eq!(st, StatusCode::OK, "{h}");
            h
        }
    };

    let h = health(owner.clone()).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["reasons"], json!([]));
    let local = &h["localCompatibility"]["targets"][0];
    assert_eq!(local["targetId"], t.target.as_str());
    assert_eq!(
        (
            local["pendingExecutions"].as_i64(),
            local["workerLive"].as_bool()
        ),
        (Some(0), Some(false))
    );
    assert_eq!(h["jobs"]["leaseRecovery"]["late"], false, "{h}");

    // A run waiting for approval: attention.
    let (st, r) = t
        .run(&owner, json!({ "input": {}, "requiresApproval": true }))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let h = health(owner.clone()).await;
    assert_eq!(h["status"], "attention", "{h}");
    assert_eq!(reason_codes(&h), ["approvals_waiting"]);
    assert_eq!(h["attentionBacklog"]["approvalsWaiting"], 1);

    // Approved, it waits in the queue and no worker has ever polled: degraded.
    let path = format!(
        "/v1/orchestrator/runs/{}/approvals/{}/approve",
        r["id"].as_str().unwrap(),
        r["approvals"][0]["id"].as_str().unwrap()
    );
    let (st, _) = t.s.post(&path, &t.admin, json!({})).await;
    assert_eq!(st, StatusCode::OK);
    let h = health(owner.clone()).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(reason_codes(&h), ["queued_work_without_worker"]);
    assert_eq!(h["reasons"][0]["targetId"], t.target.as_str());
    assert_eq!(
        h["localCompatibility"]["targetsWithQueuedWorkAndNoLiveWorker"],
        1
    );
    assert_eq!(h["attentionBacklog"]["approvalsWaiting"], 0);

    // The target's worker polls: live, nothing to do.
    let (st, list) = t.s.get("/v1/agents/executions", &t.agent).await;
    assert_eq!(st, StatusCode::OK);
    let h = health(owner.clone()).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["localCompatibility"]["targets"][0]["workerLive"], true);

    // Three minutes without a poll: the worker is gone and the work waits.
    t.s.clock.advance_ms(3 * 60 * 1000);
    let h = health(owner.clone()).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(reason_codes(&h).contains(&"queued_work_without_worker".to_owned()));

    // A worker claims it and holds the lease: live again, nothing queued.
    let id = list["executions"][0]["id"].as_str().unwrap();
    let (st, _) = t
        .exec(
            id,
            "claim",
            json!({ "claimToken": "tok-1", "workerId": "w1" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let h = health(owner.clone()).await;
    let local = &h["localCompatibility"]["targets"][0];
    assert_eq!(
        (
            local["pendingExecutions"].as_i64(),
            local["claimedExecutions"].as_i64(),
            local["workersHoldingLeases"].as_i64(),
            local["workerLive"].as_bool()
        ),
        (Some(0), Some(1), Some(1), Some(true))
    );
    assert!(!reason_codes(&h).contains(&"queued_work_without_worker".to_owned()));

    // An open incident needs someone: it is listed, with its reason.
    let (_, target) =
        t.s.get(&format!("/v1/agents/dispatch-targets/{}", t.target), &owner)
            .await;
    let tok = target["runtime"]["runtimeUpdatedAt"].clone();
    let (st, _) =
        t.s.post(
            &format!("/v1/agents/dispatch-targets/{}/incident/open", t.target),
            &owner,
            json!({ "reason": "provider outage", "expectedRuntimeUpdatedAt": tok }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let h = health(owner.clone()).await;
    assert!(
        reason_codes(&h).contains(&"incident_open".to_owned()),
        "{h}"
    );
    assert_eq!(
        h["targetGovernance"]["openIncidents"][0]["reason"],
        "provider outage"
    );

    // Another tenant sees its own (empty) house, and a viewer of ours may look.
    let other = t.s.create_tenant("beta", "owner@beta.test");
    let h = health(other.owner_key.clone()).await;
    // (The background jobs are the server's and shown to all; the clock jump above may leave
    // the one-second hold-expiry job late until its next pass.)
    assert!(
        reason_codes(&h).iter().all(|c| c == "background_job_late"),
        "{h}"
    );
    assert_eq!(h["localCompatibility"]["targets"], json!([]));
    assert_eq!(h["targetGovernance"]["openIncidents"], json!([]));
    let (_, viewer) = t.s.add_member(&owner, "viewer@alpha.test", "VIEWER").await;
    let h = health(viewer).await;
    assert_eq!(
        h["localCompatibility"]["targets"][0]["targetId"],
        t.target.as_str()
    );
}
