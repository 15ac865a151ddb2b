//! API key SQL: creating (only the SHA-256 of the secret is stored), listing masked, revoking.
//! Authentication reads these rows too, in `auth`.

use std::collections::HashMap;

use rusqlite::{Connection, named_params};
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::{
    API_KEY_PREFIX, Permission, Role, Scopes, Write, generate_secret, hash_secret, last4, mask_key,
    parse_api_key,
};
use crate::clock::Timestamp;
use crate::db::Decoded;
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{KeyId, TargetId, TenantId, UserId};

use super::model::{CreatedKey, KeyKind, KeyName, KeyView, NewKey, RevokedKey, effective_scopes};

/// Creates a key for `user` in the capability's tenant (a random one, or `chosen` when an
/// operator supplies it) and audits it. Returns the raw value, which is never stored. The key's
/// user holds `role` (for the scopes shown). A key made by a key is its child: it records its
/// parent and expires no later than it (absent `expires_at`: when the parent does; a later one
/// is refused, 400 naming the parent's expiry).
pub fn create<P: Permission>(
    w: &Write<'_, P>,
    user: &UserId,
    role: Role,
    name: &KeyName,
    chosen: Option<&str>,
    new: &NewKey,
    expires_at: Option<Timestamp>,
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
    let now = w.now();
    let scopes = new.scopes_column();
    let parent = w.actor().key_id.clone();
    let expires_at = capped_expiry(w.key_expires_at(), expires_at)?;
    crate::db::exec(
        w,
        "INSERT INTO api_keys (id, tenant_id, user_id, name, lookup, hash, last4, created_at,
             target_id, scopes, expires_at, parent_key_id)
         VALUES (:id, :tenant, :user, :name, :lookup, :hash, :last4, :now, :target, :scopes,
             :expires, :parent)",
        named_params! {
            ":id": id, ":tenant": w.tenant(), ":user": user, ":name": name.as_str(),
            ":lookup": parsed.lookup, ":hash": hash_secret(&raw).as_slice(), ":last4": last4(&raw),
            ":now": now, ":target": new.target(), ":scopes": scopes, ":expires": expires_at,
            ":parent": parent,
        },
    )
    .map_err(|e| {
        crate::db::unique_violation_as(
            e,
            Code::KeyExists,
            "an API key with this value already exists",
        )
    })?;
    let kind = match new {
        NewKey::User(_) => KeyKind::User,
        NewKey::Agent(_) => KeyKind::Agent,
    };
    let stored = scopes.as_deref().and_then(Scopes::from_column);
    let view = KeyView {
        id,
        name: name.as_str().to_owned(),
        user_id: user.clone(),
        masked_key: mask_key(parsed.lookup, last4(&raw)),
        kind,
        target_id: new.target().cloned(),
        scopes: effective_scopes(kind, stored, role).names(),
        restricted: stored.is_some(),
        expires_at,
        created_at: now,
        last_used_at: None,
        parent_key_id: parent,
    };
    audit::append(
        w,
        &AuditEvent::success(
            "keys.create",
            "api_key",
            view.id.as_str(),
            json!({ "name": view.name, "userId": user, "targetId": view.target_id,
                    "scopes": scopes, "expiresAt": expires_at, "parentKeyId": view.parent_key_id }),
        ),
    )?;
    Ok(CreatedKey { view, key: raw })
}

/// A derived key's expiry: no later than its parent's.
fn capped_expiry(
    parent: Option<Timestamp>,
    asked: Option<Timestamp>,
) -> ApiResult<Option<Timestamp>> {
    match (parent, asked) {
        (None, asked) => Ok(asked),
        (Some(p), None) => Ok(Some(p)),
        (Some(p), Some(a)) if a <= p => Ok(Some(a)),
        (Some(p), Some(_)) => Err(ApiError::field(
            "expiresAt",
            format!("must not be later than the expiry of the key that creates it ({p})"),
        )
        .with_details(json!({ "field": "expiresAt", "parentExpiresAt": p }))),
    }
}

