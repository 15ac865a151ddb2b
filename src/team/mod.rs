//! Team: members of a tenant, invitations with one-time tokens, role changes and removal, with
//! the rule that a tenant always keeps at least one OWNER.

pub mod handlers;
pub mod model;
pub mod store;
