//! What the benchmark binaries share: a memesh server running in the bench process on a fresh
//! data directory, with the real model, driven over HTTP like any client would.
#![allow(dead_code)]

pub mod corpus;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use memesh::bootstrap::{self, NewTenant, TenantSpec};
use memesh::clock::{Clock, SystemClock};
use memesh::db::{Db, Durability};
use memesh::index::IndexConfig;
use memesh::memory::engine::{EngineConfig, MemoryEngine};
use memesh::state::{AppState, Settings};

/// The allocator the `memesh` binary uses, so the benchmarks measure what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A memesh server in this process on `dir`, initialized with one tenant: its base URL, the
/// first tenant, and what stops it.
pub struct InProcess {
    pub base: String,
    pub tenant: NewTenant,
    pub db: Db,
    pub state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    pub async fn start(dir: &Path, owner_email: &str) -> InProcess {
        InProcess::start_with(dir, owner_email, Settings::default(), Durability::Full).await
    }

    pub async fn start_with(
        dir: &Path,
        owner_email: &str,
        settings: Settings,
        durability: Durability,
    ) -> InProcess {
        memesh::tune_allocator();
        // These benches measure memory, the queue and fairness, not the request limiter (its
        // cost is `cargo bench --bench ratelimit`): no per-key request limits here.
        let mut settings = settings;
        settings.plans.rate.per_second = Some(0);
        let db = Db::open_with(&dir.join("memesh.db"), durability).unwrap();
        let spec = TenantSpec {
            name: "bench",
            owner_email,
            owner_key: None,
        };
        let tenant = bootstrap::initialize(&db, &spec, SystemClock.now())
            .unwrap()
            .unwrap();
        let (embedder, _worker) = memesh::embed::load_bundled(
            bench_model(),
            Some(&root().join("models").join(bench_model().id)),
            Some(&root().join("runtime/libonnxruntime.so.1.31.1")),
            2,
            // As the server's `--embed-query-threads` (the same variable).
            std::env::var("MEMESH_EMBED_QUERY_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        .unwrap();
        let engine = MemoryEngine::open(
            &db,
            bench_model().id,
            || Ok(embedder),
            EngineConfig {
                index: IndexConfig::new(memesh::embed::MODEL_DIM),
                snapshot_dir: dir.join("index"),
                snapshot_interval: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let state =
            AppState::new(db.clone(), Arc::new(SystemClock), settings, engine).expect("app state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(memesh::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        InProcess {
            base,
            tenant,
            db,
            state,
            stop,
            server,
        }
    }

    /// Adds another tenant, as `memesh tenant create` does.
    pub fn create_tenant(&self, name: &str, owner_email: &str) -> NewTenant {
        let spec = TenantSpec {
            name,
            owner_email,
            owner_key: None,
        };
        bootstrap::create_tenant(&self.db, &spec, SystemClock.now()).unwrap()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}

/// Deterministic unit vectors around 200 centres, like embeddings of topical text.
pub fn synthetic_vectors(n: usize) -> impl Iterator<Item = Vec<f32>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..200)
        .map(|_| (0..memesh::embed::MODEL_DIM).map(|_| next()).collect())
        .collect();
    (0..n).map(move |i| {
        let c = &centres[i % centres.len()];
        let mut v: Vec<f32> = c.iter().map(|a| a + 0.6 * next()).collect();
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= norm);
        v
    })
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The model a bench runs with: `MEMESH_BENCH_MODEL` (a `--model` name), else the small English
/// model the figures of issue 11 were measured with.
pub fn bench_model() -> &'static memesh::embed::BundledModel {
    match std::env::var("MEMESH_BENCH_MODEL") {
        Ok(name) => memesh::embed::catalog::by_name(&name)
            .unwrap_or_else(|| panic!("MEMESH_BENCH_MODEL={name:?} is not a bundled model")),
        Err(_) => &memesh::embed::catalog::ALL_MINILM_L6_V2,
    }
}

/// Posts JSON lines to `POST /v1/memory/import` for `key` and checks that none failed.
pub async fn import_ndjson(base: &str, key: &str, lines: String) {
    let report: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/memory/import"))
        .header("x-api-key", key)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["failed"], 0, "{report}");
}
