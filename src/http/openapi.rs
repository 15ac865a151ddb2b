//! The OpenAPI 3.1 document of the whole surface, generated from the code: every route of the
//! route table ([`super::route_table`]) with the caller it admits (the security requirement and
//! the role and scope in its description), its path parameters, the JSON Schemas of its query
//! parameters and request body derived from the very types the handlers deserialize
//! (`schemars`, honouring `serde`'s renames and `deny_unknown_fields`), its success statuses,
//! and the error body every other status carries. A route of the table without an entry in
//! [`doc`] makes [`undocumented`] non-empty, which a test refuses.

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::auth::Access;
use crate::error::Code;

/// How a route takes its input.
enum Input {
    None,
    /// A JSON body of this schema; `false`: the body may be left out.
    Json(Value, bool),
    /// `application/x-www-form-urlencoded` (and, for the OAuth endpoints, JSON too).
    Form(Value),
    /// A stream of records (import).
    Stream,
}

/// One route's documentation.
struct Doc {
    summary: &'static str,
    query: Option<Value>,
    input: Input,
    /// Success statuses.
    ok: &'static [u16],
    /// What a success answers with: `json`, `html`, `css`, `sse`.
    media: &'static str,
    /// Errors in OAuth's shape (`{"error", "error_description"}`) instead of memesh's.
    oauth: bool,
}

impl Doc {
    fn new(summary: &'static str) -> Doc {
        Doc {
            summary,
            query: None,
            input: Input::None,
            ok: &[200],
            media: "json",
            oauth: false,
        }
    }
    fn body<T: JsonSchema>(mut self, g: &mut SchemaGenerator) -> Doc {
        self.input = Input::Json(g.subschema_for::<T>().to_value(), true);
        self
    }
    fn optional_body<T: JsonSchema>(mut self, g: &mut SchemaGenerator) -> Doc {
        self.input = Input::Json(g.subschema_for::<T>().to_value(), false);
        self
    }
    fn query<T: JsonSchema>(mut self, g: &mut SchemaGenerator) -> Doc {
        // Inlined: its properties become the query parameters.
        self.query = Some(g.root_schema_for::<T>().to_value());
        self
    }
    fn ok(mut self, ok: &'static [u16]) -> Doc {
        self.ok = ok;
        self
    }
    fn media(mut self, media: &'static str) -> Doc {
        self.media = media;
        self
    }
}

/// An object with these properties, each required, typed `string`, `integer`, `number`,
/// `boolean`, `array`, `object`, `any`, a shared schema (`@Memory`), an array of one (`[]T`),
/// or any of those nullable (`?` suffix). Other properties may appear: an answer can grow, and
/// a client ignores what it does not know.
fn obj(fields: &[(&str, &str)]) -> Value {
    let mut props = Map::new();
    for (name, ty) in fields {
        props.insert((*name).to_owned(), ty_schema(ty));
    }
    let required: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    json!({ "type": "object", "required": required, "properties": props })
}

fn ty_schema(ty: &str) -> Value {
    let (base, nullable) = match ty.strip_suffix('?') {
        Some(b) => (b, true),
        None => (ty, false),
    };
    let schema = if base == "any" {
        json!({})
    } else if let Some(name) = base.strip_prefix('@') {
        json!({ "$ref": format!("#/components/schemas/{name}") })
    } else if let Some(item) = base.strip_prefix("[]") {
        json!({ "type": "array", "items": ty_schema(item) })
    } else {
        json!({ "type": base })
    };
    if nullable {
        json!({ "anyOf": [schema, { "type": "null" }] })
    } else {
        schema
    }
}

fn list(name: &str, item: &str) -> Value {
    obj(&[(name, &format!("[]{item}"))])
}

fn page_of(name: &str, item: &str) -> Value {
    obj(&[
        (name, &format!("[]{item}")),
        ("total", "integer"),
        ("limit", "integer"),
        ("offset", "integer"),
    ])
}

fn with(base: &str, more: &[(&str, &str)]) -> Value {
    json!({ "allOf": [ty_schema(base), obj(more)] })
}

