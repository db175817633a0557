//! [`RaftNode`]: what the API layer sees of Raft, as a narrow facade. Its fields are
//! private; callers get methods in the broker's own terms, and never openraft's types
//! or the store's handle:
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | startup and cluster formation; read views, waiters, ids, time, disk |
//! | `write.rs` | `propose`: on the leader through the proposer, else forwarded |
//! | `read.rs` | `read_barrier`: linearizable reads (local or remote read index) |
//! | `status.rs` | `cluster_view`: members, roles, indexes; leader changes |
//! | `membership.rs` | `add_node`, `remove_node` |
//! | `tasks.rs` | the ticker and the snapshot trigger |
//! | `handoff.rs` | leadership hand-off on a graceful stop |
//! | `warmup.rs` | a new leader asks its peers for the cluster's time |
//!
//! The leader stamps `now_ms` into each entry it proposes from [`ReplicatedTime`] (see
//! `time.rs`): the queue core never reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use tokio::time::Instant;

use super::addr::MemberAddr;
use super::log_store::LogStore;
use super::network::{Network, PeerPool};
pub use super::proposer::ProposeError;
use super::state_machine::{ReadSide, StateMachineStore};
use super::time::ReplicatedTime;
use super::types::{NodeId, Raft};
use super::wire::{decode, encode};
use crate::error::BrokerError;
use crate::queue::{Command, Outcome, Reply};
use taskraft_proto::raft::RaftMessage;

mod handoff;
mod membership;
mod read;
mod status;
mod tasks;
mod warmup;
mod write;

pub use status::{ClusterChanges, ClusterView, Member, Role};

/// How a node starts its Raft side.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id.
    pub id: NodeId,
    /// This node's addresses as members know them (`CLIENT/PEER`, see
    /// [`super::addr::MemberAddr`]).
    pub advertise: String,
    /// Where the redb files live.
    pub data_dir: PathBuf,
    /// The initial cluster (id -> `CLIENT/PEER`). Empty: a one-node cluster of this node.
    pub peers: BTreeMap<NodeId, String>,
    /// Secret peers send each other on the peer service, if the cluster has one.
    pub cluster_secret: Option<String>,
    /// TLS towards peers (https, cluster CA, this node's certificate), if on.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// How long a write or linearizable read may wait for a leader and a quorum.
    pub request_timeout: Duration,
    /// Entries kept behind a snapshot.
    pub keep_logs: u64,
    /// Most bytes of those entries (`--keep-log-mb`): `run_compactor` purges the rest.
    pub keep_log_bytes: u64,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// How peer host names are resolved (the system's resolver outside tests).
    pub resolver: super::network::Resolver,
    /// The machine's clocks (tests step them).
    pub clock: crate::clock::ClockHandle,
    /// Free bytes below which enqueues are refused (0: never).
    pub min_free_disk: u64,
    /// Check every page's checksum of both stores at start.
    pub verify_on_start: bool,
}

/// A running Raft node and the queue state it applies into.
pub struct RaftNode {
    /// This node's id.
    id: NodeId,
    /// The openraft handle (the peer service hands it the peers' messages).
    pub(in crate::raft) raft: Raft,
    /// The applied queue state (read side).
    read_side: Arc<ReadSide>,
    /// The log store.
    log: LogStore,
    /// Peer connections (also the test router that can cut links).
    pool: Arc<PeerPool>,
    /// Writes sent to the leader when this node follows.
    forwarder: super::forward::Forwarder,
    proposer: super::proposer::Proposer,
    /// The proposer's task, until the server takes it to watch it.
    proposer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Replicated time as this node knows it.
    time: Arc<ReplicatedTime>,
    /// Held while a new leader asks its peers for the cluster's time (`warmup.rs`).
    warming: tokio::sync::Mutex<()>,
    /// The term whose time was settled that way.
    warmed_term: std::sync::atomic::AtomicU64,
    /// Free space of the data dir.
    disk: Arc<crate::storage::disk::DiskGuard>,
    request_timeout: Duration,
    heartbeat: Duration,
    /// `--keep-log-mb` in bytes, for `run_compactor`.
    keep_log_bytes: u64,
    /// The term of the vote and the log's last index when this process opened the
    /// store: see [`RaftNode::leader_read_index`].
    restart_floor: (u64, u64),
}

/// True when a peer call failed before the request could reach the peer (connection
/// refused, link cut), so retrying it elsewhere cannot apply it twice.
pub(crate) fn never_sent(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        && (s.message().contains("tcp connect error")
            || s.message().contains("error trying to connect"))
}

