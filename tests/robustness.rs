//! Nothing one caller or one remote peer does can stall, flood or fool the server: outbound
//! requests are guarded, probes cannot delay lease recovery, held targets' queues wait, writes
//! with an idempotency key happen once, request lists and bodies are bounded, invitations can be
//! revoked, and refused attempts are on the audit record.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{TestServer, card, code, test_settings};
use memesh::state::Settings;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// An agent-card server on loopback; `/big` answers a card padded past 256 KiB.
async fn card_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    let app = Router::new()
        .route(
            "/.well-known/agent-card.json",
            get(move || {
                let b = b.clone();
                async move { axum::Json(card(&format!("{b}/a2a"))) }
            }),
        )
        .route(
            "/big/.well-known/agent-card.json",
            get(|| async {
                let mut c = card("https://agent.example/a2a");
                c["padding"] = json!("x".repeat(300 * 1024));
                axum::Json(c)
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A server that accepts connections and never answers.
async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    base
}

async fn create_target(s: &TestServer, body: Value) -> Value {
    let (st, t) = s
        .post("/v1/agents/dispatch-targets", &s.owner_key, body)
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    t
}

/// A `LOCAL_AGENT` target and an agent key for it.
async fn local_worker(s: &TestServer) -> (Value, String) {
    let t = create_target(s, json!({ "name": "worker", "kind": "LOCAL_AGENT" })).await;
    let (st, agent) = s
        .post(
            "/v1/keys",
            &s.owner_key,
            json!({ "name": "agent", "targetId": t["id"] }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{agent}");
    (t, agent["key"].as_str().unwrap().to_owned())
}

/// Polls `check` until it holds, failing after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_urls_may_not_reach_inside_the_network() {
    let cards = card_server().await;
    let s = TestServer::start_with(Settings {
        allow_private_agent_urls: false,
        ..test_settings()
    })
    .await;
    for url in [
        cards.clone(),
        cards.replace("127.0.0.1", "localhost"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::1]:9/card.json".to_owned(),
        "http://10.0.0.1/card.json".to_owned(),
    ] {
        let (st, err) = s
            .post(
                "/v1/agents/dispatch-targets",
                &s.owner_key,
                json!({ "name": "inside", "kind": "REMOTE_A2A", "cardUrl": url }),
            )
            .await;
        assert_eq!(
            (st, code(&err)),
            (StatusCode::BAD_REQUEST, "agent_card_unreachable"),
            "{url}: {err}"
        );
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("private"),
            "{url}: {err}"
        );
    }
    // A card given inline may name an internal endpoint; probing it is refused all the same.
    let t = create_target(
        &s,
        json!({ "name": "inline", "kind": "REMOTE_A2A", "agentCard": card(&format!("{cards}/a2a")) }),
    )
    .await;
    memesh::jobs::probe_remote_targets(&s.state).await.unwrap();
    let (_, t) = s
        .get(
            &format!("/v1/agents/dispatch-targets/{}", t["id"].as_str().unwrap()),
            &s.owner_key,
        )
        .await;
    let probe = &t["remoteControl"]["probe"];
    assert_eq!(probe["lastOk"], false, "{t}");
    assert!(
        probe["lastError"].as_str().unwrap().contains("private"),
        "{probe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cards_are_read_with_a_size_cap() {
    let cards = card_server().await;
    let s = TestServer::start().await;
    let (st, err) = s
        .post(
            "/v1/agents/dispatch-targets",
            &s.owner_key,
            json!({ "name": "big", "kind": "REMOTE_A2A", "cardUrl": format!("{cards}/big") }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::BAD_REQUEST, "agent_card_unreachable")
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than 262144 bytes"),
        "{err}"
    );
}

/// Probes of agents that never answer run in their own task: leases are recovered on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_recovery_runs_on_time_while_probes_hang() {
    let silent = silent_server().await;
    let s = TestServer::start_with(Settings {
        sweep_interval: Duration::from_millis(50),
        probe_interval: Duration::from_millis(50),
        ..test_settings()
    })
    .await;
    let owner = s.owner_key.clone();
    for i in 0..10 {
        create_target(
            &s,
            json!({ "name": format!("mute {i}"), "kind": "REMOTE_A2A",
                    "agentCard": card(&format!("{silent}/a2a/{i}")) }),
        )
        .await;
    }
    let (local, agent) = local_worker(&s).await;
    let (_, run) = s
        .post(
            "/v1/orchestrator/runs",
            &owner,
            json!({ "targetId": local["id"], "input": {} }),
        )
        .await;
    let exe = run["execution"]["id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .post(
            &format!("/v1/agents/executions/{exe}/claim"),
            &agent,
            json!({ "claimToken": "t" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    s.clock.advance_ms(31_000);
    let run_path = format!("/v1/orchestrator/runs/{}", run["id"].as_str().unwrap());
    eventually(Duration::from_secs(3), "lease recovery", || async {
        s.get(&run_path, &owner).await.1["state"] == "dispatched"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_targets_queue_waits_until_the_hold_lifts() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let t = create_target(&s, json!({ "name": "worker", "kind": "LOCAL_AGENT" })).await;
    let id = t["id"].as_str().unwrap().to_owned();
    let (_, agent) = s
        .post("/v1/keys", &owner, json!({ "name": "a", "targetId": id }))
        .await;
    let agent = agent["key"].as_str().unwrap().to_owned();
    let run = |n: i64| {
        let (s, owner, id) = (&s, owner.clone(), id.clone());
        async move {
            let (st, r) = s
                .post(
                    "/v1/orchestrator/runs",
                    &owner,
                    json!({ "targetId": id, "input": { "n": n } }),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED);
            r
        }
    };
    let early = run(1).await;
    let waiting = run(2).await;
    let exe = |r: &Value| r["execution"]["id"].as_str().unwrap().to_owned();
    let claim = |e: String, token: &'static str| {
        let (s, agent) = (&s, agent.clone());
        async move {
            s.post(
                &format!("/v1/agents/executions/{e}/claim"),
                &agent,
                json!({ "claimToken": token }),
            )
            .await
        }
    };
    assert_eq!(claim(exe(&early), "early").await.0, StatusCode::OK);
    let (st, held) = s
        .post(
            &format!("/v1/agents/dispatch-targets/{id}/hold"),
            &owner,
            json!({ "reason": "maintenance",
                    "expectedRuntimeUpdatedAt": t["runtime"]["runtimeUpdatedAt"] }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    let (st, err) = claim(exe(&waiting), "late").await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "target_blocked"),
        "{err}"
    );
    assert_eq!(
        err["error"]["details"]["blockReasons"],
        json!(["MANUAL_HOLD"])
    );
    let (_, list) = s.get("/v1/agents/executions", &agent).await;
    let listed = &list["executions"][0];
    assert_eq!(
        (listed["id"].as_str(), &listed["blocked"]),
        (Some(exe(&waiting).as_str()), &json!(true))
    );
    let run_path = format!("/v1/orchestrator/runs/{}", waiting["id"].as_str().unwrap());
    let (_, r) = s.get(&run_path, &owner).await;
    assert_eq!(r["execution"]["blocked"], true, "{r}");
    assert!(
        r["recommendedActions"][0]
            .as_str()
            .unwrap()
            .contains("MANUAL_HOLD")
    );
    // Work claimed before the hold may finish.
    let (st, _) = s
        .post(
            &format!("/v1/agents/executions/{}/complete", exe(&early)),
            &agent,
            json!({ "claimToken": "early" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    let (st, _) = s
        .post(
            &format!("/v1/agents/dispatch-targets/{id}/release"),
            &owner,
            json!({ "expectedRuntimeUpdatedAt": held["runtime"]["runtimeUpdatedAt"] }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(claim(exe(&waiting), "late").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_with_its_idempotency_key_happens_once() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let body = json!({ "content": "the deploy key rotates on Fridays", "idempotencyKey": "w-1" });
    let (st, first) = s.post("/v1/memory/write", &k, body.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    let (st, again) = s.post("/v1/memory/write", &k, body).await;
    assert_eq!(st, StatusCode::OK, "a replay answers 200");
    assert_eq!(again, first, "with the first answer");
    let (st, err) = s
        .post(
            "/v1/memory/write",
            &k,
            json!({ "content": "something else", "idempotencyKey": "w-1" }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "idempotency_key_reused")
    );

    let batch = json!({ "memories": [{ "content": "one" }, { "content": "two" }],
                        "transactional": true, "idempotencyKey": "b-1" });
    let (st, first) = s.post("/v1/memory/batch", &k, batch.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, again) = s.post("/v1/memory/batch", &k, batch).await;
    assert_eq!((st, &again), (StatusCode::OK, &first));
    let (_, count) = s.get("/v1/memory/count", &k).await;
    assert_eq!(count["count"], 3, "nothing stored twice");

    // Keys belong to their user: another user's same key is theirs alone.
    let (_, other) = s.add_member(&k, "m@alpha.test", "MEMBER").await;
    let (st, _) = s
        .post(
            "/v1/memory/write",
            &other,
            json!({ "content": "mine", "idempotencyKey": "w-1" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);

    let (st, err) = s
        .post(
            "/v1/memory/batch",
            &k,
            json!({ "memories": [{ "content": "x", "idempotencyKey": "inner" }] }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        err["results"][0]["error"]["details"]["field"],
        "memories[0].idempotencyKey"
    );
    let (st, err) = s
        .post(
            "/v1/memory/write",
            &k,
            json!({ "content": "x", "idempotencyKey": "" }),
        )
        .await;
    assert_eq!(
        (st, err["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("idempotencyKey"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_in_requests_are_bounded() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let many = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
    for (path, body, field) in [
        (
            "/v1/memory/query",
            json!({ "query": "x", "tags": many(20_000) }),
            "tags",
        ),
        (
            "/v1/memory/query",
            json!({ "query": "x", "spaces": many(33) }),
            "spaces",
        ),
        (
            "/v1/memory/query",
            json!({ "query": "x", "sensitivity": vec!["public"; 5] }),
            "sensitivity",
        ),
        (
            "/v1/memory/search",
            json!({ "query": "x", "spaces": many(33) }),
            "spaces",
        ),
        (
            "/v1/memory/context-window",
            json!({ "query": "x", "tokenBudget": 10, "spaces": many(33) }),
            "spaces",
        ),
        (
            "/v1/keys",
            json!({ "name": "k", "scopes": vec!["memory:read"; 33] }),
            "scopes",
        ),
        (
            "/v1/memory/write",
            json!({ "content": "x", "tags": many(33) }),
            "tags",
        ),
    ] {
        let (st, err) = s.post(path, &k, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {field}: {err}");
        assert_eq!(err["error"]["details"]["field"], field, "{path}: {err}");
    }
    let spaces = many(33).join(",");
    let (st, err) = s
        .get(&format!("/v1/memory/search?query=x&spaces={spaces}"), &k)
        .await;
    assert_eq!(
        (st, err["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("spaces"))
    );
}

/// A body announced larger than the limit is refused before any of it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_oversized_body_is_refused_at_once() {
    let s = TestServer::start().await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let key = s.owner_key.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            tcp,
            "POST /v1/memory/write HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\
             content-type: application/json\r\ncontent-length: 100000000\r\n\r\n"
        )
        .unwrap();
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head)
            .expect("an answer without sending the body");
        String::from_utf8_lossy(&head).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(status, "HTTP/1.1 413");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_skips_a_line_longer_than_the_limit() {
    let s = TestServer::start().await;
    let body = format!(
        "{}\n{}\n",
        json!({ "id": "mem_0000000000000000000000000000aaaa", "content": "x".repeat(2 << 20),
                "space": "s", "tags": [], "sensitivity": "public", "createdAt": common::START }),
        json!({ "id": "mem_0000000000000000000000000000bbbb", "content": "kept",
                "space": "s", "tags": [], "sensitivity": "public", "createdAt": common::START }),
    );
    let resp = s
        .client
        .post(s.url("/v1/memory/import"))
        .header("x-api-key", &s.owner_key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(
        (report["imported"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    assert_eq!(report["errors"][0]["line"], 1);
    assert_eq!(report["errors"][0]["error"]["code"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_bodies_stay_out_of_lists_results_are_capped_and_events_page() {
    let s = TestServer::start_with(Settings {
        max_result_bytes: 4096,
        ..test_settings()
    })
    .await;
    let owner = s.owner_key.clone();
    let (t, agent) = local_worker(&s).await;
    let (_, run) = s
        .post(
            "/v1/orchestrator/runs",
            &owner,
            json!({ "targetId": t["id"], "input": { "doc": "y".repeat(10_000) } }),
        )
        .await;
    let (_, list) = s.get("/v1/orchestrator/runs", &owner).await;
    assert!(
        list["runs"][0].get("input").is_none(),
        "lists leave out the input"
    );
    let run_path = format!("/v1/orchestrator/runs/{}", run["id"].as_str().unwrap());
    assert_eq!(
        s.get(&run_path, &owner).await.1["input"]["doc"]
            .as_str()
            .map(str::len),
        Some(10_000)
    );

    let exe = run["execution"]["id"].as_str().unwrap().to_owned();
    let act = |action: &'static str, body: Value| {
        let (s, agent, exe) = (&s, agent.clone(), exe.clone());
        async move {
            s.post(
                &format!("/v1/agents/executions/{exe}/{action}"),
                &agent,
                body,
            )
            .await
        }
    };
    assert_eq!(
        act("claim", json!({ "claimToken": "t" })).await.0,
        StatusCode::OK
    );
    for i in 0..150 {
        let (st, _) = act(
            "heartbeat",
            json!({ "claimToken": "t", "progressMessage": format!("step {i}") }),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, err) = act(
        "heartbeat",
        json!({ "claimToken": "t", "progressMessage": "z".repeat(2001) }),
    )
    .await;
    assert_eq!(
        (st, err["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("progressMessage"))
    );
    let (st, err) = act(
        "complete",
        json!({ "claimToken": "t", "result": { "out": "r".repeat(5000) } }),
    )
    .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_eq!(err["error"]["details"]["field"], "result");

    let (_, first) = s.get(&run_path, &owner).await;
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 100);
    let next = first["eventsNext"].as_i64().expect("more events follow");
    let (_, rest) = s
        .get(
            &format!("{run_path}?eventsAfter={next}&eventsLimit=1000"),
            &owner,
        )
        .await;
    let rest = rest["events"].as_array().unwrap();
    assert!(rest.len() > 50, "{}", rest.len());
    assert_eq!(rest[0]["sequence"].as_i64(), Some(next + 1));
    assert_eq!(first.clone()["eventsNext"], next);
    let (_, last) = s
        .get(
            &format!("{run_path}?eventsAfter={next}&eventsLimit=1000"),
            &owner,
        )
        .await;
    assert_eq!(last["eventsNext"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_are_listed_revoked_and_rechecked_on_accept() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let invite = |by: String, email: &'static str| {
        let s = &s;
        async move {
            let (st, inv) = s
                .post("/v1/team/members/invite", &by, json!({ "email": email }))
                .await;
            assert_eq!(st, StatusCode::CREATED, "{inv}");
            inv
        }
    };
    let accept = |inv: Value| {
        let s = &s;
        async move {
            s.call(
                reqwest::Method::POST,
                inv["acceptPath"].as_str().unwrap(),
                None,
                None,
            )
            .await
        }
    };
    let revoked = invite(owner.clone(), "a@alpha.test").await;
    let (_, list) = s.get("/v1/team/invitations", &owner).await;
    assert_eq!(list["invitations"][0]["email"], "a@alpha.test");
    let id = revoked["invitation"]["id"].as_str().unwrap();
    let (st, _) = s
        .delete(&format!("/v1/team/invitations/{id}"), &owner)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        s.delete(&format!("/v1/team/invitations/{id}"), &owner)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (st, err) = accept(revoked).await;
    assert_eq!((st, code(&err)), (StatusCode::GONE, "invitation_revoked"));
    let (_, list) = s.get("/v1/team/invitations", &owner).await;
    assert_eq!(list["invitations"], json!([]));

    // An inviter demoted below ADMIN no longer vouches for their invitations.
    let (admin_id, admin) = s.add_member(&owner, "admin@alpha.test", "ADMIN").await;
    let by_demoted = invite(admin.clone(), "b@alpha.test").await;
    let by_leaver = invite(admin.clone(), "c@alpha.test").await;
    s.patch(
        &format!("/v1/team/members/{admin_id}/role"),
        &owner,
        json!({ "role": "MEMBER" }),
    )
    .await;
    let (st, err) = accept(by_demoted).await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::GONE, "invitation_revoked"),
        "{err}"
    );
    // Removing a member revokes the invitations they sent.
    let (_, removed) = s
        .delete(&format!("/v1/team/members/{admin_id}"), &owner)
        .await;
    assert_eq!(removed["invitationsRevoked"], 2);
    let (st, err) = accept(by_leaver).await;
    assert_eq!((st, code(&err)), (StatusCode::GONE, "invitation_revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_mutations_and_exports_are_on_the_audit_record() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (viewer_id, viewer) = s.add_member(&owner, "v@alpha.test", "VIEWER").await;
    let (st, _) = s
        .post(
            "/v1/team/members/invite",
            &viewer,
            json!({ "email": "x@alpha.test" }),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(
        s.get("/v1/audit/logs", &viewer).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, k) = s
        .post("/v1/keys", &owner, json!({ "name": "soon gone" }))
        .await;
    let (raw, key_id) = (
        k["key"].as_str().unwrap().to_owned(),
        k["id"].as_str().unwrap().to_owned(),
    );
    s.delete(&format!("/v1/keys/{key_id}"), &owner).await;
    let (st, _) = s
        .post("/v1/memory/write", &raw, json!({ "content": "x" }))
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let resp = s
        .client
        .get(s.url("/v1/memory/stream/export"))
        .header("x-api-key", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.text().await;

    let (_, log) = s.get("/v1/audit/logs?action=auth.denied", &owner).await;
    let denied = log["logs"].as_array().unwrap();
    assert_eq!(denied.len(), 2, "the GET was not a mutation: {log}");
    let revoked = &denied[0];
    assert_eq!(
        (
            revoked["outcome"].as_str(),
            revoked["resourceId"].as_str(),
            revoked["actor"]["keyId"].as_str()
        ),
        (
            Some("denied"),
            Some("POST /v1/memory/write"),
            Some(key_id.as_str())
        )
    );
    assert_eq!(revoked["detail"]["code"], "unauthorized");
    let by_viewer = &denied[1];
    assert_eq!(by_viewer["actor"]["userId"], viewer_id.as_str());
    assert_eq!(by_viewer["resourceId"], "POST /v1/team/members/invite");
    assert_eq!(by_viewer["detail"]["code"], "insufficient_role");
    let (_, exports) = s.get("/v1/audit/logs?action=memory.export", &owner).await;
    assert_eq!(exports["logs"].as_array().unwrap().len(), 1, "{exports}");
}
