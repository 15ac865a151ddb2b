//! API key SQL. Only SHA-256 hashes are stored; the lookup handle finds the row and the hash is
//! compared in constant time.

use rusqlite::{Connection, OptionalExtension, Transaction, named_params};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::audit::{self, AuditEvent};
use crate::auth::{
    API_KEY_PREFIX, Actor, Principal, Role, generate_secret, hash_secret, last4, mask_key,
    parse_api_key,
};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::ids::{KeyId, TargetId, TenantId, UserId};

use super::model::{CreatedKey, KeyName, KeyView, RevokedKey};

/// `last_used_at` is refreshed at most this often, so authentication is a read, not a write.
const TOUCH_INTERVAL_MS: i64 = 60_000;

/// What authentication found: the principal and when the key was last marked used.
pub struct Authenticated {
    pub principal: Principal,
    last_used_at: Option<Timestamp>,
}

impl Authenticated {
    pub fn needs_touch(&self, now: Timestamp) -> bool {
        self.last_used_at
            .is_none_or(|t| now.millis() - t.millis() >= TOUCH_INTERVAL_MS)
    }
}

/// Finds the live key whose lookup handle and hash match `raw`, and its active user.
pub fn authenticate(
    conn: &Connection,
    lookup: &str,
    raw: &str,
) -> ApiResult<Option<Authenticated>> {
    let presented = hash_secret(raw);
    let row = conn
        .prepare_cached(
            "SELECT k.id, k.hash, k.last_used_at, u.id, u.tenant_id, u.role, k.target_id
             FROM api_keys k JOIN users u ON u.id = k.user_id
             WHERE k.lookup = ?1 AND k.revoked_at IS NULL AND u.removed_at IS NULL",
        )?
        .query_row([lookup], |r| {
            Ok((
                r.get::<_, KeyId>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Timestamp>>(2)?,
                r.get::<_, UserId>(3)?,
                r.get::<_, TenantId>(4)?,
                r.get::<_, Role>(5)?,
                r.get::<_, Option<TargetId>>(6)?,
            ))
        })
        .optional()?;
    let Some((key_id, stored, last_used_at, user_id, tenant_id, role, agent_target)) = row else {
        return Ok(None);
    };
    if !bool::from(stored.as_slice().ct_eq(&presented)) {
        return Ok(None);
    }
    Ok(Some(Authenticated {
        principal: Principal {
            tenant_id,
            user_id,
            key_id,
            role,
            agent_target,
            request_id: None,
        },
        last_used_at,
    }))
}

pub fn touch(tx: &Transaction<'_>, key_id: &KeyId, now: Timestamp) -> ApiResult<()> {
    tx.execute(
        "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
        rusqlite::params![key_id, now],
    )?;
    Ok(())
}

/// Creates a key for `user_id` (a random one, or `chosen` when an operator supplies it) and
/// audits it. Returns the raw value, which is never stored.
pub fn create(
    tx: &Transaction<'_>,
    actor: &Actor,
    user_id: &UserId,
    name: &KeyName,
    chosen: Option<&str>,
    now: Timestamp,
) -> ApiResult<CreatedKey> {
    create_for(tx, actor, user_id, name, chosen, None, now)
}

/// Creates a key; with `target`, an agent access key bound to that `LOCAL_AGENT` target (the
/// caller has checked the target exists in the actor's tenant).
pub fn create_for(
    tx: &Transaction<'_>,
    actor: &Actor,
    user_id: &UserId,
    name: &KeyName,
    chosen: Option<&str>,
    target: Option<&TargetId>,
    now: Timestamp,
) -> ApiResult<CreatedKey> {
    let raw = match chosen {
        Some(k) => k.to_owned(),
        None => generate_secret(API_KEY_PREFIX),
    };
    let parsed = parse_api_key(&raw).ok_or_else(|| {
        ApiError::field(
            "key",
            "an API key is mk_ followed by 43 base64url characters",
        )
    })?;
    let id = KeyId::generate();
    let hash = hash_secret(&raw);
    tx.execute(
        "INSERT INTO api_keys (id, tenant_id, user_id, name, lookup, hash, last4, created_at, target_id)
         VALUES (:id, :tenant, :user, :name, :lookup, :hash, :last4, :now, :target)",
        named_params! {
            ":id": id, ":tenant": actor.tenant_id, ":user": user_id, ":name": name.as_str(),
            ":lookup": parsed.lookup, ":hash": hash.as_slice(), ":last4": last4(&raw), ":now": now,
            ":target": target,
        },
    )
    .map_err(|e| {
        crate::db::unique_violation_as(
            e,
            crate::error::Code::Conflict,
            "an API key with this value already exists",
        )
    })?;
    audit::append(
        tx,
        actor,
        &AuditEvent::success(
            "keys.create",
            "api_key",
            id.as_str(),
            json!({ "name": name.as_str(), "userId": user_id, "targetId": target }),
        ),
        now,
    )?;
    let view = KeyView {
        id,
        name: name.as_str().to_owned(),
        user_id: user_id.clone(),
        masked_key: mask_key(parsed.lookup, last4(&raw)),
        target_id: target.cloned(),
        created_at: now,
        last_used_at: None,
    };
    Ok(CreatedKey { view, key: raw })
}

/// The live keys of one user, newest first.
pub fn list(conn: &Connection, tenant: &TenantId, user: &UserId) -> ApiResult<Vec<KeyView>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, user_id, lookup, last4, created_at, last_used_at, target_id FROM api_keys
         WHERE tenant_id = ?1 AND user_id = ?2 AND revoked_at IS NULL
         ORDER BY created_at DESC, id DESC",
    )?;
    let keys = stmt
        .query_map(rusqlite::params![tenant, user], |r| {
            let lookup: String = r.get(3)?;
            let last4: String = r.get(4)?;
            Ok(KeyView {
                id: r.get(0)?,
                name: r.get(1)?,
                user_id: r.get(2)?,
                masked_key: mask_key(&lookup, &last4),
                target_id: r.get(7)?,
                created_at: r.get(5)?,
                last_used_at: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(keys)
}

/// Revokes one of the caller's own live keys. Another user's key, or one already revoked, is
/// not found.
pub fn revoke(
    tx: &Transaction<'_>,
    actor: &Actor,
    owner: &UserId,
    key_id: &KeyId,
    now: Timestamp,
) -> ApiResult<RevokedKey> {
    let changed = tx.execute(
        "UPDATE api_keys SET revoked_at = :now
         WHERE id = :id AND tenant_id = :tenant AND user_id = :user AND revoked_at IS NULL",
        named_params! { ":now": now, ":id": key_id, ":tenant": actor.tenant_id, ":user": owner },
    )?;
    if changed == 0 {
        return Err(ApiError::not_found("API key"));
    }
    audit::append(
        tx,
        actor,
        &AuditEvent::success("keys.revoke", "api_key", key_id.as_str(), json!({})),
        now,
    )?;
    Ok(RevokedKey {
        id: key_id.clone(),
        revoked_at: now,
    })
}

/// Revokes every live key of `user` (when the user leaves the team); returns how many.
pub fn revoke_all_of_user(tx: &Transaction<'_>, user: &UserId, now: Timestamp) -> ApiResult<usize> {
    Ok(tx.execute(
        "UPDATE api_keys SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
        rusqlite::params![user, now],
    )?)
}
