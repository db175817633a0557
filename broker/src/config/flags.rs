//! The flags of `taskraft serve` (with their `TASKRAFT_*` variables), validated into
//! a [`Config`].

use super::*;

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
    /// with an error naming it instead of being served. Costs 1-2 s per GiB of
    /// data dir (8-10 s for 10M jobs of 256 B); off, redb checks only after a crash.
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
    /// At most this many MiB of those entries: an entry holds from a hundred bytes to
    /// 4 MiB, so a count alone kept up to 400 MiB of log behind every snapshot.
    #[arg(long, env = "TASKRAFT_KEEP_LOG_MB", default_value_t = 32)]
    pub keep_log_mb: u64,
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
            keep_log_bytes: self.keep_log_mb.saturating_mul(1 << 20),
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

/// The --listen host with port + 2 (port 0 stays 0: an ephemeral port).
pub(super) fn default_peer_listen(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
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
