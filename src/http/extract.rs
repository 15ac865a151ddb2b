//! Extractors that turn a request into validated values or a JSON 4xx: the JSON body, the query
//! string, and the authenticated [`Principal`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::{Principal, parse_api_key};
use crate::error::{ApiError, Code};
use crate::keys::store as key_store;
use crate::state::AppState;

/// A JSON body, deserialized strictly: every failure names the field at fault.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
            });
        if !is_json {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(Code::PayloadTooLarge, "request body too large")
                } else {
                    ApiError::new(Code::MalformedJson, format!("could not read body: {e}"))
                }
            })?;
        parse_json(&bytes).map(Json)
    }
}

/// Deserializes `bytes`, mapping serde's error to a code and the path of the offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| path_error(e, ""))
}

/// Deserializes one element of a larger body; field names are reported under `prefix`
/// (`memories[3].`).
pub fn parse_value<T: DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| path_error(e, prefix))
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let message = inner.to_string();
    let (code, field) = classify(&inner, &message, &path);
    let mut err = ApiError::new(code, format!("{prefix}{message}"));
    if let Some(field) = field {
        err = err.with_details(json!({ "field": format!("{prefix}{field}") }));
    }
    err
}

fn classify(e: &serde_json::Error, message: &str, path: &str) -> (Code, Option<String>) {
    use serde_json::error::Category;
    let quoted = |msg: &str, marker: &str| -> Option<String> {
        let rest = msg.split(marker).nth(1)?;
        let name = rest.split('`').nth(1)?;
        Some(name.to_owned())
    };
    let at = |name: Option<String>| -> Option<String> {
        match (path, name) {
            (".", n) | ("", n) => n,
            (p, Some(n)) => Some(format!("{p}.{n}")),
            (p, None) => Some(p.to_owned()),
        }
    };
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => (Code::MalformedJson, None),
        Category::Data => {
            if message.starts_with("missing field") {
                (Code::MissingField, at(quoted(message, "missing field")))
            } else if message.starts_with("unknown field") {
                let name = quoted(message, "unknown field");
                let field = match path.rsplit_once('.') {
                    Some((parent, _)) if !parent.is_empty() => {
                        name.map(|n| format!("{parent}.{n}"))
                    }
                    _ => name,
                };
                (Code::UnknownField, field)
            } else {
                (Code::InvalidField, at(None))
            }
        }
    }
}

/// A query string deserialized into `T`, unknown parameters rejected.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::new(Code::InvalidField, e.body_text()))
    }
}

/// The API key of a request: `x-api-key`, or `Authorization: Bearer`.
fn presented_key(parts: &Parts) -> Result<&str, ApiError> {
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

pub fn request_id(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let raw = presented_key(parts)?;
        let Some(parsed) = parse_api_key(raw) else {
            return Err(ApiError::unauthorized("malformed API key"));
        };
        let (raw, lookup) = (parsed.raw.to_owned(), parsed.lookup.to_owned());
        let now = state.clock.now();
        let request_id = request_id(parts);
        let found = state
            .db
            .read(move |conn| key_store::authenticate(conn, &lookup, &raw))
            .await?;
        let Some(found) = found else {
            return Err(ApiError::unauthorized("unknown or revoked API key"));
        };
        if found.needs_touch(now) {
            let key_id = found.principal.key_id.clone();
            state
                .db
                .write(move |tx| key_store::touch(tx, &key_id, now))
                .await?;
        }
        Ok(Principal {
            request_id,
            ..found.principal
        })
    }
}
