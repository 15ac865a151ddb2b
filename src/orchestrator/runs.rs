//! `/v1/orchestrator/runs` handlers: dispatch, read, cancel and decide runs.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use rusqlite::Connection;
use serde_json::{Value, json};

use crate::agents::model::TargetKind;
use crate::agents::store as targets;
use crate::auth::Grant;
use crate::auth::perm::{RunsAdmin, RunsRead, RunsWrite};
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{Ids, Json, Paging, Query, bounded_text, parse_json, required_text};
use crate::ids::{ApprovalId, RunId, TargetId, TenantId};
use crate::state::AppState;

use super::lifecycle;
use super::model::{CreateRun, DecideBody, ListParams, RunState, run_view};
use super::store::{self, RunFilter};

/// Largest run input, as JSON text.
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// Longest idempotency key, and longest approval note (characters).
pub const MAX_KEY_CHARS: usize = 200;
pub const MAX_NOTE_CHARS: usize = 2_000;

/// The run with its approvals, execution and (optionally) timeline.
fn full_view(
    conn: &Connection,
    tenant: &TenantId,
    id: &RunId,
    with_events: bool,
) -> ApiResult<Value> {
    let run = store::load_run(conn, tenant, id)?;
    let approvals = store::approvals(conn, id)?;
    let execution = store::execution_of(conn, id)?;
    let mut v = run_view(&run, &approvals, execution.as_ref());
    if with_events {
        v["events"] = json!(store::events(conn, id)?);
    }
    Ok(v)
}

async fn read_view(
    state: &AppState,
    tenant: &TenantId,
    id: RunId,
    events: bool,
) -> ApiResult<Value> {
    let tenant = tenant.clone();
    state
        .db
        .read(move |c| full_view(c, &tenant, &id, events))
        .await
}

pub async fn create(
    grant: Grant<RunsWrite>,
    State(state): State<AppState>,
    Json(body): Json<CreateRun>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let target_id =
        TargetId::parse(&body.target_id).ok_or_else(|| ApiError::not_found("dispatch target"))?;
    if body.input.to_string().len() > MAX_INPUT_BYTES {
        return Err(ApiError::field("input", "must be at most 1 MiB of JSON"));
    }
    let key = body
        .idempotency_key
        .map(|k| required_text("idempotencyKey", k, MAX_KEY_CHARS))
        .transpose()?;
    let (input, asked) = (body.input, body.requires_approval.unwrap_or(false));
    let (view, created) = grant
        .write(&state.db, move |w| {
            let target = targets::load(w, w.tenant(), &target_id)?;
            if target.kind != TargetKind::LocalAgent {
                return Err(ApiError::field(
                    "targetId",
                    "dispatch to REMOTE_A2A targets is not available in this version; use a LOCAL_AGENT target",
                ));
            }
            let (run, created) = lifecycle::create(w, &target, &input, asked, key.as_deref())?;
            Ok((full_view(w, w.tenant(), &run.id, true)?, created))
        })
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)))
}

pub async fn list(
    grant: Grant<RunsRead>,
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Value>> {
    let filter = RunFilter {
        target_id: p
            .target_id
            .map(|t| {
                TargetId::parse(&t)
                    .ok_or_else(|| ApiError::field("targetId", "is not a target id (tgt_…)"))
            })
            .transpose()?,
        state: p
            .state
            .map(|s| {
                RunState::parse(&s).ok_or_else(|| ApiError::field("state", "is not a run state"))
            })
            .transpose()?,
        kind: p
            .target_kind
            .map(|k| {
                TargetKind::parse(&k).ok_or_else(|| {
                    ApiError::field("targetKind", "must be LOCAL_AGENT or REMOTE_A2A")
                })
            })
            .transpose()?,
        paging: Paging::from_query(p.limit.as_deref(), p.offset.as_deref(), 50, 200)?,
    };
    let tenant = grant.tenant().clone();
    let page = state
        .db
        .read(move |c| {
            let (runs, total) = store::list(c, &tenant, &filter)?;
            let mut views = Vec::with_capacity(runs.len());
            for run in &runs {
                let approvals = store::approvals(c, &run.id)?;
                let execution = store::execution_of(c, &run.id)?;
                views.push(run_view(run, &approvals, execution.as_ref()));
            }
            Ok(json!({ "runs": views, "total": total,
                       "limit": filter.paging.limit, "offset": filter.paging.offset }))
        })
        .await?;
    Ok(axum::Json(page))
}

pub async fn get(
    grant: Grant<RunsRead>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        read_view(&state, grant.tenant(), id, true).await?,
    ))
}

pub async fn control(
    grant: Grant<RunsRead>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    let v = read_view(&state, grant.tenant(), id, false).await?;
    let mut control = v["control"].clone();
    control["recommendedActions"] = v["recommendedActions"].clone();
    Ok(axum::Json(control))
}

/// The requester may cancel their own run; OWNERs and ADMINs any run.
pub async fn cancel(
    grant: Grant<RunsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    let any = grant.also::<RunsAdmin>().is_ok();
    let view = grant
        .write(&state.db, move |w| {
            lifecycle::cancel(w, &id, any)?;
            full_view(w, w.tenant(), &id, true)
        })
        .await?;
    Ok(axum::Json(view))
}

/// The body of approve/reject is optional (`{note?}`).
fn decision_note(body: &[u8]) -> ApiResult<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let b: DecideBody = parse_json(body)?;
    bounded_text("note", b.note, MAX_NOTE_CHARS)
}

async fn decide(
    grant: Grant<RunsAdmin>,
    state: AppState,
    (id, approval): (RunId, ApprovalId),
    approve: bool,
    body: &[u8],
) -> ApiResult<axum::Json<Value>> {
    let note = decision_note(body)?;
    let view = grant
        .write(&state.db, move |w| {
            lifecycle::decide(w, &id, &approval, approve, note.as_deref())?;
            full_view(w, w.tenant(), &id, true)
        })
        .await?;
    Ok(axum::Json(view))
}

pub async fn approve(
    grant: Grant<RunsAdmin>,
    State(state): State<AppState>,
    Ids(ids): Ids<(RunId, ApprovalId)>,
    body: Bytes,
) -> ApiResult<axum::Json<Value>> {
    decide(grant, state, ids, true, &body).await
}

pub async fn reject(
    grant: Grant<RunsAdmin>,
    State(state): State<AppState>,
    Ids(ids): Ids<(RunId, ApprovalId)>,
    body: Bytes,
) -> ApiResult<axum::Json<Value>> {
    decide(grant, state, ids, false, &body).await
}

/// Reconcile, retry-cancel and resolve-remote act on a remote agent's task; runs on local
/// agents have none, so these are refused with the reason.
async fn remote_only(
    grant: Grant<RunsAdmin>,
    state: AppState,
    id: RunId,
) -> ApiResult<axum::Json<Value>> {
    let tenant = grant.tenant().clone();
    let run = state
        .db
        .read(move |c| store::load_run(c, &tenant, &id))
        .await?;
    Err(ApiError::new(
        Code::InvalidRunState,
        format!(
            "run {} is on a {} target: this action applies to REMOTE_A2A runs only",
            run.id,
            run.target_kind.as_str()
        ),
    ))
}

pub async fn reconcile(
    grant: Grant<RunsAdmin>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    remote_only(grant, state, id).await
}

pub async fn retry_cancel(
    grant: Grant<RunsAdmin>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    remote_only(grant, state, id).await
}

pub async fn resolve_remote(
    grant: Grant<RunsAdmin>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    remote_only(grant, state, id).await
}
