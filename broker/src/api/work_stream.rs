//! `Work`: a worker session on one bidirectional stream.
//!
//! The worker opens the session (queues, worker id, visibility timeout) and grants
//! credits; a lease task leases up to the credits granted, waiting on the queues as a
//! long-polling `Lease` does, and pushes each job down the stream. Acks, nacks and
//! extensions come up the same stream, each served as its unary call would be (the same
//! validation, queue scope and replies, through the same handlers) and answered by its
//! seq. What a unary worker pays per job and a session does not: an HTTP/2 request per
//! Lease and per Ack, and a poll.
//!
//! When the stream ends or breaks, the leases it still holds are given back at once
//! (`Command::Release`: ready again, the attempt undone), not at their visibility
//! timeout. A session cannot be resumed: a worker that reconnects opens a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use taskraft_proto::v1 as pb;
use taskraft_proto::v1::broker_server::Broker;
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::auth::{self, Credential};
use super::broker::BrokerService;
use super::validate;
use crate::error::BrokerError;
use crate::queue::{parse_lease_id, Command};

/// Most credits a session may hold (jobs pushed and not yet acked count against them).
pub const MAX_CREDITS: u32 = 10_000;
/// How long one lease look waits before looking again (the stream stays open).
const LEASE_WAIT_MS: u64 = 20_000;

/// The answer stream of a `Work` call.
pub type Pushes = std::pin::Pin<Box<dyn Stream<Item = Result<pb::WorkResponse, Status>> + Send>>;

type Tx = mpsc::Sender<Result<pb::WorkResponse, Status>>;
/// Leases pushed and not yet acked or nacked: job id to lease id.
type Held = Arc<Mutex<HashMap<String, u64>>>;

