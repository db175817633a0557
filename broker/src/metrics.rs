//! Metrics: OpenTelemetry instruments read out in Prometheus text format at
//! `GET /metrics`, plus the short rate history the dashboard draws.
//!
//! ```text
//!  API handlers ──► QueueCounters (atomics, per queue) ──┐ observable counters
//!  applied state (node.view()) ─────────────────────────┤ observable gauges
//!  cluster view (node.cluster_view()) ──────────────────┤ observable gauges
//!  handlers, tower layer, log store ──► histograms ─────┘
//!                                  SdkMeterProvider ──► prometheus::Registry ──► /metrics
//!  sampler task (every few seconds) ──► ring buffer of per-queue totals ──► /api/queues
//! ```
//!
//! The hot path only touches pre-created instruments: one read-locked map lookup and an
//! atomic add per counted job, one histogram record per RPC, lease wait and processing
//! time. Everything that walks the state (queue gauges, Raft gauges) runs when
//! Prometheus scrapes. With `--metrics false` [`Metrics::disabled`] does nothing at all.
//!
//! Names follow Prometheus conventions with the unit in the name: counters are
//! registered without the `_total` suffix, which the exporter adds
//! (`taskraft_jobs_enqueued` → `taskraft_jobs_enqueued_total`).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::queue::JobState;
use crate::raft::RaftNode;

/// How often the dashboard history is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept (10 minutes at [`SAMPLE_EVERY`]).
pub const HISTORY_LEN: usize = 300;
/// Lease start times older than this are dropped (no lease lasts longer than 12 h).
const LEASE_FORGET: Duration = Duration::from_secs(13 * 3600);

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
const JOB_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0,
];

/// Per-queue job counters, counted by the API handlers of this node.
#[derive(Debug)]
pub struct QueueCounters {
    attr: [KeyValue; 1],
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

type Queues = RwLock<HashMap<String, Arc<QueueCounters>>>;

/// A lease this node handed out and has not seen end yet.
struct LeaseStart {
    at: Instant,
    queue: Arc<QueueCounters>,
    job_id: String,
    /// The job's expiration count when leased: a higher count later means this lease
    /// ran out.
    expirations: u32,
}

/// One dashboard sample: totals per queue at a time.
#[derive(Clone, Debug)]
struct Sample {
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
    /// Total enqueued through this node since it started.
    pub enqueued_total: u64,
    /// Total acked through this node since it started.
    pub completed_total: u64,
}

struct Inner {
    node: Weak<RaftNode>,
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    queues: Arc<Queues>,
    leases: Mutex<HashMap<u64, LeaseStart>>,
    wait: Histogram<f64>,
    processing: Histogram<f64>,
    rpc: Histogram<f64>,
    fsync: Histogram<f64>,
    lease_polls: Arc<AtomicU64>,
    history: Mutex<VecDeque<Sample>>,
}

/// The metrics of one node. Cheap to share (`Arc`); a disabled one records nothing.
pub struct Metrics {
    inner: Option<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl Metrics {
    /// Metrics that record nothing (`--metrics false`).
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self { inner: None })
    }

