//! Where the MCP tools' REST calls go: the server's own router (for `/mcp`, with the credential
//! of the MCP request), or a memesh server over HTTP (for `memesh mcp`, with a stored key).

use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Request, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use rmcp::RoleServer;
use rmcp::model::{ErrorCode, ErrorData};
use rmcp::service::RequestContext;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Bytes escaped in a path segment or a query value (everything but `A-Za-z0-9-._~`).
pub const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The largest REST answer a tool reads (a context window of the largest budget fits).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
pub enum Backend {
    /// Inside the server: the REST router, called with the MCP request's own credential.
    InProcess(axum::Router),
    /// `memesh mcp`: a memesh server over HTTP.
    Remote {
        http: reqwest::Client,
        server: String,
        key: String,
    },
}

/// A REST answer: its status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("error")
    }

    pub fn error_message(&self) -> String {
        self.body["error"]["message"].as_str().map_or_else(
            || format!("the API answered {}", self.status),
            str::to_owned,
        )
    }

    /// What an MCP error's `data` carries: the REST error's code, status and details.
    pub fn error_data(&self) -> Value {
        let mut data = json!({ "code": self.error_code(), "status": self.status });
        if let Some(details) = self.body["error"].get("details") {
            data["details"] = details.clone();
        }
        data
    }
}

fn internal(message: impl Into<String>) -> ErrorData {
    ErrorData::new(
        ErrorCode::INTERNAL_ERROR,
        message.into(),
        Some(json!({ "code": "internal", "status": 500 })),
    )
}

fn reply_of(status: u16, bytes: &[u8]) -> Reply {
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes).unwrap_or_else(|_| {
            json!({ "error": { "code": "bad_gateway", "message": String::from_utf8_lossy(bytes) } })
        })
    };
    Reply { status, body }
}

impl Backend {
    /// A memesh server at `server`, called with `key`.
    pub fn remote(server: &str, key: &str) -> anyhow::Result<Backend> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Backend::Remote {
            http,
            server: server.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        })
    }

    /// `method path` with a JSON `body`, as the caller.
    pub async fn call(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply, ErrorData> {
        match self {
            Backend::InProcess(router) => {
                let parts = ctx
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .ok_or_else(|| internal("an MCP request without its HTTP request"))?;
                let mut req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(header::CONTENT_TYPE, "application/json");
                // The caller's own credential: the REST route checks it as for any request.
                for name in [X_API_KEY, header::AUTHORIZATION, REQUEST_ID] {
                    if let Some(v) = parts.headers.get(&name) {
                        req = req.header(name, v);
                    }
                }
                if let Some(addr) = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>() {
                    req = req.extension(*addr);
                }
                let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
                let req = req
                    .body(body)
                    .map_err(|e| internal(format!("building the request: {e}")))?;
                let resp = match router.clone().oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                let status = resp.status().as_u16();
                let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES)
                    .await
                    .map_err(|e| internal(format!("reading the answer: {e}")))?;
                Ok(reply_of(status, &bytes))
            }
            Backend::Remote { http, server, key } => {
                let mut req = http
                    .request(method, format!("{server}{path}"))
                    .header(X_API_KEY, key);
                if let Some(body) = body {
                    req = req.json(&body);
                }
                let resp = req.send().await.map_err(|e| {
                    ErrorData::new(
                        ErrorCode(-32000),
                        format!("memesh server {server} unreachable: {e}"),
                        Some(json!({ "code": "unavailable", "status": 503 })),
                    )
                })?;
                let status = resp.status().as_u16();
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| internal(format!("reading the answer: {e}")))?;
                Ok(reply_of(status, &bytes))
            }
        }
    }
}
