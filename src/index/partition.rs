//! One owner's vectors, held once: an append-only array of slots, each an int8 code with its
//! scale, row and creation time (a deleted row's slot stays, marked dead, until the partition
//! is compacted), and, once large, an HNSW graph over its first `graph.len()` slots. Slots past
//! the graph are pending: scored directly until the upkeep thread feeds them to it.
//!
//! Everything here scores by codes and answers with candidates and their error bounds; the
//! index rescores the shortlist exactly, outside the partition's lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::codes::{self, Codes};
use super::graph::{Graph, Shape};
use super::score::{Approx, Shortlist};
use super::{IndexConfig, RowId};

#[derive(Default, Clone)]
pub(crate) struct Partition {
    pub(super) rows: Vec<RowId>,
    pub(super) created: Vec<i64>,
    pub(super) codes: Vec<i8>,
    pub(super) scales: Vec<f32>,
    pub(super) live: Vec<bool>,
    pub(super) pos: HashMap<RowId, u32>,
    pub(super) dead: usize,
    /// Shared so a snapshot can write it without holding the lock; feeding copies it only if
    /// a snapshot is reading it at that moment (it never is: both hold the upkeep lock).
    pub(super) graph: Option<Arc<Graph>>,
    /// Moves on every change, so a snapshot rewrites only the partitions that changed.
    pub(super) version: u64,
}

/// What a threshold scan found: the candidates that may make the page, the rows whose bounds
/// straddle the threshold (rescored to be counted), and how many are surely above it.
pub(crate) struct ScanCandidates {
    pub page: Vec<Approx>,
    pub straddling: Vec<Approx>,
    pub surely_above: usize,
}

impl Partition {
    /// Live rows.
    pub(super) fn len(&self) -> usize {
        self.pos.len()
    }

    /// Slots, dead ones included.
    pub(super) fn slots(&self) -> usize {
        self.rows.len()
    }

    pub(super) fn graphed(&self) -> usize {
        self.graph.as_ref().map_or(0, |g| g.len())
    }

