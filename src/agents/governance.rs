//! Governance mutations: every change to a target's runtime goes through [`apply`] (CAS check,
//! the change, policy recompute, a new token, audit); probe results are recorded by
//! [`record_probe`]. What a policy change does to runs is the caller's to say (`on_unblocked`):
//! this room knows targets, not runs.

use serde_json::{Value, json};

use crate::audit::{self, AuditEvent};
use crate::auth::{Permission, Write};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{TargetId, UserId};

use super::model::runtime_view;
use super::policy::{Handoff, Hold, Policy, ReviewAck, Runtime};
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

    /// Applies the change to the runtime's inputs (not yet the derived policy); returns the
    /// audit detail, or why the change does not apply to this runtime.
    fn apply_to(self, rt: &mut Runtime, who: Option<&UserId>, now: Timestamp) -> ApiResult<Value> {
        match self {
            Change::Hold {
                reason,
                release_after,
            } => hold(rt, reason, release_after, who, now),
            Change::Release { note } => {
                if rt.hold.take().is_none() {
                    return Err(ApiError::new(
                        Code::TargetNotHeld,
                        "the target is not on hold",
                    ));
                }
                Ok(json!({ "note": note }))
            }
            Change::Acknowledge { note, policy_epoch } => {
                acknowledge(rt, note, policy_epoch, who, now)
            }
            Change::OpenIncident { reason } => open_incident(rt, reason, who, now),
            Change::Handoff {
                external_incident_id,
                owner,
                note,
                incident_epoch,
            } => {
                let handoff = Handoff {
                    external_incident_id,
                    owner,
                    note,
                    at: now,
                    by: who.cloned(),
                };
                hand_off(rt, handoff, incident_epoch)
            }
            Change::CloseIncident { note } => {
                if !rt.incident.open {
                    return Err(no_open_incident("close"));
                }
                rt.incident.open = false;
                Ok(json!({ "note": note, "incidentEpoch": rt.incident.epoch }))
            }
            Change::RequireApproval(on) => {
                rt.require_approval = on;
                Ok(json!({ "requireApproval": on }))
            }
        }
    }
}

fn hold(
    rt: &mut Runtime,
    reason: String,
    release_after: Option<Timestamp>,
    who: Option<&UserId>,
    now: Timestamp,
) -> ApiResult<Value> {
    if rt.hold.is_some() {
        return Err(ApiError::new(
            Code::TargetAlreadyHeld,
            "the target is already on hold",
        ));
    }
    if release_after.is_some_and(|t| t <= now) {
        return Err(ApiError::field("releaseAfter", "must be in the future"));
    }
    let detail = json!({ "reason": reason, "releaseAfter": release_after });
    rt.hold = Some(Hold {
        reason,
        by: who.cloned(),
        since: now,
        release_after,
    });
    Ok(detail)
}

fn acknowledge(
    rt: &mut Runtime,
    note: Option<String>,
    policy_epoch: Option<i64>,
    who: Option<&UserId>,
    now: Timestamp,
) -> ApiResult<Value> {
    if policy_epoch.is_some_and(|e| e != rt.policy_epoch) {
        return Err(ApiError::new(
            Code::StalePolicyEpoch,
            "the policy has changed since that epoch; review the current one",
        )
        .with_details(json!({ "currentPolicyEpoch": rt.policy_epoch })));
    }
    if rt.policy_epoch == 0 {
        return Err(ApiError::new(
            Code::NothingToReview,
            "the policy has never changed: nothing to review",
        ));
    }
    if who.is_some() && rt.policy_changed_by.as_ref() == who {
        return Err(ApiError::new(
            Code::SelfReviewBlocked,
            "the person whose action changed the policy may not acknowledge its review",
        ));
    }
    let detail = json!({ "note": note, "policyEpoch": rt.policy_epoch });
    rt.review_ack = Some(ReviewAck {
        epoch: rt.policy_epoch,
        by: who.cloned(),
        at: now,
        note,
    });
    Ok(detail)
}

fn open_incident(
    rt: &mut Runtime,
    reason: String,
    who: Option<&UserId>,
    now: Timestamp,
) -> ApiResult<Value> {
    if rt.incident.open {
        return Err(ApiError::new(
            Code::IncidentAlreadyOpen,
            "an incident is already open",
        ));
    }
    rt.incident.open = true;
    rt.incident.epoch += 1;
    rt.incident.opened_at = Some(now);
    rt.incident.opened_by = who.cloned();
    rt.incident.reason = Some(reason.clone());
    rt.incident.handoff = None;
    Ok(json!({ "reason": reason, "incidentEpoch": rt.incident.epoch }))
}

