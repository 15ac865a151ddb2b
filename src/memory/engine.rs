//! Opening the memory engine at start: check which model the stored vectors came from, fill the
//! index from SQLite (the source of truth), install the graph snapshot, and start the upkeep
//! thread; and stopping it cleanly, with a final snapshot.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::db::Db;
use crate::embed::Embedder;
use crate::index::{
    self, IndexConfig, Maintainer, OwnerKey, Restored, RowId, VectorIndex, VectorSource,
};

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
    snapshot_dir: PathBuf,
    snapshot_interval: Duration,
    /// `changes` when the last snapshot was written (or the index was loaded).
    snapshotted: AtomicU64,
    /// One snapshot at a time (the job and shutdown may meet).
    snapshotting: Mutex<()>,
    /// Memories SQLite holds, counted at start and kept by the commits' effects, so readiness is
    /// two loads, not a count of the table.
    stored: AtomicI64,
    /// Index searches a batch may run at once, across all requests: one per core.
    search_slots: Arc<tokio::sync::Semaphore>,
}

/// A committed memory to index: its rowid, creation time and vector.
pub type Indexed = (RowId, i64, Vec<f32>);

impl MemoryEngine {
    /// Opens the engine for vectors of model `model_id`. The model is loaded by `load_embedder`
    /// on its own thread while the snapshot is read on another and reconciled with SQLite:
    /// start-up costs the longer of the two, not their sum.
    pub fn open(
        db: &Db,
        model_id: &str,
        load_embedder: impl FnOnce() -> anyhow::Result<Embedder> + Send,
        config: EngineConfig,
    ) -> anyhow::Result<MemoryEngine> {
        let started = Instant::now();
        let stored = ensure_model(db, model_id)?;
        let source: Arc<dyn VectorSource> = Arc::new(SqliteVectors(db.clone()));
        let index = Arc::new(VectorIndex::new(config.index, source));
        let dim = index.config().dim;
        let (embedder, restored) = std::thread::scope(|scope| {
            let embedder = scope.spawn(load_embedder);
            let restored = restore_index(db, &index, &config.snapshot_dir, model_id);
            (joined(embedder.join()), restored)
        });
        let (restored, needs_snapshot) = restored?;
        let embedder = embedder?;
        if embedder.info().id != model_id || embedder.info().dim != dim {
            bail!(
                "the loaded model is {:?}, expected {model_id:?}",
                embedder.info().id
            );
        }
        let stats = index.stats();
        tracing::info!(
            vectors = stats.vectors,
            from_snapshot = restored.partitions,
            graphs_loaded = restored.graphs,
            pending = stats.pending,
            total_ms = started.elapsed().as_millis() as u64,
            "memory index ready"
        );
        // A start that had to read vectors from SQLite writes a snapshot at the first chance.
        let snapshotted = AtomicU64::new(if needs_snapshot {
            u64::MAX
        } else {
            index.changes()
        });
        let maintainer = Maintainer::start(index.clone());
        Ok(MemoryEngine {
            embedder,
            index,
            graphs_from_snapshot: restored.graphs,
            maintainer: Mutex::new(Some(maintainer)),
            snapshot_dir: config.snapshot_dir,
            snapshot_interval: config.snapshot_interval,
            snapshotted,
            snapshotting: Mutex::new(()),
            stored: AtomicI64::new(stored),
            search_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )),
        })
    }

    /// Indexes memories whose insert has committed (call it from the commit's effect).
    pub fn committed_inserts(&self, owner: &OwnerKey, items: &[Indexed]) {
        let refs: Vec<(RowId, i64, &[f32])> = items
            .iter()
            .map(|(row, at, v)| (*row, *at, v.as_slice()))
            .collect();
        self.index.insert(owner, &refs);
        self.stored.fetch_add(items.len() as i64, Ordering::Relaxed);
    }

    /// Drops a memory whose delete has committed from the index.
    pub fn committed_delete(&self, owner: &OwnerKey, row: RowId) {
        self.index.remove(owner, row);
        self.stored.fetch_sub(1, Ordering::Relaxed);
    }

    /// Ready: the index holds exactly the memories SQLite holds.
    pub fn is_consistent(&self) -> (bool, i64, usize) {
        let stored = self.stored.load(Ordering::Relaxed);
        let indexed = self.index.len();
        (usize::try_from(stored) == Ok(indexed), stored, indexed)
    }

    /// The shared, bounded slots batch searches run in.
    pub fn search_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.search_slots.clone()
    }

    /// How often the snapshot job runs.
    pub fn snapshot_interval(&self) -> Duration {
        self.snapshot_interval
    }

    /// Writes a graph snapshot if the graphs changed since the last one; returns whether it
    /// wrote one. Blocking: run it off the async runtime.
    pub fn snapshot_if_changed(&self) -> anyhow::Result<bool> {
        let _one = self
            .snapshotting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changes = self.index.changes();
        if changes == self.snapshotted.load(Ordering::Relaxed) {
            return Ok(false);
        }
        index::save_snapshot(&self.index, &self.snapshot_dir, self.model_id())?;
        self.snapshotted.store(changes, Ordering::Relaxed);
        Ok(true)
    }

    /// Graphs installed from the snapshot at start (the rest are rebuilt in the background).
    pub fn graphs_from_snapshot(&self) -> usize {
        self.graphs_from_snapshot
    }

    pub fn model_id(&self) -> &str {
        &self.embedder.info().id
    }

    /// Stops the upkeep thread and writes a last snapshot if the graphs changed. Idempotent.
    pub fn shutdown(&self) {
        let maintainer = self
            .maintainer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(m) = maintainer {
            m.stop();
        }
        if let Err(e) = self.snapshot_if_changed() {
            tracing::error!(error = %format!("{e:#}"), "the index snapshot at shutdown failed");
        }
    }
}