/// Opens the Raft log and the state store side by side, each on a blocking thread.
/// With `--verify-on-start` most of a restart is redb walking every page of both files;
/// the two walks are independent, so on two cores the log's costs nothing extra.
async fn open_stores(
    dir: &std::path::Path,
    verify: bool,
) -> anyhow::Result<(LogStore, StateMachineStore)> {
    fn timed<T>(
        what: &'static str,
        verify: bool,
        open: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let started = std::time::Instant::now();
        let store = open()?;
        tracing::info!(
            store = what,
            verify,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened"
        );
        Ok(store)
    }
    let log_path = dir.join(crate::storage::LOG_FILE);
    let log = tokio::task::spawn_blocking(move || {
        timed("raft log", verify, || {
            LogStore::open_with(&log_path, verify)
        })
    });
    let sm_dir = dir.to_path_buf();
    let sm = tokio::task::spawn_blocking(move || {
        timed("state store", verify, || {
            StateMachineStore::open_with(&sm_dir, verify)
        })
    });
    let (log, sm) = tokio::join!(log, sm);
    Ok((log??, sm??))
}

/// Longest time snapshots are held back for a follower that is behind the last one.
pub const SNAPSHOT_HOLD_MAX: Duration = Duration::from_secs(600);

/// Appended log bytes after which a snapshot is taken (and the log purged behind it).
pub const SNAPSHOT_LOG_BYTES: u64 = 64 << 20;

impl RaftNode {
    /// Opens storage, starts Raft, and forms the initial cluster when this node is
    /// part of it and nothing was stored yet.
    pub async fn start(opts: NodeOptions) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
        let (log, sm) = open_stores(&opts.data_dir, opts.verify_on_start).await?;
        let read_side = sm.read_side();
        // Entries past the log's end now are appended while this process runs: applying
        // one anchors replicated time (see time.rs).
        let (live_after, open_term) = {
            use openraft::storage::RaftLogStorage;
            let mut log = log.clone();
            let last = log
                .get_log_state()
                .await?
                .last_log_id
                .map_or(0, |l| l.index);
            let term = log.read_vote().await?.map_or(0, |v| v.leader_id().term);
            (last, term)
        };
        let stored_ms = read_side.read().state.now_ms();
        let time = Arc::new(ReplicatedTime::new(
            opts.clock.clone(),
            stored_ms,
            live_after,
        ));
        let sm = sm.with_time(time.clone()).with_node_id(opts.id);
        let pool = PeerPool::new(
            opts.cluster_secret.as_deref(),
            opts.tls.clone(),
            opts.resolver.clone(),
        )?;

