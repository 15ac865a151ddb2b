//! The orchestrator: runs dispatched to targets, their approvals, blocks from target governance,
//! cancellation and event timeline, and the lease-based queue of executions that local agents
//! work. `lifecycle` is the one module that changes a run's or an execution's state.

pub mod health;
pub mod lifecycle;
pub mod model;
pub mod queue;
pub mod remote;
pub mod runs;
pub mod store;
