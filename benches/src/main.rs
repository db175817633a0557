//! `taskraft-bench`: a load generator for a running taskraft node (or cluster).
//!
//! ```text
//! taskraft-bench <scenario> --server 127.0.0.1:7070      drive a running node
//! taskraft-bench all --spawn                             start a fresh node, run, kill it
//! ```
//!
//! Scenarios (see README.md): `enqueue`, `enqueue-batch`, `lifecycle`, `latency`,
//! `sdk-lifecycle`, `failover` (needs `--spawn-cluster 3`), `retention` and `backlog`
//! (need `--spawn` or `--spawn-cluster`), and `all` (the first three in a row). Results
//! print as a table, or as JSON with `--json`.
//!
//! # Layout
//! - `client.rs`: connections and the bearer-token interceptor
//! - `scenario/`: one file per scenario
//! - `report.rs`: counts, latency histograms, table and JSON output
//! - `spawn.rs`: the `--spawn` child node and the `--spawn-cluster` children
//! - `probe.rs`: resident memory and data-dir size of spawned nodes, sampled
//! - `nodelog.rs`: snapshot build and install times from a spawned node's log
//!
//! Exit status: 0 when every scenario ran and verified, 1 when a scenario had errors or
//! failed verification, 2 when the run could not be done at all.

mod client;
mod nodelog;
mod probe;
mod report;
mod scenario;
mod spawn;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

use client::Pool;
use report::Report;
use scenario::Params;

/// Load generator for taskraft: named scenarios, jobs/s and latency percentiles.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Which scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// gRPC address of the node to drive.
    #[arg(long, env = "TASKRAFT_BENCH_SERVER", default_value = "127.0.0.1:7070")]
    server: String,
    /// Several nodes (comma-separated); callers are spread over them. Overrides --server.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Start a fresh `taskraft serve` on free loopback ports with a temp data dir, run
    /// against it, then kill it. Ignores --server/--servers.
    #[arg(long)]
    spawn: bool,
    /// Start a fresh cluster of N `taskraft serve` processes (with `--peers`) and spread
    /// the load over all of them. Needed by `failover`.
    #[arg(long)]
    spawn_cluster: Option<usize>,
    /// With --spawn-cluster: send every call to the leader (as a leader-aware client
    /// does) instead of spreading calls over all nodes (followers forward to the leader).
    #[arg(long)]
    leader_only: bool,
    /// The `taskraft` binary for --spawn (default: next to this executable).
    #[arg(long)]
    taskraft_bin: Option<PathBuf>,
    /// Extra flag for the spawned `taskraft serve` (repeatable), e.g.
    /// `--serve-arg=--snapshot-every=100000`.
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// Bearer token, when the node runs with --token.
    #[arg(long, env = "TASKRAFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA of the nodes' TLS certificates: connect with https:// (addresses
    /// without a scheme), verifying them with it.
    #[arg(long, env = "TASKRAFT_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Jobs per scenario [enqueue: 20000, enqueue-batch: 100000, lifecycle: 100000,
    /// latency: rate x duration, retention: 1000000, backlog: 10000000].
    #[arg(long)]
    jobs: Option<u64>,
    /// Concurrent callers [enqueue: 64, enqueue-batch, lifecycle preload and backlog: 8].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Jobs per EnqueueBatch call (enqueue-batch, lifecycle preload, backlog); at most
    /// 10000 [100; backlog: 1000].
    #[arg(long)]
    batch: Option<usize>,
    /// Payload bytes per job [64; backlog: 256].
    #[arg(long)]
    payload_size: Option<usize>,
    /// `enqueue`: send the jobs over `EnqueueStream` (one stream per connection, the
    /// `--concurrency` jobs in flight spread over them) instead of unary `Enqueue` calls.
    /// `lifecycle`: each worker holds a `Work` session with `--lease-batch` credits and
    /// acks on it, instead of unary Lease and Ack calls.
    #[arg(long)]
    stream: bool,
    /// Workers in `lifecycle` (and the drains of `backlog`).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Jobs per Lease call in `lifecycle` and `backlog`'s drains (1-1000) [100; backlog: 64].
    #[arg(long)]
    lease_batch: Option<u32>,
    /// `backlog`: jobs leased and acked at depth, and in the empty-queue baseline.
    #[arg(long, default_value_t = 100_000)]
    drain: u64,
    /// `backlog` with 3+ nodes: how the wiped follower rejoins (`re-add`: RemoveNode,
    /// restart with --peers of the others, AddNode; `same-peers`: restart as it was).
    #[arg(long, value_enum, default_value = "re-add")]
    rejoin: scenario::backlog::Rejoin,
    /// `backlog`: bound on each wait (for the snapshot, the restarted node, the catch-up
    /// of the wiped follower).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    phase_timeout: Duration,
    /// Target rate of `latency`, jobs/s.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Run time of `latency` (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Safety bound on each scenario in seconds; a scenario still running then is stopped
    /// and the run fails [300; backlog: 7200].
    #[arg(long)]
    max_seconds: Option<u64>,
    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// `retention`: result TTL given to the spawned node.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    result_ttl: Duration,
    /// Print JSON (an array of result rows) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Single Enqueue calls from many callers.
    Enqueue,
    /// EnqueueBatch calls.
    EnqueueBatch,
    /// Preload, then lease and ack everything with a few workers.
    Lifecycle,
    /// Open-loop Enqueue at a fixed rate.
    Latency,
    /// `lifecycle` done by SDK workers (taskraft::Worker) with a no-op handler.
    SdkLifecycle,
    /// Kill -9 the leader of a --spawn-cluster under enqueue load; time to the first
    /// successful write after the kill.
    Failover,
    /// Disk use through enqueueing, completing and expiring --jobs (default 1,000,000),
    /// and the time of the retention sweep (needs --spawn).
    Retention,
    /// A deep queue (--jobs, default 10,000,000): memory and data dir, snapshot, kill -9
    /// and restart, drain at depth vs an empty queue; with --spawn-cluster 3 also the
    /// catch-up of a wiped follower (needs --spawn or --spawn-cluster).
    Backlog,
    /// enqueue, enqueue-batch, lifecycle in a row.
    All,
}

