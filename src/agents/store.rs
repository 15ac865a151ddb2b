//! Dispatch-target SQL. A runtime mutation loads the record inside its `BEGIN IMMEDIATE`
//! transaction, checks the caller's CAS token against it, applies the change in Rust, and writes
//! the whole runtime back together with its audit row.

use rusqlite::{Connection, OptionalExtension, Row, ToSql, named_params, params_from_iter};
use serde_json::Value;

use crate::auth::{Permission, Write};
use crate::clock::Timestamp;
use crate::db::Decoded;
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{TargetId, TenantId, UserId};

use super::model::{NewTarget, TargetKind, TargetQuery};
use super::policy::{Handoff, Hold, Incident, Policy, ProbeState, ReviewAck, Runtime};

/// A target as stored.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: TargetId,
    pub tenant_id: TenantId,
    pub name: String,
    pub description: Option<String>,
    pub kind: TargetKind,
    pub card: Option<Value>,
    pub card_url: Option<String>,
    pub card_shape: Option<String>,
    pub protocol_version: Option<String>,
    pub endpoint_url: Option<String>,
    pub created_by: Option<UserId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub runtime: Runtime,
}

const COLUMNS: &str = "id, tenant_id, name, description, kind, card, card_url, card_shape,
    protocol_version, endpoint_url, created_by, created_at, updated_at, runtime_updated_at,
    require_approval, hold_reason, hold_by, hold_since, hold_release_after, incident_open,
    incident_epoch, incident_opened_at, incident_opened_by, incident_reason, handoff_external_id,
    handoff_owner, handoff_note, handoff_at, handoff_by, policy, policy_reasons, policy_epoch,
    policy_changed_by, policy_changed_at, review_ack_epoch, review_ack_by, review_ack_at,
    review_ack_note, probe_failures, last_probe_at, last_probe_ok, last_probe_error";

/// Availability as SQL, for the `state` filter (the same rule as `Runtime::availability`).
const AVAILABILITY_SQL: &str = "CASE WHEN hold_reason IS NOT NULL THEN 'HELD'
    WHEN incident_open = 1 THEN 'INCIDENT' WHEN probe_failures > 0 THEN 'DEGRADED'
    ELSE 'AVAILABLE' END";

fn target_from_row(r: &Row<'_>) -> rusqlite::Result<Target> {
    let d = Decoded::new(r, "dispatch_targets", 0)?;
    Ok(Target {
        id: d.get(0)?,
        tenant_id: d.get(1)?,
        name: d.get(2)?,
        description: d.get(3)?,
        kind: d.get(4)?,
        card: d.json_opt(5)?,
        card_url: d.get(6)?,
        card_shape: d.get(7)?,
        protocol_version: d.get(8)?,
        endpoint_url: d.get(9)?,
        created_by: d.get(10)?,
        created_at: d.get(11)?,
        updated_at: d.get(12)?,
        runtime: runtime_from_row(&d)?,
    })
}

fn runtime_from_row(d: &Decoded<'_, '_>) -> rusqlite::Result<Runtime> {
    let hold_reason: Option<String> = d.get(15)?;
    let handoff_id: Option<String> = d.get(24)?;
    let ack_epoch: Option<i64> = d.get(34)?;
    Ok(Runtime {
        updated_at: d.get(13)?,
        require_approval: d.get(14)?,
        hold: match hold_reason {
            Some(reason) => Some(Hold {
                reason,
                by: d.get(16)?,
                since: d.get(17)?,
                release_after: d.get(18)?,
            }),
            None => None,
        },
        incident: Incident {
            open: d.get(19)?,
            epoch: d.get(20)?,
            opened_at: d.get(21)?,
            opened_by: d.get(22)?,
            reason: d.get(23)?,
            handoff: match handoff_id {
                Some(external_incident_id) => Some(Handoff {
                    external_incident_id,
                    owner: d.get(25)?,
                    note: d.get(26)?,
                    at: d.get(27)?,
                    by: d.get(28)?,
                }),
                None => None,
            },
        },
        policy: d.parsed(29, "policy", Policy::parse)?,
        reasons: d.json(30)?,
        policy_epoch: d.get(31)?,
        policy_changed_by: d.get(32)?,
        policy_changed_at: d.get(33)?,
        review_ack: match ack_epoch {
            Some(epoch) => Some(ReviewAck {
                epoch,
                by: d.get(35)?,
                at: d.get(36)?,
                note: d.get(37)?,
            }),
            None => None,
        },
        probe: ProbeState {
            consecutive_failures: d.get(38)?,
            last_at: d.get(39)?,
            last_ok: d.get(40)?,
            last_error: d.get(41)?,
        },
    })
}

