//! `/v1/agents/executions` handlers, for agent access keys: each works its own target's queue
//! (list, claim, heartbeat, complete, acknowledge a cancellation).

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agents::store as targets;
use crate::auth::perm::Executions;
use crate::auth::{Grant, Write};
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{Ids, Json, bounded_text, required_text};
use crate::ids::ExecutionId;
use crate::state::AppState;

use super::lifecycle::{self, Hold};
use super::model::Execution;
use super::store;

/// Longest claim token, worker id and idempotency key; longest progress message and note.
pub const MAX_TOKEN_CHARS: usize = 200;
pub const MAX_MESSAGE_CHARS: usize = 2_000;
/// Pending executions listed at most.
const LIST_LIMIT: u32 = 100;

fn lease_ms(state: &AppState) -> i64 {
    i64::try_from(state.settings.execution_lease.as_millis()).unwrap_or(i64::MAX)
}

fn view(state: &AppState, e: &Execution) -> Value {
    let lease = state.settings.execution_lease.as_secs();
    json!({
        "id": e.id,
        "runId": e.run_id,
        "state": e.state,
        "attempt": e.attempt,
        "workerId": e.worker_id,
        "leaseExpiresAt": e.lease_expires_at,
        "heartbeatIntervalSeconds": (lease / 3).max(1),
        "cancelRequested": e.cancel_requested,
        "result": e.result,
        "createdAt": e.created_at,
    })
}

pub async fn list(
    grant: Grant<Executions>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let (tenant, target) = (grant.tenant().clone(), grant.target().clone());
    let (rows, block) = state
        .db
        .read(move |c| {
            let rows = store::pending(c, &tenant, &target, LIST_LIMIT)?;
            let target = targets::load(c, &tenant, &target)?;
            Ok((
                rows,
                lifecycle::queue_block(&target).map(<[String]>::to_vec),
            ))
        })
        .await?;
    let executions: Vec<Value> = rows
        .iter()
        .map(|(e, input)| {
            let mut v = view(&state, e);
            v["input"] = input.clone();
            v["blocked"] = json!(block.is_some());
            v["blockReasons"] = json!(block.clone().unwrap_or_default());
            v
        })
        .collect();
    Ok(axum::Json(json!({ "executions": executions })))
}

/// Runs one queue operation on execution `id` with the presented claim token, and answers with
/// the execution.
async fn act(
    grant: Grant<Executions>,
    state: &AppState,
    id: ExecutionId,
    token: String,
    op: impl FnOnce(&Write<'_, Executions>, Hold<'_>) -> ApiResult<Execution> + Send + 'static,
) -> ApiResult<axum::Json<Value>> {
    let token = required_text("claimToken", token, MAX_TOKEN_CHARS)?;
    let e = grant
        .write(&state.db, move |w| {
            op(
                w,
                Hold {
                    id: &id,
                    token: &token,
                },
            )
        })
        .await?;
    Ok(axum::Json(view(state, &e)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimBody {
    pub claim_token: String,
    pub worker_id: Option<String>,
}

pub async fn claim(
    grant: Grant<Executions>,
    State(state): State<AppState>,
    Ids(id): Ids<ExecutionId>,
    Json(b): Json<ClaimBody>,
) -> ApiResult<axum::Json<Value>> {
    let worker = bounded_text("workerId", b.worker_id, MAX_TOKEN_CHARS)?;
    let lease = lease_ms(&state);
    act(grant, &state, id, b.claim_token, move |w, h| {
        lifecycle::claim(w, h, worker.as_deref(), lease)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatBody {
    pub claim_token: String,
    pub progress_message: Option<String>,
}

pub async fn heartbeat(
    grant: Grant<Executions>,
    State(state): State<AppState>,
    Ids(id): Ids<ExecutionId>,
    Json(b): Json<HeartbeatBody>,
) -> ApiResult<axum::Json<Value>> {
    let progress = bounded_text("progressMessage", b.progress_message, MAX_MESSAGE_CHARS)?;
    let lease = lease_ms(&state);
    act(grant, &state, id, b.claim_token, move |w, h| {
        lifecycle::heartbeat(w, h, progress.as_deref(), lease)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompleteBody {
    pub claim_token: String,
    pub result: Option<Value>,
    pub idempotency_key: Option<String>,
}

pub async fn complete(
    grant: Grant<Executions>,
    State(state): State<AppState>,
    Ids(id): Ids<ExecutionId>,
    Json(b): Json<CompleteBody>,
) -> ApiResult<axum::Json<Value>> {
    let key = b
        .idempotency_key
        .map(|k| required_text("idempotencyKey", k, MAX_TOKEN_CHARS))
        .transpose()?;
    let result = b.result;
    let max = state.settings.max_result_bytes;
    let size = result.as_ref().map_or(0, |r| r.to_string().len());
    if size > max {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            format!("result: {size} bytes of JSON; at most {max} are accepted"),
        )
        .with_details(json!({ "field": "result", "limit": max })));
    }
    act(grant, &state, id, b.claim_token, move |w, h| {
        lifecycle::complete(w, h, result, key.as_deref())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AckCancelBody {
    pub claim_token: String,
    pub note: Option<String>,
}

pub async fn ack_cancel(
    grant: Grant<Executions>,
    State(state): State<AppState>,
    Ids(id): Ids<ExecutionId>,
    Json(b): Json<AckCancelBody>,
) -> ApiResult<axum::Json<Value>> {
    let note = bounded_text("note", b.note, MAX_MESSAGE_CHARS)?;
    act(grant, &state, id, b.claim_token, move |w, h| {
        lifecycle::ack_cancel(w, h, note.as_deref())
    })
    .await
}
