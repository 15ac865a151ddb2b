//! `/mcp`: the Streamable HTTP transport of MCP (stateless: each POST carries one JSON-RPC
//! message and gets its answer), behind the same API-key authentication as every route.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tower::ServiceExt;

use super::{Backend, Memesh};
use crate::auth::Grant;
use crate::auth::perm::McpSession;
use crate::error::{ApiError, Code};

/// The MCP service, over the REST router it calls.
#[derive(Clone)]
pub struct Endpoint {
    service: StreamableHttpService<Memesh, NeverSessionManager>,
    max_body_bytes: usize,
}

impl Endpoint {
    /// `rest` is the server's router without `/mcp`; tools call it with the caller's key.
    pub fn new(rest: axum::Router, max_body_bytes: usize) -> Endpoint {
        let mut config = StreamableHttpServerConfig::default()
            // Every request carries its key, so a page in a browser cannot use a rebound host
            // name to act as someone: the host is not what protects /mcp.
            .disable_allowed_hosts();
        config.legacy_session_mode = false;
        config.json_response = true;
        config.sse_keep_alive = None;
        config.max_request_body_bytes = max_body_bytes;
        let memesh = Memesh::new(Backend::InProcess(rest));
        let service = StreamableHttpService::new(
            move || Ok(memesh.clone()),
            Arc::new(NeverSessionManager::default()),
            config,
        );
        Endpoint {
            service,
            max_body_bytes,
        }
    }
}

/// `POST|GET|DELETE /mcp`: any live user key may connect; each tool then needs its scope, as
/// its REST route does (a `memory:read` key is shown only the read tools).
pub async fn serve(
    _grant: Grant<McpSession>,
    Extension(endpoint): Extension<Endpoint>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let limit = endpoint.max_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        let message = format!("the body is larger than the limit of {limit} bytes");
        return ApiError::new(Code::PayloadTooLarge, message)
            .with_details(serde_json::json!({ "limit": limit }))
            .into_response();
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    let resp = match endpoint.service.oneshot(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(never) => match never {},
    };
    plain_errors_as_json(resp).await
}

/// The transport's own refusals (a client that does not accept JSON and SSE, a malformed
/// JSON-RPC message) come as plain text: they get the API's error body, their text the message.
async fn plain_errors_as_json(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 8 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut fresh = ApiError::new(Code::for_status(status), message).into_response();
    *fresh.status_mut() = status;
    if let Some(allow) = allow {
        fresh.headers_mut().insert(header::ALLOW, allow);
    }
    fresh
}
