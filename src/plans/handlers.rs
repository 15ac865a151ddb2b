//! `GET /v1/billing/plan` and `GET /v1/usage/summary`: the caller's plan, and what they and
//! their workspace use of it, exactly as the counters kept in each write transaction hold it.

use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::Grant;
use crate::auth::perm::Holder;
use crate::error::ApiResult;
use crate::state::AppState;

use super::Limits;

fn limits_view(l: &Limits) -> Value {
    json!({
        "memoriesPerUser": l.memories_per_user,
        "bytesPerTenant": l.bytes_per_tenant,
        "apiKeysPerUser": l.keys_per_user,
        "agentsPerTenant": l.targets_per_tenant,
        "seats": l.seats,
        "runsWaiting": l.runs_waiting,
        "requestsPerSecond": l.requests_per_second.filter(|r| *r > 0),
        "burst": l.burst.filter(|_| l.requests_per_second.is_some_and(|r| r > 0)),
        "expensivePerSecond": l.expensive_per_second.filter(|r| *r > 0),
        "expensiveBurst": l.expensive_burst.filter(|_| l.expensive_per_second.is_some_and(|r| r > 0)),
    })
}

/// The caller's plan: its name, its limits (`null`: unlimited) and its period.
pub async fn plan(grant: Grant<Holder>, State(state): State<AppState>) -> axum::Json<Value> {
    let (name, limits) = state.plans.plan_of(grant.tenant());
    axum::Json(json!({
        "name": name,
        "limits": limits_view(&limits),
        "expensiveCalls": ["POST /v1/memory/batch/search", "POST /v1/memory/import",
                           "GET /v1/memory/stream/export"],
        // Self-hosted plans do not renew: quotas are standing limits, request rates are per
        // second.
        "period": { "kind": "none", "quotas": "standing", "requestRates": "per second" },
    }))
}

/// For each limited resource, used and limit; and the calling key's request budget.
pub async fn usage(
    grant: Grant<Holder>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let (name, limits) = state.plans.plan_of(grant.tenant());
    let (tenant, user, now) = (grant.tenant().clone(), grant.user().clone(), grant.now());
    let l = limits.clone();
    let usage = state
        .db
        .read(move |c| super::store::usage(c, &tenant, &user, &l, now))
        .await?;
    Ok(axum::Json(json!({
        "plan": name,
        "usage": usage,
        "rateLimit": grant.rate(),
        "embeddingModel": state.memory.model_id(),
    })))
}
