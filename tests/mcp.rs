//! memesh as an MCP server, driven by a real MCP client: the official Python SDK (`mcp` from
//! PyPI, installed by scripts/test), over Streamable HTTP (`/mcp`) and over stdio (`memesh mcp`
//! launched by the SDK). The client runs the steps it is given and reports what the SDK parsed;
//! the assertions are here, and cross-checked against the REST API.

mod common;

use std::process::Stdio;

use common::{TestServer, code};
use memesh::embed::tokens::LlmTokenizer;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn python() -> String {
    std::env::var("MEMESH_MCP_PYTHON")
        .expect("MEMESH_MCP_PYTHON names a Python with the mcp SDK (scripts/test sets it up)")
}

/// Runs the SDK client with `steps`; its report (`initialize` and one entry per step).
async fn sdk(args: &[&str], env: &[(&str, &str)], steps: &Value) -> Value {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(common::repo_path("tests/mcp/client.py"))
        .args(args)
        .env_remove("MEMESH_API_KEY")
        .env_remove("MEMESH_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("python starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(steps.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        child.wait_with_output(),
    )
    .await
    .expect("the MCP client finishes")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the MCP client failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {stderr}"))
}

async fn over_http(s: &TestServer, key: &str, steps: Value) -> Vec<Value> {
    let report = sdk(&["http", &s.url("/mcp"), key], &[], &steps).await;
    assert_eq!(report["initialize"]["serverInfo"]["name"], "memesh");
    report["steps"].as_array().unwrap().clone()
}

fn ok(step: &Value) -> &Value {
    assert!(step.get("ok").is_some(), "expected a result, got {step}");
    &step["ok"]
}

fn tool_names(step: &Value) -> Vec<String> {
    ok(step)["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A successful tool result's structured content (and its text, which must not be empty).
fn structured(step: &Value) -> &Value {
    let r = ok(step);
    assert_eq!(r["isError"], false, "{r}");
    assert!(!r["content"][0]["text"].as_str().unwrap().is_empty());
    &r["structuredContent"]
}

fn call(tool: &str, args: Value) -> Value {
    json!({ "op": "call", "tool": tool, "args": args })
}

const READ_TOOLS: [&str; 4] = [
    "memory_context",
    "memory_search",
    "memory_query",
    "memory_spaces",
];

async fn key_with(s: &TestServer, scopes: &[&str]) -> String {
    let (st, body) = s
        .post(
            "/v1/keys",
            &s.owner_key,
            json!({ "name": format!("mcp {scopes:?}"), "scopes": scopes }),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    body["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_uses_memory_over_streamable_http() {
    let s = TestServer::start().await;
    let key = s.owner_key.clone();
    let steps = json!([
        { "op": "list_tools" },
        call("memory_write", json!({
            "content": "データベースの移行は金曜日の夜に行うことになった",
            "space": "仕事", "tags": ["db", "移行"]
        })),
        call("memory_write", json!({
            "content": "Bob prefers the window seat on long flights",
            "space": "travel", "tags": ["bob"]
        })),
        call("memory_write", json!({
            "content": "The staging cluster runs Postgres 16 since the March upgrade",
            "space": "work", "tags": ["db"]
        })),
        call("memory_search", json!({ "query": "データベースの移行はいつ?", "limit": 3 })),
        call("memory_query", json!({ "query": "Postgres", "mode": "keyword", "tags": ["db"] })),
        call("memory_context", json!({ "query": "where does Bob like to sit?", "tokenBudget": 20 })),
        call("memory_context", json!({ "query": "what do we know?", "tokenBudget": 4000, "minScore": -1.0 })),
        call("memory_spaces", json!({})),
        { "op": "list_resources" },
        { "op": "read", "uri": "memesh://spaces/%E4%BB%95%E4%BA%8B" },
        { "op": "list_templates" },
    ]);
    let r = over_http(&s, &key, steps).await;

    // Every tool, each with an object schema and a description.
    let tools = ok(&r[0])["tools"].as_array().unwrap();
    let names = tool_names(&r[0]);
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
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(t["description"].as_str().unwrap().len() > 80, "{t}");
    }
    let context_tool = &tools[0];
    assert_eq!(
        context_tool["inputSchema"]["required"],
        json!(["query", "tokenBudget"])
    );
    assert_eq!(context_tool["annotations"]["readOnlyHint"], true);
    assert_eq!(tools[5]["annotations"]["destructiveHint"], true);

    // Writes: stored as by REST, with their ids; Japanese spaces and tags work.
    let ja = structured(&r[1]);
    assert_eq!(ja["space"], "仕事");
    assert_eq!(ja["tags"], json!(["db", "移行"]));
    let ja_id = ja["id"].as_str().unwrap().to_owned();
    let text = ok(&r[1])["content"][0]["text"].as_str().unwrap();
    assert!(text.contains(&ja_id), "{text}");
    let (st, stored) = s.get(&format!("/v1/memory/{ja_id}"), &key).await;
    assert_eq!(st, 200);
    assert_eq!(stored["content"], ja["content"]);
    let (_, count) = s.get("/v1/memory/count", &key).await;
    assert_eq!(count["count"], 3);
    // What a space resource is read from: the newest first.
    let (st, recent) = s.get("/v1/memory/recent?limit=2", &key).await;
    assert_eq!(st, 200);
    let newest: Vec<&str> = recent["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["space"].as_str().unwrap())
        .collect();
    assert_eq!(newest, ["work", "travel"]);

    // Semantic search finds the Japanese memory from a Japanese question.
    let found = structured(&r[4]);
    assert_eq!(
        found["results"][0]["memory"]["id"],
        ja_id.as_str(),
        "{found}"
    );
    let text = ok(&r[4])["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("金曜日"), "{text}");

    // Keyword mode with a tag filter: only the Postgres memory.
    let q = structured(&r[5]);
    assert_eq!(q["mode"], "keyword");
    assert_eq!(q["total"], 1, "{q}");
    assert!(
        q["results"][0]["memory"]["content"]
            .as_str()
            .unwrap()
            .contains("Postgres 16")
    );

    // The context window stays within its budget, counted as the server says it counts.
    for (i, budget) in [(6, 20), (7, 4000)] {
        let c = structured(&r[i]);
        assert_eq!(c["tokenBudget"], budget);
        let used = c["tokensUsed"].as_u64().unwrap();
        assert!(used <= budget, "{c}");
        let context = c["context"].as_str().unwrap();
        assert_eq!(LlmTokenizer::Cl100k.count(context) as u64, used, "{c}");
    }
    let small = structured(&r[6]);
    assert!(small["omitted"].as_u64().unwrap() >= 1, "{small}");
    let large = structured(&r[7]);
    assert_eq!(large["memories"].as_array().unwrap().len(), 3, "{large}");
    let text = ok(&r[7])["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("window seat") && text.contains("of 4000 tokens"),
        "{text}"
    );

    // Spaces, as a tool and as resources; reading one lists its memories.
    let spaces: Vec<&str> = structured(&r[8])["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["space"].as_str().unwrap())
        .collect();
    assert_eq!(spaces, ["travel", "work", "仕事"]);
    let resources = ok(&r[9])["resources"].as_array().unwrap();
    let uris: Vec<&str> = resources
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        [
            "memesh://spaces/travel",
            "memesh://spaces/work",
            "memesh://spaces/%E4%BB%95%E4%BA%8B"
        ]
    );
    assert_eq!(resources[2]["name"], "仕事");
    let contents = &ok(&r[10])["contents"][0];
    assert_eq!(contents["uri"], "memesh://spaces/%E4%BB%95%E4%BA%8B");
    let listing = contents["text"].as_str().unwrap();
    assert!(
        listing.contains("データベースの移行") && listing.contains(&ja_id),
        "{listing}"
    );
    assert!(!listing.contains("Postgres"), "{listing}");
    assert_eq!(
        ok(&r[11])["resourceTemplates"][0]["uriTemplate"],
        "memesh://spaces/{space}"
    );

    // Delete through MCP: gone from REST and from search.
    let steps = json!([
        call("memory_delete", json!({ "id": ja_id })),
        call("memory_search", json!({ "query": "データベースの移行はいつ?" })),
        call("memory_delete", json!({ "id": ja_id })),
        { "op": "read", "uri": "memesh://spaces/%E4%BB%95%E4%BA%8B" },
    ]);
    let r = over_http(&s, &key, steps).await;
    assert_eq!(structured(&r[0])["id"], ja_id.as_str());
    let (st, _) = s.get(&format!("/v1/memory/{ja_id}"), &key).await;
    assert_eq!(st, 404);
    let after = structured(&r[1]);
    assert!(
        after["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["memory"]["id"] != ja_id.as_str()),
        "{after}"
    );
    // A second delete: the REST refusal, code and message, as an error result.
    let again = ok(&r[2]);
    assert_eq!(again["isError"], true);
    assert_eq!(again["structuredContent"]["error"]["code"], "not_found");
    assert_eq!(again["structuredContent"]["status"], 404);
    // The space is empty now: reading it is "resource not found".
    assert_eq!(r[3]["error"]["code"], -32002, "{}", r[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_rest_codes_and_messages() {
    let s = TestServer::start().await;
    let key = s.owner_key.clone();
    let bad_write = json!({ "content": "x", "tags": ["has space"] });
    let steps = json!([
        call("memory_write", bad_write.clone()),
        call("memory_write", json!({ "content": "x", "colour": "red" })),
        call("memory_context", json!({ "query": "x", "tokenBudget": 0 })),
        call("memory_query", json!({ "query": "x", "mode": "psychic" })),
        call("memory_spaces", json!({ "all": true })),
        call("no_such_tool", json!({})),
        { "op": "read", "uri": "memesh://elsewhere/x" },
        { "op": "read", "uri": "memesh://spaces/bad%20space" },
    ]);
    let r = over_http(&s, &key, steps).await;

    // Each refused call is an error result with exactly what REST answers to the same body.
    let same_as_rest = [
        (0, "/v1/memory/write", bad_write),
        (
            1,
            "/v1/memory/write",
            json!({ "content": "x", "colour": "red" }),
        ),
        (
            2,
            "/v1/memory/context-window",
            json!({ "query": "x", "tokenBudget": 0 }),
        ),
        (
            3,
            "/v1/memory/query",
            json!({ "query": "x", "mode": "psychic" }),
        ),
    ];
    for (i, path, body) in same_as_rest {
        let (st, rest) = s.post(path, &key, body).await;
        assert!(st.is_client_error(), "{rest}");
        let res = ok(&r[i]);
        assert_eq!(res["isError"], true, "{res}");
        assert_eq!(res["structuredContent"]["error"], rest["error"], "step {i}");
        assert_eq!(res["structuredContent"]["status"], st.as_u16());
        let text = res["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains(code(&rest)) && text.contains(rest["error"]["message"].as_str().unwrap()),
            "{text}"
        );
    }
    // Protocol errors: JSON-RPC codes, the REST-style code in data.
    assert_eq!(r[4]["error"]["code"], -32602);
    assert_eq!(r[4]["error"]["data"]["details"]["field"], "all");
    assert_eq!(r[5]["error"]["code"], -32602);
    assert!(
        r[5]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_tool")
    );
    assert_eq!(r[6]["error"]["code"], -32002);
    assert_eq!(r[6]["error"]["data"]["code"], "not_found");
    let (st, rest) = s.get("/v1/memory/recent?spaces=bad%20space", &key).await;
    assert_eq!(st, 400);
    assert_eq!(r[7]["error"]["code"], -32602);
    assert_eq!(r[7]["error"]["message"], rest["error"]["message"]);
    assert_eq!(r[7]["error"]["data"]["code"], code(&rest));
    // Nothing was stored by any of it.
    let (_, count) = s.get("/v1/memory/count", &key).await;
    assert_eq!(count["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_decide_the_tools_and_other_tenants_stay_invisible() {
    let s = TestServer::start().await;
    let (_, written) = s
        .post(
            "/v1/memory/write",
            &s.owner_key,
            json!({ "content": "the owner's note about the budget", "space": "finance" }),
        )
        .await;
    let id = written["id"].as_str().unwrap().to_owned();

    // A memory:read key sees only the read tools, and a write is refused as REST refuses it.
    let reader = key_with(&s, &["memory:read"]).await;
    let steps = json!([
        { "op": "list_tools" },
        call("memory_write", json!({ "content": "sneaky" })),
        call("memory_delete", json!({ "id": id })),
        call("memory_search", json!({ "query": "budget" })),
    ]);
    let r = over_http(&s, &reader, steps).await;
    assert_eq!(tool_names(&r[0]), READ_TOOLS);
    let (st, rest) = s
        .post("/v1/memory/write", &reader, json!({ "content": "sneaky" }))
        .await;
    assert_eq!(st, 403);
    for i in [1, 2] {
        let res = ok(&r[i]);
        assert_eq!(res["isError"], true);
        assert_eq!(
            res["structuredContent"]["error"]["code"],
            "insufficient_scope"
        );
        assert_eq!(res["structuredContent"]["error"], rest["error"]);
        assert_eq!(res["structuredContent"]["status"], 403);
    }
    assert_eq!(structured(&r[3])["results"][0]["memory"]["id"], id.as_str());
    let (_, count) = s.get("/v1/memory/count", &s.owner_key).await;
    assert_eq!(count["count"], 1, "nothing written, nothing deleted");

    // A memory:write key sees only the write tools; a key with neither sees none.
    let writer = key_with(&s, &["memory:write"]).await;
    let r = over_http(&s, &writer, json!([{ "op": "list_tools" }])).await;
    assert_eq!(tool_names(&r[0]), ["memory_write", "memory_delete"]);
    let runs_only = key_with(&s, &["runs:read"]).await;
    let r = over_http(&s, &runs_only, json!([{ "op": "list_tools" }])).await;
    assert!(tool_names(&r[0]).is_empty());

    // Another tenant's key finds nothing of alpha's: not_found, never forbidden.
    let beta = s.create_tenant("beta", "owner@beta.test");
    let steps = json!([
        call("memory_delete", json!({ "id": id })),
        call("memory_search", json!({ "query": "budget" })),
        { "op": "read", "uri": "memesh://spaces/finance" },
        { "op": "list_resources" },
    ]);
    let r = over_http(&s, &beta.owner_key, steps).await;
    assert_eq!(ok(&r[0])["structuredContent"]["error"]["code"], "not_found");
    assert_eq!(structured(&r[1])["count"], 0);
    assert_eq!(r[2]["error"]["code"], -32002);
    assert!(ok(&r[3])["resources"].as_array().unwrap().is_empty());
    let (st, _) = s.get(&format!("/v1/memory/{id}"), &s.owner_key).await;
    assert_eq!(st, 200, "alpha's memory is untouched");

    // The endpoint itself: no key, a revoked key, an agent key are refused before MCP.
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    let post = |key: Option<&str>| {
        let mut req = s
            .client
            .post(s.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&ping);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        req.send()
    };
    let resp = post(None).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "unauthorized");
    let (st, me) = s.get("/v1/auth/whoami", &reader).await;
    assert_eq!(st, 200);
    let (st, _) = s
        .delete(
            &format!("/v1/keys/{}", me["keyId"].as_str().unwrap()),
            &s.owner_key,
        )
        .await;
    assert_eq!(st, 200);
    let resp = post(Some(&reader)).await.unwrap();
    assert_eq!(resp.status(), 401);
    // Bearer works like x-api-key.
    let resp = post(Some(&s.owner_key)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], 1);
    assert!(body["result"].is_object(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_launches_memesh_mcp_over_stdio() {
    let s = TestServer::start().await;
    let config = tempfile::tempdir().unwrap();
    let bin = common::bin_path().to_str().unwrap().to_owned();
    let config_dir = config.path().to_str().unwrap().to_owned();

    // Without a stored key or MEMESH_API_KEY, `memesh mcp` says what to do and exits.
    let out = tokio::process::Command::new(&bin)
        .arg("mcp")
        .env("MEMESH_CONFIG_DIR", &config_dir)
        .env("MEMESH_SERVER", &s.base)
        .env_remove("MEMESH_API_KEY")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("memesh login"), "{stderr}");

    // With the credentials `memesh login` stores (the file is written as login writes it).
    let creds = json!({
        "server": s.base, "apiKey": s.owner_key, "keyId": null,
        "clientId": "memesh-cli", "scope": "memory:read memory:write"
    });
    std::fs::write(
        config.path().join("credentials.json"),
        serde_json::to_vec(&creds).unwrap(),
    )
    .unwrap();
    let steps = json!([
        { "op": "list_tools" },
        call("memory_write", json!({
            "content": "会議は毎週火曜日の10時から", "space": "チーム"
        })),
        call("memory_write", json!({ "content": "The office closes at 18:00 on Fridays" })),
        call("memory_search", json!({ "query": "定例会議の時間" })),
        call("memory_context", json!({ "query": "when is the weekly meeting?", "tokenBudget": 30 })),
        { "op": "list_resources" },
        call("memory_write", json!({ "content": "" })),
    ]);
    let report = sdk(
        &["stdio", &bin],
        &[("MEMESH_CONFIG_DIR", &config_dir)],
        &steps,
    )
    .await;
    assert_eq!(report["initialize"]["serverInfo"]["name"], "memesh");
    let r = report["steps"].as_array().unwrap();
    assert_eq!(tool_names(&r[0]).len(), 6);
    let ja = structured(&r[1]);
    assert_eq!(ja["space"], "チーム");
    let (st, stored) = s
        .get(
            &format!("/v1/memory/{}", ja["id"].as_str().unwrap()),
            &s.owner_key,
        )
        .await;
    assert_eq!(st, 200, "written through stdio, stored on the server");
    assert_eq!(stored["content"], "会議は毎週火曜日の10時から");
    assert_eq!(structured(&r[3])["results"][0]["memory"]["id"], ja["id"]);
    let c = structured(&r[4]);
    let used = c["tokensUsed"].as_u64().unwrap();
    assert!(used <= 30 && used > 0, "{c}");
    assert_eq!(
        LlmTokenizer::Cl100k.count(c["context"].as_str().unwrap()) as u64,
        used
    );
    let uris: Vec<&str> = ok(&r[5])["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        [
            "memesh://spaces/default",
            "memesh://spaces/%E3%83%81%E3%83%BC%E3%83%A0"
        ]
    );
    let (_, rest) = s
        .post("/v1/memory/write", &s.owner_key, json!({ "content": "" }))
        .await;
    assert_eq!(ok(&r[6])["structuredContent"]["error"], rest["error"]);

    // MEMESH_API_KEY wins over the stored key: a read-only key sees the read tools only.
    let reader = key_with(&s, &["memory:read"]).await;
    let report = sdk(
        &["stdio", &bin],
        &[
            ("MEMESH_CONFIG_DIR", &config_dir),
            ("MEMESH_API_KEY", &reader),
        ],
        &json!([{ "op": "list_tools" }, call("memory_write", json!({ "content": "no" }))]),
    )
    .await;
    let r = report["steps"].as_array().unwrap();
    assert_eq!(tool_names(&r[0]), READ_TOOLS);
    assert_eq!(
        ok(&r[1])["structuredContent"]["error"]["code"],
        "insufficient_scope"
    );
}
