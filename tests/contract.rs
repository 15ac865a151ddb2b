//! The OpenAPI contract: generated from the route table and the request types, every route
//! documented (a route without documentation fails here), served at `/v1/openapi.json` and
//! rendered offline at `/docs`; and the running server fuzzed against it by schemathesis
//! (installed by scripts/test): no 5xx, no response outside the document, no request the
//! document says is invalid accepted.

mod common;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_served() {
    assert_eq!(
        memesh::http::openapi::undocumented(),
        Vec::<String>::new(),
        "routes without an entry in src/http/openapi.rs"
    );
    let s = TestServer::start().await;
    let (st, doc) = s
        .call(reqwest::Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for route in memesh::http::route_table() {
        let op = &doc["paths"][route.path.as_str()][route.method.as_str().to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} is not in the document",
            route.method,
            route.path
        );
        let public = route.access == memesh::auth::Access::Public;
        assert_eq!(
            op["security"] == serde_json::json!([]),
            public,
            "{} {}",
            route.method,
            route.path
        );
        assert!(op["responses"]["400"].is_object() && op["responses"]["401"].is_object());
        // Every JSON success body has its shape in the document.
        for (status, r) in op["responses"].as_object().unwrap() {
            if status.starts_with('2')
                && let Some(schema) = r["content"]["application/json"].get("schema")
            {
                assert_ne!(
                    schema,
                    &serde_json::json!({}),
                    "{} {} {status}",
                    route.method,
                    route.path
                );
            }
        }
    }
    // Request bodies are the handlers' own types: unknown fields are refused in both.
    let write = &doc["components"]["schemas"]["WriteRequest"];
    assert_eq!(write["additionalProperties"], false, "{write}");
    assert_eq!(write["required"], serde_json::json!(["content"]));
    let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(codes, memesh::error::Code::ALL.len());
    assert!(doc["components"]["securitySchemes"]["apiKey"]["name"] == "x-api-key");

    let resp = reqwest::get(s.url("/docs")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(
        !html.contains("<script") && !html.contains("http://") && !html.contains("https://"),
        "offline, no script"
    );
    for path in [
        "/v1/memory/write",
        "/v1/orchestrator/runs/{id}/resolve-remote",
        "/v1/auth/device/token",
    ] {
        assert!(html.contains(path), "{path} on /docs");
    }
}

/// schemathesis against the running server with a valid key. `MEMESH_FUZZ_EXAMPLES` sets the
/// examples per operation (CI: 25; a long run: 1000 or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let Ok(st) = std::env::var("MEMESH_SCHEMATHESIS") else {
        panic!("MEMESH_SCHEMATHESIS names the schemathesis CLI (scripts/test installs it)");
    };
    let examples = std::env::var("MEMESH_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let s = TestServer::start().await;
    let url = s.url("/v1/openapi.json");
    let key = format!("x-api-key: {}", s.owner_key);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(st)
            .args(["run", &url, "-H", &key, "--checks", "all"])
            // The document does not carry every bound the server enforces (text lengths, the
            // grammar of space names): such requests are refused with 400 naming the field,
            // which this check would count as a failure.
            .args(["--exclude-checks", "positive_data_acceptance"])
            .args(["-n", &examples, "--seed", "20261130", "--no-color"])
            // Logging out would revoke the key the run uses; the page is HTML, not the API.
            .args([
                "--exclude-path",
                "/v1/auth/logout",
                "--exclude-path-regex",
                "^/device",
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    let (st, ready) = s.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK, "the server is unharmed: {ready}");
    let _: Value = ready;
}