        let hb = opts.heartbeat.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "taskraft".into(),
            heartbeat_interval: hb,
            // A follower starts an election once the leader lease (election_timeout_max)
            // has passed without a heartbeat, plus a random election timeout: failover
            // takes between 12 and 16 heartbeats (1.2-1.6 s at the default 100 ms).
            election_timeout_min: hb * 4,
            election_timeout_max: hb * 8,
            max_payload_entries: 64,
            // Snapshots are triggered by `run_compactor`, which holds them back while a
            // follower catches up (see there).
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: opts.keep_logs,
            install_snapshot_timeout: 30_000,
            snapshot_max_chunk_size: 8 * 1024 * 1024,
            ..Default::default()
        }
        .validate()
        .context("raft config")?;
        let raft = Raft::new(
            opts.id,
            Arc::new(config),
            Network::new(pool.clone()),
            log.clone(),
            sm,
        )
        .await
        .context("starting raft")?;

        let (proposer, proposer_task) =
            super::proposer::Proposer::start(raft.clone(), time.clone());
        let node = Arc::new(Self {
            id: opts.id,
            proposer,
            proposer_task: std::sync::Mutex::new(Some(proposer_task)),
            raft,
            read_side,
            log,
            forwarder: super::forward::Forwarder::new(pool.clone()),
            pool,
            time,
            warming: tokio::sync::Mutex::new(()),
            warmed_term: std::sync::atomic::AtomicU64::new(0),
            disk: Arc::new(crate::storage::disk::DiskGuard::new(
                &opts.data_dir,
                opts.min_free_disk,
            )),
            request_timeout: opts.request_timeout,
            heartbeat: opts.heartbeat,
            keep_log_bytes: opts.keep_log_bytes,
            restart_floor: (open_term, live_after),
        });
        node.form_cluster(&opts).await?;
        Ok(node)
    }

    /// A fresh node that belongs to the initial membership initializes it. Every member
    /// may do so with the same membership; openraft refuses (harmlessly) once a node has
    /// a log or a vote, so restarts and late starters simply rejoin.
    async fn form_cluster(&self, opts: &NodeOptions) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = if opts.peers.is_empty() {
            BTreeMap::from([(opts.id, BasicNode::new(&opts.advertise))])
        } else if opts.peers.contains_key(&opts.id) {
            opts.peers
                .iter()
                .map(|(id, addr)| {
                    let addr =
                        MemberAddr::parse(addr).map_or_else(|_| addr.clone(), |a| a.encode());
                    (*id, BasicNode::new(addr))
                })
                .collect()
        } else {
            tracing::info!(
                node_id = opts.id,
                "not in --peers: waiting to be added with Admin.AddNode"
            );
            return Ok(());
        };
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!(node_id = opts.id, "initialized cluster membership"),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(node_id = opts.id, reason = %e, "cluster already formed")
            }
            Err(e) => return Err(anyhow::anyhow!("initializing cluster: {e}")),
        }
        Ok(())
    }

    /// The proposer's task, for the server to supervise (once).
    pub fn take_proposer_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.proposer_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// True when this node is the leader.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The membership string (`CLIENT/PEER`) of node `id`.
    fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// The peer address of node `id` (forwarded writes, read indexes).
    fn node_addr(&self, id: NodeId) -> Option<String> {
        self.member_addr(id).map(|a| MemberAddr::peer_of(&a))
    }

    /// Resolves when the Raft core has stopped with a fatal error.
    pub async fn fatal(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow_and_update().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "raft metrics channel closed".into();
            }
        }
    }

    /// The leader's public (client) address, for membership calls that must run on
    /// the leader.
    pub fn leader_addr(&self) -> Option<String> {
        self.leader()
            .and_then(|l| self.member_addr(l))
            .map(|a| MemberAddr::client_of(&a))
    }

    /// Replicated time as this node estimates it now (Unix ms): for decisions taken
    /// outside the log (validation horizons, due webhooks, metrics).
    pub fn now_ms(&self) -> u64 {
        self.time.now_ms()
    }

    /// The data dir's free-space guard (enqueues are refused while the disk is nearly
    /// full).
    pub fn disk(&self) -> &Arc<crate::storage::disk::DiskGuard> {
        &self.disk
    }

    /// This node's wall clock minus its estimate of replicated time now (ms).
    pub fn clock_skew_ms(&self) -> i64 {
        self.time.skew_ms()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// A consistent read view of the applied state, as of the last applied batch (not
    /// linearizable by itself: see [`RaftNode::read_barrier`]).
    pub fn view(&self) -> super::state_machine::ReadView {
        self.read_side.read()
    }

    /// Returns once read views include every entry applied before the call.
    pub async fn caught_up(&self) {
        self.read_side.caught_up().await
    }

    /// Handles a long-polling Lease waits on, one per queue (see
    /// [`ReadSide::watch_queues`]).
    pub fn watch_queues(&self, queues: &[String]) -> Vec<Arc<tokio::sync::Notify>> {
        self.read_side.watch_queues(queues)
    }

    /// Makes `observer` the consumer of the job transitions of every batch applied from
    /// now on (see [`crate::queue::Transition`]).
    pub fn observe_transitions(&self, observer: super::state_machine::TransitionObserver) {
        self.read_side.observe_transitions(observer)
    }

    /// A read transaction of the store and the index it is at: what a backup streams.
    pub fn backup_view(&self) -> Result<(redb::ReadTransaction, u64), String> {
        let (txn, applied) = self.read_side.backup_view()?;
        Ok((txn, applied.map_or(0, |l| l.index)))
    }

    /// Index of the last applied entry that read views include.
    pub fn applied_index(&self) -> u64 {
        *self.read_side.applied_index.borrow()
    }

    /// Peer connections: TLS reloads go through them, and tests cut links with them.
    pub fn peers(&self) -> &Arc<PeerPool> {
        &self.pool
    }

    /// Streams opened to forward writes to a leader since start (tests: concurrent
    /// writes on a follower share one).
    pub fn forwarding_streams_opened(&self) -> u64 {
        self.forwarder.streams_opened()
    }

    /// Reports every log append commit's duration to `observer` (metrics).
    pub fn observe_fsync(&self, observer: super::log_store::FsyncObserver) {
        self.log.observe_fsync(observer)
    }

    /// Stops Raft (graceful shutdown).
    pub async fn shutdown_raft(&self) {
        let _ = self.raft.shutdown().await;
    }
}
