//! Logging and tracing setup.
//!
//! ```text
//!  tracing spans/events ──► EnvFilter ──► fmt layer (stderr, text or JSON)
//!                                    └──► OpenTelemetry layer ──► OTLP/gRPC exporter
//!                                         (only with --otlp-endpoint)
//! ```
//!
//! Every gRPC handler has a span (`#[tracing::instrument]`). Callers that send W3C
//! trace context (`traceparent`, `tracestate` metadata) become the parent of the
//! handler's span through [`set_remote_parent`], so a producer's trace continues in the
//! broker (and, through the job's headers, in the worker). Without an OTLP endpoint no
//! OpenTelemetry layer is installed and nothing is exported.
//!
//! The layer is configured without context activation: the handler span is started
//! lazily, which lets [`set_remote_parent`] still change its parent from inside the
//! handler body (before any child span exists).

use std::sync::OnceLock;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Registry};

/// The exporter's provider (flushed on shutdown) and the small runtime its gRPC
/// channel runs on, so exporting does not depend on how `main` built its runtime.
struct Otlp {
    provider: SdkTracerProvider,
    _runtime: tokio::runtime::Runtime,
}

static OTLP: OnceLock<Otlp> = OnceLock::new();

/// Installs the global subscriber without trace export. `format` is "text" or "json".
pub fn init(format: &str) {
    let _ = init_with(format, None);
}

/// Installs the global subscriber; with `otlp_endpoint` (e.g. `http://127.0.0.1:4317`)
/// spans are also exported over OTLP/gRPC. A second call (tests) changes nothing.
pub fn init_with(format: &str, otlp_endpoint: Option<&str>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn"));
    let otel = match otlp_endpoint.filter(|e| !e.is_empty()) {
        Some(endpoint) => Some(otel_layer(endpoint)?),
        None => None,
    };
    let registry = tracing_subscriber::registry().with(otel).with(filter);
    let _ = if format == "json" {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        // Colour codes only for a terminal: a log file (systemd, a container, tests and
        // the bench reading serve.log) gets plain text.
        use std::io::IsTerminal;
        let ansi = std::io::stderr().is_terminal();
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
    Ok(())
}

fn otel_layer(
    endpoint: &str,
) -> anyhow::Result<
    tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::SdkTracer>,
> {
    use opentelemetry_otlp::WithExportConfig;
    if let Some(o) = OTLP.get() {
        return Ok(tracing_opentelemetry::layer()
            .with_tracer(o.provider.tracer("taskraft"))
            .with_context_activation(false));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .context("starting the OTLP exporter runtime")?;
    let endpoint = endpoint.to_string();
    let provider = runtime.block_on(async {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("taskraft")
            .build();
        anyhow::Ok(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    })?;
    let tracer = provider.tracer("taskraft");
    let _ = OTLP.set(Otlp {
        provider,
        _runtime: runtime,
    });
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false))
}

/// True when spans are exported (an OTLP endpoint was configured).
pub fn exporting() -> bool {
    OTLP.get().is_some()
}

/// Sends buffered spans before the process exits.
pub fn flush() {
    if let Some(o) = OTLP.get() {
        let _ = o.provider.force_flush();
    }
}

/// W3C trace-context header names the broker carries.
pub const TRACEPARENT: &str = "traceparent";
/// See [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Makes the caller's trace (W3C `traceparent` metadata) the parent of the current
/// span. Call it first thing in a handler. A no-op without trace export or context.
pub fn set_remote_parent(metadata: &tonic::metadata::MetadataMap) {
    if !exporting() || metadata.get(TRACEPARENT).is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Metadata(metadata));
    let _ = tracing::Span::current().set_parent(cx);
}

/// The caller's W3C trace-context metadata as (name, value) pairs, to be stored in a
/// job's headers so the worker that leases it can continue the trace.
pub fn trace_headers(
    metadata: &tonic::metadata::MetadataMap,
) -> impl Iterator<Item = (&'static str, &str)> {
    [TRACEPARENT, TRACESTATE].into_iter().filter_map(|k| {
        metadata
            .get(k)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|v| (k, v))
    })
}
