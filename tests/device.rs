//! Device authorization (RFC 8628) end to end: every error code of both endpoints, expiry and
//! `slow_down` on the test's clock, the verification page (sessions, CSRF, origin, guessing
//! limits, security headers) driven like a browser, the key that comes out (scopes, usable as
//! `x-api-key` and Bearer, issued once), audit rows without secrets, `whoami` and `logout`.
//! Then the whole flow with a real OAuth client library (the `oauth2` crate) polling while a
//! real headless Chromium approves on the page (`tests/device/browser.py`, WebDriver).

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{TestServer, code};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A form POST to a device endpoint: status, JSON body, headers.
async fn form(
    s: &TestServer,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, Value, HeaderMap) {
    let resp = reqwest::Client::new()
        .post(s.url(path))
        .form(fields)
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, resp.json().await.unwrap(), headers)
}

async fn start(s: &TestServer, fields: &[(&str, &str)]) -> Value {
    let (st, v, h) = form(s, "/v1/auth/device", fields).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(h["cache-control"], "no-store");
    v
}

async fn poll(s: &TestServer, device_code: &str) -> (StatusCode, Value) {
    poll_as(s, device_code, "memesh-cli").await
}

async fn poll_as(s: &TestServer, device_code: &str, client: &str) -> (StatusCode, Value) {
    let (st, v, _) = form(
        s,
        "/v1/auth/device/token",
        &[
            ("grant_type", GRANT),
            ("device_code", device_code),
            ("client_id", client),
        ],
    )
    .await;
    (st, v)
}

/// The device code and the user code of a start answer.
fn codes(d: &Value) -> (&str, &str) {
    (
        d["device_code"].as_str().unwrap(),
        d["user_code"].as_str().unwrap(),
    )
}

