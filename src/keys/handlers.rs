//! `/v1/keys` handlers.

use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::Json;
use crate::ids::{KeyId, TargetId};
use crate::state::AppState;

use super::model::{CreateKeyRequest, CreatedKey, KeyName, KeyView, RevokedKey};
use super::store;

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<CreateKeyRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedKey>)> {
    let name = KeyName::parse(&body.name)?;
    if principal.agent_target.is_some() {
        return Err(ApiError::new(
            Code::AgentKeyForbidden,
            "an agent access key cannot create keys",
        ));
    }
    // Binding a key to an agent is workspace management: OWNER or ADMIN.
    let target = match body.target_id.as_deref() {
        None => None,
        Some(raw) => {
            principal.require(Role::Admin)?;
            Some(TargetId::parse(raw).ok_or_else(|| ApiError::not_found("dispatch target"))?)
        }
    };
    let now = state.clock.now();
    let actor = principal.actor();
    let created = state
        .db
        .write(move |tx| {
            if let Some(t) = &target {
                crate::agents::store::ensure_local_agent(tx, &actor.tenant_id, t)?;
            }
            store::create_for(
                tx,
                &actor,
                &principal.user_id,
                &name,
                None,
                target.as_ref(),
                now,
            )
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let keys: Vec<KeyView> = state
        .db
        .read(move |c| store::list(c, &principal.tenant_id, &principal.user_id))
        .await?;
    Ok(axum::Json(serde_json::json!({ "keys": keys })))
}

pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<RevokedKey>> {
    let key_id = KeyId::parse(&id).ok_or_else(|| ApiError::not_found("API key"))?;
    let now = state.clock.now();
    let actor = principal.actor();
    let revoked = state
        .db
        .write(move |tx| store::revoke(tx, &actor, &principal.user_id, &key_id, now))
        .await?;
    Ok(axum::Json(revoked))
}
