//! Storing and deleting memories: token counts and embeddings are computed off the async
//! runtime, then the rows, their audit rows and the index entries are written under one
//! transaction (so the index sees writes and deletes in commit order).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Grant;
use crate::auth::perm::MemoryWrite;
use crate::db::run_blocking;
use crate::embed::EmbedError;
use crate::embed::tokens::llm_tokens;
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{parse_value, required_text};
use crate::ids::MemoryId;
use crate::memory::engine::{Generation, Indexed};
use crate::state::AppState;

use super::model::{BatchItem, BatchRequest, MAX_BATCH, Memory, NewMemory, WriteRequest};
use super::store::{self, Owner, Prepared};

/// An embedding failure as clients see it: a full queue is 503 `overloaded` with
/// `Retry-After`; a failed or panicked model call is a 500 (its cause goes to the log).
pub(super) fn embedding_failed(e: EmbedError) -> ApiError {
    match e {
        EmbedError::Overloaded { retry_after_secs } => ApiError::new(
            Code::Overloaded,
            "the embedding model is busy; retry shortly",
        )
        .with_details(json!({ "retryAfterSeconds": retry_after_secs })),
        EmbedError::Failed(e) => ApiError::internal(e),
        EmbedError::Stopped => ApiError::new(Code::Unavailable, "the embedding model has stopped"),
    }
}

/// Embeds `items` with `g`'s model and counts their tokens (both off the async workers,
/// concurrently).
async fn prepare(g: &Generation, lane: &str, items: Vec<NewMemory>) -> ApiResult<Vec<Prepared>> {
    let texts: Vec<String> = items.iter().map(|m| m.content.clone()).collect();
    let counts = {
        let texts = texts.clone();
        run_blocking(move || Ok(texts.iter().map(|t| llm_tokens(t)).collect::<Vec<_>>()))
    };
    let (embeddings, counts) = tokio::join!(g.embedder.embed(lane, texts), counts);
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

/// How often a write is embedded again when a model switch finished while it was embedded.
pub(super) const SWITCH_RETRIES: usize = 3;

/// A write's answer when the model changed between its embedding and its transaction.
pub(super) fn switched_meanwhile() -> ApiError {
    ApiError::new(
        Code::Unavailable,
        "the embedding model changed while this write was embedded; retry it",
    )
}

/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A write sent with an idempotency key: the key and a digest of what was asked.
#[derive(Clone)]
pub struct Idempotency {
    key: String,
    request_hash: String,
}

impl Idempotency {
    pub fn new(key: Option<String>, request: &impl Serialize) -> ApiResult<Option<Idempotency>> {
        let Some(key) = key else {
            return Ok(None);
        };
        let key = required_text("idempotencyKey", key, MAX_IDEMPOTENCY_KEY)?;
        let canonical = serde_json::to_vec(request).map_err(ApiError::internal)?;
        Ok(Some(Idempotency {
            key,
            request_hash: hex::encode(Sha256::digest(&canonical)),
        }))
    }

    /// The first answer, if this key was used for the same request; 409 for another one.
    fn replay(&self, found: Option<store::Replay>) -> ApiResult<Option<Value>> {
        match found {
            None => Ok(None),
            Some(r) if r.request_hash == self.request_hash => Ok(Some(r.response)),
            Some(_) => Err(ApiError::new(
                Code::IdempotencyKeyReused,
                "this idempotency key was used for another request",
            )),
        }
    }
}

/// What a write answers: stored now (201), or the first answer to the same request (200).
pub enum Answer {
    Created(Value),
    Replayed(Value),
}

/// Embeds and stores `items` for the caller in one transaction; the index learns of them once
/// it has committed. `respond` makes the answer from what was stored; with an idempotency key
/// it is recorded in the same transaction, and a retry gets it back instead of a second copy.
pub async fn store_memories(
    state: &AppState,
    grant: &Grant<MemoryWrite>,
    items: Vec<NewMemory>,
    idempotency: Option<Idempotency>,
    respond: impl FnOnce(Vec<Memory>) -> Value + Send + 'static,
) -> ApiResult<Answer> {
    let owner = Owner::of(grant);
    if let Some(idem) = &idempotency {
        let (o, key) = (owner.clone(), idem.key.clone());
        let found = state.db.read(move |c| store::replay(c, &o, &key)).await?;
        if let Some(first) = idem.replay(found)? {
            return Ok(Answer::Replayed(first));
        }
    }
    let mut respond = respond;
    for _ in 0..SWITCH_RETRIES {
        let g = state.memory.generation();
        let prepared = prepare(&g, grant.tenant().as_str(), items.clone()).await?;
        let model = g.model_id().to_owned();
        let (s, owner, idempotency) = (state.clone(), owner.clone(), idempotency.clone());
        let written = grant
            .write(&state.db, move |w| {
                if let Some(idem) = &idempotency {
                    // A retry that raced the first request: it committed while this one embedded.
                    if let Some(first) = idem.replay(store::replay(w, &owner, &idem.key)?)? {
                        return Ok(Ok(Answer::Replayed(first)));
                    }
                }
                // A model switch committed since these vectors were made (read in this
                // transaction, so one earlier in the same group commit counts): embed again.
                if store::stored_model(w)?.as_deref() != Some(model.as_str()) {
                    return Ok(Err(respond));
                }
                let stored = store::insert(w, &prepared, &model)?;
                let created = w.now().millis();
                let entries: Vec<Indexed> = stored
                    .iter()
                    .zip(prepared)
                    .map(|((row, _), p)| (*row, created, p.embedding.vector))
                    .collect();
                let key = owner.key();
                w.after_commit(move || s.memory.committed_inserts(&key, &entries));
                let response = respond(stored.into_iter().map(|(_, m)| m).collect());
                if let Some(idem) = &idempotency {
                    store::remember(w, &idem.key, &idem.request_hash, &response)?;
                }
                Ok(Ok(Answer::Created(response)))
            })
            .await?;
        match written {
            Ok(answer) => return Ok(answer),
            Err(r) => respond = r,
        }
    }
    Err(switched_meanwhile())
}

fn parse_item(index: usize, value: Value) -> ApiResult<NewMemory> {
    let prefix = format!("memories[{index}].");
    let with_index = |mut e: ApiError| {
        let mut details = e.details.take().unwrap_or_else(|| json!({}));
        details["index"] = json!(index);
        e.with_details(details)
    };
    let request: WriteRequest = parse_value(value, &prefix).map_err(with_index)?;
    if request.idempotency_key.is_some() {
        return Err(with_index(ApiError::field(
            &format!("{prefix}idempotencyKey"),
            "give one idempotencyKey for the whole batch, beside memories",
        )));
    }
    request.validate(&prefix).map_err(with_index)
}

/// `transactional: true`: all or nothing, 201. Otherwise each item stands alone: 200 with a
/// result per item (201 or 4xx) in request order, the valid ones stored. A replay of a batch
/// sent with the same idempotency key answers 200 with the first answer.
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
    let idempotency = Idempotency::new(body.idempotency_key.clone(), &body)?;
    let parsed: Vec<ApiResult<NewMemory>> = body
        .memories
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_item(i, v))
        .collect();
    let (answer, fresh) = if body.transactional.unwrap_or(false) {
        let items = parsed.into_iter().collect::<ApiResult<Vec<_>>>()?;
        let respond = |stored: Vec<Memory>| json!({ "created": stored.len(), "memories": stored });
        let answer = store_memories(state, grant, items, idempotency, respond).await?;
        (answer, StatusCode::CREATED)
    } else {
        (
            partial_batch(state, grant, parsed, idempotency).await?,
            StatusCode::OK,
        )
    };
    Ok(match answer {
        Answer::Created(body) => (fresh, axum::Json(body)).into_response(),
        Answer::Replayed(body) => (StatusCode::OK, axum::Json(body)).into_response(),
    })
}

