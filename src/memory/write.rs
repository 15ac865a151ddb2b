//! Storing and deleting memories: token counts and embeddings are computed off the async
//! runtime, then the rows, their audit rows and the index entries are written under one
//! transaction (so the index sees writes and deletes in commit order).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::Grant;
use crate::auth::perm::MemoryWrite;
use crate::db::run_blocking;
use crate::embed::tokens::llm_tokens;
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::parse_value;
use crate::ids::MemoryId;
use crate::index::RowId;
use crate::state::AppState;

use super::model::{BatchItem, BatchRequest, MAX_BATCH, Memory, NewMemory, WriteRequest};
use super::store::{self, Owner, Prepared};

/// An embedding failure as clients see it (the cause goes to the log).
pub(super) fn embedding_failed(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "embedding failed");
    ApiError::new(
        Code::Unavailable,
        "the embedding model could not process the request",
    )
}

/// Embeds `items` and counts their tokens (both off the async workers, concurrently).
async fn prepare(state: &AppState, items: Vec<NewMemory>) -> ApiResult<Vec<Prepared>> {
    let texts: Vec<String> = items.iter().map(|m| m.content.clone()).collect();
    let counts = {
        let texts = texts.clone();
        run_blocking(move || Ok(texts.iter().map(|t| llm_tokens(t)).collect::<Vec<_>>()))
    };
    let (embeddings, counts) = tokio::join!(state.memory.embedder.embed(texts), counts);
    let embeddings = embeddings.map_err(embedding_failed)?;
    Ok(items
        .into_iter()
        .zip(embeddings)
        .zip(counts?)
        .map(|((memory, embedding), token_count)| Prepared {
            memory,
            embedding,
            token_count,
        })
        .collect())
}

/// Embeds and stores `items` for the caller, all in one transaction that also updates the index.
pub async fn store_memories(
    state: &AppState,
    grant: &Grant<MemoryWrite>,
    items: Vec<NewMemory>,
) -> ApiResult<Vec<Memory>> {
    let prepared = prepare(state, items).await?;
    let key = Owner::of(grant).key();
    let index = state.memory.index.clone();
    let model = state.memory.model_id().to_owned();
    grant
        .write(&state.db, move |w| {
            let stored = store::insert(w, &prepared, &model)?;
            let created = w.now().millis();
            let entries: Vec<(RowId, i64, &[f32])> = stored
                .iter()
                .zip(&prepared)
                .map(|((row, _), p)| (*row, created, p.embedding.vector.as_slice()))
                .collect();
            index.insert(&key, &entries);
            Ok(stored.into_iter().map(|(_, m)| m).collect())
        })
        .await
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
    state: &AppState,
    grant: &Grant<MemoryWrite>,
    body: BatchRequest,
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
        let stored = store_memories(state, grant, items).await?;
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
        store_memories(state, grant, good).await?
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

/// Deletes one of the caller's memories; it is gone from every search at once.
pub async fn delete(
    state: &AppState,
    grant: &Grant<MemoryWrite>,
    id: MemoryId,
) -> ApiResult<Value> {
    let key = Owner::of(grant).key();
    let index = state.memory.index.clone();
    let deleted = id.clone();
    grant
        .write(&state.db, move |w| {
            let row = store::delete(w, &deleted)?;
            index.remove(&key, row);
            Ok(())
        })
        .await?;
    Ok(json!({ "id": id, "deletedAt": grant.now() }))
}
