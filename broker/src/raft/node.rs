//! [`RaftNode`]: what the API layer sees of Raft. It proposes commands (forwarding them
//! to the leader when this node is a follower), makes reads linearizable, reports
//! cluster status, and changes membership.
//!
//! The leader stamps `now_ms` into each entry it proposes from [`ReplicatedTime`] (see
//! `time.rs`): the queue core never reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::addr::MemberAddr;
use super::log_store::LogStore;
use super::network::{Network, PeerPool};
use super::state_machine::{Shared, StateMachineStore};
use super::time::ReplicatedTime;
use super::types::{NodeId, Raft};
use crate::error::BrokerError;
use crate::queue::{Command, Outcome, Reply};
use crate::storage::{decode, encode};
use taskraft_proto::raft::RaftMessage;

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

/// Errors a leader sends back to a forwarding follower.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerError {
    /// The receiver is not the leader (any more).
    NotLeader,
    /// The write did not complete in time or the cluster cannot serve.
    Unavailable(String),
}

/// A running Raft node and the shared queue state it applies into.
pub struct RaftNode {
    /// This node's id.
    pub id: NodeId,
    /// The openraft handle.
    pub raft: Raft,
    /// The applied queue state (read side).
    pub shared: Arc<Shared>,
    /// The log store (for size reporting).
    pub log: LogStore,
    /// Peer connections (also the test router that can cut links).
    pub pool: Arc<PeerPool>,
    proposer: super::proposer::Proposer,
    /// The proposer's task, until the server takes it to watch it.
    proposer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Replicated time as this node knows it.
    time: Arc<ReplicatedTime>,
    /// Free space of the data dir.
    disk: Arc<crate::storage::disk::DiskGuard>,
    request_timeout: Duration,
    heartbeat: Duration,
}