    pub(super) fn points(&self, dim: usize) -> Codes<'_> {
        Codes {
            dim,
            codes: &self.codes,
            scales: &self.scales,
        }
    }

    /// Adds a row; false if the partition already holds it.
    pub(super) fn insert(&mut self, row: RowId, created_at: i64, vector: &[f32]) -> bool {
        if self.pos.contains_key(&row) {
            return false;
        }
        let scale = codes::quantize_into(vector, &mut self.codes);
        self.push_slot(row, created_at, scale, true);
        true
    }

    /// Appends a slot whose code is already in place (or is copied by the caller).
    pub(super) fn push_slot(&mut self, row: RowId, created_at: i64, scale: f32, live: bool) {
        if live {
            self.pos.insert(row, self.rows.len() as u32);
        } else {
            self.dead += 1;
        }
        self.rows.push(row);
        self.created.push(created_at);
        self.scales.push(scale);
        self.live.push(live);
        self.version += 1;
    }

    pub(super) fn remove(&mut self, row: RowId) -> bool {
        let Some(i) = self.pos.remove(&row) else {
            return false;
        };
        self.live[i as usize] = false;
        self.dead += 1;
        self.version += 1;
        true
    }

    /// A copy holding only the live rows, in order, without a graph.
    pub(super) fn compacted(&self, dim: usize) -> Partition {
        let mut fresh = Partition {
            codes: Vec::with_capacity(self.len() * dim),
            ..Partition::default()
        };
        for i in (0..self.slots()).filter(|&i| self.live[i]) {
            fresh.codes.extend_from_slice(self.points(dim).code(i));
            fresh.push_slot(self.rows[i], self.created[i], self.scales[i], true);
        }
        fresh
    }

    /// Feeds pending slots to the graph (making it first if need be) until all are in or
    /// `budget` has passed; returns how many went in.
    pub(super) fn feed(&mut self, config: &IndexConfig, budget: std::time::Duration) -> usize {
        let started = std::time::Instant::now();
        let shape = Shape {
            m: config.max_connections,
            ef_construction: config.ef_construction,
        };
        let Partition {
            graph,
            codes,
            scales,
            rows,
            ..
        } = self;
        let graph =
            Arc::make_mut(graph.get_or_insert_with(|| Arc::new(Graph::new(shape, config.dim))));
        let points = Codes {
            dim: config.dim,
            codes,
            scales,
        };
        let mut fed = 0;
        while graph.len() < rows.len() {
            graph.insert(&points, graph.len() as u32);
            fed += 1;
            if started.elapsed() >= budget {
                break;
            }
        }
        self.version += 1;
        fed
    }

    fn approx(&self, points: &Codes<'_>, q: &[f32], q_l1: f32, i: usize) -> Approx {
        Approx {
            row: self.rows[i],
            created_at: self.created[i],
            score: points.score(q, i),
            bound: codes::error_bound(q_l1, self.scales[i]),
        }
    }

    /// Every live slot (or the slots of `among`, when given) whose row `allow` lets through.
    fn each_slot(&self, among: Option<&HashSet<RowId>>, mut f: impl FnMut(usize)) {
        match among {
            Some(set) => set
                .iter()
                .filter_map(|r| self.pos.get(r))
                .for_each(|&i| f(i as usize)),
            None => (0..self.slots()).filter(|&i| self.live[i]).for_each(f),
        }
    }

    /// Candidates for the `k` best of the live rows (only among `allow`, if given), scanning
    /// every code: exact once rescored.
    pub(super) fn exact_candidates(
        &self,
        q: &[f32],
        k: usize,
        dim: usize,
        allow: Option<&HashSet<RowId>>,
    ) -> Vec<Approx> {
        let (points, q_l1) = (self.points(dim), codes::l1(q));
        let mut list = Shortlist::new(k, f32::NEG_INFINITY);
        self.each_slot(allow, |i| list.push(self.approx(&points, q, q_l1, i)));
        list.finish()
    }

    /// Candidates for the `k` best, by the graph when there is one: its `ef_search` nearest
    /// plus every pending slot. A selective filter is answered from its own rows, and a graph
    /// that comes back short (a heavy filter, many dead slots) gives way to a full scan, so a
    /// page is never short while more matches exist.
    pub(super) fn candidates(
        &self,
        q: &[f32],
        k: usize,
        config: &IndexConfig,
        allow: Option<&HashSet<RowId>>,
    ) -> Vec<Approx> {
        let dim = config.dim;
        let Some(graph) = &self.graph else {
            return self.exact_candidates(q, k, dim, allow);
        };
        if let Some(set) = allow
            && set.len() <= config.graph_threshold
        {
            // Filtering inside the graph costs far more than scoring a few thousand codes.
            return self.exact_candidates(q, k, dim, Some(set));
        }
        let allowed = |row: RowId| allow.is_none_or(|set| set.contains(&row));
        let accept = |i: u32| self.live[i as usize] && allowed(self.rows[i as usize]);
        let (points, q_l1) = (self.points(dim), codes::l1(q));
        let ef = config.ef_search.max(k);
        let mut list = Shortlist::new(k, f32::NEG_INFINITY);
        let mut found = 0;
        for (i, _) in graph.search(&points, q, ef, ef, &accept) {
            list.push(self.approx(&points, q, q_l1, i as usize));
            found += 1;
        }
        for i in graph.len()..self.slots() {
            if self.live[i] && allowed(self.rows[i]) {
                list.push(self.approx(&points, q, q_l1, i));
                found += 1;
            }
        }
        let available = allow.map_or(self.len(), HashSet::len);
        if found < k.min(available) {
            return self.exact_candidates(q, k, dim, allow);
        }
        list.finish()
    }

    /// A threshold scan over every code: candidates for the `k` best at or above `threshold`,
    /// and what it takes to count all rows at or above it exactly.
    pub(super) fn scan_candidates(
        &self,
        q: &[f32],
        k: usize,
        dim: usize,
        allow: Option<&HashSet<RowId>>,
        threshold: Option<f32>,
    ) -> ScanCandidates {
        let (points, q_l1) = (self.points(dim), codes::l1(q));
        let floor = threshold.unwrap_or(f32::NEG_INFINITY);
        let mut list = Shortlist::new(k, floor);
        let mut straddling = Vec::new();
        let mut surely_above = 0;
        self.each_slot(allow, |i| {
            let a = self.approx(&points, q, q_l1, i);
            if a.score - a.bound >= floor {
                surely_above += 1;
            } else if a.score + a.bound >= floor {
                straddling.push(a);
            } else {
                return;
            }
            list.push(a);
        });
        ScanCandidates {
            page: list.finish(),
            straddling,
            surely_above,
        }
    }
}
