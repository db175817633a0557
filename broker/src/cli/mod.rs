//! Client subcommands of the `taskraft` binary: enqueue, inspect and manage jobs,
//! queues, workers and the cluster over the public gRPC API.
//!
//! They use the generated `taskraft_proto` clients directly (the broker does not
//! depend on the SDK). One file per command group; this file holds the global flags,
//! the connection and the one mapping from failures to exit codes:
//!
//! | exit | meaning                                                        |
//! |------|----------------------------------------------------------------|
//! | 0    | done                                                           |
//! | 1    | the server said no (NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT, ...) |
//! | 2    | usage error (bad flags; clap prints it)                        |
//! | 3    | cannot reach the server, or it is UNAVAILABLE                  |
//! | 4    | UNAUTHENTICATED: missing or wrong token                        |

mod backup;
mod cluster;
mod enqueue;
mod job;
mod output;
mod queue;

use std::time::Duration;

use clap::Subcommand;
use taskraft_proto::v1::admin_client::AdminClient;
use taskraft_proto::v1::broker_client::BrokerClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Flags every client command takes, before or after the subcommand name.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Address of any node of the cluster (host:port); several may be given, comma
    /// separated, and are tried in turn.
    #[arg(
        long,
        global = true,
        env = "TASKRAFT_SERVER",
        default_value = "127.0.0.1:7070"
    )]
    pub server: String,
    /// Bearer token, the one the nodes were started with (`serve --token`).
    #[arg(long, global = true, env = "TASKRAFT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA to verify the nodes' TLS certificates with; addresses without a scheme
    /// then use https://.
    #[arg(long, global = true, env = "TASKRAFT_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Print JSON instead of human-readable tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The client commands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Add a job to a queue.
    Enqueue(enqueue::EnqueueArgs),
    /// Show, cancel or retry one job.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// List jobs.
    #[command(subcommand)]
    Jobs(job::JobsCommand),
    /// Counts of every queue.
    Queues,
    /// Pause, resume or redrive one queue.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Workers that leased jobs recently.
    Workers,
    /// Stream a consistent backup of the whole queue state to a file (restore it into a
    /// new cluster with `taskraft restore`).
    Backup(backup::BackupArgs),
}

/// A failed command, with what to do about it.
#[derive(Debug)]
pub enum CliError {
    /// No server could be dialled.
    Connect {
        /// Addresses tried.
        server: String,
        /// Last dial error.
        error: String,
    },
    /// The server answered with an error.
    Status {
        /// Address used.
        server: String,
        /// Its answer.
        status: Status,
    },
    /// A local problem (reading the payload file, a bad value).
    Local(anyhow::Error),
}

impl CliError {
    /// The process exit code (see the module docs).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Connect { .. } => 3,
            CliError::Status { status, .. } => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded => 3,
                Code::Unauthenticated | Code::PermissionDenied => 4,
                _ => 1,
            },
            CliError::Local(_) => 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Connect { server, error } => write!(
                f,
                "cannot reach taskraft at {server} ({error}): is `taskraft serve` running? \
                 set --server or TASKRAFT_SERVER"
            ),
            CliError::Status { server, status } => {
                let msg = status.message();
                match status.code() {
                    Code::Unavailable => write!(
                        f,
                        "taskraft at {server} is unavailable: {msg}; the cluster may be \
                         electing a leader or lack a quorum: retry, or see `taskraft cluster status`"
                    ),
                    Code::DeadlineExceeded => write!(
                        f,
                        "taskraft at {server} did not answer in time: {msg}; retry, or see \
                         `taskraft cluster status`"
                    ),
                    Code::Unauthenticated | Code::PermissionDenied => write!(
                        f,
                        "taskraft at {server} refused the call: {msg}; pass --token or set \
                         TASKRAFT_TOKEN to the token the nodes were started with"
                    ),
                    Code::NotFound => write!(f, "not found: {msg}"),
                    Code::InvalidArgument => write!(f, "invalid argument: {msg}"),
                    Code::FailedPrecondition => write!(f, "refused: {msg}"),
                    code => write!(f, "server error ({code:?}): {msg}"),
                }
            }
            CliError::Local(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Local(e)
    }
}

/// Deadline of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to one node, with the flags that shape requests and output.
pub struct Conn {
    /// Broker service.
    pub broker: BrokerClient<Channel>,
    /// Admin service.
    pub admin: AdminClient<Channel>,
    /// The address connected to.
    pub server: String,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// `--json`.
    pub json: bool,
}

impl Conn {
    /// Dials the first reachable address of `--server`.
    async fn open(g: &GlobalArgs) -> Result<Conn, CliError> {
        let token = match &g.token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                CliError::Local(anyhow::anyhow!("--token must be printable ASCII"))
            })?),
            None => None,
        };
        let tls = match &g.tls_ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    CliError::Local(anyhow::anyhow!("reading --tls-ca {}: {e}", path.display()))
                })?;
                Some(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                )
            }
            None => None,
        };
        let mut last_error = String::from("no address given");
        for addr in g.server.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let uri = if addr.contains("://") {
                addr.to_string()
            } else if tls.is_some() {
                format!("https://{addr}")
            } else {
                format!("http://{addr}")
            };
            let endpoint = match Endpoint::from_shared(uri) {
                Ok(e) => e,
                Err(e) => {
                    last_error = format!("{addr:?} is not host:port: {e}");
                    continue;
                }
            };
            let endpoint = match &tls {
                Some(tls) => match endpoint.tls_config(tls.clone()) {
                    Ok(e) => e,
                    Err(e) => {
                        last_error = format!("TLS settings for {addr}: {}", error_chain(&e));
                        continue;
                    }
                },
                None => endpoint,
            };
            match endpoint
                .connect_timeout(Duration::from_secs(3))
                .connect()
                .await
            {
                Ok(ch) => {
                    return Ok(Conn {
                        broker: BrokerClient::new(ch.clone()).max_decoding_message_size(64 << 20),
                        admin: AdminClient::new(ch).max_decoding_message_size(64 << 20),
                        server: addr.to_string(),
                        token,
                        json: g.json,
                    })
                }
                Err(e) => last_error = error_chain(&e),
            }
        }
        Err(CliError::Connect {
            server: g.server.clone(),
            error: last_error,
        })
    }

    /// A request carrying the token and the call deadline.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(CALL_TIMEOUT);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// Wraps a server answer's error.
    pub fn fail(&self, status: Status) -> CliError {
        CliError::Status {
            server: self.server.clone(),
            status,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let part = x.to_string();
        // hyper and tonic often repeat their cause in their own message.
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        src = x.source();
    }
    s
}

/// Runs one client command; returns the process exit code.
pub async fn run(global: GlobalArgs, command: ClientCommand) -> i32 {
    let result = async {
        let mut conn = Conn::open(&global).await?;
        match command {
            ClientCommand::Enqueue(args) => enqueue::run(&mut conn, args).await,
            ClientCommand::Job(cmd) => job::run_job(&mut conn, cmd).await,
            ClientCommand::Jobs(cmd) => job::run_jobs(&mut conn, cmd).await,
            ClientCommand::Queues => queue::list(&mut conn).await,
            ClientCommand::Queue(cmd) => queue::run(&mut conn, cmd).await,
            ClientCommand::Cluster(cmd) => cluster::run(&mut conn, cmd).await,
            ClientCommand::Workers => cluster::workers(&mut conn).await,
            ClientCommand::Backup(args) => backup::run(&mut conn, args).await,
        }
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
