//! `/device`: the page a person opens to approve a device. Server-rendered HTML with no script
//! and no external assets (it works offline); its one stylesheet is served beside it. The person
//! signs in with one of their API keys (which must carry `keys:write`: approving creates a key),
//! which opens a session held in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` and
//! `__Host-` prefixed when the public URL is https); the sign-in form carries a CSRF token
//! matched against a cookie of its own, every later form one derived from the session itself,
//! and a foreign `Origin` is refused. The key is checked before any user code is looked at (no
//! code oracle before sign-in); requests are limited per client address, and wrong user codes
//! are counted per address and per session ([`super::Guesses`]).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::auth::perm::KeysWrite;
use crate::auth::{Grant, Scopes, generate_secret, hash_secret};
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::state::AppState;

use super::store::{self, DeviceGrant};
use super::{display_user_code, normalize_user_code};

const SESSION_COOKIE: &str = "memesh_device_session";
const CSRF_COOKIE: &str = "memesh_device_csrf";
/// The same cookies' names when the page is served over https: `__Host-` makes browsers refuse
/// them unless set `Secure`, for `Path=/`, by this very host (no cookie planted by a sibling).
const SECURE_SESSION_COOKIE: &str = "__Host-memesh_device_session";
const SECURE_CSRF_COOKIE: &str = "__Host-memesh_device_csrf";
/// A page session lasts an hour.
const SESSION_MS: i64 = 3_600_000;
/// Largest form accepted.
const MAX_FORM_BYTES: usize = 16 * 1024;

const STYLE: &str = include_str!("style.css");

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// What a request to the page carries: cookies, the client's address, the form or query.
struct Visit {
    session_token: Option<String>,
    /// The sign-in form's token (double-submitted with its cookie).
    csrf: String,
    /// A CSRF cookie to set (the visitor had none).
    new_csrf: bool,
    address: String,
    /// Served over https (`--public-url https://…`): cookies are `Secure` and `__Host-`.
    secure: bool,
}

/// The CSRF token of a signed-in session's forms: derived from the session token, so a token
/// planted in a cookie by someone else cannot match it.
fn session_csrf(session_token: &str) -> String {
    hex::encode(&hash_secret(&format!("csrf:{session_token}"))[..16])
}

impl Visit {
    fn read(state: &AppState, headers: &HeaderMap, addr: Option<std::net::IpAddr>) -> Visit {
        let secure = state
            .settings
            .device
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        let (session_name, csrf_name) = if secure {
            (SECURE_SESSION_COOKIE, SECURE_CSRF_COOKIE)
        } else {
            (SESSION_COOKIE, CSRF_COOKIE)
        };
        let cookie = |name: &str| -> Option<String> {
            headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
                .filter(|v| !v.is_empty() && v.len() <= 128)
        };
        let existing = cookie(csrf_name);
        Visit {
            session_token: cookie(session_name),
            new_csrf: existing.is_none(),
            csrf: existing.unwrap_or_else(|| generate_secret("")),
            address: addr.map_or_else(
                || "unknown".into(),
                |a| crate::plans::per_network(a).to_string(),
            ),
            secure,
        }
    }

    /// The token this visit's forms carry: the session's own once signed in.
    fn form_csrf(&self) -> String {
        match &self.session_token {
            Some(t) => session_csrf(t),
            None => self.csrf.clone(),
        }
    }

    fn session_cookie(&self) -> &'static str {
        if self.secure {
            SECURE_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        }
    }

    /// A `Set-Cookie` value with the attributes every cookie of the page carries.
    fn cookie(&self, value: &str) -> String {
        if self.secure {
            format!("{value}; Path=/; Secure; HttpOnly; SameSite=Strict")
        } else {
            format!("{value}; Path=/device; HttpOnly; SameSite=Strict")
        }
    }

    /// Who a wrong code counts against: the address, and the session if there is one.
    fn guessers(&self) -> Vec<String> {
        let mut who = vec![format!("ip:{}", self.address)];
        if let Some(t) = &self.session_token {
            who.push(format!("session:{}", hex::encode(&hash_secret(t)[..8])));
        }
        who
    }
}

/// The signed-in person, if the session cookie names a live session of a live key.
struct SignedIn {
    grant: Grant<KeysWrite>,
    email: String,
    tenant_name: String,
}

