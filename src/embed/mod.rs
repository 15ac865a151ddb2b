//! Local text embeddings: the [`Embedder`] handle that request handlers call, and the single
//! worker thread that owns the model and gathers concurrent requests into micro-batches, served
//! fairly across tenants, bounded, and restarted if the model panics.

pub mod catalog;
mod onnx;
pub mod tokens;
pub mod unigram;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub use catalog::{BundledModel, DEFAULT_MODEL};
pub use onnx::{MODEL_DIM, ModelFiles, ModelTokenizer, OnnxBackend, RuntimeLibrary};

/// Texts taken from the queue at once; more queued texts wait for the next batch. A batch runs
/// as several model calls of similar length (the backend's plan), and a search that arrives
/// meanwhile is embedded between two of them.
const MAX_MICRO_BATCH: usize = 64;

/// One embedded text.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// Unit-length vector, so the dot product of two is their cosine similarity.
    pub vector: Vec<f32>,
    /// Model tokens the text produced (with the special tokens), capped at the model's window.
    pub tokens: usize,
    /// True when the text was longer than the model's window and only its start was embedded.
    pub truncated: bool,
}

/// What owns a model: blocking, `&mut self` (ONNX Runtime sessions are used by one caller).
pub trait EmbedBackend: Send + 'static {
    fn embed(&mut self, texts: &[String]) -> anyhow::Result<Vec<Embedding>>;

    /// How `texts` split into model calls: groups of indexes, each embedded by one call to
    /// [`EmbedBackend::embed`]. The worker serves searches between groups. All in one by default.
    fn plan(&mut self, texts: &[String]) -> Vec<Vec<usize>> {
        vec![(0..texts.len()).collect()]
    }
}

/// Identity of the model, recorded in the database so vectors of two models never mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    pub dim: usize,
    pub max_tokens: usize,
    /// Put before every search's text and every stored text (see [`catalog::BundledModel`]).
    pub query_prefix: &'static str,
    pub passage_prefix: &'static str,
    /// Cosines onto the scale every model's scores share.
    pub calibration: catalog::Calibration,
}

/// Texts that may wait for the model at once, across all callers; more is refused with
/// [`EmbedError::Overloaded`] rather than queued without bound.
pub const MAX_QUEUED_TEXTS: usize = 4096;
/// The lane of work that belongs to no tenant (operator commands).
pub const SYSTEM_LANE: &str = "system";

/// Why texts were not embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The queue is full; try again after about this many seconds.
    #[error("the embedding queue is full; retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    #[error("embedding failed: {0:#}")]
    Failed(anyhow::Error),
    #[error("the embedding worker has stopped")]
    Stopped,
}

/// One caller's texts, embedded a slice at a time.
struct Job {
    /// The texts, shortest first, so each slice a model call takes pads little.
    texts: Vec<String>,
    /// `order[k]`: where `texts[k]` was in the caller's list.
    order: Vec<usize>,
    done: Vec<Embedding>,
    reply: oneshot::Sender<Result<Vec<Embedding>, EmbedError>>,
}

impl Job {
    fn new(texts: Vec<String>, reply: oneshot::Sender<Result<Vec<Embedding>, EmbedError>>) -> Job {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut slots: Vec<Option<String>> = texts.into_iter().map(Some).collect();
        let texts = order
            .iter()
            .map(|&i| slots[i].take().unwrap_or_default())
            .collect();
        Job {
            texts,
            order,
            done: Vec::new(),
            reply,
        }
    }

    fn left(&self) -> usize {
        self.texts.len() - self.done.len()
    }

    /// Answers the caller: the vectors in its order, or the error of the call that failed.
    fn settle(self, failure: Option<&anyhow::Error>) {
        let reply = match failure {
            None => {
                let mut out: Vec<Option<Embedding>> = vec![None; self.order.len()];
                for (k, e) in self.order.into_iter().zip(self.done) {
                    out[k] = Some(e);
                }
                Ok(out.into_iter().flatten().collect())
            }
            Some(e) => Err(EmbedError::Failed(anyhow::anyhow!("{e:#}"))),
        };
        let _ = self.reply.send(reply);
    }
}

/// How urgently texts are wanted: a search waits for its query's vector with a person or an
/// agent waiting on it; a write or an import can wait its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    Interactive,
    Bulk,
}

/// A lane: one tenant's texts of one priority.
type Lane = (String, Priority);

