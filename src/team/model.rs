//! Team request and response shapes, and the validated `Email`.

use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::ids::{InvitationId, UserId};
use crate::keys::model::CreatedKey;

const MAX_EMAIL: usize = 254;

/// An email address, trimmed and lowercased. Deliberately permissive past `local@domain`
/// (self-hosted deployments use addresses like `ops@localhost`), strict about what breaks things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> ApiResult<Email> {
        let email = raw.trim().to_lowercase();
        let bad = |why: &str| Err(ApiError::field("email", why));
        if email.is_empty() {
            return bad("must not be empty");
        }
        if email.len() > MAX_EMAIL {
            return bad("must be at most 254 characters");
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("must not contain spaces or control characters");
        }
        match email.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.') =>
            {
                Ok(Email(email))
            }
            _ => bad("must look like name@example.com"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InviteRequest {
    pub email: String,
    pub role: Option<Role>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleChangeRequest {
    pub role: Role,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
    pub joined_at: Timestamp,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Invitation {
    pub id: InvitationId,
    pub email: String,
    pub role: Role,
    pub invited_by: UserId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The invite response: the token is shown here only; only its hash is stored.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedInvitation {
    pub invitation: Invitation,
    pub token: String,
    pub accept_path: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedInvitation {
    pub member: Member,
    pub api_key: CreatedKey,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovedMember {
    pub user_id: UserId,
    pub removed_at: Timestamp,
    pub keys_revoked: usize,
    /// Invitations the member had sent that were still pending.
    pub invitations_revoked: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_normalises_and_rejects() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        assert!(Email::parse("ops@localhost").is_ok());
        for bad in ["", "ann", "@x.com", "ann@", "a b@x.com", "a@b@c", "a@.x"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
