//! Hardening (issue 22): what an operator command, a key holder or a remote peer does can
//! neither stall writes, nor outlive its key, nor exhaust memory, nor reach inside. Each test
//! here failed against the server before its fix.

mod common;

use std::time::Duration;

use common::binary::{audit_verify, key_in, memesh, post, start, start_with, stop};
use common::browser::Browser;
use common::{TestServer, code, test_settings};
use memesh::plans::RateOverride;
use memesh::state::Settings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn delete_at(base: &str, path: &str, key: &str) -> StatusCode {
    common::binary::call(Method::DELETE, base, path, key, None)
        .await
        .0
}

/// Starts a device authorization as the CLI does: its answer (codes and links).
async fn start_device(s: &TestServer) -> Value {
    reqwest::Client::new()
        .post(s.url("/v1/auth/device"))
        .form(&[("client_id", "memesh-cli")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// One poll of the token endpoint, naming `client` or not: status and body.
async fn poll_token(
    s: &TestServer,
    device_code: &str,
    client: Option<&str>,
) -> (StatusCode, Value) {
    let mut form = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code),
    ];
    if let Some(c) = client {
        form.push(("client_id", c));
    }
    let r = reqwest::Client::new()
        .post(s.url("/v1/auth/device/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Item 1: `memesh plan set` and `memesh tenant create` write the audit log from another
/// process while the server serves; the server's next audited writes in every tenant still
/// succeed (they re-read the chain's head) and the chains verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_beside_a_running_server_do_not_stall_audited_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let owner = key_in(&server.stdout).expect("owner key");
    // The server has the tenant's audit head in memory.
    let (st, _) = post(&server.base, "/v1/keys", &owner, json!({ "name": "warm" })).await;
    assert_eq!(st, StatusCode::CREATED);

    let plan = memesh(dir.path())
        .args(["plan", "set", "--tenant", "default", "--plan", "default"])
        .output()
        .unwrap();
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let created = memesh(dir.path())
        .args([
            "tenant",
            "create",
            "--name",
            "beta",
            "--owner-email",
            "o@beta.test",
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let beta = key_in(&String::from_utf8_lossy(&created.stdout)).expect("beta's owner key");

    for key in [&owner, &beta] {
        for round in 0..3 {
            let (st, k) = post(
                &server.base,
                "/v1/keys",
                key,
                json!({ "name": format!("after-{round}") }),
            )
            .await;
            assert_eq!(st, StatusCode::CREATED, "{k}");
            let path = format!("/v1/keys/{}", k["id"].as_str().unwrap());
            assert_eq!(delete_at(&server.base, &path, key).await, StatusCode::OK);
        }
    }
    // Another command while the server keeps the new heads in memory, then more writes.
    let again = memesh(dir.path())
        .args(["plan", "set", "--tenant", "beta", "--plan", "default"])
        .output()
        .unwrap();
    assert!(again.status.success());
    let (st, _) = post(&server.base, "/v1/keys", &beta, json!({ "name": "last" })).await;
    assert_eq!(st, StatusCode::CREATED);
    stop(server);
    let (intact, text) = audit_verify(dir.path());
    assert!(intact, "{text}");
}

/// Item 2: a key made by an expiring key expires with it (or earlier, never later), records its
/// parent, and a cascading revocation reaches every descendant; a plain one lets a key rotate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_by_a_key_never_outlive_it() {
    let s = TestServer::start().await;
    let expiry = "2026-03-20T10:00:00.000Z";
    let (st, parent) = s
        .post(
            "/v1/keys",
            &s.owner_key,
            json!({ "name": "p", "expiresAt": expiry }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{parent}");
    let parent_key = parent["key"].as_str().unwrap();

    // No expiry asked: the parent's. A later one: refused, naming the field.
    let (st, child) = s.post("/v1/keys", parent_key, json!({ "name": "c" })).await;
    assert_eq!(st, StatusCode::CREATED, "{child}");
    assert_eq!(child["expiresAt"], expiry);
    assert_eq!(child["parentKeyId"], parent["id"]);
    let (st, err) = s
        .post(
            "/v1/keys",
            parent_key,
            json!({ "name": "late", "expiresAt": "2026-03-20T11:00:00.000Z" }),
        )
        .await;
    assert_eq!((st, code(&err)), (StatusCode::BAD_REQUEST, "invalid_field"));
    assert_eq!(err["error"]["details"]["field"], "expiresAt");
    let (st, early) = s
        .post(
            "/v1/keys",
            parent_key,
            json!({ "name": "early", "expiresAt": "2026-03-20T09:30:00.000Z" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(early["expiresAt"], "2026-03-20T09:30:00.000Z");

    // A grandchild, through the child.
    let child_key = child["key"].as_str().unwrap();
    let (st, grandchild) = s.post("/v1/keys", child_key, json!({ "name": "g" })).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(grandchild["parentKeyId"], child["id"]);
    let grandchild_key = grandchild["key"].as_str().unwrap();

    // Past the parent's expiry every descendant is expired too.
    s.clock.advance_ms(3_600_001);
    for k in [child_key, grandchild_key] {
        let (st, e) = s.get("/v1/keys", k).await;
        assert_eq!((st, code(&e)), (StatusCode::UNAUTHORIZED, "key_expired"));
    }
    s.clock.advance_ms(-3_600_001);

    // Revoking without cascade leaves the children (rotation); with cascade takes them all.
    let (st, rotated) = s.post("/v1/keys", parent_key, json!({ "name": "r" })).await;
    assert_eq!(st, StatusCode::CREATED);
    let path = format!("/v1/keys/{}", rotated["id"].as_str().unwrap());
    let (st, r) = s.delete(&path, parent_key).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["revokedDescendants"], json!([]));
    let path = format!("/v1/keys/{}?cascade=true", parent["id"].as_str().unwrap());
    let (st, r) = s.delete(&path, &s.owner_key).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let mut revoked: Vec<&str> = r["revokedDescendants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    revoked.sort_unstable();
    let mut expected = vec![
        child["id"].as_str().unwrap(),
        early["id"].as_str().unwrap(),
        grandchild["id"].as_str().unwrap(),
    ];
    expected.sort_unstable();
    assert_eq!(revoked, expected);
    for k in [parent_key, child_key, grandchild_key] {
        assert_eq!(s.get("/v1/keys", k).await.0, StatusCode::UNAUTHORIZED);
    }
    let (st, e) = s.delete("/v1/keys/key_x?cascade=maybe", &s.owner_key).await;
    assert!(st.is_client_error(), "{e}");
}

/// Item 2, the device path: the key a device receives is the approving key's child, expires
/// with it, and dies with it on a cascading revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_key_is_a_child_of_the_key_that_approved_it() {
    let s = TestServer::start().await;
    let expiry = "2026-03-20T12:00:00.000Z";
    let (_, approver) = s
        .post(
            "/v1/keys",
            &s.owner_key,
            json!({ "name": "laptop", "expiresAt": expiry }),
        )
        .await;
    let approver_key = approver["key"].as_str().unwrap();
    let started = start_device(&s).await;
    let user_code = started["user_code"].as_str().unwrap();
    let mut browser = Browser::new(&s);
    let page = browser.sign_in(approver_key, user_code).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    // No scope asked for: memory only, not everything the approver may do.
    assert!(page.html.contains("memory:read") && !page.html.contains("keys:write</code>"));
    assert!(
        page.html
            .contains("Approve only if you started this yourself")
    );
    assert!(page.html.contains("from 127.0.0.1"), "{}", page.html);
    let done = browser.decide(&page, user_code, "approve").await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.html);
    let device_code = started["device_code"].as_str().unwrap();
    let (st, token) = poll_token(&s, device_code, Some("memesh-cli")).await;
    assert_eq!(st, StatusCode::OK, "{token}");
    let device_key = token["access_token"].as_str().expect("a key").to_owned();
    assert_eq!(token["scope"], "memory:read memory:write");
    let (_, keys) = s.get("/v1/keys", &s.owner_key).await;
    let issued = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == token["key_id"])
        .expect("the issued key is listed")
        .clone();
    assert_eq!(issued["parentKeyId"], approver["id"]);
    assert_eq!(issued["expiresAt"], expiry);
    let path = format!("/v1/keys/{}?cascade=true", approver["id"].as_str().unwrap());
    assert_eq!(s.delete(&path, &s.owner_key).await.0, StatusCode::OK);
    assert_eq!(
        s.get("/v1/auth/whoami", &device_key).await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// Reads the server's peak resident memory (`VmHWM`) in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// Sends a POST of `len` bytes whose head is `head` and whose remaining bytes are `fill`,
/// written in 1 MiB pieces, over a raw connection; returns the status and the body.
async fn raw_post(
    base: &str,
    path: &str,
    key: &str,
    head: &[u8],
    len: usize,
    fill: u8,
) -> (u16, String) {
    let addr = base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let request_head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {key}\r\ncontent-type: text/event-stream\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    let upload = async move {
        writer.write_all(request_head.as_bytes()).await?;
        writer.write_all(head).await?;
        let piece = vec![fill; 1 << 20];
        let mut left = len - head.len();
        while left > 0 {
            let n = left.min(piece.len());
            writer.write_all(&piece[..n]).await?;
            left -= n;
        }
        writer.flush().await
    };
    let answer = async move {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.map(|_| out)
    };
    let (sent, answered) = tokio::join!(upload, answer);
    let text = match answered {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return (0, format!("reading the answer: {e}; sending: {sent:?}")),
    };
    if text.len() < 12 {
        return (0, format!("no answer ({text:?}); sending: {sent:?}"));
    }
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Item 3: a 256 MiB export event is refused with 413 naming the limit, and the server's peak
/// memory barely moves (it held at most one event's limit of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_import_event_is_refused_without_growing_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let owner = key_in(&server.stdout).unwrap();
    // Warm: the model has answered a search, the writer has written.
    let (st, _) = post(
        &server.base,
        "/v1/memory/write",
        &owner,
        json!({ "content": "warm up" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let before = peak_rss_kb(server.pid());
    let head = b"event: memory\ndata: ";
    let upload = raw_post(
        &server.base,
        "/v1/memory/import",
        &owner,
        head,
        256 << 20,
        b'x',
    );
    let (status, body) = upload.await;
    assert_eq!(
        status,
        413,
        "{body}; the server said: {}",
        server.logs().join("\n")
    );
    let v: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(code(&v), "payload_too_large");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1048576"),
        "{v}"
    );
    assert_eq!(v["error"]["details"]["limit"], 1_048_576);
    let grown_mb = (peak_rss_kb(server.pid()).saturating_sub(before)) / 1024;
    assert!(grown_mb < 64, "peak RSS grew by {grown_mb} MB");
    stop(server);
}

/// Item 3: an event made of many `data:` lines is held to the same limit as one line, and a
/// tenant runs at most two imports at once (429 with Retry-After beyond).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_are_bounded_per_event_and_per_tenant() {
    let s = TestServer::start().await;
    let line = format!("data: {}\n", "y".repeat(512 * 1024));
    let body = format!("event: memory\n{}\n", line.repeat(3));
    let resp = s
        .client
        .post(s.url("/v1/memory/import"))
        .header("x-api-key", &s.owner_key)
        .header("content-type", "text/event-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["details"]["limit"], 1_048_576);

    // Two imports held open (their bodies never finish), then a third.
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/memory/import HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {}\r\ncontent-type: application/x-ndjson\r\ncontent-length: 1000000\r\n\r\n{{",
            s.owner_key
        );
        c.write_all(head.as_bytes()).await.unwrap();
        held.push(c);
    }
    let third = || async {
        s.client
            .post(s.url("/v1/memory/import"))
            .header("x-api-key", &s.owner_key)
            .header("content-type", "application/x-ndjson")
            .body("")
            .send()
            .await
            .unwrap()
    };
    let mut refused = None;
    for _ in 0..100 {
        let r = third().await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("a third concurrent import is refused");
    assert!(refused.headers().contains_key("retry-after"));
    let v: Value = refused.json().await.unwrap();
    assert_eq!(code(&v), "rate_limited");
    // Another tenant is not held back by this one's imports.
    let other = s.create_tenant("other", "o@other.test");
    let r = s
        .client
        .post(s.url("/v1/memory/import"))
        .header("x-api-key", &other.owner_key)
        .header("content-type", "application/x-ndjson")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(held);
    let mut freed = false;
    for _ in 0..100 {
        if third().await.status() == StatusCode::OK {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the places are given back when the held imports end");
}

fn limited_settings() -> Settings {
    let mut settings = test_settings();
    settings.plans.rate = RateOverride {
        per_second: Some(1),
        burst: Some(100),
    };
    settings.plans.public_per_second = 5;
    settings.plans.public_burst = 10;
    settings
}

/// Audit rows of `action` (newest first).
async fn audit_rows(s: &TestServer, action: &str) -> Vec<Value> {
    let (st, page) = s
        .get(
            &format!("/v1/audit/logs?action={action}&limit=100"),
            &s.owner_key,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    page["logs"].as_array().unwrap().clone()
}

/// Item 4: refusals cost the caller's budget and do not each write an audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_refusals_end_in_429s_and_leave_a_handful_of_audit_rows() {
    let s = TestServer::start_with(limited_settings()).await;
    let (_, k) = s
        .post("/v1/keys", &s.owner_key, json!({ "name": "doomed" }))
        .await;
    let doomed = k["key"].as_str().unwrap().to_owned();
    let path = format!("/v1/keys/{}", k["id"].as_str().unwrap());
    assert_eq!(s.delete(&path, &s.owner_key).await.0, StatusCode::OK);

    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..1000 {
        let (st, _) = s
            .post("/v1/memory/write", &doomed, json!({ "content": "x" }))
            .await;
        statuses.push(st);
    }
    let unauthorized = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(unauthorized + limited, 1000, "{statuses:?}");
    // The burst (100) and one a second after it: the rest were turned away as 429s.
    let allowed = 100 + started.elapsed().as_secs() as usize + 1;
    assert!(
        unauthorized <= allowed,
        "{unauthorized} refusals answered 401"
    );
    let tail = &statuses[900..];
    assert!(
        tail.iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count()
            >= 95,
        "{tail:?}"
    );
    let denied = audit_rows(&s, "auth.denied").await;
    assert!(denied.len() <= 3, "{} rows: {denied:?}", denied.len());
    // The rest are counted into one row once the minute is over (here: at once).
    let written = memesh::jobs::write_refusal_digest(&s.state, true)
        .await
        .unwrap();
    assert_eq!(written, 1);
    let repeated = audit_rows(&s, "auth.denied.repeated").await;
    assert_eq!(repeated.len(), 1);
    assert_eq!(
        repeated[0]["detail"]["count"],
        json!(unauthorized as u64 - denied.len() as u64)
    );
    assert_eq!(repeated[0]["actor"]["keyId"], k["id"]);

    // Unknown keys are limited by address.
    let mut last = StatusCode::OK;
    for _ in 0..50 {
        last = s
            .post(
                "/v1/memory/write",
                "mk_unknownunknownunknownunknownunknownunknownu",
                json!({}),
            )
            .await
            .0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    // A key lacking the permission is charged too.
    let (_, viewer) = s
        .post(
            "/v1/keys",
            &s.owner_key,
            json!({ "name": "ro", "scopes": ["memory:read"] }),
        )
        .await;
    let viewer = viewer["key"].as_str().unwrap();
    let mut codes = Vec::new();
    for _ in 0..300 {
        codes.push(
            s.post("/v1/memory/write", viewer, json!({ "content": "x" }))
                .await
                .0,
        );
    }
    assert_eq!(codes[0], StatusCode::FORBIDDEN);
    assert_eq!(codes.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
}

/// A fake service on `addr`: counts connections, answers every request with `answer`.
async fn fake_service(
    addr: &str,
    answer: &'static str,
) -> Option<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let at = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = c.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = c.write_all(reply.as_bytes()).await;
            });
        }
    });
    Some((at, seen))
}

/// Item 5: a service on one of this host's own (non-loopback) addresses is out of reach, as is
/// every special-purpose range (the table of ranges is a unit test of `outbound`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_own_addresses_are_out_of_reach() {
    let mut settings = test_settings();
    settings.allow_private_agent_urls = false;
    let s = TestServer::start_with(settings).await;
    let own: Vec<std::net::IpAddr> = if_addrs::get_if_addrs()
        .unwrap()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && ip.is_ipv4())
        .collect();
    let Some(addr) = own.first() else {
        eprintln!("no non-loopback IPv4 address on this host: nothing to try");
        return;
    };
    let (at, seen) = fake_service(&format!("{addr}:0"), "{}")
        .await
        .expect("listen");
    let (st, e) = s
        .post(
            "/v1/agents/dispatch-targets",
            &s.owner_key,
            json!({ "name": "inside", "kind": "REMOTE_A2A", "cardUrl": format!("http://{at}") }),
        )
        .await;
    assert!(st.is_client_error(), "{st} {e}");
    assert!(e.to_string().contains("internal address"), "{e}");
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request went out"
    );
}

/// Item 5: what a peer that is not an A2A agent answers is never quoted back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_a2a_answer_is_not_reflected() {
    use memesh::agents::a2a::{A2aClient, Protocol};
    use memesh::outbound::Outbound;
    let outbound = Outbound::new(true, None).unwrap();
    for answer in [
        r#"{"jsonrpc":"2.0","id":"1","secret":"internal-data-xyz"}"#,
        r#"{"jsonrpc":"2.0","id":"1","result":{"secret":"internal-data-xyz"}}"#,
        r#"{"jsonrpc":"2.0","id":"1","result":{"task":{"secret":"internal-data-xyz"}}}"#,
    ] {
        let (at, _) = fake_service("127.0.0.1:0", answer).await.unwrap();
        let endpoint = format!("http://{at}/");
        let c = A2aClient {
            outbound: &outbound,
            endpoint: &endpoint,
            protocol: Protocol::V1_0,
            deadline: Duration::from_secs(5),
        };
        let err = c.get("t").await.unwrap_err().to_string();
        assert!(!err.contains("internal-data"), "{err}");
    }
    let long = format!(
        r#"{{"jsonrpc":"2.0","id":"1","error":{{"code":-1,"message":"{}\u0007"}}}}"#,
        "z".repeat(5000)
    );
    let (at, _) = fake_service("127.0.0.1:0", Box::leak(long.into_boxed_str()))
        .await
        .unwrap();
    let endpoint = format!("http://{at}/");
    let c = A2aClient {
        outbound: &outbound,
        endpoint: &endpoint,
        protocol: Protocol::V1_0,
        deadline: Duration::from_secs(5),
    };
    let err = c.get("t").await.unwrap_err().to_string();
    assert!(err.len() < 300 && !err.contains('\u{7}'), "{err}");
}

/// Item 6: the environment's proxy is never used: a name is resolved here and refused, and the
/// proxy sees nothing. A bad `--agent-proxy` stops the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environments_proxy_is_not_used() {
    let (proxy, seen) = fake_service("127.0.0.1:0", "{}").await.unwrap();
    let proxy_url = format!("http://{proxy}");
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &[
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("ALL_PROXY", &proxy_url),
        ],
    );
    let owner = key_in(&server.stdout).unwrap();
    let (st, e) = post(
        &server.base,
        "/v1/agents/dispatch-targets",
        &owner,
        json!({ "name": "meta", "kind": "REMOTE_A2A", "cardUrl": "http://localhost:9" }),
    )
    .await;
    assert!(st.is_client_error(), "{st} {e}");
    assert!(e.to_string().contains("internal address"), "{e}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
    stop(server);

    let bad = memesh(tempfile::tempdir().unwrap().path())
        .args(["--listen", "127.0.0.1:0", "--agent-proxy", "::not a url::"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("agent-proxy"));
}

/// Item 7: cancelling someone else's run is decided by the role re-read in the write: a
/// demotion committed between authentication and the write wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demotion_committed_before_the_cancel_wins() {
    let s = TestServer::start().await;
    let (admin_id, admin) = s.add_member(&s.owner_key, "a@alpha.test", "ADMIN").await;
    let (_, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &s.owner_key,
            json!({ "name": "w", "kind": "LOCAL_AGENT" }),
        )
        .await;
    let (st, run) = s
        .post(
            "/v1/orchestrator/runs",
            &s.owner_key,
            json!({ "targetId": t["id"], "input": {} }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{run}");
    // Both keys used once, so authenticating them needs no write.
    assert_eq!(s.get("/v1/keys", &admin).await.0, StatusCode::OK);
    // The writer is busy; the demotion queues first, then the cancel (authenticated as ADMIN).
    let db = s.state.db.clone();
    let busy = tokio::spawn(async move {
        db.write(|_| {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(())
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let demote = {
        let (client, url, key) = (
            s.client.clone(),
            s.url(&format!("/v1/team/members/{admin_id}/role")),
            s.owner_key.clone(),
        );
        tokio::spawn(async move {
            client
                .patch(url)
                .header("x-api-key", key)
                .json(&json!({ "role": "MEMBER" }))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = format!(
        "/v1/orchestrator/runs/{}/cancel",
        run["id"].as_str().unwrap()
    );
    let (st, e) = s.call(Method::POST, &path, Some(&admin), None).await;
    assert_eq!(demote.await.unwrap(), StatusCode::OK);
    busy.await.unwrap().unwrap();
    assert_eq!(
        (st, code(&e)),
        (StatusCode::FORBIDDEN, "insufficient_role"),
        "{e}"
    );
}

/// Item 8: an export stops when its key is revoked mid-stream, with an `error` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_ends_when_its_key_is_revoked() {
    let s = TestServer::start().await;
    for b in 0..21 {
        let memories: Vec<Value> = (0..100)
            .map(|i| json!({ "content": format!("note {b}-{i}") }))
            .collect();
        let (st, r) = s
            .post(
                "/v1/memory/batch",
                &s.owner_key,
                json!({ "memories": memories }),
            )
            .await;
        assert!(st.is_success(), "{r}");
    }
    let (_, k) = s
        .post("/v1/keys", &s.owner_key, json!({ "name": "exporter" }))
        .await;
    let resp = s
        .client
        .get(s.url("/v1/memory/stream/export"))
        .header("x-api-key", k["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp = resp;
    let mut text = String::new();
    while !text.contains("event: memory") {
        text.push_str(&String::from_utf8_lossy(
            &resp.chunk().await.unwrap().unwrap(),
        ));
    }
    let path = format!("/v1/keys/{}", k["id"].as_str().unwrap());
    assert_eq!(s.delete(&path, &s.owner_key).await.0, StatusCode::OK);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events = text.matches("event: memory").count();
    assert!(
        events < 2100,
        "{events} memories streamed after the revocation"
    );
    assert!(
        text.contains("event: error"),
        "the stream says why it ended"
    );
    assert!(text.contains("unauthorized"));
    assert!(!text.contains("event: done"));
}

/// Item 9: the device page is limited per address (behind a trusted proxy, the forwarded
/// client's, an IPv6 client by its /64), checks the key before any user code, binds its CSRF
/// token to the session, and uses `__Host-` `Secure` cookies behind https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_page_is_limited_and_reveals_nothing_before_sign_in() {
    let mut settings = limited_settings();
    settings.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let s = TestServer::start_with(settings).await;
    let get = |forwarded: &'static str| {
        let (client, url) = (s.client.clone(), s.url("/device"));
        async move {
            client
                .get(url)
                .header("x-forwarded-for", forwarded)
                .send()
                .await
                .unwrap()
        }
    };
    let mut last = None;
    for _ in 0..15 {
        last = Some(get("198.51.100.7").await);
    }
    let last = last.unwrap();
    assert_eq!(last.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(last.headers().contains_key("retry-after"));
    // Another client behind the same proxy has its own budget; one /64 shares one.
    assert_eq!(get("198.51.100.8").await.status(), StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(get("2001:db8:1:2::1").await.status(), StatusCode::OK);
    }
    assert_eq!(
        get("2001:db8:1:2::ffff").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The proxy's own claim of a trusted hop is skipped: the right-most untrusted address.
    assert_eq!(get("203.0.113.5, 127.0.0.1").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_page_checks_the_key_first_and_binds_csrf_to_the_session() {
    let s = TestServer::start().await;
    let mut browser = Browser::new(&s);
    // A wrong key with a code that does not exist: the answer is about the key only.
    let page = browser.get("/device").await;
    let csrf = Browser::csrf(&page);
    let r = browser
        .post(
            &[
                ("action", "signin"),
                ("csrf", &csrf),
                ("api_key", "mk_wrongwrongwrongwrongwrongwrongwrongwrongwro"),
                ("user_code", "BCDF-GHJK"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.html);
    assert!(!r.html.contains("not recognised"), "{}", r.html);
    // Signed in, the forms carry the session's token; the sign-in form's no longer passes.
    let started = start_device(&s).await;
    let user_code = started["user_code"].as_str().unwrap();
    let signed_in = browser.sign_in(&s.owner_key, user_code).await;
    let session_csrf = Browser::csrf(&signed_in);
    assert_ne!(session_csrf, csrf);
    let refused = browser
        .post(
            &[
                ("action", "approve"),
                ("csrf", &csrf),
                ("user_code", user_code),
            ],
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.html);
    let ok = browser.decide(&signed_in, user_code, "approve").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.html);
    // RFC 8628 §3.4: a poll names its client.
    let device_code = started["device_code"].as_str().unwrap();
    let (st, v) = poll_token(&s, device_code, None).await;
    assert_eq!(
        (st, &v["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_https_the_device_cookies_are_host_only_and_secure() {
    let mut settings = test_settings();
    settings.device.public_url = Some("https://memesh.example".into());
    let s = TestServer::start_with(settings).await;
    let r = s.client.get(s.url("/device")).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-memesh_device_csrf="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("Path=/;"),
        "{cookie}"
    );
}

/// Item 10: a client that never finishes its request head is cut off, and connections beyond
/// the cap wait until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off_and_connections_are_capped() {
    let mut settings = test_settings();
    settings.max_connections = 2;
    let s = TestServer::start_with(settings).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the half-sent request was not cut off");
    let waited = started.elapsed();
    assert!(
        waited >= memesh::HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "{waited:?}"
    );

    // Two idle connections hold both places; a third is not served until one closes.
    let mut a = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for c in [&mut a, &mut b] {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        c.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
    }
    let third = tokio::spawn({
        let url = s.url("/healthz");
        async move { reqwest::get(url).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "served beyond the cap");
    drop(a);
    let status = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a place is free")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A LOCAL_AGENT target and a run on it that waits for approval, requested by `requester`.
async fn run_awaiting_approval(s: &TestServer, requester: &str) -> (String, String) {
    let (_, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &s.owner_key,
            json!({ "name": format!("t-{}", uuid_like()), "kind": "LOCAL_AGENT" }),
        )
        .await;
    let (st, r) = s
        .post(
            "/v1/orchestrator/runs",
            requester,
            json!({ "targetId": t["id"], "input": {}, "requiresApproval": true }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    (
        r["id"].as_str().unwrap().to_owned(),
        r["approvals"][0]["id"].as_str().unwrap().to_owned(),
    )
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Item 11: one ADMIN cannot make a second ADMIN, and an approver must be independent of the
/// requester: not invited by them, a member before the run, holding their role since before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_person_approval_needs_an_independent_second_person() {
    let s = TestServer::start().await;
    let (_, admin) = s.add_member(&s.owner_key, "a1@alpha.test", "ADMIN").await;
    let (_, early) = s.add_member(&s.owner_key, "a2@alpha.test", "ADMIN").await;
    // An ADMIN may not invite or promote an ADMIN.
    let (st, e) = s
        .post(
            "/v1/team/members/invite",
            &admin,
            json!({ "email": "sock@alpha.test", "role": "ADMIN" }),
        )
        .await;
    assert_eq!((st, code(&e)), (StatusCode::FORBIDDEN, "insufficient_role"));
    let (puppet_id, puppet) = s.add_member(&admin, "sock@alpha.test", "MEMBER").await;
    let (st, e) = s
        .patch(
            &format!("/v1/team/members/{puppet_id}/role"),
            &admin,
            json!({ "role": "ADMIN" }),
        )
        .await;
    assert_eq!((st, code(&e)), (StatusCode::FORBIDDEN, "insufficient_role"));
    // Even an OWNER's promotion does not make the requester's own invitee a reviewer.
    let (st, _) = s
        .patch(
            &format!("/v1/team/members/{puppet_id}/role"),
            &s.owner_key,
            json!({ "role": "ADMIN" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    s.clock.advance_ms(60_000);
    let (run, approval) = run_awaiting_approval(&s, &admin).await;
    let approve = format!("/v1/orchestrator/runs/{run}/approvals/{approval}/approve");
    let reason = |e: &Value| {
        e["error"]["details"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };

    let (st, e) = s.post(&approve, &puppet, json!({})).await;
    assert_eq!(
        (st, reason(&e)),
        (StatusCode::FORBIDDEN, "invited_by_requester".into()),
        "{e}"
    );
    s.clock.advance_ms(60_000);
    let (_, late) = s.add_member(&s.owner_key, "late@alpha.test", "ADMIN").await;
    let (st, e) = s.post(&approve, &late, json!({})).await;
    assert_eq!(
        (st, reason(&e)),
        (StatusCode::FORBIDDEN, "joined_after_request".into()),
        "{e}"
    );
    let (_, before) = s.add_member(&s.owner_key, "m@alpha.test", "MEMBER").await;
    let _ = before;
    // A member from before, promoted after the request.
    let (member_id, member) = {
        let (_, members) = s.get("/v1/team/members", &s.owner_key).await;
        let m = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["email"] == "a2@alpha.test")
            .unwrap()
            .clone();
        (m["userId"].as_str().unwrap().to_owned(), early.clone())
    };
    let (st, _) = s
        .patch(
            &format!("/v1/team/members/{member_id}/role"),
            &s.owner_key,
            json!({ "role": "MEMBER" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .patch(
            &format!("/v1/team/members/{member_id}/role"),
            &s.owner_key,
            json!({ "role": "ADMIN" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, e) = s.post(&approve, &member, json!({})).await;
    assert_eq!(
        (st, reason(&e)),
        (StatusCode::FORBIDDEN, "role_granted_after_request".into()),
        "{e}"
    );
    // The OWNER, a member from before who did not invite the requester's puppet… passes.
    let (st, ok) = s.post(&approve, &s.owner_key, json!({})).await;
    assert_eq!(st, StatusCode::OK, "{ok}");
    // The refused attempts are on the record.
    let refused = audit_rows(&s, "auth.denied").await;
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|r| r["detail"]["code"].as_str())
        .collect();
    for r in [
        "invited_by_requester",
        "joined_after_request",
        "role_granted_after_request",
    ] {
        assert!(reasons.contains(&r), "{reasons:?}");
    }
}

/// Item 12: the data directory, the database and its WAL, index snapshots and backups are the
/// owner's alone; an exposed data directory is warned about at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private_and_an_exposed_directory_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key_file = root.path().join("owner.key");
    let server = start(
        &data,
        &[("MEMESH_BOOTSTRAP_KEY_FILE", key_file.to_str().unwrap())],
    );
    // The key went to the file (0600), not to standard output.
    assert!(key_in(&server.stdout).is_none(), "{}", server.stdout);
    assert_eq!(mode(&key_file), 0o600);
    let owner = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let (st, _) = post(
        &server.base,
        "/v1/memory/write",
        &owner,
        json!({ "content": "secret" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        mode(&data),
        0o700,
        "a fresh data directory becomes owner-only"
    );
    for f in ["memesh.db", "memesh.db-wal", "memesh.db-shm"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    stop(server);
    let index = data.join("index");
    assert_eq!(mode(&index), 0o700);
    for entry in walk(&index) {
        let m = mode(&entry);
        assert!(m == 0o600 || m == 0o700, "{} is {m:o}", entry.display());
    }
    let backup = root.path().join("backup");
    let out = memesh(&data).arg("backup").arg(&backup).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&backup), 0o700);
    for entry in walk(&backup) {
        let m = mode(&entry);
        assert!(m == 0o600 || m == 0o700, "{} is {m:o}", entry.display());
    }
    // Someone opens the directory up: the next start says so.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = start_with(&data, &["--listen", "0.0.0.0:0"], &[]);
    let logs = server.logs().join("\n");
    assert!(logs.contains("can read every memory"), "{logs}");
    // Listening beyond loopback without --public-url is warned about too.
    assert!(logs.contains("without --public-url"), "{logs}");
    stop(server);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Item 13: a keyword or hybrid query has at most 64 distinct words, and both draw on the
/// expensive budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_queries_are_bounded_and_count_as_expensive() {
    let mut settings = test_settings();
    settings.plans.rate = RateOverride {
        per_second: Some(1000),
        burst: Some(1000),
    };
    let s = TestServer::start_with(settings).await;
    let (st, _) = s
        .post(
            "/v1/memory/write",
            &s.owner_key,
            json!({ "content": "alpha beta gamma" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let words = |n: usize| {
        (0..n)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for mode in ["keyword", "hybrid"] {
        let (st, e) = s
            .post(
                "/v1/memory/query",
                &s.owner_key,
                json!({ "query": words(65), "mode": mode }),
            )
            .await;
        assert_eq!(
            (st, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_field"),
            "{e}"
        );
        assert_eq!(e["error"]["details"]["field"], "query");
        assert_eq!(e["error"]["details"]["maxWords"], 64);
    }
    let (st, ok) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": format!("{} alpha", words(63)), "mode": "keyword" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{ok}");
    assert_eq!(ok["total"], 1);
    assert_eq!(ok["totalCapped"], false);
    // A semantic query of many words is not a keyword query: no word cap.
    let (st, _) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": words(200) }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // The default plan's expensive budget is 100 a second with bursts of 200.
    let mut last = StatusCode::OK;
    for _ in 0..1000 {
        last = s
            .post(
                "/v1/memory/query",
                &s.owner_key,
                json!({ "query": "alpha", "mode": "keyword" }),
            )
            .await
            .0;
        if last == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    // Semantic queries still pass: they are not expensive.
    let (st, _) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": "alpha" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
}

/// The server files requests under its own id; the caller's is kept apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_request_id_is_kept_apart() {
    let s = TestServer::start().await;
    let r = s
        .client
        .post(s.url("/v1/keys"))
        .header("x-api-key", &s.owner_key)
        .header("x-request-id", "mine-123")
        .json(&json!({ "name": "k" }))
        .send()
        .await
        .unwrap();
    let server_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(server_id, "mine-123");
    assert_eq!(r.headers()["x-client-request-id"], "mine-123");
    let rows = audit_rows(&s, "keys.create").await;
    assert_eq!(rows[0]["requestId"], server_id.as_str());
    assert_eq!(rows[0]["detail"]["clientRequestId"], "mine-123");
}

/// A fake A2A 1.0 agent: its card, and a task that flips between two states on every look, or
/// (`big`) completes with an answer larger than the server keeps.
async fn flipping_agent(big: bool) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let looks = Arc::new(AtomicUsize::new(0));
    let card = common::card(&format!("{base}/a2a"));
    let app = axum::Router::new()
        .route(
            "/.well-known/agent-card.json",
            axum::routing::get(move || {
                let card = card.clone();
                async move { axum::Json(card) }
            }),
        )
        .route(
            "/a2a",
            axum::routing::post(move |axum::Json(call): axum::Json<Value>| {
                let looks = looks.clone();
                async move {
                    let n = looks.fetch_add(1, Ordering::SeqCst);
                    let state = if call["method"] == "SendMessage" || !big {
                        ["TASK_STATE_WORKING", "TASK_STATE_INPUT_REQUIRED"][n % 2]
                    } else {
                        "TASK_STATE_COMPLETED"
                    };
                    let task = json!({
                        "id": "t-1", "contextId": "c-1", "status": { "state": state },
                        "artifacts": [{ "parts": [{ "text": "z".repeat(if big { 8192 } else { 1 }) }] }],
                    });
                    let result = if call["method"] == "SendMessage" {
                        json!({ "task": task })
                    } else {
                        task
                    };
                    axum::Json(json!({ "jsonrpc": "2.0", "id": call["id"], "result": result }))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A remote run on `agent`; its id.
async fn remote_run(s: &TestServer, agent: &str) -> String {
    let (st, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &s.owner_key,
            json!({ "name": format!("remote-{}", uuid_like()), "kind": "REMOTE_A2A", "cardUrl": agent }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let (st, r) = s
        .post(
            "/v1/orchestrator/runs",
            &s.owner_key,
            json!({ "targetId": t["id"], "input": "go" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    r["id"].as_str().unwrap().to_owned()
}

/// A remote agent cannot grow a run's timeline without end, nor store a result past
/// `--max-result-bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_agent_cannot_grow_a_run_without_end() {
    let mut settings = test_settings();
    settings.max_result_bytes = 4096;
    let s = TestServer::start_with(settings).await;
    let run = remote_run(&s, &flipping_agent(false).await).await;
    let reconcile = format!("/v1/orchestrator/runs/{run}/reconcile");
    for _ in 0..130 {
        let (st, v) = s.post(&reconcile, &s.owner_key, json!({})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let db = memesh::db::Db::open(&s.db_path()).unwrap();
    let count = |kinds: &'static str| {
        let run = run.clone();
        db.read_blocking(move |c| {
            Ok(c.query_row(
                &format!("SELECT COUNT(*) FROM run_events WHERE run_id = ?1 AND kind IN ({kinds})"),
                [run],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .unwrap()
    };
    assert_eq!(
        count("'remote_state', 'remote_unreachable'"),
        memesh::orchestrator::lifecycle::MAX_REMOTE_STATE_EVENTS
    );
    assert_eq!(count("'remote_events_capped'"), 1);
    let (_, v) = s
        .get(&format!("/v1/orchestrator/runs/{run}"), &s.owner_key)
        .await;
    assert_eq!(v["state"], "running", "the state is still followed: {v}");

    let run = remote_run(&s, &flipping_agent(true).await).await;
    let (st, v) = s
        .post(
            &format!("/v1/orchestrator/runs/{run}/reconcile"),
            &s.owner_key,
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["result"]["error"]["code"], "result_too_large", "{v}");
    assert!(
        !v.to_string().contains("zzzzzzzz"),
        "the answer was not kept"
    );
}