/// The bytes a memory counts for against its workspace's quota, as the database counts them
/// (migration 12): its content, summary, tags (as stored, JSON), space and source.
fn stored_bytes(m: &NewMemory) -> i64 {
    let tags = serde_json::to_string(&m.tags).map_or(0, |t| t.len());
    let n = m.content.len()
        + m.summary.as_ref().map_or(0, String::len)
        + tags
        + m.space.as_str().len()
        + m.source.as_ref().map_or(0, String::len);
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A non-transactional batch: the valid items are stored, the others answered with their error.
async fn partial_batch(
    state: &AppState,
    grant: &Grant<MemoryWrite>,
    parsed: Vec<ApiResult<NewMemory>>,
    idempotency: Option<Idempotency>,
) -> ApiResult<Answer> {
    let n = parsed.len();
    let mut failures: Vec<Option<BatchItem>> = Vec::with_capacity(n);
    let mut good = Vec::new();
    // Items past the plan's room fail on their own (the quota triggers would refuse the
    // whole mutation); a write that races this one and takes the room makes the triggers
    // refuse the batch, and nothing is stored.
    let (tenant, user) = (grant.tenant().clone(), grant.user().clone());
    let mut room = state
        .db
        .read(move |c| crate::plans::store::memory_room(c, &tenant, &user))
        .await?;
    for (i, item) in parsed.into_iter().enumerate() {
        match item.and_then(|m| room.take(stored_bytes(&m)).map(|()| m)) {
            Ok(m) => {
                good.push(m);
                failures.push(None);
            }
            Err(e) => failures.push(Some(BatchItem::failed(i, &e))),
        }
    }
    let respond = move |stored: Vec<Memory>| {
        let created = stored.len();
        let mut stored = stored.into_iter();
        let results: Vec<BatchItem> = failures
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
        json!({ "created": created, "failed": n - created, "results": results })
    };
    if good.is_empty() {
        // Nothing to store, so nothing a retry could duplicate.
        return Ok(Answer::Created(respond(Vec::new())));
    }
    store_memories(state, grant, good, idempotency, respond).await
}

/// Deletes one of the caller's memories; it is gone from every search at once.
pub async fn delete(
    state: &AppState,
    grant: &Grant<MemoryWrite>,
    id: MemoryId,
) -> ApiResult<Value> {
    let key = Owner::of(grant).key();
    let s = state.clone();
    let deleted = id.clone();
    grant
        .write(&state.db, move |w| {
            let row = store::delete(w, &deleted)?;
            w.after_commit(move || s.memory.committed_delete(&key, row));
            Ok(())
        })
        .await?;
    Ok(json!({ "id": id, "deletedAt": grant.now() }))
}