async fn signed_in(state: &AppState, visit: &Visit) -> Option<SignedIn> {
    let token = visit.session_token.clone()?;
    let now = state.clock.now();
    let session = state
        .db
        .read(move |c| store::session(c, &token, now))
        .await
        .ok()??;
    let grant = Grant::<KeysWrite>::for_session_key(state, &session.key_id)
        .await
        .ok()?;
    let (tenant, user) = (grant.tenant().clone(), session.user_id.clone());
    let (email, tenant_name) = state
        .db
        .read(move |c| crate::team::store::member_label(c, &tenant, &user))
        .await
        .ok()?;
    Some(SignedIn {
        grant,
        email,
        tenant_name,
    })
}

/// A page: the security headers every page carries, the CSRF cookie when new, `extra` cookies.
fn page(
    status: StatusCode,
    visit: &Visit,
    title: &str,
    content: &str,
    extra: &[String],
) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · memesh</title>\n<link rel=\"stylesheet\" href=\"/device/style.css\">\n\
         </head>\n<body>\n<main>\n<p class=\"brand\">memesh</p>\n<h1>{title}</h1>\n{content}\n\
         </main>\n</body>\n</html>\n",
        title = esc(title)
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    if visit.new_csrf {
        let name = if visit.secure {
            SECURE_CSRF_COOKIE
        } else {
            CSRF_COOKIE
        };
        set_cookie(
            h,
            &visit.cookie(&format!("{name}={}; Max-Age=86400", visit.csrf)),
        );
    }
    for c in extra {
        set_cookie(h, &visit.cookie(c));
    }
    r
}

fn set_cookie(h: &mut HeaderMap, full: &str) {
    if let Ok(v) = HeaderValue::from_str(full) {
        h.append(header::SET_COOKIE, v);
    }
}

fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: under `no-referrer` browsers send `Origin: null` with
    // the page's own forms, which the origin check below would refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn message(kind: &str, text: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!(
        "<p class=\"message {kind}\" role=\"{role}\">{}</p>",
        esc(text)
    )
}

fn csrf_field(visit: &Visit) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&visit.form_csrf())
    )
}

fn sign_in_view(visit: &Visit, code: &str, note: Option<&str>) -> String {
    format!(
        "<p>A program on another machine (a CLI or an MCP client) asked to connect to your \
         memesh account. Enter the code it shows and sign in with one of your API keys to \
         review what it asks for.</p>\n{note}\
         <form method=\"post\" action=\"/device\">\n{csrf}\n\
         <input type=\"hidden\" name=\"action\" value=\"signin\">\n\
         <label for=\"user_code\">Code shown by the program</label>\n\
         <input id=\"user_code\" name=\"user_code\" value=\"{code}\" autocomplete=\"off\" \
         autocapitalize=\"characters\" spellcheck=\"false\" required placeholder=\"XXXX-XXXX\">\n\
         <label for=\"api_key\">Your API key</label>\n\
         <input id=\"api_key\" name=\"api_key\" type=\"password\" autocomplete=\"off\" required \
         placeholder=\"mk_…\">\n\
         <p class=\"hint\">The key must be allowed to create keys (scope <code>keys:write</code>). \
         It is not stored; it opens a session on this page for an hour.</p>\n\
         <button type=\"submit\">Sign in and continue</button>\n</form>",
        note = note.map(|n| message("error", n)).unwrap_or_default(),
        csrf = csrf_field(visit),
        code = esc(code),
    )
}

fn who_view(who: &SignedIn, visit: &Visit) -> String {
    format!(
        "<form method=\"post\" action=\"/device\" class=\"who\">{csrf}\
         <input type=\"hidden\" name=\"action\" value=\"signout\">\
         <span>Signed in as <strong>{email}</strong> ({role}) in <strong>{tenant}</strong></span> \
         <button type=\"submit\" class=\"link\">Sign out</button></form>",
        csrf = csrf_field(visit),
        email = esc(&who.email),
        role = who.grant.role().as_str(),
        tenant = esc(&who.tenant_name),
    )
}

