//! Webhook delivery. The outbox lives in the replicated queue state
//! (`queue/outbox.rs`); this task runs on every node but only the leader delivers.
//! Each attempt's outcome goes back through the log, so a new leader resumes exactly
//! where the old one stopped: delivery is at least once, and receivers deduplicate on
//! `event_id`.
//!
//! Body (JSON): `{"event": "job.succeeded" | "job.dead", "event_id", "job_id", "queue",
//! "attempt", "result" (base64, success) | "error" (death), "timestamp_ms"}`.
//! Header `X-Taskraft-Signature: sha256=<hex HMAC-SHA256 of the body>` with the
//! `--webhook-secret` key (absent when no secret is configured).
//!
//! Targets are `http://` or `https://` (see `webhook/client.rs`), checked after DNS
//! resolution against `webhook/target.rs` (no loopback, link-local, private... unless
//! `--webhook-allow`); redirects are not followed. A
//! failed attempt is recorded as a short code (`http-503`, `timeout`,
//! `target-not-allowed`, ...): nothing of the receiver's answer reaches the log.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use crate::queue::{Command, WebhookEvent};
use crate::raft::RaftNode;
use crate::webhook::client::{is_refused_target, WebhookClient};
use crate::webhook::target::TargetPolicy;

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
pub async fn run(
    node: Arc<RaftNode>,
    client: WebhookClient,
    secret: Option<String>,
    targets: Arc<TargetPolicy>,
) {
    let secret = secret.map(String::into_bytes);
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.is_leader() {
            continue;
        }
        let due = node.view().state.due_webhooks(node.now_ms(), 256);
        for ev in due {
            if !in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ev.id)
            {
                continue;
            }
            let (node, client, secret, in_flight, targets) = (
                node.clone(),
                client.clone(),
                secret.clone(),
                in_flight.clone(),
                targets.clone(),
            );
            tokio::spawn(async move {
                let outcome = deliver(&client, secret.as_deref(), &targets, &ev).await;
                let cmd = match &outcome {
                    Ok(()) => Command::WebhookDelivered { id: ev.id },
                    Err(e) => {
                        tracing::warn!(event_id = ev.id, job_id = %ev.job_id, url = %ev.url, tries = ev.tries + 1, code = e.code, error = %e.detail, "webhook delivery failed");
                        Command::WebhookFailed {
                            id: ev.id,
                            error: e.code.to_string(),
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

/// A failed attempt: a short code for the replicated state, detail for the log.
struct Failure {
    code: String,
    detail: String,
}

impl Failure {
    fn new(code: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self {
            code: code.into(),
            detail: detail.to_string(),
        }
    }
}

async fn deliver(
    client: &WebhookClient,
    secret: Option<&[u8]>,
    targets: &TargetPolicy,
    ev: &WebhookEvent,
) -> Result<(), Failure> {
    // An IP literal is connected to without resolution: check it here.
    let uri: http::Uri = ev.url.parse().map_err(|e| Failure::new("bad-url", e))?;
    let host = uri.host().unwrap_or_default();
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        if let Some(kind) = targets.refusal(ip) {
            return Err(Failure::new(
                "target-not-allowed",
                format!("{ip} is a {kind} address"),
            ));
        }
    }
    let body = body(ev);
    let mut req = http::Request::post(&ev.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "taskraft-webhook/1");
    if let Some(secret) = secret {
        req = req.header(SIGNATURE_HEADER, signature(secret, &body));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Failure::new("bad-url", e))?;
    let resp = tokio::time::timeout(DELIVERY_TIMEOUT, client.request(req))
        .await
        .map_err(|_| Failure::new("timeout", "no answer in time"))?
        .map_err(|e| {
            if is_refused_target(&e) {
                Failure::new("target-not-allowed", format!("{e:?}"))
            } else if e.is_connect() {
                Failure::new("connect-failed", format!("{e:?}"))
            } else {
                Failure::new("request-failed", format!("{e:?}"))
            }
        })?;
    let status = resp.status();
    // Drain the body so the connection can be reused.
    let _ = tokio::time::timeout(DELIVERY_TIMEOUT, resp.into_body().collect()).await;
    if status.is_success() {
        tracing::info!(event_id = ev.id, job_id = %ev.job_id, url = %ev.url, "webhook delivered");
        Ok(())
    } else if status.is_redirection() {
        Err(Failure::new("redirect-not-followed", status))
    } else {
        Err(Failure::new(format!("http-{}", status.as_u16()), status))
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
