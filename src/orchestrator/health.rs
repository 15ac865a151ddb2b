//! `GET /v1/orchestrator/runtime-health`: one read of what needs doing, for an operator or a
//! dashboard. Local compatibility (is a worker serving each local target's queue?), remote
//! escalation (are remote agents reachable?), target governance (holds, reviews, incidents),
//! the attention backlog (approvals, blocked runs) and the background jobs, with an overall
//! status and the reasons for it:
//! - `degraded`: work is not moving: a local target has queued work and no live worker, a
//!   remote target fails its probes past the threshold, a remote run's agent does not answer, a
//!   remote cancel keeps failing, or a background job is failing or late;
//! - `attention`: work waits on people: approvals, open incidents, pending reviews, runs blocked
//!   by governance, remote runs whose cancel attempts are spent (an operator resolves them);
//! - `ok`: neither.
//!
//! Composition at the edge: it reads the agents, keys and orchestrator stores and the job board.

use axum::extract::State;
use serde_json::{Value, json};

use crate::agents::model::TargetKind;
use crate::agents::store::{self as targets, Target};
use crate::auth::Grant;
use crate::auth::perm::RunsRead;
use crate::clock::Timestamp;
use crate::error::ApiResult;
use crate::jobs::JobStatus;
use crate::keys::store as keys;
use crate::state::AppState;

use super::store;

/// Targets the summary reads at most (a tenant with more is summarised over these).
const MAX_TARGETS: u32 = 10_000;

/// An agent key used within this long counts as a live worker: keys record their use at most
/// once a minute ([`crate::auth::TOUCH_INTERVAL_MS`]), so twice that.
const WORKER_SEEN_MS: i64 = 2 * crate::auth::TOUCH_INTERVAL_MS;

/// A job whose last success is older than this many intervals (plus a grace) is late.
const LATE_INTERVALS: u64 = 3;
const LATE_GRACE_MS: u64 = 5_000;

/// One reason for the status.
fn reason(code: &str, message: String, target: Option<&Target>) -> Value {
    let mut v = json!({ "code": code, "message": message });
    if let Some(t) = target {
        v["targetId"] = json!(t.id);
        v["targetName"] = json!(t.name);
    }
    v
}

