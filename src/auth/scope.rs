//! Key scopes: what a key may be used for. A call is allowed when the key's user has the role the
//! route needs *and* the key carries the route's scope.

use crate::error::{ApiError, ApiResult};

use super::Role;

/// One scope a key may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    MemoryRead,
    MemoryWrite,
    AgentsRead,
    AgentsWrite,
    RunsRead,
    RunsWrite,
    TeamRead,
    TeamWrite,
    AuditRead,
    KeysWrite,
    /// Agent access keys only: work one `LOCAL_AGENT` target's execution queue.
    Executions,
}

impl Scope {
    pub const ALL: [Scope; 11] = [
        Scope::MemoryRead,
        Scope::MemoryWrite,
        Scope::AgentsRead,
        Scope::AgentsWrite,
        Scope::RunsRead,
        Scope::RunsWrite,
        Scope::TeamRead,
        Scope::TeamWrite,
        Scope::AuditRead,
        Scope::KeysWrite,
        Scope::Executions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MemoryRead => "memory:read",
            Scope::MemoryWrite => "memory:write",
            Scope::AgentsRead => "agents:read",
            Scope::AgentsWrite => "agents:write",
            Scope::RunsRead => "runs:read",
            Scope::RunsWrite => "runs:write",
            Scope::TeamRead => "team:read",
            Scope::TeamWrite => "team:write",
            Scope::AuditRead => "audit:read",
            Scope::KeysWrite => "keys:write",
            Scope::Executions => "executions",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The weakest role whose user keys may carry this scope; `None` for `executions`, which
    /// only agent access keys carry.
    pub fn min_role(self) -> Option<Role> {
        match self {
            Scope::MemoryRead
            | Scope::MemoryWrite
            | Scope::AgentsRead
            | Scope::RunsRead
            | Scope::TeamRead
            | Scope::KeysWrite => Some(Role::Viewer),
            Scope::RunsWrite => Some(Role::Member),
            Scope::AgentsWrite | Scope::TeamWrite | Scope::AuditRead => Some(Role::Admin),
            Scope::Executions => None,
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// Scope names one request may list.
const MAX_REQUESTED: usize = 32;

/// A set of scopes, stored as their names separated by spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl Scopes {
    pub const EMPTY: Scopes = Scopes(0);

    pub fn only(scope: Scope) -> Scopes {
        Scopes(scope.bit())
    }

    /// Every scope a user key of `role` may carry.
    pub fn allowed_for(role: Role) -> Scopes {
        Scope::ALL
            .into_iter()
            .filter(|s| s.min_role().is_some_and(|min| role.at_least(min)))
            .collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    pub fn intersect(self, other: Scopes) -> Scopes {
        Scopes(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }

    /// The stored form: names separated by single spaces, in a fixed order.
    pub fn to_column(self) -> String {
        self.names().join(" ")
    }

    pub fn from_column(raw: &str) -> Option<Scopes> {
        raw.split_whitespace().map(Scope::parse).collect()
    }

    /// Scopes as a client asks for them: names, or `area:*` for every scope of an area
    /// (`memory:*` is `memory:read memory:write`). Unknown names are a 400 on `field`.
    pub fn parse_request<'a>(
        field: &str,
        names: impl IntoIterator<Item = &'a str>,
    ) -> ApiResult<Scopes> {
        let mut set = Scopes::EMPTY;
        for (i, name) in names.into_iter().enumerate() {
            if i >= MAX_REQUESTED {
                return Err(ApiError::field(
                    field,
                    format!("at most {MAX_REQUESTED} scope names are accepted"),
                ));
            }
            let name = name.trim();
            let matched: Vec<Scope> = match name.strip_suffix(":*") {
                Some(area) => Scope::ALL
                    .into_iter()
                    .filter(|s| s.as_str().split(':').next() == Some(area) && s.as_str() != area)
                    .collect(),
                None => Scope::parse(name).into_iter().collect(),
            };
            if matched.is_empty() {
                return Err(ApiError::field(
                    field,
                    format!(
                        "unknown scope {name:?}; known scopes: {}",
                        Scopes(u16::MAX).names().join(", ")
                    ),
                ));
            }
            set = matched.into_iter().fold(set, |acc, s| acc.with(s));
        }
        Ok(set)
    }

    fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope.bit())
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        iter.into_iter().fold(Scopes::EMPTY, Scopes::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_nested_scope_sets() {
        let viewer = Scopes::allowed_for(Role::Viewer);
        let member = Scopes::allowed_for(Role::Member);
        let admin = Scopes::allowed_for(Role::Admin);
        let owner = Scopes::allowed_for(Role::Owner);
        assert!(viewer.is_subset_of(member) && member.is_subset_of(admin));
        assert_eq!(admin, owner);
        assert!(!viewer.contains(Scope::RunsWrite) && member.contains(Scope::RunsWrite));
        assert!(!member.contains(Scope::AuditRead) && admin.contains(Scope::AuditRead));
        assert!(
            !owner.contains(Scope::Executions),
            "only agent keys work queues"
        );
    }

    #[test]
    fn column_round_trips_and_rejects_unknown() {
        let s: Scopes = [Scope::TeamRead, Scope::MemoryRead].into_iter().collect();
        assert_eq!(s.to_column(), "memory:read team:read");
        assert_eq!(Scopes::from_column(&s.to_column()), Some(s));
        assert_eq!(Scopes::from_column("memory:read bogus"), None);
        assert_eq!(Scopes::from_column(""), Some(Scopes::EMPTY));
    }

    #[test]
    fn requests_accept_area_wildcards() {
        let s = Scopes::parse_request("scopes", ["memory:*"]).unwrap();
        assert_eq!(s.names(), ["memory:read", "memory:write"]);
        let s = Scopes::parse_request("scopes", ["runs:read", "runs:read"]).unwrap();
        assert_eq!(s.names(), ["runs:read"]);
        assert!(Scopes::parse_request("scopes", ["memory:delete"]).is_err());
        assert!(Scopes::parse_request("scopes", ["nothing:*"]).is_err());
    }
}
