//! The HTTP port: probes, metrics, and the operator dashboard.
//!
//! ```text
//!  GET /healthz, /readyz      open   process up / node knows a leader
//!  GET /metrics               open   Prometheus text format (see crate::metrics)
//!  GET /, /assets/*           open   the dashboard: static files compiled into the binary
//!  /api/...                   token  JSON for the dashboard (see api.rs)
//! ```
//!
//! The dashboard is plain HTML, CSS and JavaScript embedded with `include_str!`: no
//! build step, no CDN, nothing to serve separately. The page itself holds no data; it
//! asks `/api/...`, which requires `Authorization: Bearer <token>` when the node runs
//! with `--token` (the page asks for the token and keeps it in sessionStorage).

mod api;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::auth::Auth;
use crate::metrics::Metrics;
use crate::raft::RaftNode;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The node.
    pub node: Arc<RaftNode>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
}

/// Routes of the HTTP port.
pub fn router(node: Arc<RaftNode>, metrics: Arc<Metrics>, auth: Auth) -> Router {
    let state = HttpState { node, metrics };
    let api = api::routes()
        .layer(middleware::from_fn_with_state(auth, require_token))
        .with_state(state.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/assets/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/assets/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .with_state(state)
        .nest("/api", api)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    match s.node.leader() {
        Some(leader) => (StatusCode::OK, format!("ready (leader {leader})\n")),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known (not yet a member, or no quorum)\n".into(),
        ),
    }
}

async fn metrics_text(State(s): State<HttpState>) -> Response {
    // The queue gauges read the store: include every entry this node has applied.
    s.node.shared.caught_up().await;
    let body = s.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// Every `/api` call needs the bearer token when one is configured (compared in
/// constant time by [`Auth::check_header`]).
async fn require_token(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if auth.check_header(header) {
        return next.run(req).await;
    }
    let message = if header.is_none() {
        "missing Authorization header: send `Authorization: Bearer <token>`"
    } else {
        "invalid bearer token"
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        axum::Json(serde_json::json!({ "error": message, "code": "UNAUTHENTICATED" })),
    )
        .into_response()
}
