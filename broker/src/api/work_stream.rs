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
//! How a session ends decides what happens to the leases it still holds:
//!
//! ```text
//!  worker half-closes ──────────────> Command::Release at once (ready again, attempt undone)
//!  stream breaks (error) ──> parked ──> resumed within RESUME_GRACE: a new stream adopts them
//!                                  └──> not resumed (or evicted by a newer one): the leases
//!                                       expire now (the attempt counts, see `expire`)
//! ```
//!
//! A broken stream usually means a lost connection, not a dead worker: its handlers are
//! still running and will settle. Releasing at once would run those jobs a second time
//! elsewhere; keeping them to their visibility timeout would delay them when the worker
//! is really gone. The grace is short ("released within a heartbeat"), and the parked
//! sessions are node-local and bounded ([`MAX_PARKED`]), so a resume must come back to
//! the same node; elsewhere it gets NOT_FOUND and the worker opens a fresh session.
//!
//! A worker shutting down sends `stop` first (no more pushes), settles what it holds,
//! then half-closes. A node shutting down ends every session with UNAVAILABLE and
//! releases nothing: leases are cluster state, so the workers settle through another
//! node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use taskraft_proto::v1 as pb;
use taskraft_proto::v1::broker_server::Broker;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
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
/// How long the leases of a session whose stream broke wait for a resume before they
/// end (as expired): long enough to reconnect, short enough that a worker that is really
/// gone delays its jobs by about one heartbeat, not a visibility timeout.
pub const RESUME_GRACE: Duration = Duration::from_secs(3);
/// Most broken sessions parked at once on a node; parking one more ends the oldest's
/// leases at once.
pub const MAX_PARKED: usize = 1024;

/// The answer stream of a `Work` call.
pub type Pushes = std::pin::Pin<Box<dyn Stream<Item = Result<pb::WorkResponse, Status>> + Send>>;

type Tx = mpsc::Sender<Result<pb::WorkResponse, Status>>;
/// Leases pushed and not yet acked or nacked: job id to lease id.
type Held = Arc<Mutex<HashMap<String, u64>>>;

/// What a session holds. Its answer tasks share it, so an ack answered after the
/// stream broke still takes its job out of a parked (or resumed) session.
#[derive(Clone, Default)]
struct Holdings {
    held: Held,
    /// Credits granted and not yet used up by an ack or nack (the MAX_CREDITS cap).
    granted: Arc<AtomicU32>,
}

impl Holdings {
    /// Empties the held leases and returns them as (job id, lease id).
    fn take_held(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *lock(&self.held)).into_iter().collect()
    }
}

/// A session whose stream broke, waiting for a resume.
struct ParkedSession {
    worker_id: String,
    queues: Vec<String>,
    holdings: Holdings,
    /// Parking order, to evict the oldest when full.
    order: u64,
}

/// The `Work` sessions of this node: those parked after a broken stream, and the
/// signal that ends them all when the node shuts down. One per node, shared by every
/// `Work` call through the [`BrokerService`].
pub struct Sessions {
    parked: Mutex<HashMap<String, ParkedSession>>,
    /// Sessions whose stream is up: id to worker id and the signal that makes the
    /// session end as broken, for a resume that came before this node saw the break.
    live: Mutex<HashMap<String, (String, Arc<Notify>)>>,
    next: AtomicU64,
    closing: watch::Sender<bool>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            parked: Mutex::default(),
            live: Mutex::default(),
            next: AtomicU64::new(0),
            closing: watch::Sender::new(false),
        }
    }
}

impl Sessions {
    /// How many sessions are parked now.
    pub fn parked(&self) -> usize {
        lock(&self.parked).len()
    }

