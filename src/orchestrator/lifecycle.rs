//! The one place runs and their executions change state. Every transition writes the run's new
//! state, an event on its timeline and an audit row in the caller's transaction; dispatching a
//! run to a local target enqueues its execution in the same transaction.
//!
//! ```text
//! queued ─▶ awaiting_approval ─▶ (approved) ─┬─▶ blocked ─(policy lifts)─┐
//!    └──────────────────────────────────────┴─▶ dispatched ◀───────────┘
//! dispatched ─claim─▶ running ─complete─▶ succeeded
//!                        ├─cancel─▶ cancel_requested ─ack/lease lapse─▶ canceled
//!                        └─lease lapse─▶ dispatched (next attempt) │ failed (attempts spent)
//! awaiting_approval ─reject─▶ rejected;   anything unfinished and unclaimed ─cancel─▶ canceled
//! remote: dispatched ─agent accepts─▶ running ─task completed─▶ succeeded
//!                                       ├─failed/rejected─▶ failed, canceled─▶ canceled
//!                                       └─cancel─▶ cancel_requested (cancel pending ─sent─▶ sent
//!            ─task canceled─▶ canceled; failure or deadline ─▶ pending again, retried ─…─▶
//!            exhausted ─resolve-remote─▶ the operator's resolution); late terminal truth
//!            (completed, failed, canceled) wins at every step before the resolution
//! ```

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::agents::a2a::{Protocol, RemoteState, RemoteTask};
use crate::agents::governance::{self, Change};
use crate::agents::model::TargetKind;
use crate::agents::policy::Policy;
use crate::agents::store::{self as targets, Target};
use crate::audit::{self, AuditEvent};
use crate::auth::perm::{Executions, RunsAdmin, RunsWrite};
use crate::auth::{Permission, Role, Write};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{ApprovalId, ExecutionId, RunId, TargetId, UserId};

use super::model::{
    ApprovalState, CancelProgress, CancelState, Execution, ExecutionState, RemoteTaskRow,
    Resolution, Run, RunState,
};
use super::store::{self, Ending, ExpiredLease};

/// Moves a run to `to`, appends the event and the audit row.
fn transition<P: Permission>(
    w: &Write<'_, P>,
    run: &mut Run,
    to: RunState,
    event: &str,
    detail: Value,
) -> ApiResult<()> {
    let from = run.state;
    run.state = to;
    run.updated_at = w.now();
    store::save_run(w, run)?;
    store::append_event(w, &run.id, event, &detail)?;
    audit::append(
        w,
        &AuditEvent::success(
            "orchestrator.run.transition",
            "run",
            run.id.as_str(),
            json!({ "from": from, "to": to, "event": event }),
        ),
    )
}

/// Opens a pending approval and parks the run until it is decided.
fn await_approval<P: Permission>(w: &Write<'_, P>, run: &mut Run) -> ApiResult<()> {
    let approval = store::insert_approval(w, &run.id)?;
    run.block_reason = None;
    transition(
        w,
        run,
        RunState::AwaitingApproval,
        "awaiting_approval",
        json!({ "approvalId": approval }),
    )
}

/// Sends an approved (or approval-free) run on: blocked while the target's policy blocks,
/// else into the target's queue.
fn dispatch_or_block<P: Permission>(
    w: &Write<'_, P>,
    run: &mut Run,
    policy: Policy,
    reasons: &[String],
) -> ApiResult<()> {
    if policy == Policy::Blocked {
        run.block_reason = Some(reasons.join(","));
        return transition(
            w,
            run,
            RunState::Blocked,
            "blocked",
            json!({ "reasons": reasons }),
        );
    }
    run.block_reason = None;
    if run.target_kind == TargetKind::RemoteA2a {
        // Recorded here; the message is sent after the commit (no network inside a mutation)
        // by the request that dispatched it, or else by the remote refresh job.
        let target = targets::load(w, w.tenant(), &run.target_id)?;
        let endpoint = target.endpoint_url.ok_or_else(|| {
            ApiError::new(
                Code::InvalidRunState,
                "the remote target's card names no endpoint to send the run to",
            )
        })?;
        let protocol = Protocol::of(target.protocol_version.as_deref()).as_str();
        store::insert_remote(w, run, &endpoint, protocol)?;
        return transition(
            w,
            run,
            RunState::Dispatched,
            "dispatched",
            json!({ "remote": { "endpoint": endpoint, "protocol": protocol } }),
        );
    }
    let execution = store::enqueue(w, run)?;
    transition(
        w,
        run,
        RunState::Dispatched,
        "dispatched",
        json!({ "executionId": execution }),
    )
}

