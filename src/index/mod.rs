//! The vector index: one partition per owner (tenant and user), so a search only ever looks at
//! the caller's own vectors. Each vector is held once in memory, as an int8 code (a quarter of
//! f32); small partitions are scanned, large ones also get a compact HNSW graph over the codes,
//! fed in the background, with dead slots for deletions and a compaction when they pile up.
//!
//! Codes only choose candidates. Each code score carries a rigorous error bound, and the few
//! candidates whose bounds reach the cut are rescored with their exact f32 vectors, read from a
//! [`VectorSource`] (SQLite, in the server): results and scores are those of f32 vectors.

mod codes;
mod graph;
mod io;
mod maintainer;
mod partition;
mod score;
mod snapshot;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use graph::{Graph, Shape};
pub use maintainer::Maintainer;
pub use score::dot;
pub use snapshot::{LoadReport, Restored, load as read_snapshot, save as save_snapshot};

use partition::Partition;
use score::{Approx, TopK};

use crate::ids::{TenantId, UserId};

/// A memory's SQLite rowid: its identity in the index. Rowids are never reused (AUTOINCREMENT).
pub type RowId = i64;

/// Whose vectors these are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey(Arc<str>);

impl OwnerKey {
    pub fn new(tenant: &TenantId, user: &UserId) -> OwnerKey {
        OwnerKey(format!("{tenant}/{user}").into())
    }

    pub fn parse(s: &str) -> Option<OwnerKey> {
        let (t, u) = s.split_once('/')?;
        Some(OwnerKey::new(&TenantId::parse(t)?, &UserId::parse(u)?))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct IndexConfig {
    pub dim: usize,
    /// A partition gets an HNSW graph once it holds this many vectors; below, exact scan.
    pub graph_threshold: usize,
    pub ef_search: usize,
    pub ef_construction: usize,
    pub max_connections: usize,
    /// Rebuild a graph when this fraction of its points are deleted.
    pub rebuild_ratio: f64,
}

impl IndexConfig {
    pub fn new(dim: usize) -> IndexConfig {
        IndexConfig {
            dim,
            graph_threshold: 20_000,
            ef_search: 256,
            ef_construction: 100,
            max_connections: 16,
            rebuild_ratio: 0.1,
        }
    }
}

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: RowId,
    /// Cosine similarity, from -1 to 1.
    pub score: f32,
    pub created_at: i64,
}

/// Where the exact f32 vectors live (the index keeps only codes).
pub trait VectorSource: Send + Sync {
    /// Calls `found` with the stored vector of each of `rows` that still exists.
    fn vectors(&self, rows: &[RowId], found: &mut dyn FnMut(RowId, &[f32])) -> anyhow::Result<()>;
}

/// Exact vectors kept in memory: for tests and benchmarks of the index alone.
#[derive(Default)]
pub struct MemorySource(RwLock<HashMap<RowId, Vec<f32>>>);

impl MemorySource {
    pub fn put(&self, row: RowId, vector: &[f32]) {
        write(&self.0).insert(row, vector.to_vec());
    }
}

impl VectorSource for MemorySource {
    fn vectors(&self, rows: &[RowId], found: &mut dyn FnMut(RowId, &[f32])) -> anyhow::Result<()> {
        let map = read(&self.0);
        for row in rows {
            if let Some(v) = map.get(row) {
                found(*row, v);
            }
        }
        Ok(())
    }
}

/// Counts for `/readyz`, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexStats {
    pub vectors: usize,
    pub partitions: usize,
    pub graphs: usize,
    /// Live slots not yet in their partition's graph.
    pub pending: usize,
    /// Dead slots awaiting compaction.
    pub tombstones: usize,
    /// Bytes the partitions' arrays hold (codes, graphs, row bookkeeping), roughly.
    pub bytes: usize,
}