/// The live keys of one user (who holds `role`), newest first.
pub fn list(
    conn: &Connection,
    tenant: &TenantId,
    user: &UserId,
    role: Role,
) -> ApiResult<Vec<KeyView>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, user_id, lookup, last4, created_at, last_used_at, target_id, scopes,
                expires_at, parent_key_id
         FROM api_keys
         WHERE tenant_id = ?1 AND user_id = ?2 AND revoked_at IS NULL
         ORDER BY created_at DESC, id DESC",
    )?;
    let keys = stmt
        .query_map(rusqlite::params![tenant, user], |r| {
            let d = Decoded::new(r, "api_keys", 0)?;
            let lookup: String = d.get(3)?;
            let last4: String = d.get(4)?;
            let target_id: Option<TargetId> = d.get(7)?;
            let kind = if target_id.is_some() {
                KeyKind::Agent
            } else {
                KeyKind::User
            };
            let stored: Option<String> = d.get(8)?;
            let stored = match stored {
                None => None,
                Some(s) => Some(d.parsed(8, "scope list", |_| Scopes::from_column(&s))?),
            };
            Ok(KeyView {
                id: d.get(0)?,
                name: d.get(1)?,
                user_id: d.get(2)?,
                masked_key: mask_key(&lookup, &last4),
                kind,
                target_id,
                scopes: effective_scopes(kind, stored, role).names(),
                restricted: stored.is_some() && matches!(kind, KeyKind::User),
                expires_at: d.get(9)?,
                created_at: d.get(5)?,
                last_used_at: d.get(6)?,
                parent_key_id: d.get(10)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(keys)
}

/// Revokes one of the acting user's own live keys and, with `cascade`, every live key made from
/// it, from those, and so on. Another user's key, or one already revoked, is not found.
pub fn revoke<P: Permission>(
    w: &Write<'_, P>,
    key_id: &KeyId,
    cascade: bool,
) -> ApiResult<RevokedKey> {
    let now = w.now();
    let changed = crate::db::exec(
        w,
        "UPDATE api_keys SET revoked_at = :now
         WHERE id = :id AND tenant_id = :tenant AND user_id = :user AND revoked_at IS NULL",
        named_params! { ":now": now, ":id": key_id, ":tenant": w.tenant(), ":user": w.user() },
    )?;
    if changed == 0 {
        return Err(ApiError::not_found("API key"));
    }
    w.tx().auth_changed();
    let descendants = if cascade {
        revoke_descendants(w, key_id)?
    } else {
        Vec::new()
    };
    audit::append(
        w,
        &AuditEvent::success(
            "keys.revoke",
            "api_key",
            key_id.as_str(),
            json!({ "cascade": cascade, "revokedDescendants": descendants }),
        ),
    )?;
    Ok(RevokedKey {
        id: key_id.clone(),
        revoked_at: now,
        revoked_descendants: descendants,
    })
}

/// Revokes the live keys descended from `key_id` in the capability's tenant; returns them.
fn revoke_descendants<P: Permission>(w: &Write<'_, P>, key_id: &KeyId) -> ApiResult<Vec<KeyId>> {
    let mut stmt = w.prepare_cached(
        "WITH RECURSIVE below(id) AS (
             SELECT id FROM api_keys WHERE parent_key_id = ?1 AND tenant_id = ?2
             UNION SELECT k.id FROM api_keys k JOIN below b ON k.parent_key_id = b.id
         )
         UPDATE api_keys SET revoked_at = ?3
         WHERE id IN (SELECT id FROM below) AND tenant_id = ?2 AND revoked_at IS NULL
         RETURNING id",
    )?;
    let ids = stmt
        .query_map(rusqlite::params![key_id, w.tenant(), w.now()], |r| r.get(0))?
        .collect::<Result<Vec<KeyId>, _>>()?;
    Ok(ids)
}

/// Revokes every live key of `user` (when the user leaves the team); returns how many.
pub fn revoke_all_of_user<P: Permission>(w: &Write<'_, P>, user: &UserId) -> ApiResult<usize> {
    w.tx().auth_changed();
    Ok(crate::db::exec(
        w,
        "UPDATE api_keys SET revoked_at = ?3 WHERE user_id = ?1 AND tenant_id = ?2
           AND revoked_at IS NULL",
        rusqlite::params![user, w.tenant(), w.now()],
    )?)
}

/// Revokes the agent access keys bound to `target` and unbinds them (the target is being
/// deleted); returns how many were live.
pub fn revoke_bound_to<P: Permission>(w: &Write<'_, P>, target: &TargetId) -> ApiResult<usize> {
    w.tx().auth_changed();
    let live = crate::db::exec(
        w,
        "UPDATE api_keys SET revoked_at = ?3 WHERE target_id = ?1 AND tenant_id = ?2
           AND revoked_at IS NULL",
        rusqlite::params![target, w.tenant(), w.now()],
    )?;
    crate::db::exec(
        w,
        "UPDATE api_keys SET target_id = NULL WHERE target_id = ?1 AND tenant_id = ?2",
        rusqlite::params![target, w.tenant()],
    )?;
    Ok(live)
}

/// When each target's live agent access keys were last used (the latest of them; `None` if
/// none has been): a worker polling its queue shows here, to the touch interval.
pub fn bound_last_used(
    conn: &Connection,
    tenant: &TenantId,
    now: Timestamp,
) -> ApiResult<HashMap<TargetId, Option<Timestamp>>> {
    let rows = conn
        .prepare_cached(
            "SELECT target_id, MAX(last_used_at) FROM api_keys
             WHERE tenant_id = ?1 AND target_id IS NOT NULL AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > ?2)
             GROUP BY target_id",
        )?
        .query_map(rusqlite::params![tenant, now], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Live agent access keys per target of a tenant.
pub fn bound_counts(conn: &Connection, tenant: &TenantId) -> ApiResult<HashMap<TargetId, i64>> {
    let rows = conn
        .prepare_cached(
            "SELECT target_id, COUNT(*) FROM api_keys
             WHERE tenant_id = ?1 AND target_id IS NOT NULL AND revoked_at IS NULL
             GROUP BY target_id",
        )?
        .query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
