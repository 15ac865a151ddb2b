//! `/v1/memory` handlers: validate at the edge, embed on the model thread, write SQLite and the
//! index in one transaction, search the caller's own partition.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::db::run_blocking;
use crate::embed::tokens::llm_tokens;
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{Json, Query, parse_value};
use crate::ids::MemoryId;
use crate::index::{Hit, RowId};
use crate::state::AppState;

use super::model::{
    BatchItem, BatchRequest, MAX_BATCH, MAX_CONTENT_CHARS, Memory, MemoryFilter, NewMemory,
    SearchBody, SearchParams, SearchResult, Space, WriteRequest,
};
use super::store::{self, Owner, Prepared};

const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 100;

pub(super) fn owner(p: &Principal) -> Owner {
    Owner {
        tenant: p.tenant_id.clone(),
        user: p.user_id.clone(),
    }
}

pub(super) fn embedding_failed(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "embedding failed");
    ApiError::new(
        Code::Unavailable,
        "the embedding model could not process the request",
    )
}

/// Embeds and stores `items` for the caller, all in one transaction that also updates the
/// index (under SQLite's write lock, so the index sees writes and deletes in commit order).
async fn store_memories(
    state: &AppState,
    principal: &Principal,
    items: Vec<NewMemory>,
) -> ApiResult<Vec<Memory>> {
    let texts: Vec<String> = items.iter().map(|m| m.content.clone()).collect();
    let counts = {
        let texts = texts.clone();
        run_blocking(move || Ok(texts.iter().map(|t| llm_tokens(t)).collect::<Vec<_>>()))
    };
    let (embeddings, counts) = tokio::join!(state.memory.embedder.embed(texts), counts);
    let embeddings = embeddings.map_err(embedding_failed)?;
    let prepared: Vec<Prepared> = items
        .into_iter()
        .zip(embeddings)
        .zip(counts?)
        .map(|((memory, embedding), token_count)| Prepared {
            memory,
            embedding,
            token_count,
        })
        .collect();
    let actor = principal.actor();
    let owner = owner(principal);
    let index = state.memory.index.clone();
    let model = state.memory.model_id().to_owned();
    let now = state.clock.now();
    state
        .db
        .write(move |tx| {
            let stored = store::insert(tx, &actor, &owner, &prepared, &model, now)?;
            let entries: Vec<(RowId, i64, &[f32])> = stored
                .iter()
                .zip(&prepared)
                .map(|((row, _), p)| (*row, now.millis(), p.embedding.vector.as_slice()))
                .collect();
            index.insert(&owner.key(), &entries);
            Ok(stored.into_iter().map(|(_, m)| m).collect())
        })
        .await
}

pub async fn write(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<WriteRequest>,
) -> ApiResult<(StatusCode, axum::Json<Memory>)> {
    let memory = body.validate("")?;
    let mut stored = store_memories(&state, &principal, vec![memory]).await?;
    let memory = stored
        .pop()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("nothing stored")))?;
    Ok((StatusCode::CREATED, axum::Json(memory)))
}

fn parse_item(index: usize, value: Value) -> ApiResult<NewMemory> {
    let prefix = format!("memories[{index}].");
    let with_index = |mut e: ApiError| {
        let mut details = e.details.take().unwrap_or_else(|| json!({}));
        details["index"] = json!(index);
        e.with_details(details)
    };
    let request: WriteRequest = parse_value(value, &prefix).map_err(with_index)?;
    request.validate(&prefix).map_err(with_index)
}

/// `transactional: true`: all or nothing, 201. Otherwise each item stands alone: 200 with a
/// result per item (201 or 4xx) in request order, the valid ones stored.
pub async fn batch(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<BatchRequest>,
) -> ApiResult<Response> {
    let n = body.memories.len();
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::field(
            "memories",
            format!("a batch holds 1 to {MAX_BATCH} memories; got {n}"),
        ));
    }
    let parsed: Vec<ApiResult<NewMemory>> = body
        .memories
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_item(i, v))
        .collect();
    if body.transactional.unwrap_or(false) {
        let items = parsed.into_iter().collect::<ApiResult<Vec<_>>>()?;
        let stored = store_memories(&state, &principal, items).await?;
        let body = json!({ "created": stored.len(), "memories": stored });
        return Ok((StatusCode::CREATED, axum::Json(body)).into_response());
    }
    let mut results: Vec<Option<BatchItem>> = Vec::with_capacity(n);
    let mut good = Vec::new();
    for (i, item) in parsed.into_iter().enumerate() {
        match item {
            Ok(m) => {
                good.push(m);
                results.push(None);
            }
            Err(e) => results.push(Some(BatchItem::failed(i, &e))),
        }
    }
    let created = good.len();
    let mut stored = if good.is_empty() {
        Vec::new()
    } else {
        store_memories(&state, &principal, good).await?
    }
    .into_iter();
    let results: Vec<BatchItem> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| BatchItem {
                index: i,
                status: StatusCode::CREATED.as_u16(),
                memory: stored.next(),
                error: None,
            })
        })
        .collect();
    let body = json!({ "created": created, "failed": n - created, "results": results });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

