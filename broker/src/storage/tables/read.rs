//! Reading the tables: what both read views and the applying write transaction do.

use super::*;

impl<T: TableRead> DiskTables<T> {
    fn get_raw(&self, t: &T, key: &[u8], what: &str) -> Option<Vec<u8>> {
        match t.get_bytes(key) {
            Ok(v) => v.map(|g| g.value().to_vec()),
            Err(e) => {
                self.fail(what, e);
                None
            }
        }
    }

    /// Decodes a record straight from redb's page (no copy of the bytes first).
    fn get<V: serde::de::DeserializeOwned>(&self, t: &T, key: &[u8], what: &str) -> Option<V> {
        let guard = match t.get_bytes(key) {
            Ok(v) => v?,
            Err(e) => {
                self.fail(what, e);
                return None;
            }
        };
        match decode(guard.value()) {
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
        let range = match t.range_from(start) {
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

impl<T: TableRead> TablesRead for DiskTables<T> {
    fn counters(&self) -> Counters {
        self.get(&self.h.meta, COUNTERS_KEY, "counters")
            .unwrap_or_default()
    }
    fn job(&self, seq: u64) -> Option<Job> {
        let guard = match self.h.jobs.get_bytes(seq.to_be_bytes().as_slice()) {
            Ok(v) => v?,
            Err(e) => {
                self.fail("jobs", e);
                return None;
            }
        };
        match decode_job(guard.value()) {
            Ok(job) => Some(job),
            Err(e) => {
                self.fail("jobs", format!("undecodable record: {e}"));
                None
            }
        }
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
        let guard = match self.h.ids.get_bytes(job_id.as_bytes()) {
            Ok(v) => v?,
            Err(e) => {
                self.fail("ids", e);
                return None;
            }
        };
        let raw = guard.value();
        (raw.len() == 8).then(|| u64_at(raw, 0))
    }
    fn queue(&self, name: &str) -> Option<QueueInfo> {
        self.cached_get(&self.queues, &self.h.queues, name, "queues")
    }
    fn queues(&self) -> Vec<(String, QueueInfo)> {
        self.cached_all(&self.queues, &self.h.queues, "queues")
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
    fn group_first(&self, group: Group) -> Option<u64> {
        let start = group_key(group, 0, 0);
        let (k, _) = self
            .scan(&self.h.timers, &start, 1, "timers", |k| k[0] == group as u8)
            .pop()?;
        Some(u64_at(&k, 1))
    }
    fn groups_due(&self, group: Group, now: u64, limit: usize) -> Vec<(u64, u64, Vec<u64>)> {
        let start = group_key(group, 0, 0);
        self.scan(&self.h.timers, &start, limit, "timers", |k| {
            k[0] == group as u8 && u64_at(k, 1) <= now
        })
        .into_iter()
        .map(|(k, v)| (u64_at(&k, 1), u64_at(&k, 9), seqs_of(&v)))
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
