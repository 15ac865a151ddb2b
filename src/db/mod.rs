//! The SQLite store: one pooled database file, its pragmas, embedded migrations, and the
//! `read`/`write` helpers that run every statement off the async runtime.

mod decode;
mod migrations;

use std::cell::RefCell;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
    pool: Pool<SqliteConnectionManager>,
    /// Held from `BEGIN IMMEDIATE` until a transaction's after-commit effects have run, so the
    /// effects (index changes) apply in commit order. SQLite admits one writer at a time anyway;
    /// waiting here instead of in its busy handler costs nothing and sleeps no one.
    writer: Arc<Mutex<()>>,
}

/// Something to do once the transaction that asked for it has committed (and never if it did
/// not): an in-memory structure kept in step with what SQLite now holds.
type Effect = Box<dyn FnOnce() + Send>;

/// A write transaction and the effects that follow its commit.
pub struct Tx<'c> {
    tx: Transaction<'c>,
    effects: RefCell<Vec<Effect>>,
}

impl<'c> Deref for Tx<'c> {
    type Target = Transaction<'c>;

    fn deref(&self) -> &Transaction<'c> {
        &self.tx
    }
}

impl Tx<'_> {
    /// Runs `effect` after this transaction commits, in commit order with every other
    /// transaction's effects; if it rolls back, `effect` is dropped unrun.
    pub fn after_commit(&self, effect: impl FnOnce() + Send + 'static) {
        self.effects.borrow_mut().push(Box::new(effect));
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
fn configure(conn: &mut Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(())
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        Db::open_with(path, Durability::Full)
    }

    pub fn open_with(path: &Path, durability: Durability) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        configure(&mut conn, durability)?;
        migrations::apply(&mut conn)
            .with_context(|| format!("migrating database {}", path.display()))?;
        drop(conn);

        let manager = SqliteConnectionManager::file(path)
            .with_init(move |c: &mut Connection| configure(c, durability));
        let pool = Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .context("building the database connection pool")?;
        Ok(Db {
            pool,
            writer: Arc::new(Mutex::new(())),
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

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction, on the blocking pool; commits if `f`
    /// returns `Ok`, rolls back otherwise, then runs the effects `f` registered. Everything a
    /// mutation writes (its rows and its audit row) goes through one call, so it is all or
    /// nothing.
    pub async fn write<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> ApiResult<T> + Send + 'static,
    {
        let db = self.clone();
        run_blocking(move || db.write_blocking(f)).await
    }

    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> ApiResult<T>) -> ApiResult<T> {
        let conn = self.conn()?;
        f(&conn)
    }

    pub fn write_blocking<T>(&self, f: impl FnOnce(&Tx<'_>) -> ApiResult<T>) -> ApiResult<T> {
        let mut conn = self.conn()?;
        let _order = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = Tx {
            tx: conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(busy_or_internal)?,
            effects: RefCell::new(Vec::new()),
        };
        let value = f(&tx)?;
        let Tx { tx, effects } = tx;
        tx.commit().map_err(busy_or_internal)?;
        for effect in effects.into_inner() {
            effect();
        }
        Ok(value)
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
        _ => ApiError::internal(e),
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

/// Maps a UNIQUE-constraint violation to a 409 with `code`; anything else stays internal.
pub fn unique_violation_as(e: rusqlite::Error, code: Code, message: &str) -> ApiError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => ApiError::new(code, message),
        _ => ApiError::internal(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

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