impl Scenario {
    fn expand(self) -> Vec<Scenario> {
        match self {
            Scenario::All => vec![
                Scenario::Enqueue,
                Scenario::EnqueueBatch,
                Scenario::Lifecycle,
            ],
            s => vec![s],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Enqueue => "enqueue",
            Scenario::EnqueueBatch => "enqueue-batch",
            Scenario::Lifecycle => "lifecycle",
            Scenario::Latency => "latency",
            Scenario::SdkLifecycle => "sdk-lifecycle",
            Scenario::Failover => "failover",
            Scenario::Retention => "retention",
            Scenario::Backlog => "backlog",
            Scenario::All => "all",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenarios; Ok(false) when one had errors or failed verification.
async fn run(cli: Cli) -> Result<bool> {
    if let Some(path) = &cli.tls_ca {
        let pem =
            std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?;
        client::use_tls_ca(pem);
    }
    let backlog = cli.scenario == Scenario::Backlog;
    let params = Params {
        jobs: cli.jobs,
        concurrency: cli.concurrency,
        batch: cli.batch.unwrap_or(if backlog { 1000 } else { 100 }),
        payload_size: cli.payload_size.unwrap_or(if backlog { 256 } else { 64 }),
        workers: cli.workers,
        lease_batch: cli.lease_batch.unwrap_or(if backlog { 64 } else { 100 }),
        stream: cli.stream,
        rate: cli.rate,
        duration: cli.duration,
    };
    let backlog_opts = scenario::backlog::Options {
        drain: cli.drain,
        phase_timeout: cli.phase_timeout,
        connections: cli.connections,
        token: cli.token.clone(),
        leader_only: cli.leader_only,
        rejoin: cli.rejoin,
    };
    let max_seconds = cli.max_seconds.unwrap_or(if backlog { 7200 } else { 300 });
    // Declared before the pool so it outlives every connection.
    let mut node = None;
    let mut cluster = None;
    let servers = if let Some(n) = cli.spawn_cluster {
        let bin = spawn::find_binary(cli.taskraft_bin.as_deref())?;
        let c = cluster.insert(spawn::SpawnedCluster::start(&bin, n, &cli.serve_arg).await?);
        if cli.leader_only {
            vec![c.leader_addr().await?]
        } else {
            c.addrs()
        }
    } else if cli.spawn {
        let bin = spawn::find_binary(cli.taskraft_bin.as_deref())?;
        let mut serve_args = cli.serve_arg.clone();
        if cli.scenario == Scenario::Retention {
            serve_args.push(format!(
                "--result-ttl={}",
                humantime::format_duration(cli.result_ttl)
            ));
            serve_args.push("--snapshot-max-age=10s".into());
        }
        let n = node.insert(spawn::SpawnedNode::start(&bin, &serve_args).await?);
        vec![n.addr.to_string()]
    } else if cli.servers.is_empty() {
        vec![cli.server.clone()]
    } else {
        cli.servers.clone()
    };
    let pool = Pool::connect(&servers, cli.connections, cli.token.as_deref()).await?;

    let mut reports: Vec<Report> = Vec::new();
    let mut all_ok = true;
    for s in cli.scenario.expand() {
        eprintln!("running {} against {}", s.name(), servers.join(","));
        let limit = Duration::from_secs(max_seconds);
        let one = async {
            if s == Scenario::Retention {
                let n = node.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("retention needs --spawn (it measures the node's data dir)")
                })?;
                scenario::retention::run(&pool, &params, &n.data_dir(), cli.result_ttl).await
            } else if s == Scenario::Failover {
                let c = cluster
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("failover needs --spawn-cluster 3 (or more)"))?;
                Ok(vec![scenario::failover::run(&pool, &params, c).await?])
            } else if s == Scenario::Backlog {
                let nodes: &mut [spawn::SpawnedNode] = if let Some(c) = cluster.as_mut() {
                    &mut c.nodes
                } else if let Some(n) = node.as_mut() {
                    std::slice::from_mut(n)
                } else {
                    anyhow::bail!("backlog needs --spawn or --spawn-cluster N (it kills and restarts the nodes)");
                };
                scenario::backlog::run(nodes, &params, &backlog_opts).await
            } else if s == Scenario::SdkLifecycle {
                let token = cli.token.as_deref();
                scenario::sdk_lifecycle::run(&pool, &params, &servers, token).await
            } else {
                run_one(s, &pool, &params).await
            }
        };
        let rows = match tokio::time::timeout(limit, one).await {
            Ok(rows) => rows?,
            Err(_) => {
                // Dropping the scenario's future aborted its callers.
                eprintln!(
                    "WARNING: scenario {} stopped after --max-seconds {}",
                    s.name(),
                    max_seconds
                );
                all_ok = false;
                continue;
            }
        };
        for r in &rows {
            if !cli.json {
                eprintln!(
                    "  {}: {} jobs in {:.2}s = {:.0} jobs/s, {} errors",
                    r.scenario,
                    r.tally.jobs,
                    r.elapsed.as_secs_f64(),
                    r.jobs_per_s(),
                    r.tally.errors
                );
            }
            all_ok &= r.verified && r.tally.errors == 0;
        }
        reports.extend(rows);
    }

    if cli.json {
        let rows: Vec<_> = reports.iter().map(Report::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        report::print_table(&reports);
    }
    drop(pool);
    drop(node);
    drop(cluster);
    Ok(all_ok)
}

async fn run_one(s: Scenario, pool: &Pool, p: &Params) -> Result<Vec<Report>> {
    Ok(match s {
        Scenario::Enqueue => vec![scenario::enqueue::single(pool, p).await?],
        Scenario::EnqueueBatch => vec![scenario::enqueue::batch(pool, p).await?],
        Scenario::Lifecycle => scenario::lifecycle::run(pool, p).await?,
        Scenario::Latency => vec![scenario::latency::run(pool, p).await?],
        Scenario::Failover
        | Scenario::SdkLifecycle
        | Scenario::Retention
        | Scenario::Backlog
        | Scenario::All => {
            unreachable!("handled by the caller")
        }
    })
}
