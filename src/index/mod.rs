//! The vector index: one partition per owner (tenant and user), so a search only ever looks at
//! the caller's own vectors. Small partitions are scanned exactly; large ones also get an HNSW
//! graph, fed in the background, with tombstones for deletions and a rebuild when they pile up.

mod graph;
mod maintainer;
mod snapshot;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use graph::Graph;
pub use maintainer::Maintainer;
pub use snapshot::{
    LoadReport, LoadedGraph, install as install_snapshot, read_graphs as read_snapshot,
    save as save_snapshot,
};

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
            ef_search: 128,
            ef_construction: 200,
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

/// Orders hits best first: higher score, then newer, then higher rowid (a total order, so
/// pages are stable).
fn better(a: &Hit, b: &Hit) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then(b.created_at.cmp(&a.created_at))
        .then(b.row.cmp(&a.row))
}

/// Heap entry that puts the worst kept hit on top.
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        better(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        better(&self.0, &other.0)
    }
}

/// Keeps the best `k` hits seen.
struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    fn push(&mut self, hit: Hit) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Worst(hit));
        } else if let Some(worst) = self.heap.peek()
            && better(&hit, &worst.0) == Ordering::Less
        {
            self.heap.pop();
            self.heap.push(Worst(hit));
        }
    }

    fn into_sorted(self) -> Vec<Hit> {
        let mut hits: Vec<Hit> = self.heap.into_iter().map(|w| w.0).collect();
        hits.sort_by(better);
        hits
    }
}

