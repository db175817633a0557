//! Per-queue job counters: atomics counted from the core's transitions (every node
//! counts the whole cluster's jobs), read out as observable counters when Prometheus
//! scrapes.

use super::*;

/// Per-queue job counters of the whole cluster, as this node applied them.
#[derive(Debug)]
pub struct QueueCounters {
    pub(super) attr: [KeyValue; 1],
    /// Jobs enqueued (duplicates not counted).
    pub enqueued: AtomicU64,
    /// Jobs handed out by Lease.
    pub leased: AtomicU64,
    /// Jobs acked.
    pub acked: AtomicU64,
    /// Jobs nacked.
    pub nacked: AtomicU64,
    /// Jobs that went dead after a nack or a lease expiry.
    pub dead_lettered: AtomicU64,
    /// Leases that ran out.
    pub expired: AtomicU64,
}

impl QueueCounters {
    fn new(queue: &str) -> Self {
        Self {
            attr: [KeyValue::new("queue", queue.to_string())],
            enqueued: AtomicU64::new(0),
            leased: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    /// The queue name.
    pub fn queue(&self) -> &str {
        match &self.attr[0].value {
            opentelemetry::Value::String(s) => s.as_str(),
            _ => "",
        }
    }
}

pub(super) type Queues = RwLock<HashMap<String, Arc<QueueCounters>>>;

impl Metrics {
    /// Counters of `queue` (created on first use).
    pub fn queue(&self, queue: &str) -> Option<Arc<QueueCounters>> {
        let inner = self.inner.as_ref()?;
        if let Some(q) = read(&inner.queues).get(queue) {
            return Some(q.clone());
        }
        let mut map = inner.queues.write().unwrap_or_else(|p| p.into_inner());
        Some(
            map.entry(queue.to_string())
                .or_insert_with(|| Arc::new(QueueCounters::new(queue)))
                .clone(),
        )
    }

    /// Counts one look of a Lease call for leasable jobs.
    pub fn lease_poll(&self) {
        if let Some(inner) = &self.inner {
            inner.lease_polls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(super) fn register_counters(meter: &Meter, queues: &Arc<Queues>) {
    type Pick = fn(&QueueCounters) -> &AtomicU64;
    let per_queue: [(&'static str, &'static str, Pick); 6] = [
        (
            "taskraft_jobs_enqueued",
            "Jobs enqueued in the cluster (duplicates not counted)",
            |q| &q.enqueued,
        ),
        ("taskraft_jobs_leased", "Jobs leased in the cluster", |q| {
            &q.leased
        }),
        ("taskraft_jobs_acked", "Jobs acked in the cluster", |q| {
            &q.acked
        }),
        ("taskraft_jobs_nacked", "Jobs nacked in the cluster", |q| {
            &q.nacked
        }),
        (
            "taskraft_jobs_dead_lettered",
            "Jobs that went dead in the cluster, after a nack or an expired lease",
            |q| &q.dead_lettered,
        ),
        (
            "taskraft_jobs_expired",
            "Leases that ran out in the cluster",
            |q| &q.expired,
        ),
    ];
    for (name, help, pick) in per_queue {
        let queues = queues.clone();
        meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o| {
                for q in read(&queues).values() {
                    o.observe(pick(q).load(Ordering::Relaxed), &q.attr);
                }
            })
            .build();
    }
}
