//! The client side of device authorization, exactly as RFC 8628 (and RFC 6749 §5 for errors)
//! says: form-encoded bodies (JSON accepted too), `{"error", "error_description"}` bodies, no
//! caching. And what any user key may do about itself: `whoami`, `logout`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::perm::Holder;
use crate::auth::{Grant, Scope, Scopes};
use crate::error::ApiResult;
use crate::http::extract::ClientAddr;
use crate::state::AppState;

use super::store::{self, Poll};
use super::{display_user_code, new_user_code};

/// The grant type of RFC 8628 §3.4.
pub const DEVICE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An OAuth error answer: `{"error", "error_description"}`, not cached.
pub struct OAuthError {
    status: StatusCode,
    error: String,
    description: String,
    basic_challenge: bool,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> OAuthError {
    OAuthError {
        status,
        error: error.to_owned(),
        description: description.to_owned(),
        basic_challenge: false,
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "error_description": self.description });
        let mut r = (self.status, axum::Json(body)).into_response();
        no_store(r.headers_mut());
        if self.basic_challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"memesh\""),
            );
        }
        r
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

fn ok(body: Value) -> Response {
    let mut r = axum::Json(body).into_response();
    no_store(r.headers_mut());
    r
}

/// A request's parameters: `application/x-www-form-urlencoded` as the RFC says, or a JSON
/// object of strings. A parameter given twice is an error (RFC 6749 §3.2).
fn params(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let bad = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", why);
    let pairs: Vec<(String, String)> = if json {
        let v: serde_json::Map<String, Value> =
            serde_json::from_slice(body).map_err(|_| bad("the body is not a JSON object"))?;
        v.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(bad(&format!("{k} must be a string"))),
            })
            .collect::<Result<_, _>>()?
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|_| bad("the body is not application/x-www-form-urlencoded"))?
    };
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(seen, _)| seen == k) {
            return Err(bad(&format!("{k} is given more than once")));
        }
    }
    Ok(pairs)
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The client id of an `Authorization: Basic` header (a public client sends an empty secret).
fn basic_client(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let id = text.split_once(':').map_or(text.as_str(), |(id, _)| id);
    // RFC 6749 §2.3.1: the id is form-encoded inside the header.
    let id: Vec<(String, String)> = serde_urlencoded::from_str(&format!("id={id}")).ok()?;
    id.into_iter().next().map(|(_, v)| v)
}

/// The client asking: its `client_id` parameter, or its Basic credentials.
fn client_id(headers: &HeaderMap, pairs: &[(String, String)]) -> Option<String> {
    param(pairs, "client_id")
        .map(str::to_owned)
        .or_else(|| basic_client(headers))
}

/// Where people approve: the configured public URL, else this request's host.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.settings.device.public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// RFC 6749 §5.2: 401 with a challenge when the client authenticated by Basic, else 400.
fn unknown_client(headers: &HeaderMap) -> OAuthError {
    let basic = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"Basic "));
    let mut e = oauth_error(
        if basic {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        },
        "invalid_client",
        "unknown client_id; this server accepts the clients its operator configured (--device-clients)",
    );
    e.basic_challenge = basic;
    e
}

/// `scope`: space-separated key scopes. None asked for: `memory:read memory:write`, what an
/// agent's memory client needs (never "everything the approver's key may do").
fn requested_scopes(raw: Option<&str>) -> Result<Option<Scopes>, OAuthError> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Ok(Some(
            Scopes::only(Scope::MemoryRead).union(Scopes::only(Scope::MemoryWrite)),
        ));
    };
    let mut set = Scopes::EMPTY;
    for name in raw.split(' ').filter(|n| !n.is_empty()) {
        match Scope::parse(name).filter(|s| s.min_role().is_some()) {
            Some(s) => set = set.union(Scopes::only(s)),
            None => {
                return Err(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    &format!(
                        "unknown scope {name:?}; known scopes: {}",
                        Scopes::allowed_for(crate::auth::Role::Owner)
                            .names()
                            .join(" ")
                    ),
                ));
            }
        }
    }
    Ok(Some(set))
}

