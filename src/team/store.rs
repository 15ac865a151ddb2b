//! Team SQL. Every mutation takes the [`Granted`] capability and runs in the caller's
//! `BEGIN IMMEDIATE` transaction, so the last-owner count and the change cannot interleave.

use rusqlite::{Connection, OptionalExtension, Transaction, named_params};
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::{Actor, Granted, INVITATION_TOKEN_PREFIX, Role, generate_secret, hash_secret};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{InvitationId, TenantId, UserId};
use crate::keys::model::KeyName;
use crate::keys::store as key_store;

use super::model::{
    AcceptedInvitation, CreatedInvitation, Email, Invitation, Member, RemovedMember,
};

fn member_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        user_id: r.get(0)?,
        email: r.get(1)?,
        role: r.get(2)?,
        joined_at: r.get(3)?,
    })
}

pub fn list_members(conn: &Connection, tenant: &TenantId) -> ApiResult<Vec<Member>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, email, role, created_at FROM users
         WHERE tenant_id = ?1 AND removed_at IS NULL ORDER BY created_at, id",
    )?;
    let members = stmt
        .query_map([tenant], member_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(members)
}

fn find_member(conn: &Connection, tenant: &TenantId, user: &UserId) -> ApiResult<Member> {
    conn.prepare_cached(
        "SELECT id, email, role, created_at FROM users
         WHERE tenant_id = ?1 AND id = ?2 AND removed_at IS NULL",
    )?
    .query_row(rusqlite::params![tenant, user], member_from_row)
    .optional()?
    .ok_or_else(|| ApiError::not_found("member"))
}

fn owner_count(conn: &Connection, tenant: &TenantId) -> ApiResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM users WHERE tenant_id = ?1 AND role = 'OWNER' AND removed_at IS NULL",
        [tenant],
        |r| r.get(0),
    )?)
}

fn is_member_email(conn: &Connection, tenant: &TenantId, email: &Email) -> ApiResult<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM users WHERE tenant_id = ?1 AND email = ?2 AND removed_at IS NULL",
            rusqlite::params![tenant, email.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Re-reads the acting user's role inside the transaction, so a caller demoted or removed
/// while their request was in flight cannot act on the role they had when it arrived.
fn recheck(tx: &Transaction<'_>, granted: &Granted) -> ApiResult<Granted> {
    let Some(user) = granted.actor().user_id.as_ref() else {
        return Ok(granted.clone());
    };
    let role: Option<Role> = tx
        .query_row(
            "SELECT role FROM users WHERE id = ?1 AND tenant_id = ?2 AND removed_at IS NULL",
            rusqlite::params![user, granted.tenant_id()],
            |r| r.get(0),
        )
        .optional()?;
    match role {
        Some(role) if role.at_least(granted.required()) => Ok(granted.clone().with_role(role)),
        _ => Err(ApiError::new(
            Code::InsufficientRole,
            format!(
                "this action needs the {} role or higher",
                granted.required().as_str()
            ),
        )),
    }
}

/// Only an OWNER may grant OWNER, or change or remove an OWNER.
fn ensure_may_touch_owner(granted: &Granted, touches_owner: bool) -> ApiResult<()> {
    if touches_owner && granted.role() != Role::Owner {
        return Err(ApiError::new(
            Code::InsufficientRole,
            "only an OWNER may grant the OWNER role or change or remove an OWNER",
        ));
    }
    Ok(())
}

fn last_owner_error() -> ApiError {
    ApiError::new(
        Code::LastOwner,
        "a tenant must keep at least one OWNER; promote another member first",
    )
}

/// Inserts a user directly (bootstrap and accepted invitations).
pub fn insert_user(
    tx: &Transaction<'_>,
    tenant: &TenantId,
    email: &Email,
    role: Role,
    now: Timestamp,
) -> ApiResult<Member> {
    let id = UserId::generate();
    tx.execute(
        "INSERT INTO users (id, tenant_id, email, role, created_at)
         VALUES (:id, :tenant, :email, :role, :now)",
        named_params! { ":id": id, ":tenant": tenant, ":email": email.as_str(), ":role": role, ":now": now },
    )
    .map_err(|e| {
        crate::db::unique_violation_as(e, Code::AlreadyMember, "this email is already a member")
    })?;
    Ok(Member {
        user_id: id,
        email: email.as_str().to_owned(),
        role,
        joined_at: now,
    })
}

pub fn invite(
    tx: &Transaction<'_>,
    granted: &Granted,
    email: &Email,
    role: Role,
    ttl_ms: i64,
    now: Timestamp,
) -> ApiResult<CreatedInvitation> {
    let granted = &recheck(tx, granted)?;
    ensure_may_touch_owner(granted, role == Role::Owner)?;
    let tenant = granted.tenant_id();
    if is_member_email(tx, tenant, email)? {
        return Err(ApiError::new(
            Code::AlreadyMember,
            "this email is already a member",
        ));
    }
    let pending: Option<InvitationId> = tx
        .query_row(
            "SELECT id FROM invitations WHERE tenant_id = ?1 AND email = ?2
               AND accepted_at IS NULL AND expires_at > ?3",
            rusqlite::params![tenant, email.as_str(), now],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(pending) = pending {
        return Err(ApiError::new(
            Code::InvitationPending,
            "an unexpired invitation for this email already exists",
        )
        .with_details(json!({ "invitationId": pending })));
    }
    let Some(invited_by) = granted.actor().user_id.clone() else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "invitation without a user actor"
        )));
    };
    let id = InvitationId::generate();
    let token = generate_secret(INVITATION_TOKEN_PREFIX);
    let expires_at = now.plus_ms(ttl_ms);
    tx.execute(
        "INSERT INTO invitations (id, tenant_id, email, role, token_hash, invited_by, created_at, expires_at)
         VALUES (:id, :tenant, :email, :role, :hash, :by, :now, :exp)",
        named_params! {
            ":id": id, ":tenant": tenant, ":email": email.as_str(), ":role": role,
            ":hash": hash_secret(&token).as_slice(), ":by": invited_by, ":now": now, ":exp": expires_at,
        },
    )?;
    audit::append(
        tx,
        granted.actor(),
        &AuditEvent::success(
            "team.member.invite",
            "invitation",
            id.as_str(),
            json!({ "email": email.as_str(), "role": role, "expiresAt": expires_at }),
        ),
        now,
    )?;
    let accept_path = format!("/v1/team/invitations/{token}/accept");
    Ok(CreatedInvitation {
        invitation: Invitation {
            id,
            email: email.as_str().to_owned(),
            role,
            invited_by,
            created_at: now,
            expires_at,
        },
        token,
        accept_path,
    })
}

