//! The Raft log on redb, with group commit.
//!
//! openraft 0.9 calls `append` once per client write, so fsyncing inside `append` would
//! cost one fsync per job. Instead `append` puts the entries in an in-memory cache
//! (readable at once, as openraft requires) and hands them to one writer thread. The
//! writer drains everything queued while the previous fsync ran, writes it in one redb
//! transaction committed with `Durability::Immediate`, and only then calls each batch's
//! openraft callback. Many concurrent writes therefore share one fsync, and no write is
//! acknowledged before it is on disk.
//!
//! Every write (append, vote, committed pointer, truncate, purge) goes through the same
//! writer queue, so write I/O stays in the order openraft issued it. The vote and the
//! meta keys ride in the same transaction as the appends queued with them (see
//! [`Group`]): the vote is durable before it is answered, the committed pointer is not
//! waited for (see `save_committed` for why that is safe).
//!
//! The file is never compacted (that needs exclusive access and would stall appends):
//! redb reuses the pages a purge frees, and snapshots are taken often enough (by entry
//! count, age and appended bytes, see `node/tasks.rs`) that the live log stays small.

// openraft's traits fix the (large) error type; boxing it here would only add a copy.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::storage::{decode, encode, read_err, write_err, LOG, META};

/// Encoded entries of one `append`, with their log ids. Shared (not copied) with the
/// not-yet-flushed cache: an entry is tens of KiB to 4 MiB.
type Rows = Vec<(LogId, Bytes)>;
/// Appends waiting for the same fsync.
type AppendBatch = Vec<(Rows, LogFlushed<TypeConfig>)>;

/// One queued write.
enum Op {
    Append {
        rows: Rows,
        callback: LogFlushed<TypeConfig>,
    },
    Meta(MetaWrite),
    Truncate {
        from: u64,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: LogId,
        bytes: Vec<u8>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Called with each append transaction's commit (fsync) duration.
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

struct Inner {
    db: Database,
    observer: Mutex<Option<FsyncObserver>>,
    /// Entries appended but not yet on disk, by index.
    pending: Mutex<BTreeMap<u64, (LogId, Bytes)>>,
    /// Bytes of entries appended since the store was opened (the snapshot trigger
    /// compares it with its value at the last snapshot).
    appended_bytes: AtomicU64,
    /// Index and encoded size of each entry appended since the store was opened and
    /// not purged or truncated since, oldest first: what [`LogStore::purge_point`]
    /// weighs. Bounded by the entries between two snapshots plus the kept tail.
    sizes: Mutex<VecDeque<(u64, u64)>>,
    tx: Mutex<mpsc::Sender<Op>>,
}

/// Log store handle; clones share the database, the cache and the writer.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Opens the log store on an open database, creating its tables, and starts the
    /// writer thread (it stops when the last handle is dropped).
    pub fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        Self::open_with(path, true)
    }

    /// [`LogStore::open`], checking every page's checksum first when `verify` is set.
    pub fn open_with(path: &std::path::Path, verify: bool) -> anyhow::Result<Self> {
        let db = crate::storage::open_db(path, verify)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        crate::storage::format::check_log(&db)?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            db,
            observer: Mutex::new(None),
            pending: Mutex::new(BTreeMap::new()),
            appended_bytes: AtomicU64::new(0),
            sizes: Mutex::new(VecDeque::new()),
            tx: Mutex::new(tx),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("taskraft-log-writer".into())
            .spawn(move || writer(weak, rx))?;
        Ok(Self { inner })
    }

    /// Bytes of entries appended since the store was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.inner.appended_bytes.load(Ordering::Relaxed)
    }

    /// The index to purge the log up to (inclusive) so that of the entries up to
    /// `snapshot` at most `keep_entries` and at most `keep_bytes` bytes stay, or `None`
    /// when they fit already. openraft's `max_in_snapshot_log_to_keep` counts entries
    /// only, and an entry holds from a hundred bytes to 4 MiB: 100 entries of big
    /// batches kept about 280 MiB (and, with redb's rounding of large values, 450 MiB
    /// of file) behind every snapshot. Entries appended before this process started
    /// are not weighed (their sizes are not known without reading them).
    pub fn purge_point(&self, snapshot: u64, keep_entries: u64, keep_bytes: u64) -> Option<u64> {
        purge_point(
            lock(&self.inner.sizes).iter().copied(),
            snapshot,
            keep_entries,
            keep_bytes,
        )
    }

    /// Reports every append commit's duration to `observer` (metrics).
    pub fn observe_fsync(&self, observer: FsyncObserver) {
        *lock(&self.inner.observer) = Some(observer);
    }

    fn send(&self, op: Op) -> Result<(), StorageError> {
        lock(&self.inner.tx)
            .send(op)
            .map_err(|_| write_err("log writer thread stopped"))
    }

    /// Writes a meta key durably and waits for it.
    async fn meta(&self, key: &'static str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Meta(MetaWrite {
            key,
            bytes,
            durable: true,
            done: Some(done),
        }))?;
        rx.await.map_err(write_err)?.map_err(write_err)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.inner.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(v) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        decode(v.value()).map(Some).map_err(read_err)
    }
}

