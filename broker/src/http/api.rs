//! The dashboard's JSON API under `/api`. Reads wait for a linearizable read barrier
//! and writes are proposed through Raft, exactly as the gRPC Admin service does, so
//! any node serves them (a follower forwards writes to the leader). Errors use the same
//! mapping as gRPC (`api/status.rs`), turned into an HTTP status.
//!
//! ```text
//!  GET  /api/cluster                      nodes, roles, leader, term, indexes
//!  GET  /api/queues                       counts per state + enqueue/complete rates
//!  GET  /api/workers                      the worker registry
//!  GET  /api/jobs/{id}                    one job
//!  GET  /api/queues/{q}/jobs?state=dead   jobs of a queue in a state (limit <= 1000)
//!  POST /api/jobs/{id}/retry              dead or cancelled -> ready
//!  POST /api/jobs/{id}/cancel             cancel an unfinished job
//!  POST /api/queues/{q}/redrive           retry every dead job of the queue
//!  POST /api/queues/{q}/pause|resume      stop / restart serving leases
//! ```

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::HttpState;
use crate::api::validate;
use crate::error::BrokerError;
use crate::queue::{format_lease_id, Command, JobDetail, JobState, Outcome, QueueStats};

/// Routes under `/api` (mounted by `http::router` behind the token check).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/cluster", get(cluster))
        .route("/queues", get(queues))
        .route("/workers", get(workers))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/queues/{queue}/jobs", get(list_jobs))
        .route("/queues/{queue}/redrive", post(redrive))
        .route("/queues/{queue}/pause", post(pause))
        .route("/queues/{queue}/resume", post(resume))
}

/// A [`BrokerError`] answered as JSON with the HTTP status matching its gRPC code.
struct ApiError(BrokerError);

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status: tonic::Status = self.0.into();
        let http = match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => {
                StatusCode::CONFLICT
            }
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            tonic::Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = format!("{:?}", status.code());
        (
            http,
            Json(json!({ "error": status.message(), "code": code })),
        )
            .into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn unexpected(o: Outcome) -> ApiError {
    ApiError(BrokerError::Internal(format!("unexpected outcome {o:?}")))
}

fn stats_json(s: &QueueStats) -> Value {
    json!({
        "queue": s.queue,
        "ready": s.ready,
        "scheduled": s.scheduled,
        "leased": s.leased,
        "dead": s.dead,
        "succeeded": s.succeeded,
        "cancelled": s.cancelled,
        "paused": s.paused,
    })
}

/// Payloads and results are shown as (lossy) text, cut to this many bytes.
const PREVIEW: usize = 512;

fn preview(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(PREVIEW)]).into_owned()
}

fn job_json(d: &JobDetail) -> Value {
    let j = &d.job;
    json!({
        "id": j.id,
        "queue": j.queue,
        "job_type": j.job_type,
        "state": j.state.name(),
        "priority": j.priority,
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "expirations": j.expirations,
        "last_error": j.last_error,
        "created_at_ms": j.created_at_ms,
        "run_at_ms": j.run_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "progress": j.progress,
        "progress_message": j.progress_message,
        "headers": j.headers,
        "payload": preview(&d.payload),
        "payload_bytes": d.payload.len(),
        "result": preview(&d.result),
        "lease": j.held_lease().map(|l| json!({
            "lease_id": format_lease_id(l.id),
            "deadline_ms": l.deadline_ms,
            "worker_id": l.worker_id,
        })),
    })
}

async fn cluster(State(s): State<HttpState>) -> ApiResult {
    let c = crate::api::admin::cluster_status(&s.node);
    let nodes: Vec<Value> = c
        .nodes
        .iter()
        .map(|n| json!({ "id": n.id, "addr": n.addr, "role": n.role, "matched_index": n.matched_index }))
        .collect();
    Ok(Json(json!({
        "node_id": c.node_id,
        "leader_id": c.leader_id,
        "term": c.term,
        "last_log_index": c.last_log_index,
        "commit_index": c.commit_index,
        "applied_index": c.applied_index,
        "nodes": nodes,
        "metrics_enabled": s.metrics.enabled(),
        "sample_every_ms": crate::metrics::SAMPLE_EVERY.as_millis() as u64,
    })))
}

