//! Plans, usage, quotas and rate limits against the real server: every quota at its edge (one
//! below succeeds, at the limit fails, deleting frees a slot), a transactional batch that would
//! cross a quota stores nothing, 429 with its headers after a burst, keys limited independently,
//! the expensive budget, the per-address limit of unauthenticated endpoints, usage that matches
//! reality after a random mix of creates and deletes, and a plan change by `memesh plan set`
//! taking effect on a running server.

mod common;

use std::path::Path;

use common::{TestServer, code};
use memesh::clock::Clock;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLANS: &str = r#"
[plans.tiny]
memories_per_user = 3
bytes_per_tenant = 400
keys_per_user = 3
targets_per_tenant = 2
seats = 3
runs_waiting = 2
requests_per_second = 0

[plans.metered]
requests_per_second = 1
burst = 3
expensive_per_second = 1
expensive_burst = 1

[plans.small]
keys_per_user = 1
requests_per_second = 1
burst = 1
"#;

/// A server whose plans file is `PLANS`, with the given per-address limit.
async fn server(dir: &Path, public: (u32, u32)) -> TestServer {
    let file = dir.join("plans.toml");
    std::fs::write(&file, PLANS).unwrap();
    let mut settings = common::test_settings();
    settings.plans.file = Some(file);
    settings.plans.public_per_second = public.0;
    settings.plans.public_burst = public.1;
    TestServer::start_with(settings).await
}

/// Puts the test server's first tenant on `plan` (as `memesh plan set` does) and installs it.
async fn put_on(s: &TestServer, plan: &str) {
    let tenant = s.tenant_id();
    let book = s.state.plans.book();
    let now = s.clock.now();
    let plan = plan.to_owned();
    s.state
        .db
        .write(move |tx| memesh::plans::store::assign(tx, &book, &tenant, &plan, now))
        .await
        .unwrap();
    memesh::plans::store::reload(&s.state).await.unwrap();
}

fn quota(e: &Value) -> &str {
    e["error"]["details"]["quota"].as_str().unwrap_or("<none>")
}

async fn usage(s: &TestServer, key: &str) -> Value {
    let (st, u) = s.get("/v1/usage/summary", key).await;
    assert_eq!(st, StatusCode::OK, "{u}");
    u
}

