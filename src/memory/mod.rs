//! Memory: writing, reading, deleting, searching and transferring an owner's memories. SQLite
//! holds every memory with its embedding; the in-process vector index serves similarity search.

pub mod engine;
pub mod handlers;
pub mod model;
pub mod ranking;
pub mod search;
pub mod store;
pub mod switch;
pub mod transfer;
pub mod write;

pub use engine::MemoryEngine;
