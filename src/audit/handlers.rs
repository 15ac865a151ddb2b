//! `/v1/audit/logs`: a tenant's audit log for its OWNERs and ADMINs.

use axum::extract::State;

use crate::auth::{Principal, Role};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::Query;
use crate::state::AppState;

use super::model::{AuditFilter, AuditPage, AuditQueryParams};
use super::store;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

fn parse_filter(q: AuditQueryParams) -> ApiResult<AuditFilter> {
    let time = |field: &str, v: Option<String>| -> ApiResult<Option<Timestamp>> {
        v.map(|s| {
            Timestamp::parse(&s).ok_or_else(|| {
                ApiError::field(
                    field,
                    "must be an RFC 3339 time such as 2026-03-20T09:00:00.000Z",
                )
            })
        })
        .transpose()
    };
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    "must be a whole number from 1 to 1000",
                ));
            }
        },
    };
    let before_seq = q
        .cursor
        .map(|c| {
            c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::field("cursor", "must be a nextCursor from a previous page")
            })
        })
        .transpose()?;
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = AuditFilter {
        action: non_empty(q.action),
        resource: non_empty(q.resource),
        start: time("startDate", q.start_date)?,
        end: time("endDate", q.end_date)?,
        limit,
        before_seq,
    };
    if let (Some(start), Some(end)) = (filter.start, filter.end)
        && start > end
    {
        return Err(ApiError::field("startDate", "must not be after endDate"));
    }
    Ok(filter)
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<AuditQueryParams>,
) -> ApiResult<axum::Json<AuditPage>> {
    let granted = principal.require(Role::Admin)?;
    let filter = parse_filter(params)?;
    let page = state
        .db
        .read(move |c| store::query(c, granted.tenant_id(), &filter))
        .await?;
    Ok(axum::Json(page))
}
