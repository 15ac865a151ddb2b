//! Authentication and the values a passed check yields: the [`Principal`] behind a key, the
//! [`Grant`] a route's permission check makes of it, and the [`Write`] capability that every
//! mutation demands, made only after the caller's key and role are re-read inside the
//! mutation's own transaction.

use std::marker::PhantomData;
use std::ops::Deref;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rusqlite::{Connection, OptionalExtension, Transaction};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::clock::{SharedClock, Timestamp};
use crate::db::{Db, Tx};
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{KeyId, TargetId, TenantId, UserId};
use crate::state::AppState;

use super::perm::{Access, Executions, Permission};
use super::secret::{hash_secret, parse_api_key};
use super::{Actor, Role, Scope, Scopes};

/// `last_used_at` is refreshed at most this often, so authentication is a read, not a write.
pub const TOUCH_INTERVAL_MS: i64 = 60_000;

#[derive(Debug, Clone)]
enum KeyKind {
    /// A user's key. `None`: unrestricted, it may do whatever its user's role allows, now.
    User { scopes: Option<Scopes> },
    /// An agent access key: it works this `LOCAL_AGENT` target's execution queue and nothing else.
    Agent { target: TargetId },
}

/// The live key behind a request and its user. Made only by authentication; checked into a
/// [`Grant`] by a route's [`Permission`].
#[derive(Debug, Clone)]
pub struct Principal {
    tenant_id: TenantId,
    user_id: UserId,
    key_id: KeyId,
    role: Role,
    kind: KeyKind,
    request_id: Option<String>,
    client_request_id: Option<String>,
}

impl Principal {
    fn actor(&self) -> Actor {
        Actor {
            tenant_id: self.tenant_id.clone(),
            user_id: Some(self.user_id.clone()),
            key_id: Some(self.key_id.clone()),
            request_id: self.request_id.clone(),
            client_request_id: self.client_request_id.clone(),
        }
    }

    /// What the key may do now: its scopes within what its user's role allows.
    fn effective_scopes(&self) -> Scopes {
        match &self.kind {
            KeyKind::User { scopes } => {
                let allowed = Scopes::allowed_for(self.role);
                scopes.map_or(allowed, |s| s.intersect(allowed))
            }
            KeyKind::Agent { .. } => Scopes::only(Scope::Executions),
        }
    }

    pub(super) fn check_user(&self, min: Role, scope: Scope) -> ApiResult<()> {
        let KeyKind::User { scopes } = &self.kind else {
            return Err(ApiError::new(
                Code::AgentKeyForbidden,
                "an agent access key works its agent's execution queue only",
            ));
        };
        if !self.role.at_least(min) {
            return Err(insufficient_role(min, self.role));
        }
        if scopes.is_some_and(|s| !s.contains(scope)) {
            return Err(ApiError::new(
                Code::InsufficientScope,
                format!("this API key lacks the {} scope", scope.as_str()),
            )
            .with_details(json!({
                "requiredScope": scope.as_str(),
                "scopes": self.effective_scopes().names(),
            })));
        }
        Ok(())
    }

    pub(super) fn check_holder(&self) -> ApiResult<()> {
        match &self.kind {
            KeyKind::User { .. } => Ok(()),
            KeyKind::Agent { .. } => Err(ApiError::new(
                Code::AgentKeyForbidden,
                "an agent access key works its agent's execution queue only",
            )),
        }
    }

    pub(super) fn check_agent(&self) -> ApiResult<TargetId> {
        match &self.kind {
            KeyKind::Agent { target } => Ok(target.clone()),
            KeyKind::User { .. } => Err(ApiError::new(
                Code::AgentKeyRequired,
                "the execution queue is for agent access keys (POST /v1/keys with a targetId)",
            )),
        }
    }
}

fn insufficient_role(min: Role, role: Role) -> ApiError {
    ApiError::new(
        Code::InsufficientRole,
        format!("this action needs the {} role or higher", min.as_str()),
    )
    .with_details(json!({ "requiredRole": min.as_str(), "role": role.as_str() }))
}

