//! Background upkeep of the graphs: build a graph when a partition grows past the threshold,
//! feed it the rows written since, and rebuild it when deletions pile up. Searches keep running
//! meanwhile: graphs are built off-lock and swapped in. (Snapshots are a job of `jobs`.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::graph::Graph;
use super::{Partition, RowId, VectorIndex, read, upkeep_guard, write};

/// Rows fed to a graph per step, so a long backlog never holds anything for long.
const INSERT_CHUNK: usize = 512;
/// Rows per step of a build, between which a shutdown request is honoured.
const BUILD_CHUNK: usize = 4096;
/// How often the thread looks for work when nobody wakes it.
const IDLE_POLL: Duration = Duration::from_millis(250);

enum Work {
    Build,
    Feed(Arc<Graph>, Vec<(RowId, Vec<f32>)>),
    Nothing,
}

impl Partition {
    fn next_work(&self, index: &VectorIndex) -> Work {
        let config = &index.config;
        match &self.graph {
            None if self.len() >= config.graph_threshold => Work::Build,
            Some(g)
                if self.tombstones.len() as f64 > config.rebuild_ratio * g.points() as f64
                    && self.len() >= config.graph_threshold / 2 =>
            {
                Work::Build
            }
            Some(g) if !self.pending.is_empty() => {
                let batch = self
                    .pending
                    .iter()
                    .take(INSERT_CHUNK)
                    .filter_map(|row| {
                        let i = *self.pos.get(row)?;
                        Some((*row, self.vector(i, config.dim).to_vec()))
                    })
                    .collect();
                Work::Feed(g.clone(), batch)
            }
            _ => Work::Nothing,
        }
    }

    /// Makes `graph`, holding exactly `members`, this partition's graph.
    pub(crate) fn install_graph(&mut self, graph: Arc<Graph>, members: HashSet<RowId>) {
        self.tombstones = members
            .iter()
            .filter(|r| !self.pos.contains_key(r))
            .copied()
            .collect();
        self.pending = self
            .rows
            .iter()
            .filter(|r| !members.contains(r))
            .copied()
            .collect();
        self.in_graph = members;
        self.graph = Some(graph);
    }

    /// A partition that shrank far below the threshold goes back to exact scans.
    fn drop_graph_if_small(&mut self, threshold: usize) -> bool {
        if self.graph.is_some() && self.len() < threshold / 2 {
            self.graph = None;
            self.in_graph.clear();
            self.pending.clear();
            self.tombstones.clear();
            return true;
        }
        false
    }
}

impl VectorIndex {
    /// Does one step of work on `part`; false when there was none.
    fn maintain_partition(&self, part: &RwLock<Partition>, stop: &AtomicBool) -> bool {
        if write(part).drop_graph_if_small(self.config.graph_threshold) {
            self.graph_changes.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let work = read(part).next_work(self);
        match work {
            Work::Nothing => false,
            Work::Build => {
                let (rows, vectors) = {
                    let p = read(part);
                    (p.rows.clone(), p.vectors.clone())
                };
                let Some(graph) = self.build_graph(&rows, &vectors, stop) else {
                    return false;
                };
                write(part).install_graph(Arc::new(graph), rows.into_iter().collect());
                self.graph_changes.fetch_add(1, Ordering::Relaxed);
                true
            }
            Work::Feed(graph, batch) => {
                for (row, vector) in &batch {
                    graph.insert(*row, vector);
                }
                let mut p = write(part);
                for (row, _) in batch {
                    p.pending.remove(&row);
                    p.in_graph.insert(row);
                    if !p.pos.contains_key(&row) {
                        p.tombstones.insert(row);
                    }
                }
                self.graph_changes.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    /// Builds a graph in chunks; `None` if shutdown was requested meanwhile.
    fn build_graph(&self, rows: &[RowId], vectors: &[f32], stop: &AtomicBool) -> Option<Graph> {
        let dim = self.config.dim;
        let started = Instant::now();
        let first = rows.len().min(BUILD_CHUNK);
        let graph = Graph::build(&self.config, &rows[..first], &vectors[..first * dim]);
        for start in (first..rows.len()).step_by(BUILD_CHUNK) {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let end = (start + BUILD_CHUNK).min(rows.len());
            graph.extend(&rows[start..end], &vectors[start * dim..end * dim], dim);
        }
        tracing::info!(
            points = rows.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built HNSW graph"
        );
        Some(graph)
    }

    /// Runs upkeep until nothing is left to do (tests and benchmarks call this to drain the
    /// background work deterministically).
    pub fn maintain_now(&self) {
        let never = AtomicBool::new(false);
        while self.maintain_pass(&never) {}
    }

    fn maintain_pass(&self, stop: &AtomicBool) -> bool {
        let _upkeep = upkeep_guard(self);
        let mut worked = false;
        for (_, part) in self.all_partitions() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            worked |= self.maintain_partition(&part, stop);
        }
        worked
    }
}

struct Signal {
    stop: AtomicBool,
    wake: Mutex<bool>,
    cond: Condvar,
}

/// The upkeep thread. [`Maintainer::stop`] interrupts it and joins it.
pub struct Maintainer {
    signal: Arc<Signal>,
    handle: Option<JoinHandle<()>>,
}

impl Maintainer {
    pub fn start(index: Arc<VectorIndex>) -> Maintainer {
        let signal = Arc::new(Signal {
            stop: AtomicBool::new(false),
            wake: Mutex::new(false),
            cond: Condvar::new(),
        });
        let s = signal.clone();
        let handle = std::thread::Builder::new()
            .name("memesh-index".into())
            .spawn(move || run(&index, &s))
            .expect("spawning the index thread");
        Maintainer {
            signal,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) {
        self.signal.stop.store(true, Ordering::SeqCst);
        *self
            .signal
            .wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.signal.cond.notify_all();
        if let Some(h) = self.handle.take()
            && h.join().is_err()
        {
            tracing::error!("the index thread panicked");
        }
    }
}

fn run(index: &VectorIndex, signal: &Signal) {
    loop {
        if signal.stop.load(Ordering::SeqCst) {
            break;
        }
        if !index.maintain_pass(&signal.stop) {
            let guard = signal
                .wake
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (mut woken, _) = signal
                .cond
                .wait_timeout_while(guard, IDLE_POLL, |w| !*w)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *woken = false;
        }
    }
}
