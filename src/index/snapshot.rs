//! Index snapshots on disk: each partition (rows, codes, scales, graph) in one file, so a
//! restart loads arrays instead of re-reading every vector from SQLite and rebuilding graphs.
//!
//! Written so a crash at any moment leaves either the old snapshot or the new one: files go
//! into a fresh generation directory and are fsynced, and only then does an atomically renamed
//! manifest point at them. A partition unchanged since the last snapshot is hard-linked, not
//! rewritten. Loading checks each file's size and CRC in the pass that parses it, and every
//! structural invariant; a file that fails is skipped (its rows are read from SQLite instead),
//! never trusted. SQLite stays the source of truth: rows the snapshot holds that SQLite no
//! longer has are dropped, and rows it lacks are added, by [`VectorIndex::restore`].

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::graph::Graph;
use super::io::{self, CrcReader, CrcWriter};
use super::partition::Partition;
use super::{OwnerKey, RowId, VectorIndex, read, upkeep_guard};

const MANIFEST: &str = "manifest.json";
/// 1 was hnsw_rs dumps; 2 is partitions of codes with the built-in graph.
const FORMAT: u32 = 2;
const MAGIC: &[u8; 8] = b"MMPART2\0";
/// Slots written per hold of a partition's read lock.
const WRITE_CHUNK: usize = 16_384;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    model: String,
    dim: usize,
    generation: u64,
    partitions: Vec<PartitionEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartitionEntry {
    owner: String,
    file: String,
    version: u64,
    slots: usize,
    size: u64,
    crc32: u32,
}

fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

fn read_manifest(dir: &Path) -> anyhow::Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn generation_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("gen-{generation}"))
}

/// Writes one partition to `path` and fsyncs it. The rows, creation times, live flags and
/// graph are taken together under the read lock; codes and scales (append-only, and not
/// compacted while the upkeep lock is held) follow in chunks, so writers wait only briefly.
fn write_partition(
    index: &VectorIndex,
    part: &std::sync::RwLock<Partition>,
    path: &Path,
) -> anyhow::Result<(u64, usize, u64, u32)> {
    let dim = index.config.dim;
    let (n, version, rows, created, live, graph) = {
        let p = read(part);
        (
            p.slots(),
            p.version,
            p.rows.clone(),
            p.created.clone(),
            p.live.iter().map(|&l| u8::from(l)).collect::<Vec<u8>>(),
            p.graph.clone(),
        )
    };
    let file = crate::private::create_file(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut w = CrcWriter::new(BufWriter::with_capacity(1 << 20, file));
    w.write_all(MAGIC)?;
    for v in [dim as u64, n as u64, version] {
        io::write_u64(&mut w, v)?;
    }
    io::write_slice(&mut w, &rows)?;
    io::write_slice(&mut w, &created)?;
    io::write_slice(&mut w, &live)?;
    for start in (0..n).step_by(WRITE_CHUNK) {
        let end = (start + WRITE_CHUNK).min(n);
        io::write_slice(&mut w, &read(part).scales[start..end])?;
    }
    for start in (0..n).step_by(WRITE_CHUNK) {
        let end = (start + WRITE_CHUNK).min(n);
        io::write_slice(&mut w, &read(part).codes[start * dim..end * dim])?;
    }
    match &graph {
        Some(g) => {
            io::write_u64(&mut w, 1)?;
            g.write_to(&mut w)?;
        }
        None => io::write_u64(&mut w, 0)?,
    }
    let (buffered, size, crc) = w.finish();
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((version, n, size, crc))
}

/// Reads one partition file, checking it against its manifest entry as it goes.
fn read_partition(path: &Path, entry: &PartitionEntry, dim: usize) -> anyhow::Result<Partition> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    if size != entry.size {
        bail!("its size does not match the manifest (torn or truncated)");
    }
    let mut r = CrcReader::new(BufReader::with_capacity(1 << 20, file), size);
    let mut magic = [0u8; 8];
    std::io::Read::read_exact(&mut r, &mut magic)?;
    if &magic != MAGIC {
        bail!("not a partition file");
    }
    let (stored_dim, n, version) = (
        io::read_u64(&mut r)?,
        io::read_u64(&mut r)?,
        io::read_u64(&mut r)?,
    );
    if stored_dim != dim as u64 || n != entry.slots as u64 || version != entry.version {
        bail!("its header does not match the manifest");
    }
    let n = entry.slots;
    let rows: Vec<RowId> = io::read_vec(&mut r, n)?;
    let created: Vec<i64> = io::read_vec(&mut r, n)?;
    let live: Vec<u8> = io::read_vec(&mut r, n)?;
    let scales: Vec<f32> = io::read_vec(&mut r, n)?;
    let codes: Vec<i8> = io::read_vec(&mut r, n * dim)?;
    let graph = match io::read_u64(&mut r)? {
        0 => None,
        1 => Some(Graph::read_from(&mut r, dim)?),
        _ => bail!("bad graph marker"),
    };
    if !r.at_end()? || r.bytes_read() != entry.size || r.crc() != entry.crc32 {
        bail!("its contents do not match the manifest's CRC (corrupt)");
    }
    if graph.as_ref().is_some_and(|g| g.len() > n) {
        bail!("its graph holds more nodes than it has slots");
    }
    if scales.iter().any(|s| !s.is_finite() || *s <= 0.0) || live.iter().any(|&l| l > 1) {
        bail!("it holds an invalid scale or live flag");
    }
    let mut pos = HashMap::with_capacity(n);
    let mut dead = 0;
    for (i, (&row, &l)) in rows.iter().zip(&live).enumerate() {
        if l == 1 {
            if pos.insert(row, i as u32).is_some() {
                bail!("row {row} appears twice");
            }
        } else {
            dead += 1;
        }
    }
    Ok(Partition {
        rows,
        created,
        codes,
        scales,
        live: live.into_iter().map(|l| l == 1).collect(),
        pos,
        dead,
        graph: graph.map(Arc::new),
        version,
    })
}

