//! A bundled model (see [`super::catalog`]) run on ONNX Runtime, loaded from local
//! files only. Every file is checked against the checksums compiled into the binary, and a
//! missing or wrong file is reported with what to do about it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::Tensor;
use sha2::{Digest, Sha256};
use tokenizers::{AddedToken, Encoding, TruncationParams};

use super::catalog::BundledModel;
use super::unigram::{self, CompactTokenizer};
use super::{EmbedBackend, Embedding};

/// The output size of every bundled model (a test keeps the catalogue to it).
pub const MODEL_DIM: usize = 384;
/// Texts per ONNX Runtime call within a micro-batch (measured best on 2 cores).
const ORT_BATCH: usize = 32;
/// Padded tokens per ONNX Runtime call (texts × the longest of them). Measured on 2 cores with
/// texts of ~40 and ~240 tokens: 512 was the fastest for both, and keeps the arena of 100 long
/// texts at ~90 MiB where unbounded calls of 32 left it at ~1.3 GiB.
const TOKENS_PER_CALL: usize = 512;

pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";
const ORT_LIB_SHA256: &str = "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3";

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Candidate locations: the explicit one, else beside the executable (an unpacked bundle),
/// two levels up from it (`target/<profile>/memesh` in a checkout), and the working directory.
fn candidates(explicit: Option<&Path>, relative: &Path) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        out.push(dir.join(relative));
        if let Some(root) = dir.parent().and_then(Path::parent) {
            out.push(root.join(relative));
        }
    }
    out.push(PathBuf::from(relative));
    out
}

/// A model's directory, located and verified.
#[derive(Clone)]
pub struct ModelFiles {
    dir: PathBuf,
    model: &'static BundledModel,
}

