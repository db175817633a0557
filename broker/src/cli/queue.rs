//! `taskraft queues` and `taskraft queue stats|pause|resume|redrive <queue>`.

use clap::Subcommand;
use serde_json::{json, Value};
use taskraft_proto::v1 as pb;

use super::output::{print_json, queue_json, queue_row, table, QUEUE_HEADER};
use super::{CliError, Conn};

/// `taskraft queue ...`.
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Counts of one queue.
    Stats {
        /// Queue name.
        queue: String,
    },
    /// Stop handing out the queue's jobs (enqueues still work).
    Pause {
        /// Queue name.
        queue: String,
    },
    /// Hand out the queue's jobs again.
    Resume {
        /// Queue name.
        queue: String,
    },
    /// Move every dead job of the queue back to ready.
    Redrive {
        /// Queue name.
        queue: String,
    },
}

fn show(conn: &Conn, stats: &pb::QueueStats) {
    if conn.json {
        print_json(&queue_json(stats));
    } else {
        table(&QUEUE_HEADER, &[queue_row(stats)]);
    }
}

/// Runs `taskraft queues`.
pub async fn list(conn: &mut Conn) -> Result<(), CliError> {
    let req = conn.req(pb::ListQueuesRequest {});
    let r = conn
        .admin
        .list_queues(req)
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    if conn.json {
        print_json(&Value::Array(r.queues.iter().map(queue_json).collect()));
    } else if r.queues.is_empty() {
        println!("no queues yet (a queue appears with its first job)");
    } else {
        let rows: Vec<_> = r.queues.iter().map(queue_row).collect();
        table(&QUEUE_HEADER, &rows);
    }
    Ok(())
}

/// Runs `taskraft queue ...`.
pub async fn run(conn: &mut Conn, cmd: QueueCommand) -> Result<(), CliError> {
    let stats = match cmd {
        QueueCommand::Stats { queue } => {
            let req = conn.req(pb::GetQueueStatsRequest { queue });
            conn.admin.get_queue_stats(req).await
        }
        QueueCommand::Pause { queue } => {
            let req = conn.req(pb::PauseQueueRequest { queue });
            conn.admin.pause_queue(req).await
        }
        QueueCommand::Resume { queue } => {
            let req = conn.req(pb::ResumeQueueRequest { queue });
            conn.admin.resume_queue(req).await
        }
        QueueCommand::Redrive { queue } => {
            let req = conn.req(pb::RedriveDeadJobsRequest {
                queue: queue.clone(),
            });
            let r = conn
                .admin
                .redrive_dead_jobs(req)
                .await
                .map_err(|s| conn.fail(s))?
                .into_inner();
            if conn.json {
                print_json(&json!({ "queue": queue, "count": r.count }));
            } else {
                println!("moved {} dead job(s) of {queue} back to ready", r.count);
            }
            return Ok(());
        }
    };
    let stats = stats.map_err(|s| conn.fail(s))?.into_inner();
    show(conn, &stats);
    Ok(())
}
