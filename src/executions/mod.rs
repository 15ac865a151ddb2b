//! The local execution queue: agents' workers list pending executions, claim one with their own
//! token, keep its lease alive with heartbeats, and complete it; a sweeper returns executions
//! whose lease ran out. Every statement that moves an execution is guarded so that it can only
//! apply to the state it was decided on.

pub mod handlers;
pub mod store;