/// Which call a look at a remote task made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// The message was sent (the agent had not accepted it yet).
    Send,
    /// The task was read.
    Get,
    /// A cancel of the task was sent.
    Cancel,
}

/// What one look at a remote task gave.
pub struct RemoteOutcome {
    pub call: Call,
    pub seen: Seen,
}

pub enum Seen {
    Task(RemoteTask),
    /// No answer (`transient`: a timeout or transport failure, worth another try) or a refusal.
    Failed {
        error: String,
        transient: bool,
    },
}

/// How remote tasks are followed: from the server's settings.
#[derive(Debug, Clone, Copy)]
pub struct RemoteRules {
    /// How often an unfinished task is read, in ms.
    pub every_ms: i64,
    /// Failed cancel attempts after which memesh stops and an operator decides.
    pub cancel_attempts: i64,
    /// How long a cancel the agent accepted may take to stop the task, in ms.
    pub cancel_timeout_ms: i64,
    /// Largest result kept (`--max-result-bytes`, as for local executions).
    pub max_result_bytes: usize,
}

/// Events a run's timeline gets from a remote agent's state changes and unreachability at
/// most: past it (an agent flipping states forever) the run's state is still followed, and one
/// `remote_events_capped` event says the timeline stops recording them.
pub const MAX_REMOTE_STATE_EVENTS: i64 = 100;

/// Records a remote state change or unreachability on the run's timeline, within
/// [`MAX_REMOTE_STATE_EVENTS`].
fn remote_event<P: Permission>(
    w: &Write<'_, P>,
    run: &RunId,
    kind: &str,
    detail: &Value,
) -> ApiResult<()> {
    let recorded = store::count_events(w, run, &["remote_state", "remote_unreachable"])?;
    if recorded < MAX_REMOTE_STATE_EVENTS {
        return store::append_event(w, run, kind, detail);
    }
    if store::count_events(w, run, &["remote_events_capped"])? == 0 {
        let note = json!({ "limit": MAX_REMOTE_STATE_EVENTS,
            "message": "the agent changed state this often; further changes are followed but not recorded here" });
        store::append_event(w, run, "remote_events_capped", &note)?;
    }
    Ok(())
}

/// An agent's output as kept: itself, or when it is larger than the limit an error saying so
/// (the output is not stored; 4 MiB answers would otherwise bypass `--max-result-bytes`).
fn kept_output(output: Value, limit: usize) -> Result<Value, Value> {
    let bytes = output.to_string().len();
    if bytes <= limit {
        return Ok(output);
    }
    Err(json!({ "error": {
        "code": "result_too_large",
        "message": format!("the agent's result is {bytes} bytes, more than the limit of {limit} (--max-result-bytes); it was not kept"),
        "bytes": bytes, "limit": limit,
    }}))
}

/// The longest wait between two looks at a remote task that keeps failing.
const MAX_REMOTE_BACKOFF_MS: i64 = 5 * 60 * 1000;

/// `every_ms` doubled `n` times (at most five minutes), plus up to a quarter of jitter.
fn backoff(every_ms: i64, n: i64) -> i64 {
    let exp = n.clamp(0, 10) as u32;
    let wait = every_ms
        .saturating_mul(1_i64 << exp)
        .min(MAX_REMOTE_BACKOFF_MS);
    wait + rand::random_range(0..=wait / 4)
}

/// Counts a failed cancel attempt: memesh retries it (backing off) until the attempts are
/// spent, then the run needs an operator.
fn cancel_failed<P: Permission>(
    w: &Write<'_, P>,
    run: &Run,
    row: &mut RemoteTaskRow,
    error: String,
    rules: RemoteRules,
) -> ApiResult<()> {
    row.cancel.attempts += 1;
    row.cancel.error = Some(error.clone());
    row.cancel.deadline = None;
    let detail = json!({ "attempt": row.cancel.attempts, "maxAttempts": rules.cancel_attempts,
                         "error": error });
    if row.cancel.attempts >= rules.cancel_attempts {
        row.cancel.state = Some(CancelState::Exhausted);
        row.next_check_at = w
            .now()
            .plus_ms(backoff(rules.every_ms, row.cancel.attempts));
        store::append_event(w, &run.id, "remote_cancel_exhausted", &detail)?;
        audit::append(
            w,
            &AuditEvent::success(
                "orchestrator.run.remote_cancel_exhausted",
                "run",
                run.id.as_str(),
                detail,
            ),
        )
    } else {
        row.cancel.state = Some(CancelState::Pending);
        row.next_check_at = w
            .now()
            .plus_ms(backoff(rules.every_ms, row.cancel.attempts));
        store::append_event(w, &run.id, "remote_cancel_failed", &detail)
    }
}

