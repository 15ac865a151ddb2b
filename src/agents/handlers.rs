//! `/v1/agents/dispatch-targets` handlers. Reading is open to every member; registering,
//! changing and governing targets takes OWNER or ADMIN.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::audit::model::AuditFilter;
use crate::audit::{self, AuditEvent};
use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{Json, Query};
use crate::ids::TargetId;
use crate::state::AppState;

use super::card::{self, CardFacts};
use super::governance::{self, Change};
use super::model::{
    AcknowledgeBody, CreateTarget, HandoffBody, HoldBody, ListParams, NewTarget, NoteBody,
    OpenIncidentBody, TargetKind, UpdateTarget, bounded_text, target_view, validate_name,
};
use super::store;

fn target_id(raw: &str) -> ApiResult<TargetId> {
    TargetId::parse(raw).ok_or_else(|| ApiError::not_found("dispatch target"))
}

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
            let (card, facts) = card::fetch_valid(&state.http, url.trim()).await?;
            Ok((card, facts, Some(url.trim().to_owned())))
        }
        (None, None) => Err(ApiError::field(
            "agentCard",
            "a REMOTE_A2A target needs agentCard or cardUrl",
        )),
    }
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<CreateTarget>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let granted = principal.require(Role::Admin)?;
    let name = validate_name(&body.name)?;
    let description = bounded_text("description", body.description, false)?;
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
        tenant_id: granted.tenant_id().clone(),
        name,
        description,
        kind: body.kind,
        card,
        card_url,
        facts,
        require_approval: body.require_approval.unwrap_or(false),
    };
    let now = state.clock.now();
    let target = state
        .db
        .write(move |tx| {
            let actor = granted.actor();
            let by = actor.user_id.as_ref().map(|u| u.as_str().to_owned());
            let target = store::insert(tx, &new, by.as_deref(), now)?;
            audit::append(
                tx,
                actor,
                &AuditEvent::success(
                    "agents.target.create",
                    "dispatch_target",
                    target.id.as_str(),
                    json!({ "name": target.name, "kind": target.kind.as_str(),
                            "cardShape": target.card_shape, "protocolVersion": target.protocol_version }),
                ),
                now,
            )?;
            Ok(target)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(target_view(&target, true))))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<ListParams>,
) -> ApiResult<axum::Json<Value>> {
    let q = params.validate()?;
    let (limit, offset) = (q.limit, q.offset);
    let tenant = principal.tenant_id.clone();
    let (targets, total) = state.db.read(move |c| store::list(c, &tenant, &q)).await?;
    let targets: Vec<Value> = targets.iter().map(|t| target_view(t, false)).collect();
    Ok(axum::Json(
        json!({ "targets": targets, "total": total, "limit": limit, "offset": offset }),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = target_id(&id)?;
    let tenant = principal.tenant_id.clone();
    let target = state.db.read(move |c| store::load(c, &tenant, &id)).await?;
    Ok(axum::Json(target_view(&target, true)))
}

pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(body): Json<UpdateTarget>,
) -> ApiResult<axum::Json<Value>> {
    let granted = principal.require(Role::Admin)?;
    let id = target_id(&id)?;
    let name = body.name.as_deref().map(validate_name).transpose()?;
    let description = body
        .description
        .map(|d| bounded_text("description", Some(d), false))
        .transpose()?;
    let card = if body.agent_card.is_some() || body.card_url.is_some() {
        Some(resolve_card(&state, body.agent_card, body.card_url).await?)
    } else {
        None
    };
    if body.require_approval.is_some() && body.expected_runtime_updated_at.is_none() {
        return Err(ApiError::field(
            "expectedRuntimeUpdatedAt",
            "is required to change requireApproval (it changes the runtime policy)",
        ));
    }
    let now = state.clock.now();
    let target = state
        .db
        .write(move |tx| {
            let actor = granted.actor();
            let mut target = store::load(tx, &actor.tenant_id, &id)?;
            if card.is_some() && target.kind != TargetKind::RemoteA2a {
                return Err(ApiError::field(
                    "agentCard",
                    "only REMOTE_A2A targets have an Agent Card",
                ));
            }
            if let Some(name) = name {
                target.name = name;
            }
            if let Some(description) = description {
                target.description = description;
            }
            if let Some((card, facts, url)) = card {
                target.card = Some(card);
                target.card_url = url;
                target.card_shape = Some(facts.shape.as_str().to_owned());
                target.protocol_version = Some(facts.protocol_version);
                target.endpoint_url = Some(facts.endpoint_url);
            }
            store::update_details(tx, &target, now)?;
            audit::append(
                tx,
                actor,
                &AuditEvent::success(
                    "agents.target.update",
                    "dispatch_target",
                    id.as_str(),
                    json!({ "name": target.name, "cardShape": target.card_shape }),
                ),
                now,
            )?;
            if let Some(on) = body.require_approval {
                governance::apply(
                    tx,
                    actor,
                    &id,
                    body.expected_runtime_updated_at,
                    Change::RequireApproval(on),
                    now,
                )?;
            }
            store::load(tx, &actor.tenant_id, &id)
        })
        .await?;
    Ok(axum::Json(target_view(&target, true)))
}

pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let granted = principal.require(Role::Admin)?;
    let id = target_id(&id)?;
    let now = state.clock.now();
    let revoked = state
        .db
        .write(move |tx| {
            let actor = granted.actor();
            let target = store::load(tx, &actor.tenant_id, &id)?;
            let active = crate::orchestrator::store::active_on_target(tx, &id)?;
            if active > 0 {
                return Err(ApiError::new(
                    crate::error::Code::Conflict,
                    format!("{active} runs on this target are not finished; cancel them first"),
                ));
            }
            let revoked = store::delete(tx, &id, now)?;
            audit::append(
                tx,
                actor,
                &AuditEvent::success(
                    "agents.target.delete",
                    "dispatch_target",
                    id.as_str(),
                    json!({ "name": target.name, "agentKeysRevoked": revoked }),
                ),
                now,
            )?;
            Ok(revoked)
        })
        .await?;
    Ok(axum::Json(
        json!({ "deleted": true, "agentKeysRevoked": revoked, "deletedAt": now }),
    ))
}

