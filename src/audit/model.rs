//! Audit log types: the event a mutation records, the row clients read, and the query filter.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::ids::{AuditId, KeyId, UserId};

/// What a mutation records. `detail` must never hold a secret.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub action: &'static str,
    pub resource_type: &'static str,
    pub resource_id: String,
    pub outcome: &'static str,
    pub detail: Value,
}

impl AuditEvent {
    pub fn success(
        action: &'static str,
        resource_type: &'static str,
        resource_id: impl Into<String>,
        detail: Value,
    ) -> Self {
        AuditEvent {
            action,
            resource_type,
            resource_id: resource_id.into(),
            outcome: "success",
            detail,
        }
    }

    /// An attempt that was refused (401 with a known key, 403).
    pub fn denied(
        action: &'static str,
        resource_type: &'static str,
        resource_id: impl Into<String>,
        detail: Value,
    ) -> Self {
        AuditEvent {
            outcome: "denied",
            ..AuditEvent::success(action, resource_type, resource_id, detail)
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditActor {
    pub user_id: Option<UserId>,
    pub key_id: Option<KeyId>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: AuditId,
    pub sequence: i64,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub actor: AuditActor,
    pub request_id: Option<String>,
    pub outcome: String,
    pub detail: Value,
    pub created_at: Timestamp,
    pub hash: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub logs: Vec<AuditEntry>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /audit/logs` query, as sent.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditQueryParams {
    pub action: Option<String>,
    pub resource: Option<String>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The validated filter.
#[derive(Debug, Clone)]
pub struct AuditFilter {
    /// Exact action, or a prefix when it ends in `.*` (`team.*`).
    pub action: Option<String>,
    /// Matches the resource type (`api_key`) or the resource id (`key_…`).
    pub resource: Option<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub limit: u32,
    pub before_seq: Option<i64>,
}
