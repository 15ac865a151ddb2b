//! `/v1/agents/dispatch-targets` handlers. Reading is open to every member; registering,
//! changing and governing targets takes OWNER or ADMIN (see the route table).

use axum::extract::State;
use axum::http::StatusCode;
use rusqlite::Connection;
use serde_json::{Value, json};

use crate::audit::model::AuditFilter;
use crate::audit::{self, AuditEvent};
use crate::auth::Grant;
use crate::auth::perm::{AgentsRead, AgentsWrite};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{Ids, Json, Query};
use crate::ids::{TargetId, TenantId};
use crate::keys::store as keys;
use crate::orchestrator::lifecycle;
use crate::orchestrator::model::{Run, RunState};
use crate::orchestrator::store as runs;
use crate::state::AppState;

use super::card::{self, CardFacts};
use super::governance::Change;
use super::model::{
    AcknowledgeBody, CreateTarget, HandoffBody, HoldBody, ListParams, NewTarget, NoteBody,
    OpenIncidentBody, TargetKind, UpdateTarget, optional_text, required_text, target_view,
    validate_name,
};
use super::store::{self, Target};

/// The card of a remote target: given inline, or fetched from `cardUrl` (exactly one of them).
async fn resolve_card(
    state: &AppState,
    card: Option<Value>,
    card_url: Option<String>,
) -> ApiResult<(Value, CardFacts, Option<String>)> {
    match (card, card_url) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "agentCard",
            "give agentCard or cardUrl, not both",
        )),
        (Some(card), None) => {
            let facts = card::validate(&card)?;
            Ok((card, facts, None))
        }
        (None, Some(url)) => {
            let (card, facts) = card::fetch_valid(&state.outbound, url.trim()).await?;
            Ok((card, facts, Some(url.trim().to_owned())))
        }
        (None, None) => Err(ApiError::field(
            "agentCard",
            "a REMOTE_A2A target needs agentCard or cardUrl",
        )),
    }
}

/// One target as clients read it, with its live agent keys counted.
fn full_view(conn: &Connection, target: &Target) -> ApiResult<Value> {
    let counts = keys::bound_counts(conn, &target.tenant_id)?;
    let agent_keys = counts.get(&target.id).copied().unwrap_or(0);
    Ok(target_view(target, agent_keys, true))
}