/// Proof that the caller passed permission `P`'s check. Only the extractor makes one.
pub struct Grant<P: Permission> {
    principal: Principal,
    bound: P::Bound,
    now: Timestamp,
    /// Expiry is re-checked against the clock when the mutation runs, not when it arrived.
    clock: SharedClock,
    /// The key's request budget after this request (`None`: its plan sets no rate).
    rate: Option<crate::plans::RateState>,
    _p: PhantomData<fn() -> P>,
}

impl<P: Permission> Clone for Grant<P> {
    fn clone(&self) -> Self {
        Grant {
            principal: self.principal.clone(),
            bound: self.bound.clone(),
            now: self.now,
            clock: self.clock.clone(),
            rate: self.rate,
            _p: PhantomData,
        }
    }
}

impl<P: Permission> std::fmt::Debug for Grant<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("access", &P::ACCESS)
            .field("key", &self.principal.key_id)
            .finish()
    }
}

impl<P: Permission> Grant<P> {
    pub fn tenant(&self) -> &TenantId {
        &self.principal.tenant_id
    }

    pub fn user(&self) -> &UserId {
        &self.principal.user_id
    }

    pub fn key(&self) -> &KeyId {
        &self.principal.key_id
    }

    pub fn role(&self) -> Role {
        self.principal.role
    }

    /// When the request was authenticated; the time every effect of the request is stamped with.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    pub fn actor(&self) -> Actor {
        self.principal.actor()
    }

    /// What the calling key may do now.
    pub fn scopes(&self) -> Scopes {
        self.principal.effective_scopes()
    }

    /// The calling key's own scope list; `None` when it follows its user's role.
    pub fn key_scopes(&self) -> Option<Scopes> {
        match &self.principal.kind {
            KeyKind::User { scopes } => *scopes,
            KeyKind::Agent { .. } => Some(Scopes::only(Scope::Executions)),
        }
    }

    /// The key's request budget after this request.
    pub fn rate(&self) -> Option<crate::plans::RateState> {
        self.rate
    }

    /// Checks another permission for the same caller (a request whose body asks for more,
    /// such as a key bound to an agent). Write with the grant it returns (whose role is re-read
    /// in the transaction); never carry whether it passed into another grant's write, where a
    /// demotion committed in between would go unseen.
    pub fn also<Q: Permission>(&self) -> ApiResult<Grant<Q>> {
        Ok(Grant {
            bound: Q::bind(&self.principal)?,
            principal: self.principal.clone(),
            now: self.now,
            clock: self.clock.clone(),
            rate: self.rate,
            _p: PhantomData,
        })
    }

    /// Runs `f` in one write transaction with the [`Write`] capability, after re-reading inside
    /// that transaction that the key is still live and the role still suffices: a revocation
    /// or demotion that committed first wins.
    pub async fn write<T, F>(&self, db: &Db, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Write<'_, P>) -> ApiResult<T> + Send + 'static,
    {
        let grant = self.clone();
        db.write(move |tx| {
            let (role, key_expires) = recheck(tx, &grant.principal, P::ACCESS, grant.clock.now())?;
            let w = Write {
                tx,
                actor: grant.principal.actor(),
                role,
                key_expires,
                now: grant.now,
                bound: grant.bound,
                _p: PhantomData,
            };
            f(&w)
        })
        .await
    }
}

impl Grant<Executions> {
    /// The `LOCAL_AGENT` target the agent key works for.
    pub fn target(&self) -> &TargetId {
        &self.bound
    }
}

/// The capability to mutate under permission `P`: a write transaction, the actor it is
/// attributed to and the role re-read inside it. Every mutating store function takes one; it is
/// made only by [`Grant::write`] or, for the system itself, by [`Write::system`].
pub struct Write<'t, P: Permission> {
    tx: &'t Tx<'t>,
    actor: Actor,
    role: Role,
    /// When the acting key expires, as re-read in this transaction (`None`: never, or the
    /// system acts). A key it creates expires no later.
    key_expires: Option<Timestamp>,
    now: Timestamp,
    bound: P::Bound,
    _p: PhantomData<fn() -> P>,
}

impl<'t, P: Permission> Deref for Write<'t, P> {
    type Target = Transaction<'t>;

    fn deref(&self) -> &Transaction<'t> {
        self.tx
    }
}

impl<'t, P: Permission> Write<'t, P> {
    /// Runs `effect` once this mutation has committed, in commit order (see [`Tx::after_commit`]).
    pub fn after_commit(&self, effect: impl FnOnce() + Send + 'static) {
        self.tx.after_commit(effect);
    }