impl ModelFiles {
    pub fn locate(
        model: &'static BundledModel,
        explicit: Option<&Path>,
    ) -> anyhow::Result<ModelFiles> {
        let id = model.id;
        let relative = Path::new("models").join(id);
        let tried = candidates(explicit, &relative);
        let Some(dir) = tried.iter().find(|d| d.join("model.onnx").is_file()) else {
            bail!(
                "the embedding model was not found (looked in {}). It ships in the repository \
                 under models/{id}/; run memesh from the checkout or an unpacked bundle, \
                 or pass --model-dir / MEMESH_MODEL_DIR",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let files = ModelFiles {
            dir: dir.clone(),
            model,
        };
        files.verify()?;
        Ok(files)
    }

    /// Compares every file with the checksums compiled into this binary.
    fn verify(&self) -> anyhow::Result<()> {
        let id = self.model.id;
        for line in self.model.sums.lines().filter(|l| !l.trim().is_empty()) {
            let (expected, name) = line
                .split_once(char::is_whitespace)
                .context("malformed SHA256SUMS compiled into the binary")?;
            let name = name.trim().trim_start_matches('*');
            let path = self.dir.join(name);
            if !path.is_file() {
                bail!(
                    "model file {} is missing; restore models/{id}/ from the repository \
                     or the release bundle",
                    path.display()
                );
            }
            let actual = sha256_file(&path)?;
            if actual != expected {
                bail!(
                    "model file {} is corrupt: sha256 {actual}, expected {expected}; restore it \
                     from the repository or the release bundle (see models/README.md)",
                    path.display()
                );
            }
        }
        Ok(())
    }

    fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }
}

/// The ONNX Runtime shared library, located and verified.
#[derive(Clone)]
pub struct RuntimeLibrary {
    path: PathBuf,
}

impl RuntimeLibrary {
    /// An explicit path is trusted as given (another platform's build, say); the default one
    /// must be the pinned build.
    pub fn locate(explicit: Option<&Path>) -> anyhow::Result<RuntimeLibrary> {
        let relative = Path::new("runtime").join(ORT_LIB_NAME);
        let tried = candidates(explicit, &relative);
        let Some(path) = tried.iter().find(|p| p.is_file()) else {
            bail!(
                "the ONNX Runtime library {ORT_LIB_NAME} was not found (looked in {}). \
                 From the repository root run: scripts/fetch-runtime.sh \
                 (or pass --ort-lib / MEMESH_ORT_LIB)",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if explicit.is_none() {
            let actual = sha256_file(path)?;
            if actual != ORT_LIB_SHA256 {
                bail!(
                    "{} has sha256 {actual}, expected {ORT_LIB_SHA256}; run \
                     scripts/fetch-runtime.sh to replace it",
                    path.display()
                );
            }
        }
        let path = std::fs::canonicalize(path)?;
        Ok(RuntimeLibrary { path })
    }

    /// Loads the library into the process and makes its environment (once; later calls reuse
    /// both).
    fn load(&self) -> anyhow::Result<Environment> {
        static LOADED: OnceLock<Result<Environment, String>> = OnceLock::new();
        let loaded = LOADED.get_or_init(|| {
            ort::init_from(&self.path)
                .map_err(|e| format!("{e}"))?
                .build()
                .map_err(|e| format!("{e}"))
        });
        match loaded {
            Ok(environment) => Ok(environment.clone()),
            Err(e) => bail!(
                "could not load the ONNX Runtime library {}: {e}; run scripts/fetch-runtime.sh",
                self.path.display()
            ),
        }
    }
}

/// ONNX Runtime allocates with the C allocator, and glibc keeps what it frees (the model's
/// parse buffers, ~58 MiB at load) for reuse unless told to give it back: this tells it to
/// return free memory above 128 KiB at the top of a heap to the system.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts glibc's allocator parameters; any value is safe.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        }
    }
}

/// Gives back the free pages inside glibc's heaps too (the trim threshold only returns the
/// top of a heap): loading a session frees its parse buffers below the session's own
/// allocations, where they would otherwise stay resident.
pub(crate) fn trim_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// A bundled model's tokenizer, read once and shared by every session of the model: the
/// Hugging Face pipeline from the model's `tokenizer.json`, with a [`CompactUnigram`] in place
/// of the crate's Unigram model where the model is one (e5's 250k pieces; see
/// [`super::unigram`]), settings as fastembed made them (truncation at the model's window, the
/// special tokens of `special_tokens_map.json`, padding with the configured pad token to the
/// longest text of a call, done by [`OnnxBackend`] rather than by a padding setting in the file).
///
/// [`CompactUnigram`]: super::unigram::CompactUnigram
pub struct ModelTokenizer {
    inner: TokenizerKind,
    pad_id: u32,
}

enum TokenizerKind {
    Compact(Box<CompactTokenizer>),
    Hf(Box<tokenizers::Tokenizer>),
}

impl ModelTokenizer {
    pub fn load(files: &ModelFiles) -> anyhow::Result<ModelTokenizer> {
        let json = files.read("tokenizer.json")?;
        let config: serde_json::Value =
            serde_json::from_slice(&files.read("config.json")?).context("reading config.json")?;
        let tokenizer_config: serde_json::Value =
            serde_json::from_slice(&files.read("tokenizer_config.json")?)
                .context("reading tokenizer_config.json")?;
        let special: serde_json::Value =
            serde_json::from_slice(&files.read("special_tokens_map.json")?)
                .context("reading special_tokens_map.json")?;
        let max_length = tokenizer_config["model_max_length"]
            .as_f64()
            .map_or(files.model.max_tokens, |m| {
                files.model.max_tokens.min(m as usize)
            });
        let truncation = Some(TruncationParams {
            max_length,
            ..Default::default()
        });
        let added: Vec<AddedToken> = special
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|v| v.as_str())
            .map(|content| AddedToken {
                content: content.into(),
                special: true,
                ..Default::default()
            })
            .collect();
        let inner = if unigram::is_unigram(&json) {
            let mut t = unigram::read_tokenizer(&json)?;
            t.with_truncation(truncation)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .with_padding(None);
            t.add_special_tokens(added.clone())
                .map_err(|e| anyhow::anyhow!("adding the special tokens: {e}"))?;
            TokenizerKind::Compact(Box::new(t))
        } else {
            let mut t = tokenizers::Tokenizer::from_bytes(&json)
                .map_err(|e| anyhow::anyhow!("reading tokenizer.json: {e}"))?;
            t.with_truncation(truncation)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .with_padding(None);
            t.add_special_tokens(added.clone())
                .map_err(|e| anyhow::anyhow!("adding the special tokens: {e}"))?;
            TokenizerKind::Hf(Box::new(t))
        };
        let mut tokenizer = ModelTokenizer { inner, pad_id: 0 };
        let pad_token = tokenizer_config["pad_token"]
            .as_str()
            .or_else(|| tokenizer_config["pad_token"]["content"].as_str());
        tokenizer.pad_id = config["pad_token_id"]
            .as_u64()
            .map(|id| id as u32)
            .or_else(|| pad_token.and_then(|p| tokenizer.token_to_id(p)))
            .unwrap_or(0);
        Ok(tokenizer)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            TokenizerKind::Compact(t) => t.token_to_id(token),
            TokenizerKind::Hf(t) => t.token_to_id(token),
        }
    }

    /// `text`'s tokens, with the special tokens, cut at the model's window.
    pub fn encode(&self, text: &str) -> anyhow::Result<Encoding> {
        match &self.inner {
            TokenizerKind::Compact(t) => t.encode(text, true),
            TokenizerKind::Hf(t) => t.encode(text, true),
        }
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))
    }
}

