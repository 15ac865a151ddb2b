//! Health, readiness, request ids, authentication failures and the uniform JSON error body.

mod common;

use common::{TestServer, code};
use memesh::state::Settings;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_need_no_key() {
    let s = TestServer::start().await;
    let (st, body) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (st, body) = s.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["status"], "ready");
}

/// Each background job runs once when the server starts (then at its interval, an hour in tests)
/// and operators see its last successful pass on /healthz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_each_background_jobs_last_pass() {
    let s = TestServer::start().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (st, body) = s.call(Method::GET, "/healthz", None, None).await;
        assert_eq!(st, StatusCode::OK);
        let jobs = body["jobs"].as_object().expect("a jobs object");
        let names: Vec<&str> = jobs.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "holdExpiry",
                "indexSnapshot",
                "leaseRecovery",
                "plans",
                "probes",
                "refusalDigest",
                "remoteRefresh"
            ]
        );
        if jobs.values().all(|j| j["lastSuccessAt"] == common::START) {
            assert!(
                jobs.values()
                    .all(|j| j["restarts"] == 0 && j["everyMs"] == 3_600_000)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs never passed: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_generated_and_the_callers_kept_apart() {
    let s = TestServer::start().await;
    let resp = s.client.get(s.url("/healthz")).send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let resp = s
        .client
        .get(s.url("/v1/keys"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The server's own id, always; the caller's comes back under its own name.
    let own = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(own.len(), 36, "a UUID: {own}");
    assert_eq!(resp.headers()["x-client-request-id"], "trace-me-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401_with_json_body() {
    let s = TestServer::start().await;
    let (st, body) = s.call(Method::GET, "/v1/keys", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthorized");

    for bad in [
        "nope",
        "mk_short",
        "mk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let (st, body) = s.get("/v1/keys", bad).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(code(&body), "unauthorized");
    }
    let resp = s.client.get(s.url("/v1/keys")).send().await.unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"memesh\""
    );

    let resp = s
        .client
        .get(s.url("/v1/keys"))
        .header("authorization", format!("Basic {}", s.owner_key))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_header_is_accepted() {
    let s = TestServer::start().await;
    let resp = s
        .client
        .get(s.url("/v1/keys"))
        .bearer_auth(&s.owner_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_errors_have_json_bodies() {
    let s = TestServer::start().await;
    let (st, body) = s.get("/v1/no-such-thing", &s.owner_key).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "not_found");
    let (st, body) = s
        .call(Method::PUT, "/v1/keys", Some(&s.owner_key), None)
        .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(code(&body), "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_validation_names_the_field() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();

    let resp = s
        .client
        .post(s.url("/v1/keys"))
        .header("x-api-key", &k)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "malformed_json");

    let (st, body) = s.post("/v1/keys", &k, json!({})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "missing_field");
    assert_eq!(body["error"]["details"]["field"], "name");

    let (st, body) = s.post("/v1/keys", &k, json!({ "name": 7 })).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_field");
    assert_eq!(body["error"]["details"]["field"], "name");

    let (st, body) = s
        .post("/v1/keys", &k, json!({ "name": "x", "nmae": "y" }))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "unknown_field");
    assert_eq!(body["error"]["details"]["field"], "nmae");

    let (st, body) = s
        .post("/v1/keys", &k, json!({ "name": "x".repeat(101) }))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"]["field"], "name");

    let resp = s
        .client
        .post(s.url("/v1/keys"))
        .header("x-api-key", &k)
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_json() {
    let settings = Settings {
        max_body_bytes: 1024,
        ..common::test_settings()
    };
    let s = TestServer::start_with(settings).await;
    let (st, body) = s
        .post(
            "/v1/keys",
            &s.owner_key.clone(),
            json!({ "name": "x".repeat(4096) }),
        )
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&body), "payload_too_large");
}
