//! Who may call what, from outside: every route of the server × {no key, owner key, viewer key,
//! agent key, key without the route's scope, expired key, revoked key, another tenant's key}.
//! The table below holds one row per route; the server's own route table must match it exactly,
//! so a route added without its row fails here. Authorized callers send requests that fail
//! validation (or name nothing), so the table can run every row without changing anything; a
//! second pass with another tenant's key and real ids must find nothing (404), never 403.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::FromRequestParts;
use common::{START, TestServer, code};
use memesh::auth::perm::{AgentsWrite, KeysWrite, MemoryWrite};
use memesh::auth::{Access, Grant, Role, Scope};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ABSENT_KEY: &str = "key_00000000000000000000000000000000";
const ABSENT_USER: &str = "usr_00000000000000000000000000000000";
const ABSENT_TARGET: &str = "tgt_00000000000000000000000000000000";
const ABSENT_RUN: &str = "run_00000000000000000000000000000000";
const ABSENT_MEMORY: &str = "mem_00000000000000000000000000000000";
const ABSENT_INVITATION: &str = "inv_00000000000000000000000000000000";

/// One route: where it is, who may call it, the request an authorized caller sends (which must
/// not change anything) with the status it gets, and, for routes that name a tenant's resource,
/// the real request another tenant's key sends (404 expected).
struct Row {
    method: Method,
    path: &'static str,
    access: Access,
    probe: (&'static str, Option<Value>, u16),
    cross: Option<(&'static str, Option<Value>)>,
}

fn user(role: Role, scope: Scope) -> Access {
    Access::User { role, scope }
}

/// The ids and tokens of the fixture, substituted into the rows' paths and bodies.
struct Fixture {
    s: TestServer,
    vars: BTreeMap<&'static str, String>,
    keys: Keys,
}

struct Keys {
    owner: String,
    viewer: String,
    agent: String,
    expired: String,
    revoked: String,
    other_owner: String,
    other_agent: String,
    /// Owner keys each lacking one scope.
    without: BTreeMap<&'static str, String>,
}

fn rows() -> Vec<Row> {
    use Method as M;
    use Role::*;
    use Scope::*;
    let expected = json!({ "expectedRuntimeUpdatedAt": "{token}" });
    let row = |method: Method, path, access, probe, cross| Row {
        method,
        path,
        access,
        probe,
        cross,
    };
    let bad = || Some(json!({ "bogus": true }));
    vec![
        row(
            M::GET,
            "/healthz",
            Access::Public,
            ("/healthz", None, 200),
            None,
        ),
        row(
            M::GET,
            "/readyz",
            Access::Public,
            ("/readyz", None, 200),
            None,
        ),
        row(M::GET, "/docs", Access::Public, ("/docs", None, 200), None),
        row(
            M::GET,
            "/v1/openapi.json",
            Access::Public,
            ("/v1/openapi.json", None, 200),
            None,
        ),
        row(
            M::GET,
            "/device",
            Access::Public,
            ("/device", None, 200),
            None,
        ),
        // Without the page's CSRF cookie and token every form is refused.
        row(
            M::POST,
            "/device",
            Access::Public,
            ("/device", None, 403),
            None,
        ),
        row(
            M::GET,
            "/device/style.css",
            Access::Public,
            ("/device/style.css", None, 200),
            None,
        ),
        row(
            M::POST,
            "/v1/auth/device",
            Access::Public,
            (
                "/v1/auth/device",
                Some(json!({ "client_id": "nobody" })),
                400,
            ),
            None,
        ),
        row(
            M::POST,
            "/v1/auth/device/token",
            Access::Public,
            (
                "/v1/auth/device/token",
                Some(json!({ "grant_type": "password" })),
                400,
            ),
            None,
        ),
        row(
            M::GET,
            "/v1/auth/whoami",
            Access::Holder,
            ("/v1/auth/whoami", None, 200),
            None,
        ),
        row(
            M::GET,
            "/v1/billing/plan",
            Access::Holder,
            ("/v1/billing/plan", None, 200),
            None,
        ),
        row(
            M::GET,
            "/v1/usage/summary",
            Access::Holder,
            ("/v1/usage/summary", None, 200),
            None,
        ),
        row(
            M::POST,
            "/v1/auth/logout",
            Access::Holder,
            ("/v1/auth/logout", bad(), 400),
            None,
        ),
        row(
            M::POST,
            "/v1/keys",
            user(Viewer, KeysWrite),
            ("/v1/keys", bad(), 400),
            None,
        ),
        row(
            M::GET,
            "/v1/keys",
            user(Viewer, KeysWrite),
            ("/v1/keys", None, 200),
            None,
        ),
        row(
            M::DELETE,
            "/v1/keys/{id}",
            user(Viewer, KeysWrite),
            ("/v1/keys/{absent_key}", None, 404),
            Some(("/v1/keys/{owner_key_id}", None)),
        ),
        row(
            M::GET,
            "/v1/team/members",
            user(Viewer, TeamRead),
            ("/v1/team/members", None, 200),
            None,
        ),
        row(
            M::POST,
            "/v1/team/members/invite",
            user(Admin, TeamWrite),
            ("/v1/team/members/invite", bad(), 400),
            None,
        ),
        row(
            M::PATCH,
            "/v1/team/members/{user_id}/role",
            user(Admin, TeamWrite),
            ("/v1/team/members/{viewer_user}/role", bad(), 400),
            Some((
                "/v1/team/members/{viewer_user}/role",
                Some(json!({ "role": "ADMIN" })),
            )),
        ),
        row(
            M::DELETE,
            "/v1/team/members/{user_id}",
            user(Admin, TeamWrite),
            ("/v1/team/members/{absent_user}", None, 404),
            Some(("/v1/team/members/{viewer_user}", None)),
        ),
        row(
            M::GET,
            "/v1/team/invitations",
            user(Admin, TeamRead),
            ("/v1/team/invitations", None, 200),
            None,
        ),
        row(
            M::DELETE,
            "/v1/team/invitations/{id}",
            user(Admin, TeamWrite),
            ("/v1/team/invitations/{absent_invitation}", None, 404),
            Some(("/v1/team/invitations/{invitation}", None)),
        ),
        row(
            M::POST,
            "/v1/team/invitations/{token}/accept",
            Access::Public,
            ("/v1/team/invitations/mkinv_nothing/accept", None, 404),
            None,
        ),
        row(
            M::GET,
            "/v1/audit/logs",
            user(Admin, AuditRead),
            ("/v1/audit/logs", None, 200),
            None,
        ),
        row(
            M::POST,
            "/v1/agents/dispatch-targets",
            user(Admin, AgentsWrite),
            ("/v1/agents/dispatch-targets", bad(), 400),
            None,
        ),
        row(
            M::GET,
            "/v1/agents/dispatch-targets",
            user(Viewer, AgentsRead),
            ("/v1/agents/dispatch-targets", None, 200),
            None,
        ),
        row(
            M::GET,
            "/v1/agents/dispatch-targets/{id}",
            user(Viewer, AgentsRead),
            ("/v1/agents/dispatch-targets/{target}", None, 200),
            Some(("/v1/agents/dispatch-targets/{target}", None)),
        ),
        row(
            M::PATCH,
            "/v1/agents/dispatch-targets/{id}",
            user(Admin, AgentsWrite),
            ("/v1/agents/dispatch-targets/{target}", bad(), 400),
            Some((
                "/v1/agents/dispatch-targets/{target}",
                Some(json!({ "name": "taken over" })),
            )),
        ),
        row(
            M::DELETE,
            "/v1/agents/dispatch-targets/{id}",
            user(Admin, AgentsWrite),
            ("/v1/agents/dispatch-targets/{absent_target}", None, 404),
            Some(("/v1/agents/dispatch-targets/{target}", None)),
        ),
        row(
            M::GET,
            "/v1/agents/dispatch-targets/{id}/governance",
            user(Viewer, AgentsRead),
            ("/v1/agents/dispatch-targets/{target}/governance", None, 200),
            Some(("/v1/agents/dispatch-targets/{target}/governance", None)),
        ),
        row(
            M::POST,
            "/v1/agents/dispatch-targets/{id}/hold",
            user(Admin, AgentsWrite),
            ("/v1/agents/dispatch-targets/{target}/hold", bad(), 400),
            Some((
                "/v1/agents/dispatch-targets/{target}/hold",
                Some(json!({ "reason": "x", "expectedRuntimeUpdatedAt": "{token}" })),
            )),
        ),
        row(
            M::POST,
            "/v1/agents/dispatch-targets/{id}/release",
            user(Admin, AgentsWrite),
            ("/v1/agents/dispatch-targets/{target}/release", bad(), 400),
            Some((
                "/v1/agents/dispatch-targets/{target}/release",
                Some(expected.clone()),
            )),
        ),
        row(
            M::POST,
            "/v1/agents/dispatch-targets/{id}/review/acknowledge",
            user(Admin, AgentsWrite),
            (
                "/v1/agents/dispatch-targets/{target}/review/acknowledge",
                bad(),
                400,
            ),
            Some((
                "/v1/agents/dispatch-targets/{target}/review/acknowledge",
                Some(expected.clone()),
            )),
        ),
        row(
            M::POST,
            "/v1/agents/dispatch-targets/{id}/incident/open",
            user(Admin, AgentsWrite),
            (
                "/v1/agents/dispatch-targets/{target}/incident/open",
                bad(),
                400,
            ),
            Some((
                "/v1/agents/dispatch-targets/{target}/incident/open",
                Some(json!({ "reason": "x", "expectedRuntimeUpdatedAt": "{token}" })),
            )),
        ),
        row(
            M::POST,
            "/v1/agents/dispatch-targets/{id}/incident/handoff",
            user(Admin, AgentsWrite),
            (
                "/v1/agents/dispatch-targets/{target}/incident/handoff",
                bad(),
                400,
            ),
            Some((
                "/v1/agents/dispatch-targets/{target}/incident/handoff",
                Some(json!({ "externalIncidentId": "INC-1", "owner": "ops",
                               "expectedRuntimeUpdatedAt": "{token}" })),
            )),
        ),
        row(
            M::POST,
            "/v1/agents/dispatch-targets/{id}/incident/close",
            user(Admin, AgentsWrite),
            (
                "/v1/agents/dispatch-targets/{target}/incident/close",
                bad(),
                400,
            ),
            Some((
                "/v1/agents/dispatch-targets/{target}/incident/close",
                Some(expected.clone()),
            )),
        ),
        row(
            M::GET,
            "/v1/agents/executions",
            Access::Agent,
            ("/v1/agents/executions", None, 200),
            None,
        ),
        row(
            M::POST,
            "/v1/agents/executions/{id}/claim",
            Access::Agent,
            ("/v1/agents/executions/{execution}/claim", bad(), 400),
            Some((
                "/v1/agents/executions/{execution}/claim",
                Some(json!({ "claimToken": "t" })),
            )),
        ),
        row(
            M::POST,
            "/v1/agents/executions/{id}/heartbeat",
            Access::Agent,
            ("/v1/agents/executions/{execution}/heartbeat", bad(), 400),
            Some((
                "/v1/agents/executions/{execution}/heartbeat",
                Some(json!({ "claimToken": "t" })),
            )),
        ),
        row(
            M::POST,
            "/v1/agents/executions/{id}/complete",
            Access::Agent,
            ("/v1/agents/executions/{execution}/complete", bad(), 400),
            Some((
                "/v1/agents/executions/{execution}/complete",
                Some(json!({ "claimToken": "t" })),
            )),
        ),
        row(
            M::POST,
            "/v1/agents/executions/{id}/ack-cancel",
            Access::Agent,
            ("/v1/agents/executions/{execution}/ack-cancel", bad(), 400),
            Some((
                "/v1/agents/executions/{execution}/ack-cancel",
                Some(json!({ "claimToken": "t" })),
            )),
        ),
        row(
            M::POST,
            "/v1/orchestrator/runs",
            user(Member, RunsWrite),
            ("/v1/orchestrator/runs", bad(), 400),
            None,
        ),
        row(
            M::GET,
            "/v1/orchestrator/runs",
            user(Viewer, RunsRead),
            ("/v1/orchestrator/runs", None, 200),
            None,
        ),
        row(
            M::GET,
            "/v1/orchestrator/runs/{id}",
            user(Viewer, RunsRead),
            ("/v1/orchestrator/runs/{run}", None, 200),
            Some(("/v1/orchestrator/runs/{run}", None)),
        ),
        row(
            M::GET,
            "/v1/orchestrator/runs/{id}/control",
            user(Viewer, RunsRead),
            ("/v1/orchestrator/runs/{run}/control", None, 200),
            Some(("/v1/orchestrator/runs/{run}/control", None)),
        ),
        row(
            M::POST,
            "/v1/orchestrator/runs/{id}/cancel",
            user(Member, RunsWrite),
            ("/v1/orchestrator/runs/{absent_run}/cancel", None, 404),
            Some(("/v1/orchestrator/runs/{run}/cancel", None)),
        ),
        row(
            M::POST,
            "/v1/orchestrator/runs/{id}/approvals/{approval_id}/approve",
            user(Admin, RunsWrite),
            (
                "/v1/orchestrator/runs/{run}/approvals/{approval}/approve",
                bad(),
                400,
            ),
            Some((
                "/v1/orchestrator/runs/{run}/approvals/{approval}/approve",
                None,
            )),
        ),
        row(
            M::POST,
            "/v1/orchestrator/runs/{id}/approvals/{approval_id}/reject",
            user(Admin, RunsWrite),
            (
                "/v1/orchestrator/runs/{run}/approvals/{approval}/reject",
                bad(),
                400,
            ),
            Some((
                "/v1/orchestrator/runs/{run}/approvals/{approval}/reject",
                None,
            )),
        ),
        row(
            M::POST,
            "/v1/orchestrator/runs/{id}/reconcile",
            user(Admin, RunsWrite),
            ("/v1/orchestrator/runs/{run}/reconcile", None, 409),
            Some(("/v1/orchestrator/runs/{run}/reconcile", None)),
        ),
        row(
            M::POST,
            "/v1/orchestrator/runs/{id}/retry-cancel",
            user(Member, RunsWrite),
            ("/v1/orchestrator/runs/{run}/retry-cancel", None, 409),
            Some(("/v1/orchestrator/runs/{run}/retry-cancel", None)),
        ),
        row(
            M::POST,
            "/v1/orchestrator/runs/{id}/resolve-remote",
            user(Admin, RunsWrite),
            (
                "/v1/orchestrator/runs/{run}/resolve-remote",
                Some(json!({ "resolution": "canceled", "note": "checked with the provider" })),
                409,
            ),
            Some((
                "/v1/orchestrator/runs/{run}/resolve-remote",
                Some(json!({ "resolution": "canceled", "note": "checked with the provider" })),
            )),
        ),
        row(
            M::GET,
            "/v1/orchestrator/runtime-health",
            user(Viewer, RunsRead),
            ("/v1/orchestrator/runtime-health", None, 200),
            None,
        ),
        row(
            M::POST,
            "/v1/memory/write",
            user(Viewer, MemoryWrite),
            ("/v1/memory/write", bad(), 400),
            None,
        ),
        row(
            M::POST,
            "/v1/memory/batch",
            user(Viewer, MemoryWrite),
            ("/v1/memory/batch", bad(), 400),
            None,
        ),
        row(
            M::GET,
            "/v1/memory/search",
            user(Viewer, MemoryRead),
            ("/v1/memory/search", None, 400),
            None,
        ),
        row(
            M::POST,
            "/v1/memory/search",
            user(Viewer, MemoryRead),
            ("/v1/memory/search", bad(), 400),
            None,
        ),
        row(
            M::POST,
            "/v1/memory/query",
            user(Viewer, MemoryRead),
            ("/v1/memory/query", bad(), 400),
            None,
        ),
        row(
            M::POST,
            "/v1/memory/batch/search",
            user(Viewer, MemoryRead),
            ("/v1/memory/batch/search", bad(), 400),
            None,
        ),
        row(
            M::POST,
            "/v1/memory/context-window",
            user(Viewer, MemoryRead),
            ("/v1/memory/context-window", bad(), 400),
            None,
        ),
        row(
            M::GET,
            "/v1/memory/count",
            user(Viewer, MemoryRead),
            ("/v1/memory/count", None, 200),
            None,
        ),
        row(
            M::GET,
            "/v1/memory/spaces",
            user(Viewer, MemoryRead),
            ("/v1/memory/spaces", None, 200),
            None,
        ),
        row(
            M::GET,
            "/v1/memory/recent",
            user(Viewer, MemoryRead),
            ("/v1/memory/recent?limit=0", None, 400),
            None,
        ),
        // A request without `Accept: application/json, text/event-stream` is refused by the
        // transport (406), after the key was checked.
        row(
            M::POST,
            "/mcp",
            Access::Holder,
            (
                "/mcp",
                Some(json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" })),
                406,
            ),
            None,
        ),
        row(
            M::GET,
            "/v1/memory/{id}",
            user(Viewer, MemoryRead),
            ("/v1/memory/{absent_memory}", None, 404),
            Some(("/v1/memory/{memory}", None)),
        ),
        row(
            M::DELETE,
            "/v1/memory/{id}",
            user(Viewer, MemoryWrite),
            ("/v1/memory/{absent_memory}", None, 404),
            Some(("/v1/memory/{memory}", None)),
        ),
        row(
            M::GET,
            "/v1/memory/stream/export",
            user(Viewer, MemoryRead),
            ("/v1/memory/stream/export?spaces=", None, 200),
            None,
        ),
        // An import must say what it is sending: JSON is refused before anything is read.
        row(
            M::POST,
            "/v1/memory/import",
            user(Viewer, MemoryWrite),
            ("/v1/memory/import", bad(), 415),
            None,
        ),
    ]
}

impl Fixture {
    fn fill(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in &self.vars {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    /// Sends a request; the body is JSON when the response says so.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        key: Option<&str>,
        body: &Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .s
            .client
            .request(method.clone(), self.s.url(&self.fill(path)));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        if let Some(body) = body {
            let text = self.fill(&body.to_string());
            req = req.header("content-type", "application/json").body(text);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let json = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let text = resp.text().await.unwrap_or_default();
        let body = if json {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        (status, body)
    }
}

async fn fixture() -> Fixture {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (viewer_user, viewer) = s.add_member(&owner, "viewer@alpha.test", "VIEWER").await;
    let (st, target) = s
        .post(
            "/v1/agents/dispatch-targets",
            &owner,
            json!({ "name": "worker", "kind": "LOCAL_AGENT" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{target}");
    let target_id = target["id"].as_str().unwrap().to_owned();
    let (_, agent) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "agent", "targetId": target_id }),
        )
        .await;
    let (_, waiting) = s
        .post(
            "/v1/orchestrator/runs",
            &owner,
            json!({ "targetId": target_id, "input": {}, "requiresApproval": true }),
        )
        .await;
    let (_, queued) = s
        .post(
            "/v1/orchestrator/runs",
            &owner,
            json!({ "targetId": target_id, "input": {} }),
        )
        .await;
    let (st, memory) = s
        .post(
            "/v1/memory/write",
            &owner,
            json!({ "content": "the fixture's memory" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{memory}");
    let (st, invitation) = s
        .post(
            "/v1/team/members/invite",
            &owner,
            json!({ "email": "pending@alpha.test" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{invitation}");
    let key = |body: Value| {
        let s = &s;
        let owner = owner.clone();
        async move {
            let (st, k) = s.post("/v1/keys", &owner, body).await;
            assert_eq!(st, StatusCode::CREATED, "{k}");
            (
                k["id"].as_str().unwrap().to_owned(),
                k["key"].as_str().unwrap().to_owned(),
            )
        }
    };
    let mut without = BTreeMap::new();
    let user_scopes: Vec<Scope> = Scope::ALL
        .into_iter()
        .filter(|s| *s != Scope::Executions)
        .collect();
    for missing in &user_scopes {
        let scopes: Vec<&str> = user_scopes
            .iter()
            .filter(|s| *s != missing)
            .map(|s| s.as_str())
            .collect();
        let (_, raw) =
            key(json!({ "name": format!("without {}", missing.as_str()), "scopes": scopes })).await;
        without.insert(missing.as_str(), raw);
    }
    let (_, expired) =
        key(json!({ "name": "expiring", "expiresAt": "2026-03-20T09:01:00.000Z" })).await;
    let (revoked_id, revoked) = key(json!({ "name": "revoked" })).await;
    assert_eq!(
        s.delete(&format!("/v1/keys/{revoked_id}"), &owner).await.0,
        StatusCode::OK
    );
    let (_, keys) = s.get("/v1/keys", &owner).await;
    let owner_key_id = keys["keys"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let beta = s.create_tenant("beta", "owner@beta.test");
    let (_, beta_target) = s
        .post(
            "/v1/agents/dispatch-targets",
            &beta.owner_key,
            json!({ "name": "worker", "kind": "LOCAL_AGENT" }),
        )
        .await;
    let (_, beta_agent) = s
        .post(
            "/v1/keys",
            &beta.owner_key,
            json!({ "name": "agent", "targetId": beta_target["id"] }),
        )
        .await;
    s.clock.advance_ms(120_000);

    let vars = BTreeMap::from([
        ("target", target_id),
        (
            "token",
            target["runtime"]["runtimeUpdatedAt"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        ("run", waiting["id"].as_str().unwrap().to_owned()),
        (
            "approval",
            waiting["approvals"][0]["id"].as_str().unwrap().to_owned(),
        ),
        (
            "execution",
            queued["execution"]["id"].as_str().unwrap().to_owned(),
        ),
        ("memory", memory["id"].as_str().unwrap().to_owned()),
        ("viewer_user", viewer_user),
        ("owner_key_id", owner_key_id),
        ("absent_key", ABSENT_KEY.to_owned()),
        ("absent_user", ABSENT_USER.to_owned()),
        ("absent_target", ABSENT_TARGET.to_owned()),
        ("absent_run", ABSENT_RUN.to_owned()),
        ("absent_memory", ABSENT_MEMORY.to_owned()),
        (
            "invitation",
            invitation["invitation"]["id"].as_str().unwrap().to_owned(),
        ),
        ("absent_invitation", ABSENT_INVITATION.to_owned()),
    ]);
    let keys = Keys {
        owner,
        viewer,
        agent: agent["key"].as_str().unwrap().to_owned(),
        expired,
        revoked,
        other_owner: beta.owner_key,
        other_agent: beta_agent["key"].as_str().unwrap().to_owned(),
        without,
    };
    Fixture { s, vars, keys }
}

/// What a caller should get from a row's probe request.
fn expected(row: &Row, caller: &str) -> (u16, &'static str) {
    let ok = (row.probe.2, "");
    match (row.access, caller) {
        (Access::Public, _) => ok,
        (_, "none" | "revoked") => (401, "unauthorized"),
        (_, "expired") => (401, "key_expired"),
        (Access::Agent, "agent" | "other agent") => ok,
        (Access::Agent, _) => (403, "agent_key_required"),
        (Access::Holder, "agent" | "other agent") => (403, "agent_key_forbidden"),
        (Access::Holder, _) => ok,
        (Access::User { .. }, "agent" | "other agent") => (403, "agent_key_forbidden"),
        (Access::User { .. }, "without scope") => (403, "insufficient_scope"),
        (Access::User { role, .. }, "viewer") if role != Role::Viewer => (403, "insufficient_role"),
        (Access::User { .. }, _) => ok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_admits_exactly_its_callers() {
    let f = fixture().await;
    let rows = rows();

    let served: BTreeMap<(String, String), Access> = memesh::http::route_table()
        .into_iter()
        .map(|r| ((r.method.to_string(), r.path), r.access))
        .collect();
    let tabled: BTreeMap<(String, String), Access> = rows
        .iter()
        .map(|r| ((r.method.to_string(), r.path.to_owned()), r.access))
        .collect();
    let missing: BTreeSet<_> = served.keys().filter(|k| !tabled.contains_key(*k)).collect();
    let stale: BTreeSet<_> = tabled.keys().filter(|k| !served.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "routes without a row in this table: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows for routes the server does not have: {stale:?}"
    );
    for (route, access) in &tabled {
        assert_eq!(
            served[route], *access,
            "{route:?} is declared with another access"
        );
    }

    let k = &f.keys;
    for row in &rows {
        let scope_less = match row.access {
            Access::User { scope, .. } => k.without[scope.as_str()].as_str(),
            _ => k.without["memory:read"].as_str(),
        };
        let callers = [
            ("none", None),
            ("owner", Some(k.owner.as_str())),
            ("viewer", Some(k.viewer.as_str())),
            ("agent", Some(k.agent.as_str())),
            ("without scope", Some(scope_less)),
            ("expired", Some(k.expired.as_str())),
            ("revoked", Some(k.revoked.as_str())),
            ("other owner", Some(k.other_owner.as_str())),
            ("other agent", Some(k.other_agent.as_str())),
        ];
        let (path, body, _) = &row.probe;
        for (caller, key) in callers {
            // Another tenant naming this tenant's resources is the cross check below.
            if caller.starts_with("other") && row.cross.is_some() {
                continue;
            }
            let (st, resp) = f.send(&row.method, path, key, body).await;
            let (status, error) = expected(row, caller);
            assert_eq!(
                st.as_u16(),
                status,
                "{} {path} as {caller}: {resp}",
                row.method
            );
            if !error.is_empty() {
                assert_eq!(code(&resp), error, "{} {path} as {caller}", row.method);
            }
        }
        // Another tenant's caller naming this tenant's resources finds nothing.
        if let Some((path, body)) = &row.cross {
            let key = if row.access == Access::Agent {
                &k.other_agent
            } else {
                &k.other_owner
            };
            let (st, resp) = f.send(&row.method, path, Some(key), body).await;
            assert_eq!(
                st,
                StatusCode::NOT_FOUND,
                "{} {path} from another tenant: {resp}",
                row.method
            );
        }
    }

    // Nothing the table sent changed anything.
    let (_, target) =
        f.s.get(&f.fill("/v1/agents/dispatch-targets/{target}"), &k.owner)
            .await;
    assert_eq!(
        target["runtime"]["runtimeUpdatedAt"],
        f.vars["token"].as_str()
    );
    assert_eq!(target["name"], "worker");
    let (_, run) =
        f.s.get(&f.fill("/v1/orchestrator/runs/{run}"), &k.owner)
            .await;
    assert_eq!(run["state"], "awaiting_approval");
    assert_eq!(
        f.s.get(&f.fill("/v1/memory/{memory}"), &k.owner).await.0,
        StatusCode::OK
    );
    let (_, members) = f.s.get("/v1/team/members", &k.owner).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2);
    assert_eq!(f.s.get("/v1/keys", &k.viewer).await.0, StatusCode::OK);
}

/// A `Grant` as the server makes it for a request carrying `key`.
async fn grant_for<P: memesh::auth::Permission>(s: &TestServer, key: &str) -> Grant<P> {
    let (mut parts, ()) = axum::http::Request::builder()
        .header("x-api-key", key)
        .body(())
        .unwrap()
        .into_parts();
    Grant::<P>::from_request_parts(&mut parts, &s.state)
        .await
        .expect("the key passes the check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demotion_or_revocation_that_commits_first_wins() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (admin_id, admin) = s.add_member(&owner, "admin@alpha.test", "ADMIN").await;
    // The admin's request is authenticated (and its role checked) ...
    let in_flight = grant_for::<AgentsWrite>(&s, &admin).await;
    // ... then the demotion commits ...
    let (st, _) = s
        .patch(
            &format!("/v1/team/members/{admin_id}/role"),
            &owner,
            json!({ "role": "MEMBER" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // ... and the mutation, re-checking inside its transaction, is refused.
    let err = in_flight.write(&s.state.db, |_| Ok(())).await.unwrap_err();
    assert_eq!(err.code.as_str(), "insufficient_role");

    let (_, created) = s
        .post("/v1/keys", &owner, json!({ "name": "soon revoked" }))
        .await;
    let raw = created["key"].as_str().unwrap().to_owned();
    let in_flight = grant_for::<MemoryWrite>(&s, &raw).await;
    let (st, _) = s
        .delete(
            &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
            &owner,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let err = in_flight.write(&s.state.db, |_| Ok(())).await.unwrap_err();
    assert_eq!(err.code.as_str(), "unauthorized");

    let (_, created) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "short", "expiresAt": "2026-03-20T09:00:30.000Z" }),
        )
        .await;
    let in_flight = grant_for::<KeysWrite>(&s, created["key"].as_str().unwrap()).await;
    s.clock.advance_ms(31_000);
    let err = in_flight.write(&s.state.db, |_| Ok(())).await.unwrap_err();
    assert_eq!(err.code.as_str(), "key_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_scopes_within_their_role() {
    let s = TestServer::start().await;
    let owner = s.owner_key.clone();
    let (_, member) = s.add_member(&owner, "m@alpha.test", "MEMBER").await;

    // A full key of a MEMBER shows what the role allows; it follows the role.
    let (_, keys) = s.get("/v1/keys", &member).await;
    let first = &keys["keys"][0];
    assert_eq!(first["restricted"], false);
    assert_eq!(first["kind"], "user");
    assert_eq!(first["expiresAt"], Value::Null);
    let scopes: Vec<&str> = first["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&"runs:write") && !scopes.contains(&"agents:write"),
        "{scopes:?}"
    );

    // Asking for a scope the role does not allow, or that the calling key lacks, is refused.
    let (st, err) = s
        .post(
            "/v1/keys",
            &member,
            json!({ "name": "k", "scopes": ["audit:read"] }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "insufficient_role"),
        "{err}"
    );
    let (st, narrow) = s
        .post(
            "/v1/keys",
            &member,
            json!({ "name": "mcp", "scopes": ["memory:*", "keys:write"] }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{narrow}");
    assert_eq!(
        narrow["scopes"],
        json!(["memory:read", "memory:write", "keys:write"])
    );
    assert_eq!(narrow["restricted"], true);
    let narrow_key = narrow["key"].as_str().unwrap();
    let (st, err) = s
        .post(
            "/v1/keys",
            narrow_key,
            json!({ "name": "k", "scopes": ["runs:write"] }),
        )
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "insufficient_scope"),
        "{err}"
    );
    assert_eq!(err["error"]["details"]["requiredScope"], "runs:write");
    // Without a list, a restricted key makes a key as restricted as itself, never more.
    let (st, child) = s
        .post("/v1/keys", narrow_key, json!({ "name": "child" }))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(child["scopes"], narrow["scopes"]);
    let (st, err) = s
        .get("/v1/orchestrator/runs", child["key"].as_str().unwrap())
        .await;
    assert_eq!(
        (st, code(&err)),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    assert_eq!(err["error"]["details"]["requiredScope"], "runs:read");

    for (body, field) in [
        (
            json!({ "name": "k", "scopes": ["memory:delete"] }),
            "scopes",
        ),
        (json!({ "name": "k", "scopes": [] }), "scopes"),
        (json!({ "name": "k", "scopes": ["executions"] }), "scopes"),
        (json!({ "name": "k", "expiresAt": START }), "expiresAt"),
        (json!({ "name": "k", "expiresAt": "tomorrow" }), "expiresAt"),
    ] {
        let (st, err) = s.post("/v1/keys", &owner, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body} → {err}");
        assert_eq!(err["error"]["details"]["field"], field, "{body} → {err}");
    }

    // Expiry shows in the list and ends the key with its own code.
    let (_, k) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "day", "expiresAt": "2026-03-21T09:00:00.000Z" }),
        )
        .await;
    assert_eq!(k["expiresAt"], "2026-03-21T09:00:00.000Z");
    let day = k["key"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/v1/team/members", &day).await.0, StatusCode::OK);
    s.clock.advance_ms(24 * 3_600_000);
    let (st, err) = s.get("/v1/team/members", &day).await;
    assert_eq!((st, code(&err)), (StatusCode::UNAUTHORIZED, "key_expired"));

    // A full key follows its user's role; a restricted one never grows past its list.
    let (_, members) = s.get("/v1/team/members", &owner).await;
    let member_id = members["members"][1]["userId"].as_str().unwrap().to_owned();
    let (st, _) = s
        .patch(
            &format!("/v1/team/members/{member_id}/role"),
            &owner,
            json!({ "role": "ADMIN" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, keys) = s.get("/v1/keys", &member).await;
    let by_name = |name: &str| {
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["scopes"]
            .clone()
    };
    assert!(
        by_name("first key")
            .as_array()
            .unwrap()
            .contains(&json!("audit:read"))
    );
    assert_eq!(
        by_name("mcp"),
        json!(["memory:read", "memory:write", "keys:write"])
    );
    assert_eq!(s.get("/v1/audit/logs", &member).await.0, StatusCode::OK);

    // An agent access key carries exactly `executions`.
    let (_, t) = s
        .post(
            "/v1/agents/dispatch-targets",
            &owner,
            json!({ "name": "w", "kind": "LOCAL_AGENT" }),
        )
        .await;
    let (st, agent) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "a", "targetId": t["id"], "scopes": ["memory:read"] }),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{agent}");
    let (st, agent) = s
        .post(
            "/v1/keys",
            &owner,
            json!({ "name": "a", "targetId": t["id"] }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        (agent["kind"].as_str(), agent["scopes"].clone()),
        (Some("agent"), json!(["executions"]))
    );
}