/// A bundled model run on ONNX Runtime: the tokenizer's ids in, the model's token states
/// mean-pooled over the attention mask and scaled to unit length out — the computation
/// fastembed's `TextEmbedding` does for these models, step for step, so the vectors are the
/// ones it gave (checked bit for bit on 3,052 texts of the labelled sets when this replaced
/// it). memesh runs the session itself because fastembed keeps the session private and gives
/// every session its own copy of the tokenizer: ~283 MiB each for e5's vocabulary.
pub struct OnnxBackend {
    session: Session,
    tokenizer: Arc<ModelTokenizer>,
    /// The output holding the token states (or already pooled sentence vectors).
    output: String,
    /// Whether the graph reads `token_type_ids` (BERT does, XLM-R does not).
    type_ids: bool,
    max_tokens: usize,
}

impl OnnxBackend {
    pub fn load(
        files: &ModelFiles,
        runtime: &RuntimeLibrary,
        tokenizer: Arc<ModelTokenizer>,
        threads: usize,
    ) -> anyhow::Result<OnnxBackend> {
        return_freed_memory();
        let environment = runtime.load()?;
        let fail =
            |e: ort::Error<SessionBuilder>| anyhow::anyhow!("loading the embedding model: {e}");
        // ONNX Runtime's pool threads spin between operators by default: on a small machine
        // they take the cores the server's own threads need, and a search then waits for the
        // scheduler. Not spinning: search p99 6.7 ms instead of 10.6-12.8 ms (2 cores, 100k
        // memories), write throughput the same within noise.
        let session = Session::builder(&environment)
            .map_err(|e| anyhow::anyhow!("loading the embedding model: {e}"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(fail)?
            .with_intra_threads(threads.max(1))
            .map_err(fail)?
            .with_config_entry("session.intra_op.allow_spinning", "0")
            .map_err(fail)?
            .commit_from_memory(&files.read("model.onnx")?)
            .map_err(|e| anyhow::anyhow!("loading the embedding model: {e}"))?;
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let output = if names.len() == 1 {
            names[0]
        } else {
            ["text_embeds", "last_hidden_state", "sentence_embedding"]
                .into_iter()
                .find(|n| names.contains(n))
                .with_context(|| format!("the model has no output to pool (it has {names:?})"))?
        }
        .to_owned();
        let type_ids = session
            .inputs()
            .iter()
            .any(|i| i.name() == "token_type_ids");
        trim_freed_memory();
        Ok(OnnxBackend {
            session,
            tokenizer,
            output,
            type_ids,
            max_tokens: files.model.max_tokens,
        })
    }

    /// Each text's encoding.
    fn encode(&self, texts: &[String]) -> anyhow::Result<Vec<Encoding>> {
        texts.iter().map(|t| self.tokenizer.encode(t)).collect()
    }

    /// One model call: unit vectors of `group`'s encodings, padded to the longest of them.
    fn run(&mut self, group: &[&Encoding]) -> anyhow::Result<Vec<Vec<f32>>> {
        let rows = group.len();
        let width = group.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![i64::from(self.tokenizer.pad_id); rows * width];
        let mut mask = vec![0i64; rows * width];
        let mut types = vec![0i64; rows * width];
        for (r, e) in group.iter().enumerate() {
            let at = r * width;
            for (j, ((&id, &m), &t)) in e
                .get_ids()
                .iter()
                .zip(e.get_attention_mask())
                .zip(e.get_type_ids())
                .enumerate()
            {
                ids[at + j] = i64::from(id);
                mask[at + j] = i64::from(m);
                types[at + j] = i64::from(t);
            }
        }
        let shape = [rows, width];
        let mut inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape, ids))?,
            "attention_mask" => Tensor::from_array((shape, mask.clone()))?,
        ];
        if self.type_ids {
            inputs.push((
                "token_type_ids".into(),
                Tensor::from_array((shape, types))?.into(),
            ));
        }
        let outputs = self.session.run(inputs)?;
        let (dims, data) = outputs[self.output.as_str()].try_extract_tensor::<f32>()?;
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let pooled: Vec<Vec<f32>> = match dims[..] {
            [r, dim] if r == rows => data.chunks(dim).map(<[f32]>::to_vec).collect(),
            [r, w, dim] if r == rows && w == width => (0..rows)
                .map(|r| {
                    mean_pool(
                        &data[r * width * dim..(r + 1) * width * dim],
                        &mask[r * width..(r + 1) * width],
                        dim,
                    )
                })
                .collect(),
            _ => bail!("the model returned a {dims:?} output for {rows} texts of {width} tokens"),
        };
        Ok(pooled.iter().map(|v| unit(v)).collect())
    }
}

