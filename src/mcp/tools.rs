//! The memory tools: each one REST call, an input schema derived from the REST body it sends
//! (the same types the REST API validates with), a description an LLM can act on, and an
//! answer rendered as readable text beside the REST answer as structured content.

use std::sync::Arc;

use reqwest::Method;
use rmcp::model::{
    CallToolResult, ContentBlock, ErrorCode, ErrorData, JsonObject, Tool, ToolAnnotations,
};
use serde_json::{Value, json};

use super::backend::{Reply, SEGMENT};
use crate::memory::model::{ContextWindowBody, QueryBody, SearchBody, WriteRequest};

/// One tool.
pub struct ToolDef {
    pub name: &'static str,
    title: &'static str,
    description: &'static str,
    /// The key scope the tool needs (it is listed only to keys carrying it).
    pub scope: &'static str,
    schema: fn() -> Value,
    read_only: bool,
    destructive: bool,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Write,
    Search,
    Query,
    Context,
    Delete,
    Spaces,
}

fn schema_of<T: schemars::JsonSchema>() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(o) = schema.as_object_mut() {
        o.remove("title");
    }
    schema
}

fn delete_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "id": {
                "type": "string",
                "description": "The memory's id (`mem_…`), from memory_write or a search result."
            }
        },
        "required": ["id"],
        "additionalProperties": false
    })
}

fn no_arguments() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {},
        "additionalProperties": false
    })
}

pub const CATALOG: &[ToolDef] = &[
    ToolDef {
        name: "memory_context",
        title: "Recall context for a question",
        description: "Call this before answering anything that may depend on what the user said, \
            decided or preferred before. Returns the stored memories most relevant to `query`, \
            packed into one block of text that fits within `tokenBudget` tokens (counted with \
            `tokenizer`, cl100k_base by default), best first, ready to put into your reasoning. \
            The answer says how many tokens were used and how many candidates were left out.",
        scope: "memory:read",
        schema: schema_of::<ContextWindowBody>,
        read_only: true,
        destructive: false,
        kind: Kind::Context,
    },
    ToolDef {
        name: "memory_search",
        title: "Search memories by meaning",
        description: "Semantic search of the user's memories: the memories closest in meaning to \
            `query` (any language), best first, each with its id, space, tags, time and a \
            similarity score from -1 to 1. For a quick lookup; use memory_query for filters or \
            exact words, memory_context to fill a prompt within a token budget.",
        scope: "memory:read",
        schema: schema_of::<SearchBody>,
        read_only: true,
        destructive: false,
        kind: Kind::Search,
    },
    ToolDef {
        name: "memory_query",
        title: "Query memories with filters and modes",
        description: "Search with conditions: tags (any or all), spaces, a time range \
            (createdAfter / createdBefore, RFC 3339), sensitivity, source, a similarity \
            threshold and paging (limit, offset). `mode` picks how text matches: semantic (by \
            meaning, default), keyword (the exact words, BM25; good for names, ids and codes) \
            or hybrid (both, fused). `explain: true` shows how each result ranked. The answer \
            says how many memories match in all.",
        scope: "memory:read",
        schema: schema_of::<QueryBody>,
        read_only: true,
        destructive: false,
        kind: Kind::Query,
    },
    ToolDef {
        name: "memory_spaces",
        title: "List memory spaces",
        description: "The spaces the user's memories are filed under, with how many memories \
            each holds and when it was last written. Pass space names to the other tools' \
            `space` / `spaces` arguments.",
        scope: "memory:read",
        schema: no_arguments,
        read_only: true,
        destructive: false,
        kind: Kind::Spaces,
    },
    ToolDef {
        name: "memory_write",
        title: "Remember something",
        description: "Store one memory for later conversations: a fact, preference, decision or \
            event the user wants kept. Write one self-contained statement (who, what, when) in \
            the language it was said in; file it under a `space` (a topic or project) and \
            `tags` to find it by later. Give an `idempotencyKey` to make a retry safe. Returns \
            the stored memory with its id.",
        scope: "memory:write",
        schema: schema_of::<WriteRequest>,
        read_only: false,
        destructive: false,
        kind: Kind::Write,
    },
    ToolDef {
        name: "memory_delete",
        title: "Forget a memory",
        description: "Delete one memory by id (from memory_write or a search result): it is gone \
            from every search at once. This cannot be undone; do it when the user asks to \
            forget something or a memory is wrong.",
        scope: "memory:write",
        schema: delete_schema,
        read_only: false,
        destructive: true,
        kind: Kind::Delete,
    },
];

