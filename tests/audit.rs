//! The audit log: every mutation recorded with its actor and request id, filters, pagination,
//! access rules, tenant scoping, and no secrets.

mod common;

use std::collections::HashSet;

use common::{TestServer, code};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn all_logs(s: &TestServer, key: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/audit/logs?limit=3{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (st, page) = s.get(&path, key).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        out.extend(page["logs"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_are_recorded_with_actor_and_request_id() {
    let s = TestServer::start().await;
    let resp = s
        .client
        .post(s.url("/v1/keys"))
        .header("x-api-key", &s.owner_key)
        .header("x-request-id", "req-audit-1")
        .json(&json!({ "name": "audited" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // The server files the request under its own id; the caller's is echoed apart.
    let server_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(server_id, "req-audit-1");
    assert_eq!(resp.headers()["x-client-request-id"], "req-audit-1");
    let created: Value = resp.json().await.unwrap();

    let (st, page) = s
        .get("/v1/audit/logs?action=keys.create&limit=1", &s.owner_key)
        .await;
    assert_eq!(st, StatusCode::OK);
    let entry = &page["logs"][0];
    assert_eq!(entry["action"], "keys.create");
    assert_eq!(entry["resourceType"], "api_key");
    assert_eq!(entry["resourceId"], created["id"]);
    assert_eq!(entry["requestId"], server_id.as_str());
    assert_eq!(entry["detail"]["clientRequestId"], "req-audit-1");
    assert_eq!(entry["outcome"], "success");
    assert_eq!(entry["actor"]["type"], "user");
    assert!(
        entry["actor"]["userId"]
            .as_str()
            .unwrap()
            .starts_with("usr_")
    );
    assert!(
        entry["actor"]["keyId"]
            .as_str()
            .unwrap()
            .starts_with("key_")
    );
    assert_eq!(entry["createdAt"], common::START);
    assert_eq!(entry["detail"]["name"], "audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_team_and_key_mutation_is_audited_without_secrets() {
    let s = TestServer::start().await;
    let (_, created) = s
        .post("/v1/keys", &s.owner_key, json!({ "name": "k" }))
        .await;
    let raw = created["key"].as_str().unwrap().to_owned();
    s.delete(
        &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
        &s.owner_key,
    )
    .await;
    let (_, inv) = s
        .post(
            "/v1/team/members/invite",
            &s.owner_key,
            json!({ "email": "m@alpha.test" }),
        )
        .await;
    let token = inv["token"].as_str().unwrap().to_owned();
    let (st, acc) = s
        .call(
            reqwest::Method::POST,
            &format!("/v1/team/invitations/{token}/accept"),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let member_key = acc["apiKey"]["key"].as_str().unwrap().to_owned();
    let member_id = acc["member"]["userId"].as_str().unwrap().to_owned();
    s.patch(
        &format!("/v1/team/members/{member_id}/role"),
        &s.owner_key,
        json!({ "role": "ADMIN" }),
    )
    .await;
    s.delete(&format!("/v1/team/members/{member_id}"), &s.owner_key)
        .await;

    let logs = all_logs(&s, &s.owner_key, "").await;
    let actions: Vec<&str> = logs.iter().map(|l| l["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "team.member.remove",
            "team.member.role_change",
            "keys.create",
            "team.invitation.accept",
            "team.member.invite",
            "keys.revoke",
            "keys.create",
            "keys.create",
            "tenant.create",
        ]
    );
    let dump = serde_json::to_string(&logs).unwrap();
    for secret in [&raw, &token, &member_key, &s.owner_key] {
        assert!(
            !dump.contains(secret.as_str()),
            "a secret leaked into the audit log"
        );
    }
    let role_change = &logs[1];
    assert_eq!(
        role_change["detail"],
        json!({ "from": "MEMBER", "to": "ADMIN" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_pagination() {
    let s = TestServer::start().await;
    for i in 0..7 {
        s.clock.advance_ms(60_000);
        let (st, _) = s
            .post("/v1/keys", &s.owner_key, json!({ "name": format!("k{i}") }))
            .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    // 1 tenant.create + 1 bootstrap key + 7 keys.
    let logs = all_logs(&s, &s.owner_key, "").await;
    assert_eq!(logs.len(), 9);
    let seqs: Vec<i64> = logs
        .iter()
        .map(|l| l["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=9).rev().collect::<Vec<_>>(),
        "newest first, no gaps or repeats"
    );
    let ids: HashSet<_> = logs.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 9);

    let keys_only = all_logs(&s, &s.owner_key, "&action=keys.create").await;
    assert_eq!(keys_only.len(), 8);
    let prefix = all_logs(&s, &s.owner_key, "&action=keys.*").await;
    assert_eq!(prefix.len(), 8);
    let tenant_rows = all_logs(&s, &s.owner_key, "&resource=tenant").await;
    assert_eq!(tenant_rows.len(), 1);
    let one_key = keys_only[0]["resourceId"].as_str().unwrap().to_owned();
    let by_id = all_logs(&s, &s.owner_key, &format!("&resource={one_key}")).await;
    assert_eq!(by_id.len(), 1);

    // Keys k2..k4 were created at START + 3, 4, 5 minutes.
    let window = all_logs(
        &s,
        &s.owner_key,
        "&startDate=2026-03-20T09:03:00.000Z&endDate=2026-03-20T18:05:00%2B09:00",
    )
    .await;
    let names: Vec<&str> = window
        .iter()
        .map(|l| l["detail"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["k4", "k3", "k2"]);

    let (_, page) = s.get("/v1/audit/logs", &s.owner_key).await;
    assert_eq!(
        page["logs"].as_array().unwrap().len(),
        9,
        "default limit is 100"
    );
    assert!(page["nextCursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_are_400() {
    let s = TestServer::start().await;
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("startDate=yesterday", "startDate"),
        ("cursor=abc", "cursor"),
        (
            "startDate=2026-03-21T00:00:00Z&endDate=2026-03-20T00:00:00Z",
            "startDate",
        ),
    ] {
        let (st, body) = s.get(&format!("/v1/audit/logs?{q}"), &s.owner_key).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(body["error"]["details"]["field"], field, "{q}: {body}");
    }
    let (st, body) = s.get("/v1/audit/logs?colour=red", &s.owner_key).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_field");
    let (st, _) = s.get("/v1/audit/logs?limit=1000", &s.owner_key).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_owners_and_admins_read_their_own_tenant() {
    let s = TestServer::start().await;
    let (_, member) = s.add_member(&s.owner_key, "m@alpha.test", "MEMBER").await;
    let (_, admin) = s.add_member(&s.owner_key, "a@alpha.test", "ADMIN").await;
    let (st, body) = s.get("/v1/audit/logs", &member).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "insufficient_role");
    assert_eq!(s.get("/v1/audit/logs", &admin).await.0, StatusCode::OK);

    let beta = s.create_tenant("beta", "owner@beta.test");
    let beta_logs = all_logs(&s, &beta.owner_key, "").await;
    let actions: Vec<&str> = beta_logs
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["keys.create", "tenant.create"],
        "only beta's own rows"
    );
    let alpha_logs = all_logs(&s, &s.owner_key, "").await;
    assert!(
        alpha_logs
            .iter()
            .all(|l| l["resourceId"] != beta.id.as_str())
    );
}
