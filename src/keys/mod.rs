//! API keys: create (the raw value shown once), list (masked), revoke; and the lookup that
//! authenticates every request.

pub mod handlers;
pub mod model;
pub mod store;
