//! The dashboard's short rate history: per-queue totals (counted from the core's
//! transitions, so the whole cluster's) sampled every few seconds into a ring buffer,
//! turned into rates on request.

use super::*;

/// How often the dashboard history is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept (10 minutes at [`SAMPLE_EVERY`]).
pub const HISTORY_LEN: usize = 300;

/// One dashboard sample: totals per queue at a time.
#[derive(Clone, Debug)]
pub(super) struct Sample {
    t_ms: u64,
    totals: Vec<(Arc<QueueCounters>, u64, u64)>,
}

/// Rates of one queue over the kept history, for the dashboard.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QueueRates {
    /// Sample times (Unix ms), one per rate point.
    pub t_ms: Vec<u64>,
    /// Enqueued jobs per second between consecutive samples.
    pub enqueue_per_s: Vec<f64>,
    /// Completed (acked) jobs per second between consecutive samples.
    pub complete_per_s: Vec<f64>,
    /// Total enqueued in the cluster since this node started.
    pub enqueued_total: u64,
    /// Total acked in the cluster since this node started.
    pub completed_total: u64,
}

impl Metrics {
    /// Takes one dashboard sample (and forgets lease starts too old to be timed).
    pub fn sample(&self, now_ms: u64) {
        let Some(inner) = &self.inner else { return };
        self.forget_old_leases();
        let totals = read(&inner.queues)
            .values()
            .map(|q| {
                (
                    q.clone(),
                    q.enqueued.load(Ordering::Relaxed),
                    q.acked.load(Ordering::Relaxed),
                )
            })
            .collect();
        let mut h = lock(&inner.history);
        if h.len() == HISTORY_LEN {
            h.pop_front();
        }
        h.push_back(Sample {
            t_ms: now_ms,
            totals,
        });
    }

    /// Samples every [`SAMPLE_EVERY`] until the task is aborted.
    pub async fn run_sampler(self: Arc<Self>) {
        if !self.enabled() {
            return;
        }
        let mut interval = tokio::time::interval(SAMPLE_EVERY);
        loop {
            interval.tick().await;
            let now_ms = self.inner.as_ref().and_then(|i| i.node.upgrade());
            self.sample(now_ms.map_or(0, |n| n.now_ms()));
        }
    }

    /// Enqueue and completion rates of `queue` over the kept history.
    pub fn rates(&self, queue: &str) -> QueueRates {
        let Some(inner) = &self.inner else {
            return QueueRates::default();
        };
        let h = lock(&inner.history);
        let total = |s: &Sample| {
            s.totals
                .iter()
                .find(|(q, _, _)| q.queue() == queue)
                .map_or((0, 0), |(_, e, c)| (*e, *c))
        };
        let mut out = QueueRates::default();
        let mut prev: Option<(u64, (u64, u64))> = None;
        for s in h.iter() {
            let now = (s.t_ms, total(s));
            if let Some((t0, (e0, c0))) = prev {
                let dt = (now.0.saturating_sub(t0) as f64 / 1000.0).max(0.001);
                out.t_ms.push(now.0);
                out.enqueue_per_s
                    .push(now.1 .0.saturating_sub(e0) as f64 / dt);
                out.complete_per_s
                    .push(now.1 .1.saturating_sub(c0) as f64 / dt);
            }
            prev = Some(now);
        }
        if let Some(q) = read(&inner.queues).get(queue) {
            out.enqueued_total = q.enqueued.load(Ordering::Relaxed);
            out.completed_total = q.acked.load(Ordering::Relaxed);
        }
        out
    }
}
