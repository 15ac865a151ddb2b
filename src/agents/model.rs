//! Dispatch-target request bodies, validated values, and the JSON views clients read.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::ids::TenantId;

use super::card::CardFacts;
use super::policy::Runtime;
use super::store::Target;

pub const MAX_NAME: usize = 100;
pub const MAX_TEXT: usize = 2_000;
pub const AVAILABILITY: [&str; 4] = ["AVAILABLE", "DEGRADED", "HELD", "INCIDENT"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TargetKind {
    #[serde(rename = "LOCAL_AGENT")]
    LocalAgent,
    #[serde(rename = "REMOTE_A2A")]
    RemoteA2a,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::LocalAgent => "LOCAL_AGENT",
            TargetKind::RemoteA2a => "REMOTE_A2A",
        }
    }

    pub fn parse(s: &str) -> Option<TargetKind> {
        match s {
            "LOCAL_AGENT" => Some(TargetKind::LocalAgent),
            "REMOTE_A2A" => Some(TargetKind::RemoteA2a),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTarget {
    pub name: String,
    pub description: Option<String>,
    pub kind: TargetKind,
    pub agent_card: Option<Value>,
    pub card_url: Option<String>,
    pub require_approval: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTarget {
    pub name: Option<String>,
    pub description: Option<String>,
    pub agent_card: Option<Value>,
    pub card_url: Option<String>,
    pub require_approval: Option<bool>,
    pub expected_runtime_updated_at: Option<Timestamp>,
}

/// A target about to be stored.
pub struct NewTarget {
    pub tenant_id: TenantId,
    pub name: String,
    pub description: Option<String>,
    pub kind: TargetKind,
    pub card: Option<Value>,
    pub card_url: Option<String>,
    pub facts: Option<CardFacts>,
    pub require_approval: bool,
}

pub fn validate_name(raw: &str) -> ApiResult<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::field(
            "name",
            "must be 1 to 100 characters without control characters",
        ));
    }
    Ok(name.to_owned())
}

