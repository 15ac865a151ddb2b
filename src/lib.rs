//! memesh: a self-hostable server for AI agents' long-term memory and for governing the agents.
//! `app` builds the router; `serve` runs it until a shutdown signal and then cleans up.

pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod ids;
pub mod keys;
pub mod state;
pub mod team;

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

pub use state::AppState;

pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Serves until `shutdown` resolves, lets in-flight requests finish, then folds the WAL into
/// the database so a clean stop leaves a single file.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    let db = state.db.clone();
    tokio::task::spawn_blocking(move || db.checkpoint())
        .await
        .map_err(std::io::Error::other)?;
    Ok(())
}