    /// The transaction this capability writes in.
    pub fn tx(&self) -> &'t Tx<'t> {
        self.tx
    }
}

impl<'t, P: Permission> Write<'t, P> {
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn tenant(&self) -> &TenantId {
        &self.actor.tenant_id
    }

    /// The acting user; `None` when the system acts.
    pub fn user(&self) -> Option<&UserId> {
        self.actor.user_id.as_ref()
    }

    /// The caller's role as re-read inside this transaction.
    pub fn role(&self) -> Role {
        self.role
    }

    /// When the acting key expires (`None`: it does not, or no key acts).
    pub fn key_expires_at(&self) -> Option<Timestamp> {
        self.key_expires
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The same transaction and actor under another permission, for a consequence the first
    /// change entails (a governance change releasing the runs it unblocks, a removed member's
    /// keys being revoked). Only a holder of a capability can derive one.
    pub fn entails<Q: Permission<Bound = ()>>(&self) -> Write<'t, Q> {
        Write {
            tx: self.tx,
            actor: self.actor.clone(),
            role: self.role,
            key_expires: self.key_expires,
            now: self.now,
            bound: (),
            _p: PhantomData,
        }
    }
}

impl<'t, P: Permission<Bound = ()>> Write<'t, P> {
    /// The system acting on its own behalf in `tenant`: background jobs, bootstrap, and an
    /// invitation being accepted (its token is the credential). Nothing a request controls
    /// reaches this; the `system_capability_is_confined` test keeps it to those places.
    pub(crate) fn system(tx: &'t Tx<'t>, tenant: TenantId, now: Timestamp) -> Self {
        Write {
            tx,
            actor: Actor::system(tenant),
            role: Role::Owner,
            key_expires: None,
            now,
            bound: (),
            _p: PhantomData,
        }
    }
}

impl<'t, P: Permission<Bound = ()>> Write<'t, P> {
    /// A new member acting through the invitation token they redeem (the token is the
    /// credential); confined like [`Write::system`].
    pub(crate) fn by_invitation(
        tx: &'t Tx<'t>,
        tenant: TenantId,
        user: UserId,
        now: Timestamp,
    ) -> Self {
        let mut w = Write::system(tx, tenant, now);
        w.actor.user_id = Some(user);
        w.role = Role::Viewer;
        w
    }
}

impl<'t, P: Permission<Bound = ()>> Write<'t, P> {
    /// A member acting through a device authorization they approved (the device code is the
    /// credential), with their role as re-read in this transaction and the key they approved
    /// with (still live, its expiry as re-read): what is made here is that key's child.
    /// Confined like [`Write::system`].
    pub(crate) fn by_device_grant(
        tx: &'t Tx<'t>,
        tenant: TenantId,
        user: UserId,
        role: Role,
        approver: (KeyId, Option<Timestamp>),
        now: Timestamp,
    ) -> Self {
        let mut w = Write::system(tx, tenant, now);
        w.actor.user_id = Some(user);
        w.actor.key_id = Some(approver.0);
        w.key_expires = approver.1;
        w.role = role;
        w
    }
}

impl<'t, P: Permission<Bound = ()>> Write<'t, P> {
    /// The capability to record that `actor` was refused: confined like [`Write::system`].
    pub(crate) fn recording_refusal(tx: &'t Tx<'t>, actor: Actor, now: Timestamp) -> Self {
        let mut w = Write::system(tx, actor.tenant_id.clone(), now);
        w.actor = actor;
        w.role = Role::Viewer;
        w
    }
}

impl Write<'_, Executions> {
    pub fn target(&self) -> &TargetId {
        &self.bound
    }
}