/// Serves one `Work` call (see the module doc).
pub async fn serve(
    service: BrokerService,
    req: Request<Streaming<pb::WorkRequest>>,
) -> Result<Response<Pushes>, Status> {
    let cred = auth::credential(&req);
    let mut inbound = req.into_inner();
    let open = match inbound.next().await {
        Some(Ok(pb::WorkRequest {
            kind: Some(pb::work_request::Kind::Open(open)),
            ..
        })) => open,
        Some(Err(status)) => return Err(status),
        _ => {
            return Err(
                BrokerError::invalid("open", "the first message must open the session").into(),
            )
        }
    };
    let lease = pb::LeaseRequest {
        queues: open.queues,
        worker_id: open.worker_id,
        max_jobs: 1,
        visibility_timeout_ms: open.visibility_timeout_ms,
        wait_ms: LEASE_WAIT_MS,
    };
    validate::lease_request(&lease)?;
    for q in &lease.queues {
        cred.check_queue("open.queues", q)?;
    }
    let (tx, rx) = mpsc::channel(1024);
    let span = tracing::info_span!("work_session", worker_id = %lease.worker_id);
    tokio::spawn(session(service, cred, lease, inbound, tx).instrument(span));
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

/// Runs the session until the stream ends, then gives back what it holds.
async fn session(
    service: BrokerService,
    cred: Arc<Credential>,
    lease: pb::LeaseRequest,
    mut inbound: Streaming<pb::WorkRequest>,
    tx: Tx,
) {
    let credits = Arc::new(Semaphore::new(0));
    let granted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let held: Held = Arc::default();
    let leaser = tokio::spawn(lease_loop(
        service.clone(),
        cred.clone(),
        lease,
        credits.clone(),
        held.clone(),
        tx.clone(),
    ));
    while let Some(msg) = inbound.next().await {
        let Ok(msg) = msg else { break };
        let seq = msg.seq;
        use pb::work_request::Kind;
        match msg.kind {
            Some(Kind::Credit(n)) => {
                use std::sync::atomic::Ordering;
                let before = granted.fetch_add(n, Ordering::Relaxed);
                let room = MAX_CREDITS.saturating_sub(before);
                if n > room {
                    granted.fetch_sub(n - room, Ordering::Relaxed);
                }
                credits.add_permits(n.min(room) as usize);
            }
            Some(Kind::Ack(ack)) => {
                let job_id = ack.job_id.clone();
                let done = (held.clone(), granted.clone(), job_id);
                spawn_answer(seq, &tx, Some(done), {
                    let service = service.clone();
                    let req = with_cred(ack, &cred);
                    async move { service.ack(req).await.map(|_| pb::WorkAnswer::default()) }
                });
            }
            Some(Kind::Nack(nack)) => {
                let job_id = nack.job_id.clone();
                let done = (held.clone(), granted.clone(), job_id);
                spawn_answer(seq, &tx, Some(done), {
                    let service = service.clone();
                    let req = with_cred(nack, &cred);
                    async move {
                        let r = service.nack(req).await?.into_inner();
                        Ok(pb::WorkAnswer {
                            nack: Some(r),
                            ..Default::default()
                        })
                    }
                });
            }
            Some(Kind::Extend(ext)) => spawn_answer(seq, &tx, None, {
                let service = service.clone();
                let req = with_cred(ext, &cred);
                async move {
                    let r = service.extend_lease(req).await?.into_inner();
                    Ok(pb::WorkAnswer {
                        extend: Some(r),
                        ..Default::default()
                    })
                }
            }),
            Some(Kind::Open(_)) | None => {
                let e = BrokerError::invalid(
                    "kind",
                    "a session is opened once; send credit, ack, nack or extend",
                );
                let _ = tx.send(Ok(answer(seq, Err(e.into())))).await;
            }
        }
    }
    leaser.abort();
    let _ = leaser.await;
    let leases: Vec<(String, u64)> = std::mem::take(&mut *lock(&held)).into_iter().collect();
    if !leases.is_empty() {
        let n = leases.len();
        match service.node().propose(Command::Release { leases }).await {
            Ok(_) => tracing::info!(jobs = n, "work session ended: its leases were given back"),
            Err(e) => {
                tracing::warn!(jobs = n, error = %e, "work session ended: giving its leases back failed; they run out at their visibility timeout")
            }
        }
    }
}

/// Leases while the session has credits and pushes each job down the stream.
async fn lease_loop(
    service: BrokerService,
    cred: Arc<Credential>,
    lease: pb::LeaseRequest,
    credits: Arc<Semaphore>,
    held: Held,
    tx: Tx,
) {
    loop {
        let Ok(first) = credits.acquire().await else {
            return;
        };
        first.forget();
        let more = credits.available_permits().min(999);
        if let Ok(p) = credits.try_acquire_many(more as u32) {
            p.forget();
        }
        let want = 1 + more as u32;
        let mut got = 0;
        while got == 0 {
            let req = pb::LeaseRequest {
                max_jobs: want,
                ..lease.clone()
            };
            match service.lease(with_cred(req, &cred)).await {
                Ok(r) => {
                    let jobs = r.into_inner().jobs;
                    got = jobs.len() as u32;
                    for job in jobs {
                        if let Some(id) = parse_lease_id(&job.lease_id) {
                            lock(&held).insert(job.job_id.clone(), id);
                        }
                        let push = pb::WorkResponse {
                            kind: Some(pb::work_response::Kind::Job(job)),
                        };
                        if tx.send(Ok(push)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    // No leader for now: look again shortly, the session stays open.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
        credits.add_permits((want - got) as usize);
    }
}

/// Runs `call` on its own task and sends its answer; an ack or nack (`done`) returns
/// its credit's place, and when it succeeded the session no longer holds the lease.
fn spawn_answer(
    seq: u64,
    tx: &Tx,
    done: Option<(Held, Arc<std::sync::atomic::AtomicU32>, String)>,
    call: impl std::future::Future<Output = Result<pb::WorkAnswer, Status>> + Send + 'static,
) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let r = call.await;
        if let Some((held, granted, job_id)) = done {
            // The worker is done with the job either way (a refused ack means the lease
            // ran out): its credit's place is free again.
            use std::sync::atomic::Ordering::Relaxed;
            let _ = granted.fetch_update(Relaxed, Relaxed, |g| g.checked_sub(1));
            if r.is_ok() {
                lock(&held).remove(&job_id);
            }
        }
        let _ = tx.send(Ok(answer(seq, r))).await;
    });
}

fn answer(seq: u64, r: Result<pb::WorkAnswer, Status>) -> pb::WorkResponse {
    let a = match r {
        Ok(a) => pb::WorkAnswer { seq, ..a },
        Err(s) => pb::WorkAnswer {
            seq,
            code: s.code() as i32,
            message: s.message().to_string(),
            ..Default::default()
        },
    };
    pb::WorkResponse {
        kind: Some(pb::work_response::Kind::Answer(a)),
    }
}

/// A request for a unary handler carrying the session's credential.
fn with_cred<T>(msg: T, cred: &Arc<Credential>) -> Request<T> {
    let mut req = Request::new(msg);
    req.extensions_mut().insert(cred.clone());
    req
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
