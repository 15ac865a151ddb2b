//! The orchestrator: runs dispatched to targets, with approvals, blocks from target governance,
//! cancellation, and an append-only event timeline. Runs on `LOCAL_AGENT` targets become
//! executions in the lease-based queue (see `executions`).

pub mod handlers;
pub mod model;
pub mod store;
