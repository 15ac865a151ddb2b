//! The `memesh` binary as its own process on a data directory: started on port 0 with its
//! log lines collected, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub struct Running {
    pub child: Child,
    pub base: String,
    /// Standard output up to the banner (the owner key on a first start).
    pub stdout: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Every line the server has logged so far (standard error).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// `memesh --data-dir DATA` with no bootstrap key from the environment, on the small English
/// model (tests that care about the model set `MEMESH_MODEL` themselves, or remove it).
pub fn memesh(data: &Path) -> Command {
    let mut cmd = Command::new(super::bin_path());
    cmd.arg("--data-dir")
        .arg(data)
        .env_remove("MEMESH_BOOTSTRAP_KEY")
        .env("MEMESH_MODEL", super::TEST_MODEL.id)
        .env("MEMESH_LOG", "info");
    cmd
}

/// Starts `memesh` on 127.0.0.1, port 0, and waits for its "listening on" log line.
pub fn start(data: &Path, envs: &[(&str, &str)]) -> Running {
    start_with(data, &["--listen", "127.0.0.1:0"], envs)
}

/// Starts `memesh` with `args` (which say where it listens) and waits until it listens.
pub fn start_with(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> Running {
    let mut cmd = memesh(data);
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn memesh");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.trim().to_owned());
            }
            kept.lock().unwrap().push(line);
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("memesh reports its address");
    // The banner is printed before the server listens, so it is complete by now.
    let mut out = String::new();
    let mut reader = BufReader::new(stdout);
    let (otx, orx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            all.push_str(&line);
            line.clear();
            if all.contains("owner API key") {
                break;
            }
        }
        let _ = otx.send(all);
    });
    if let Ok(s) = orx.recv_timeout(Duration::from_millis(500)) {
        out = s;
    }
    Running {
        child,
        base: base.replace("0.0.0.0", "127.0.0.1"),
        stdout: out,
        logs,
    }
}

/// `method path` on a server at `base` with `key`: the status and the JSON body (null if none).
pub async fn call(
    method: reqwest::Method,
    base: &str,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("x-api-key", key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

pub async fn get(base: &str, path: &str, key: &str) -> (reqwest::StatusCode, serde_json::Value) {
    call(reqwest::Method::GET, base, path, key, None).await
}

pub async fn post(
    base: &str,
    path: &str,
    key: &str,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    call(reqwest::Method::POST, base, path, key, Some(body)).await
}

/// Runs `memesh audit verify` on `data`: its success and what it printed.
pub fn audit_verify(data: &Path) -> (bool, String) {
    let out = memesh(data).args(["audit", "verify"]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The first `mk_…` key in `text`.
pub fn key_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with("mk_"))
        .map(str::to_owned)
}

/// SIGTERM, then wait: a graceful stop exits 0.
pub fn stop(mut r: Running) {
    let pid = r.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = r.child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
}