/// [`LogStore::purge_point`] over `(index, bytes)` pairs in index order.
fn purge_point(
    sizes: impl DoubleEndedIterator<Item = (u64, u64)>,
    snapshot: u64,
    keep_entries: u64,
    keep_bytes: u64,
) -> Option<u64> {
    let (mut kept, mut bytes) = (0u64, 0u64);
    for (index, size) in sizes.rev().skip_while(|(i, _)| *i > snapshot) {
        if kept >= keep_entries || bytes + size > keep_bytes {
            return Some(index);
        }
        kept += 1;
        bytes += size;
    }
    None
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes that share one transaction and one fsync: the appends and the meta keys
/// (vote, committed pointer) queued between two truncates or purges. Appends and keys
/// never depend on each other's order: they are different keys, and the whole group
/// becomes durable at once. A group of non-durable keys alone is committed without
/// fsync (the next durable commit carries it).
#[derive(Default)]
struct Group {
    appends: AppendBatch,
    metas: Vec<MetaWrite>,
}

/// A meta key, written with a [`Group`].
struct MetaWrite {
    key: &'static str,
    bytes: Vec<u8>,
    /// Fsync before answering (the vote); the committed pointer is not (see
    /// `save_committed`).
    durable: bool,
    /// Answered once written; `None` when nobody waits.
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// The writer thread: drains the queue, writes consecutive appends and meta keys in
/// one fsynced transaction, runs truncates and purges in order between them.
fn writer(inner: std::sync::Weak<Inner>, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let Some(inner) = inner.upgrade() else { return };
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let mut group = Group::default();
        for op in ops {
            match op {
                Op::Append { rows, callback } => group.appends.push((rows, callback)),
                Op::Meta(m) => group.metas.push(m),
                other => {
                    flush_group(&inner, std::mem::take(&mut group));
                    run_other(&inner, other);
                }
            }
        }
        flush_group(&inner, group);
    }
}

fn flush_group(inner: &Inner, group: Group) {
    let Group { appends, metas } = group;
    if appends.is_empty() && metas.is_empty() {
        return;
    }
    let durable = !appends.is_empty() || metas.iter().any(|m| m.durable);
    let started = Instant::now();
    let res = (|| -> Result<(), redb::Error> {
        let mut txn = inner.db.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        if !appends.is_empty() {
            let mut table = txn.open_table(LOG)?;
            for (rows, _) in &appends {
                for (log_id, bytes) in rows {
                    table.insert(log_id.index, bytes.as_ref())?;
                }
            }
        }
        if !metas.is_empty() {
            let mut table = txn.open_table(META)?;
            // In queue order: a key written twice keeps its later value.
            for m in &metas {
                table.insert(m.key, m.bytes.as_slice())?;
            }
        }
        // Durability::Immediate (the default): commit returns after fsync.
        txn.commit()?;
        Ok(())
    })();
    let elapsed = started.elapsed();
    match res {
        Ok(()) => {
            {
                let mut pending = lock(&inner.pending);
                for (rows, _) in &appends {
                    for (log_id, _) in rows {
                        // Only if it is still the same entry (a truncate may have replaced it).
                        if pending
                            .get(&log_id.index)
                            .is_some_and(|(id, _)| id == log_id)
                        {
                            pending.remove(&log_id.index);
                        }
                    }
                }
            }
            if !appends.is_empty() {
                if let Some(observe) = lock(&inner.observer).as_ref() {
                    observe(elapsed);
                }
            }
            for (_, cb) in appends {
                cb.log_io_completed(Ok(()));
            }
            for done in metas.into_iter().filter_map(|m| m.done) {
                let _ = done.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "log write failed");
            for (_, cb) in appends {
                cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
            }
            for done in metas.into_iter().filter_map(|m| m.done) {
                let _ = done.send(Err(e.to_string()));
            }
        }
    }
}

fn run_other(inner: &Inner, op: Op) {
    let db = &inner.db;
    match op {
        Op::Append { .. } | Op::Meta(_) => unreachable!("written in groups"),
        Op::Truncate { from, done } => {
            let r = (|| -> Result<(), redb::Error> {
                let txn = db.begin_write()?;
                txn.open_table(LOG)?.retain_in(from.., |_, _| false)?;
                txn.commit()?;
                Ok(())
            })();
            let _ = done.send(r.map_err(|e| e.to_string()));
        }
        Op::Purge { upto, bytes, done } => {
            let r = (|| -> Result<(), redb::Error> {
                let txn = db.begin_write()?;
                txn.open_table(META)?
                    .insert("last_purged", bytes.as_slice())?;
                txn.open_table(LOG)?
                    .retain_in(..=upto.index, |_, _| false)?;
                txn.commit()?;
                Ok(())
            })();
            let _ = done.send(r.map_err(|e| e.to_string()));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // The not-yet-flushed cache first, then the disk for what it does not hold: the
        // writer removes an entry from the cache only after its commit, so an entry
        // flushed meanwhile is found on disk. The cache wins where both hold an index (a
        // truncated and re-appended entry not flushed yet).
        let pending: BTreeMap<u64, Bytes> = {
            let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
            lock(&self.inner.pending)
                .range(bounds)
                .map(|(i, (_, bytes))| (*i, bytes.clone()))
                .collect()
        };
        let mut by_index: BTreeMap<u64, Entry> = BTreeMap::new();
        {
            let txn = self.inner.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            for row in table.range(range.clone()).map_err(read_err)? {
                let (k, v) = row.map_err(read_err)?;
                if !pending.contains_key(&k.value()) {
                    by_index.insert(k.value(), decode(v.value()).map_err(read_err)?);
                }
            }
        }
        for (i, bytes) in pending {
            by_index.insert(i, decode(&bytes).map_err(read_err)?);
        }
        Ok(by_index.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta("last_purged")?;
        let pending_last = lock(&self.inner.pending)
            .values()
            .next_back()
            .map(|(id, _)| *id);
        let disk_last = {
            let txn = self.inner.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let last = match table.last().map_err(read_err)? {
                Some((_, v)) => Some(decode::<Entry>(v.value()).map_err(read_err)?.log_id),
                None => None,
            };
            last
        };
        let last = pending_last.max(disk_last);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.meta("vote", encode(vote).map_err(write_err)?).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Queued, not awaited, and not fsynced on its own: it rides in the next group's
        // transaction (durable when that group holds appends). openraft 0.9 awaits this
        // call before every apply, so waiting here put an fsync between every commit
        // advance and its apply. A pointer that lags after a crash is harmless:
        // openraft starts from the later of it and the state machine's applied id, and
        // a leader that retakes leadership in its old term after a restart reads no
        // lower than the log's end at start (see `RaftNode::leader_read_index`; a
        // lagging pointer there once made acked jobs read back as leased).
        self.send(Op::Meta(MetaWrite {
            key: "committed",
            bytes: encode(&committed).map_err(write_err)?,
            durable: false,
            done: None,
        }))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Rows = entries
            .into_iter()
            .map(|e| encode(&e).map(|b| (e.log_id, Bytes::from(b))))
            .collect::<Result<_, _>>()
            .map_err(write_err)?;
        let bytes: usize = rows.iter().map(|(_, b)| b.len()).sum();
        self.inner
            .appended_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        {
            let (mut pending, mut sizes) = (lock(&self.inner.pending), lock(&self.inner.sizes));
            for (id, bytes) in &rows {
                pending.insert(id.index, (*id, bytes.clone()));
                sizes.push_back((id.index, bytes.len() as u64));
            }
        }
        self.send(Op::Append { rows, callback })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.inner.pending).retain(|i, _| *i < log_id.index);
        lock(&self.inner.sizes).retain(|(i, _)| *i < log_id.index);
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Truncate {
            from: log_id.index,
            done,
        })?;
        rx.await.map_err(write_err)?.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&log_id).map_err(write_err)?;
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Purge {
            upto: log_id,
            bytes,
            done,
        })?;
        rx.await.map_err(write_err)?.map_err(write_err)?;
        lock(&self.inner.pending).retain(|i, _| *i > log_id.index);
        let mut sizes = lock(&self.inner.sizes);
        while sizes.front().is_some_and(|(i, _)| *i <= log_id.index) {
            sizes.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::purge_point;

    /// Entries 1..=10 of 10 bytes, then 11..=12 of 100 bytes; the snapshot covers 12.
    fn sizes() -> Vec<(u64, u64)> {
        (1..=10)
            .map(|i| (i, 10))
            .chain([(11, 100), (12, 100)])
            .collect()
    }

    #[test]
    fn the_kept_tail_is_bounded_by_entries_and_by_bytes() {
        let at =
            |snapshot, entries, bytes| purge_point(sizes().into_iter(), snapshot, entries, bytes);
        // Everything fits.
        assert_eq!(at(12, 100, 1_000), None);
        // The count binds: keep 12, 11, 10; purge up to 9.
        assert_eq!(at(12, 3, 1_000), Some(9));
        // The bytes bind: 12 and 11 are 200 bytes; 10 would make 210.
        assert_eq!(at(12, 100, 200), Some(10));
        assert_eq!(at(12, 100, 209), Some(10));
        assert_eq!(at(12, 100, 210), Some(9));
        // An entry bigger than the whole budget is not kept.
        assert_eq!(at(12, 100, 50), Some(12));
        // Only entries the snapshot covers count: with the snapshot at 10, 11 and 12
        // are not weighed and 1..=10 fit in 100 bytes.
        assert_eq!(at(10, 100, 100), None);
        assert_eq!(at(10, 5, 100), Some(5));
        // Nothing known.
        assert_eq!(purge_point(std::iter::empty(), 12, 1, 1), None);
    }
}
