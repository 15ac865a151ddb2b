//! A compact HNSW graph (Malkov & Yashunin) over one partition's vectors. It stores no vectors:
//! node `i` is slot `i` of the partition's codes, which every operation is handed. Links are
//! flat `u32` arrays (layer 0: `2M` per node; upper layers: `M` per layer for the few nodes that
//! reach them), so a graph costs about `8M` bytes a node instead of the kilobytes a graph of
//! pointers does, loads as plain arrays, and each vector is held once, as its code.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use std::io::Write;

use anyhow::bail;

use super::codes::Codes;
use super::io;

/// An unused link slot.
const NONE: u32 = u32::MAX;
/// Layers a node may reach at most.
const MAX_LEVEL: u8 = 15;

/// A (distance, node) pair ordered by distance; distance is `1 - cosine`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Near(f32, u32);

impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

thread_local! {
    /// Visit marks reused across searches on a thread: `marks[i] == epoch` means visited.
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

/// Runs `f` with a fresh visited set for `n` nodes.
fn with_visited<T>(n: usize, f: impl FnOnce(&mut dyn FnMut(u32) -> bool) -> T) -> T {
    VISITED.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (marks, epoch) = &mut *guard;
        if marks.len() < n {
            marks.resize(n, 0);
        }
        *epoch = epoch.wrapping_add(1);
        if *epoch == 0 {
            marks.iter_mut().for_each(|m| *m = 0);
            *epoch = 1;
        }
        let e = *epoch;
        let mut first_visit = |i: u32| {
            let slot = &mut marks[i as usize];
            if *slot == e {
                false
            } else {
                *slot = e;
                true
            }
        };
        f(&mut first_visit)
    })
}

/// The graph's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Links per node on the upper layers; `2m` on layer 0.
    pub m: usize,
    pub ef_construction: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    shape: Shape,
    dim: usize,
    /// The level of every node.
    levels: Vec<u8>,
    /// Layer-0 links: `2m` slots per node.
    links0: Vec<u32>,
    /// Where a node's upper-layer links start in `upper` (`m` slots per layer above 0).
    upper_at: HashMap<u32, usize>,
    upper: Vec<u32>,
    entry: Option<u32>,
    max_level: u8,
    /// xorshift state for drawing levels: deterministic for a given insertion order.
    rng: u64,
}

