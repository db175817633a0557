//! taskraft broker: a task queue whose job log is replicated by Raft.
//!
//! # Layout
//! - [`queue`]: the pure, deterministic queue core (no I/O, no clock).
#![warn(missing_docs)]

pub mod queue;
