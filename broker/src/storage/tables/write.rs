//! Writing the tables, inside the write transaction that applies entries.

use std::ops::Bound;

use super::*;

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
        // One buffer reused for every record of the transaction.
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        match postcard::to_extend(value, buf) {
            Ok(bytes) => {
                self.put_raw(which, key, &bytes, what);
                self.scratch = bytes;
            }
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
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        match encode_job(job, buf) {
            Ok(bytes) => {
                self.put_raw(|h| &mut h.jobs, &job.seq.to_be_bytes(), &bytes, "jobs");
                self.scratch = bytes;
            }
            Err(e) => self.fail("jobs", e),
        }
    }
    fn delete_job(&mut self, job: &Job) {
        let k = job.seq.to_be_bytes();
        self.del_raw(|h| &mut h.jobs, &k, "jobs");
        if job.inline_payload.is_none() {
            self.del_raw(|h| &mut h.payloads, &k, "payloads");
        }
        if job.inline_result.is_none() {
            self.del_raw(|h| &mut h.results, &k, "results");
        }
    }
    fn put_payload(&mut self, seq: u64, payload: &Bytes) {
        self.put_raw(|h| &mut h.payloads, &seq.to_be_bytes(), payload, "payloads");
    }
    fn put_result(&mut self, seq: u64, result: &Bytes) {
        self.put_raw(|h| &mut h.results, &seq.to_be_bytes(), result, "results");
    }
    fn delete_result(&mut self, seq: u64) {
        self.del_raw(|h| &mut h.results, &seq.to_be_bytes(), "results");
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
    fn ready_take(&mut self, queue: &str, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        let start = qkey(queue);
        let end = prefix_end(&start);
        let range = (
            Bound::Included(start.as_slice()),
            end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        );
        // One cursor walks the index and removes what it yields: cheaper than a delete
        // per job from the root. Entries past the `limit` read stay.
        let taken = (|| {
            for item in self
                .h
                .ready
                .extract_from_if::<&[u8], _>(range, every)?
                .take(limit)
            {
                let (k, _) = item?;
                out.push(u64_at(k.value(), k.value().len() - 8));
            }
            Ok::<_, redb::StorageError>(())
        })();
        if let Err(e) = taken {
            self.fail("ready", e);
        }
        out
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
    fn group_insert(&mut self, group: Group, at: u64, key: u64, seqs: &[u64]) {
        let k = group_key(group, at, key);
        let held = match self.h.timers.get(k.as_slice()) {
            Ok(v) => v.map(|g| seqs_of(g.value())),
            Err(e) => {
                self.fail("timers", e);
                return;
            }
        };
        let mut all = held.unwrap_or_default();
        crate::queue::merge_seqs(&mut all, seqs);
        let value: Vec<u8> = all.iter().flat_map(|s| s.to_be_bytes()).collect();
        self.put_raw(|h| &mut h.timers, &k, &value, "timers");
    }
    fn group_remove(&mut self, group: Group, at: u64, key: u64) {
        self.del_raw(|h| &mut h.timers, &group_key(group, at, key), "timers");
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
        // Every leased and settled job changes its worker's count: no new key then.
        match self.workers.get_mut(id) {
            Some(slot) => *slot = Some(info.clone()),
            None => {
                self.workers.insert(id.to_string(), Some(info.clone()));
            }
        }
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

/// The predicate of an extraction that takes every entry it reads.
fn every(_: &[u8], _: &[u8]) -> bool {
    true
}