    /// True unless disabled.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Creates the instruments of `node` and their Prometheus registry.
    pub fn new(node: &Arc<RaftNode>) -> anyhow::Result<Arc<Self>> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .without_target_info()
            .scope_info_enabled(false)
            .build()?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("taskraft");
        let queues: Arc<Queues> = Arc::default();
        register_counters(&meter, &queues);
        register_state_gauges(&meter, node);
        register_raft_gauges(&meter, node);
        let lease_polls = Arc::new(AtomicU64::new(0));
        {
            let polls = lease_polls.clone();
            meter
                .u64_observable_counter("taskraft_lease_polls")
                .with_description(
                    "Looks of waiting Lease calls for leasable jobs: one per call, and one per wake-up \
                     (a job became ready in one of its queues, or the 1 s re-check)",
                )
                .with_callback(move |o| o.observe(polls.load(Ordering::Relaxed), &[]))
                .build();
        }
        let histogram = |name: &'static str, help: &'static str, buckets: &[f64]| {
            meter
                .f64_histogram(name)
                .with_description(help)
                .with_boundaries(buckets.to_vec())
                .build()
        };
        let inner = Inner {
            node: Arc::downgrade(node),
            registry,
            queues,
            leases: Mutex::default(),
            wait: histogram(
                "taskraft_job_wait_seconds",
                "Time from a job being due (enqueued, or its retry time) to its lease",
                JOB_BUCKETS,
            ),
            processing: histogram(
                "taskraft_job_processing_seconds",
                "Time from lease to ack or nack, for leases handed out by this node",
                JOB_BUCKETS,
            ),
            rpc: histogram(
                "taskraft_rpc_duration_seconds",
                "gRPC call latency until response headers, by method and status code",
                LATENCY_BUCKETS,
            ),
            fsync: histogram(
                "taskraft_storage_fsync_seconds",
                "Duration of the Raft log's redb commit (fsync) per append batch",
                LATENCY_BUCKETS,
            ),
            lease_polls,
            history: Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
            _provider: provider,
        };
        Ok(Arc::new(Self { inner: Some(inner) }))
    }

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

    /// Counts an enqueued (non-duplicate) job.
    pub fn enqueued(&self, queue: &str) {
        if let Some(q) = self.queue(queue) {
            q.enqueued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the jobs of one lease call and remembers when each lease started, with
    /// the job's expiration count (to tell later that the lease ran out). The wait
    /// histogram uses the due time the core reports with each leased job.
    pub fn leased(&self, jobs: &[crate::queue::LeasedJob]) {
        let Some(inner) = &self.inner else { return };
        let now_ms = inner.node.upgrade().map_or(0, |n| n.now_ms());
        let mut leases = lock(&inner.leases);
        for j in jobs {
            let Some(q) = self.queue(&j.queue) else {
                return;
            };
            q.leased.fetch_add(1, Ordering::Relaxed);
            let wait = now_ms.saturating_sub(j.due_ms) as f64 / 1000.0;
            inner.wait.record(wait, &q.attr);
            leases.insert(
                j.lease_id,
                LeaseStart {
                    at: Instant::now(),
                    queue: q,
                    job_id: j.job_id.clone(),
                    expirations: j.expirations,
                },
            );
        }
    }

    fn finish_lease(
        &self,
        lease_id: u64,
        queue: impl FnOnce() -> Option<String>,
    ) -> Option<Arc<QueueCounters>> {
        let inner = self.inner.as_ref()?;
        let started = lock(&inner.leases).remove(&lease_id);
        match started {
            Some(s) => {
                inner
                    .processing
                    .record(s.at.elapsed().as_secs_f64(), &s.queue.attr);
                Some(s.queue)
            }
            // Leased through another node (or before a restart): count without timing.
            None => queue().and_then(|q| self.queue(&q)),
        }
    }

    /// Counts an ack; `queue` is asked only when this node did not hand out the lease.
    /// Returns the queue name for the span.
    pub fn acked(
        &self,
        lease_id: u64,
        queue: impl FnOnce() -> Option<String>,
    ) -> Option<Arc<QueueCounters>> {
        let q = self.finish_lease(lease_id, queue)?;
        q.acked.fetch_add(1, Ordering::Relaxed);
        Some(q)
    }

    /// Counts a nack and whether it dead-lettered the job.
    pub fn nacked(
        &self,
        lease_id: u64,
        to: JobState,
        queue: impl FnOnce() -> Option<String>,
    ) -> Option<Arc<QueueCounters>> {
        let q = self.finish_lease(lease_id, queue)?;
        q.nacked.fetch_add(1, Ordering::Relaxed);
        if to == JobState::Dead {
            q.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        Some(q)
    }

    /// Records one gRPC call.
    pub fn rpc(&self, method: &str, code: &'static str, elapsed: Duration) {
        if let Some(inner) = &self.inner {
            inner.rpc.record(
                elapsed.as_secs_f64(),
                &[
                    KeyValue::new("method", method.to_string()),
                    KeyValue::new("code", code),
                ],
            );
        }
    }

    /// A callback for the log store: records each append's commit duration.
    pub fn fsync_observer(&self) -> Option<crate::raft::log_store::FsyncObserver> {
        let h = self.inner.as_ref()?.fsync.clone();
        Some(Arc::new(move |d: Duration| h.record(d.as_secs_f64(), &[])))
    }

    /// The Prometheus text exposition of every instrument.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let Some(inner) = &self.inner else {
            return "# metrics are disabled (--metrics false)\n".into();
        };
        let mut out = Vec::new();
        let families = inner.registry.gather();
        if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Takes one dashboard sample, and counts the leases this node handed out that
    /// ended without an ack or nack through it: a raised expiration count means the
    /// lease ran out (the core decides expiry while applying; counting is done here,
    /// outside it).
    pub fn sample(&self, now_ms: u64) {
        let Some(inner) = &self.inner else { return };
        if let Some(node) = inner.node.upgrade() {
            let data = node.view();
            lock(&inner.leases).retain(|lease_id, s| {
                let Some(job) = data.state.job_record(&s.job_id) else {
                    return false;
                };
                if job.held_lease().is_some_and(|l| l.id == *lease_id) {
                    return s.at.elapsed() < LEASE_FORGET;
                }
                if job.expirations > s.expirations {
                    s.queue.expired.fetch_add(1, Ordering::Relaxed);
                    if job.state == JobState::Dead && job.attempt >= job.max_attempts {
                        s.queue.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                false
            });
        }
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

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn register_counters(meter: &Meter, queues: &Arc<Queues>) {
    type Pick = fn(&QueueCounters) -> &AtomicU64;
    let per_queue: [(&'static str, &'static str, Pick); 6] = [
        ("taskraft_jobs_enqueued", "Jobs enqueued through this node", |q| &q.enqueued),
        ("taskraft_jobs_leased", "Jobs leased through this node", |q| &q.leased),
        ("taskraft_jobs_acked", "Jobs acked through this node", |q| &q.acked),
        ("taskraft_jobs_nacked", "Jobs nacked through this node", |q| &q.nacked),
        (
            "taskraft_jobs_dead_lettered",
            "Jobs that went dead after a nack through this node or the expiry of a lease it handed out",
            |q| &q.dead_lettered,
        ),
        (
            "taskraft_jobs_expired",
            "Leases handed out by this node that ran out (seen within a few seconds)",
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

fn register_state_gauges(meter: &Meter, node: &Arc<RaftNode>) {
    let weak = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_queue_jobs")
        .with_description("Jobs per queue and state in this node's applied state")
        .with_callback(move |o| {
            let Some(node) = weak.upgrade() else { return };
            let stats = node.view().state.all_queue_stats();
            for s in stats {
                let q = KeyValue::new("queue", s.queue.clone());
                for (state, n) in [
                    ("ready", s.ready),
                    ("scheduled", s.scheduled),
                    ("leased", s.leased),
                    ("dead", s.dead),
                    ("succeeded", s.succeeded),
                    ("cancelled", s.cancelled),
                ] {
                    o.observe(n, &[q.clone(), KeyValue::new("state", state)]);
                }
            }
        })
        .build();
    let weak = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_queue_paused")
        .with_description("1 while a queue is paused")
        .with_callback(move |o| {
            let Some(node) = weak.upgrade() else { return };
            for s in node.view().state.all_queue_stats() {
                o.observe(u64::from(s.paused), &[KeyValue::new("queue", s.queue)]);
            }
        })
        .build();
    let weak = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_workers")
        .with_description("Workers in the registry")
        .with_callback(move |o| {
            let Some(node) = weak.upgrade() else { return };
            o.observe(node.view().state.workers().len() as u64, &[]);
        })
        .build();
}

fn register_raft_gauges(meter: &Meter, node: &Arc<RaftNode>) {
    type Read = fn(&RaftNode) -> u64;
    let gauges: [(&'static str, &'static str, Read); 7] = [
        ("taskraft_raft_term", "Current Raft term", |n| {
            n.cluster_view().term
        }),
        (
            "taskraft_raft_leader_id",
            "Leader as this node knows it (0: none)",
            |n| n.leader().unwrap_or(0),
        ),
        (
            "taskraft_raft_commit_index",
            "Commit index (the leader's view; a follower reports its applied index)",
            |n| n.cluster_view().commit_index,
        ),
        (
            "taskraft_raft_applied_index",
            "Last applied log index",
            |n| n.cluster_view().applied_index,
        ),
        (
            "taskraft_raft_apply_lag",
            "Committed entries not yet applied on this node",
            |n| {
                let s = n.cluster_view();
                s.commit_index.saturating_sub(s.applied_index)
            },
        ),
        (
            "taskraft_raft_snapshot_index",
            "Log index of the last snapshot (0: none)",
            |n| n.cluster_view().snapshot_index.unwrap_or(0),
        ),
        (
            "taskraft_raft_log_entries",
            "Entries in the Raft log (after the last purge)",
            |n| n.cluster_view().log_entries(),
        ),
    ];
    for (name, help, f) in gauges {
        let weak: Weak<RaftNode> = Arc::downgrade(node);
        meter
            .u64_observable_gauge(name)
            .with_description(help)
            .with_callback(move |o| {
                if let Some(n) = weak.upgrade() {
                    o.observe(f(&n), &[]);
                }
            })
            .build();
    }
    let weak: Weak<RaftNode> = Arc::downgrade(node);
    meter
        .f64_observable_gauge("taskraft_clock_skew_seconds")
        .with_description(
            "This node's wall clock minus replicated time when it last stamped an entry as \
             leader (positive: the wall clock is ahead); replicated time is slewed towards \
             the wall clock at 0.05 %",
        )
        .with_callback(move |o| {
            if let Some(n) = weak.upgrade() {
                o.observe(n.clock_skew_ms() as f64 / 1000.0, &[]);
            }
        })
        .build();
    let weak: Weak<RaftNode> = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_disk_free_bytes")
        .with_description(
            "Bytes free on the data dir's file system (enqueues are refused below --min-free-disk-mb)",
        )
        .with_callback(move |o| {
            if let Some(n) = weak.upgrade() {
                let free = n.disk().free_bytes();
                if free != u64::MAX {
                    o.observe(free, &[]);
                }
            }
        })
        .build();
    let weak: Weak<RaftNode> = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_raft_is_leader")
        .with_description("1 on the leader")
        .with_callback(move |o| {
            if let Some(n) = weak.upgrade() {
                o.observe(u64::from(n.is_leader()), &[]);
            }
        })
        .build();
}

/// A tower layer for the gRPC server that records `taskraft_rpc_duration_seconds`.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timing = self
            .metrics
            .enabled()
            .then(|| (Instant::now(), req.uri().path().to_string()));
        RpcFuture {
            inner: self.inner.call(req),
            timing,
            metrics: self.metrics.clone(),
        }
    }
}

/// Future of [`RpcMetricsService`].
pub struct RpcFuture<F> {
    inner: F,
    timing: Option<(Instant, String)>,
    metrics: Arc<Metrics>,
}

impl<F, RB, E> std::future::Future for RpcFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if let Some((start, method)) = self.timing.take() {
            let code = match &out {
                // Errors are sent trailers-only, with grpc-status among the headers; a
                // success carries its (OK) status in the trailers.
                Ok(resp) => match resp.headers().get("grpc-status") {
                    Some(v) => code_name(v.to_str().ok().and_then(|s| s.parse().ok())),
                    None if resp.status() == http::StatusCode::OK => "OK",
                    None => "UNKNOWN",
                },
                Err(_) => "UNAVAILABLE",
            };
            self.metrics.rpc(&method, code, start.elapsed());
        }
        Poll::Ready(out)
    }
}

fn code_name(code: Option<i32>) -> &'static str {
    match code {
        Some(0) => "OK",
        Some(1) => "CANCELLED",
        Some(2) => "UNKNOWN",
        Some(3) => "INVALID_ARGUMENT",
        Some(4) => "DEADLINE_EXCEEDED",
        Some(5) => "NOT_FOUND",
        Some(6) => "ALREADY_EXISTS",
        Some(7) => "PERMISSION_DENIED",
        Some(8) => "RESOURCE_EXHAUSTED",
        Some(9) => "FAILED_PRECONDITION",
        Some(10) => "ABORTED",
        Some(11) => "OUT_OF_RANGE",
        Some(12) => "UNIMPLEMENTED",
        Some(13) => "INTERNAL",
        Some(14) => "UNAVAILABLE",
        Some(15) => "DATA_LOSS",
        Some(16) => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
