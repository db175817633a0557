//! The `taskraft` binary: `taskraft serve` runs a broker node, `taskraft restore` seeds
//! a new node from a backup, `taskraft dev` runs a local cluster in one process; the
//! other subcommands
//! (`enqueue`, `job`, `jobs`, `queues`, `queue`, `cluster`, `workers`, `backup`) are clients of a
//! running cluster, see [`cli`].

mod cli;

/// mimalloc instead of glibc's malloc: the apply path allocates and frees many small
/// buffers per job (keys, records, redb's page handles), and glibc's malloc and free
/// took about a quarter of the apply CPU profile (benches/README.md). Built with
/// `no_thp`: by default mimalloc asks for transparent huge pages, and every fresh 2 MiB
/// page the kernel then zeroes on first touch; on this VM that was 15-25 % of the
/// broker's CPU in half of the `enqueue-batch` runs (the 0.70 ratio of benches/README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use taskraft_broker::config::ServeArgs;

/// taskraft: a Raft-replicated task broker.
#[derive(Parser)]
#[command(name = "taskraft", version, about)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker node.
    Serve(Box<ServeCommand>),
    /// Seed a new node's empty data dir from a `taskraft backup` file (offline: run it
    /// before `serve`, with the same flags or config file, on every node of the new
    /// cluster).
    Restore(Box<RestoreCommand>),
    /// Ask a node's HTTP port for /readyz (container health checks): exit 0 when ready.
    Probe(taskraft_broker::probe::ProbeArgs),
    /// Run a local multi-node cluster in this process, for trying things out.
    Dev(taskraft_broker::dev::DevArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// `serve` with its own flags only: these hidden look-alikes keep the clients' global
/// `--server` and `--json` (clap skips globals a subcommand already defines) out of
/// `taskraft serve --help`. `--token` is `serve`'s own.
#[derive(clap::Args)]
struct ServeCommand {
    #[command(flatten)]
    args: ServeArgs,
    #[arg(long, hide = true)]
    server: Option<String>,
    #[arg(long, hide = true)]
    json: bool,
}

/// Parses the command line; for `serve` with `--config FILE`, parses it again with the
/// file's keys appended where neither a flag nor a variable set them (see
/// `config::file_args`).
fn parse_cli() -> anyhow::Result<Cli> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let file = match &cli.command {
        Command::Serve(s) => s.args.config.clone(),
        Command::Restore(r) => r.args.config.clone(),
        _ => None,
    };
    let (Some(path), Some((name, sub))) = (file, matches.subcommand()) else {
        return Ok(cli);
    };
    let cmd = Cli::command();
    let sub_cmd = cmd
        .find_subcommand(name)
        .expect("the parsed subcommand exists");
    let extra = taskraft_broker::config::file_args(sub_cmd, sub, &path)?;
    Ok(Cli::parse_from(std::env::args_os().chain(extra)))
}

/// `restore`: the backup file and the new node's `serve` flags.
#[derive(clap::Args)]
struct RestoreCommand {
    /// The backup file written by `taskraft backup --out`.
    #[arg(long)]
    from: std::path::PathBuf,
    #[command(flatten)]
    args: ServeArgs,
    #[arg(long, hide = true)]
    server: Option<String>,
    #[arg(long, hide = true)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = parse_cli()?;
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(serve) => {
            let args = serve.args;
            taskraft_broker::telemetry::init_with(&args.log_format, args.otlp_endpoint.as_deref())?;
            let config = args.into_config()?;
            runtime
                .block_on(async { taskraft_broker::server::run(config, shutdown_signal()).await })
        }
        Command::Restore(restore) => {
            taskraft_broker::telemetry::init_with(&restore.args.log_format, None)?;
            let config = restore.args.into_config()?;
            let done =
                runtime.block_on(taskraft_broker::restore::restore(&config, &restore.from))?;
            println!(
                "restored node {} in {} at log index {} (cluster: {}); start it with `taskraft serve` and the same flags",
                config.id,
                config.data_dir.display(),
                done.applied_index,
                done.members
                    .iter()
                    .map(|(id, addr)| format!("{id}={addr}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            Ok(())
        }
        Command::Probe(args) => runtime.block_on(taskraft_broker::probe::run(&args)),
        Command::Dev(args) => {
            taskraft_broker::telemetry::init_with("text", None)?;
            runtime.block_on(async { taskraft_broker::dev::run(args, shutdown_signal()).await })
        }
        Command::Client(command) => {
            let code = runtime.block_on(cli::run(cli.global, command));
            drop(runtime);
            std::process::exit(code)
        }
    }
}

/// Resolves on ctrl-c or SIGTERM. The SIGTERM handler is installed when this is called
/// (inside the runtime), not when the future is first polled: a SIGTERM that arrives
/// while the node is still starting then stops it cleanly instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
}