/// Re-reads the key and its user inside a write transaction.
fn recheck(
    tx: &Transaction<'_>,
    principal: &Principal,
    access: Access,
    now: Timestamp,
) -> ApiResult<(Role, Option<Timestamp>)> {
    /// Revoked, expires, removed, role.
    type Live = (
        Option<Timestamp>,
        Option<Timestamp>,
        Option<Timestamp>,
        Role,
    );
    let row: Option<Live> = tx
        .prepare_cached(
            "SELECT k.revoked_at, k.expires_at, u.removed_at, u.role
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?1",
        )?
        .query_row([&principal.key_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((revoked, expires, removed, role)) = row else {
        return Err(ApiError::unauthorized("unknown or revoked API key"));
    };
    if revoked.is_some() || removed.is_some() {
        return Err(ApiError::unauthorized(
            "this API key was revoked while the request was in flight",
        ));
    }
    if expires.is_some_and(|e| e <= now) {
        return Err(key_expired(expires));
    }
    if let Access::User { role: min, .. } = access
        && !role.at_least(min)
    {
        return Err(insufficient_role(min, role));
    }
    Ok((role, expires))
}

fn key_expired(at: Option<Timestamp>) -> ApiError {
    ApiError::new(
        Code::KeyExpired,
        "this API key has expired; create a new one",
    )
    .with_details(json!({ "expiredAt": at }))
}

/// The API key of a request: `x-api-key`, or `Authorization: Bearer`.
fn presented_key(parts: &Parts) -> ApiResult<&str> {
    if let Some(v) = parts.headers.get("x-api-key") {
        return v
            .to_str()
            .map(str::trim)
            .map_err(|_| ApiError::unauthorized("the x-api-key header is not valid text"));
    }
    if let Some(v) = parts.headers.get(AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
        let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized(
                "the Authorization header must use the Bearer scheme",
            ));
        }
        return Ok(token.trim());
    }
    Err(ApiError::unauthorized(
        "missing API key: send it in x-api-key or Authorization: Bearer",
    ))
}

/// A key found by its lookup handle whose hash matched, with when it was last marked used.
#[derive(Clone)]
struct Found {
    principal: Principal,
    /// The stored SHA-256 of the key, which a presented key must match.
    hash: Vec<u8>,
    last_used_at: Option<Timestamp>,
    expires_at: Option<Timestamp>,
    /// False for a revoked key, or one whose user has left: known, but refused.
    live: bool,
}

/// Finds the live key whose lookup handle and hash match `raw`, and its active user.
fn lookup(conn: &Connection, lookup: &str, raw: &str) -> ApiResult<Option<Found>> {
    let found = key_row(conn, "k.lookup", lookup)?;
    Ok(found.filter(|f| bool::from(f.hash.as_slice().ct_eq(&hash_secret(raw)))))
}

/// The key whose `column` (`k.lookup` or `k.id`) is `value`, with its user.
fn key_row(conn: &Connection, column: &str, value: &str) -> ApiResult<Option<Found>> {
    type Row = (
        KeyId,
        Vec<u8>,
        Option<Timestamp>,
        Option<Timestamp>,
        Option<String>,
        Option<TargetId>,
        UserId,
        TenantId,
        Role,
        bool,
    );
    let row: Option<Row> = conn
        .prepare_cached(&format!(
            "SELECT k.id, k.hash, k.last_used_at, k.expires_at, k.scopes, k.target_id,
                    u.id, u.tenant_id, u.role,
                    k.revoked_at IS NULL AND u.removed_at IS NULL
             FROM api_keys k JOIN users u ON u.id = k.user_id
             WHERE {column} = ?1"
        ))?
        .query_row([value], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })
        .optional()?;
    let Some((
        key_id,
        hash,
        last_used_at,
        expires_at,
        scopes,
        target,
        user_id,
        tenant_id,
        role,
        live,
    )) = row
    else {
        return Ok(None);
    };
    let kind = match (target, scopes) {
        (Some(target), _) => KeyKind::Agent { target },
        (None, None) => KeyKind::User { scopes: None },
        (None, Some(s)) => KeyKind::User {
            scopes: Some(Scopes::from_column(&s).ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("api_keys row {key_id}: bad scopes {s:?}"))
            })?),
        },
    };
    Ok(Some(Found {
        hash,
        principal: Principal {
            tenant_id,
            user_id,
            key_id,
            role,
            kind,
            request_id: None,
            client_request_id: None,
        },
        last_used_at,
        expires_at,
        live,
    }))
}

fn touch(tx: &Transaction<'_>, key_id: &KeyId, now: Timestamp) -> ApiResult<()> {
    crate::db::exec(
        tx,
        "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
        rusqlite::params![key_id, now],
    )?;
    Ok(())
}

