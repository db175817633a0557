//! `taskraft serve` configuration: flags with `TASKRAFT_*` environment fallbacks and an
//! optional TOML file, validated into one [`Config`].
//!
//! Precedence, highest first: a flag on the command line, its `TASKRAFT_*` variable, the
//! `--config` file, the default. The file's keys are the flags' long names (`data-dir`
//! or `data_dir`), taken from the clap definition itself ([`file_args`]), so every flag,
//! including ones added later, is a key, and a key that is no flag is an error naming it.
//!
//! Files: `flags.rs` (the clap flags and their validation into [`Config`]), `file.rs`
//! (the TOML file), `node_id.rs` (`--id-from-hostname`); this file holds [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::ArgAction;

use crate::api::ApiSettings;
use crate::queue::{Backoff, Retention};
use crate::raft::addr::{MemberAddr, DEFAULT_PEER_PORT_OFFSET};
use crate::webhook::target::{Cidr, TargetPolicy};

mod file;
mod flags;
mod node_id;
#[cfg(test)]
mod tests;

pub use file::{file_args, parse_serve};
pub use flags::{check_peer_exposure, ServeArgs};
use node_id::hostname;
pub use node_id::id_from_hostname;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Node id.
    pub id: u64,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Advertised client address (None: the bound listen address).
    pub advertise: Option<String>,
    /// Peer service listen address (never the client listener).
    pub peer_listen: SocketAddr,
    /// Advertised peer address (None: the bound peer address).
    pub peer_advertise: Option<String>,
    /// Shared secret peers authenticate each other with (None: the peer service is
    /// open, which is only allowed on a loopback --peer-listen).
    pub cluster_secret: Option<String>,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Bearer token (every role).
    pub token: Option<String>,
    /// Scoped tokens, reloaded on SIGHUP.
    pub tokens_file: Option<PathBuf>,
    /// /metrics and the dashboard page need a read token too.
    pub http_auth_all: bool,
    /// Initial cluster: id -> `CLIENT/PEER` (see [`crate::raft::addr::MemberAddr`]).
    pub peers: BTreeMap<u64, String>,
    /// Handler limits and defaults.
    pub api: ApiSettings,
    /// Leader/quorum wait.
    pub request_timeout: Duration,
    /// Free bytes on the data dir's file system below which enqueues are refused (0:
    /// never; see `storage/disk.rs`).
    pub min_free_disk: u64,
    /// Check both stores' checksums at start.
    pub verify_on_start: bool,
    /// Snapshot interval in entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot.
    pub keep_logs: u64,
    /// Bytes of those entries kept at most.
    pub keep_log_bytes: u64,
    /// Snapshot at least this often while entries come in.
    pub snapshot_max_age: Duration,
    /// Raft heartbeat.
    pub heartbeat: Duration,
    /// Webhook signing key.
    pub webhook_secret: Option<String>,
    /// Extra CA for https:// webhook receivers.
    pub webhook_ca: Option<PathBuf>,
    /// Metrics on (default) or off.
    pub metrics: bool,
    /// How peer host names are resolved: the system's resolver, at every connection
    /// attempt (tests inject names that start resolving late).
    pub resolver: crate::raft::network::Resolver,
    /// The machine's clocks (tests step the wall clock of a running node).
    pub clock: crate::clock::ClockHandle,
    /// TLS files (None: plain TCP everywhere).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Calls in flight per client connection.
    pub max_concurrent_per_connection: usize,
    /// Calls per second per client connection (None: unlimited).
    pub rate_per_connection: Option<u32>,
}

impl Config {
    /// A configuration for tests and embedding: one node on ephemeral loopback ports.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            id: 1,
            listen: "127.0.0.1:0".parse().expect("literal"),
            advertise: None,
            peer_listen: "127.0.0.1:0".parse().expect("literal"),
            peer_advertise: None,
            cluster_secret: None,
            http: "127.0.0.1:0".parse().expect("literal"),
            data_dir: data_dir.into(),
            token: None,
            tokens_file: None,
            http_auth_all: false,
            peers: BTreeMap::new(),
            api: ApiSettings::default(),
            request_timeout: Duration::from_secs(5),
            min_free_disk: 0,
            verify_on_start: true,
            snapshot_every: 5_000,
            keep_logs: 100,
            keep_log_bytes: 32 << 20,
            snapshot_max_age: Duration::from_secs(10),
            heartbeat: Duration::from_millis(100),
            webhook_secret: None,
            webhook_ca: None,
            metrics: true,
            resolver: Default::default(),
            clock: Default::default(),
            tls: None,
            max_concurrent_per_connection: 1024,
            rate_per_connection: None,
        }
    }
}
