//! The whole route table in one place, each row naming who may call it (checked against its
//! handler at compile time), and the layers every request passes through: request ids, tracing
//! spans named by route, compression, timeouts, body limits and JSON error bodies.

pub mod extract;
pub mod openapi;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::handler::Handler;
use axum::http::{HeaderName, Method, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, on};
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{Access, Grant, Permission, RefusedCaller};
use crate::error::{Code, error_body};
use crate::state::AppState;
use crate::{agents, audit, device, keys, memory, orchestrator, plans, team};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The `x-request-id` a caller sent, kept apart from the server's own (which every request
/// gets): logs and audit rows carry the server's id, and the caller's as `clientRequestId`.
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");
/// Longest caller request id kept (a longer one is dropped, not cut).
const MAX_CLIENT_REQUEST_ID: usize = 128;

/// One row of the route table: where a route is and who may call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: String,
    pub access: Access,
}

/// Handler argument lists (as axum's `Handler` sees them: a marker, then the extractors) whose
/// first extractor is `G`. The route table demands it, so the permission a row names is the one
/// its handler checks.
pub trait LeadsWith<G> {}

macro_rules! leads_with {
    ($($rest:ident),*) => {
        impl<M, G, $($rest),*> LeadsWith<G> for (M, G, $($rest),*) {}
    };
}

leads_with!();
leads_with!(T2);
leads_with!(T2, T3);
leads_with!(T2, T3, T4);
leads_with!(T2, T3, T4, T5);
leads_with!(T2, T3, T4, T5, T6);

/// The route table under construction: the router and the row of each route.
struct Table {
    prefix: &'static str,
    router: Router<AppState>,
    specs: Vec<RouteSpec>,
}

impl Table {
    fn new(prefix: &'static str) -> Table {
        Table {
            prefix,
            router: Router::new(),
            specs: Vec::new(),
        }
    }

    fn add<H, T>(mut self, method: Method, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|e| panic!("route table: {method} {path}: {e}"));
        self.router = self.router.route(path, on(filter, handler));
        self.specs.push(RouteSpec {
            method,
            path: format!("{}{path}", self.prefix),
            access,
        });
        self
    }

    /// A route for callers holding permission `P`; its handler's first argument is `Grant<P>`.
    fn on<P: Permission, H, T>(self, method: Method, path: &'static str, _: P, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: LeadsWith<Grant<P>> + 'static,
    {
        self.add(method, path, P::ACCESS, h)
    }

    /// A route anyone may call; its handler checks whatever credential the request carries.
    fn public<H, T>(self, method: Method, path: &'static str, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(method, path, Access::Public, h)
    }
}

