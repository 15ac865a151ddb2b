//! Local text embeddings: the [`Embedder`] handle that request handlers call, and the single
//! worker thread that owns the model and gathers concurrent requests into micro-batches.

mod onnx;
pub mod tokens;

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub use onnx::{MODEL_DIM, MODEL_ID, ModelFiles, OnnxBackend, RuntimeLibrary};

/// Texts embedded in one model call at most; more queued texts wait for the next call.
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
}

/// Identity of the model, recorded in the database so vectors of two models never mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    pub dim: usize,
    pub max_tokens: usize,
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<anyhow::Result<Vec<Embedding>>>,
}

/// A cheap, cloneable handle to the embedding worker.
#[derive(Clone)]
pub struct Embedder {
    jobs: mpsc::Sender<Job>,
    info: ModelInfo,
}

/// The worker thread; joined after every [`Embedder`] handle is dropped.
pub struct EmbedWorker {
    handle: JoinHandle<()>,
}

impl EmbedWorker {
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("the embedding worker panicked");
        }
    }
}

impl Embedder {
    /// Starts the worker thread that owns `backend`.
    pub fn spawn(backend: impl EmbedBackend, info: ModelInfo) -> (Embedder, EmbedWorker) {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("memesh-embed".into())
            .spawn(move || run_worker(backend, rx))
            .expect("spawning the embedding thread");
        (Embedder { jobs: tx, info }, EmbedWorker { handle })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Embeds `texts`, in order. Concurrent callers share model calls.
    pub async fn embed(&self, texts: Vec<String>) -> anyhow::Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { texts, reply })
            .map_err(|_| anyhow::anyhow!("the embedding worker has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the embedding worker dropped the request"))?
    }

    /// The blocking form, for operator commands that run outside the async runtime.
    pub fn embed_blocking(&self, texts: Vec<String>) -> anyhow::Result<Vec<Embedding>> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { texts, reply })
            .map_err(|_| anyhow::anyhow!("the embedding worker has stopped"))?;
        rx.blocking_recv()
            .map_err(|_| anyhow::anyhow!("the embedding worker dropped the request"))?
    }
}

/// Locates and verifies the bundled model and the ONNX Runtime library, loads the model, and
/// starts its worker thread.
pub fn load_bundled(
    model_dir: Option<&Path>,
    ort_lib: Option<&Path>,
    threads: usize,
) -> anyhow::Result<(Embedder, EmbedWorker)> {
    let files = ModelFiles::locate(model_dir)?;
    let runtime = RuntimeLibrary::locate(ort_lib)?;
    let (backend, info) = OnnxBackend::load(&files, &runtime, threads)?;
    tokens::warm_up();
    Ok(Embedder::spawn(backend, info))
}

/// Takes a job, then whatever else is already queued (up to [`MAX_MICRO_BATCH`] texts), and
/// embeds them in one model call: under concurrent load, many small requests cost one call.
fn run_worker(mut backend: impl EmbedBackend, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut total = jobs[0].texts.len();
        while total < MAX_MICRO_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    total += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        match backend.embed(&texts) {
            Ok(mut all) => {
                for job in jobs.into_iter().rev() {
                    let mine = all.split_off(all.len() - job.texts.len());
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), texts = texts.len(), "embedding failed");
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(anyhow::anyhow!("embedding failed: {e:#}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embeds a text as its length, so the test can check that replies go to the right caller.
    struct LengthBackend;

    impl EmbedBackend for LengthBackend {
        fn embed(&mut self, texts: &[String]) -> anyhow::Result<Vec<Embedding>> {
            Ok(texts
                .iter()
                .map(|t| Embedding {
                    vector: vec![t.len() as f32],
                    tokens: t.len(),
                    truncated: false,
                })
                .collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_get_their_own_vectors_in_order() {
        let info = ModelInfo {
            id: "len".into(),
            dim: 1,
            max_tokens: 8,
        };
        let (embedder, worker) = Embedder::spawn(LengthBackend, info);
        let mut tasks = Vec::new();
        for i in 1..=40usize {
            let e = embedder.clone();
            tasks.push(tokio::spawn(async move {
                let texts: Vec<String> = (0..i).map(|j| "x".repeat(i * 100 + j)).collect();
                let out = e.embed(texts).await.unwrap();
                (i, out)
            }));
        }
        for t in tasks {
            let (i, out) = t.await.unwrap();
            assert_eq!(out.len(), i);
            for (j, emb) in out.iter().enumerate() {
                assert_eq!(emb.vector[0] as usize, i * 100 + j);
            }
        }
        drop(embedder);
        worker.join();
    }
}