async fn write(s: &TestServer, key: &str, content: &str) -> (StatusCode, Value) {
    s.post("/v1/memory/write", key, json!({ "content": content }))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_quota_holds_at_its_edge() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), (0, 0)).await;
    let owner = s.owner_key.clone();
    put_on(&s, "tiny").await;
    let (st, plan) = s.get("/v1/billing/plan", &owner).await;
    assert_eq!((st, plan["name"].as_str()), (StatusCode::OK, Some("tiny")));
    assert_eq!(plan["limits"]["memoriesPerUser"], 3);
    assert_eq!(plan["limits"]["requestsPerSecond"], Value::Null);

    // Memories per user: 3. A transactional batch that would cross stores nothing; a partial
    // one stores what fits.
    let (st, m1) = write(&s, &owner, "一つ目のメモ").await;
    assert_eq!(st, StatusCode::CREATED, "{m1}");
    let batch = |t: bool| {
        json!({ "transactional": t, "memories": [
        { "content": "two" }, { "content": "three" }, { "content": "four" } ] })
    };
    let (st, e) = s.post("/v1/memory/batch", &owner, batch(true)).await;
    assert_eq!(
        (st, code(&e), quota(&e)),
        (StatusCode::FORBIDDEN, "quota_exceeded", "memories_per_user"),
        "{e}"
    );
    assert_eq!(usage(&s, &owner).await["usage"]["memories"]["used"], 1);
    let (st, r) = s.post("/v1/memory/batch", &owner, batch(false)).await;
    assert_eq!(
        (st, r["created"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{r}"
    );
    assert_eq!(r["results"][2]["status"], 403, "{r}");
    assert_eq!(
        r["results"][2]["error"]["details"]["quota"],
        "memories_per_user"
    );
    assert_eq!(usage(&s, &owner).await["usage"]["memories"]["used"], 3);
    let (st, e) = write(&s, &owner, "one too many").await;
    assert_eq!(
        (st, quota(&e)),
        (StatusCode::FORBIDDEN, "memories_per_user"),
        "{e}"
    );
    let id = m1["id"].as_str().unwrap();
    assert_eq!(
        s.delete(&format!("/v1/memory/{id}"), &owner).await.0,
        StatusCode::OK
    );
    assert_eq!(write(&s, &owner, "fits again").await.0, StatusCode::CREATED);

    // Bytes per tenant (400): another member's memories count against the same workspace.
    let (_, member) = s.add_member(&owner, "member@alpha.test", "MEMBER").await;
    let used = usage(&s, &owner).await["usage"]["bytes"]["used"]
        .as_i64()
        .unwrap();
    let room = usize::try_from(400 - used).unwrap();
    let (st, e) = write(&s, &member, &"x".repeat(room + 1)).await;
    assert_eq!(
        (st, quota(&e)),
        (StatusCode::FORBIDDEN, "bytes_per_tenant"),
        "{e}"
    );
    let (st, big) = write(&s, &member, &"x".repeat(room - 10)).await;
    assert_eq!(st, StatusCode::CREATED, "{big}");

    // Keys per user: 3 (the owner has one already).
    let mut keys = Vec::new();
    for i in 0..2 {
        let (st, k) = s
            .post("/v1/keys", &owner, json!({ "name": format!("k{i}") }))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{k}");
        keys.push(k["id"].as_str().unwrap().to_owned());
    }
    let (st, e) = s.post("/v1/keys", &owner, json!({ "name": "k3" })).await;
    assert_eq!(
        (st, quota(&e)),
        (StatusCode::FORBIDDEN, "keys_per_user"),
        "{e}"
    );
    assert_eq!(
        s.delete(&format!("/v1/keys/{}", keys[0]), &owner).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.post("/v1/keys", &owner, json!({ "name": "k3" })).await.0,
        StatusCode::CREATED
    );

    // Dispatch targets per tenant: 2.
    let target = |name: &str| json!({ "name": name, "kind": "LOCAL_AGENT" });
    let (_, t1) = s
        .post("/v1/agents/dispatch-targets", &owner, target("one"))
        .await;
    let (st, t2) = s
        .post("/v1/agents/dispatch-targets", &owner, target("two"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t2}");
    let (st, e) = s
        .post("/v1/agents/dispatch-targets", &owner, target("three"))
        .await;
    assert_eq!(
        (st, quota(&e)),
        (StatusCode::FORBIDDEN, "targets_per_tenant"),
        "{e}"
    );
    let t2 = t2["id"].as_str().unwrap();
    assert_eq!(
        s.delete(&format!("/v1/agents/dispatch-targets/{t2}"), &owner)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.post("/v1/agents/dispatch-targets", &owner, target("three"))
            .await
            .0,
        StatusCode::CREATED
    );

    // Seats: 3 = the owner, the member, one open invitation. Revoking or letting an
    // invitation expire frees its seat.
    let invite = |e: &str| json!({ "email": e, "role": "VIEWER" });
    let (st, inv) = s
        .post("/v1/team/members/invite", &owner, invite("a@alpha.test"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{inv}");
    let (st, e) = s
        .post("/v1/team/members/invite", &owner, invite("b@alpha.test"))
        .await;
    assert_eq!((st, quota(&e)), (StatusCode::FORBIDDEN, "seats"), "{e}");
    assert_eq!(usage(&s, &owner).await["usage"]["seats"]["used"], 3);
    let inv_id = inv["invitation"]["id"].as_str().unwrap();
    assert_eq!(
        s.delete(&format!("/v1/team/invitations/{inv_id}"), &owner)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.post("/v1/team/members/invite", &owner, invite("b@alpha.test"))
            .await
            .0,
        StatusCode::CREATED
    );
    s.clock.advance_ms(73 * 3_600_000);
    assert_eq!(usage(&s, &owner).await["usage"]["seats"]["used"], 2);
    assert_eq!(
        s.post("/v1/team/members/invite", &owner, invite("c@alpha.test"))
            .await
            .0,
        StatusCode::CREATED
    );

    // Runs waiting: 2 (dispatched, no worker).
    let t1 = t1["id"].as_str().unwrap();
    let run = |n: u32| json!({ "targetId": t1, "input": { "n": n } });
    let (_, r1) = s.post("/v1/orchestrator/runs", &owner, run(1)).await;
    assert_eq!(
        s.post("/v1/orchestrator/runs", &owner, run(2)).await.0,
        StatusCode::CREATED
    );
    let (st, e) = s.post("/v1/orchestrator/runs", &owner, run(3)).await;
    assert_eq!(
        (st, quota(&e)),
        (StatusCode::FORBIDDEN, "runs_waiting"),
        "{e}"
    );
    let r1 = r1["id"].as_str().unwrap();
    let (st, _) = s
        .post(
            &format!("/v1/orchestrator/runs/{r1}/cancel"),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        s.post("/v1/orchestrator/runs", &owner, run(3)).await.0,
        StatusCode::CREATED
    );

    let u = usage(&s, &owner).await;
    assert_eq!(u["plan"], "tiny");
    for (name, used, limit) in [
        ("memories", 3, 3),
        ("apiKeys", 3, 3),
        ("agents", 2, 2),
        ("seats", 3, 3),
        ("runsWaiting", 2, 2),
    ] {
        assert_eq!(
            (
                u["usage"][name]["used"].as_i64(),
                u["usage"][name]["limit"].as_i64()
            ),
            (Some(used), Some(limit)),
            "{name}: {u}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_limit_get_429_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), (1, 2)).await;
    let owner = s.owner_key.clone();
    put_on(&s, "metered").await;
    let (_, k2) = s
        .post("/v1/keys", &owner, json!({ "name": "second" }))
        .await;
    let second = k2["key"].as_str().unwrap().to_owned();
    let (_, k3) = s.post("/v1/keys", &owner, json!({ "name": "third" })).await;
    let third = k3["key"].as_str().unwrap().to_owned();

    // A burst of 3 per key (the key creations above were the owner key's first two).
    let (st, u) = s.get("/v1/usage/summary", &owner).await;
    assert_eq!(st, StatusCode::OK, "{u}");
    assert_eq!(
        (
            u["rateLimit"]["limit"].as_u64(),
            u["rateLimit"]["remaining"].as_u64()
        ),
        (Some(3), Some(0)),
        "{u}"
    );
    let resp = reqwest::Client::new()
        .get(s.url("/v1/billing/plan"))
        .header("x-api-key", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = resp.headers().clone();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "rate_limited");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h["ratelimit-limit"], "3");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert!(h.contains_key("ratelimit-reset"));

    // Another key of the same person has its own budget.
    for _ in 0..3 {
        assert_eq!(s.get("/v1/billing/plan", &second).await.0, StatusCode::OK);
    }
    assert_eq!(
        s.get("/v1/billing/plan", &second).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // The expensive budget (1) is smaller: a second batch search at once is refused while
    // ordinary requests still pass.
    let search = json!({ "queries": ["anything"] });
    assert_eq!(
        s.post("/v1/memory/batch/search", &third, search.clone())
            .await
            .0,
        StatusCode::OK
    );
    let (st, e) = s.post("/v1/memory/batch/search", &third, search).await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expensive"),
        "{e}"
    );
    assert_eq!(s.get("/v1/billing/plan", &third).await.0, StatusCode::OK);

    // Unauthenticated endpoints: per client address (burst 2 here).
    let start = || async {
        reqwest::Client::new()
            .post(s.url("/v1/auth/device"))
            .form(&[("client_id", "memesh-cli")])
            .send()
            .await
            .unwrap()
    };
    assert_eq!(start().await.status(), StatusCode::OK);
    assert_eq!(start().await.status(), StatusCode::OK);
    let refused = start().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
}

/// A seeded random mix of creates and deletes of every limited resource; after it the usage
/// summary says exactly what listing the resources says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_matches_reality_after_a_random_mix() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), (0, 0)).await;
    let owner = s.owner_key.clone();
    let (_, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &owner,
            json!({ "name": "base", "kind": "LOCAL_AGENT" }),
        )
        .await;
    let base = t["id"].as_str().unwrap().to_owned();
    for seed in [7_u64, 42, 1234] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut memories, mut keys, mut targets, mut invitations, mut runs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..40 {
            let pick = |v: &mut Vec<String>, rng: &mut rand::rngs::StdRng| {
                (!v.is_empty()).then(|| v.swap_remove(rng.random_range(0..v.len())))
            };
            // One kind of resource at random: create one, or delete one created before.
            let kind = rng.random_range(0..5);
            let create = rng.random_bool(0.6);
            let (made, path, body): (&mut Vec<String>, String, Value) = match kind {
                0 => (
                    &mut memories,
                    "/v1/memory/write".into(),
                    json!({ "content": format!("seed {seed} memory {i} メモ") }),
                ),
                1 => (
                    &mut keys,
                    "/v1/keys".into(),
                    json!({ "name": format!("k{seed}-{i}") }),
                ),
                2 => (
                    &mut targets,
                    "/v1/agents/dispatch-targets".into(),
                    json!({ "name": format!("t{seed}-{i}"), "kind": "LOCAL_AGENT" }),
                ),
                3 => (
                    &mut invitations,
                    "/v1/team/members/invite".into(),
                    json!({ "email": format!("p{seed}-{i}@alpha.test"), "role": "VIEWER" }),
                ),
                _ => (
                    &mut runs,
                    "/v1/orchestrator/runs".into(),
                    json!({ "targetId": base, "input": i }),
                ),
            };
            if create {
                let (st, r) = s.post(&path, &owner, body).await;
                assert_eq!(st, StatusCode::CREATED, "{path}: {r}");
                let id = r["id"].as_str().or(r["invitation"]["id"].as_str()).unwrap();
                made.push(id.to_owned());
            } else if let Some(id) = pick(made, &mut rng) {
                let st = match kind {
                    0 => s.delete(&format!("/v1/memory/{id}"), &owner).await.0,
                    1 => s.delete(&format!("/v1/keys/{id}"), &owner).await.0,
                    2 => {
                        s.delete(&format!("/v1/agents/dispatch-targets/{id}"), &owner)
                            .await
                            .0
                    }
                    3 => {
                        s.delete(&format!("/v1/team/invitations/{id}"), &owner)
                            .await
                            .0
                    }
                    _ => {
                        let path = format!("/v1/orchestrator/runs/{id}/cancel");
                        s.post(&path, &owner, json!({})).await.0
                    }
                };
                assert_eq!(st, StatusCode::OK, "deleting {id}");
            }
        }
        let u = usage(&s, &owner).await["usage"].clone();
        let (_, count) = s.get("/v1/memory/count", &owner).await;
        let (_, listed_keys) = s.get("/v1/keys", &owner).await;
        let (_, listed_targets) = s.get("/v1/agents/dispatch-targets?limit=200", &owner).await;
        let (_, members) = s.get("/v1/team/members", &owner).await;
        let (_, open) = s.get("/v1/team/invitations", &owner).await;
        let (_, waiting) = s
            .get("/v1/orchestrator/runs?state=dispatched&limit=200", &owner)
            .await;
        assert_eq!(u["memories"]["used"], count["count"], "seed {seed}");
        assert_eq!(
            u["apiKeys"]["used"].as_u64(),
            listed_keys["keys"].as_array().map(|a| a.len() as u64),
            "seed {seed}"
        );
        assert_eq!(u["agents"]["used"], listed_targets["total"], "seed {seed}");
        let seats = members["members"].as_array().unwrap().len()
            + open["invitations"].as_array().unwrap().len();
        assert_eq!(
            u["seats"]["used"].as_u64(),
            Some(seats as u64),
            "seed {seed}"
        );
        assert_eq!(u["runsWaiting"]["used"], waiting["total"], "seed {seed}");
    }
}

/// `memesh plan set` on the running server's database: quotas apply at once, request rates at
/// the server's next plans pass; no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_takes_effect_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), (0, 0)).await;
    let owner = s.owner_key.clone();
    assert_eq!(s.get("/v1/billing/plan", &owner).await.1["name"], "default");
    let data_dir = s.db_path().parent().unwrap().to_owned();
    let plans = dir.path().join("plans.toml");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::bin_path())
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--plans-file")
            .arg(&plans)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let tenant = s.tenant_id();
    cli(&[
        "plan",
        "set",
        "--tenant",
        tenant.as_str(),
        "--plan",
        "small",
    ]);
    // The quota (one key per member; the owner has one) holds at once.
    let (st, e) = s
        .post("/v1/keys", &owner, json!({ "name": "second" }))
        .await;
    assert_eq!(
        (st, quota(&e)),
        (StatusCode::FORBIDDEN, "keys_per_user"),
        "{e}"
    );
    // The rate (1 per second, burst 1) from the next plans pass.
    memesh::plans::store::reload(&s.state).await.unwrap();
    assert_eq!(s.get("/v1/billing/plan", &owner).await.1["name"], "small");
    assert_eq!(
        s.get("/v1/billing/plan", &owner).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let listed = cli(&["plan", "list"]);
    assert!(
        listed.contains("[small]") && listed.contains(tenant.as_str()),
        "{listed}"
    );
    // Back to the default plan (whose request rate these tests leave unlimited).
    cli(&[
        "plan",
        "set",
        "--tenant",
        tenant.as_str(),
        "--plan",
        "default",
    ]);
    memesh::plans::store::reload(&s.state).await.unwrap();
    assert_eq!(
        s.post("/v1/keys", &owner, json!({ "name": "second" }))
            .await
            .0,
        StatusCode::CREATED
    );
}
