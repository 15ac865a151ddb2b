//! The memory write path, reads, deletes and search, with the real model: validation, batch
//! semantics, isolation between users and tenants, audit, and the index across restarts.

mod common;

use std::collections::HashSet;

use common::{TestServer, code};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn write(s: &TestServer, key: &str, body: Value) -> Value {
    let (st, m) = s.post("/v1/memory/write", key, body).await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    m
}

async fn search(s: &TestServer, key: &str, body: Value) -> Vec<Value> {
    let (st, r) = s.post("/v1/memory/search", key, body).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    r["results"].as_array().unwrap().clone()
}

fn contents(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .map(|r| r["memory"]["content"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_returns_the_stored_memory() {
    let s = TestServer::start().await;
    let m = write(
        &s,
        &s.owner_key,
        json!({ "content": "The cat sits on the mat.", "space": "pets", "summary": "cat",
                "tags": ["animals", "home", "animals"], "sensitivity": "public", "source": "unit-test" }),
    )
    .await;
    assert!(m["id"].as_str().unwrap().starts_with("mem_"));
    assert_eq!(m["space"], "pets");
    assert_eq!(
        m["tags"],
        json!(["animals", "home"]),
        "deduplicated, in order"
    );
    assert_eq!(m["sensitivity"], "public");
    assert_eq!(m["tokenCount"], 7, "cl100k_base tokens");
    assert_eq!(m["embedding"]["model"], "all-minilm-l6-v2-int8");
    assert_eq!(m["embedding"]["truncated"], false);
    assert_eq!(m["createdAt"], common::START);

    let (st, got) = s
        .get(
            &format!("/v1/memory/{}", m["id"].as_str().unwrap()),
            &s.owner_key,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got, m);

    let d = write(&s, &s.owner_key, json!({ "content": "defaults" })).await;
    assert_eq!(
        (d["space"].as_str(), d["sensitivity"].as_str()),
        (Some("default"), Some("internal"))
    );
    assert_eq!(d["tags"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_validation_names_the_field() {
    let s = TestServer::start().await;
    let too_many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let cases = [
        (json!({ "content": "" }), "content"),
        (json!({ "content": "   " }), "content"),
        (json!({ "content": "x".repeat(16_385) }), "content"),
        (json!({ "content": "x", "tags": too_many }), "tags"),
        (json!({ "content": "x", "tags": ["two words"] }), "tags"),
        (json!({ "content": "x", "tags": ["a,b"] }), "tags"),
        (json!({ "content": "x", "tags": "single" }), "tags"),
        (
            json!({ "content": "x", "sensitivity": "secret" }),
            "sensitivity",
        ),
        (json!({ "content": "x", "space": "has space" }), "space"),
        (
            json!({ "content": "x", "summary": "s".repeat(1001) }),
            "summary",
        ),
        (json!({ "content": "x", "colour": "red" }), "colour"),
        (json!({ "space": "x" }), "content"),
    ];
    for (body, field) in cases {
        let (st, err) = s.post("/v1/memory/write", &s.owner_key, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error"]["details"]["field"], field, "{body} → {err}");
    }
    let (_, count) = s.get("/v1/memory/count", &s.owner_key).await;
    assert_eq!(count["count"], 0, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_search_orders_by_meaning() {
    let s = TestServer::start().await;
    let (st, _) = s
        .post(
            "/v1/memory/batch",
            &s.owner_key,
            json!({ "transactional": true, "memories": [
                { "content": "A feline is resting on a rug." },
                { "content": "Quarterly revenue grew by 12 percent." },
            ]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let results = search(
        &s,
        &s.owner_key,
        json!({ "query": "The cat sits on the mat." }),
    )
    .await;
    assert_eq!(
        contents(&results),
        [
            "A feline is resting on a rug.",
            "Quarterly revenue grew by 12 percent."
        ]
    );
    let (feline, revenue) = (
        results[0]["score"].as_f64().unwrap(),
        results[1]["score"].as_f64().unwrap(),
    );
    assert!(
        (feline - 0.571).abs() < 0.002,
        "cosine similarity, {feline}"
    );
    assert!(feline > revenue);

    // GET returns the same thing.
    let (st, get) = s
        .get(
            "/v1/memory/search?query=The%20cat%20sits%20on%20the%20mat.",
            &s.owner_key,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(get["results"].as_array().unwrap(), &results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_validation_and_spaces() {
    let s = TestServer::start().await;
    write(
        &s,
        &s.owner_key,
        json!({ "content": "pasta recipe with garlic", "space": "food" }),
    )
    .await;
    write(
        &s,
        &s.owner_key,
        json!({ "content": "garlic bread", "space": "food" }),
    )
    .await;
    write(
        &s,
        &s.owner_key,
        json!({ "content": "deploy checklist", "space": "work" }),
    )
    .await;

    let food = search(
        &s,
        &s.owner_key,
        json!({ "query": "garlic", "spaces": ["food"], "limit": 1 }),
    )
    .await;
    assert_eq!(food.len(), 1);
    let work = search(
        &s,
        &s.owner_key,
        json!({ "query": "garlic", "spaces": ["work"] }),
    )
    .await;
    assert_eq!(contents(&work), ["deploy checklist"]);
    let (_, both) = s
        .get(
            "/v1/memory/search?query=garlic&spaces=work,food",
            &s.owner_key,
        )
        .await;
    assert_eq!(both["results"].as_array().unwrap().len(), 3);
    let none = search(
        &s,
        &s.owner_key,
        json!({ "query": "garlic", "spaces": ["nowhere"] }),
    )
    .await;
    assert!(none.is_empty(), "unknown space: empty, not an error");

    for (path, field) in [
        ("/v1/memory/search?query=", "query"),
        ("/v1/memory/search", "query"),
        ("/v1/memory/search?query=x&limit=0", "limit"),
        ("/v1/memory/search?query=x&limit=101", "limit"),
        ("/v1/memory/search?query=x&limit=many", "limit"),
        ("/v1/memory/search?query=x&spaces=bad%20space", "spaces"),
    ] {
        let (st, err) = s.get(path, &s.owner_key).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(err["error"]["details"]["field"], field, "{path}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_batch_is_all_or_nothing() {
    let s = TestServer::start().await;
    let (st, err) = s
        .post(
            "/v1/memory/batch",
            &s.owner_key,
            json!({ "transactional": true, "memories": [
                { "content": "fine" }, { "content": "also fine" }, { "content": "bad", "sensitivity": "nope" }
            ]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["details"]["index"], 2);
    assert_eq!(err["error"]["details"]["field"], "memories[2].sensitivity");
    let (_, count) = s.get("/v1/memory/count", &s.owner_key).await;
    assert_eq!(count["count"], 0);

    let memories: Vec<Value> = (0..100)
        .map(|i| json!({ "content": format!("note {i}") }))
        .collect();
    let (st, ok) = s
        .post(
            "/v1/memory/batch",
            &s.owner_key,
            json!({ "transactional": true, "memories": memories }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(ok["created"], 100);
    assert_eq!(ok["memories"][42]["content"], "note 42", "in request order");
    let (_, count) = s.get("/v1/memory/count", &s.owner_key).await;
    assert_eq!(count["count"], 100);

    for n in [0usize, 101] {
        let memories: Vec<Value> = (0..n)
            .map(|i| json!({ "content": format!("n{i}") }))
            .collect();
        for transactional in [true, false] {
            let (st, err) = s
                .post(
                    "/v1/memory/batch",
                    &s.owner_key,
                    json!({ "transactional": transactional, "memories": memories }),
                )
                .await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{n} items");
            assert_eq!(err["error"]["details"]["field"], "memories");
        }
    }
    let (_, count) = s.get("/v1/memory/count", &s.owner_key).await;
    assert_eq!(count["count"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_stores_the_good_items() {
    let s = TestServer::start().await;
    let (st, r) = s
        .post(
            "/v1/memory/batch",
            &s.owner_key,
            json!({ "memories": [
                { "content": "first good" }, { "content": "" }, { "content": 5 }, { "content": "last good", "tags": ["x"] }
            ]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (r["created"].as_u64(), r["failed"].as_u64()),
        (Some(2), Some(2))
    );
    let statuses: Vec<u64> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 400, 400, 201]);
    assert_eq!(r["results"][3]["memory"]["content"], "last good");
    assert_eq!(
        r["results"][2]["error"]["details"]["field"],
        "memories[2].content"
    );
    let (_, count) = s.get("/v1/memory/count", &s.owner_key).await;
    assert_eq!(count["count"], 2);
    let found = search(&s, &s.owner_key, json!({ "query": "last good" })).await;
    assert_eq!(contents(&found)[0], "last good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_spaces_get_and_delete() {
    let s = TestServer::start().await;
    let a = write(
        &s,
        &s.owner_key,
        json!({ "content": "alpha note", "space": "a" }),
    )
    .await;
    s.clock.advance_ms(1000);
    write(
        &s,
        &s.owner_key,
        json!({ "content": "beta note", "space": "b" }),
    )
    .await;
    write(
        &s,
        &s.owner_key,
        json!({ "content": "another beta", "space": "b" }),
    )
    .await;
    let (_, spaces) = s.get("/v1/memory/spaces", &s.owner_key).await;
    assert_eq!(
        spaces["spaces"],
        json!([
            { "space": "a", "count": 1, "lastWrittenAt": "2026-03-20T09:00:00.000Z" },
            { "space": "b", "count": 2, "lastWrittenAt": "2026-03-20T09:00:01.000Z" },
        ])
    );
    let id = a["id"].as_str().unwrap();
    let before = search(&s, &s.owner_key, json!({ "query": "alpha note" })).await;
    assert_eq!(before[0]["memory"]["id"], id);

    let (st, del) = s.delete(&format!("/v1/memory/{id}"), &s.owner_key).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(del["id"], id);
    let after = search(&s, &s.owner_key, json!({ "query": "alpha note" })).await;
    assert!(
        after.iter().all(|r| r["memory"]["id"] != id),
        "gone from search at once"
    );
    assert_eq!(
        s.get(&format!("/v1/memory/{id}"), &s.owner_key).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.delete(&format!("/v1/memory/{id}"), &s.owner_key).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("/v1/memory/mem_nope", &s.owner_key).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, count) = s.get("/v1/memory/count", &s.owner_key).await;
    assert_eq!(count["count"], 2);

    let (_, logs) = s.get("/v1/audit/logs?action=memory.*", &s.owner_key).await;
    let actions: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "memory.delete",
            "memory.write",
            "memory.write",
            "memory.write"
        ]
    );
    assert!(
        !logs.to_string().contains("alpha note"),
        "content stays out of the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_are_private_to_their_user_and_tenant() {
    let s = TestServer::start().await;
    let (_, colleague) = s.add_member(&s.owner_key, "c@alpha.test", "ADMIN").await;
    let beta = s.create_tenant("beta", "owner@beta.test");
    let mine = write(
        &s,
        &s.owner_key,
        json!({ "content": "my secret plan about rockets" }),
    )
    .await;
    let id = mine["id"].as_str().unwrap();
    write(
        &s,
        &colleague,
        json!({ "content": "colleague note about rockets" }),
    )
    .await;

    for key in [&colleague, &beta.owner_key] {
        let found = search(
            &s,
            key,
            json!({ "query": "secret plan about rockets", "limit": 100 }),
        )
        .await;
        assert!(
            found.iter().all(|r| r["memory"]["id"] != id),
            "never another user's memory"
        );
        assert_eq!(
            s.get(&format!("/v1/memory/{id}"), key).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            s.delete(&format!("/v1/memory/{id}"), key).await.0,
            StatusCode::NOT_FOUND
        );
    }
    let (_, c) = s.get("/v1/memory/count", &beta.owner_key).await;
    assert_eq!(c["count"], 0);
    let (_, c) = s.get("/v1/memory/count", &colleague).await;
    assert_eq!(c["count"], 1);
    let (_, spaces) = s.get("/v1/memory/spaces", &beta.owner_key).await;
    assert_eq!(spaces["spaces"], json!([]));
    let own = search(&s, &s.owner_key, json!({ "query": "rockets" })).await;
    assert_eq!(contents(&own), ["my secret plan about rockets"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_index_survives_restart_without_re_embedding() {
    let s = TestServer::start().await;
    let topics = [
        "astronomy",
        "cooking",
        "gardening",
        "finance",
        "music",
        "sailing",
    ];
    let mut ids = Vec::new();
    for batch in 0..4 {
        let memories: Vec<Value> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                json!({ "content": format!("note {n}: a fact about {} number {n}", topics[n % topics.len()]) })
            })
            .collect();
        let (st, r) = s
            .post(
                "/v1/memory/batch",
                &s.owner_key,
                json!({ "transactional": true, "memories": memories }),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        ids.extend(
            r["memories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
    }
    s.state.memory.generation().index.maintain_now();
    assert_eq!(
        s.state.memory.generation().index.stats().graphs,
        1,
        "400 > threshold of 300"
    );
    let deleted = ids[7].clone();
    s.delete(&format!("/v1/memory/{deleted}"), &s.owner_key)
        .await;

    let probe = "note 123: a fact about finance number 123";
    let before = search(&s, &s.owner_key, json!({ "query": probe, "limit": 5 })).await;
    assert_eq!(before[0]["memory"]["content"], probe);

    let s = s.restart().await;
    assert_eq!(
        s.state.memory.graphs_from_snapshot(),
        1,
        "graph reloaded, not rebuilt"
    );
    let (st, ready) = s.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ready["memories"], 399);
    assert_eq!(ready["index"]["vectors"], 399);
    let after = search(&s, &s.owner_key, json!({ "query": probe, "limit": 5 })).await;
    assert_eq!(contents(&after), contents(&before));
    let all = search(
        &s,
        &s.owner_key,
        json!({ "query": "note 7: a fact about sailing number 7", "limit": 100 }),
    )
    .await;
    assert!(all.iter().all(|r| r["memory"]["id"] != deleted.as_str()));
    let got: HashSet<&str> = all
        .iter()
        .map(|r| r["memory"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_memory_calls_are_401() {
    let s = TestServer::start().await;
    let (st, body) = s
        .call(
            reqwest::Method::POST,
            "/v1/memory/write",
            None,
            Some(json!({ "content": "x" })),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthorized");
}