/// The shapes several routes answer with.
fn shared_schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Memory",
            obj(&[
                ("id", "string"),
                ("content", "string"),
                ("space", "string"),
                ("summary", "string?"),
                ("tags", "[]string"),
                ("sensitivity", "string"),
                ("source", "string?"),
                ("tokenCount", "integer"),
                ("embedding", "object"),
                ("createdAt", "string"),
            ]),
        ),
        (
            "Key",
            obj(&[
                ("id", "string"),
                ("name", "string"),
                ("userId", "string"),
                ("maskedKey", "string"),
                ("kind", "string"),
                ("scopes", "[]string"),
                ("restricted", "boolean"),
                ("expiresAt", "string?"),
                ("createdAt", "string"),
                ("lastUsedAt", "string?"),
                ("parentKeyId", "string?"),
            ]),
        ),
        ("Revoked", obj(&[("id", "string"), ("revokedAt", "string")])),
        (
            "Member",
            obj(&[
                ("userId", "string"),
                ("email", "string"),
                ("role", "string"),
                ("joinedAt", "string"),
            ]),
        ),
        (
            "Target",
            obj(&[
                ("id", "string"),
                ("name", "string"),
                ("kind", "string"),
                ("description", "string?"),
                ("availability", "string"),
                ("runtime", "object"),
                ("runtimePolicy", "object"),
                ("controlState", "object"),
                ("compatibility", "object"),
                ("createdAt", "string"),
                ("updatedAt", "string"),
            ]),
        ),
        (
            "Run",
            obj(&[
                ("id", "string"),
                ("targetId", "string"),
                ("targetKind", "string"),
                ("state", "string"),
                ("blockReason", "string?"),
                ("requestedBy", "string"),
                ("requiresApproval", "boolean"),
                ("idempotencyKey", "string?"),
                ("approvals", "[]object"),
                ("execution", "object?"),
                ("remote", "object?"),
                ("control", "object"),
                ("recommendedActions", "[]string"),
                ("createdAt", "string"),
                ("updatedAt", "string"),
            ]),
        ),
        (
            "Execution",
            obj(&[
                ("id", "string"),
                ("runId", "string"),
                ("state", "string"),
                ("attempt", "integer"),
                ("cancelRequested", "boolean"),
                ("leaseExpiresAt", "string?"),
                ("workerId", "string?"),
                ("createdAt", "string"),
            ]),
        ),
        (
            "SearchResults",
            obj(&[
                ("query", "string"),
                ("count", "integer"),
                ("results", "[]object"),
            ]),
        ),
    ]
}

