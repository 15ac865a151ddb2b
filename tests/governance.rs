//! Dispatch targets and their governance: registration and A2A card validation (including
//! cards made by the official SDK), CAS-guarded holds under concurrency, automatic release by
//! the clock, review and incident epochs, probes against a real HTTP server that starts
//! failing, agent access keys, and tenant isolation.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode as AxumStatus;
use axum::response::IntoResponse;
use axum::routing::get;
use common::{TestServer, card, code};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A real agent-card server on loopback, which can be told to start failing.
async fn card_server() -> (String, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (f, b) = (failing.clone(), base.clone());
    let app = Router::new().route(
        "/.well-known/agent-card.json",
        get(move || {
            let (failing, base) = (f.clone(), b.clone());
            async move {
                if failing.load(Ordering::SeqCst) {
                    AxumStatus::SERVICE_UNAVAILABLE.into_response()
                } else {
                    axum::Json(card(&format!("{base}/a2a"))).into_response()
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, failing)
}

async fn create(s: &TestServer, key: &str, body: Value) -> Value {
    let (st, t) = s.post("/v1/agents/dispatch-targets", key, body).await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    t
}

fn token(t: &Value) -> String {
    t["runtime"]["runtimeUpdatedAt"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn fetch(s: &TestServer, key: &str, id: &str) -> Value {
    let (st, t) = s
        .get(&format!("/v1/agents/dispatch-targets/{id}"), key)
        .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    t
}

async fn act(
    s: &TestServer,
    key: &str,
    id: &str,
    action: &str,
    body: Value,
) -> (StatusCode, Value) {
    s.post(
        &format!("/v1/agents/dispatch-targets/{id}/{action}"),
        key,
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_card_validation() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let local = create(
        &s,
        &k,
        json!({ "name": "builder", "kind": "LOCAL_AGENT", "description": "CI worker" }),
    )
    .await;
    assert!(local["id"].as_str().unwrap().starts_with("tgt_"));
    assert_eq!(local["availability"], "AVAILABLE");
    assert_eq!(local["runtimePolicy"]["effective"], "ALLOW");
    assert_eq!(local["compatibility"]["kind"], "LOCAL_AGENT");

    let inline = create(&s, &k, json!({ "name": "echo", "kind": "REMOTE_A2A", "agentCard": card("https://agent.example/a2a") })).await;
    assert_eq!(inline["compatibility"]["cardShape"], "a2a-1.0");
    assert_eq!(inline["compatibility"]["protocolVersion"], "1.0");
    // The agent can cancel (a core A2A method), and memesh dispatches, follows and cancels.
    assert_eq!(inline["compatibility"]["agentCanCancel"], true);
    assert_eq!(inline["compatibility"]["canCancel"], true);
    assert_eq!(
        (
            inline["remoteControl"]["canDispatch"].as_bool(),
            inline["remoteControl"]["canCancel"].as_bool(),
            inline["remoteControl"]["canRefresh"].as_bool(),
            inline["remoteControl"]["blockedBy"]
                .as_array()
                .map(Vec::len)
        ),
        (Some(true), Some(true), Some(true), Some(0))
    );
    assert_eq!(
        inline["remoteControl"]["endpointUrl"],
        "https://agent.example/a2a"
    );

    let (base, _) = card_server().await;
    let fetched = create(
        &s,
        &k,
        json!({ "name": "fetched", "kind": "REMOTE_A2A", "cardUrl": base }),
    )
    .await;
    assert_eq!(fetched["agentCard"]["name"], "Echo");
    assert_eq!(fetched["cardUrl"], base.as_str());
    // The seed's vocabulary: `targetKind` for `kind`, `agentCardUrl` for `cardUrl`.
    let aliased = create(
        &s,
        &k,
        json!({ "name": "aliased", "targetKind": "REMOTE_A2A", "agentCardUrl": base }),
    )
    .await;
    assert_eq!(
        (aliased["kind"].as_str(), aliased["cardUrl"].as_str()),
        (Some("REMOTE_A2A"), Some(base.as_str()))
    );
    assert_eq!(aliased["agentCard"]["name"], "Echo");
    let (st, err) = s
        .post(
            "/v1/agents/dispatch-targets",
            &k,
            json!({ "name": "twice", "kind": "LOCAL_AGENT", "targetKind": "LOCAL_AGENT" }),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");

    let mut broken = card("ftp://nope");
    broken["skills"] = json!([]);
    broken.as_object_mut().unwrap().remove("version");
    let (st, err) = s
        .post(
            "/v1/agents/dispatch-targets",
            &k,
            json!({ "name": "broken", "kind": "REMOTE_A2A", "agentCard": broken }),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(code(&err), "invalid_agent_card");
    let paths: HashSet<&str> = err["error"]["details"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    for expected in [
        "version",
        "skills",
        "supportedInterfaces[0].url",
        "supportedInterfaces",
    ] {
        assert!(
            paths.contains(expected),
            "{expected} missing from {paths:?}"
        );
    }

    for (body, c) in [
        (
            json!({ "name": "x", "kind": "REMOTE_A2A" }),
            "invalid_field",
        ),
        (
            json!({ "name": "x", "kind": "REMOTE_A2A", "cardUrl": "http://127.0.0.1:9/" }),
            "agent_card_unreachable",
        ),
        (
            json!({ "name": "x", "kind": "LOCAL_AGENT", "agentCard": card("https://a.example") }),
            "invalid_field",
        ),
        (json!({ "name": "x", "kind": "ROBOT" }), "invalid_field"),
        (
            json!({ "name": "", "kind": "LOCAL_AGENT" }),
            "invalid_field",
        ),
    ] {
        let (st, err) = s
            .post("/v1/agents/dispatch-targets", &k, body.clone())
            .await;
        assert_eq!((st, code(&err)), (StatusCode::BAD_REQUEST, c), "{body}");
    }
    let (st, err) = s
        .post(
            "/v1/agents/dispatch-targets",
            &k,
            json!({ "name": "builder", "kind": "LOCAL_AGENT" }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "target_name_taken")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_made_by_the_official_a2a_sdk_are_accepted() {
    let python = std::env::var("MEMESH_A2A_PYTHON").expect(
        "MEMESH_A2A_PYTHON names a Python with a2a-sdk installed (scripts/test sets it up)",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/a2a/make_cards.py");
    let out = Command::new(python)
        .arg(script)
        .arg("https://sdk-agent.example/a2a")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cards: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cards.len(), 2);
    let s = TestServer::start().await;
    for (i, (card, shape, version)) in [
        (&cards[0], "a2a-1.0", "1.0"),
        (&cards[1], "a2a-0.3", "0.3.0"),
    ]
    .into_iter()
    .enumerate()
    {
        let t = create(
            &s,
            &s.owner_key,
            json!({ "name": format!("sdk-{i}"), "kind": "REMOTE_A2A", "agentCard": card }),
        )
        .await;
        assert_eq!(t["compatibility"]["cardShape"], shape);
        assert_eq!(t["compatibility"]["protocolVersion"], version);
        assert_eq!(t["compatibility"]["streaming"], true);
        assert_eq!(
            t["remoteControl"]["endpointUrl"],
            "https://sdk-agent.example/a2a"
        );
    }
    let mut broken = cards[0].clone();
    broken["supportedInterfaces"][0]["protocolBinding"] = json!("GRPC");
    let (st, err) = s
        .post(
            "/v1/agents/dispatch-targets",
            &s.owner_key,
            json!({ "name": "grpc-only", "kind": "REMOTE_A2A", "agentCard": broken }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::BAD_REQUEST, "invalid_agent_card"),
        "no HTTP interface memesh can use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    for i in 0..5 {
        create(&s, &k, json!({ "name": format!("local-{i}"), "kind": "LOCAL_AGENT", "description": if i == 3 { "the special one" } else { "plain" } })).await;
    }
    let remote = create(&s, &k, json!({ "name": "remote", "kind": "REMOTE_A2A", "agentCard": card("https://r.example/a2a") })).await;
    let held = fetch(&s, &k, remote["id"].as_str().unwrap()).await;
    let (st, _) = act(
        &s,
        &k,
        held["id"].as_str().unwrap(),
        "hold",
        json!({ "reason": "r", "expectedRuntimeUpdatedAt": token(&held) }),
    )
    .await;
    assert_eq!(st, StatusCode::OK);

    let list = |q: &'static str| {
        let s = &s;
        let k = k.clone();
        async move {
            let (st, r) = s.get(&format!("/v1/agents/dispatch-targets{q}"), &k).await;
            assert_eq!(st, StatusCode::OK, "{q}: {r}");
            r
        }
    };
    let all = list("").await;
    assert_eq!(all["total"], 6);
    let page = list("?limit=2&offset=4").await;
    assert_eq!(
        (
            page["total"].as_u64(),
            page["targets"].as_array().unwrap().len()
        ),
        (Some(6), 2)
    );
    assert_eq!(list("?targetKind=REMOTE_A2A").await["total"], 1);
    assert_eq!(list("?targetKind=LOCAL_AGENT").await["total"], 5);
    assert_eq!(list("?state=HELD").await["targets"][0]["name"], "remote");
    assert_eq!(list("?state=AVAILABLE").await["total"], 5);
    assert_eq!(
        list("?search=special").await["targets"][0]["name"],
        "local-3"
    );
    assert_eq!(list("?search=LOCAL-").await["total"], 5, "case-insensitive");
    for q in [
        "?targetKind=ROBOT",
        "?state=SLEEPY",
        "?limit=0",
        "?limit=201",
        "?offset=-1",
        "?colour=red",
    ] {
        let (st, _) = s.get(&format!("/v1/agents/dispatch-targets{q}"), &k).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_release_are_guarded_by_the_cas_token() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let t = create(&s, &k, json!({ "name": "w", "kind": "LOCAL_AGENT" })).await;
    let id = t["id"].as_str().unwrap().to_owned();
    let first = token(&t);

    let (st, err) = act(&s, &k, &id, "hold", json!({ "reason": "maintenance" })).await;
    assert_eq!((st, code(&err)), (StatusCode::BAD_REQUEST, "missing_field"));
    assert_eq!(err["error"]["details"]["field"], "expectedRuntimeUpdatedAt");
    let (st, err) = act(
        &s,
        &k,
        &id,
        "hold",
        json!({ "reason": "m", "expectedRuntimeUpdatedAt": "2020-01-01T00:00:00.000Z" }),
    )
    .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "stale_runtime_snapshot")
    );
    assert_eq!(
        err["error"]["details"]["currentRuntimeUpdatedAt"],
        first.as_str(),
        "the body carries the current token"
    );

    let (st, held) = act(
        &s,
        &k,
        &id,
        "hold",
        json!({ "reason": "provider maintenance", "expectedRuntimeUpdatedAt": first }),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{held}");
    assert_eq!(held["availability"], "HELD");
    assert_eq!(held["runtime"]["policy"]["effective"], "BLOCKED");
    assert_eq!(held["runtime"]["policy"]["reasons"], json!(["MANUAL_HOLD"]));
    assert_eq!(held["runtime"]["policy"]["epoch"], 1);
    assert!(token(&held) > first, "strictly increasing");

    let (st, err) = act(
        &s,
        &k,
        &id,
        "hold",
        json!({ "reason": "again", "expectedRuntimeUpdatedAt": token(&held) }),
    )
    .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "target_already_held")
    );
    let (st, err) = act(
        &s,
        &k,
        &id,
        "release",
        json!({ "expectedRuntimeUpdatedAt": first }),
    )
    .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "stale_runtime_snapshot")
    );
    let (st, released) = act(
        &s,
        &k,
        &id,
        "release",
        json!({ "note": "done", "expectedRuntimeUpdatedAt": token(&held) }),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(released["runtime"]["policy"]["effective"], "ALLOW");
    assert_eq!(released["runtime"]["policy"]["epoch"], 2);
    let (st, err) = act(
        &s,
        &k,
        &id,
        "release",
        json!({ "expectedRuntimeUpdatedAt": token(&released) }),
    )
    .await;
    assert_eq!((st, code(&err)), (StatusCode::CONFLICT, "target_not_held"));
    let (st, err) = act(&s, &k, &id, "hold", json!({ "reason": "past", "releaseAfter": "2020-01-01T00:00:00Z", "expectedRuntimeUpdatedAt": token(&released) })).await;
    assert_eq!(
        (st, err["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("releaseAfter"))
    );

    let (_, gov) = s
        .get(&format!("/v1/agents/dispatch-targets/{id}/governance"), &k)
        .await;
    let actions: Vec<&str> = gov["recentAudit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "agents.target.release",
            "agents.target.hold",
            "agents.target.create"
        ]
    );
    assert_eq!(
        gov["recentAudit"][0]["detail"]["policyBefore"]["effective"],
        "BLOCKED"
    );
    assert_eq!(
        gov["recentAudit"][0]["detail"]["policyAfter"]["effective"],
        "ALLOW"
    );
    assert_eq!(
        (gov["recentRuns"].clone(), gov["affectedWork"].clone()),
        (json!([]), json!([]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mutations_with_one_token_have_exactly_one_winner() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let t = create(
        &s,
        &k,
        json!({ "name": "contended", "kind": "LOCAL_AGENT" }),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_owned();
    let mut previous = token(&t);
    let mut wins = 0;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..25 {
        let current = fetch(&s, &k, &id).await;
        let tok = token(&current);
        assert!(round == 0 || tok > previous, "token moves forward");
        previous = tok.clone();
        let held = current["runtime"]["hold"].is_object();
        let incident = current["runtime"]["incident"]["open"].as_bool().unwrap();
        let mut calls = Vec::new();
        for c in 0..6 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (action, body) = match (x + c) % 3 {
                0 if !held => (
                    "hold",
                    json!({ "reason": format!("r{round}-{c}"), "expectedRuntimeUpdatedAt": tok }),
                ),
                0 => ("release", json!({ "expectedRuntimeUpdatedAt": tok })),
                1 if !incident => (
                    "incident/open",
                    json!({ "reason": "x", "expectedRuntimeUpdatedAt": tok }),
                ),
                1 => ("incident/close", json!({ "expectedRuntimeUpdatedAt": tok })),
                _ if !held => (
                    "hold",
                    json!({ "reason": "y", "expectedRuntimeUpdatedAt": tok }),
                ),
                _ => ("release", json!({ "expectedRuntimeUpdatedAt": tok })),
            };
            let (s, k, id) = (&s, k.clone(), id.clone());
            calls.push(async move { act(s, &k, &id, action, body).await });
        }
        let results = futures_util::future::join_all(calls).await;
        let ok = results
            .iter()
            .filter(|(st, _)| *st == StatusCode::OK)
            .count();
        assert_eq!(
            ok, 1,
            "round {round}: exactly one mutation wins: {results:?}"
        );
        assert!(
            results
                .iter()
                .filter(|(st, _)| *st != StatusCode::OK)
                .all(|(st, e)| *st == StatusCode::CONFLICT && code(e) == "stale_runtime_snapshot")
        );
        wins += ok;
    }
    let (_, gov) = s
        .get(&format!("/v1/agents/dispatch-targets/{id}/governance"), &k)
        .await;
    let (_, page) = s
        .get(&format!("/v1/audit/logs?resource={id}&limit=1000"), &k)
        .await;
    assert_eq!(
        page["logs"].as_array().unwrap().len(),
        wins + 1,
        "one audit row per winning mutation, plus create"
    );
    assert!(gov["runtime"]["policy"]["epoch"].as_i64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_lifts_itself_when_the_clock_passes_release_after() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let t = create(&s, &k, json!({ "name": "timed", "kind": "LOCAL_AGENT" })).await;
    let id = t["id"].as_str().unwrap().to_owned();
    let (st, _) = act(&s, &k, &id, "hold", json!({ "reason": "window", "releaseAfter": "2026-03-20T10:00:00.000Z", "expectedRuntimeUpdatedAt": token(&t) })).await;
    assert_eq!(st, StatusCode::OK);
    s.clock.advance_ms(30 * 60 * 1000);
    memesh::jobs::release_expired_holds(&s.state).await.unwrap();
    assert_eq!(fetch(&s, &k, &id).await["availability"], "HELD", "not yet");
    s.clock.advance_ms(31 * 60 * 1000);
    memesh::jobs::release_expired_holds(&s.state).await.unwrap();
    let after = fetch(&s, &k, &id).await;
    assert_eq!(after["availability"], "AVAILABLE");
    assert_eq!(
        after["runtime"]["policy"]["changedBy"],
        Value::Null,
        "changed by the system"
    );
    let (_, logs) = s
        .get(&format!("/v1/audit/logs?resource={id}&limit=1"), &k)
        .await;
    assert_eq!(logs["logs"][0]["action"], "agents.target.release");
    assert_eq!(logs["logs"][0]["actor"]["type"], "system");
    // A system-caused change may be reviewed by anyone with the role.
    let (st, _) = act(
        &s,
        &k,
        &id,
        "review/acknowledge",
        json!({ "expectedRuntimeUpdatedAt": token(&after) }),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_block_self_review_and_stale_epochs() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (_, admin) = s.add_member(&owner, "a@alpha.test", "ADMIN").await;
    let t = create(
        &s,
        &owner,
        json!({ "name": "reviewed", "kind": "LOCAL_AGENT" }),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_owned();
    let (st, err) = act(
        &s,
        &owner,
        &id,
        "review/acknowledge",
        json!({ "expectedRuntimeUpdatedAt": token(&t) }),
    )
    .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "nothing_to_review"),
        "nothing to review yet"
    );
    let (_, held) = act(
        &s,
        &owner,
        &id,
        "hold",
        json!({ "reason": "r", "expectedRuntimeUpdatedAt": token(&t) }),
    )
    .await;
    assert_eq!(held["runtime"]["review"]["state"], "PENDING");
    let (st, err) = act(
        &s,
        &owner,
        &id,
        "review/acknowledge",
        json!({ "expectedRuntimeUpdatedAt": token(&held) }),
    )
    .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "self_review_blocked")
    );
    let (st, err) = act(
        &s,
        &admin,
        &id,
        "review/acknowledge",
        json!({ "policyEpoch": 0, "expectedRuntimeUpdatedAt": token(&held) }),
    )
    .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "stale_policy_epoch")
    );
    assert_eq!(err["error"]["details"]["currentPolicyEpoch"], 1);
    let (st, acked) = act(
        &s,
        &admin,
        &id,
        "review/acknowledge",
        json!({ "policyEpoch": 1, "note": "ok", "expectedRuntimeUpdatedAt": token(&held) }),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{acked}");
    assert_eq!(acked["runtime"]["review"]["state"], "ACKNOWLEDGED");
    assert_eq!(acked["runtime"]["review"]["acknowledged"]["note"], "ok");
    // The policy moves on: the review is pending again.
    let (_, released) = act(
        &s,
        &admin,
        &id,
        "release",
        json!({ "expectedRuntimeUpdatedAt": token(&acked) }),
    )
    .await;
    assert_eq!(
        (
            released["runtime"]["review"]["state"].as_str(),
            released["runtime"]["policy"]["epoch"].as_i64()
        ),
        (Some("PENDING"), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_open_hand_off_and_close() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let t = create(&s, &k, json!({ "name": "remote", "kind": "REMOTE_A2A", "agentCard": card("https://r.example/a2a") })).await;
    let id = t["id"].as_str().unwrap().to_owned();
    let (st, err) = act(&s, &k, &id, "incident/handoff", json!({ "externalIncidentId": "INC-1", "owner": "ops", "expectedRuntimeUpdatedAt": token(&t) })).await;
    assert_eq!((st, code(&err)), (StatusCode::CONFLICT, "no_open_incident"));
    let (st, open) = act(
        &s,
        &k,
        &id,
        "incident/open",
        json!({ "reason": "provider down", "expectedRuntimeUpdatedAt": token(&t) }),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(open["runtime"]["incident"]["epoch"], 1);
    assert_eq!(open["runtime"]["policy"]["effective"], "BLOCKED");
    let (st, err) = act(&s, &k, &id, "incident/handoff", json!({ "externalIncidentId": "INC-1", "owner": "ops", "incidentEpoch": 0, "expectedRuntimeUpdatedAt": token(&open) })).await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "stale_incident_epoch")
    );
    let (st, err) = act(&s, &k, &id, "incident/handoff", json!({ "externalIncidentId": "", "owner": "ops", "expectedRuntimeUpdatedAt": token(&open) })).await;
    assert_eq!(
        (st, err["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("externalIncidentId"))
    );
    let (st, handed) = act(&s, &k, &id, "incident/handoff", json!({ "externalIncidentId": "INC-1", "owner": "ops", "note": "paged", "incidentEpoch": 1, "expectedRuntimeUpdatedAt": token(&open) })).await;
    assert_eq!(st, StatusCode::OK, "{handed}");
    assert_eq!(
        handed["runtime"]["incident"]["handoff"]["externalIncidentId"],
        "INC-1"
    );
    assert_eq!(handed["runtime"]["policy"]["effective"], "REQUIRE_APPROVAL");
    let (st, closed) = act(
        &s,
        &k,
        &id,
        "incident/close",
        json!({ "expectedRuntimeUpdatedAt": token(&handed) }),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(closed["runtime"]["policy"]["effective"], "ALLOW");
    let (_, reopened) = act(
        &s,
        &k,
        &id,
        "incident/open",
        json!({ "reason": "again", "expectedRuntimeUpdatedAt": token(&closed) }),
    )
    .await;
    assert_eq!(
        reopened["runtime"]["incident"]["epoch"], 2,
        "a new incident epoch"
    );
    assert_eq!(
        reopened["runtime"]["incident"]["handoff"],
        Value::Null,
        "the old handoff does not carry over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_probes_open_an_incident() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let (base, failing) = card_server().await;
    let t = create(
        &s,
        &k,
        json!({ "name": "probed", "kind": "REMOTE_A2A", "cardUrl": base }),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_owned();
    let probe = || memesh::jobs::probe_remote_targets(&s.state);
    assert_eq!(probe().await.unwrap(), 0);
    let ok = fetch(&s, &k, &id).await;
    assert_eq!(ok["remoteControl"]["probe"]["lastOk"], true);
    assert_eq!(token(&ok), token(&t), "a probe does not move the CAS token");

    failing.store(true, Ordering::SeqCst);
    assert_eq!(probe().await.unwrap(), 0);
    assert_eq!(probe().await.unwrap(), 0);
    let degraded = fetch(&s, &k, &id).await;
    assert_eq!(degraded["availability"], "DEGRADED");
    assert_eq!(degraded["remoteControl"]["probe"]["consecutiveFailures"], 2);
    assert_eq!(
        probe().await.unwrap(),
        1,
        "the third failure opens an incident"
    );
    let broken = fetch(&s, &k, &id).await;
    assert_eq!(broken["availability"], "INCIDENT");
    assert_eq!(broken["runtime"]["policy"]["effective"], "BLOCKED");
    assert_eq!(
        broken["runtime"]["incident"]["openedBy"],
        Value::Null,
        "opened by the system"
    );
    assert_eq!(
        probe().await.unwrap(),
        0,
        "no second incident while one is open"
    );

    failing.store(false, Ordering::SeqCst);
    probe().await.unwrap();
    let recovered = fetch(&s, &k, &id).await;
    assert_eq!(
        recovered["remoteControl"]["probe"]["consecutiveFailures"],
        0
    );
    assert_eq!(
        recovered["availability"], "INCIDENT",
        "an operator closes the incident"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_access_keys_act_as_their_agent() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (_, member) = s.add_member(&owner, "m@alpha.test", "MEMBER").await;
    let local = create(
        &s,
        &owner,
        json!({ "name": "worker", "kind": "LOCAL_AGENT" }),
    )
    .await;
    let remote = create(&s, &owner, json!({ "name": "remote", "kind": "REMOTE_A2A", "agentCard": card("https://r.example/a2a") })).await;
    let lid = local["id"].as_str().unwrap();

    let (st, key) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "worker key", "targetId": lid }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{key}");
    assert_eq!(key["targetId"], lid);
    let agent = key["key"].as_str().unwrap().to_owned();
    assert_eq!(
        fetch(&s, &owner, lid).await["compatibility"]["agentKeys"],
        1
    );

    let (st, err) = s
        .post(
            "/v1/team/members/invite",
            &agent,
            json!({ "email": "x@alpha.test" }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "agent_key_forbidden")
    );
    let (st, err) = s.post("/v1/keys", &agent, json!({ "name": "more" })).await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "agent_key_forbidden")
    );
    let (st, _) = s.get("/v1/audit/logs", &agent).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = act(
        &s,
        &agent,
        lid,
        "hold",
        json!({ "reason": "r", "expectedRuntimeUpdatedAt": token(&local) }),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let (st, err) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "k", "targetId": remote["id"] }),
        )
        .await;
    assert_eq!(
        (st, err["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("targetId"))
    );
    let (st, _) = s
        .post("/v1/keys", &member, json!({ "name": "k", "targetId": lid }))
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "binding keys to agents takes ADMIN"
    );
    let (st, _) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "k", "targetId": "tgt_00000000000000000000000000000000" }),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (st, del) = s
        .delete(&format!("/v1/agents/dispatch-targets/{lid}"), &owner)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(del["agentKeysRevoked"], 1);
    assert_eq!(s.get("/v1/keys", &agent).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.get(&format!("/v1/agents/dispatch-targets/{lid}"), &owner)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_tenants() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (_, viewer) = s.add_member(&owner, "v@alpha.test", "VIEWER").await;
    let beta = s.create_tenant("beta", "owner@beta.test");
    let t = create(&s, &owner, json!({ "name": "mine", "kind": "LOCAL_AGENT" })).await;
    let id = t["id"].as_str().unwrap().to_owned();

    assert_eq!(
        s.get(&format!("/v1/agents/dispatch-targets/{id}"), &viewer)
            .await
            .0,
        StatusCode::OK,
        "members read"
    );
    let (st, err) = s
        .post(
            "/v1/agents/dispatch-targets",
            &viewer,
            json!({ "name": "v", "kind": "LOCAL_AGENT" }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "insufficient_role")
    );
    let (st, _) = act(
        &s,
        &viewer,
        &id,
        "hold",
        json!({ "reason": "r", "expectedRuntimeUpdatedAt": token(&t) }),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    for path in [
        format!("/v1/agents/dispatch-targets/{id}"),
        format!("/v1/agents/dispatch-targets/{id}/governance"),
    ] {
        let (st, err) = s.get(&path, &beta.owner_key).await;
        assert_eq!(
            (st, code(&err)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}"
        );
    }
    let (st, _) = act(
        &s,
        &beta.owner_key,
        &id,
        "hold",
        json!({ "reason": "r", "expectedRuntimeUpdatedAt": token(&t) }),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        s.delete(
            &format!("/v1/agents/dispatch-targets/{id}"),
            &beta.owner_key
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, list) = s.get("/v1/agents/dispatch-targets", &beta.owner_key).await;
    assert_eq!(list["total"], 0);
    assert_eq!(
        s.get("/v1/agents/dispatch-targets/not-an-id", &owner)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Same name in another tenant is fine; updates are checked.
    create(
        &s,
        &beta.owner_key,
        json!({ "name": "mine", "kind": "LOCAL_AGENT" }),
    )
    .await;
    let (st, err) = s
        .patch(
            &format!("/v1/agents/dispatch-targets/{id}"),
            &owner,
            json!({ "requireApproval": true }),
        )
        .await;
    assert_eq!(
        (st, err["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("expectedRuntimeUpdatedAt"))
    );
    let (st, up) = s
        .patch(&format!("/v1/agents/dispatch-targets/{id}"), &owner, json!({ "name": "renamed", "requireApproval": true, "expectedRuntimeUpdatedAt": token(&t) }))
        .await;
    assert_eq!(st, StatusCode::OK, "{up}");
    assert_eq!(
        (
            up["name"].as_str(),
            up["runtime"]["policy"]["effective"].as_str()
        ),
        (Some("renamed"), Some("REQUIRE_APPROVAL"))
    );
}