/// A run canceled before the agent accepted its message, whose message the agent then
/// accepted after all (the send was in flight): the task is canceled on the agent too, as far
/// as memesh can; the run stays canceled.
fn follow_up_orphan<P: Permission>(
    w: &Write<'_, P>,
    run: &Run,
    row: &mut RemoteTaskRow,
    outcome: RemoteOutcome,
    rules: RemoteRules,
) -> ApiResult<()> {
    match (outcome.call, outcome.seen) {
        (Call::Send, Seen::Task(task)) if !task.state.is_terminal() && !row.accepted() => {
            row.task_id = task.id;
            row.context_id = task.context_id;
            row.cancel = CancelProgress {
                state: Some(CancelState::Pending),
                requested_at: Some(w.now()),
                ..CancelProgress::default()
            };
            row.done = false;
            row.next_check_at = w.now();
            let detail = json!({ "remoteTaskId": row.task_id });
            store::append_event(w, &run.id, "remote_accepted_after_cancel", &detail)?;
        }
        (Call::Cancel, Seen::Failed { error, .. })
            if row.cancel.attempts + 1 < rules.cancel_attempts =>
        {
            row.cancel.attempts += 1;
            row.cancel.error = Some(error);
            row.next_check_at = w
                .now()
                .plus_ms(backoff(rules.every_ms, row.cancel.attempts));
        }
        (Call::Cancel, seen) => {
            row.done = true;
            let detail = match seen {
                Seen::Task(t) => json!({ "remoteState": t.state.as_str() }),
                Seen::Failed { error, .. } => json!({ "error": error, "gaveUp": true }),
            };
            store::append_event(w, &run.id, "remote_orphan_cancel", &detail)?;
        }
        _ => row.done = true,
    }
    store::save_remote(w, row)
}

/// Applies what was seen of a run's remote task: the run follows the remote state (accepted →
/// running; completed → succeeded with the task's artifacts; failed or rejected → failed;
/// canceled → canceled), each change an event. Late terminal truth wins over a cancel that
/// failed or timed out. A failed look is recorded and the next one backs off (doubling, with
/// jitter, up to five minutes); a failed cancel counts an attempt, and a cancel the agent
/// accepted that has not stopped the task by its deadline counts as failed. A terminal run
/// stays as it is. Returns what changed, for the caller.
pub fn apply_remote<P: Permission>(
    w: &Write<'_, P>,
    run_id: &RunId,
    outcome: RemoteOutcome,
    rules: RemoteRules,
) -> ApiResult<Value> {
    let mut run = store::load_run(w, w.tenant(), run_id)?;
    let mut row = store::load_remote(w, run_id)?.ok_or_else(|| {
        ApiError::new(
            Code::InvalidRunState,
            format!("run {run_id} has no remote task"),
        )
    })?;
    let now = w.now();
    let before = run.state;
    if run.state.is_terminal() {
        follow_up_orphan(w, &run, &mut row, outcome, rules)?;
        return Ok(summary(&run, before, &row));
    }
    match outcome.seen {
        Seen::Failed { error, transient } => {
            row.failures += 1;
            row.last_error = Some(error.clone());
            if !transient && outcome.call == Call::Send {
                // The agent refused the message: nothing runs there.
                row.done = true;
                store::save_remote(w, &mut row)?;
                run.result = Some(json!({ "error": error }));
                transition(
                    w,
                    &mut run,
                    RunState::Failed,
                    "remote_refused",
                    json!({ "error": error }),
                )?;
                return Ok(summary(&run, before, &row));
            }
            row.next_check_at = now.plus_ms(backoff(rules.every_ms, row.failures));
            if row.failures == 1 {
                remote_event(
                    w,
                    &run.id,
                    "remote_unreachable",
                    &json!({ "error": error, "transient": transient, "call": format!("{:?}", outcome.call) }),
                )?;
            }
            if outcome.call == Call::Cancel {
                cancel_failed(w, &run, &mut row, error, rules)?;
            }
        }
        Seen::Task(task) => {
            let state = task.state.as_str();
            let changed = row.remote_state.as_deref() != Some(state);
            if task.id.is_some() {
                row.task_id = task.id.clone();
            }
            if task.context_id.is_some() {
                row.context_id = task.context_id.clone();
            }
            row.remote_state = Some(state.to_owned());
            row.remote_state_raw = Some(task.raw_state.clone());
            row.last_seen_at = Some(now);
            row.last_error = None;
            row.failures = 0;
            row.next_check_at = now.plus_ms(rules.every_ms);
            row.done = task.state.is_terminal();
            let mut detail = json!({ "remoteState": state, "remoteTaskId": row.task_id });
            if let Some(c) = row.cancel.state {
                detail["cancel"] = json!({ "state": c, "failedAttempts": row.cancel.attempts,
                                           "lastError": row.cancel.error });
            }
            match task.state {
                RemoteState::Completed => {
                    let output = match kept_output(task.output, rules.max_result_bytes) {
                        Ok(output) => output,
                        Err(too_large) => {
                            run.result = Some(too_large);
                            transition(
                                w,
                                &mut run,
                                RunState::Failed,
                                "remote_result_too_large",
                                detail,
                            )?;
                            store::save_remote(w, &mut row)?;
                            return Ok(summary(&run, before, &row));
                        }
                    };
                    run.result = Some(output);
                    let event = if row.cancel.state.is_some() {
                        detail["message"] = json!(
                            "the agent completed the task after memesh asked it to cancel; the completion is what happened, so the run succeeded"
                        );
                        "remote_completed_after_cancel"
                    } else {
                        "remote_completed"
                    };
                    transition(w, &mut run, RunState::Succeeded, event, detail)?;
                }
                RemoteState::Failed | RemoteState::Rejected => {
                    let output = kept_output(task.output, rules.max_result_bytes)
                        .unwrap_or_else(|too_large| too_large);
                    run.result = Some(json!({ "remoteState": state, "output": output }));
                    transition(w, &mut run, RunState::Failed, "remote_failed", detail)?;
                }
                RemoteState::Canceled => {
                    transition(w, &mut run, RunState::Canceled, "remote_canceled", detail)?;
                }
                _ if outcome.call == Call::Cancel => {
                    // Accepted; the task has not stopped yet. It must by the deadline.
                    let deadline = now.plus_ms(rules.cancel_timeout_ms);
                    row.cancel.state = Some(CancelState::Sent);
                    row.cancel.deadline = Some(deadline);
                    detail["deadline"] = json!(deadline);
                    store::append_event(w, &run.id, "remote_cancel_sent", &detail)?;
                }
                _ if run.state == RunState::Dispatched => {
                    transition(w, &mut run, RunState::Running, "remote_accepted", detail)?;
                }
                _ if changed => remote_event(w, &run.id, "remote_state", &detail)?,
                _ => {}
            }
        }
    }
    if !run.state.is_terminal()
        && row.cancel.state == Some(CancelState::Sent)
        && let Some(deadline) = row.cancel.deadline
    {
        if now >= deadline {
            let error = format!(
                "the agent accepted the cancel but the task was still {} at {deadline}",
                row.remote_state.as_deref().unwrap_or("unknown")
            );
            cancel_failed(w, &run, &mut row, error, rules)?;
        } else if row.next_check_at > deadline {
            row.next_check_at = deadline;
        }
    }
    store::save_remote(w, &mut row)?;
    Ok(summary(&run, before, &row))
}

