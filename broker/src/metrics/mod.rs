//! Metrics: OpenTelemetry instruments read out in Prometheus text format at
//! `GET /metrics`, plus the short rate history the dashboard draws.
//!
//! ```text
//!  core transitions ──► QueueCounters (atomics, per queue) ┐ observable counters
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
//! One concept per file: `counters.rs` (per-queue atomics), `transitions.rs` (the
//! core's job transitions counted, with lease start times for the processing
//! histogram), `history.rs` (the dashboard's rate
//! history), `gauges.rs` (state and cluster gauges), `rpc.rs` (the tower layer timing
//! each call); this file holds the registry and the histograms.
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

use crate::raft::RaftNode;

mod counters;
mod gauges;
mod history;
mod rpc;
mod transitions;

pub use counters::QueueCounters;
use counters::{register_counters, Queues};
use gauges::{register_raft_gauges, register_state_gauges};
use history::Sample;
pub use history::{QueueRates, HISTORY_LEN, SAMPLE_EVERY};
pub use rpc::{RpcFuture, RpcMetricsLayer, RpcMetricsService};
use transitions::LeaseStart;

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
const JOB_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0,
];

struct Inner {
    node: Weak<RaftNode>,
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    queues: Arc<Queues>,
    leases: Mutex<HashMap<u64, LeaseStart>>,
    /// Latest replicated time seen in a transition.
    latest_ms: AtomicU64,
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
            latest_ms: AtomicU64::new(0),
            wait: histogram(
                "taskraft_job_wait_seconds",
                "Time from a job being due (enqueued, or its retry time) to its lease",
                JOB_BUCKETS,
            ),
            processing: histogram(
                "taskraft_job_processing_seconds",
                "Time from lease to ack or nack (replicated time)",
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
        let metrics = Arc::new(Self { inner: Some(inner) });
        let weak = Arc::downgrade(&metrics);
        node.observe_transitions(Arc::new(move |t| {
            if let Some(m) = weak.upgrade() {
                m.observe(t)
            }
        }));
        Ok(metrics)
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
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
