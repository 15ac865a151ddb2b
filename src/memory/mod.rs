//! Memory: writing, reading, deleting and searching an owner's memories. SQLite holds every
//! memory with its embedding; the in-process vector index serves similarity search.

pub mod engine;
pub mod handlers;
pub mod model;
pub mod retrieval;
pub mod retrieve;
pub mod store;

pub use engine::MemoryEngine;