pub struct VectorIndex {
    config: IndexConfig,
    source: Arc<dyn VectorSource>,
    partitions: RwLock<HashMap<OwnerKey, Arc<RwLock<Partition>>>>,
    /// Moves whenever any partition changes, so snapshots are written only when there is news.
    changes: AtomicU64,
    len: AtomicUsize,
    /// Held by whoever changes graphs or dumps partitions (the upkeep thread, `maintain_now`,
    /// snapshots), so no graph changes while it is written and no two feeders meet.
    upkeep: std::sync::Mutex<()>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn upkeep_guard(index: &VectorIndex) -> std::sync::MutexGuard<'_, ()> {
    index
        .upkeep
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

impl VectorIndex {
    pub fn new(config: IndexConfig, source: Arc<dyn VectorSource>) -> VectorIndex {
        VectorIndex {
            config,
            source,
            partitions: RwLock::new(HashMap::new()),
            changes: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            upkeep: std::sync::Mutex::new(()),
        }
    }

    /// A counter that moves whenever the index changes (for deciding whether to snapshot).
    pub fn changes(&self) -> u64 {
        self.changes.load(RELAXED)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, RELAXED);
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    fn partition(&self, owner: &OwnerKey) -> Option<Arc<RwLock<Partition>>> {
        read(&self.partitions).get(owner).cloned()
    }

    fn partition_or_create(&self, owner: &OwnerKey) -> Arc<RwLock<Partition>> {
        if let Some(p) = self.partition(owner) {
            return p;
        }
        write(&self.partitions)
            .entry(owner.clone())
            .or_default()
            .clone()
    }

