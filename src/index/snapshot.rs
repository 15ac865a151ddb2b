//! Graph snapshots on disk, written so a crash at any moment leaves either the old snapshot or
//! the new one: files go into a fresh generation directory, are fsynced, and only then does an
//! atomically renamed manifest point at them. Loading checks sizes and CRCs before hnsw_rs sees
//! a byte; anything wrong is skipped (and that graph rebuilt) rather than trusted.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::graph::Graph;
use super::{OwnerKey, RowId, VectorIndex, read, upkeep_guard, write};

const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    model: String,
    dim: usize,
    generation: u64,
    graphs: Vec<GraphEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct GraphEntry {
    owner: String,
    basename: String,
    points: usize,
    files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    size: u64,
    crc32: u32,
}

fn crc_of(path: &Path) -> anyhow::Result<(u64, u32)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hasher.finalize()))
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

/// Dumps every partition's graph, with the rows it holds, into `staging`; fsyncs each file and
/// records its size and CRC.
fn write_graphs(index: &VectorIndex, staging: &Path) -> anyhow::Result<Vec<GraphEntry>> {
    let mut graphs = Vec::new();
    for (n, (owner, part)) in index.all_partitions().into_iter().enumerate() {
        let (graph, mut members) = {
            let p = read(&part);
            let Some(g) = &p.graph else { continue };
            (
                g.clone(),
                p.in_graph.iter().copied().collect::<Vec<RowId>>(),
            )
        };
        members.sort_unstable();
        let basename = format!("p{n}");
        graph.dump(staging, &basename)?;
        let ids_name = format!("{basename}.ids");
        let mut ids = File::create(staging.join(&ids_name))?;
        let bytes: Vec<u8> = members.iter().flat_map(|r| r.to_le_bytes()).collect();
        ids.write_all(&bytes)?;
        ids.sync_all()?;
        let mut files = Vec::new();
        for name in [
            format!("{basename}.hnsw.graph"),
            format!("{basename}.hnsw.data"),
            ids_name,
        ] {
            let path = staging.join(&name);
            File::open(&path)?.sync_all()?;
            let (size, crc32) = crc_of(&path)?;
            files.push(FileEntry { name, size, crc32 });
        }
        graphs.push(GraphEntry {
            owner: owner.as_str().to_owned(),
            basename,
            points: members.len(),
            files,
        });
    }
    Ok(graphs)
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
    let mut f = File::create(&tmp)?;
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

/// Writes every graph (and which rows each holds) as a new generation, then switches the
/// manifest to it and removes older generations. Holds the upkeep lock, so no graph changes
/// while it is written.
pub fn save(index: &VectorIndex, dir: &Path, model: &str) -> anyhow::Result<()> {
    let _upkeep = upkeep_guard(index);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let previous = read_manifest(dir)
        .ok()
        .flatten()
        .map_or(0, |m| m.generation);
    let generation = previous + 1;
    let staging = dir.join(format!("gen-{generation}.tmp"));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    let manifest = Manifest {
        format: FORMAT,
        model: model.to_owned(),
        dim: index.config.dim,
        generation,
        graphs: write_graphs(index, &staging)?,
    };
    publish(dir, &staging, &manifest)?;
    tracing::info!(
        generation,
        graphs = manifest.graphs.len(),
        "index snapshot written"
    );
    Ok(())
}

/// A graph read from the snapshot, not yet installed.
pub struct LoadedGraph {
    owner: OwnerKey,
    graph: Graph,
    members: HashSet<RowId>,
}

/// What reading the snapshot found.
#[derive(Default)]
pub struct LoadReport {
    pub graphs: Vec<LoadedGraph>,
    pub skipped: Vec<String>,
}

/// Reads every graph of the current snapshot, checking each file against the manifest first.
/// Independent of the partitions, so it can run while they are filled from SQLite.
pub fn read_graphs(dir: &Path, model: &str, dim: usize) -> anyhow::Result<LoadReport> {
    let mut report = LoadReport::default();
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(report);
    };
    if manifest.format != FORMAT || manifest.model != model || manifest.dim != dim {
        report.skipped.push(format!(
            "snapshot is for model {} ({}d); ignoring it",
            manifest.model, manifest.dim
        ));
        return Ok(report);
    }
    let gen_dir = generation_dir(dir, manifest.generation);
    for entry in &manifest.graphs {
        match load_one(&gen_dir, entry) {
            Ok((owner, graph, members)) => report.graphs.push(LoadedGraph {
                owner,
                graph,
                members,
            }),
            Err(e) => report.skipped.push(format!("{}: {e:#}", entry.owner)),
        }
    }
    Ok(report)
}

/// Installs graphs into the (already filled) partitions. Rows a graph holds that SQLite no
/// longer has become tombstones; rows SQLite has that the graph lacks become pending: the
/// index matches SQLite whatever the snapshot's age. Returns how many were installed.
pub fn install(index: &VectorIndex, graphs: Vec<LoadedGraph>, skipped: &mut Vec<String>) -> usize {
    let mut installed = 0;
    for g in graphs {
        match index.partition(&g.owner) {
            Some(part) => {
                write(&part).install_graph(Arc::new(g.graph), g.members);
                installed += 1;
            }
            None => skipped.push(format!("{}: owner has no memories left", g.owner.as_str())),
        }
    }
    installed
}

fn load_one(
    gen_dir: &Path,
    entry: &GraphEntry,
) -> anyhow::Result<(OwnerKey, Graph, HashSet<RowId>)> {
    let owner = OwnerKey::parse(&entry.owner).context("malformed owner in manifest")?;
    for f in &entry.files {
        let (size, crc32) = crc_of(&gen_dir.join(&f.name))?;
        if size != f.size || crc32 != f.crc32 {
            bail!("{} does not match the manifest (torn or corrupt)", f.name);
        }
    }
    let ids = fs::read(gen_dir.join(format!("{}.ids", entry.basename)))?;
    let members: HashSet<RowId> = ids
        .chunks_exact(8)
        .map(|c| RowId::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect();
    if members.len() != entry.points {
        bail!(
            "ids file holds {} rows, manifest says {}",
            members.len(),
            entry.points
        );
    }
    let graph = Graph::load(gen_dir, &entry.basename)?;
    if graph.points() != entry.points {
        bail!(
            "graph holds {} points, manifest says {}",
            graph.points(),
            entry.points
        );
    }
    Ok((owner, graph, members))
}
