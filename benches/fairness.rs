//! One tenant saturating the embedding model with writes while another tenant searches
//! (issue 10): the searching tenant's latency, idle and under that load. The model serves
//! tenants in turn, a slice of at most 64 texts per call, so a search waits for at most about
//! one model call of the other tenant's, never for its whole queue.
//!
//! Run: `cargo bench --bench fairness` (release build, real model). `MEMESH_BENCH_SEARCHES` sets
//! how many searches are timed in each phase (default 200).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;

use common::{InProcess, percentile};

const WRITERS: usize = 4;

fn main() {
    let searches: usize = std::env::var("MEMESH_BENCH_SEARCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(searches));
}

fn sentence(i: usize) -> String {
    const WHO: &[&str] = &[
        "the support bot",
        "our lead engineer",
        "the billing service",
        "a vendor",
    ];
    const DID: &[&str] = &["reported", "fixed", "postponed", "escalated", "documented"];
    const WHAT: &[&str] = &[
        "the invoice export",
        "a memory leak",
        "the login timeout",
        "dark mode",
    ];
    format!(
        "{} {} {} in week {} after the customer call about plan {}",
        WHO[i % WHO.len()],
        DID[i / 4 % DID.len()],
        WHAT[i / 20 % WHAT.len()],
        i % 52,
        i
    )
}

async fn timed_searches(client: &reqwest::Client, base: &str, key: &str, n: usize) -> Vec<f64> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let resp = client
            .get(format!("{base}/v1/memory/search"))
            .query(&[
                ("query", format!("who fixed the login timeout {i}")),
                ("limit", "5".into()),
            ])
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    ms
}

async fn bench(searches: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), "bulk@localhost").await;
    let searcher = server.create_tenant("search", "search@localhost");
    let (base, writer) = (server.base.clone(), &server.tenant);
    let client = reqwest::Client::new();

    let memories: Vec<_> = (0..100)
        .map(|i| json!({ "content": sentence(i) }))
        .collect();
    let resp = client
        .post(format!("{base}/v1/memory/batch"))
        .header("x-api-key", &searcher.key)
        .json(&json!({ "memories": memories, "transactional": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    timed_searches(&client, &base, &searcher.key, 20).await;
    let idle = timed_searches(&client, &base, &searcher.key, searches).await;

    let running = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, base, key) = (client.clone(), base.clone(), writer.key.clone());
        let (running, written) = (running.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut n = w * 1_000_000;
            while running.load(Ordering::Relaxed) {
                let batch: Vec<_> = (n..n + 100)
                    .map(|i| json!({ "content": sentence(i) }))
                    .collect();
                n += 100;
                let resp = client
                    .post(format!("{base}/v1/memory/batch"))
                    .header("x-api-key", &key)
                    .json(&json!({ "memories": batch, "transactional": true }))
                    .send()
                    .await
                    .unwrap();
                if resp.status() == 201 {
                    written.fetch_add(100, Ordering::Relaxed);
                }
            }
        }));
    }
    // Let the writers fill the model's queue before timing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let written_before = written.load(Ordering::Relaxed);
    let loaded = timed_searches(&client, &base, &searcher.key, searches).await;
    let rate =
        (written.load(Ordering::Relaxed) - written_before) as f64 / started.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    server.stop().await;

    println!(
        "## embedding fairness ({} cores): tenant B's GET /v1/memory/search, one client\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| tenant A | B's searches | p50 | p99 | max |\n|---|---|---|---|---|");
    for (what, ms) in [
        ("idle", &idle),
        (
            &*format!("{WRITERS} writers, batches of 100 ({rate:.0} memories/s)"),
            &loaded,
        ),
    ] {
        println!(
            "| {what} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms.len(),
            percentile(ms, 0.5),
            percentile(ms, 0.99),
            ms[ms.len() - 1]
        );
    }
}
