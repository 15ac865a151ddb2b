//! Audit SQL: appending a chained row inside a caller's transaction, querying a tenant's log, and
//! verifying every tenant's chain.

use rusqlite::{Connection, OptionalExtension, Transaction, named_params};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::perm::KeysWrite;
use crate::auth::{Actor, Permission, Write};
use crate::clock::Timestamp;
use crate::db::Tx;
use crate::error::ApiResult;
use crate::ids::{AuditId, KeyId, TenantId, UserId};

use super::model::{AuditActor, AuditEntry, AuditEvent, AuditFilter, AuditPage};

/// The `prev_hash` of a tenant's first row.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// A client-chosen request id is kept only up to this length.
const MAX_REQUEST_ID: usize = 128;

struct ChainFields<'a> {
    id: &'a str,
    tenant_id: &'a str,
    seq: i64,
    at: i64,
    actor_user_id: Option<&'a str>,
    actor_key_id: Option<&'a str>,
    action: &'a str,
    resource_type: &'a str,
    resource_id: &'a str,
    request_id: Option<&'a str>,
    outcome: &'a str,
    detail: &'a str,
}

/// The row's hash covers the previous row's hash and every field of the row, so editing,
/// deleting or reordering any row breaks the chain from there on.
fn chain_hash(prev_hash: &str, f: &ChainFields<'_>) -> String {
    let canonical = json!([
        f.id,
        f.tenant_id,
        f.seq,
        f.at,
        f.actor_user_id,
        f.actor_key_id,
        f.action,
        f.resource_type,
        f.resource_id,
        f.request_id,
        f.outcome,
        f.detail
    ]);
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

/// Appends `event` to the chain of the capability's tenant, attributed to its actor, inside the
/// mutation's own transaction.
pub fn append<P: Permission>(w: &Write<'_, P>, event: &AuditEvent) -> ApiResult<()> {
    let (tx, actor, now): (&Transaction<'_>, &Actor, Timestamp) = (w, w.actor(), w.now());
    let last = w.tx().audit_head(actor.tenant_id.as_str(), || {
        Ok(tx
            .prepare_cached(
                "SELECT seq, hash FROM audit_log WHERE tenant_id = ?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([&actor.tenant_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    })?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_owned()),
    };
    let id = AuditId::generate();
    let detail = match (&actor.client_request_id, &event.detail) {
        (Some(client), serde_json::Value::Object(fields)) => {
            let mut fields = fields.clone();
            fields.insert("clientRequestId".into(), json!(client));
            serde_json::Value::Object(fields).to_string()
        }
        _ => event.detail.to_string(),
    };
    let request_id = actor
        .request_id
        .as_deref()
        .map(|r| &r[..r.floor_char_boundary(MAX_REQUEST_ID)]);
    let fields = ChainFields {
        id: id.as_str(),
        tenant_id: actor.tenant_id.as_str(),
        seq,
        at: now.millis(),
        actor_user_id: actor.user_id.as_ref().map(UserId::as_str),
        actor_key_id: actor.key_id.as_ref().map(KeyId::as_str),
        action: event.action,
        resource_type: event.resource_type,
        resource_id: &event.resource_id,
        request_id,
        outcome: event.outcome,
        detail: &detail,
    };
    let hash = chain_hash(&prev_hash, &fields);
    tx.prepare_cached(
        "INSERT INTO audit_log (id, tenant_id, seq, at, actor_user_id, actor_key_id, action,
             resource_type, resource_id, request_id, outcome, detail, prev_hash, hash)
         VALUES (:id, :tenant, :seq, :at, :user, :key, :action, :rtype, :rid, :req, :outcome,
             :detail, :prev, :hash)",
    )?
    .execute(named_params! {
            ":id": fields.id, ":tenant": fields.tenant_id, ":seq": seq, ":at": fields.at,
            ":user": fields.actor_user_id, ":key": fields.actor_key_id, ":action": fields.action,
            ":rtype": fields.resource_type, ":rid": fields.resource_id, ":req": request_id,
            ":outcome": fields.outcome, ":detail": detail, ":prev": prev_hash, ":hash": hash,
    })?;
    w.tx().set_audit_head(actor.tenant_id.as_str(), seq, hash);
    Ok(())
}

/// Records that `actor` was refused `route` (a mutation) with error `code`, in a transaction of
/// its own: the log answers "who tried", not only "who did".
pub fn record_refusal(
    tx: &Tx<'_>,
    actor: Actor,
    route: &str,
    code: &str,
    now: Timestamp,
) -> ApiResult<()> {
    let w = Write::<KeysWrite>::recording_refusal(tx, actor, now);
    append(
        &w,
        &AuditEvent::denied("auth.denied", "route", route, json!({ "code": code })),
    )
}

/// Writes one row for a minute's repeated refusals of one key on one route.
pub fn record_repeated(tx: &Tx<'_>, r: super::refusals::Repeated, now: Timestamp) -> ApiResult<()> {
    let route = r.route.clone();
    let w = Write::<KeysWrite>::recording_refusal(tx, r.actor, now);
    append(
        &w,
        &AuditEvent::denied(
            "auth.denied.repeated",
            "route",
            &route,
            json!({
                "code": r.code,
                "count": r.count,
                "from": Timestamp(r.minute * super::refusals::MINUTE_MS),
                "until": Timestamp((r.minute + 1) * super::refusals::MINUTE_MS),
            }),
        ),
    )
}

/// The newest row of each tenant's chain: its sequence and hash. Written down somewhere memesh
/// cannot reach, these anchor the chain: rows rewritten later no longer lead to them.
pub fn heads(conn: &Connection) -> ApiResult<Vec<(TenantId, i64, String)>> {
    Ok(conn
        .prepare(
            "SELECT a.tenant_id, a.seq, a.hash FROM audit_log a
             WHERE a.seq = (SELECT MAX(b.seq) FROM audit_log b WHERE b.tenant_id = a.tenant_id)
             ORDER BY a.tenant_id",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?)
}

/// One page of a tenant's log, newest first. Fetches one row more than asked to know whether
/// another page follows.
pub fn query(conn: &Connection, tenant: &TenantId, filter: &AuditFilter) -> ApiResult<AuditPage> {
    let (action_exact, action_prefix) = match filter.action.as_deref() {
        Some(a) => match a.strip_suffix('*') {
            Some(prefix) => (None, Some(format!("{}%", escape_like(prefix)))),
            None => (Some(a.to_owned()), None),
        },
        None => (None, None),
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, seq, action, resource_type, resource_id, actor_user_id, actor_key_id,
                request_id, outcome, detail, at, hash
         FROM audit_log
         WHERE tenant_id = :tenant
           AND (:action IS NULL OR action = :action)
           AND (:prefix IS NULL OR action LIKE :prefix ESCAPE '\\')
           AND (:resource IS NULL OR resource_type = :resource OR resource_id = :resource)
           AND (:start IS NULL OR at >= :start)
           AND (:end IS NULL OR at <= :end)
           AND (:before IS NULL OR seq < :before)
         ORDER BY seq DESC
         LIMIT :limit",
    )?;
    let rows = stmt.query_map(
        named_params! {
            ":tenant": tenant,
            ":action": action_exact,
            ":prefix": action_prefix,
            ":resource": filter.resource,
            ":start": filter.start,
            ":end": filter.end,
            ":before": filter.before_seq,
            ":limit": i64::from(filter.limit) + 1,
        },
        |r| {
            let d = crate::db::Decoded::new(r, "audit_log", 0)?;
            let user_id: Option<UserId> = r.get(5)?;
            Ok(AuditEntry {
                id: r.get(0)?,
                sequence: r.get(1)?,
                action: r.get(2)?,
                resource_type: r.get(3)?,
                resource_id: r.get(4)?,
                actor: AuditActor {
                    kind: if user_id.is_some() { "user" } else { "system" },
                    user_id,
                    key_id: r.get(6)?,
                },
                request_id: r.get(7)?,
                outcome: r.get(8)?,
                detail: d.json(9)?,
                created_at: r.get(10)?,
                hash: r.get(11)?,
            })
        },
    )?;
    let mut logs = rows.collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if logs.len() > filter.limit as usize {
        logs.truncate(filter.limit as usize);
        logs.last().map(|e| e.sequence.to_string())
    } else {
        None
    };
    Ok(AuditPage { logs, next_cursor })
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The first place a tenant's chain does not hold.
#[derive(Debug, PartialEq, Eq)]
pub struct BrokenLink {
    pub tenant_id: String,
    pub seq: i64,
    pub id: String,
    pub reason: String,
}

/// What `memesh audit verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub tenants: usize,
    pub rows: usize,
    pub broken: Vec<BrokenLink>,
}

/// Walks every tenant's chain from its first row and reports the first broken link of each.
pub fn verify(conn: &Connection) -> ApiResult<VerifyReport> {
    let mut report = VerifyReport::default();
    let tenants: Vec<String> = conn
        .prepare("SELECT DISTINCT tenant_id FROM audit_log ORDER BY tenant_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare(
        "SELECT id, tenant_id, seq, at, actor_user_id, actor_key_id, action, resource_type,
                resource_id, request_id, outcome, detail, prev_hash, hash
         FROM audit_log WHERE tenant_id = ?1 ORDER BY seq",
    )?;
    for tenant in tenants {
        report.tenants += 1;
        let mut rows = stmt.query([&tenant])?;
        let mut expected_prev = GENESIS.to_owned();
        let mut expected_seq = 1;
        while let Some(r) = rows.next()? {
            report.rows += 1;
            let id: String = r.get(0)?;
            let seq: i64 = r.get(2)?;
            let prev_hash: String = r.get(12)?;
            let hash: String = r.get(13)?;
            let (user, key, req): (Option<String>, Option<String>, Option<String>) =
                (r.get(4)?, r.get(5)?, r.get(9)?);
            let (action, rtype, rid, outcome, detail): (String, String, String, String, String) =
                (r.get(6)?, r.get(7)?, r.get(8)?, r.get(10)?, r.get(11)?);
            let fields = ChainFields {
                id: &id,
                tenant_id: &tenant,
                seq,
                at: r.get(3)?,
                actor_user_id: user.as_deref(),
                actor_key_id: key.as_deref(),
                action: &action,
                resource_type: &rtype,
                resource_id: &rid,
                request_id: req.as_deref(),
                outcome: &outcome,
                detail: &detail,
            };
            let reason = if seq != expected_seq {
                Some(format!(
                    "expected sequence {expected_seq}, found {seq} (a row is missing)"
                ))
            } else if prev_hash != expected_prev {
                Some("prev_hash does not match the previous row's hash".to_owned())
            } else if chain_hash(&prev_hash, &fields) != hash {
                Some("the row's contents do not match its hash (the row was altered)".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                report.broken.push(BrokenLink {
                    tenant_id: tenant.clone(),
                    seq,
                    id,
                    reason,
                });
                break;
            }
            expected_prev = hash;
            expected_seq += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::perm::KeysWrite;
    use crate::db::Db;
    use crate::error::{ApiError, Code};

    fn event(n: usize) -> AuditEvent {
        AuditEvent::success("test.event", "test", format!("r{n}"), json!({ "n": n }))
    }

    /// Mutations that fail after appending to the chain roll their rows and the writer's
    /// remembered head back; concurrent mutations grouped into one commit keep one intact chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_chain_stays_intact_through_rollbacks_and_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("audit.db")).unwrap();
        let tenant = TenantId::generate();
        let now = Timestamp(1_000);
        let mut writes = Vec::new();
        for n in 0..60usize {
            let (db, tenant) = (db.clone(), tenant.clone());
            writes.push(tokio::spawn(async move {
                db.write(move |tx| {
                    let w = Write::<KeysWrite>::system(tx, tenant, now);
                    append(&w, &event(n))?;
                    if n % 4 == 0 {
                        return Err(ApiError::new(
                            Code::InvalidField,
                            "refused after its audit row",
                        ));
                    }
                    Ok(n)
                })
                .await
            }));
        }
        let mut stored = 0;
        for w in writes {
            if w.await.unwrap().is_ok() {
                stored += 1;
            }
        }
        assert_eq!(stored, 45);
        let report = db.read(verify).await.unwrap();
        assert_eq!(
            (report.rows, report.broken.len()),
            (45, 0),
            "{:?}",
            report.broken
        );
    }
}
