//! API keys: shown once, listed masked, revoked for good, scoped to their user.

mod common;

use common::{TestServer, code};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_shows_raw_key_once_and_list_masks_it() {
    let s = TestServer::start().await;
    let (st, created) = s
        .post("/v1/keys", &s.owner_key, json!({ "name": "  ci runner " }))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let raw = created["key"].as_str().unwrap().to_owned();
    assert!(raw.starts_with("mk_") && raw.len() == 46, "{raw}");
    assert!(created["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(created["name"], "ci runner");
    assert_eq!(created["createdAt"], common::START);

    let (st, list) = s.get("/v1/keys", &s.owner_key).await;
    assert_eq!(st, StatusCode::OK);
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let listed = keys.iter().find(|k| k["id"] == created["id"]).unwrap();
    let mask = listed["maskedKey"].as_str().unwrap();
    assert!(
        mask.starts_with(&raw[..11]) && mask.ends_with(&raw[raw.len() - 4..]),
        "{mask}"
    );
    assert!(
        !list.to_string().contains(&raw),
        "the raw key never appears in a list"
    );
    assert!(listed.get("key").is_none());

    // The new key works, and marks itself used.
    let (st, list) = s.get("/v1/keys", &raw).await;
    assert_eq!(st, StatusCode::OK);
    let me = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap()
        .clone();
    assert_eq!(me["lastUsedAt"], common::START);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_is_refused_at_once_and_for_good() {
    let s = TestServer::start().await;
    let (_, created) = s
        .post("/v1/keys", &s.owner_key, json!({ "name": "temp" }))
        .await;
    let raw = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/v1/keys", &raw).await.0, StatusCode::OK);

    let (st, body) = s.delete(&format!("/v1/keys/{id}"), &s.owner_key).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["id"], id.as_str());
    let (st, body) = s.get("/v1/keys", &raw).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthorized");

    let (st, _) = s.delete(&format!("/v1/keys/{id}"), &s.owner_key).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "revoking twice");
    let (_, list) = s.get("/v1/keys", &s.owner_key).await;
    assert!(
        list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != id.as_str())
    );

    let s = s.restart().await;
    assert_eq!(
        s.get("/v1/keys", &raw).await.0,
        StatusCode::UNAUTHORIZED,
        "after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_other_users_and_tenants_are_invisible() {
    let s = TestServer::start().await;
    let (_, member_key) = s.add_member(&s.owner_key, "m@alpha.test", "MEMBER").await;
    let (_, owner_keys) = s.get("/v1/keys", &s.owner_key).await;
    let owner_key_id = owner_keys["keys"][0]["id"].as_str().unwrap().to_owned();

    let (_, member_keys) = s.get("/v1/keys", &member_key).await;
    assert_eq!(member_keys["keys"].as_array().unwrap().len(), 1);
    assert_ne!(member_keys["keys"][0]["id"], owner_key_id.as_str());
    let (st, _) = s
        .delete(&format!("/v1/keys/{owner_key_id}"), &member_key)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let other = s.create_tenant("beta", "owner@beta.test");
    let (st, _) = s
        .delete(&format!("/v1/keys/{owner_key_id}"), &other.owner_key)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        s.get("/v1/keys", &s.owner_key).await.0,
        StatusCode::OK,
        "still live"
    );

    let (st, _) = s.delete("/v1/keys/not-an-id", &s.owner_key).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_may_manage_own_keys() {
    let s = TestServer::start().await;
    let (_, viewer) = s.add_member(&s.owner_key, "v@alpha.test", "VIEWER").await;
    let (st, created) = s.post("/v1/keys", &viewer, json!({ "name": "mine" })).await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, list) = s.get("/v1/keys", created["key"].as_str().unwrap()).await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
}
