//! Execution SQL. Claims, heartbeats, completions and recoveries are single guarded UPDATEs
//! (`WHERE state = … AND claim_token = …`), so two claimants can never both win and a recovery
//! can never overwrite a completion that committed first (riverqueue/river#1302).

use rusqlite::{Connection, OptionalExtension, Transaction};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::audit::{self, AuditEvent};
use crate::auth::Actor;
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{ExecutionId, TargetId, TenantId};
use crate::orchestrator::model::{Run, RunState};
use crate::orchestrator::store as runs;

/// Who acts on an execution: an agent (its actor and target) with the claim token it presents.
#[derive(Debug, Clone)]
pub struct Holder {
    pub actor: Actor,
    pub target: TargetId,
    pub id: String,
    pub token: String,
}

/// An execution as the queue sees it.
#[derive(Debug, Clone)]
pub struct Execution {
    pub id: String,
    pub run_id: String,
    pub state: String,
    pub claim_token: Option<String>,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub attempt: i64,
    pub cancel_requested: bool,
    pub completion_key: Option<String>,
    pub completion_hash: Option<String>,
    pub result: Option<Value>,
    pub created_at: Timestamp,
}

const COLUMNS: &str = "id, run_id, state, claim_token, worker_id, lease_expires_at, attempt,
    cancel_requested, completion_key, completion_hash, result, created_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Execution> {
    let result: Option<String> = r.get(10)?;
    Ok(Execution {
        id: r.get(0)?,
        run_id: r.get(1)?,
        state: r.get(2)?,
        claim_token: r.get(3)?,
        worker_id: r.get(4)?,
        lease_expires_at: r.get(5)?,
        attempt: r.get(6)?,
        cancel_requested: r.get(7)?,
        completion_key: r.get(8)?,
        completion_hash: r.get(9)?,
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
        created_at: r.get(11)?,
    })
}

/// An execution of the agent's own target; any other does not exist for it.
pub fn load(
    conn: &Connection,
    tenant: &TenantId,
    target: &TargetId,
    id: &str,
) -> ApiResult<Execution> {
    let sql = format!(
        "SELECT {COLUMNS} FROM executions WHERE id = ?1 AND tenant_id = ?2 AND target_id = ?3"
    );
    conn.prepare_cached(&sql)?
        .query_row(rusqlite::params![id, tenant, target], from_row)
        .optional()?
        .ok_or_else(|| ApiError::not_found("execution"))
}

/// Puts a dispatched run's execution in its target's queue.
pub fn enqueue(tx: &Transaction<'_>, run: &Run, now: Timestamp) -> ApiResult<ExecutionId> {
    let id = ExecutionId::generate();
    tx.execute(
        "INSERT INTO executions (id, run_id, tenant_id, target_id, state, created_at, updated_at)
         SELECT ?1, id, tenant_id, target_id, 'pending', ?3, ?3 FROM runs WHERE id = ?2",
        rusqlite::params![id, run.id, now],
    )?;
    Ok(id)
}

