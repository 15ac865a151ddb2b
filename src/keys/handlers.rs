//! `/v1/keys` handlers.

use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::Json;
use crate::ids::KeyId;
use crate::state::AppState;

use super::model::{CreateKeyRequest, CreatedKey, KeyName, KeyView, RevokedKey};
use super::store;

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<CreateKeyRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedKey>)> {
    let name = KeyName::parse(&body.name)?;
    let now = state.clock.now();
    let actor = principal.actor();
    let created = state
        .db
        .write(move |tx| store::create(tx, &actor, &principal.user_id, &name, None, now))
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
