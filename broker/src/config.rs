//! `taskraft serve` configuration: flags with `TASKRAFT_*` environment fallbacks and an
//! optional TOML file, validated into one [`Config`].
//!
//! Precedence, highest first: a flag on the command line, its `TASKRAFT_*` variable, the
//! `--config` file, the default. The file's keys are the flags' long names (`data-dir`
//! or `data_dir`), taken from the clap definition itself ([`file_args`]), so every flag,
//! including ones added later, is a key, and a key that is no flag is an error naming it.

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
use crate::webhook_target::{Cidr, TargetPolicy};

/// Flags of `taskraft serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// A TOML file whose keys are these flags' names (`data-dir = "/var/lib/taskraft"`,
    /// `peers = ["1=a:7070", "2=b:7070"]`); flags and TASKRAFT_* variables override it.
    #[arg(long, env = "TASKRAFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (unique in the cluster, >= 1).
    #[arg(long, env = "TASKRAFT_ID", default_value_t = 1)]
    pub id: u64,
    /// Take the node id from the host name's trailing ordinal plus one, as a Kubernetes
    /// StatefulSet names its pods: `taskraft-0` is node 1, `taskraft-2` node 3 (the host
    /// name is $HOSTNAME, else the kernel's). Overrides --id.
    #[arg(long, env = "TASKRAFT_ID_FROM_HOSTNAME")]
    pub id_from_hostname: bool,
    /// gRPC listen address of the public API (Broker, Admin). The Raft peer service is
    /// never served here: see --peer-listen.
    #[arg(long, env = "TASKRAFT_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Address clients are told to reach this node at (defaults to the client part of
    /// this node's --peers entry, or the bound --listen address).
    #[arg(long, env = "TASKRAFT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Listen address of the Raft peer service (only cluster nodes call it). Defaults
    /// to the --listen host with port + 2 (7072). A non-loopback address needs
    /// --cluster-secret.
    #[arg(long, env = "TASKRAFT_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Address other nodes reach this node's peer service at (defaults to the peer
    /// part of this node's --peers entry, or the bound --peer-listen address).
    #[arg(long, env = "TASKRAFT_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// Secret every node of the cluster shares and sends on each peer call; a peer
    /// call without it is refused. Distinct from client tokens, which never open the
    /// peer service.
    #[arg(
        long,
        env = "TASKRAFT_CLUSTER_SECRET",
        hide_env_values = true,
        conflicts_with = "cluster_secret_file"
    )]
    pub cluster_secret: Option<String>,
    /// File holding the cluster secret (surrounding whitespace is ignored).
    #[arg(long, env = "TASKRAFT_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// HTTP listen address (/healthz, /readyz, /metrics, dashboard).
    #[arg(long, env = "TASKRAFT_HTTP", default_value = "127.0.0.1:7071")]
    pub http: SocketAddr,
    /// Where the Raft log and snapshots are stored.
    #[arg(long, env = "TASKRAFT_DATA_DIR", default_value = "./taskraft-data")]
    pub data_dir: PathBuf,
    /// Require `authorization: Bearer <token>` on every call; this token has every
    /// role on every queue.
    #[arg(long, env = "TASKRAFT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// More tokens, one per line: `TOKEN ROLES [QUEUES]` with roles produce, work,
    /// read, admin (comma separated) and optional queue patterns (`emails,sms.*`).
    /// Reloaded on SIGHUP.
    #[arg(long, env = "TASKRAFT_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// What the HTTP port protects with the tokens: `api` (the dashboard's JSON API)
    /// or `all` (also /metrics and the dashboard page; /healthz and /readyz stay open).
    #[arg(long, env = "TASKRAFT_HTTP_AUTH", default_value = "api", value_parser = ["api", "all"])]
    pub http_auth: String,
    /// Initial cluster, e.g. `1=127.0.0.1:7070,2=127.0.0.1:7080,3=127.0.0.1:7090`. The
    /// same on every node. Empty: a one-node cluster. Each entry is `ID=CLIENT` or
    /// `ID=CLIENT/PEER` (client and peer `host:port`); the peer address defaults to the
    /// client host with port + 2.
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
    /// Refuse enqueues (UNAVAILABLE) while the data dir's file system has less than
    /// this many MiB free, so the disk never fills in the middle of a log append;
    /// leases, acks and nacks go on. 0 turns the guard off.
    #[arg(long, env = "TASKRAFT_MIN_FREE_DISK_MB", default_value_t = 256)]
    pub min_free_disk_mb: u64,
    /// Check the checksum of every page of the Raft log and the state store at start,
    /// so that a file torn, truncated or altered while the node was down is refused
    /// with an error naming it instead of being served. Costs about a second per GiB of
    /// data dir; off, redb checks only after a crash.
    #[arg(long, env = "TASKRAFT_VERIFY_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub verify_on_start: bool,
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
    /// Address ranges webhooks may reach although they are refused by default
    /// (loopback, link-local, private, CGNAT, multicast, reserved), e.g.
    /// `--webhook-allow 10.20.0.0/16,127.0.0.1/32`.
    #[arg(long, env = "TASKRAFT_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<String>,
    /// PEM CA certificates trusted for `https://` webhook receivers, besides the
    /// system's roots (e.g. an internal CA).
    #[arg(long, env = "TASKRAFT_WEBHOOK_CA")]
    pub webhook_ca: Option<PathBuf>,
    /// Key for the `X-Taskraft-Signature` HMAC of webhook bodies (unsigned when unset).
    #[arg(long, env = "TASKRAFT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Most calls one client connection may have in flight (long polls included); more
    /// are answered RESOURCE_EXHAUSTED at once.
    #[arg(
        long,
        env = "TASKRAFT_MAX_CONCURRENT_PER_CONNECTION",
        default_value_t = 1024
    )]
    pub max_concurrent_per_connection: usize,
    /// Most calls per second one client connection may make (burst: one second's
    /// worth); more are answered RESOURCE_EXHAUSTED. 0: no limit.
    #[arg(long, env = "TASKRAFT_RATE_PER_CONNECTION", default_value_t = 0)]
    pub rate_per_connection: u32,
    /// PEM certificate (chain) of this node: turns on TLS on the client, peer and HTTP
    /// ports, and is this node's client certificate towards its peers. Reloaded on
    /// SIGHUP.
    #[arg(long, env = "TASKRAFT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TASKRAFT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA of the cluster: the peer port then requires a client certificate signed
    /// by it (mutual TLS), and peers' certificates are verified against it. Needed
    /// with TLS in a cluster of more than one node.
    #[arg(long, env = "TASKRAFT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
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