/// The mean of the token states the attention mask keeps, summed in token order as fastembed
/// (ndarray's `sum_axis`) sums them.
fn mean_pool(states: &[f32], mask: &[i64], dim: usize) -> Vec<f32> {
    let mut sum = vec![0f32; dim];
    let mut count = 0f32;
    for (token, &m) in states.chunks(dim).zip(mask) {
        let m = m as f32;
        for (s, &x) in sum.iter_mut().zip(token) {
            *s += m * x;
        }
        count += m;
    }
    let count = if count == 0.0 { 1.0 } else { count };
    sum.iter().map(|s| s / count).collect()
}

/// `v` scaled to unit length (fastembed's `normalize`, epsilon included).
fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|&x| x / (norm + 1e-12)).collect()
}

/// Groups of indexes into `lens` (token counts), shortest first, each at most `ORT_BATCH`
/// texts and `TOKENS_PER_CALL` padded tokens: similar lengths pad little, and a call's
/// activations (which ONNX Runtime's arena keeps at their peak size) stay bounded however long
/// the texts are.
fn plan_calls(lens: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    let len = |i: usize| lens[i].clamp(1, max_tokens);
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| len(i));
    let mut out: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match out.last_mut() {
            Some(g) if g.len() < ORT_BATCH && (g.len() + 1) * len(i) <= TOKENS_PER_CALL => {
                g.push(i)
            }
            _ => out.push(vec![i]),
        }
    }
    out
}

impl EmbedBackend for OnnxBackend {
    fn plan(&mut self, texts: &[String]) -> Vec<Vec<usize>> {
        match self.encode(texts) {
            Ok(encoded) => {
                let lens: Vec<usize> = encoded.iter().map(Encoding::len).collect();
                plan_calls(&lens, self.max_tokens)
            }
            // `embed` reports the error.
            Err(_) => vec![(0..texts.len()).collect()],
        }
    }

    /// Embeds `texts` in the calls [`plan_calls`] makes of them.
    fn embed(&mut self, texts: &[String]) -> anyhow::Result<Vec<Embedding>> {
        let encoded = self.encode(texts)?;
        let lens: Vec<usize> = encoded.iter().map(Encoding::len).collect();
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for group in plan_calls(&lens, self.max_tokens) {
            let call: Vec<&Encoding> = group.iter().map(|&i| &encoded[i]).collect();
            let out = self.run(&call)?;
            for (&i, v) in group.iter().zip(out) {
                vectors[i] = Some(v);
            }
        }
        vectors
            .into_iter()
            .zip(encoded)
            .map(|(vector, encoding)| {
                let vector = vector.unwrap_or_default();
                if vector.len() != MODEL_DIM {
                    bail!(
                        "the model returned {} dimensions, expected {MODEL_DIM}",
                        vector.len()
                    );
                }
                Ok(Embedding {
                    vector,
                    tokens: encoding.len(),
                    truncated: !encoding.get_overflowing().is_empty(),
                })
            })
            .collect()
    }
}
