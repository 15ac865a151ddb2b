//! Who is calling and what they may do: roles, key scopes, the permission each route demands
//! (as types), the [`Grant`] a passed check yields, and the [`Write`] capability every mutation
//! demands, re-checked inside its own transaction.

mod grant;
pub mod perm;
mod scope;
mod secret;

use serde::{Deserialize, Serialize};

use crate::ids::{KeyId, TenantId, UserId};

pub use grant::{
    Grant, KeyCache, Principal, Refusal, RefusedCaller, TOUCH_INTERVAL_MS, Write,
    client_request_id, request_id,
};
pub use perm::{Access, Permission};
pub use scope::{Scope, Scopes};
pub use secret::{
    API_KEY_PREFIX, INVITATION_TOKEN_PREFIX, ParsedKey, generate_secret, hash_secret, last4,
    mask_key, parse_api_key,
};

/// A member's role, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    fn rank(self) -> u8 {
        match self {
            Role::Owner => 3,
            Role::Admin => 2,
            Role::Member => 1,
            Role::Viewer => 0,
        }
    }

    pub fn at_least(self, min: Role) -> bool {
        self.rank() >= min.rank()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "OWNER",
            Role::Admin => "ADMIN",
            Role::Member => "MEMBER",
            Role::Viewer => "VIEWER",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl rusqlite::ToSql for Role {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for Role {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        Role::parse(s).ok_or_else(|| crate::db::unknown_value("role", s))
    }
}

/// Who did something, as the audit log records it. `user_id` is absent for the system itself
/// (bootstrap, background jobs).
#[derive(Debug, Clone)]
pub struct Actor {
    pub tenant_id: TenantId,
    pub user_id: Option<UserId>,
    pub key_id: Option<KeyId>,
    /// The server's id of the request.
    pub request_id: Option<String>,
    /// The id the caller gave the request (`x-request-id` as sent), recorded apart.
    pub client_request_id: Option<String>,
}

impl Actor {
    pub fn system(tenant_id: TenantId) -> Actor {
        Actor {
            tenant_id,
            user_id: None,
            key_id: None,
            request_id: None,
            client_request_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Owner.at_least(Role::Admin));
        assert!(Role::Admin.at_least(Role::Admin));
        assert!(!Role::Member.at_least(Role::Admin));
        assert!(!Role::Viewer.at_least(Role::Member));
    }
}
