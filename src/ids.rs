//! Typed, prefixed identifiers (`usr_…`, `key_…`): a value of one cannot be passed where another
//! is expected, and a path segment that is not a well-formed id of the right kind is simply unknown.

use serde::Serialize;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $noun:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            /// What a 404 for a missing one of these says is missing.
            pub const NOUN: &'static str = $noun;

            /// A fresh id: the prefix and a time-ordered UUIDv7 in lowercase hex.
            pub fn generate() -> Self {
                $name(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// Accepts only the exact shape [`Self::generate`] produces.
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?;
                let well_formed = rest.len() == 32
                    && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                well_formed.then(|| $name(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                $name::parse(s).ok_or_else(|| crate::db::unknown_value(stringify!($name), s))
            }
        }
    };
}

prefixed_id!(
    /// A workspace: the unit of isolation.
    TenantId,
    "ten_",
    "tenant"
);
prefixed_id!(
    /// A person (or automation identity) in one tenant.
    UserId,
    "usr_",
    "member"
);
prefixed_id!(
    /// An API key record (never the key itself).
    KeyId,
    "key_",
    "API key"
);
prefixed_id!(
    /// A pending or used team invitation.
    InvitationId,
    "inv_",
    "invitation"
);
prefixed_id!(
    /// One audit log row.
    AuditId,
    "aud_",
    "audit row"
);
prefixed_id!(
    /// One memory.
    MemoryId,
    "mem_",
    "memory"
);
prefixed_id!(
    /// A dispatch target (a local agent or a remote A2A agent).
    TargetId,
    "tgt_",
    "dispatch target"
);
prefixed_id!(
    /// An orchestrator run.
    RunId,
    "run_",
    "run"
);
prefixed_id!(
    /// An approval a run waits for.
    ApprovalId,
    "apr_",
    "approval"
);
prefixed_id!(
    /// One execution of a run in the local queue.
    ExecutionId,
    "exe_",
    "execution"
);
prefixed_id!(
    /// A device authorization request (RFC 8628).
    DeviceGrantId,
    "dev_",
    "device authorization"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_generated_shape() {
        let id = UserId::generate();
        assert_eq!(UserId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(KeyId::parse(id.as_str()), None);
        assert_eq!(UserId::parse("usr_123"), None);
        assert_eq!(UserId::parse(&id.as_str().to_uppercase()), None);
    }
}
