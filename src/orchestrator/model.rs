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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRun {
    pub target_id: String,
    pub input: Value,
    pub requires_approval: Option<bool>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecideBody {
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    pub target_id: Option<String>,
    pub state: Option<String>,
    pub target_kind: Option<String>,
    pub limit: Option<String>,
    pub offset: Option<String>,
}

#[derive(Debug, Deserialize)]
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

fn action(allowed: bool, reasons: Vec<&str>, guidance: &str) -> Value {
    json!({ "allowed": allowed, "blockReasons": reasons, "guidance": guidance })
}

/// For each control action: whether it is allowed now, why not, and what to do.
pub fn control_view(run: &Run, approvals: &[Approval]) -> Value {
    let pending = approvals.iter().find(|a| a.state == ApprovalState::Pending);
    let terminal = run.state.is_terminal();
    let remote_only =
        "only runs on REMOTE_A2A targets have remote state; this run is on a LOCAL_AGENT";
    let remote = run.target_kind == TargetKind::RemoteA2a;
    // A remote run has been sent once it is dispatched (or further along).
    let sent = remote
        && matches!(
            run.state,
            RunState::Dispatched | RunState::Running | RunState::CancelRequested
        );
    let no_remote_cancel = "this version of memesh cannot cancel a task on a remote A2A agent; POST /v1/orchestrator/runs/{id}/reconcile shows where it stands";
    let (reconcile, retry_cancel, resolve_remote) = if !remote {
        (
            action(false, vec!["local_run"], remote_only),
            action(false, vec!["local_run"], remote_only),
            action(false, vec!["local_run"], remote_only),
        )
    } else {
        (
            if terminal {
                action(
                    false,
                    vec!["run_finished"],
                    "the run has finished; reconcile reports nothing to do",
                )
            } else if sent {
                action(
                    true,
                    vec![],
                    "POST /v1/orchestrator/runs/{id}/reconcile reads the remote task now",
                )
            } else {
                action(
                    false,
                    vec!["not_sent"],
                    "the run has not been sent to the agent yet",
                )
            },
            action(false, vec!["remote_cancel_unavailable"], no_remote_cancel),
            action(false, vec!["remote_cancel_unavailable"], no_remote_cancel),
        )
    };
    json!({
        "targetKind": run.target_kind.as_str(),
        "state": run.state,
        "actions": {
            "cancel": if terminal {
                action(false, vec!["run_finished"], "the run has finished; nothing to cancel")
            } else if sent {
                action(false, vec!["remote_cancel_unavailable"], no_remote_cancel)
            } else if run.state == RunState::CancelRequested {
                action(false, vec!["cancel_already_requested"], "the worker is told through its heartbeat; wait for its acknowledgement")
            } else {
                action(true, vec![], "POST /v1/orchestrator/runs/{id}/cancel")
            },
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

/// What hangs off a run when it is shown: its approvals, its newest execution, and whether its
/// target's policy holds that execution back now.
pub struct RunParts<'a> {
    pub approvals: &'a [Approval],
    pub execution: Option<&'a Execution>,
    pub queue_block: Option<&'a [String]>,
}

/// What an operator should do next, in words.
pub fn recommended_actions(run: &Run, parts: &RunParts<'_>) -> Vec<String> {
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
        "control": control_view(run, parts.approvals),
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