/// What a look changed, for the caller.
fn summary(run: &Run, before: RunState, row: &RemoteTaskRow) -> Value {
    json!({
        "from": before,
        "to": run.state,
        "changed": before != run.state,
        "remoteState": row.remote_state,
        "remoteTaskId": row.task_id,
        "lastError": row.last_error,
        "cancelState": row.cancel.state,
    })
}

/// Creates a run on `target`, or returns the run an earlier request with the same idempotency
/// key created (`false`). A reused key with another target or input is refused.
pub fn create(
    w: &Write<'_, RunsWrite>,
    target: &Target,
    input: &Value,
    asked_approval: bool,
    idempotency_key: Option<&str>,
) -> ApiResult<(Run, bool)> {
    if let Some(key) = idempotency_key
        && let Some(id) = store::run_by_key(w, w.tenant(), key)?
    {
        let run = store::load_run(w, w.tenant(), &id)?;
        if run.target_id != target.id || &run.input != input {
            return Err(ApiError::new(
                Code::IdempotencyKeyReused,
                "this idempotency key was used for a run with another target or input",
            ));
        }
        return Ok((run, false));
    }
    let requires = asked_approval || target.runtime.policy == Policy::RequireApproval;
    let id = store::insert_run(w, &target.id, target.kind, input, idempotency_key, requires)?;
    store::append_event(w, &id, "created", &json!({ "requiresApproval": requires }))?;
    let mut run = store::load_run(w, w.tenant(), &id)?;
    if requires {
        await_approval(w, &mut run)?;
    } else {
        dispatch_or_block(w, &mut run, target.runtime.policy, &target.runtime.reasons)?;
    }
    Ok((run, true))
}

