//! The tables the queue core reads and writes, as a trait, so that the same rules run
//! against the on-disk store (`storage::tables`, redb) on every node and against
//! [`MemTables`] in tests, and a property test can check that both agree.
//!
//! ```text
//!   jobs      seq -> Job (the record: no payload, no result)
//!   payloads  seq -> bytes            results  seq -> bytes
//!   ids       job id -> seq
//!   queues    name -> QueueInfo (paused, counts by state)
//!   ready     (queue, priority desc, seq)      leasable jobs in serving order
//!   by_state  (queue, seq) of every job        listings, in enqueue order
//!             (queue, Dead, seq)               the dead-letter listing and redrive
//!   timers    (kind, time, seq)                scheduled, webhooks
//!   groups    (kind, time, key) -> seqs        lease deadlines (one per lease call),
//!                                              retention (one per entry and expiry)
//!   dedup     (queue, key) -> DedupEntry, with (expiry, queue, key) in its own index
//!   workers   id -> WorkerInfo, with (forget_at, id) for workers holding nothing
//!   outbox    event id -> WebhookEvent
//! ```
//!
//! The methods cannot fail: the disk implementation records the first storage error,
//! returns empty answers after it, and the state machine aborts the whole transaction
//! when it sees one. So the core's rules stay free of I/O error plumbing, and a failed
//! write never becomes a half-applied entry.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::job::Job;
use super::outbox::WebhookEvent;
use super::worker::WorkerInfo;

/// Scalar state: clocks and id counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Leader time of the latest applied entry; never decreases.
    pub now_ms: u64,
    /// Next job seq (enqueue order).
    pub next_seq: u64,
    /// Next lease id (the fencing token).
    pub next_lease_id: u64,
    /// Next webhook event id.
    pub next_webhook_id: u64,
    /// Jobs held, in every state.
    pub jobs: u64,
    /// Webhook events not yet delivered.
    pub webhooks_pending: u64,
}

/// One queue's settings and counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// Paused queues serve no leases.
    pub paused: bool,
    /// Jobs by state, indexed by [`JobState::index`].
    pub counts: [u64; 6],
}

impl QueueInfo {
    /// True when the queue holds no job and no setting, so it can be forgotten.
    pub fn is_empty(&self) -> bool {
        !self.paused && self.counts.iter().all(|&c| c == 0)
    }
}

/// Dedup record of an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// The job the key first created.
    pub job_id: String,
    /// When the key may be reused.
    pub expires_at_ms: u64,
}

/// Time-ordered indexes keyed by job seq (or webhook event id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// (run_at_ms, seq) of scheduled jobs.
    Scheduled = 0,
    // 1 and 2 were a (deadline_ms, seq) entry per leased job and an (expires_at_ms,
    // seq) entry per finished job, up to format 2; both are [`Group`]s now.
    /// (next_attempt_ms, event id) of undelivered webhook events.
    Webhook = 3,
}

/// Time-ordered indexes whose entries hold many jobs: an entry is written once for
/// many jobs and never updated when one of them moves on. Whoever reads a due entry
/// checks each job's own record (its lease deadline, its expiry) and removes the entry.
/// That saves a B-tree write per job and move, which is what an on-disk store pays for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// (deadline_ms, first lease id) -> the jobs one lease call took; an extension
    /// files its job again under the new deadline, keyed by its lease id.
    Lease = 4,
    /// (expires_at_ms, first seq) -> the jobs that finished in one entry with that
    /// expiry.
    Expiring = 5,
}