/// Makes a fully written `staging` generation the current one: renames it into place, then
/// atomically replaces the manifest, then removes older generations.
fn publish(dir: &Path, staging: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    fsync_dir(staging)?;
    let final_dir = generation_dir(dir, manifest.generation);
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(staging, &final_dir)?;
    fsync_dir(dir)?;
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let mut f = crate::private::create_file(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(manifest)?)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(MANIFEST))?;
    fsync_dir(dir)?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.starts_with("gen-") && path != final_dir {
            let _ = fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

/// Writes every partition as a new generation (hard-linking the files of partitions unchanged
/// since the last one), then switches the manifest to it and removes older generations. Holds
/// the upkeep lock, so no graph changes and no compaction happens while it is written.
pub fn save(index: &VectorIndex, dir: &Path, model: &str) -> anyhow::Result<()> {
    let _upkeep = upkeep_guard(index);
    crate::private::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let previous = read_manifest(dir)
        .ok()
        .flatten()
        .filter(|m| m.format == FORMAT && m.model == model && m.dim == index.config.dim);
    let generation = previous.as_ref().map_or(0, |m| m.generation) + 1;
    let reusable: HashMap<&str, &PartitionEntry> = previous
        .iter()
        .flat_map(|m| m.partitions.iter().map(|e| (e.owner.as_str(), e)))
        .collect();
    let previous_dir = previous.as_ref().map(|m| generation_dir(dir, m.generation));
    let staging = dir.join(format!("gen-{generation}.tmp"));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    crate::private::create_dir(&staging)?;
    let (mut written, mut linked) = (0, 0);
    let mut partitions = Vec::new();
    for (n, (owner, part)) in index.all_partitions().into_iter().enumerate() {
        let file = format!("p{n}.part");
        let version = read(&part).version;
        let unchanged = reusable
            .get(owner.as_str())
            .filter(|e| e.version == version)
            .zip(previous_dir.as_ref())
            .filter(|(e, prev)| fs::hard_link(prev.join(&e.file), staging.join(&file)).is_ok());
        let entry = match unchanged {
            Some((e, _)) => {
                linked += 1;
                PartitionEntry {
                    file,
                    ..(*e).clone()
                }
            }
            None => {
                let (version, slots, size, crc32) =
                    write_partition(index, &part, &staging.join(&file))?;
                written += 1;
                PartitionEntry {
                    owner: owner.as_str().to_owned(),
                    file,
                    version,
                    slots,
                    size,
                    crc32,
                }
            }
        };
        partitions.push(entry);
    }
    let manifest = Manifest {
        format: FORMAT,
        model: model.to_owned(),
        dim: index.config.dim,
        generation,
        partitions,
    };
    publish(dir, &staging, &manifest)?;
    tracing::info!(generation, written, linked, "index snapshot written");
    Ok(())
}

/// A partition read from the snapshot, not yet installed.
pub struct LoadedPartition {
    pub(super) owner: OwnerKey,
    pub(super) partition: Partition,
}

/// What reading the snapshot found.
#[derive(Default)]
pub struct LoadReport {
    pub partitions: Vec<LoadedPartition>,
    pub skipped: Vec<String>,
}

/// Reads every partition of the current snapshot, checking each as it is read. Independent of
/// the index, so it can run while the model loads and SQLite is listed.
pub fn load(dir: &Path, model: &str, dim: usize) -> anyhow::Result<LoadReport> {
    let mut report = LoadReport::default();
    let manifest = match read_manifest(dir) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(report),
        Err(e) => {
            report.skipped.push(format!("{e:#}"));
            return Ok(report);
        }
    };
    if manifest.format != FORMAT || manifest.model != model || manifest.dim != dim {
        report.skipped.push(format!(
            "the snapshot is format {} for model {} ({}d); ignoring it",
            manifest.format, manifest.model, manifest.dim
        ));
        return Ok(report);
    }
    let gen_dir = generation_dir(dir, manifest.generation);
    let mut seen = HashSet::new();
    for entry in &manifest.partitions {
        let loaded = OwnerKey::parse(&entry.owner)
            .filter(|o| seen.insert(o.clone()))
            .context("a malformed or repeated owner in the manifest")
            .and_then(|owner| {
                let partition = read_partition(&gen_dir.join(&entry.file), entry, dim)?;
                Ok(LoadedPartition { owner, partition })
            });
        match loaded {
            Ok(p) => report.partitions.push(p),
            Err(e) => report.skipped.push(format!("{}: {e:#}", entry.file)),
        }
    }
    Ok(report)
}

