//! A follower's writes to the leader on one long-lived stream (`RaftPeer.Forward`).
//!
//! A follower forwards every write its clients send it. One unary `Propose` per write
//! cost an HTTP/2 request on both nodes (headers, a stream, the tower stack, a task on
//! the leader) for every job when calls are spread over the nodes. Here each follower
//! keeps one stream to the leader; a write is one message out and one back, matched by
//! an id, so many are in flight at once and the leader's proposer batches them with its
//! own callers' writes.
//!
//! What the unary call guaranteed still holds:
//! - **A write nobody waits for is not proposed.** The message carries the time its
//!   caller has left; a caller that gives up earlier (cancelled, timed out) sends
//!   `Cancel`, and the leader drops the proposal, so the proposer never writes it
//!   (`proposer.rs`), as when a unary call's HTTP/2 stream was reset.
//! - **Retry only what was never sent.** A write that could not be handed to a stream
//!   (no stream could be opened, the link is cut) is retried once a leader is known; a
//!   write whose stream broke after it was sent may or may not have applied, and the
//!   caller hears exactly that (UNAVAILABLE).
//! - **Mixed versions.** A leader that does not know `Forward` answers UNIMPLEMENTED;
//!   the follower then uses `Propose` towards that address (rolling upgrades).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use taskraft_proto::raft::RaftMessage;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::network::PeerPool;
use super::node::never_sent;
use super::proposer::ProposeError;
use super::wire::{decode, encode};
use crate::queue::{Command, Reply};

/// A follower's message on the stream (`C` is `Command` when decoded, `&Command` when
/// encoded: the same bytes).
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardMsg<C> {
    /// Propose `cmd` within `timeout_ms`; answered with `id`.
    Propose {
        /// Chosen by the follower, unique on its stream.
        id: u64,
        /// What the caller has left; the leader waits no longer.
        timeout_ms: u64,
        /// The write.
        cmd: C,
    },
    /// The caller of `id` gave up: do not propose it if it is not proposed yet.
    Cancel {
        /// The proposal's id.
        id: u64,
    },
}

/// The leader's answer to one [`ForwardMsg::Propose`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardReply {
    /// The proposal's id.
    pub id: u64,
    /// What a unary `Propose` would have answered.
    pub reply: Result<Reply, ProposeError>,
}

type Waiter = oneshot::Sender<Result<Reply, ProposeError>>;

/// One open stream to one leader address.
struct Link {
    /// The request side of the stream; taken to half-close it when the link is replaced.
    out: Mutex<Option<mpsc::UnboundedSender<RaftMessage>>>,
    /// Proposals sent and not answered yet. `None` once the stream has ended: nothing
    /// more may be added.
    waiting: Mutex<Option<HashMap<u64, Waiter>>>,
    /// The pool's connection generation it was opened in.
    generation: u64,
}

impl Link {
    fn send(&self, msg: &ForwardMsg<&Command>) -> bool {
        let Ok(data) = encode(msg) else {
            return false;
        };
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.as_ref()
            .is_some_and(|o| o.send(RaftMessage { data: data.into() }).is_ok())
    }

    fn is_open(&self) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            && self.out.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Ends the request side: the leader answers what it holds, then ends the stream.
    fn half_close(&self) {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Answers every waiting proposal with `why` and refuses new ones.
    fn close(&self, why: &str) {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for (_, w) in waiting.into_iter().flatten() {
            let _ = w.send(Err(ProposeError::Unavailable(why.to_string())));
        }
    }
}

/// Why no stream could be used.
enum Refused {
    /// Nothing was sent: try again once a leader is known.
    NotSent,
    /// The leader does not serve `Forward`: use the unary call.
    Unsupported,
}

/// The follower side: a stream per leader address, opened on first use and again after
/// it ends.
pub struct Forwarder {
    pool: Arc<PeerPool>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Addresses that answered UNIMPLEMENTED (an older version).
    unary_only: Mutex<HashSet<String>>,
    /// Held while a stream is opened, so that concurrent first writes share one.
    opening: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    opened: AtomicU64,
}

/// Sends `Cancel` if the caller stops waiting before its answer came.
struct CancelOnDrop {
    link: Arc<Link>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(w) = self
            .link
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            w.remove(&self.id);
        }
        self.link.send(&ForwardMsg::Cancel { id: self.id });
    }
}