/// Policy and its inputs, review state, incident and handoff, the target's recent runs and
/// audit, and the work waiting on it (runs blocked by its policy or awaiting approval).
pub async fn governance(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = target_id(&id)?;
    let tenant = principal.tenant_id.clone();
    let (target, audit_page, recent, affected) = state
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
            let recent = crate::orchestrator::store::list(
                c,
                &tenant,
                &crate::orchestrator::store::RunFilter {
                    target_id: Some(id.as_str().to_owned()),
                    state: None,
                    kind: None,
                    limit: 10,
                    offset: 0,
                },
            )?
            .0;
            let mut affected = Vec::new();
            for state in [
                crate::orchestrator::model::RunState::Blocked,
                crate::orchestrator::model::RunState::AwaitingApproval,
            ] {
                affected.extend(
                    crate::orchestrator::store::list(
                        c,
                        &tenant,
                        &crate::orchestrator::store::RunFilter {
                            target_id: Some(id.as_str().to_owned()),
                            state: Some(state),
                            kind: None,
                            limit: 200,
                            offset: 0,
                        },
                    )?
                    .0,
                );
            }
            Ok((
                target,
                audit::store::query(c, &tenant, &filter)?,
                recent,
                affected,
            ))
        })
        .await?;
    let brief = |runs: &[crate::orchestrator::model::Run]| -> Vec<Value> {
        runs.iter()
            .map(|r| {
                json!({ "id": r.id, "state": r.state.as_str(), "blockReason": r.block_reason,
                             "requestedBy": r.requested_by, "createdAt": r.created_at })
            })
            .collect()
    };
    let view = target_view(&target, true);
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

async fn govern(
    state: AppState,
    principal: Principal,
    id: String,
    expected: crate::clock::Timestamp,
    change: Change,
) -> ApiResult<axum::Json<Value>> {
    let granted = principal.require(Role::Admin)?;
    let id = target_id(&id)?;
    let now = state.clock.now();
    let target = state
        .db
        .write(move |tx| governance::apply(tx, granted.actor(), &id, Some(expected), change, now))
        .await?;
    Ok(axum::Json(target_view(&target, true)))
}

fn note(raw: Option<String>) -> ApiResult<Option<String>> {
    bounded_text("note", raw, false)
}

pub async fn hold(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<HoldBody>,
) -> ApiResult<axum::Json<Value>> {
    let reason = bounded_text("reason", Some(b.reason), true)?.unwrap_or_default();
    govern(
        state,
        principal,
        id,
        b.expected_runtime_updated_at,
        Change::Hold {
            reason,
            release_after: b.release_after,
        },
    )
    .await
}

pub async fn release(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<NoteBody>,
) -> ApiResult<axum::Json<Value>> {
    let note = note(b.note)?;
    govern(
        state,
        principal,
        id,
        b.expected_runtime_updated_at,
        Change::Release { note },
    )
    .await
}

pub async fn acknowledge(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<AcknowledgeBody>,
) -> ApiResult<axum::Json<Value>> {
    let note = note(b.note)?;
    govern(
        state,
        principal,
        id,
        b.expected_runtime_updated_at,
        Change::Acknowledge {
            note,
            policy_epoch: b.policy_epoch,
        },
    )
    .await
}

pub async fn open_incident(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<OpenIncidentBody>,
) -> ApiResult<axum::Json<Value>> {
    let reason = bounded_text("reason", Some(b.reason), true)?.unwrap_or_default();
    govern(
        state,
        principal,
        id,
        b.expected_runtime_updated_at,
        Change::OpenIncident { reason },
    )
    .await
}

pub async fn handoff(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<HandoffBody>,
) -> ApiResult<axum::Json<Value>> {
    let external_incident_id =
        bounded_text("externalIncidentId", Some(b.external_incident_id), true)?.unwrap_or_default();
    let owner = bounded_text("owner", Some(b.owner), true)?.unwrap_or_default();
    let note = note(b.note)?;
    govern(
        state,
        principal,
        id,
        b.expected_runtime_updated_at,
        Change::Handoff {
            external_incident_id,
            owner,
            note,
            incident_epoch: b.incident_epoch,
        },
    )
    .await
}

pub async fn close_incident(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<NoteBody>,
) -> ApiResult<axum::Json<Value>> {
    let note = note(b.note)?;
    govern(
        state,
        principal,
        id,
        b.expected_runtime_updated_at,
        Change::CloseIncident { note },
    )
    .await
}
