//! Extractors that turn a request into validated values or a JSON 4xx: the JSON body, the query
//! string, typed ids from the path, and paging parameters. (The caller is extracted by
//! [`crate::auth::Grant`].)

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{ApprovalId, ExecutionId, InvitationId, KeyId, MemoryId, RunId, TargetId, UserId};

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

/// Typed ids from the path, in order: `Ids<RunId>`, `Ids<(RunId, ApprovalId)>`. A segment that
/// is not a well-formed id of its kind names nothing that exists: 404.
pub struct Ids<T>(pub T);

pub trait FromPathSegments: Sized {
    fn from_segments(segments: &[&str]) -> ApiResult<Self>;
}

macro_rules! path_id {
    ($($id:ty),*) => {$(
        impl FromPathSegments for $id {
            fn from_segments(segments: &[&str]) -> ApiResult<Self> {
                segments
                    .first()
                    .and_then(|s| <$id>::parse(s))
                    .ok_or_else(|| ApiError::not_found(<$id>::NOUN))
            }
        }
    )*};
}

path_id!(
    ApprovalId,
    ExecutionId,
    InvitationId,
    KeyId,
    MemoryId,
    RunId,
    TargetId,
    UserId
);

impl<A: FromPathSegments, B: FromPathSegments> FromPathSegments for (A, B) {
    fn from_segments(segments: &[&str]) -> ApiResult<Self> {
        let a = A::from_segments(segments)?;
        let b = B::from_segments(segments.get(1..).unwrap_or_default())?;
        Ok((a, b))
    }
}

impl<T: FromPathSegments, S: Send + Sync> FromRequestParts<S> for Ids<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::new(Code::NotFound, "not found"))?;
        let segments: Vec<&str> = params.iter().map(|(_, v)| v).collect();
        T::from_segments(&segments).map(Ids)
    }
}

/// Paging: every list checks `limit` and `offset` here, with one rule and one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub limit: u32,
    pub offset: u32,
}

/// Offsets beyond this are refused: deep offset paging scans everything before the page.
pub const MAX_OFFSET: u32 = 10_000;

impl Paging {
    /// `limit` (1 to `max`, `default` when absent) and `offset` (0 to [`MAX_OFFSET`]).
    pub fn new(
        limit: Option<u32>,
        offset: Option<u32>,
        default: u32,
        max: u32,
    ) -> ApiResult<Paging> {
        Ok(Paging {
            limit: limit_within(limit, default, max)?,
            offset: match offset {
                None => 0,
                Some(n) if n <= MAX_OFFSET => n,
                Some(_) => {
                    return Err(ApiError::field(
                        "offset",
                        format!("must be a whole number from 0 to {MAX_OFFSET}"),
                    ));
                }
            },
        })
    }

    /// The same from query-string text.
    pub fn from_query(
        limit: Option<&str>,
        offset: Option<&str>,
        default: u32,
        max: u32,
    ) -> ApiResult<Paging> {
        Paging::new(
            query_number("limit", limit, max)?,
            query_number("offset", offset, MAX_OFFSET)?,
            default,
            max,
        )
    }
}

/// A `limit` from 1 to `max`; `default` when absent.
pub fn limit_within(limit: Option<u32>, default: u32, max: u32) -> ApiResult<u32> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(limit_error(max)),
    }
}

fn limit_error(max: u32) -> ApiError {
    ApiError::field("limit", format!("must be a whole number from 1 to {max}"))
}

/// A whole number from a query string.
pub fn query_number(field: &str, raw: Option<&str>, max: u32) -> ApiResult<Option<u32>> {
    raw.map(|s| {
        s.trim().parse::<u32>().map_err(|_| {
            if field == "limit" {
                limit_error(max)
            } else {
                ApiError::field(field, format!("must be a whole number from 0 to {max}"))
            }
        })
    })
    .transpose()
}

/// Optional text a client sends (a note, a worker id, a progress message): trimmed, empty taken
/// as absent, longer than `max` characters refused with 400 naming the field and the limit —
/// never cut short.
pub fn bounded_text(field: &str, raw: Option<String>, max: usize) -> ApiResult<Option<String>> {
    let Some(text) = raw.map(|s| s.trim().to_owned()) else {
        return Ok(None);
    };
    let chars = text.chars().count();
    if chars > max {
        return Err(ApiError::field(
            field,
            format!("must be at most {max} characters; got {chars}"),
        ));
    }
    Ok((!text.is_empty()).then_some(text))
}

/// Like [`bounded_text`], for a field that must be present and not empty.
pub fn required_text(field: &str, raw: String, max: usize) -> ApiResult<String> {
    bounded_text(field, Some(raw), max)?.ok_or_else(|| ApiError::field(field, "must not be empty"))
}

/// The address of the client: the connection's peer, or (when the peer is one of the
/// operator's `--trusted-proxies`) the nearest untrusted address in `X-Forwarded-For`. The
/// per-address limits of unauthenticated endpoints and the device page key on it. Resolved once
/// per request by the layer in `http` (see [`resolve_client`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl ClientAddr {
    pub fn of(extensions: &axum::http::Extensions) -> ClientAddr {
        ClientAddr(
            extensions
                .get::<ClientAddr>()
                .and_then(|c| c.0)
                .or_else(|| {
                    extensions
                        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                        .map(|c| c.0.ip())
                }),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr::of(&parts.extensions))
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy, in which case the
/// right-most address of `X-Forwarded-For` that is not a trusted proxy (each proxy appends the
/// address it received from; only the part our own proxies wrote can be believed).
pub fn resolve_client(
    peer: std::net::IpAddr,
    forwarded: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<std::net::IpAddr> = forwarded
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}