/// What a route's JSON success body looks like (`{}`: any JSON).
fn returns(method: &str, path: &str) -> Value {
    let r = |s: &str| ty_schema(s);
    match (method, path) {
        ("GET", "/healthz") => obj(&[
            ("status", "string"),
            ("model", "object"),
            ("jobs", "object"),
        ]),
        ("GET", "/readyz") => obj(&[("status", "string")]),
        ("GET", "/v1/openapi.json") => obj(&[
            ("openapi", "string"),
            ("paths", "object"),
            ("components", "object"),
        ]),
        ("POST", "/v1/keys") => with("@Key", &[("key", "string")]),
        ("GET", "/v1/keys") => list("keys", "@Key"),
        ("DELETE", "/v1/keys/{id}") | ("POST", "/v1/auth/logout") => {
            with("@Revoked", &[("revokedDescendants", "[]string")])
        }
        ("DELETE", "/v1/team/invitations/{id}") => r("@Revoked"),
        ("GET", "/v1/team/members") => list("members", "@Member"),
        ("POST", "/v1/team/members/invite") => obj(&[
            ("invitation", "object"),
            ("token", "string"),
            ("acceptPath", "string"),
        ]),
        ("PATCH", "/v1/team/members/{user_id}/role") => r("@Member"),
        ("DELETE", "/v1/team/members/{user_id}") => obj(&[
            ("userId", "string"),
            ("removedAt", "string"),
            ("keysRevoked", "integer"),
            ("invitationsRevoked", "integer"),
        ]),
        ("GET", "/v1/team/invitations") => list("invitations", "object"),
        ("POST", "/v1/team/invitations/{token}/accept") => {
            obj(&[("member", "@Member"), ("apiKey", "object")])
        }
        ("POST", "/v1/auth/device") => obj(&[
            ("device_code", "string"),
            ("user_code", "string"),
            ("verification_uri", "string"),
            ("verification_uri_complete", "string"),
            ("expires_in", "integer"),
            ("interval", "integer"),
        ]),
        ("POST", "/v1/auth/device/token") => obj(&[
            ("access_token", "string"),
            ("token_type", "string"),
            ("scope", "string"),
        ]),
        ("GET", "/v1/auth/whoami") => obj(&[
            ("userId", "string"),
            ("email", "string"),
            ("tenantId", "string"),
            ("tenantName", "string"),
            ("role", "string"),
            ("keyId", "string"),
            ("scopes", "[]string"),
            ("restricted", "boolean"),
            ("embeddingModel", "string"),
        ]),
        ("GET", "/v1/billing/plan") => obj(&[
            ("name", "string"),
            ("limits", "object"),
            ("expensiveCalls", "[]string"),
            ("period", "object"),
        ]),
        ("GET", "/v1/usage/summary") => obj(&[
            ("plan", "string"),
            ("usage", "object"),
            ("rateLimit", "object?"),
            ("embeddingModel", "string"),
        ]),
        ("GET", "/v1/audit/logs") => obj(&[("logs", "[]object")]),
        ("GET", "/v1/agents/dispatch-targets") => page_of("targets", "@TargetSummary"),
        ("DELETE", "/v1/agents/dispatch-targets/{id}") => obj(&[
            ("deleted", "boolean"),
            ("deletedAt", "string"),
            ("agentKeysRevoked", "integer"),
        ]),
        ("GET", "/v1/agents/dispatch-targets/{id}/governance") => obj(&[
            ("target", "object"),
            ("runtime", "object"),
            ("policy", "object"),
            ("review", "object"),
            ("incident", "object"),
            ("affectedWork", "array"),
            ("recentRuns", "array"),
            ("recentAudit", "array"),
        ]),
        (_, p) if p.starts_with("/v1/agents/dispatch-targets") => r("@Target"),
        ("GET", "/v1/agents/executions") => list("executions", "object"),
        (_, p) if p.starts_with("/v1/agents/executions/") => r("@Execution"),
        ("GET", "/v1/orchestrator/runs") => page_of("runs", "@Run"),
        ("GET", "/v1/orchestrator/runs/{id}/control") => obj(&[
            ("targetKind", "string"),
            ("state", "string"),
            ("actions", "object"),
            ("recommendedActions", "[]string"),
        ]),
        ("POST", "/v1/orchestrator/runs/{id}/reconcile") => {
            with("@Run", &[("reconciled", "object")])
        }
        ("GET", "/v1/orchestrator/runtime-health") => obj(&[
            ("status", "string"),
            ("reasons", "[]object"),
            ("checkedAt", "string"),
            ("localCompatibility", "object"),
            ("remoteEscalation", "object"),
            ("targetGovernance", "object"),
            ("attentionBacklog", "object"),
            ("jobs", "object"),
        ]),
        (_, p) if p.starts_with("/v1/orchestrator/runs") => r("@Run"),
        ("POST", "/v1/memory/write") | ("GET", "/v1/memory/{id}") => r("@Memory"),
        ("POST", "/v1/memory/batch") => obj(&[("created", "integer")]),
        (_, "/v1/memory/search") => r("@SearchResults"),
        ("POST", "/v1/memory/query") => obj(&[
            ("query", "string"),
            ("mode", "string"),
            ("results", "[]object"),
            ("count", "integer"),
            ("total", "integer"),
            ("totalCapped", "boolean"),
            ("limit", "integer"),
            ("offset", "integer"),
        ]),
        ("POST", "/v1/memory/batch/search") => {
            obj(&[("results", "[]object"), ("deduplicated", "boolean")])
        }
        ("POST", "/v1/memory/context-window") => obj(&[
            ("query", "string"),
            ("context", "string"),
            ("memories", "[]object"),
            ("tokenBudget", "integer"),
            ("tokensUsed", "integer"),
            ("tokenizer", "string"),
            ("candidates", "integer"),
            ("omitted", "integer"),
        ]),
        ("GET", "/v1/memory/count") => obj(&[("count", "integer")]),
        ("GET", "/v1/memory/spaces") => list("spaces", "object"),
        ("GET", "/v1/memory/recent") => obj(&[("count", "integer"), ("memories", "[]@Memory")]),
        ("POST", "/mcp") => obj(&[("jsonrpc", "string")]),
        ("DELETE", "/v1/memory/{id}") => obj(&[("id", "string"), ("deletedAt", "string")]),
        ("POST", "/v1/memory/import") => obj(&[
            ("imported", "integer"),
            ("failed", "integer"),
            ("skipped", "integer"),
            ("errors", "[]object"),
        ]),
        _ => json!({}),
    }
}

