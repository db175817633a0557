//! Rust client and worker SDK for [taskraft](https://example.invalid/taskraft), a
//! Raft-replicated task broker.
//!
//! A producer enqueues jobs with a [`Client`]; a [`Worker`] leases them, runs the
//! handler registered for each job's `job_type`, and acks or nacks. While a handler
//! runs the worker keeps its lease alive, so the visibility timeout only bounds how
//! soon a crashed worker's jobs run again.
//!
//! ```no_run
//! use taskraft::{Client, HandlerError, Job, Worker};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), taskraft::Error> {
//!     let client = Client::connect(["127.0.0.1:7070"]).await?;
//!     client.enqueue_json("emails", &serde_json::json!({"to": "ada@example.com"})).await?;
//!     Worker::builder(client)
//!         .queue("emails")
//!         .handler("", |job: Job| async move {
//!             let mail: serde_json::Value = job.json()?;
//!             println!("sending to {}", mail["to"]);
//!             Ok::<_, HandlerError>(())
//!         })
//!         .build()?
//!         .run() // until ctrl-c / SIGTERM
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! Delivery is at least once: a job whose worker dies, or whose ack is lost, runs
//! again (after its lease expires, or a few seconds after a stream worker's session
//! broke). Make handlers idempotent.
//!
//! A worker gets its jobs over one `Work` session by default ([`Protocol::Stream`]):
//! pushed as slots free up, settled on the same stream, resumed on the same node after
//! a broken connection so the jobs in hand stay the worker's. [`Protocol::Poll`] uses
//! long-polling `Lease` calls instead.
//!
//! # Layout
//! - [`client`](Client): connections, retries across nodes, producer and admin calls.
//! - [`options`](EnqueueOptions): enqueue options, [`NewJob`], [`Enqueued`].
//! - [`batcher`](Batcher): client-side batching of concurrent enqueues.
//! - [`worker`](Worker): the builder, the poll protocol's lease loop, graceful shutdown.
//! - `session`: the stream protocol (one `Work` session, credits, resume).
//! - `runner`: one job's life: heartbeat, handler task, ack/nack.
//! - [`job`](Job): what handlers see and return.
//! - [`info`](JobInfo): jobs as the broker reports them.
//! - [`error`](Error): [`Error`] and [`HandlerError`].
#![deny(missing_docs)]

mod batcher;
mod client;
mod error;
mod info;
mod job;
mod options;
mod runner;
mod session;
mod shutdown;
mod worker;

pub use batcher::{Batcher, BatcherOptions, BatcherStats};
pub use client::{Client, ClientBuilder};
pub use error::{Error, HandlerError};
pub use info::{JobInfo, JobState};
pub use job::{Job, JobOutput, Json, ProgressReporter};
pub use options::{EnqueueOptions, Enqueued, NewJob};
pub use shutdown::shutdown_signal;
pub use worker::{Protocol, Report, Worker, WorkerBuilder};

/// The generated protobuf types, for admin answers returned as-is
/// ([`Client::list_queues`], [`Client::cluster_status`], ...).
pub use taskraft_proto::v1 as proto;
