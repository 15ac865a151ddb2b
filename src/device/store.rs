//! Device authorization SQL and its transitions: a request is stored with only the hash of its
//! device code; a person approves or denies it by its user code; the first poll after approval
//! creates the key in its own transaction (so no key is ever stored to be handed out later) and
//! the request becomes `issued`. Page sessions are stored as hashes of their tokens.

use rusqlite::{Connection, OptionalExtension, named_params};
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::perm::KeysWrite;
use crate::auth::{Grant, Role, Scopes, Write, hash_secret};
use crate::clock::Timestamp;
use crate::db::{Decoded, Tx};
use crate::error::{ApiError, ApiResult};
use crate::ids::{DeviceGrantId, KeyId, TenantId, UserId};
use crate::keys::model::{KeyName, NewKey};

/// Where a device request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Approved,
    Denied,
    Issued,
}

impl State {
    fn parse(s: &str) -> Option<State> {
        Some(match s {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "denied" => State::Denied,
            "issued" => State::Issued,
            _ => return None,
        })
    }
}

/// A device request as stored.
#[derive(Debug, Clone)]
pub struct DeviceGrant {
    pub id: DeviceGrantId,
    pub user_code: String,
    pub client_id: String,
    /// Requested; `None`: whatever the approving person's key may do.
    pub scopes: Option<Scopes>,
    pub state: State,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub interval_ms: i64,
    pub last_poll_at: Option<Timestamp>,
    pub tenant_id: Option<TenantId>,
    pub user_id: Option<UserId>,
    pub approved_scopes: Option<Scopes>,
    /// The address the request came from, shown to the person asked to approve it.
    pub requested_from: Option<String>,
    /// The key the person approved with: the issued key is its child.
    pub approver_key_id: Option<KeyId>,
}

const COLUMNS: &str = "id, user_code, client_id, scopes, state, created_at, expires_at,
    interval_ms, last_poll_at, tenant_id, user_id, approved_scopes, requested_from,
    approver_key_id";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceGrant> {
    let d = Decoded::new(r, "device_grants", 0)?;
    let state: String = d.get(4)?;
    let scopes = |raw: Option<String>| raw.as_deref().and_then(Scopes::from_column);
    Ok(DeviceGrant {
        id: d.get(0)?,
        user_code: d.get(1)?,
        client_id: d.get(2)?,
        scopes: scopes(d.get(3)?),
        state: State::parse(&state)
            .ok_or_else(|| crate::db::unknown_value("device grant state", &state))?,
        created_at: d.get(5)?,
        expires_at: d.get(6)?,
        interval_ms: d.get(7)?,
        last_poll_at: d.get(8)?,
        tenant_id: d.get(9)?,
        user_id: d.get(10)?,
        approved_scopes: scopes(d.get(11)?),
        requested_from: d.get(12)?,
        approver_key_id: d.get(13)?,
    })
}

/// Stores a new request; false if its user code is taken by another pending request (the
/// caller draws another). Requests that expired a day ago are dropped on the way.
#[allow(clippy::too_many_arguments)]
pub fn insert(
    tx: &Tx<'_>,
    device_code: &str,
    user_code: &str,
    client_id: &str,
    scopes: Option<Scopes>,
    now: Timestamp,
    expires_at: Timestamp,
    interval_ms: i64,
    requested_from: Option<&str>,
) -> ApiResult<bool> {
    crate::db::exec(
        tx,
        "DELETE FROM device_grants WHERE expires_at < ?1",
        [now.plus_ms(-86_400_000)],
    )?;
    crate::db::exec(
        tx,
        "DELETE FROM device_sessions WHERE expires_at < ?1",
        [now],
    )?;
    let inserted = crate::db::exec(
        tx,
        "INSERT INTO device_grants (id, device_hash, user_code, client_id, scopes, state,
             created_at, expires_at, interval_ms, requested_from)
         VALUES (:id, :hash, :code, :client, :scopes, 'pending', :now, :expires, :interval,
             :from)
         ON CONFLICT DO NOTHING",
        named_params! {
            ":id": DeviceGrantId::generate(), ":hash": hash_secret(device_code).as_slice(),
            ":code": user_code, ":client": client_id, ":scopes": scopes.map(Scopes::to_column),
            ":now": now, ":expires": expires_at, ":interval": interval_ms,
            ":from": requested_from,
        },
    )?;
    Ok(inserted == 1)
}

