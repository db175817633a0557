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
//! Durability comes from the Raft log: the store commits without fsync, and after a
//! crash it is at its last durable commit, from which openraft re-applies the committed
//! log. Memory holds no job: redb's page cache is bounded (`CACHE_BYTES`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, WriteTransaction,
};
use tokio::sync::{watch, Notify};

use super::snapshot::{self, Dump, SnapshotData};
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::queue::{Outcome, Reply, State};
use crate::storage::tables::{create_all, DiskTables, Handles};
use crate::storage::{read_err, write_err};

/// redb page cache of the state store: what memory the job tables may take.
const CACHE_BYTES: usize = 256 << 20;
/// Longest time between durable commits of the store (bounds what a restart replays,
/// and lets redb reuse the pages freed by non-durable commits).
const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// `sm_meta` key of the last applied log id.
pub const APPLIED_KEY: &[u8] = b"applied";
const MEMBERSHIP_KEY: &[u8] = b"membership";

type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

/// The queue state as one read transaction sees it.
pub struct ReadView {
    /// The queue state (reads only).
    pub state: State<DiskTables<ReadOnlyTable<&'static [u8], &'static [u8]>>>,
    /// Last applied log id in this view.
    pub last_applied: Option<LogId>,
}

/// The store as API handlers see it: consistent read views and apply notifications.
pub struct Shared {
    db: RwLock<Arc<Database>>,
    /// Bumped after every applied batch; long-polling leases wait on it.
    pub applied: Notify,
    /// Index of the last applied entry.
    pub applied_index: watch::Sender<u64>,
}

impl Shared {
    fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A read view as of the last applied batch. A storage failure yields an empty
    /// view and is logged; the store is then failing for every caller.
    pub fn read(&self) -> ReadView {
        match self.try_read() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "state store read failed");
                empty_view()
            }
        }
    }

    /// A read transaction of the store as of the last applied batch, and the log id it
    /// is at: what a backup streams (`raft::snapshot::dump_to`).
    pub fn backup_view(&self) -> Result<(ReadTransaction, Option<LogId>), String> {
        let txn = self.db().begin_read().map_err(|e| e.to_string())?;
        let applied = view_of(&txn)?.last_applied;
        Ok((txn, applied))
    }

    fn try_read(&self) -> Result<ReadView, String> {
        let txn = self.db().begin_read().map_err(|e| e.to_string())?;
        view_of(&txn)
    }
}

fn view_of(txn: &ReadTransaction) -> Result<ReadView, String> {
    let h = Handles::open(|def| txn.open_table(def)).map_err(|e| e.to_string())?;
    let tables = DiskTables::new(h);
    let last_applied = tables.meta_get(APPLIED_KEY).flatten();
    if let Some(e) = tables.error() {
        return Err(e);
    }
    Ok(ReadView {
        state: State::over(tables),
        last_applied,
    })
}

/// An empty view, for callers of a store that cannot be read (after an I/O failure,
/// which is logged): they see no jobs rather than a panic.
fn empty_view() -> ReadView {
    let scratch = redb::Builder::new()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .ok()
        .filter(|db| create_all(db).is_ok());
    let view = scratch
        .and_then(|db| db.begin_read().ok())
        .and_then(|txn| view_of(&txn).ok());
    view.expect("an in-memory redb database can always be created and read")
}

/// The current snapshot: its meta and its data (a read transaction, written out as a
/// stream when a follower needs it).
struct Current {
    meta: Meta,
    dump: Arc<Dump>,
}

/// The openraft state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    dir: PathBuf,
    current: Arc<Mutex<Option<Current>>>,
    last_durable: Arc<Mutex<Instant>>,
    snapshot_seq: Arc<AtomicU64>,
}

fn open_store(path: &Path) -> anyhow::Result<Database> {
    use anyhow::Context;
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .with_context(|| format!("opening the state store {}", path.display()))?;
    create_all(&db).with_context(|| format!("creating tables in {}", path.display()))?;
    Ok(db)
}