fn enter_code_view(who: &SignedIn, visit: &Visit, note: Option<&str>) -> String {
    format!(
        "{who}\n{note}<form method=\"get\" action=\"/device\">\n\
         <label for=\"user_code\">Code shown by the program</label>\n\
         <input id=\"user_code\" name=\"user_code\" autocomplete=\"off\" \
         autocapitalize=\"characters\" spellcheck=\"false\" required placeholder=\"XXXX-XXXX\">\n\
         <button type=\"submit\">Continue</button>\n</form>",
        who = who_view(who, visit),
        note = note.map(|n| message("error", n)).unwrap_or_default(),
    )
}

fn confirm_view(who: &SignedIn, visit: &Visit, g: &DeviceGrant) -> String {
    let grantable = who.grant.scopes();
    let asked = g.scopes.unwrap_or(grantable);
    let items: String = asked
        .iter()
        .map(|s| {
            let ok = grantable.contains(s);
            format!(
                "<li class=\"{}\"><code>{}</code>{}</li>",
                if ok { "grant" } else { "refuse" },
                s.as_str(),
                if ok {
                    ""
                } else {
                    " — not granted: your key or role does not allow it"
                }
            )
        })
        .collect();
    let none = asked.intersect(grantable).is_empty();
    format!(
        "{who}\n<p>The program <strong>{client}</strong> asks for a new API key of yours. \
         Check that it shows the code <strong class=\"code\">{code}</strong>.</p>\n\
         <p>It would be able to:</p>\n<ul class=\"scopes\">{items}</ul>\n\
         {warning}\
         <form method=\"post\" action=\"/device\" class=\"decide\">\n{csrf}\n\
         <input type=\"hidden\" name=\"user_code\" value=\"{code}\">\n\
         <button type=\"submit\" name=\"action\" value=\"approve\"{disabled}>Approve</button>\n\
         <button type=\"submit\" name=\"action\" value=\"deny\" class=\"secondary\">Deny</button>\n\
         </form>\n<p class=\"hint\">Requested {at} from {from}; the code expires {expires}. \
         Approve only if you started this yourself, on a device you control: anyone who can \
         make you enter their code gets the key.</p>",
        who = who_view(who, visit),
        client = esc(&g.client_id),
        code = esc(&display_user_code(&g.user_code)),
        warning = if none {
            message(
                "error",
                "Your key cannot grant any of these scopes: deny, or sign in with another key.",
            )
        } else {
            String::new()
        },
        csrf = csrf_field(visit),
        disabled = if none { " disabled" } else { "" },
        at = g.created_at,
        from = esc(g.requested_from.as_deref().unwrap_or("an unknown address")),
        expires = g.expires_at,
    )
}

/// The per-address limit of the page (the same as the other unauthenticated endpoints).
fn address_limited(
    state: &AppState,
    visit: &Visit,
    addr: Option<std::net::IpAddr>,
) -> Option<Response> {
    let e = state.plans.check_address(addr).err()?;
    let retry = e
        .details
        .as_ref()
        .and_then(|d| d["retryAfterSeconds"].as_u64())
        .unwrap_or(1);
    let mut r = page(
        StatusCode::TOO_MANY_REQUESTS,
        visit,
        "Too many requests",
        &message(
            "error",
            &format!("Too many requests from your address. Try again in {retry} seconds."),
        ),
        &[],
    );
    if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Some(r)
}