/// Missing rows past which one pass over the table beats looking each one up.
const FULL_SCAN_FROM: usize = 20_000;

/// Fills `index` from the snapshot in `dir`, reconciled with SQLite, and reads from SQLite the
/// vectors the snapshot lacks. Returns what was restored and whether a fresh snapshot is due.
fn restore_index(
    db: &Db,
    index: &VectorIndex,
    dir: &std::path::Path,
    model_id: &str,
) -> anyhow::Result<(Restored, bool)> {
    let dim = index.config().dim;
    let (report, owner_rows) = std::thread::scope(|scope| {
        let report = scope.spawn(|| index::read_snapshot(dir, model_id, dim));
        let rows = db.read_blocking(store::owner_rows);
        (joined(report.join()), rows)
    });
    let (report, owner_rows) = (report?, owner_rows?);
    let stale = !report.skipped.is_empty();
    for skipped in &report.skipped {
        tracing::warn!(reason = %skipped, "index snapshot not used; reading vectors from SQLite");
    }
    let total: usize = owner_rows.values().map(Vec::len).sum();
    let restored = index.restore(report, &owner_rows);
    drop(owner_rows);
    let missing: usize = restored.missing.iter().map(|(_, rows)| rows.len()).sum();
    if missing >= FULL_SCAN_FROM && missing * 4 >= total {
        let wanted: std::collections::HashSet<RowId> = restored
            .missing
            .iter()
            .flat_map(|(_, rows)| rows.iter().copied())
            .collect();
        db.read_blocking(|conn| {
            store::for_each_vector(conn, |owner, row, created_at, vector| {
                if wanted.contains(&row) {
                    index.insert(&owner, &[(row, created_at, &vector)]);
                }
            })
        })?;
    } else {
        for (owner, rows) in &restored.missing {
            for chunk in rows.chunks(1024) {
                let mut items = Vec::with_capacity(chunk.len());
                db.read_blocking(|conn| {
                    store::indexed_rows(conn, chunk, |row, at, v| items.push((row, at, v)))
                })?;
                let refs: Vec<(RowId, i64, &[f32])> = items
                    .iter()
                    .map(|(row, at, v)| (*row, *at, v.as_slice()))
                    .collect();
                index.insert(owner, &refs);
            }
        }
    }
    tracing::info!(
        missing,
        dropped = restored.dropped,
        "index reconciled with SQLite"
    );
    let due = stale || missing > 0 || restored.dropped > 0;
    Ok((restored, due))
}

/// The exact vectors, read from SQLite for rescoring.
pub struct SqliteVectors(Db);

impl SqliteVectors {
    pub fn new(db: Db) -> SqliteVectors {
        SqliteVectors(db)
    }
}

impl VectorSource for SqliteVectors {
    fn vectors(&self, rows: &[RowId], found: &mut dyn FnMut(RowId, &[f32])) -> anyhow::Result<()> {
        self.0
            .read_blocking(|conn| store::vectors_of(conn, rows, found))
            .map_err(anyhow::Error::new)
    }
}

fn joined<T>(r: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    r.unwrap_or_else(|_| Err(anyhow::anyhow!("a start-up thread panicked")))
}

/// Vectors of two models must never be compared: a database written with another model is
/// refused until `memesh reindex` has re-embedded it. Returns how many memories are stored.
fn ensure_model(db: &Db, model: &str) -> anyhow::Result<i64> {
    let (stored, count) =
        db.read_blocking(|c| Ok((store::stored_model(c)?, store::count_all(c)?)))?;
    match stored {
        Some(s) if s == model => Ok(count),
        Some(s) if count > 0 => bail!(
            "this database's {count} memories were embedded with model {s:?}, but this memesh \
             uses {model:?}; stop the server and run `memesh reindex` to re-embed them"
        ),
        _ => {
            db.write_blocking(|tx| store::set_model(tx, model))?;
            Ok(count)
        }
    }
}
