//! The queue core's tables ([`crate::queue::Tables`]) in redb.
//!
//! Every table maps bytes to bytes, so that a snapshot can stream any table without
//! knowing what it holds (`raft/snapshot.rs`). Keys are built so that redb's byte order
//! is the order the core needs:
//!
//! ```text
//!   table         key                                   value
//!   jobs          seq u64be                             Job (postcard)
//!   payloads      seq                                   payload bytes
//!   results       seq                                   result bytes
//!   ids           job id                                seq
//!   queues        name                                  QueueInfo
//!   ready         qkey . !(priority ^ sign) u32be . seq  -
//!   by_state      qkey . 0xff . seq (every job)           -
//!                 qkey . Dead u8 . seq (dead jobs)        -
//!   timers        kind u8 . at u64be . seq              -
//!   dedup         qkey . idempotency key                DedupEntry
//!   dedup_expiry  at . qkey . idempotency key           -
//!   workers       worker id                             WorkerInfo
//!   idle_workers  forget_at . worker id                 -
//!   outbox        event id                              WebhookEvent
//!   sm_meta       "counters" | "applied" | "membership"  postcard
//! ```
//! `qkey` is the queue name behind a one-byte length (names are at most 128 bytes), so
//! one queue's keys never interleave with another's.

use std::cell::RefCell;

use bytes::Bytes;
use redb::{ReadableTable, Table, TableDefinition};

use super::{decode, encode};
use crate::queue::{
    Counters, DedupEntry, Job, JobState, QueueInfo, Tables, TablesRead, Timer, WebhookEvent,
    WorkerInfo,
};

/// A state table: bytes to bytes.
pub type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

macro_rules! tables {
    ($($name:ident = $s:literal),* $(,)?) => {
        $(#[doc = concat!("The `", $s, "` table.")] pub const $name: Def = TableDefinition::new($s);)*
        /// Every state table, in the order snapshots stream them.
        pub const ALL: &[Def] = &[$($name),*];
    };
}

tables! {
    SM_META = "sm_meta",
    JOBS = "jobs",
    PAYLOADS = "payloads",
    RESULTS = "results",
    IDS = "ids",
    QUEUES = "queues",
    READY = "ready",
    BY_STATE = "by_state",
    TIMERS = "timers",
    DEDUP = "dedup",
    DEDUP_EXPIRY = "dedup_expiry",
    WORKERS = "workers",
    IDLE_WORKERS = "idle_workers",
    OUTBOX = "outbox",
}

/// Creates every state table in `db` (a no-op for those that exist).
pub fn create_all(db: &redb::Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    for def in ALL {
        txn.open_table(*def)?;
    }
    txn.commit()?;
    Ok(())
}

/// Format 1 to 2: rebuilds `by_state` as the every-job listing plus the dead index
/// (format 1 had an entry per job under its current state). Returns the jobs listed.
pub fn relist_jobs(txn: &redb::WriteTransaction) -> Result<u64, anyhow::Error> {
    let jobs = txn.open_table(JOBS)?;
    let mut by_state = txn.open_table(BY_STATE)?;
    by_state.retain(|_, _| false)?;
    let mut n = 0;
    for item in jobs.iter()? {
        let (k, v) = item?;
        let job: Job = decode(v.value())?;
        let seq = u64_at(k.value(), 0);
        by_state.insert(
            state_key(&job.queue, LISTED, seq).as_slice(),
            b"".as_slice(),
        )?;
        if job.state == JobState::Dead {
            by_state.insert(state_key(&job.queue, DEAD, seq).as_slice(), b"".as_slice())?;
        }
        n += 1;
    }
    Ok(n)
}

/// A new store file at `path` with every table (tests).
#[cfg(test)]
pub fn test_store(path: &std::path::Path) -> redb::Database {
    let db = redb::Database::create(path).expect("creating a test store");
    create_all(&db).expect("creating the tables");
    db
}

/// `sm_meta` key of the core's counters.
pub const COUNTERS_KEY: &[u8] = b"counters";

fn qkey(queue: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + queue.len() + 13);
    k.push(queue.len().min(255) as u8);
    k.extend_from_slice(queue.as_bytes());
    k
}