impl Graph {
    pub fn new(shape: Shape, dim: usize) -> Graph {
        Graph {
            shape,
            dim,
            levels: Vec::new(),
            links0: Vec::new(),
            upper_at: HashMap::new(),
            upper: Vec::new(),
            entry: None,
            max_level: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Nodes in the graph: slots `0..len()` of the matrix.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    fn m0(&self) -> usize {
        2 * self.shape.m
    }

    fn distance(pts: &Codes<'_>, q: &[f32], i: u32) -> f32 {
        1.0 - pts.score(q, i as usize)
    }

    /// The links of node `i` on `layer` (unused slots included).
    fn links(&self, i: u32, layer: u8) -> &[u32] {
        if layer == 0 {
            let m0 = self.m0();
            &self.links0[i as usize * m0..(i as usize + 1) * m0]
        } else {
            let m = self.shape.m;
            let at = self.upper_at[&i] + (layer as usize - 1) * m;
            &self.upper[at..at + m]
        }
    }

    fn links_mut(&mut self, i: u32, layer: u8) -> &mut [u32] {
        if layer == 0 {
            let m0 = self.m0();
            &mut self.links0[i as usize * m0..(i as usize + 1) * m0]
        } else {
            let m = self.shape.m;
            let at = self.upper_at[&i] + (layer as usize - 1) * m;
            &mut self.upper[at..at + m]
        }
    }

    fn draw_level(&mut self) -> u8 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let uniform = ((self.rng >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let mult = 1.0 / (self.shape.m as f64).ln();
        ((-uniform.ln() * mult) as u8).min(MAX_LEVEL)
    }

    /// Greedy descent: from `from`, the nearest node to `q` on `layer`.
    fn closest(&self, pts: &Codes<'_>, q: &[f32], mut from: Near, layer: u8) -> Near {
        loop {
            let mut moved = false;
            for &n in self.links(from.1, layer) {
                if n == NONE {
                    break;
                }
                let d = Self::distance(pts, q, n);
                if d < from.0 {
                    from = Near(d, n);
                    moved = true;
                }
            }
            if !moved {
                return from;
            }
        }
    }

    /// The `ef` nearest nodes to `q` on `layer` reachable from `entry`, nearest first.
    fn search_layer(
        &self,
        pts: &Codes<'_>,
        q: &[f32],
        entry: Near,
        ef: usize,
        layer: u8,
    ) -> Vec<Near> {
        with_visited(self.len(), |first_visit| {
            first_visit(entry.1);
            let mut candidates = BinaryHeap::new();
            let mut found = BinaryHeap::new();
            candidates.push(std::cmp::Reverse(entry));
            found.push(entry);
            while let Some(std::cmp::Reverse(c)) = candidates.pop() {
                if found.peek().is_some_and(|w: &Near| c.0 > w.0) && found.len() >= ef {
                    break;
                }
                for &n in self.links(c.1, layer) {
                    if n == NONE {
                        break;
                    }
                    if !first_visit(n) {
                        continue;
                    }
                    let d = Self::distance(pts, q, n);
                    if found.len() < ef || found.peek().is_some_and(|w| d < w.0) {
                        candidates.push(std::cmp::Reverse(Near(d, n)));
                        found.push(Near(d, n));
                        if found.len() > ef {
                            found.pop();
                        }
                    }
                }
            }
            found.into_sorted_vec()
        })
    }

    /// Picks up to `keep` neighbours from `candidates` (nearest first) by the HNSW heuristic: a
    /// candidate is kept only if it is nearer to the new node than to every neighbour already
    /// kept, which spreads links out; the remaining places are filled with the nearest left out.
    fn select(&self, pts: &Codes<'_>, candidates: &[Near], keep: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(keep);
        let mut left_out = Vec::new();
        for &Near(d, c) in candidates {
            if kept.len() >= keep {
                break;
            }
            let cv = pts.decode(c as usize);
            if kept.iter().all(|&k| Self::distance(pts, &cv, k) > d) {
                kept.push(c);
            } else {
                left_out.push(c);
            }
        }
        for c in left_out {
            if kept.len() >= keep {
                break;
            }
            kept.push(c);
        }
        kept
    }

    /// Adds node `i` (slot `i` of `vectors`, which must be the next slot) to the graph.
    pub fn insert(&mut self, pts: &Codes<'_>, i: u32) {
        debug_assert_eq!(i as usize, self.len());
        let level = self.draw_level();
        self.levels.push(level);
        self.links0.extend(std::iter::repeat_n(NONE, self.m0()));
        if level > 0 {
            self.upper_at.insert(i, self.upper.len());
            self.upper
                .extend(std::iter::repeat_n(NONE, level as usize * self.shape.m));
        }
        let Some(entry) = self.entry else {
            self.entry = Some(i);
            self.max_level = level;
            return;
        };
        let q = pts.decode(i as usize);
        let mut near = Near(Self::distance(pts, &q, entry), entry);
        for layer in (level + 1..=self.max_level).rev() {
            near = self.closest(pts, &q, near, layer);
        }
        for layer in (0..=level.min(self.max_level)).rev() {
            let found = self.search_layer(pts, &q, near, self.shape.ef_construction, layer);
            let keep = if layer == 0 { self.m0() } else { self.shape.m };
            let chosen = self.select(pts, &found, keep);
            for (slot, &n) in self.links_mut(i, layer).iter_mut().zip(&chosen) {
                *slot = n;
            }
            for &n in &chosen {
                self.link_back(pts, n, i, layer);
            }
            near = found[0];
        }
        if level > self.max_level {
            self.max_level = level;
            self.entry = Some(i);
        }
    }

    /// Adds `to` to `from`'s links on `layer`, re-selecting them when they are full.
    fn link_back(&mut self, pts: &Codes<'_>, from: u32, to: u32, layer: u8) {
        let links = self.links_mut(from, layer);
        if let Some(free) = links.iter_mut().find(|l| **l == NONE) {
            *free = to;
            return;
        }
        let fv = pts.decode(from as usize);
        let mut candidates: Vec<Near> = self
            .links(from, layer)
            .iter()
            .chain(std::iter::once(&to))
            .map(|&n| Near(Self::distance(pts, &fv, n), n))
            .collect();
        candidates.sort();
        let keep = self.links(from, layer).len();
        let chosen = self.select(pts, &candidates, keep);
        let links = self.links_mut(from, layer);
        for (slot, n) in links
            .iter_mut()
            .zip(chosen.iter().chain(std::iter::repeat(&NONE)))
        {
            *slot = *n;
        }
    }

    /// The `k` nearest nodes to `q` that `accept` lets through, as (node, cosine similarity),
    /// best first; the walk visits rejected nodes too, so a tombstone never cuts a path.
    pub fn search(
        &self,
        pts: &Codes<'_>,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let mut near = Near(Self::distance(pts, q, entry), entry);
        for layer in (1..=self.max_level).rev() {
            near = self.closest(pts, q, near, layer);
        }
        self.search_layer(pts, q, near, ef.max(k), 0)
            .into_iter()
            .filter(|n| accept(n.1))
            .take(k)
            .map(|n| (n.1, 1.0 - n.0))
            .collect()
    }

    /// Writes the graph (little-endian), for snapshots.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        for v in [
            self.shape.m,
            self.shape.ef_construction,
            self.dim,
            self.levels.len(),
        ] {
            io::write_u64(w, v as u64)?;
        }
        io::write_u64(w, u64::from(self.entry.unwrap_or(NONE)))?;
        io::write_u64(w, u64::from(self.max_level))?;
        io::write_u64(w, self.rng)?;
        w.write_all(&self.levels)?;
        io::write_slice(w, &self.links0)?;
        io::write_slice(w, &self.upper)
    }

    /// Reads a graph written by [`Graph::write_to`] for `dim`-long vectors, checking that it is
    /// whole and consistent: every link and the entry point inside the graph, levels in range.
    pub fn read_from(r: &mut impl io::Bounded, dim: usize) -> anyhow::Result<Graph> {
        let mut header = [0u64; 7];
        for h in &mut header {
            *h = io::read_u64(r)?;
        }
        let [m, ef_construction, stored_dim, n, entry, max_level, rng] = header;
        if m == 0 || m > 256 || stored_dim != dim as u64 || max_level > u64::from(MAX_LEVEL) {
            bail!("implausible graph header");
        }
        let (m, n) = (m as usize, usize::try_from(n)?);
        let levels: Vec<u8> = io::read_vec(r, n)?;
        let mut upper_at = HashMap::new();
        let mut upper_len = 0;
        for (i, &l) in levels.iter().enumerate() {
            if l > max_level as u8 {
                bail!("node {i} has level {l}, above the graph's {max_level}");
            }
            if l > 0 {
                upper_at.insert(i as u32, upper_len);
                upper_len += l as usize * m;
            }
        }
        let links0: Vec<u32> = io::read_vec(r, n * 2 * m)?;
        let upper: Vec<u32> = io::read_vec(r, upper_len)?;
        if links0
            .iter()
            .chain(&upper)
            .any(|&l| l != NONE && l as usize >= n)
        {
            bail!("a link points outside the graph");
        }
        let entry = u32::try_from(entry).ok().filter(|&e| e != NONE);
        match entry {
            Some(e) if (e as usize) < n && levels[e as usize] == max_level as u8 => {}
            None if n == 0 => {}
            _ => bail!("bad entry point"),
        }
        Ok(Graph {
            shape: Shape {
                m,
                ef_construction: ef_construction as usize,
            },
            dim,
            levels,
            links0,
            upper_at,
            upper,
            entry,
            max_level: max_level as u8,
            rng,
        })
    }

    /// Bytes the graph occupies (its arrays and the index of upper-layer nodes).
    pub fn footprint(&self) -> usize {
        self.levels.len() + 4 * (self.links0.len() + self.upper.len()) + 24 * self.upper_at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::codes::quantize_into;
    use super::super::dot;
    use super::*;

    /// `n` unit vectors around 20 centres, and their codes.
    struct Points {
        dim: usize,
        vectors: Vec<f32>,
        codes: Vec<i8>,
        scales: Vec<f32>,
    }

    impl Points {
        fn new(n: usize, dim: usize, seed: u64) -> Points {
            let mut x = seed | 1;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f32 / (1u64 << 53) as f32 - 0.5
            };
            let centres: Vec<Vec<f32>> = (0..20)
                .map(|_| (0..dim).map(|_| next()).collect())
                .collect();
            let mut p = Points {
                dim,
                vectors: Vec::with_capacity(n * dim),
                codes: Vec::new(),
                scales: Vec::new(),
            };
            for i in 0..n {
                let mut v: Vec<f32> = centres[i % 20].iter().map(|c| c + 0.5 * next()).collect();
                let norm = dot(&v, &v).sqrt();
                v.iter_mut().for_each(|c| *c /= norm);
                p.scales.push(quantize_into(&v, &mut p.codes));
                p.vectors.extend(v);
            }
            p
        }

        fn codes(&self) -> Codes<'_> {
            Codes {
                dim: self.dim,
                codes: &self.codes,
                scales: &self.scales,
            }
        }

        fn vector(&self, i: usize) -> &[f32] {
            &self.vectors[i * self.dim..(i + 1) * self.dim]
        }

        fn graph(&self, shape: Shape) -> Graph {
            let mut graph = Graph::new(shape, self.dim);
            for i in 0..self.scales.len() {
                graph.insert(&self.codes(), i as u32);
            }
            graph
        }

        fn exact(&self, q: &[f32], k: usize) -> Vec<u32> {
            let mut scored: Vec<(f32, u32)> = self
                .vectors
                .chunks_exact(self.dim)
                .enumerate()
                .map(|(i, v)| (dot(q, v), i as u32))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored.into_iter().take(k).map(|(_, i)| i).collect()
        }
    }

