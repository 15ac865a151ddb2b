//! The whole route table in one place, with the layers every request passes through: request
//! ids, tracing spans named by route, compression, timeouts, body limits and JSON error bodies.

pub mod extract;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderName, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, patch, post};
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::{Code, error_body};
use crate::state::AppState;
use crate::{agents, audit, executions, keys, memory, orchestrator, team};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    // Every /v1 route authenticates through the `Principal` extractor in its handler, except
    // accepting an invitation, whose token is the credential.
    let v1 = Router::new()
        .route(
            "/keys",
            post(keys::handlers::create).get(keys::handlers::list),
        )
        .route("/keys/{id}", delete(keys::handlers::revoke))
        .route("/team/members", get(team::handlers::list))
        .route("/team/members/invite", post(team::handlers::invite))
        .route(
            "/team/members/{user_id}/role",
            patch(team::handlers::change_role),
        )
        .route("/team/members/{user_id}", delete(team::handlers::remove))
        .route(
            "/team/invitations/{token}/accept",
            post(team::handlers::accept),
        )
        .route("/audit/logs", get(audit::handlers::list))
        .route(
            "/agents/dispatch-targets",
            post(agents::handlers::create).get(agents::handlers::list),
        )
        .route(
            "/agents/dispatch-targets/{id}",
            get(agents::handlers::get)
                .patch(agents::handlers::update)
                .delete(agents::handlers::delete),
        )
        .route(
            "/agents/dispatch-targets/{id}/governance",
            get(agents::handlers::governance),
        )
        .route(
            "/agents/dispatch-targets/{id}/hold",
            post(agents::handlers::hold),
        )
        .route(
            "/agents/dispatch-targets/{id}/release",
            post(agents::handlers::release),
        )
        .route(
            "/agents/dispatch-targets/{id}/review/acknowledge",
            post(agents::handlers::acknowledge),
        )
        .route(
            "/agents/dispatch-targets/{id}/incident/open",
            post(agents::handlers::open_incident),
        )
        .route(
            "/agents/dispatch-targets/{id}/incident/handoff",
            post(agents::handlers::handoff),
        )
        .route(
            "/agents/dispatch-targets/{id}/incident/close",
            post(agents::handlers::close_incident),
        )
        .route("/agents/executions", get(executions::handlers::list))
        .route(
            "/agents/executions/{id}/claim",
            post(executions::handlers::claim),
        )
        .route(
            "/agents/executions/{id}/heartbeat",
            post(executions::handlers::heartbeat),
        )
        .route(
            "/agents/executions/{id}/complete",
            post(executions::handlers::complete),
        )
        .route(
            "/agents/executions/{id}/ack-cancel",
            post(executions::handlers::ack_cancel),
        )
        .route(
            "/orchestrator/runs",
            post(orchestrator::handlers::create).get(orchestrator::handlers::list),
        )
        .route("/orchestrator/runs/{id}", get(orchestrator::handlers::get))
        .route(
            "/orchestrator/runs/{id}/control",
            get(orchestrator::handlers::control),
        )
        .route(
            "/orchestrator/runs/{id}/cancel",
            post(orchestrator::handlers::cancel),
        )
        .route(
            "/orchestrator/runs/{id}/approvals/{approval_id}/approve",
            post(orchestrator::handlers::approve),
        )
        .route(
            "/orchestrator/runs/{id}/approvals/{approval_id}/reject",
            post(orchestrator::handlers::reject),
        )
        .route(
            "/orchestrator/runs/{id}/reconcile",
            post(orchestrator::handlers::remote_only),
        )
        .route(
            "/orchestrator/runs/{id}/retry-cancel",
            post(orchestrator::handlers::remote_only),
        )
        .route(
            "/orchestrator/runs/{id}/resolve-remote",
            post(orchestrator::handlers::remote_only),
        )
        .route("/memory/write", post(memory::handlers::write))
        .route("/memory/batch", post(memory::handlers::batch))
        .route(
            "/memory/search",
            get(memory::handlers::search_get).post(memory::handlers::search_post),
        )
        .route("/memory/query", post(memory::retrieve::query))
        .route("/memory/batch/search", post(memory::retrieve::batch_search))
        .route(
            "/memory/context-window",
            post(memory::retrieve::context_window),
        )
        .route("/memory/count", get(memory::handlers::count))
        .route("/memory/spaces", get(memory::handlers::spaces))
        .route(
            "/memory/{id}",
            get(memory::handlers::get).delete(memory::handlers::delete),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.settings.request_timeout,
        ));
    // Bulk transfers run as long as their data takes: no request timeout. The export streams
    // page by page; the import reads its body as a stream and bounds it itself.
    let v1_streams = Router::new()
        .route("/memory/stream/export", get(memory::retrieve::export))
        .route("/memory/import", post(memory::retrieve::import));

    let settings = &state.settings;
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(make_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CompressionLayer::new())
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes));

    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/v1", v1.merge(v1_streams))
        .fallback(not_found)
        .layer(layers)
        .with_state(state)
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
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
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

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the database answers with the expected schema and the index holds exactly the
/// memories SQLite holds.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let s = state.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let stored = s.db.read_blocking(crate::memory::store::count_all).ok()?;
        Some((s.db.is_ready(), stored, s.memory.index.stats()))
    })
    .await
    .ok()
    .flatten();
    match checked {
        Some((true, stored, index)) if stored as usize == index.vectors => (
            StatusCode::OK,
            axum::Json(serde_json::json!({
                "status": "ready",
                "memories": stored,
                "index": index,
            })),
        )
            .into_response(),
        _ => crate::error::ApiError::new(Code::Unavailable, "not ready").into_response(),
    }
}
