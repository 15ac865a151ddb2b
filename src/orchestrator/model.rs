//! Run request bodies, states and views.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::Timestamp;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Queued,
    AwaitingApproval,
    Blocked,
    Dispatched,
    Running,
    CancelRequested,
    Succeeded,
    Failed,
    Canceled,
    Rejected,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::AwaitingApproval => "awaiting_approval",
            RunState::Blocked => "blocked",
            RunState::Dispatched => "dispatched",
            RunState::Running => "running",
            RunState::CancelRequested => "cancel_requested",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
            RunState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        [
            RunState::Queued,
            RunState::AwaitingApproval,
            RunState::Blocked,
            RunState::Dispatched,
            RunState::Running,
            RunState::CancelRequested,
            RunState::Succeeded,
            RunState::Failed,
            RunState::Canceled,
            RunState::Rejected,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Canceled | RunState::Rejected
        )
    }
}

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

/// A run as stored, with what hangs off it.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub target_id: String,
    pub target_kind: String,
    pub requested_by: String,
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
    pub id: String,
    pub state: String,
    pub created_at: Timestamp,
    pub decided_by: Option<String>,
    pub decided_at: Option<Timestamp>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExecutionSummary {
    pub id: String,
    pub state: String,
    pub attempt: i64,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub cancel_requested: bool,
}

fn action(allowed: bool, reasons: Vec<&str>, guidance: &str) -> Value {
    json!({ "allowed": allowed, "blockReasons": reasons, "guidance": guidance })
}

/// For each control action: whether it is allowed now, why not, and what to do.
pub fn control_view(run: &Run, approvals: &[Approval]) -> Value {
    let pending = approvals.iter().find(|a| a.state == "pending");
    let terminal = run.state.is_terminal();
    let remote_only =
        "only runs on REMOTE_A2A targets have remote state; this run is on a LOCAL_AGENT";
    json!({
        "targetKind": run.target_kind,
        "state": run.state.as_str(),
        "actions": {
            "cancel": if terminal {
                action(false, vec!["run_finished"], "the run has finished; nothing to cancel")
            } else if run.state == RunState::CancelRequested {
                action(false, vec!["cancel_already_requested"], "the worker is told through its heartbeat; wait for its acknowledgement")
            } else {
                action(true, vec![], "POST /v1/orchestrator/runs/{id}/cancel")
            },
            "approve": match pending {
                Some(a) => action(true, vec![], &format!("an OWNER or ADMIN other than the requester decides approval {}", a.id)),
                None => action(false, vec!["no_pending_approval"], "nothing is waiting for approval"),
            },
            "reconcile": action(false, vec!["local_run"], remote_only),
            "retryCancel": action(false, vec!["local_run"], remote_only),
            "resolveRemote": action(false, vec!["local_run"], remote_only),
        }
    })
}

/// What an operator should do next, in words.
pub fn recommended_actions(run: &Run, approvals: &[Approval]) -> Vec<String> {
    match run.state {
        RunState::AwaitingApproval => approvals
            .iter()
            .filter(|a| a.state == "pending")
            .map(|a| format!("approve or reject approval {} (not as the requester)", a.id))
            .collect(),
        RunState::Blocked => vec![format!(
            "the target blocks dispatch ({}); release its hold or resolve its incident, and the run is dispatched",
            run.block_reason.clone().unwrap_or_default()
        )],
        RunState::Dispatched => {
            vec!["waiting for a worker of the target to claim the execution".into()]
        }
        RunState::Running => {
            vec!["a worker holds the execution; it reports through heartbeats".into()]
        }
        RunState::CancelRequested => {
            vec!["waiting for the worker to acknowledge the cancellation".into()]
        }
        _ => vec![],
    }
}

pub fn run_view(run: &Run, approvals: &[Approval], execution: Option<&ExecutionSummary>) -> Value {
    json!({
        "id": run.id,
        "targetId": run.target_id,
        "targetKind": run.target_kind,
        "state": run.state.as_str(),
        "blockReason": run.block_reason,
        "requestedBy": run.requested_by,
        "requiresApproval": run.requires_approval,
        "idempotencyKey": run.idempotency_key,
        "input": run.input,
        "result": run.result,
        "approvals": approvals.iter().map(|a| json!({
            "id": a.id, "state": a.state, "createdAt": a.created_at, "decidedBy": a.decided_by,
            "decidedAt": a.decided_at, "note": a.note,
            "approvePath": format!("/v1/orchestrator/runs/{}/approvals/{}/approve", run.id, a.id),
            "rejectPath": format!("/v1/orchestrator/runs/{}/approvals/{}/reject", run.id, a.id),
        })).collect::<Vec<_>>(),
        "execution": execution.map(|e| json!({
            "id": e.id, "state": e.state, "attempt": e.attempt, "workerId": e.worker_id,
            "leaseExpiresAt": e.lease_expires_at, "cancelRequested": e.cancel_requested,
        })),
        "control": control_view(run, approvals),
        "recommendedActions": recommended_actions(run, approvals),
        "createdAt": run.created_at,
        "updatedAt": run.updated_at,
    })
}
