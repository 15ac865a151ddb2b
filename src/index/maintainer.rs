//! Background upkeep of the partitions: feed pending slots to a partition's graph (making the
//! graph once the partition passes the threshold), compact a partition when dead slots pile up
//! (building the compacted copy's graph off-lock, then swapping it in with whatever changed
//! meanwhile), and drop the graph of a partition that shrank. Searches keep running throughout:
//! a feed holds the partition's lock for about a millisecond at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::graph::{Graph, Shape};
use super::partition::Partition;
use super::{VectorIndex, read, upkeep_guard, write};

/// How long one feed step may hold a partition's write lock.
const FEED_BUDGET: Duration = Duration::from_millis(1);
/// Inserts between shutdown checks while a compacted copy's graph is built.
const BUILD_CHECK: usize = 1024;
/// How often the thread looks for work when nobody wakes it.
const IDLE_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, PartialEq, Eq)]
enum Work {
    Feed,
    Compact,
    DropGraph,
    Nothing,
}

impl Partition {
    fn next_work(&self, index: &VectorIndex) -> Work {
        let config = &index.config;
        let threshold = config.graph_threshold;
        if self.dead > 0 && self.dead as f64 > config.rebuild_ratio * self.slots() as f64 {
            return Work::Compact;
        }
        match &self.graph {
            None if self.len() >= threshold => Work::Feed,
            Some(_) if self.len() < threshold / 2 => Work::DropGraph,
            Some(g) if g.len() < self.slots() => Work::Feed,
            _ => Work::Nothing,
        }
    }
}

impl VectorIndex {
    /// Does one step of work on `part`; false when there was none.
    fn maintain_partition(&self, part: &RwLock<Partition>, stop: &AtomicBool) -> bool {
        let work = read(part).next_work(self);
        let worked = match work {
            Work::Nothing => false,
            Work::Feed => write(part).feed(&self.config, FEED_BUDGET) > 0,
            Work::DropGraph => {
                let mut p = write(part);
                p.graph = None;
                p.version += 1;
                true
            }
            Work::Compact => self.compact(part, stop),
        };
        if worked {
            self.changed();
        }
        worked
    }

    /// Replaces `part` by a copy without its dead slots. The copy (and its graph, if the
    /// partition warrants one) is made off-lock; the swap then carries over the rows written
    /// and deleted meanwhile. False if shutdown interrupted it.
    fn compact(&self, part: &RwLock<Partition>, stop: &AtomicBool) -> bool {
        let dim = self.config.dim;
        let threshold = self.config.graph_threshold;
        let (mut fresh, seen_slots, seen_dead, had_graph) = {
            let p = read(part);
            (p.compacted(dim), p.slots(), p.dead, p.graph.is_some())
        };
        let started = Instant::now();
        if fresh.len() >= threshold || (had_graph && fresh.len() >= threshold / 2) {
            let mut graph = Graph::new(
                Shape {
                    m: self.config.max_connections,
                    ef_construction: self.config.ef_construction,
                },
                dim,
            );
            for i in 0..fresh.slots() {
                if i % BUILD_CHECK == 0 && stop.load(Ordering::Relaxed) {
                    return false;
                }
                graph.insert(&fresh.points(dim), i as u32);
            }
            fresh.graph = Some(Arc::new(graph));
        }
        let mut p = write(part);
        if p.dead != seen_dead {
            // Deletions since the copy: the dead count only grows between compactions, and
            // only this thread compacts (it holds the upkeep lock).
            for row in fresh.rows.clone() {
                if !p.pos.contains_key(&row) {
                    fresh.remove(row);
                }
            }
        }
        for i in seen_slots..p.slots() {
            if p.live[i] {
                fresh.codes.extend_from_slice(p.points(dim).code(i));
                fresh.push_slot(p.rows[i], p.created[i], p.scales[i], true);
            }
        }
        fresh.version = p.version + 1;
        tracing::info!(
            live = fresh.len(),
            dropped = p.dead,
            graph = fresh.graph.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted an index partition"
        );
        *p = fresh;
        true
    }

    /// Runs upkeep until nothing is left to do (tests and benchmarks call this to drain the
    /// background work deterministically).
    pub fn maintain_now(&self) {
        let never = AtomicBool::new(false);
        while self.maintain_pass(&never) {}
    }

    /// One step for every partition that has work, in turn (a big backlog in one partition
    /// does not starve the others).
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
            // Not at a lower priority: it takes a partition's write lock for a millisecond at a
            // time, and a preempted holder would keep searches waiting (priority inversion).
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
