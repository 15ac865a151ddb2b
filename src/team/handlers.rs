//! `/v1/team` handlers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::auth::perm::{TeamInvitations, TeamRead, TeamWrite};
use crate::auth::{Grant, INVITATION_TOKEN_PREFIX, Role};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{Ids, Json};
use crate::ids::{InvitationId, UserId};
use crate::state::AppState;

use super::model::{
    AcceptedInvitation, CreatedInvitation, Email, InviteRequest, Member, RemovedMember,
    RoleChangeRequest,
};
use super::store;

pub async fn list(
    grant: Grant<TeamRead>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let tenant = grant.tenant().clone();
    let members = state
        .db
        .read(move |c| store::list_members(c, &tenant))
        .await?;
    Ok(axum::Json(json!({ "members": members })))
}

pub async fn invite(
    grant: Grant<TeamWrite>,
    State(state): State<AppState>,
    Json(body): Json<InviteRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedInvitation>)> {
    let email = Email::parse(&body.email)?;
    let role = body.role.unwrap_or(Role::Member);
    let ttl_ms = i64::try_from(state.settings.invitation_ttl.as_millis()).unwrap_or(i64::MAX);
    let created = grant
        .write(&state.db, move |w| store::invite(w, &email, role, ttl_ms))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// No API key: the invitation token is the credential.
pub async fn accept(
    State(state): State<AppState>,
    crate::http::extract::ClientAddr(addr): crate::http::extract::ClientAddr,
    Path(token): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<AcceptedInvitation>)> {
    state.plans.check_address(addr)?;
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
    grant: Grant<TeamWrite>,
    State(state): State<AppState>,
    Ids(user): Ids<UserId>,
    Json(body): Json<RoleChangeRequest>,
) -> ApiResult<axum::Json<Member>> {
    let member = grant
        .write(&state.db, move |w| store::change_role(w, &user, body.role))
        .await?;
    Ok(axum::Json(member))
}

pub async fn remove(
    grant: Grant<TeamWrite>,
    State(state): State<AppState>,
    Ids(user): Ids<UserId>,
) -> ApiResult<axum::Json<RemovedMember>> {
    let removed = grant
        .write(&state.db, move |w| store::remove(w, &user))
        .await?;
    Ok(axum::Json(removed))
}

/// The invitations still waiting to be accepted.
pub async fn list_invitations(
    grant: Grant<TeamInvitations>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let (tenant, now) = (grant.tenant().clone(), grant.now());
    let invitations = state
        .db
        .read(move |c| store::list_invitations(c, &tenant, now))
        .await?;
    Ok(axum::Json(json!({ "invitations": invitations })))
}

pub async fn revoke_invitation(
    grant: Grant<TeamWrite>,
    State(state): State<AppState>,
    Ids(id): Ids<InvitationId>,
) -> ApiResult<axum::Json<Value>> {
    let revoked = grant
        .write(&state.db, move |w| store::revoke_invitation(w, &id))
        .await?;
    Ok(axum::Json(revoked))
}