impl ServeArgs {
    /// Checks the flags and builds a [`Config`].
    pub fn into_config(mut self) -> anyhow::Result<Config> {
        if self.id_from_hostname {
            let host = hostname()?;
            self.id = id_from_hostname(&host)?;
            tracing::info!(host = %host, node_id = self.id, "node id taken from the host name");
        }
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
            let addr =
                MemberAddr::parse(addr).map_err(|e| anyhow::anyhow!("--peers entry {p:?}: {e}"))?;
            if peers.insert(id, addr.encode()).is_some() {
                bail!("--peers names node {id} twice");
            }
        }
        if self.max_payload > crate::api::validate::MAX_PAYLOAD_LIMIT {
            bail!(
                "--max-payload must be at most {} bytes (4 MiB): a job must fit one Raft entry",
                crate::api::validate::MAX_PAYLOAD_LIMIT
            );
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
        let own = peers.get(&self.id).and_then(|a| MemberAddr::parse(a).ok());
        let advertise = self
            .advertise
            .or_else(|| own.as_ref().map(|a| a.client.clone()));
        let peer_advertise = self
            .peer_advertise
            .or_else(|| own.as_ref().map(|a| a.peer.clone()));
        let peer_listen = match self.peer_listen {
            Some(a) => a,
            None => default_peer_listen(self.listen)?,
        };
        if peer_listen == self.listen && self.listen.port() != 0 {
            bail!("--peer-listen must differ from --listen: the peer service is never served on the client port");
        }
        let cluster_secret = match (self.cluster_secret, &self.cluster_secret_file) {
            (Some(s), _) => Some(s),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading --cluster-secret-file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        }
        .filter(|s| !s.is_empty());
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
            }),
            _ => None,
        };
        if let Some(t) = &tls {
            if t.client_ca.is_none() && peers.len() > 1 {
                bail!("--tls-client-ca (the cluster CA) is needed with TLS in a cluster: nodes verify each other's certificates with it");
            }
        }
        let peer_mtls = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        check_peer_exposure(peer_listen, cluster_secret.as_deref(), peer_mtls)?;
        let webhook_allow = self
            .webhook_allow
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.parse::<Cidr>()
                    .map_err(|e| anyhow::anyhow!("--webhook-allow: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ms = |d: Duration| d.as_millis() as u64;
        Ok(Config {
            id: self.id,
            listen: self.listen,
            advertise,
            peer_listen,
            peer_advertise,
            cluster_secret,
            http: self.http,
            data_dir: self.data_dir,
            token: self.token.filter(|t| !t.is_empty()),
            tokens_file: self.tokens_file,
            http_auth_all: self.http_auth == "all",
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
                webhook_targets: std::sync::Arc::new(TargetPolicy::new(webhook_allow)),
            },
            request_timeout: self.request_timeout,
            min_free_disk: self.min_free_disk_mb.saturating_mul(1 << 20),
            verify_on_start: self.verify_on_start,
            snapshot_every: self.snapshot_every,
            keep_logs: self.keep_logs,
            snapshot_max_age: self.snapshot_max_age,
            heartbeat: self.heartbeat,
            webhook_secret: self.webhook_secret.filter(|s| !s.is_empty()),
            webhook_ca: self.webhook_ca,
            metrics: self.metrics,
            resolver: Default::default(),
            clock: Default::default(),
            tls,
            max_concurrent_per_connection: self.max_concurrent_per_connection.max(1),
            rate_per_connection: (self.rate_per_connection > 0).then_some(self.rate_per_connection),
        })
    }
}

