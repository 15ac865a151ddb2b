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
use crate::http::extract::{
    Ids, Json, Paging, Query, bounded_text, limit_within, parse_json, query_number, required_text,
};
use crate::ids::{ApprovalId, RunId, TargetId, TenantId};
use crate::state::AppState;

use super::model::{
    Approval, CreateRun, DecideBody, Detail, Execution, ListParams, RemoteTaskRow,
    ResolveRemoteBody, Run, RunParts, RunState, RunViewParams, run_view,
};
use super::remote::Look;
use super::store::{self, RunFilter};
use super::{lifecycle, remote};

/// Largest run input, as JSON text.
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// Longest idempotency key, and longest approval note (characters).
pub const MAX_KEY_CHARS: usize = 200;
pub const MAX_NOTE_CHARS: usize = 2_000;

/// Events a run view shows unless asked otherwise, and at most.
const EVENTS_PAGE: u32 = 100;
const MAX_EVENTS_PAGE: u32 = 1_000;

/// The parts of a run a view shows, read in one go.
struct Loaded {
    approvals: Vec<Approval>,
    execution: Option<Execution>,
    queue_block: Option<Vec<String>>,
    remote: Option<RemoteTaskRow>,
}

impl Loaded {
    fn read(conn: &Connection, run: &Run) -> ApiResult<Loaded> {
        let target = targets::find(conn, &run.tenant_id, &run.target_id)?;
        Ok(Loaded {
            approvals: store::approvals(conn, &run.id)?,
            execution: store::execution_of(conn, &run.id)?,
            queue_block: target
                .as_ref()
                .and_then(lifecycle::queue_block)
                .map(<[String]>::to_vec),
            remote: match run.target_kind {
                TargetKind::RemoteA2a => store::load_remote(conn, &run.id)?,
                TargetKind::LocalAgent => None,
            },
        })
    }

    fn view(&self, run: &Run, detail: Detail) -> Value {
        let parts = RunParts {
            approvals: &self.approvals,
            execution: self.execution.as_ref(),
            queue_block: self.queue_block.as_deref(),
            remote: self.remote.as_ref(),
        };
        run_view(run, &parts, detail)
    }
}

/// A page of a run's timeline: events after a sequence number, oldest first.
#[derive(Debug, Clone, Copy)]
struct EventPage {
    after: i64,
    limit: u32,
}

/// The run in full: with its approvals, execution and (a page of) its timeline.
fn full_view(
    conn: &Connection,
    tenant: &TenantId,
    id: &RunId,
    events: Option<EventPage>,
) -> ApiResult<Value> {
    let run = store::load_run(conn, tenant, id)?;
    let mut v = Loaded::read(conn, &run)?.view(&run, Detail::Full);
    if let Some(page) = events {
        let (events, next) = store::events(conn, id, page.after, page.limit)?;
        v["events"] = json!(events);
        v["eventsNext"] = json!(next);
    }
    Ok(v)
}

const FIRST_EVENTS: Option<EventPage> = Some(EventPage {
    after: 0,
    limit: EVENTS_PAGE,
});

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
            let (run, created) = lifecycle::create(w, &target, &input, asked, key.as_deref())?;
            Ok((full_view(w, w.tenant(), &run.id, FIRST_EVENTS)?, created))
        })
        .await?;
    // A remote run just dispatched is sent now, after its commit; if the agent does not answer,
    // the refresh job sends it later.
    let mut view = view;
    if created && view["state"] == "dispatched" && view["targetKind"] == "REMOTE_A2A" {
        let id = RunId::parse(view["id"].as_str().unwrap_or_default())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a run view without its id")))?;
        view = look_now(&grant, &state, &id, Look::Due).await?;
    }
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
                views.push(Loaded::read(c, run)?.view(run, Detail::Summary));
            }
            Ok(json!({ "runs": views, "total": total,
                       "limit": filter.paging.limit, "offset": filter.paging.offset }))
        })
        .await?;
    Ok(axum::Json(page))
}

async fn read_view(
    state: &AppState,
    tenant: &TenantId,
    id: RunId,
    events: Option<EventPage>,
) -> ApiResult<Value> {
    let tenant = tenant.clone();
    state
        .db
        .read(move |c| full_view(c, &tenant, &id, events))
        .await
}

/// `GET /orchestrator/runs/:id?eventsAfter=&eventsLimit=`: the run, with a page of its
/// timeline (`eventsNext` is the `eventsAfter` of the next page, null on the last).
pub async fn get(
    grant: Grant<RunsRead>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
    Query(p): Query<RunViewParams>,
) -> ApiResult<axum::Json<Value>> {
    let after = query_number("eventsAfter", p.events_after.as_deref(), u32::MAX)?;
    let limit = query_number("eventsLimit", p.events_limit.as_deref(), MAX_EVENTS_PAGE)?;
    let page = EventPage {
        after: i64::from(after.unwrap_or(0)),
        limit: limit_within(limit, EVENTS_PAGE, MAX_EVENTS_PAGE).map_err(|_| {
            ApiError::field(
                "eventsLimit",
                format!("must be a whole number from 1 to {MAX_EVENTS_PAGE}"),
            )
        })?,
    };
    let view = read_view(&state, grant.tenant(), id, Some(page)).await?;
    Ok(axum::Json(view))
}

pub async fn control(
    grant: Grant<RunsRead>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    let v = read_view(&state, grant.tenant(), id, None).await?;
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
    // Only a cancel this request asked for is sent now; asking again is not a retry.
    cancel_then_send(grant, state, id, lifecycle::cancel, false).await
}

