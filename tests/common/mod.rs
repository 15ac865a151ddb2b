//! Test harness: a real memesh server on 127.0.0.1:0 with a fresh data directory and a clock
//! the test controls, plus small HTTP helpers that return (status, JSON).
#![allow(dead_code)]

pub mod binary;
pub mod browser;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::sync::OnceLock;
use std::time::Duration;

use memesh::bootstrap::{self, TenantSpec};
use memesh::clock::{Clock, ManualClock, Timestamp};
use memesh::db::Db;
use memesh::embed::{Embedder, MODEL_DIM};
use memesh::index::IndexConfig;
use memesh::memory::engine::{EngineConfig, MemoryEngine};
use memesh::plans::RateOverride;
use memesh::state::{AppState, PlansSettings, Settings};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const START: &str = "2026-03-20T09:00:00.000Z";

/// The model tests run with where they do not care which model answers: the small English one
/// (quick to load and run). Tests of the multilingual default load it themselves.
pub const TEST_MODEL: &memesh::embed::BundledModel = &memesh::embed::catalog::ALL_MINILM_L6_V2;

/// The test model, loaded once per test binary and shared by its servers.
pub fn embedder() -> Embedder {
    embedder_of(TEST_MODEL)
}

/// A real bundled model, loaded once per test binary and shared by its servers.
pub fn embedder_of(model: &'static memesh::embed::BundledModel) -> Embedder {
    static LOADED: OnceLock<Mutex<HashMap<&'static str, Embedder>>> = OnceLock::new();
    let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap();
    loaded
        .entry(model.id)
        .or_insert_with(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let (embedder, worker) = memesh::embed::load_bundled(
                model,
                Some(&root.join("models").join(model.id)),
                Some(&root.join("runtime/libonnxruntime.so.1.31.1")),
                2,
                2,
            )
            .expect("the bundled model loads (run scripts/fetch-runtime.sh first)");
            // The worker lives as long as the test process.
            std::mem::forget(worker);
            embedder
        })
        .clone()
}

/// Index settings for tests: graphs from 300 vectors on, so tests exercise them cheaply.
pub fn test_index_config() -> IndexConfig {
    IndexConfig {
        graph_threshold: 300,
        ..IndexConfig::new(MODEL_DIM)
    }
}

pub fn open_engine(
    db: &Db,
    dir: &Path,
    model: &'static memesh::embed::BundledModel,
) -> MemoryEngine {
    MemoryEngine::open(
        db,
        model.id,
        || Ok(embedder_of(model)),
        EngineConfig {
            index: test_index_config(),
            snapshot_dir: dir.join("index"),
            snapshot_interval: Duration::from_secs(3600),
        },
    )
    .expect("memory engine opens")
}

/// Tests' agents run on loopback, so private destinations are allowed (tests of the guard turn
/// it back on).
pub fn test_settings() -> Settings {
    Settings {
        allow_private_agent_urls: true,
        probe_interval: Duration::from_secs(3600),
        sweep_interval: Duration::from_secs(3600),
        remote_refresh_interval: Duration::from_secs(3600),
        remote_cancel_attempts: 3,
        remote_cancel_timeout: Duration::from_secs(60),
        // Request limits stay out of the way of tests that are not about them.
        plans: PlansSettings {
            rate: RateOverride {
                per_second: Some(0),
                burst: None,
            },
            public_per_second: 0,
            reload_interval: Duration::from_secs(3600),
            ..PlansSettings::default()
        },
        ..Settings::default()
    }
}

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub owner_key: String,
    pub dir: TempDir,
    pub state: AppState,
    pub model: &'static memesh::embed::BundledModel,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

pub struct Tenant {
    pub id: String,
    pub owner_key: String,
    pub owner_user_id: String,
}

impl TestServer {
    /// Probes, hold expiry and lease recovery are driven by the tests themselves (deterministically,
    /// with the manual clock), so their background intervals are an hour.
    pub async fn start() -> TestServer {
        Self::start_with(test_settings()).await
    }

