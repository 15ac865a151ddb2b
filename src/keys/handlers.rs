//! `/v1/keys` handlers: a caller manages their own keys.

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::auth::perm::{AgentsWrite, KeysWrite};
use crate::auth::{Grant, Scope, Scopes};
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{Ids, Json, Query};
use crate::ids::{KeyId, TargetId};
use crate::state::AppState;

use super::model::{CreateKeyRequest, CreatedKey, KeyName, NewKey, RevokeParams, RevokedKey};
use super::store;

/// The scopes a new user key gets. Asked for: each must be allowed by the caller's role (403
/// `insufficient_role`) and held by the calling key (403 `insufficient_scope`), so no key can
/// mint a stronger one. Not asked for: the calling key's own scopes (a key that follows its
/// role makes another that does).
fn user_scopes(grant: &Grant<KeysWrite>, asked: Option<Vec<String>>) -> ApiResult<Option<Scopes>> {
    let Some(asked) = asked else {
        return Ok(grant.key_scopes());
    };
    let scopes = Scopes::parse_request("scopes", asked.iter().map(String::as_str))?;
    if scopes.is_empty() {
        return Err(ApiError::field("scopes", "must name at least one scope"));
    }
    if scopes.contains(Scope::Executions) {
        return Err(ApiError::field(
            "scopes",
            "executions is for agent access keys: give a targetId instead",
        ));
    }
    for scope in scopes.iter() {
        let needs = scope.min_role().filter(|min| !grant.role().at_least(*min));
        if let Some(min) = needs {
            return Err(ApiError::new(
                Code::InsufficientRole,
                format!(
                    "the {} scope needs the {} role",
                    scope.as_str(),
                    min.as_str()
                ),
            )
            .with_details(json!({ "scope": scope.as_str(), "requiredRole": min.as_str() })));
        }
        if !grant.scopes().contains(scope) {
            return Err(ApiError::new(
                Code::InsufficientScope,
                format!(
                    "this API key lacks the {} scope it asks to grant",
                    scope.as_str()
                ),
            )
            .with_details(json!({ "requiredScope": scope.as_str() })));
        }
    }
    Ok(Some(scopes))
}

pub async fn create(
    grant: Grant<KeysWrite>,
    State(state): State<AppState>,
    Json(body): Json<CreateKeyRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedKey>)> {
    let name = KeyName::parse(&body.name)?;
    let expires_at = body.expires_at;
    if expires_at.is_some_and(|t| t <= grant.now()) {
        return Err(ApiError::field("expiresAt", "must be in the future"));
    }
    let user = grant.user().clone();
    let created = match body.target_id {
        None => {
            let new = NewKey::User(user_scopes(&grant, body.scopes)?);
            grant
                .write(&state.db, move |w| {
                    store::create(w, &user, w.role(), &name, None, &new, expires_at)
                })
                .await?
        }
        // Binding a key to an agent is workspace management.
        Some(raw) => {
            let admin = grant.also::<AgentsWrite>()?;
            let target =
                TargetId::parse(&raw).ok_or_else(|| ApiError::not_found("dispatch target"))?;
            if body.scopes.is_some_and(|s| s != ["executions"]) {
                return Err(ApiError::field(
                    "scopes",
                    "an agent access key carries exactly [\"executions\"]",
                ));
            }
            admin
                .write(&state.db, move |w| {
                    crate::agents::store::ensure_local_agent(w, w.tenant(), &target)?;
                    let new = NewKey::Agent(target);
                    store::create(w, &user, w.role(), &name, None, &new, expires_at)
                })
                .await?
        }
    };
    Ok((StatusCode::CREATED, axum::Json(created)))
}

pub async fn list(
    grant: Grant<KeysWrite>,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let (tenant, user, role) = (grant.tenant().clone(), grant.user().clone(), grant.role());
    let keys = state
        .db
        .read(move |c| store::list(c, &tenant, &user, role))
        .await?;
    Ok(axum::Json(json!({ "keys": keys })))
}

pub async fn revoke(
    grant: Grant<KeysWrite>,
    State(state): State<AppState>,
    Ids(key_id): Ids<KeyId>,
    Query(params): Query<RevokeParams>,
) -> ApiResult<axum::Json<RevokedKey>> {
    let cascade = params.cascade.unwrap_or(false);
    let revoked = grant
        .write(&state.db, move |w| store::revoke(w, &key_id, cascade))
        .await?;
    Ok(axum::Json(revoked))
}
