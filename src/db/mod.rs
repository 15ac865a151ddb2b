//! The SQLite store: one pooled database file, its pragmas, embedded migrations, and the
//! `read`/`write` helpers that run every statement off the async runtime.

mod decode;
pub mod fts;
mod migrations;
mod writer;

use std::cell::RefCell;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::error::{ApiError, ApiResult, Code};

pub use decode::{Decoded, unknown_value};
pub use migrations::latest_version;

/// How long a writer waits for SQLite's write lock before giving up with 503.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Db {
    /// Readers' connections.
    pool: Pool<SqliteConnectionManager>,
    /// The writer thread's queue: every mutation of a serving process goes through it.
    writer: writer::Queue,
    /// Moves whenever a committed change touches who may authenticate (a key revoked, a member
    /// demoted or removed): caches of authentication are valid only within one epoch.
    auth_epoch: Arc<AtomicU64>,
}

/// Something to do once the transaction that asked for it has committed (and never if it did
/// not): an in-memory structure kept in step with what SQLite now holds.
type Effect = Box<dyn FnOnce() + Send>;

/// A write transaction (one mutation's savepoint within it, on the writer thread), the effects
/// that follow its commit, and the audit chains' heads as this transaction has moved them.
pub struct Tx<'c> {
    tx: Transaction<'c>,
    effects: RefCell<Vec<Effect>>,
    heads: RefCell<Heads>,
    auth_epoch: Arc<AtomicU64>,
}

/// The newest (sequence, hash) of each tenant's audit chain, kept by the writer so appending a
/// row needs no query for its predecessor. Changes made by a mutation that rolls back are undone.
#[derive(Default)]
pub struct Heads {
    known: std::collections::HashMap<String, (i64, String)>,
    /// (tenant, its head before the change) for every change since the transaction began.
    undo: Vec<(String, Option<(i64, String)>)>,
}

impl Heads {
    /// Forgets every head: the next append reads its tenant's head from the table.
    fn forget(&mut self) {
        self.known.clear();
        self.undo.clear();
    }

    fn mark(&self) -> usize {
        self.undo.len()
    }

    /// Undoes every change made since `mark`.
    fn rewind(&mut self, mark: usize) {
        while self.undo.len() > mark {
            let Some((tenant, before)) = self.undo.pop() else {
                break;
            };
            match before {
                Some(head) => self.known.insert(tenant, head),
                None => self.known.remove(&tenant),
            };
        }
    }
}

impl<'c> Deref for Tx<'c> {
    type Target = Transaction<'c>;

    fn deref(&self) -> &Transaction<'c> {
        &self.tx
    }
}

impl<'c> Tx<'c> {
    fn begin(
        conn: &'c mut Connection,
        heads: Heads,
        auth_epoch: Arc<AtomicU64>,
    ) -> ApiResult<Tx<'c>> {
        Ok(Tx {
            tx: conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(busy_or_internal)?,
            effects: RefCell::new(Vec::new()),
            heads: RefCell::new(heads),
            auth_epoch,
        })
    }

    /// Says that this change touches who may authenticate (keys, roles, members): once it has
    /// committed, every cached authentication is stale.
    pub fn auth_changed(&self) {
        let epoch = self.auth_epoch.clone();
        self.after_commit(move || {
            epoch.fetch_add(1, Ordering::SeqCst);
        });
    }

    /// Runs `effect` after this transaction commits, in commit order with every other
    /// transaction's effects; if it (or the mutation that asked) rolls back, `effect` is dropped
    /// unrun.
    pub fn after_commit(&self, effect: impl FnOnce() + Send + 'static) {
        self.effects.borrow_mut().push(Box::new(effect));
    }

    /// The newest (sequence, hash) of `tenant`'s audit chain: from the writer's memory, or read
    /// once from the table.
    pub fn audit_head(
        &self,
        tenant: &str,
        read: impl FnOnce() -> ApiResult<Option<(i64, String)>>,
    ) -> ApiResult<Option<(i64, String)>> {
        if let Some(head) = self.heads.borrow().known.get(tenant) {
            return Ok(Some(head.clone()));
        }
        read()
    }

    /// Records that `tenant`'s chain now ends at (`seq`, `hash`).
    pub fn set_audit_head(&self, tenant: &str, seq: i64, hash: String) {
        let mut heads = self.heads.borrow_mut();
        let before = heads.known.insert(tenant.to_owned(), (seq, hash));
        heads.undo.push((tenant.to_owned(), before));
    }

    /// Commits; on success runs the effects in order. Returns the audit heads as they now are
    /// (as they were before, if the commit failed).
    fn finish(self) -> (ApiResult<()>, Heads) {
        let Tx {
            tx, effects, heads, ..
        } = self;
        let mut heads = heads.into_inner();
        match tx.commit() {
            Ok(()) => {
                for effect in effects.into_inner() {
                    effect();
                }
                heads.undo.clear();
                (Ok(()), heads)
            }
            Err(e) => {
                heads.rewind(0);
                (Err(busy_or_internal(e)), heads)
            }
        }
    }
}

