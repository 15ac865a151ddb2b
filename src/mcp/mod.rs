//! memesh as a Model Context Protocol server (the official Rust SDK, `rmcp`): the memory tools
//! and the caller's spaces as resources, for every MCP client.
//!
//! The MCP face adds no behaviour of its own: every tool call and resource read is a call of the
//! REST API with the caller's own key, so scopes, roles, quotas, rate limits, validation, audit
//! and error codes are exactly the REST API's. Two ways in:
//! - `/mcp` (Streamable HTTP, `http.rs`), served by the same binary: the REST router is called
//!   in process with the key the MCP request carried;
//! - `memesh mcp` (stdio, `stdio.rs`): a local process that speaks MCP on stdin/stdout and calls
//!   a memesh server over HTTP with the key `memesh login` stored (or `MEMESH_API_KEY`).

mod backend;
pub mod http;
pub mod stdio;
mod tools;

use std::borrow::Cow;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorCode, ErrorData, Implementation,
    InitializeResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde_json::{Value, json};

pub use backend::Backend;
use backend::Reply;

/// How many memories reading a space resource lists.
const RECENT_IN_RESOURCE: u32 = 20;
const SPACE_URI: &str = "memesh://spaces/";

const INSTRUCTIONS: &str = "memesh is the user's long-term memory. Before answering anything that \
may depend on what was said or decided before, call memory_context with the question and a token \
budget, and put its context into your answer's reasoning. When the user states a fact, preference \
or decision worth keeping, store it with memory_write (one self-contained statement per memory). \
Use memory_search for a quick lookup, memory_query for filters (tags, spaces, dates) or exact \
words (mode keyword or hybrid), memory_spaces to see how memories are filed.";

/// The MCP server: the tools and resources over a [`Backend`].
#[derive(Clone)]
pub struct Memesh {
    backend: Backend,
}

impl Memesh {
    pub fn new(backend: Backend) -> Memesh {
        Memesh { backend }
    }

    /// The scopes of the caller's key (what `whoami` says), deciding which tools it sees.
    async fn scopes(&self, ctx: &RequestContext<RoleServer>) -> Result<Vec<String>, ErrorData> {
        let reply = self
            .backend
            .call(ctx, reqwest::Method::GET, "/v1/auth/whoami", None)
            .await?
            .ok_or_mcp()?;
        Ok(reply["scopes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect())
    }
}

impl Reply {
    /// The answer, or the REST error as an MCP error with the same code and message.
    fn ok_or_mcp(self) -> Result<Value, ErrorData> {
        if self.is_success() {
            Ok(self.body)
        } else {
            Err(self.to_mcp_error())
        }
    }

    /// A REST refusal as a JSON-RPC error: the message is the REST message, `data` carries the
    /// REST code, status and details. 400s are invalid params, 404s are "resource not found".
    fn to_mcp_error(&self) -> ErrorData {
        let code = match self.status {
            400 | 413 | 422 => ErrorCode::INVALID_PARAMS,
            404 => ErrorCode::RESOURCE_NOT_FOUND,
            _ => ErrorCode(-32000),
        };
        ErrorData::new(code, self.error_message(), Some(self.error_data()))
    }
}

fn space_uri(space: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(space, backend::SEGMENT);
    format!("{SPACE_URI}{encoded}")
}

fn space_of_uri(uri: &str) -> Result<String, ErrorData> {
    let not_found = || {
        ErrorData::new(
            ErrorCode::RESOURCE_NOT_FOUND,
            format!("no such resource: {uri} (spaces are memesh://spaces/<space>)"),
            Some(json!({ "code": "not_found", "status": 404, "uri": uri })),
        )
    };
    let rest = uri.strip_prefix(SPACE_URI).ok_or_else(not_found)?;
    if rest.is_empty() || rest.contains('/') {
        return Err(not_found());
    }
    percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| not_found())
}

impl ServerHandler for Memesh {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .build();
        let mut info = InitializeResult::new(capabilities).with_instructions(INSTRUCTIONS);
        info.server_info = Implementation::new("memesh", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let scopes = self.scopes(&ctx).await?;
        let tools = tools::CATALOG
            .iter()
            .filter(|t| scopes.iter().any(|s| s == t.scope))
            .map(tools::ToolDef::describe)
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tool = tools::find(&request.name).ok_or_else(|| {
            ErrorData::new(
                ErrorCode::INVALID_PARAMS,
                format!("unknown tool: {}", request.name),
                Some(json!({ "code": "not_found", "status": 404 })),
            )
        })?;
        let args = Value::Object(request.arguments.unwrap_or_default());
        let (method, path, body) = tool.request(args)?;
        let reply = self.backend.call(&ctx, method, &path, body).await?;
        Ok(tool.answer(reply).into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let reply = self
            .backend
            .call(&ctx, reqwest::Method::GET, "/v1/memory/spaces", None)
            .await?
            .ok_or_mcp()?;
        let resources = reply["spaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let name = s["space"].as_str()?;
                let description = format!(
                    "{} memories in space \"{name}\", last written {}; reading lists the newest {RECENT_IN_RESOURCE}",
                    s["count"],
                    s["lastWrittenAt"].as_str().unwrap_or("?"),
                );
                Some(
                    Resource::new(space_uri(name), name)
                        .with_title(format!("Memory space {name}"))
                        .with_description(description)
                        .with_mime_type("text/plain"),
                )
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(format!("{SPACE_URI}{{space}}"), "space")
            .with_title("A memory space")
            .with_description("The newest memories of one of your spaces")
            .with_mime_type("text/plain");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let space = space_of_uri(&request.uri)?;
        let query = format!(
            "/v1/memory/recent?spaces={}&limit={RECENT_IN_RESOURCE}",
            percent_encoding::utf8_percent_encode(&space, backend::SEGMENT)
        );
        let reply = self
            .backend
            .call(&ctx, reqwest::Method::GET, &query, None)
            .await?
            .ok_or_mcp()?;
        let memories = reply["memories"].as_array().cloned().unwrap_or_default();
        if memories.is_empty() {
            return Err(ErrorData::new(
                ErrorCode::RESOURCE_NOT_FOUND,
                format!("you have no memories in space \"{space}\""),
                Some(json!({ "code": "not_found", "status": 404, "uri": request.uri })),
            ));
        }
        let text = tools::render_recent(&space, &memories);
        let contents = ResourceContents::text(text, request.uri);
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}