/// Read access to the tables.
pub trait TablesRead {
    /// Clocks and counters.
    fn counters(&self) -> Counters;
    /// A job's record (without payload and result).
    fn job(&self, seq: u64) -> Option<Job>;
    /// A job's payload (empty when missing).
    fn payload(&self, seq: u64) -> Bytes;
    /// A job's result (empty when missing).
    fn result(&self, seq: u64) -> Bytes;
    /// The seq of a public job id.
    fn seq_of(&self, job_id: &str) -> Option<u64>;
    /// One queue's settings and counts.
    fn queue(&self, name: &str) -> Option<QueueInfo>;
    /// Every known queue, by name.
    fn queues(&self) -> Vec<(String, QueueInfo)>;
    /// Seqs of a queue's jobs (every state), after `after`, in seq order, at most `limit`.
    fn listed_range(&self, queue: &str, after: Option<u64>, limit: usize) -> Vec<u64>;
    /// Seqs of a queue's dead jobs, after `after`, in seq order, at most `limit`.
    fn dead_range(&self, queue: &str, after: Option<u64>, limit: usize) -> Vec<u64>;
    /// The earliest entry of a timer index.
    fn timer_first(&self, timer: Timer) -> Option<(u64, u64)>;
    /// Entries of a timer index due at `now`, earliest first, at most `limit`.
    fn timers_due(&self, timer: Timer, now: u64, limit: usize) -> Vec<(u64, u64)>;
    /// The earliest entry's time in a [`Group`].
    fn group_first(&self, group: Group) -> Option<u64>;
    /// Entries of a [`Group`] due at `now`, earliest first, at most `limit`:
    /// (time, key, seqs).
    fn groups_due(&self, group: Group, now: u64, limit: usize) -> Vec<(u64, u64, Vec<u64>)>;
    /// An idempotency key's record.
    fn dedup(&self, queue: &str, key: &str) -> Option<DedupEntry>;
    /// The earliest dedup expiry.
    fn dedup_expiry_first(&self) -> Option<(u64, String, String)>;
    /// One worker.
    fn worker(&self, id: &str) -> Option<WorkerInfo>;
    /// Every worker, by id.
    fn workers(&self) -> Vec<(String, WorkerInfo)>;
    /// The idle worker (holding nothing) to forget first, by forget time.
    fn idle_worker_first(&self) -> Option<(u64, String)>;
    /// One undelivered webhook event.
    fn webhook(&self, id: u64) -> Option<WebhookEvent>;
}

