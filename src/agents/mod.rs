//! The agent workspace: dispatch targets (local agents that poll the execution queue, remote
//! A2A agents) and their governance — holds, reviews and incident handoffs, every change guarded
//! by the runtime compare-and-swap token.

pub mod a2a;
pub mod card;
pub mod governance;
pub mod handlers;
pub mod model;
pub mod policy;
pub mod store;