/// The `/v1` routes answered within the request timeout.
#[rustfmt::skip]
fn v1() -> Table {
    use crate::auth::perm::*;
    use Method as M;
    Table::new("/v1")
        // API keys
        .on(M::POST, "/keys", KeysWrite, keys::handlers::create)
        .on(M::GET, "/keys", KeysWrite, keys::handlers::list)
        .on(M::DELETE, "/keys/{id}", KeysWrite, keys::handlers::revoke)
        // Team
        .on(M::GET, "/team/members", TeamRead, team::handlers::list)
        .on(M::POST, "/team/members/invite", TeamWrite, team::handlers::invite)
        .on(M::PATCH, "/team/members/{user_id}/role", TeamWrite, team::handlers::change_role)
        .on(M::DELETE, "/team/members/{user_id}", TeamWrite, team::handlers::remove)
        .on(M::GET, "/team/invitations", TeamInvitations, team::handlers::list_invitations)
        .on(M::DELETE, "/team/invitations/{id}", TeamWrite, team::handlers::revoke_invitation)
        .public(M::POST, "/team/invitations/{token}/accept", team::handlers::accept)
        // Device authorization (RFC 8628) and what a key may always do about itself
        .public(M::POST, "/auth/device", device::handlers::authorize)
        .public(M::POST, "/auth/device/token", device::handlers::token)
        .on(M::GET, "/auth/whoami", Holder, device::handlers::whoami)
        // Plans and usage
        .on(M::GET, "/billing/plan", Holder, plans::handlers::plan)
        .on(M::GET, "/usage/summary", Holder, plans::handlers::usage)
        .on(M::POST, "/auth/logout", Holder, device::handlers::logout)
        // Audit
        .on(M::GET, "/audit/logs", AuditRead, audit::handlers::list)
        // Dispatch targets and their governance
        .on(M::POST, "/agents/dispatch-targets", AgentsWrite, agents::handlers::create)
        .on(M::GET, "/agents/dispatch-targets", AgentsRead, agents::handlers::list)
        .on(M::GET, "/agents/dispatch-targets/{id}", AgentsRead, agents::handlers::get)
        .on(M::PATCH, "/agents/dispatch-targets/{id}", AgentsWrite, agents::handlers::update)
        .on(M::DELETE, "/agents/dispatch-targets/{id}", AgentsWrite, agents::handlers::delete)
        .on(M::GET, "/agents/dispatch-targets/{id}/governance", AgentsRead, agents::handlers::governance)
        .on(M::POST, "/agents/dispatch-targets/{id}/hold", AgentsWrite, agents::handlers::hold)
        .on(M::POST, "/agents/dispatch-targets/{id}/release", AgentsWrite, agents::handlers::release)
        .on(M::POST, "/agents/dispatch-targets/{id}/review/acknowledge", AgentsWrite, agents::handlers::acknowledge)
        .on(M::POST, "/agents/dispatch-targets/{id}/incident/open", AgentsWrite, agents::handlers::open_incident)
        .on(M::POST, "/agents/dispatch-targets/{id}/incident/handoff", AgentsWrite, agents::handlers::handoff)
        .on(M::POST, "/agents/dispatch-targets/{id}/incident/close", AgentsWrite, agents::handlers::close_incident)
        // The local execution queue (agent access keys)
        .on(M::GET, "/agents/executions", Executions, orchestrator::queue::list)
        .on(M::POST, "/agents/executions/{id}/claim", Executions, orchestrator::queue::claim)
        .on(M::POST, "/agents/executions/{id}/heartbeat", Executions, orchestrator::queue::heartbeat)
        .on(M::POST, "/agents/executions/{id}/complete", Executions, orchestrator::queue::complete)
        .on(M::POST, "/agents/executions/{id}/ack-cancel", Executions, orchestrator::queue::ack_cancel)
        // Orchestrator runs
        .on(M::POST, "/orchestrator/runs", RunsWrite, orchestrator::runs::create)
        .on(M::GET, "/orchestrator/runs", RunsRead, orchestrator::runs::list)
        .on(M::GET, "/orchestrator/runs/{id}", RunsRead, orchestrator::runs::get)
        .on(M::GET, "/orchestrator/runs/{id}/control", RunsRead, orchestrator::runs::control)
        .on(M::POST, "/orchestrator/runs/{id}/cancel", RunsWrite, orchestrator::runs::cancel)
        .on(M::POST, "/orchestrator/runs/{id}/approvals/{approval_id}/approve", RunsAdmin, orchestrator::runs::approve)
        .on(M::POST, "/orchestrator/runs/{id}/approvals/{approval_id}/reject", RunsAdmin, orchestrator::runs::reject)
        .on(M::POST, "/orchestrator/runs/{id}/reconcile", RunsAdmin, orchestrator::runs::reconcile)
        .on(M::POST, "/orchestrator/runs/{id}/retry-cancel", RunsWrite, orchestrator::runs::retry_cancel)
        .on(M::POST, "/orchestrator/runs/{id}/resolve-remote", RunsAdmin, orchestrator::runs::resolve_remote)
        .on(M::GET, "/orchestrator/runtime-health", RunsRead, orchestrator::health::runtime_health)
        // Memory
        .on(M::POST, "/memory/write", MemoryWrite, memory::handlers::write)
        .on(M::POST, "/memory/batch", MemoryWrite, memory::handlers::batch)
        .on(M::GET, "/memory/search", MemoryRead, memory::handlers::search_get)
        .on(M::POST, "/memory/search", MemoryRead, memory::handlers::search_post)
        .on(M::POST, "/memory/query", MemoryRead, memory::handlers::query)
        .on(M::POST, "/memory/batch/search", MemoryRead, memory::handlers::batch_search)
        .on(M::POST, "/memory/context-window", MemoryRead, memory::handlers::context_window)
        .on(M::GET, "/memory/count", MemoryRead, memory::handlers::count)
        .on(M::GET, "/memory/spaces", MemoryRead, memory::handlers::spaces)
        .on(M::GET, "/memory/recent", MemoryRead, memory::handlers::recent)
        .on(M::GET, "/memory/{id}", MemoryRead, memory::handlers::get)
        .on(M::DELETE, "/memory/{id}", MemoryWrite, memory::handlers::delete)
}

