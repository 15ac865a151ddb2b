//! One HNSW graph (hnsw_rs) over one owner's vectors, keyed by SQLite rowid, with the distance
//! it needs and guarded dump/load (hnsw_rs panics on bad files; here that becomes an error).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Context, bail};
use hnsw_rs::prelude::*;

use super::{IndexConfig, RowId, dot};

/// `1 - a·b` for unit vectors, clamped at 0. hnsw_rs's own `DistDot` asserts that the result is
/// non-negative, which rounding breaks when a vector meets itself (a duplicate memory), and
/// panics.
#[derive(Debug, Default, Clone, Copy)]
pub struct DistUnitDot;

impl Distance<f32> for DistUnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

pub struct Graph {
    hnsw: Hnsw<'static, f32, DistUnitDot>,
}

/// Upper bound on layers; hnsw_rs clamps at 16.
const MAX_LAYER: usize = 16;

impl Graph {
    pub fn build(config: &IndexConfig, rows: &[RowId], vectors: &[f32]) -> Graph {
        let dim = config.dim;
        let capacity = rows.len().max(1024);
        let hnsw = Hnsw::new(
            config.max_connections,
            capacity,
            MAX_LAYER,
            config.ef_construction,
            DistUnitDot,
        );
        let graph = Graph { hnsw };
        graph.extend(rows, vectors, dim);
        graph
    }

    /// Adds many rows at once, on all cores.
    pub fn extend(&self, rows: &[RowId], vectors: &[f32], dim: usize) {
        let items: Vec<(&[f32], usize)> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| (&vectors[i * dim..(i + 1) * dim], *row as usize))
            .collect();
        self.hnsw.parallel_insert_slice(&items);
    }

    pub fn insert(&self, row: RowId, vector: &[f32]) {
        self.hnsw.insert_slice((vector, row as usize));
    }

    /// Points in the graph, deleted ones included.
    pub fn points(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// The `k` nearest rows that pass `allow`, as (row, cosine similarity). With `filtered`, the
    /// graph search itself skips rows `allow` rejects; either way the results are checked again,
    /// as hnsw_rs's filtered search has let excluded ids through (hnswlib-rs issue #27).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        allow: &dyn Fn(RowId) -> bool,
        filtered: bool,
    ) -> Vec<(RowId, f32)> {
        let filter = |id: &usize| allow(*id as RowId);
        let found = if filtered {
            self.hnsw.search_filter(query, k, ef.max(k), Some(&filter))
        } else {
            // Nothing to exclude: the plain search is cheaper than a filtered one.
            self.hnsw.search(query, k, ef.max(k))
        };
        found
            .into_iter()
            .map(|n| (n.d_id as RowId, 1.0 - n.distance))
            .filter(|(row, _)| allow(*row))
            .collect()
    }

    /// Writes `<basename>.hnsw.graph` and `<basename>.hnsw.data` into `dir`.
    pub fn dump(&self, dir: &Path, basename: &str) -> anyhow::Result<()> {
        let written = catch_unwind(AssertUnwindSafe(|| self.hnsw.file_dump(dir, basename)))
            .map_err(|_| anyhow::anyhow!("hnsw_rs panicked while dumping the graph"))??;
        if written != basename {
            bail!("hnsw_rs dumped to {written} instead of {basename}");
        }
        Ok(())
    }

    /// Loads a dump. The loader is leaked on purpose: hnsw_rs ties the graph's lifetime to it,
    /// and it is a few hundred bytes per load, once per start.
    pub fn load(dir: &Path, basename: &str) -> anyhow::Result<Graph> {
        let io: &'static HnswIo = Box::leak(Box::new(HnswIo::new(dir, basename)));
        let hnsw = catch_unwind(AssertUnwindSafe(|| io.load_hnsw_with_dist(DistUnitDot)))
            .map_err(|_| anyhow::anyhow!("hnsw_rs panicked while loading {basename}"))?
            .with_context(|| format!("loading graph {basename}"))?;
        Ok(Graph { hnsw })
    }
}
