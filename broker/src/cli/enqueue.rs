//! `taskraft enqueue <queue> [payload | - | --file F]`.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use taskraft_proto::v1 as pb;

use super::output::print_json;
use super::{CliError, Conn};

/// Flags of `taskraft enqueue`.
#[derive(clap::Args, Debug)]
pub struct EnqueueArgs {
    /// Queue name.
    pub queue: String,
    /// Payload text; `-` reads it from stdin. Empty when omitted.
    #[arg(conflicts_with = "file")]
    pub payload: Option<String>,
    /// Read the payload from this file.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Name workers dispatch on.
    #[arg(long, short = 't', default_value = "")]
    pub job_type: String,
    /// Higher runs first.
    #[arg(long, short = 'p', default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Run no sooner than this from now, e.g. 30s, 5m, 2h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// Deliveries allowed (0: the server's --max-attempts).
    #[arg(long, default_value_t = 0)]
    pub max_attempts: u32,
    /// A second enqueue with the same key (and queue) returns the first job's id.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// A header for the worker, KEY=VALUE; repeat for more.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn payload(args: &EnqueueArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &args.file {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    match args.payload.as_deref() {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the payload from stdin")?;
            Ok(buf)
        }
        Some(text) => Ok(text.as_bytes().to_vec()),
        None => Ok(Vec::new()),
    }
}

/// Enqueues one job and prints its id.
pub async fn run(conn: &mut Conn, args: EnqueueArgs) -> Result<(), CliError> {
    let req = pb::EnqueueRequest {
        queue: args.queue.clone(),
        payload: payload(&args)?.into(),
        job_type: args.job_type.clone(),
        priority: args.priority,
        delay_ms: args.delay.map(|d| d.as_millis() as u64).unwrap_or(0),
        max_attempts: args.max_attempts,
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
        headers: args.headers.iter().cloned().collect::<HashMap<_, _>>(),
        run_at_ms: 0,
        webhook_url: String::new(),
        // One call, no retries here: nothing to dedup.
        request_id: String::new(),
    };
    let r = conn
        .broker
        .enqueue(conn.req(req))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    if conn.json {
        print_json(&json!({ "job_id": r.job_id, "duplicate": r.duplicate }));
    } else if r.duplicate {
        println!(
            "{} (already enqueued with this idempotency key; nothing new stored)",
            r.job_id
        );
    } else {
        println!("{}", r.job_id);
    }
    Ok(())
}
