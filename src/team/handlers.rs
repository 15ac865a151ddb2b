//! `/v1/team` handlers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::auth::{INVITATION_TOKEN_PREFIX, Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::Json;
use crate::ids::UserId;
use crate::state::AppState;

use super::model::{
    AcceptedInvitation, CreatedInvitation, Email, InviteRequest, Member, RemovedMember,
    RoleChangeRequest,
};
use super::store;

fn user_id(raw: &str) -> ApiResult<UserId> {
    UserId::parse(raw).ok_or_else(|| ApiError::not_found("member"))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Value>> {
    let members = state
        .db
        .read(move |c| store::list_members(c, &principal.tenant_id))
        .await?;
    Ok(axum::Json(json!({ "members": members })))
}

pub async fn invite(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<InviteRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedInvitation>)> {
    let granted = principal.require(Role::Admin)?;
    let email = Email::parse(&body.email)?;
    let role = body.role.unwrap_or(Role::Member);
    let ttl_ms = i64::try_from(state.settings.invitation_ttl.as_millis()).unwrap_or(i64::MAX);
    let now = state.clock.now();
    let created = state
        .db
        .write(move |tx| store::invite(tx, &granted, &email, role, ttl_ms, now))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// No API key: the invitation token is the credential.
pub async fn accept(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<AcceptedInvitation>)> {
    if !token.starts_with(INVITATION_TOKEN_PREFIX) {
        return Err(ApiError::not_found("invitation"));
    }
    let now = state.clock.now();
    let accepted = state
        .db
        .write(move |tx| store::accept(tx, &token, now))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(accepted)))
}

pub async fn change_role(
    State(state): State<AppState>,
    principal: Principal,
    Path(user): Path<String>,
    Json(body): Json<RoleChangeRequest>,
) -> ApiResult<axum::Json<Member>> {
    let granted = principal.require(Role::Admin)?;
    let user = user_id(&user)?;
    let now = state.clock.now();
    let member = state
        .db
        .write(move |tx| store::change_role(tx, &granted, &user, body.role, now))
        .await?;
    Ok(axum::Json(member))
}

pub async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<RemovedMember>> {
    let granted = principal.require(Role::Admin)?;
    let user = user_id(&user)?;
    let now = state.clock.now();
    let removed = state
        .db
        .write(move |tx| store::remove(tx, &granted, &user, now))
        .await?;
    Ok(axum::Json(removed))
}