/// Write access to the tables.
pub trait Tables: TablesRead {
    /// Replaces clocks and counters.
    fn set_counters(&mut self, c: Counters);
    /// Inserts or replaces a job's record.
    fn put_job(&mut self, job: &Job);
    /// Removes a job's record, payload and result (the tables' payload and result
    /// only where the record does not hold them).
    fn delete_job(&mut self, job: &Job);
    /// Stores a job's payload.
    fn put_payload(&mut self, seq: u64, payload: &Bytes);
    /// Stores a job's result.
    fn put_result(&mut self, seq: u64, result: &Bytes);
    /// Forgets a job's result in the results table.
    fn delete_result(&mut self, seq: u64);
    /// Maps a public job id to its seq.
    fn put_id(&mut self, job_id: &str, seq: u64);
    /// Forgets a public job id.
    fn delete_id(&mut self, job_id: &str);
    /// Inserts or replaces a queue's settings and counts.
    fn put_queue(&mut self, name: &str, info: &QueueInfo);
    /// Forgets a queue.
    fn delete_queue(&mut self, name: &str);
    /// Files a ready job.
    fn ready_insert(&mut self, queue: &str, priority: i32, seq: u64);
    /// Unfiles a ready job.
    fn ready_remove(&mut self, queue: &str, priority: i32, seq: u64);
    /// Takes the queue's next ready jobs (highest priority, then oldest) off the ready
    /// index, at most `limit`, and returns their seqs: a lease of many jobs walks the
    /// index once, not once per job.
    fn ready_take(&mut self, queue: &str, limit: usize) -> Vec<u64>;
    /// Lists a job under its queue (once, when it is enqueued: a job's moves between
    /// states write no listing entry, which keeps a lease and an ack a few writes
    /// cheaper on disk).
    fn listed_insert(&mut self, queue: &str, seq: u64);
    /// Unlists a job (when it is removed).
    fn listed_remove(&mut self, queue: &str, seq: u64);
    /// Files a dead job (the dead-letter listing and redrive).
    fn dead_insert(&mut self, queue: &str, seq: u64);
    /// Unfiles a dead job.
    fn dead_remove(&mut self, queue: &str, seq: u64);
    /// Adds a timer entry.
    fn timer_insert(&mut self, timer: Timer, at: u64, seq: u64);
    /// Removes a timer entry.
    fn timer_remove(&mut self, timer: Timer, at: u64, seq: u64);
    /// Files jobs in the [`Group`] entry `(at, key)`, merged with what it holds.
    fn group_insert(&mut self, group: Group, at: u64, key: u64, seqs: &[u64]);
    /// Removes a [`Group`] entry.
    fn group_remove(&mut self, group: Group, at: u64, key: u64);
    /// Records an idempotency key (and its expiry index entry).
    fn put_dedup(&mut self, queue: &str, key: &str, entry: &DedupEntry);
    /// Forgets an idempotency key (and its expiry index entry).
    fn delete_dedup(&mut self, queue: &str, key: &str, expires_at_ms: u64);
    /// Inserts or replaces a worker.
    fn put_worker(&mut self, id: &str, info: &WorkerInfo);
    /// Forgets a worker.
    fn delete_worker(&mut self, id: &str);
    /// Files an idle worker under its forget time.
    fn idle_worker_insert(&mut self, forget_at_ms: u64, id: &str);
    /// Unfiles an idle worker.
    fn idle_worker_remove(&mut self, forget_at_ms: u64, id: &str);
    /// Inserts or replaces an undelivered webhook event.
    fn put_webhook(&mut self, event: &WebhookEvent);
    /// Forgets a webhook event.
    fn delete_webhook(&mut self, id: u64);
}

/// Adds to `entry` the seqs it does not hold yet, in order of arrival.
pub fn merge_seqs(entry: &mut Vec<u64>, seqs: &[u64]) {
    for &seq in seqs {
        if !entry.contains(&seq) {
            entry.push(seq);
        }
    }
}

/// Ready key in serving order: higher priority first, then lower seq.
pub fn ready_order(priority: i32, seq: u64) -> (i64, u64) {
    (-i64::from(priority), seq)
}

/// The tables in memory: the reference implementation for tests and the property test
/// that compares it with the disk store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemTables {
    pub(crate) counters: Counters,
    pub(crate) jobs: BTreeMap<u64, Job>,
    pub(crate) payloads: BTreeMap<u64, Bytes>,
    pub(crate) results: BTreeMap<u64, Bytes>,
    pub(crate) ids: BTreeMap<String, u64>,
    pub(crate) queues: BTreeMap<String, QueueInfo>,
    pub(crate) ready: BTreeSet<(String, (i64, u64))>,
    pub(crate) listed: BTreeSet<(String, u64)>,
    pub(crate) dead: BTreeSet<(String, u64)>,
    pub(crate) timers: BTreeSet<(Timer, u64, u64)>,
    pub(crate) groups: BTreeMap<(Group, u64, u64), Vec<u64>>,
    pub(crate) dedup: BTreeMap<(String, String), DedupEntry>,
    pub(crate) dedup_expiry: BTreeSet<(u64, String, String)>,
    pub(crate) workers: BTreeMap<String, WorkerInfo>,
    pub(crate) idle_workers: BTreeSet<(u64, String)>,
    pub(crate) outbox: BTreeMap<u64, WebhookEvent>,
}

/// Seqs of `queue` in `set` after `after`, at most `limit`.
fn seq_range(
    set: &BTreeSet<(String, u64)>,
    queue: &str,
    after: Option<u64>,
    limit: usize,
) -> Vec<u64> {
    if after == Some(u64::MAX) {
        return Vec::new();
    }
    let start = after.map_or(0, |a| a + 1);
    set.range((queue.to_string(), start)..)
        .take_while(|(q, _)| q == queue)
        .take(limit)
        .map(|(_, seq)| *seq)
        .collect()
}