pub fn find(name: &str) -> Option<&'static ToolDef> {
    CATALOG.iter().find(|t| t.name == name)
}

fn invalid(message: String, field: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode::INVALID_PARAMS,
        message,
        Some(json!({ "code": "validation_failed", "status": 400, "details": { "field": field } })),
    )
}

impl ToolDef {
    pub fn describe(&self) -> Tool {
        let schema: JsonObject = match (self.schema)() {
            Value::Object(o) => o,
            _ => JsonObject::new(),
        };
        let mut tool = Tool::new(self.name, self.description, Arc::new(schema));
        tool.title = Some(self.title.to_owned());
        tool.annotations = Some(
            ToolAnnotations::new()
                .read_only(self.read_only)
                .destructive(self.destructive)
                .idempotent(self.read_only)
                .open_world(false),
        );
        tool
    }

    /// The REST request a call with `args` makes. The arguments go to the REST API as they are:
    /// it validates them, so a tool call and a REST call are refused alike.
    pub fn request(&self, args: Value) -> Result<(Method, String, Option<Value>), ErrorData> {
        Ok(match self.kind {
            Kind::Write => (Method::POST, "/v1/memory/write".into(), Some(args)),
            Kind::Search => (Method::POST, "/v1/memory/search".into(), Some(args)),
            Kind::Query => (Method::POST, "/v1/memory/query".into(), Some(args)),
            Kind::Context => (Method::POST, "/v1/memory/context-window".into(), Some(args)),
            Kind::Spaces => {
                if let Some(extra) = args.as_object().and_then(|o| o.keys().next()) {
                    return Err(invalid(
                        format!("memory_spaces takes no arguments; got `{extra}`"),
                        extra,
                    ));
                }
                (Method::GET, "/v1/memory/spaces".into(), None)
            }
            Kind::Delete => {
                let obj = args.as_object();
                if let Some(extra) = obj.and_then(|o| o.keys().find(|k| *k != "id")) {
                    return Err(invalid(format!("unknown field `{extra}`"), extra));
                }
                let Some(id) = obj.and_then(|o| o.get("id")).and_then(Value::as_str) else {
                    return Err(invalid("`id` (a string) is required".into(), "id"));
                };
                let id = percent_encoding::utf8_percent_encode(id, SEGMENT);
                (Method::DELETE, format!("/v1/memory/{id}"), None)
            }
        })
    }

    /// The tool's result: the REST answer as structured content and as text; a REST refusal
    /// as an error result carrying the REST error (code, message, details) and status.
    pub fn answer(&self, reply: Reply) -> CallToolResult {
        if !reply.is_success() {
            let text = format!(
                "{} failed: {} ({}): {}",
                self.name,
                reply.error_code(),
                reply.status,
                reply.error_message()
            );
            let mut structured = reply.body.clone();
            if let Some(o) = structured.as_object_mut() {
                o.insert("status".into(), json!(reply.status));
            }
            let mut result = CallToolResult::structured_error(structured);
            result.content = vec![ContentBlock::text(text)];
            return result;
        }
        let text = match self.kind {
            Kind::Write => render_written(&reply),
            Kind::Search | Kind::Query => render_results(&reply.body),
            Kind::Context => render_context(&reply.body),
            Kind::Delete => format!(
                "Deleted memory {} at {}.",
                reply.body["id"].as_str().unwrap_or("?"),
                reply.body["deletedAt"].as_str().unwrap_or("?")
            ),
            Kind::Spaces => render_spaces(&reply.body),
        };
        let mut result = CallToolResult::structured(reply.body);
        result.content = vec![ContentBlock::text(text)];
        result
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// One memory on two lines: its content, then where and when it is.
fn render_memory(out: &mut String, n: usize, m: &Value, score: Option<&Value>) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "{n}. {}", str_of(m, "content"));
    let _ = write!(
        out,
        "   id {} · space {} · {}",
        str_of(m, "id"),
        str_of(m, "space"),
        str_of(m, "createdAt")
    );
    let tags: Vec<&str> = m["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !tags.is_empty() {
        let _ = write!(out, " · tags {}", tags.join(", "));
    }
    if let Some(s) = score.and_then(Value::as_f64) {
        let _ = write!(out, " · score {s:.3}");
    }
    out.push('\n');
}

