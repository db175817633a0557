//! The Raft state machine: the queue core over its tables in `state.redb`.
//!
//! ```text
//!  apply(entries) ─► one redb write txn: State::apply per entry, last applied log id,
//!                    membership ─► commit without fsync (durable every second, and
//!                    before a snapshot is reported: the log can only be purged behind
//!                    what the store holds durably)
//!  readers (API)  ─► a read txn each: a consistent view as of the last applied batch
//!  snapshot       ─► a read txn held as the current snapshot; written out as a record
//!                    stream only when a follower needs it (`snapshot.rs`)
//!  install        ─► load the stream into state.redb.installing, rename it over
//!                    state.redb: a crash half way leaves the old state as it was
//! ```
//!
//! Files: `read.rs` (views and Lease waiters), `writer.rs` (apply into the open write
//! transaction, commits), `install.rs` (snapshot install), `open.rs` (open, integrity
//! check, format stamp); this file holds the store and openraft's traits.
//!
//! Durability comes from the Raft log: the store commits without fsync, and after a
//! crash it is at its last durable commit, from which openraft re-applies the committed
//! log. Memory holds no job: redb's page cache is bounded (`CACHE_BYTES`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, WriteTransaction};
use tokio::sync::{watch, Notify};

use super::snapshot::{self, Dump, SnapshotData};
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::queue::{Outcome, Reply, State, Transition};
use crate::storage::tables::{create_all, DiskTables, Handles, LazyTable};
use crate::storage::{read_err, write_err};

mod install;
mod open;
mod read;
#[cfg(test)]
mod tests;
mod writer;

use install::installing_path;
use open::{applied_of, open_store};
pub use read::{ReadSide, ReadView, TransitionObserver};
use writer::Writer;

/// redb page cache of the state store: what memory the job tables may take.
const CACHE_BYTES: usize = 256 << 20;
/// Longest time between durable commits of the store (bounds what a restart replays,
/// and lets redb reuse the pages freed by non-durable commits).
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Longest time applied entries wait in the open write transaction before it is
/// committed and readers see them (see [`Writer`]).
const COMMIT_EVERY: Duration = Duration::from_millis(3);

/// A wake count meaning "every waiter of the queue" (a resumed queue).
const WAKE_ALL: u32 = u32::MAX;

/// `sm_meta` key of the last applied log id.
pub const APPLIED_KEY: &[u8] = b"applied";
/// `sm_meta` key of the store's format, [`FORMAT`].
const FORMAT_KEY: &[u8] = b"format";
/// Layout of the state tables (`storage/format.rs`). 2: jobs are listed once per queue
/// (`by_state` marker 0xff) and only dead jobs have a state index. 3: small payloads and
/// results live in the job record, and a lease call files its jobs' deadline once.
const FORMAT: u32 = crate::storage::format::STATE_FORMAT;
const MEMBERSHIP_KEY: &[u8] = b"membership";

type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

/// The current snapshot: its meta and its data (a read transaction, written out as a
/// stream when a follower needs it).
struct Current {
    meta: Meta,
    dump: Arc<Dump>,
}

/// The openraft state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    read_side: Arc<ReadSide>,
    dir: PathBuf,
    current: Arc<Mutex<Option<Current>>>,
    writer: Arc<Mutex<Writer>>,
    snapshot_seq: Arc<AtomicU64>,
    /// Told the time of every applied entry (it anchors replicated time on it).
    time: Option<Arc<super::time::ReplicatedTime>>,
    /// This node's id, when it runs in a node: entries another node proposed are
    /// applied without reading the leased jobs' payloads, since only the proposer
    /// answers a caller (see [`StateMachineStore::with_node_id`]).
    me: Option<NodeId>,
}