/// Applies a governance change to a target; if it lifts the target's block, the runs it held
/// back move on in the same transaction.
pub fn govern<P: Permission>(
    w: &Write<'_, P>,
    id: &TargetId,
    expected: Option<crate::clock::Timestamp>,
    change: Change,
) -> ApiResult<Target> {
    governance::apply(w, id, expected, change, |w, rt| {
        release_blocked(w, id, rt.policy, &rt.reasons)
    })
}

/// A target's policy stopped blocking: its blocked runs move on (into approval if the new policy
/// demands one they lack, else into the queue). Returns how many moved.
fn release_blocked<P: Permission>(
    w: &Write<'_, P>,
    target: &TargetId,
    policy: Policy,
    reasons: &[String],
) -> ApiResult<usize> {
    let ids = store::blocked_on(w, w.tenant(), target)?;
    for id in &ids {
        let mut run = store::load_run(w, w.tenant(), id)?;
        if policy == Policy::RequireApproval && !store::has_approval(w, id)? {
            await_approval(w, &mut run)?;
        } else {
            dispatch_or_block(w, &mut run, policy, reasons)?;
        }
    }
    Ok(ids.len())
}

/// Approves or rejects a pending approval. The requester may not decide on their own run.
pub fn decide(
    w: &Write<'_, RunsAdmin>,
    run_id: &RunId,
    approval_id: &ApprovalId,
    approve: bool,
    note: Option<&str>,
) -> ApiResult<Run> {
    let mut run = store::load_run(w, w.tenant(), run_id)?;
    let Some(state) = store::approval_state(w, run_id, approval_id)? else {
        return Err(ApiError::not_found("approval"));
    };
    if w.user() == Some(&run.requested_by) {
        return Err(ApiError::new(
            Code::SelfReviewBlocked,
            "the requester of a run may not decide its approval",
        ));
    }
    ensure_independent_reviewer(w, &run)?;
    if state != ApprovalState::Pending || run.state != RunState::AwaitingApproval {
        return Err(ApiError::new(
            Code::ApprovalDecided,
            "this approval was already decided",
        ));
    }
    let decision = if approve {
        ApprovalState::Approved
    } else {
        ApprovalState::Rejected
    };
    store::decide_approval(w, approval_id, decision, note)?;
    if approve {
        let detail = json!({ "approvalId": approval_id, "by": w.user() });
        store::append_event(w, run_id, "approved", &detail)?;
        let target = targets::load(w, w.tenant(), &run.target_id)?;
        dispatch_or_block(w, &mut run, target.runtime.policy, &target.runtime.reasons)?;
    } else {
        let detail = json!({ "approvalId": approval_id, "note": note });
        transition(w, &mut run, RunState::Rejected, "rejected", detail)?;
    }
    Ok(run)
}