/// True when a peer call failed before the request could reach the peer (connection
/// refused, link cut), so retrying it elsewhere cannot apply it twice.
pub(crate) fn never_sent(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        && (s.message().contains("tcp connect error")
            || s.message().contains("error trying to connect"))
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
        let log = LogStore::open_with(&opts.data_dir.join("raft-log.redb"), opts.verify_on_start)?;
        let sm = StateMachineStore::open_with(&opts.data_dir, opts.verify_on_start)?;
        let shared = sm.shared();
        // Entries past the log's end now are appended while this process runs: applying
        // one anchors replicated time (see time.rs).
        let live_after = {
            let mut log = log.clone();
            openraft::storage::RaftLogStorage::get_log_state(&mut log)
                .await?
                .last_log_id
                .map_or(0, |l| l.index)
        };
        let stored_ms = shared.read().state.now_ms();
        let time = Arc::new(ReplicatedTime::new(
            opts.clock.clone(),
            stored_ms,
            live_after,
        ));
        let sm = sm.with_time(time.clone());
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
            shared,
            log,
            pool,
            time,
            disk: Arc::new(crate::storage::disk::DiskGuard::new(
                &opts.data_dir,
                opts.min_free_disk,
            )),
            request_timeout: opts.request_timeout,
            heartbeat: opts.heartbeat,
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

    /// Waits (until `deadline`) for some leader to be known.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<NodeId, BrokerError> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Some(l) = m.current_leader {
                    return Ok(l);
                }
                if m.membership_config
                    .membership()
                    .get_node(&self.id)
                    .is_none()
                {
                    return Err(BrokerError::Unavailable(format!(
                        "node {} is not a member of a cluster yet: add it with Admin.AddNode on a cluster member",
                        self.id
                    )));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(BrokerError::Unavailable("raft is shutting down".into())),
                Err(_) => {
                    return Err(BrokerError::Unavailable(format!(
                        "no leader within {:?}: is a majority of the cluster up, and is node {} a member?",
                        self.request_timeout, self.id
                    )))
                }
            }
        }
    }

    /// Proposes a command and returns its outcome once it is committed and applied.
    /// Followers forward it to the leader.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, BrokerError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_for_leader(deadline).await?;
            let attempt = if leader == self.id {
                self.propose_local(cmd.clone(), deadline).await
            } else {
                self.forward(leader, &cmd, deadline).await
            };
            match attempt {
                Ok(reply) => return reply.map_err(BrokerError::Core),
                Err(PeerError::NotLeader) => {
                    // Not proposed anywhere: safe to retry once leadership settles.
                    if Instant::now() >= deadline {
                        return Err(BrokerError::Unavailable(
                            "leadership kept changing; retry".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(PeerError::Unavailable(msg)) => return Err(BrokerError::Unavailable(msg)),
            }
        }
    }

    /// Proposes on this node, which believes it leads (batched with concurrent
    /// proposals, see `proposer.rs`).
    pub async fn propose_local(&self, cmd: Command, deadline: Instant) -> Result<Reply, PeerError> {
        self.proposer.propose(cmd, deadline).await
    }

    async fn forward(
        &self,
        leader: NodeId,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<Reply, PeerError> {
        let addr = self.node_addr(leader).ok_or(PeerError::NotLeader)?;
        let mut client = self.pool.client(&addr).map_err(|_| PeerError::NotLeader)?;
        let data = encode(cmd).map_err(|e| PeerError::Unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(RaftMessage { data: data.into() });
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = client.propose(req).await.map_err(|s| {
            if never_sent(&s) {
                // The leader is gone and nothing was sent: wait for the next one.
                PeerError::NotLeader
            } else {
                PeerError::Unavailable(format!(
                    "forwarding to leader {leader} at {addr} failed: {}; the write may or may not have applied",
                    s.message()
                ))
            }
        })?;
        decode::<Result<Reply, PeerError>>(&reply.into_inner().data)
            .map_err(|e| PeerError::Unavailable(e.to_string()))?
    }

    /// Returns once this node's applied state includes every write committed before the
    /// call (a linearizable read barrier). Followers ask the leader for its read index.
    pub async fn read_barrier(&self) -> Result<(), BrokerError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_for_leader(deadline).await?;
            let index = if leader == self.id {
                self.leader_read_index(deadline).await
            } else {
                self.remote_read_index(leader, deadline).await
            };
            match index {
                Ok(index) => return self.wait_applied(index, deadline).await,
                Err(PeerError::NotLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(PeerError::NotLeader) => {
                    return Err(BrokerError::Unavailable(
                        "leadership kept changing; retry".into(),
                    ))
                }
                Err(PeerError::Unavailable(m)) => return Err(BrokerError::Unavailable(m)),
            }
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the index a read
    /// must observe.
    pub async fn leader_read_index(&self, deadline: Instant) -> Result<u64, PeerError> {
        match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
            Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(PeerError::NotLeader)
            }
            Ok(Err(e)) => Err(PeerError::Unavailable(format!("read barrier failed: {e}"))),
            Err(_) => Err(PeerError::Unavailable(
                "leader could not confirm a quorum in time".into(),
            )),
        }
    }

    async fn remote_read_index(&self, leader: NodeId, deadline: Instant) -> Result<u64, PeerError> {
        let addr = self.node_addr(leader).ok_or(PeerError::NotLeader)?;
        let mut client = self.pool.client(&addr).map_err(|_| PeerError::NotLeader)?;
        let mut req = tonic::Request::new(RaftMessage::default());
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = client.read_index(req).await.map_err(|s| {
            if never_sent(&s) {
                PeerError::NotLeader
            } else {
                PeerError::Unavailable(format!(
                    "read index from leader {leader} failed: {}",
                    s.message()
                ))
            }
        })?;
        decode::<Result<u64, PeerError>>(&reply.into_inner().data)
            .map_err(|e| PeerError::Unavailable(e.to_string()))?
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), BrokerError> {
        let mut rx = self.shared.applied_index.subscribe();
        loop {
            if *rx.borrow_and_update() >= index {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(BrokerError::Unavailable(format!(
                        "node {} did not catch up to index {index} in time",
                        self.id
                    )))
                }
            }
        }
    }

    /// Adds a node as a learner, waits for it to catch up, then makes it a voter.
    ///
    /// A node that is already a learner at the same address is not added again: every
    /// `add_learner` appends a membership entry, which restarts replication to it, so a
    /// caller retrying AddNode while a big snapshot is on its way would restart the
    /// transfer each time and the learner would never catch up. Instead the call waits
    /// (up to the request timeout) for it and answers UNAVAILABLE ("call again") if it
    /// is still behind.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<(), BrokerError> {
        let existing = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let is_learner = membership.learner_ids().any(|l| l == id);
            is_learner.then(|| membership.get_node(&id).map(|n| n.addr.clone()))
        };
        match existing {
            Some(Some(known)) if known == addr => self.wait_learner_caught_up(id).await?,
            _ => {
                let r = self.raft.add_learner(id, BasicNode::new(addr), true).await;
                self.membership_result(r)?;
            }
        }
        let r = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await;
        self.membership_result(r)
    }

    /// Waits until learner `id` has replicated the leader's log (within a few entries),
    /// for at most the request timeout.
    async fn wait_learner_caught_up(&self, id: NodeId) -> Result<(), BrokerError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                let last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map_or(0, |l| l.index);
                if matched + 10 >= last {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(BrokerError::Unavailable(format!(
                    "node {id} is a learner still catching up (by snapshot or log); call AddNode again to wait for it"
                )));
            }
        }
    }

    /// Removes a node from the voters and the cluster in one membership change
    /// (`retain = false` drops it as a learner too).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), BrokerError> {
        let is_voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let r = self.raft.change_membership(change, false).await;
        self.membership_result(r)
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

    fn membership_result<T>(
        &self,
        r: Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    ) -> Result<(), BrokerError> {
        match r {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(BrokerError::Unavailable(format!(
                    "node {} is not the leader (leader: {:?}); membership changes run on the leader",
                    self.id, f.leader_id
                )))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(BrokerError::FailedPrecondition(e.to_string()))
            }
            Err(e) => Err(BrokerError::Unavailable(e.to_string())),
        }
    }

    /// The leader's public (client) address, for membership calls that must run on
    /// the leader.
    pub fn leader_addr(&self) -> Option<String> {
        self.leader()
            .and_then(|l| self.member_addr(l))
            .map(|a| MemberAddr::client_of(&a))
    }

    /// Proposes a `Tick` whenever something is due and this node leads, so that due
    /// jobs, expired leases and retention move without other traffic. While a tick
    /// leaves work due (each entry moves a bounded number of jobs), the next one follows
    /// at once instead of waiting for the period.
    pub async fn run_ticker(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            while self.is_leader() && self.tick_due() {
                let deadline = Instant::now() + self.request_timeout;
                if let Err(e) = self.propose_local(Command::Tick, deadline).await {
                    tracing::debug!(error = ?e, "tick not applied");
                    break;
                }
            }
        }
    }

    /// Takes a snapshot (and so purges the log behind it) after `every` entries, after
    /// [`SNAPSHOT_LOG_BYTES`] of appended log, or when entries came in and the last one
    /// is older than `max_age`. A snapshot is cheap (a durable commit of the state
    /// store), and it is what keeps the log file small after bursts of big entries.
    ///
    /// Not while this leader has a follower behind its last snapshot (for at most
    /// [`SNAPSHOT_HOLD_MAX`], so that a node that is down does not make the log grow
    /// forever): that follower is being sent the snapshot (a minute for 10M jobs) or the
    /// log right after it, and a new snapshot would purge that log, so after installing
    /// it would need yet another snapshot, and so on for as long as writes come in.
    pub async fn run_compactor(self: Arc<Self>, every: u64, max_age: Duration) {
        let mut last = Instant::now();
        let mut behind_since: Option<Instant> = None;
        let mut bytes_at_last = self.log.appended_bytes();
        let mut interval = tokio::time::interval(
            (max_age / 4).clamp(Duration::from_millis(100), Duration::from_millis(500)),
        );
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let (applied, snap, follower_behind) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let snap = m.snapshot.map_or(0, |l| l.index);
                let behind = m.replication.as_ref().is_some_and(|r| {
                    r.values()
                        .any(|matched| matched.map_or(0, |l| l.index) < snap)
                });
                (m.last_applied.map_or(0, |l| l.index), snap, behind)
            };
            let held = match (follower_behind, behind_since) {
                (false, _) => {
                    behind_since = None;
                    false
                }
                (true, None) => {
                    behind_since = Some(Instant::now());
                    true
                }
                (true, Some(t)) => t.elapsed() < SNAPSHOT_HOLD_MAX,
            };
            let bytes = self.log.appended_bytes();
            let due = applied > snap
                && (applied - snap >= every
                    || last.elapsed() >= max_age
                    || bytes - bytes_at_last >= SNAPSHOT_LOG_BYTES);
            if due && !held {
                last = Instant::now();
                bytes_at_last = bytes;
                if let Err(e) = self.raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "could not trigger a snapshot");
                }
            } else if applied == snap {
                last = Instant::now();
                bytes_at_last = bytes;
            }
        }
    }

    /// The leader lease of this cluster: followers refuse to vote for this long after
    /// they last heard from a leader (openraft's `election_timeout_max`).
    pub fn leader_lease(&self) -> Duration {
        self.heartbeat * 8
    }

    /// On a leader: the voter whose log is furthest along (lowest id on a tie), with its
    /// address, to hand leadership to; waits up to `within` for one that has the whole
    /// log. None on a follower or a one-voter cluster.
    pub async fn successor(&self, within: Duration) -> Option<(NodeId, String)> {
        let deadline = Instant::now() + within;
        let mut rx = self.raft.metrics();
        loop {
            let best = {
                let m = rx.borrow_and_update();
                if m.state != ServerState::Leader {
                    return None;
                }
                let last = m.last_log_index.unwrap_or(0);
                let membership = m.membership_config.membership();
                let best = m
                    .replication
                    .as_ref()?
                    .iter()
                    .filter(|(id, _)| **id != self.id && membership.voter_ids().any(|v| v == **id))
                    .map(|(id, matched)| (matched.map_or(0, |l| l.index), *id))
                    .max_by_key(|(matched, id)| (*matched, std::cmp::Reverse(*id)))?;
                let addr = membership.get_node(&best.1)?.addr.clone();
                (best.0, last, best.1, addr)
            };
            let (matched, last, id, addr) = best;
            if matched >= last
                || tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .map_or(true, |r| r.is_err())
            {
                return Some((id, addr));
            }
        }
    }

    /// Asks node `to` (at `addr`) to campaign now that this leader stops. Called after
    /// this node's Raft has shut down, so no heartbeat renews the followers' lease.
    pub async fn hand_off(&self, to: NodeId, addr: &str) -> Result<(), String> {
        // The membership holds `CLIENT/PEER`: Campaign is a peer call.
        let mut client = self.pool.client(&MemberAddr::peer_of(addr))?;
        let data = encode(&self.id).map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(RaftMessage { data: data.into() });
        req.set_timeout(Duration::from_secs(1));
        client
            .campaign(req)
            .await
            .map_err(|s| format!("asking node {to} at {addr} to campaign: {}", s.message()))?;
        Ok(())
    }

    /// Leadership hand-off, on the follower: `old_leader` has stopped. openraft 0.9 has
    /// no transfer call, and voters refuse a candidate for a leader lease (8 heartbeats)
    /// after they last heard from the leader. So this node waits out most of that
    /// lease, then starts an election every half heartbeat until some other leader is
    /// known or it leads: it wins as soon as the lease runs out (its log is complete:
    /// the old leader chose it for that), instead of after the lease plus a random
    /// election timeout (4-8 heartbeats more).
    pub async fn campaign(self: Arc<Self>, old_leader: NodeId) {
        let deadline = Instant::now() + self.leader_lease() * 3;
        tracing::info!(
            node_id = self.id,
            old_leader,
            "leader is stopping: campaigning to take over"
        );
        // The voters' lease began at the old leader's last heartbeat, shortly before this
        // request: no election can succeed before about a lease minus a heartbeat.
        tokio::time::sleep(self.leader_lease().saturating_sub(self.heartbeat)).await;
        let mut elections = 0u32;
        while Instant::now() < deadline {
            {
                let m = self.raft.metrics();
                let m = m.borrow();
                if m.state == ServerState::Leader
                    || m.current_leader.is_some_and(|l| l != old_leader)
                {
                    tracing::info!(
                        node_id = self.id,
                        leader = ?m.current_leader,
                        elections,
                        "leadership handed off"
                    );
                    return;
                }
            }
            if self.raft.trigger().elect().await.is_err() {
                return;
            }
            elections += 1;
            tokio::time::sleep(self.heartbeat / 2).await;
        }
        tracing::warn!(
            node_id = self.id,
            "hand-off: not elected in time; the cluster elects as usual"
        );
    }

    fn tick_due(&self) -> bool {
        self.shared
            .read()
            .state
            .next_wakeup_ms()
            .is_some_and(|t| t <= self.time.now_ms())
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

    /// This node's wall clock minus replicated time when it last stamped an entry (ms).
    pub fn clock_skew_ms(&self) -> i64 {
        self.time.skew_ms()
    }
}
