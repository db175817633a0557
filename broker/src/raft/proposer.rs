//! Group commit at the proposal level.
//!
//! openraft 0.9's core awaits the local fsync of every `append` before it handles the
//! next client write, so one Raft entry per call would cost one fsync per call. The
//! proposer instead collects the commands that arrive while earlier entries are in
//! flight and proposes them as one [`Command::Batch`] entry: one fsync (on each node) and
//! one replication round for all of them. Each caller still gets its own reply, and the
//! batch applies atomically and in order, at one leader time.
//!
//! ```text
//!  callers ──► queue ──► [drain up to 1,024 cmds / 4 MiB] ──► client_write(Batch) ─► replies
//!   (full: UNAVAILABLE    (callers that gave up     (at most MAX_IN_FLIGHT entries in flight)
//!    at once)              are dropped here)
//! ```
//!
//! A command waits in the queue while earlier entries are in flight, which after a
//! stall (no quorum, a slow disk) can be long. A caller whose deadline passed (or whose
//! call was cancelled) has been answered UNAVAILABLE and may retry; proposing its command
//! later would apply it behind its back, a ghost write (an enqueue stored twice, a lease
//! that takes jobs nobody will work on). So a command whose caller is gone is dropped
//! when the batch is taken, never proposed. Once proposed, a command's fate is the log's;
//! but a Lease that applied for a caller who had gone by then handed jobs to nobody, so
//! the proposer gives them back at once ([`Command::Release`]: ready again, the attempt
//! not counted) rather than leave them leased until their visibility timeout.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::time::ReplicatedTime;
use super::types::Raft;
use crate::queue::{Command, Envelope, Outcome, Reply};

/// Why a proposal (or a read index) was not served: from this node's proposer, or
/// sent back over the peer wire by the leader to a forwarding follower.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProposeError {
    /// The receiver is not the leader (any more).
    NotLeader,
    /// The write did not complete in time or the cluster cannot serve.
    Unavailable(String),
}

/// Most commands in one entry.
const MAX_COMMANDS: usize = 1024;
/// Most (approximate) bytes in one entry.
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Entries proposed but not yet applied. Two lets one batch fsync while the previous
/// one is applied and answered.
const MAX_IN_FLIGHT: usize = 2;
/// Commands waiting for an entry. Beyond this the node is overloaded (or stalled), and
/// a new call is answered UNAVAILABLE at once instead of queueing without bound.
const MAX_QUEUED: usize = 16_384;

type Pending = (Command, oneshot::Sender<Result<Reply, ProposeError>>);

/// Hands commands to Raft in batches.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task for `raft`; the handle lets the server watch it (every
    /// write goes through it, so a node whose proposer died must not stay up).
    pub fn start(raft: Raft, time: Arc<ReplicatedTime>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        let task = tokio::spawn(run(raft, time, rx));
        (Self { tx }, task)
    }

    /// Proposes `cmd` (this node believes it leads) and waits for its reply until
    /// `deadline`.
    pub async fn propose(&self, cmd: Command, deadline: Instant) -> Result<Reply, ProposeError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx.try_send((cmd, reply_tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProposeError::Unavailable(format!(
                "overloaded: {MAX_QUEUED} writes already wait for the log; retry later"
            )),
            mpsc::error::TrySendError::Closed(_) => {
                ProposeError::Unavailable("node is shutting down".into())
            }
        })?;
        match tokio::time::timeout_at(deadline, reply_rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Unavailable("node is shutting down".into())),
            Err(_) => Err(ProposeError::Unavailable(
                "write not confirmed in time (no quorum?); if it was proposed it may still apply, so retry with the same request id or idempotency key".into(),
            )),
        }
    }
}

/// True while the caller still waits for the reply.
fn waited_for(p: &Pending) -> bool {
    !p.1.is_closed()
}

async fn run(raft: Raft, time: Arc<ReplicatedTime>, mut rx: mpsc::Receiver<Pending>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Everything that queued up while we waited for a slot goes in this entry,
        // except what nobody waits for any more.
        let mut bytes = 0;
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(p) = next.take() {
            if waited_for(&p) {
                bytes += p.0.approx_size();
                batch.push(p);
            }
            if batch.len() >= MAX_COMMANDS || bytes >= MAX_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        let time = time.clone();
        tokio::spawn(async move {
            write(&raft, &time, batch).await;
            drop(permit);
        });
    }
}

async fn write(raft: &Raft, time: &Arc<ReplicatedTime>, batch: Vec<Pending>) {
    let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let single = cmds.len() == 1;
    let cmd = if single {
        cmds.into_iter().next().expect("one command")
    } else {
        Command::Batch(cmds)
    };
    let env = Envelope {
        now_ms: time.stamp(),
        cmd,
    };
    match raft.client_write(env).await {
        Ok(resp) => match (single, resp.data) {
            (true, reply) => {
                let tx = replies.into_iter().next().expect("one");
                give_back(raft, time, answer(tx, reply));
            }
            (false, Ok(Outcome::Batch(each))) => {
                let orphans = replies
                    .into_iter()
                    .zip(each)
                    .flat_map(|(tx, reply)| answer(tx, reply))
                    .collect();
                give_back(raft, time, orphans);
            }
            (false, other) => {
                let msg = format!("batch applied with an unexpected reply: {other:?}");
                for tx in replies {
                    let _ = tx.send(Err(ProposeError::Unavailable(msg.clone())));
                }
            }
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            // Not proposed: every caller may retry on the new leader.
            for tx in replies {
                let _ = tx.send(Err(ProposeError::NotLeader));
            }
        }
        Err(e) => {
            let msg = format!("write failed: {e}");
            for tx in replies {
                let _ = tx.send(Err(ProposeError::Unavailable(msg.clone())));
            }
        }
    }
}

/// Hands a caller its reply. When the caller has gone and the reply handed it jobs (a
/// Lease), returns those jobs' (id, lease id): nobody will work on them.
fn answer(tx: oneshot::Sender<Result<Reply, ProposeError>>, reply: Reply) -> Vec<(String, u64)> {
    match tx.send(Ok(reply)) {
        Err(Ok(Ok(Outcome::Leased(jobs)))) => {
            jobs.into_iter().map(|j| (j.job_id, j.lease_id)).collect()
        }
        _ => Vec::new(),
    }
}

/// Proposes the release of leases whose caller had gone (in the background: it is
/// rare, and must not hold the in-flight slot of the entry that leased them). If it
/// fails, the jobs come back when their visibility timeout runs out, as after a worker
/// crash.
fn give_back(raft: &Raft, time: &Arc<ReplicatedTime>, leases: Vec<(String, u64)>) {
    if leases.is_empty() {
        return;
    }
    let raft = raft.clone();
    let time = time.clone();
    tokio::spawn(async move {
        let n = leases.len();
        let env = Envelope {
            now_ms: time.stamp(),
            cmd: Command::Release { leases },
        };
        match raft.client_write(env).await {
            Ok(resp) => tracing::info!(
                leased = n,
                outcome = ?resp.data,
                "gave back jobs leased for a caller that had gone"
            ),
            Err(e) => tracing::warn!(
                leased = n,
                error = %e,
                "could not give back jobs leased for a caller that had gone; they return at their visibility timeout"
            ),
        }
    });
}
