//! `taskraft serve` configuration: flags with `TASKRAFT_*` environment fallbacks,
//! validated into one [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::api::ApiSettings;
use crate::queue::{Backoff, Retention};

/// Flags of `taskraft serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// This node's id (unique in the cluster, >= 1).
    #[arg(long, env = "TASKRAFT_ID", default_value_t = 1)]
    pub id: u64,
    /// gRPC listen address (public API and peer service).
    #[arg(long, env = "TASKRAFT_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Address other nodes reach this one at (defaults to this node's --peers entry, or
    /// the bound --listen address).
    #[arg(long, env = "TASKRAFT_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP listen address (/healthz, /readyz, /metrics, dashboard).
    #[arg(long, env = "TASKRAFT_HTTP", default_value = "127.0.0.1:7071")]
    pub http: SocketAddr,
    /// Where the Raft log and snapshots are stored.
    #[arg(long, env = "TASKRAFT_DATA_DIR", default_value = "./taskraft-data")]
    pub data_dir: PathBuf,
    /// Require `authorization: Bearer <token>` on every call.
    #[arg(long, env = "TASKRAFT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Initial cluster, e.g. `1=127.0.0.1:7070,2=127.0.0.1:7080,3=127.0.0.1:7090`. The
    /// same on every node. Empty: a one-node cluster.
    #[arg(long, env = "TASKRAFT_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Largest payload or result in bytes.
    #[arg(long, env = "TASKRAFT_MAX_PAYLOAD", default_value_t = 1024 * 1024)]
    pub max_payload: usize,
    /// Lease length when a Lease asks for 0.
    #[arg(long, env = "TASKRAFT_VISIBILITY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub visibility_timeout: Duration,
    /// Deliveries allowed when an Enqueue asks for 0.
    #[arg(long, env = "TASKRAFT_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// First retry delay after a Nack (doubles each attempt, ±20 % jitter).
    #[arg(long, env = "TASKRAFT_RETRY_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "TASKRAFT_RETRY_MAX", default_value = "1h", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,
    /// How long an idempotency key deduplicates.
    #[arg(long, env = "TASKRAFT_DEDUP_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,
    /// How long succeeded jobs (and results) are kept.
    #[arg(long, env = "TASKRAFT_RESULT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub result_ttl: Duration,
    /// How long dead and cancelled jobs are kept.
    #[arg(long, env = "TASKRAFT_FAILURE_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub failure_ttl: Duration,
    /// How long a call may wait for a leader and a quorum before UNAVAILABLE.
    #[arg(long, env = "TASKRAFT_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Snapshot (and purge the log) every this many entries. A snapshot is a durable
    /// commit of the state store, so this can be frequent.
    #[arg(long, env = "TASKRAFT_SNAPSHOT_EVERY", default_value_t = 5_000)]
    pub snapshot_every: u64,
    /// Also snapshot when entries came in and the last snapshot is older than this, so
    /// the log and files shrink after a burst even below --snapshot-every.
    #[arg(long, env = "TASKRAFT_SNAPSHOT_MAX_AGE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub snapshot_max_age: Duration,
    /// Log entries kept behind a snapshot, so a briefly lagging follower catches up from
    /// the log instead of a full snapshot. (An entry holds a whole batch of commands,
    /// up to 4 MiB.)
    #[arg(long, env = "TASKRAFT_KEEP_LOGS", default_value_t = 100)]
    pub keep_logs: u64,
    /// Raft heartbeat interval. A follower that hears nothing for 8 heartbeats (the
    /// leader lease) plus a random 4-8 more starts an election.
    #[arg(long, env = "TASKRAFT_HEARTBEAT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Key for the `X-Taskraft-Signature` HMAC of webhook bodies (unsigned when unset).
    #[arg(long, env = "TASKRAFT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Log format.
    #[arg(long, env = "TASKRAFT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Record metrics (served at /metrics on the HTTP port); `--metrics false` turns
    /// every instrument off, e.g. to measure their overhead.
    #[arg(long, env = "TASKRAFT_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,
    /// Export traces over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317).
    /// Unset: nothing is exported.
    #[arg(long, env = "TASKRAFT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Node id.
    pub id: u64,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Advertised address (None: the bound listen address).
    pub advertise: Option<String>,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Bearer token.
    pub token: Option<String>,
    /// Initial cluster.
    pub peers: BTreeMap<u64, String>,
    /// Handler limits and defaults.
    pub api: ApiSettings,
    /// Leader/quorum wait.
    pub request_timeout: Duration,
    /// Snapshot interval in entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot.
    pub keep_logs: u64,
    /// Snapshot at least this often while entries come in.
    pub snapshot_max_age: Duration,
    /// Raft heartbeat.
    pub heartbeat: Duration,
    /// Webhook signing key.
    pub webhook_secret: Option<String>,
    /// Metrics on (default) or off.
    pub metrics: bool,
}