/// Two-person approval means a second person the requester could not have made: the approver
/// must have been a member before the run was requested, must have held the role they decide
/// with since before then (no reviewer invited or promoted for a run already waiting), and,
/// unless the requester is an OWNER, must not have been invited by the requester (an ADMIN
/// could otherwise accept their own invitation as a second account; inviting or promoting an
/// ADMIN needs an OWNER). An OWNER appoints everyone, so for an OWNER's run approval proves a
/// second, earlier member agreed, not independence from the OWNER. Nothing proves that two
/// people did not agree beforehand.
fn ensure_independent_reviewer(w: &Write<'_, RunsAdmin>, run: &Run) -> ApiResult<()> {
    let Some(approver) = w.user() else {
        return Ok(());
    };
    type Facts = (Timestamp, Option<Timestamp>, Option<UserId>, Option<Role>);
    let (joined, role_since, invited_by, requester_role): Facts = w
        .prepare_cached(
            "SELECT u.created_at, u.role_since,
                    (SELECT i.invited_by FROM invitations i WHERE i.accepted_user_id = u.id),
                    (SELECT r.role FROM users r WHERE r.id = ?2)
             FROM users u WHERE u.id = ?1",
        )?
        .query_row(rusqlite::params![approver, run.requested_by], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let requester_is_owner = requester_role == Some(Role::Owner);
    let reason = if invited_by.as_ref() == Some(&run.requested_by) && !requester_is_owner {
        Some((
            "invited_by_requester",
            "the requester invited this reviewer; another member must decide",
        ))
    } else if joined > run.created_at {
        Some((
            "joined_after_request",
            "this reviewer joined after the run was requested; a member from before must decide",
        ))
    } else if role_since.is_some_and(|since| since > run.created_at) {
        Some((
            "role_granted_after_request",
            "this reviewer was given their role after the run was requested; a member who held it before must decide",
        ))
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some((reason, why)) => Err(ApiError::new(Code::SelfReviewBlocked, why).with_details(
            json!({ "reason": reason, "requestedBy": run.requested_by,
                    "runCreatedAt": run.created_at, "reviewerJoinedAt": joined,
                    "reviewerRoleSince": role_since }),
        )),
    }
}

/// Asks for cancellation: immediate when no worker holds the run, else the worker is told
/// through its heartbeat and the run waits for its acknowledgement. The requester may cancel
/// their own run; an OWNER or ADMIN (the role as re-read in this transaction) anyone's.
pub fn cancel(w: &Write<'_, RunsWrite>, run_id: &RunId) -> ApiResult<Run> {
    let mut run = store::load_run(w, w.tenant(), run_id)?;
    may_cancel(w, &run)?;
    if !run.state.is_terminal()
        && let Some(mut row) = store::load_remote(w, run_id)?
    {
        return cancel_remote(w, run, &mut row);
    }
    match run.state {
        s if s.is_terminal() => Err(ApiError::new(
            Code::InvalidRunState,
            "the run has already finished",
        )),
        RunState::CancelRequested => Ok(run),
        RunState::Running => {
            store::request_cancel(w, run_id)?;
            transition(
                w,
                &mut run,
                RunState::CancelRequested,
                "cancel_requested",
                json!({}),
            )?;
            Ok(run)
        }
        _ => {
            store::cancel_pending(w, run_id)?;
            store::reject_pending_approvals(w, run_id, "run canceled")?;
            let detail = json!({ "before": "dispatch" });
            transition(w, &mut run, RunState::Canceled, "canceled", detail)?;
            Ok(run)
        }
    }
}

/// Cancel of a run sent to a remote agent. Not accepted yet: memesh stops sending the message
/// and the run is canceled here. Accepted: the cancel is recorded as pending (the run is
/// `cancel_requested`) and sent after the commit; asking again changes nothing.
fn cancel_remote(
    w: &Write<'_, RunsWrite>,
    mut run: Run,
    row: &mut RemoteTaskRow,
) -> ApiResult<Run> {
    if run.state == RunState::CancelRequested {
        return Ok(run);
    }
    if !row.accepted() {
        row.done = true;
        store::save_remote(w, row)?;
        let detail = json!({ "before": "remote_accept", "messageId": row.message_id });
        transition(w, &mut run, RunState::Canceled, "canceled", detail)?;
        return Ok(run);
    }
    row.cancel = CancelProgress {
        state: Some(CancelState::Pending),
        requested_at: Some(w.now()),
        ..CancelProgress::default()
    };
    row.next_check_at = w.now();
    store::save_remote(w, row)?;
    let detail = json!({ "remoteTaskId": row.task_id });
    transition(
        w,
        &mut run,
        RunState::CancelRequested,
        "cancel_requested",
        detail,
    )?;
    Ok(run)
}

/// The requester, or an OWNER or ADMIN, may cancel a run and retry its cancel. The role is the
/// one re-read inside this transaction: a demotion that committed first wins.
fn may_cancel(w: &Write<'_, RunsWrite>, run: &Run) -> ApiResult<()> {
    let any = w.role().at_least(Role::Admin);
    if !any && w.user() != Some(&run.requested_by) {
        return Err(ApiError::new(
            Code::InsufficientRole,
            "only the requester or an OWNER or ADMIN may cancel this run",
        ));
    }
    Ok(())
}

/// A remote run's task, or 409 for a local run.
fn remote_of<P: Permission>(w: &Write<'_, P>, run: &Run) -> ApiResult<RemoteTaskRow> {
    store::load_remote(w, &run.id)?.ok_or_else(|| {
        let (code, why) = refusal(run, None);
        ApiError::new(Code::InvalidRunState, why).with_details(json!({ "reason": code }))
    })
}

fn refusal(run: &Run, row: Option<&RemoteTaskRow>) -> (&'static str, String) {
    super::model::remote_refusal(run, row, "do")
}

/// Makes a failed remote cancel due now; the caller sends it after the commit. Allowed only
/// while the cancel is pending with a failed attempt (409 `cancel_not_retryable` otherwise).
pub fn retry_cancel(w: &Write<'_, RunsWrite>, run_id: &RunId) -> ApiResult<Run> {
    let run = store::load_run(w, w.tenant(), run_id)?;
    may_cancel(w, &run)?;
    let mut row = remote_of(w, &run)?;
    if run.state.is_terminal() || !row.cancel_retryable() {
        let (reason, why) = refusal(&run, Some(&row));
        return Err(ApiError::new(Code::CancelNotRetryable, why).with_details(
            json!({ "reason": reason, "runState": run.state, "cancelState": row.cancel.state }),
        ));
    }
    row.next_check_at = w.now();
    store::save_remote(w, &mut row)?;
    let detail = json!({ "by": w.user(), "failedAttempts": row.cancel.attempts });
    store::append_event(w, run_id, "retry_cancel", &detail)?;
    audit::append(
        w,
        &AuditEvent::success(
            "orchestrator.run.retry_cancel",
            "run",
            run_id.as_str(),
            detail,
        ),
    )?;
    Ok(run)
}

/// An operator's resolution of a remote run whose cancel attempts are spent: the run becomes
/// terminal as the operator says, with their note; memesh stops following the task. Guarded by
/// the remote record's `runtimeUpdatedAt` when given.
pub fn resolve_remote(
    w: &Write<'_, RunsAdmin>,
    run_id: &RunId,
    resolution: Resolution,
    note: &str,
    expected: Option<crate::clock::Timestamp>,
) -> ApiResult<Run> {
    let mut run = store::load_run(w, w.tenant(), run_id)?;
    let mut row = remote_of(w, &run)?;
    if run.state.is_terminal() {
        let (_, why) = refusal(&run, Some(&row));
        return Err(ApiError::new(Code::InvalidRunState, why));
    }
    if row.cancel.state != Some(CancelState::Exhausted) {
        let (reason, why) = refusal(&run, Some(&row));
        return Err(ApiError::new(Code::RemoteRecoveryNotExhausted, why)
            .with_details(json!({ "reason": reason, "cancelState": row.cancel.state })));
    }
    if let Some(expected) = expected
        && expected != row.updated_at
    {
        return Err(ApiError::new(
            Code::StaleRuntimeSnapshot,
            "the run's remote record changed since you read it; read it again and decide on what it says now",
        )
        .with_details(json!({ "runtimeUpdatedAt": row.updated_at })));
    }
    row.cancel.state = Some(CancelState::Resolved);
    row.done = true;
    store::save_remote(w, &mut row)?;
    let detail = json!({
        "resolution": resolution.run_state(), "note": note, "by": w.user(),
        "failedCancelAttempts": row.cancel.attempts, "lastCancelError": row.cancel.error,
        "lastRemoteState": row.remote_state,
    });
    run.result = Some(json!({ "operatorResolution": detail }));
    transition(
        w,
        &mut run,
        resolution.run_state(),
        "remote_resolved",
        detail.clone(),
    )?;
    audit::append(
        w,
        &AuditEvent::success(
            "orchestrator.run.resolve_remote",
            "run",
            run_id.as_str(),
            detail,
        ),
    )?;
    Ok(run)
}

/// An agent's worker and the execution it acts on with its claim token.
pub struct Hold<'a> {
    pub id: &'a ExecutionId,
    pub token: &'a str,
}