/// The id the caller gave the request, if any (see `http::CLIENT_REQUEST_ID`).
pub fn client_request_id(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get("x-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub fn request_id(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A refused request, and who made it when the key they presented is known (even revoked or
/// expired), so the refusal can be audited.
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    pub by: Option<Actor>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal { error, by: None }
    }
}

/// Who was refused and why, carried on the response for the layer that audits refused
/// mutations.
#[derive(Debug, Clone)]
pub struct RefusedCaller {
    pub actor: Actor,
    pub code: &'static str,
}

impl axum::response::IntoResponse for Refusal {
    fn into_response(self) -> axum::response::Response {
        let code = self.error.code.as_str();
        let mut response = self.error.into_response();
        if let Some(actor) = self.by {
            response
                .extensions_mut()
                .insert(RefusedCaller { actor, code });
        }
        response
    }
}

/// Authenticates the request's key: 401 `unauthorized` for a missing, malformed, unknown or
/// revoked key, 401 `key_expired` for an expired one.
/// Keys authenticated recently, so a request needs no database read to know its caller. An entry
/// is trusted only within the authentication epoch it was read in: a committed revocation,
/// demotion or removal moves the epoch, and every entry is read afresh.
#[derive(Default)]
pub struct KeyCache(std::sync::Mutex<std::collections::HashMap<String, (u64, Found)>>);

/// Entries kept at most; past that the cache starts over.
const KEY_CACHE_ENTRIES: usize = 10_000;

impl KeyCache {
    fn get(&self, handle: &str, epoch: u64, presented: &[u8; 32]) -> Option<Found> {
        let entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, found) = entries.get(handle)?;
        let same = bool::from(found.hash.as_slice().ct_eq(presented));
        (*at == epoch && same).then(|| found.clone())
    }

    fn put(&self, handle: String, epoch: u64, found: Found) {
        let mut entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= KEY_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(handle, (epoch, found));
    }

    fn touched(&self, handle: &str, now: Timestamp) {
        let mut entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, found)) = entries.get_mut(handle) {
            found.last_used_at = Some(now);
        }
    }
}

/// The key behind `raw`: from the cache, or read (and cached) with the epoch seen before the read.
async fn find_key(state: &AppState, raw: &str, handle: &str) -> ApiResult<Option<Found>> {
    let presented = hash_secret(raw);
    let epoch = state.db.auth_epoch();
    if let Some(found) = state.keys.get(handle, epoch, &presented) {
        return Ok(Some(found));
    }
    let (r, h) = (raw.to_owned(), handle.to_owned());
    let found = state.db.read(move |conn| lookup(conn, &h, &r)).await?;
    if let Some(f) = &found {
        state.keys.put(handle.to_owned(), epoch, f.clone());
    }
    Ok(found)
}

async fn authenticate(
    parts: &Parts,
    state: &AppState,
    now: Timestamp,
) -> Result<Principal, Refusal> {
    let raw = presented_key(parts)?;
    let ids = (request_id(parts), client_request_id(parts));
    authenticate_raw(state, raw, ids, now).await
}

/// The live key a person typed or a client presented, as [`authenticate`] checks a request's.
async fn authenticate_raw(
    state: &AppState,
    raw: &str,
    (request_id, client_request_id): (Option<String>, Option<String>),
    now: Timestamp,
) -> Result<Principal, Refusal> {
    let Some(parsed) = parse_api_key(raw) else {
        return Err(ApiError::unauthorized("malformed API key").into());
    };
    let found = find_key(state, parsed.raw, parsed.lookup)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
    let principal = Principal {
        request_id,
        client_request_id,
        ..found.principal
    };
    let refuse = |error: ApiError| Refusal {
        error,
        by: Some(principal.actor()),
    };
    if !found.live {
        return Err(refuse(ApiError::unauthorized("unknown or revoked API key")));
    }
    if found.expires_at.is_some_and(|e| e <= now) {
        return Err(refuse(key_expired(found.expires_at)));
    }
    if found
        .last_used_at
        .is_none_or(|t| now.millis() - t.millis() >= TOUCH_INTERVAL_MS)
    {
        let key_id = principal.key_id.clone();
        state.db.write(move |tx| touch(tx, &key_id, now)).await?;
        state.keys.touched(parsed.lookup, now);
    }
    Ok(principal)
}

