//! `memesh backup PATH` and `memesh restore PATH`: consistent online snapshots.
//!
//! A backup is a directory: `memesh.db`, copied with SQLite's online backup API in one step
//! (one read transaction: a consistent image of the database at one commit, taken while the
//! server keeps writing — WAL readers do not block the writer, nor it them), the index
//! snapshot files as they are on disk (`index/`), and `MANIFEST.json` (when, what, and each
//! tenant's audit head at the backup's point). The database is the truth: a server started on a
//! restored directory reconciles the index with it (the snapshot only saves re-embedding and
//! rebuilding), so a snapshot older or newer than the database is harmless.
//!
//! `restore` refuses a non-empty data directory, checks the backup (SQLite's integrity check
//! and every tenant's audit hash chain) before it copies anything, and copies through
//! temporary names renamed into place.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

const DB_FILE: &str = "memesh.db";
const INDEX_DIR: &str = "index";
const MANIFEST: &str = "MANIFEST.json";

fn is_empty_dir(p: &Path) -> anyhow::Result<bool> {
    Ok(!p.exists() || std::fs::read_dir(p)?.next().is_none())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let mut files = 0;
    if !from.exists() {
        return Ok(0);
    }
    crate::private::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            files += copy_dir(&entry.path(), &target)?;
        } else if !name.to_string_lossy().ends_with(".tmp") {
            crate::private::copy_file(&entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
            files += 1;
        }
    }
    Ok(files)
}

/// Every tenant's newest audit sequence and hash, and the count of memories.
fn facts(conn: &Connection) -> anyhow::Result<serde_json::Value> {
    let memories: i64 = conn.query_row("SELECT COUNT(*) FROM memories", [], |r| r.get(0))?;
    let mut heads = serde_json::Map::new();
    let mut stmt = conn.prepare(
        "SELECT tenant_id, seq, hash FROM audit_log a
         WHERE seq = (SELECT MAX(seq) FROM audit_log b WHERE b.tenant_id = a.tenant_id)",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (tenant, seq, hash) = row?;
        heads.insert(tenant, json!({ "seq": seq, "hash": hash }));
    }
    Ok(json!({ "memories": memories, "auditHeads": heads }))
}

/// Takes a backup of the data directory `data` into `dest` (which must not exist or be empty).
pub fn backup(data: &Path, dest: &Path) -> anyhow::Result<serde_json::Value> {
    let source = data.join(DB_FILE);
    if !source.exists() {
        bail!("no database at {}", source.display());
    }
    if !is_empty_dir(dest)? {
        bail!(
            "{} is not empty; a backup goes into a new directory",
            dest.display()
        );
    }
    crate::private::create_dir(dest)?;
    let src = Connection::open_with_flags(&source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(std::time::Duration::from_secs(30))?;
    let tmp = dest.join(format!("{DB_FILE}.tmp"));
    // Made owner-only first: SQLite keeps an existing file's mode.
    crate::private::create_file(&tmp)?;
    let mut dst = Connection::open(&tmp)?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // All pages in one step: one read transaction, one commit's image.
        loop {
            match b.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => {}
            }
        }
    }
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    let facts = facts(&dst)?;
    drop(dst);
    std::fs::rename(&tmp, dest.join(DB_FILE))?;
    let index_files = copy_dir(&data.join(INDEX_DIR), &dest.join(INDEX_DIR))?;
    let manifest = json!({
        "format": 1,
        "memeshVersion": env!("CARGO_PKG_VERSION"),
        "schemaVersion": crate::db::schema_version(),
        "takenAt": crate::clock::Timestamp(
            i64::try_from(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()))
            .unwrap_or(0),
        ),
        "indexFiles": index_files,
        "database": facts,
    });
    crate::private::write_file(&dest.join(MANIFEST), &serde_json::to_vec_pretty(&manifest)?)?;
    Ok(manifest)
}

/// Restores the backup at `from` into the empty data directory `data`.
pub fn restore(from: &Path, data: &Path) -> anyhow::Result<serde_json::Value> {
    let db = from.join(DB_FILE);
    if !db.exists() || !from.join(MANIFEST).exists() {
        bail!(
            "{} is not a memesh backup (no {DB_FILE} or {MANIFEST})",
            from.display()
        );
    }
    if !is_empty_dir(data)? {
        bail!(
            "{} is not empty; restore into a new data directory (and point the server at it)",
            data.display()
        );
    }
    {
        let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            bail!("the backup's database fails SQLite's integrity check: {check}");
        }
        let audit = crate::audit::store::verify(&conn)?;
        if let Some(b) = audit.broken.first() {
            bail!(
                "the backup's audit chain is broken in tenant {} at sequence {}: {}",
                b.tenant_id,
                b.seq,
                b.reason
            );
        }
    }
    crate::private::create_dir(data)?;
    let staged: PathBuf = data.join(format!("{DB_FILE}.restoring"));
    crate::private::copy_file(&db, &staged)?;
    copy_dir(&from.join(INDEX_DIR), &data.join(INDEX_DIR))?;
    std::fs::rename(&staged, data.join(DB_FILE))?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(from.join(MANIFEST))?)?;
    Ok(manifest)
}
