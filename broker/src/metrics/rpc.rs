//! The tower layer that records `taskraft_rpc_duration_seconds` by method and status.

use super::*;

impl Metrics {
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

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
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

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
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
