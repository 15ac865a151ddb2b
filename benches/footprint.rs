//! Memory and restart at scale (issue 11): the `memesh` release binary on a data directory of N
//! memories with synthetic vectors, loaded through `POST /v1/memory/import` (not through the
//! model), its graph built and snapshotted; then the time from start to the first answered
//! search, and the resident memory after it and after 100 more searches.
//!
//! Run: `cargo build --release && cargo bench --bench footprint`. `MEMESH_BENCH_SIZES` lists the
//! sizes (default `100000`; `100000,1000000` for the 1M figure, which takes a while).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{InProcess, root, rss_kib};
use serde_json::json;

const PORT: u16 = 18767;

async fn fill(dir: &Path, n: usize) -> String {
    let server = InProcess::start(dir, "owner@localhost").await;
    let client = reqwest::Client::new();
    let mut lines = String::new();
    let mut sent = 0;
    let started = Instant::now();
    for (i, v) in common::synthetic_vectors(n).enumerate() {
        let blob: Vec<u8> = v.iter().flat_map(|a| a.to_le_bytes()).collect();
        lines.push_str(
            &json!({
                "id": memesh::ids::MemoryId::generate(),
                "content": format!("synthetic memory {i} about topic {}", i % 200),
                "space": "default", "tags": [], "sensitivity": "internal",
                "createdAt": "2026-11-29T00:00:00.000Z",
                "embeddingModel": common::bench_model().id,
                "embedding": base64::engine::general_purpose::STANDARD.encode(blob),
            })
            .to_string(),
        );
        lines.push('\n');
        if (i + 1) % 5_000 == 0 || i + 1 == n {
            let resp = client
                .post(format!("{}/v1/memory/import", server.base))
                .header("x-api-key", &server.tenant.key)
                .header("content-type", "application/x-ndjson")
                .body(std::mem::take(&mut lines))
                .send()
                .await
                .unwrap();
            let report: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(report["failed"], 0, "{report}");
            sent = i + 1;
        }
    }
    eprintln!(
        "  imported {sent} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let state = server.state.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || state.memory.generation().index.maintain_now())
        .await
        .unwrap();
    eprintln!("  graph built in {:.0} s", started.elapsed().as_secs_f64());
    let key = server.tenant.key.clone();
    server.stop().await;
    key
}

fn search(key: &str, q: usize) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", PORT)) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /v1/memory/search?query=what+about+topic+{q}&limit=10 HTTP/1.1\r\nhost: x\r\n\
         x-api-key: {key}\r\nconnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MEMESH_BENCH_SIZES")
        .unwrap_or_else(|_| "100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let exe = root().join("target/release/memesh");
    assert!(
        exe.exists(),
        "build the binary first: cargo build --release"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("## memesh footprint and restart (synthetic 384-d vectors)\n");
    println!(
        "| memories | start to first answered search | RSS after it | RSS after 100 more searches |"
    );
    println!("|---|---|---|---|");
    for n in sizes {
        // `MEMESH_BENCH_KEEP=<dir>` keeps the filled data directory (as `<dir>/<n>`) and reuses
        // it on the next run, for iterating on start-up without refilling.
        let (_temp, dir) = match std::env::var_os("MEMESH_BENCH_KEEP") {
            Some(keep) => (None, std::path::PathBuf::from(keep).join(n.to_string())),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let key_file = dir.join("bench-key");
        let key = match std::fs::read_to_string(&key_file) {
            Ok(key) => key,
            Err(_) => {
                std::fs::create_dir_all(&dir).unwrap();
                eprintln!("filling {n} memories…");
                let key = runtime.block_on(fill(&dir, n));
                std::fs::write(&key_file, &key).unwrap();
                key
            }
        };
        let started = Instant::now();
        let mut child = Command::new(&exe)
            .args(["--listen", &format!("127.0.0.1:{PORT}"), "--data-dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while !search(&key, 0) {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "never answered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = started.elapsed();
        let after_first = rss_kib(child.id());
        for q in 1..=100 {
            assert!(search(&key, q));
        }
        let after_more = rss_kib(child.id());
        println!(
            "| {n} | {:.2} s | {} MiB | {} MiB |",
            first.as_secs_f64(),
            after_first / 1024,
            after_more / 1024
        );
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}
