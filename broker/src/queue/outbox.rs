//! Webhook outbox: when a job that carries a `webhook_url` succeeds or dies, an event
//! is recorded here, in the replicated state. The leader's delivery task POSTs due
//! events and reports each attempt back through the log (`WebhookDelivered` /
//! `WebhookFailed`), so delivery survives failover and happens at least once.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::job::{Job, JobState};
use super::state::State;
use super::tables::{Tables, TablesRead, Timer};

/// Retry delays double from this...
pub const WEBHOOK_RETRY_BASE_MS: u64 = 1_000;
/// ...up to this.
pub const WEBHOOK_RETRY_MAX_MS: u64 = 10 * 60 * 1000;
/// An event still undelivered this long after it was raised is dropped.
pub const WEBHOOK_GIVE_UP_MS: u64 = 24 * 3600 * 1000;

/// What happened to the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookKind {
    /// `job.succeeded`
    Succeeded,
    /// `job.dead`
    Dead,
}

impl WebhookKind {
    /// The event name in the JSON body.
    pub fn name(self) -> &'static str {
        match self {
            WebhookKind::Succeeded => "job.succeeded",
            WebhookKind::Dead => "job.dead",
        }
    }
}

/// One event waiting for delivery. It carries everything the body needs, so it can be
/// delivered even after retention removed the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique event id (receivers deduplicate on it).
    pub id: u64,
    /// Where to POST.
    pub url: String,
    /// Event kind.
    pub kind: WebhookKind,
    /// Job id.
    pub job_id: String,
    /// Queue.
    pub queue: String,
    /// The job's attempt count when it finished.
    pub attempt: u32,
    /// Result (success) or empty.
    pub result: Bytes,
    /// Last error (death) or empty.
    pub error: String,
    /// Leader time when the job finished.
    pub timestamp_ms: u64,
    /// Delivery attempts so far.
    pub tries: u32,
    /// Not before this time.
    pub next_attempt_ms: u64,
    /// Last delivery error, for operators.
    pub last_error: String,
}

impl<T: Tables> State<T> {
    /// Records an event if the job has a webhook and just reached `to`.
    pub(crate) fn raise_webhook(&mut self, job: &Job, to: JobState) {
        let kind = match to {
            JobState::Succeeded => WebhookKind::Succeeded,
            JobState::Dead => WebhookKind::Dead,
            _ => return,
        };
        if job.webhook_url.is_empty() {
            return;
        }
        let now = self.c.now_ms;
        let id = self.c.next_webhook_id;
        self.c.next_webhook_id += 1;
        let event = WebhookEvent {
            id,
            url: job.webhook_url.clone(),
            kind,
            job_id: job.id.clone(),
            queue: job.queue.clone(),
            attempt: job.attempt,
            result: if kind == WebhookKind::Succeeded {
                self.result_of(job)
            } else {
                Bytes::new()
            },
            error: if kind == WebhookKind::Dead {
                job.last_error.clone()
            } else {
                String::new()
            },
            timestamp_ms: now,
            tries: 0,
            next_attempt_ms: now,
            last_error: String::new(),
        };
        self.t
            .timer_insert(Timer::Webhook, event.next_attempt_ms, id);
        self.t.put_webhook(&event);
        self.c.webhooks_pending += 1;
    }

    /// Forgets an event (delivered, or given up on).
    fn drop_webhook(&mut self, ev: &WebhookEvent) {
        self.t
            .timer_remove(Timer::Webhook, ev.next_attempt_ms, ev.id);
        self.t.delete_webhook(ev.id);
        self.c.webhooks_pending = self.c.webhooks_pending.saturating_sub(1);
    }

    /// A delivery succeeded: forget the event.
    pub(crate) fn webhook_delivered(&mut self, id: u64) {
        if let Some(ev) = self.t.webhook(id) {
            self.drop_webhook(&ev);
        }
    }

    /// A delivery failed: retry later with exponential backoff, or give up after a day.
    pub(crate) fn webhook_failed(&mut self, id: u64, error: &str) {
        let now = self.c.now_ms;
        let Some(mut ev) = self.t.webhook(id) else {
            return;
        };
        if now.saturating_sub(ev.timestamp_ms) >= WEBHOOK_GIVE_UP_MS {
            self.drop_webhook(&ev);
            return;
        }
        ev.tries += 1;
        ev.last_error = error.to_string();
        let exp = ev.tries.saturating_sub(1).min(30);
        let delay = WEBHOOK_RETRY_BASE_MS
            .saturating_mul(1u64 << exp)
            .min(WEBHOOK_RETRY_MAX_MS);
        self.t.timer_remove(Timer::Webhook, ev.next_attempt_ms, id);
        ev.next_attempt_ms = now.saturating_add(delay);
        self.t.timer_insert(Timer::Webhook, ev.next_attempt_ms, id);
        self.t.put_webhook(&ev);
    }
}

impl<T: TablesRead> State<T> {
    /// Events due for delivery at `now_ms`, earliest first.
    pub fn due_webhooks(&self, now_ms: u64, limit: usize) -> Vec<WebhookEvent> {
        self.t
            .timers_due(Timer::Webhook, now_ms, limit)
            .into_iter()
            .filter_map(|(_, id)| self.t.webhook(id))
            .collect()
    }

    /// Events not yet delivered.
    pub fn pending_webhooks(&self) -> u64 {
        self.c.webhooks_pending
    }
}