fn render_written(reply: &Reply) -> String {
    let m = &reply.body;
    let how = if reply.status == 200 {
        "Already stored (a retry with the same idempotency key)"
    } else {
        "Stored"
    };
    format!(
        "{how}: memory {} in space \"{}\" ({} tokens).",
        str_of(m, "id"),
        str_of(m, "space"),
        m["tokenCount"]
    )
}

fn render_results(body: &Value) -> String {
    let results = body["results"].as_array().cloned().unwrap_or_default();
    let query = str_of(body, "query");
    if results.is_empty() {
        return format!("No memories match \"{query}\".");
    }
    let mut out = match body.get("total").and_then(Value::as_u64) {
        Some(total) => format!(
            "{} of {total} memories matching \"{query}\" ({} mode):\n",
            results.len(),
            str_of(body, "mode")
        ),
        None => format!("{} memories closest to \"{query}\":\n", results.len()),
    };
    let offset = body["offset"].as_u64().unwrap_or(0) as usize;
    for (i, r) in results.iter().enumerate() {
        render_memory(&mut out, offset + i + 1, &r["memory"], r.get("score"));
    }
    out
}

fn render_context(body: &Value) -> String {
    let chosen = body["memories"].as_array().map_or(0, Vec::len);
    let header = format!(
        "{chosen} memories for \"{}\", {} of {} tokens ({}); {} more candidates left out.",
        str_of(body, "query"),
        body["tokensUsed"],
        body["tokenBudget"],
        str_of(body, "tokenizer"),
        body["omitted"]
    );
    if chosen == 0 {
        return format!("{header}\nNothing relevant is remembered.");
    }
    format!("{header}\n\n{}", str_of(body, "context"))
}

fn render_spaces(body: &Value) -> String {
    use std::fmt::Write as _;
    let spaces = body["spaces"].as_array().cloned().unwrap_or_default();
    if spaces.is_empty() {
        return "No memories yet: no spaces.".into();
    }
    let mut out = String::from("Spaces:\n");
    for s in &spaces {
        let _ = writeln!(
            out,
            "- {}: {} memories, last written {}",
            str_of(s, "space"),
            s["count"],
            str_of(s, "lastWrittenAt")
        );
    }
    out
}

/// A space resource's text: its newest memories.
pub fn render_recent(space: &str, memories: &[Value]) -> String {
    let mut out = format!(
        "The {} newest memories in space \"{space}\", newest first:\n",
        memories.len()
    );
    for (i, m) in memories.iter().enumerate() {
        render_memory(&mut out, i + 1, m, None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_an_object_schema_and_a_known_scope() {
        for tool in CATALOG {
            let described = tool.describe();
            assert_eq!(described.input_schema["type"], "object", "{}", tool.name);
            assert!(
                ["memory:read", "memory:write"].contains(&tool.scope),
                "{}",
                tool.name
            );
            assert!(find(tool.name).is_some());
        }
        let names: Vec<_> = CATALOG.iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "memory_context",
                "memory_search",
                "memory_query",
                "memory_spaces",
                "memory_write",
                "memory_delete"
            ]
        );
    }

    #[test]
    fn schemas_describe_the_rest_bodies_fields() {
        let query = (find("memory_query").unwrap().schema)();
        assert!(query["properties"]["mode"].is_object());
        assert_eq!(query["additionalProperties"], false);
        assert_eq!(query["required"], json!(["query"]));
        let context = (find("memory_context").unwrap().schema)();
        assert_eq!(context["required"], json!(["query", "tokenBudget"]));
        assert!(
            context["properties"]["tokenBudget"]["description"]
                .as_str()
                .unwrap()
                .contains("tokens")
        );
    }

    #[test]
    fn delete_ids_cannot_reach_another_route() {
        let tool = find("memory_delete").unwrap();
        let (_, path, _) = tool.request(json!({ "id": "../keys?x=1" })).unwrap();
        assert_eq!(path, "/v1/memory/..%2Fkeys%3Fx%3D1");
        assert!(tool.request(json!({})).is_err());
        assert!(
            tool.request(json!({ "id": "mem_1", "hard": true }))
                .is_err()
        );
    }
}
