//! Opening the memory engine at start: check which model the stored vectors came from, fill the
//! index from SQLite (the source of truth), install the graph snapshot, and start the upkeep
//! thread; and stopping it cleanly, with a final snapshot.
//!
//! The model and the index it feeds are one [`Generation`]. While the data directory switches
//! models (see [`super::switch`]) a second generation is filled beside the current one, and the
//! commit that finishes the switch makes it current. Retrieval runs on one generation from its
//! query's embedding to its last rescored vector ([`MemoryEngine::stable`]), so no ranking ever
//! mixes two models.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

/// A model and the index of its vectors.
pub struct Generation {
    pub embedder: Embedder,
    pub index: Arc<VectorIndex>,
    source: Arc<SqliteVectors>,
    maintainer: Mutex<Option<Maintainer>>,
}

impl Generation {
    fn new(embedder: Embedder, index: Arc<VectorIndex>, source: Arc<SqliteVectors>) -> Generation {
        let maintainer = Maintainer::start(index.clone());
        Generation {
            embedder,
            index,
            source,
            maintainer: Mutex::new(Some(maintainer)),
        }
    }

    pub fn model_id(&self) -> &str {
        &self.embedder.info().id
    }

    /// Stops the index's upkeep thread. Idempotent.
    fn stop(&self) {
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

/// The current generation and the one a switch fills, shared with the commit that swaps them.
struct Generations {
    current: RwLock<Arc<Generation>>,
    /// The generation a model switch is filling, while one is under way in this process.
    next: RwLock<Option<Arc<Generation>>>,
    /// Even while the current generation stays; odd from just before the commit that finishes a
    /// switch until the new generation is current (a seqlock for [`MemoryEngine::stable`]).
    epoch: AtomicU64,
    /// Set when a swap installed a generation no snapshot holds yet.
    swapped: std::sync::atomic::AtomicBool,
}

/// The effect of the commit that finishes a switch. Dropped without running (the mutation
/// rolled back, the commit failed), it leaves the current generation and ends the odd epoch.
struct Swap {
    generations: Arc<Generations>,
    next: Arc<Generation>,
    armed: bool,
}

impl Swap {
    fn arm(&mut self) {
        self.generations.epoch.fetch_add(1, Ordering::AcqRel);
        self.armed = true;
    }

    fn apply(mut self) {
        let g = &self.generations;
        let old = std::mem::replace(
            &mut *g
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            self.next.clone(),
        );
        *g.next
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        // The copy committed: the new generation's exact vectors are in `memories` now.
        self.next.source.use_memories();
        g.swapped.store(true, Ordering::Release);
        g.epoch.fetch_add(1, Ordering::AcqRel);
        self.armed = false;
        // Off the writer thread: stopping waits for the old index's upkeep to finish a step.
        std::thread::spawn(move || old.stop());
        tracing::info!(model = self.next.model_id(), "embedding model switched");
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        if self.armed {
            self.generations.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }
}

pub struct MemoryEngine {
    generations: Arc<Generations>,
    /// A switch's progress, for `/healthz`.
    pub(super) switch: Mutex<Option<super::switch::Progress>>,
    config: IndexConfig,
    db: Db,
    graphs_from_snapshot: usize,
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
        let source = Arc::new(SqliteVectors::new(db.clone()));
        let index = Arc::new(VectorIndex::new(
            config.index.clone(),
            source.clone() as Arc<dyn VectorSource>,
        ));
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
        Ok(MemoryEngine {
            generations: Arc::new(Generations {
                current: RwLock::new(Arc::new(Generation::new(embedder, index, source))),
                next: RwLock::new(None),
                epoch: AtomicU64::new(0),
                swapped: std::sync::atomic::AtomicBool::new(false),
            }),
            switch: Mutex::new(None),
            config: config.index,
            db: db.clone(),
            graphs_from_snapshot: restored.graphs,
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

    /// The current model and index.
    pub fn generation(&self) -> Arc<Generation> {
        self.generations
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The generation a switch is filling, if one is.
    pub fn next_generation(&self) -> Option<Arc<Generation>> {
        self.generations
            .next
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` (a retrieval: embed, search, rescore) on one generation; if a switch finished
    /// meanwhile, runs it again on the new one. `f` must only read.
    pub async fn stable<T, F, Fut>(&self, mut f: F) -> crate::error::ApiResult<T>
    where
        F: FnMut(Arc<Generation>) -> Fut,
        Fut: std::future::Future<Output = crate::error::ApiResult<T>>,
    {
        loop {
            let epoch = self.generations.epoch.load(Ordering::Acquire);
            if epoch % 2 == 1 {
                // The commit that swaps generations is in flight: a moment.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let out = f(self.generation()).await;
            if self.generations.epoch.load(Ordering::Acquire) == epoch {
                return out;
            }
        }
    }

    /// Installs (or with `None` drops) the generation a switch fills.
    pub(super) fn set_next(&self, next: Option<Arc<Generation>>) {
        let old = std::mem::replace(
            &mut *self
                .generations
                .next
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            next,
        );
        if let Some(old) = old {
            old.stop();
        }
    }

    /// A next generation of `embedder`, filled with the next vectors SQLite already holds (a
    /// switch resumed after a restart), reading its exact vectors from `memory_vectors_next`.
    pub(super) fn new_generation(&self, embedder: Embedder) -> anyhow::Result<Arc<Generation>> {
        let source = Arc::new(SqliteVectors::next(self.db.clone()));
        let index = Arc::new(VectorIndex::new(
            self.config.clone(),
            source.clone() as Arc<dyn VectorSource>,
        ));
        self.db.read_blocking(|c| {
            super::switch::for_each_next_vector(c, |o, r, t, v| index.insert(&o, &[(r, t, &v)]))
        })?;
        Ok(Arc::new(Generation::new(embedder, index, source)))
    }

    /// Finishes a switch to `next`'s model in one transaction (see [`super::switch::finish`]);
    /// its commit makes `next` current. `false` when a memory still lacks its next vector.
    pub(super) async fn finish_switch(
        &self,
        next: Arc<Generation>,
    ) -> crate::error::ApiResult<bool> {
        let to = next.model_id().to_owned();
        let mut swap = Swap {
            generations: self.generations.clone(),
            next,
            armed: false,
        };
        self.db
            .write(move |tx| {
                if !super::switch::finish(tx, &to)? {
                    return Ok(false);
                }
                // From here until the new generation is current, retrieval waits, and one that
                // began before runs again (the seqlock's odd epoch).
                swap.arm();
                tx.after_commit(move || swap.apply());
                Ok(true)
            })
            .await
    }

    /// Indexes memories whose insert has committed (call it from the commit's effect).
    pub fn committed_inserts(&self, owner: &OwnerKey, items: &[Indexed]) {
        let refs: Vec<(RowId, i64, &[f32])> = items
            .iter()
            .map(|(row, at, v)| (*row, *at, v.as_slice()))
            .collect();
        // A switch's next generation gets them from its own pass (their next vectors).
        self.generation().index.insert(owner, &refs);
        self.stored.fetch_add(items.len() as i64, Ordering::Relaxed);
    }

    /// Drops a memory whose delete has committed from the index (both, during a switch).
    pub fn committed_delete(&self, owner: &OwnerKey, row: RowId) {
        self.generation().index.remove(owner, row);
        if let Some(next) = self.next_generation() {
            next.index.remove(owner, row);
        }
        self.stored.fetch_sub(1, Ordering::Relaxed);
    }

    /// Ready: the index holds exactly the memories SQLite holds.
    pub fn is_consistent(&self) -> (bool, i64, usize) {
        let stored = self.stored.load(Ordering::Relaxed);
        let indexed = self.generation().index.len();
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
        let g = self.generation();
        let swapped = self.generations.swapped.swap(false, Ordering::AcqRel);
        let changes = g.index.changes();
        if !swapped && changes == self.snapshotted.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let saved = index::save_snapshot(&g.index, &self.snapshot_dir, g.model_id());
        if saved.is_err() && swapped {
            self.generations.swapped.store(true, Ordering::Release);
        }
        saved?;
        self.snapshotted.store(changes, Ordering::Relaxed);
        Ok(true)
    }

    /// Graphs installed from the snapshot at start (the rest are rebuilt in the background).
    pub fn graphs_from_snapshot(&self) -> usize {
        self.graphs_from_snapshot
    }

    /// The model of the current generation (the one `memories.embedding` holds).
    pub fn model_id(&self) -> String {
        self.generation().model_id().to_owned()
    }

    /// A switch under way in this process and how far it is.
    pub fn switch_progress(&self) -> Option<super::switch::Progress> {
        self.switch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops the upkeep threads and writes a last snapshot if the graphs changed. Idempotent.
    pub fn shutdown(&self) {
        self.set_next(None);
        self.generation().stop();
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

/// The exact vectors, read from SQLite for rescoring: from `memories`, or for a switch's next
/// generation from `memory_vectors_next` until the switch's commit copies them over.
pub struct SqliteVectors {
    db: Db,
    next: std::sync::atomic::AtomicBool,
}

impl SqliteVectors {
    pub fn new(db: Db) -> SqliteVectors {
        SqliteVectors {
            db,
            next: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn next(db: Db) -> SqliteVectors {
        SqliteVectors {
            db,
            next: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn use_memories(&self) {
        self.next.store(false, Ordering::Release);
    }
}

impl VectorSource for SqliteVectors {
    fn vectors(&self, rows: &[RowId], found: &mut dyn FnMut(RowId, &[f32])) -> anyhow::Result<()> {
        let next = self.next.load(Ordering::Acquire);
        self.db
            .read_blocking(|conn| {
                if next {
                    super::switch::next_vectors_of(conn, rows, found)
                } else {
                    store::vectors_of(conn, rows, found)
                }
            })
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
             uses {model:?}; start it with --model {s}, or move the memories to {model:?} \
             with `memesh reindex --model {model}` (which can run while a server serves)"
        ),
        _ => {
            db.write_blocking(|tx| store::set_model(tx, model))?;
            Ok(count)
        }
    }
}
