//! The `taskraft` binary: `taskraft serve` runs a broker node.

use clap::{Parser, Subcommand};
use taskraft_broker::config::ServeArgs;

/// taskraft: a Raft-replicated task broker.
#[derive(Parser)]
#[command(name = "taskraft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker node.
    Serve(ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(args) => {
            taskraft_broker::telemetry::init_with(&args.log_format, args.otlp_endpoint.as_deref())?;
            let config = args.into_config()?;
            runtime.block_on(taskraft_broker::server::run(config, shutdown_signal()))
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