pub async fn create(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Json(body): Json<CreateTarget>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let name = validate_name(&body.name)?;
    let description = optional_text("description", body.description)?;
    let (card, facts, card_url) = match body.kind {
        TargetKind::RemoteA2a => {
            let (card, facts, url) = resolve_card(&state, body.agent_card, body.card_url).await?;
            (Some(card), Some(facts), url)
        }
        TargetKind::LocalAgent => {
            if body.agent_card.is_some() || body.card_url.is_some() {
                return Err(ApiError::field(
                    "agentCard",
                    "only REMOTE_A2A targets have an Agent Card",
                ));
            }
            (None, None, None)
        }
    };
    let new = NewTarget {
        name,
        description,
        kind: body.kind,
        card,
        card_url,
        facts,
        require_approval: body.require_approval.unwrap_or(false),
    };
    let view = grant
        .write(&state.db, move |w| {
            let target = store::insert(w, &new)?;
            audit::append(
                w,
                &AuditEvent::success(
                    "agents.target.create",
                    "dispatch_target",
                    target.id.as_str(),
                    json!({ "name": target.name, "kind": target.kind.as_str(),
                            "cardShape": target.card_shape, "protocolVersion": target.protocol_version }),
                ),
            )?;
            full_view(w, &target)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

pub async fn list(
    grant: Grant<AgentsRead>,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> ApiResult<axum::Json<Value>> {
    let q = params.validate()?;
    let paging = q.paging;
    let tenant = grant.tenant().clone();
    let (targets, total, counts) = state
        .db
        .read(move |c| {
            let (targets, total) = store::list(c, &tenant, &q)?;
            Ok((targets, total, keys::bound_counts(c, &tenant)?))
        })
        .await?;
    let targets: Vec<Value> = targets
        .iter()
        .map(|t| target_view(t, counts.get(&t.id).copied().unwrap_or(0), false))
        .collect();
    Ok(axum::Json(json!({
        "targets": targets, "total": total, "limit": paging.limit, "offset": paging.offset,
    })))
}

pub async fn get(
    grant: Grant<AgentsRead>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
) -> ApiResult<axum::Json<Value>> {
    let tenant = grant.tenant().clone();
    let view = state
        .db
        .read(move |c| full_view(c, &store::load(c, &tenant, &id)?))
        .await?;
    Ok(axum::Json(view))
}

/// The checked parts of a PATCH, ready to apply.
struct Update {
    name: Option<String>,
    description: Option<Option<String>>,
    card: Option<(Value, CardFacts, Option<String>)>,
    require_approval: Option<bool>,
    expected: Option<Timestamp>,
}

impl Update {
    fn apply_details(self, target: &mut Target) -> ApiResult<(Option<bool>, Option<Timestamp>)> {
        if self.card.is_some() && target.kind != TargetKind::RemoteA2a {
            return Err(ApiError::field(
                "agentCard",
                "only REMOTE_A2A targets have an Agent Card",
            ));
        }
        if let Some(name) = self.name {
            target.name = name;
        }
        if let Some(description) = self.description {
            target.description = description;
        }
        if let Some((card, facts, url)) = self.card {
            target.card = Some(card);
            target.card_url = url;
            target.card_shape = Some(facts.shape.as_str().to_owned());
            target.protocol_version = Some(facts.protocol_version);
            target.endpoint_url = Some(facts.endpoint_url);
        }
        Ok((self.require_approval, self.expected))
    }
}

pub async fn update(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
    Json(body): Json<UpdateTarget>,
) -> ApiResult<axum::Json<Value>> {
    if body.require_approval.is_some() && body.expected_runtime_updated_at.is_none() {
        return Err(ApiError::field(
            "expectedRuntimeUpdatedAt",
            "is required to change requireApproval (it changes the runtime policy)",
        ));
    }
    let card = if body.agent_card.is_some() || body.card_url.is_some() {
        Some(resolve_card(&state, body.agent_card, body.card_url).await?)
    } else {
        None
    };
    let update = Update {
        name: body.name.as_deref().map(validate_name).transpose()?,
        description: body
            .description
            .map(|d| optional_text("description", Some(d)))
            .transpose()?,
        card,
        require_approval: body.require_approval,
        expected: body.expected_runtime_updated_at,
    };
    let view = grant
        .write(&state.db, move |w| {
            let mut target = store::load(w, w.tenant(), &id)?;
            let (require_approval, expected) = update.apply_details(&mut target)?;
            store::update_details(w, &target)?;
            audit::append(
                w,
                &AuditEvent::success(
                    "agents.target.update",
                    "dispatch_target",
                    id.as_str(),
                    json!({ "name": target.name, "cardShape": target.card_shape }),
                ),
            )?;
            if let Some(on) = require_approval {
                lifecycle::govern(w, &id, expected, Change::RequireApproval(on))?;
            }
            full_view(w, &store::load(w, w.tenant(), &id)?)
        })
        .await?;
    Ok(axum::Json(view))
}

/// Deletes a target with no unfinished runs; its agent access keys are revoked with it.
pub async fn delete(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
) -> ApiResult<axum::Json<Value>> {
    let now = grant.now();
    let revoked = grant
        .write(&state.db, move |w| {
            let target = store::load(w, w.tenant(), &id)?;
            let active = runs::active_on_target(w, &id)?;
            if active > 0 {
                return Err(ApiError::new(
                    Code::TargetHasActiveRuns,
                    format!("{active} runs on this target are not finished; cancel them first"),
                )
                .with_details(json!({ "activeRuns": active })));
            }
            let revoked = keys::revoke_bound_to(w, &id)?;
            store::delete(w, &id)?;
            audit::append(
                w,
                &AuditEvent::success(
                    "agents.target.delete",
                    "dispatch_target",
                    id.as_str(),
                    json!({ "name": target.name, "agentKeysRevoked": revoked }),
                ),
            )?;
            Ok(revoked)
        })
        .await?;
    Ok(axum::Json(
        json!({ "deleted": true, "agentKeysRevoked": revoked, "deletedAt": now }),
    ))
}

/// A run as the governance view lists it.
fn brief(runs: &[Run]) -> Vec<Value> {
    runs.iter()
        .map(|r| {
            json!({ "id": r.id, "state": r.state, "blockReason": r.block_reason,
                    "requestedBy": r.requested_by, "createdAt": r.created_at })
        })
        .collect()
}

/// The runs on a target, newest first, and those waiting on its governance.
fn target_work(
    conn: &Connection,
    tenant: &TenantId,
    id: &TargetId,
) -> ApiResult<(Vec<Run>, Vec<Run>)> {
    let recent = runs::list(conn, tenant, &runs::RunFilter::on_target(id, None, 10))?.0;
    let mut affected = Vec::new();
    for state in [RunState::Blocked, RunState::AwaitingApproval] {
        let filter = runs::RunFilter::on_target(id, Some(state), 200);
        affected.extend(runs::list(conn, tenant, &filter)?.0);
    }
    Ok((recent, affected))
}

/// Policy and its inputs, review state, incident and handoff, the target's recent runs and
/// audit, and the work waiting on it (runs blocked by its policy or awaiting approval).
pub async fn governance(
    grant: Grant<AgentsRead>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
) -> ApiResult<axum::Json<Value>> {
    let tenant = grant.tenant().clone();
    let (target, audit_page, (recent, affected)) = state
        .db
        .read(move |c| {
            let target = store::load(c, &tenant, &id)?;
            let filter = AuditFilter {
                action: None,
                resource: Some(id.as_str().to_owned()),
                start: None,
                end: None,
                limit: 20,
                before_seq: None,
            };
            let page = audit::store::query(c, &tenant, &filter)?;
            Ok((target, page, target_work(c, &tenant, &id)?))
        })
        .await?;
    let view = target_view(&target, 0, true);
    Ok(axum::Json(json!({
        "target": { "id": target.id, "name": target.name, "kind": target.kind.as_str() },
        "runtime": view["runtime"],
        "policy": view["runtime"]["policy"],
        "review": view["runtime"]["review"],
        "incident": view["runtime"]["incident"],
        "recentRuns": brief(&recent),
        "recentAudit": audit_page.logs,
        "affectedWork": brief(&affected),
    })))
}

/// Applies one governance change, guarded by the caller's CAS token.
async fn govern(
    grant: Grant<AgentsWrite>,
    state: AppState,
    id: TargetId,
    expected: Timestamp,
    change: Change,
) -> ApiResult<axum::Json<Value>> {
    let view = grant
        .write(&state.db, move |w| {
            let target = lifecycle::govern(w, &id, Some(expected), change)?;
            full_view(w, &target)
        })
        .await?;
    Ok(axum::Json(view))
}

pub async fn hold(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
    Json(b): Json<HoldBody>,
) -> ApiResult<axum::Json<Value>> {
    let change = Change::Hold {
        reason: required_text("reason", b.reason)?,
        release_after: b.release_after,
    };
    govern(grant, state, id, b.expected_runtime_updated_at, change).await
}

pub async fn release(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
    Json(b): Json<NoteBody>,
) -> ApiResult<axum::Json<Value>> {
    let change = Change::Release {
        note: optional_text("note", b.note)?,
    };
    govern(grant, state, id, b.expected_runtime_updated_at, change).await
}

pub async fn acknowledge(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
    Json(b): Json<AcknowledgeBody>,
) -> ApiResult<axum::Json<Value>> {
    let change = Change::Acknowledge {
        note: optional_text("note", b.note)?,
        policy_epoch: b.policy_epoch,
    };
    govern(grant, state, id, b.expected_runtime_updated_at, change).await
}

pub async fn open_incident(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
    Json(b): Json<OpenIncidentBody>,
) -> ApiResult<axum::Json<Value>> {
    let change = Change::OpenIncident {
        reason: required_text("reason", b.reason)?,
    };
    govern(grant, state, id, b.expected_runtime_updated_at, change).await
}

pub async fn handoff(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
    Json(b): Json<HandoffBody>,
) -> ApiResult<axum::Json<Value>> {
    let change = Change::Handoff {
        external_incident_id: required_text("externalIncidentId", b.external_incident_id)?,
        owner: required_text("owner", b.owner)?,
        note: optional_text("note", b.note)?,
        incident_epoch: b.incident_epoch,
    };
    govern(grant, state, id, b.expected_runtime_updated_at, change).await
}

pub async fn close_incident(
    grant: Grant<AgentsWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<TargetId>,
    Json(b): Json<NoteBody>,
) -> ApiResult<axum::Json<Value>> {
    let change = Change::CloseIncident {
        note: optional_text("note", b.note)?,
    };
    govern(grant, state, id, b.expected_runtime_updated_at, change).await
}