/// The documentation of one route, by method and path as the route table has them.
fn doc(method: &str, path: &str, g: &mut SchemaGenerator) -> Option<Doc> {
    use crate::agents::model as agents;
    use crate::memory::model as memory;
    use crate::orchestrator::model as runs;
    use crate::orchestrator::queue;
    use crate::team::model as team;
    let d = Doc::new;
    Some(match (method, path) {
        ("GET", "/healthz") => d("Liveness, and each background job's last successful pass"),
        ("GET", "/readyz") => {
            d("Readiness: database reachable, schema current, index complete").ok(&[200, 503])
        }
        ("GET", "/docs") => {
            d("This API reference, rendered by the binary (HTML, offline)").media("html")
        }
        ("GET", "/v1/openapi.json") => d("This document"),
        ("GET", "/device") => d("The device verification page (HTML)")
            .media("html")
            .ok(&[200, 404]),
        ("POST", "/device") => {
            let mut doc =
                d("The device verification page's forms: sign in, approve, deny, sign out")
                    .media("html")
                    .ok(&[200, 303]);
            doc.input = Input::Form(json!({
                "type": "object",
                "properties": {
                    "action": { "enum": ["signin", "approve", "deny", "signout"] },
                    "csrf": { "type": "string" }, "user_code": { "type": "string" },
                    "api_key": { "type": "string" }
                }
            }));
            doc
        }
        ("GET", "/device/style.css") => d("The verification page's stylesheet").media("css"),
        ("POST", "/v1/keys") => d("Create an API key (user key, or agent key with targetId)")
            .body::<crate::keys::model::CreateKeyRequest>(g)
            .ok(&[201]),
        ("GET", "/v1/keys") => d("The caller's live keys, masked"),
        ("DELETE", "/v1/keys/{id}") => {
            d("Revoke one of the caller's keys (cascade=true: and the keys made from it)")
                .query::<crate::keys::model::RevokeParams>(g)
        }
        ("GET", "/v1/team/members") => d("Members of the caller's workspace"),
        ("POST", "/v1/team/members/invite") => d("Invite a member")
            .body::<team::InviteRequest>(g)
            .ok(&[201]),
        ("PATCH", "/v1/team/members/{user_id}/role") => {
            d("Change a member's role").body::<team::RoleChangeRequest>(g)
        }
        ("DELETE", "/v1/team/members/{user_id}") => {
            d("Remove a member (their keys and invitations are revoked)")
        }
        ("GET", "/v1/team/invitations") => d("Open invitations"),
        ("DELETE", "/v1/team/invitations/{id}") => d("Revoke an invitation"),
        ("POST", "/v1/team/invitations/{token}/accept") => {
            d("Accept an invitation (the token is the credential)").ok(&[201])
        }
        ("POST", "/v1/auth/device") => {
            let mut doc = d("Start a device authorization (RFC 8628 §3.1)");
            doc.input = Input::Form(json!({
                "type": "object", "required": ["client_id"],
                "properties": { "client_id": { "type": "string" }, "scope": { "type": "string" } }
            }));
            doc.oauth = true;
            doc
        }
        ("POST", "/v1/auth/device/token") => {
            let mut doc = d("Poll for the device's key (RFC 8628 §3.4)");
            doc.input = Input::Form(json!({
                "type": "object", "required": ["grant_type", "device_code"],
                "properties": {
                    "grant_type": { "type": "string", "const": crate::device::handlers::DEVICE_GRANT_TYPE },
                    "device_code": { "type": "string" }, "client_id": { "type": "string" }
                }
            }));
            doc.oauth = true;
            doc
        }
        ("GET", "/v1/auth/whoami") => d("Whose key this is and what it may do"),
        ("POST", "/v1/auth/logout") => {
            d("The key revokes itself").optional_body::<crate::device::handlers::LogoutBody>(g)
        }
        ("GET", "/v1/billing/plan") => d("The caller's plan"),
        ("GET", "/v1/usage/summary") => {
            d("Usage against the plan's limits, and the key's request budget")
        }
        ("GET", "/v1/audit/logs") => {
            d("The audit log, newest first").query::<crate::audit::model::AuditQueryParams>(g)
        }
        ("POST", "/v1/agents/dispatch-targets") => d("Register a dispatch target")
            .body::<agents::CreateTarget>(g)
            .ok(&[201]),
        ("GET", "/v1/agents/dispatch-targets") => {
            d("Dispatch targets").query::<agents::ListParams>(g)
        }
        ("GET", "/v1/agents/dispatch-targets/{id}") => d("One dispatch target"),
        ("PATCH", "/v1/agents/dispatch-targets/{id}") => {
            d("Change a dispatch target").body::<agents::UpdateTarget>(g)
        }
        ("DELETE", "/v1/agents/dispatch-targets/{id}") => d("Delete a dispatch target"),
        ("GET", "/v1/agents/dispatch-targets/{id}/governance") => d("A target's governance record"),
        ("POST", "/v1/agents/dispatch-targets/{id}/hold") => {
            d("Hold a target (CAS on its runtime token)").body::<agents::HoldBody>(g)
        }
        ("POST", "/v1/agents/dispatch-targets/{id}/release") => {
            d("Release a target's hold").body::<agents::NoteBody>(g)
        }
        ("POST", "/v1/agents/dispatch-targets/{id}/review/acknowledge") => {
            d("Acknowledge the governance review").body::<agents::AcknowledgeBody>(g)
        }
        ("POST", "/v1/agents/dispatch-targets/{id}/incident/open") => {
            d("Open a provider incident").body::<agents::OpenIncidentBody>(g)
        }
        ("POST", "/v1/agents/dispatch-targets/{id}/incident/handoff") => {
            d("Hand an incident off").body::<agents::HandoffBody>(g)
        }
        ("POST", "/v1/agents/dispatch-targets/{id}/incident/close") => {
            d("Close an incident").body::<agents::NoteBody>(g)
        }
        ("GET", "/v1/agents/executions") => d("The agent's queue").query::<queue::ListParams>(g),
        ("POST", "/v1/agents/executions/{id}/claim") => {
            d("Claim an execution").body::<queue::ClaimBody>(g)
        }
        ("POST", "/v1/agents/executions/{id}/heartbeat") => {
            d("Extend a claim's lease").body::<queue::HeartbeatBody>(g)
        }
        ("POST", "/v1/agents/executions/{id}/complete") => {
            d("Complete a claimed execution").body::<queue::CompleteBody>(g)
        }
        ("POST", "/v1/agents/executions/{id}/ack-cancel") => {
            d("Confirm a requested cancellation").body::<queue::AckCancelBody>(g)
        }
        ("POST", "/v1/orchestrator/runs") => {
            d("Dispatch a run (201; a replayed idempotency key 200)")
                .body::<runs::CreateRun>(g)
                .ok(&[200, 201])
        }
        ("GET", "/v1/orchestrator/runs") => d("Runs").query::<runs::ListParams>(g),
        ("GET", "/v1/orchestrator/runs/{id}") => {
            d("One run with a page of its timeline").query::<runs::RunViewParams>(g)
        }
        ("GET", "/v1/orchestrator/runs/{id}/control") => d("What each control action allows now"),
        ("POST", "/v1/orchestrator/runs/{id}/cancel") => d("Cancel a run"),
        ("POST", "/v1/orchestrator/runs/{id}/approvals/{approval_id}/approve") => {
            d("Approve").optional_body::<runs::DecideBody>(g)
        }
        ("POST", "/v1/orchestrator/runs/{id}/approvals/{approval_id}/reject") => {
            d("Reject").optional_body::<runs::DecideBody>(g)
        }
        ("POST", "/v1/orchestrator/runs/{id}/reconcile") => {
            d("Read a remote run's task now and reconcile")
        }
        ("POST", "/v1/orchestrator/runs/{id}/retry-cancel") => {
            d("Send a failed remote cancel again")
        }
        ("POST", "/v1/orchestrator/runs/{id}/resolve-remote") => {
            d("Resolve a remote run whose cancel is exhausted").body::<runs::ResolveRemoteBody>(g)
        }
        ("GET", "/v1/orchestrator/runtime-health") => d("Runtime health"),
        ("POST", "/v1/memory/write") => d("Write a memory (201; a replayed idempotency key 200)")
            .body::<memory::WriteRequest>(g)
            .ok(&[200, 201]),
        ("POST", "/v1/memory/batch") => d("Write up to 100 memories")
            .body::<memory::BatchRequest>(g)
            .ok(&[200, 201]),
        ("GET", "/v1/memory/search") => d("Semantic search").query::<memory::SearchParams>(g),
        ("POST", "/v1/memory/search") => d("Semantic search").body::<memory::SearchBody>(g),
        ("POST", "/v1/memory/query") => {
            d("Semantic, keyword or hybrid retrieval with filters").body::<memory::QueryBody>(g)
        }
        ("POST", "/v1/memory/batch/search") => {
            d("Up to 50 searches at once").body::<memory::BatchSearchBody>(g)
        }
        ("POST", "/v1/memory/context-window") => {
            d("The memories that fit a token budget").body::<memory::ContextWindowBody>(g)
        }
        ("GET", "/v1/memory/count") => d("How many memories the caller has"),
        ("GET", "/v1/memory/spaces") => d("The caller's spaces"),
        ("GET", "/v1/memory/recent") => {
            d("The caller's newest memories, newest first").query::<memory::RecentParams>(g)
        }
        ("POST", "/mcp") => {
            let mut doc = d(
                "Model Context Protocol over Streamable HTTP (stateless): one JSON-RPC \
                message a request; the memory tools and the caller's spaces as resources",
            )
            .ok(&[200, 202]);
            doc.input = Input::Json(
                json!({
                    "type": "object", "required": ["jsonrpc"],
                    "properties": {
                        "jsonrpc": { "const": "2.0" }, "method": { "type": "string" },
                        "id": { "type": ["string", "integer"] }, "params": { "type": "object" }
                    }
                }),
                true,
            );
            doc
        }
        ("GET", "/v1/memory/{id}") => d("One memory"),
        ("DELETE", "/v1/memory/{id}") => d("Delete a memory"),
        ("GET", "/v1/memory/stream/export") => d("Every memory as Server-Sent Events")
            .query::<memory::ExportParams>(g)
            .media("sse"),
        ("POST", "/v1/memory/import") => {
            let mut doc = d("Restore an export (SSE or JSON lines)");
            doc.input = Input::Stream;
            doc
        }
        _ => return None,
    })
}