/// Dot product of two equally long vectors: AVX2 and FMA when the processor has them (checked
/// once), otherwise a portable loop the compiler vectorises.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static FAST: OnceLock<bool> = OnceLock::new();
        let fast = *FAST.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        });
        if fast {
            // SAFETY: the processor supports AVX2 and FMA (checked above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Eight independent accumulators, so the compiler can vectorise without reassociating.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i + 8k < n, inside both slices.
    unsafe {
        while i + 32 <= n {
            for (k, slot) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                *slot = _mm256_fmadd_ps(x, y, *slot);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let tail: f32 = (i..n).map(|j| *pa.add(j) * *pb.add(j)).sum();
        lanes.iter().sum::<f32>() + tail
    }
}

/// One owner's vectors: a contiguous matrix (for exact scans and rebuilds) and, once large,
/// a graph. `pending` are live rows the graph does not hold yet; `tombstones` are rows the
/// graph holds that were deleted.
#[derive(Default)]
pub(crate) struct Partition {
    rows: Vec<RowId>,
    created: Vec<i64>,
    vectors: Vec<f32>,
    pos: HashMap<RowId, usize>,
    graph: Option<Arc<Graph>>,
    in_graph: HashSet<RowId>,
    pending: HashSet<RowId>,
    tombstones: HashSet<RowId>,
}

impl Partition {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn vector(&self, i: usize, dim: usize) -> &[f32] {
        &self.vectors[i * dim..(i + 1) * dim]
    }

    /// Adds a row; false if the partition already holds it.
    fn insert(&mut self, row: RowId, created_at: i64, vector: &[f32]) -> bool {
        if self.pos.contains_key(&row) {
            return false;
        }
        self.pos.insert(row, self.rows.len());
        self.rows.push(row);
        self.created.push(created_at);
        self.vectors.extend_from_slice(vector);
        if self.graph.is_some() && !self.in_graph.contains(&row) {
            self.pending.insert(row);
        }
        // A row the graph still holds as deleted cannot come back: rowids are never reused.
        true
    }

    fn remove(&mut self, row: RowId, dim: usize) -> bool {
        let Some(i) = self.pos.remove(&row) else {
            return false;
        };
        let last = self.rows.len() - 1;
        if i != last {
            let moved = self.rows[last];
            self.rows[i] = moved;
            self.created[i] = self.created[last];
            self.vectors
                .copy_within(last * dim..(last + 1) * dim, i * dim);
            self.pos.insert(moved, i);
        }
        self.rows.pop();
        self.created.pop();
        self.vectors.truncate(last * dim);
        self.pending.remove(&row);
        if self.in_graph.contains(&row) {
            self.tombstones.insert(row);
        }
        true
    }

    fn hit(&self, i: usize, score: f32) -> Hit {
        Hit {
            row: self.rows[i],
            score,
            created_at: self.created[i],
        }
    }

    /// Exact top-k over the rows that pass `allow`.
    fn exact(
        &self,
        query: &[f32],
        k: usize,
        dim: usize,
        allow: &dyn Fn(RowId) -> bool,
    ) -> Vec<Hit> {
        let mut top = TopK::new(k);
        for (i, row) in self.rows.iter().enumerate() {
            if allow(*row) {
                top.push(self.hit(i, dot(query, self.vector(i, dim))));
            }
        }
        top.into_sorted()
    }

    /// Exact top-k over an explicit set of rows (a selective filter): cost follows the set.
    fn exact_among(&self, query: &[f32], k: usize, dim: usize, rows: &HashSet<RowId>) -> Vec<Hit> {
        let mut top = TopK::new(k);
        for row in rows {
            if let Some(&i) = self.pos.get(row) {
                top.push(self.hit(i, dot(query, self.vector(i, dim))));
            }
        }
        top.into_sorted()
    }

    /// Scores every row (or every row of `allow`) exactly: the best `k` at or above `threshold`,
    /// and how many are at or above it in all.
    fn scan(
        &self,
        query: &[f32],
        k: usize,
        dim: usize,
        allow: Option<&HashSet<RowId>>,
        threshold: Option<f32>,
    ) -> (Vec<Hit>, usize) {
        let mut top = TopK::new(k);
        let mut total = 0;
        let mut consider = |i: usize| {
            let score = dot(query, self.vector(i, dim));
            if threshold.is_none_or(|t| score >= t) {
                total += 1;
                top.push(self.hit(i, score));
            }
        };
        match allow {
            Some(set) => set
                .iter()
                .filter_map(|r| self.pos.get(r))
                .for_each(|&i| consider(i)),
            None => (0..self.len()).for_each(consider),
        }
        (top.into_sorted(), total)
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        config: &IndexConfig,
        allow: Option<&HashSet<RowId>>,
    ) -> Vec<Hit> {
        let dim = config.dim;
        let allowed = |row: RowId| allow.is_none_or(|set| set.contains(&row));
        let Some(graph) = &self.graph else {
            return match allow {
                Some(set) if set.len() < self.len() / 4 => self.exact_among(query, k, dim, set),
                _ => self.exact(query, k, dim, &allowed),
            };
        };
        // A selective filter is answered exactly from its own rows: filtering inside the graph
        // costs far more than scanning a few thousand vectors, and starves results.
        if let Some(set) = allow
            && set.len() <= config.graph_threshold
        {
            return self.exact_among(query, k, dim, set);
        }
        let live = |row: RowId| {
            !self.tombstones.contains(&row) && self.pos.contains_key(&row) && allowed(row)
        };
        let mut top = TopK::new(k);
        let mut seen = HashSet::new();
        let filtered = allow.is_some() || !self.tombstones.is_empty();
        for (row, score) in graph.search(query, k, config.ef_search, &live, filtered) {
            if let Some(&i) = self.pos.get(&row)
                && seen.insert(row)
            {
                top.push(self.hit(i, score));
            }
        }
        for row in &self.pending {
            if let Some(&i) = self.pos.get(row)
                && allowed(*row)
                && seen.insert(*row)
            {
                top.push(self.hit(i, dot(query, self.vector(i, dim))));
            }
        }
        let hits = top.into_sorted();
        let candidates = allow.map_or(self.len(), HashSet::len);
        if hits.len() < k.min(candidates) {
            // The graph came back short (unreachable points, a heavy filter): never return a
            // short page when more matches exist.
            return match allow {
                Some(set) => self.exact_among(query, k, dim, set),
                None => self.exact(query, k, dim, &allowed),
            };
        }
        hits
    }
}

/// Counts for `/readyz` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexStats {
    pub vectors: usize,
    pub partitions: usize,
    pub graphs: usize,
    pub pending: usize,
    pub tombstones: usize,
}

pub struct VectorIndex {
    config: IndexConfig,
    partitions: RwLock<HashMap<OwnerKey, Arc<RwLock<Partition>>>>,
    /// Bumped whenever a graph changes, so snapshots are written only when there is news.
    graph_changes: std::sync::atomic::AtomicU64,
    len: std::sync::atomic::AtomicUsize,
    /// Held by whoever changes or dumps graphs (the upkeep thread, `maintain_now`, snapshots),
    /// so two of them never feed the same rows to a graph or dump one mid-change.
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

impl VectorIndex {
    pub fn new(config: IndexConfig) -> VectorIndex {
        VectorIndex {
            config,
            partitions: RwLock::new(HashMap::new()),
            graph_changes: std::sync::atomic::AtomicU64::new(0),
            len: std::sync::atomic::AtomicUsize::new(0),
            upkeep: std::sync::Mutex::new(()),
        }
    }