/// The queue: one lane per tenant and priority. Every model call takes the interactive lanes'
/// texts first, then the bulk lanes', each class served in turn, so neither one tenant's import
/// nor its own bulk writes keep a search waiting for more than the call in progress.
#[derive(Default)]
struct Queue {
    lanes: HashMap<Lane, VecDeque<Job>>,
    /// Lanes with work, in the order they are served next: interactive, then bulk.
    turn: [VecDeque<Lane>; 2],
    /// Texts waiting (not yet embedded) over all lanes.
    waiting: usize,
    /// The model is in a call over bulk texts: queries that come meanwhile may go to the query
    /// helper's model, if there is one.
    bulk_busy: bool,
    stopped: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn submit(
        &self,
        lane: &str,
        priority: Priority,
        texts: Vec<String>,
    ) -> Result<oneshot::Receiver<Result<Vec<Embedding>, EmbedError>>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        let mut q = self.lock();
        if q.stopped {
            return Err(EmbedError::Stopped);
        }
        if q.waiting > 0 && q.waiting + texts.len() > MAX_QUEUED_TEXTS {
            // At the model's ~200 texts/s on two cores, plus a second.
            let retry_after_secs = (q.waiting as u64 / 200 + 1).clamp(1, 60);
            return Err(EmbedError::Overloaded { retry_after_secs });
        }
        q.waiting += texts.len();
        let lane = (lane.to_owned(), priority);
        // A lane is in the turn order once, while it has (or just had) work.
        let turn = &mut q.turn[class(priority)];
        if !turn.contains(&lane) {
            turn.push_back(lane.clone());
        }
        q.lanes
            .entry(lane)
            .or_default()
            .push_back(Job::new(texts, reply));
        drop(q);
        // Two workers may wait (one for queries, one for the rest): wake both, each checks
        // for its own class.
        self.ready.notify_all();
        Ok(rx)
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.ready.notify_all();
    }

    /// Waits for work: queries first (whole jobs), then a batch of up to [`MAX_MICRO_BATCH`]
    /// bulk texts, the lanes in turn. `None` once stopped and drained.
    fn next_work(&self) -> Option<Work> {
        let mut q = self.lock();
        loop {
            let queries = q.take_queries();
            if !queries.is_empty() {
                return Some(Work::Queries(queries));
            }
            let batch = q.select(&[Priority::Bulk]);
            if !batch.is_empty() {
                q.bulk_busy = true;
                drop(q);
                // A helper may now take the queries that arrive during this batch.
                self.ready.notify_all();
                return Some(Work::Bulk(batch));
            }
            if q.stopped {
                return None;
            }
            q = self
                .ready
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Queries waiting now, if any (never waits).
    fn queries_now(&self) -> Vec<Job> {
        let mut q = self.lock();
        if q.turn[class(Priority::Interactive)].is_empty() {
            return Vec::new();
        }
        q.take_queries()
    }
}

/// What a worker does next.
enum Work {
    /// Whole query jobs, taken out of the queue.
    Queries(Vec<Job>),
    /// Bulk texts: slices of jobs that stay in their lanes until answered.
    Bulk(Vec<(Lane, usize)>),
}

impl Queue {
    /// Takes whole query jobs out of the interactive lanes, one a lane in turn, until they hold
    /// [`MAX_MICRO_BATCH`] texts or none is left; jobs whose caller has gone are dropped. A
    /// taken job belongs to the worker that took it, so two workers never embed one query.
    fn take_queries(&mut self) -> Vec<Job> {
        let c = class(Priority::Interactive);
        let mut jobs = Vec::new();
        let mut texts = 0;
        while texts < MAX_MICRO_BATCH {
            let Some(lane) = self.turn[c].pop_front() else {
                break;
            };
            let mut taken = None;
            let mut dropped = 0;
            let mut empty = true;
            if let Some(lane_jobs) = self.lanes.get_mut(&lane) {
                while let Some(job) = lane_jobs.pop_front() {
                    if job.reply.is_closed() {
                        dropped += job.left();
                    } else {
                        taken = Some(job);
                        break;
                    }
                }
                empty = lane_jobs.is_empty();
            }
            self.waiting -= dropped;
            if empty {
                self.lanes.remove(&lane);
            } else {
                self.turn[c].push_back(lane);
            }
            if let Some(job) = taken {
                texts += job.left();
                self.waiting -= job.left();
                jobs.push(job);
            }
        }
        jobs
    }

    /// Takes up to [`MAX_MICRO_BATCH`] texts from the lanes of `classes`, in that order, a
    /// slice from each lane of a class in turn; jobs whose caller has gone are dropped
    /// unembedded.
    fn select(&mut self, classes: &[Priority]) -> Vec<(Lane, usize)> {
        let mut batch: Vec<(Lane, usize)> = Vec::new();
        let mut taken = 0;
        for &priority in classes {
            let c = class(priority);
            let mut visited = 0;
            // Each lane of the class with work gets an equal share of what is left.
            let share = ((MAX_MICRO_BATCH - taken) / self.turn[c].len().max(1)).max(1);
            while taken < MAX_MICRO_BATCH && visited < self.turn[c].len() {
                let Some(lane) = self.turn[c].front().cloned() else {
                    break;
                };
                self.drop_abandoned(&lane);
                // Texts of several small jobs of a lane share a call (eight clients writing
                // one memory each are embedded together).
                let left = self
                    .lanes
                    .get(&lane)
                    .filter(|jobs| !jobs.is_empty())
                    .map(|jobs| jobs.iter().map(Job::left).sum::<usize>());
                match left {
                    None => {
                        self.turn[c].pop_front();
                        self.lanes.remove(&lane);
                    }
                    Some(left) => {
                        let n = left.min(share).min(MAX_MICRO_BATCH - taken);
                        batch.push((lane, n));
                        taken += n;
                        self.turn[c].rotate_left(1);
                        visited += 1;
                    }
                }
            }
        }
        batch
    }
}

fn class(priority: Priority) -> usize {
    match priority {
        Priority::Interactive => 0,
        Priority::Bulk => 1,
    }
}

impl Queue {
    fn drop_abandoned(&mut self, lane: &Lane) {
        let mut dropped = 0;
        if let Some(jobs) = self.lanes.get_mut(lane) {
            jobs.retain(|j| {
                let gone = j.reply.is_closed();
                if gone {
                    dropped += j.left();
                }
                !gone
            });
        }
        self.waiting -= dropped;
    }
}

/// A cheap, cloneable handle to the embedding worker; the worker stops when the last is dropped.
#[derive(Clone)]
pub struct Embedder {
    handle: Arc<Handle>,
    info: ModelInfo,
}

struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The worker threads; joined after every [`Embedder`] handle is dropped.
pub struct EmbedWorker {
    handles: Vec<JoinHandle<()>>,
}

impl EmbedWorker {
    pub fn join(self) {
        for handle in self.handles {
            if handle.join().is_err() {
                tracing::error!("an embedding worker panicked");
            }
        }
    }
}

impl Embedder {
    /// Starts the worker thread that owns `backend`; after a panic in the model the worker
    /// starts again with a fresh backend from `restart`. Queries are embedded by the same model,
    /// between two calls of a bulk batch.
    pub fn spawn<B: EmbedBackend>(
        backend: B,
        info: ModelInfo,
        restart: impl FnMut() -> anyhow::Result<B> + Send + 'static,
    ) -> (Embedder, EmbedWorker) {
        Self::spawn_with_helper(backend, info, restart, None::<fn() -> anyhow::Result<B>>)
    }

    /// As [`Embedder::spawn`], and with `helper` (what loads a second model session) a query
    /// helper thread: while the worker's model is in a bulk call, queries go to the helper's
    /// model, so a search shares the cores with a write instead of waiting for its call.
    pub fn spawn_with_helper<B: EmbedBackend>(
        backend: B,
        info: ModelInfo,
        restart: impl FnMut() -> anyhow::Result<B> + Send + 'static,
        helper: Option<impl FnMut() -> anyhow::Result<B> + Send + 'static>,
    ) -> (Embedder, EmbedWorker) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        let worker = shared.clone();
        let lowered = helper.is_some();
        let mut handles = vec![spawn_worker("memesh-embed", move || {
            if lowered {
                // The worker takes part in its model's calls, and a model it reloads after a
                // panic inherits its priority.
                crate::lower_thread_priority();
            }
            run_worker(backend, restart, &worker);
        })];
        if let Some(load) = helper {
            let helper = shared.clone();
            handles.push(spawn_worker("memesh-embed-query", move || {
                run_query_helper(load, &helper);
            }));
        }
        let embedder = Embedder {
            handle: Arc::new(Handle(shared)),
            info,
        };
        (embedder, EmbedWorker { handles })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Embeds `texts` (memories to store), in order, in `lane` (the caller's tenant).
    /// Concurrent callers share model calls; lanes are served in turn. If the caller goes away
    /// before its turn, its texts are never embedded.
    pub async fn embed(
        &self,
        lane: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Embedding>, EmbedError> {
        self.embed_as(lane, Priority::Bulk, texts).await
    }

    /// Embeds queries someone is waiting on: ahead of every bulk lane, so a search waits at most
    /// for the model call in progress.
    pub async fn embed_interactive(
        &self,
        lane: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Embedding>, EmbedError> {
        self.embed_as(lane, Priority::Interactive, texts).await
    }

    async fn embed_as(
        &self,
        lane: &str,
        priority: Priority,
        texts: Vec<String>,
    ) -> Result<Vec<Embedding>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = match priority {
            Priority::Interactive => self.info.query_prefix,
            Priority::Bulk => self.info.passage_prefix,
        };
        let rx = self
            .handle
            .0
            .submit(lane, priority, prefixed(prefix, texts))?;
        rx.await.map_err(|_| EmbedError::Stopped)?
    }

    /// The blocking form, for operator commands that run outside the async runtime.
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Vec<Embedding>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let texts = prefixed(self.info.passage_prefix, texts);
        let rx = self.handle.0.submit(SYSTEM_LANE, Priority::Bulk, texts)?;
        rx.blocking_recv().map_err(|_| EmbedError::Stopped)?
    }
}

/// `texts` with the model's `prefix` in front (e5 reads `query: …` and `passage: …`).
fn prefixed(prefix: &str, texts: Vec<String>) -> Vec<String> {
    if prefix.is_empty() {
        return texts;
    }
    texts.into_iter().map(|t| format!("{prefix}{t}")).collect()
}

/// Locates and verifies a bundled model and the ONNX Runtime library, loads the model, and
/// starts its worker thread (which reloads the model if it ever panics). With `query_threads`
/// above 0, a query helper embeds queries with a second session of that many threads while
/// the model is busy with writes (loaded when first needed, dropped after a minute unused).
pub fn load_bundled(
    model: &'static BundledModel,
    model_dir: Option<&Path>,
    ort_lib: Option<&Path>,
    threads: usize,
    query_threads: usize,
) -> anyhow::Result<(Embedder, EmbedWorker)> {
    let files = ModelFiles::locate(model, model_dir)?;
    let runtime = RuntimeLibrary::locate(ort_lib)?;
    // One tokenizer for the model's sessions (the worker's and the query helper's).
    let tokenizer = Arc::new(ModelTokenizer::load(&files)?);
    let loader = |threads: usize| {
        let (files, runtime, tokenizer) = (files.clone(), runtime.clone(), tokenizer.clone());
        move || OnnxBackend::load(&files, &runtime, tokenizer.clone(), threads)
    };
    let backend = if query_threads > 0 {
        // With a query helper, the bulk model runs at a lower CPU priority, so a search's model
        // call (and the server's other threads) get the cores first when both want them.
        // ONNX Runtime's pool threads inherit the priority of the thread that creates the
        // session, so it is created on a thread that lowered its own.
        let load = loader(threads);
        std::thread::Builder::new()
            .name("memesh-embed".into())
            .spawn(move || {
                crate::lower_thread_priority();
                load()
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("loading the model panicked"))??
    } else {
        loader(threads)()?
    };
    tokens::warm_up();
    let info = ModelInfo {
        id: model.id.to_owned(),
        dim: model.dim,
        max_tokens: model.max_tokens,
        query_prefix: model.query_prefix,
        passage_prefix: model.passage_prefix,
        calibration: model.calibration,
    };
    let helper = (query_threads > 0).then(|| loader(query_threads));
    Ok(Embedder::spawn_with_helper(
        backend,
        info,
        loader(threads),
        helper,
    ))
}

/// Embeds one batch of slices; `Err` when the model failed, returned too few vectors, or
/// panicked (then `panicked` is set).
fn embed_batch<B: EmbedBackend>(
    backend: &mut B,
    texts: &[String],
    panicked: &mut bool,
) -> anyhow::Result<Vec<Embedding>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.embed(texts))) {
        Ok(Ok(out)) if out.len() == texts.len() => Ok(out),
        Ok(Ok(out)) => anyhow::bail!(
            "the model returned {} vectors for {} texts",
            out.len(),
            texts.len()
        ),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            *panicked = true;
            anyhow::bail!("the model panicked")
        }
    }
}

