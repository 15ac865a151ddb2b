//! Retrieval with the real model: filtered and hybrid query, threshold paging, batch search
//! with deduplication, token-budgeted context windows, and export/import round trips.

mod common;

use std::collections::HashSet;

use common::{TestServer, code};
use memesh::embed::tokens::LlmTokenizer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn write(s: &TestServer, key: &str, body: Value) -> Value {
    let (st, m) = s.post("/v1/memory/write", key, body).await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    m
}

async fn batch(s: &TestServer, key: &str, memories: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for chunk in memories.chunks(100) {
        let (st, r) = s
            .post(
                "/v1/memory/batch",
                key,
                json!({ "transactional": true, "memories": chunk }),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        out.extend(r["memories"].as_array().unwrap().iter().cloned());
    }
    out
}

async fn query(s: &TestServer, key: &str, body: Value) -> Value {
    let (st, r) = s.post("/v1/memory/query", key, body.clone()).await;
    assert_eq!(st, StatusCode::OK, "{body} → {r}");
    r
}

fn contents(r: &Value) -> Vec<String> {
    r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["memory"]["content"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(r: &Value) -> Vec<String> {
    r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["memory"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_their_combinations() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    write(&s, &k, json!({ "content": "Paris trip itinerary", "space": "travel", "tags": ["trip", "europe"], "source": "notes" })).await;
    s.clock.advance_ms(60_000);
    write(&s, &k, json!({ "content": "Tokyo trip budget", "space": "travel", "tags": ["trip", "asia"], "sensitivity": "confidential" })).await;
    s.clock.advance_ms(60_000);
    write(&s, &k, json!({ "content": "Quarterly tax filing", "space": "finance", "tags": ["tax"], "sensitivity": "restricted", "source": "notes" })).await;
    s.clock.advance_ms(60_000);
    write(&s, &k, json!({ "content": "Berlin conference trip", "space": "work", "tags": ["trip", "europe", "conference"] })).await;

    let q = |extra: Value| {
        let mut body = json!({ "query": "trip", "limit": 10 });
        for (key, v) in extra.as_object().unwrap() {
            body[key] = v.clone();
        }
        body
    };
    let set = |r: &Value| contents(r).into_iter().collect::<HashSet<_>>();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();

    let r = query(&s, &k, q(json!({ "tags": ["europe"] }))).await;
    assert_eq!(
        set(&r),
        names(&["Paris trip itinerary", "Berlin conference trip"])
    );
    assert_eq!(r["total"], 2);
    let r = query(
        &s,
        &k,
        q(json!({ "tags": ["asia", "tax"], "tagMode": "any" })),
    )
    .await;
    assert_eq!(
        set(&r),
        names(&["Tokyo trip budget", "Quarterly tax filing"])
    );
    let r = query(
        &s,
        &k,
        q(json!({ "tags": ["trip", "europe", "conference"], "tagMode": "all" })),
    )
    .await;
    assert_eq!(set(&r), names(&["Berlin conference trip"]));
    let r = query(
        &s,
        &k,
        q(json!({ "spaces": ["travel", "work"], "tags": ["europe"] })),
    )
    .await;
    assert_eq!(
        set(&r),
        names(&["Paris trip itinerary", "Berlin conference trip"])
    );
    let r = query(&s, &k, q(json!({ "sensitivity": "restricted" }))).await;
    assert_eq!(set(&r), names(&["Quarterly tax filing"]));
    let r = query(
        &s,
        &k,
        q(json!({ "sensitivity": ["confidential", "restricted"] })),
    )
    .await;
    assert_eq!(
        set(&r),
        names(&["Tokyo trip budget", "Quarterly tax filing"])
    );
    let r = query(&s, &k, q(json!({ "source": "notes", "tags": ["trip"] }))).await;
    assert_eq!(set(&r), names(&["Paris trip itinerary"]));
    // Created at START, +1, +2, +3 minutes; after is inclusive, before exclusive.
    let r = query(
        &s,
        &k,
        q(json!({ "createdAfter": "2026-03-20T09:01:00.000Z", "createdBefore": "2026-03-20T09:03:00.000Z" })),
    )
    .await;
    assert_eq!(
        set(&r),
        names(&["Tokyo trip budget", "Quarterly tax filing"])
    );
    let r = query(&s, &k, q(json!({ "tags": ["nope"] }))).await;
    assert_eq!(
        (r["total"].as_u64(), r["results"].as_array().unwrap().len()),
        (Some(0), 0)
    );

    for (body, field) in [
        (q(json!({ "tagMode": "some" })), "tagMode"),
        (q(json!({ "tags": ["has space"] })), "tags"),
        (q(json!({ "sensitivity": "secret" })), "sensitivity"),
        (q(json!({ "createdAfter": "soon" })), "createdAfter"),
        (
            q(
                json!({ "createdAfter": "2026-03-21T00:00:00Z", "createdBefore": "2026-03-20T00:00:00Z" }),
            ),
            "createdAfter",
        ),
        (q(json!({ "limit": 0 })), "limit"),
        (q(json!({ "offset": 10_001 })), "offset"),
        (
            q(json!({ "similarityThreshold": 1.5 })),
            "similarityThreshold",
        ),
        (
            q(json!({ "mode": "keyword", "similarityThreshold": 0.5 })),
            "similarityThreshold",
        ),
        (q(json!({ "mode": "fuzzy" })), "mode"),
        (json!({ "query": " " }), "query"),
    ] {
        let (st, err) = s.post("/v1/memory/query", &k, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error"]["details"]["field"], field, "{body} → {err}");
    }
}

const OUTCOMES: [&str; 3] = ["well", "badly", "slowly"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_paging_has_no_gaps_or_duplicates() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let memories: Vec<Value> = (0..60)
        .map(|i| json!({ "content": format!("note {i}: the deployment of service {} went {}", i % 9, OUTCOMES[i % 3]) }))
        .collect();
    batch(&s, &k, memories).await;
    // A threshold that cuts the list after about 25 of the 60.
    let unfiltered = query(
        &s,
        &k,
        json!({ "query": "how did the deployment of service 3 go", "limit": 100 }),
    )
    .await;
    assert_eq!(unfiltered["total"], 60);
    let threshold = unfiltered["results"][24]["score"].as_f64().unwrap();
    let base = json!({ "query": "how did the deployment of service 3 go", "similarityThreshold": threshold });
    let all = query(
        &s,
        &k,
        json!({ "query": base["query"], "similarityThreshold": threshold, "limit": 100 }),
    )
    .await;
    let total = all["total"].as_u64().unwrap() as usize;
    assert!(
        total > 10 && total < 60,
        "the threshold cuts somewhere: {total}"
    );
    assert_eq!(all["results"].as_array().unwrap().len(), total);
    let scores: Vec<f64> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.iter().all(|s| *s >= threshold - 1e-6));
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first");

    let mut paged = Vec::new();
    let mut offset = 0;
    loop {
        let mut body = base.clone();
        body["limit"] = json!(7);
        body["offset"] = json!(offset);
        let page = query(&s, &k, body).await;
        assert_eq!(page["total"].as_u64().unwrap() as usize, total);
        let page_ids = ids(&page);
        if page_ids.is_empty() {
            break;
        }
        paged.extend(page_ids);
        offset += 7;
    }
    assert_eq!(
        paged,
        ids(&all),
        "pages concatenate to the full list: no gaps, no duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selective_filter_still_fills_the_page_on_a_graph_partition() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    // 420 memories (above the tests' graph threshold of 300); 15 carry the rare tag.
    let memories: Vec<Value> = (0..420)
        .map(|i| {
            let tags = if i % 28 == 0 { json!(["rare"]) } else { json!(["common"]) };
            json!({ "content": format!("observation {i} about the weather in city {}", i % 37), "tags": tags,
                    "space": if i % 28 == 0 { "rare-space" } else { "main" } })
        })
        .collect();
    batch(&s, &k, memories).await;
    s.state.memory.generation().index.maintain_now();
    assert_eq!(s.state.memory.generation().index.stats().graphs, 1);
    let r = query(
        &s,
        &k,
        json!({ "query": "weather", "tags": ["rare"], "limit": 10 }),
    )
    .await;
    assert_eq!(r["results"].as_array().unwrap().len(), 10);
    assert_eq!(r["total"], 15);
    assert!(
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["memory"]["tags"] == json!(["rare"]))
    );
    let (_, r) = s
        .get(
            "/v1/memory/search?query=weather&spaces=rare-space&limit=12",
            &k,
        )
        .await;
    assert_eq!(r["results"].as_array().unwrap().len(), 12);
    for mode in ["keyword", "hybrid"] {
        let r = query(
            &s,
            &k,
            json!({ "query": "weather city", "tags": ["rare"], "limit": 10, "mode": mode }),
        )
        .await;
        assert_eq!(r["results"].as_array().unwrap().len(), 10, "{mode}");
        assert!(
            r["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["memory"]["tags"] == json!(["rare"]))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_finds_an_exact_identifier_semantic_ranks_low() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let mut memories: Vec<Value> = (0..40)
        .map(|i| json!({ "content": format!("Reminder: invoice number {} for the customer is still open and unpaid", 1000 + i) }))
        .collect();
    memories.push(json!({ "content": "Ticket ZX-4471-QK was closed by the night shift." }));
    batch(&s, &k, memories).await;

    let target = "Ticket ZX-4471-QK was closed by the night shift.";
    let semantic = query(
        &s,
        &k,
        json!({ "query": "open invoice ZX-4471-QK", "limit": 5, "explain": true }),
    )
    .await;
    assert!(
        !contents(&semantic).contains(&target.to_owned()),
        "semantic search misses it: {:?}",
        contents(&semantic)
    );
    let keyword = query(
        &s,
        &k,
        json!({ "query": "open invoice ZX-4471-QK", "mode": "keyword", "limit": 5 }),
    )
    .await;
    assert!(contents(&keyword).contains(&target.to_owned()));
    let hybrid = query(
        &s,
        &k,
        json!({ "query": "ZX-4471-QK", "mode": "hybrid", "limit": 5, "explain": true }),
    )
    .await;
    assert_eq!(contents(&hybrid)[0], target);
    let explain = &hybrid["results"][0]["explain"];
    assert_eq!(explain["keywordRank"], 1);
    assert!(
        explain["semanticRank"].is_u64() && explain["fusedScore"].is_f64(),
        "{explain}"
    );
    assert_eq!(hybrid["mode"], "hybrid");
    let plain = query(
        &s,
        &k,
        json!({ "query": "ZX-4471-QK", "mode": "hybrid", "limit": 5 }),
    )
    .await;
    assert!(
        plain["results"][0].get("explain").is_none(),
        "explain only when asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_search_orders_limits_and_deduplicates() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    batch(
        &s,
        &k,
        vec![
            json!({ "content": "The cat sits on the mat." }),
            json!({ "content": "A kitten plays with yarn." }),
            json!({ "content": "Quarterly revenue grew by 12 percent." }),
            json!({ "content": "Profits rose sharply this year.", "space": "finance" }),
            json!({ "content": "The dog barks at the mailman." }),
        ],
    )
    .await;
    let (st, r) = s
        .post(
            "/v1/memory/batch/search",
            &k,
            json!({ "queries": ["a cat sitting on a mat", { "query": "money", "limit": 1, "spaces": ["finance"] }, "pets"] }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["query"], "a cat sitting on a mat");
    assert_eq!(
        results[0]["results"][0]["memory"]["content"],
        "The cat sits on the mat."
    );
    assert_eq!(contents(&results[1]), ["Profits rose sharply this year."]);
    assert_eq!(results[2]["results"].as_array().unwrap().len(), 5);

    let (_, d) = s
        .post(
            "/v1/memory/batch/search",
            &k,
            json!({ "queries": ["cats", "kittens", "pets"], "deduplicate": true }),
        )
        .await;
    assert_eq!(d["deduplicated"], true);
    let mut seen = HashSet::new();
    let mut total = 0;
    for q in d["results"].as_array().unwrap() {
        for id in ids(q) {
            total += 1;
            assert!(seen.insert(id), "a memory appears twice across the batch");
        }
    }
    assert_eq!(total, 5, "every memory placed once");

    let too_many: Vec<Value> = (0..51).map(|i| json!(format!("q{i}"))).collect();
    let (st, err) = s
        .post(
            "/v1/memory/batch/search",
            &k,
            json!({ "queries": too_many }),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["details"]["field"], "queries");
    for (queries, field) in [
        (json!([]), "queries"),
        (json!(["ok", 5]), "queries[1]"),
        (json!(["ok", { "query": "" }]), "queries[1].query"),
        (json!([{ "query": "x", "limit": 500 }]), "queries[0].limit"),
        (
            json!([{ "query": "x", "colour": "red" }]),
            "queries[0].colour",
        ),
    ] {
        let (st, err) = s
            .post("/v1/memory/batch/search", &k, json!({ "queries": queries }))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{queries}");
        assert_eq!(err["error"]["details"]["field"], field, "{queries} → {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_window_never_exceeds_random_budgets() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let memories: Vec<Value> = (0..40)
        .map(|i| json!({ "content": format!("Fact {i}: {}", "the quick brown fox jumps over the lazy dog. ".repeat(1 + i % 5)) }))
        .collect();
    batch(&s, &k, memories).await;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for round in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let budget = 1 + (x % 1500) as i64;
        let tokenizer = if round % 4 == 0 {
            "o200k_base"
        } else {
            "cl100k_base"
        };
        let (st, r) = s
            .post(
                "/v1/memory/context-window",
                &k,
                json!({ "query": "fox facts", "tokenBudget": budget, "tokenizer": tokenizer }),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        let used = r["tokensUsed"].as_u64().unwrap() as i64;
        assert!(used <= budget, "budget {budget}, used {used}");
        let context = r["context"].as_str().unwrap();
        let counted = LlmTokenizer::parse(tokenizer).unwrap().count(context) as i64;
        assert_eq!(
            counted, used,
            "tokensUsed is the real count of the rendered context"
        );
        assert_eq!(r["tokenizer"], tokenizer);
        let chosen = r["memories"].as_array().unwrap();
        let scores: Vec<f64> = chosen
            .iter()
            .map(|m| m["score"].as_f64().unwrap())
            .collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "most relevant first"
        );
        assert_eq!(
            r["omitted"].as_u64().unwrap() + chosen.len() as u64,
            r["candidates"].as_u64().unwrap()
        );
        let rendered: Vec<&str> = chosen
            .iter()
            .map(|m| m["memory"]["content"].as_str().unwrap().trim())
            .collect();
        assert_eq!(context, rendered.join("\n\n"));
    }
    let (st, r) = s
        .post(
            "/v1/memory/context-window",
            &k,
            json!({ "query": "fox", "tokenBudget": 1 }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (
            r["tokensUsed"].as_u64(),
            r["memories"].as_array().unwrap().len()
        ),
        (Some(0), 0)
    );
    assert_eq!(r["omitted"], r["candidates"]);
    for (body, field) in [
        (json!({ "query": "fox", "tokenBudget": 0 }), "tokenBudget"),
        (json!({ "query": "fox", "tokenBudget": -5 }), "tokenBudget"),
        (
            json!({ "query": "fox", "tokenBudget": 100, "tokenizer": "gpt2-ish" }),
            "tokenizer",
        ),
        (json!({ "query": "", "tokenBudget": 100 }), "query"),
        (json!({ "query": "fox" }), "tokenBudget"),
    ] {
        let (st, err) = s.post("/v1/memory/context-window", &k, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error"]["details"]["field"], field, "{body} → {err}");
    }
}

/// (id, event, data) of each SSE event.
fn sse_events(text: &str) -> Vec<(Option<String>, String, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            (!data.is_empty()).then_some((id, event, data))
        })
        .collect()
}

async fn export(s: &TestServer, key: &str, query: &str, last_event_id: Option<&str>) -> String {
    let mut req = s
        .client
        .get(s.url(&format!("/v1/memory/stream/export{query}")))
        .header("x-api-key", key);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    resp.text().await.unwrap()
}

async fn import(s: &TestServer, key: &str, content_type: &str, body: String) -> Value {
    let resp = s
        .client
        .post(s.url("/v1/memory/import"))
        .header("x-api-key", key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_round_trips_exactly_and_resumes() {
    let a = TestServer::start().await;
    let k = a.owner_key.clone();
    let levels = ["public", "internal", "confidential", "restricted"];
    for i in 0..12 {
        a.clock.advance_ms(1_234);
        write(
            &a,
            &k,
            json!({ "content": format!("memory {i} about sailing"), "space": if i % 2 == 0 { "even" } else { "odd" },
                    "summary": format!("summary {i}"), "tags": [format!("t{i}"), "shared"],
                    "sensitivity": levels[i % 4], "source": "test" }),
        )
        .await;
    }
    let full = export(&a, &k, "", None).await;
    let events = sse_events(&full);
    let memories: Vec<_> = events.iter().filter(|e| e.1 == "memory").collect();
    assert_eq!(memories.len(), 12);
    let done = events.last().unwrap();
    assert_eq!(done.1, "done");
    assert_eq!(serde_json::from_str::<Value>(&done.2).unwrap()["count"], 12);

    // Resume after the fifth memory.
    let fifth = memories[4].0.clone().unwrap();
    let resumed = sse_events(&export(&a, &k, "", Some(&fifth)).await);
    let resumed_data: Vec<&String> = resumed
        .iter()
        .filter(|e| e.1 == "memory")
        .map(|e| &e.2)
        .collect();
    let expected: Vec<&String> = memories[5..].iter().map(|e| &e.2).collect();
    assert_eq!(resumed_data, expected, "resumes right after Last-Event-ID");
    let (st, err) = a
        .call(
            Method::GET,
            "/v1/memory/stream/export?after=abc",
            Some(&k),
            None,
        )
        .await;
    assert_eq!((st, code(&err)), (StatusCode::BAD_REQUEST, "invalid_field"));

    let odd = sse_events(&export(&a, &k, "?spaces=odd", None).await);
    assert_eq!(odd.iter().filter(|e| e.1 == "memory").count(), 6);

    // Import the SSE stream itself into a fresh server.
    let b = TestServer::start().await;
    let kb = b.owner_key.clone();
    let report = import(&b, &kb, "text/event-stream", full.clone()).await;
    assert_eq!(
        (report["imported"].as_u64(), report["failed"].as_u64()),
        (Some(12), Some(0)),
        "{report}"
    );
    let again = export(&b, &kb, "", None).await;
    let original: Vec<Value> = memories
        .iter()
        .map(|e| serde_json::from_str(&e.2).unwrap())
        .collect();
    let restored: Vec<Value> = sse_events(&again)
        .iter()
        .filter(|e| e.1 == "memory")
        .map(|e| serde_json::from_str(&e.2).unwrap())
        .collect();
    assert_eq!(
        restored, original,
        "content, metadata, timestamps, ids and vectors round-trip"
    );
    let (_, got) = b
        .get(
            &format!("/v1/memory/{}", original[3]["id"].as_str().unwrap()),
            &kb,
        )
        .await;
    assert_eq!(got["createdAt"], original[3]["createdAt"]);
    let (_, found) = b
        .post(
            "/v1/memory/search",
            &kb,
            json!({ "query": "memory 7 about sailing", "limit": 1 }),
        )
        .await;
    assert_eq!(
        found["results"][0]["memory"]["id"], original[7]["id"],
        "searchable after import"
    );

    // Importing again skips what is there; JSON lines work too; bad lines are reported.
    let mut lines: Vec<String> = original.iter().map(Value::to_string).collect();
    let mut fresh = original[0].clone();
    fresh["id"] = json!("mem_0000000000000000000000000000abcd");
    fresh["content"] = json!("a new memory without a vector");
    fresh.as_object_mut().unwrap().remove("embedding");
    lines.push(fresh.to_string());
    lines.push("{not json".into());
    lines.push(json!({ "id": "nope", "content": "x", "space": "s", "tags": [], "sensitivity": "public", "createdAt": "2026-03-20T09:00:00.000Z" }).to_string());
    let report = import(&b, &kb, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(report["imported"], 1, "{report}");
    assert_eq!(report["skipped"], 12);
    assert_eq!(report["failed"], 2);
    assert_eq!(report["errors"][0]["line"], 14);
    assert_eq!(report["errors"][0]["error"]["code"], "malformed_json");
    assert_eq!(report["errors"][1]["error"]["details"]["field"], "id");
    let (_, found) = b
        .post(
            "/v1/memory/search",
            &kb,
            json!({ "query": "a new memory without a vector", "limit": 1 }),
        )
        .await;
    assert_eq!(
        found["results"][0]["memory"]["id"], "mem_0000000000000000000000000000abcd",
        "re-embedded on import"
    );

    // Another user may not take over these ids.
    let (_, other) = b.add_member(&kb, "o@alpha.test", "MEMBER").await;
    let report = import(&b, &other, "text/event-stream", full).await;
    assert_eq!(
        (report["imported"].as_u64(), report["failed"].as_u64()),
        (Some(0), Some(12))
    );
    assert_eq!(report["errors"][0]["error"]["code"], "memory_id_taken");

    let resp = b
        .client
        .post(b.url("/v1/memory/import"))
        .header("x-api-key", &kb)
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_memories_never_appear() {
    let s = TestServer::start().await;
    let (_, other) = s.add_member(&s.owner_key, "o@alpha.test", "ADMIN").await;
    let beta = s.create_tenant("beta", "owner@beta.test");
    write(
        &s,
        &s.owner_key,
        json!({ "content": "the launch code is swordfish", "tags": ["secret"] }),
    )
    .await;
    write(&s, &other, json!({ "content": "my own unrelated note" })).await;
    for key in [&other, &beta.owner_key] {
        for mode in ["semantic", "keyword", "hybrid"] {
            let r = query(
                &s,
                key,
                json!({ "query": "launch code swordfish", "mode": mode, "limit": 100 }),
            )
            .await;
            assert!(
                !contents(&r).iter().any(|c| c.contains("swordfish")),
                "{mode}"
            );
        }
        let r = query(
            &s,
            key,
            json!({ "query": "launch code", "tags": ["secret"] }),
        )
        .await;
        assert_eq!(r["total"], 0);
        let (st, b) = s
            .post(
                "/v1/memory/batch/search",
                key,
                json!({ "queries": ["launch code swordfish"] }),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let found = b["results"][0]["results"]
            .as_array()
            .expect("a result list");
        assert!(
            !found.iter().any(|r| r.to_string().contains("swordfish")),
            "{b}"
        );
        let (st, c) = s
            .post(
                "/v1/memory/context-window",
                key,
                json!({ "query": "launch code", "tokenBudget": 1000 }),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{c}");
        assert!(c["context"].is_string() && c["memories"].is_array(), "{c}");
        assert!(!c.to_string().contains("swordfish"));
        let e = export(&s, key, "", None).await;
        assert!(!e.contains("swordfish"));
    }
}