/// `POST /v1/auth/device {client_id, scope?}` (RFC 8628 §3.1–3.2).
pub async fn authorize(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    if let Err(e) = state.plans.check_address(addr) {
        return Ok(e.into_response());
    }
    let pairs = params(&headers, &body)?;
    let Some(client) = client_id(&headers, &pairs) else {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "client_id is required",
        ));
    };
    if !state.settings.device.clients.contains(&client) {
        return Err(unknown_client(&headers));
    }
    let scopes = requested_scopes(param(&pairs, "scope"))?;
    let device = &state.settings.device;
    let ttl = i64::try_from(device.code_ttl.as_millis()).unwrap_or(i64::MAX);
    let interval = i64::try_from(device.interval.as_millis()).unwrap_or(5_000);
    let now = state.clock.now();
    let device_code = crate::auth::generate_secret("mdc_");
    let code = device_code.clone();
    let client_for_db = client.clone();
    let from = addr.map(|a| a.to_string());
    let stored = state
        .db
        .write(move |tx| {
            // A user code already pending is drawn again (20^8 codes: rarely twice).
            for _ in 0..8 {
                let user_code = new_user_code();
                if store::insert(
                    tx,
                    &code,
                    &user_code,
                    &client_for_db,
                    scopes,
                    now,
                    now.plus_ms(ttl),
                    interval,
                    from.as_deref(),
                )? {
                    return Ok(Some(user_code));
                }
            }
            Ok(None)
        })
        .await;
    let user_code = match stored {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => {
            return Err(oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "could not start a device authorization now; try again",
            ));
        }
    };
    tracing::info!(client = %client, "device authorization requested");
    let shown = display_user_code(&user_code);
    let base = base_url(&state, &headers);
    Ok(ok(json!({
        "device_code": device_code,
        "user_code": shown,
        "verification_uri": format!("{base}/device"),
        "verification_uri_complete": format!("{base}/device?user_code={shown}"),
        "expires_in": ttl / 1000,
        "interval": interval / 1000,
    })))
}

/// `POST /v1/auth/device/token {grant_type, device_code}` (RFC 8628 §3.4–3.5).
pub async fn token(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    if let Err(e) = state.plans.check_address(addr) {
        return Ok(e.into_response());
    }
    let pairs = params(&headers, &body)?;
    match param(&pairs, "grant_type") {
        Some(DEVICE_GRANT_TYPE) => {}
        Some(_) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("this endpoint serves grant_type {DEVICE_GRANT_TYPE} only"),
            ));
        }
        None => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            ));
        }
    }
    let Some(device_code) = param(&pairs, "device_code").map(str::to_owned) else {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "device_code is required",
        ));
    };
    // RFC 8628 §3.4: a public client identifies itself on every poll.
    let Some(client) = client_id(&headers, &pairs) else {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id is required",
        ));
    };
    if !state.settings.device.clients.contains(&client) {
        return Err(unknown_client(&headers));
    }
    let now = state.clock.now();
    let polled = state
        .db
        .write(move |tx| {
            // A code issued to another client is refused before it is counted as a poll.
            if let Some(g) = store::by_device_code(tx, &device_code)?
                && client != g.client_id
            {
                return Ok(Some(Poll::Invalid(
                    "this device code was issued to another client",
                )));
            }
            store::poll(tx, &device_code, now)
        })
        .await;
    let bad =
        |error: &str, description: &str| oauth_error(StatusCode::BAD_REQUEST, error, description);
    let answer = match polled {
        Err(e) => {
            tracing::error!(error = %e, "device token poll failed");
            oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again",
            )
        }
        Ok(None) => bad("invalid_grant", "unknown device code"),
        Ok(Some(Poll::Pending)) => bad(
            "authorization_pending",
            "the person has not approved this device yet",
        ),
        Ok(Some(Poll::SlowDown)) => bad(
            "slow_down",
            "polled faster than the interval; wait 5 seconds more between polls from now on",
        ),
        Ok(Some(Poll::Denied)) => bad("access_denied", "the person denied this device"),
        Ok(Some(Poll::Expired)) => bad(
            "expired_token",
            "the device code expired; start again with POST /v1/auth/device",
        ),
        Ok(Some(Poll::Invalid(why))) => bad("invalid_grant", why),
        Ok(Some(Poll::Issued {
            key,
            key_id,
            scopes,
            expires_at,
        })) => {
            let mut body = json!({
                "access_token": key,
                "token_type": "Bearer",
                "scope": scopes.to_column(),
                "key_id": key_id,
            });
            if let Some(at) = expires_at {
                body["expires_in"] = json!((at.millis() - now.millis()).max(0) / 1000);
            }
            return Ok(ok(body));
        }
    };
    Err(answer)
}

/// `GET /v1/auth/whoami`: whose key this is and what it may do.
pub async fn whoami(
    grant: Grant<Holder>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let (tenant, user) = (grant.tenant().clone(), grant.user().clone());
    let (email, tenant_name) = state
        .db
        .read(move |c| crate::team::store::member_label(c, &tenant, &user))
        .await?;
    Ok(axum::Json(json!({
        "userId": grant.user(),
        "email": email,
        "tenantId": grant.tenant(),
        "tenantName": tenant_name,
        "role": grant.role().as_str(),
        "keyId": grant.key(),
        "scopes": grant.scopes().names(),
        "restricted": grant.key_scopes().is_some(),
        "embeddingModel": state.memory.model_id(),
    })))
}

/// The body of `logout`: nothing, or `{}`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutBody {}

/// `POST /v1/auth/logout` (body: none or `{}`): the key revokes itself.
pub async fn logout(
    grant: Grant<Holder>,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<axum::Json<Value>> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        crate::http::extract::parse_json::<LogoutBody>(&body)?;
    }
    let key = grant.key().clone();
    let revoked = grant
        .write(&state.db, move |w| {
            crate::keys::store::revoke(w, &key, true)
        })
        .await?;
    Ok(axum::Json(json!(revoked)))
}
