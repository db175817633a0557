//! A producer: one job with options, a JSON job, then 1,000 jobs through a batcher.
//!
//! `cargo run -p taskraft --example producer` (TASKRAFT_SERVER picks the node), with
//! `cargo run -p taskraft --example worker` running to process them.
use std::time::Duration;

use taskraft::{BatcherOptions, Client, EnqueueOptions, NewJob};

#[derive(serde::Serialize)]
struct Email<'a> {
    to: &'a str,
    subject: &'a str,
}

#[tokio::main]
async fn main() -> Result<(), taskraft::Error> {
    let server = std::env::var("TASKRAFT_SERVER").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect([server]).await?;

    let opts = EnqueueOptions::new()
        .job_type("send")
        .priority(5)
        .max_attempts(5)
        .idempotency_key("welcome-ada");
    let first = client.enqueue_with("emails", "welcome ada", &opts).await?;
    println!("enqueued {} (duplicate: {})", first.job_id, first.duplicate);

    let email = Email {
        to: "grace@example.com",
        subject: "hello",
    };
    let job = NewJob::json("emails", &email)?.options(
        EnqueueOptions::new()
            .job_type("send")
            .delay(Duration::from_secs(2)),
    );
    let delayed = client.enqueue_job(job).await?;
    println!("enqueued {} to run in 2s", delayed.job_id);

    // Many small enqueues from concurrent tasks: the batcher turns them into a few
    // EnqueueBatch calls.
    let batcher = client.batcher(BatcherOptions::new().linger(Duration::from_millis(5)));
    let ids = futures::future::try_join_all((0..1000).map(|i| {
        let job = NewJob::new("emails", format!("newsletter #{i}"))
            .options(EnqueueOptions::new().job_type("send"));
        let batcher = batcher.clone();
        async move { batcher.enqueue_job(job).await }
    }))
    .await?;
    let stats = batcher.stats();
    println!(
        "enqueued {} jobs in {} batch calls",
        ids.len(),
        stats.batches
    );

    match client
        .wait_for_job(&first.job_id, Duration::from_secs(30))
        .await
    {
        Ok(job) => println!("{} finished: {:?}", job.id, job.state),
        Err(e) => println!("not finished yet ({e}); is a worker running?"),
    }
    Ok(())
}
