//! taskraft broker: a task queue whose job log is replicated by Raft.
//!
//! # Layout
//! - [`queue`]: the pure, deterministic queue core (no I/O, no clock).
//! - [`raft`]: openraft glue: log store, state machine, peer network, node handle.
//! - [`storage`]: redb tables and the codec.
//! - [`api`]: gRPC handlers (validate, propose, map), auth, the error-to-status map.
//! - [`http`]: health, readiness, `/metrics`, the web dashboard and its JSON API.
//! - [`metrics`]: OpenTelemetry instruments exported in Prometheus format.
//! - [`server`]: binds, serves, owns the tasks, shuts down.
//! - [`config`]: `taskraft serve` flags and the config file.
//! - [`restore`]: `taskraft restore`, seeding a new node from a backup.
//! - [`telemetry`]: logging, tracing and OTLP export.
//! - [`webhook`]: leader-side delivery of the webhook outbox.
#![warn(missing_docs)]

pub mod api;
pub mod clock;
pub mod config;
pub mod conns;
pub mod deadline;
pub mod dev;
pub mod error;
pub mod http;
pub mod metrics;
pub mod probe;
pub mod queue;
pub mod raft;
pub mod restore;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod webhook;
