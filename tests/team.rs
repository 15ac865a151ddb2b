//! Team: invitations, roles, the last-owner rule, removal, and tenant isolation.

mod common;

use common::{TestServer, code};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitation_flow_creates_member_with_first_key() {
    let s = TestServer::start().await;
    let (st, inv) = s
        .post(
            "/v1/team/members/invite",
            &s.owner_key,
            json!({ "email": "Ann@Alpha.Test" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(inv["invitation"]["email"], "ann@alpha.test");
    assert_eq!(inv["invitation"]["role"], "MEMBER", "default role");
    assert_eq!(
        inv["invitation"]["expiresAt"], "2026-03-23T09:00:00.000Z",
        "72 h"
    );
    assert!(
        inv["invitation"]["id"]
            .as_str()
            .unwrap()
            .starts_with("inv_")
    );
    let token = inv["token"].as_str().unwrap().to_owned();
    assert_eq!(
        inv["acceptPath"],
        format!("/v1/team/invitations/{token}/accept")
    );

    // A second invitation for the same pending email conflicts.
    let (st, body) = s
        .post(
            "/v1/team/members/invite",
            &s.owner_key,
            json!({ "email": "ann@alpha.test" }),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(code(&body), "invitation_pending");

    let accept = format!("/v1/team/invitations/{token}/accept");
    let (st, acc) = s.call(Method::POST, &accept, None, None).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(acc["member"]["role"], "MEMBER");
    let key = acc["apiKey"]["key"].as_str().unwrap();
    let (st, members) = s.get("/v1/team/members", key).await;
    assert_eq!(st, StatusCode::OK, "the new member's key works");
    let emails: Vec<_> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(emails, ["owner@alpha.test", "ann@alpha.test"]);

    let (st, body) = s.call(Method::POST, &accept, None, None).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(code(&body), "invitation_used");

    let (st, body) = s
        .post(
            "/v1/team/members/invite",
            &s.owner_key,
            json!({ "email": "ann@alpha.test" }),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(code(&body), "already_member");

    let (st, _) = s
        .call(
            Method::POST,
            "/v1/team/invitations/mkinv_nope/accept",
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_invitation_is_refused_and_can_be_reissued() {
    let s = TestServer::start().await;
    let (_, inv) = s
        .post(
            "/v1/team/members/invite",
            &s.owner_key,
            json!({ "email": "late@alpha.test" }),
        )
        .await;
    s.clock.advance_ms(72 * 3600 * 1000);
    let accept = format!(
        "/v1/team/invitations/{}/accept",
        inv["token"].as_str().unwrap()
    );
    let (st, body) = s.call(Method::POST, &accept, None, None).await;
    assert_eq!(st, StatusCode::GONE);
    assert_eq!(code(&body), "invitation_expired");
    let (st, _) = s
        .post(
            "/v1/team/members/invite",
            &s.owner_key,
            json!({ "email": "late@alpha.test" }),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::CREATED,
        "a fresh invitation replaces an expired one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_validation() {
    let s = TestServer::start().await;
    for (body, field) in [
        (json!({ "email": "not-an-email" }), "email"),
        (json!({ "email": "" }), "email"),
        (json!({ "email": "a@b.test", "role": "BOSS" }), "role"),
        (json!({ "role": "ADMIN" }), "email"),
    ] {
        let (st, err) = s
            .post("/v1/team/members/invite", &s.owner_key, body.clone())
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error"]["details"]["field"], field, "{body}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_viewers_cannot_manage_the_team() {
    let s = TestServer::start().await;
    let (member_id, member) = s.add_member(&s.owner_key, "m@alpha.test", "MEMBER").await;
    let (viewer_id, viewer) = s.add_member(&s.owner_key, "v@alpha.test", "VIEWER").await;
    for key in [&member, &viewer] {
        let (st, body) = s
            .post(
                "/v1/team/members/invite",
                key,
                json!({ "email": "x@alpha.test" }),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        assert_eq!(code(&body), "insufficient_role");
        let (st, _) = s
            .patch(
                &format!("/v1/team/members/{viewer_id}/role"),
                key,
                json!({ "role": "ADMIN" }),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, _) = s
            .delete(&format!("/v1/team/members/{member_id}"), key)
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        assert_eq!(
            s.get("/v1/team/members", key).await.0,
            StatusCode::OK,
            "may list"
        );
    }
    let (_, members) = s.get("/v1/team/members", &s.owner_key).await;
    assert_eq!(
        members["members"].as_array().unwrap().len(),
        3,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cannot_grant_or_touch_owner() {
    let s = TestServer::start().await;
    let (_, admin) = s.add_member(&s.owner_key, "a@alpha.test", "ADMIN").await;
    let (member_id, _) = s.add_member(&admin, "m@alpha.test", "MEMBER").await;
    let (_, members) = s.get("/v1/team/members", &admin).await;
    let owner_id = members["members"][0]["userId"].as_str().unwrap().to_owned();

    let (st, _) = s
        .post(
            "/v1/team/members/invite",
            &admin,
            json!({ "email": "o@alpha.test", "role": "OWNER" }),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .patch(
            &format!("/v1/team/members/{member_id}/role"),
            &admin,
            json!({ "role": "OWNER" }),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .patch(
            &format!("/v1/team/members/{owner_id}/role"),
            &admin,
            json!({ "role": "VIEWER" }),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .delete(&format!("/v1/team/members/{owner_id}"), &admin)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let (st, m) = s
        .patch(
            &format!("/v1/team/members/{member_id}/role"),
            &admin,
            json!({ "role": "VIEWER" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(m["role"], "VIEWER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_owner_can_never_be_demoted_or_removed() {
    let s = TestServer::start().await;
    let (_, members) = s.get("/v1/team/members", &s.owner_key).await;
    let owner_id = members["members"][0]["userId"].as_str().unwrap().to_owned();

    let (st, body) = s
        .patch(
            &format!("/v1/team/members/{owner_id}/role"),
            &s.owner_key,
            json!({ "role": "ADMIN" }),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(code(&body), "last_owner");
    let (st, body) = s
        .delete(&format!("/v1/team/members/{owner_id}"), &s.owner_key)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(code(&body), "last_owner");

    // With a second owner, the first may step down; then the second is the last.
    let (second_id, second) = s.add_member(&s.owner_key, "o2@alpha.test", "OWNER").await;
    let (st, m) = s
        .patch(
            &format!("/v1/team/members/{owner_id}/role"),
            &s.owner_key,
            json!({ "role": "ADMIN" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    let (st, body) = s
        .delete(&format!("/v1/team/members/{second_id}"), &second)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(code(&body), "last_owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_demotions_leave_one_owner() {
    let s = TestServer::start().await;
    let (_, members) = s.get("/v1/team/members", &s.owner_key).await;
    let first_id = members["members"][0]["userId"].as_str().unwrap().to_owned();
    let (second_id, second) = s.add_member(&s.owner_key, "o2@alpha.test", "OWNER").await;
    // Each owner demotes the other at the same time: exactly one can win.
    let (path_a, path_b) = (
        format!("/v1/team/members/{second_id}/role"),
        format!("/v1/team/members/{first_id}/role"),
    );
    let a = s.patch(&path_a, &s.owner_key, json!({ "role": "MEMBER" }));
    let b = s.patch(&path_b, &second, json!({ "role": "MEMBER" }));
    let ((sa, _), (sb, _)) = tokio::join!(a, b);
    let mut statuses = [sa, sb];
    statuses.sort();
    assert!(
        statuses == [StatusCode::OK, StatusCode::FORBIDDEN]
            || statuses == [StatusCode::OK, StatusCode::CONFLICT],
        "{statuses:?}"
    );
    let (_, list) = s.get("/v1/team/members", &s.owner_key).await;
    let owners = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "OWNER")
        .count();
    assert_eq!(owners, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_revokes_keys_and_allows_reinvite() {
    let s = TestServer::start().await;
    let (id, key) = s.add_member(&s.owner_key, "m@alpha.test", "MEMBER").await;
    let (st, body) = s
        .delete(&format!("/v1/team/members/{id}"), &s.owner_key)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["keysRevoked"], 1);
    assert_eq!(s.get("/v1/keys", &key).await.0, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .delete(&format!("/v1/team/members/{id}"), &s.owner_key)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (new_id, _) = s.add_member(&s.owner_key, "m@alpha.test", "VIEWER").await;
    assert_ne!(new_id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_sees_none_of_this_one() {
    let s = TestServer::start().await;
    let (member_id, _) = s.add_member(&s.owner_key, "m@alpha.test", "MEMBER").await;
    let beta = s.create_tenant("beta", "owner@beta.test");

    let (_, members) = s.get("/v1/team/members", &beta.owner_key).await;
    let list = members["members"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["email"], "owner@beta.test");

    let (st, body) = s
        .patch(
            &format!("/v1/team/members/{member_id}/role"),
            &beta.owner_key,
            json!({ "role": "ADMIN" }),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "not_found");
    let (st, _) = s
        .delete(&format!("/v1/team/members/{member_id}"), &beta.owner_key)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // The same email may belong to both tenants independently.
    s.add_member(&beta.owner_key, "m@alpha.test", "MEMBER")
        .await;
    let (_, alpha) = s.get("/v1/team/members", &s.owner_key).await;
    assert_eq!(alpha["members"].as_array().unwrap().len(), 2);
}
