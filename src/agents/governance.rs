//! Governance mutations and the background work behind them: every change to a target's
//! runtime goes through [`apply`] (CAS check, the change, policy recompute, a new token, audit);
//! the background task lifts expired holds and probes remote agents.

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, AuditEvent};
use crate::auth::Actor;
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{TargetId, TenantId};
use crate::state::AppState;

use super::card;
use super::model::runtime_view;
use super::policy::{Handoff, Hold, Policy, ReviewAck};
use super::store::{self, Target};

/// One governance change.
#[derive(Debug, Clone)]
pub enum Change {
    Hold {
        reason: String,
        release_after: Option<Timestamp>,
    },
    Release {
        note: Option<String>,
    },
    Acknowledge {
        note: Option<String>,
        policy_epoch: Option<i64>,
    },
    OpenIncident {
        reason: String,
    },
    Handoff {
        external_incident_id: String,
        owner: String,
        note: Option<String>,
        incident_epoch: Option<i64>,
    },
    CloseIncident {
        note: Option<String>,
    },
    RequireApproval(bool),
}

impl Change {
    fn action(&self) -> &'static str {
        match self {
            Change::Hold { .. } => "agents.target.hold",
            Change::Release { .. } => "agents.target.release",
            Change::Acknowledge { .. } => "agents.target.review.acknowledge",
            Change::OpenIncident { .. } => "agents.target.incident.open",
            Change::Handoff { .. } => "agents.target.incident.handoff",
            Change::CloseIncident { .. } => "agents.target.incident.close",
            Change::RequireApproval(_) => "agents.target.require_approval",
        }
    }
}

fn stale(target: &Target) -> ApiError {
    ApiError::new(
        Code::StaleRuntimeSnapshot,
        "the target's runtime changed since you read it; re-read it and retry",
    )
    .with_details(json!({
        "currentRuntimeUpdatedAt": target.runtime.updated_at,
        "runtime": runtime_view(&target.runtime),
    }))
}

/// Applies `change` to a target of `tenant` as `actor`. With `expected`, the change is refused
/// (409) unless the stored token is that one; system changes pass `None`.
pub fn apply(
    tx: &rusqlite::Transaction<'_>,
    actor: &Actor,
    id: &TargetId,
    expected: Option<Timestamp>,
    change: Change,
    now: Timestamp,
) -> ApiResult<Target> {
    let mut target = store::load(tx, &actor.tenant_id, id)?;
    if expected.is_some_and(|e| e != target.runtime.updated_at) {
        return Err(stale(&target));
    }
    let before = target.runtime.clone();
    let who = actor.user_id.as_ref().map(|u| u.as_str().to_owned());
    let rt = &mut target.runtime;
    let mut detail = json!({});
    match change.clone() {
        Change::Hold {
            reason,
            release_after,
        } => {
            if rt.hold.is_some() {
                return Err(ApiError::new(
                    Code::TargetAlreadyHeld,
                    "the target is already on hold",
                ));
            }
            if release_after.is_some_and(|t| t <= now) {
                return Err(ApiError::field("releaseAfter", "must be in the future"));
            }
            detail = json!({ "reason": reason, "releaseAfter": release_after });
            rt.hold = Some(Hold {
                reason,
                by: who.clone(),
                since: now,
                release_after,
            });
        }
        Change::Release { note } => {
            if rt.hold.take().is_none() {
                return Err(ApiError::new(
                    Code::TargetNotHeld,
                    "the target is not on hold",
                ));
            }
            detail = json!({ "note": note });
        }
        Change::Acknowledge { note, policy_epoch } => {
            if policy_epoch.is_some_and(|e| e != rt.policy_epoch) {
                return Err(ApiError::new(
                    Code::StalePolicyEpoch,
                    "the policy has changed since that epoch; review the current one",
                )
                .with_details(json!({ "currentPolicyEpoch": rt.policy_epoch })));
            }
            if rt.policy_epoch == 0 {
                return Err(ApiError::new(
                    Code::Conflict,
                    "the policy has never changed: nothing to review",
                ));
            }
            if who.is_some() && rt.policy_changed_by == who {
                return Err(ApiError::new(
                    Code::SelfReviewBlocked,
                    "the person whose action changed the policy may not acknowledge its review",
                ));
            }
            detail = json!({ "note": note, "policyEpoch": rt.policy_epoch });
            rt.review_ack = Some(ReviewAck {
                epoch: rt.policy_epoch,
                by: who.clone(),
                at: now,
                note,
            });
        }
        Change::OpenIncident { reason } => {
            if rt.incident.open {
                return Err(ApiError::new(
                    Code::IncidentAlreadyOpen,
                    "an incident is already open",
                ));
            }
            rt.incident.open = true;
            rt.incident.epoch += 1;
            rt.incident.opened_at = Some(now);
            rt.incident.opened_by = who.clone();
            rt.incident.reason = Some(reason.clone());
            rt.incident.handoff = None;
            detail = json!({ "reason": reason, "incidentEpoch": rt.incident.epoch });
        }
        Change::Handoff {
            external_incident_id,
            owner,
            note,
            incident_epoch,
        } => {
            if incident_epoch.is_some_and(|e| e != rt.incident.epoch) {
                return Err(ApiError::new(
                    Code::StaleIncidentEpoch,
                    "a newer incident has opened since that epoch",
                )
                .with_details(json!({ "currentIncidentEpoch": rt.incident.epoch })));
            }
            if !rt.incident.open {
                return Err(ApiError::new(
                    Code::NoOpenIncident,
                    "there is no open incident to hand off",
                ));
            }
            detail = json!({ "externalIncidentId": external_incident_id, "owner": owner,
                             "incidentEpoch": rt.incident.epoch });
            rt.incident.handoff = Some(Handoff {
                external_incident_id,
                owner,
                note,
                at: now,
                by: who.clone(),
            });
        }
        Change::CloseIncident { note } => {
            if !rt.incident.open {
                return Err(ApiError::new(
                    Code::NoOpenIncident,
                    "there is no open incident to close",
                ));
            }
            rt.incident.open = false;
            detail = json!({ "note": note, "incidentEpoch": rt.incident.epoch });
        }
        Change::RequireApproval(on) => {
            rt.require_approval = on;
            detail = json!({ "requireApproval": on });
        }
    }
    rt.recompute(who.as_deref(), now);
    rt.advance_token(now);
    store::save_runtime(tx, id, before.updated_at, rt)?;
    if before.policy == Policy::Blocked && rt.policy != Policy::Blocked {
        let moved = crate::orchestrator::store::release_blocked(
            tx,
            actor,
            id,
            rt.policy,
            &rt.reasons,
            now,
        )?;
        detail["runsReleased"] = json!(moved);
    }
    detail["policyBefore"] = json!({ "effective": before.policy, "epoch": before.policy_epoch });
    detail["policyAfter"] =
        json!({ "effective": rt.policy, "epoch": rt.policy_epoch, "reasons": rt.reasons });
    audit::append(
        tx,
        actor,
        &AuditEvent::success(change.action(), "dispatch_target", id.as_str(), detail),
        now,
    )?;
    Ok(target)
}

