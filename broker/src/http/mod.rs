//! The HTTP port: probes, metrics, and the operator dashboard.
//!
//! ```text
//!  GET /healthz, /readyz      open   process up / node knows a leader
//!  GET /metrics               open*  Prometheus text format (see crate::metrics)
//!  GET /, /assets/*           open*  the dashboard: static files compiled into the binary
//!  GET /api/...               read   JSON for the dashboard (see api.rs)
//!  POST /api/.../cancel       produce
//!  POST /api/... (others)     admin  retry, redrive, pause, resume
//!  (* a read token with --http-auth all)
//! ```
//!
//! The dashboard shows every queue, so its API needs a token without queue patterns.
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

use crate::api::auth::{Auth, Role};
use crate::error::BrokerError;
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
pub fn router(node: Arc<RaftNode>, metrics: Arc<Metrics>, auth: Auth, protect_all: bool) -> Router {
    let state = HttpState { node, metrics };
    let api = api::routes()
        .layer(middleware::from_fn_with_state(auth.clone(), require_token))
        .with_state(state.clone());
    let pages = Router::new()
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
        .with_state(state.clone());
    let pages = if protect_all {
        pages.layer(middleware::from_fn_with_state(auth, require_token))
    } else {
        pages
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(pages)
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
    s.node.caught_up().await;
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

/// The role an HTTP route needs: reads need `read`, a cancel `produce`, other
/// changes `admin`.
fn route_role(method: &axum::http::Method, path: &str) -> Role {
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        Role::Read
    } else if path.ends_with("/cancel") {
        Role::Produce
    } else {
        Role::Admin
    }
}

/// Protected routes need a configured bearer token (compared in constant time) with
/// the route's role and no queue patterns.
async fn require_token(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let role = route_role(req.method(), req.uri().path());
    let denied = match auth.authorize(header, role) {
        Ok(cred) if !cred.is_scoped() => return next.run(req).await,
        Ok(_) => BrokerError::PermissionDenied(
            "the dashboard shows every queue: use a token without queue patterns".into(),
        ),
        Err(e) => e,
    };
    let (status, code) = match denied {
        BrokerError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        _ => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
    };
    (
        status,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        axum::Json(serde_json::json!({ "error": denied.to_string(), "code": code })),
    )
        .into_response()
}
