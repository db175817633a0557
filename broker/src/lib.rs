//! taskraft broker: a task queue whose job log is replicated by Raft.
//!
//! # Layout
//! - [`queue`]: the pure, deterministic queue core (no I/O, no clock).
//! - [`raft`]: openraft glue: log store, state machine, peer network, node handle.
//! - [`storage`]: redb tables and the codec.
//! - [`api`]: gRPC handlers (validate, propose, map), auth, the error-to-status map.
//! - [`http`]: health, readiness (and later metrics and the dashboard).
//! - [`server`]: binds, serves, owns the tasks, shuts down.
//! - [`config`]: `taskraft serve` flags.
//! - [`webhook`]: leader-side delivery of the webhook outbox.
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod deadline;
pub mod dev;
pub mod error;
pub mod http;
pub mod queue;
pub mod raft;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod webhook;
