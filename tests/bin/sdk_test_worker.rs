//! A worker process for `sdk_process.rs`: leases from one queue, prints
//! `started <job id> <attempt>` when a handler starts and `finished <job id>` when it
//! returns, and stops gracefully on SIGINT/SIGTERM.
//!
//! Usage: `sdk-test-worker <server> <queue> <worker id> <visibility ms> <handler ms>
//! [stream|poll]` (the protocol; stream by default).

use std::io::Write;
use std::time::Duration;

use taskraft::{Client, HandlerError, Job, Protocol, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (protocol, args) = match &args[..] {
        [rest @ .., p] if p == "poll" => (Protocol::Poll, rest),
        [rest @ .., p] if p == "stream" => (Protocol::Stream, rest),
        rest => (Protocol::Stream, rest),
    };
    let [server, queue, id, visibility_ms, handler_ms] = args else {
        return Err(
            "usage: sdk-test-worker <server> <queue> <worker id> <visibility ms> <handler ms> [stream|poll]"
                .into(),
        );
    };
    let handler_time = Duration::from_millis(handler_ms.parse()?);
    let client = Client::connect([server.as_str()]).await?;
    let report = Worker::builder(client)
        .queue(queue.as_str())
        .worker_id(id.as_str())
        .concurrency(1)
        .protocol(protocol)
        .poll_wait(Duration::from_millis(500))
        .visibility_timeout(Duration::from_millis(visibility_ms.parse()?))
        .default_handler(move |job: Job| async move {
            say(&format!("started {} {}", job.id(), job.attempt()));
            tokio::time::sleep(handler_time).await;
            say(&format!("finished {}", job.id()));
            Ok::<_, HandlerError>(())
        })
        .build()?
        .run()
        .await?;
    say(&format!("stopped succeeded={}", report.succeeded));
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
