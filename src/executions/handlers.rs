//! `/v1/agents/executions` handlers, for agent access keys: each acts for its own target only.

use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::Json;
use crate::ids::{ExecutionId, TargetId};
use crate::state::AppState;

use super::store::{self, Execution, Holder};
use crate::clock::Timestamp;

const MAX_TOKEN: usize = 200;

fn agent_target(p: &Principal) -> ApiResult<TargetId> {
    p.agent_target.clone().ok_or_else(|| {
        ApiError::new(
            Code::AgentKeyRequired,
            "the execution queue is for agent access keys (POST /v1/keys with a targetId)",
        )
    })
}

fn execution_id(raw: &str) -> ApiResult<String> {
    ExecutionId::parse(raw)
        .map(|id| id.as_str().to_owned())
        .ok_or_else(|| ApiError::not_found("execution"))
}

fn claim_token(raw: &str) -> ApiResult<String> {
    let t = raw.trim();
    if t.is_empty() || t.chars().count() > MAX_TOKEN || t.chars().any(char::is_control) {
        return Err(ApiError::field("claimToken", "must be 1 to 200 characters"));
    }
    Ok(t.to_owned())
}

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
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Value>> {
    let target = agent_target(&principal)?;
    let tenant = principal.tenant_id.clone();
    let rows = state
        .db
        .read(move |c| store::pending(c, &tenant, &target, 100))
        .await?;
    let executions: Vec<Value> = rows
        .iter()
        .map(|(e, input)| {
            let mut v = view(&state, e);
            v["input"] = input.clone();
            v
        })
        .collect();
    Ok(axum::Json(json!({ "executions": executions })))
}

/// The agent, its target, the execution and the presented claim token, checked.
fn holder(principal: &Principal, id: &str, token: &str) -> ApiResult<Holder> {
    Ok(Holder {
        actor: principal.actor(),
        target: agent_target(principal)?,
        id: execution_id(id)?,
        token: claim_token(token)?,
    })
}

/// Runs one queue operation for `h` in a write transaction and answers with the execution.
async fn act(
    state: &AppState,
    h: Holder,
    op: impl FnOnce(&rusqlite::Transaction<'_>, &Holder, Timestamp) -> ApiResult<Execution>
    + Send
    + 'static,
) -> ApiResult<axum::Json<Value>> {
    let now = state.clock.now();
    let e = state.db.write(move |tx| op(tx, &h, now)).await?;
    Ok(axum::Json(view(state, &e)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimBody {
    pub claim_token: String,
    pub worker_id: Option<String>,
}

pub async fn claim(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<ClaimBody>,
) -> ApiResult<axum::Json<Value>> {
    let h = holder(&principal, &id, &b.claim_token)?;
    let worker = b.worker_id.map(|w| w.chars().take(200).collect::<String>());
    let lease = lease_ms(&state);
    act(&state, h, move |tx, h, now| {
        store::claim(tx, h, worker.as_deref(), lease, now)
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
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<HeartbeatBody>,
) -> ApiResult<axum::Json<Value>> {
    let h = holder(&principal, &id, &b.claim_token)?;
    let progress = b
        .progress_message
        .map(|m| m.chars().take(2000).collect::<String>());
    let lease = lease_ms(&state);
    act(&state, h, move |tx, h, now| {
        store::heartbeat(tx, h, progress.as_deref(), lease, now)
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
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<CompleteBody>,
) -> ApiResult<axum::Json<Value>> {
    let h = holder(&principal, &id, &b.claim_token)?;
    if b.idempotency_key
        .as_deref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_TOKEN)
    {
        return Err(ApiError::field(
            "idempotencyKey",
            "must be 1 to 200 characters",
        ));
    }
    let (result, key) = (b.result, b.idempotency_key);
    act(&state, h, move |tx, h, now| {
        store::complete(tx, h, result, key.as_deref(), now)
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
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<AckCancelBody>,
) -> ApiResult<axum::Json<Value>> {
    let h = holder(&principal, &id, &b.claim_token)?;
    let note = b.note.map(|n| n.chars().take(2000).collect::<String>());
    act(&state, h, move |tx, h, now| {
        store::ack_cancel(tx, h, note.as_deref(), now)
    })
    .await
}

/// One sweep of expired leases (the background task runs it every second).
pub async fn recover_leases(state: &AppState) -> ApiResult<usize> {
    let now = state.clock.now();
    let max = i64::from(state.settings.max_attempts);
    state
        .db
        .write(move |tx| store::recover_expired(tx, max, now))
        .await
}