fn oauth_error(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_endpoints_answer_as_rfc_8628_says() {
    let s = TestServer::start().await;

    // Start: the code shapes, the verification links, JSON accepted too.
    let d = start(
        &s,
        &[
            ("client_id", "memesh-cli"),
            ("scope", "memory:read memory:write"),
        ],
    )
    .await;
    let user_code = d["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9);
    assert_eq!(&user_code[4..5], "-");
    assert!(
        user_code
            .chars()
            .filter(|c| *c != '-')
            .all(|c| "BCDFGHJKLMNPQRSTVWXZ".contains(c))
    );
    assert_eq!(d["verification_uri"], s.url("/device"));
    assert_eq!(
        d["verification_uri_complete"],
        s.url(&format!("/device?user_code={user_code}"))
    );
    assert_eq!(
        (d["expires_in"].as_i64(), d["interval"].as_i64()),
        (Some(600), Some(5))
    );
    assert!(d["device_code"].as_str().unwrap().len() >= 40);
    let (st, j) = s
        .call(
            reqwest::Method::POST,
            "/v1/auth/device",
            None,
            Some(json!({ "client_id": "memesh-mcp" })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{j}");

    // Start errors.
    for (fields, status, error) in [
        (vec![("client_id", "someone-else")], 400, "invalid_client"),
        (vec![], 400, "invalid_client"),
        (
            vec![
                ("client_id", "memesh-cli"),
                ("scope", "memory:read nonsense"),
            ],
            400,
            "invalid_scope",
        ),
        (
            vec![("client_id", "memesh-cli"), ("scope", "executions")],
            400,
            "invalid_scope",
        ),
        (
            vec![("client_id", "memesh-cli"), ("client_id", "memesh-mcp")],
            400,
            "invalid_request",
        ),
    ] {
        let (st, v, _) = form(&s, "/v1/auth/device", &fields).await;
        assert_eq!(
            (st.as_u16(), oauth_error(&v)),
            (status, error),
            "{fields:?}: {v}"
        );
        assert!(v["error_description"].is_string());
    }

    // Poll errors.
    let device_code = d["device_code"].as_str().unwrap();
    for (fields, error) in [
        (
            vec![
                ("grant_type", "authorization_code"),
                ("device_code", device_code),
            ],
            "unsupported_grant_type",
        ),
        (vec![("device_code", device_code)], "invalid_request"),
        (vec![("grant_type", GRANT)], "invalid_request"),
        (
            vec![
                ("grant_type", GRANT),
                ("device_code", "mdc_nope"),
                ("client_id", "memesh-cli"),
            ],
            "invalid_grant",
        ),
        // RFC 8628 §3.4: a public client names itself on every poll.
        (
            vec![("grant_type", GRANT), ("device_code", device_code)],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("device_code", device_code),
                ("client_id", "memesh-mcp"),
            ],
            "invalid_grant",
        ),
    ] {
        let (st, v, _) = form(&s, "/v1/auth/device/token", &fields).await;
        assert_eq!(
            (st, oauth_error(&v)),
            (StatusCode::BAD_REQUEST, error),
            "{fields:?}: {v}"
        );
    }

    // Pending; too soon is slow_down and adds five seconds to the interval from then on.
    assert_eq!(
        oauth_error(&poll(&s, device_code).await.1),
        "authorization_pending"
    );
    assert_eq!(oauth_error(&poll(&s, device_code).await.1), "slow_down");
    s.clock.advance_ms(9_000);
    assert_eq!(
        oauth_error(&poll(&s, device_code).await.1),
        "slow_down",
        "the interval is 10 s now"
    );
    s.clock.advance_ms(15_000);
    assert_eq!(
        oauth_error(&poll(&s, device_code).await.1),
        "authorization_pending"
    );

    // Expiry, on the clock.
    s.clock.advance_ms(600_000);
    assert_eq!(oauth_error(&poll(&s, device_code).await.1), "expired_token");
    let mut b = Browser::new(&s);
    let page = b.sign_in(&s.owner_key, "").await;
    let r = b.get(&format!("/device?user_code={user_code}")).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "an expired code is not offered: {}",
        page.html
    );
    assert!(r.html.contains("not recognised, or it expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_approves_or_denies_on_the_page_and_the_key_comes_out_once() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (_, viewer) = s.add_member(&owner, "viewer@alpha.test", "VIEWER").await;

    // The page: security headers, no script, its stylesheet beside it.
    let mut b = Browser::new(&s);
    let first = b.get("/device").await;
    assert_eq!(first.status, StatusCode::OK);
    let csp = first.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"), "no script may run: {csp}");
    assert_eq!(first.headers["x-frame-options"], "DENY");
    assert!(!first.html.contains("<script"));
    assert!(first.html.contains("<label for=\"api_key\">"));
    let css = reqwest::get(s.url("/device/style.css")).await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    // Approve: the device asked for memory:read runs:write.
    let d = start(
        &s,
        &[
            ("client_id", "memesh-cli"),
            ("scope", "memory:read runs:write"),
        ],
    )
    .await;
    let (device_code, user_code) = codes(&d);
    // Typed loosely: lower case, no hyphen.
    let typed = user_code.replace('-', "").to_lowercase();
    let confirm = b.sign_in(&owner, &typed).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.html);
    assert!(
        confirm.html.contains("memesh-cli") && confirm.html.contains(user_code),
        "{}",
        confirm.html
    );
    assert!(confirm.html.contains("<code>runs:write</code>"));
    assert_eq!(
        oauth_error(&poll(&s, device_code).await.1),
        "authorization_pending"
    );
    // A form without the CSRF token, or from another site, is refused.
    let r = b
        .post(&[("action", "approve"), ("user_code", user_code)], None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let csrf = Browser::csrf(&confirm);
    let r = b
        .post(
            &[
                ("action", "approve"),
                ("csrf", &csrf),
                ("user_code", user_code),
            ],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let done = b.decide(&confirm, user_code, "approve").await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.html);
    assert!(done.html.contains("Approved"));

    s.clock.advance_ms(5_000);
    let (st, t) = poll(&s, device_code).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "memory:read runs:write");
    assert!(t.get("expires_in").is_none(), "the key does not expire");
    let key = t["access_token"].as_str().unwrap();
    // Usable at once, as x-api-key and as Bearer, with exactly those scopes.
    let (st, me) = s.get("/v1/auth/whoami", key).await;
    assert_eq!(st, StatusCode::OK, "{me}");
    assert_eq!(me["scopes"], json!(["memory:read", "runs:write"]));
    assert_eq!(
        (me["role"].as_str(), me["restricted"].as_bool()),
        (Some("OWNER"), Some(true))
    );
    let bearer = reqwest::Client::new()
        .get(s.url("/v1/memory/count"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let (st, e) = s.get("/v1/team/members", key).await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    // Issued exactly once.
    s.clock.advance_ms(5_000);
    assert_eq!(oauth_error(&poll(&s, device_code).await.1), "invalid_grant");
    // Named after the client; the audit log has the request, approval and issuance, no secrets.
    let (_, keys) = s.get("/v1/keys", &owner).await;
    let named = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "memesh-cli")
        .count();
    assert_eq!(named, 1, "{keys}");
    let (_, logs) = s.get("/v1/audit/logs?limit=100", &owner).await;
    let actions: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    for a in [
        "auth.device.request",
        "auth.device.approve",
        "auth.device.issue",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    let text = logs.to_string();
    for secret in [device_code, user_code, &user_code.replace('-', ""), key] {
        assert!(!text.contains(secret), "the audit log holds a secret");
    }

    // Deny: the device gets access_denied.
    let d = start(&s, &[("client_id", "memesh-mcp")]).await;
    let (device_code, user_code) = codes(&d);
    let confirm = b.get(&format!("/device?user_code={user_code}")).await;
    let done = b.decide(&confirm, user_code, "deny").await;
    assert!(done.html.contains("Denied"), "{}", done.html);
    assert_eq!(
        oauth_error(&poll_as(&s, device_code, "memesh-mcp").await.1),
        "access_denied"
    );

    // A VIEWER's key cannot grant runs:write: only memory:read comes out; asking only for what
    // the role cannot have is refused on the page.
    let mut v = Browser::new(&s);
    let d = start(
        &s,
        &[
            ("client_id", "memesh-cli"),
            ("scope", "memory:read runs:write"),
        ],
    )
    .await;
    let (device_code, user_code) = codes(&d);
    let confirm = v.sign_in(&viewer, user_code).await;
    assert!(confirm.html.contains("not granted"), "{}", confirm.html);
    v.decide(&confirm, user_code, "approve").await;
    let (st, t) = poll(&s, device_code).await;
    assert_eq!(
        (st, t["scope"].as_str()),
        (StatusCode::OK, Some("memory:read")),
        "{t}"
    );
    let d = start(&s, &[("client_id", "memesh-cli"), ("scope", "audit:read")]).await;
    let user_code = d["user_code"].as_str().unwrap();
    let confirm = v.get(&format!("/device?user_code={user_code}")).await;
    assert!(confirm.html.contains("disabled"));
    let r = v.decide(&confirm, user_code, "approve").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.html);

    // A key without keys:write cannot sign in; logout revokes the issued key.
    let mut n = Browser::new(&s);
    let page = n.get("/device").await;
    let csrf = Browser::csrf(&page);
    let r = n
        .post(
            &[
                ("action", "signin"),
                ("csrf", &csrf),
                ("api_key", key),
                ("user_code", ""),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.html.contains("keys:write"), "{}", r.html);
    let (st, _) = s.post("/v1/auth/logout", key, json!({})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, e) = s.get("/v1/auth/whoami", key).await;
    assert_eq!((st, code(&e)), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_user_codes_is_cut_off() {
    let s = TestServer::start().await;
    let mut b = Browser::new(&s);
    b.sign_in(&s.owner_key, "").await;
    for _ in 0..memesh::device::MAX_GUESSES {
        let r = b.get("/device?user_code=BCDF-GHJK").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    // Now even a right code is refused from here until the window ends.
    let d = start(&s, &[("client_id", "memesh-cli")]).await;
    let user_code = d["user_code"].as_str().unwrap();
    let r = b.get(&format!("/device?user_code={user_code}")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.html);
    assert!(r.headers.contains_key("retry-after"));
    s.clock.advance_ms(memesh::device::GUESS_WINDOW_MS);
    let d = start(&s, &[("client_id", "memesh-cli")]).await;
    let user_code = d["user_code"].as_str().unwrap();
    let r = b.get(&format!("/device?user_code={user_code}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.html);
}

/// The whole flow with a real OAuth client (the `oauth2` crate's device flow) polling, and a
/// real headless Chromium (WebDriver, `tests/device/browser.py`) entering the code, signing in
/// and approving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_oauth_client_gets_a_key_a_real_browser_approved() {
    use oauth2::basic::BasicClient;
    use oauth2::{
        ClientId, DeviceAuthorizationUrl, Scope, StandardDeviceAuthorizationResponse,
        TokenResponse, TokenUrl,
    };

    let Ok(python) = std::env::var("MEMESH_BROWSER_PYTHON") else {
        panic!("MEMESH_BROWSER_PYTHON names a Python with selenium (scripts/test sets it up)");
    };
    let s = TestServer::start().await;
    // The server's clock follows real time here: the client sleeps real seconds between polls.
    let ticker = follow_real_time(&s);
    let client = BasicClient::new(ClientId::new("memesh-cli".into()))
        .set_device_authorization_url(
            DeviceAuthorizationUrl::new(s.url("/v1/auth/device")).unwrap(),
        )
        .set_token_uri(TokenUrl::new(s.url("/v1/auth/device/token")).unwrap());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scope(Scope::new("memory:read".into()))
        .add_scope(Scope::new("memory:write".into()))
        .request_async(&http)
        .await
        .expect("device authorization");

    let url = details
        .verification_uri_complete()
        .unwrap()
        .secret()
        .to_owned();
    let shot = std::env::var("MEMESH_DEVICE_SCREENSHOT").unwrap_or_default();
    let args = [
        url,
        s.owner_key.clone(),
        details.user_code().secret().clone(),
        shot,
    ];
    let browser = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(common::repo_path("tests/device/browser.py"))
            .args(&args)
            .output()
    });
    let polling = client.exchange_device_access_token(&details).request_async(
        &http,
        tokio::time::sleep,
        Some(Duration::from_secs(120)),
    );
    let (browser, token) = tokio::join!(browser, polling);
    ticker.abort();
    let browser = browser.unwrap().unwrap();
    assert!(
        browser.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr)
    );
    let token = token.expect("the client received a key");
    let scopes: Vec<String> = token
        .scopes()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(scopes, ["memory:read", "memory:write"]);
    let key = token.access_token().secret();
    let (st, me) = s.get("/v1/auth/whoami", key).await;
    assert_eq!(st, StatusCode::OK, "{me}");
    assert_eq!(me["scopes"], json!(["memory:read", "memory:write"]));
    let (st, _) = s.get("/v1/memory/count", key).await;
    assert_eq!(st, StatusCode::OK);
}

/// Moves the server's clock along with real time (clients sleep real seconds between polls).
fn follow_real_time(s: &TestServer) -> tokio::task::JoinHandle<()> {
    let clock = s.clock.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            clock.advance_ms(50);
        }
    })
}

fn memesh(config: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(common::bin_path());
    c.args(args).env("MEMESH_CONFIG_DIR", config);
    c
}

/// `memesh login` as a person runs it: it prints the link and the code, a person approves on
/// the page, it stores the key (0600); `whoami` shows it; `logout` revokes it and forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memesh_login_whoami_and_logout() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;

    let mut settings = common::test_settings();
    settings.device.interval = Duration::from_secs(1);
    let s = TestServer::start_with(settings).await;
    let ticker = follow_real_time(&s);
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("memesh");
    let server = s.url("");
    let mut child = memesh(
        &config,
        &[
            "login",
            "--server",
            &server,
            "--scope",
            "memory:read keys:write",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (code, printed) = tokio::task::spawn_blocking(move || {
        let mut printed = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("login prints its code");
            printed.push(line.clone());
            if let Some(code) = line.split("the code:").nth(1) {
                return (code.trim().to_owned(), printed);
            }
        }
    })
    .await
    .unwrap();
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&format!("{server}/device?user_code={code}"))),
        "{printed:?}"
    );

    let mut b = Browser::new(&s);
    let confirm = b.sign_in(&s.owner_key, &code).await;
    let done = b.decide(&confirm, &code, "approve").await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.html);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    let file = config.join("credentials.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is readable by its owner only");
    let dir_mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let creds: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let key = creds["apiKey"].as_str().unwrap().to_owned();
    let (st, me) = s.get("/v1/auth/whoami", &key).await;
    assert_eq!(
        (st, &me["scopes"]),
        (StatusCode::OK, &json!(["memory:read", "keys:write"]))
    );

    let c = config.clone();
    let out = tokio::task::spawn_blocking(move || memesh(&c, &["whoami"]).output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        server.as_str(),
        "OWNER",
        "memory:read keys:write",
        me["email"].as_str().unwrap(),
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }

    let c = config.clone();
    let out = tokio::task::spawn_blocking(move || memesh(&c, &["logout"]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!file.exists(), "the key is forgotten");
    let (st, _) = s.get("/v1/auth/whoami", &key).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "and revoked on the server");
    let c = config.clone();
    let out = tokio::task::spawn_blocking(move || memesh(&c, &["whoami"]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed in"));
    ticker.abort();
}