pub fn bounded_text(field: &str, raw: Option<String>, required: bool) -> ApiResult<Option<String>> {
    match raw.map(|s| s.trim().to_owned()) {
        Some(s) if s.chars().count() > MAX_TEXT => Err(ApiError::field(
            field,
            format!("must be at most {MAX_TEXT} characters"),
        )),
        Some(s) if s.is_empty() && required => Err(ApiError::field(field, "must not be empty")),
        None if required => Err(ApiError::field(field, "is required")),
        Some(s) if s.is_empty() => Ok(None),
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    pub search: Option<String>,
    pub target_kind: Option<String>,
    pub state: Option<String>,
    pub limit: Option<String>,
    pub offset: Option<String>,
}

pub struct TargetQuery {
    pub search: Option<String>,
    pub kind: Option<TargetKind>,
    pub state: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

impl ListParams {
    pub fn validate(self) -> ApiResult<TargetQuery> {
        let kind = self
            .target_kind
            .map(|k| {
                TargetKind::parse(&k).ok_or_else(|| {
                    ApiError::field("targetKind", "must be LOCAL_AGENT or REMOTE_A2A")
                })
            })
            .transpose()?;
        let state = self
            .state
            .map(|s| {
                AVAILABILITY
                    .contains(&s.as_str())
                    .then_some(s)
                    .ok_or_else(|| {
                        ApiError::field("state", "must be AVAILABLE, DEGRADED, HELD or INCIDENT")
                    })
            })
            .transpose()?;
        let number = |field: &str, v: Option<String>, default: u32, max: u32| -> ApiResult<u32> {
            match v {
                None => Ok(default),
                Some(s) => s.parse::<u32>().ok().filter(|n| *n <= max).ok_or_else(|| {
                    ApiError::field(field, format!("must be a whole number up to {max}"))
                }),
            }
        };
        let limit = number("limit", self.limit, 50, 200)?;
        if limit == 0 {
            return Err(ApiError::field("limit", "must be from 1 to 200"));
        }
        Ok(TargetQuery {
            search: self.search.filter(|s| !s.trim().is_empty()),
            kind,
            state,
            limit,
            offset: number("offset", self.offset, 0, 1_000_000)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldBody {
    pub reason: String,
    pub release_after: Option<Timestamp>,
    pub expected_runtime_updated_at: Timestamp,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NoteBody {
    pub note: Option<String>,
    pub expected_runtime_updated_at: Timestamp,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcknowledgeBody {
    pub note: Option<String>,
    /// The policy epoch the reviewer looked at; refused if the policy has moved on since.
    pub policy_epoch: Option<i64>,
    pub expected_runtime_updated_at: Timestamp,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenIncidentBody {
    pub reason: String,
    pub expected_runtime_updated_at: Timestamp,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandoffBody {
    pub external_incident_id: String,
    pub owner: String,
    pub note: Option<String>,
    /// The incident epoch being handed off; refused if a newer incident has opened since.
    pub incident_epoch: Option<i64>,
    pub expected_runtime_updated_at: Timestamp,
}

/// The runtime as clients see it.
pub fn runtime_view(rt: &Runtime) -> Value {
    json!({
        "runtimeUpdatedAt": rt.updated_at,
        "availability": rt.availability(),
        "hold": rt.hold,
        "incident": rt.incident,
        "requireApproval": rt.require_approval,
        "policy": {
            "effective": rt.policy,
            "reasons": rt.reasons,
            "epoch": rt.policy_epoch,
            "changedBy": rt.policy_changed_by,
            "changedAt": rt.policy_changed_at,
        },
        "review": {
            "epoch": rt.policy_epoch,
            "state": rt.review_state(),
            "acknowledged": rt.review_ack,
        },
    })
}

fn compatibility(t: &Target) -> Value {
    match t.kind {
        TargetKind::LocalAgent => json!({
            "kind": "LOCAL_AGENT",
            "agentKeys": t.agent_keys,
        }),
        TargetKind::RemoteA2a => {
            let card = t.card.as_ref();
            let capability = |name: &str| {
                card.and_then(|c| c.get("capabilities"))
                    .and_then(|c| c.get(name))
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            };
            json!({
                "kind": "REMOTE_A2A",
                "cardShape": t.card_shape,
                "protocolVersion": t.protocol_version,
                "endpointUrl": t.endpoint_url,
                // tasks/cancel and tasks/get are core A2A methods over every HTTP binding.
                "canCancel": t.endpoint_url.is_some(),
                "canRefresh": t.endpoint_url.is_some(),
                "streaming": capability("streaming"),
                "pushNotifications": capability("pushNotifications"),
                "lastProbe": t.runtime.probe,
            })
        }
    }
}

/// A target as listed; `full` adds the card, the control capability or local runtime summary.
pub fn target_view(t: &Target, full: bool) -> Value {
    let mut v = json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "kind": t.kind.as_str(),
        "availability": t.runtime.availability(),
        "runtimePolicy": {
            "effective": t.runtime.policy,
            "reasons": t.runtime.reasons,
            "epoch": t.runtime.policy_epoch,
        },
        "controlState": {
            "runtimeUpdatedAt": t.runtime.updated_at,
            "held": t.runtime.hold.is_some(),
            "incidentOpen": t.runtime.incident.open,
            "reviewState": t.runtime.review_state(),
        },
        "compatibility": compatibility(t),
        "cardUrl": t.card_url,
        "createdAt": t.created_at,
        "updatedAt": t.updated_at,
    });
    if full {
        v["runtime"] = runtime_view(&t.runtime);
        match t.kind {
            TargetKind::RemoteA2a => {
                v["agentCard"] = t.card.clone().unwrap_or(Value::Null);
                v["remoteControl"] = json!({
                    "endpointUrl": t.endpoint_url,
                    "canCancel": t.endpoint_url.is_some(),
                    "canRefresh": t.endpoint_url.is_some(),
                    "probe": t.runtime.probe,
                });
            }
            TargetKind::LocalAgent => {
                v["localRuntime"] = json!({ "agentKeys": t.agent_keys });
            }
        }
    }
    v
}
