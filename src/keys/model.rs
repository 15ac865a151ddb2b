//! API key request and response shapes.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::ids::{KeyId, TargetId, UserId};

pub const MAX_KEY_NAME: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    /// Binds the key to a `LOCAL_AGENT` target: an agent access key.
    pub target_id: Option<String>,
}

/// A key's display name: 1 to 100 characters once trimmed, no control characters.
#[derive(Debug, Clone)]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(raw: &str) -> ApiResult<KeyName> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(ApiError::field("name", "must not be empty"));
        }
        if name.chars().count() > MAX_KEY_NAME {
            return Err(ApiError::field(
                "name",
                format!("must be at most {MAX_KEY_NAME} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ApiError::field(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(KeyName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key as listed: never the secret.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: KeyId,
    pub name: String,
    pub user_id: UserId,
    pub masked_key: String,
    /// Set on agent access keys: the `LOCAL_AGENT` target the key acts as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<TargetId>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// The create response: the only time the raw key is ever shown.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    pub key: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedKey {
    pub id: KeyId,
    pub revoked_at: Timestamp,
}