/// Routes of the table without documentation.
pub fn undocumented() -> Vec<String> {
    let mut g = generator();
    super::route_table()
        .into_iter()
        .filter(|r| doc(r.method.as_str(), &r.path, &mut g).is_none())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn generator() -> SchemaGenerator {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas/".into();
    settings.into_generator()
}

fn error_body() -> Value {
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "type": "object", "required": ["error"], "additionalProperties": false,
        "properties": { "error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": false,
            "properties": {
                "code": { "enum": codes }, "message": { "type": "string" },
                "details": { "type": "object" }
            }
        }}
    })
}

fn oauth_error_body() -> Value {
    json!({
        "type": "object", "required": ["error"],
        "properties": { "error": { "type": "string" }, "error_description": { "type": "string" } }
    })
}

/// Statuses any route may answer besides its successes.
const ERRORS: [u16; 13] = [
    400, 401, 403, 404, 405, 408, 409, 410, 413, 414, 415, 429, 431,
];

fn content(media: &str, returns: &Value) -> Value {
    match media {
        "html" => json!({ "text/html": { "schema": { "type": "string" } } }),
        "css" => json!({ "text/css": { "schema": { "type": "string" } } }),
        // Each event: its name, data (JSON text) and id.
        "sse" => json!({ "text/event-stream": { "schema": {
            "type": "object",
            "properties": {
                "event": { "type": "string" }, "data": { "type": "string" }, "id": { "type": "string" }
            }
        } } }),
        _ => json!({ "application/json": { "schema": returns } }),
    }
}