/// This machine's host name: `$HOSTNAME` (set by Kubernetes to the pod name), else the
/// kernel's.
fn hostname() -> anyhow::Result<String> {
    if let Some(h) = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
    {
        return Ok(h.trim().to_string());
    }
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(h) = std::fs::read_to_string(path) {
            if !h.trim().is_empty() {
                return Ok(h.trim().to_string());
            }
        }
    }
    bail!("--id-from-hostname: no host name ($HOSTNAME is unset and the kernel's is unreadable)")
}

/// The node id of a StatefulSet pod: its ordinal (after the last `-` of the first label)
/// plus one, since node ids start at 1. `taskraft-0` → 1, `tr-db-4.tr.ns.svc` → 5.
pub fn id_from_hostname(host: &str) -> anyhow::Result<u64> {
    let short = host.split('.').next().unwrap_or(host);
    let ordinal = short
        .rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| {
            format!("--id-from-hostname: host name {host:?} does not end in -<ordinal> (like taskraft-0)")
        })?;
    let n: u64 = ordinal
        .parse()
        .with_context(|| format!("--id-from-hostname: ordinal {ordinal:?} is too large"))?;
    n.checked_add(1)
        .with_context(|| format!("--id-from-hostname: ordinal {ordinal:?} is too large"))
}

/// The extra arguments that bring a config file's keys into a command line: one
/// `--key=value` per key that neither the command line nor its environment variable set
/// (for a list, one per element; for an on/off flag, `--key` when true). Append them to
/// the arguments and parse again. `cmd` is the subcommand whose flags are the keys and
/// `matches` what it parsed without the file.
pub fn file_args(
    cmd: &clap::Command,
    matches: &clap::ArgMatches,
    path: &Path,
) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && !a.is_hide_set() && name != "config")
            .with_context(|| {
                format!(
                    "config file {}: unknown key {key:?} (keys are the long flags of `taskraft {} --help`)",
                    path.display(),
                    cmd.get_name()
                )
            })?;
        if matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |what: &str| format!("config file {}: key {key:?} {what}", path.display());
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => match value {
                toml::Value::Boolean(b) => {
                    if *b == matches!(arg.get_action(), ArgAction::SetTrue) {
                        out.push(format!("--{name}").into());
                    }
                }
                _ => bail!(bad("takes true or false")),
            },
            action => {
                let values = match value {
                    toml::Value::Array(items) if matches!(action, ArgAction::Append) => {
                        items.iter().collect()
                    }
                    toml::Value::Array(_) => bail!(bad("takes one value, not a list")),
                    v => vec![v],
                };
                for v in values {
                    let v = match v {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        _ => bail!(bad("takes a string, number or boolean")),
                    };
                    out.push(format!("--{name}={v}").into());
                }
            }
        }
    }
    Ok(out)
}