fn memory_id(raw: &str) -> ApiResult<MemoryId> {
    MemoryId::parse(raw).ok_or_else(|| ApiError::not_found("memory"))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Memory>> {
    let id = memory_id(&id)?;
    let owner = owner(&principal);
    let model = state.memory.model_id().to_owned();
    let memory = state
        .db
        .read(move |c| store::get(c, &owner, &id, &model))
        .await?;
    Ok(axum::Json(memory))
}

pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = memory_id(&id)?;
    let owner = owner(&principal);
    let actor = principal.actor();
    let index = state.memory.index.clone();
    let now = state.clock.now();
    let deleted = id.clone();
    state
        .db
        .write(move |tx| {
            let row = store::delete(tx, &actor, &owner, &deleted, now)?;
            index.remove(&owner.key(), row);
            Ok(())
        })
        .await?;
    Ok(axum::Json(json!({ "id": id, "deletedAt": now })))
}

pub async fn count(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Value>> {
    let owner = owner(&principal);
    let count = state.db.read(move |c| store::count(c, &owner)).await?;
    Ok(axum::Json(json!({ "count": count })))
}

pub async fn spaces(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Value>> {
    let owner = owner(&principal);
    let spaces = state.db.read(move |c| store::spaces(c, &owner)).await?;
    Ok(axum::Json(json!({ "spaces": spaces })))
}

/// Embeds one text (a query).
pub(super) async fn embed_one(state: &AppState, text: String) -> ApiResult<Vec<f32>> {
    let mut out = state
        .memory
        .embedder
        .embed(vec![text])
        .await
        .map_err(embedding_failed)?;
    out.pop()
        .map(|e| e.vector)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the model returned no vector")))
}

/// A validated search.
pub(super) struct Search {
    pub query: String,
    pub spaces: Vec<Space>,
    pub limit: usize,
}

impl Search {
    pub(super) fn new(
        query: Option<String>,
        spaces: Vec<String>,
        limit: Option<u32>,
    ) -> ApiResult<Search> {
        let query = query.unwrap_or_default();
        if query.trim().is_empty() {
            return Err(ApiError::field("query", "must not be empty"));
        }
        if query.chars().count() > MAX_CONTENT_CHARS {
            return Err(ApiError::field(
                "query",
                format!("must be at most {MAX_CONTENT_CHARS} characters"),
            ));
        }
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::field("limit", "must be from 1 to 100"));
        }
        Ok(Search {
            query,
            spaces: Space::parse_list("spaces", &spaces)?,
            limit: limit as usize,
        })
    }
}

/// The rows of the owner's memories in `spaces`; `None` (no restriction) when none is named.
pub(super) async fn rows_in_spaces(
    state: &AppState,
    owner: &Owner,
    spaces: &[Space],
) -> ApiResult<Option<HashSet<RowId>>> {
    if spaces.is_empty() {
        return Ok(None);
    }
    let (o, f) = (owner.clone(), MemoryFilter::spaces_only(spaces.to_vec()));
    let rows = state
        .db
        .read(move |c| store::filtered_rows(c, &o, &f))
        .await?;
    Ok(Some(rows))
}

/// Runs one search for `owner` with an already embedded query.
async fn run_search(
    state: &AppState,
    owner: &Owner,
    vector: Vec<f32>,
    spaces: &[Space],
    limit: usize,
) -> ApiResult<Vec<SearchResult>> {
    let allow = rows_in_spaces(state, owner, spaces).await?;
    if allow.as_ref().is_some_and(HashSet::is_empty) {
        return Ok(Vec::new());
    }
    let index = state.memory.index.clone();
    let key = owner.key();
    let hits: Vec<Hit> =
        run_blocking(move || Ok(index.search(&key, &vector, limit, allow.as_ref()))).await?;
    hydrate(state, owner, hits).await
}

/// The owner's memories behind index rows. A memory deleted since the index answered is
/// missing from the map: SQLite has the last word.
pub(super) async fn load_memories(
    state: &AppState,
    owner: &Owner,
    rows: Vec<RowId>,
) -> ApiResult<std::collections::HashMap<RowId, Memory>> {
    let (o, model) = (owner.clone(), state.memory.model_id().to_owned());
    state
        .db
        .read(move |c| store::by_rows(c, &o, &rows, &model))
        .await
}

/// Loads the memories behind `hits`, in hit order, leaving out any deleted meanwhile.
async fn hydrate(state: &AppState, owner: &Owner, hits: Vec<Hit>) -> ApiResult<Vec<SearchResult>> {
    let rows: Vec<RowId> = hits.iter().map(|h| h.row).collect();
    let mut found = load_memories(state, owner, rows).await?;
    Ok(hits
        .into_iter()
        .filter_map(|h| {
            found.remove(&h.row).map(|memory| SearchResult {
                score: h.score,
                memory,
            })
        })
        .collect())
}

async fn search(state: AppState, principal: Principal, s: Search) -> ApiResult<axum::Json<Value>> {
    let vector = embed_one(&state, s.query.clone()).await?;
    let results = run_search(&state, &owner(&principal), vector, &s.spaces, s.limit).await?;
    Ok(axum::Json(json!({
        "query": s.query,
        "count": results.len(),
        "results": results,
    })))
}

pub async fn search_get(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<SearchParams>,
) -> ApiResult<axum::Json<Value>> {
    let limit = params
        .limit
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| ApiError::field("limit", "must be from 1 to 100"))
        })
        .transpose()?;
    let spaces = params
        .spaces
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let s = Search::new(params.query, spaces, limit)?;
    search(state, principal, s).await
}

pub async fn search_post(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<SearchBody>,
) -> ApiResult<axum::Json<Value>> {
    let s = Search::new(
        Some(body.query),
        body.spaces.unwrap_or_default(),
        body.limit,
    )?;
    search(state, principal, s).await
}