impl StateMachineStore {
    /// Opens (or creates) the state store in `dir`, cleaning up what an install that
    /// died half way left behind.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(dir, true)
    }

    /// [`StateMachineStore::open`], checking every page's checksum of the store first
    /// when `verify` is set (1-2 s per GiB).
    pub fn open_with(dir: &Path, verify: bool) -> anyhow::Result<Self> {
        use anyhow::Context;
        let old_format = dir.join("snapshot.redb");
        let path = dir.join(crate::storage::STATE_FILE);
        anyhow::ensure!(
            !old_format.exists() || path.exists(),
            "{} was written by an older taskraft that kept the whole state in one snapshot \
             value; this version keeps jobs in state.redb and cannot read it. Drain the node \
             (or rejoin it to the cluster with an empty data dir) before upgrading",
            old_format.display()
        );
        // Streams written for followers and receive files of an earlier run.
        let tmp = dir.join("snapshot-tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        let installing = installing_path(dir);
        if installing.exists() {
            std::fs::remove_file(&installing)
                .with_context(|| format!("removing {}", installing.display()))?;
        }
        let db = open_store(&path, verify)?;
        let applied = applied_of(&db.begin_read()?)?.0.map_or(0, |l| l.index);
        Ok(Self {
            read_side: Arc::new(ReadSide {
                db: RwLock::new(Arc::new(db)),
                waiters: Mutex::new(HashMap::new()),
                applied_index: watch::channel(applied).0,
                applied_latest: AtomicU64::new(applied),
                observer: OnceLock::new(),
            }),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(None)),
            writer: Arc::new(Mutex::new(Writer::new())),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            time: None,
            me: None,
        })
    }

    /// Reports each applied entry's time to `time`.
    pub fn with_time(mut self, time: Arc<super::time::ReplicatedTime>) -> Self {
        self.time = Some(time);
        self
    }

    /// Tells the store which node it runs in. Only the node that proposed an entry
    /// hands its reply to a caller; the others' replies are dropped, so they skip what
    /// only the reply needs (a `Lease`'s payloads: a read per job on every follower).
    pub fn with_node_id(mut self, me: NodeId) -> Self {
        self.me = Some(me);
        self
    }

    /// The handle API handlers read through.
    pub fn read_side(&self) -> Arc<ReadSide> {
        self.read_side.clone()
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("snapshot-tmp")
    }

    /// Commits an empty transaction durably: every earlier non-durable commit is on
    /// disk once it returns.
    fn make_durable(&self, db: &Database) -> anyhow::Result<()> {
        let mut w = self.lock_writer();
        if w.txn.is_none() {
            w.txn = Some(db.begin_write()?);
        }
        w.commit(&self.read_side, true)
    }

    /// Commits what is applied, so that read transactions see all of it.
    fn commit_applied(&self) -> anyhow::Result<()> {
        self.lock_writer().commit(&self.read_side, false)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the store as it is now: meta from the view itself.
    fn snapshot_now(&self, db: &Database) -> anyhow::Result<Current> {
        let txn = db.begin_read()?;
        let (last_applied, membership) = applied_of(&txn)?;
        let n = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("none-{n}"),
        };
        Ok(Current {
            dump: Dump::new(Arc::new(txn), &self.tmp_dir(), &snapshot_id),
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
        })
    }

    /// The log id of the membership the store has applied.
    fn applied_membership(&self) -> anyhow::Result<Option<LogId>> {
        self.commit_applied()?;
        let db = self.read_side.db();
        let txn = db.begin_read()?;
        Ok(*applied_of(&txn)?.1.log_id())
    }

    /// Makes `c` the current snapshot unless a newer one is already current (a snapshot
    /// installed while this one was being built).
    fn set_current(&self, c: &Current) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur
            .as_ref()
            .is_some_and(|old| old.meta.last_log_id > c.meta.last_log_id)
        {
            return;
        }
        *cur = Some(Current {
            meta: c.meta.clone(),
            dump: c.dump.clone(),
        });
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.read_side.db();
        let this = self.clone();
        let current = tokio::task::spawn_blocking(move || {
            this.make_durable(&db)?;
            this.snapshot_now(&db)
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        self.set_current(&current);
        tracing::info!(snapshot_id = %current.meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta: current.meta,
            snapshot: Box::new(SnapshotData::view(current.dump)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        self.commit_applied().map_err(write_err)?;
        let db = self.read_side.db();
        let txn = db.begin_read().map_err(read_err)?;
        applied_of(&txn).map_err(read_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        self.apply_entries(entries.into_iter().collect()).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(
            SnapshotData::receive(&self.tmp_dir()).map_err(write_err)?,
        ))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let existing = {
            let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            cur.as_ref().map(|c| Current {
                meta: c.meta.clone(),
                dump: c.dump.clone(),
            })
        };
        let current = match existing {
            // A membership change applied after the current snapshot (a node removed and
            // added back): a follower that installed the older one would believe it
            // still holds its old role (a voter, campaigning) until the log after it
            // arrived. Send the store as it is now instead; a view costs a read
            // transaction.
            Some(c)
                if *c.meta.last_membership.log_id()
                    < self.applied_membership().map_err(read_err)? =>
            {
                let c = self.snapshot_now(&self.read_side.db()).map_err(read_err)?;
                self.set_current(&c);
                c
            }
            Some(c) => c,
            None => {
                // After a restart: the store as it is now, which is durable (it is what
                // was read back from disk) and no older than anything purged.
                let c = self.snapshot_now(&self.read_side.db()).map_err(read_err)?;
                if c.meta.last_log_id.is_none() {
                    return Ok(None);
                }
                self.set_current(&c);
                c
            }
        };
        Ok(Some(Snapshot {
            meta: current.meta,
            snapshot: Box::new(SnapshotData::view(current.dump)),
        }))
    }
}