/// Lifts every hold whose `releaseAfter` has passed, as the system. Returns how many.
pub async fn release_expired(state: &AppState) -> ApiResult<usize> {
    let now = state.clock.now();
    let due = state.db.read(move |c| store::expired_holds(c, now)).await?;
    let mut released = 0;
    for (tenant, id) in due {
        let result = state
            .db
            .write(move |tx| {
                // Re-checked under the write lock: a manual release may have come first.
                let target = store::load(tx, &tenant, &id)?;
                let due = target
                    .runtime
                    .hold
                    .as_ref()
                    .and_then(|h| h.release_after)
                    .is_some_and(|t| t <= now);
                if !due {
                    return Ok(false);
                }
                let note = Some("releaseAfter reached".to_owned());
                apply(
                    tx,
                    &Actor::system(tenant),
                    &id,
                    None,
                    Change::Release { note },
                    now,
                )?;
                Ok(true)
            })
            .await;
        match result {
            Ok(true) => released += 1,
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "automatic hold release failed"),
        }
    }
    Ok(released)
}

/// Probes every remote target once (fetches its Agent Card) and records the result; after
/// `threshold` consecutive failures an incident is opened by the system. Returns the number of
/// incidents opened.
pub async fn probe_remote_targets(state: &AppState) -> ApiResult<usize> {
    let targets = state.db.read(store::probe_targets).await?;
    let mut opened = 0;
    for (tenant, id, url) in targets {
        let outcome = match card::fetch(&state.http, &url).await {
            Ok(card) => card::validate(&card).map(|_| ()).map_err(|e| e.message),
            Err(e) => Err(format!("{e:#}")),
        };
        let threshold = i64::from(state.settings.probe_failure_threshold);
        let now = state.clock.now();
        let result = state
            .db
            .write(move |tx| record_probe(tx, &tenant, &id, outcome, threshold, now))
            .await;
        match result {
            Ok(true) => opened += 1,
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "recording a probe failed"),
        }
    }
    Ok(opened)
}

fn record_probe(
    tx: &rusqlite::Transaction<'_>,
    tenant: &TenantId,
    id: &TargetId,
    outcome: Result<(), String>,
    threshold: i64,
    now: Timestamp,
) -> ApiResult<bool> {
    let target = match store::load(tx, tenant, id) {
        Ok(t) => t,
        Err(e) if e.code == Code::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut rt = target.runtime.clone();
    rt.probe.last_at = Some(now);
    rt.probe.last_ok = Some(outcome.is_ok());
    match &outcome {
        Ok(()) => {
            rt.probe.consecutive_failures = 0;
            rt.probe.last_error = None;
        }
        Err(e) => {
            rt.probe.consecutive_failures += 1;
            rt.probe.last_error = Some(e.chars().take(500).collect());
        }
    }
    // Probe bookkeeping is not a governance change: it keeps the CAS token as it is.
    store::save_runtime(tx, id, target.runtime.updated_at, &rt)?;
    if rt.probe.consecutive_failures >= threshold && !rt.incident.open {
        let reason = format!(
            "{} consecutive probe failures; last: {}",
            rt.probe.consecutive_failures,
            rt.probe.last_error.clone().unwrap_or_default()
        );
        apply(
            tx,
            &Actor::system(tenant.clone()),
            id,
            None,
            Change::OpenIncident { reason },
            now,
        )?;
        return Ok(true);
    }
    Ok(false)
}

/// Runs hold expiry and lease recovery every `sweep_interval` (a second), and probes every
/// `probe_interval`, until `cancel` fires.
pub async fn run_background(state: AppState, cancel: CancellationToken) {
    let mut holds = tokio::time::interval(state.settings.sweep_interval);
    let mut probes = tokio::time::interval(state.settings.probe_interval);
    holds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = holds.tick() => {
                if let Err(e) = release_expired(&state).await {
                    tracing::error!(error = %e, "hold expiry pass failed");
                }
                if let Err(e) = crate::executions::handlers::recover_leases(&state).await {
                    tracing::error!(error = %e, "lease recovery pass failed");
                }
            }
            _ = probes.tick() => {
                if let Err(e) = probe_remote_targets(&state).await {
                    tracing::error!(error = %e, "probe pass failed");
                }
            }
        }
    }
}
