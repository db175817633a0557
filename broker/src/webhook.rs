//! Webhook delivery. The outbox lives in the replicated queue state
//! (`queue/webhook.rs`); this task runs on every node but only the leader delivers.
//! Each attempt's outcome goes back through the log, so a new leader resumes exactly
//! where the old one stopped: delivery is at least once, and receivers deduplicate on
//! `event_id`.
//!
//! Body (JSON): `{"event": "job.succeeded" | "job.dead", "event_id", "job_id", "queue",
//! "attempt", "result" (base64, success) | "error" (death), "timestamp_ms"}`.
//! Header `X-Taskraft-Signature: sha256=<hex HMAC-SHA256 of the body>` with the
//! `--webhook-secret` key (absent when no secret is configured).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::queue::{Command, WebhookEvent};
use crate::raft::{wall_clock_ms, RaftNode};

/// Header carrying the body's HMAC.
pub const SIGNATURE_HEADER: &str = "x-taskraft-signature";
/// One delivery may take this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The JSON body of an event.
pub fn body(ev: &WebhookEvent) -> Vec<u8> {
    let mut v = serde_json::json!({
        "event": ev.kind.name(),
        "event_id": ev.id.to_string(),
        "job_id": ev.job_id,
        "queue": ev.queue,
        "attempt": ev.attempt,
        "timestamp_ms": ev.timestamp_ms,
    });
    match ev.kind {
        crate::queue::WebhookKind::Succeeded => {
            v["result"] = base64::engine::general_purpose::STANDARD
                .encode(&ev.result)
                .into();
        }
        crate::queue::WebhookKind::Dead => v["error"] = ev.error.clone().into(),
    }
    serde_json::to_vec(&v).expect("json of plain values")
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers due events while this node leads. Runs until the node stops.
pub async fn run(node: Arc<RaftNode>, secret: Option<String>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let secret = secret.map(String::into_bytes);
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.is_leader() {
            continue;
        }
        let due = node.shared.read().state.due_webhooks(wall_clock_ms(), 256);
        for ev in due {
            if !in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ev.id)
            {
                continue;
            }
            let (node, client, secret, in_flight) = (
                node.clone(),
                client.clone(),
                secret.clone(),
                in_flight.clone(),
            );
            tokio::spawn(async move {
                let outcome = deliver(&client, secret.as_deref(), &ev).await;
                let cmd = match &outcome {
                    Ok(()) => Command::WebhookDelivered { id: ev.id },
                    Err(e) => {
                        tracing::warn!(event_id = ev.id, job_id = %ev.job_id, url = %ev.url, tries = ev.tries + 1, error = %e, "webhook delivery failed");
                        Command::WebhookFailed {
                            id: ev.id,
                            error: e.clone(),
                        }
                    }
                };
                let deadline = Instant::now() + Duration::from_secs(5);
                if let Err(e) = node.propose_local(cmd, deadline).await {
                    tracing::debug!(event_id = ev.id, error = ?e, "could not record webhook outcome; it will be retried");
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&ev.id);
            });
        }
    }
}

async fn deliver(
    client: &Client<HttpConnector, Full<Bytes>>,
    secret: Option<&[u8]>,
    ev: &WebhookEvent,
) -> Result<(), String> {
    let body = body(ev);
    let mut req = http::Request::post(&ev.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "taskraft-webhook/1");
    if let Some(secret) = secret {
        req = req.header(SIGNATURE_HEADER, signature(secret, &body));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = tokio::time::timeout(DELIVERY_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    // Drain the body so the connection can be reused.
    let _ = tokio::time::timeout(DELIVERY_TIMEOUT, resp.into_body().collect()).await;
    if status.is_success() {
        tracing::info!(event_id = ev.id, job_id = %ev.job_id, url = %ev.url, "webhook delivered");
        Ok(())
    } else {
        Err(format!("receiver answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
