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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
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
/// (`by_state` marker 0xff) and only dead jobs have a state index.
const FORMAT: u32 = crate::storage::format::STATE_FORMAT;
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
    /// Long-polling leases by the queues they wait for ([`Shared::watch_queues`]).
    waiters: Mutex<HashMap<String, Weak<Notify>>>,
    /// Index of the last applied entry that readers can see (committed to the store).
    pub applied_index: watch::Sender<u64>,
    /// Index of the last applied entry, which may still wait in the open transaction.
    applied_latest: AtomicU64,
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

    /// Returns once read views include every entry applied before the call (at most
    /// [`COMMIT_EVERY`] later): for a caller about to conclude from a view that
    /// something is absent, such as a `Lease` finding no job.
    pub async fn caught_up(&self) {
        let target = self.applied_latest.load(Ordering::Acquire);
        let mut rx = self.applied_index.subscribe();
        while *rx.borrow_and_update() < target {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// One handle per queue that a long-polling Lease waits on: a commit that files
    /// jobs as ready in a queue wakes one waiter of that queue per job, and a resumed
    /// queue wakes all of its waiters. Waiters of other queues sleep on (a thousand idle
    /// workers cost nothing while another queue is busy).
    pub fn watch_queues(&self, queues: &[String]) -> Vec<Arc<Notify>> {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Queues nobody waits on any more: dropped now and then, not on every call.
        if w.len() >= 4096 && w.len().is_power_of_two() {
            w.retain(|_, n| n.strong_count() > 0);
        }
        queues
            .iter()
            .map(|q| match w.get(q).and_then(Weak::upgrade) {
                Some(n) => n,
                None => {
                    let n = Arc::new(Notify::new());
                    w.insert(q.clone(), Arc::downgrade(&n));
                    n
                }
            })
            .collect()
    }

    /// Wakes the waiters of queues that gained ready jobs: as many as there are new
    /// jobs (at most 1,024 per queue and commit; [`WAKE_ALL`] wakes all of them).
    fn wake(&self, readied: HashMap<String, u32>) {
        if readied.is_empty() {
            return;
        }
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for (queue, jobs) in readied {
            let Some(n) = w.get(&queue).and_then(Weak::upgrade) else {
                continue;
            };
            if jobs == WAKE_ALL {
                n.notify_waiters();
            } else {
                for _ in 0..jobs.min(1024) {
                    n.notify_one();
                }
            }
        }
    }

    /// Wakes every waiter (after a snapshot replaced the whole state).
    fn wake_all(&self) {
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for n in w.values().filter_map(Weak::upgrade) {
            n.notify_waiters();
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
    writer: Arc<Mutex<Writer>>,
    snapshot_seq: Arc<AtomicU64>,
    /// Told the time of every applied entry (it anchors replicated time on it).
    time: Option<Arc<super::time::ReplicatedTime>>,
}

/// The write transaction that applied entries go into.
///
/// Committing a redb transaction costs a fixed amount (every touched B-tree path is
/// copied and written out) however little it holds, and under load openraft hands
/// `apply` a few entries at a time. So batches accumulate in one open transaction that
/// is committed at most [`COMMIT_EVERY`] after it was opened: by the next `apply` that
/// finds it old enough, or by a timer when no more entries come. Callers lose nothing
/// by the wait: a write's reply comes from `apply` itself, and readers go through
/// [`Shared::applied_index`], which moves only when a commit makes the entries visible
/// to read transactions (the read barrier waits for it). Every other writer of the
/// store (a durable commit for a snapshot, an install) commits the open transaction
/// first: redb allows one write transaction at a time.
struct Writer {
    txn: Option<WriteTransaction>,
    /// Jobs made ready by the entries in `txn`, by queue: woken at its commit.
    readied: HashMap<String, u32>,
    opened: Instant,
    /// Index of the last entry applied into `txn`.
    index: Option<u64>,
    /// A [`commit_timer`] is pending.
    timer_armed: bool,
    last_durable: Instant,
    /// A commit by the timer failed: the entries in it are lost to this process, so
    /// every later call fails (openraft then stops the node, and a restart applies
    /// them again from the log).
    failed: Option<String>,
}

impl Writer {
    fn new() -> Self {
        Self {
            txn: None,
            readied: HashMap::new(),
            opened: Instant::now(),
            index: None,
            timer_armed: false,
            last_durable: Instant::now(),
            failed: None,
        }
    }

    /// Commits the open transaction, if any (durably when `durable`, or when the last
    /// durable commit is [`DURABLE_EVERY`] old), and publishes its entries to readers.
    fn commit(&mut self, shared: &Shared, durable: bool) -> anyhow::Result<()> {
        if let Some(e) = &self.failed {
            anyhow::bail!("an earlier commit of applied entries failed: {e}");
        }
        let Some(mut txn) = self.txn.take() else {
            return Ok(());
        };
        let durable = durable || self.last_durable.elapsed() >= DURABLE_EVERY;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        // Durable commits save redb's allocator state, so that opening the store after a
        // crash does not walk the whole database (seconds at 10M jobs).
        txn.set_quick_repair(durable);
        txn.commit()?;
        if durable {
            self.last_durable = Instant::now();
        }
        if let Some(i) = self.index.take() {
            shared.applied_index.send_replace(i);
        }
        shared.wake(std::mem::take(&mut self.readied));
        Ok(())
    }
}

fn open_store(path: &Path, verify: bool) -> anyhow::Result<Database> {
    use anyhow::Context;
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(verify)
        .create(path)
        .map_err(|e| crate::storage::open_error(e, "the state store", path))?;
    create_all(&db).with_context(|| format!("creating tables in {}", path.display()))?;
    check_format(&db, path)?;
    Ok(db)
}

/// Stamps a new store with [`FORMAT`], converts a store of format 1 (written before
/// the stamp, with a state index entry for every job), and refuses a newer one. The
/// stamp is a little-endian u32 under `sm_meta` "format"; snapshot streams carry it.
fn check_format(db: &Database, path: &Path) -> anyhow::Result<()> {
    use redb::ReadableTable;
    let txn = db.begin_write()?;
    let (found, has_state) = {
        let meta = txn.open_table(crate::storage::tables::SM_META)?;
        let found = match meta.get(FORMAT_KEY)? {
            None => None,
            Some(v) => Some(u32::from_le_bytes(v.value().try_into().map_err(|_| {
                anyhow::anyhow!("{}: unreadable format stamp", path.display())
            })?)),
        };
        let has_state = meta.get(APPLIED_KEY)?.is_some();
        (found, has_state)
    };
    let format = found.unwrap_or(if has_state { 1 } else { FORMAT });
    anyhow::ensure!(
        format <= FORMAT,
        "{} is in state format {format}, written by a newer taskraft; this build reads \
         formats up to {FORMAT}. Run the newer version (downgrades are not supported)",
        path.display()
    );
    if format < FORMAT {
        let started = Instant::now();
        let jobs = crate::storage::tables::relist_jobs(&txn)?;
        tracing::info!(
            path = %path.display(),
            from = format,
            to = FORMAT,
            jobs,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "converted the state store"
        );
    }
    if found != Some(FORMAT) {
        txn.open_table(crate::storage::tables::SM_META)?
            .insert(FORMAT_KEY, FORMAT.to_le_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

impl StateMachineStore {
    /// Opens (or creates) the state store in `dir`, cleaning up what an install that
    /// died half way left behind.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(dir, true)
    }

    /// [`StateMachineStore::open`], checking every page's checksum of the store first
    /// when `verify` is set (about a second per GiB).
    pub fn open_with(dir: &Path, verify: bool) -> anyhow::Result<Self> {
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
        let db = open_store(&path, verify)?;
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
                waiters: Mutex::new(HashMap::new()),
                applied_index: watch::channel(applied).0,
                applied_latest: AtomicU64::new(applied),
            }),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(None)),
            writer: Arc::new(Mutex::new(Writer::new())),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            time: None,
        })
    }

    /// Reports each applied entry's time to `time`.
    pub fn with_time(mut self, time: Arc<super::time::ReplicatedTime>) -> Self {
        self.time = Some(time);
        self
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
        let mut w = self.lock_writer();
        if w.txn.is_none() {
            w.txn = Some(db.begin_write()?);
        }
        w.commit(&self.shared, true)
    }

    /// Commits what is applied, so that read transactions see all of it.
    fn commit_applied(&self) -> anyhow::Result<()> {
        self.lock_writer().commit(&self.shared, false)
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

/// Commits the open transaction once it is [`COMMIT_EVERY`] old, when no apply came to
/// do it; waits again if a newer transaction was opened meanwhile.
async fn commit_timer(
    writer: std::sync::Weak<Mutex<Writer>>,
    shared: std::sync::Weak<Shared>,
    mut due: Instant,
) {
    loop {
        tokio::time::sleep_until(due.into()).await;
        let (writer, shared) = (writer.clone(), shared.clone());
        let again = tokio::task::spawn_blocking(move || {
            let (Some(writer), Some(shared)) = (writer.upgrade(), shared.upgrade()) else {
                return None;
            };
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.txn.is_none() || w.failed.is_some() {
                w.timer_armed = false;
                return None;
            }
            if w.opened.elapsed() < COMMIT_EVERY {
                return Some(w.opened + COMMIT_EVERY);
            }
            w.timer_armed = false;
            if let Err(e) = w.commit(&shared, false) {
                tracing::error!(error = %e, "committing applied entries failed");
                w.failed = Some(e.to_string());
            }
            None
        })
        .await
        .ok()
        .flatten();
        match again {
            Some(next) => due = next,
            None => return,
        }
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

/// What [`apply_batch`] applied: a reply per entry, the last index, and the latest
/// leader time among the entries.
type Applied = (Vec<Reply>, Option<u64>, Option<u64>);

/// Applies `entries` in one write transaction.
fn apply_batch(
    txn: &WriteTransaction,
    entries: Vec<Entry>,
    readied: &mut HashMap<String, u32>,
) -> Result<Applied, String> {
    let h = Handles::open(|def| txn.open_table(def)).map_err(|e| e.to_string())?;
    let mut tables = DiskTables::new(h);
    let mut membership: Option<Membership> = None;
    let mut last: Option<LogId> = None;
    let mut latest_ms: Option<u64> = None;
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        last = Some(entry.log_id);
        let reply = match entry.payload {
            EntryPayload::Blank => Ok(Outcome::Ticked),
            EntryPayload::Normal(env) => {
                latest_ms = latest_ms.max(Some(env.now_ms));
                let mut state = State::over(tables);
                let reply = state.apply(&env);
                tables = state.into_tables();
                if reply.is_ok() {
                    resumed_queues(&env.cmd, readied);
                }
                reply
            }
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                Ok(Outcome::Ticked)
            }
        };
        replies.push(reply);
    }
    for (queue, jobs) in tables.take_readied() {
        let n = readied.entry(queue).or_default();
        *n = n.saturating_add(jobs);
    }
    tables.flush();
    tables.meta_put(APPLIED_KEY, &last);
    if let Some(m) = &membership {
        tables.meta_put(MEMBERSHIP_KEY, m);
    }
    match tables.error() {
        Some(e) => Err(e),
        None => Ok((replies, last.map(|l| l.index), latest_ms)),
    }
}

/// Queues a command resumed: their ready jobs become leasable without being filed
/// again, so all their waiters are woken ([`WAKE_ALL`]).
fn resumed_queues(cmd: &crate::queue::Command, readied: &mut HashMap<String, u32>) {
    use crate::queue::Command;
    match cmd {
        Command::Resume { queue } => {
            readied.insert(queue.clone(), WAKE_ALL);
        }
        Command::Batch(cmds) => cmds.iter().for_each(|c| resumed_queues(c, readied)),
        _ => {}
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
        self.commit_applied().map_err(write_err)?;
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
        let this = self.clone();
        let left_open = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut w = this.lock_writer();
            if let Some(e) = &w.failed {
                anyhow::bail!("an earlier commit of applied entries failed: {e}");
            }
            if w.txn.is_none() {
                w.txn = Some(db.begin_write()?);
                w.opened = Instant::now();
            }
            let w = &mut *w;
            let txn = w.txn.as_ref().expect("opened above");
            let (replies, last_index, latest_ms) = match apply_batch(txn, entries, &mut w.readied) {
                Ok(out) => out,
                Err(e) => {
                    // Entries applied into this transaction before are lost with it; the
                    // error stops the node, and a restart applies them again from the log.
                    if let Some(txn) = w.txn.take() {
                        let _ = txn.abort();
                    }
                    anyhow::bail!(e);
                }
            };
            if let Some(i) = last_index {
                w.index = Some(i);
                this.shared.applied_latest.store(i, Ordering::Release);
            }
            let arm = if w.opened.elapsed() >= COMMIT_EVERY {
                w.commit(&this.shared, false)?;
                None
            } else if w.timer_armed {
                None
            } else {
                w.timer_armed = true;
                Some(w.opened + COMMIT_EVERY)
            };
            Ok((replies, arm, last_index.zip(latest_ms)))
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        let (replies, arm, applied_time) = left_open;
        if let (Some(time), Some((index, now_ms))) = (&self.time, applied_time) {
            time.observe(index, now_ms);
        }
        if let Some(due) = arm {
            // No later apply may come to commit the open transaction: a timer does (one
            // at a time). It holds the store weakly, so that a store dropped (a node
            // stopping) closes its file at once.
            let writer = Arc::downgrade(&self.writer);
            let shared = Arc::downgrade(&self.shared);
            tokio::spawn(commit_timer(writer, shared, due));
        }
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
                let db = open_store(&installing, false)?;
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
            Ok((open_store(&path, false)?, records))
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
        self.shared.applied_latest.store(index, Ordering::Release);
        self.shared.applied_index.send_replace(index);
        self.shared.wake_all();
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
        sm.commit_applied().unwrap();
        sm
    }

    fn jobs(sm: &StateMachineStore) -> u64 {
        sm.commit_applied().unwrap();
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

    /// A store of format 1 (a state index entry per job, no stamp) is converted at
    /// open: its jobs are listed again and the stamp says 2.
    #[tokio::test]
    async fn a_format_1_store_is_converted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let sm = store_with(dir.path(), 5).await;
        drop(sm);
        {
            let db = open_store_unchecked(&dir.path().join("state.redb"));
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(crate::storage::tables::SM_META).unwrap();
                meta.remove(FORMAT_KEY).unwrap();
                let mut by_state = txn.open_table(crate::storage::tables::BY_STATE).unwrap();
                by_state.retain(|_, _| false).unwrap();
                // Format 1: queue key, state index (0 = Ready), seq.
                for seq in 0..5u64 {
                    let mut k = vec![1, b'q', 0];
                    k.extend_from_slice(&seq.to_be_bytes());
                    by_state.insert(k.as_slice(), b"".as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let sm = StateMachineStore::open(dir.path()).unwrap();
        let view = sm.shared().read();
        let (jobs, next) = view.state.list_jobs("q", None, None, 10);
        assert_eq!(jobs.len(), 5);
        assert_eq!(next, None);
        drop(view);
        drop(sm);
        let db = open_store_unchecked(&dir.path().join("state.redb"));
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(crate::storage::tables::SM_META).unwrap();
        let stamp = meta.get(FORMAT_KEY).unwrap().unwrap().value().to_vec();
        assert_eq!(stamp, FORMAT.to_le_bytes());
    }

    fn open_store_unchecked(path: &Path) -> Database {
        redb::Database::create(path).unwrap()
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
