//! The node's small watchers: credentials and certificates reloaded on SIGHUP, and the
//! gRPC health status following whether a leader is known.

use std::sync::Arc;

use tonic_health::ServingStatus;

use crate::api::auth::Auth;
use crate::raft::RaftNode;

/// What SIGHUP arrives on.
#[cfg(unix)]
pub(super) type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
pub(super) type Hangup = ();

/// Starts listening for SIGHUP. Done before the node serves, so a SIGHUP sent once it
/// answers is never taken by the default action (which ends the process).
pub(super) fn listen_hangup() -> Option<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: tokens and certificates reload only at restart");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// Reads the tokens file and the TLS files again on every SIGHUP; a broken file keeps
/// the old tokens or certificates.
pub(super) async fn reload_on_sighup(
    hangup: Option<Hangup>,
    auth: Option<Auth>,
    tls: Option<Arc<crate::tls::Tls>>,
    pool: Arc<crate::raft::network::PeerPool>,
) {
    #[cfg(unix)]
    if let Some(mut hup) = hangup {
        while hup.recv().await.is_some() {
            match auth.as_ref().map(Auth::reload) {
                Some(Ok(n)) => tracing::info!(tokens = n, "credentials reloaded"),
                Some(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "credentials not reloaded; the previous tokens stay in force")
                }
                None => {}
            }
            match tls.as_ref().map(|t| t.reload()) {
                Some(Ok(())) => {
                    // New peer connections present the new certificate.
                    pool.reset_connections();
                    tracing::info!("TLS certificates reloaded")
                }
                Some(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "TLS certificates not reloaded; the previous ones stay in force")
                }
                None => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hangup, auth, tls, pool);
    std::future::pending::<()>().await
}

/// Health is SERVING while the node knows a leader (it can then serve every call,
/// forwarding writes when it is a follower).
pub(super) async fn report_health(
    node: Arc<RaftNode>,
    health: tonic_health::server::HealthReporter,
) {
    let mut changes = node.cluster_changes();
    let mut last = None;
    loop {
        let ready = changes.leader().is_some();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status("taskraft.v1.Broker", status)
                .await;
            health.set_service_status("taskraft.v1.Admin", status).await;
            last = Some(ready);
        }
        if !changes.changed().await {
            return;
        }
    }
}