/// What [`VectorIndex::restore`] did.
#[derive(Debug, Default)]
pub struct Restored {
    /// Partitions taken from the snapshot.
    pub partitions: usize,
    /// Of which with a graph.
    pub graphs: usize,
    /// Snapshot rows SQLite no longer has (deleted after the snapshot).
    pub dropped: usize,
    /// Rows SQLite has that the snapshot lacks: the caller reads and inserts them.
    pub missing: Vec<(OwnerKey, Vec<RowId>)>,
}

impl VectorIndex {
    /// Installs snapshot partitions into an empty index, reconciled with `stored` (every
    /// owner's rows in SQLite): rows SQLite lacks are removed, and the rows the snapshot lacks
    /// are returned for the caller to insert.
    pub fn restore(&self, loaded: LoadReport, stored: &HashMap<OwnerKey, Vec<RowId>>) -> Restored {
        let mut restored = Restored::default();
        let mut partitions = super::write(&self.partitions);
        for LoadedPartition {
            owner,
            mut partition,
        } in loaded.partitions
        {
            let Some(rows) = stored.get(&owner) else {
                restored.dropped += partition.len();
                continue;
            };
            let keep: HashSet<RowId> = rows.iter().copied().collect();
            let gone: Vec<RowId> = partition
                .pos
                .keys()
                .filter(|r| !keep.contains(r))
                .copied()
                .collect();
            for row in &gone {
                partition.remove(*row);
            }
            restored.dropped += gone.len();
            restored.partitions += 1;
            restored.graphs += usize::from(partition.graph.is_some());
            partitions.insert(owner, Arc::new(std::sync::RwLock::new(partition)));
        }
        let mut len = 0;
        for (owner, rows) in stored {
            let missing: Vec<RowId> = match partitions.get(owner) {
                Some(part) => {
                    let p = read(part);
                    len += p.len();
                    rows.iter()
                        .filter(|r| !p.pos.contains_key(r))
                        .copied()
                        .collect()
                }
                None => rows.clone(),
            };
            if !missing.is_empty() {
                restored.missing.push((owner.clone(), missing));
            }
        }
        self.len.store(len, super::RELAXED);
        restored
    }
}
