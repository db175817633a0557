//! The stream protocol ([`Protocol::Stream`](crate::Protocol)): one `Work` session per
//! worker instead of long-polling `Lease` calls.
//!
//! ```text
//!  free hand slot ──> credit ──> broker pushes a job ──> job task (runner.rs) ──> slot freed
//!                                                          │ ack / nack / extend
//!                                           seq ──> Link ──┴──> answer by seq (reader task)
//! ```
//!
//! The session runs on the node the client prefers (the leader when known). Each free
//! hand slot is granted as one credit; a job pushed takes the slot, and freeing it (the
//! job settled) grants the credit again. Acks, nacks and extensions go up the stream
//! with a seq, and the reader task hands each answer to its waiter ([`Link`]); an
//! answer's code maps to the same [`Error`] the unary call would give, so a job's life
//! (`runner.rs`) does not depend on the protocol.
//!
//! When the stream breaks, settles waiting for an answer, and any made before a new
//! session is up, use the unary calls (a repeated Ack or Nack of the same lease answers
//! as the first). The worker then resumes the session on the same node (the broker keeps
//! its leases for 3 s), naming the jobs it still holds, trying for up to 2 s while the
//! node cannot be reached; if that fails, or the node itself ended the session (it is
//! shutting down), it opens a fresh session, on the next node after UNAVAILABLE, every
//! second until one opens. Jobs in hand keep running throughout.
//!
//! On shutdown the worker sends `stop` (no more pushes), lets its jobs finish or go back
//! as the poll protocol does, then closes its side: the broker gives back at once any job
//! pushed after the stop.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskraft_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::client::WorkConn;
use crate::runner::{self, Shared};
use crate::worker::{take_free, LoopState, Worker};
use crate::Error;

use pb::work_request::Kind as Up;

/// How long after a break the worker keeps trying to resume on the same node when it
/// cannot reach it; the broker keeps a broken session's jobs for 3 s.
const RESUME_FOR: Duration = Duration::from_secs(2);
/// Pause between those tries.
const RESUME_RETRY: Duration = Duration::from_millis(100);

/// The live session as job tasks see it: where to send a request and who waits for
/// which answer. Empty between sessions; then every call goes unary.
#[derive(Default)]
pub(crate) struct Link {
    live: Mutex<Option<Live>>,
    seq: AtomicU64,
}

struct Live {
    /// Which session this is, so a late reader of an old one cannot clear a new one.
    generation: u64,
    up: mpsc::Sender<pb::WorkRequest>,
    pending: HashMap<u64, oneshot::Sender<pb::WorkAnswer>>,
}

impl Link {
    fn set(&self, generation: u64, up: mpsc::Sender<pb::WorkRequest>) {
        *lock(&self.live) = Some(Live {
            generation,
            up,
            pending: HashMap::new(),
        });
    }

    /// The session `generation` ended: its waiters fall back to the unary calls.
    fn clear(&self, generation: u64) {
        let mut live = lock(&self.live);
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            *live = None;
        }
    }

    /// Drops the sender: once no request is being sent, the stream is half-closed.
    fn close(&self) {
        lock(&self.live).take();
    }

    fn answer(&self, a: pb::WorkAnswer) {
        let waiter = lock(&self.live)
            .as_mut()
            .and_then(|l| l.pending.remove(&a.seq));
        if let Some(w) = waiter {
            let _ = w.send(a);
        }
    }

    /// Sends a request that expects no answer (credit, stop); false when no session is up.
    async fn send(&self, kind: Up) -> bool {
        let up = lock(&self.live).as_ref().map(|l| l.up.clone());
        match up {
            Some(up) => up
                .send(pb::WorkRequest {
                    kind: Some(kind),
                    seq: 0,
                })
                .await
                .is_ok(),
            None => false,
        }
    }

    /// Sends an ack, nack or extend on the session and waits up to `timeout` for its
    /// answer. None: no session, it broke before answering, no answer in time, or the
    /// answer was UNAVAILABLE; the caller then makes the unary call, which retries.
    pub(crate) async fn call(
        &self,
        kind: Up,
        timeout: Duration,
    ) -> Option<Result<pb::WorkAnswer, Error>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        let up = {
            let mut live = lock(&self.live);
            let live = live.as_mut()?;
            live.pending.insert(seq, tx);
            live.up.clone()
        };
        let exchange = async move {
            up.send(pb::WorkRequest {
                kind: Some(kind),
                seq,
            })
            .await
            .ok()?;
            // Not holding a sender while waiting lets the stream half-close.
            drop(up);
            rx.await.ok()
        };
        let Ok(Some(a)) = tokio::time::timeout(timeout, exchange).await else {
            if let Some(live) = lock(&self.live).as_mut() {
                live.pending.remove(&seq);
            }
            return None;
        };
        if a.code == 0 {
            return Some(Ok(a));
        }
        let code = Code::from_i32(a.code);
        if code == Code::Unavailable {
            return None;
        }
        let mut status = Status::new(code, a.message);
        // The reason tells a cancelled job from a lost lease, as the unary call's
        // metadata does.
        match a.reason.parse() {
            Ok(reason) if !a.reason.is_empty() => {
                status
                    .metadata_mut()
                    .insert(crate::error::REASON_KEY, reason);
            }
            _ => {}
        }
        Some(Err(Error::from_status(status)))
    }
}