/// Registers a target in the capability's tenant, created by its actor.
pub fn insert<P: Permission>(w: &Write<'_, P>, new: &NewTarget) -> ApiResult<Target> {
    let id = TargetId::generate();
    let now = w.now();
    let runtime = Runtime::fresh(now, new.require_approval);
    crate::db::exec(
        w,
        "INSERT INTO dispatch_targets (id, tenant_id, name, description, kind, card, card_url,
             card_shape, protocol_version, endpoint_url, require_approval, created_by, created_at,
             updated_at, runtime_updated_at, policy, policy_reasons)
         VALUES (:id, :tenant, :name, :description, :kind, :card, :card_url, :shape, :version,
             :endpoint, :approval, :by, :now, :now, :now, :policy, :reasons)",
        named_params! {
            ":id": id, ":tenant": w.tenant(), ":name": new.name, ":description": new.description,
            ":kind": new.kind, ":card": new.card.as_ref().map(Value::to_string),
            ":card_url": new.card_url, ":shape": new.facts.as_ref().map(|f| f.shape.as_str()),
            ":version": new.facts.as_ref().map(|f| f.protocol_version.clone()),
            ":endpoint": new.facts.as_ref().map(|f| f.endpoint_url.clone()),
            ":approval": new.require_approval, ":by": w.user(), ":now": now,
            ":policy": runtime.policy.as_str(),
            ":reasons": serde_json::to_string(&runtime.reasons).map_err(ApiError::internal)?,
        },
    )
    .map_err(|e| {
        crate::db::unique_violation_as(
            e,
            Code::TargetNameTaken,
            "a target with this name already exists",
        )
    })?;
    load(w, w.tenant(), &id)
}

/// One of the tenant's targets; another tenant's does not exist.
pub fn load(conn: &Connection, tenant: &TenantId, id: &TargetId) -> ApiResult<Target> {
    find(conn, tenant, id)?.ok_or_else(|| ApiError::not_found("dispatch target"))
}

/// One of the tenant's targets, if it still exists.
pub fn find(conn: &Connection, tenant: &TenantId, id: &TargetId) -> ApiResult<Option<Target>> {
    let sql = format!("SELECT {COLUMNS} FROM dispatch_targets WHERE id = ?1 AND tenant_id = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(rusqlite::params![id, tenant], target_from_row)
        .optional()?)
}

pub fn ensure_local_agent(conn: &Connection, tenant: &TenantId, id: &TargetId) -> ApiResult<()> {
    let target = load(conn, tenant, id)?;
    if target.kind != TargetKind::LocalAgent {
        return Err(ApiError::field(
            "targetId",
            "agent access keys bind to LOCAL_AGENT targets only",
        ));
    }
    Ok(())
}

pub fn list(
    conn: &Connection,
    tenant: &TenantId,
    q: &TargetQuery,
) -> ApiResult<(Vec<Target>, i64)> {
    let mut params: Vec<Box<dyn ToSql>> = vec![Box::new(tenant.clone())];
    let mut clause = String::new();
    if let Some(search) = &q.search {
        let escaped = search
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        params.push(Box::new(format!("%{escaped}%")));
        let n = params.len();
        clause.push_str(&format!(
            " AND (name LIKE ?{n} ESCAPE '\\' OR COALESCE(description, '') LIKE ?{n} ESCAPE '\\')"
        ));
    }
    if let Some(kind) = q.kind {
        params.push(Box::new(kind));
        clause.push_str(&format!(" AND kind = ?{}", params.len()));
    }
    if let Some(state) = &q.state {
        params.push(Box::new(state.clone()));
        clause.push_str(&format!(" AND ({AVAILABILITY_SQL}) = ?{}", params.len()));
    }
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM dispatch_targets WHERE tenant_id = ?1{clause}"),
        params_from_iter(params.iter()),
        |r| r.get(0),
    )?;
    params.push(Box::new(i64::from(q.paging.limit)));
    params.push(Box::new(i64::from(q.paging.offset)));
    let n = params.len();
    let sql = format!(
        "SELECT {COLUMNS} FROM dispatch_targets WHERE tenant_id = ?1{clause}
         ORDER BY name, id LIMIT ?{} OFFSET ?{n}",
        n - 1
    );
    let targets = conn
        .prepare(&sql)?
        .query_map(params_from_iter(params.iter()), target_from_row)?
        .collect::<Result<_, _>>()?;
    Ok((targets, total))
}

/// Every target of a tenant, by name (for the runtime-health summary; at most `cap`).
pub fn all(conn: &Connection, tenant: &TenantId, cap: u32) -> ApiResult<Vec<Target>> {
    let targets = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM dispatch_targets WHERE tenant_id = ?1 ORDER BY name, id LIMIT ?2"
        ))?
        .query_map(rusqlite::params![tenant, cap], target_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(targets)
}

