//! Runs on remote A2A agents: one look at a run's remote task (sent if it was not yet, read
//! otherwise), made outside any transaction; what it saw is applied by
//! [`super::lifecycle::apply_remote`] in the caller's mutation.

use std::time::Duration;

use serde_json::Value;

use crate::agents::a2a::{A2aClient, Protocol};
use crate::error::ApiResult;
use crate::ids::{RunId, TenantId};
use crate::state::AppState;

use super::lifecycle::RemoteOutcome;
use super::model::Run;
use super::store::{self, RemoteTaskRow};

/// How long one call to an agent may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// Sends the task if it was never accepted, else reads it.
pub async fn look(state: &AppState, row: &RemoteTaskRow, input: &Value) -> RemoteOutcome {
    // Stored as `Protocol::as_str` wrote it, which `Protocol::of` reads back.
    let protocol = Protocol::of(Some(&row.protocol));
    let client = A2aClient {
        outbound: &state.outbound,
        endpoint: &row.endpoint,
        protocol,
        deadline: DEADLINE,
    };
    let seen = match &row.task_id {
        None => client.send(&row.message_id, input).await,
        Some(id) => client.get(id).await,
    };
    match seen {
        Ok(task) => RemoteOutcome::Seen(task),
        Err(e) => RemoteOutcome::Failed {
            transient: e.is_transient(),
            error: e.to_string(),
        },
    }
}

/// Loads a remote run and looks at its task: `None` when the run has no remote task.
pub async fn fetch(
    state: &AppState,
    tenant: &TenantId,
    id: &RunId,
) -> ApiResult<Option<RemoteOutcome>> {
    let (run, row) = load(state, tenant, id).await?;
    Ok(match row {
        Some(row) => Some(look(state, &row, &run.input).await),
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

/// How often unfinished remote tasks are looked at, in ms.
pub fn every_ms(state: &AppState) -> i64 {
    i64::try_from(state.settings.remote_refresh_interval.as_millis()).unwrap_or(i64::MAX)
}