/// Bulk transfers run as long as their data takes: no request timeout. The export streams page
/// by page; the import reads its body as a stream and bounds it itself.
#[rustfmt::skip]
fn v1_streams() -> Table {
    use crate::auth::perm::*;
    Table::new("/v1")
        .on(Method::GET, "/memory/stream/export", MemoryRead, memory::handlers::export)
        .on(Method::POST, "/memory/import", MemoryWrite, memory::handlers::import)
}

fn probes() -> Table {
    Table::new("")
        .public(Method::GET, "/healthz", healthz)
        .public(Method::GET, "/readyz", readyz)
        .public(Method::GET, "/docs", docs_page)
        .public(Method::GET, "/v1/openapi.json", openapi_json)
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi::document())
}

async fn docs_page() -> Response<Body> {
    let mut r = openapi::page().into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    r
}

/// The MCP endpoint (Streamable HTTP, stateless: POST only); its tools call the REST routes
/// with the caller's key.
fn mcp() -> Table {
    use crate::auth::perm::McpSession;
    Table::new("").on(Method::POST, "/mcp", McpSession, crate::mcp::http::serve)
}

/// The device verification page people open in a browser (outside `/v1`).
fn device_page() -> Table {
    Table::new("")
        .public(Method::GET, "/device", device::page::show)
        .public(Method::POST, "/device", device::page::act)
        .public(Method::GET, "/device/style.css", device::page::style)
}

/// Every route with who may call it, as the router serves them.
pub fn route_table() -> Vec<RouteSpec> {
    [probes(), device_page(), mcp(), v1(), v1_streams()]
        .into_iter()
        .flat_map(|t| t.specs)
        .collect()
}

/// A body announced by `Content-Length` above the limit is refused at once, before a byte of it
/// is read (rather than after the client has sent it all, or the request timed out).
async fn refuse_oversized(
    State(state): State<AppState>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.settings.max_body_bytes as u64;
    if announced.is_some_and(|n| n > limit) {
        let message = format!("the body is larger than the limit of {limit} bytes");
        return crate::error::ApiError::new(Code::PayloadTooLarge, message)
            .with_details(serde_json::json!({ "limit": limit }))
            .into_response();
    }
    next.run(req).await
}

/// Longest request target (path and query) accepted, and largest header value and header
/// section: past them, 414 `uri_too_long` / 431 `headers_too_large`, before any work.
const MAX_URI_BYTES: usize = 16 * 1024;
const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;
const MAX_HEADERS_BYTES: usize = 32 * 1024;

async fn refuse_oversized_head(req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        let message = format!(
            "the request target is {uri} bytes; at most {MAX_URI_BYTES} are accepted (send long queries in a POST body)"
        );
        return crate::error::ApiError::new(Code::UriTooLong, message).into_response();
    }
    let mut total = 0;
    for (name, value) in req.headers() {
        let size = name.as_str().len() + value.len();
        total += size;
        if value.len() > MAX_HEADER_VALUE_BYTES || total > MAX_HEADERS_BYTES {
            let message = format!(
                "header {name} is too large (at most {MAX_HEADER_VALUE_BYTES} bytes a value, {MAX_HEADERS_BYTES} in all)"
            );
            return crate::error::ApiError::new(Code::HeadersTooLarge, message).into_response();
        }
    }
    next.run(req).await
}

/// A refused mutation by a caller whose key is known (401 for a revoked or expired key, 403) is
/// audited with its outcome, after the response is made: the first of its key, route and
/// minute at once, the others of that minute as one counted row (see `audit::refusals`).
async fn audit_refusals(
    State(state): State<AppState>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let mutation = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let route = format!("{} {path}", req.method());
    let response = next.run(req).await;
    let refused = response.extensions().get::<RefusedCaller>().cloned();
    if let (true, Some(RefusedCaller { actor, code })) = (mutation, refused) {
        let now = state.clock.now();
        // The first of a minute is written now; the rest are counted into one row.
        if !state.refusals.note(&actor, &route, code, now) {
            return response;
        }
        let recorded = state
            .db
            .write(move |tx| audit::store::record_refusal(tx, actor, &route, code, now))
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, "could not audit a refused request");
        }
    }
    response
}

