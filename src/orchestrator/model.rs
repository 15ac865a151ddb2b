//! Runs and executions: their states, the rows as stored, request bodies, and the views clients
//! read (what each control action allows, and what to do next).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agents::model::TargetKind;
use crate::clock::Timestamp;
use crate::ids::{ApprovalId, ExecutionId, RunId, TargetId, TenantId, UserId};

/// A state enum stored as its lowercase name: text in SQL and JSON, decoded strictly.
macro_rules! stored_state {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                $name::parse(s).ok_or_else(|| crate::db::unknown_value($what, s))
            }
        }
    };
}

stored_state!(
    /// Where a run is in its life.
    RunState, "run state" {
        Queued => "queued",
        AwaitingApproval => "awaiting_approval",
        Blocked => "blocked",
        Dispatched => "dispatched",
        Running => "running",
        CancelRequested => "cancel_requested",
        Succeeded => "succeeded",
        Failed => "failed",
        Canceled => "canceled",
        Rejected => "rejected",
    }
);

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Canceled | RunState::Rejected
        )
    }

    /// The states a run is still in flight in.
    pub fn unfinished() -> impl Iterator<Item = RunState> {
        RunState::ALL.iter().copied().filter(|s| !s.is_terminal())
    }
}

stored_state!(
    /// Where an execution is in the local queue.
    ExecutionState, "execution state" {
        Pending => "pending",
        Claimed => "claimed",
        Completed => "completed",
        Failed => "failed",
        Canceled => "canceled",
    }
);

stored_state!(
    /// An approval's decision.
    ApprovalState, "approval state" {
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
    }
);

stored_state!(
    /// Where the cancel of a remote run's task stands.
    CancelState, "cancel state" {
        Pending => "pending",
        Sent => "sent",
        Exhausted => "exhausted",
        Resolved => "resolved",
    }
);

/// How an operator closes a remote run whose recovery is exhausted: what they found the
/// remote task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Canceled,
    Failed,
    Succeeded,
}

