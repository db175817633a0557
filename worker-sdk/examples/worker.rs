//! A worker: `cargo run -p taskraft --example worker` (TASKRAFT_SERVER picks the node).
use taskraft::{Client, HandlerError, Job, Worker};

#[tokio::main]
async fn main() -> Result<(), taskraft::Error> {
    let server = std::env::var("TASKRAFT_SERVER").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect([server]).await?;
    Worker::builder(client)
        .queue("emails")
        .concurrency(8)
        .handler("send", |job: Job| async move {
            println!("sending {:?} (attempt {})", job.payload(), job.attempt());
            Ok::<_, HandlerError>(())
        })
        .build()?
        .run() // until ctrl-c or SIGTERM, then finishes the jobs in hand
        .await?;
    Ok(())
}
