//! Run SQL and transitions. Every transition writes the run's new state, an event on its
//! timeline and an audit row in the caller's transaction; dispatching a run to a local target
//! enqueues its execution in the same transaction.

use rusqlite::{Connection, OptionalExtension, ToSql, Transaction, named_params, params_from_iter};
use serde_json::{Value, json};

use crate::agents::model::TargetKind;
use crate::agents::policy::Policy;
use crate::agents::store::Target;
use crate::audit::{self, AuditEvent};
use crate::auth::Actor;
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::executions::store as queue;
use crate::ids::{ApprovalId, RunId, TargetId, TenantId};

use super::model::{Approval, ExecutionSummary, Run, RunState};

const RUN_COLUMNS: &str = "id, target_id, target_kind, requested_by, input, idempotency_key,
    requires_approval, state, block_reason, result, created_at, updated_at";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let input: String = r.get(4)?;
    let state: String = r.get(7)?;
    let result: Option<String> = r.get(9)?;
    Ok(Run {
        id: r.get(0)?,
        target_id: r.get(1)?,
        target_kind: r.get(2)?,
        requested_by: r.get(3)?,
        input: serde_json::from_str(&input).unwrap_or(Value::Null),
        idempotency_key: r.get(5)?,
        requires_approval: r.get(6)?,
        state: RunState::parse(&state).unwrap_or(RunState::Failed),
        block_reason: r.get(8)?,
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

pub fn load(conn: &Connection, tenant: &TenantId, id: &str) -> ApiResult<Run> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND tenant_id = ?2");
    conn.prepare_cached(&sql)?
        .query_row(rusqlite::params![id, tenant], run_from_row)
        .optional()?
        .ok_or_else(|| ApiError::not_found("run"))
}

pub fn approvals(conn: &Connection, run: &str) -> ApiResult<Vec<Approval>> {
    let rows = conn
        .prepare_cached(
            "SELECT id, state, created_at, decided_by, decided_at, note FROM approvals
             WHERE run_id = ?1 ORDER BY created_at, id",
        )?
        .query_map([run], |r| {
            Ok(Approval {
                id: r.get(0)?,
                state: r.get(1)?,
                created_at: r.get(2)?,
                decided_by: r.get(3)?,
                decided_at: r.get(4)?,
                note: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn execution_of(conn: &Connection, run: &str) -> ApiResult<Option<ExecutionSummary>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, state, attempt, worker_id, lease_expires_at, cancel_requested
             FROM executions WHERE run_id = ?1 ORDER BY created_at DESC LIMIT 1",
        )?
        .query_row([run], |r| {
            Ok(ExecutionSummary {
                id: r.get(0)?,
                state: r.get(1)?,
                attempt: r.get(2)?,
                worker_id: r.get(3)?,
                lease_expires_at: r.get(4)?,
                cancel_requested: r.get(5)?,
            })
        })
        .optional()?)
}

pub fn events(conn: &Connection, run: &str) -> ApiResult<Vec<Value>> {
    let rows = conn
        .prepare_cached(
            "SELECT seq, at, kind, detail FROM run_events WHERE run_id = ?1 ORDER BY seq",
        )?
        .query_map([run], |r| {
            let at: Timestamp = r.get(1)?;
            let detail: String = r.get(3)?;
            Ok(json!({
                "sequence": r.get::<_, i64>(0)?,
                "at": at,
                "kind": r.get::<_, String>(2)?,
                "detail": serde_json::from_str::<Value>(&detail).unwrap_or(Value::Null),
            }))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Moves a run to `state`, appends the event and the audit row.
pub fn transition(
    tx: &Transaction<'_>,
    actor: &Actor,
    run: &mut Run,
    state: RunState,
    event: &str,
    detail: Value,
    now: Timestamp,
) -> ApiResult<()> {
    let from = run.state;
    run.state = state;
    run.updated_at = now;
    tx.execute(
        "UPDATE runs SET state = ?2, block_reason = ?3, result = ?4, updated_at = ?5 WHERE id = ?1",
        rusqlite::params![
            run.id,
            state.as_str(),
            run.block_reason,
            run.result.as_ref().map(Value::to_string),
            now
        ],
    )?;
    tx.execute(
        "INSERT INTO run_events (run_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![run.id, now, event, detail.to_string()],
    )?;
    audit::append(
        tx,
        actor,
        &AuditEvent::success(
            "orchestrator.run.transition",
            "run",
            run.id.clone(),
            json!({ "from": from.as_str(), "to": state.as_str(), "event": event }),
        ),
        now,
    )?;
    Ok(())
}

/// An event that does not change the state (worker progress).
pub fn note_event(
    tx: &Transaction<'_>,
    run: &str,
    kind: &str,
    detail: Value,
    now: Timestamp,
) -> ApiResult<()> {
    tx.execute(
        "INSERT INTO run_events (run_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![run, now, kind, detail.to_string()],
    )?;
    Ok(())
}

fn add_approval(tx: &Transaction<'_>, run: &str, now: Timestamp) -> ApiResult<ApprovalId> {
    let id = ApprovalId::generate();
    tx.execute(
        "INSERT INTO approvals (id, run_id, state, created_at) VALUES (?1, ?2, 'pending', ?3)",
        rusqlite::params![id, run, now],
    )?;
    Ok(id)
}

/// Opens a pending approval and parks the run until it is decided.
fn await_approval(
    tx: &Transaction<'_>,
    actor: &Actor,
    run: &mut Run,
    now: Timestamp,
) -> ApiResult<()> {
    let approval = add_approval(tx, &run.id, now)?;
    run.block_reason = None;
    transition(
        tx,
        actor,
        run,
        RunState::AwaitingApproval,
        "awaiting_approval",
        json!({ "approvalId": approval }),
        now,
    )
}

fn has_approval(tx: &Transaction<'_>, run: &str) -> ApiResult<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM approvals WHERE run_id = ?1 AND state = 'approved' LIMIT 1",
            [run],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Sends an approved (or approval-free) run on: blocked while the target's policy blocks,
/// else into the target's queue.
fn dispatch_or_block(
    tx: &Transaction<'_>,
    actor: &Actor,
    run: &mut Run,
    policy: Policy,
    reasons: &[String],
    now: Timestamp,
) -> ApiResult<()> {
    if policy == Policy::Blocked {
        run.block_reason = Some(reasons.join(","));
        return transition(
            tx,
            actor,
            run,
            RunState::Blocked,
            "blocked",
            json!({ "reasons": reasons }),
            now,
        );
    }
    run.block_reason = None;
    let execution = queue::enqueue(tx, run, now)?;
    transition(
        tx,
        actor,
        run,
        RunState::Dispatched,
        "dispatched",
        json!({ "executionId": execution }),
        now,
    )
}

/// Creates a run on `target`, or returns the run an earlier request with the same idempotency
/// key created (`false`). A reused key with another target or input is refused.
pub fn create(
    tx: &Transaction<'_>,
    actor: &Actor,
    target: &Target,
    input: &Value,
    asked_approval: bool,
    idempotency_key: Option<&str>,
    now: Timestamp,
) -> ApiResult<(Run, bool)> {
    if let Some(key) = idempotency_key {
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM runs WHERE tenant_id = ?1 AND idempotency_key = ?2",
                rusqlite::params![actor.tenant_id, key],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            let run = load(tx, &actor.tenant_id, &id)?;
            if run.target_id != target.id.as_str() || &run.input != input {
                return Err(ApiError::new(
                    Code::IdempotencyKeyReused,
                    "this idempotency key was used for a run with another target or input",
                ));
            }
            return Ok((run, false));
        }
    }
    let requires = asked_approval || target.runtime.policy == Policy::RequireApproval;
    let id = RunId::generate();
    let requested_by = actor
        .user_id
        .as_ref()
        .map(|u| u.as_str().to_owned())
        .unwrap_or_default();
    tx.execute(
        "INSERT INTO runs (id, tenant_id, target_id, target_kind, requested_by, input,
             idempotency_key, requires_approval, state, created_at, updated_at)
         VALUES (:id, :tenant, :target, :kind, :by, :input, :key, :requires, 'queued', :now, :now)",
        named_params! {
            ":id": id, ":tenant": actor.tenant_id, ":target": target.id,
            ":kind": target.kind.as_str(), ":by": requested_by, ":input": input.to_string(),
            ":key": idempotency_key, ":requires": requires, ":now": now,
        },
    )?;
    note_event(
        tx,
        id.as_str(),
        "created",
        json!({ "requiresApproval": requires }),
        now,
    )?;
    let mut run = load(tx, &actor.tenant_id, id.as_str())?;
    if requires {
        await_approval(tx, actor, &mut run, now)?;
    } else {
        dispatch_or_block(
            tx,
            actor,
            &mut run,
            target.runtime.policy,
            &target.runtime.reasons,
            now,
        )?;
    }
    Ok((run, true))
}

/// Called by governance when a target's policy stops blocking: its blocked runs move on (into
/// approval if the new policy demands one they lack, else into the queue).
pub fn release_blocked(
    tx: &Transaction<'_>,
    actor: &Actor,
    target: &TargetId,
    policy: Policy,
    reasons: &[String],
    now: Timestamp,
) -> ApiResult<usize> {
    let ids: Vec<String> = tx
        .prepare_cached(
            "SELECT id FROM runs WHERE target_id = ?1 AND state = 'blocked' ORDER BY created_at",
        )?
        .query_map([target], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        let mut run = load(tx, &actor.tenant_id, id)?;
        if policy == Policy::RequireApproval && !has_approval(tx, id)? {
            await_approval(tx, actor, &mut run, now)?;
        } else {
            dispatch_or_block(tx, actor, &mut run, policy, reasons, now)?;
        }
    }
    Ok(ids.len())
}

/// Approves or rejects a pending approval. The requester may not decide on their own run.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    tx: &Transaction<'_>,
    actor: &Actor,
    target: &Target,
    run_id: &str,
    approval_id: &str,
    approve: bool,
    note: Option<String>,
    now: Timestamp,
) -> ApiResult<Run> {
    let mut run = load(tx, &actor.tenant_id, run_id)?;
    let state: Option<String> = tx
        .query_row(
            "SELECT state FROM approvals WHERE id = ?1 AND run_id = ?2",
            rusqlite::params![approval_id, run_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(state) = state else {
        return Err(ApiError::not_found("approval"));
    };
    if actor
        .user_id
        .as_ref()
        .is_some_and(|u| u.as_str() == run.requested_by)
    {
        return Err(ApiError::new(
            Code::SelfReviewBlocked,
            "the requester of a run may not decide its approval",
        ));
    }
    if state != "pending" || run.state != RunState::AwaitingApproval {
        return Err(ApiError::new(
            Code::ApprovalDecided,
            "this approval was already decided",
        ));
    }
    let decided_by = actor.user_id.as_ref().map(|u| u.as_str().to_owned());
    tx.execute(
        "UPDATE approvals SET state = ?2, decided_by = ?3, decided_at = ?4, note = ?5 WHERE id = ?1",
        rusqlite::params![approval_id, if approve { "approved" } else { "rejected" }, decided_by, now, note],
    )?;
    if approve {
        note_event(
            tx,
            run_id,
            "approved",
            json!({ "approvalId": approval_id, "by": decided_by }),
            now,
        )?;
        dispatch_or_block(
            tx,
            actor,
            &mut run,
            target.runtime.policy,
            &target.runtime.reasons,
            now,
        )?;
    } else {
        transition(
            tx,
            actor,
            &mut run,
            RunState::Rejected,
            "rejected",
            json!({ "approvalId": approval_id, "note": note }),
            now,
        )?;
    }
    Ok(run)
}

/// Asks for cancellation: immediate when no worker holds the run, else the worker is told
/// through its heartbeat and the run waits for its acknowledgement.
pub fn cancel(tx: &Transaction<'_>, actor: &Actor, run_id: &str, now: Timestamp) -> ApiResult<Run> {
    let mut run = load(tx, &actor.tenant_id, run_id)?;
    match run.state {
        s if s.is_terminal() => Err(ApiError::new(
            Code::InvalidRunState,
            "the run has already finished",
        )),
        RunState::CancelRequested => Ok(run),
        RunState::Running => {
            queue::request_cancel(tx, run_id, now)?;
            transition(
                tx,
                actor,
                &mut run,
                RunState::CancelRequested,
                "cancel_requested",
                json!({}),
                now,
            )?;
            Ok(run)
        }
        _ => {
            queue::cancel_unclaimed(tx, run_id, now)?;
            tx.execute("UPDATE approvals SET state = 'rejected', decided_at = ?2, note = 'run canceled' WHERE run_id = ?1 AND state = 'pending'", rusqlite::params![run_id, now])?;
            transition(
                tx,
                actor,
                &mut run,
                RunState::Canceled,
                "canceled",
                json!({ "before": "dispatch" }),
                now,
            )?;
            Ok(run)
        }
    }
}

pub struct RunFilter {
    pub target_id: Option<String>,
    pub state: Option<RunState>,
    pub kind: Option<TargetKind>,
    pub limit: u32,
    pub offset: u32,
}

pub fn list(conn: &Connection, tenant: &TenantId, f: &RunFilter) -> ApiResult<(Vec<Run>, i64)> {
    let mut params: Vec<Box<dyn ToSql>> = vec![Box::new(tenant.clone())];
    let mut clause = String::new();
    if let Some(t) = &f.target_id {
        params.push(Box::new(t.clone()));
        clause.push_str(&format!(" AND target_id = ?{}", params.len()));
    }
    if let Some(s) = f.state {
        params.push(Box::new(s.as_str()));
        clause.push_str(&format!(" AND state = ?{}", params.len()));
    }
    if let Some(k) = f.kind {
        params.push(Box::new(k.as_str()));
        clause.push_str(&format!(" AND target_kind = ?{}", params.len()));
    }
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM runs WHERE tenant_id = ?1{clause}"),
        params_from_iter(params.iter()),
        |r| r.get(0),
    )?;
    params.push(Box::new(i64::from(f.limit)));
    params.push(Box::new(i64::from(f.offset)));
    let n = params.len();
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = ?1{clause}
         ORDER BY created_at DESC, id DESC LIMIT ?{} OFFSET ?{n}",
        n - 1
    );
    let runs = conn
        .prepare(&sql)?
        .query_map(params_from_iter(params.iter()), run_from_row)?
        .collect::<Result<_, _>>()?;
    Ok((runs, total))
}

/// Runs not yet finished on a target (a target with active work cannot be deleted).
pub fn active_on_target(conn: &Connection, target: &TargetId) -> ApiResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM runs WHERE target_id = ?1
           AND state NOT IN ('succeeded','failed','canceled','rejected')",
        [target],
        |r| r.get(0),
    )?)
}