/// Hands each job its slice of a model call's vectors; answers the jobs that are complete, or
/// that the call failed.
fn answer(
    shared: &Shared,
    batch: &[(Lane, usize)],
    texts: &[String],
    outcome: anyhow::Result<Vec<Embedding>>,
) {
    let mut q = shared.lock();
    q.waiting -= texts.len();
    let mut out = outcome.as_ref().ok().map(|v| v.iter().cloned());
    for (lane, n) in batch {
        let Some(jobs) = q.lanes.get_mut(lane) else {
            continue;
        };
        // The call took `n` texts from the lane's jobs, front first.
        let mut taken = 0;
        let mut settled = 0;
        while taken < *n {
            let Some(job) = jobs.front_mut() else {
                break;
            };
            let m = job.left().min(n - taken);
            taken += m;
            let finished = match out.as_mut() {
                Some(vectors) => {
                    job.done.extend(vectors.by_ref().take(m));
                    job.left() == 0
                }
                None => true,
            };
            if !finished {
                break;
            }
            let Some(job) = jobs.pop_front() else {
                break;
            };
            // A failed job's texts beyond this call will not be embedded either.
            settled += job.left().saturating_sub(if out.is_some() { 0 } else { m });
            job.settle(outcome.as_ref().err());
        }
        q.waiting -= settled;
    }
}

