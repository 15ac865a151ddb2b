//! The execution queue under 8 concurrent workers (issues 6 and 11): claim + heartbeat +
//! complete cycles per second over HTTP against an in-process server with a fresh database,
//! p50/p99 of each call of the cycle, and a check that no execution was ever held by two
//! workers. Run: `cargo bench --bench queue`
//! (`MEMESH_BENCH_CLAIMS` sets the number of executions, default 100,000;
//! `MEMESH_BENCH_DURABILITY=normal` measures with `--durability normal`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memesh::db::Durability;
use memesh::ids::TargetId;
use memesh::state::Settings;
use serde_json::{Value, json};

mod common;

use common::{InProcess, percentile};

/// The calls of a cycle, in order; latencies are kept per call.
const CALLS: [&str; 4] = ["list", "claim", "heartbeat", "complete"];

const WORKERS: usize = 8;

fn main() {
    let total: usize = std::env::var("MEMESH_BENCH_CLAIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(total));
}

async fn bench(total: usize) {
    let dir = tempfile::tempdir().unwrap();
    let durability = match std::env::var("MEMESH_BENCH_DURABILITY").as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let settings = Settings {
        execution_lease: Duration::from_secs(600),
        ..Settings::default()
    };
    let server = InProcess::start_with(dir.path(), "bench@localhost", settings, durability).await;
    let (base, db, owner) = (server.base.clone(), server.db.clone(), &server.tenant);
    let client = reqwest::Client::new();
    let key = owner.key.clone();
    let target: Value = client
        .post(format!("{base}/v1/agents/dispatch-targets"))
        .header("x-api-key", &key)
        .json(&json!({ "name": "bench-worker", "kind": "LOCAL_AGENT" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let target_id = TargetId::parse(target["id"].as_str().unwrap()).unwrap();
    let agent: Value = client
        .post(format!("{base}/v1/keys"))
        .header("x-api-key", &key)
        .json(&json!({ "name": "agent", "targetId": target_id }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = agent["key"].as_str().unwrap().to_owned();

    // Enqueue the runs through the API, 16 requests at a time (set-up, not measured).
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..16 {
        let (client, base, key, next) = (client.clone(), base.clone(), key.clone(), next.clone());
        let target_id = target_id.clone();
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let resp = client
                    .post(format!("{base}/v1/orchestrator/runs"))
                    .header("x-api-key", &key)
                    .json(&json!({ "targetId": target_id, "input": { "n": i } }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            }
        }));
    }
    for c in creators {
        c.await.unwrap();
    }
    eprintln!(
        "enqueued {total} runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let conflicts = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (client, base, agent, conflicts) = (
            client.clone(),
            base.clone(),
            agent.clone(),
            conflicts.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            let mut latencies: [Vec<f64>; 4] = Default::default();
            let mut n = 0usize;
            loop {
                let t = Instant::now();
                let list: Value = client
                    .get(format!("{base}/v1/agents/executions"))
                    .header("x-api-key", &agent)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                latencies[0].push(t.elapsed().as_secs_f64() * 1e3);
                let pending = list["executions"].as_array().unwrap();
                if pending.is_empty() {
                    return (claimed, latencies);
                }
                // Workers start at different places in the page to spread out.
                for j in 0..pending.len() {
                    let e = &pending[(j + w * pending.len() / WORKERS) % pending.len()];
                    let id = e["id"].as_str().unwrap();
                    n += 1;
                    let token = format!("w{w}-{n}");
                    let t = Instant::now();
                    let resp = client
                        .post(format!("{base}/v1/agents/executions/{id}/claim"))
                        .header("x-api-key", &agent)
                        .json(&json!({ "claimToken": token, "workerId": format!("worker-{w}") }))
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status();
                    // Read every answer whole, as a worker would (and so the connection is kept).
                    resp.bytes().await.unwrap();
                    latencies[1].push(t.elapsed().as_secs_f64() * 1e3);
                    if status == 409 {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    assert_eq!(status, 200);
                    for (k, action) in [(2, "heartbeat"), (3, "complete")] {
                        let t = Instant::now();
                        let resp = client
                            .post(format!("{base}/v1/agents/executions/{id}/{action}"))
                            .header("x-api-key", &agent)
                            .json(&json!({ "claimToken": token }))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(resp.status(), 200, "{action}");
                        resp.bytes().await.unwrap();
                        latencies[k].push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    claimed.push(id.to_owned());
                    break;
                }
            }
        }));
    }
    let mut all = Vec::new();
    let mut latencies: [Vec<f64>; 4] = Default::default();
    for w in workers {
        let (claimed, lat) = w.await.unwrap();
        all.extend(claimed);
        for (into, from) in latencies.iter_mut().zip(lat) {
            into.extend(from);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let distinct: HashSet<&String> = all.iter().collect();
    let completed: i64 = db
        .read_blocking(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM executions WHERE state = 'completed'",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    println!(
        "## memesh execution queue benchmark ({WORKERS} workers, 2 cores, durability {durability:?})\n"
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| executions claimed, heartbeaten and completed | {} |",
        all.len()
    );
    println!(
        "| claim + heartbeat + complete cycles per second | {:.0} |",
        all.len() as f64 / secs
    );
    println!(
        "| duplicate-claim conflicts answered (409) | {} |",
        conflicts.load(Ordering::Relaxed)
    );
    println!(
        "| executions won by two workers | {} |",
        all.len() - distinct.len()
    );
    println!("| executions completed in the database | {completed} |");
    for (name, lat) in CALLS.iter().zip(latencies.iter_mut()) {
        lat.sort_by(f64::total_cmp);
        println!(
            "| {name}: p50 / p99 / max under that load | {:.2} / {:.2} / {:.1} ms |",
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            lat.last().copied().unwrap_or(0.0)
        );
    }
    assert_eq!(all.len(), distinct.len(), "an execution was claimed twice");
    assert_eq!(completed as usize, total);
    server.stop().await;
}
