//! Issue 23's online model switch, measured: the release binary serves `MEMESH_BENCH_SWITCH`
//! natural memories (default 100,000; the locked crates' comment sentences) on the English
//! model, then `memesh reindex --model multilingual-e5-small` switches it while one client
//! searches without pause. Reported: search p50 / p99 / max and errors before, during and
//! after the switch, the switch's duration and rate, and the server's peak resident memory.
//!
//! Run: `cargo build --release && cargo bench --bench switch`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{percentile, root};

const PORT: u16 = 18767;

fn exe() -> std::path::PathBuf {
    let exe = root().join("target/release/memesh");
    assert!(
        exe.exists(),
        "build the binary first: cargo build --release"
    );
    exe
}

/// Starts the release binary on `dir` (on `model`, or the recorded one) and returns it with
/// the owner key once it answers /readyz.
async fn start(dir: &Path, model: Option<&str>) -> (std::process::Child, Option<String>) {
    let out = dir.join("first.out");
    let mut cmd = Command::new(exe());
    cmd.args(["--listen", &format!("127.0.0.1:{PORT}"), "--data-dir"])
        .arg(dir)
        .env_remove("MEMESH_BOOTSTRAP_KEY")
        .env("MEMESH_MODEL", model.unwrap_or(""))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap());
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{PORT}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no /readyz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = std::fs::read_to_string(&out)
        .unwrap()
        .split_whitespace()
        .find(|w| w.starts_with("mk_"))
        .map(str::to_owned);
    (child, key)
}

fn stop(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

fn base() -> String {
    format!("http://127.0.0.1:{PORT}")
}

async fn health() -> Value {
    reqwest::get(format!("{}/healthz", base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// One search: its latency in ms, or `None` when it was not answered 200.
async fn search(client: &reqwest::Client, key: &str, query: &str) -> Option<f64> {
    let started = Instant::now();
    let r = client
        .post(format!("{}/v1/memory/search", base()))
        .header("x-api-key", key)
        .json(&json!({ "query": query, "limit": 10 }))
        .send()
        .await
        .ok()?;
    let ok = r.status().is_success();
    let _ = r.bytes().await;
    ok.then(|| started.elapsed().as_secs_f64() * 1e3)
}

/// p50 / p99 / max of `ms`, and how many.
fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return "—".into();
    }
    format!(
        "{:.1} / {:.1} / {:.1} ms ({} searches)",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
        ms.len()
    )
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

/// Searches every query in turn: the latencies of those answered 200.
async fn search_each(client: &reqwest::Client, key: &str, queries: &[String]) -> Vec<f64> {
    let mut out = Vec::with_capacity(queries.len());
    for q in queries {
        if let Some(ms) = search(client, key, q).await {
            out.push(ms);
        }
    }
    out
}

async fn run() {
    let n: usize = std::env::var("MEMESH_BENCH_SWITCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let all = common::corpus::natural_sentences(n + 300);
    let (mut corpus, mut queries) = (Vec::new(), Vec::new());
    for (i, s) in all.into_iter().enumerate() {
        if i % 334 == 0 && queries.len() < 300 {
            queries.push(s);
        } else {
            corpus.push(s);
        }
    }
    corpus.truncate(n);
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = start(dir.path(), Some("minilm")).await;
    let key = key.expect("the first start prints the owner key");
    let client = reqwest::Client::new();
    eprintln!("writing {n} memories on the English model…");
    let started = Instant::now();
    for chunk in corpus.chunks(100) {
        let memories: Vec<Value> = chunk.iter().map(|c| json!({ "content": c })).collect();
        let r = client
            .post(format!("{}/v1/memory/batch", base()))
            .header("x-api-key", &key)
            .json(&json!({ "memories": memories }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }
    let written = started.elapsed();
    // Let the graph build and a snapshot settle, then measure idle search.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = search_each(&client, &key, &queries).await;

    let reindex = Command::new(exe())
        .args(["reindex", "--model", "multilingual-e5-small", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (mut during, mut errors, mut i) = (Vec::new(), 0usize, 0usize);
    let mut last_report = Instant::now();
    loop {
        match search(&client, &key, &queries[i % queries.len()]).await {
            Some(ms) => during.push(ms),
            None => errors += 1,
        }
        i += 1;
        if i % 20 == 0 {
            let h = health().await;
            if h["model"]["id"] == "multilingual-e5-small-q4" {
                break;
            }
            if last_report.elapsed() > Duration::from_secs(60) {
                eprintln!("{}", h["modelSwitch"]);
                last_report = Instant::now();
            }
        }
    }
    let switched = started.elapsed();
    let out = reindex.wait_with_output().unwrap();
    assert!(out.status.success());
    let peak = std::fs::read_to_string(format!("/proc/{}/status", server.id()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024)
        .unwrap_or(0);
    let rss = common::rss_kib(server.id()) / 1024;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = search_each(&client, &key, &queries).await;
    stop(server);

    println!(
        "## online model switch, {n} memories, all-MiniLM-L6-v2 → multilingual-e5-small ({} cores)\n",
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );
    println!("| | value |\n|---|---|");
    println!(
        "| written on MiniLM through `POST /v1/memory/batch` | {:.0} s |",
        written.as_secs_f64()
    );
    println!(
        "| search before (MiniLM), p50 / p99 / max | {} |",
        summary(before)
    );
    println!(
        "| switch, `memesh reindex` start to the new model current | {:.0} s ({:.0} memories/s) |",
        switched.as_secs_f64(),
        n as f64 / switched.as_secs_f64()
    );
    println!(
        "| search during the switch, p50 / p99 / max | {} |",
        summary(during)
    );
    println!("| searches not answered 200 during the switch | {errors} |");
    println!(
        "| search after (e5), p50 / p99 / max | {} |",
        summary(after)
    );
    println!("| server resident memory right after / peak (VmHWM) | {rss} / {peak} MiB |");
}