    pub(crate) fn all_partitions(&self) -> Vec<(OwnerKey, Arc<RwLock<Partition>>)> {
        read(&self.partitions)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Adds vectors (each `dim` long) to `owner`'s partition. A row already present is ignored.
    /// The exact vectors must also be in the source by now (they are committed first).
    pub fn insert(&self, owner: &OwnerKey, items: &[(RowId, i64, &[f32])]) {
        let part = self.partition_or_create(owner);
        let mut p = write(&part);
        let mut added = 0;
        for (row, created_at, vector) in items {
            debug_assert_eq!(vector.len(), self.config.dim);
            added += usize::from(p.insert(*row, *created_at, vector));
        }
        drop(p);
        self.len.fetch_add(added, RELAXED);
        self.changed();
    }

    /// How many vectors the index holds, kept as they come and go (no walk of the partitions).
    pub fn len(&self) -> usize {
        self.len.load(RELAXED)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a row; from then on no search returns it.
    pub fn remove(&self, owner: &OwnerKey, row: RowId) -> bool {
        let removed = match self.partition(owner) {
            Some(part) => write(&part).remove(row),
            None => false,
        };
        if removed {
            self.len.fetch_sub(1, RELAXED);
            self.changed();
        }
        removed
    }

    /// Exact scores for `candidates` from the source: rows gone from it meanwhile (deleted
    /// concurrently) drop out.
    fn rescore(
        &self,
        q: &[f32],
        candidates: &[Approx],
        mut keep: impl FnMut(Hit),
    ) -> anyhow::Result<()> {
        let created: HashMap<RowId, i64> =
            candidates.iter().map(|c| (c.row, c.created_at)).collect();
        let rows: Vec<RowId> = created.keys().copied().collect();
        self.source.vectors(&rows, &mut |row, vector| {
            if vector.len() == q.len()
                && let Some(&created_at) = created.get(&row)
            {
                keep(Hit {
                    row,
                    score: dot(q, vector),
                    created_at,
                });
            }
        })
    }

    fn best(&self, q: &[f32], k: usize, candidates: &[Approx]) -> anyhow::Result<Vec<Hit>> {
        let mut top = TopK::new(k);
        self.rescore(q, candidates, |hit| top.push(hit))?;
        Ok(top.into_sorted())
    }

    /// The `k` most similar of `owner`'s vectors, best first, optionally only among `allow`.
    pub fn search(
        &self,
        owner: &OwnerKey,
        query: &[f32],
        k: usize,
        allow: Option<&HashSet<RowId>>,
    ) -> anyhow::Result<Vec<Hit>> {
        self.search_with_ef(owner, query, k, allow, self.config.ef_search)
    }

    /// [`VectorIndex::search`] with another graph search breadth (benchmarks sweep it).
    pub fn search_with_ef(
        &self,
        owner: &OwnerKey,
        query: &[f32],
        k: usize,
        allow: Option<&HashSet<RowId>>,
        ef_search: usize,
    ) -> anyhow::Result<Vec<Hit>> {
        let Some(part) = self.partition(owner) else {
            return Ok(Vec::new());
        };
        let config = IndexConfig {
            ef_search,
            ..self.config.clone()
        };
        let candidates = read(&part).candidates(query, k, &config, allow);
        self.best(query, k, &candidates)
    }

    /// How many vectors `owner` has.
    pub fn owner_len(&self, owner: &OwnerKey) -> usize {
        self.partition(owner).map_or(0, |p| read(&p).len())
    }

    /// Exact scoring with a similarity floor: the best `k` of `owner`'s vectors (only among
    /// `allow`, if given) scoring at least `threshold`, and how many score at least that in all.
    /// Deterministic, so pages taken with growing offsets never skip or repeat a result.
    pub fn scan(
        &self,
        owner: &OwnerKey,
        query: &[f32],
        k: usize,
        allow: Option<&HashSet<RowId>>,
        threshold: Option<f32>,
    ) -> anyhow::Result<(Vec<Hit>, usize)> {
        let Some(part) = self.partition(owner) else {
            return Ok((Vec::new(), 0));
        };
        let found = read(&part).scan_candidates(query, k, self.config.dim, allow, threshold);
        let floor = threshold.unwrap_or(f32::NEG_INFINITY);
        let mut to_score = found.page;
        let paged: HashSet<RowId> = to_score.iter().map(|c| c.row).collect();
        let straddling: HashSet<RowId> = found.straddling.iter().map(|c| c.row).collect();
        to_score.extend(
            found
                .straddling
                .into_iter()
                .filter(|c| !paged.contains(&c.row)),
        );
        let mut top = TopK::new(k);
        let mut total = found.surely_above;
        self.rescore(query, &to_score, |hit| {
            if hit.score >= floor {
                total += usize::from(straddling.contains(&hit.row));
                if paged.contains(&hit.row) {
                    top.push(hit);
                }
            }
        })?;
        Ok((top.into_sorted(), total))
    }

    /// Exact search over all of `owner`'s vectors: the reference for recall measurements.
    pub fn exact_search(
        &self,
        owner: &OwnerKey,
        query: &[f32],
        k: usize,
    ) -> anyhow::Result<Vec<Hit>> {
        let Some(part) = self.partition(owner) else {
            return Ok(Vec::new());
        };
        let candidates = read(&part).exact_candidates(query, k, self.config.dim, None);
        self.best(query, k, &candidates)
    }

    pub fn stats(&self) -> IndexStats {
        let mut s = IndexStats::default();
        for (_, part) in self.all_partitions() {
            let p = read(&part);
            s.partitions += 1;
            s.vectors += p.len();
            s.graphs += usize::from(p.graph.is_some());
            if p.graph.is_some() {
                s.pending += (p.graphed()..p.slots()).filter(|&i| p.live[i]).count();
            }
            s.tombstones += p.dead;
            s.bytes += p.codes.len()
                + p.graph.as_ref().map_or(0, |g| g.footprint())
                + p.slots() * (8 + 8 + 4 + 1)
                + p.pos.capacity() * 16;
        }
        s
    }

    /// Every live row the index holds, sorted: compared with SQLite by tests and at start-up.
    pub fn rows(&self) -> Vec<RowId> {
        let mut rows: Vec<RowId> = self
            .all_partitions()
            .iter()
            .flat_map(|(_, part)| read(part).pos.keys().copied().collect::<Vec<_>>())
            .collect();
        rows.sort_unstable();
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        // xorshift: deterministic, no dependency.
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|c| *c /= n);
        v
    }

    fn owner(n: u8) -> OwnerKey {
        OwnerKey::parse(&format!("ten_{n:032x}/usr_{n:032x}")).expect("a valid owner")
    }

    /// An index over an in-memory source, with helpers that keep both in step.
    struct Fixture {
        index: VectorIndex,
        source: Arc<MemorySource>,
    }

    impl Fixture {
        fn new(config: IndexConfig) -> Fixture {
            let source = Arc::new(MemorySource::default());
            Fixture {
                index: VectorIndex::new(config, source.clone()),
                source,
            }
        }

        fn small() -> Fixture {
            Fixture::new(IndexConfig {
                graph_threshold: 200,
                ..IndexConfig::new(16)
            })
        }

        fn add(&self, o: u8, items: &[(RowId, i64, &[f32])]) {
            for (row, _, v) in items {
                self.source.put(*row, v);
            }
            self.index.insert(&owner(o), items);
        }

        /// Inserts `vs` for owner 1 as rows `first..`.
        fn add_all(&self, vs: &[Vec<f32>], first: RowId) {
            let items: Vec<(RowId, i64, &[f32])> = vs
                .iter()
                .enumerate()
                .map(|(i, v)| (first + i as RowId, 0, v.as_slice()))
                .collect();
            self.add(1, &items);
        }

        fn rows(&self, q: &[f32], k: usize) -> Vec<RowId> {
            self.index
                .search(&owner(1), q, k, None)
                .unwrap()
                .iter()
                .map(|h| h.row)
                .collect()
        }
    }

    /// The exact top `k` by f32 scores, the way the index orders ties.
    fn brute(vs: &[(RowId, Vec<f32>)], q: &[f32], k: usize, floor: f32) -> (Vec<Hit>, usize) {
        let mut top = TopK::new(k);
        let mut total = 0;
        for (row, v) in vs {
            let score = dot(q, v);
            if score >= floor {
                total += 1;
                top.push(Hit {
                    row: *row,
                    score,
                    created_at: 0,
                });
            }
        }
        (top.into_sorted(), total)
    }

    #[test]
    fn owners_never_see_each_other() {
        let f = Fixture::small();
        let v = unit(7, 16);
        f.add(1, &[(1, 0, &v)]);
        f.add(2, &[(2, 0, &unit(8, 16))]);
        let hits = f.index.search(&owner(2), &v, 10, None).unwrap();
        assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), [2]);
        assert!(f.index.search(&owner(3), &v, 10, None).unwrap().is_empty());
    }