fn too_many(visit: &Visit, until: Timestamp, now: Timestamp) -> Response {
    let wait = ((until.millis() - now.millis()) / 1000).max(1);
    let mut r = page(
        StatusCode::TOO_MANY_REQUESTS,
        visit,
        "Too many wrong codes",
        &message(
            "error",
            &format!(
                "Too many wrong codes were entered from here. Try again in {} minutes.",
                (wait + 59) / 60
            ),
        ),
        &[],
    );
    if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Looks up a typed code for the signed-in person (or anyone, when `who` is `None`), counting
/// a miss against the visitor. `Err` is the page to answer instead.
async fn find_code(
    state: &AppState,
    visit: &Visit,
    typed: &str,
) -> Result<Option<DeviceGrant>, Response> {
    let now = state.clock.now();
    let guessers = visit.guessers();
    if let Some(until) = state.device_guesses.blocked_until(&guessers, now) {
        return Err(too_many(visit, until, now));
    }
    let found = match normalize_user_code(typed) {
        Some(code) => state
            .db
            .read(move |c| store::pending_by_user_code(c, &code, now))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    if found.is_none() {
        state.device_guesses.wrong(&guessers, now);
    }
    Ok(found)
}

const NO_SUCH_CODE: &str =
    "That code is not recognised, or it expired. Check it, or start again on the device.";

/// `GET /device?user_code=`.
pub async fn show(State(state): State<AppState>, req: Request) -> Response {
    let addr = crate::http::extract::ClientAddr::of(req.extensions()).0;
    let visit = Visit::read(&state, req.headers(), addr);
    if let Some(limited) = address_limited(&state, &visit, addr) {
        return limited;
    }
    let typed: Option<String> = req.uri().query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "user_code")
            .map(|(_, v)| v)
    });
    let title = "Connect a device";
    let Some(who) = signed_in(&state, &visit).await else {
        let view = sign_in_view(&visit, typed.as_deref().unwrap_or(""), None);
        return page(StatusCode::OK, &visit, title, &view, &[]);
    };
    let Some(typed) = typed.filter(|t| !t.trim().is_empty()) else {
        return page(
            StatusCode::OK,
            &visit,
            title,
            &enter_code_view(&who, &visit, None),
            &[],
        );
    };
    match find_code(&state, &visit, &typed).await {
        Err(r) => r,
        Ok(Some(g)) => page(
            StatusCode::OK,
            &visit,
            "Approve this device?",
            &confirm_view(&who, &visit, &g),
            &[],
        ),
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            &visit,
            title,
            &enter_code_view(&who, &visit, Some(NO_SUCH_CODE)),
            &[],
        ),
    }
}

/// The host part of an origin or host value (`http://a:1` → `a:1`).
fn host_of(v: &str) -> &str {
    v.split_once("://")
        .map_or(v, |(_, h)| h)
        .trim_end_matches('/')
}

/// `POST /device`: `action` = `signin` | `approve` | `deny` | `signout`.
pub async fn act(State(state): State<AppState>, req: Request) -> Response {
    let addr = crate::http::extract::ClientAddr::of(req.extensions()).0;
    let headers = req.headers().clone();
    let visit = Visit::read(&state, &headers, addr);
    if let Some(limited) = address_limited(&state, &visit, addr) {
        return limited;
    }
    let forbidden = |why: &str| {
        page(
            StatusCode::FORBIDDEN,
            &visit,
            "Request refused",
            &message("error", &format!("{why} Reload the page and try again.")),
            &[],
        )
    };
    // A form posted from another site is refused by its Origin, and by the CSRF token.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && host_of(origin) != host
    {
        return forbidden("This form was sent from another site.");
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES).await else {
        return forbidden("The form is too large.");
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let sent = field("csrf");
    // Signed in: the token derived from the session. Not yet: the one double-submitted with
    // its cookie.
    let expected = visit.form_csrf();
    if (visit.session_token.is_none() && visit.new_csrf)
        || sent.is_empty()
        || !bool::from(sent.as_bytes().ct_eq(expected.as_bytes()))
    {
        return forbidden("The form's security token did not match.");
    }
    let title = "Connect a device";
    match field("action") {
        "signin" => sign_in(&state, &visit, field("api_key"), field("user_code")).await,
        "signout" => {
            if let Some(token) = visit.session_token.clone() {
                let _ = state
                    .db
                    .write(move |tx| store::close_session(tx, &token))
                    .await;
            }
            let view = format!(
                "{}{}",
                message("status", "You are signed out."),
                sign_in_view(&visit, "", None)
            );
            let gone = format!("{}=; Max-Age=0", visit.session_cookie());
            page(StatusCode::OK, &visit, title, &view, &[gone])
        }
        action @ ("approve" | "deny") => {
            let Some(who) = signed_in(&state, &visit).await else {
                let view = sign_in_view(
                    &visit,
                    field("user_code"),
                    Some("Your session ended; sign in again."),
                );
                return page(StatusCode::UNAUTHORIZED, &visit, title, &view, &[]);
            };
            decide(
                &state,
                &visit,
                &who,
                field("user_code"),
                action == "approve",
            )
            .await
        }
        _ => forbidden("Unknown action."),
    }
}

async fn sign_in(state: &AppState, visit: &Visit, key: &str, typed: &str) -> Response {
    let title = "Connect a device";
    // The key first: whether a user code exists is told only to someone signed in.
    let grant = match Grant::<KeysWrite>::for_typed_key(state, key).await {
        Ok(g) => g,
        Err(e) => {
            let why = refusal(&e);
            return page(
                StatusCode::UNAUTHORIZED,
                visit,
                title,
                &sign_in_view(visit, typed, Some(&why)),
                &[],
            );
        }
    };
    if !typed.trim().is_empty() {
        match find_code(state, visit, typed).await {
            Err(r) => return r,
            Ok(None) => {
                let view = sign_in_view(visit, typed, Some(NO_SUCH_CODE));
                return page(StatusCode::NOT_FOUND, visit, title, &view, &[]);
            }
            Ok(Some(_)) => {}
        }
    }
    let token = generate_secret("mds_");
    let expires = state.clock.now().plus_ms(SESSION_MS);
    let t = token.clone();
    if let Err(e) = state
        .db
        .write(move |tx| store::open_session(tx, &grant, &t, expires))
        .await
    {
        tracing::error!(error = %e, "could not open a device page session");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            visit,
            title,
            &message("error", "Could not sign you in right now; try again."),
            &[],
        );
    }
    let code = normalize_user_code(typed).map(|c| display_user_code(&c));
    let location = match code {
        Some(c) => format!("/device?user_code={c}"),
        None => "/device".to_owned(),
    };
    let mut r = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .body(Body::empty())
        .unwrap_or_default();
    let h = r.headers_mut();
    secure(h);
    let session = format!(
        "{}={token}; Max-Age={}",
        visit.session_cookie(),
        SESSION_MS / 1000
    );
    set_cookie(h, &visit.cookie(&session));
    r
}

