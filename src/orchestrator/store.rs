//! Run and execution SQL: reads, and the single statements [`super::lifecycle`] composes into
//! transitions. Every statement that moves an execution is guarded on the state (and claim
//! token) it was decided on, so two claimants can never both win and a recovery can never
//! overwrite a completion that committed first (riverqueue/river#1302).

use rusqlite::{Connection, OptionalExtension, Row, ToSql, named_params, params_from_iter};
use serde_json::{Value, json};

use crate::agents::model::TargetKind;
use crate::auth::{Permission, Write};
use crate::clock::Timestamp;
use crate::db::Decoded;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::Paging;
use crate::ids::{ApprovalId, ExecutionId, RunId, TargetId, TenantId};

use super::model::{
    Approval, ApprovalState, CancelProgress, Execution, ExecutionState, RemoteTaskRow, Run,
    RunState,
};

const RUN_COLUMNS: &str = "id, target_id, target_kind, requested_by, input, idempotency_key,
    requires_approval, state, block_reason, result, created_at, updated_at, tenant_id";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<Run> {
    let d = Decoded::new(r, "runs", 0)?;
    Ok(Run {
        id: d.get(0)?,
        tenant_id: d.get(12)?,
        target_id: d.get(1)?,
        target_kind: d.get(2)?,
        requested_by: d.get(3)?,
        input: d.json(4)?,
        idempotency_key: d.get(5)?,
        requires_approval: d.get(6)?,
        state: d.get(7)?,
        block_reason: d.get(8)?,
        result: d.json_opt(9)?,
        created_at: d.get(10)?,
        updated_at: d.get(11)?,
    })
}

/// One of the tenant's runs; another tenant's does not exist.
pub fn load_run(conn: &Connection, tenant: &TenantId, id: &RunId) -> ApiResult<Run> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND tenant_id = ?2");
    conn.prepare_cached(&sql)?
        .query_row(rusqlite::params![id, tenant], run_from_row)
        .optional()?
        .ok_or_else(|| ApiError::not_found("run"))
}

