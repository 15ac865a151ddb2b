//! Response shapes, pinned with insta snapshots (ids, keys, hashes and timestamps redacted), so
//! a change to what clients receive is always a deliberate, reviewed one.

mod common;

use common::TestServer;
use insta::assert_json_snapshot;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_shapes() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let (st, written) = s
        .post(
            "/v1/memory/write",
            &k,
            json!({ "content": "The cat sits on the mat.", "space": "pets", "tags": ["cat"], "summary": "a cat", "source": "docs" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_json_snapshot!("memory_write", written, { ".id" => "[memory id]" });

    let (_, found) = s
        .post(
            "/v1/memory/search",
            &k,
            json!({ "query": "cat", "limit": 1 }),
        )
        .await;
    assert_json_snapshot!("memory_search", found, {
        ".results[].memory.id" => "[memory id]",
        ".results[].score" => "[score]",
    });

    let (_, err) = s
        .post("/v1/memory/write", &k, json!({ "content": "" }))
        .await;
    assert_json_snapshot!("memory_write_error", err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_and_key_shapes() {
    let s = TestServer::start().await;
    let k = s.owner_key.clone();
    let (_, key) = s.post("/v1/keys", &k, json!({ "name": "ci" })).await;
    assert_json_snapshot!("key_create", key, {
        ".id" => "[key id]", ".userId" => "[user id]", ".key" => "[secret]", ".maskedKey" => "[mask]",
        ".parentKeyId" => "[parent key id]",
    });
    let (_, inv) = s
        .post(
            "/v1/team/members/invite",
            &k,
            json!({ "email": "new@alpha.test", "role": "VIEWER" }),
        )
        .await;
    assert_json_snapshot!("team_invite", inv, {
        ".invitation.id" => "[invitation id]", ".invitation.invitedBy" => "[user id]",
        ".token" => "[secret]", ".acceptPath" => "[path]",
    });
    let (_, logs) = s.get("/v1/audit/logs?limit=1", &k).await;
    assert_json_snapshot!("audit_page", logs, {
        ".logs[].id" => "[audit id]", ".logs[].resourceId" => "[id]", ".logs[].actor.userId" => "[user id]",
        ".logs[].actor.keyId" => "[key id]", ".logs[].hash" => "[hash]", ".logs[].requestId" => "[request id]",
        ".logs[].detail.invitationId" => "[invitation id]",
    });
}
