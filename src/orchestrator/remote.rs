//! Runs on remote A2A agents: one look at a run's remote task (sent if it was not yet, its
//! cancel sent if one is pending, read otherwise), made outside any transaction; what it saw is applied by
//! [`super::lifecycle::apply_remote`] in the caller's mutation.

use std::time::Duration;

use serde_json::Value;

use crate::agents::a2a::{A2aClient, A2aError, Protocol};
use crate::error::ApiResult;
use crate::ids::{RunId, TenantId};
use crate::state::AppState;

use super::lifecycle::{Call, RemoteOutcome, RemoteRules, Seen};
use super::model::{CancelState, RemoteTaskRow, Run};
use super::store;

/// How long one call to an agent may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// JSON-RPC error an agent answers a cancel of a task that can no longer be canceled with
/// (`TaskNotCancelableError`, the same code in A2A 1.0 and 0.3).
const TASK_NOT_CANCELABLE: i64 = -32002;

/// What a look may do besides reading the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Whatever is due: the message if never accepted, a pending cancel, else a read.
    Due,
    /// Read only (reconcile): the message if never accepted, never a cancel.
    Read,
}

/// Sends the message if the agent never accepted it, sends the cancel if one is pending (and
/// `look` is [`Look::Due`]), else reads the task. An agent that says the task can no longer be
/// canceled is asked where the task stands instead.
pub async fn look(
    state: &AppState,
    row: &RemoteTaskRow,
    input: &Value,
    look: Look,
) -> RemoteOutcome {
    // Stored as `Protocol::as_str` wrote it, which `Protocol::of` reads back.
    let protocol = Protocol::of(Some(&row.protocol));
    let client = A2aClient {
        outbound: &state.outbound,
        endpoint: &row.endpoint,
        protocol,
        deadline: DEADLINE,
    };
    let (call, seen) = match (&row.task_id, row.cancel.state) {
        (None, _) => (Call::Send, client.send(&row.message_id, input).await),
        (Some(id), Some(CancelState::Pending)) if look == Look::Due => {
            match client.cancel(id).await {
                Err(A2aError::Rpc { code, .. }) if code == TASK_NOT_CANCELABLE => {
                    (Call::Get, client.get(id).await)
                }
                seen => (Call::Cancel, seen),
            }
        }
        (Some(id), _) => (Call::Get, client.get(id).await),
    };
    let seen = match seen {
        Ok(task) => Seen::Task(task),
        Err(e) => Seen::Failed {
            transient: e.is_transient(),
            error: e.to_string(),
        },
    };
    RemoteOutcome { call, seen }
}

/// Loads a remote run and looks at its task: `None` when the run has no remote task.
pub async fn fetch(
    state: &AppState,
    tenant: &TenantId,
    id: &RunId,
    kind: Look,
) -> ApiResult<Option<RemoteOutcome>> {
    let (run, row) = load(state, tenant, id).await?;
    Ok(match row {
        Some(row) => Some(look(state, &row, &run.input, kind).await),
        None => None,
    })
}

/// The run and its remote task, if it is a remote run.
pub async fn load(
    state: &AppState,
    tenant: &TenantId,
    id: &RunId,
) -> ApiResult<(Run, Option<RemoteTaskRow>)> {
    let (tenant, id) = (tenant.clone(), id.clone());
    state
        .db
        .read(move |c| {
            Ok((
                store::load_run(c, &tenant, &id)?,
                store::load_remote(c, &id)?,
            ))
        })
        .await
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How remote tasks are followed, from the settings.
pub fn rules(state: &AppState) -> RemoteRules {
    let s = &state.settings;
    RemoteRules {
        every_ms: ms(s.remote_refresh_interval),
        cancel_attempts: i64::from(s.remote_cancel_attempts),
        cancel_timeout_ms: ms(s.remote_cancel_timeout),
        max_result_bytes: s.max_result_bytes,
    }
}
