//! The read side: consistent views for the API, and the waiters of long-polling
//! Leases woken when their queues gain jobs.

use super::*;

/// The queue state as one read transaction sees it.
pub struct ReadView {
    /// The queue state (reads only).
    pub state: State<DiskTables<LazyTable>>,
    /// Last applied log id in this view.
    pub last_applied: Option<LogId>,
}

/// The store as API handlers see it: consistent read views and apply notifications.
pub struct ReadSide {
    pub(super) db: RwLock<Arc<Database>>,
    /// Long-polling leases by the queues they wait for ([`ReadSide::watch_queues`]).
    pub(super) waiters: Mutex<HashMap<String, Weak<Notify>>>,
    /// Index of the last applied entry that readers can see (committed to the store).
    pub applied_index: watch::Sender<u64>,
    /// Index of the last applied entry, which may still wait in the open transaction.
    pub(super) applied_latest: AtomicU64,
    /// Told every job transition as its batch is applied (metrics); set once, after
    /// start. Until then the core is not asked to report any.
    pub(super) observer: OnceLock<TransitionObserver>,
}

/// A consumer of the core's job transitions, called once per applied batch in log
/// order. It runs on the apply path, so it must be cheap (counters, not I/O).
pub type TransitionObserver = Arc<dyn Fn(&[Transition]) + Send + Sync>;

impl ReadSide {
    /// Makes `observer` the consumer of every transition applied from now on. Only the
    /// first call counts (one consumer per node: its metrics).
    pub fn observe_transitions(&self, observer: TransitionObserver) {
        if self.observer.set(observer).is_err() {
            tracing::warn!("a transition observer was already set; the new one is ignored");
        }
    }

    pub(super) fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A read view as of the last applied batch. A storage failure is logged: one that
    /// keeps the view from opening (its transaction, its metadata) yields an empty view,
    /// one met later reads as an empty table (see `DiskTables::fail`); the store is then
    /// failing for every caller.
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
    pub(super) fn wake(&self, readied: HashMap<String, u32>) {
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
    pub(super) fn wake_all(&self) {
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for n in w.values().filter_map(Weak::upgrade) {
            n.notify_waiters();
        }
    }

    /// A read transaction of the store as of the last applied batch, and the log id it
    /// is at: what a backup streams (`raft::snapshot::dump_to`).
    pub fn backup_view(&self) -> Result<(ReadTransaction, Option<LogId>), String> {
        let txn = self.db().begin_read().map_err(|e| e.to_string())?;
        let (applied, _) = applied_of(&txn).map_err(|e| format!("{e:#}"))?;
        Ok((txn, applied))
    }

    pub(super) fn try_read(&self) -> Result<ReadView, String> {
        let txn = self.db().begin_read().map_err(|e| e.to_string())?;
        view_of(txn)
    }
}

/// A view of `txn`, whose tables open as they are first read: a long-polling Lease's
/// look reads three of the fourteen.
fn view_of(txn: ReadTransaction) -> Result<ReadView, String> {
    let tables = DiskTables::lazy(txn);
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
pub(super) fn empty_view() -> ReadView {
    let scratch = redb::Builder::new()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .ok()
        .filter(|db| create_all(db).is_ok());
    let view = scratch
        .and_then(|db| db.begin_read().ok())
        .and_then(|txn| view_of(txn).ok());
    view.expect("an in-memory redb database can always be created and read")
}
