//! Plan SQL: which plan each tenant is on, the limits row the quota triggers read, the usage
//! counters the triggers keep, and the plans job that keeps all of it in step with the file.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::Write;
use crate::auth::perm::TeamWrite;
use crate::clock::Timestamp;
use crate::db::Tx;
use crate::error::{ApiError, ApiResult};
use crate::ids::{TenantId, UserId};
use crate::state::AppState;

use super::{Limits, PlanBook};

fn as_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Writes a tenant's limits row as `limits` says (if it differs).
fn write_limits(tx: &Tx<'_>, tenant: &TenantId, plan: &str, l: &Limits) -> ApiResult<bool> {
    let row = (
        plan,
        as_i64(l.memories_per_user),
        as_i64(l.bytes_per_tenant),
        as_i64(l.keys_per_user),
        as_i64(l.targets_per_tenant),
        as_i64(l.seats),
        as_i64(l.runs_waiting),
    );
    type Row = (
        String,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let current: Option<Row> = tx
        .prepare_cached(
            "SELECT plan, memories_per_user, bytes_per_tenant, keys_per_user, targets_per_tenant,
                    seats, runs_waiting FROM tenant_limits WHERE tenant_id = ?1",
        )?
        .query_row([tenant], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .optional()?;
    if current.is_some_and(|c| (c.0.as_str(), c.1, c.2, c.3, c.4, c.5, c.6) == row) {
        return Ok(false);
    }
    crate::db::exec(
        tx,
        "INSERT INTO tenant_limits (tenant_id, plan, memories_per_user, bytes_per_tenant,
             keys_per_user, targets_per_tenant, seats, runs_waiting)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (tenant_id) DO UPDATE SET plan = excluded.plan,
             memories_per_user = excluded.memories_per_user,
             bytes_per_tenant = excluded.bytes_per_tenant, keys_per_user = excluded.keys_per_user,
             targets_per_tenant = excluded.targets_per_tenant, seats = excluded.seats,
             runs_waiting = excluded.runs_waiting",
        rusqlite::params![tenant, row.0, row.1, row.2, row.3, row.4, row.5, row.6],
    )?;
    Ok(true)
}

/// Every tenant and the plan it was assigned (`None`: the default).
fn assignments(conn: &Connection) -> ApiResult<Vec<(TenantId, Option<String>)>> {
    Ok(conn
        .prepare_cached("SELECT id, plan FROM tenants")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Brings every tenant's limits row in line with the book; returns who is on which plan.
pub fn sync(tx: &Tx<'_>, book: &PlanBook) -> ApiResult<HashMap<TenantId, String>> {
    let mut on = HashMap::new();
    for (tenant, plan) in assignments(tx)? {
        if let Some(p) = &plan
            && !book.plans.contains_key(p)
        {
            tracing::warn!(tenant = %tenant, plan = %p, "assigned plan is not in the plans file; the default plan applies");
        }
        let (name, limits) = book.get(plan.as_deref());
        write_limits(tx, &tenant, name, limits)?;
        on.insert(tenant, name.to_owned());
    }
    Ok(on)
}

/// Re-reads the plans file if it changed, syncs the limits rows, and installs both in the
/// running server (the `plans` job; also at start).
pub async fn reload(state: &AppState) -> ApiResult<()> {
    let config = &state.settings.plans;
    let registry = &state.plans;
    let book = if registry.book().stale(config.file.as_deref()) {
        match super::PlanBook::load(config.file.as_deref(), config.rate) {
            Ok(b) => b,
            Err(e) => {
                // A broken edit keeps the plans in force; the job reports the error.
                return Err(ApiError::internal(anyhow::anyhow!(
                    "the plans file could not be read: {e:#}"
                )));
            }
        }
    } else {
        (*registry.book()).clone()
    };
    let b = book.clone();
    let assigned = state.db.write(move |tx| sync(tx, &b)).await?;
    registry.install(book, assigned);
    Ok(())
}

/// A tenant by id or by name.
pub fn find_tenant(conn: &Connection, id_or_name: &str) -> ApiResult<Option<(TenantId, String)>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, name FROM tenants WHERE id = ?1 OR name = ?1 ORDER BY id LIMIT 2",
        )?
        .query_map([id_or_name], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .next())
}

/// Puts a tenant on a plan (`memesh plan set`): its limits row changes in the same transaction,
/// so quotas apply at once, even to a running server; its request rates follow at the
/// server's next plans pass. Audited in the tenant.
pub fn assign(
    tx: &Tx<'_>,
    book: &PlanBook,
    tenant: &TenantId,
    plan: &str,
    now: Timestamp,
) -> ApiResult<()> {
    let Some(limits) = book.plans.get(plan) else {
        return Err(ApiError::field(
            "plan",
            format!(
                "no plan {plan:?}; plans: {}",
                book.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let stored = (plan != super::DEFAULT_PLAN).then_some(plan);
    crate::db::exec(
        tx,
        "UPDATE tenants SET plan = ?2 WHERE id = ?1",
        rusqlite::params![tenant, stored],
    )?;
    write_limits(tx, tenant, plan, limits)?;
    let w = Write::<TeamWrite>::system(tx, tenant.clone(), now);
    audit::append(
        &w,
        &AuditEvent::success(
            "plans.assign",
            "tenant",
            tenant.as_str(),
            json!({ "plan": plan }),
        ),
    )
}

/// One limited resource: how much is used and the limit (`None`: unlimited).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Used {
    pub used: i64,
    pub limit: Option<u64>,
}

/// What the caller and their tenant use, as the counters hold it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub memories: Used,
    pub bytes: Used,
    pub api_keys: Used,
    pub agents: Used,
    pub seats: Used,
    pub runs_waiting: Used,
}

fn counter(conn: &Connection, tenant: &TenantId, user: &str, resource: &str) -> ApiResult<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT used FROM usage_counters WHERE tenant_id = ?1 AND user_id = ?2 AND resource = ?3",
        )?
        .query_row(rusqlite::params![tenant, user, resource], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

pub fn usage(
    conn: &Connection,
    tenant: &TenantId,
    user: &UserId,
    limits: &Limits,
    now: Timestamp,
) -> ApiResult<Usage> {
    let open_invitations: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM invitations WHERE tenant_id = ?1 AND accepted_at IS NULL
               AND revoked_at IS NULL AND expires_at > ?2",
        )?
        .query_row(rusqlite::params![tenant, now], |r| r.get(0))?;
    let u = user.as_str();
    Ok(Usage {
        memories: Used {
            used: counter(conn, tenant, u, "memories")?,
            limit: limits.memories_per_user,
        },
        bytes: Used {
            used: counter(conn, tenant, "", "bytes")?,
            limit: limits.bytes_per_tenant,
        },
        api_keys: Used {
            used: counter(conn, tenant, u, "keys")?,
            limit: limits.keys_per_user,
        },
        agents: Used {
            used: counter(conn, tenant, "", "targets")?,
            limit: limits.targets_per_tenant,
        },
        seats: Used {
            used: counter(conn, tenant, "", "members")? + open_invitations,
            limit: limits.seats,
        },
        runs_waiting: Used {
            used: counter(conn, tenant, "", "runs_waiting")?,
            limit: limits.runs_waiting,
        },
    })
}

/// What is left of a member's memory quotas (`None`: unlimited).
#[derive(Debug, Clone, Copy)]
pub struct MemoryRoom {
    pub memories: Option<i64>,
    pub bytes: Option<i64>,
}

impl MemoryRoom {
    /// Takes room for one memory of `bytes`, or says which quota it would cross.
    pub fn take(&mut self, bytes: i64) -> ApiResult<()> {
        let quota = |name: &str| {
            ApiError::quota_exceeded(name)
                .unwrap_or_else(|| ApiError::internal(anyhow::anyhow!("no quota {name}")))
        };
        if self.memories.is_some_and(|m| m < 1) {
            return Err(quota("memories_per_user"));
        }
        if self.bytes.is_some_and(|b| b < bytes) {
            return Err(quota("bytes_per_tenant"));
        }
        self.memories = self.memories.map(|m| m - 1);
        self.bytes = self.bytes.map(|b| b - bytes);
        Ok(())
    }
}

pub fn memory_room(conn: &Connection, tenant: &TenantId, user: &UserId) -> ApiResult<MemoryRoom> {
    let (memories, bytes): (Option<i64>, Option<i64>) = conn
        .prepare_cached(
            "SELECT memories_per_user, bytes_per_tenant FROM tenant_limits WHERE tenant_id = ?1",
        )?
        .query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((None, None));
    Ok(MemoryRoom {
        memories: memories
            .map(|m| m - counter(conn, tenant, user.as_str(), "memories").unwrap_or(0)),
        bytes: bytes.map(|b| b - counter(conn, tenant, "", "bytes").unwrap_or(0)),
    })
}
