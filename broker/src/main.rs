//! The `taskraft` binary: `taskraft serve` runs a broker node, `taskraft dev` a local
//! cluster in one process; the other subcommands
//! (`enqueue`, `job`, `jobs`, `queues`, `queue`, `cluster`, `workers`) are clients of a
//! running cluster, see [`cli`].

mod cli;

use clap::{Parser, Subcommand};
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(serve) => {
            let args = serve.args;
            taskraft_broker::telemetry::init_with(&args.log_format, args.otlp_endpoint.as_deref())?;
            let config = args.into_config()?;
            let shutdown = {
                let _in_runtime = runtime.enter();
                shutdown_signal()
            };
            runtime.block_on(taskraft_broker::server::run(config, shutdown))
        }
        Command::Dev(args) => {
            taskraft_broker::telemetry::init_with("text", None)?;
            let shutdown = {
                let _in_runtime = runtime.enter();
                shutdown_signal()
            };
            runtime.block_on(taskraft_broker::dev::run(args, shutdown))
        }
        Command::Client(command) => {
            let code = runtime.block_on(cli::run(cli.global, command));
            drop(runtime);
            std::process::exit(code)
        }
    }
}

/// Resolves on ctrl-c or SIGTERM. The SIGTERM handler is installed when this is
/// called, before the node serves, so a SIGTERM that arrives while it starts is a
/// graceful shutdown rather than the default action (the process ends at once).
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