pub fn by_device_code(conn: &Connection, device_code: &str) -> ApiResult<Option<DeviceGrant>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM device_grants WHERE device_hash = ?1"
        ))?
        .query_row([hash_secret(device_code).as_slice()], from_row)
        .optional()?)
}

/// The pending, unexpired request with this (normalised) user code.
pub fn pending_by_user_code(
    conn: &Connection,
    user_code: &str,
    now: Timestamp,
) -> ApiResult<Option<DeviceGrant>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM device_grants
             WHERE user_code = ?1 AND state = 'pending' AND expires_at > ?2"
        ))?
        .query_row(rusqlite::params![user_code, now], from_row)
        .optional()?)
}

/// What one poll of the token endpoint gets.
pub enum Poll {
    Pending,
    SlowDown,
    Denied,
    Expired,
    /// Used already, or its approver can no longer issue keys.
    Invalid(&'static str),
    Issued {
        key: String,
        key_id: KeyId,
        scopes: Scopes,
        expires_at: Option<Timestamp>,
    },
}

/// One poll: too soon after the last (by the request's interval) is `slow_down` and the
/// interval grows by five seconds from then on; an approved request issues its key now, once.
pub fn poll(tx: &Tx<'_>, device_code: &str, now: Timestamp) -> ApiResult<Option<Poll>> {
    let Some(g) = by_device_code(tx, device_code)? else {
        return Ok(None);
    };
    if g.state == State::Issued {
        return Ok(Some(Poll::Invalid(
            "this device code was already exchanged for a key",
        )));
    }
    if now >= g.expires_at {
        return Ok(Some(Poll::Expired));
    }
    let too_soon = g
        .last_poll_at
        .is_some_and(|at| now.millis() - at.millis() < g.interval_ms);
    let interval = if too_soon {
        g.interval_ms + 5_000
    } else {
        g.interval_ms
    };
    crate::db::exec(
        tx,
        "UPDATE device_grants SET last_poll_at = ?2, interval_ms = ?3 WHERE id = ?1",
        rusqlite::params![g.id, now, interval],
    )?;
    Ok(Some(match g.state {
        State::Denied => Poll::Denied,
        State::Pending if too_soon => Poll::SlowDown,
        State::Pending => Poll::Pending,
        State::Approved => issue(tx, &g, now)?,
        State::Issued => unreachable!("handled above"),
    }))
}

/// Creates the approved key as its approver, with the approved scopes within what their role
/// allows now (re-read here: a demotion or removal since the approval wins), as a child of the
/// key they approved with: that key must still be live, and the new key expires no later.
fn issue(tx: &Tx<'_>, g: &DeviceGrant, now: Timestamp) -> ApiResult<Poll> {
    let (Some(tenant), Some(user)) = (g.tenant_id.clone(), g.user_id.clone()) else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "approved device grant {} without its approver",
            g.id
        )));
    };
    let role: Option<(Role, Option<Timestamp>)> = tx
        .prepare_cached("SELECT role, removed_at FROM users WHERE id = ?1 AND tenant_id = ?2")?
        .query_row(rusqlite::params![user, tenant], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((role, None)) = role else {
        return Ok(Poll::Invalid(
            "the person who approved this device left the team",
        ));
    };
    let scopes = g
        .approved_scopes
        .unwrap_or_default()
        .intersect(Scopes::allowed_for(role));
    if scopes.is_empty() {
        return Ok(Poll::Invalid(
            "the approver's role no longer allows any of the approved scopes",
        ));
    }
    let Some(approver_key) = g.approver_key_id.clone() else {
        return Ok(Poll::Invalid(
            "this device was approved before keys recorded their parent; approve it again",
        ));
    };
    let approver: Option<(Option<Timestamp>, Option<Timestamp>)> = tx
        .prepare_cached(
            "SELECT revoked_at, expires_at FROM api_keys WHERE id = ?1 AND user_id = ?2",
        )?
        .query_row(rusqlite::params![approver_key, user], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let expires = match approver {
        Some((None, expires)) if expires.is_none_or(|e| e > now) => expires,
        _ => {
            return Ok(Poll::Invalid(
                "the key that approved this device was revoked or has expired",
            ));
        }
    };
    let w = Write::<KeysWrite>::by_device_grant(
        tx,
        tenant,
        user.clone(),
        role,
        (approver_key, expires),
        now,
    );
    let name = KeyName::parse(&g.client_id)?;
    let created = crate::keys::store::create(
        &w,
        &user,
        role,
        &name,
        None,
        &NewKey::User(Some(scopes)),
        None,
    )?;
    crate::db::exec(
        tx,
        "UPDATE device_grants SET state = 'issued', key_id = ?2 WHERE id = ?1",
        rusqlite::params![g.id, created.view.id],
    )?;
    audit::append(
        &w,
        &AuditEvent::success(
            "auth.device.issue",
            "device_grant",
            g.id.as_str(),
            json!({ "clientId": g.client_id, "keyId": created.view.id, "scopes": scopes.names() }),
        ),
    )?;
    Ok(Poll::Issued {
        key: created.key,
        key_id: created.view.id,
        scopes,
        expires_at: created.view.expires_at,
    })
}

/// A person's decision on a pending request, with the scopes their key can grant of those
/// asked for. `None` when no pending request has this user code.
pub fn decide(
    w: &Write<'_, KeysWrite>,
    user_code: &str,
    approve: bool,
    grantable: Scopes,
) -> ApiResult<Option<(DeviceGrant, Scopes)>> {
    let Some(g) = pending_by_user_code(w, user_code, w.now())? else {
        return Ok(None);
    };
    let granted = g.scopes.unwrap_or(grantable).intersect(grantable);
    if approve && granted.is_empty() {
        return Err(ApiError::new(
            crate::error::Code::InsufficientScope,
            "your key cannot grant any of the scopes this device asks for",
        ));
    }
    let state = if approve { "approved" } else { "denied" };
    crate::db::exec(
        w,
        "UPDATE device_grants SET state = :state, tenant_id = :tenant, user_id = :user,
             approved_scopes = :scopes, decided_at = :now, approver_key_id = :key
         WHERE id = :id AND state = 'pending'",
        named_params! {
            ":state": state, ":tenant": w.tenant(), ":user": w.user(),
            ":scopes": approve.then(|| granted.to_column()), ":now": w.now(), ":id": g.id,
            ":key": w.actor().key_id,
        },
    )?;
    let requested = g.scopes.map(Scopes::names);
    audit::append(
        w,
        &AuditEvent::success(
            "auth.device.request",
            "device_grant",
            g.id.as_str(),
            json!({ "clientId": g.client_id, "requestedScopes": requested,
                    "requestedAt": g.created_at, "requestedFrom": g.requested_from }),
        ),
    )?;
    let (action, detail) = if approve {
        (
            "auth.device.approve",
            json!({ "clientId": g.client_id, "scopes": granted.names() }),
        )
    } else {
        ("auth.device.deny", json!({ "clientId": g.client_id }))
    };
    audit::append(
        w,
        &AuditEvent::success(action, "device_grant", g.id.as_str(), detail),
    )?;
    Ok(Some((g, granted)))
}

/// A page session: the key it signed in with.
#[derive(Debug, Clone)]
pub struct Session {
    pub key_id: KeyId,
    pub user_id: UserId,
}

/// Opens a session for the grant's key; the token is kept by the browser only.
pub fn open_session(
    tx: &Tx<'_>,
    grant: &Grant<KeysWrite>,
    token: &str,
    expires_at: Timestamp,
) -> ApiResult<()> {
    crate::db::exec(
        tx,
        "INSERT INTO device_sessions (token_hash, tenant_id, user_id, key_id, created_at,
             expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            hash_secret(token).as_slice(),
            grant.tenant(),
            grant.user(),
            grant.key(),
            grant.now(),
            expires_at
        ],
    )?;
    Ok(())
}

pub fn session(conn: &Connection, token: &str, now: Timestamp) -> ApiResult<Option<Session>> {
    Ok(conn
        .prepare_cached(
            "SELECT key_id, user_id FROM device_sessions WHERE token_hash = ?1 AND expires_at > ?2",
        )?
        .query_row(rusqlite::params![hash_secret(token).as_slice(), now], |r| {
            let d = Decoded::new(r, "device_sessions", 0)?;
            Ok(Session {
                key_id: d.get(0)?,
                user_id: d.get(1)?,
            })
        })
        .optional()?)
}

pub fn close_session(tx: &Tx<'_>, token: &str) -> ApiResult<()> {
    crate::db::exec(
        tx,
        "DELETE FROM device_sessions WHERE token_hash = ?1",
        [hash_secret(token).as_slice()],
    )?;
    Ok(())
}