impl Forwarder {
    /// Forwards through the connections of `pool`.
    pub fn new(pool: Arc<PeerPool>) -> Self {
        Self {
            pool,
            links: Mutex::new(HashMap::new()),
            unary_only: Mutex::new(HashSet::new()),
            opening: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            opened: AtomicU64::new(0),
        }
    }

    /// Streams opened since start (one per leader while it stays reachable).
    pub fn streams_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// True when the leader at `addr` is known not to serve `Forward`.
    pub fn is_unary_only(&self, addr: &str) -> bool {
        self.unary_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(addr)
    }

    /// Proposes `cmd` at the leader `leader` (peer address `addr`) and waits for its
    /// reply until `deadline`. `Err(None)`: the leader does not serve `Forward`, use
    /// the unary call.
    pub async fn forward(
        &self,
        leader: u64,
        addr: &str,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<Result<Reply, ProposeError>, Option<ProposeError>> {
        let link = match self.link(addr).await {
            Ok(link) => link,
            Err(Refused::NotSent) => return Err(Some(ProposeError::NotLeader)),
            Err(Refused::Unsupported) => return Err(None),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = link.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let Some(waiting) = waiting.as_mut() else {
                // The stream ended between lookup and now; nothing was sent.
                return Err(Some(ProposeError::NotLeader));
            };
            waiting.insert(id, tx);
        }
        let timeout_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
        let mut guard = CancelOnDrop {
            link: link.clone(),
            id,
            armed: true,
        };
        if !link.send(&ForwardMsg::Propose {
            id,
            timeout_ms,
            cmd,
        }) {
            // The stream's task is gone: the message never left this node.
            guard.armed = false;
            link.close(&format!(
                "the forwarding stream to the leader at {addr} ended; the write may or may not \
                 have applied"
            ));
            return Err(Some(ProposeError::NotLeader));
        }
        let answer = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ProposeError::Unavailable(format!(
                "the forwarding stream to leader {leader} at {addr} ended; the write may or \
                 may not have applied"
            ))),
            // The guard stays armed: the leader drops the proposal if it still can.
            Err(_) => {
                return Ok(Err(ProposeError::Unavailable(format!(
                    "forwarded write to leader {leader} at {addr} timed out; the write may or \
                     may not have applied"
                ))))
            }
        };
        // Answered, or the stream ended and took the waiter: nothing to cancel.
        guard.armed = false;
        Ok(answer)
    }

    /// The open stream to `addr`, opened now if there is none.
    async fn link(&self, addr: &str) -> Result<Arc<Link>, Refused> {
        if let Some(l) = self.open_link(addr)? {
            return Ok(l);
        }
        let _opening = self.opening.lock().await;
        if let Some(l) = self.open_link(addr)? {
            return Ok(l);
        }
        let generation = self.pool.generation();
        let mut client = self.pool.client(addr).map_err(|_| Refused::NotSent)?;
        let (out, rx) = mpsc::unbounded_channel();
        let inbound = match client
            .forward(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    addr,
                    "the leader does not serve Forward: unary Propose calls"
                );
                self.unary_only
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(addr.to_string());
                return Err(Refused::Unsupported);
            }
            Err(s) => {
                // Nothing was proposed on a stream that never opened.
                if !never_sent(&s) {
                    tracing::debug!(addr, error = %s, "opening the forwarding stream failed");
                }
                return Err(Refused::NotSent);
            }
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(Link {
            out: Mutex::new(Some(out)),
            waiting: Mutex::new(Some(HashMap::new())),
            generation,
        });
        tokio::spawn(read_replies(link.clone(), inbound, addr.to_string()));
        let old = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), link.clone());
        // A replaced stream still answers what it carries, and takes nothing new.
        if let Some(old) = old {
            old.half_close();
        }
        Ok(link)
    }

    /// The stream to `addr` if one is open and usable now.
    fn open_link(&self, addr: &str) -> Result<Option<Arc<Link>>, Refused> {
        if self.is_unary_only(addr) {
            return Err(Refused::Unsupported);
        }
        if self.pool.is_cut(addr) {
            return Err(Refused::NotSent);
        }
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        Ok(links
            .get(addr)
            .filter(|l| l.is_open() && l.generation == self.pool.generation())
            .cloned())
    }
}