/// What is left of the session once the worker stops taking jobs: close it after
/// the jobs in hand are settled.
pub(crate) struct Tail {
    link: Arc<Link>,
    reader: JoinHandle<Option<Status>>,
    wait: Duration,
}

impl Tail {
    /// Half-closes the stream and waits (bounded) for the broker to end it, i.e. to
    /// have given back whatever the session still held.
    pub(crate) async fn finish(self) {
        self.link.close();
        if tokio::time::timeout(self.wait, self.reader).await.is_err() {
            tracing::warn!("the work session did not end in time after closing it");
        }
    }
}

enum End {
    /// Shutdown asked, or max_jobs reached.
    Stop,
    /// The stream ended or broke (the reader has the status).
    Broken,
}

/// The stream protocol's job loop (see the module doc). Returns the session to close
/// after the drain, if one is open.
pub(crate) async fn run<S>(
    w: &Worker,
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    hand: &Arc<Semaphore>,
    st: &mut LoopState,
    shutdown: &mut S,
) -> Option<Tail>
where
    S: std::future::Future<Output = ()> + Unpin,
{
    let holding: Arc<Mutex<HashSet<String>>> = Arc::default();
    // The node, session id and how long a resume is worth trying.
    let mut resume: Option<(usize, String, Instant)> = None;
    let mut generation = 0u64;
    loop {
        if w.max_jobs.is_some_and(|max| st.leased_total >= max) {
            return None;
        }
        let resuming = resume.is_some();
        let open = pb::WorkOpen {
            queues: w.queues.clone(),
            worker_id: w.worker_id.clone(),
            visibility_timeout_ms: w.visibility.as_millis() as u64,
            resume: resume.as_ref().map(|r| r.1.clone()).unwrap_or_default(),
            holding: if resuming {
                lock(&holding).iter().cloned().collect()
            } else {
                Vec::new()
            },
        };
        let tried = resume.take();
        let node = tried.as_ref().map(|r| r.0);
        let opened = tokio::select! {
            biased;
            _ = &mut *shutdown => { st.shutdown_asked = true; return None }
            r = w.client.open_work(node, open) => r,
        };
        let conn = match opened {
            Ok(conn) => conn,
            Err(e @ (Error::Unauthenticated(_) | Error::InvalidArgument(_))) => {
                tracing::error!(error = %e, "worker cannot open a work session; stopping");
                st.fatal = Some(e);
                st.shutdown_asked = true;
                return None;
            }
            // A connection that is not back yet may be soon: try again while the broker
            // still keeps the session. NOT_FOUND (or any other answer) is final.
            Err(e @ Error::Unavailable { .. })
                if tried.as_ref().is_some_and(|r| Instant::now() < r.2) =>
            {
                tracing::debug!(error = %e, "resuming the work session failed; trying again");
                tokio::select! {
                    _ = &mut *shutdown => { st.shutdown_asked = true; return None }
                    _ = tokio::time::sleep(RESUME_RETRY) => {}
                }
                resume = tried;
                continue;
            }
            Err(e) if resuming => {
                tracing::warn!(error = %e, "cannot resume the work session; opening a fresh one");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "opening a work session failed; retrying in 1s");
                tokio::select! {
                    _ = &mut *shutdown => { st.shutdown_asked = true; return None }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        st.lease_calls += 1;
        generation += 1;
        let WorkConn {
            node,
            up,
            down,
            opened,
        } = conn;
        tracing::info!(session_id = %opened.session_id, node, adopted = opened.adopted, "work session open");
        link.set(generation, up);
        let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read(down, link.clone(), generation, jobs_tx));
        let mut reserved: Vec<OwnedSemaphorePermit> = Vec::new();
        let end = loop {
            while st.tasks.try_join_next().is_some() {}
            let room = match w.max_jobs {
                Some(max) if st.leased_total >= max => break End::Stop,
                Some(max) => ((max - st.leased_total) as usize).saturating_sub(reserved.len()),
                None => usize::MAX,
            };
            tokio::select! {
                biased;
                _ = &mut *shutdown => { st.shutdown_asked = true; break End::Stop }
                job = jobs_rx.recv() => match job {
                    Some(job) => {
                        let Some(permit) = reserved.pop() else {
                            tracing::warn!(job_id = %job.job_id, "a job pushed beyond the credits granted; the session gives it back at the close");
                            continue;
                        };
                        st.leased_total += 1;
                        spawn_job(&mut st.tasks, shared, &holding, job, permit);
                    }
                    None => break End::Broken,
                },
                p = hand.clone().acquire_owned(), if room > 0 => {
                    let mut free = vec![p.expect("hand slots are never closed")];
                    take_free(hand, &mut free, room);
                    let n = free.len() as u32;
                    reserved.extend(free);
                    // A failed send means the stream broke: the reader ends it soon.
                    link.send(Up::Credit(n)).await;
                }
            }
        };
        drop(reserved);
        match end {
            End::Stop => {
                link.send(Up::Stop(pb::WorkStop {})).await;
                return Some(Tail {
                    link: link.clone(),
                    reader,
                    wait: w.client.call_timeout(),
                });
            }
            End::Broken => {
                let status = reader.await.ok().flatten();
                match status {
                    Some(s) if is_fatal(&s) => {
                        let e = Error::from_status(s);
                        tracing::error!(error = %e, "the work session was refused; stopping");
                        st.fatal = Some(e);
                        st.shutdown_asked = true;
                        return None;
                    }
                    // The node said so itself (it is shutting down): nothing to resume
                    // there, the jobs in hand are settled through the next session.
                    Some(s) if s.code() == Code::Unavailable && !failed_locally(&s) => {
                        tracing::warn!(error = %s, "work session ended by its node; opening one elsewhere");
                    }
                    s => {
                        let why = s.map(|s| s.to_string()).unwrap_or_else(|| "ended".into());
                        tracing::warn!(error = %why, "work stream broke; resuming the session");
                        resume = Some((node, opened.session_id, Instant::now() + RESUME_FOR));
                    }
                }
            }
        }
    }
}

/// A status the broker sent (not a connection failure) that no reconnect fixes.
fn is_fatal(s: &Status) -> bool {
    !failed_locally(s)
        && matches!(
            s.code(),
            Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument
        )
}

fn spawn_job(
    tasks: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    holding: &Arc<Mutex<HashSet<String>>>,
    job: pb::LeasedJob,
    permit: OwnedSemaphorePermit,
) {
    let (shared, holding) = (shared.clone(), holding.clone());
    let id = job.job_id.clone();
    lock(&holding).insert(id.clone());
    tasks.spawn(async move {
        runner::run(shared, job, permit).await;
        lock(&holding).remove(&id);
    });
}

/// Reads the stream: jobs to the session loop, answers to their waiters. Returns the
/// status the stream ended with, if any.
async fn read(
    mut down: tonic::Streaming<pb::WorkResponse>,
    link: Arc<Link>,
    generation: u64,
    jobs: mpsc::UnboundedSender<pb::LeasedJob>,
) -> Option<Status> {
    use pb::work_response::Kind;
    let end = loop {
        match down.message().await {
            Ok(Some(pb::WorkResponse { kind })) => match kind {
                // Once the loop stopped taking jobs the send fails: the job stays with
                // the session, which gives it back when the stream closes.
                Some(Kind::Job(job)) => {
                    let _ = jobs.send(job);
                }
                Some(Kind::Answer(a)) => link.answer(a),
                Some(Kind::Opened(_)) | None => {}
            },
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    link.clear(generation);
    end
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when tonic made `s` up on this side (the connection failed); statuses the
/// broker sent carry no source.
fn failed_locally(s: &Status) -> bool {
    std::error::Error::source(s).is_some()
}