impl Resolution {
    pub fn run_state(self) -> RunState {
        match self {
            Resolution::Canceled => RunState::Canceled,
            Resolution::Failed => RunState::Failed,
            Resolution::Succeeded => RunState::Succeeded,
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolveRemoteBody {
    pub resolution: Resolution,
    pub note: String,
    pub expected_runtime_updated_at: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRun {
    pub target_id: String,
    pub input: Value,
    pub requires_approval: Option<bool>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecideBody {
    pub note: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    pub target_id: Option<String>,
    pub state: Option<String>,
    pub target_kind: Option<String>,
    pub limit: Option<String>,
    pub offset: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunViewParams {
    pub events_after: Option<String>,
    pub events_limit: Option<String>,
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: RunId,
    pub tenant_id: TenantId,
    pub target_id: TargetId,
    pub target_kind: TargetKind,
    pub requested_by: UserId,
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub requires_approval: bool,
    pub state: RunState,
    pub block_reason: Option<String>,
    pub result: Option<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Approval {
    pub id: ApprovalId,
    pub state: ApprovalState,
    pub created_at: Timestamp,
    pub decided_by: Option<UserId>,
    pub decided_at: Option<Timestamp>,
    pub note: Option<String>,
}

/// An execution in the local queue.
#[derive(Debug, Clone)]
pub struct Execution {
    pub id: ExecutionId,
    pub run_id: RunId,
    pub state: ExecutionState,
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

/// Where the cancel of a remote task stands.
#[derive(Debug, Clone, Default)]
pub struct CancelProgress {
    /// `None`: no cancel was asked for.
    pub state: Option<CancelState>,
    pub requested_at: Option<Timestamp>,
    /// Attempts that failed (no answer, an error, or accepted and not carried out in time).
    pub attempts: i64,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// When a cancel the agent accepted must have stopped the task.
    pub deadline: Option<Timestamp>,
}

/// A run's remote task, as memesh last saw it.
#[derive(Debug, Clone)]
pub struct RemoteTaskRow {
    pub run_id: RunId,
    pub tenant_id: TenantId,
    pub endpoint: String,
    /// `1.0` or `0.3`.
    pub protocol: String,
    pub message_id: String,
    pub task_id: Option<String>,
    pub context_id: Option<String>,
    pub remote_state: Option<String>,
    pub remote_state_raw: Option<String>,
    pub last_seen_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// Looks in a row that got no answer.
    pub failures: i64,
    pub next_check_at: Timestamp,
    /// Nothing more to look at (the task or the run finished).
    pub done: bool,
    pub cancel: CancelProgress,
    /// When any of this last changed: the CAS token of resolve-remote.
    pub updated_at: Timestamp,
}

impl RemoteTaskRow {
    /// The agent accepted the message: there is a task to cancel or read.
    pub fn accepted(&self) -> bool {
        self.task_id.is_some()
    }

    /// A failed cancel attempt that may be retried now.
    pub fn cancel_retryable(&self) -> bool {
        self.cancel.state == Some(CancelState::Pending) && self.cancel.error.is_some()
    }
}

fn action(allowed: bool, reasons: Vec<&str>, guidance: &str) -> Value {
    json!({ "allowed": allowed, "blockReasons": reasons, "guidance": guidance })
}

/// What an action on a remote run is refused for, in words, by reason code.
pub fn remote_refusal(
    run: &Run,
    remote: Option<&RemoteTaskRow>,
    action: &str,
) -> (&'static str, String) {
    let Some(r) = remote else {
        return if run.target_kind == TargetKind::RemoteA2a {
            (
                "not_sent",
                "the run has not been sent to the agent yet".to_owned(),
            )
        } else {
            (
                "local_run",
                "only runs on REMOTE_A2A targets have a remote task; this run is on a LOCAL_AGENT"
                    .to_owned(),
            )
        };
    };
    if run.state.is_terminal() {
        return (
            "run_finished",
            format!(
                "the run is {}; nothing is left to {action}",
                run.state.as_str()
            ),
        );
    }
    match r.cancel.state {
        None => (
            "no_cancel_requested",
            "no cancel was asked for; POST /v1/orchestrator/runs/{id}/cancel sends one".to_owned(),
        ),
        Some(CancelState::Pending) if r.cancel.error.is_none() => (
            "cancel_not_sent_yet",
            "the cancel is about to be sent; memesh sends it and retries it itself".to_owned(),
        ),
        Some(CancelState::Pending) => (
            "remote_recovery_not_exhausted",
            format!(
                "the cancel failed {} time(s) and may still succeed: POST …/retry-cancel, or wait for memesh to retry",
                r.cancel.attempts
            ),
        ),
        Some(CancelState::Sent) => (
            "cancel_in_flight",
            format!(
                "the agent accepted the cancel; memesh waits until {} for the task to stop",
                r.cancel
                    .deadline
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default()
            ),
        ),
        Some(CancelState::Exhausted) => (
            "cancel_exhausted",
            format!(
                "the cancel failed {} times and memesh stopped retrying; an OWNER or ADMIN resolves the run with POST …/resolve-remote",
                r.cancel.attempts
            ),
        ),
        Some(CancelState::Resolved) => ("run_finished", "an operator resolved the run".to_owned()),
    }
}

/// For each control action: whether it is allowed now, why not, and what to do.
pub fn control_view(run: &Run, parts: &RunParts<'_>) -> Value {
    let pending = parts
        .approvals
        .iter()
        .find(|a| a.state == ApprovalState::Pending);
    let terminal = run.state.is_terminal();
    let remote = parts.remote;
    let refused = |name: &str| {
        let (code, why) = remote_refusal(run, remote, name);
        action(false, vec![code], &why)
    };
    let accepted = remote.is_some_and(RemoteTaskRow::accepted);
    let cancel = match (run.state, remote) {
        (s, _) if s.is_terminal() => action(
            false,
            vec!["run_finished"],
            "the run has finished; nothing to cancel",
        ),
        (RunState::CancelRequested, Some(_)) => refused("cancel"),
        (RunState::CancelRequested, None) => action(
            false,
            vec!["cancel_already_requested"],
            "the worker is told through its heartbeat; wait for its acknowledgement",
        ),
        (_, Some(_)) if accepted => action(
            true,
            vec![],
            "POST /v1/orchestrator/runs/{id}/cancel sends an A2A cancel to the agent",
        ),
        (_, Some(_)) => action(
            true,
            vec![],
            "POST /v1/orchestrator/runs/{id}/cancel: the agent has not accepted the message, so memesh stops sending it",
        ),
        _ => action(true, vec![], "POST /v1/orchestrator/runs/{id}/cancel"),
    };
    let reconcile = match remote {
        Some(_) if !terminal => action(
            true,
            vec![],
            "POST /v1/orchestrator/runs/{id}/reconcile reads the remote task now",
        ),
        _ => refused("reconcile"),
    };
    let retry_cancel = match remote {
        Some(r) if !terminal && r.cancel_retryable() => action(
            true,
            vec![],
            "POST /v1/orchestrator/runs/{id}/retry-cancel sends the cancel again now",
        ),
        _ => refused("retry"),
    };
    let resolve_remote = match remote {
        Some(r) if !terminal && r.cancel.state == Some(CancelState::Exhausted) => action(
            true,
            vec![],
            "an OWNER or ADMIN: POST /v1/orchestrator/runs/{id}/resolve-remote {resolution: canceled|failed|succeeded, note}",
        ),
        _ => refused("resolve"),
    };
    json!({
        "targetKind": run.target_kind.as_str(),
        "state": run.state,
        "actions": {
            "cancel": cancel,
            "approve": match pending {
                Some(a) => action(true, vec![], &format!("an OWNER or ADMIN other than the requester decides approval {}", a.id)),
                None => action(false, vec!["no_pending_approval"], "nothing is waiting for approval"),
            },
            "reconcile": reconcile,
            "retryCancel": retry_cancel,
            "resolveRemote": resolve_remote,
        }
    })
}

/// The remote part of a run view.
pub fn remote_view(r: &RemoteTaskRow) -> Value {
    json!({
        "endpoint": r.endpoint,
        "protocol": r.protocol,
        "messageId": r.message_id,
        "taskId": r.task_id,
        "contextId": r.context_id,
        "remoteState": r.remote_state,
        "remoteStateRaw": r.remote_state_raw,
        "lastSeenAt": r.last_seen_at,
        "lastError": r.last_error,
        "consecutiveFailures": r.failures,
        "nextCheckAt": (!r.done).then_some(r.next_check_at),
        "followed": !r.done,
        "cancel": r.cancel.state.map(|state| json!({
            "state": state,
            "requestedAt": r.cancel.requested_at,
            "failedAttempts": r.cancel.attempts,
            "lastError": r.cancel.error,
            "deadline": r.cancel.deadline,
        })),
        "runtimeUpdatedAt": r.updated_at,
    })
}

/// What to do next about a remote run, in words.
fn remote_next(run: &Run, r: &RemoteTaskRow) -> Vec<String> {
    let error = |e: &Option<String>| {
        e.as_deref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    };
    match (run.state, r.cancel.state) {
        (s, _) if s.is_terminal() => vec![],
        (RunState::Dispatched, _) if !r.accepted() => vec![format!(
            "the message is being sent to the agent at {}{}; memesh retries it until the agent accepts it",
            r.endpoint,
            error(&r.last_error)
        )],
        (_, None) => vec![format!(
            "the agent works on task {}; memesh reads it every few seconds{} (POST …/reconcile reads it now)",
            r.task_id.as_deref().unwrap_or("?"),
            error(&r.last_error)
        )],
        (_, Some(CancelState::Pending)) if r.cancel.error.is_none() => {
            vec!["the cancel is being sent to the agent".into()]
        }
        (_, Some(CancelState::Pending)) => vec![format!(
            "the cancel failed {} time(s){}; memesh retries it at {}, or POST …/retry-cancel now",
            r.cancel.attempts,
            error(&r.cancel.error),
            r.next_check_at
        )],
        (_, Some(CancelState::Sent)) => vec![format!(
            "the agent accepted the cancel; memesh reads the task until it stops, and counts the cancel as failed if it has not by {}",
            r.cancel
                .deadline
                .map(|d| d.to_rfc3339())
                .unwrap_or_default()
        )],
        (_, Some(CancelState::Exhausted)) => vec![format!(
            "the cancel failed {} times{}; check the task on the agent, then an OWNER or ADMIN records what happened with POST …/resolve-remote {{resolution: canceled|failed|succeeded, note}}. memesh still reads the task: if it finishes first, that wins",
            r.cancel.attempts,
            error(&r.cancel.error)
        )],
        (_, Some(CancelState::Resolved)) => vec![],
    }
}

/// What hangs off a run when it is shown: its approvals, its newest execution, and whether its
/// target's policy holds that execution back now.
pub struct RunParts<'a> {
    pub approvals: &'a [Approval],
    pub execution: Option<&'a Execution>,
    pub queue_block: Option<&'a [String]>,
    /// The remote task of a run on a remote agent, once it was dispatched.
    pub remote: Option<&'a RemoteTaskRow>,
}

/// What an operator should do next, in words.
pub fn recommended_actions(run: &Run, parts: &RunParts<'_>) -> Vec<String> {
    if let Some(r) = parts.remote {
        return remote_next(run, r);
    }
    match run.state {
        RunState::AwaitingApproval => parts
            .approvals
            .iter()
            .filter(|a| a.state == ApprovalState::Pending)
            .map(|a| format!("approve or reject approval {} (not as the requester)", a.id))
            .collect(),
        RunState::Blocked => vec![format!(
            "the target blocks dispatch ({}); release its hold or resolve its incident, and the run is dispatched",
            run.block_reason.clone().unwrap_or_default()
        )],
        RunState::Dispatched => match parts.queue_block {
            Some(reasons) => vec![format!(
                "the target blocks dispatch ({}); the queued execution is claimed once that lifts",
                reasons.join(",")
            )],
            None => vec!["waiting for a worker of the target to claim the execution".into()],
        },
        RunState::Running => {
            vec!["a worker holds the execution; it reports through heartbeats".into()]
        }
        RunState::CancelRequested => {
            vec!["waiting for the worker to acknowledge the cancellation".into()]
        }
        RunState::Queued
        | RunState::Succeeded
        | RunState::Failed
        | RunState::Canceled
        | RunState::Rejected => vec![],
    }
}

/// How much of a run a view shows: lists leave out its input and result (they can be large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Full,
    Summary,
}

pub fn run_view(run: &Run, parts: &RunParts<'_>, detail: Detail) -> Value {
    let execution = parts.execution.map(|e| {
        let waiting = e.state == ExecutionState::Pending;
        let block = parts.queue_block.filter(|_| waiting);
        json!({
            "id": e.id, "state": e.state, "attempt": e.attempt, "workerId": e.worker_id,
            "leaseExpiresAt": e.lease_expires_at, "cancelRequested": e.cancel_requested,
            "blocked": block.is_some(), "blockReasons": block.unwrap_or_default(),
        })
    });
    let mut v = json!({
        "id": run.id,
        "targetId": run.target_id,
        "targetKind": run.target_kind.as_str(),
        "state": run.state,
        "blockReason": run.block_reason,
        "requestedBy": run.requested_by,
        "requiresApproval": run.requires_approval,
        "idempotencyKey": run.idempotency_key,
        "approvals": parts.approvals.iter().map(|a| json!({
            "id": a.id, "state": a.state, "createdAt": a.created_at, "decidedBy": a.decided_by,
            "decidedAt": a.decided_at, "note": a.note,
            "approvePath": format!("/v1/orchestrator/runs/{}/approvals/{}/approve", run.id, a.id),
            "rejectPath": format!("/v1/orchestrator/runs/{}/approvals/{}/reject", run.id, a.id),
        })).collect::<Vec<_>>(),
        "execution": execution,
        "remote": parts.remote.map(remote_view),
        "control": control_view(run, parts),
        "recommendedActions": recommended_actions(run, parts),
        "createdAt": run.created_at,
        "updatedAt": run.updated_at,
    });
    if detail == Detail::Full {
        v["input"] = run.input.clone();
        v["result"] = run.result.clone().unwrap_or(Value::Null);
    }
    v
}
