//! memesh's A2A client against a real agent built with the official A2A SDK (`tests/a2a/agent.py`:
//! a2a-sdk's JSON-RPC routes on uvicorn, installed by scripts/test), in both protocol versions:
//! send, read and cancel tasks; a failing agent; a 0.3-only agent; an agent that is not there.

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
