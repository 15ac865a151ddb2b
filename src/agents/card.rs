//! A2A Agent Cards: validation against the A2A specification (the 1.0 shape with
//! `supportedInterfaces`, and the still-common 0.3 shape with `url` and `protocolVersion`), the
//! facts memesh keeps from a card, and fetching one from an agent.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult, Code};
use crate::outbound::{Outbound, OutboundError};

/// Bindings over HTTP that memesh can speak to (gRPC is valid A2A but not usable here).
const HTTP_BINDINGS: [&str; 2] = ["JSONRPC", "HTTP+JSON"];
const KNOWN_BINDINGS: [&str; 3] = ["JSONRPC", "HTTP+JSON", "GRPC"];
pub const WELL_KNOWN_PATH: &str = "/.well-known/agent-card.json";
/// The whole fetch of a card (connect, answer, body) ends within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CARD_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CardShape {
    #[serde(rename = "a2a-1.0")]
    V1,
    #[serde(rename = "a2a-0.3")]
    V03,
}

impl CardShape {
    pub fn as_str(self) -> &'static str {
        match self {
            CardShape::V1 => "a2a-1.0",
            CardShape::V03 => "a2a-0.3",
        }
    }
}

/// What memesh keeps from a valid card.
#[derive(Debug, Clone, PartialEq)]
pub struct CardFacts {
    pub shape: CardShape,
    pub protocol_version: String,
    pub endpoint_url: String,
    pub binding: String,
    pub streaming: bool,
    pub push_notifications: bool,
}

struct Problems(Vec<Value>);

impl Problems {
    fn add(&mut self, path: &str, problem: impl Into<String>) {
        self.0
            .push(json!({ "path": path, "problem": problem.into() }));
    }

    fn non_empty_string(&mut self, card: &Value, path: &str, field: &str) -> Option<String> {
        match card.get(field) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                self.add(&join(path, field), "must not be empty");
                None
            }
            Some(_) => {
                self.add(&join(path, field), "must be a string");
                None
            }
            None => {
                self.add(&join(path, field), "is required");
                None
            }
        }
    }

    fn string_list(&mut self, card: &Value, path: &str, field: &str, required_non_empty: bool) {
        match card.get(field) {
            Some(Value::Array(items)) => {
                if required_non_empty && items.is_empty() {
                    self.add(&join(path, field), "must not be empty");
                }
                for (i, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        self.add(&format!("{}[{i}]", join(path, field)), "must be a string");
                    }
                }
            }
            Some(_) => self.add(&join(path, field), "must be a list of strings"),
            None if required_non_empty => self.add(&join(path, field), "is required"),
            None => {}
        }
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.contains(char::is_whitespace)
    })
}

/// Validates `card` and returns the facts memesh keeps, or a 400 listing every problem found.
pub fn validate(card: &Value) -> ApiResult<CardFacts> {
    let mut p = Problems(Vec::new());
    if !card.is_object() {
        return Err(invalid(vec![
            json!({ "path": "", "problem": "an Agent Card is a JSON object" }),
        ]));
    }
    p.non_empty_string(card, "", "name");
    p.non_empty_string(card, "", "description");
    p.non_empty_string(card, "", "version");
    if !card.get("capabilities").is_some_and(Value::is_object) {
        p.add("capabilities", "is required and must be an object");
    }
    p.string_list(card, "", "defaultInputModes", true);
    p.string_list(card, "", "defaultOutputModes", true);
    match card.get("skills") {
        Some(Value::Array(skills)) if !skills.is_empty() => {
            for (i, skill) in skills.iter().enumerate() {
                let path = format!("skills[{i}]");
                if !skill.is_object() {
                    p.add(&path, "must be an object");
                    continue;
                }
                p.non_empty_string(skill, &path, "id");
                p.non_empty_string(skill, &path, "name");
                p.non_empty_string(skill, &path, "description");
                p.string_list(skill, &path, "tags", true);
            }
        }
        Some(Value::Array(_)) => p.add("skills", "must declare at least one skill"),
        Some(_) => p.add("skills", "must be a list of skills"),
        None => p.add("skills", "is required"),
    }
    let capabilities = card.get("capabilities");
    let flag = |name: &str| {
        capabilities
            .and_then(|c| c.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let (streaming, push_notifications) = (flag("streaming"), flag("pushNotifications"));

    let interface = if card.get("supportedInterfaces").is_some() {
        v1_interface(card, &mut p)
    } else if card.get("url").is_some() || card.get("protocolVersion").is_some() {
        v03_interface(card, &mut p)
    } else {
        p.add(
            "supportedInterfaces",
            "is required (A2A 1.0); an A2A 0.3 card has url and protocolVersion instead",
        );
        None
    };
    match (p.0.is_empty(), interface) {
        (true, Some((shape, endpoint_url, binding, protocol_version))) => Ok(CardFacts {
            shape,
            protocol_version,
            endpoint_url,
            binding,
            streaming,
            push_notifications,
        }),
        _ => Err(invalid(p.0)),
    }
}

/// The first usable HTTP interface of a 1.0 card: (shape, url, binding, protocol version).
fn v1_interface(card: &Value, p: &mut Problems) -> Option<(CardShape, String, String, String)> {
    let Some(Value::Array(interfaces)) = card.get("supportedInterfaces") else {
        p.add("supportedInterfaces", "must be a list of interfaces");
        return None;
    };
    if interfaces.is_empty() {
        p.add("supportedInterfaces", "must declare at least one interface");
        return None;
    }
    let mut usable = None;
    for (i, iface) in interfaces.iter().enumerate() {
        let path = format!("supportedInterfaces[{i}]");
        if !iface.is_object() {
            p.add(&path, "must be an object");
            continue;
        }
        let url = p.non_empty_string(iface, &path, "url");
        if let Some(u) = &url
            && !is_http_url(u)
        {
            p.add(&join(&path, "url"), "must be an http(s) URL");
        }
        let binding = p.non_empty_string(iface, &path, "protocolBinding");
        if let Some(b) = &binding
            && !KNOWN_BINDINGS.contains(&b.as_str())
        {
            p.add(
                &join(&path, "protocolBinding"),
                "must be JSONRPC, HTTP+JSON or GRPC",
            );
        }
        let version = p.non_empty_string(iface, &path, "protocolVersion");
        if let (Some(u), Some(b), Some(v)) = (url, binding, version)
            && usable.is_none()
            && is_http_url(&u)
            && HTTP_BINDINGS.contains(&b.as_str())
        {
            usable = Some((CardShape::V1, u, b, v));
        }
    }
    if usable.is_none() {
        p.add(
            "supportedInterfaces",
            "no interface memesh can use: needs a JSONRPC or HTTP+JSON one at an http(s) URL",
        );
    }
    usable
}

/// The main interface of a 0.3 card.
fn v03_interface(card: &Value, p: &mut Problems) -> Option<(CardShape, String, String, String)> {
    let url = p.non_empty_string(card, "", "url");
    if let Some(u) = &url
        && !is_http_url(u)
    {
        p.add("url", "must be an http(s) URL");
    }
    let version = p.non_empty_string(card, "", "protocolVersion");
    let binding = match card.get("preferredTransport") {
        None => "JSONRPC".to_owned(),
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            p.add("preferredTransport", "must be a string");
            String::new()
        }
    };
    if !HTTP_BINDINGS.contains(&binding.as_str()) {
        let alternative = card
            .get("additionalInterfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|i| {
                let t = i.get("transport")?.as_str()?;
                let u = i.get("url")?.as_str()?;
                (HTTP_BINDINGS.contains(&t) && is_http_url(u)).then(|| (u.to_owned(), t.to_owned()))
            });
        return match (alternative, version) {
            (Some((u, t)), Some(v)) => Some((CardShape::V03, u, t, v)),
            _ => {
                p.add(
                    "preferredTransport",
                    "no interface memesh can use: needs JSONRPC or HTTP+JSON",
                );
                None
            }
        };
    }
    match (url, version) {
        (Some(u), Some(v)) if is_http_url(&u) => Some((CardShape::V03, u, binding, v)),
        _ => None,
    }
}