pub async fn runtime_health(
    grant: Grant<RunsRead>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let tenant = grant.tenant().clone();
    let now = grant.now();
    let (all, queues, key_use, (approvals, oldest_approval, blocked_runs), tally) = state
        .db
        .read(move |c| {
            Ok((
                targets::all(c, &tenant, MAX_TARGETS)?,
                store::queue_health(c, &tenant, now)?,
                keys::bound_last_used(c, &tenant, now)?,
                store::attention(c, &tenant)?,
                store::remote_tally(c, &tenant)?,
            ))
        })
        .await?;
    let threshold = i64::from(state.settings.probe_failure_threshold);
    let mut degraded = Vec::new();
    let mut attention = Vec::new();

    let mut local = Vec::new();
    let mut stalled = 0;
    let mut remote = 0;
    let mut unreachable = Vec::new();
    let (mut held, mut review, mut incidents) = (Vec::new(), Vec::new(), Vec::new());
    for t in &all {
        let rt = &t.runtime;
        match t.kind {
            TargetKind::LocalAgent => {
                let q = queues.get(&t.id).cloned().unwrap_or_default();
                let key_seen = key_use.get(&t.id).copied().flatten();
                let live = q.leasing_workers > 0
                    || key_seen.is_some_and(|at| at.plus_ms(WORKER_SEEN_MS) > now);
                if q.pending > 0 && !live {
                    stalled += 1;
                    degraded.push(reason(
                        "queued_work_without_worker",
                        format!(
                            "{} executions wait on local target {} and no worker has polled or held a lease recently; start a worker with an agent key of this target",
                            q.pending, t.name
                        ),
                        Some(t),
                    ));
                }
                local.push(json!({
                    "targetId": t.id,
                    "name": t.name,
                    "pendingExecutions": q.pending,
                    "claimedExecutions": q.claimed,
                    "workersHoldingLeases": q.leasing_workers,
                    "agentKeyLastUsedAt": key_seen,
                    "workerLive": live,
                }));
            }
            TargetKind::RemoteA2a => {
                remote += 1;
                let failures = rt.probe.consecutive_failures;
                if failures >= threshold {
                    degraded.push(reason(
                        "remote_agent_unreachable",
                        format!(
                            "remote target {} failed its last {failures} probes; check the agent or hold the target",
                            t.name
                        ),
                        Some(t),
                    ));
                }
                if failures > 0 {
                    unreachable.push(json!({
                        "targetId": t.id,
                        "name": t.name,
                        "consecutiveFailures": failures,
                        "pastThreshold": failures >= threshold,
                        "lastProbeAt": rt.probe.last_at,
                        "lastProbeError": rt.probe.last_error,
                    }));
                }
            }
        }
        if let Some(h) = &rt.hold {
            held.push(json!({
                "targetId": t.id, "name": t.name, "reason": h.reason,
                "since": h.since, "releaseAfter": h.release_after,
            }));
        }
        if rt.review_state() == "PENDING" {
            attention.push(reason(
                "review_pending",
                format!(
                    "target {}'s policy changed (epoch {}) and waits for a review",
                    t.name, rt.policy_epoch
                ),
                Some(t),
            ));
            review
                .push(json!({ "targetId": t.id, "name": t.name, "policyEpoch": rt.policy_epoch }));
        }
        if rt.incident.open {
            let handed_off = rt.incident.handoff.is_some();
            attention.push(reason(
                "incident_open",
                format!(
                    "target {} has an open incident{}",
                    t.name,
                    if handed_off {
                        " (handed off; close it when resolved)"
                    } else {
                        "; hand it off or close it"
                    }
                ),
                Some(t),
            ));
            incidents.push(json!({
                "targetId": t.id, "name": t.name, "reason": rt.incident.reason,
                "openedAt": rt.incident.opened_at, "handedOff": handed_off,
            }));
        }
    }
    if tally.unreachable > 0 {
        degraded.push(reason(
            "remote_runs_unreachable",
            format!(
                "{} remote runs' agents did not answer the last look; memesh keeps trying with backoff",
                tally.unreachable
            ),
            None,
        ));
    }
    if tally.cancels_failing > 0 {
        degraded.push(reason(
            "remote_cancels_failing",
            format!(
                "{} cancels of remote tasks failed and are being retried (POST …/retry-cancel retries one now)",
                tally.cancels_failing
            ),
            None,
        ));
    }
    if tally.cancels_exhausted > 0 {
        attention.push(reason(
            "runs_need_operator",
            format!(
                "{} remote runs could not be canceled and need an OWNER or ADMIN to resolve them (POST …/resolve-remote)",
                tally.cancels_exhausted
            ),
            None,
        ));
    }
    if approvals > 0 {
        attention.push(reason(
            "approvals_waiting",
            format!("{approvals} approvals wait for an OWNER or ADMIN"),
            None,
        ));
    }
    if blocked_runs > 0 {
        attention.push(reason(
            "runs_blocked",
            format!("{blocked_runs} runs are blocked by their target's governance (a hold or an incident)"),
            None,
        ));
    }

    let jobs = state.jobs.snapshot();
    let mut job_view = serde_json::Map::new();
    for (name, status) in &jobs {
        let late = is_late(status, now);
        if late {
            degraded.push(reason(
                "background_job_late",
                format!(
                    "the {name} job has not completed a pass in {LATE_INTERVALS} intervals{}",
                    status
                        .last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ),
                None,
            ));
        }
        let mut v = json!(status);
        v["late"] = json!(late);
        job_view.insert((*name).to_owned(), v);
    }

    let status = if !degraded.is_empty() {
        "degraded"
    } else if !attention.is_empty() {
        "attention"
    } else {
        "ok"
    };
    let reasons: Vec<Value> = degraded.into_iter().chain(attention).collect();
    Ok(axum::Json(json!({
        "status": status,
        "reasons": reasons,
        "checkedAt": now,
        "localCompatibility": {
            "targets": local,
            "targetsWithQueuedWorkAndNoLiveWorker": stalled,
        },
        "remoteEscalation": {
            "remoteTargets": remote,
            "failingTargets": unreachable,
            "unreachableRuns": tally.unreachable,
            "cancelsPending": tally.cancels_pending,
            "cancelsFailing": tally.cancels_failing,
            "cancelsExhausted": tally.cancels_exhausted,
            "runsNeedingOperator": tally.cancels_exhausted,
        },
        "targetGovernance": {
            "held": held,
            "underReview": review,
            "openIncidents": incidents,
        },
        "attentionBacklog": {
            "approvalsWaiting": approvals,
            "oldestApprovalSince": oldest_approval,
            "blockedRuns": blocked_runs,
            "runsNeedingOperator": tally.cancels_exhausted,
        },
        "jobs": job_view,
    })))
}

/// Failing (an error after the last success) or without a success for [`LATE_INTERVALS`]
/// intervals. A job that has not finished its first pass yet is neither.
fn is_late(job: &JobStatus, now: Timestamp) -> bool {
    let failing = match (job.last_error_at, job.last_success_at) {
        (Some(err), Some(ok)) => err > ok,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let overdue = job.last_success_at.is_some_and(|ok| {
        let limit = (job.every_ms * LATE_INTERVALS + LATE_GRACE_MS) as i64;
        ok.plus_ms(limit) < now
    });
    failing || overdue
}