/// Serves queries and bulk batches until stopped and drained: queries first; between two
/// calls of a bulk batch, queries that arrived meanwhile (unless the helper took them).
fn run_worker<B: EmbedBackend>(
    mut backend: B,
    mut restart: impl FnMut() -> anyhow::Result<B>,
    shared: &Shared,
) {
    while let Some(work) = shared.next_work() {
        match work {
            Work::Queries(jobs) => run_queries(&mut backend, &mut restart, jobs),
            Work::Bulk(batch) => {
                run_batch(&mut backend, &mut restart, shared, batch);
                shared.lock().bulk_busy = false;
            }
        }
    }
}

/// How long the query helper keeps its model after its last query.
const HELPER_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The query helper: while the worker's model is busy with bulk texts, embeds the queries
/// that arrive with a second session of the model, loaded on first need and dropped after
/// [`HELPER_IDLE`] without use (so an idle or read-only server holds one model).
fn run_query_helper<B: EmbedBackend>(mut load: impl FnMut() -> anyhow::Result<B>, shared: &Shared) {
    let mut model: Option<B> = None;
    let mut last_used = std::time::Instant::now();
    loop {
        let mut q = shared.lock();
        // Until queries wait while the model is busy with bulk texts.
        while !q.bulk_busy || q.turn[class(Priority::Interactive)].is_empty() {
            if q.stopped {
                // The worker drains what is left.
                return;
            }
            if model.is_some() && last_used.elapsed() >= HELPER_IDLE {
                drop(q);
                model = None;
                onnx::trim_freed_memory();
                tracing::debug!("the query helper's model was dropped after idling");
                q = shared.lock();
                continue;
            }
            q = shared
                .ready
                .wait_timeout(q, HELPER_IDLE)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let Some(backend) = model.as_mut() else {
            drop(q);
            // Meanwhile the worker serves queries between its calls.
            match load() {
                Ok(b) => model = Some(b),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the query helper could not load the model; queries share the one model");
                    return;
                }
            }
            continue;
        };
        let jobs = q.take_queries();
        drop(q);
        if !jobs.is_empty() {
            run_queries(backend, &mut load, jobs);
            last_used = std::time::Instant::now();
        }
    }
}