    #[test]
    fn removal_is_immediate_and_scores_are_exact() {
        let f = Fixture::small();
        let vs: Vec<Vec<f32>> = (0..50).map(|i| unit(i, 16)).collect();
        f.add_all(&vs, 0);
        for row in (0..50).step_by(3) {
            assert!(f.index.remove(&owner(1), row));
        }
        assert!(!f.index.remove(&owner(1), 0), "second removal is a no-op");
        for (i, v) in vs.iter().enumerate() {
            let top = f.index.search(&owner(1), v, 1, None).unwrap();
            if i % 3 == 0 {
                assert!(top.iter().all(|h| h.row != i as RowId));
            } else {
                assert_eq!(top[0].row, i as RowId, "a vector finds itself");
                assert_eq!(top[0].score, dot(v, v), "the score is the exact f32 one");
            }
        }
    }

    #[test]
    fn ties_order_newest_first() {
        let f = Fixture::small();
        let v = unit(3, 16);
        f.add(1, &[(1, 100, &v), (2, 300, &v), (3, 200, &v)]);
        assert_eq!(f.rows(&v, 3), [2, 3, 1]);
    }

    #[test]
    fn code_shortlists_give_the_exact_answer() {
        // Vectors close together, so codes alone would often misorder them.
        let f = Fixture::new(IndexConfig::new(64));
        let base = unit(1, 64);
        let vs: Vec<(RowId, Vec<f32>)> = (0..3000)
            .map(|i| {
                let noise = unit(i + 10, 64);
                let mut v: Vec<f32> = base.iter().zip(&noise).map(|(b, n)| b + 0.05 * n).collect();
                let norm = dot(&v, &v).sqrt();
                v.iter_mut().for_each(|c| *c /= norm);
                (i as RowId, v)
            })
            .collect();
        for (row, v) in &vs {
            f.add(1, &[(*row, 0, v)]);
        }
        for qi in 0..30 {
            let q = unit(qi + 5000, 64);
            let q: Vec<f32> = base.iter().zip(&q).map(|(b, n)| b + 0.1 * n).collect();
            let want = brute(&vs, &q, 10, f32::NEG_INFINITY).0;
            assert_eq!(f.index.search(&owner(1), &q, 10, None).unwrap(), want);
            assert_eq!(f.index.exact_search(&owner(1), &q, 10).unwrap(), want);
            for floor in [0.95f32, 0.99, 0.995] {
                let (want, total) = brute(&vs, &q, 7, floor);
                let got = f.index.scan(&owner(1), &q, 7, None, Some(floor)).unwrap();
                assert_eq!(got, (want, total), "floor {floor}");
            }
        }
    }

