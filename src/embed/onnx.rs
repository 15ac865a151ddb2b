//! A bundled model (see [`super::catalog`]) run by fastembed on ONNX Runtime, loaded from local
//! files only. Every file is checked against the checksums compiled into the binary, and a
//! missing or wrong file is reported with what to do about it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use fastembed::{
    InitOptionsUserDefined, Pooling, QuantizationMode, TextEmbedding, TokenizerFiles,
    UserDefinedEmbeddingModel,
};
use sha2::{Digest, Sha256};

use super::catalog::BundledModel;
use super::{EmbedBackend, Embedding, ModelInfo};

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

    /// Loads the library into the process (once; later calls reuse it).
    fn load(&self) -> anyhow::Result<()> {
        static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let loaded = LOADED.get_or_init(|| {
            ort::init_from(&self.path)
                .map(|_builder| self.path.clone())
                .map_err(|e| format!("{e}"))
        });
        match loaded {
            Ok(_) => Ok(()),
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

/// fastembed's text embedding over the bundled model.
pub struct OnnxBackend {
    model: TextEmbedding,
    max_tokens: usize,
}

impl OnnxBackend {
    pub fn load(
        files: &ModelFiles,
        runtime: &RuntimeLibrary,
        threads: usize,
    ) -> anyhow::Result<(OnnxBackend, ModelInfo)> {
        return_freed_memory();
        runtime.load()?;
        let tokenizer = TokenizerFiles {
            tokenizer_file: files.read("tokenizer.json")?,
            config_file: files.read("config.json")?,
            special_tokens_map_file: files.read("special_tokens_map.json")?,
            tokenizer_config_file: files.read("tokenizer_config.json")?,
        };
        let model = UserDefinedEmbeddingModel::new(files.read("model.onnx")?, tokenizer)
            .with_pooling(Pooling::Mean)
            .with_quantization(QuantizationMode::None);
        // ONNX Runtime's pool threads spin between operators by default: on a small machine
        // they take the cores the server's own threads need, and a search then waits for the
        // scheduler. Not spinning: search p99 6.7 ms instead of 10.6-12.8 ms (2 cores, 100k
        // memories), write throughput the same within noise.
        let bundled = files.model;
        let options = InitOptionsUserDefined::new()
            .with_max_length(bundled.max_tokens)
            .with_intra_threads(threads.max(1))
            .with_session_config("session.intra_op.allow_spinning", "0");
        let model = TextEmbedding::try_new_from_user_defined(model, options)
            .map_err(|e| anyhow::anyhow!("loading the embedding model: {e}"))?;
        trim_freed_memory();
        let info = ModelInfo {
            id: bundled.id.to_owned(),
            dim: bundled.dim,
            max_tokens: bundled.max_tokens,
            query_prefix: bundled.query_prefix,
            passage_prefix: bundled.passage_prefix,
            calibration: bundled.calibration,
        };
        let backend = OnnxBackend {
            model,
            max_tokens: bundled.max_tokens,
        };
        Ok((backend, info))
    }
}

impl OnnxBackend {
    /// Each text's model tokens and whether it is truncated.
    fn encode(&self, texts: &[String]) -> anyhow::Result<Vec<(usize, bool)>> {
        texts
            .iter()
            .map(|t| {
                let e = self
                    .model
                    .tokenizer
                    .encode(t.as_str(), true)
                    .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
                Ok((e.get_ids().len(), !e.get_overflowing().is_empty()))
            })
            .collect()
    }
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
                let lens: Vec<usize> = encoded.iter().map(|e| e.0).collect();
                plan_calls(&lens, self.max_tokens)
            }
            // `embed` reports the error.
            Err(_) => vec![(0..texts.len()).collect()],
        }
    }

    /// Embeds `texts` in the calls [`plan_calls`] makes of them.
    fn embed(&mut self, texts: &[String]) -> anyhow::Result<Vec<Embedding>> {
        let encoded = self.encode(texts)?;
        let lens: Vec<usize> = encoded.iter().map(|e| e.0).collect();
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for group in plan_calls(&lens, self.max_tokens) {
            let slice: Vec<&str> = group.iter().map(|&i| texts[i].as_str()).collect();
            let out = self
                .model
                .embed(&slice, Some(slice.len()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if out.len() != slice.len() {
                bail!(
                    "the model returned {} vectors for {} texts",
                    out.len(),
                    slice.len()
                );
            }
            for (&i, v) in group.iter().zip(out) {
                vectors[i] = Some(v);
            }
        }
        vectors
            .into_iter()
            .zip(encoded)
            .map(|(vector, (tokens, truncated))| {
                let vector = vector.unwrap_or_default();
                if vector.len() != MODEL_DIM {
                    bail!(
                        "the model returned {} dimensions, expected {MODEL_DIM}",
                        vector.len()
                    );
                }
                Ok(Embedding {
                    vector,
                    tokens,
                    truncated,
                })
            })
            .collect()
    }
}
