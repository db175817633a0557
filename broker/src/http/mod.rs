//! The HTTP side: `/healthz` (the process is up), `/readyz` (the node knows a leader
//! and can serve).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::raft::RaftNode;

/// Routes of the HTTP port.
pub fn router(node: Arc<RaftNode>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(node)
}

async fn readyz(State(node): State<Arc<RaftNode>>) -> (StatusCode, String) {
    match node.leader() {
        Some(leader) => (StatusCode::OK, format!("ready (leader {leader})\n")),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known (not yet a member, or no quorum)\n".into(),
        ),
    }
}