    #[test]
    fn filter_restricts_results_and_fills_the_page() {
        let f = Fixture::small();
        let vs: Vec<Vec<f32>> = (0..400).map(|i| unit(i, 16)).collect();
        f.add_all(&vs, 0);
        f.index.maintain_now();
        assert_eq!(f.index.stats().graphs, 1);
        for set_size in [5usize, 150, 300] {
            let allow: HashSet<RowId> = (0..set_size as RowId)
                .map(|r| r * 400 / set_size as RowId)
                .collect();
            let hits = f
                .index
                .search(&owner(1), &vs[399], 10, Some(&allow))
                .unwrap();
            assert_eq!(hits.len(), 10.min(set_size));
            assert!(hits.iter().all(|h| allow.contains(&h.row)));
        }
    }

    #[test]
    fn graph_search_agrees_with_exact_and_sees_pending_and_tombstones() {
        let f = Fixture::small();
        let vs: Vec<Vec<f32>> = (0..600).map(|i| unit(i + 1000, 16)).collect();
        f.add_all(&vs[..500], 0);
        f.index.maintain_now();
        // Added after the graph was built: pending, found by the side scan.
        f.add_all(&vs[500..], 500);
        assert_eq!(f.index.stats().pending, 100);
        assert_eq!(f.rows(&vs[550], 1), [550]);
        f.index.remove(&owner(1), 10);
        assert!(!f.rows(&vs[10], 5).contains(&10));
        f.index.maintain_now();
        let s = f.index.stats();
        assert_eq!((s.pending, s.tombstones, s.vectors), (0, 1, 599));
        let mut agree = 0;
        for q in vs.iter().step_by(7) {
            let got: HashSet<RowId> = f.rows(q, 10).into_iter().collect();
            let want: HashSet<RowId> = f
                .index
                .exact_search(&owner(1), q, 10)
                .unwrap()
                .iter()
                .map(|h| h.row)
                .collect();
            agree += got.intersection(&want).count();
        }
        let total = vs.iter().step_by(7).count() * 10;
        assert!(
            agree as f64 / total as f64 >= 0.95,
            "recall {agree}/{total}"
        );
    }

    #[test]
    fn many_deletions_trigger_a_compaction() {
        let f = Fixture::small();
        let vs: Vec<Vec<f32>> = (0..300).map(|i| unit(i + 5000, 16)).collect();
        f.add_all(&vs, 0);
        f.index.maintain_now();
        for row in 0..60 {
            f.index.remove(&owner(1), row);
        }
        assert_eq!(f.index.stats().tombstones, 60);
        f.index.maintain_now();
        let s = f.index.stats();
        assert_eq!(
            (s.tombstones, s.vectors, s.graphs, s.pending),
            (0, 240, 1, 0)
        );
        assert_eq!(f.rows(&vs[100], 1), [100]);
        assert_eq!(f.index.rows(), (60..300).collect::<Vec<RowId>>());
    }