impl ServeArgs {
    /// Checks the flags and builds a [`Config`].
    pub fn into_config(self) -> anyhow::Result<Config> {
        if self.id == 0 {
            bail!("--id must be >= 1");
        }
        let mut peers = BTreeMap::new();
        for p in &self.peers {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("--peers entry {p:?} is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .with_context(|| format!("--peers entry {p:?}: {id:?} is not a node id"))?;
            if id == 0 || addr.trim().is_empty() {
                bail!("--peers entry {p:?}: ids start at 1 and need an address");
            }
            if peers.insert(id, addr.trim().to_string()).is_some() {
                bail!("--peers names node {id} twice");
            }
        }
        if self.max_attempts == 0 {
            bail!("--max-attempts must be >= 1");
        }
        if self.visibility_timeout.is_zero()
            || self.visibility_timeout > Duration::from_secs(12 * 3600)
        {
            bail!("--visibility-timeout must be between 1ms and 12h");
        }
        if self.retry_base > self.retry_max {
            bail!("--retry-base must not exceed --retry-max");
        }
        if self.snapshot_every == 0 {
            bail!("--snapshot-every must be >= 1");
        }
        if self.snapshot_max_age < Duration::from_millis(100) {
            bail!("--snapshot-max-age must be at least 100ms");
        }
        let advertise = self.advertise.or_else(|| peers.get(&self.id).cloned());
        let ms = |d: Duration| d.as_millis() as u64;
        Ok(Config {
            id: self.id,
            listen: self.listen,
            advertise,
            http: self.http,
            data_dir: self.data_dir,
            token: self.token.filter(|t| !t.is_empty()),
            peers,
            api: ApiSettings {
                max_payload: self.max_payload,
                visibility_timeout: self.visibility_timeout,
                max_attempts: self.max_attempts,
                backoff: Backoff {
                    base_ms: ms(self.retry_base),
                    max_ms: ms(self.retry_max),
                },
                dedup_window: self.dedup_window,
                retention: Retention {
                    result_ttl_ms: ms(self.result_ttl),
                    failure_ttl_ms: ms(self.failure_ttl),
                },
            },
            request_timeout: self.request_timeout,
            snapshot_every: self.snapshot_every,
            keep_logs: self.keep_logs,
            snapshot_max_age: self.snapshot_max_age,
            heartbeat: self.heartbeat,
            webhook_secret: self.webhook_secret.filter(|s| !s.is_empty()),
            metrics: self.metrics,
        })
    }
}

impl Config {
    /// A configuration for tests and embedding: one node on ephemeral loopback ports.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            id: 1,
            listen: "127.0.0.1:0".parse().expect("literal"),
            advertise: None,
            http: "127.0.0.1:0".parse().expect("literal"),
            data_dir: data_dir.into(),
            token: None,
            peers: BTreeMap::new(),
            api: ApiSettings::default(),
            request_timeout: Duration::from_secs(5),
            snapshot_every: 5_000,
            keep_logs: 100,
            snapshot_max_age: Duration::from_secs(10),
            heartbeat: Duration::from_millis(100),
            webhook_secret: None,
            metrics: true,
        }
    }
}
