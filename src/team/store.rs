//! Team SQL. Every mutation takes the [`Write`] capability, whose role was re-read inside the
//! same `BEGIN IMMEDIATE` transaction, so the last-owner count and the change cannot interleave
//! and a demotion that committed first wins.

use rusqlite::{Connection, OptionalExtension, Transaction, named_params};
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::perm::{KeysWrite, TeamWrite};
use crate::auth::{INVITATION_TOKEN_PREFIX, Permission, Role, Write, generate_secret, hash_secret};
use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult, Code};
use crate::ids::{InvitationId, TenantId, UserId};
use crate::keys::model::{KeyName, NewKey};
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

/// Only an OWNER may grant OWNER, or change or remove an OWNER.
fn ensure_may_touch_owner(w: &Write<'_, TeamWrite>, touches_owner: bool) -> ApiResult<()> {
    if touches_owner && w.role() != Role::Owner {
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

/// Inserts a user into the capability's tenant directly (bootstrap and accepted invitations).
pub fn insert_user<P: Permission>(
    w: &Write<'_, P>,
    email: &Email,
    role: Role,
) -> ApiResult<Member> {
    let id = UserId::generate();
    let (tenant, now) = (w.tenant(), w.now());
    w.execute(
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
    w: &Write<'_, TeamWrite>,
    email: &Email,
    role: Role,
    ttl_ms: i64,
) -> ApiResult<CreatedInvitation> {
    ensure_may_touch_owner(w, role == Role::Owner)?;
    let (tenant, now) = (w.tenant(), w.now());
    if is_member_email(w, tenant, email)? {
        return Err(ApiError::new(
            Code::AlreadyMember,
            "this email is already a member",
        ));
    }
    let pending: Option<InvitationId> = w
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
    let Some(invited_by) = w.user().cloned() else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "invitation without a user actor"
        )));
    };
    let id = InvitationId::generate();
    let token = generate_secret(INVITATION_TOKEN_PREFIX);
    let expires_at = now.plus_ms(ttl_ms);
    w.execute(
        "INSERT INTO invitations (id, tenant_id, email, role, token_hash, invited_by, created_at, expires_at)
         VALUES (:id, :tenant, :email, :role, :hash, :by, :now, :exp)",
        named_params! {
            ":id": id, ":tenant": tenant, ":email": email.as_str(), ":role": role,
            ":hash": hash_secret(&token).as_slice(), ":by": invited_by, ":now": now, ":exp": expires_at,
        },
    )?;
    audit::append(
        w,
        &AuditEvent::success(
            "team.member.invite",
            "invitation",
            id.as_str(),
            json!({ "email": email.as_str(), "role": role, "expiresAt": expires_at }),
        ),
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
    let email = Email::parse(&email)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("invitations row {id}: {e}")))?;
    let member = insert_user(
        &Write::<KeysWrite>::system(tx, tenant.clone(), now),
        &email,
        role,
    )?;
    tx.execute(
        "UPDATE invitations SET accepted_at = ?2, accepted_user_id = ?3 WHERE id = ?1",
        rusqlite::params![id, now, member.user_id],
    )?;
    let w = Write::<KeysWrite>::by_invitation(tx, tenant, member.user_id.clone(), now);
    audit::append(
        &w,
        &AuditEvent::success(
            "team.invitation.accept",
            "user",
            member.user_id.as_str(),
            json!({ "invitationId": id, "email": member.email, "role": role }),
        ),
    )?;
    let api_key = key_store::create(
        &w,
        &member.user_id,
        role,
        &KeyName::parse("first key")?,
        None,
        &NewKey::User(None),
        None,
    )?;
    Ok(AcceptedInvitation { member, api_key })
}

pub fn change_role(w: &Write<'_, TeamWrite>, user: &UserId, role: Role) -> ApiResult<Member> {
    let tenant = w.tenant();
    let mut member = find_member(w, tenant, user)?;
    ensure_may_touch_owner(w, member.role == Role::Owner || role == Role::Owner)?;
    if member.role == role {
        return Ok(member);
    }
    if member.role == Role::Owner && owner_count(w, tenant)? <= 1 {
        return Err(last_owner_error());
    }
    w.execute(
        "UPDATE users SET role = ?2 WHERE id = ?1",
        rusqlite::params![user, role],
    )?;
    audit::append(
        w,
        &AuditEvent::success(
            "team.member.role_change",
            "user",
            user.as_str(),
            json!({ "from": member.role, "to": role }),
        ),
    )?;
    member.role = role;
    Ok(member)
}

/// Removes a member and revokes all their keys at once.
pub fn remove(w: &Write<'_, TeamWrite>, user: &UserId) -> ApiResult<RemovedMember> {
    let (tenant, now) = (w.tenant(), w.now());
    let member = find_member(w, tenant, user)?;
    ensure_may_touch_owner(w, member.role == Role::Owner)?;
    if member.role == Role::Owner && owner_count(w, tenant)? <= 1 {
        return Err(last_owner_error());
    }
    w.execute(
        "UPDATE users SET removed_at = ?2 WHERE id = ?1",
        rusqlite::params![user, now],
    )?;
    let keys_revoked = key_store::revoke_all_of_user(w, user)?;
    audit::append(
        w,
        &AuditEvent::success(
            "team.member.remove",
            "user",
            user.as_str(),
            json!({ "email": member.email, "role": member.role, "keysRevoked": keys_revoked }),
        ),
    )?;
    Ok(RemovedMember {
        user_id: user.clone(),
        removed_at: now,
        keys_revoked,
    })
}
