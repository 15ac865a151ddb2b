//! Creating tenants and their first OWNER: on the first start of an empty data directory, by
//! `memesh init`, and by the operator command `memesh tenant create`.

use crate::db::Tx;
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::perm::KeysWrite;
use crate::auth::{Role, Write};
use crate::clock::Timestamp;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::ids::TenantId;
use crate::keys::model::{KeyName, NewKey};
use crate::keys::store as key_store;
use crate::team::model::{Email, Member};
use crate::team::store as team_store;

const MAX_TENANT_NAME: usize = 100;

/// A tenant just created, with its owner's raw API key (to be shown once).
#[derive(Debug)]
pub struct NewTenant {
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub owner: Member,
    pub key: String,
}

pub struct TenantSpec<'a> {
    pub name: &'a str,
    pub owner_email: &'a str,
    /// An operator-chosen owner key (`MEMESH_BOOTSTRAP_KEY`); random when absent.
    pub owner_key: Option<&'a str>,
}

fn validate_name(raw: &str) -> ApiResult<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MAX_TENANT_NAME {
        return Err(ApiError::field("name", "must be 1 to 100 characters"));
    }
    Ok(name.to_owned())
}

fn insert_tenant(tx: &Tx<'_>, spec: &TenantSpec<'_>, now: Timestamp) -> ApiResult<NewTenant> {
    let name = validate_name(spec.name)?;
    let email = Email::parse(spec.owner_email)?;
    let tenant_id = TenantId::generate();
    tx.execute(
        "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?2, ?3)",
        rusqlite::params![tenant_id, name, now],
    )?;
    let w = Write::<KeysWrite>::system(tx, tenant_id.clone(), now);
    let owner = team_store::insert_user(&w, &email, Role::Owner)?;
    audit::append(
        &w,
        &AuditEvent::success(
            "tenant.create",
            "tenant",
            tenant_id.as_str(),
            json!({ "name": name, "ownerUserId": owner.user_id, "ownerEmail": owner.email }),
        ),
    )?;
    let key = key_store::create(
        &w,
        &owner.user_id,
        Role::Owner,
        &KeyName::parse("owner bootstrap key")?,
        spec.owner_key,
        &NewKey::User(None),
        None,
    )?;
    Ok(NewTenant {
        tenant_id,
        tenant_name: name,
        owner,
        key: key.key,
    })
}

/// Creates the first tenant if the database has none; `None` when it was already initialized
/// (the check and the creation are one transaction, so two racing starts create one tenant).
pub fn initialize(db: &Db, spec: &TenantSpec<'_>, now: Timestamp) -> ApiResult<Option<NewTenant>> {
    db.write_blocking(|tx| {
        let tenants: i64 = tx.query_row("SELECT COUNT(*) FROM tenants", [], |r| r.get(0))?;
        if tenants > 0 {
            return Ok(None);
        }
        insert_tenant(tx, spec, now).map(Some)
    })
}

/// Adds another tenant to a server: `memesh tenant create`.
pub fn create_tenant(db: &Db, spec: &TenantSpec<'_>, now: Timestamp) -> ApiResult<NewTenant> {
    db.write_blocking(|tx| insert_tenant(tx, spec, now))
}