pub fn approvals(conn: &Connection, run: &RunId) -> ApiResult<Vec<Approval>> {
    let rows = conn
        .prepare_cached(
            "SELECT id, state, created_at, decided_by, decided_at, note FROM approvals
             WHERE run_id = ?1 ORDER BY created_at, id",
        )?
        .query_map([run], |r| {
            let d = Decoded::new(r, "approvals", 0)?;
            Ok(Approval {
                id: d.get(0)?,
                state: d.get(1)?,
                created_at: d.get(2)?,
                decided_by: d.get(3)?,
                decided_at: d.get(4)?,
                note: d.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The state of one approval of a run, if the run has it.
pub fn approval_state(
    conn: &Connection,
    run: &RunId,
    approval: &ApprovalId,
) -> ApiResult<Option<ApprovalState>> {
    Ok(conn
        .prepare_cached("SELECT state FROM approvals WHERE id = ?1 AND run_id = ?2")?
        .query_row(rusqlite::params![approval, run], |r| r.get(0))
        .optional()?)
}

pub fn has_approval(conn: &Connection, run: &RunId) -> ApiResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM approvals WHERE run_id = ?1 AND state = ?2 LIMIT 1")?
        .query_row(rusqlite::params![run, ApprovalState::Approved], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Up to `limit` of a run's events after sequence `after`, oldest first, and the sequence to
/// ask after for the next page (`None` on the last).
pub fn events(
    conn: &Connection,
    run: &RunId,
    after: i64,
    limit: u32,
) -> ApiResult<(Vec<Value>, Option<i64>)> {
    let mut rows: Vec<Value> = conn
        .prepare_cached(
            "SELECT seq, at, kind, detail FROM run_events WHERE run_id = ?1 AND seq > ?2
             ORDER BY seq LIMIT ?3",
        )?
        .query_map(rusqlite::params![run, after, i64::from(limit) + 1], |r| {
            let d = Decoded::new(r, "run_events", 0)?;
            Ok(json!({
                "sequence": d.get::<i64>(0)?,
                "at": d.get::<Timestamp>(1)?,
                "kind": d.get::<String>(2)?,
                "detail": d.json::<Value>(3)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().and_then(|e| e["sequence"].as_i64()))
        .flatten();
    Ok((rows, next))
}

/// Which runs a list shows.
pub struct RunFilter {
    pub target_id: Option<TargetId>,
    pub state: Option<RunState>,
    pub kind: Option<TargetKind>,
    pub paging: Paging,
}

impl RunFilter {
    /// The newest `limit` runs on a target, optionally in one state.
    pub fn on_target(target: &TargetId, state: Option<RunState>, limit: u32) -> RunFilter {
        RunFilter {
            target_id: Some(target.clone()),
            state,
            kind: None,
            paging: Paging { limit, offset: 0 },
        }
    }
}

/// A page of the tenant's runs, newest first, and how many match in all.
pub fn list(conn: &Connection, tenant: &TenantId, f: &RunFilter) -> ApiResult<(Vec<Run>, i64)> {
    let mut params: Vec<Box<dyn ToSql>> = vec![Box::new(tenant.clone())];
    let mut clause = String::new();
    if let Some(t) = &f.target_id {
        params.push(Box::new(t.clone()));
        clause.push_str(&format!(" AND target_id = ?{}", params.len()));
    }
    if let Some(s) = f.state {
        params.push(Box::new(s));
        clause.push_str(&format!(" AND state = ?{}", params.len()));
    }
    if let Some(k) = f.kind {
        params.push(Box::new(k));
        clause.push_str(&format!(" AND target_kind = ?{}", params.len()));
    }
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM runs WHERE tenant_id = ?1{clause}"),
        params_from_iter(params.iter()),
        |r| r.get(0),
    )?;
    params.push(Box::new(i64::from(f.paging.limit)));
    params.push(Box::new(i64::from(f.paging.offset)));
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
    let states: Vec<&str> = RunState::unfinished().map(RunState::as_str).collect();
    let marks = vec!["?"; states.len()].join(",");
    let mut params: Vec<&dyn ToSql> = vec![target];
    params.extend(states.iter().map(|s| s as &dyn ToSql));
    Ok(conn.query_row(
        &format!("SELECT COUNT(*) FROM runs WHERE target_id = ? AND state IN ({marks})"),
        params.as_slice(),
        |r| r.get(0),
    )?)
}

/// The run an earlier request with this idempotency key created.
pub fn run_by_key(conn: &Connection, tenant: &TenantId, key: &str) -> ApiResult<Option<RunId>> {
    Ok(conn
        .prepare_cached("SELECT id FROM runs WHERE tenant_id = ?1 AND idempotency_key = ?2")?
        .query_row(rusqlite::params![tenant, key], |r| r.get(0))
        .optional()?)
}

/// The runs a target's policy holds back, oldest first.
pub fn blocked_on(
    conn: &Connection,
    tenant: &TenantId,
    target: &TargetId,
) -> ApiResult<Vec<RunId>> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM runs WHERE tenant_id = ?1 AND target_id = ?2 AND state = ?3
             ORDER BY created_at, id",
        )?
        .query_map(rusqlite::params![tenant, target, RunState::Blocked], |r| {
            r.get(0)
        })?
        .collect::<Result<_, _>>()?)
}

/// A new run in state `queued`, requested by the capability's actor.
pub fn insert_run<P: Permission>(
    w: &Write<'_, P>,
    target: &TargetId,
    kind: TargetKind,
    input: &Value,
    key: Option<&str>,
    requires_approval: bool,
) -> ApiResult<RunId> {
    let id = RunId::generate();
    crate::db::exec(
        w,
        "INSERT INTO runs (id, tenant_id, target_id, target_kind, requested_by, input,
             idempotency_key, requires_approval, state, created_at, updated_at)
         VALUES (:id, :tenant, :target, :kind, :by, :input, :key, :requires, :state, :now, :now)",
        named_params! {
            ":id": id, ":tenant": w.tenant(), ":target": target, ":kind": kind, ":by": w.user(),
            ":input": input.to_string(), ":key": key, ":requires": requires_approval,
            ":state": RunState::Queued, ":now": w.now(),
        },
    )?;
    Ok(id)
}

/// Writes a run's state, block reason and result as they are in `run`.
pub fn save_run<P: Permission>(w: &Write<'_, P>, run: &Run) -> ApiResult<()> {
    w.prepare_cached(
        "UPDATE runs SET state = ?2, block_reason = ?3, result = ?4, updated_at = ?5
         WHERE id = ?1 AND tenant_id = ?6",
    )?
    .execute(rusqlite::params![
        run.id,
        run.state,
        run.block_reason,
        run.result.as_ref().map(Value::to_string),
        run.updated_at,
        w.tenant(),
    ])?;
    Ok(())
}

pub fn append_event<P: Permission>(
    w: &Write<'_, P>,
    run: &RunId,
    kind: &str,
    detail: &Value,
) -> ApiResult<()> {
    w.prepare_cached("INSERT INTO run_events (run_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)")?
        .execute(rusqlite::params![run, w.now(), kind, detail.to_string()])?;
    Ok(())
}

/// How many events of these kinds a run's timeline holds.
pub fn count_events(conn: &Connection, run: &RunId, kinds: &[&str]) -> ApiResult<i64> {
    let marks = vec!["?"; kinds.len()].join(", ");
    // Unnumbered parameters follow ?1: ?2, ?3, …
    let sql = format!("SELECT COUNT(*) FROM run_events WHERE run_id = ?1 AND kind IN ({marks})");
    let mut params: Vec<&dyn ToSql> = vec![run];
    for k in kinds {
        params.push(k);
    }
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params.as_slice(), |r| r.get(0))?)
}

pub fn insert_approval<P: Permission>(w: &Write<'_, P>, run: &RunId) -> ApiResult<ApprovalId> {
    let id = ApprovalId::generate();
    crate::db::exec(
        w,
        "INSERT INTO approvals (id, run_id, state, created_at) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![id, run, ApprovalState::Pending, w.now()],
    )?;
    Ok(id)
}

/// Records the capability's actor deciding a pending approval.
pub fn decide_approval<P: Permission>(
    w: &Write<'_, P>,
    approval: &ApprovalId,
    state: ApprovalState,
    note: Option<&str>,
) -> ApiResult<()> {
    crate::db::exec(
        w,
        "UPDATE approvals SET state = ?2, decided_by = ?3, decided_at = ?4, note = ?5
         WHERE id = ?1 AND state = ?6",
        rusqlite::params![
            approval,
            state,
            w.user(),
            w.now(),
            note,
            ApprovalState::Pending
        ],
    )?;
    Ok(())
}

/// Closes a run's pending approvals as rejected (the run is being canceled).
pub fn reject_pending_approvals<P: Permission>(
    w: &Write<'_, P>,
    run: &RunId,
    note: &str,
) -> ApiResult<()> {
    crate::db::exec(
        w,
        "UPDATE approvals SET state = ?2, decided_at = ?3, note = ?4 WHERE run_id = ?1 AND state = ?5",
        rusqlite::params![
            run,
            ApprovalState::Rejected,
            w.now(),
            note,
            ApprovalState::Pending
        ],
    )?;
    Ok(())
}

const EXECUTION_COLUMNS: &str = "id, run_id, state, claim_token, worker_id, lease_expires_at,
    attempt, cancel_requested, completion_key, completion_hash, result, created_at";

fn execution_from_row(r: &Row<'_>) -> rusqlite::Result<Execution> {
    let d = Decoded::new(r, "executions", 0)?;
    Ok(Execution {
        id: d.get(0)?,
        run_id: d.get(1)?,
        state: d.get(2)?,
        claim_token: d.get(3)?,
        worker_id: d.get(4)?,
        lease_expires_at: d.get(5)?,
        attempt: d.get(6)?,
        cancel_requested: d.get(7)?,
        completion_key: d.get(8)?,
        completion_hash: d.get(9)?,
        result: d.json_opt(10)?,
        created_at: d.get(11)?,
    })
}

/// The newest execution of a run.
pub fn execution_of(conn: &Connection, run: &RunId) -> ApiResult<Option<Execution>> {
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE run_id = ?1
         ORDER BY created_at DESC, id DESC LIMIT 1"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([run], execution_from_row)
        .optional()?)
}

/// An execution of the agent's own target; any other does not exist for it.
pub fn load_execution(
    conn: &Connection,
    tenant: &TenantId,
    target: &TargetId,
    id: &ExecutionId,
) -> ApiResult<Execution> {
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions
         WHERE id = ?1 AND tenant_id = ?2 AND target_id = ?3"
    );
    conn.prepare_cached(&sql)?
        .query_row(rusqlite::params![id, tenant, target], execution_from_row)
        .optional()?
        .ok_or_else(|| ApiError::not_found("execution"))
}

/// Pending executions of a target with their runs' input (as stored JSON text, passed through
/// untouched), oldest first.
pub fn pending(
    conn: &Connection,
    tenant: &TenantId,
    target: &TargetId,
    limit: u32,
) -> ApiResult<Vec<(Execution, Box<serde_json::value::RawValue>)>> {
    let sql = format!(
        "SELECT {}, r.input FROM executions e JOIN runs r ON r.id = e.run_id
         WHERE e.tenant_id = ?1 AND e.target_id = ?2 AND e.state = ?3
         ORDER BY e.created_at, e.id LIMIT ?4",
        EXECUTION_COLUMNS
            .split(',')
            .map(|c| format!("e.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(
            rusqlite::params![tenant, target, ExecutionState::Pending, i64::from(limit)],
            |r| {
                Ok((
                    execution_from_row(r)?,
                    Decoded::new(r, "runs", 1)?.json(12)?,
                ))
            },
        )?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Puts a run's execution in its target's queue.
pub fn enqueue<P: Permission>(w: &Write<'_, P>, run: &Run) -> ApiResult<ExecutionId> {
    let id = ExecutionId::generate();
    crate::db::exec(
        w,
        "INSERT INTO executions (id, run_id, tenant_id, target_id, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        rusqlite::params![
            id,
            run.id,
            w.tenant(),
            run.target_id,
            ExecutionState::Pending,
            w.now()
        ],
    )?;
    Ok(id)
}

/// Claims a pending execution of the agent's target for `token`: true if this call won.
pub fn claim_pending(
    w: &Write<'_, crate::auth::perm::Executions>,
    id: &ExecutionId,
    token: &str,
    worker: Option<&str>,
    lease_until: Timestamp,
) -> ApiResult<bool> {
    Ok(crate::db::exec(
        w,
        "UPDATE executions SET state = :claimed, claim_token = :token, worker_id = :worker,
             lease_expires_at = :lease, updated_at = :now
         WHERE id = :id AND tenant_id = :tenant AND target_id = :target AND state = :pending",
        named_params! {
            ":claimed": ExecutionState::Claimed, ":token": token, ":worker": worker,
            ":lease": lease_until, ":now": w.now(), ":id": id, ":tenant": w.tenant(),
            ":target": w.target(), ":pending": ExecutionState::Pending,
        },
    )? == 1)
}

/// Extends the lease while `token` holds the execution: true if it does.
pub fn extend_lease(
    w: &Write<'_, crate::auth::perm::Executions>,
    id: &ExecutionId,
    token: &str,
    lease_until: Timestamp,
) -> ApiResult<bool> {
    Ok(crate::db::exec(
        w,
        "UPDATE executions SET lease_expires_at = :lease, updated_at = :now
         WHERE id = :id AND tenant_id = :tenant AND target_id = :target AND state = :claimed
           AND claim_token = :token",
        named_params! {
            ":lease": lease_until, ":now": w.now(), ":id": id, ":tenant": w.tenant(),
            ":target": w.target(), ":claimed": ExecutionState::Claimed, ":token": token,
        },
    )? == 1)
}

/// How an execution held by a token ends.
pub enum Ending<'a> {
    Completed {
        result: Option<&'a Value>,
        key: Option<&'a str>,
        hash: &'a str,
    },
    Canceled,
}

/// Ends the execution while `token` holds it: true if it did.
pub fn finish_held(
    w: &Write<'_, crate::auth::perm::Executions>,
    id: &ExecutionId,
    token: &str,
    ending: Ending<'_>,
) -> ApiResult<bool> {
    let (state, result, key, hash) = match ending {
        Ending::Completed { result, key, hash } => (
            ExecutionState::Completed,
            result.map(Value::to_string),
            key,
            Some(hash),
        ),
        Ending::Canceled => (ExecutionState::Canceled, None, None, None),
    };
    Ok(crate::db::exec(
        w,
        "UPDATE executions SET state = :state, result = :result, completion_key = :key,
             completion_hash = :hash, lease_expires_at = NULL, updated_at = :now
         WHERE id = :id AND tenant_id = :tenant AND target_id = :target AND state = :claimed
           AND claim_token = :token",
        named_params! {
            ":state": state, ":result": result, ":key": key, ":hash": hash, ":now": w.now(),
            ":id": id, ":tenant": w.tenant(), ":target": w.target(),
            ":claimed": ExecutionState::Claimed, ":token": token,
        },
    )? == 1)
}

/// Flags a run's claimed execution for cancellation (its worker learns it from a heartbeat).
pub fn request_cancel<P: Permission>(w: &Write<'_, P>, run: &RunId) -> ApiResult<()> {
    crate::db::exec(
        w,
        "UPDATE executions SET cancel_requested = 1, updated_at = ?2
         WHERE run_id = ?1 AND tenant_id = ?3 AND state = ?4",
        rusqlite::params![run, w.now(), w.tenant(), ExecutionState::Claimed],
    )?;
    Ok(())
}

/// Cancels a run's execution that no worker has claimed.
pub fn cancel_pending<P: Permission>(w: &Write<'_, P>, run: &RunId) -> ApiResult<()> {
    crate::db::exec(
        w,
        "UPDATE executions SET state = ?2, updated_at = ?3
         WHERE run_id = ?1 AND tenant_id = ?4 AND state = ?5",
        rusqlite::params![
            run,
            ExecutionState::Canceled,
            w.now(),
            w.tenant(),
            ExecutionState::Pending
        ],
    )?;
    Ok(())
}

/// A claim whose lease ran out, as the sweeper saw it.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    pub tenant: TenantId,
    pub id: ExecutionId,
    pub run_id: RunId,
    pub token: String,
    pub attempt: i64,
}

/// Every claim whose lease ended before `now`, in every tenant.
pub fn expired_leases(conn: &Connection, now: Timestamp) -> ApiResult<Vec<ExpiredLease>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, tenant_id, run_id, claim_token, attempt FROM executions
             WHERE state = ?1 AND lease_expires_at < ?2 ORDER BY tenant_id, lease_expires_at",
        )?
        .query_map(rusqlite::params![ExecutionState::Claimed, now], |r| {
            let d = Decoded::new(r, "executions", 0)?;
            Ok(ExpiredLease {
                id: d.get(0)?,
                tenant: d.get(1)?,
                run_id: d.get(2)?,
                token: d.get(3)?,
                attempt: d.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// Ends an expired claim, guarded on the very claim the sweeper saw (so a completion or
/// heartbeat that committed in between wins): back to `pending` with the next attempt, or into
/// `state` for good. True if it applied.
pub fn recover_lease<P: Permission>(
    w: &Write<'_, P>,
    lease: &ExpiredLease,
    into: ExecutionState,
) -> ApiResult<bool> {
    let requeue = into == ExecutionState::Pending;
    Ok(crate::db::exec(
        w,
        "UPDATE executions SET state = :into, claim_token = NULL, lease_expires_at = NULL,
             worker_id = CASE WHEN :requeue THEN NULL ELSE worker_id END,
             attempt = attempt + CASE WHEN :requeue THEN 1 ELSE 0 END, updated_at = :now
         WHERE id = :id AND tenant_id = :tenant AND state = :claimed AND claim_token = :token
           AND lease_expires_at < :now",
        named_params! {
            ":into": into, ":requeue": requeue, ":now": w.now(), ":id": lease.id,
            ":tenant": w.tenant(), ":claimed": ExecutionState::Claimed, ":token": lease.token,
        },
    )? == 1)
}

/// One target's unfinished executions, for the runtime-health summary.
#[derive(Debug, Default, Clone)]
pub struct QueueHealth {
    pub pending: i64,
    pub claimed: i64,
    /// Distinct workers holding an unexpired lease (a claim without a worker id counts as one).
    pub leasing_workers: i64,
}

/// Unfinished executions per target of a tenant (through the lease index: finished ones are
/// not read).
pub fn queue_health(
    conn: &Connection,
    tenant: &TenantId,
    now: Timestamp,
) -> ApiResult<std::collections::HashMap<TargetId, QueueHealth>> {
    let rows = conn
        .prepare_cached(
            "SELECT target_id,
                    SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END),
                    SUM(CASE WHEN state = 'claimed' THEN 1 ELSE 0 END),
                    COUNT(DISTINCT CASE WHEN state = 'claimed' AND lease_expires_at > ?2
                                        THEN COALESCE(worker_id, claim_token) END)
             FROM executions
             WHERE state IN ('pending', 'claimed') AND tenant_id = ?1
             GROUP BY target_id",
        )?
        .query_map(rusqlite::params![tenant, now], |r| {
            Ok((
                r.get(0)?,
                QueueHealth {
                    pending: r.get(1)?,
                    claimed: r.get(2)?,
                    leasing_workers: r.get(3)?,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Runs waiting on people: pending approvals (how many, since when) and blocked runs.
pub fn attention(conn: &Connection, tenant: &TenantId) -> ApiResult<(i64, Option<Timestamp>, i64)> {
    let (approvals, oldest) = conn
        .prepare_cached(
            "SELECT COUNT(*), MIN(a.created_at) FROM approvals a JOIN runs r ON r.id = a.run_id
             WHERE r.tenant_id = ?1 AND a.state = 'pending'",
        )?
        .query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let blocked = conn
        .prepare_cached("SELECT COUNT(*) FROM runs WHERE tenant_id = ?1 AND state = 'blocked'")?
        .query_row([tenant], |r| r.get(0))?;
    Ok((approvals, oldest, blocked))
}

const REMOTE_COLUMNS: &str = "run_id, tenant_id, endpoint, protocol, message_id, task_id,
    context_id, remote_state, remote_state_raw, last_seen_at, last_error, failures,
    next_check_at, done, cancel_state, cancel_requested_at, cancel_attempts, cancel_error,
    cancel_deadline, updated_at";

fn remote_from_row(r: &Row<'_>) -> rusqlite::Result<RemoteTaskRow> {
    let d = Decoded::new(r, "remote_tasks", 0)?;
    Ok(RemoteTaskRow {
        run_id: d.get(0)?,
        tenant_id: d.get(1)?,
        endpoint: d.get(2)?,
        protocol: d.get(3)?,
        message_id: d.get(4)?,
        task_id: d.get(5)?,
        context_id: d.get(6)?,
        remote_state: d.get(7)?,
        remote_state_raw: d.get(8)?,
        last_seen_at: d.get(9)?,
        last_error: d.get(10)?,
        failures: d.get(11)?,
        next_check_at: d.get(12)?,
        done: d.get(13)?,
        cancel: CancelProgress {
            state: d.get(14)?,
            requested_at: d.get(15)?,
            attempts: d.get(16)?,
            error: d.get(17)?,
            deadline: d.get(18)?,
        },
        updated_at: d.get(19)?,
    })
}

/// Records that `run` goes to the agent at `endpoint`, to be sent at once.
pub fn insert_remote<P: Permission>(
    w: &Write<'_, P>,
    run: &Run,
    endpoint: &str,
    protocol: &str,
) -> ApiResult<()> {
    crate::db::exec(
        w,
        "INSERT INTO remote_tasks (run_id, tenant_id, endpoint, protocol, message_id, next_check_at,
                                   updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        rusqlite::params![
            run.id,
            w.tenant(),
            endpoint,
            protocol,
            format!("memesh-{}", run.id),
            w.now()
        ],
    )?;
    Ok(())
}

pub fn load_remote(conn: &Connection, run: &RunId) -> ApiResult<Option<RemoteTaskRow>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {REMOTE_COLUMNS} FROM remote_tasks WHERE run_id = ?1"
        ))?
        .query_row([run], remote_from_row)
        .optional()?)
}

/// Saves the row as changed; its `updated_at` becomes now.
pub fn save_remote<P: Permission>(w: &Write<'_, P>, row: &mut RemoteTaskRow) -> ApiResult<()> {
    row.updated_at = w.now();
    crate::db::exec(
        w,
        "UPDATE remote_tasks SET task_id = ?2, context_id = ?3, remote_state = ?4,
             remote_state_raw = ?5, last_seen_at = ?6, last_error = ?7, failures = ?8,
             next_check_at = ?9, done = ?10, cancel_state = ?11, cancel_requested_at = ?12,
             cancel_attempts = ?13, cancel_error = ?14, cancel_deadline = ?15, updated_at = ?16
         WHERE run_id = ?1",
        rusqlite::params![
            row.run_id,
            row.task_id,
            row.context_id,
            row.remote_state,
            row.remote_state_raw,
            row.last_seen_at,
            row.last_error,
            row.failures,
            row.next_check_at,
            row.done,
            row.cancel.state,
            row.cancel.requested_at,
            row.cancel.attempts,
            row.cancel.error,
            row.cancel.deadline,
            row.updated_at
        ],
    )?;
    Ok(())
}

/// Remote tasks due for a look (unsent or unfinished), soonest first, at most `limit`.
pub fn due_remote(conn: &Connection, now: Timestamp, limit: u32) -> ApiResult<Vec<RemoteTaskRow>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {REMOTE_COLUMNS} FROM remote_tasks WHERE done = 0 AND next_check_at <= ?1
             ORDER BY next_check_at LIMIT ?2"
        ))?
        .query_map(rusqlite::params![now, limit], remote_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// A tenant's unfinished remote runs by how far their cancels and looks have got.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoteTally {
    /// Cancels not yet confirmed by the agent (being sent, failed and to be retried, or sent
    /// and waiting for the task to stop).
    pub cancels_pending: i64,
    /// Of those, the ones whose last attempt failed.
    pub cancels_failing: i64,
    /// Cancels whose attempts are spent: the run needs an operator.
    pub cancels_exhausted: i64,
    /// Runs whose agent did not answer the last look.
    pub unreachable: i64,
}

pub fn remote_tally(conn: &Connection, tenant: &TenantId) -> ApiResult<RemoteTally> {
    Ok(conn
        .prepare_cached(
            "SELECT COALESCE(SUM(cancel_state IN ('pending', 'sent')), 0),
                    COALESCE(SUM(cancel_state = 'pending' AND cancel_error IS NOT NULL), 0),
                    COALESCE(SUM(cancel_state = 'exhausted'), 0),
                    COALESCE(SUM(failures > 0), 0)
             FROM remote_tasks WHERE tenant_id = ?1 AND done = 0",
        )?
        .query_row([tenant], |r| {
            Ok(RemoteTally {
                cancels_pending: r.get(0)?,
                cancels_failing: r.get(1)?,
                cancels_exhausted: r.get(2)?,
                unreachable: r.get(3)?,
            })
        })?)
}
