//! `/v1/agents/executions` handlers, for agent access keys: each works its own target's queue
//! (list, claim, heartbeat, complete, acknowledge a cancellation).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agents::store as targets;
use crate::auth::perm::Executions;
use crate::auth::{Grant, Write};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{
    Ids, Json, Query, bounded_text, limit_within, query_number, required_text,
};
use crate::ids::{ExecutionId, RunId};
use crate::state::AppState;

use super::lifecycle::{self, Hold};
use super::model::{Execution, ExecutionState};
use super::store;

/// Longest claim token, worker id and idempotency key; longest progress message and note.
pub const MAX_TOKEN_CHARS: usize = 200;
pub const MAX_MESSAGE_CHARS: usize = 2_000;
/// Pending executions listed unless asked otherwise, and at most. A worker takes one at a time
/// from the head of the queue; long pages only make every worker reach for the same ones.
const LIST_DEFAULT: u32 = 10;
const LIST_MAX: u32 = 100;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    pub limit: Option<String>,
}

fn lease_ms(state: &AppState) -> i64 {
    i64::try_from(state.settings.execution_lease.as_millis()).unwrap_or(i64::MAX)
}

/// An execution as a worker sees it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionView<'a> {
    id: &'a ExecutionId,
    run_id: &'a RunId,
    state: ExecutionState,
    attempt: i64,
    worker_id: Option<&'a str>,
    lease_expires_at: Option<Timestamp>,
    heartbeat_interval_seconds: u64,
    cancel_requested: bool,
    result: Option<&'a Value>,
    created_at: Timestamp,
}

impl<'a> ExecutionView<'a> {
    fn of(state: &AppState, e: &'a Execution) -> Self {
        ExecutionView {
            id: &e.id,
            run_id: &e.run_id,
            state: e.state,
            attempt: e.attempt,
            worker_id: e.worker_id.as_deref(),
            lease_expires_at: e.lease_expires_at,
            heartbeat_interval_seconds: (state.settings.execution_lease.as_secs() / 3).max(1),
            cancel_requested: e.cancel_requested,
            result: e.result.as_ref(),
            created_at: e.created_at,
        }
    }
}

/// A pending execution in the list: with its run's input as stored, and whether the target's
/// policy holds it back now.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed<'a> {
    #[serde(flatten)]
    execution: ExecutionView<'a>,
    input: &'a serde_json::value::RawValue,
    blocked: bool,
    block_reasons: &'a [String],
}

fn view(state: &AppState, e: &Execution) -> Value {
    json!(ExecutionView::of(state, e))
}

pub async fn list(
    grant: Grant<Executions>,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let limit = limit_within(
        query_number("limit", params.limit.as_deref(), LIST_MAX)?,
        LIST_DEFAULT,
        LIST_MAX,
    )?;
    let (tenant, target) = (grant.tenant().clone(), grant.target().clone());
    let (rows, block) = state
        .db
        .read(move |c| {
            let rows = store::pending(c, &tenant, &target, limit)?;
            let target = targets::load(c, &tenant, &target)?;
            Ok((
                rows,
                lifecycle::queue_block(&target).map(<[String]>::to_vec),
            ))
        })
        .await?;
    let reasons = block.unwrap_or_default();
    let executions: Vec<Listed<'_>> = rows
        .iter()
        .map(|(e, input)| Listed {
            execution: ExecutionView::of(&state, e),
            input,
            blocked: !reasons.is_empty(),
            block_reasons: &reasons,
        })
        .collect();
    #[derive(Serialize)]
    struct Page<'a> {
        executions: Vec<Listed<'a>>,
    }
    let body = serde_json::to_vec(&Page { executions }).map_err(ApiError::internal)?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