    /// A counter that moves whenever a graph changes (for deciding whether to snapshot).
    pub fn graph_changes(&self) -> u64 {
        self.graph_changes
            .load(std::sync::atomic::Ordering::Relaxed)
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
    pub fn insert(&self, owner: &OwnerKey, items: &[(RowId, i64, &[f32])]) {
        let part = self.partition_or_create(owner);
        let mut p = write(&part);
        let mut added = 0;
        for (row, created_at, vector) in items {
            debug_assert_eq!(vector.len(), self.config.dim);
            added += usize::from(p.insert(*row, *created_at, vector));
        }
        self.len
            .fetch_add(added, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many vectors the index holds, kept as they come and go (no walk of the partitions).
    pub fn len(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a row; from then on no search returns it.
    pub fn remove(&self, owner: &OwnerKey, row: RowId) -> bool {
        let removed = match self.partition(owner) {
            Some(part) => write(&part).remove(row, self.config.dim),
            None => false,
        };
        if removed {
            self.len.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        removed
    }

    /// The `k` most similar of `owner`'s vectors, best first, optionally only among `allow`.
    pub fn search(
        &self,
        owner: &OwnerKey,
        query: &[f32],
        k: usize,
        allow: Option<&HashSet<RowId>>,
    ) -> Vec<Hit> {
        match self.partition(owner) {
            Some(part) => read(&part).search(query, k, &self.config, allow),
            None => Vec::new(),
        }
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
    ) -> (Vec<Hit>, usize) {
        match self.partition(owner) {
            Some(part) => read(&part).scan(query, k, self.config.dim, allow, threshold),
            None => (Vec::new(), 0),
        }
    }

    /// Exact search over all of `owner`'s vectors: the reference for recall measurements.
    pub fn exact_search(&self, owner: &OwnerKey, query: &[f32], k: usize) -> Vec<Hit> {
        match self.partition(owner) {
            Some(part) => read(&part).exact(query, k, self.config.dim, &|_| true),
            None => Vec::new(),
        }
    }

    pub fn stats(&self) -> IndexStats {
        let mut s = IndexStats::default();
        for (_, part) in self.all_partitions() {
            let p = read(&part);
            s.partitions += 1;
            s.vectors += p.len();
            s.graphs += usize::from(p.graph.is_some());
            s.pending += p.pending.len();
            s.tombstones += p.tombstones.len();
        }
        s
    }

    /// Every row the index holds, sorted: compared with SQLite by tests and at start-up.
    pub fn rows(&self) -> Vec<RowId> {
        let mut rows: Vec<RowId> = self
            .all_partitions()
            .iter()
            .flat_map(|(_, part)| read(part).rows.clone())
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
        OwnerKey(format!("tenant/{n}").into())
    }

    /// Inserts `vs` for owner 1 as rows `first..`.
    fn insert_all(index: &VectorIndex, vs: &[Vec<f32>], first: RowId) {
        let items: Vec<(RowId, i64, &[f32])> = vs
            .iter()
            .enumerate()
            .map(|(i, v)| (first + i as RowId, 0, v.as_slice()))
            .collect();
        index.insert(&owner(1), &items);
    }

    fn small_config() -> IndexConfig {
        IndexConfig {
            graph_threshold: 200,
            ..IndexConfig::new(16)
        }
    }

    #[test]
    fn dot_matches_naive() {
        for len in [0, 1, 7, 8, 31, 32, 33, 384, 385] {
            let (a, b) = (unit(1, len.max(1)), unit(2, len.max(1)));
            let (a, b) = (&a[..len], &b[..len]);
            let naive: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!((dot(a, b) - naive).abs() < 1e-5, "{len}");
            assert!((dot_portable(a, b) - naive).abs() < 1e-5, "{len}");
        }
    }

    #[test]
    fn owners_never_see_each_other() {
        let index = VectorIndex::new(small_config());
        let v = unit(7, 16);
        index.insert(&owner(1), &[(1, 0, &v)]);
        index.insert(&owner(2), &[(2, 0, &unit(8, 16))]);
        let hits = index.search(&owner(2), &v, 10, None);
        assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), [2]);
        assert!(index.search(&owner(3), &v, 10, None).is_empty());
    }

    #[test]
    fn removal_is_immediate_and_keeps_matrix_consistent() {
        let index = VectorIndex::new(small_config());
        let vs: Vec<Vec<f32>> = (0..50).map(|i| unit(i, 16)).collect();
        insert_all(&index, &vs, 0);
        for row in (0..50).step_by(3) {
            assert!(index.remove(&owner(1), row));
        }
        assert!(!index.remove(&owner(1), 0), "second removal is a no-op");
        for (i, v) in vs.iter().enumerate() {
            let top = index.search(&owner(1), v, 1, None);
            if i % 3 == 0 {
                assert!(top.iter().all(|h| h.row != i as RowId));
            } else {
                assert_eq!(top[0].row, i as RowId, "a vector finds itself");
                assert!((top[0].score - 1.0).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn ties_order_newest_first() {
        let index = VectorIndex::new(small_config());
        let v = unit(3, 16);
        index.insert(&owner(1), &[(1, 100, &v), (2, 300, &v), (3, 200, &v)]);
        let rows: Vec<RowId> = index
            .search(&owner(1), &v, 3, None)
            .iter()
            .map(|h| h.row)
            .collect();
        assert_eq!(rows, [2, 3, 1]);
    }

    #[test]
    fn filter_restricts_results_and_fills_the_page() {
        let index = VectorIndex::new(small_config());
        let vs: Vec<Vec<f32>> = (0..400).map(|i| unit(i, 16)).collect();
        insert_all(&index, &vs, 0);
        index.maintain_now();
        assert_eq!(index.stats().graphs, 1);
        for set_size in [5usize, 150, 300] {
            let allow: HashSet<RowId> = (0..set_size as RowId)
                .map(|r| r * 400 / set_size as RowId)
                .collect();
            let hits = index.search(&owner(1), &vs[399], 10, Some(&allow));
            assert_eq!(hits.len(), 10.min(set_size));
            assert!(hits.iter().all(|h| allow.contains(&h.row)));
        }
    }

    #[test]
    fn graph_search_agrees_with_exact_and_sees_pending_and_tombstones() {
        let index = VectorIndex::new(small_config());
        let vs: Vec<Vec<f32>> = (0..600).map(|i| unit(i + 1000, 16)).collect();
        insert_all(&index, &vs[..500], 0);
        index.maintain_now();
        // Added after the graph was built: pending, found by the exact side scan.
        insert_all(&index, &vs[500..], 500);
        assert_eq!(index.stats().pending, 100);
        assert_eq!(index.search(&owner(1), &vs[550], 1, None)[0].row, 550);
        index.remove(&owner(1), 10);
        assert!(
            index
                .search(&owner(1), &vs[10], 5, None)
                .iter()
                .all(|h| h.row != 10)
        );
        index.maintain_now();
        let s = index.stats();
        assert_eq!((s.pending, s.tombstones, s.vectors), (0, 1, 599));
        let mut agree = 0;
        for q in vs.iter().step_by(7) {
            let got: HashSet<RowId> = index
                .search(&owner(1), q, 10, None)
                .iter()
                .map(|h| h.row)
                .collect();
            let want: HashSet<RowId> = index
                .exact_search(&owner(1), q, 10)
                .iter()
                .map(|h| h.row)
                .collect();
            agree += got.intersection(&want).count();
        }
        let total = vs.iter().step_by(7).count() * 10;
        assert!(agree as f64 / total as f64 >= 0.9, "recall {agree}/{total}");
    }

    #[test]
    fn many_deletions_trigger_a_rebuild() {
        let index = VectorIndex::new(small_config());
        let vs: Vec<Vec<f32>> = (0..300).map(|i| unit(i + 5000, 16)).collect();
        insert_all(&index, &vs, 0);
        index.maintain_now();
        for row in 0..60 {
            index.remove(&owner(1), row);
        }
        assert_eq!(index.stats().tombstones, 60);
        index.maintain_now();
        assert_eq!(
            index.stats().tombstones,
            0,
            "rebuilt without the deleted points"
        );
        assert_eq!(index.search(&owner(1), &vs[100], 1, None)[0].row, 100);
    }
}
