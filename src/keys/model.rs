//! API key request and response shapes.

use serde::{Deserialize, Serialize};

use crate::auth::{Role, Scopes};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::ids::{KeyId, TargetId, UserId};

pub const MAX_KEY_NAME: usize = 100;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    /// Scope names (or `area:*`); absent: the key does what its user's role allows.
    pub scopes: Option<Vec<String>>,
    /// Binds the key to a `LOCAL_AGENT` target: an agent access key.
    pub target_id: Option<String>,
    pub expires_at: Option<Timestamp>,
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

/// What a new key may do.
#[derive(Debug, Clone)]
pub enum NewKey {
    /// A user's key: exactly these scopes, or (`None`) whatever the user's role allows.
    User(Option<Scopes>),
    /// An agent access key for this `LOCAL_AGENT` target.
    Agent(TargetId),
}

impl NewKey {
    /// The stored `scopes` column.
    pub fn scopes_column(&self) -> Option<String> {
        match self {
            NewKey::User(scopes) => scopes.map(Scopes::to_column),
            NewKey::Agent(_) => Some(Scopes::only(crate::auth::Scope::Executions).to_column()),
        }
    }

    pub fn target(&self) -> Option<&TargetId> {
        match self {
            NewKey::User(_) => None,
            NewKey::Agent(t) => Some(t),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    User,
    Agent,
}

/// A key as listed: never the secret.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: KeyId,
    pub name: String,
    pub user_id: UserId,
    pub masked_key: String,
    pub kind: KeyKind,
    /// Set on agent access keys: the `LOCAL_AGENT` target the key acts as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<TargetId>,
    /// What the key may do now: its scopes within its user's current role.
    pub scopes: Vec<&'static str>,
    /// True when the key was made with an explicit scope list; false when it follows its
    /// user's role (and gains or loses scopes with it).
    pub restricted: bool,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    /// The key this one was made with (`POST /v1/keys`, or the key that approved a device);
    /// `null` for a tenant's first key. It expires no later than its parent.
    pub parent_key_id: Option<KeyId>,
}

/// The effective scopes of a stored key whose user holds `role`.
pub fn effective_scopes(kind: KeyKind, stored: Option<Scopes>, role: Role) -> Scopes {
    match kind {
        KeyKind::Agent => stored.unwrap_or_default(),
        KeyKind::User => {
            let allowed = Scopes::allowed_for(role);
            stored.map_or(allowed, |s| s.intersect(allowed))
        }
    }
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
    /// With `?cascade=true`: the live keys made from this one (and from those) revoked with it.
    pub revoked_descendants: Vec<KeyId>,
}

/// `DELETE /v1/keys/{id}?cascade=true`: also revoke every key made from this one.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeParams {
    /// Revoke the keys made from this key too (and theirs). Default false, so a key can be
    /// rotated: make the new key with the old one, then revoke the old one.
    pub cascade: Option<bool>,
}
