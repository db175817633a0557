//! `taskraft job get|cancel|retry <id>` and `taskraft jobs list`.

use clap::{Subcommand, ValueEnum};
use serde_json::Value;
use taskraft_proto::v1 as pb;

use super::output::{job_details, job_json, print_json, state_name, table, time};
use super::{CliError, Conn};

/// `taskraft job ...`.
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Show one job.
    Get {
        /// Job id.
        id: String,
    },
    /// Cancel a job that has not finished (a worker running it is told to stop).
    Cancel {
        /// Job id.
        id: String,
    },
    /// Bring a dead or cancelled job back to ready, with fresh attempts.
    Retry {
        /// Job id.
        id: String,
    },
}

/// `taskraft jobs ...`.
#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List a queue's jobs, oldest first.
    List {
        /// Queue name.
        #[arg(long, short = 'q')]
        queue: String,
        /// Only jobs in this state.
        #[arg(long, short = 's', value_enum)]
        state: Option<StateArg>,
        /// At most this many (1-1000).
        #[arg(long, short = 'n', default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
}

/// A job state filter.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum StateArg {
    /// Waiting for their run time.
    Scheduled,
    /// Can be leased now.
    Ready,
    /// Held by a worker.
    Leased,
    /// Finished.
    Succeeded,
    /// Attempts used up or dead-lettered.
    Dead,
    /// Cancelled.
    Cancelled,
}

impl From<StateArg> for pb::JobState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Scheduled => pb::JobState::Scheduled,
            StateArg::Ready => pb::JobState::Ready,
            StateArg::Leased => pb::JobState::Leased,
            StateArg::Succeeded => pb::JobState::Succeeded,
            StateArg::Dead => pb::JobState::Dead,
            StateArg::Cancelled => pb::JobState::Cancelled,
        }
    }
}

fn show(conn: &Conn, job: &pb::Job, verb: Option<&str>) {
    if conn.json {
        print_json(&job_json(job));
    } else if let Some(verb) = verb {
        println!("{verb} {} (now {})", job.job_id, state_name(job.state));
    } else {
        job_details(job);
    }
}

/// Runs `taskraft job ...`.
pub async fn run_job(conn: &mut Conn, cmd: JobCommand) -> Result<(), CliError> {
    match cmd {
        JobCommand::Get { id } => {
            let req = conn.req(pb::GetJobRequest { job_id: id });
            let job = conn
                .broker
                .get_job(req)
                .await
                .map_err(|s| conn.fail(s))?
                .into_inner();
            show(conn, &job, None);
        }
        JobCommand::Cancel { id } => {
            let req = conn.req(pb::CancelJobRequest { job_id: id });
            let job = conn
                .broker
                .cancel_job(req)
                .await
                .map_err(|s| conn.fail(s))?
                .into_inner();
            show(conn, &job, Some("cancelled"));
        }
        JobCommand::Retry { id } => {
            let req = conn.req(pb::RetryJobRequest { job_id: id });
            let job = conn
                .admin
                .retry_job(req)
                .await
                .map_err(|s| conn.fail(s))?
                .into_inner();
            show(conn, &job, Some("retrying"));
        }
    }
    Ok(())
}

/// Runs `taskraft jobs ...`.
pub async fn run_jobs(conn: &mut Conn, cmd: JobsCommand) -> Result<(), CliError> {
    let JobsCommand::List {
        queue,
        state,
        limit,
    } = cmd;
    let req = conn.req(pb::ListJobsRequest {
        queue,
        state: state.map(pb::JobState::from).unwrap_or_default() as i32,
        limit,
        page_token: String::new(),
    });
    let r = conn
        .admin
        .list_jobs(req)
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    if conn.json {
        print_json(&Value::Array(r.jobs.iter().map(job_json).collect()));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .jobs
        .iter()
        .map(|j| {
            let mut err = j.last_error.replace('\n', " ");
            if err.chars().count() > 60 {
                err = err.chars().take(57).collect::<String>() + "...";
            }
            vec![
                j.job_id.clone(),
                state_name(j.state).into(),
                j.job_type.clone(),
                format!("{}/{}", j.attempt, j.max_attempts),
                j.priority.to_string(),
                time(j.created_at_ms),
                err,
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "TYPE",
            "ATTEMPT",
            "PRIORITY",
            "CREATED",
            "LAST ERROR",
        ],
        &rows,
    );
    if !r.next_page_token.is_empty() {
        eprintln!("(more jobs; raise --limit or narrow with --state)");
    }
    Ok(())
}