/// The server: the REST routes, and `/mcp`, whose tools call those same routes in process.
pub fn router(state: AppState) -> Router {
    let rest = finish(rest_routes(&state), &state);
    let endpoint = crate::mcp::http::Endpoint::new(rest, state.settings.max_body_bytes);
    let mcp = mcp()
        .router
        .layer(axum::Extension(endpoint))
        .layer(timeout(&state));
    finish(rest_routes(&state).merge(mcp), &state)
}

/// The request timeout: every route answers within it but the two bulk streams (which bound
/// themselves: the import stops when its body stalls, the export is paced by its reader).
fn timeout(state: &AppState) -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, state.settings.request_timeout)
}

fn rest_routes(state: &AppState) -> Router<AppState> {
    let timed = v1()
        .router
        .layer(timeout(state))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_oversized,
        ));
    let v1 = timed
        .merge(v1_streams().router)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit_refusals,
        ));
    probes()
        .router
        .merge(device_page().router)
        .layer(timeout(state))
        .nest("/v1", v1)
}

/// Works out once who the client is (the peer, or behind a trusted proxy the address it
/// forwarded) for the per-address limits and the device page.
async fn client_address(
    State(state): State<AppState>,
    mut req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(peer) = peer {
        let client = extract::resolve_client(peer, req.headers(), &state.settings.trusted_proxies);
        req.extensions_mut()
            .insert(extract::ClientAddr(Some(client)));
    }
    next.run(req).await
}

/// Every request gets the server's own request id: one the caller sent moves to
/// `x-client-request-id` (and is echoed back under that name), so a caller cannot choose the id
/// logs and audit rows are filed under.
async fn own_request_ids(mut req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let headers = req.headers_mut();
    headers.remove(&CLIENT_REQUEST_ID);
    let client = headers
        .remove(&REQUEST_ID)
        .filter(|v| v.len() <= MAX_CLIENT_REQUEST_ID && v.to_str().is_ok());
    if let Some(v) = &client {
        headers.insert(CLIENT_REQUEST_ID, v.clone());
    }
    let mut response = next.run(req).await;
    if let Some(v) = client {
        response.headers_mut().insert(CLIENT_REQUEST_ID, v);
    }
    response
}

/// The layers every request passes through.
fn finish(routes: Router<AppState>, state: &AppState) -> Router {
    let layers = ServiceBuilder::new()
        .layer(axum::middleware::from_fn(own_request_ids))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(make_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CompressionLayer::new())
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(refuse_oversized_head))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_address,
        ))
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes));
    routes
        .fallback(not_found)
        .layer(layers)
        .with_state(state.clone())
}

fn make_span(req: &Request<Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", method = %req.method(), route, request_id)
}

/// Gives bare error statuses produced outside handlers (unknown route, wrong method, timeout,
/// body limit) the same JSON error body as handler errors.
async fn json_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    // JSON errors stay as they are, and so do the device page's HTML pages.
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = Code::for_status(status);
    let message = status.canonical_reason().unwrap_or("error");
    let mut fresh = (status, axum::Json(error_body(code, message, None))).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = response.headers().get(&name) {
            fresh.headers_mut().insert(name, v.clone());
        }
    }
    fresh
}

async fn not_found() -> impl IntoResponse {
    crate::error::ApiError::new(Code::NotFound, "no such route")
}

/// Alive, with the embedding model in use and how each background job is doing (its last
/// successful pass, its last error).
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let g = state.memory.generation();
    let model = g.embedder.info();
    let mut health = serde_json::json!({
        "status": "ok",
        "model": { "id": model.id, "dim": model.dim, "maxTokens": model.max_tokens },
        "jobs": state.jobs.snapshot(),
    });
    // A model switch under way: the current model answers until the next holds every memory.
    if let Some(p) = state.memory.switch_progress() {
        health["modelSwitch"] = serde_json::json!(p);
    }
    axum::Json(health)
}

/// Ready when the index holds exactly the memories SQLite holds: two counters kept up to date
/// by the commits themselves, so this is cheap enough to poll (the schema was checked at start).
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (consistent, stored, indexed) = state.memory.is_consistent();
    if !consistent {
        let message = format!("the index holds {indexed} vectors, SQLite {stored} memories");
        return crate::error::ApiError::new(Code::Unavailable, message).into_response();
    }
    axum::Json(serde_json::json!({
        "status": "ready",
        "memories": stored,
        "index": { "vectors": indexed },
    }))
    .into_response()
}