/// Parses `taskraft serve`'s flags from `argv` (its first item is the program name),
/// with the `--config` file when one is named: what `main` does, for tests and embedding.
pub fn parse_serve<I, T>(argv: I) -> anyhow::Result<ServeArgs>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::{Args, FromArgMatches};
    let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = cmd.clone().try_get_matches_from(&argv)?;
    let args = ServeArgs::from_arg_matches(&matches)?;
    let Some(path) = &args.config else {
        return Ok(args);
    };
    let extra = file_args(&cmd, &matches, path)?;
    let matches = cmd.try_get_matches_from(argv.into_iter().chain(extra))?;
    Ok(ServeArgs::from_arg_matches(&matches)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn parse(file: &tempfile::NamedTempFile, flags: &[&str]) -> anyhow::Result<ServeArgs> {
        let path = file.path().display().to_string();
        let mut argv = vec!["serve", "--config", path.as_str()];
        argv.extend_from_slice(flags);
        parse_serve(argv)
    }

    #[test]
    fn config_file_keys_are_the_flags_and_flags_override_them() {
        let f = file(
            r#"
            id = 3
            listen = "0.0.0.0:7070"
            data_dir = "/var/lib/taskraft"
            peers = ["1=a:7070", "2=b:7070", "3=c:7070"]
            max-payload = 2048
            visibility-timeout = "45s"
            metrics = false
            id-from-hostname = false
            "#,
        );
        let a = parse(&f, &["--max-payload", "4096", "--peers", "1=x:1"]).unwrap();
        assert_eq!(a.id, 3);
        assert_eq!(a.listen.to_string(), "0.0.0.0:7070");
        assert_eq!(a.data_dir, PathBuf::from("/var/lib/taskraft"));
        assert_eq!(a.visibility_timeout, Duration::from_secs(45));
        assert!(!a.metrics);
        assert!(!a.id_from_hostname);
        // The command line wins, for single values and lists alike.
        assert_eq!(a.max_payload, 4096);
        assert_eq!(a.peers, vec!["1=x:1".to_string()]);
        // Defaults stay for what neither sets.
        assert_eq!(a.max_attempts, 3);

        let b = parse(&f, &[]).unwrap();
        assert_eq!(b.peers.len(), 3);
        assert_eq!(b.max_payload, 2048);
        let on = file("id-from-hostname = true\npeers = \"1=a:1,2=b:2\"");
        let c = parse(&on, &[]).unwrap();
        assert!(c.id_from_hostname);
        assert_eq!(c.peers, vec!["1=a:1".to_string(), "2=b:2".to_string()]);
    }

    #[test]
    fn config_file_errors_name_the_key() {
        let err = |text: &str| parse(&file(text), &[]).unwrap_err().to_string();
        let e = err("listen = \"127.0.0.1:1\"\nlisten_adress = \"x\"");
        assert!(e.contains("unknown key \"listen_adress\""), "{e}");
        let e = err("config = \"other.toml\"");
        assert!(e.contains("unknown key \"config\""), "{e}");
        let e = err("server = \"x\"");
        assert!(e.contains("unknown key \"server\""), "{e}");
        let e = err("max-payload = [1, 2]");
        assert!(e.contains("\"max-payload\" takes one value"), "{e}");
        let e = err("id-from-hostname = \"yes\"");
        assert!(
            e.contains("\"id-from-hostname\" takes true or false"),
            "{e}"
        );
        let e = err("[tls]\ncert = \"x\"");
        assert!(e.contains("unknown key \"tls\""), "{e}");
        let e = err("id = ");
        assert!(e.contains("parsing the config file"), "{e}");
        // A value clap refuses is reported by clap, naming the flag.
        let e = err("visibility-timeout = \"soon\"");
        assert!(e.contains("--visibility-timeout"), "{e}");
    }

    /// The example names its cluster secret file under /etc; the test puts one in its
    /// place with the flag (which overrides the file's key) and checks the rest.
    #[test]
    fn the_example_config_file_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/taskraft.toml");
        let a = parse_serve(["serve", "--config", path]).unwrap();
        assert_eq!(
            a.cluster_secret_file,
            Some(PathBuf::from("/etc/taskraft/cluster-secret"))
        );
        let secret = file("s3cret\n");
        let secret = secret.path().display().to_string();
        let c = parse_serve(["serve", "--config", path, "--cluster-secret-file", &secret])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!((c.id, c.peers.len()), (1, 3));
        assert_eq!(c.peers[&2], "broker-2:7070/broker-2:7072");
        assert_eq!(c.peer_listen, "0.0.0.0:7072".parse().unwrap());
        assert_eq!(c.cluster_secret.as_deref(), Some("s3cret"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/taskraft"));
    }

    #[test]
    fn node_id_is_the_statefulset_ordinal_plus_one() {
        assert_eq!(id_from_hostname("taskraft-0").unwrap(), 1);
        assert_eq!(id_from_hostname("taskraft-2").unwrap(), 3);
        assert_eq!(
            id_from_hostname("my-broker-10.my-broker.ns.svc").unwrap(),
            11
        );
        for bad in [
            "taskraft",
            "taskraft-",
            "taskraft-x1",
            "-",
            "",
            "t-99999999999999999999",
        ] {
            assert!(id_from_hostname(bad).is_err(), "{bad:?}");
        }
    }
}

/// The --listen host with port + 2 (port 0 stays 0: an ephemeral port).
fn default_peer_listen(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    let port = match listen.port() {
        0 => 0,
        p => p.checked_add(DEFAULT_PEER_PORT_OFFSET).with_context(|| {
            format!("--listen port {p} + {DEFAULT_PEER_PORT_OFFSET} (the default --peer-listen) is over 65535: set --peer-listen")
        })?,
    };
    Ok(SocketAddr::new(listen.ip(), port))
}

/// Anyone who reaches an unauthenticated peer port can rewrite the cluster's state, so
/// an open peer service is only allowed on loopback: elsewhere peers must prove they
/// are cluster nodes with the cluster secret or a certificate of the cluster CA.
pub fn check_peer_exposure(
    peer_listen: SocketAddr,
    secret: Option<&str>,
    mutual_tls: bool,
) -> anyhow::Result<()> {
    if secret.is_none() && !mutual_tls && !peer_listen.ip().is_loopback() {
        bail!(
            "--peer-listen {peer_listen} is not a loopback address (by default it is the --listen host, port + 2): set --cluster-secret (or --cluster-secret-file), or --tls-client-ca for mutual TLS, so that only cluster nodes can call the Raft service; a single node can keep it on loopback with --peer-listen 127.0.0.1:{}", peer_listen.port()
        );
    }
    Ok(())
}

#[cfg(test)]
mod peer_flag_tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let mut all = vec!["taskraft"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.serve.into_config()
    }

    #[test]
    fn peer_service_defaults_to_client_port_plus_two() {
        let c = config(&["--listen", "127.0.0.1:7070"]).unwrap();
        assert_eq!(c.peer_listen, "127.0.0.1:7072".parse().unwrap());
        let c = config(&["--id", "2", "--peers", "1=a:7070,2=b:7080/b:9999"]).unwrap();
        assert_eq!(c.peers[&1], "a:7070/a:7072");
        assert_eq!(c.advertise.as_deref(), Some("b:7080"));
        assert_eq!(c.peer_advertise.as_deref(), Some("b:9999"));
    }

    #[test]
    fn peer_service_is_never_the_client_listener() {
        let e = config(&[
            "--listen",
            "127.0.0.1:7070",
            "--peer-listen",
            "127.0.0.1:7070",
        ]);
        assert!(e.unwrap_err().to_string().contains("--peer-listen"));
    }

    #[test]
    fn an_exposed_peer_port_needs_a_cluster_secret() {
        let e = config(&["--peer-listen", "0.0.0.0:7072"]).unwrap_err();
        assert!(e.to_string().contains("--cluster-secret"), "{e}");
        let c = config(&["--peer-listen", "0.0.0.0:7072", "--cluster-secret", "s"]).unwrap();
        assert_eq!(c.cluster_secret.as_deref(), Some("s"));
    }
}