fn ready_key(queue: &str, priority: i32, seq: u64) -> Vec<u8> {
    let mut k = qkey(queue);
    // Flipping the sign bit orders i32 as u32; inverting makes higher priorities first.
    k.extend_from_slice(&(!((priority as u32) ^ 0x8000_0000)).to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `by_state` marker of the every-job listing (a state index is below 8).
const LISTED: u8 = 0xff;
/// `by_state` marker of the dead-job index.
const DEAD: u8 = JobState::Dead as u8;

fn state_key(queue: &str, marker: u8, seq: u64) -> Vec<u8> {
    let mut k = qkey(queue);
    k.push(marker);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn timer_key(timer: Timer, at: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = timer as u8;
    k[1..9].copy_from_slice(&at.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn dedup_key(queue: &str, key: &str) -> Vec<u8> {
    let mut k = qkey(queue);
    k.extend_from_slice(key.as_bytes());
    k
}

fn at_key(at: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.extend_from_slice(rest);
    k
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Splits `qkey . rest` into the queue name and the rest.
fn split_qkey(b: &[u8]) -> Option<(String, &[u8])> {
    let len = *b.first()? as usize;
    let name = std::str::from_utf8(b.get(1..1 + len)?).ok()?.to_string();
    Some((name, &b[1 + len..]))
}

/// Records of a name-keyed table changed in one transaction (`None`: deleted).
type WriteBack<V> = std::collections::HashMap<String, Option<V>>;

/// Open handles on every state table, read-only or writable.
pub struct Handles<T> {
    meta: T,
    jobs: T,
    payloads: T,
    results: T,
    ids: T,
    queues: T,
    ready: T,
    by_state: T,
    timers: T,
    dedup: T,
    dedup_expiry: T,
    workers: T,
    idle_workers: T,
    outbox: T,
}

impl<T> Handles<T> {
    /// Opens every table with `open`.
    pub fn open<E>(mut open: impl FnMut(Def) -> Result<T, E>) -> Result<Self, E> {
        Ok(Self {
            meta: open(SM_META)?,
            jobs: open(JOBS)?,
            payloads: open(PAYLOADS)?,
            results: open(RESULTS)?,
            ids: open(IDS)?,
            queues: open(QUEUES)?,
            ready: open(READY)?,
            by_state: open(BY_STATE)?,
            timers: open(TIMERS)?,
            dedup: open(DEDUP)?,
            dedup_expiry: open(DEDUP_EXPIRY)?,
            workers: open(WORKERS)?,
            idle_workers: open(IDLE_WORKERS)?,
            outbox: open(OUTBOX)?,
        })
    }
}

/// The core's tables over one redb transaction. Storage errors are kept (the first
/// one) rather than returned, see [`crate::queue::tables`]; check [`Self::error`] before
/// committing or trusting an answer.
pub struct DiskTables<T> {
    h: Handles<T>,
    error: RefCell<Option<String>>,
    /// Queue records changed in this transaction (`None`: deleted), written back by
    /// [`DiskTables::flush`]: a batch of a thousand jobs for one queue then costs one
    /// record write, not a thousand.
    queues: WriteBack<QueueInfo>,
    /// Worker records changed in this transaction, likewise (a lease of 100 jobs and
    /// their acks change the lessee's count 200 times).
    workers: WriteBack<WorkerInfo>,
    /// Jobs filed as ready in this transaction, by queue: whom a long-polling Lease
    /// should wake ([`DiskTables::take_readied`]).
    readied: std::collections::HashMap<String, u32>,
}

impl<T> DiskTables<T> {
    /// Wraps open table handles.
    pub fn new(h: Handles<T>) -> Self {
        Self {
            h,
            error: RefCell::new(None),
            queues: Default::default(),
            workers: Default::default(),
            readied: Default::default(),
        }
    }

    /// Jobs filed as ready since the last call, by queue.
    pub fn take_readied(&mut self) -> std::collections::HashMap<String, u32> {
        std::mem::take(&mut self.readied)
    }

    /// The first storage error met, if any.
    pub fn error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        let mut slot = self.error.borrow_mut();
        if slot.is_none() {
            *slot = Some(format!("{what}: {e}"));
        }
    }

    /// The raw handles (for the state machine's own metadata).
    pub fn handles(&mut self) -> &mut Handles<T> {
        &mut self.h
    }
}

type W<'txn> = Table<'txn, &'static [u8], &'static [u8]>;

impl<T: ReadableTable<&'static [u8], &'static [u8]>> DiskTables<T> {
    fn get_raw(&self, t: &T, key: &[u8], what: &str) -> Option<Vec<u8>> {
        match t.get(key) {
            Ok(v) => v.map(|g| g.value().to_vec()),
            Err(e) => {
                self.fail(what, e);
                None
            }
        }
    }

    fn get<V: serde::de::DeserializeOwned>(&self, t: &T, key: &[u8], what: &str) -> Option<V> {
        let raw = self.get_raw(t, key, what)?;
        match decode(&raw) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(what, format!("undecodable record: {e}"));
                None
            }
        }
    }

    /// Keys (and values) from `start` while `keep` holds, at most `limit`.
    fn scan(
        &self,
        t: &T,
        start: &[u8],
        limit: usize,
        what: &str,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        let range = match t.range::<&[u8]>(start..) {
            Ok(r) => r,
            Err(e) => {
                self.fail(what, e);
                return out;
            }
        };
        for item in range {
            match item {
                Ok((k, v)) => {
                    let k = k.value();
                    if !keep(k) {
                        break;
                    }
                    out.push((k.to_vec(), v.value().to_vec()));
                    if out.len() >= limit {
                        break;
                    }
                }
                Err(e) => {
                    self.fail(what, e);
                    break;
                }
            }
        }
        out
    }

    /// A record of a name-keyed table as this transaction sees it: changed in
    /// `cache`, or as stored.
    fn cached_get<V: Clone + serde::de::DeserializeOwned>(
        &self,
        cache: &WriteBack<V>,
        t: &T,
        key: &str,
        what: &str,
    ) -> Option<V> {
        match cache.get(key) {
            Some(cached) => cached.clone(),
            None => self.get(t, key.as_bytes(), what),
        }
    }

    /// Every record of a name-keyed table as this transaction sees it, by name.
    fn cached_all<V: Clone + serde::de::DeserializeOwned>(
        &self,
        cache: &WriteBack<V>,
        t: &T,
        what: &str,
    ) -> Vec<(String, V)> {
        let mut all: std::collections::BTreeMap<String, V> = self
            .scan(t, b"", usize::MAX, what, |_| true)
            .into_iter()
            .filter_map(|(k, v)| Some((String::from_utf8(k).ok()?, decode(&v).ok()?)))
            .collect();
        for (key, cached) in cache {
            match cached {
                Some(v) => all.insert(key.clone(), v.clone()),
                None => all.remove(key),
            };
        }
        all.into_iter().collect()
    }

    /// Seqs under one `by_state` marker of a queue, after `after`.
    fn marked_range(&self, queue: &str, marker: u8, after: Option<u64>, limit: usize) -> Vec<u64> {
        if after == Some(u64::MAX) {
            return Vec::new();
        }
        let mut prefix = qkey(queue);
        prefix.push(marker);
        let start = state_key(queue, marker, after.map_or(0, |a| a + 1));
        self.scan(&self.h.by_state, &start, limit, "by_state", |k| {
            k.starts_with(&prefix)
        })
        .into_iter()
        .map(|(k, _)| u64_at(&k, k.len() - 8))
        .collect()
    }

    /// A record of the state machine's own metadata.
    pub fn meta_get<V: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Option<V> {
        self.get(&self.h.meta, key, "sm_meta")
    }
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> TablesRead for DiskTables<T> {
    fn counters(&self) -> Counters {
        self.get(&self.h.meta, COUNTERS_KEY, "counters")
            .unwrap_or_default()
    }
    fn job(&self, seq: u64) -> Option<Job> {
        self.get(&self.h.jobs, &seq.to_be_bytes(), "jobs")
    }
    fn payload(&self, seq: u64) -> Bytes {
        self.get_raw(&self.h.payloads, &seq.to_be_bytes(), "payloads")
            .map(Bytes::from)
            .unwrap_or_default()
    }
    fn result(&self, seq: u64) -> Bytes {
        self.get_raw(&self.h.results, &seq.to_be_bytes(), "results")
            .map(Bytes::from)
            .unwrap_or_default()
    }
    fn seq_of(&self, job_id: &str) -> Option<u64> {
        let raw = self.get_raw(&self.h.ids, job_id.as_bytes(), "ids")?;
        (raw.len() == 8).then(|| u64_at(&raw, 0))
    }
    fn queue(&self, name: &str) -> Option<QueueInfo> {
        self.cached_get(&self.queues, &self.h.queues, name, "queues")
    }
    fn queues(&self) -> Vec<(String, QueueInfo)> {
        self.cached_all(&self.queues, &self.h.queues, "queues")
    }
    fn ready_first(&self, queue: &str) -> Option<u64> {
        let prefix = qkey(queue);
        let (k, _) = self
            .scan(&self.h.ready, &prefix, 1, "ready", |k| {
                k.starts_with(&prefix)
            })
            .pop()?;
        Some(u64_at(&k, k.len() - 8))
    }
    fn listed_range(&self, queue: &str, after: Option<u64>, limit: usize) -> Vec<u64> {
        self.marked_range(queue, LISTED, after, limit)
    }
    fn dead_range(&self, queue: &str, after: Option<u64>, limit: usize) -> Vec<u64> {
        self.marked_range(queue, DEAD, after, limit)
    }
    fn timer_first(&self, timer: Timer) -> Option<(u64, u64)> {
        self.timers_due(timer, u64::MAX, 1).pop()
    }
    fn timers_due(&self, timer: Timer, now: u64, limit: usize) -> Vec<(u64, u64)> {
        let start = timer_key(timer, 0, 0);
        self.scan(&self.h.timers, &start, limit, "timers", |k| {
            k[0] == timer as u8 && u64_at(k, 1) <= now
        })
        .into_iter()
        .map(|(k, _)| (u64_at(&k, 1), u64_at(&k, 9)))
        .collect()
    }
    fn dedup(&self, queue: &str, key: &str) -> Option<DedupEntry> {
        self.get(&self.h.dedup, &dedup_key(queue, key), "dedup")
    }
    fn dedup_expiry_first(&self) -> Option<(u64, String, String)> {
        let (k, _) = self
            .scan(&self.h.dedup_expiry, b"", 1, "dedup_expiry", |_| true)
            .pop()?;
        let at = u64_at(&k, 0);
        let (queue, key) = split_qkey(&k[8..])?;
        Some((at, queue, String::from_utf8_lossy(key).into_owned()))
    }
    fn worker(&self, id: &str) -> Option<WorkerInfo> {
        self.cached_get(&self.workers, &self.h.workers, id, "workers")
    }
    fn workers(&self) -> Vec<(String, WorkerInfo)> {
        self.cached_all(&self.workers, &self.h.workers, "workers")
    }
    fn idle_worker_first(&self) -> Option<(u64, String)> {
        let (k, _) = self
            .scan(&self.h.idle_workers, b"", 1, "idle_workers", |_| true)
            .pop()?;
        Some((u64_at(&k, 0), String::from_utf8_lossy(&k[8..]).into_owned()))
    }
    fn webhook(&self, id: u64) -> Option<WebhookEvent> {
        self.get(&self.h.outbox, &id.to_be_bytes(), "outbox")
    }
}

impl<'txn> DiskTables<W<'txn>> {
    fn put_raw(
        &mut self,
        which: for<'a> fn(&'a mut Handles<W<'txn>>) -> &'a mut W<'txn>,
        key: &[u8],
        value: &[u8],
        what: &str,
    ) {
        let res = which(&mut self.h).insert(key, value).map(drop);
        if let Err(e) = res {
            self.fail(what, e);
        }
    }

    fn del_raw(
        &mut self,
        which: for<'a> fn(&'a mut Handles<W<'txn>>) -> &'a mut W<'txn>,
        key: &[u8],
        what: &str,
    ) {
        let res = which(&mut self.h).remove(key).map(drop);
        if let Err(e) = res {
            self.fail(what, e);
        }
    }

    fn put<V: serde::Serialize>(
        &mut self,
        which: for<'a> fn(&'a mut Handles<W<'txn>>) -> &'a mut W<'txn>,
        key: &[u8],
        value: &V,
        what: &str,
    ) {
        match encode(value) {
            Ok(bytes) => self.put_raw(which, key, &bytes, what),
            Err(e) => self.fail(what, e),
        }
    }

    /// Writes back what is cached for this transaction; call before committing.
    pub fn flush(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        self.write_back(queues, |h| &mut h.queues, "queues");
        let workers = std::mem::take(&mut self.workers);
        self.write_back(workers, |h| &mut h.workers, "workers");
    }

    fn write_back<V: serde::Serialize>(
        &mut self,
        cache: WriteBack<V>,
        which: for<'a> fn(&'a mut Handles<W<'txn>>) -> &'a mut W<'txn>,
        what: &str,
    ) {
        for (key, cached) in cache {
            match cached {
                Some(v) => self.put(which, key.as_bytes(), &v, what),
                None => self.del_raw(which, key.as_bytes(), what),
            }
        }
    }

    /// Stores a record of the state machine's own metadata.
    pub fn meta_put<V: serde::Serialize>(&mut self, key: &[u8], value: &V) {
        self.put(|h| &mut h.meta, key, value, "sm_meta");
    }
}

impl<'txn> Tables for DiskTables<W<'txn>> {
    fn set_counters(&mut self, c: Counters) {
        self.put(|h| &mut h.meta, COUNTERS_KEY, &c, "counters");
    }
    fn put_job(&mut self, job: &Job) {
        self.put(|h| &mut h.jobs, &job.seq.to_be_bytes(), job, "jobs");
    }
    fn delete_job(&mut self, seq: u64) {
        let k = seq.to_be_bytes();
        self.del_raw(|h| &mut h.jobs, &k, "jobs");
        self.del_raw(|h| &mut h.payloads, &k, "payloads");
        self.del_raw(|h| &mut h.results, &k, "results");
    }
    fn put_payload(&mut self, seq: u64, payload: &Bytes) {
        self.put_raw(|h| &mut h.payloads, &seq.to_be_bytes(), payload, "payloads");
    }
    fn put_result(&mut self, seq: u64, result: &Bytes) {
        self.put_raw(|h| &mut h.results, &seq.to_be_bytes(), result, "results");
    }
    fn put_id(&mut self, job_id: &str, seq: u64) {
        self.put_raw(|h| &mut h.ids, job_id.as_bytes(), &seq.to_be_bytes(), "ids");
    }
    fn delete_id(&mut self, job_id: &str) {
        self.del_raw(|h| &mut h.ids, job_id.as_bytes(), "ids");
    }
    fn put_queue(&mut self, name: &str, info: &QueueInfo) {
        self.queues.insert(name.to_string(), Some(info.clone()));
    }
    fn delete_queue(&mut self, name: &str) {
        self.queues.insert(name.to_string(), None);
    }
    fn ready_insert(&mut self, queue: &str, priority: i32, seq: u64) {
        match self.readied.get_mut(queue) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                self.readied.insert(queue.to_string(), 1);
            }
        }
        self.put_raw(
            |h| &mut h.ready,
            &ready_key(queue, priority, seq),
            b"",
            "ready",
        );
    }
    fn ready_remove(&mut self, queue: &str, priority: i32, seq: u64) {
        self.del_raw(|h| &mut h.ready, &ready_key(queue, priority, seq), "ready");
    }
    fn listed_insert(&mut self, queue: &str, seq: u64) {
        let k = state_key(queue, LISTED, seq);
        self.put_raw(|h| &mut h.by_state, &k, b"", "by_state");
    }
    fn listed_remove(&mut self, queue: &str, seq: u64) {
        let k = state_key(queue, LISTED, seq);
        self.del_raw(|h| &mut h.by_state, &k, "by_state");
    }
    fn dead_insert(&mut self, queue: &str, seq: u64) {
        let k = state_key(queue, DEAD, seq);
        self.put_raw(|h| &mut h.by_state, &k, b"", "by_state");
    }
    fn dead_remove(&mut self, queue: &str, seq: u64) {
        let k = state_key(queue, DEAD, seq);
        self.del_raw(|h| &mut h.by_state, &k, "by_state");
    }
    fn timer_insert(&mut self, timer: Timer, at: u64, seq: u64) {
        self.put_raw(|h| &mut h.timers, &timer_key(timer, at, seq), b"", "timers");
    }
    fn timer_remove(&mut self, timer: Timer, at: u64, seq: u64) {
        self.del_raw(|h| &mut h.timers, &timer_key(timer, at, seq), "timers");
    }
    fn put_dedup(&mut self, queue: &str, key: &str, entry: &DedupEntry) {
        let k = dedup_key(queue, key);
        self.put_raw(
            |h| &mut h.dedup_expiry,
            &at_key(entry.expires_at_ms, &k),
            b"",
            "dedup_expiry",
        );
        self.put(|h| &mut h.dedup, &k, entry, "dedup");
    }
    fn delete_dedup(&mut self, queue: &str, key: &str, expires_at_ms: u64) {
        let k = dedup_key(queue, key);
        self.del_raw(
            |h| &mut h.dedup_expiry,
            &at_key(expires_at_ms, &k),
            "dedup_expiry",
        );
        self.del_raw(|h| &mut h.dedup, &k, "dedup");
    }
    fn put_worker(&mut self, id: &str, info: &WorkerInfo) {
        self.workers.insert(id.to_string(), Some(info.clone()));
    }
    fn delete_worker(&mut self, id: &str) {
        self.workers.insert(id.to_string(), None);
    }
    fn idle_worker_insert(&mut self, forget_at_ms: u64, id: &str) {
        self.put_raw(
            |h| &mut h.idle_workers,
            &at_key(forget_at_ms, id.as_bytes()),
            b"",
            "idle_workers",
        );
    }
    fn idle_worker_remove(&mut self, forget_at_ms: u64, id: &str) {
        self.del_raw(
            |h| &mut h.idle_workers,
            &at_key(forget_at_ms, id.as_bytes()),
            "idle_workers",
        );
    }
    fn put_webhook(&mut self, event: &WebhookEvent) {
        self.put(|h| &mut h.outbox, &event.id.to_be_bytes(), event, "outbox");
    }
    fn delete_webhook(&mut self, id: u64) {
        self.del_raw(|h| &mut h.outbox, &id.to_be_bytes(), "outbox");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use redb::{Durability, ReadableDatabase};

    use super::*;
    use crate::queue::testing::{observe, op, Driver};
    use crate::queue::State;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The rules over redb answer exactly as over memory: every reply, and every read
        /// after every entry.
        #[test]
        fn redb_tables_answer_like_memory_tables(ops in proptest::collection::vec(op(), 1..100)) {
            let dir = tempfile::tempdir().unwrap();
            let db = test_store(&dir.path().join("state.redb"));
            let mut mem = State::new();
            let mut driver = Driver::default();
            for op in ops {
                let env = driver.envelope(op);
                let want = mem.apply(&env);
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(Durability::None).unwrap();
                let got = {
                    let h = Handles::open(|d| txn.open_table(d)).unwrap();
                    let mut disk = State::over(DiskTables::new(h));
                    let got = disk.apply(&env);
                    let mut tables = disk.into_tables();
                    tables.flush();
                    prop_assert_eq!(tables.error(), None);
                    got
                };
                txn.commit().unwrap();
                prop_assert_eq!(format!("{want:?}"), format!("{got:?}"));
                driver.observe(&want);
                let read = db.begin_read().unwrap();
                let view = State::over(DiskTables::new(Handles::open(|d| read.open_table(d)).unwrap()));
                prop_assert_eq!(observe(&mem, &driver.ids), observe(&view, &driver.ids));
            }
        }
    }
}
