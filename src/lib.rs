//! memesh: a self-hostable server for AI agents' long-term memory and for governing the agents.
//! `app` builds the router; `serve` runs it until a shutdown signal and then cleans up.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod bootstrap;
pub mod client;
pub mod clock;
pub mod config;
pub mod db;
pub mod device;
pub mod embed;
pub mod error;
pub mod http;
pub mod ids;
pub mod index;
pub mod jobs;
pub mod keys;
pub mod mcp;
pub mod memory;
pub mod orchestrator;
pub mod outbound;
pub mod plans;
pub mod private;
pub mod state;
pub mod team;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use tokio::net::TcpListener;

pub use state::AppState;

pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// How long a client has to send a request's head (its line and headers) once it starts: a
/// connection that dribbles them (slowloris) is closed after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for open connections (an export still streaming) before closing
/// them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves until `shutdown` resolves, lets in-flight requests finish, stops and joins the
/// background jobs and then the index thread (a last snapshot is written), then folds the WAL
/// into the database so a clean stop leaves a single file.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Every tenant's quotas in force before the first request.
    if let Err(e) = plans::store::reload(&state).await {
        tracing::error!(error = %e, "syncing the plans failed; the plans job retries");
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let jobs = jobs::start(&state, &cancel);
    let served = accept(
        listener,
        app(state.clone()),
        state.settings.max_connections,
        shutdown,
    )
    .await;
    cancel.cancel();
    for job in jobs {
        if let Err(e) = job.await {
            tracing::error!(error = %e, "a background job did not stop cleanly");
        }
    }
    if let Err(e) = jobs::write_refusal_digest(&state, true).await {
        tracing::error!(error = %e, "could not audit the last counted refusals");
    }
    served?;
    tokio::task::spawn_blocking(move || {
        state.memory.shutdown();
        state.db.checkpoint();
    })
    .await
    .map_err(std::io::Error::other)?;
    Ok(())
}

/// Accepts connections until `shutdown`, at most `max_connections` open at once (past that the
/// next waits in the kernel's backlog), each served by hyper with a deadline on its request
/// heads; then closes the listener and waits for the open connections to finish (at most
/// [`SHUTDOWN_GRACE`]).
async fn accept(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::Service;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that shuts its sending side once the body is sent (half-close) still gets its
    // answer; without this, hyper closes a connection whose read side ends while the request
    // is still being handled, and the answer is lost.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .half_close(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (socket, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY, a response written in two segments on a kept-alive connection
        // waits for the client's delayed ACK: tens of milliseconds on every request.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                router.clone().call(req)
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(socket), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {}s after the shutdown signal; closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}

/// mimalloc's purge delay option, numbered as in its `mi_option_e` (the same in versions 2
/// and 3).
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// Tunes mimalloc (the binary's global allocator). A server idles most of the time: freed
/// memory goes back to the system at once instead of after a delay (which, with no further
/// allocation on that thread, can be never). Measured at 100,000 memories right after start-up
/// and a search: 262 → 228 MiB.
/// Lowers the calling thread's CPU priority to nice 10 (Linux applies it per thread, and the
/// threads it creates inherit it): for background work (the bulk embedding model) that should
/// give the cores to requests when both want them, and that holds no lock a request waits on. Under contention a
/// nice-10 thread gets about a tenth of a normal thread's share; alone, all of it.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority on the calling thread (who = 0) only changes its scheduling
        // weight; failure (not permitted) leaves it as it was.
        let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) } != 0;
        if failed {
            tracing::debug!("could not lower a background thread's priority");
        }
    }
}

/// Takes the data directory's serving lock (an advisory `flock` on `memesh.lock`, released by
/// the system when the process ends, however it ends): `None` when another process holds it.
/// A server holds it while it runs; `memesh reindex` uses it to know whether a server will do
/// the work.
pub fn hold_data_dir(dir: &std::path::Path) -> anyhow::Result<Option<std::fs::File>> {
    use anyhow::Context;
    use std::os::fd::AsRawFd;
    let path = dir.join("memesh.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; it only takes an advisory lock.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(taken.then_some(file))
}

pub fn tune_allocator() {
    // SAFETY: setting an option is allowed at any time; this one only changes when freed
    // memory is returned.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}