/// Writes `rt` over the stored runtime if the stored token is still `expected`.
pub fn save_runtime<P: Permission>(
    w: &Write<'_, P>,
    id: &TargetId,
    expected: Timestamp,
    rt: &Runtime,
) -> ApiResult<()> {
    let hold = rt.hold.as_ref();
    let handoff = rt.incident.handoff.as_ref();
    let ack = rt.review_ack.as_ref();
    let changed = crate::db::exec(w,
        "UPDATE dispatch_targets SET runtime_updated_at = :token, require_approval = :approval,
             hold_reason = :hold_reason, hold_by = :hold_by, hold_since = :hold_since,
             hold_release_after = :hold_release, incident_open = :inc_open,
             incident_epoch = :inc_epoch, incident_opened_at = :inc_at, incident_opened_by = :inc_by,
             incident_reason = :inc_reason, handoff_external_id = :ho_id, handoff_owner = :ho_owner,
             handoff_note = :ho_note, handoff_at = :ho_at, handoff_by = :ho_by, policy = :policy,
             policy_reasons = :reasons, policy_epoch = :epoch, policy_changed_by = :changed_by,
             policy_changed_at = :changed_at, review_ack_epoch = :ack_epoch, review_ack_by = :ack_by,
             review_ack_at = :ack_at, review_ack_note = :ack_note, probe_failures = :failures,
             last_probe_at = :probe_at, last_probe_ok = :probe_ok, last_probe_error = :probe_err
         WHERE id = :id AND tenant_id = :tenant AND runtime_updated_at = :expected",
        named_params! {
            ":token": rt.updated_at, ":approval": rt.require_approval,
            ":hold_reason": hold.map(|h| &h.reason), ":hold_by": hold.and_then(|h| h.by.clone()),
            ":hold_since": hold.map(|h| h.since), ":hold_release": hold.and_then(|h| h.release_after),
            ":inc_open": rt.incident.open, ":inc_epoch": rt.incident.epoch,
            ":inc_at": rt.incident.opened_at, ":inc_by": rt.incident.opened_by,
            ":inc_reason": rt.incident.reason, ":ho_id": handoff.map(|h| &h.external_incident_id),
            ":ho_owner": handoff.map(|h| &h.owner), ":ho_note": handoff.and_then(|h| h.note.clone()),
            ":ho_at": handoff.map(|h| h.at), ":ho_by": handoff.and_then(|h| h.by.clone()),
            ":policy": rt.policy.as_str(),
            ":reasons": serde_json::to_string(&rt.reasons).map_err(ApiError::internal)?,
            ":epoch": rt.policy_epoch, ":changed_by": rt.policy_changed_by,
            ":changed_at": rt.policy_changed_at, ":ack_epoch": ack.map(|a| a.epoch),
            ":ack_by": ack.and_then(|a| a.by.clone()), ":ack_at": ack.map(|a| a.at),
            ":ack_note": ack.and_then(|a| a.note.clone()),
            ":failures": rt.probe.consecutive_failures, ":probe_at": rt.probe.last_at,
            ":probe_ok": rt.probe.last_ok, ":probe_err": rt.probe.last_error,
            ":id": id, ":tenant": w.tenant(), ":expected": expected,
        },
    )?;
    if changed != 1 {
        return Err(ApiError::internal(anyhow::anyhow!(
            "runtime of {id} changed under the write lock"
        )));
    }
    Ok(())
}

pub fn update_details<P: Permission>(w: &Write<'_, P>, target: &Target) -> ApiResult<()> {
    crate::db::exec(
        w,
        "UPDATE dispatch_targets SET name = :name, description = :description, card = :card,
             card_url = :card_url, card_shape = :shape, protocol_version = :version,
             endpoint_url = :endpoint, updated_at = :now
         WHERE id = :id AND tenant_id = :tenant",
        named_params! {
            ":name": target.name, ":description": target.description,
            ":card": target.card.as_ref().map(Value::to_string), ":card_url": target.card_url,
            ":shape": target.card_shape, ":version": target.protocol_version,
            ":endpoint": target.endpoint_url, ":now": w.now(), ":id": target.id,
            ":tenant": w.tenant(),
        },
    )
    .map_err(|e| {
        crate::db::unique_violation_as(
            e,
            Code::TargetNameTaken,
            "a target with this name already exists",
        )
    })?;
    Ok(())
}

/// Deletes a target of the capability's tenant (its agent keys must be unbound first).
pub fn delete<P: Permission>(w: &Write<'_, P>, id: &TargetId) -> ApiResult<()> {
    crate::db::exec(
        w,
        "DELETE FROM dispatch_targets WHERE id = ?1 AND tenant_id = ?2",
        rusqlite::params![id, w.tenant()],
    )?;
    Ok(())
}

/// Targets whose hold has a `releaseAfter` at or before `now`.
pub fn expired_holds(conn: &Connection, now: Timestamp) -> ApiResult<Vec<(TenantId, TargetId)>> {
    let rows = conn
        .prepare_cached(
            "SELECT tenant_id, id FROM dispatch_targets
             WHERE hold_reason IS NOT NULL AND hold_release_after IS NOT NULL AND hold_release_after <= ?1",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Every remote target with where to probe it (its card URL, else its endpoint).
pub fn probe_targets(conn: &Connection) -> ApiResult<Vec<(TenantId, TargetId, String)>> {
    let rows = conn
        .prepare_cached(
            "SELECT tenant_id, id, COALESCE(card_url, endpoint_url) FROM dispatch_targets
             WHERE kind = 'REMOTE_A2A' AND COALESCE(card_url, endpoint_url) IS NOT NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