    #[test]
    fn a_partition_that_shrinks_goes_back_to_scans() {
        let f = Fixture::small();
        let vs: Vec<Vec<f32>> = (0..250).map(|i| unit(i + 7000, 16)).collect();
        f.add_all(&vs, 0);
        f.index.maintain_now();
        assert_eq!(f.index.stats().graphs, 1);
        for row in 0..200 {
            f.index.remove(&owner(1), row);
        }
        f.index.maintain_now();
        let s = f.index.stats();
        assert_eq!((s.graphs, s.vectors, s.tombstones), (0, 50, 0));
        assert_eq!(f.rows(&vs[220], 1), [220]);
    }

    #[test]
    fn snapshots_round_trip_and_reconcile_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture::small();
        let vs: Vec<Vec<f32>> = (0..400).map(|i| unit(i + 9000, 16)).collect();
        f.add_all(&vs[..300], 0);
        f.add(2, &[(1000, 5, &vs[300])]);
        f.index.maintain_now();
        f.index.remove(&owner(1), 3);
        save_snapshot(&f.index, dir.path(), "m").unwrap();

        // The store moved on after the snapshot: row 4 deleted, rows 300.. added, owner 2 gone.
        let mut stored: HashMap<OwnerKey, Vec<RowId>> = HashMap::new();
        stored.insert(owner(1), (0..400).filter(|r| *r != 3 && *r != 4).collect());
        let report = read_snapshot(dir.path(), "m", 16).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        let again = VectorIndex::new(f.index.config.clone(), f.source.clone());
        let restored = again.restore(report, &stored);
        assert_eq!((restored.partitions, restored.graphs), (1, 1));
        assert_eq!(restored.dropped, 2, "row 4 and owner 2's row");
        assert_eq!(
            restored.missing,
            vec![(owner(1), (300..400).collect::<Vec<_>>())]
        );
        for row in 300..400 {
            f.source.put(row, &vs[row as usize]);
            again.insert(&owner(1), &[(row, 0, &vs[row as usize])]);
        }
        assert_eq!(again.rows(), stored[&owner(1)]);
        assert_eq!(again.len(), 398);
        for q in vs.iter().step_by(13) {
            let fresh = again.exact_search(&owner(1), q, 5).unwrap();
            assert_eq!(again.search(&owner(1), q, 5, None).unwrap()[0], fresh[0]);
        }
        // Unchanged partitions are linked into the next generation, changed ones rewritten.
        save_snapshot(&again, dir.path(), "m").unwrap();
        assert_eq!(
            read_snapshot(dir.path(), "m", 16).unwrap().partitions.len(),
            1
        );
        // Another model's snapshot is ignored, not trusted.
        let other = read_snapshot(dir.path(), "other", 16).unwrap();
        assert!(other.partitions.is_empty() && !other.skipped.is_empty());
    }

    #[test]
    fn a_corrupt_snapshot_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture::small();
        let vs: Vec<Vec<f32>> = (0..50).map(|i| unit(i + 11, 16)).collect();
        f.add_all(&vs, 0);
        save_snapshot(&f.index, dir.path(), "m").unwrap();
        let file = std::fs::read_dir(dir.path().join("gen-1"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let report = read_snapshot(dir.path(), "m", 16).unwrap();
        assert!(report.partitions.is_empty());
        assert!(report.skipped[0].contains("CRC"), "{:?}", report.skipped);
        bytes.truncate(middle);
        std::fs::write(&file, &bytes).unwrap();
        let report = read_snapshot(dir.path(), "m", 16).unwrap();
        assert!(report.skipped[0].contains("size"), "{:?}", report.skipped);
    }
}
