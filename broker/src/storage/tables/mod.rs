//! The queue core's tables ([`crate::queue::Tables`]) in redb.
//!
//! Every table maps bytes to bytes, so that a snapshot can stream any table without
//! knowing what it holds (`raft/snapshot.rs`). Keys are built so that redb's byte order
//! is the order the core needs:
//!
//! ```text
//!   table         key                                   value
//!   jobs          seq u64be                             Job (postcard), small blobs (`record.rs`)
//!   payloads      seq                                   payload bytes (big ones)
//!   results       seq                                   result bytes (big ones)
//!   ids           job id (only ids without their seq)    seq
//!   queues        name                                  QueueInfo
//!   ready         qkey . !(priority ^ sign) u32be . seq  -
//!   by_state      qkey . 0xff . seq (every job)           -
//!                 qkey . Dead u8 . seq (dead jobs)        -
//!   timers        kind u8 . at u64be . seq              -      (Timer: scheduled, webhooks)
//!                 kind u8 . at u64be . key u64be        seqs   (Group: lease calls, expiries)
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
use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition};

use super::decode;
use crate::queue::{
    Counters, DedupEntry, Group, Job, JobState, QueueInfo, Tables, TablesRead, Timer, WebhookEvent,
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

/// Format 2 to 3: turns the per-job lease deadline entries (`timers` kind 1, keyed by
/// seq) and expiry entries (kind 2) into [`Group`] entries of one job each (a lease
/// call or an applied entry of format 3 files its jobs in one). Returns the entries
/// converted. Job records need no conversion: one without inline blobs
/// (`record.rs`) is format 2's.
pub fn regroup_timers(txn: &redb::WriteTransaction) -> Result<u64, anyhow::Error> {
    let jobs = txn.open_table(JOBS)?;
    let mut timers = txn.open_table(TIMERS)?;
    let start = [LEASE_PER_JOB];
    let old: Vec<(u8, u64, u64)> = timers
        .range::<&[u8]>(start.as_slice()..)?
        .map(|item| item.map(|(k, _)| k.value().to_vec()))
        .take_while(|k| k.as_ref().map_or(true, |k| k[0] <= EXPIRY_PER_JOB))
        .map(|k| k.map(|k| (k[0], u64_at(&k, 1), u64_at(&k, 9))))
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for (kind, at, seq) in old {
        timers.remove(timer_key_raw(kind, at, seq).as_slice())?;
        let new = if kind == EXPIRY_PER_JOB {
            group_key(Group::Expiring, at, seq)
        } else {
            let Some(v) = jobs.get(seq.to_be_bytes().as_slice())? else {
                continue;
            };
            let job = decode_job(v.value()).map_err(anyhow::Error::msg)?;
            let Some(lease) = job.held_lease() else {
                continue;
            };
            group_key(Group::Lease, at, lease.id)
        };
        timers.insert(new.as_slice(), seq.to_be_bytes().as_slice())?;
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

mod keys;
mod lazy;
mod read;
mod record;
#[cfg(test)]
mod tests;
mod write;

pub use keys::COUNTERS_KEY;
use keys::*;
pub use lazy::{LazyTable, TableRead};
use record::{decode_job, encode_job};

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
    /// Encoding buffer of [`DiskTables::put`], reused for every record written.
    scratch: Vec<u8>,
}

impl DiskTables<LazyTable> {
    /// The tables of a read view: each opened when first read ([`LazyTable`]).
    pub fn lazy(txn: ReadTransaction) -> Self {
        let txn = Arc::new(txn);
        let Ok(h) = Handles::open(|def| {
            Ok::<_, std::convert::Infallible>(LazyTable::new(txn.clone(), def))
        });
        Self::new(h)
    }
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
            scratch: Vec::new(),
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