/// Sends a remote run's failed cancel again now: allowed only while the cancel is pending after
/// a failed attempt (409 `cancel_not_retryable` otherwise, with the reason). The requester may
/// retry their own run's cancel; OWNERs and ADMINs any run's.
pub async fn retry_cancel(
    grant: Grant<RunsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    cancel_then_send(grant, state, id, lifecycle::retry_cancel, true).await
}

/// Records a cancel (`record`: cancel or retry-cancel) and, when that leaves a remote cancel
/// pending, sends it now, after its commit (if the agent does not answer, the refresh job
/// retries it). `after_failure`: also send a cancel whose last attempt failed (a retry);
/// otherwise only one not yet attempted.
async fn cancel_then_send(
    grant: Grant<RunsWrite>,
    state: AppState,
    id: RunId,
    record: fn(&crate::auth::Write<'_, RunsWrite>, &RunId) -> ApiResult<Run>,
    after_failure: bool,
) -> ApiResult<axum::Json<Value>> {
    let run = id.clone();
    let view = grant
        .write(&state.db, move |w| {
            record(w, &run)?;
            full_view(w, w.tenant(), &run, FIRST_EVENTS)
        })
        .await?;
    let cancel = &view["remote"]["cancel"];
    let due = view["state"] == "cancel_requested"
        && cancel["state"] == "pending"
        && (after_failure || cancel["lastError"].is_null());
    if !due {
        return Ok(axum::Json(view));
    }
    Ok(axum::Json(look_now(&grant, &state, &id, Look::Due).await?))
}

/// `{resolution: canceled|failed|succeeded, note, expectedRuntimeUpdatedAt?}`: an OWNER or
/// ADMIN closes a remote run whose cancel attempts are spent (409
/// `remote_recovery_not_exhausted` before that).
pub async fn resolve_remote(
    grant: Grant<RunsAdmin>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
    Json(body): Json<ResolveRemoteBody>,
) -> ApiResult<axum::Json<Value>> {
    let note = required_text("note", body.note, MAX_NOTE_CHARS)?;
    let expected = body
        .expected_runtime_updated_at
        .map(|t| {
            crate::clock::Timestamp::parse(&t).ok_or_else(|| {
                ApiError::field("expectedRuntimeUpdatedAt", "must be an RFC 3339 time")
            })
        })
        .transpose()?;
    let resolution = body.resolution;
    let view = grant
        .write(&state.db, move |w| {
            lifecycle::resolve_remote(w, &id, resolution, &note, expected)?;
            full_view(w, w.tenant(), &id, FIRST_EVENTS)
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
    let run = id.clone();
    let decided = grant
        .write(&state.db, move |w| {
            lifecycle::decide(w, &run, &approval, approve, note.as_deref())?;
            full_view(w, w.tenant(), &run, FIRST_EVENTS)
        })
        .await;
    match decided {
        Ok(view) => Ok(axum::Json(view)),
        // A reviewer the two-person rule refuses is on the record, not only the one who passed.
        Err(e) if e.code == Code::SelfReviewBlocked => {
            let (actor, now) = (grant.actor(), grant.now());
            let route = format!("POST /v1/orchestrator/runs/{id}/approvals/{{approval_id}}");
            let reason = e.details.as_ref().and_then(|d| d["reason"].as_str());
            let code = reason.unwrap_or("self_review_blocked").to_owned();
            let recorded = state
                .db
                .write(move |tx| crate::audit::store::record_refusal(tx, actor, &route, &code, now))
                .await;
            if let Err(audit_error) = recorded {
                tracing::error!(error = %audit_error, "could not audit a refused approval");
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
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

/// Looks at a run's remote task now and applies what it saw; the run's view with what changed
/// (`reconciled`). A terminal run is left as it is ("nothing to do").
pub async fn reconcile(
    grant: Grant<RunsAdmin>,
    State(state): State<AppState>,
    Ids(id): Ids<RunId>,
) -> ApiResult<axum::Json<Value>> {
    let (run, row) = remote::load(&state, grant.tenant(), &id).await?;
    if row.is_none() {
        let (reason, why) = super::model::remote_refusal(&run, None, "reconcile");
        return Err(
            ApiError::new(Code::InvalidRunState, why).with_details(json!({ "reason": reason }))
        );
    }
    if run.state.is_terminal() {
        let tenant = grant.tenant().clone();
        let mut view = state
            .db
            .read(move |c| full_view(c, &tenant, &id, FIRST_EVENTS))
            .await?;
        view["reconciled"] = json!({
            "changed": false,
            "message": format!("the run is {}: nothing to do", run.state.as_str()),
        });
        return Ok(axum::Json(view));
    }
    Ok(axum::Json(look_now(&grant, &state, &id, Look::Read).await?))
}

/// One look at a remote run's task, applied with the caller's capability; the run's view with
/// what changed (`reconciled`).
async fn look_now<P: crate::auth::Permission>(
    grant: &Grant<P>,
    state: &AppState,
    id: &RunId,
    kind: Look,
) -> ApiResult<Value> {
    let Some(outcome) = remote::fetch(state, grant.tenant(), id, kind).await? else {
        return Err(ApiError::new(
            Code::InvalidRunState,
            format!("run {id} has no remote task"),
        ));
    };
    let rules = remote::rules(state);
    let id = id.clone();
    grant
        .write(&state.db, move |w| {
            let summary = lifecycle::apply_remote(w, &id, outcome, rules)?;
            let mut view = full_view(w, w.tenant(), &id, FIRST_EVENTS)?;
            view["reconciled"] = summary;
            Ok(view)
        })
        .await
}