async fn queues(State(s): State<HttpState>) -> ApiResult {
    s.node.read_barrier().await?;
    let stats = s.node.view().state.all_queue_stats();
    let queues: Vec<Value> = stats
        .iter()
        .map(|q| {
            let mut v = stats_json(q);
            v["rates"] = serde_json::to_value(s.metrics.rates(&q.queue)).unwrap_or(Value::Null);
            v
        })
        .collect();
    Ok(Json(json!({ "queues": queues })))
}

async fn workers(State(s): State<HttpState>) -> ApiResult {
    s.node.read_barrier().await?;
    let data = s.node.view();
    let workers: Vec<Value> = data
        .state
        .workers()
        .into_iter()
        .map(|(id, w)| {
            json!({
                "worker_id": id,
                "queues": w.queues,
                "jobs_in_hand": w.jobs_in_hand,
                "last_seen_ms": w.last_seen_ms,
                "leased_total": w.leased_total,
            })
        })
        .collect();
    Ok(Json(
        json!({ "workers": workers, "now_ms": data.state.now_ms() }),
    ))
}

async fn job(State(s): State<HttpState>, Path(id): Path<String>) -> ApiResult {
    validate::job_id(&id)?;
    s.node.read_barrier().await?;
    let data = s.node.view();
    let job = data
        .state
        .job(&id)
        .ok_or_else(|| BrokerError::Core(crate::queue::CoreError::JobNotFound(id.clone())))?;
    Ok(Json(job_json(&job)))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(
    State(s): State<HttpState>,
    Path(queue): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    validate::queue_name("queue", &queue)?;
    let state = match q.state.as_deref() {
        None | Some("") | Some("all") => None,
        Some(name) => Some(
            JobState::ALL
                .into_iter()
                .find(|st| st.name() == name)
                .ok_or_else(|| {
                    BrokerError::invalid(
                        "state",
                        format!(
                            "{name:?} is not one of ready, scheduled, leased, succeeded, dead, cancelled"
                        ),
                    )
                })?,
        ),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(BrokerError::invalid("limit", format!("{limit} is not in 1..=1000")).into());
    }
    s.node.read_barrier().await?;
    let data = s.node.view();
    let (jobs, next) = data.state.list_jobs(&queue, state, None, limit);
    let jobs: Vec<Value> = jobs.iter().map(job_json).collect();
    Ok(Json(json!({ "jobs": jobs, "more": next.is_some() })))
}

async fn job_command(s: &HttpState, cmd: Command) -> ApiResult {
    match s.node.propose(cmd).await? {
        Outcome::Job(j) => Ok(Json(job_json(&j))),
        other => Err(unexpected(other)),
    }
}

async fn retry(State(s): State<HttpState>, Path(id): Path<String>) -> ApiResult {
    validate::job_id(&id)?;
    job_command(&s, Command::Retry { job_id: id }).await
}

async fn cancel(State(s): State<HttpState>, Path(id): Path<String>) -> ApiResult {
    validate::job_id(&id)?;
    job_command(&s, Command::Cancel { job_id: id }).await
}

async fn queue_command(s: &HttpState, cmd: Command) -> ApiResult {
    match s.node.propose(cmd).await? {
        Outcome::Queue(q) => Ok(Json(stats_json(&q))),
        other => Err(unexpected(other)),
    }
}

async fn pause(State(s): State<HttpState>, Path(queue): Path<String>) -> ApiResult {
    validate::queue_name("queue", &queue)?;
    queue_command(&s, Command::Pause { queue }).await
}

async fn resume(State(s): State<HttpState>, Path(queue): Path<String>) -> ApiResult {
    validate::queue_name("queue", &queue)?;
    queue_command(&s, Command::Resume { queue }).await
}

async fn redrive(State(s): State<HttpState>, Path(queue): Path<String>) -> ApiResult {
    validate::queue_name("queue", &queue)?;
    match s.node.propose(Command::Redrive { queue }).await? {
        Outcome::Redriven(count) => Ok(Json(json!({ "count": count }))),
        other => Err(unexpected(other)),
    }
}