/// How hard a commit is pushed to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Every commit is fsynced: a 2xx survives a power loss (the default).
    Full,
    /// Commits are fsynced at checkpoints only: a 2xx survives a crash of memesh, but the last
    /// commits can be lost if the machine loses power. Several times more write throughput.
    Normal,
}

/// Pragmas for every connection.
/// - WAL: readers never block the writer and a crash never leaves a half-written page.
/// - synchronous=FULL by default: in WAL mode, NORMAL can lose the last commits on power loss
///   (not on a process crash). A 2xx promises durability, so every commit is fsynced; writers
///   batch work into one transaction per request, so this costs one fsync per mutation, not per
///   row. Operators who prefer throughput choose `--durability normal`.
/// - foreign_keys=ON: SQLite's default is OFF, per connection.
/// - busy_timeout: concurrent writers queue instead of failing with SQLITE_BUSY at once.
/// - the query planner stability guarantee (QPSG): statements are planned once.
fn configure(conn: &mut Connection, durability: Durability) -> rusqlite::Result<()> {
    fts::register(conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Every statement memesh runs, parsed once per connection (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(256);
    // The plan does not depend on bound values. Without this, a statement whose planning
    // looks at a parameter (a bound `LIMIT ?`, a `LIKE ?` pattern) is parsed again each time
    // it is bound: 14% of a queue cycle went to re-parsing the pending list's query.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        Db::open_with(path, Durability::Full)
    }

    pub fn open_with(path: &Path, durability: Durability) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent() {
            crate::private::create_dir(dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        if !path.exists() {
            // Owner-only from the start; SQLite gives its WAL and shared-memory files the
            // database file's mode.
            crate::private::create_file(path)
                .with_context(|| format!("creating database {}", path.display()))?;
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        configure(&mut conn, durability)?;
        migrations::apply(&mut conn)
            .with_context(|| format!("migrating database {}", path.display()))?;
        fts::rebuild_pending(&mut conn)
            .with_context(|| format!("rebuilding the full-text index of {}", path.display()))?;
        drop(conn);

        let manager = SqliteConnectionManager::file(path)
            .with_init(move |c: &mut Connection| configure(c, durability));
        let pool = Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .context("building the database connection pool")?;
        let mut write_conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        configure(&mut write_conn, durability)?;
        // Every mutation runs in a savepoint, whose sub-journal (the pages it changed, as they
        // were) otherwise spills to a new temporary file past 64 KiB: a quarter of the writer's
        // time in a queue cycle went to creating and writing those files. In memory it holds
        // at most the pages one group of mutations changed.
        write_conn.pragma_update(None, "temp_store", "MEMORY")?;
        let auth_epoch = Arc::new(AtomicU64::new(0));
        Ok(Db {
            pool,
            writer: writer::start(write_conn, auth_epoch.clone())?,
            auth_epoch,
        })
    }

    fn conn(&self) -> ApiResult<r2d2::PooledConnection<SqliteConnectionManager>> {
        self.pool.get().map_err(|e| {
            tracing::error!(error = %e, "database pool exhausted");
            ApiError::new(Code::Unavailable, "database busy; retry shortly")
        })
    }

    /// Runs `f` on a pooled connection, on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> ApiResult<T> + Send + 'static,
    {
        let db = self.clone();
        run_blocking(move || db.read_blocking(f)).await
    }

    /// Runs `f` as one mutation on the writer thread: in its own savepoint inside a transaction
    /// that commits a group of mutations with one fsync. If `f` fails, only its own changes are
    /// rolled back; if it succeeds, it is answered once its group has committed (never before),
    /// and the effects it registered run then, in commit order. Everything a mutation writes
    /// (its rows and its audit row) goes through one call, so it is all or nothing.
    pub async fn write<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> ApiResult<T> + Send + 'static,
    {
        self.writer
            .submit(f)?
            .await
            .map_err(|_| writer::stopped())?
    }

    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> ApiResult<T>) -> ApiResult<T> {
        let conn = self.conn()?;
        f(&conn)
    }

    /// One transaction on a connection of its own, outside the writer thread: for start-up and
    /// operator commands (bootstrap, `memesh reindex`), never while requests are served.
    pub fn write_blocking<T>(&self, f: impl FnOnce(&Tx<'_>) -> ApiResult<T>) -> ApiResult<T> {
        let mut conn = self.conn()?;
        let tx = Tx::begin(&mut conn, Heads::default(), self.auth_epoch.clone())?;
        let value = f(&tx)?;
        tx.finish().0?;
        Ok(value)
    }

    /// The current authentication epoch (see [`Tx::auth_changed`]).
    pub fn auth_epoch(&self) -> u64 {
        self.auth_epoch.load(Ordering::SeqCst)
    }

    /// Folds the WAL back into the main file; called on clean shutdown.
    pub fn checkpoint(&self) {
        let result = self.read_blocking(|c| {
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
        }
    }
}

fn busy_or_internal(e: rusqlite::Error) -> ApiError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            ApiError::new(Code::Unavailable, "database busy; retry shortly")
        }
        _ => ApiError::from(e),
    }
}

/// Runs blocking work (SQLite, hashing) on tokio's blocking pool and turns a panic into a 500.
pub async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("blocking task failed: {e}")))?
}