    /// The node is shutting down: every session ends with UNAVAILABLE so its worker
    /// moves to another node, and none opens or parks any more. Their leases are left
    /// alone: they are cluster state, the workers still run those jobs and settle them
    /// through another node (or the leases run out).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Parks a broken session under `id`. When `cap` sessions are parked already, the
    /// one parked first is taken out and returned, for its leases to end now: a node
    /// keeps a bounded number of broken sessions whatever its workers do.
    fn park_bounded(
        &self,
        id: String,
        worker_id: String,
        queues: Vec<String>,
        holdings: Holdings,
        cap: usize,
    ) -> Option<ParkedSession> {
        let order = self.next.fetch_add(1, Ordering::Relaxed);
        let mut sessions = lock(&self.parked);
        let evicted = if sessions.len() >= cap {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, p)| p.order)
                .map(|(id, _)| id.clone());
            oldest.and_then(|id| sessions.remove(&id))
        } else {
            None
        };
        sessions.insert(
            id,
            ParkedSession {
                worker_id,
                queues,
                holdings,
                order,
            },
        );
        evicted
    }
}

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
    if service.sessions().is_closing() {
        return Err(Status::unavailable("this node is shutting down"));
    }
    let (holdings, adopted) = if open.resume.is_empty() {
        (Holdings::default(), 0)
    } else {
        resume(&service, &cred, &lease, &open.resume, open.holding).await?
    };
    let session_id = uuid::Uuid::now_v7().simple().to_string();
    let takeover = Arc::new(Notify::new());
    lock(&service.sessions().live).insert(
        session_id.clone(),
        (lease.worker_id.clone(), takeover.clone()),
    );
    let (tx, rx) = mpsc::channel(1024);
    let opened = pb::WorkResponse {
        kind: Some(pb::work_response::Kind::Opened(pb::WorkOpened {
            session_id: session_id.clone(),
            adopted,
        })),
    };
    let _ = tx.try_send(Ok(opened));
    let span =
        tracing::info_span!("work_session", worker_id = %lease.worker_id, session_id = %session_id);
    tokio::spawn(
        session(
            service,
            cred,
            lease,
            Seat {
                id: session_id,
                holdings,
                takeover,
            },
            inbound,
            tx,
        )
        .instrument(span),
    );
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