/// Redeems an invitation token: creates the member and their first API key.
pub fn accept(tx: &Transaction<'_>, token: &str, now: Timestamp) -> ApiResult<AcceptedInvitation> {
    let row: Option<(
        InvitationId,
        TenantId,
        String,
        Role,
        Timestamp,
        Option<Timestamp>,
    )> = tx
        .query_row(
            "SELECT id, tenant_id, email, role, expires_at, accepted_at FROM invitations
             WHERE token_hash = ?1",
            [hash_secret(token).as_slice()],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, tenant, email, role, expires_at, accepted_at)) = row else {
        return Err(ApiError::not_found("invitation"));
    };
    if accepted_at.is_some() {
        return Err(ApiError::new(
            Code::InvitationUsed,
            "this invitation was already accepted",
        ));
    }
    if expires_at <= now {
        return Err(ApiError::new(
            Code::InvitationExpired,
            "this invitation has expired; ask for a new one",
        )
        .with_details(json!({ "expiredAt": expires_at })));
    }
    let email = Email::parse(&email)?;
    let member = insert_user(tx, &tenant, &email, role, now)?;
    tx.execute(
        "UPDATE invitations SET accepted_at = ?2, accepted_user_id = ?3 WHERE id = ?1",
        rusqlite::params![id, now, member.user_id],
    )?;
    let mut actor = Actor::system(tenant);
    actor.user_id = Some(member.user_id.clone());
    audit::append(
        tx,
        &actor,
        &AuditEvent::success(
            "team.invitation.accept",
            "user",
            member.user_id.as_str(),
            json!({ "invitationId": id, "email": member.email, "role": role }),
        ),
        now,
    )?;
    let api_key = key_store::create(
        tx,
        &actor,
        &member.user_id,
        &KeyName::parse("first key")?,
        None,
        now,
    )?;
    Ok(AcceptedInvitation { member, api_key })
}

pub fn change_role(
    tx: &Transaction<'_>,
    granted: &Granted,
    user: &UserId,
    role: Role,
    now: Timestamp,
) -> ApiResult<Member> {
    let granted = &recheck(tx, granted)?;
    let tenant = granted.tenant_id();
    let mut member = find_member(tx, tenant, user)?;
    ensure_may_touch_owner(granted, member.role == Role::Owner || role == Role::Owner)?;
    if member.role == role {
        return Ok(member);
    }
    if member.role == Role::Owner && owner_count(tx, tenant)? <= 1 {
        return Err(last_owner_error());
    }
    tx.execute(
        "UPDATE users SET role = ?2 WHERE id = ?1",
        rusqlite::params![user, role],
    )?;
    audit::append(
        tx,
        granted.actor(),
        &AuditEvent::success(
            "team.member.role_change",
            "user",
            user.as_str(),
            json!({ "from": member.role, "to": role }),
        ),
        now,
    )?;
    member.role = role;
    Ok(member)
}

/// Removes a member and revokes all their keys at once.
pub fn remove(
    tx: &Transaction<'_>,
    granted: &Granted,
    user: &UserId,
    now: Timestamp,
) -> ApiResult<RemovedMember> {
    let granted = &recheck(tx, granted)?;
    let tenant = granted.tenant_id();
    let member = find_member(tx, tenant, user)?;
    ensure_may_touch_owner(granted, member.role == Role::Owner)?;
    if member.role == Role::Owner && owner_count(tx, tenant)? <= 1 {
        return Err(last_owner_error());
    }
    tx.execute(
        "UPDATE users SET removed_at = ?2 WHERE id = ?1",
        rusqlite::params![user, now],
    )?;
    let keys_revoked = key_store::revoke_all_of_user(tx, user, now)?;
    audit::append(
        tx,
        granted.actor(),
        &AuditEvent::success(
            "team.member.remove",
            "user",
            user.as_str(),
            json!({ "email": member.email, "role": member.role, "keysRevoked": keys_revoked }),
        ),
        now,
    )?;
    Ok(RemovedMember {
        user_id: user.clone(),
        removed_at: now,
        keys_revoked,
    })
}
