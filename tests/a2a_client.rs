//! memesh's A2A client against a real agent built with the official A2A SDK (`tests/a2a/agent.py`:
//! a2a-sdk's JSON-RPC routes on uvicorn, installed by scripts/test), in both protocol versions:
//! send, read and cancel tasks; a failing agent; a 0.3-only agent; an agent that is not there.
//! Then runs on REMOTE_A2A targets end to end through the server: dispatch, the refresh job,
//! reconcile, governance holding a run back, and cancels: accepted, failing and retried, lost
//! and timed out (on the test's clock) until exhausted and resolved by an operator, and late
//! completion after a cancel.

mod common;

use common::{TestServer, code};
use reqwest::StatusCode;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use memesh::agents::a2a::{A2aClient, A2aError, Protocol, RemoteState};
use memesh::outbound::Outbound;
use serde_json::{Value, json};

/// The SDK agent on loopback; killed when dropped.
struct Peer {
    child: Child,
    base: String,
}

impl Peer {
    fn start(args: &[&str]) -> Peer {
        let python = std::env::var("MEMESH_A2A_PYTHON").expect(
            "MEMESH_A2A_PYTHON names a Python with a2a-sdk installed (scripts/test sets it up)",
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/a2a/agent.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("the agent did not start: {line:?}"))
            .trim()
            .to_owned();
        let peer = Peer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        // uvicorn listens on the socket the script bound before printing READY; wait until it
        // serves the card.
        for _ in 0..100 {
            if std::net::TcpStream::connect(peer.base.trim_start_matches("http://")).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peer
    }

    fn endpoint(&self) -> String {
        format!("{}/a2a", self.base)
    }

    async fn switch(&self, mode: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/fault", self.base))
            .json(&json!({ "mode": mode }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    async fn cancels(&self, mode: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/fault", self.base))
            .json(&json!({ "cancel": mode }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    async fn release(&self, task: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/release", self.base))
            .json(&json!({ "taskId": task }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client<'a>(outbound: &'a Outbound, endpoint: &'a str, protocol: Protocol) -> A2aClient<'a> {
    A2aClient {
        outbound,
        endpoint,
        protocol,
        deadline: Duration::from_secs(10),
    }
}

fn echoed(output: &Value) -> String {
    output[0]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits (by polling the agent) until the task reaches `state`.
async fn until(c: &A2aClient<'_>, task: &str, state: RemoteState) {
    for _ in 0..200 {
        if c.get(task).await.unwrap().state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {task} never reached {state:?}");
}

async fn send_get_and_cancel(peer: &Peer, protocol: Protocol) {
    let outbound = Outbound::new(true, None).unwrap();
    let endpoint = peer.endpoint();
    let c = client(&outbound, &endpoint, protocol);

    // Completes at once: the answer carries the artifact; a JSON input arrives as its text.
    let t = c.send("m-1", &json!({ "ask": "日本語も" })).await.unwrap();
    let id = t.id.clone().expect("a task");
    assert!(t.context_id.is_some());
    if t.state != RemoteState::Completed {
        until(&c, &id, RemoteState::Completed).await;
    }
    let done = c.get(&id).await.unwrap();
    assert_eq!(done.state, RemoteState::Completed);
    assert_eq!(echoed(&done.output), r#"echo: {"ask":"日本語も"}"#);

    // Held: working until released, then completed.
    peer.switch("hold").await;
    let t = c.send("m-2", &json!("wait for it")).await.unwrap();
    let held = t.id.unwrap();
    assert!(!t.state.is_terminal(), "{:?}", t.state);
    until(&c, &held, RemoteState::Working).await;
    peer.release(&held).await;
    until(&c, &held, RemoteState::Completed).await;
    assert_eq!(
        echoed(&c.get(&held).await.unwrap().output),
        "echo: wait for it"
    );

    // Held again and canceled: the agent reports it canceled.
    let t = c.send("m-3", &json!("cancel me")).await.unwrap();
    let doomed = t.id.unwrap();
    until(&c, &doomed, RemoteState::Working).await;
    let canceled = c.cancel(&doomed).await.unwrap();
    assert_eq!(
        canceled.state,
        RemoteState::Canceled,
        "{}",
        canceled.raw_state
    );
    assert_eq!(c.get(&doomed).await.unwrap().state, RemoteState::Canceled);

    // A failing agent: the task fails.
    peer.switch("fail").await;
    let t = c.send("m-4", &json!("fail")).await.unwrap();
    let failed = t.id.unwrap();
    until(&c, &failed, RemoteState::Failed).await;

    // A task it does not know: a JSON-RPC error, not a transport failure.
    let err = c.get("no-such-task").await.unwrap_err();
    assert!(matches!(err, A2aError::Rpc { .. }), "{err}");
    assert!(!err.is_transient());
    peer.switch("complete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_a2a_1_0_agent_is_sent_read_and_canceled() {
    let peer = Peer::start(&[]);
    send_get_and_cancel(&peer, Protocol::V1_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_a2a_0_3_agent_is_sent_read_and_canceled() {
    let peer = Peer::start(&["--only-0.3"]);
    send_get_and_cancel(&peer, Protocol::V0_3).await;
    // It does not speak 1.0: the protocol has to come from its card.
    let outbound = Outbound::new(true, None).unwrap();
    let endpoint = peer.endpoint();
    let err = client(&outbound, &endpoint, Protocol::V1_0)
        .send("m-9", &json!("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, A2aError::Rpc { code: -32601, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_is_not_there_is_a_transient_failure() {
    let outbound = Outbound::new(true, None).unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}/a2a");
    let err = client(&outbound, &endpoint, Protocol::V1_0)
        .get("t")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    // And the guard still holds: without the private opening, loopback is refused.
    let guarded = Outbound::new(false, None).unwrap();
    let err = client(&guarded, &endpoint, Protocol::V1_0)
        .get("t")
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

/// A REMOTE_A2A target registered by the peer's card URL; its id.
async fn remote_target(s: &TestServer, peer: &Peer, name: &str) -> String {
    let (st, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &s.owner_key,
            json!({ "name": name, "kind": "REMOTE_A2A", "cardUrl": peer.base }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    t["id"].as_str().unwrap().to_owned()
}

async fn run_on(s: &TestServer, target: &str, input: Value) -> Value {
    let (st, r) = s
        .post(
            "/v1/orchestrator/runs",
            &s.owner_key,
            json!({ "targetId": target, "input": input }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    r
}

async fn reconcile(s: &TestServer, run: &str) -> Value {
    let (st, r) = s
        .post(
            &format!("/v1/orchestrator/runs/{run}/reconcile"),
            &s.owner_key,
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    r
}

/// Reconciles until the run leaves `running` (the agent works asynchronously).
async fn reconcile_until_done(s: &TestServer, run: &str) -> Value {
    for _ in 0..200 {
        let r = reconcile(s, run).await;
        if r["state"] != "running" && r["state"] != "dispatched" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {run} never finished");
}

/// The protocol memesh speaks to the peer started with these arguments.
fn protocol(protocol_args: &[&str]) -> &'static str {
    if protocol_args.contains(&"--only-0.3") {
        "0.3"
    } else {
        "1.0"
    }
}

async fn remote_run_goes_through(protocol_args: &[&str]) {
    let peer = Peer::start(protocol_args);
    let s = TestServer::start().await;
    let target = remote_target(&s, &peer, "echo").await;

    // Sent at once; the agent answers before finishing, so the run is running (or done).
    let r = run_on(&s, &target, json!({ "question": "調子はどう?" })).await;
    assert!(
        ["running", "succeeded"].contains(&r["state"].as_str().unwrap()),
        "{r}"
    );
    let run = r["id"].as_str().unwrap().to_owned();
    let done = reconcile_until_done(&s, &run).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["result"][0]["parts"][0]["text"],
        r#"echo: {"question":"調子はどう?"}"#
    );
    // A terminal run: nothing to do, nothing changes.
    let again = reconcile(&s, &run).await;
    assert_eq!(again["reconciled"]["changed"], false);
    assert_eq!(again["state"], "succeeded");

    // Held by the agent: running, cancelable and reconcilable, nothing to retry or resolve;
    // released, it succeeds through the background refresh job.
    peer.switch("hold").await;
    let r = run_on(&s, &target, json!("long job")).await;
    let run = r["id"].as_str().unwrap().to_owned();
    let r = reconcile(&s, &run).await;
    assert_eq!(r["state"], "running", "{r}");
    assert_eq!(r["remote"]["protocol"], protocol(protocol_args));
    assert!(r["remote"]["taskId"].is_string(), "{r}");
    assert!(r["remote"]["cancel"].is_null(), "{r}");
    let (_, control) = s
        .get(
            &format!("/v1/orchestrator/runs/{run}/control"),
            &s.owner_key,
        )
        .await;
    let actions = &control["actions"];
    assert_eq!(actions["cancel"]["allowed"], true, "{control}");
    assert_eq!(actions["reconcile"]["allowed"], true);
    assert_eq!(
        actions["retryCancel"]["blockReasons"][0],
        "no_cancel_requested"
    );
    assert_eq!(
        actions["resolveRemote"]["blockReasons"][0],
        "no_cancel_requested"
    );
    let task = r["reconciled"]["remoteTaskId"].as_str().unwrap().to_owned();
    peer.release(&task).await;
    let mut finished = false;
    for _ in 0..200 {
        s.clock.advance_ms(3_600_001);
        memesh::jobs::refresh_remote_runs(&s.state).await.unwrap();
        let (_, now) = s
            .get(&format!("/v1/orchestrator/runs/{run}"), &s.owner_key)
            .await;
        if now["state"] == "succeeded" {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(finished, "the refresh job never saw the task complete");

    // A failing agent: the run fails.
    peer.switch("fail").await;
    let r = run_on(&s, &target, json!("doomed")).await;
    let failed = reconcile_until_done(&s, r["id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    peer.switch("complete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_run_on_an_a2a_1_0_agent() {
    remote_run_goes_through(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_run_on_an_a2a_0_3_agent() {
    remote_run_goes_through(&["--only-0.3"]).await;
}

/// A held target keeps a remote run back (nothing is sent); the release dispatches it and the
/// refresh job sends it. A local run's remote actions stay refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_remote_target_sends_nothing_until_released() {
    let peer = Peer::start(&[]);
    let s = TestServer::start().await;
    let target = remote_target(&s, &peer, "held").await;
    let (_, t) = s
        .get(
            &format!("/v1/agents/dispatch-targets/{target}"),
            &s.owner_key,
        )
        .await;
    let (st, held) = s
        .post(
            &format!("/v1/agents/dispatch-targets/{target}/hold"),
            &s.owner_key,
            json!({ "reason": "maintenance", "expectedRuntimeUpdatedAt": t["runtime"]["runtimeUpdatedAt"] }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{held}");
    let r = run_on(&s, &target, json!("later")).await;
    assert_eq!(r["state"], "blocked", "{r}");
    let run = r["id"].as_str().unwrap().to_owned();
    let (st, err) = s
        .post(
            &format!("/v1/orchestrator/runs/{run}/reconcile"),
            &s.owner_key,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "invalid_run_state"),
        "{err}"
    );
    let (st, _) = s
        .post(
            &format!("/v1/agents/dispatch-targets/{target}/release"),
            &s.owner_key,
            json!({ "expectedRuntimeUpdatedAt": held["runtime"]["runtimeUpdatedAt"] }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, r) = s
        .get(&format!("/v1/orchestrator/runs/{run}"), &s.owner_key)
        .await;
    assert_eq!(r["state"], "dispatched", "{r}");
    memesh::jobs::refresh_remote_runs(&s.state).await.unwrap();
    let done = reconcile_until_done(&s, &run).await;
    assert_eq!(done["state"], "succeeded", "{done}");
}

async fn post(s: &TestServer, key: &str, path: String, body: Value) -> (StatusCode, Value) {
    s.post(&path, key, body).await
}

/// `POST /v1/orchestrator/runs/{run}/{action}` with an empty body.
async fn act(s: &TestServer, key: &str, run: &str, action: &str) -> (StatusCode, Value) {
    s.post(
        &format!("/v1/orchestrator/runs/{run}/{action}"),
        key,
        json!({}),
    )
    .await
}

/// A held run on the peer, read until the agent works on it; its id and remote task id.
async fn working_run(s: &TestServer, target: &str, key: &str) -> (String, String) {
    let (st, r) = s
        .post(
            "/v1/orchestrator/runs",
            key,
            json!({ "targetId": target, "input": "長い仕事" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let run = r["id"].as_str().unwrap().to_owned();
    for _ in 0..200 {
        let r = reconcile(s, &run).await;
        if r["remote"]["remoteState"] == "working" {
            return (run, r["remote"]["taskId"].as_str().unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {run} never got to working");
}

fn events(view: &Value) -> Vec<&str> {
    view["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default())
        .collect()
}

async fn health(s: &TestServer) -> Value {
    let (st, h) = s.get("/v1/orchestrator/runtime-health", &s.owner_key).await;
    assert_eq!(st, StatusCode::OK, "{h}");
    h
}

fn reasons(h: &Value) -> Vec<&str> {
    h["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect()
}

/// Reconciles until the run is terminal (the agent acts asynchronously).
async fn until_terminal(s: &TestServer, run: &str) -> Value {
    for _ in 0..200 {
        let r = reconcile(s, run).await;
        if ["succeeded", "failed", "canceled"].contains(&r["state"].as_str().unwrap()) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {run} never finished");
}

/// Every cancel path of a remote run against the SDK agent: an accepted cancel; a failing one
/// (503) retried by hand; a lost one (accepted, never carried out) timing out on the test's
/// clock, retried until exhausted, then resolved by an OWNER; and a completion that arrives
/// after the cancel timed out. Role checks on each remote action, runtime health at each step.
async fn remote_cancels(protocol_args: &[&str]) {
    let peer = Peer::start(protocol_args);
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (_, member) = s.add_member(&owner, "member@alpha.test", "MEMBER").await;
    let (_, other) = s.add_member(&owner, "other@alpha.test", "MEMBER").await;
    let (_, viewer) = s.add_member(&owner, "viewer@alpha.test", "VIEWER").await;
    let target = remote_target(&s, &peer, "canceler").await;
    peer.switch("hold").await;

    // 1. The agent cancels: the run is canceled by the same request.
    let (run, _) = working_run(&s, &target, &member).await;
    let (st, r) = act(&s, &member, &run, "cancel").await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let r = if r["state"] == "canceled" {
        r
    } else {
        until_terminal(&s, &run).await
    };
    assert_eq!(r["state"], "canceled", "{r}");
    assert!(events(&r).contains(&"remote_canceled"), "{r}");
    assert_eq!(r["remote"]["remoteState"], "canceled");
    assert_eq!(r["remote"]["followed"], false);

    // 2. The agent answers cancels with 503: the cancel is pending with the failure recorded,
    //    the run waits in cancel_requested; only the requester or an OWNER/ADMIN may retry it,
    //    and resolve-remote is refused until recovery is exhausted.
    peer.cancels("error").await;
    let (run, _) = working_run(&s, &target, &member).await;
    let (st, r) = act(&s, &member, &run, "cancel").await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "cancel_requested", "{r}");
    let cancel = &r["remote"]["cancel"];
    assert_eq!(cancel["state"], "pending", "{r}");
    assert_eq!(cancel["failedAttempts"], 1);
    assert!(cancel["lastError"].as_str().unwrap().contains("503"), "{r}");
    assert!(events(&r).contains(&"remote_cancel_failed"), "{r}");
    assert_eq!(
        r["control"]["actions"]["retryCancel"]["allowed"], true,
        "{r}"
    );
    assert_eq!(
        r["control"]["actions"]["resolveRemote"]["blockReasons"][0],
        "remote_recovery_not_exhausted"
    );
    assert!(
        r["recommendedActions"][0]
            .as_str()
            .unwrap()
            .contains("retry-cancel"),
        "{r}"
    );
    let h = health(&s).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(reasons(&h).contains(&"remote_cancels_failing"), "{h}");
    assert_eq!(h["remoteEscalation"]["cancelsPending"], 1);
    assert_eq!(h["remoteEscalation"]["cancelsFailing"], 1);
    assert_eq!(h["remoteEscalation"]["cancelsExhausted"], 0);
    // Asking to cancel again changes nothing.
    let (st, again) = act(&s, &member, &run, "cancel").await;
    assert_eq!(
        (st, &again["remote"]["cancel"]["failedAttempts"]),
        (StatusCode::OK, &json!(1))
    );
    for (key, status, error) in [
        (&viewer, StatusCode::FORBIDDEN, "insufficient_role"),
        (&other, StatusCode::FORBIDDEN, "insufficient_role"),
    ] {
        let (st, e) = act(&s, key, &run, "retry-cancel").await;
        assert_eq!((st, code(&e)), (status, error), "{e}");
    }
    for key in [&viewer, &member] {
        let (st, e) = act(&s, key, &run, "reconcile").await;
        assert_eq!(
            (st, code(&e)),
            (StatusCode::FORBIDDEN, "insufficient_role"),
            "{e}"
        );
        let body = json!({ "resolution": "canceled", "note": "checked" });
        let (st, e) = post(
            &s,
            key,
            format!("/v1/orchestrator/runs/{run}/resolve-remote"),
            body,
        )
        .await;
        assert_eq!(
            (st, code(&e)),
            (StatusCode::FORBIDDEN, "insufficient_role"),
            "{e}"
        );
    }
    let body = json!({ "resolution": "canceled", "note": "checked" });
    let (st, e) = post(
        &s,
        &owner,
        format!("/v1/orchestrator/runs/{run}/resolve-remote"),
        body,
    )
    .await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::CONFLICT, "remote_recovery_not_exhausted"),
        "{e}"
    );
    // Still failing: the retry is a second failed attempt. Then the agent recovers.
    let (st, r) = act(&s, &member, &run, "retry-cancel").await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["remote"]["cancel"]["failedAttempts"], 2, "{r}");
    peer.cancels("ok").await;
    let (st, r) = act(&s, &member, &run, "retry-cancel").await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let r = if r["state"] == "canceled" {
        r
    } else {
        until_terminal(&s, &run).await
    };
    assert_eq!(r["state"], "canceled", "{r}");
    let (st, e) = act(&s, &member, &run, "retry-cancel").await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::CONFLICT, "cancel_not_retryable"),
        "{e}"
    );
    assert_eq!(e["error"]["details"]["reason"], "run_finished");
    let h = health(&s).await;
    assert_eq!(h["remoteEscalation"]["cancelsPending"], 0, "{h}");

    // 3. The agent takes the cancel and drops it: the cancel is sent and the task keeps
    //    working. Retry is refused while the cancel may still take effect; past the deadline
    //    (the test's clock) the attempt counts as failed. Three failed attempts exhaust it.
    peer.cancels("ignore").await;
    let (run, task) = working_run(&s, &target, &owner).await;
    let (st, r) = act(&s, &owner, &run, "cancel").await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "cancel_requested", "{r}");
    assert_eq!(r["remote"]["cancel"]["state"], "sent", "{r}");
    assert_eq!(r["remote"]["cancel"]["failedAttempts"], 0);
    assert!(events(&r).contains(&"remote_cancel_sent"), "{r}");
    let (st, e) = act(&s, &owner, &run, "retry-cancel").await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::CONFLICT, "cancel_not_retryable"),
        "{e}"
    );
    assert_eq!(e["error"]["details"]["reason"], "cancel_in_flight");
    // Before the deadline a look changes nothing.
    s.clock.advance_ms(59_000);
    let r = reconcile(&s, &run).await;
    assert_eq!(r["remote"]["cancel"]["state"], "sent", "{r}");
    // Past it, the refresh job (the look is due at the deadline) counts the attempt as failed.
    s.clock.advance_ms(1_001);
    memesh::jobs::refresh_remote_runs(&s.state).await.unwrap();
    let (_, r) = s.get(&format!("/v1/orchestrator/runs/{run}"), &owner).await;
    assert_eq!(r["remote"]["cancel"]["state"], "pending", "{r}");
    assert_eq!(r["remote"]["cancel"]["failedAttempts"], 1);
    assert!(
        r["remote"]["cancel"]["lastError"]
            .as_str()
            .unwrap()
            .contains("accepted the cancel"),
        "{r}"
    );
    for attempt in 2..=3 {
        let (st, r) = act(&s, &owner, &run, "retry-cancel").await;
        assert_eq!(
            (st, &r["remote"]["cancel"]["state"]),
            (StatusCode::OK, &json!("sent")),
            "{r}"
        );
        s.clock.advance_ms(60_001);
        let r = reconcile(&s, &run).await;
        assert_eq!(r["remote"]["cancel"]["failedAttempts"], attempt, "{r}");
    }
    let (_, r) = s.get(&format!("/v1/orchestrator/runs/{run}"), &owner).await;
    assert_eq!(r["state"], "cancel_requested", "{r}");
    assert_eq!(r["remote"]["cancel"]["state"], "exhausted", "{r}");
    assert!(events(&r).contains(&"remote_cancel_exhausted"), "{r}");
    assert_eq!(
        r["control"]["actions"]["resolveRemote"]["allowed"], true,
        "{r}"
    );
    assert_eq!(
        r["control"]["actions"]["retryCancel"]["blockReasons"][0],
        "cancel_exhausted"
    );
    assert!(
        r["recommendedActions"][0]
            .as_str()
            .unwrap()
            .contains("resolve-remote"),
        "{r}"
    );
    let h = health(&s).await;
    assert_eq!(h["status"], "attention", "{h}");
    assert!(reasons(&h).contains(&"runs_need_operator"), "{h}");
    assert_eq!(h["remoteEscalation"]["cancelsExhausted"], 1);
    assert_eq!(h["remoteEscalation"]["runsNeedingOperator"], 1);
    assert_eq!(h["attentionBacklog"]["runsNeedingOperator"], 1);
    let (st, e) = act(&s, &owner, &run, "retry-cancel").await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::CONFLICT, "cancel_not_retryable"),
        "{e}"
    );
    assert_eq!(e["error"]["details"]["reason"], "cancel_exhausted");
    // The operator's resolution: guarded by the remote record's timestamp, validated, audited.
    let path = format!("/v1/orchestrator/runs/{run}/resolve-remote");
    let stale = json!({ "resolution": "canceled", "note": "n", "expectedRuntimeUpdatedAt": "2020-01-01T00:00:00.000Z" });
    let (st, e) = post(&s, &owner, path.clone(), stale).await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::CONFLICT, "stale_runtime_snapshot"),
        "{e}"
    );
    for bad in [
        json!({ "resolution": "vanished", "note": "n" }),
        json!({ "resolution": "canceled" }),
        json!({ "resolution": "canceled", "note": "" }),
        json!({ "resolution": "canceled", "note": "n", "expectedRuntimeUpdatedAt": "yesterday" }),
    ] {
        let (st, e) = post(&s, &owner, path.clone(), bad.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad} → {e}");
    }
    let token = r["remote"]["runtimeUpdatedAt"].clone();
    let body = json!({ "resolution": "canceled", "note": "プロバイダに確認: 停止済み",
                       "expectedRuntimeUpdatedAt": token });
    let (st, r) = post(&s, &owner, path.clone(), body.clone()).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "canceled");
    assert_eq!(
        r["result"]["operatorResolution"]["note"],
        "プロバイダに確認: 停止済み"
    );
    assert_eq!(r["remote"]["cancel"]["state"], "resolved");
    assert_eq!(r["remote"]["followed"], false);
    assert!(events(&r).contains(&"remote_resolved"), "{r}");
    let (st, e) = post(&s, &owner, path, body).await;
    assert_eq!(
        (st, code(&e)),
        (StatusCode::CONFLICT, "invalid_run_state"),
        "{e}"
    );
    let (_, audit) = s
        .get(
            "/v1/audit/logs?action=orchestrator.run.resolve_remote",
            &owner,
        )
        .await;
    assert_eq!(audit["logs"].as_array().map(Vec::len), Some(1), "{audit}");
    let h = health(&s).await;
    assert_eq!(h["remoteEscalation"]["runsNeedingOperator"], 0, "{h}");
    // The task still runs on the agent (it dropped every cancel); memesh no longer follows it.
    peer.release(&task).await;

    // 4. Late terminal truth: a lost cancel times out, then the agent completes the task; the
    //    next look makes the run succeeded and says why.
    let (run, task) = working_run(&s, &target, &owner).await;
    let (st, _) = act(&s, &owner, &run, "cancel").await;
    assert_eq!(st, StatusCode::OK);
    s.clock.advance_ms(60_001);
    let r = reconcile(&s, &run).await;
    assert_eq!(r["remote"]["cancel"]["failedAttempts"], 1, "{r}");
    peer.release(&task).await;
    let r = until_terminal(&s, &run).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["reconciled"]["changed"], true);
    assert!(events(&r).contains(&"remote_completed_after_cancel"), "{r}");
    assert_eq!(r["result"][0]["parts"][0]["text"], "echo: 長い仕事");
    let again = reconcile(&s, &run).await;
    assert_eq!(again["reconciled"]["changed"], false);
    let h = health(&s).await;
    assert_eq!(h["status"], "ok", "{h}");
    peer.cancels("ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_cancels_on_an_a2a_1_0_agent() {
    remote_cancels(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_cancels_on_an_a2a_0_3_agent() {
    remote_cancels(&["--only-0.3"]).await;
}

/// A run canceled before the agent accepted its message: memesh stops sending it and the run
/// is canceled at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_run_canceled_before_the_agent_accepts_it() {
    let peer = Peer::start(&[]);
    let s = TestServer::start().await;
    let target = remote_target(&s, &peer, "gone").await;
    drop(peer); // the agent is gone: the message cannot be delivered
    let r = run_on(&s, &target, json!("never delivered")).await;
    assert_eq!(r["state"], "dispatched", "{r}");
    assert!(r["remote"]["taskId"].is_null(), "{r}");
    assert_eq!(r["remote"]["consecutiveFailures"], 1, "{r}");
    let h = health(&s).await;
    assert_eq!(h["remoteEscalation"]["unreachableRuns"], 1, "{h}");
    assert!(reasons(&h).contains(&"remote_runs_unreachable"), "{h}");
    let run = r["id"].as_str().unwrap();
    let (st, r) = act(&s, &s.owner_key, run, "cancel").await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "canceled", "{r}");
    assert_eq!(r["remote"]["followed"], false);
    assert_eq!(
        memesh::jobs::refresh_remote_runs(&s.state).await.unwrap(),
        0
    );
    let h = health(&s).await;
    assert_eq!(h["remoteEscalation"]["unreachableRuns"], 0, "{h}");
}