impl TablesRead for MemTables {
    fn counters(&self) -> Counters {
        self.counters
    }
    fn job(&self, seq: u64) -> Option<Job> {
        self.jobs.get(&seq).cloned()
    }
    fn payload(&self, seq: u64) -> Bytes {
        self.payloads.get(&seq).cloned().unwrap_or_default()
    }
    fn result(&self, seq: u64) -> Bytes {
        self.results.get(&seq).cloned().unwrap_or_default()
    }
    fn seq_of(&self, job_id: &str) -> Option<u64> {
        self.ids.get(job_id).copied()
    }
    fn queue(&self, name: &str) -> Option<QueueInfo> {
        self.queues.get(name).cloned()
    }
    fn queues(&self) -> Vec<(String, QueueInfo)> {
        self.queues
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn listed_range(&self, queue: &str, after: Option<u64>, limit: usize) -> Vec<u64> {
        seq_range(&self.listed, queue, after, limit)
    }
    fn dead_range(&self, queue: &str, after: Option<u64>, limit: usize) -> Vec<u64> {
        seq_range(&self.dead, queue, after, limit)
    }
    fn timer_first(&self, timer: Timer) -> Option<(u64, u64)> {
        self.timers
            .range((timer, 0, 0)..)
            .next()
            .filter(|(t, _, _)| *t == timer)
            .map(|(_, at, seq)| (*at, *seq))
    }
    fn timers_due(&self, timer: Timer, now: u64, limit: usize) -> Vec<(u64, u64)> {
        self.timers
            .range((timer, 0, 0)..)
            .take_while(|(t, at, _)| *t == timer && *at <= now)
            .take(limit)
            .map(|(_, at, seq)| (*at, *seq))
            .collect()
    }
    fn group_first(&self, group: Group) -> Option<u64> {
        self.groups_due(group, u64::MAX, 1).first().map(|e| e.0)
    }
    fn groups_due(&self, group: Group, now: u64, limit: usize) -> Vec<(u64, u64, Vec<u64>)> {
        self.groups
            .range((group, 0, 0)..)
            .take_while(|((g, at, _), _)| *g == group && *at <= now)
            .take(limit)
            .map(|((_, at, key), seqs)| (*at, *key, seqs.clone()))
            .collect()
    }
    fn dedup(&self, queue: &str, key: &str) -> Option<DedupEntry> {
        self.dedup
            .get(&(queue.to_string(), key.to_string()))
            .cloned()
    }
    fn dedup_expiry_first(&self) -> Option<(u64, String, String)> {
        self.dedup_expiry.first().cloned()
    }
    fn worker(&self, id: &str) -> Option<WorkerInfo> {
        self.workers.get(id).cloned()
    }
    fn workers(&self) -> Vec<(String, WorkerInfo)> {
        self.workers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn idle_worker_first(&self) -> Option<(u64, String)> {
        self.idle_workers.first().cloned()
    }
    fn webhook(&self, id: u64) -> Option<WebhookEvent> {
        self.outbox.get(&id).cloned()
    }
}

impl Tables for MemTables {
    fn set_counters(&mut self, c: Counters) {
        self.counters = c;
    }
    fn put_job(&mut self, job: &Job) {
        self.jobs.insert(job.seq, job.clone());
    }
    fn delete_job(&mut self, job: &Job) {
        self.jobs.remove(&job.seq);
        self.payloads.remove(&job.seq);
        self.results.remove(&job.seq);
    }
    fn put_payload(&mut self, seq: u64, payload: &Bytes) {
        self.payloads.insert(seq, payload.clone());
    }
    fn put_result(&mut self, seq: u64, result: &Bytes) {
        self.results.insert(seq, result.clone());
    }
    fn delete_result(&mut self, seq: u64) {
        self.results.remove(&seq);
    }
    fn put_id(&mut self, job_id: &str, seq: u64) {
        self.ids.insert(job_id.to_string(), seq);
    }
    fn delete_id(&mut self, job_id: &str) {
        self.ids.remove(job_id);
    }
    fn put_queue(&mut self, name: &str, info: &QueueInfo) {
        self.queues.insert(name.to_string(), info.clone());
    }
    fn delete_queue(&mut self, name: &str) {
        self.queues.remove(name);
    }
    fn ready_insert(&mut self, queue: &str, priority: i32, seq: u64) {
        self.ready
            .insert((queue.to_string(), ready_order(priority, seq)));
    }
    fn ready_remove(&mut self, queue: &str, priority: i32, seq: u64) {
        self.ready
            .remove(&(queue.to_string(), ready_order(priority, seq)));
    }
    fn ready_take(&mut self, queue: &str, limit: usize) -> Vec<u64> {
        let taken: Vec<_> = self
            .ready
            .range((queue.to_string(), (i64::MIN, 0))..)
            .take_while(|(q, _)| q == queue)
            .take(limit)
            .cloned()
            .collect();
        for k in &taken {
            self.ready.remove(k);
        }
        taken.into_iter().map(|(_, (_, seq))| seq).collect()
    }
    fn listed_insert(&mut self, queue: &str, seq: u64) {
        self.listed.insert((queue.to_string(), seq));
    }
    fn listed_remove(&mut self, queue: &str, seq: u64) {
        self.listed.remove(&(queue.to_string(), seq));
    }
    fn dead_insert(&mut self, queue: &str, seq: u64) {
        self.dead.insert((queue.to_string(), seq));
    }
    fn dead_remove(&mut self, queue: &str, seq: u64) {
        self.dead.remove(&(queue.to_string(), seq));
    }
    fn timer_insert(&mut self, timer: Timer, at: u64, seq: u64) {
        self.timers.insert((timer, at, seq));
    }
    fn timer_remove(&mut self, timer: Timer, at: u64, seq: u64) {
        self.timers.remove(&(timer, at, seq));
    }
    fn group_insert(&mut self, group: Group, at: u64, key: u64, seqs: &[u64]) {
        let entry = self.groups.entry((group, at, key)).or_default();
        merge_seqs(entry, seqs);
    }
    fn group_remove(&mut self, group: Group, at: u64, key: u64) {
        self.groups.remove(&(group, at, key));
    }
    fn put_dedup(&mut self, queue: &str, key: &str, entry: &DedupEntry) {
        self.dedup_expiry
            .insert((entry.expires_at_ms, queue.to_string(), key.to_string()));
        self.dedup
            .insert((queue.to_string(), key.to_string()), entry.clone());
    }
    fn delete_dedup(&mut self, queue: &str, key: &str, expires_at_ms: u64) {
        self.dedup_expiry
            .remove(&(expires_at_ms, queue.to_string(), key.to_string()));
        self.dedup.remove(&(queue.to_string(), key.to_string()));
    }
    fn put_worker(&mut self, id: &str, info: &WorkerInfo) {
        self.workers.insert(id.to_string(), info.clone());
    }
    fn delete_worker(&mut self, id: &str) {
        self.workers.remove(id);
    }
    fn idle_worker_insert(&mut self, forget_at_ms: u64, id: &str) {
        self.idle_workers.insert((forget_at_ms, id.to_string()));
    }
    fn idle_worker_remove(&mut self, forget_at_ms: u64, id: &str) {
        self.idle_workers.remove(&(forget_at_ms, id.to_string()));
    }
    fn put_webhook(&mut self, event: &WebhookEvent) {
        self.outbox.insert(event.id, event.clone());
    }
    fn delete_webhook(&mut self, id: u64) {
        self.outbox.remove(&id);
    }
}
