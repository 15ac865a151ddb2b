//! The one writer: a thread that owns the write connection and runs every mutation of the
//! serving process, each in its own savepoint, committing a group of them with one fsync.
//! Writers never meet in SQLite's lock (and its sleeping busy handler); a failed mutation rolls
//! back only itself; nobody is answered before their group is durable.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{ApiError, ApiResult, Code};

use super::{Heads, Tx};

/// Mutations committed together at most (a group also ends when nobody else is waiting).
const MAX_GROUP: usize = 256;

/// How to answer a mutation that succeeded, once its group has committed (`true`) or failed to.
type Deliver = Box<dyn FnOnce(bool) + Send>;

/// A mutation waiting for the writer.
trait Mutation: Send {
    /// Runs it; `Some` (how to answer later) if it succeeded, `None` if it failed and was
    /// answered already.
    fn run(self: Box<Self>, tx: &Tx<'_>) -> Option<Deliver>;
    /// Answers it without running it (the transaction could not begin).
    fn refuse(self: Box<Self>, error: ApiError);
}

struct Pending<T, F> {
    f: F,
    reply: oneshot::Sender<ApiResult<T>>,
}

impl<T, F> Mutation for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Tx<'_>) -> ApiResult<T> + Send,
{
    fn run(self: Box<Self>, tx: &Tx<'_>) -> Option<Deliver> {
        let Pending { f, reply } = *self;
        let outcome = catch_unwind(AssertUnwindSafe(|| f(tx)))
            .unwrap_or_else(|_| Err(ApiError::internal(anyhow::anyhow!("a mutation panicked"))));
        match outcome {
            Ok(value) => Some(Box::new(move |committed| {
                let _ = reply.send(if committed {
                    Ok(value)
                } else {
                    Err(not_committed())
                });
            })),
            Err(e) => {
                let _ = reply.send(Err(e));
                None
            }
        }
    }

    fn refuse(self: Box<Self>, error: ApiError) {
        let _ = self.reply.send(Err(error));
    }
}

fn not_committed() -> ApiError {
    ApiError::new(
        Code::Unavailable,
        "the database could not commit the change; nothing was stored, retry",
    )
}

pub(super) fn stopped() -> ApiError {
    ApiError::new(Code::Unavailable, "the database writer has stopped")
}

/// The writer thread's queue.
#[derive(Clone)]
pub(super) struct Queue(mpsc::Sender<Box<dyn Mutation>>);

impl Queue {
    pub(super) fn submit<T, F>(&self, f: F) -> ApiResult<oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> ApiResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.0
            .send(Box::new(Pending { f, reply }))
            .map_err(|_| stopped())?;
        Ok(rx)
    }
}

/// Starts the writer thread on `conn`; it stops when every [`Queue`] is dropped.
pub(super) fn start(conn: Connection, auth_epoch: Arc<AtomicU64>) -> anyhow::Result<Queue> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("memesh-writer".into())
        .spawn(move || run(conn, &rx, &auth_epoch))?;
    Ok(Queue(tx))
}

fn run(
    mut conn: Connection,
    jobs: &mpsc::Receiver<Box<dyn Mutation>>,
    auth_epoch: &Arc<AtomicU64>,
) {
    let mut heads = Heads::default();
    let mut seen = Seen::default();
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        heads = commit_group(&mut conn, group, heads, auth_epoch.clone(), &mut seen);
    }
}

/// What the writer last knew of the database file: SQLite's `data_version`, which changes on
/// this connection only when *another* connection (another process: `memesh plan set`,
/// `memesh tenant create`, an operator's `sqlite3`) has committed since it was last read.
#[derive(Default)]
struct Seen(Option<i64>);

impl Seen {
    /// Inside a transaction that holds the write lock (so nobody can commit until it ends):
    /// true when another connection committed since the writer last looked. Its own commits do
    /// not move the value, so the cached audit heads stay valid until someone else writes.
    fn foreign_commit(&mut self, tx: &Tx<'_>) -> rusqlite::Result<bool> {
        let now: i64 = tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        Ok(self.0.replace(now).is_some_and(|before| before != now))
    }
}

/// Runs each mutation of `group` in its own savepoint, commits them together, and answers them.
fn commit_group(
    conn: &mut Connection,
    group: Vec<Box<dyn Mutation>>,
    heads: Heads,
    auth_epoch: Arc<AtomicU64>,
    seen: &mut Seen,
) -> Heads {
    let epoch = auth_epoch.clone();
    let tx = match Tx::begin(conn, heads, auth_epoch) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "the writer could not begin a transaction");
            for job in group {
                job.refuse(ApiError::new(e.code, e.message.clone()));
            }
            return Heads::default();
        }
    };
    match seen.foreign_commit(&tx) {
        // Another process wrote: what the writer remembers (audit heads, cached keys) may be
        // stale. Forget it; the next audited mutation re-reads its tenant's head (one indexed
        // lookup) inside this transaction, which holds the write lock.
        Ok(true) => {
            tracing::info!("another process changed the database; re-reading what was cached");
            tx.heads.borrow_mut().forget();
            epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "reading data_version failed; forgetting cached heads");
            tx.heads.borrow_mut().forget();
            *seen = Seen::default();
        }
    }
    let mut answers: Vec<Deliver> = Vec::with_capacity(group.len());
    for job in group {
        if let Err(e) = statement(&tx, "SAVEPOINT mutation") {
            job.refuse(ApiError::internal(e));
            continue;
        }
        let (effects, heads) = (tx.effects.borrow().len(), tx.heads.borrow().mark());
        match job.run(&tx) {
            Some(deliver) => match statement(&tx, "RELEASE mutation") {
                Ok(()) => answers.push(deliver),
                Err(e) => {
                    tracing::error!(error = %e, "releasing a savepoint failed");
                    deliver(false);
                    undo(&tx, effects, heads);
                }
            },
            None => undo(&tx, effects, heads),
        }
    }
    let (committed, heads) = tx.finish();
    if let Err(e) = &committed {
        tracing::error!(error = %e, mutations = answers.len(), "a group commit failed");
    }
    for deliver in answers {
        deliver(committed.is_ok());
    }
    heads
}

/// Runs one savepoint statement, prepared once per connection.
fn statement(tx: &Tx<'_>, sql: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Rolls back the mutation that just ran: its rows, its effects and its audit heads.
fn undo(tx: &Tx<'_>, effects: usize, heads: usize) {
    let rolled_back =
        statement(tx, "ROLLBACK TO mutation").and_then(|()| statement(tx, "RELEASE mutation"));
    if let Err(e) = rolled_back {
        tracing::error!(error = %e, "rolling back a savepoint failed");
    }
    tx.effects.borrow_mut().truncate(effects);
    tx.heads.borrow_mut().rewind(heads);
}