fn invalid(problems: Vec<Value>) -> ApiError {
    let summary = problems
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["path"].as_str().unwrap_or(""),
                p["problem"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(
        Code::InvalidAgentCard,
        format!("invalid Agent Card: {summary}"),
    )
    .with_details(json!({ "problems": problems }))
}

/// Where a card lives: the URL as given when it names a JSON file, else the well-known path.
pub fn card_location(url: &str) -> String {
    if url.ends_with(".json") {
        url.to_owned()
    } else {
        format!("{}{WELL_KNOWN_PATH}", url.trim_end_matches('/'))
    }
}

/// Fetches the card at `url` (or its well-known path).
/// Fetches the card at `url` (see [`card_location`]) through the outbound guard.
pub async fn fetch(outbound: &Outbound, url: &str) -> Result<Value, OutboundError> {
    outbound
        .get_json(&card_location(url), MAX_CARD_BYTES, FETCH_TIMEOUT)
        .await
}

pub async fn fetch_valid(outbound: &Outbound, url: &str) -> ApiResult<(Value, CardFacts)> {
    if !is_http_url(url) {
        return Err(ApiError::field("cardUrl", "must be an http(s) URL"));
    }
    let card = fetch(outbound, url).await.map_err(|e| {
        ApiError::new(
            Code::AgentCardUnreachable,
            format!("could not fetch the Agent Card: {e}"),
        )
        .with_details(json!({ "field": "cardUrl" }))
    })?;
    let facts = validate(&card)?;
    Ok((card, facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> Value {
        json!({
            "name": "Echo", "description": "echoes", "version": "1.0.0",
            "supportedInterfaces": [{ "url": "http://127.0.0.1:9/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0" }],
            "capabilities": { "streaming": true }, "defaultInputModes": ["text/plain"], "defaultOutputModes": ["text/plain"],
            "skills": [{ "id": "echo", "name": "Echo", "description": "echo back", "tags": ["demo"] }]
        })
    }

    #[test]
    fn accepts_both_shapes() {
        let f = validate(&v1()).unwrap();
        assert_eq!(
            (f.shape, f.protocol_version.as_str(), f.streaming),
            (CardShape::V1, "1.0", true)
        );
        let mut old = v1();
        let o = old.as_object_mut().unwrap();
        o.remove("supportedInterfaces");
        o.insert("url".into(), json!("https://agent.example/a2a"));
        o.insert("protocolVersion".into(), json!("0.3.0"));
        let f = validate(&old).unwrap();
        assert_eq!((f.shape, f.binding.as_str()), (CardShape::V03, "JSONRPC"));
    }

    #[test]
    fn lists_every_problem() {
        let mut card = v1();
        card["skills"] = json!([]);
        card["defaultInputModes"] = json!("text");
        card["supportedInterfaces"][0]["protocolBinding"] = json!("GRPC");
        card.as_object_mut().unwrap().remove("name");
        let err = validate(&card).unwrap_err();
        let problems = err.details.unwrap()["problems"].as_array().unwrap().clone();
        let paths: Vec<&str> = problems
            .iter()
            .map(|p| p["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.contains(&"name")
                && paths.contains(&"skills")
                && paths.contains(&"defaultInputModes")
        );
        assert!(
            paths.contains(&"supportedInterfaces"),
            "no usable interface: {paths:?}"
        );
    }
}