fn spawn_worker(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawning an embedding thread")
}

/// The texts of `batch`, in the order `answer` hands out their vectors.
fn batch_texts(shared: &Shared, batch: &[(Lane, usize)]) -> Vec<String> {
    let q = shared.lock();
    batch
        .iter()
        .flat_map(|(lane, n)| {
            q.lanes[lane]
                .iter()
                .flat_map(|job| &job.texts[job.done.len()..])
                .take(*n)
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Embeds `texts` in the calls the backend plans, calling `between` before each call; the
/// model is restarted after a panic. Stops at the first failed call.
fn embed_planned<B: EmbedBackend, R: FnMut() -> anyhow::Result<B>>(
    backend: &mut B,
    restart: &mut R,
    texts: &[String],
    mut between: impl FnMut(&mut B, &mut R),
) -> anyhow::Result<Vec<Embedding>> {
    let mut vectors: Vec<Option<Embedding>> = vec![None; texts.len()];
    for group in backend.plan(texts) {
        between(backend, restart);
        let slice: Vec<String> = group.iter().map(|&i| texts[i].clone()).collect();
        let mut panicked = false;
        let outcome = embed_batch(backend, &slice, &mut panicked);
        if panicked {
            // Before anyone is answered, so the next request meets a sound model.
            tracing::error!("the embedding model panicked; restarting it");
            match restart() {
                Ok(fresh) => *backend = fresh,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "restarting the model failed; keeping the old one")
                }
            }
        }
        match outcome {
            Ok(out) => {
                for (&i, e) in group.iter().zip(out) {
                    vectors[i] = Some(e);
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), texts = slice.len(), "embedding failed");
                return Err(e);
            }
        }
    }
    Ok(vectors.into_iter().flatten().collect())
}

/// Embeds whole query jobs and answers them.
fn run_queries<B: EmbedBackend>(
    backend: &mut B,
    restart: &mut impl FnMut() -> anyhow::Result<B>,
    jobs: Vec<Job>,
) {
    let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
    match embed_planned(backend, restart, &texts, |_, _| {}) {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for mut job in jobs {
                let n = job.texts.len();
                job.done.extend(vectors.by_ref().take(n));
                job.settle(None);
            }
        }
        Err(e) => {
            for job in jobs {
                job.settle(Some(&e));
            }
        }
    }
}

