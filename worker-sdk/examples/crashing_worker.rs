//! A worker that dies mid-job: it takes one job, says so, and exits the process
//! without acking. Run it, then a normal worker: the job comes back (attempt 2) once
//! the 2 s visibility timeout runs out. (It polls: a stream worker's job would come
//! back about 3 s after its session broke, the attempt undone.)
//!
//! `cargo run -p taskraft --example crashing_worker`
use std::time::Duration;

use taskraft::{Client, HandlerError, Job, Protocol, Worker};

#[tokio::main]
async fn main() -> Result<(), taskraft::Error> {
    let server = std::env::var("TASKRAFT_SERVER").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect([server]).await?;
    Worker::builder(client)
        .protocol(Protocol::Poll)
        .queue("emails")
        .visibility_timeout(Duration::from_secs(2))
        .default_handler(|job: Job| async move {
            println!(
                "started {} (attempt {}); crashing now",
                job.id(),
                job.attempt()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            // No ack, no nack, no shutdown code: as if the machine lost power.
            std::process::exit(70);
            #[allow(unreachable_code)]
            Ok::<_, HandlerError>(())
        })
        .build()?
        .run()
        .await?;
    Ok(())
}
