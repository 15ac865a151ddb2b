//! Bad input at the edges, each answered with a clear 4xx and a machine-readable code, the server
//! and its data unharmed: bodies over the limit, deeply nested and huge JSON, invalid UTF-8,
//! very long query strings and headers, path traversal in ids, SQL metacharacters in every string
//! field, NaN and huge numbers, duplicated JSON keys.

mod common;

use common::{TestServer, code};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Sends a raw body to `path`; status and JSON body.
async fn raw(s: &TestServer, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = s
        .client
        .post(s.url(path))
        .header("x-api-key", &s.owner_key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body, got {text:?}")),
    )
}

/// The server still answers and holds exactly the memories it should.
async fn unharmed(s: &TestServer, memories: u64) {
    let (st, ready) = s.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK, "{ready}");
    let (st, count) = s.get("/v1/memory/count", &s.owner_key).await;
    assert_eq!(
        (st, count["count"].as_u64()),
        (StatusCode::OK, Some(memories))
    );
    assert_eq!(ready["memories"], ready["index"]["vectors"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_4xx_and_change_nothing() {
    let s = TestServer::start().await;
    let (st, _) = s
        .post(
            "/v1/memory/write",
            &s.owner_key,
            json!({ "content": "baseline" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);

    // Deeply nested JSON: refused by the parser's depth limit (a free-form field), not by a
    // stack overflow; where a string is expected, at the first bracket.
    let nested = |inner: &str| format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)) + inner;
    let deep = format!("{{\"content\": {}}}", nested(""));
    let (st, e) = raw(&s, "/v1/memory/write", deep.into_bytes()).await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::BAD_REQUEST, "invalid_field"),
        "{e}"
    );
    let (_, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &s.owner_key,
            json!({ "name": "deep", "kind": "LOCAL_AGENT" }),
        )
        .await;
    let target = t["id"].as_str().unwrap();
    let deep = format!("{{\"targetId\": \"{target}\", \"input\": {}}}", nested(""));
    let (st, e) = raw(&s, "/v1/orchestrator/runs", deep.into_bytes()).await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::BAD_REQUEST, "malformed_json"),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recursion"),
        "{e}"
    );
    // Huge JSON within the body limit: a field past its own limit.
    let (st, e) = s
        .post(
            "/v1/memory/write",
            &s.owner_key,
            json!({ "content": "語".repeat(2_000_000) }),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["details"]["field"], "content");
    // Over the body limit: tests/robustness.rs (an announced oversized body is refused
    // before it is read) and tests/http_basics.rs (413 with a JSON body).
    // Invalid UTF-8.
    let mut bad = b"{\"content\": \"".to_vec();
    bad.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    bad.extend_from_slice(b"\"}");
    let (st, e) = raw(&s, "/v1/memory/write", bad).await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::BAD_REQUEST, "malformed_json"),
        "{e}"
    );
    // Duplicated keys: refused, not last-one-wins.
    let (st, e) = raw(
        &s,
        "/v1/memory/write",
        br#"{"content": "a", "content": "b"}"#.to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate"),
        "{e}"
    );
    // NaN is not JSON; huge and fractional numbers where counts are expected.
    let (st, e) = raw(
        &s,
        "/v1/memory/context-window",
        br#"{"query": "x", "tokenBudget": NaN}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::BAD_REQUEST, "malformed_json"),
        "{e}"
    );
    for budget in ["1e400", "18446744073709551616", "-1", "2.5", "1e10"] {
        let body = format!(r#"{{"query": "x", "tokenBudget": {budget}}}"#);
        let (st, e) = raw(&s, "/v1/memory/context-window", body.into_bytes()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "tokenBudget {budget}: {e}");
        // Out of JSON's range is a parse error; in range but not a count names the field.
        let named = e["error"]["details"]["field"] == "tokenBudget";
        let unparsable = budget == "1e400" && code(&e) == "malformed_json";
        assert!(named || unparsable, "{budget}: {e}");
    }
    let (st, e) = raw(
        &s,
        "/v1/memory/search",
        br#"{"query": "x", "limit": 1e309}"#.to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    unharmed(&s, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_urls_headers_and_traversal_are_refused() {
    let s = TestServer::start().await;
    // A very long query string.
    for len in [20_000, 60_000] {
        let long = "q".repeat(len);
        let resp = s
            .client
            .get(s.url(&format!("/v1/memory/search?query={long}")))
            .header("x-api-key", &s.owner_key)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(status.is_client_error(), "a {len}-byte query: {status}");
    }
    // A very long header.
    let resp = s
        .client
        .get(s.url("/v1/memory/count"))
        .header("x-api-key", &s.owner_key)
        .header("x-padding", "p".repeat(200_000))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    // A very long API key: refused with the other oversized headers; a long one within the
    // limits is simply not a key.
    let (st, e) = s.get("/v1/memory/count", &"mk_".repeat(20_000)).await;
    assert_eq!(
        (st, code(&e)),
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large"
        )
    );
    let (st, e) = s.get("/v1/memory/count", &"mk_".repeat(700)).await;
    assert_eq!((st, code(&e)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // Path traversal in ids: not ids, so nothing is found.
    for path in [
        "/v1/memory/..%2F..%2Fetc%2Fpasswd",
        "/v1/memory/%2e%2e%2fmemesh.db",
        "/v1/memory/mem_..%2F..",
        "/v1/agents/dispatch-targets/..%5C..%5Cwindows",
        "/v1/orchestrator/runs/run_%00",
    ] {
        let (st, e) = s.get(path, &s.owner_key).await;
        assert_eq!(
            (st, code(&e)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}: {e}"
        );
    }
    unharmed(&s, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_metacharacters_are_data_in_every_string_field() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let evil = "'; DROP TABLE memories; -- \" OR 1=1 /* %_ \\ `x` $1 ?";
    let (st, m) = s
        .post(
            "/v1/memory/write",
            &k,
            json!({ "content": evil, "space": "x:y", "summary": evil, "tags": ["';DROP--", "t%_", "1=1"],
                    "source": evil, "idempotencyKey": evil }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    assert_eq!(m["content"], evil);
    let id = m["id"].as_str().unwrap();
    let (_, back) = s.get(&format!("/v1/memory/{id}"), &k).await;
    assert_eq!(
        (back["summary"].as_str(), back["source"].as_str()),
        (Some(evil), Some(evil))
    );
    for mode in ["semantic", "keyword", "hybrid"] {
        let (st, r) = s
            .post(
                "/v1/memory/query",
                &k,
                json!({ "query": evil, "mode": mode, "tags": ["';DROP--"] }),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{mode}: {r}");
    }
    let (st, r) = s
        .get(&format!("/v1/memory/search?query={}", urlencode(evil)), &k)
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    // Where a field has a grammar (space names), metacharacters are refused by name.
    let (st, e) = s
        .get(
            &format!("/v1/memory/search?query=x&spaces={}", urlencode(evil)),
            &k,
        )
        .await;
    assert_eq!(
        (st, &e["error"]["details"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("spaces"))
    );
    let (st, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &k,
            json!({ "name": evil, "kind": "LOCAL_AGENT", "description": evil }),
        )
        .await;
    assert_eq!(
        (st, t["name"].as_str()),
        (StatusCode::CREATED, Some(evil)),
        "{t}"
    );
    let (st, key) = s.post("/v1/keys", &k, json!({ "name": evil })).await;
    assert_eq!(
        (st, key["name"].as_str()),
        (StatusCode::CREATED, Some(evil)),
        "{key}"
    );
    let (st, _) = s
        .get(&format!("/v1/audit/logs?action={}", urlencode(evil)), &k)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, inv) = s
        .post(
            "/v1/team/members/invite",
            &k,
            json!({ "email": "o'brien+x@alpha.test", "role": "VIEWER" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{inv}");
    unharmed(&s, 1).await;
    let verify = std::process::Command::new(common::bin_path())
        .arg("--data-dir")
        .arg(s.db_path().parent().unwrap())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
