//! Dispatch-target request bodies, validated values, and the JSON views clients read.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::Paging;

use super::card::CardFacts;
use super::policy::Runtime;
use super::store::Target;

pub const MAX_NAME: usize = 100;
/// Longest reason, note, description, owner or external incident id, in characters.
pub const MAX_TEXT: usize = 2_000;
pub const AVAILABILITY: [&str; 4] = ["AVAILABLE", "DEGRADED", "HELD", "INCIDENT"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
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

impl rusqlite::ToSql for TargetKind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for TargetKind {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        TargetKind::parse(s).ok_or_else(|| crate::db::unknown_value("target kind", s))
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTarget {
    pub name: String,
    pub description: Option<String>,
    /// `targetKind` too: the name the runs and the target lists use for it.
    #[serde(alias = "targetKind")]
    pub kind: TargetKind,
    pub agent_card: Option<Value>,
    /// `agentCardUrl` too, beside `agentCard`.
    #[serde(alias = "agentCardUrl")]
    pub card_url: Option<String>,
    pub require_approval: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTarget {
    pub name: Option<String>,
    pub description: Option<String>,
    pub agent_card: Option<Value>,
    #[serde(alias = "agentCardUrl")]
    pub card_url: Option<String>,
    pub require_approval: Option<bool>,
    pub expected_runtime_updated_at: Option<Timestamp>,
}

/// A target about to be stored.
pub struct NewTarget {
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

/// Optional text (a note, a description) of at most [`MAX_TEXT`] characters.
pub fn optional_text(field: &str, raw: Option<String>) -> ApiResult<Option<String>> {
    crate::http::extract::bounded_text(field, raw, MAX_TEXT)
}

/// Required text (a reason, an owner) of at most [`MAX_TEXT`] characters.
pub fn required_text(field: &str, raw: String) -> ApiResult<String> {
    crate::http::extract::required_text(field, raw, MAX_TEXT)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    pub paging: Paging,
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
        Ok(TargetQuery {
            search: self.search.filter(|s| !s.trim().is_empty()),
            kind,
            state,
            paging: Paging::from_query(self.limit.as_deref(), self.offset.as_deref(), 50, 200)?,
        })
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldBody {
    pub reason: String,
    pub release_after: Option<Timestamp>,
    pub expected_runtime_updated_at: Timestamp,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NoteBody {
    pub note: Option<String>,
    pub expected_runtime_updated_at: Timestamp,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcknowledgeBody {
    pub note: Option<String>,
    /// The policy epoch the reviewer looked at; refused if the policy has moved on since.
    pub policy_epoch: Option<i64>,
    pub expected_runtime_updated_at: Timestamp,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenIncidentBody {
    pub reason: String,
    pub expected_runtime_updated_at: Timestamp,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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

fn compatibility(t: &Target, agent_keys: i64) -> Value {
    match t.kind {
        TargetKind::LocalAgent => json!({
            "kind": "LOCAL_AGENT",
            "agentKeys": agent_keys,
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
                // What memesh can do with this agent: dispatch runs, follow their tasks
                // (GetTask / tasks/get) and cancel them (CancelTask / tasks/cancel).
                "canCancel": t.endpoint_url.is_some(),
                "canRefresh": t.endpoint_url.is_some(),
                // What the agent offers: tasks/cancel and tasks/get are core A2A methods over
                // every HTTP binding.
                "agentCanCancel": t.endpoint_url.is_some(),
                "agentCanRefresh": t.endpoint_url.is_some(),
                "streaming": capability("streaming"),
                "pushNotifications": capability("pushNotifications"),
                "lastProbe": t.runtime.probe,
            })
        }
    }
}

/// A target as listed (with its live agent keys); `full` adds the card, the control capability
/// or local runtime summary.
pub fn target_view(t: &Target, agent_keys: i64, full: bool) -> Value {
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
        "compatibility": compatibility(t, agent_keys),
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
                    "canDispatch": t.endpoint_url.is_some(),
                    "canCancel": t.endpoint_url.is_some(),
                    "canRefresh": t.endpoint_url.is_some(),
                    "blockedBy": if t.endpoint_url.is_some() { json!([]) } else { json!(["no_endpoint"]) },
                    "guidance": if t.endpoint_url.is_some() {
                        "memesh sends runs to this agent over A2A, follows their tasks (refresh in \
                         the background, reconcile on demand) and cancels them (retried on \
                         failure; an OWNER or ADMIN resolves a run whose cancel attempts are spent)"
                    } else {
                        "the agent's card names no endpoint: memesh cannot send it runs"
                    },
                    "agentCanCancel": t.endpoint_url.is_some(),
                    "agentCanRefresh": t.endpoint_url.is_some(),
                    "probe": t.runtime.probe,
                });
            }
            TargetKind::LocalAgent => {
                v["localRuntime"] = json!({ "agentKeys": agent_keys });
            }
        }
    }
    v
}