    #[test]
    fn recall_against_exact_search_is_high() {
        // 4,000 points; the queries are 200 more drawn from the same clusters.
        let all = Points::new(4200, 32, 7);
        let points = Points {
            dim: 32,
            vectors: all.vectors[..4000 * 32].to_vec(),
            codes: all.codes[..4000 * 32].to_vec(),
            scales: all.scales[..4000].to_vec(),
        };
        let graph = points.graph(Shape {
            m: 16,
            ef_construction: 100,
        });
        let mut hits = 0;
        for qi in 4000..4200 {
            let q = all.vector(qi);
            let want = points.exact(q, 10);
            // The graph's top 40 by codes hold the exact top 10 (rescoring picks them out).
            let got: Vec<u32> = graph
                .search(&points.codes(), q, 40, 128, &|_| true)
                .iter()
                .map(|h| h.0)
                .collect();
            hits += want.iter().filter(|w| got.contains(w)).count();
        }
        let recall = hits as f64 / 2000.0;
        assert!(recall >= 0.99, "recall@10 {recall}");
    }

    #[test]
    fn rejected_nodes_are_walked_through_but_never_returned() {
        let points = Points::new(1000, 16, 3);
        let graph = points.graph(Shape {
            m: 8,
            ef_construction: 64,
        });
        // Half of the query's own cluster (members are 20 apart) is rejected.
        let accept = |i: u32| (i / 20) % 2 == 1;
        let got = graph.search(&points.codes(), points.vector(0), 10, 64, &accept);
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|(i, _)| accept(*i)));
    }

    #[test]
    fn bytes_round_trip_and_corruption_is_refused() {
        let points = Points::new(300, 8, 5);
        let graph = points.graph(Shape {
            m: 4,
            ef_construction: 32,
        });
        let mut bytes = Vec::new();
        graph.write_to(&mut bytes).unwrap();
        assert_eq!(Graph::read_from(&mut bytes.as_slice(), 8).unwrap(), graph);
        assert!(
            Graph::read_from(&mut bytes.as_slice(), 9).is_err(),
            "another dimension"
        );
        assert!(Graph::read_from(&mut &bytes[..bytes.len() - 3], 8).is_err());
        let mut bad = bytes.clone();
        let last = bad.len() - 4;
        bad[last..].copy_from_slice(&(300u32 + 5).to_le_bytes());
        assert!(Graph::read_from(&mut bad.as_slice(), 8).is_err());
    }
}
