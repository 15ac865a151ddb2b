//! Opening the memory engine at start: check which model the stored vectors came from, fill the
//! index from SQLite (the source of truth), install the graph snapshot, and start the upkeep
//! thread; and stopping it cleanly, with a final snapshot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::db::Db;
use crate::embed::Embedder;
use crate::index::{self, IndexConfig, Maintainer, SnapshotPolicy, VectorIndex};

use super::store;

pub struct EngineConfig {
    pub index: IndexConfig,
    pub snapshot_dir: PathBuf,
    pub snapshot_interval: Duration,
}

pub struct MemoryEngine {
    pub embedder: Embedder,
    pub index: Arc<VectorIndex>,
    graphs_from_snapshot: usize,
    maintainer: Mutex<Option<Maintainer>>,
}

impl MemoryEngine {
    pub fn open(db: &Db, embedder: Embedder, config: EngineConfig) -> anyhow::Result<MemoryEngine> {
        let started = Instant::now();
        let model = embedder.info().id.clone();
        ensure_model(db, &model)?;
        let index = Arc::new(VectorIndex::new(config.index));
        db.read_blocking(|conn| {
            store::for_each_vector(conn, |owner, row, created_at, vector| {
                index.insert(&owner, &[(row, created_at, &vector)]);
            })
        })?;
        let loaded = Instant::now();
        let report = index::load_snapshot(&index, &config.snapshot_dir, &model)?;
        for skipped in &report.skipped {
            tracing::warn!(reason = %skipped, "graph snapshot not used; it will be rebuilt");
        }
        let stats = index.stats();
        tracing::info!(
            vectors = stats.vectors,
            graphs_loaded = report.loaded,
            pending = stats.pending,
            tombstones = stats.tombstones,
            fill_ms = (loaded - started).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "memory index ready"
        );
        let maintainer = Maintainer::start(
            index.clone(),
            SnapshotPolicy {
                dir: config.snapshot_dir,
                model_id: model,
                interval: config.snapshot_interval,
            },
        );
        Ok(MemoryEngine {
            embedder,
            index,
            graphs_from_snapshot: report.loaded,
            maintainer: Mutex::new(Some(maintainer)),
        })
    }

    /// Graphs installed from the snapshot at start (the rest are rebuilt in the background).
    pub fn graphs_from_snapshot(&self) -> usize {
        self.graphs_from_snapshot
    }

    pub fn model_id(&self) -> &str {
        &self.embedder.info().id
    }

    /// Stops the upkeep thread (it writes a last snapshot first). Idempotent.
    pub fn shutdown(&self) {
        let maintainer = self
            .maintainer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(m) = maintainer {
            m.stop();
        }
    }
}

/// Vectors of two models must never be compared: a database written with another model is
/// refused until `memesh reindex` has re-embedded it.
fn ensure_model(db: &Db, model: &str) -> anyhow::Result<()> {
    let (stored, count) =
        db.read_blocking(|c| Ok((store::stored_model(c)?, store::count_all(c)?)))?;
    match stored {
        Some(s) if s == model => Ok(()),
        Some(s) if count > 0 => bail!(
            "this database's {count} memories were embedded with model {s:?}, but this memesh \
             uses {model:?}; stop the server and run `memesh reindex` to re-embed them"
        ),
        _ => {
            db.write_blocking(|tx| store::set_model(tx, model))?;
            Ok(())
        }
    }
}