/// Runs one statement through the connection's statement cache (parsed once, not per call).
pub fn exec<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// The schema version this binary migrates databases to.
pub fn schema_version() -> i64 {
    migrations::latest_version()
}

/// Maps a UNIQUE-constraint violation to a 409 with `code`; a quota a trigger enforces to its
/// own error; anything else stays internal.
pub fn unique_violation_as(e: rusqlite::Error, code: Code, message: &str) -> ApiError {
    const UNIQUE: [i32; 2] = [
        rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE,
        rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
    ];
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if UNIQUE.contains(&f.extended_code) => {
            ApiError::new(code, message)
        }
        _ => ApiError::from(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Effects run after their transaction commits, in commit order, and never for one that
    /// rolled back or whose commit failed.
    #[test]
    fn effects_follow_commits_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("effects.db")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for n in 0..3 {
            let seen = seen.clone();
            db.write_blocking(|tx| {
                tx.after_commit(move || seen.lock().unwrap().push(n));
                Ok(())
            })
            .unwrap();
        }
        let rolled_back = Arc::new(AtomicUsize::new(0));
        let r = rolled_back.clone();
        let failed: ApiResult<()> = db.write_blocking(|tx| {
            tx.after_commit(move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
            Err(ApiError::new(Code::InvalidField, "the mutation is refused"))
        });
        assert!(failed.is_err());
        // A commit that SQLite refuses (a commit hook turning it into a rollback).
        let r = rolled_back.clone();
        let refused = db.write_blocking(|tx| {
            tx.commit_hook(Some(|| true))?;
            tx.after_commit(move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
            Ok(())
        });
        assert!(refused.is_err(), "the commit failed");
        assert_eq!(rolled_back.load(Ordering::SeqCst), 0);
        assert_eq!(*seen.lock().unwrap(), [0, 1, 2]);
    }

    #[test]
    fn durability_chooses_synchronous_on_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        for (durability, expected) in [(Durability::Full, 2), (Durability::Normal, 1)] {
            let db =
                Db::open_with(&dir.path().join(format!("{durability:?}.db")), durability).unwrap();
            let synchronous: i64 = db
                .read_blocking(|c| Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?))
                .unwrap();
            assert_eq!(synchronous, expected, "{durability:?}");
        }
    }
}
