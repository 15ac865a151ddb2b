//! memesh's A2A client against a real agent built with the official A2A SDK (`tests/a2a/agent.py`:
//! a2a-sdk's JSON-RPC routes on uvicorn, installed by scripts/test), in both protocol versions:
//! send, read and cancel tasks; a failing agent; a 0.3-only agent; an agent that is not there.
//! Then runs on REMOTE_A2A targets end to end through the server: dispatch, the refresh job,
//! reconcile, governance holding a run back, and what cannot be done yet (cancel).

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
    let outbound = Outbound::new(true);
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
    let outbound = Outbound::new(true);
    let endpoint = peer.endpoint();
    let err = client(&outbound, &endpoint, Protocol::V1_0)
        .send("m-9", &json!("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, A2aError::Rpc { code: -32601, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_is_not_there_is_a_transient_failure() {
    let outbound = Outbound::new(true);
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
    let guarded = Outbound::new(false);
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

    // Held by the agent: running, not cancelable here, reconcilable; released, it succeeds
    // through the background refresh job.
    peer.switch("hold").await;
    let r = run_on(&s, &target, json!("long job")).await;
    let run = r["id"].as_str().unwrap().to_owned();
    let r = reconcile(&s, &run).await;
    assert_eq!(r["state"], "running", "{r}");
    let (st, err) = s
        .post(
            &format!("/v1/orchestrator/runs/{run}/cancel"),
            &s.owner_key,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::CONFLICT, "invalid_run_state")
    );
    let (_, control) = s
        .get(
            &format!("/v1/orchestrator/runs/{run}/control"),
            &s.owner_key,
        )
        .await;
    assert_eq!(
        control["actions"]["cancel"]["blockReasons"][0],
        "remote_cancel_unavailable"
    );
    assert_eq!(control["actions"]["reconcile"]["allowed"], true);
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