/// Why a typed key was refused, for a person.
fn refusal(e: &ApiError) -> String {
    match e.code.as_str() {
        "insufficient_scope" => {
            "This key may not create keys: sign in with a key that carries keys:write.".into()
        }
        "agent_key_forbidden" => {
            "That is an agent access key; sign in with one of your own keys.".into()
        }
        "key_expired" => "That key has expired.".into(),
        _ => "That API key is not valid (mistyped, revoked or unknown).".into(),
    }
}

async fn decide(
    state: &AppState,
    visit: &Visit,
    who: &SignedIn,
    typed: &str,
    approve: bool,
) -> Response {
    let title = "Connect a device";
    if let Err(r) = find_code(state, visit, typed).await {
        return r;
    }
    let Some(code) = normalize_user_code(typed) else {
        return page(
            StatusCode::NOT_FOUND,
            visit,
            title,
            &enter_code_view(who, visit, Some(NO_SUCH_CODE)),
            &[],
        );
    };
    let grantable: Scopes = who.grant.scopes();
    let decided = who
        .grant
        .write(&state.db, move |w| {
            store::decide(w, &code, approve, grantable)
        })
        .await;
    match decided {
        Ok(Some((g, granted))) if approve => {
            let view = format!(
                "{}\n{}<p>It receives a key named <strong>{}</strong> with: <code>{}</code>. \
                 You can revoke it any time (<code>DELETE /v1/keys/…</code>, or <code>memesh logout</code> \
                 on that machine).</p>",
                who_view(who, visit),
                message(
                    "success",
                    "Approved. You can return to your device: it is signed in."
                ),
                esc(&g.client_id),
                esc(&granted.to_column()),
            );
            page(StatusCode::OK, visit, "Device approved", &view, &[])
        }
        Ok(Some(_)) => {
            let view = format!(
                "{}\n{}",
                who_view(who, visit),
                message("success", "Denied. The device gets no key.")
            );
            page(StatusCode::OK, visit, "Device denied", &view, &[])
        }
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            visit,
            title,
            &enter_code_view(who, visit, Some(NO_SUCH_CODE)),
            &[],
        ),
        Err(e) => {
            let view = format!("{}\n{}", who_view(who, visit), message("error", &e.message));
            let status = e.code.status();
            page(status, visit, title, &view, &[])
        }
    }
}

/// `GET /device/style.css`.
pub async fn style() -> Response {
    let mut r = STYLE.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
