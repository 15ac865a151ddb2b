//! `/v1/audit/logs`: a tenant's audit log for its OWNERs and ADMINs.

use axum::extract::State;

use crate::auth::Grant;
use crate::auth::perm::AuditRead;
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{Query, limit_within, query_number};
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
    let limit = limit_within(
        query_number("limit", q.limit.as_deref(), MAX_LIMIT)?,
        DEFAULT_LIMIT,
        MAX_LIMIT,
    )?;
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
    grant: Grant<AuditRead>,
    State(state): State<AppState>,
    Query(params): Query<AuditQueryParams>,
) -> ApiResult<axum::Json<AuditPage>> {
    let filter = parse_filter(params)?;
    let tenant = grant.tenant().clone();
    let page = state
        .db
        .read(move |c| store::query(c, &tenant, &filter))
        .await?;
    Ok(axum::Json(page))
}