fn hand_off(rt: &mut Runtime, handoff: Handoff, incident_epoch: Option<i64>) -> ApiResult<Value> {
    if incident_epoch.is_some_and(|e| e != rt.incident.epoch) {
        return Err(ApiError::new(
            Code::StaleIncidentEpoch,
            "a newer incident has opened since that epoch",
        )
        .with_details(json!({ "currentIncidentEpoch": rt.incident.epoch })));
    }
    if !rt.incident.open {
        return Err(no_open_incident("hand off"));
    }
    let detail = json!({ "externalIncidentId": handoff.external_incident_id,
                         "owner": handoff.owner, "incidentEpoch": rt.incident.epoch });
    rt.incident.handoff = Some(handoff);
    Ok(detail)
}

fn no_open_incident(verb: &str) -> ApiError {
    ApiError::new(
        Code::NoOpenIncident,
        format!("there is no open incident to {verb}"),
    )
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

/// Applies `change` to a target of the capability's tenant. With `expected`, the change is
/// refused (409) unless the stored token is that one; system changes pass `None`. When the
/// change lifts a block, `on_unblocked` moves the work that waited on it (it returns how much
/// moved), in the same transaction.
pub fn apply<P: Permission>(
    w: &Write<'_, P>,
    id: &TargetId,
    expected: Option<Timestamp>,
    change: Change,
    on_unblocked: impl FnOnce(&Write<'_, P>, &Runtime) -> ApiResult<usize>,
) -> ApiResult<Target> {
    let now = w.now();
    let mut target = store::load(w, w.tenant(), id)?;
    if expected.is_some_and(|e| e != target.runtime.updated_at) {
        return Err(stale(&target));
    }
    let before = target.runtime.clone();
    let action = change.action();
    let rt = &mut target.runtime;
    let mut detail = change.apply_to(rt, w.user(), now)?;
    rt.recompute(w.user(), now);
    rt.advance_token(now);
    store::save_runtime(w, id, before.updated_at, rt)?;
    if before.policy == Policy::Blocked && rt.policy != Policy::Blocked {
        detail["runsReleased"] = json!(on_unblocked(w, rt)?);
    }
    detail["policyBefore"] = json!({ "effective": before.policy, "epoch": before.policy_epoch });
    detail["policyAfter"] =
        json!({ "effective": rt.policy, "epoch": rt.policy_epoch, "reasons": rt.reasons });
    audit::append(
        w,
        &AuditEvent::success(action, "dispatch_target", id.as_str(), detail),
    )?;
    Ok(target)
}

/// The longest probe error kept (server-generated text, not a client's value).
const MAX_PROBE_ERROR: usize = 500;

/// Records one probe of a remote target; after `threshold` consecutive failures an incident is
/// opened (by the capability's actor, the system). Returns whether one was opened. A target
/// deleted meanwhile is skipped.
pub fn record_probe<P: Permission>(
    w: &Write<'_, P>,
    id: &TargetId,
    outcome: Result<(), String>,
    threshold: i64,
) -> ApiResult<bool> {
    let target = match store::load(w, w.tenant(), id) {
        Ok(t) => t,
        Err(e) if e.code == Code::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut rt = target.runtime.clone();
    rt.probe.last_at = Some(w.now());
    rt.probe.last_ok = Some(outcome.is_ok());
    match &outcome {
        Ok(()) => {
            rt.probe.consecutive_failures = 0;
            rt.probe.last_error = None;
        }
        Err(e) => {
            rt.probe.consecutive_failures += 1;
            rt.probe.last_error = Some(e.chars().take(MAX_PROBE_ERROR).collect());
        }
    }
    // Probe bookkeeping is not a governance change: it keeps the CAS token as it is.
    store::save_runtime(w, id, target.runtime.updated_at, &rt)?;
    if rt.probe.consecutive_failures < threshold || rt.incident.open {
        return Ok(false);
    }
    let reason = format!(
        "{} consecutive probe failures; last: {}",
        rt.probe.consecutive_failures,
        rt.probe.last_error.clone().unwrap_or_default()
    );
    // Opening an incident never lifts a block.
    apply(w, id, None, Change::OpenIncident { reason }, |_, _| Ok(0))?;
    Ok(true)
}
