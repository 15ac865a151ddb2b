//! The permissions routes demand, as types. A handler's first argument is a `Grant<P>` for one of
//! these, and the route table names the same `P` (checked at compile time), so the table shows at
//! a glance which caller each route accepts and a handler cannot skip its check.

use crate::error::ApiResult;
use crate::ids::TargetId;

use super::grant::Principal;
use super::{Role, Scope};

/// Who may call a route: nobody in particular, a user key (with at least `role` and carrying
/// `scope`), or an agent access key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    User {
        role: Role,
        scope: Scope,
    },
    /// Any live user key, whatever its role and scopes: what a key may always do about itself
    /// (say whose it is, revoke itself), and connecting to MCP (whose tools check their own).
    Holder,
    Agent,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Public => f.write_str("anyone"),
            Access::User { role, scope } => {
                write!(
                    f,
                    "user key, {} or above, {}",
                    role.as_str(),
                    scope.as_str()
                )
            }
            Access::Holder => f.write_str("any user key"),
            Access::Agent => f.write_str("agent key, executions"),
        }
    }
}

/// A permission a route demands. [`Grant`](super::Grant)s are made only by checking one.
pub trait Permission: Send + Sync + 'static {
    const ACCESS: Access;
    /// What a passed check binds the grant to: the agent's target for agent permissions.
    type Bound: Clone + Send + Sync + 'static;

    #[doc(hidden)]
    fn bind(principal: &Principal) -> ApiResult<Self::Bound>;
}

macro_rules! user_permission {
    ($(#[$doc:meta])* $name:ident: $role:ident, $scope:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl Permission for $name {
            const ACCESS: Access = Access::User { role: Role::$role, scope: Scope::$scope };
            type Bound = ();

            fn bind(principal: &Principal) -> ApiResult<()> {
                principal.check_user(Role::$role, Scope::$scope)
            }
        }
    };
}

user_permission!(
    /// Read one's own memories.
    MemoryRead: Viewer, MemoryRead
);
user_permission!(
    /// Write, import and delete one's own memories (memories are private to their user, so a
    /// VIEWER keeps a notebook of their own).
    MemoryWrite: Viewer, MemoryWrite
);
user_permission!(
    /// Read dispatch targets and their governance.
    AgentsRead: Viewer, AgentsRead
);
user_permission!(
    /// Register, change and govern dispatch targets; bind agent keys to them.
    AgentsWrite: Admin, AgentsWrite
);
user_permission!(
    /// Read runs.
    RunsRead: Viewer, RunsRead
);
user_permission!(
    /// Dispatch runs and cancel one's own.
    RunsWrite: Member, RunsWrite
);
user_permission!(
    /// Decide approvals and act on other people's runs.
    RunsAdmin: Admin, RunsWrite
);
user_permission!(
    /// Read the team.
    TeamRead: Viewer, TeamRead
);
user_permission!(
    /// Invite, change roles, remove members, revoke invitations.
    TeamWrite: Admin, TeamWrite
);
user_permission!(
    /// See the invitations waiting to be accepted (who was invited, by whom).
    TeamInvitations: Admin, TeamRead
);
user_permission!(
    /// Read the audit log.
    AuditRead: Admin, AuditRead
);
user_permission!(
    /// Create, list and revoke one's own API keys.
    KeysWrite: Viewer, KeysWrite
);

/// What any user key may do about itself: say whose it is, revoke itself (`memesh whoami`,
/// `memesh logout`). No scope is needed: a key restricted to `memory:read` can still be logged
/// out.
#[derive(Debug, Clone, Copy)]
pub struct Holder;

impl Permission for Holder {
    const ACCESS: Access = Access::Holder;
    type Bound = ();

    fn bind(principal: &Principal) -> ApiResult<()> {
        principal.check_holder()
    }
}

/// Connect to the MCP endpoint: any live user key. Each tool then calls its REST route with the
/// same key, which checks that route's own permission (a `memory:read` key is shown, and may
/// use, only the read tools).
#[derive(Debug, Clone, Copy)]
pub struct McpSession;

impl Permission for McpSession {
    const ACCESS: Access = Access::Holder;
    type Bound = ();

    fn bind(principal: &Principal) -> ApiResult<()> {
        principal.check_holder()
    }
}

/// Work one `LOCAL_AGENT` target's execution queue: agent access keys only.
#[derive(Debug, Clone, Copy)]
pub struct Executions;

impl Permission for Executions {
    const ACCESS: Access = Access::Agent;
    type Bound = TargetId;

    fn bind(principal: &Principal) -> ApiResult<TargetId> {
        principal.check_agent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A role that passes a permission's role check must be allowed its scope, or a full key of
    /// that role could never use the route.
    #[test]
    fn every_user_permission_is_reachable_by_its_role() {
        let accesses = [
            MemoryRead::ACCESS,
            MemoryWrite::ACCESS,
            AgentsRead::ACCESS,
            AgentsWrite::ACCESS,
            RunsRead::ACCESS,
            RunsWrite::ACCESS,
            RunsAdmin::ACCESS,
            TeamRead::ACCESS,
            TeamWrite::ACCESS,
            TeamInvitations::ACCESS,
            AuditRead::ACCESS,
            KeysWrite::ACCESS,
        ];
        for access in accesses {
            let Access::User { role, scope } = access else {
                panic!("{access} is not a user permission");
            };
            let min = scope.min_role().expect("user scopes have a minimum role");
            assert!(role.at_least(min), "{access}");
        }
    }
}
