//! The audit log: one hash-chained row per mutation, written in the mutation's own transaction,
//! queried by OWNERs and ADMINs, verified by `memesh audit verify`.

pub mod handlers;
pub mod model;
pub mod refusals;
pub mod store;

pub use model::AuditEvent;
pub use store::append;