    pub async fn start_with(settings: Settings) -> TestServer {
        Self::start_on(TEST_MODEL, settings).await
    }

    /// A server embedding with `model` (the test model unless a test is about another).
    pub async fn start_on(
        model: &'static memesh::embed::BundledModel,
        settings: Settings,
    ) -> TestServer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("memesh=info")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::new(Timestamp::parse(START).unwrap()));
        let db = Db::open(&dir.path().join("memesh.db")).expect("open db");
        let spec = TenantSpec {
            name: "alpha",
            owner_email: "owner@alpha.test",
            owner_key: None,
        };
        let tenant = bootstrap::initialize(&db, &spec, clock.now())
            .expect("bootstrap")
            .expect("fresh database is initialized");
        Self::launch(dir, db, clock, settings, tenant.key, model).await
    }

    async fn launch(
        dir: TempDir,
        db: Db,
        clock: Arc<ManualClock>,
        settings: Settings,
        owner_key: String,
        model: &'static memesh::embed::BundledModel,
    ) -> TestServer {
        let engine = open_engine(&db, dir.path(), model);
        let state = AppState::new(db, clock.clone(), settings, engine).expect("app state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(memesh::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            clock,
            owner_key,
            dir,
            state,
            model,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// The first tenant (the one `owner_key` belongs to).
    pub fn tenant_id(&self) -> memesh::ids::TenantId {
        let db = Db::open(&self.db_path()).unwrap();
        db.read_blocking(|c| {
            Ok(c.query_row(
                "SELECT id FROM tenants ORDER BY created_at, id LIMIT 1",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("memesh.db")
    }

    /// Stops gracefully and starts a new server process-state on the same data directory.
    pub async fn restart(mut self) -> TestServer {
        self.stop_in_place().await;
        let db = Db::open(&self.db_path()).expect("reopen db");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::launch(
            dir,
            db,
            self.clock.clone(),
            test_settings(),
            self.owner_key.clone(),
            self.model,
        )
        .await
    }

    async fn stop_in_place(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server exits cleanly");
        }
    }

    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    /// Adds another tenant to this server, as `memesh tenant create` does.
    pub fn create_tenant(&self, name: &str, email: &str) -> Tenant {
        let db = Db::open(&self.db_path()).unwrap();
        let spec = TenantSpec {
            name,
            owner_email: email,
            owner_key: None,
        };
        let t = bootstrap::create_tenant(&db, &spec, self.clock.now()).unwrap();
        Tenant {
            id: t.tenant_id.to_string(),
            owner_key: t.key,
            owner_user_id: t.owner.user_id.to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text}"))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(key), Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// Invites `email` with `role` as `inviter` and accepts; returns (user id, API key).
    pub async fn add_member(&self, inviter: &str, email: &str, role: &str) -> (String, String) {
        let (s, inv) = self
            .post(
                "/v1/team/members/invite",
                inviter,
                serde_json::json!({ "email": email, "role": role }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{inv}");
        let token = inv["token"].as_str().unwrap().to_owned();
        let (s, acc) = self
            .call(
                Method::POST,
                &format!("/v1/team/invitations/{token}/accept"),
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{acc}");
        (
            acc["member"]["userId"].as_str().unwrap().to_owned(),
            acc["apiKey"]["key"].as_str().unwrap().to_owned(),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The error code of a JSON error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// A file of the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn bin_path() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_memesh"))
}

/// A valid A2A 1.0 Agent Card whose JSON-RPC interface is at `url`.
pub fn card(url: &str) -> Value {
    serde_json::json!({
        "name": "Echo", "description": "echoes text", "version": "1.0.0",
        "supportedInterfaces": [{ "url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0" }],
        "capabilities": { "streaming": false }, "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{ "id": "echo", "name": "Echo", "description": "echo back", "tags": ["demo"] }]
    })
}
