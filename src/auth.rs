//! Who is calling: roles, the [`Principal`] every authenticated handler receives, the capability a
//! role check yields, and the secrets (API keys, invitation tokens) with their storage hashes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{KeyId, TargetId, TenantId, UserId};

/// A member's role, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
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
        match s {
            "OWNER" => Some(Role::Owner),
            "ADMIN" => Some(Role::Admin),
            "MEMBER" => Some(Role::Member),
            "VIEWER" => Some(Role::Viewer),
            _ => None,
        }
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
        Role::parse(s).ok_or_else(|| rusqlite::types::FromSqlError::Other(s.into()))
    }
}

/// Who did something, as the audit log records it. `user_id` is absent for the system itself
/// (bootstrap, timers).
#[derive(Debug, Clone)]
pub struct Actor {
    pub tenant_id: TenantId,
    pub user_id: Option<UserId>,
    pub key_id: Option<KeyId>,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn system(tenant_id: TenantId) -> Actor {
        Actor {
            tenant_id,
            user_id: None,
            key_id: None,
            request_id: None,
        }
    }
}

/// An authenticated caller: the key's user, acting with that user's role in the key's tenant.
/// An agent access key (bound to a `LOCAL_AGENT` target) acts as that agent instead: it works
/// that target's executions and cannot manage anything.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub key_id: KeyId,
    pub role: Role,
    pub agent_target: Option<TargetId>,
    pub request_id: Option<String>,
}

impl Principal {
    pub fn actor(&self) -> Actor {
        Actor {
            tenant_id: self.tenant_id.clone(),
            user_id: Some(self.user_id.clone()),
            key_id: Some(self.key_id.clone()),
            request_id: self.request_id.clone(),
        }
    }

    /// Checks the caller's role and yields the capability that privileged store functions demand,
    /// so a mutation whose handler forgot the check does not compile.
    pub fn require(&self, min: Role) -> ApiResult<Granted> {
        if self.agent_target.is_some() {
            return Err(ApiError::new(
                Code::AgentKeyForbidden,
                "an agent access key acts as its agent and cannot manage this workspace",
            ));
        }
        if !self.role.at_least(min) {
            return Err(ApiError::new(
                Code::InsufficientRole,
                format!("this action needs the {} role or higher", min.as_str()),
            )
            .with_details(serde_json::json!({
                "requiredRole": min.as_str(),
                "role": self.role.as_str(),
            })));
        }
        Ok(Granted {
            actor: self.actor(),
            role: self.role,
            min,
        })
    }
}

/// Proof that a role check passed. Only [`Principal::require`] makes one.
#[derive(Debug, Clone)]
pub struct Granted {
    actor: Actor,
    role: Role,
    min: Role,
}

impl Granted {
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn tenant_id(&self) -> &TenantId {
        &self.actor.tenant_id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The role the check demanded; mutations re-check it inside their transaction, since the
    /// caller's role may have changed since the request was authenticated.
    pub fn required(&self) -> Role {
        self.min
    }

    /// The same grant with the role the caller holds now.
    pub fn with_role(self, role: Role) -> Granted {
        Granted { role, ..self }
    }

    /// The system acting on its own behalf (bootstrap, operator commands on the server machine).
    pub fn system(tenant_id: TenantId) -> Granted {
        Granted {
            actor: Actor::system(tenant_id),
            role: Role::Owner,
            min: Role::Owner,
        }
    }
}

/// The prefix of every API key.
pub const API_KEY_PREFIX: &str = "mk_";
/// The prefix of every invitation token.
pub const INVITATION_TOKEN_PREFIX: &str = "mkinv_";
/// Characters of the secret part used as the public lookup handle (shown in masks).
const LOOKUP_LEN: usize = 12;
/// 256 random bits in unpadded base64url.
const SECRET_CHARS: usize = 43;

/// A freshly generated secret (`prefix` + 256 random bits, base64url).
pub fn generate_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of the whole secret. A fast hash is right here: the secret has 256 random bits, so
/// there is nothing to brute-force, and a slow hash would only slow every request.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// An API key split into what is stored: the public lookup handle and the parts a mask shows.
pub struct ParsedKey<'a> {
    pub raw: &'a str,
    pub lookup: &'a str,
}

/// Checks the shape of a presented API key: `mk_` and 43 base64url characters.
pub fn parse_api_key(raw: &str) -> Option<ParsedKey<'_>> {
    let secret = raw.strip_prefix(API_KEY_PREFIX)?;
    let well_formed = secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| ParsedKey {
        raw,
        lookup: &secret[..LOOKUP_LEN],
    })
}

/// `mk_AbCdEfGh…wxyz`: enough to recognise a key, useless to use it.
pub fn mask_key(lookup: &str, last4: &str) -> String {
    format!("{API_KEY_PREFIX}{}…{last4}", &lookup[..8])
}

pub fn last4(raw: &str) -> &str {
    &raw[raw.len() - 4..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_are_distinct() {
        let a = generate_secret(API_KEY_PREFIX);
        let b = generate_secret(API_KEY_PREFIX);
        assert_ne!(a, b);
        let parsed = parse_api_key(&a).expect("generated key parses");
        assert_eq!(parsed.lookup, &a[3..15]);
        assert!(parse_api_key("mk_short").is_none());
        assert!(parse_api_key(&a.replace("mk_", "xx_")).is_none());
        assert!(mask_key(parsed.lookup, last4(&a)).ends_with(last4(&a)));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Owner.at_least(Role::Admin));
        assert!(Role::Admin.at_least(Role::Admin));
        assert!(!Role::Member.at_least(Role::Admin));
        assert!(!Role::Viewer.at_least(Role::Member));
    }
}
