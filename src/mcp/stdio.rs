//! `memesh mcp`: an MCP server on stdin/stdout for clients that launch one, forwarding every
//! call to a memesh server over HTTP with the key `memesh login` stored (or `MEMESH_API_KEY`).

use anyhow::{Context, bail};
use rmcp::ServiceExt;

use super::{Backend, Memesh};

/// The server and key `memesh mcp` uses: flags and environment first, then the credentials
/// file `memesh login` wrote.
pub fn resolve(server: Option<String>, key: Option<String>) -> anyhow::Result<(String, String)> {
    let stored = crate::client::load()?;
    let server = server
        .or_else(|| stored.as_ref().map(|c| c.server.clone()))
        .context("no memesh server: run `memesh login --server URL`, or set MEMESH_SERVER")?;
    let key = match key {
        Some(k) => k,
        None => match stored {
            Some(c) if c.server.trim_end_matches('/') == server.trim_end_matches('/') => c.api_key,
            Some(c) => bail!(
                "the stored key is for {}, not {server}: run `memesh login --server {server}` or set MEMESH_API_KEY",
                c.server
            ),
            None => bail!("no API key: run `memesh login`, or set MEMESH_API_KEY"),
        },
    };
    Ok((server, key))
}

/// Serves MCP on stdin/stdout until the client closes it. Logs go to stderr only: stdout is
/// the protocol's.
pub async fn run(server: &str, key: &str) -> anyhow::Result<()> {
    let memesh = Memesh::new(Backend::remote(server, key)?);
    let running = memesh
        .serve(rmcp::transport::io::stdio())
        .await
        .context("starting the MCP session on stdin/stdout")?;
    running.waiting().await.context("the MCP session")?;
    Ok(())
}
