//! `/v1/orchestrator/runs` handlers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::agents::model::TargetKind;
use crate::agents::store as targets;
use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{Json, Query, parse_json};
use crate::ids::{RunId, TargetId};
use crate::state::AppState;
use axum::body::Bytes;

use super::model::{CreateRun, DecideBody, ListParams, RunState, run_view};
use super::store::{self, RunFilter};

const MAX_INPUT_BYTES: usize = 1 << 20;

fn run_id(raw: &str) -> ApiResult<String> {
    RunId::parse(raw)
        .map(|r| r.as_str().to_owned())
        .ok_or_else(|| ApiError::not_found("run"))
}

/// The run with its approvals, execution and (optionally) timeline.
async fn full_view(
    state: &AppState,
    tenant: crate::ids::TenantId,
    id: String,
    with_events: bool,
) -> ApiResult<Value> {
    state
        .db
        .read(move |c| {
            let run = store::load(c, &tenant, &id)?;
            let approvals = store::approvals(c, &id)?;
            let execution = store::execution_of(c, &id)?;
            let mut v = run_view(&run, &approvals, execution.as_ref());
            if with_events {
                v["events"] = json!(store::events(c, &id)?);
            }
            Ok(v)
        })
        .await
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<CreateRun>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let granted = principal.require(Role::Member)?;
    let target_id =
        TargetId::parse(&body.target_id).ok_or_else(|| ApiError::not_found("dispatch target"))?;
    if body.input.to_string().len() > MAX_INPUT_BYTES {
        return Err(ApiError::field("input", "must be at most 1 MiB of JSON"));
    }
    let key = body.idempotency_key.map(|k| k.trim().to_owned());
    if key
        .as_deref()
        .is_some_and(|k| k.is_empty() || k.len() > 200)
    {
        return Err(ApiError::field(
            "idempotencyKey",
            "must be 1 to 200 characters",
        ));
    }
    let now = state.clock.now();
    let (id, created) = state
        .db
        .write(move |tx| {
            let actor = granted.actor();
            let target = targets::load(tx, &actor.tenant_id, &target_id)?;
            if target.kind != TargetKind::LocalAgent {
                return Err(ApiError::field(
                    "targetId",
                    "dispatch to REMOTE_A2A targets is not available in this version; use a LOCAL_AGENT target",
                ));
            }
            let (run, created) = store::create(
                tx,
                actor,
                &target,
                &body.input,
                body.requires_approval.unwrap_or(false),
                key.as_deref(),
                now,
            )?;
            Ok((run.id, created))
        })
        .await?;
    let view = full_view(&state, principal.tenant_id.clone(), id, true).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Value>> {
    let number = |field: &str, v: Option<String>, default: u32, max: u32| -> ApiResult<u32> {
        match v {
            None => Ok(default),
            Some(s) => s.parse::<u32>().ok().filter(|n| *n <= max).ok_or_else(|| {
                ApiError::field(field, format!("must be a whole number up to {max}"))
            }),
        }
    };
    let limit = number("limit", p.limit, 50, 200)?.max(1);
    let filter = RunFilter {
        target_id: p.target_id,
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
        limit,
        offset: number("offset", p.offset, 0, 1_000_000)?,
    };
    let tenant = principal.tenant_id.clone();
    let (offset, limit) = (filter.offset, filter.limit);
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
            Ok(json!({ "runs": views, "total": total, "limit": limit, "offset": offset }))
        })
        .await?;
    Ok(axum::Json(page))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = run_id(&id)?;
    Ok(axum::Json(
        full_view(&state, principal.tenant_id.clone(), id, true).await?,
    ))
}

pub async fn control(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = run_id(&id)?;
    let v = full_view(&state, principal.tenant_id.clone(), id, false).await?;
    let mut control = v["control"].clone();
    control["recommendedActions"] = v["recommendedActions"].clone();
    Ok(axum::Json(control))
}

/// The requester may cancel their own run; OWNERs and ADMINs any run.
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = run_id(&id)?;
    let is_admin = principal.require(Role::Admin).is_ok();
    let granted = principal.require(Role::Member)?;
    let now = state.clock.now();
    let rid = id.clone();
    state
        .db
        .write(move |tx| {
            let actor = granted.actor();
            let run = store::load(tx, &actor.tenant_id, &rid)?;
            let own = actor
                .user_id
                .as_ref()
                .is_some_and(|u| u.as_str() == run.requested_by);
            if !own && !is_admin {
                return Err(ApiError::new(
                    Code::InsufficientRole,
                    "only the requester or an OWNER or ADMIN may cancel this run",
                ));
            }
            store::cancel(tx, actor, &rid, now)
        })
        .await?;
    Ok(axum::Json(
        full_view(&state, principal.tenant_id.clone(), id, true).await?,
    ))
}

async fn decide(
    state: AppState,
    principal: Principal,
    id: String,
    approval: String,
    approve: bool,
    note: Option<String>,
) -> ApiResult<axum::Json<Value>> {
    let granted = principal.require(Role::Admin)?;
    let id = run_id(&id)?;
    let now = state.clock.now();
    let rid = id.clone();
    state
        .db
        .write(move |tx| {
            let actor = granted.actor();
            let run = store::load(tx, &actor.tenant_id, &rid)?;
            let target_id = TargetId::parse(&run.target_id)
                .ok_or_else(|| ApiError::not_found("dispatch target"))?;
            let target = targets::load(tx, &actor.tenant_id, &target_id)?;
            store::decide(tx, actor, &target, &rid, &approval, approve, note, now)
        })
        .await?;
    Ok(axum::Json(
        full_view(&state, principal.tenant_id.clone(), id, true).await?,
    ))
}

/// The body of approve/reject is optional (`{note?}`).
fn decision_note(body: &[u8]) -> ApiResult<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let b: DecideBody = parse_json(body)?;
    Ok(b.note.map(|n| n.chars().take(2000).collect()))
}

pub async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, approval)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<axum::Json<Value>> {
    let note = decision_note(&body)?;
    decide(state, principal, id, approval, true, note).await
}

pub async fn reject(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, approval)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<axum::Json<Value>> {
    let note = decision_note(&body)?;
    decide(state, principal, id, approval, false, note).await
}

/// Reconcile, retry-cancel and resolve-remote act on a remote agent's task; runs on local
/// agents have none, so these are refused with the reason.
pub async fn remote_only(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = run_id(&id)?;
    let tenant = principal.tenant_id.clone();
    let run = state.db.read(move |c| store::load(c, &tenant, &id)).await?;
    Err(ApiError::new(
        Code::InvalidRunState,
        format!(
            "run {} is on a {} target: this action applies to REMOTE_A2A runs only",
            run.id, run.target_kind
        ),
    ))
}