fn load(w: &Write<'_, Executions>, id: &ExecutionId) -> ApiResult<Execution> {
    store::load_execution(w, w.tenant(), w.target(), id)
}

/// Why a target's queue may not be worked now: its effective policy blocks dispatch (a hold, an
/// incident not handed off). Executions already claimed may finish.
pub fn queue_block(target: &Target) -> Option<&[String]> {
    (target.runtime.policy == Policy::Blocked).then_some(target.runtime.reasons.as_slice())
}

/// Claims with the worker's token: one guarded statement, so exactly one claimant wins. The
/// same token claiming again gets its claim back; any other token gets 409. A pending execution
/// of a target whose policy blocks dispatch is not claimable until the block lifts.
pub fn claim(
    w: &Write<'_, Executions>,
    h: Hold<'_>,
    worker: Option<&str>,
    lease_ms: i64,
) -> ApiResult<Execution> {
    let target = targets::load(w, w.tenant(), w.target())?;
    if let Some(reasons) = queue_block(&target)
        && load(w, h.id)?.state == ExecutionState::Pending
    {
        return Err(ApiError::new(
            Code::TargetBlocked,
            format!(
                "the target's policy blocks dispatch ({}); the execution waits until that lifts",
                reasons.join(", ")
            ),
        )
        .with_details(json!({ "blockReasons": reasons })));
    }
    let lease = w.now().plus_ms(lease_ms);
    let won = store::claim_pending(w, h.id, h.token, worker, lease)?;
    let e = load(w, h.id)?;
    if !won {
        return match (e.state, e.claim_token.as_deref()) {
            (ExecutionState::Claimed, Some(t)) if t == h.token => Ok(e),
            (ExecutionState::Claimed, _) => Err(ApiError::new(
                Code::DuplicateClaim,
                "another claim token holds this execution",
            )),
            (state, _) => Err(ApiError::new(
                Code::ExecutionNotClaimable,
                format!("the execution is {}", state.as_str()),
            )),
        };
    }
    let mut run = store::load_run(w, w.tenant(), &e.run_id)?;
    let detail = json!({ "executionId": h.id, "workerId": worker, "attempt": e.attempt,
                         "leaseExpiresAt": lease });
    transition(w, &mut run, RunState::Running, "claimed", detail)?;
    Ok(e)
}