/// Pending executions of a target, oldest first.
pub fn pending(
    conn: &Connection,
    tenant: &TenantId,
    target: &TargetId,
    limit: u32,
) -> ApiResult<Vec<(Execution, Value)>> {
    let sql = "SELECT e.id, e.run_id, e.state, e.claim_token, e.worker_id, e.lease_expires_at, e.attempt,
                      e.cancel_requested, e.completion_key, e.completion_hash, e.result, e.created_at, r.input
               FROM executions e JOIN runs r ON r.id = e.run_id
               WHERE e.tenant_id = ?1 AND e.target_id = ?2 AND e.state = 'pending'
               ORDER BY e.created_at, e.id LIMIT ?3";
    let rows = conn
        .prepare_cached(sql)?
        .query_map(rusqlite::params![tenant, target, i64::from(limit)], |r| {
            let input: String = r.get(12)?;
            Ok((
                from_row(r)?,
                serde_json::from_str(&input).unwrap_or(Value::Null),
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn run_of(tx: &Transaction<'_>, tenant: &TenantId, e: &Execution) -> ApiResult<Run> {
    runs::load(tx, tenant, &e.run_id)
}

/// Claims with `token`: one guarded statement, so exactly one claimant wins. The same token
/// claiming again gets its claim back; any other token gets 409.
pub fn claim(
    tx: &Transaction<'_>,
    h: &Holder,
    worker: Option<&str>,
    lease_ms: i64,
    now: Timestamp,
) -> ApiResult<Execution> {
    let (actor, target, id, token) = (&h.actor, &h.target, h.id.as_str(), h.token.as_str());
    let lease = now.plus_ms(lease_ms);
    let won = tx.execute(
        "UPDATE executions SET state = 'claimed', claim_token = ?4, worker_id = ?5,
             lease_expires_at = ?6, updated_at = ?7
         WHERE id = ?1 AND tenant_id = ?2 AND target_id = ?3 AND state = 'pending'",
        rusqlite::params![id, actor.tenant_id, target, token, worker, lease, now],
    )?;
    let e = load(tx, &actor.tenant_id, target, id)?;
    if won == 0 {
        return match (e.state.as_str(), e.claim_token.as_deref()) {
            ("claimed", Some(t)) if t == token => Ok(e),
            ("claimed", _) => Err(ApiError::new(
                Code::DuplicateClaim,
                "another claim token holds this execution",
            )),
            _ => Err(ApiError::new(
                Code::ExecutionNotClaimable,
                format!("the execution is {}", e.state),
            )),
        };
    }
    let mut run = run_of(tx, &actor.tenant_id, &e)?;
    runs::transition(
        tx,
        actor,
        &mut run,
        RunState::Running,
        "claimed",
        json!({ "executionId": id, "workerId": worker, "attempt": e.attempt, "leaseExpiresAt": lease }),
        now,
    )?;
    Ok(e)
}

/// The execution as the holder's token holds it; 409 `lease_lost` when it no longer does.
fn held(tx: &Transaction<'_>, h: &Holder) -> ApiResult<Execution> {
    let e = load(tx, &h.actor.tenant_id, &h.target, &h.id)?;
    if e.state != "claimed" || e.claim_token.as_deref() != Some(h.token.as_str()) {
        return Err(ApiError::new(
            Code::LeaseLost,
            "this claim token no longer holds the execution (its lease expired and it was recovered, or it finished); stop working on it",
        )
        .with_details(json!({ "state": e.state })));
    }
    Ok(e)
}

/// Extends the lease while the token holds it; records progress on the run's timeline.
pub fn heartbeat(
    tx: &Transaction<'_>,
    h: &Holder,
    progress: Option<&str>,
    lease_ms: i64,
    now: Timestamp,
) -> ApiResult<Execution> {
    let (actor, target, id, token) = (&h.actor, &h.target, h.id.as_str(), h.token.as_str());
    let lease = now.plus_ms(lease_ms);
    let extended = tx.execute(
        "UPDATE executions SET lease_expires_at = ?4, updated_at = ?5
         WHERE id = ?1 AND tenant_id = ?2 AND target_id = ?3 AND state = 'claimed' AND claim_token = ?6",
        rusqlite::params![id, actor.tenant_id, target, lease, now, token],
    )?;
    if extended == 0 {
        held(tx, h)?;
    }
    let e = load(tx, &actor.tenant_id, target, id)?;
    if let Some(message) = progress {
        runs::note_event(
            tx,
            &e.run_id,
            "progress",
            json!({ "message": message, "executionId": id }),
            now,
        )?;
    }
    Ok(e)
}

fn payload_hash(result: &Option<Value>) -> String {
    let bytes = result.as_ref().map(Value::to_string).unwrap_or_default();
    hex::encode(Sha256::digest(bytes.as_bytes()))
}

/// Completes the execution held by `token`. A replay with the same idempotency key returns the
/// original outcome; the same key with another result is 409. Completion wins over a pending
/// cancellation.
pub fn complete(
    tx: &Transaction<'_>,
    h: &Holder,
    result: Option<Value>,
    key: Option<&str>,
    now: Timestamp,
) -> ApiResult<Execution> {
    let (actor, target, id, token) = (&h.actor, &h.target, h.id.as_str(), h.token.as_str());
    let hash = payload_hash(&result);
    let current = load(tx, &actor.tenant_id, target, id)?;
    if current.state == "completed"
        && let (Some(k), Some(stored)) = (key, current.completion_key.as_deref())
        && k == stored
    {
        if current.completion_hash.as_deref() == Some(hash.as_str()) {
            return Ok(current);
        }
        return Err(ApiError::new(
            Code::IdempotencyKeyReused,
            "this idempotency key completed the execution with another result",
        ));
    }
    let done = tx.execute(
        "UPDATE executions SET state = 'completed', result = ?4, completion_key = ?5,
             completion_hash = ?6, lease_expires_at = NULL, updated_at = ?7
         WHERE id = ?1 AND tenant_id = ?2 AND target_id = ?3 AND state = 'claimed' AND claim_token = ?8",
        rusqlite::params![id, actor.tenant_id, target, result.as_ref().map(Value::to_string), key, hash, now, token],
    )?;
    if done == 0 {
        held(tx, h)?;
    }
    let e = load(tx, &actor.tenant_id, target, id)?;
    let mut run = run_of(tx, &actor.tenant_id, &e)?;
    run.result = result;
    runs::transition(
        tx,
        actor,
        &mut run,
        RunState::Succeeded,
        "completed",
        json!({ "executionId": id, "cancelWasRequested": e.cancel_requested }),
        now,
    )?;
    Ok(e)
}

/// Confirms a requested cancellation: the execution and its run are canceled.
pub fn ack_cancel(
    tx: &Transaction<'_>,
    h: &Holder,
    note: Option<&str>,
    now: Timestamp,
) -> ApiResult<Execution> {
    let (actor, target, id, token) = (&h.actor, &h.target, h.id.as_str(), h.token.as_str());
    let e = held(tx, h)?;
    if !e.cancel_requested {
        return Err(ApiError::new(
            Code::CancelNotRequested,
            "no cancellation was requested for this execution",
        ));
    }
    tx.execute(
        "UPDATE executions SET state = 'canceled', lease_expires_at = NULL, updated_at = ?2
         WHERE id = ?1 AND state = 'claimed' AND claim_token = ?3",
        rusqlite::params![id, now, token],
    )?;
    let mut run = run_of(tx, &actor.tenant_id, &e)?;
    runs::transition(
        tx,
        actor,
        &mut run,
        RunState::Canceled,
        "canceled",
        json!({ "executionId": id, "note": note }),
        now,
    )?;
    load(tx, &actor.tenant_id, target, id)
}

pub fn request_cancel(tx: &Transaction<'_>, run: &str, now: Timestamp) -> ApiResult<()> {
    tx.execute(
        "UPDATE executions SET cancel_requested = 1, updated_at = ?2 WHERE run_id = ?1 AND state = 'claimed'",
        rusqlite::params![run, now],
    )?;
    Ok(())
}

pub fn cancel_unclaimed(tx: &Transaction<'_>, run: &str, now: Timestamp) -> ApiResult<()> {
    tx.execute(
        "UPDATE executions SET state = 'canceled', updated_at = ?2 WHERE run_id = ?1 AND state = 'pending'",
        rusqlite::params![run, now],
    )?;
    Ok(())
}

/// Returns every execution whose lease ran out to the queue (attempt + 1), or fails its run
/// when it has had `max_attempts`. Each recovery is guarded on the very claim it saw, so a
/// completion or heartbeat that committed in between wins. Returns how many were recovered.
pub fn recover_expired(
    tx: &Transaction<'_>,
    max_attempts: i64,
    now: Timestamp,
) -> ApiResult<usize> {
    let expired: Vec<(String, String, TenantId, String, i64)> = tx
        .prepare_cached(
            "SELECT id, run_id, tenant_id, claim_token, attempt FROM executions
             WHERE state = 'claimed' AND lease_expires_at < ?1",
        )?
        .query_map([now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut recovered = 0;
    for (id, run_id, tenant, token, attempt) in expired {
        let system = Actor::system(tenant.clone());
        let mut run = runs::load(tx, &tenant, &run_id)?;
        // A worker that vanished after a cancel was asked for cannot acknowledge it: the
        // lapse of its lease is the acknowledgement.
        let canceling = run.state == RunState::CancelRequested;
        let exhausted = attempt >= max_attempts;
        let changed = tx.execute(
            if canceling {
                "UPDATE executions SET state = 'canceled', claim_token = NULL, lease_expires_at = NULL, updated_at = ?2
                 WHERE id = ?1 AND state = 'claimed' AND claim_token = ?3 AND lease_expires_at < ?2"
            } else if exhausted {
                "UPDATE executions SET state = 'failed', claim_token = NULL, lease_expires_at = NULL, updated_at = ?2
                 WHERE id = ?1 AND state = 'claimed' AND claim_token = ?3 AND lease_expires_at < ?2"
            } else {
                "UPDATE executions SET state = 'pending', claim_token = NULL, worker_id = NULL,
                     lease_expires_at = NULL, attempt = attempt + 1, updated_at = ?2
                 WHERE id = ?1 AND state = 'claimed' AND claim_token = ?3 AND lease_expires_at < ?2"
            },
            rusqlite::params![id, now, token],
        )?;
        if changed == 0 {
            continue;
        }
        recovered += 1;
        let detail = json!({ "executionId": id, "attempt": attempt, "maxAttempts": max_attempts });
        if canceling {
            runs::transition(
                tx,
                &system,
                &mut run,
                RunState::Canceled,
                "lease_expired_canceled",
                detail,
                now,
            )?;
        } else if exhausted {
            runs::transition(
                tx,
                &system,
                &mut run,
                RunState::Failed,
                "lease_expired_final",
                detail,
                now,
            )?;
        } else {
            runs::transition(
                tx,
                &system,
                &mut run,
                RunState::Dispatched,
                "lease_expired_requeued",
                detail,
                now,
            )?;
        }
        audit::append(
            tx,
            &system,
            &AuditEvent::success(
                "executions.lease.recover",
                "execution",
                id.clone(),
                json!({ "attempt": attempt, "exhausted": exhausted }),
            ),
            now,
        )?;
    }
    Ok(recovered)
}