impl<P: Permission> FromRequestParts<AppState> for Grant<P> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        let now = state.clock.now();
        // A refusal costs the caller as much as an answer: a known key's (revoked, expired,
        // lacking the permission) is charged to that key's budget before it is refused, an
        // unknown or missing key to the client's address. Past the budget the answer is 429,
        // which is not audited: a flood of refusals must not become a flood of audit rows.
        let principal = match authenticate(parts, state, now).await {
            Ok(p) => p,
            Err(refusal) => return Err(charge_refusal(state, parts, refusal)),
        };
        let bound = match P::bind(&principal) {
            Ok(b) => b,
            Err(error) => {
                let refusal = Refusal {
                    error,
                    by: Some(principal.actor()),
                };
                return Err(charge_refusal(state, parts, refusal));
            }
        };
        let expensive = parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .is_some_and(|m| crate::plans::is_expensive(&parts.method, m.as_str()));
        let rate = state
            .plans
            .check_key(&principal.tenant_id, &principal.key_id, expensive)?;
        Ok(Grant {
            bound,
            principal,
            now,
            clock: state.clock.clone(),
            rate,
            _p: PhantomData,
        })
    }
}

/// Charges a refused request to its key's budget (a known key) or its client's address (none,
/// or an unknown one); a budget spent turns the refusal into a 429.
fn charge_refusal(state: &AppState, parts: &Parts, refusal: Refusal) -> Refusal {
    let charged = match &refusal.by {
        Some(actor) => match &actor.key_id {
            Some(key) => state
                .plans
                .check_key(&actor.tenant_id, key, false)
                .map(|_| ()),
            None => Ok(()),
        },
        None => {
            let addr = crate::http::extract::ClientAddr::of(&parts.extensions).0;
            state.plans.check_address(addr)
        }
    };
    match charged {
        Ok(()) => refusal,
        Err(limited) => Refusal::from(limited),
    }
}

impl<P: Permission> Grant<P> {
    fn checked(principal: Principal, state: &AppState, now: Timestamp) -> ApiResult<Grant<P>> {
        let bound = P::bind(&principal)?;
        Ok(Grant {
            bound,
            principal,
            now,
            clock: state.clock.clone(),
            rate: None,
            _p: PhantomData,
        })
    }

    /// The grant of an API key a person typed into a page (the device verification page signs
    /// in with one), checked against `P` as a request's key would be.
    pub async fn for_typed_key(state: &AppState, raw: &str) -> ApiResult<Grant<P>> {
        let now = state.clock.now();
        let principal = authenticate_raw(state, raw.trim(), (None, None), now)
            .await
            .map_err(|r| r.error)?;
        Grant::checked(principal, state, now)
    }

    /// The same caller checked again now: the key still live and unexpired, its user still a
    /// member, and `P` still allowed by their role. Returns when the key expires. For work that
    /// outlives its request (an export stream re-checks between pages).
    pub async fn still_allowed(&self, state: &AppState) -> ApiResult<Option<Timestamp>> {
        let now = state.clock.now();
        let id = self.principal.key_id.as_str().to_owned();
        let found = state
            .db
            .read(move |c| key_row(c, "k.id", &id))
            .await?
            .filter(|f| f.live)
            .ok_or_else(|| ApiError::unauthorized("this API key was revoked"))?;
        if found.expires_at.is_some_and(|e| e <= now) {
            return Err(key_expired(found.expires_at));
        }
        P::bind(&found.principal)?;
        Ok(found.expires_at)
    }

    /// The grant of the key a page session was signed in with: the session token (held by the
    /// caller, checked by it) stands for the key, which must still be live.
    pub async fn for_session_key(state: &AppState, key: &KeyId) -> ApiResult<Grant<P>> {
        let now = state.clock.now();
        let id = key.as_str().to_owned();
        let found = state
            .db
            .read(move |c| key_row(c, "k.id", &id))
            .await?
            .filter(|f| f.live)
            .ok_or_else(|| {
                ApiError::unauthorized("the key this session signed in with was revoked")
            })?;
        if found.expires_at.is_some_and(|e| e <= now) {
            return Err(key_expired(found.expires_at));
        }
        Grant::checked(found.principal, state, now)
    }
}