/// The execution as the token holds it; 409 `lease_lost` when it no longer does.
fn held(w: &Write<'_, Executions>, h: &Hold<'_>) -> ApiResult<Execution> {
    let e = load(w, h.id)?;
    if e.state != ExecutionState::Claimed || e.claim_token.as_deref() != Some(h.token) {
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
    w: &Write<'_, Executions>,
    h: Hold<'_>,
    progress: Option<&str>,
    lease_ms: i64,
) -> ApiResult<Execution> {
    if !store::extend_lease(w, h.id, h.token, w.now().plus_ms(lease_ms))? {
        held(w, &h)?;
    }
    let e = load(w, h.id)?;
    if let Some(message) = progress {
        let detail = json!({ "message": message, "executionId": h.id });
        store::append_event(w, &e.run_id, "progress", &detail)?;
    }
    Ok(e)
}

fn payload_hash(result: Option<&Value>) -> String {
    let bytes = result.map(Value::to_string).unwrap_or_default();
    hex::encode(Sha256::digest(bytes.as_bytes()))
}

/// Completes the execution the token holds. A replay with the same idempotency key returns the
/// original outcome; the same key with another result is 409. Completion wins over a pending
/// cancellation.
pub fn complete(
    w: &Write<'_, Executions>,
    h: Hold<'_>,
    result: Option<Value>,
    key: Option<&str>,
) -> ApiResult<Execution> {
    let hash = payload_hash(result.as_ref());
    let current = load(w, h.id)?;
    if current.state == ExecutionState::Completed
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
    let ending = Ending::Completed {
        result: result.as_ref(),
        key,
        hash: &hash,
    };
    if !store::finish_held(w, h.id, h.token, ending)? {
        held(w, &h)?;
    }
    let e = load(w, h.id)?;
    let mut run = store::load_run(w, w.tenant(), &e.run_id)?;
    run.result = result;
    let detail = json!({ "executionId": h.id, "cancelWasRequested": e.cancel_requested });
    transition(w, &mut run, RunState::Succeeded, "completed", detail)?;
    Ok(e)
}

/// Confirms a requested cancellation: the execution and its run are canceled.
pub fn ack_cancel(
    w: &Write<'_, Executions>,
    h: Hold<'_>,
    note: Option<&str>,
) -> ApiResult<Execution> {
    let e = held(w, &h)?;
    if !e.cancel_requested {
        return Err(ApiError::new(
            Code::CancelNotRequested,
            "no cancellation was requested for this execution",
        ));
    }
    store::finish_held(w, h.id, h.token, Ending::Canceled)?;
    let mut run = store::load_run(w, w.tenant(), &e.run_id)?;
    let detail = json!({ "executionId": h.id, "note": note });
    transition(w, &mut run, RunState::Canceled, "canceled", detail)?;
    load(w, h.id)
}

/// Ends one expired claim of the capability's tenant (the sweeper acts as the system): back to
/// the queue with the next attempt, or the run fails once it has had `max_attempts`; a run whose
/// cancellation was requested is canceled instead, since the worker that vanished cannot
/// acknowledge it. True if the claim was recovered (a completion or heartbeat may have won).
pub fn recover_lease<P: Permission>(
    w: &Write<'_, P>,
    lease: &ExpiredLease,
    max_attempts: i64,
) -> ApiResult<bool> {
    let mut run = store::load_run(w, w.tenant(), &lease.run_id)?;
    let exhausted = lease.attempt >= max_attempts;
    let (into, to, event) = if run.state == RunState::CancelRequested {
        (
            ExecutionState::Canceled,
            RunState::Canceled,
            "lease_expired_canceled",
        )
    } else if exhausted {
        (
            ExecutionState::Failed,
            RunState::Failed,
            "lease_expired_final",
        )
    } else {
        (
            ExecutionState::Pending,
            RunState::Dispatched,
            "lease_expired_requeued",
        )
    };
    if !store::recover_lease(w, lease, into)? {
        return Ok(false);
    }
    let detail = json!({ "executionId": lease.id, "attempt": lease.attempt,
                         "maxAttempts": max_attempts });
    transition(w, &mut run, to, event, detail)?;
    audit::append(
        w,
        &AuditEvent::success(
            "executions.lease.recover",
            "execution",
            lease.id.as_str(),
            json!({ "attempt": lease.attempt, "exhausted": exhausted }),
        ),
    )?;
    Ok(true)
}