/// How long a resume waits for a session this node still sees as live to park: the
/// worker may notice a broken connection before the node does.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// Takes the parked session `id` for a new stream: the leases the worker still holds
/// are adopted, the others (pushed, never received) are given back at once. A session
/// still live here (same worker id) is ended as broken first.
async fn resume(
    service: &BrokerService,
    cred: &Credential,
    lease: &pb::LeaseRequest,
    id: &str,
    holding: Vec<String>,
) -> Result<(Holdings, u32), Status> {
    let not_here = || {
        Status::not_found(format!(
            "session {id} is not parked on this node (its leases ended or it ran elsewhere)"
        ))
    };
    let live = lock(&service.sessions().live)
        .get(id)
        .filter(|(worker, _)| *worker == lease.worker_id)
        .map(|(_, takeover)| takeover.clone());
    if let Some(takeover) = live {
        takeover.notify_one();
        let parked = async {
            while !lock(&service.sessions().parked).contains_key(id) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(TAKEOVER_WAIT, parked).await;
    }
    let parked = {
        let mut sessions = lock(&service.sessions().parked);
        let Some(p) = sessions.get(id) else {
            return Err(not_here());
        };
        if p.worker_id != lease.worker_id {
            return Err(not_here());
        }
        for q in &p.queues {
            cred.check_queue("open.resume", q)?;
        }
        sessions.remove(id).expect("just looked")
    };
    let holding: HashSet<String> = holding.into_iter().collect();
    let lost: Vec<(String, u64)> = {
        let mut held = lock(&parked.holdings.held);
        let lost = held
            .iter()
            .filter(|(job, _)| !holding.contains(*job))
            .map(|(j, l)| (j.clone(), *l))
            .collect::<Vec<_>>();
        for (j, _) in &lost {
            held.remove(j);
        }
        lost
    };
    let adopted = lock(&parked.holdings.held).len() as u32;
    // The resumed session starts without credits: the worker grants its free slots.
    parked.holdings.granted.store(adopted, Ordering::Relaxed);
    if !lost.is_empty() {
        let service = service.clone();
        tokio::spawn(
            async move { release(&service, lost, "pushed but lost with the stream").await },
        );
    }
    tracing::info!(session_id = %id, adopted, "work session resumed");
    Ok((parked.holdings, adopted))
}

/// Who a session is: its id, what it holds, and the signal a resume takes it over with.
struct Seat {
    id: String,
    holdings: Holdings,
    takeover: Arc<Notify>,
}

/// Runs the session until the stream ends (leases given back) or breaks (parked).
async fn session(
    service: BrokerService,
    cred: Arc<Credential>,
    lease: pb::LeaseRequest,
    seat: Seat,
    mut inbound: Streaming<pb::WorkRequest>,
    tx: Tx,
) {
    let Seat {
        id: session_id,
        holdings,
        takeover,
    } = seat;
    // Not live any more however the session ends.
    struct Unlist<'a>(&'a Sessions, &'a str);
    impl Drop for Unlist<'_> {
        fn drop(&mut self) {
            lock(&self.0.live).remove(self.1);
        }
    }
    let sessions = service.sessions().clone();
    let _unlist = Unlist(&sessions, &session_id);
    let credits = Arc::new(Semaphore::new(0));
    let Holdings { held, granted } = holdings.clone();
    let leaser = tokio::spawn(lease_loop(
        service.clone(),
        cred.clone(),
        lease.clone(),
        credits.clone(),
        held.clone(),
        tx.clone(),
    ));
    let (mut broke, mut stopped) = (false, false);
    let mut closing = service.sessions().closing.subscribe();
    loop {
        let msg = tokio::select! {
            msg = inbound.next() => msg,
            _ = takeover.notified() => {
                tracing::info!("a resume took the session over before its stream broke here");
                broke = true;
                break;
            }
            _ = async { let _ = closing.wait_for(|c| *c).await; } => {
                leaser.abort();
                let _ = tx.send(Err(Status::unavailable("this node is shutting down: open a session on another node"))).await;
                tracing::info!("node shutting down: work session ended, its leases left to their worker");
                return;
            }
        };
        let Some(msg) = msg else { break };
        let msg = match msg {
            Ok(msg) => msg,
            Err(status) => {
                tracing::debug!(error = %status, "work stream broke");
                broke = true;
                break;
            }
        };
        let seq = msg.seq;
        use pb::work_request::Kind;
        match msg.kind {
            Some(Kind::Credit(_)) if stopped => {}
            Some(Kind::Credit(n)) => {
                let before = granted.fetch_add(n, Ordering::Relaxed);
                let room = MAX_CREDITS.saturating_sub(before);
                if n > room {
                    granted.fetch_sub(n - room, Ordering::Relaxed);
                }
                credits.add_permits(n.min(room) as usize);
            }
            Some(Kind::Ack(ack)) => {
                let job_id = ack.job_id.clone();
                let done = (holdings.clone(), job_id);
                spawn_answer(seq, &tx, Some(done), {
                    let service = service.clone();
                    let req = with_cred(ack, &cred);
                    async move { service.ack(req).await.map(|_| pb::WorkAnswer::default()) }
                });
            }
            Some(Kind::Nack(nack)) => {
                let job_id = nack.job_id.clone();
                let done = (holdings.clone(), job_id);
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
            Some(Kind::Stop(_)) => {
                // No more leasing: a lease look under way is dropped (as at the end).
                stopped = true;
                leaser.abort();
            }
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
    if broke {
        park(&service, session_id.clone(), lease, holdings);
        return;
    }
    release(&service, holdings.take_held(), "work session ended").await;
}

/// Parks a broken session for [`RESUME_GRACE`], then ends its leases as expired
/// ([`expire`]) unless a resume took it meanwhile.
fn park(service: &BrokerService, id: String, lease: pb::LeaseRequest, holdings: Holdings) {
    if service.sessions().is_closing() {
        return; // nobody can resume here; the worker settles through another node
    }
    let registry = service.sessions().clone();
    let evicted = registry.park_bounded(
        id.clone(),
        lease.worker_id,
        lease.queues,
        holdings,
        MAX_PARKED,
    );
    tracing::info!(grace = ?RESUME_GRACE, "work stream broke: its leases are kept for a resume");
    if let Some(old) = evicted {
        let service = service.clone();
        tokio::spawn(async move {
            let leases = old.holdings.take_held();
            expire(&service, leases, "parked sessions full: oldest").await
        });
    }
    let service = service.clone();
    tokio::spawn(
        async move {
            tokio::time::sleep(RESUME_GRACE).await;
            let Some(p) = lock(&registry.parked).remove(&id) else {
                return; // resumed (or evicted) meanwhile
            };
            let leases = p.holdings.take_held();
            expire(&service, leases, "work session not resumed").await
        }
        .in_current_span(),
    );
}

/// Ends the leases of a broken session that was not resumed as if their visibility
/// timeout had run out now: each is extended to 1 ms from now and the ticker's next
/// `Tick` expires it. Unlike [`release`], the delivery counts as an attempt: the worker
/// may have run the job, and a job that kills its worker process (the stream breaks
/// with it) must use up its attempts and reach the dead-letter queue, as it does when
/// a polling worker's lease runs out. `why` goes to the log.
async fn expire(service: &BrokerService, leases: Vec<(String, u64)>, why: &str) {
    if leases.is_empty() {
        return;
    }
    let n = leases.len();
    let node = service.node();
    let ends = leases.into_iter().map(|(job_id, lease_id)| {
        node.propose(Command::Extend {
            job_id,
            lease_id,
            visibility_timeout_ms: 1,
            progress: None,
            progress_message: None,
        })
    });
    // A lease settled or expired meanwhile answers with an error: nothing to end.
    let ended = futures::future::join_all(ends)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    tracing::info!(
        jobs = n,
        ended,
        why,
        "leases of a broken session end now (the attempt counts)"
    );
}

/// Gives `leases` back (ready again, the attempt undone); `why` goes to the log.
async fn release(service: &BrokerService, leases: Vec<(String, u64)>, why: &str) {
    if leases.is_empty() {
        return;
    }
    let n = leases.len();
    match service.node().propose(Command::Release { leases }).await {
        Ok(_) => tracing::info!(jobs = n, why, "leases given back"),
        Err(e) => {
            tracing::warn!(jobs = n, why, error = %e, "giving leases back failed; they run out at their visibility timeout")
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
    done: Option<(Holdings, String)>,
    call: impl std::future::Future<Output = Result<pb::WorkAnswer, Status>> + Send + 'static,
) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let r = call.await;
        if let Some((holdings, job_id)) = done {
            // The worker is done with the job either way (a refused ack means the lease
            // ran out): its credit's place is free again.
            let _ = holdings
                .granted
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |g| g.checked_sub(1));
            if r.is_ok() {
                lock(&holdings.held).remove(&job_id);
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
            reason: s
                .metadata()
                .get(super::status::REASON_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(job: &str, lease: u64) -> Holdings {
        let h = Holdings::default();
        lock(&h.held).insert(job.to_string(), lease);
        h
    }

    /// The bound on parked sessions (MAX_PARKED in production) evicts in parking
    /// order, hands back the evicted session's leases to be ended, and keeps the rest
    /// resumable.
    #[test]
    fn a_full_registry_evicts_the_session_parked_first_with_its_leases() {
        let sessions = Sessions::default();
        let park = |id: &str, job: &str, lease: u64| {
            sessions.park_bounded(
                id.into(),
                format!("w-{id}"),
                vec!["q".into()],
                holding(job, lease),
                3,
            )
        };
        assert!(park("b", "job-b", 2).is_none());
        assert!(park("a", "job-a", 1).is_none());
        assert!(park("c", "job-c", 3).is_none());
        assert_eq!(sessions.parked(), 3);

        let evicted = park("d", "job-d", 4).expect("the fourth evicts one");
        assert_eq!(evicted.worker_id, "w-b", "b was parked first");
        assert_eq!(evicted.holdings.take_held(), vec![("job-b".to_string(), 2)]);
        assert_eq!(sessions.parked(), 3);

        let evicted = park("e", "job-e", 5).expect("the fifth evicts one");
        assert_eq!(evicted.worker_id, "w-a", "then a, parked second");
        let left: std::collections::BTreeSet<String> =
            lock(&sessions.parked).keys().cloned().collect();
        assert_eq!(left, ["c", "d", "e"].map(String::from).into());
    }
}
