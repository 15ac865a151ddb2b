//! `/v1/memory` handlers: each checks its caller and input and hands over to `write`, `search`
//! or `transfer`. Every memory belongs to the user whose key wrote it.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{Value, json};

use crate::audit::{self, AuditEvent};
use crate::auth::Grant;
use crate::auth::perm::{MemoryRead, MemoryWrite};
use crate::error::ApiResult;
use crate::http::extract::{Ids, Json, Paging, Query, query_number};
use crate::ids::MemoryId;
use crate::state::AppState;

use super::model::{
    BatchRequest, BatchSearchBody, ContextWindowBody, ExportParams, Memory, Mode, QueryBody,
    RecentParams, SearchBody, SearchParams, Space, WriteRequest,
};
use super::search::{self, MAX_LIMIT, Search};
use super::store::{self, Owner};
use super::write::{Answer, Idempotency};
use super::{transfer, write};

pub async fn write(
    grant: Grant<MemoryWrite>,
    State(state): State<AppState>,
    Json(body): Json<WriteRequest>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let idempotency = Idempotency::new(body.idempotency_key.clone(), &body)?;
    let memory = body.validate("")?;
    let respond = |mut stored: Vec<Memory>| json!(stored.pop());
    match write::store_memories(&state, &grant, vec![memory], idempotency, respond).await? {
        Answer::Created(memory) => Ok((StatusCode::CREATED, axum::Json(memory))),
        Answer::Replayed(memory) => Ok((StatusCode::OK, axum::Json(memory))),
    }
}

pub async fn batch(
    grant: Grant<MemoryWrite>,
    State(state): State<AppState>,
    Json(body): Json<BatchRequest>,
) -> ApiResult<Response> {
    write::batch(&state, &grant, body).await
}

pub async fn get(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
    Ids(id): Ids<MemoryId>,
) -> ApiResult<axum::Json<Memory>> {
    let owner = Owner::of(&grant);
    let model = state.memory.model_id().to_owned();
    let memory = state
        .db
        .read(move |c| store::get(c, &owner, &id, &model))
        .await?;
    Ok(axum::Json(memory))
}

pub async fn delete(
    grant: Grant<MemoryWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<MemoryId>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(write::delete(&state, &grant, id).await?))
}

pub async fn count(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let owner = Owner::of(&grant);
    let count = state.db.read(move |c| store::count(c, &owner)).await?;
    Ok(axum::Json(json!({ "count": count })))
}

pub async fn spaces(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let owner = Owner::of(&grant);
    let spaces = state.db.read(move |c| store::spaces(c, &owner)).await?;
    Ok(axum::Json(json!({ "spaces": spaces })))
}

/// `GET /memory/recent`: the caller's newest memories, newest first (what an MCP client sees
/// when it reads a space).
pub async fn recent(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
    Query(params): Query<RecentParams>,
) -> ApiResult<axum::Json<Value>> {
    let limit = Paging::from_query(params.limit.as_deref(), None, 20, MAX_LIMIT)?.limit as usize;
    let spaces = Space::parse_list("spaces", &listed(params.spaces))?;
    let owner = Owner::of(&grant);
    let model = state.memory.model_id().to_owned();
    let memories = state
        .db
        .read(move |c| store::recent(c, &owner, &spaces, limit, &model))
        .await?;
    Ok(axum::Json(
        json!({ "count": memories.len(), "memories": memories }),
    ))
}

/// `a,b` from a query string.
fn listed(raw: Option<String>) -> Vec<String> {
    raw.map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

pub async fn search_get(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
    Query(params): Query<SearchParams>,
) -> ApiResult<axum::Json<Value>> {
    let limit = query_number("limit", params.limit.as_deref(), MAX_LIMIT)?;
    let s = Search::new(
        params.query.as_deref().unwrap_or_default(),
        &listed(params.spaces),
        limit,
    )?;
    Ok(axum::Json(
        search::search(&state, &Owner::of(&grant), s).await?,
    ))
}

pub async fn search_post(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
    Json(body): Json<SearchBody>,
) -> ApiResult<axum::Json<Value>> {
    let s = Search::new(&body.query, &body.spaces.unwrap_or_default(), body.limit)?;
    Ok(axum::Json(
        search::search(&state, &Owner::of(&grant), s).await?,
    ))
}

pub async fn query(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
    Json(body): Json<QueryBody>,
) -> ApiResult<axum::Json<Value>> {
    // Keyword and hybrid queries walk the full-text index: they draw on the expensive budget.
    if body.mode.is_some_and(|m| m != Mode::Semantic) {
        state.plans.check_expensive(grant.tenant(), grant.key())?;
    }
    Ok(axum::Json(
        search::query(&state, &Owner::of(&grant), body).await?,
    ))
}

pub async fn batch_search(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
    Json(body): Json<BatchSearchBody>,
) -> ApiResult<axum::Json<Value>> {
    let owner = Owner::of(&grant);
    Ok(axum::Json(
        search::batch_search(&state, &owner, body).await?,
    ))
}

pub async fn context_window(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
    Json(body): Json<ContextWindowBody>,
) -> ApiResult<axum::Json<Value>> {
    let owner = Owner::of(&grant);
    Ok(axum::Json(
        search::context_window(&state, &owner, body).await?,
    ))
}

/// `GET /memory/stream/export`: every memory of the caller as Server-Sent Events, oldest first;
/// resumes after `Last-Event-ID` (or `?after=`); a final `done` event carries the count.
pub async fn export(
    grant: Grant<MemoryRead>,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ExportParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let spaces = Space::parse_list("spaces", &listed(params.spaces))?;
    let after = transfer::resume_point(&headers, params.after.as_deref())?;
    // Who took a copy of their memories, and which, is on the record.
    let detail = json!({
        "spaces": spaces.iter().map(Space::as_str).collect::<Vec<_>>(),
        "after": after,
    });
    let user = grant.user().clone();
    grant
        .write(&state.db, move |w| {
            let event = AuditEvent::success("memory.export", "user", user.as_str(), detail);
            audit::append(w, &event)
        })
        .await?;
    let events = transfer::export(state, grant, spaces, after);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `POST /memory/import`: restores an export (the SSE stream itself, or JSON lines).
pub async fn import(
    grant: Grant<MemoryWrite>,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        transfer::import(&state, &grant, &headers, body).await?,
    ))
}
