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
pub mod state;
pub mod team;

use std::future::Future;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

pub use state::AppState;

pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Serves until `shutdown` resolves, lets in-flight requests finish, stops and joins the
/// background jobs and then the index thread (a last snapshot is written), then folds the WAL
/// into the database so a clean stop leaves a single file.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Without TCP_NODELAY, a response written in two segments on a kept-alive connection waits
    // for the client's delayed ACK: tens of milliseconds on every request.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    // Every tenant's quotas in force before the first request.
    if let Err(e) = plans::store::reload(&state).await {
        tracing::error!(error = %e, "syncing the plans failed; the plans job retries");
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let jobs = jobs::start(&state, &cancel);
    let served = axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    cancel.cancel();
    for job in jobs {
        if let Err(e) = job.await {
            tracing::error!(error = %e, "a background job did not stop cleanly");
        }
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

pub fn tune_allocator() {
    // SAFETY: setting an option is allowed at any time; this one only changes when freed
    // memory is returned.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}
