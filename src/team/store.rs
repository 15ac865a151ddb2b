//! Team SQL. Every mutation takes the [`Write`] capability, whose role was re-read inside the
//! same `BEGIN IMMEDIATE` transaction, so the last-owner count and the change cannot interleave
//! and a demotion that committed first wins.

use rusqlite::{Connection, OptionalExtension, named_params};
use serde_json::{Value, json};

use crate::audit::{self, AuditEvent};
use crate::auth::perm::{KeysWrite, TeamWrite};
use crate::auth::{INVITATION_TOKEN_PREFIX, Permission, Role, Write, generate_secret, hash_secret};
use crate::clock::Timestamp;
use crate::db::Tx;
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

/// A member's email and their tenant's name (for `whoami`).
pub fn member_label(
    conn: &Connection,
    tenant: &TenantId,
    user: &UserId,
) -> ApiResult<(String, String)> {
    Ok(conn
        .prepare_cached(
            "SELECT u.email, t.name FROM users u JOIN tenants t ON t.id = u.tenant_id
             WHERE u.id = ?1 AND u.tenant_id = ?2",
        )?
        .query_row(rusqlite::params![user, tenant], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?)
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

/// Only an OWNER may make someone an ADMIN (by invitation or promotion): otherwise one ADMIN
/// could mint a second ADMIN to approve their own runs.
fn ensure_may_grant(w: &Write<'_, TeamWrite>, role: Role) -> ApiResult<()> {
    if role == Role::Admin && w.role() != Role::Owner {
        return Err(ApiError::new(
            Code::InsufficientRole,
            "only an OWNER may grant the ADMIN role",
        )
        .with_details(json!({ "requiredRole": "OWNER", "role": w.role().as_str() })));
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
    crate::db::exec(w,
        "INSERT INTO users (id, tenant_id, email, role, created_at, role_since)
         VALUES (:id, :tenant, :email, :role, :now, :now)",
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
    ensure_may_grant(w, role)?;
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
               AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > ?3",
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
    crate::db::exec(w,
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
/// An invitation as stored, with what accepting it must check.
struct Pending {
    id: InvitationId,
    tenant: TenantId,
    email: String,
    role: Role,
    invited_by: UserId,
    expires_at: Timestamp,
    accepted_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
}

fn invitation_by_token(conn: &Connection, token: &str) -> ApiResult<Option<Pending>> {
    Ok(conn
        .query_row(
            "SELECT id, tenant_id, email, role, invited_by, expires_at, accepted_at, revoked_at
             FROM invitations WHERE token_hash = ?1",
            [hash_secret(token).as_slice()],
            |r| {
                let d = crate::db::Decoded::new(r, "invitations", 0)?;
                Ok(Pending {
                    id: d.get(0)?,
                    tenant: d.get(1)?,
                    email: d.get(2)?,
                    role: d.get(3)?,
                    invited_by: d.get(4)?,
                    expires_at: d.get(5)?,
                    accepted_at: d.get(6)?,
                    revoked_at: d.get(7)?,
                })
            },
        )
        .optional()?)
}

/// Whether the invitation can still be redeemed now: not used, not revoked, not expired, and its
/// inviter still a member allowed to grant its role.
fn ensure_redeemable(conn: &Connection, p: &Pending, now: Timestamp) -> ApiResult<()> {
    if p.accepted_at.is_some() {
        return Err(ApiError::new(
            Code::InvitationUsed,
            "this invitation was already accepted",
        ));
    }
    if p.revoked_at.is_some() {
        return Err(ApiError::new(
            Code::InvitationRevoked,
            "this invitation was revoked; ask for a new one",
        ));
    }
    if p.expires_at <= now {
        return Err(ApiError::new(
            Code::InvitationExpired,
            "this invitation has expired; ask for a new one",
        )
        .with_details(json!({ "expiredAt": p.expires_at })));
    }
    let inviter = find_member(conn, &p.tenant, &p.invited_by).ok();
    let may_invite = inviter.is_some_and(|m| {
        m.role.at_least(Role::Admin) && (p.role != Role::Owner || m.role == Role::Owner)
    });
    if !may_invite {
        return Err(ApiError::new(
            Code::InvitationRevoked,
            "the person who sent this invitation may no longer invite; ask for a new one",
        ));
    }
    Ok(())
}

/// Redeems an invitation token: creates the member and their first API key.
pub fn accept(tx: &Tx<'_>, token: &str, now: Timestamp) -> ApiResult<AcceptedInvitation> {
    let Some(p) = invitation_by_token(tx, token)? else {
        return Err(ApiError::not_found("invitation"));
    };
    ensure_redeemable(tx, &p, now)?;
    let Pending {
        id,
        tenant,
        email,
        role,
        ..
    } = p;
    let email = Email::parse(&email)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("invitations row {id}: {e}")))?;
    let member = insert_user(
        &Write::<KeysWrite>::system(tx, tenant.clone(), now),
        &email,
        role,
    )?;
    crate::db::exec(
        tx,
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
    ensure_may_grant(w, role)?;
    if member.role == Role::Owner && owner_count(w, tenant)? <= 1 {
        return Err(last_owner_error());
    }
    crate::db::exec(
        w,
        "UPDATE users SET role = ?2, role_since = ?3 WHERE id = ?1",
        rusqlite::params![user, role, w.now()],
    )?;
    w.tx().auth_changed();
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
    crate::db::exec(
        w,
        "UPDATE users SET removed_at = ?2 WHERE id = ?1",
        rusqlite::params![user, now],
    )?;
    let keys_revoked = key_store::revoke_all_of_user(w, user)?;
    let invitations_revoked = crate::db::exec(
        w,
        "UPDATE invitations SET revoked_at = ?3 WHERE invited_by = ?1 AND tenant_id = ?2
           AND accepted_at IS NULL AND revoked_at IS NULL",
        rusqlite::params![user, tenant, now],
    )?;
    audit::append(
        w,
        &AuditEvent::success(
            "team.member.remove",
            "user",
            user.as_str(),
            json!({ "email": member.email, "role": member.role, "keysRevoked": keys_revoked,
                    "invitationsRevoked": invitations_revoked }),
        ),
    )?;
    Ok(RemovedMember {
        user_id: user.clone(),
        removed_at: now,
        keys_revoked,
        invitations_revoked,
    })
}

/// The tenant's invitations still waiting to be accepted (unexpired, not revoked), newest first.
pub fn list_invitations(
    conn: &Connection,
    tenant: &TenantId,
    now: Timestamp,
) -> ApiResult<Vec<Invitation>> {
    let rows = conn
        .prepare_cached(
            "SELECT id, email, role, invited_by, created_at, expires_at FROM invitations
             WHERE tenant_id = ?1 AND accepted_at IS NULL AND revoked_at IS NULL
               AND expires_at > ?2
             ORDER BY created_at DESC, id DESC",
        )?
        .query_map(rusqlite::params![tenant, now], |r| {
            let d = crate::db::Decoded::new(r, "invitations", 0)?;
            Ok(Invitation {
                id: d.get(0)?,
                email: d.get(1)?,
                role: d.get(2)?,
                invited_by: d.get(3)?,
                created_at: d.get(4)?,
                expires_at: d.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Revokes a pending invitation of the capability's tenant; its token stops working at once.
pub fn revoke_invitation(w: &Write<'_, TeamWrite>, id: &InvitationId) -> ApiResult<Value> {
    let now = w.now();
    let changed = crate::db::exec(
        w,
        "UPDATE invitations SET revoked_at = ?3 WHERE id = ?1 AND tenant_id = ?2
           AND accepted_at IS NULL AND revoked_at IS NULL",
        rusqlite::params![id, w.tenant(), now],
    )?;
    if changed == 0 {
        return Err(ApiError::not_found("invitation"));
    }
    audit::append(
        w,
        &AuditEvent::success(
            "team.invitation.revoke",
            "invitation",
            id.as_str(),
            json!({}),
        ),
    )?;
    Ok(json!({ "id": id, "revokedAt": now }))
}