impl StateMachineStore {
    /// Opens (or creates) the state store in `dir`, cleaning up what an install that
    /// died half way left behind.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let old_format = dir.join("snapshot.redb");
        let path = dir.join("state.redb");
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
        let db = open_store(&path)?;
        crate::storage::format::check_state(&db)?;
        let applied = {
            let txn = db.begin_read()?;
            view_of(&txn)
                .map_err(anyhow::Error::msg)?
                .last_applied
                .map_or(0, |l| l.index)
        };
        Ok(Self {
            shared: Arc::new(Shared {
                db: RwLock::new(Arc::new(db)),
                applied: Notify::new(),
                applied_index: watch::channel(applied).0,
            }),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(None)),
            last_durable: Arc::new(Mutex::new(Instant::now())),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The handle API handlers read through.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("snapshot-tmp")
    }

    /// Commits an empty transaction durably: every earlier non-durable commit is on
    /// disk once it returns.
    fn make_durable(&self, db: &Database) -> anyhow::Result<()> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        txn.commit()?;
        *self.last_durable.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(())
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
        let db = self.shared.db();
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

fn installing_path(dir: &Path) -> PathBuf {
    dir.join("state.redb.installing")
}

fn applied_of(txn: &ReadTransaction) -> anyhow::Result<(Option<LogId>, Membership)> {
    let h = Handles::open(|def| txn.open_table(def))?;
    let t = DiskTables::new(h);
    let applied = t.meta_get(APPLIED_KEY).flatten();
    let membership = t.meta_get(MEMBERSHIP_KEY).unwrap_or_default();
    match t.error() {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => Ok((applied, membership)),
    }
}

/// Applies `entries` in one write transaction; returns the replies and the last
/// applied index.
fn apply_batch(
    txn: &WriteTransaction,
    entries: Vec<Entry>,
) -> Result<(Vec<Reply>, Option<u64>), String> {
    let h = Handles::open(|def| txn.open_table(def)).map_err(|e| e.to_string())?;
    let mut tables = DiskTables::new(h);
    let mut membership: Option<Membership> = None;
    let mut last: Option<LogId> = None;
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        last = Some(entry.log_id);
        let reply = match entry.payload {
            EntryPayload::Blank => Ok(Outcome::Ticked),
            EntryPayload::Normal(env) => {
                let mut state = State::over(tables);
                let reply = state.apply(&env);
                tables = state.into_tables();
                reply
            }
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                Ok(Outcome::Ticked)
            }
        };
        replies.push(reply);
    }
    tables.flush();
    tables.meta_put(APPLIED_KEY, &last);
    if let Some(m) = &membership {
        tables.meta_put(MEMBERSHIP_KEY, m);
    }
    match tables.error() {
        Some(e) => Err(e),
        None => Ok((replies, last.map(|l| l.index))),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.shared.db();
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
        let db = self.shared.db();
        let txn = db.begin_read().map_err(read_err)?;
        applied_of(&txn).map_err(read_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.shared.db();
        let durable = self
            .last_durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= DURABLE_EVERY;
        let (replies, last_index) = tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write()?;
            let durability = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            txn.set_durability(durability)?;
            // Durable commits save redb's allocator state, so that opening the store
            // after a crash does not walk the whole database (seconds at 10M jobs).
            txn.set_quick_repair(durable);
            let out = match apply_batch(&txn, entries) {
                Ok(out) => out,
                Err(e) => {
                    let _ = txn.abort();
                    anyhow::bail!(e);
                }
            };
            txn.commit()?;
            Ok(out)
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        if durable {
            *self.last_durable.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        if let Some(i) = last_index {
            self.shared.applied_index.send_replace(i);
        }
        self.shared.applied.notify_waiters();
        Ok(replies)
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
        let current_applied = self.applied_state().await?.0;
        if meta.last_log_id <= current_applied {
            tracing::info!(
                snapshot_id = %meta.snapshot_id,
                "ignored a snapshot that is not newer than the applied state"
            );
            return Ok(());
        }
        let file = snapshot.into_file().await.map_err(write_err)?;
        let dir = self.dir.clone();
        let installing = installing_path(&dir);
        let new_meta = meta.clone();
        let started = Instant::now();
        let (db, records) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            if installing.exists() {
                std::fs::remove_file(&installing)?;
            }
            let records = {
                let db = open_store(&installing)?;
                let records = snapshot::load(file, &db)?;
                // The stream carries the leader's applied id and membership; record the
                // meta openraft installs, which is the same point.
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                txn.set_quick_repair(true);
                {
                    let h = Handles::open(|def| txn.open_table(def))?;
                    let mut t = DiskTables::new(h);
                    t.meta_put(APPLIED_KEY, &new_meta.last_log_id);
                    t.meta_put(MEMBERSHIP_KEY, &new_meta.last_membership);
                    if let Some(e) = t.error() {
                        anyhow::bail!(e);
                    }
                }
                txn.commit()?;
                records
            };
            let path = dir.join("state.redb");
            std::fs::rename(&installing, &path)?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok((open_store(&path)?, records))
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(db);
        let current = {
            let db = self.shared.db();
            let txn = db.begin_read().map_err(read_err)?;
            Current {
                meta: meta.clone(),
                dump: Dump::new(Arc::new(txn), &self.tmp_dir(), &meta.snapshot_id),
            }
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(current);
        let index = meta.last_log_id.map_or(0, |l| l.index);
        self.shared.applied_index.send_replace(index);
        self.shared.applied.notify_waiters();
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "installed snapshot"
        );
        Ok(())
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
                let c = self.snapshot_now(&self.shared.db()).map_err(read_err)?;
                self.set_current(&c);
                c
            }
            Some(c) => c,
            None => {
                // After a restart: the store as it is now, which is durable (it is what
                // was read back from disk) and no older than anything purged.
                let c = self.snapshot_now(&self.shared.db()).map_err(read_err)?;
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry as RaftEntry};

    use super::*;
    use crate::queue::{Command, Due, Envelope, NewJob, Retention};

    fn enqueue(index: u64) -> Entry {
        let job = NewJob {
            id: format!("job-{index}"),
            queue: "q".into(),
            job_type: "t".into(),
            payload: bytes::Bytes::from(vec![7u8; 100]),
            headers: Default::default(),
            priority: 0,
            due: Due::After(0),
            max_attempts: 3,
            idempotency_key: String::new(),
            dedup_window_ms: 1000,
            retention: Retention {
                result_ttl_ms: 60_000,
                failure_ttl_ms: 60_000,
            },
            webhook_url: String::new(),
        };
        RaftEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Envelope {
                now_ms: index,
                cmd: Command::Enqueue(vec![job]),
            }),
        }
    }

    async fn store_with(dir: &Path, entries: u64) -> StateMachineStore {
        let mut sm = StateMachineStore::open(dir).unwrap();
        sm.apply((1..=entries).map(enqueue)).await.unwrap();
        sm
    }

    fn jobs(sm: &StateMachineStore) -> u64 {
        sm.shared().read().state.job_count()
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut old = store_with(dirs[0].path(), 10).await;
        let mut new = store_with(dirs[1].path(), 20).await;
        let old_snap = old.build_snapshot().await.unwrap();
        let new_snap = new.build_snapshot().await.unwrap();

        let mut c = StateMachineStore::open(dirs[2].path()).unwrap();
        c.install_snapshot(&new_snap.meta, new_snap.snapshot)
            .await
            .unwrap();
        assert_eq!(jobs(&c), 20);
        // The older one arrives late (a build or an install that raced): ignored.
        c.install_snapshot(&old_snap.meta, old_snap.snapshot)
            .await
            .unwrap();
        assert_eq!(jobs(&c), 20);
        assert_eq!(c.applied_state().await.unwrap().0.unwrap().index, 20);
        // A build that began before the install and finishes after it does not replace it.
        let stale = old.snapshot_now(&old.shared.db()).unwrap();
        c.set_current(&stale);
        let current = c.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.unwrap().index, 20);

        // Restart: the installed state is what the store holds.
        drop(c);
        let mut c = StateMachineStore::open(dirs[2].path()).unwrap();
        assert_eq!(jobs(&c), 20);
        let current = c.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.unwrap().index, 20);
    }

    #[tokio::test]
    async fn an_install_that_died_half_way_leaves_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let sm = store_with(dir.path(), 5).await;
        drop(sm);
        // What a crash during install leaves: a partial new store beside the old one.
        std::fs::write(installing_path(dir.path()), b"partial").unwrap();
        let sm = StateMachineStore::open(dir.path()).unwrap();
        assert_eq!(jobs(&sm), 5);
        assert!(!installing_path(dir.path()).exists());
    }
}