/// Embeds one bulk batch, a call at a time. Before each call, queries that arrived meanwhile
/// are embedded and answered first, so a search waits for one model call at most, however
/// large the bulk batch.
fn run_batch<B: EmbedBackend>(
    backend: &mut B,
    restart: &mut impl FnMut() -> anyhow::Result<B>,
    shared: &Shared,
    batch: Vec<(Lane, usize)>,
) {
    let texts = batch_texts(shared, &batch);
    let outcome = embed_planned(backend, restart, &texts, |backend, restart| {
        let queries = shared.queries_now();
        if !queries.is_empty() {
            run_queries(backend, restart, queries);
        }
    });
    answer(shared, &batch, &texts, outcome);
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Embeds a text as its length and records every model call; a text "panic" makes the model
    /// panic and "short" makes it return too few vectors; with a gate, every call first waits
    /// for a go-ahead.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<Vec<String>>>>,
        gate: Option<Arc<Mutex<mpsc::Receiver<()>>>>,
        /// Told when a call has started (and is waiting at the gate).
        entered: Option<mpsc::Sender<()>>,
        /// Plans calls of this many texts (default: one call a batch).
        call_size: Option<usize>,
    }

    impl Recorder {
        /// A recorder whose every call waits at a gate: `go` lets calls through (dropping it
        /// opens the gate for good) and `started` hears of each call as it begins.
        fn gated() -> (Recorder, mpsc::Sender<()>, mpsc::Receiver<()>) {
            let (go, gate) = mpsc::channel();
            let (entered, started) = mpsc::channel();
            let backend = Recorder {
                gate: Some(Arc::new(Mutex::new(gate))),
                entered: Some(entered),
                ..Recorder::default()
            };
            (backend, go, started)
        }
    }

    impl EmbedBackend for Recorder {
        fn plan(&mut self, texts: &[String]) -> Vec<Vec<usize>> {
            let size = self.call_size.unwrap_or(texts.len().max(1));
            (0..texts.len())
                .collect::<Vec<_>>()
                .chunks(size)
                .map(<[usize]>::to_vec)
                .collect()
        }

        fn embed(&mut self, texts: &[String]) -> anyhow::Result<Vec<Embedding>> {
            if let Some(entered) = &self.entered {
                let _ = entered.send(());
            }
            if let Some(gate) = &self.gate {
                let _ = gate.lock().unwrap().recv();
            }
            self.calls.lock().unwrap().push(texts.to_vec());
            if texts.iter().any(|t| t == "panic") {
                panic!("the model blew up");
            }
            let n = texts.len() - usize::from(texts.iter().any(|t| t == "short"));
            Ok(texts[..n]
                .iter()
                .map(|t| Embedding {
                    vector: vec![t.len() as f32],
                    tokens: t.len(),
                    truncated: false,
                })
                .collect())
        }
    }

    fn info() -> ModelInfo {
        ModelInfo {
            id: "len".into(),
            dim: 1,
            max_tokens: 8,
            query_prefix: "",
            passage_prefix: "",
            calibration: catalog::Calibration::IDENTITY,
        }
    }

    fn spawn(backend: Recorder) -> (Embedder, EmbedWorker, Arc<std::sync::atomic::AtomicUsize>) {
        let restarts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, fresh) = (restarts.clone(), backend.clone());
        let (e, w) = Embedder::spawn(backend, info(), move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(fresh.clone())
        });
        (e, w, restarts)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_get_their_own_vectors_in_order() {
        let (embedder, worker, _) = spawn(Recorder::default());
        let mut tasks = Vec::new();
        for i in 1..=40usize {
            let e = embedder.clone();
            tasks.push(tokio::spawn(async move {
                let texts: Vec<String> = (0..i * 5).map(|j| "x".repeat(i * 1000 + j)).collect();
                let out = e.embed(&format!("tenant{}", i % 3), texts).await.unwrap();
                (i, out)
            }));
        }
        for t in tasks {
            let (i, out) = t.await.unwrap();
            assert_eq!(out.len(), i * 5);
            for (j, emb) in out.iter().enumerate() {
                assert_eq!(emb.vector[0] as usize, i * 1000 + j);
            }
        }
        drop(embedder);
        worker.join();
    }

    /// Texts are run shortest first (little padding) and answered in the caller's order; single
    /// texts from several callers of one tenant share a model call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn texts_run_by_length_and_small_jobs_share_a_call() {
        let (backend, go, started) = Recorder::gated();
        let calls = backend.calls.clone();
        let (embedder, worker, _) = spawn(backend);
        let e = embedder.clone();
        let first = tokio::spawn(async move { e.embed("t", vec!["hold".into()]).await });
        started.recv().unwrap();
        let texts = vec!["ccc".to_owned(), "a".to_owned(), "bb".to_owned()];
        let e = embedder.clone();
        let sorted = tokio::spawn(async move { e.embed("t", texts).await });
        let mut singles = Vec::new();
        for i in 0..8 {
            let e = embedder.clone();
            singles.push(tokio::spawn(async move {
                e.embed("t", vec!["s".repeat(i + 1)]).await
            }));
        }
        while embedder.handle.0.lock().waiting < 12 {
            tokio::task::yield_now().await;
        }
        drop(go);
        first.await.unwrap().unwrap();
        let out: Vec<f32> = sorted
            .await
            .unwrap()
            .unwrap()
            .iter()
            .map(|e| e.vector[0])
            .collect();
        assert_eq!(out, [3.0, 1.0, 2.0], "answered in the caller's order");
        for (i, s) in singles.into_iter().enumerate() {
            assert_eq!(s.await.unwrap().unwrap()[0].vector[0], (i + 1) as f32);
        }
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1][..3], ["a", "bb", "ccc"], "run shortest first");
        assert_eq!(
            calls[1].len(),
            11,
            "the eight single texts joined the same call"
        );
        drop(embedder);
        worker.join();
    }

    /// With a query helper, a search is embedded while a bulk call is still in progress, by
    /// the helper's model (loaded then, not before); with the model idle, by the model.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_helper_answers_while_the_model_is_busy_and_only_then() {
        let (bulk, go, started) = Recorder::gated();
        let query = Recorder::default();
        let (bulk_calls, query_calls) = (bulk.calls.clone(), query.calls.clone());
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, l) = (bulk.clone(), loads.clone());
        let (embedder, worker) = Embedder::spawn_with_helper(
            bulk,
            info(),
            move || Ok(b.clone()),
            Some(move || {
                l.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(query.clone())
            }),
        );
        // Idle: the model answers the search (through the gate, opened once).
        let e = embedder.clone();
        let idle = tokio::spawn(async move { e.embed_interactive("t", vec!["idle".into()]).await });
        started.recv().unwrap();
        go.send(()).unwrap();
        assert_eq!(idle.await.unwrap().unwrap()[0].vector[0], 4.0);
        assert_eq!(
            loads.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no helper model yet"
        );

        // Busy: a write's call is held at the gate; the search goes to the helper.
        let e = embedder.clone();
        let write = tokio::spawn(async move { e.embed("t", vec!["a memory".into()]).await });
        started.recv().unwrap();
        let found = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            embedder.embed_interactive("t", vec!["query".into()]),
        )
        .await
        .expect("the search did not wait for the bulk call")
        .unwrap();
        assert_eq!(found[0].vector[0], 5.0);
        assert!(!write.is_finished(), "the bulk call is still held");
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(go);
        assert_eq!(write.await.unwrap().unwrap()[0].vector[0], 8.0);
        assert_eq!(*query_calls.lock().unwrap(), [["query"]]);
        assert_eq!(*bulk_calls.lock().unwrap(), [["idle"], ["a memory"]]);
        assert_eq!(embedder.handle.0.lock().waiting, 0);
        drop(embedder);
        worker.join();
    }

    /// A lane that ran dry and gets work again is served once per turn, and the count of
    /// waiting texts comes back to zero.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_comes_back_without_being_served_twice() {
        let backend = Recorder::default();
        let calls = backend.calls.clone();
        let (embedder, worker, _) = spawn(backend);
        for text in ["one", "two", "three"] {
            let out = embedder.embed("a", vec![text.into()]).await.unwrap();
            assert_eq!(out.len(), 1);
        }
        assert_eq!(calls.lock().unwrap().concat(), ["one", "two", "three"]);
        assert_eq!(embedder.handle.0.lock().waiting, 0);
        drop(embedder);
        worker.join();
    }

    /// A tenant with a thousand texts queued does not keep another tenant's one text waiting
    /// behind all of them: lanes take turns, a slice at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenants_take_turns() {
        let (go, gate) = mpsc::channel();
        let backend = Recorder {
            gate: Some(Arc::new(Mutex::new(gate))),
            ..Recorder::default()
        };
        let calls = backend.calls.clone();
        let (embedder, worker, _) = spawn(backend);
        let (e1, e2) = (embedder.clone(), embedder.clone());
        let bulk = tokio::spawn(async move {
            e1.embed("importer", (0..1000).map(|i| format!("bulk {i}")).collect())
                .await
        });
        // The first model call holds the gate while the second tenant queues its search.
        while embedder.handle.0.lock().waiting < 1000 {
            tokio::task::yield_now().await;
        }
        let search = tokio::spawn(async move { e2.embed("searcher", vec!["needle".into()]).await });
        while embedder.handle.0.lock().waiting < 1001 {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            let _ = go.send(());
        }
        assert_eq!(search.await.unwrap().unwrap().len(), 1);
        drop(go);
        let position = calls
            .lock()
            .unwrap()
            .iter()
            .position(|c| c.contains(&"needle".to_owned()))
            .unwrap();
        assert!(
            position <= 1,
            "the search was embedded in model call {position}"
        );
        assert_eq!(bulk.await.unwrap().unwrap().len(), 1000);
        drop(embedder);
        worker.join();
    }

    /// A search goes ahead of bulk work already queued, its own tenant's included: it waits for
    /// the call in progress only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_search_goes_ahead_of_its_own_tenants_writes() {
        let (backend, go, started) = Recorder::gated();
        let calls = backend.calls.clone();
        let (embedder, worker, _) = spawn(backend);
        let (e1, e2) = (embedder.clone(), embedder.clone());
        let bulk = tokio::spawn(async move {
            e1.embed("t", (0..200).map(|i| format!("w{i}")).collect())
                .await
        });
        // The first bulk call is under way (held at the gate) before the search comes.
        started.recv().unwrap();
        let search =
            tokio::spawn(async move { e2.embed_interactive("t", vec!["needle".into()]).await });
        while embedder.handle.0.lock().waiting < 201 {
            tokio::task::yield_now().await;
        }
        for _ in 0..2 {
            let _ = go.send(());
        }
        assert_eq!(search.await.unwrap().unwrap().len(), 1);
        drop(go);
        let calls = calls.lock().unwrap().clone();
        let position = calls
            .iter()
            .position(|c| c.contains(&"needle".to_owned()))
            .unwrap();
        assert_eq!(
            position, 1,
            "embedded in the call after the one in progress"
        );
        assert_eq!(calls[1][0], "needle", "and first in it");
        assert_eq!(bulk.await.unwrap().unwrap().len(), 200);
        drop(embedder);
        worker.join();
    }

    /// Within a large bulk batch, a search that arrives is embedded between two model calls,
    /// not after the whole batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_search_is_served_between_the_calls_of_a_bulk_batch() {
        let (mut backend, go, started) = Recorder::gated();
        backend.call_size = Some(4);
        let calls = backend.calls.clone();
        let (embedder, worker, _) = spawn(backend);
        let e = embedder.clone();
        let bulk = tokio::spawn(async move {
            e.embed("t", (0..64).map(|i| format!("w{i:02}")).collect())
                .await
        });
        started.recv().unwrap();
        let e = embedder.clone();
        let search =
            tokio::spawn(async move { e.embed_interactive("u", vec!["needle".into()]).await });
        while embedder.handle.0.lock().waiting < 65 {
            tokio::task::yield_now().await;
        }
        drop(go);
        assert_eq!(search.await.unwrap().unwrap().len(), 1);
        assert_eq!(bulk.await.unwrap().unwrap().len(), 64);
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 17, "16 calls of 4 and the search's");
        assert_eq!(calls[1], ["needle"], "right after the call in progress");
        drop(embedder);
        worker.join();
    }

    /// A batch holding a search is never interrupted to take that search again: every text is
    /// embedded once and the count of waiting texts returns to zero.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_with_a_search_in_it_is_not_preempted() {
        let (mut backend, go, started) = Recorder::gated();
        backend.call_size = Some(1);
        let calls = backend.calls.clone();
        let (embedder, worker, _) = spawn(backend);
        let e = embedder.clone();
        let hold = tokio::spawn(async move { e.embed("t", vec!["hold".into()]).await });
        started.recv().unwrap();
        let (e1, e2) = (embedder.clone(), embedder.clone());
        let search = tokio::spawn(async move { e1.embed_interactive("t", vec!["q".into()]).await });
        let bulk = tokio::spawn(async move {
            e2.embed("t", (0..6).map(|i| format!("b{i}")).collect())
                .await
        });
        while embedder.handle.0.lock().waiting < 8 {
            tokio::task::yield_now().await;
        }
        drop(go);
        hold.await.unwrap().unwrap();
        assert_eq!(search.await.unwrap().unwrap().len(), 1);
        assert_eq!(bulk.await.unwrap().unwrap().len(), 6);
        assert_eq!(calls.lock().unwrap().len(), 8, "each text embedded once");
        assert_eq!(embedder.handle.0.lock().waiting, 0);
        drop(embedder);
        worker.join();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_and_a_gone_caller_is_never_embedded() {
        let (backend, go, started) = Recorder::gated();
        let calls = backend.calls.clone();
        let (embedder, worker, _) = spawn(backend);
        let e = embedder.clone();
        let first = tokio::spawn(async move { e.embed("a", vec!["first".into()]).await });
        while started.try_recv().is_err() {
            tokio::task::yield_now().await;
        }
        // While the model is busy, fill the queue to the brim with a caller that then leaves.
        let e = embedder.clone();
        let filler: Vec<String> = (0..MAX_QUEUED_TEXTS - 1)
            .map(|i| format!("gone {i}"))
            .collect();
        let gone = tokio::spawn(async move { e.embed("b", filler).await });
        while embedder.handle.0.lock().waiting < MAX_QUEUED_TEXTS {
            tokio::task::yield_now().await;
        }
        match embedder.embed("c", vec!["one too many".into()]).await {
            Err(EmbedError::Overloaded { retry_after_secs }) => assert!(retry_after_secs >= 1),
            other => panic!("expected overloaded, got {other:?}"),
        }
        gone.abort();
        let _ = gone.await;
        for _ in 0..4 {
            let _ = go.send(());
        }
        assert_eq!(first.await.unwrap().unwrap().len(), 1);
        let after = tokio::spawn({
            let e = embedder.clone();
            async move { e.embed("c", vec!["later".into()]).await }
        });
        let _ = go.send(());
        assert_eq!(after.await.unwrap().unwrap().len(), 1);
        let seen = calls.lock().unwrap().concat();
        assert!(
            !seen.iter().any(|t| t.starts_with("gone")),
            "an abandoned job was embedded"
        );
        drop(embedder);
        drop(go);
        worker.join();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_or_a_short_result_fails_the_batch_and_the_model_restarts() {
        let (embedder, worker, restarts) = spawn(Recorder::default());
        match embedder.embed("a", vec!["panic".into()]).await {
            Err(EmbedError::Failed(e)) => assert!(e.to_string().contains("panicked"), "{e}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(restarts.load(std::sync::atomic::Ordering::SeqCst), 1);
        match embedder
            .embed("a", vec!["fine".into(), "short".into()])
            .await
        {
            Err(EmbedError::Failed(e)) => assert!(e.to_string().contains("vectors"), "{e}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(
            embedder
                .embed("a", vec!["fine".into()])
                .await
                .unwrap()
                .len(),
            1
        );
        drop(embedder);
        worker.join();
    }
}