/// The document.
pub fn document() -> Value {
    let mut g = generator();
    let mut paths = Map::new();
    for route in super::route_table() {
        let method = route.method.as_str().to_ascii_lowercase();
        let Some(d) = doc(route.method.as_str(), &route.path, &mut g) else {
            continue;
        };
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if let Some(q) = &d.query {
            let required: Vec<&str> = q["required"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = q["properties"].as_object() {
                for (name, schema) in props {
                    parameters.push(json!({
                        "name": name, "in": "query", "required": required.contains(&name.as_str()),
                        "schema": schema,
                    }));
                }
            }
        }
        let mut op = json!({
            "summary": d.summary,
            "description": format!("Who may call it: {}.", route.access),
            "operationId": format!("{method}{}", route.path.replace(['/', '{', '}', '-'], "_")),
            "parameters": parameters,
            "responses": {},
        });
        match route.access {
            Access::Public => op["security"] = json!([]),
            _ => op["security"] = json!([{ "apiKey": [] }, { "bearer": [] }]),
        }
        match &d.input {
            Input::None => {}
            Input::Json(schema, required) => {
                op["requestBody"] = json!({ "required": required,
                    "content": { "application/json": { "schema": schema } } });
            }
            Input::Form(schema) => {
                let mut c = json!({ "application/x-www-form-urlencoded": { "schema": schema } });
                if d.oauth {
                    c["application/json"] = json!({ "schema": schema });
                }
                op["requestBody"] = json!({ "required": true, "content": c });
            }
            Input::Stream => {
                // Any text: lines that are not records are reported one by one, not refused.
                op["requestBody"] = json!({ "required": true, "content": {
                    "text/event-stream": { "schema": {} },
                    "application/x-ndjson": { "schema": {} },
                }});
            }
        }
        let responses = op["responses"].as_object_mut().expect("an object");
        for ok in d.ok {
            let mut r = json!({ "description": "success" });
            if !matches!(*ok, 202 | 303) {
                r["content"] = content(d.media, &returns(route.method.as_str(), &route.path));
            }
            responses.insert(ok.to_string(), r);
        }
        let (error_media, error_schema) = match d.media {
            "html" => ("text/html", json!({ "type": "string" })),
            _ if d.oauth => (
                "application/json",
                json!({ "$ref": "#/components/schemas/OAuthError" }),
            ),
            _ => (
                "application/json",
                json!({ "$ref": "#/components/schemas/Error" }),
            ),
        };
        // The MCP transport refuses a client that does not accept both JSON and SSE.
        let transport: &[u16] = if route.path == "/mcp" { &[406] } else { &[] };
        for status in ERRORS.iter().chain(transport).chain([503, 500].iter()) {
            let key = status.to_string();
            if responses.contains_key(&key) {
                continue;
            }
            // Limits, routing and timeouts answer in memesh's shape even on OAuth's endpoints.
            let schema = if d.oauth && matches!(status, 405 | 408 | 413 | 414 | 415 | 429 | 431) {
                json!({ "$ref": "#/components/schemas/Error" })
            } else {
                error_schema.clone()
            };
            responses.insert(
                key,
                json!({
                    "description": "see the error codes",
                    "content": { error_media: { "schema": schema } },
                }),
            );
        }
        paths
            .entry(route.path.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object")
            .insert(method, op);
    }
    let mut schemas: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    for (name, schema) in shared_schemas() {
        schemas.insert(name.into(), schema);
    }
    schemas.insert("Error".into(), error_body());
    schemas.insert("OAuthError".into(), oauth_error_body());
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "memesh",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Long-term memory for AI agents, and the governance and orchestration of the agents themselves. Errors have one body, {\"error\": {\"code\", \"message\", \"details?\"}}, except the device-login endpoints, which answer as OAuth does.",
        },
        "servers": [{ "url": "/" }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": { "type": "apiKey", "in": "header", "name": "x-api-key" },
                "bearer": { "type": "http", "scheme": "bearer", "description": "the same API key as a Bearer token" },
            },
        },
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `/docs`: the API reference rendered from the document by the binary itself: no script, no
/// external assets, readable offline.
pub fn page() -> String {
    let d = document();
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>memesh API reference</title><style>\
         body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}\
         h2{margin-top:2.5rem;border-bottom:1px solid #d0d7de}\
         .op{border:1px solid #d0d7de;border-radius:8px;margin:1rem 0;padding:.5rem 1rem}\
         .m{font:700 13px ui-monospace,monospace;padding:2px 6px;border-radius:4px;background:#0b5fff;color:#fff}\
         code,pre{font-family:ui-monospace,monospace;font-size:13px}pre{background:#f6f8fa;padding:.5rem;overflow:auto}\
         .who{color:#57606a}</style></head><body>\n<h1>memesh API reference</h1>\n",
    );
    out.push_str(&format!(
        "<p>{} The machine-readable document: <a href=\"/v1/openapi.json\"><code>/v1/openapi.json</code></a> (OpenAPI {}).</p>\n",
        esc(d["info"]["description"].as_str().unwrap_or("")),
        esc(d["openapi"].as_str().unwrap_or(""))
    ));
    let mut area = String::new();
    for (path, ops) in d["paths"].as_object().into_iter().flatten() {
        let this = path
            .trim_start_matches("/v1")
            .split('/')
            .nth(1)
            .unwrap_or("")
            .to_owned();
        if this != area {
            out.push_str(&format!("<h2 id=\"{0}\">{0}</h2>\n", esc(&this)));
            area = this;
        }
        for (method, op) in ops.as_object().into_iter().flatten() {
            out.push_str(&format!(
                "<div class=\"op\"><p><span class=\"m\">{}</span> <code>{}</code> — {}</p><p class=\"who\">{}</p>",
                esc(&method.to_uppercase()),
                esc(path),
                esc(op["summary"].as_str().unwrap_or("")),
                esc(op["description"].as_str().unwrap_or(""))
            ));
            let params: Vec<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "<code>{}</code> ({})",
                        esc(p["name"].as_str().unwrap_or("")),
                        esc(p["in"].as_str().unwrap_or(""))
                    )
                })
                .collect();
            if !params.is_empty() {
                out.push_str(&format!("<p>Parameters: {}</p>", params.join(", ")));
            }
            if let Some(body) = op.get("requestBody") {
                out.push_str(&format!(
                    "<details><summary>Request body</summary><pre>{}</pre></details>",
                    esc(&serde_json::to_string_pretty(&body["content"]).unwrap_or_default())
                ));
            }
            let statuses: Vec<&str> = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(s, _)| s.as_str())
                .collect();
            out.push_str(&format!("<p>Answers: {}</p></div>\n", statuses.join(", ")));
        }
    }
    out.push_str("<h2 id=\"schemas\">Schemas</h2>\n");
    for (name, schema) in d["components"]["schemas"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "<h3 id=\"schema-{0}\">{0}</h3><pre>{1}</pre>\n",
            esc(name),
            esc(&serde_json::to_string_pretty(schema).unwrap_or_default())
        ));
    }
    out.push_str("</body></html>\n");
    out
}