/// Hands each reply on the stream to its waiter; when the stream ends, answers the
/// rest UNAVAILABLE (they may or may not have applied).
async fn read_replies(link: Arc<Link>, mut inbound: tonic::Streaming<RaftMessage>, addr: String) {
    let why = loop {
        match inbound.message().await {
            Ok(Some(msg)) => match decode::<ForwardReply>(&msg.data) {
                Ok(r) => {
                    let waiter = link
                        .waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_mut()
                        .and_then(|w| w.remove(&r.id));
                    if let Some(w) = waiter {
                        let _ = w.send(r.reply);
                    }
                }
                Err(e) => break format!("undecodable reply from the leader at {addr}: {e}"),
            },
            Ok(None) => break format!("the leader at {addr} ended the forwarding stream"),
            Err(s) => {
                break format!(
                    "the forwarding stream to the leader at {addr} broke: {}",
                    s.message()
                )
            }
        }
    };
    tracing::debug!(addr, why, "forwarding stream ended");
    link.close(&format!("{why}; the write may or may not have applied"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::network::Resolver;
    use std::sync::atomic::AtomicUsize;
    use taskraft_proto::raft::raft_peer_server::{RaftPeer, RaftPeerServer};
    use tonic::{Request, Response, Status, Streaming};

    /// A peer of an older version: it knows no `Forward` (every call is answered as an
    /// unknown method would be), and counts the attempts.
    struct OldPeer(Arc<AtomicUsize>);

    type Unary = Result<Response<RaftMessage>, Status>;
    fn old() -> Status {
        Status::unimplemented("unknown method")
    }

    #[tonic::async_trait]
    impl RaftPeer for OldPeer {
        async fn append_entries(&self, _: Request<RaftMessage>) -> Unary {
            Err(old())
        }
        async fn vote(&self, _: Request<RaftMessage>) -> Unary {
            Err(old())
        }
        async fn install_snapshot(&self, _: Request<RaftMessage>) -> Unary {
            Err(old())
        }
        async fn propose(&self, _: Request<RaftMessage>) -> Unary {
            Err(old())
        }
        async fn read_index(&self, _: Request<RaftMessage>) -> Unary {
            Err(old())
        }
        async fn campaign(&self, _: Request<RaftMessage>) -> Unary {
            Err(old())
        }
        async fn cluster_time(&self, _: Request<RaftMessage>) -> Unary {
            Err(old())
        }
        type ForwardStream = tokio_stream::wrappers::ReceiverStream<Result<RaftMessage, Status>>;
        async fn forward(
            &self,
            _: Request<Streaming<RaftMessage>>,
        ) -> Result<Response<Self::ForwardStream>, Status> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(old())
        }
    }

    #[tokio::test]
    async fn a_leader_without_forward_is_sent_unary_calls_from_then_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let attempts = Arc::new(AtomicUsize::new(0));
        let server = tonic::transport::Server::builder()
            .add_service(RaftPeerServer::new(OldPeer(attempts.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(server);
        let pool = PeerPool::new(None, None, Resolver::system()).unwrap();
        let forwarder = Forwarder::new(pool);
        let cmd = Command::Pause { queue: "q".into() };
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        for _ in 0..3 {
            let r = forwarder.forward(1, &addr, &cmd, deadline).await;
            assert!(matches!(r, Err(None)), "not told to use Propose: {r:?}");
        }
        assert!(forwarder.is_unary_only(&addr));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "the stream was tried once"
        );
        assert_eq!(forwarder.streams_opened(), 0);
        server.abort();
    }
}
