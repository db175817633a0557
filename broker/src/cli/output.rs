//! Output shared by the client commands: aligned tables for people, JSON objects
//! (named after the protobuf fields) for scripts.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};
use taskraft_proto::v1 as pb;

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values always serialize")
    );
}

/// Lower-case state name ("ready", "dead", ...).
pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Scheduled) => "scheduled",
        Ok(pb::JobState::Ready) => "ready",
        Ok(pb::JobState::Leased) => "leased",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Dead) => "dead",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// Unix ms as RFC 3339 (seconds), or "-" for 0.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Bytes as text when they are UTF-8, else as a hex dump marker.
pub fn bytes_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => format!("<{} bytes, not UTF-8>", b.len()),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Puts `b` under `key` (UTF-8) or `key_hex` (anything else).
fn put_bytes(obj: &mut serde_json::Map<String, Value>, key: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => obj.insert(key.into(), Value::String(s.into())),
        Err(_) => obj.insert(format!("{key}_hex"), Value::String(hex(b))),
    };
}

/// A job as a JSON object with the protobuf field names.
pub fn job_json(j: &pb::Job) -> Value {
    let mut v = json!({
        "job_id": j.job_id,
        "queue": j.queue,
        "job_type": j.job_type,
        "state": state_name(j.state),
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "priority": j.priority,
        "last_error": j.last_error,
        "created_at_ms": j.created_at_ms,
        "run_at_ms": j.run_at_ms,
        "progress": j.progress,
        "progress_message": j.progress_message,
        "expirations": j.expirations,
        "headers": j.headers,
        "lease_deadline_ms": j.lease_deadline_ms,
        "worker_id": j.worker_id,
        "finished_at_ms": j.finished_at_ms,
        "expires_at_ms": j.expires_at_ms,
        "webhook_url": j.webhook_url,
    });
    let obj = v.as_object_mut().expect("object");
    put_bytes(obj, "payload", &j.payload);
    put_bytes(obj, "result", &j.result);
    v
}

/// Prints one job as "key: value" lines.
pub fn job_details(j: &pb::Job) {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", j.job_id.clone()),
        ("queue", j.queue.clone()),
        ("type", j.job_type.clone()),
        ("state", state_name(j.state).into()),
        ("attempt", format!("{} of {}", j.attempt, j.max_attempts)),
        ("priority", j.priority.to_string()),
        ("created", time(j.created_at_ms)),
        ("run at", time(j.run_at_ms)),
    ];
    if j.lease_deadline_ms > 0 {
        rows.push(("lease until", time(j.lease_deadline_ms)));
    }
    if !j.worker_id.is_empty() {
        rows.push(("worker", j.worker_id.clone()));
    }
    if j.progress > 0 || !j.progress_message.is_empty() {
        rows.push((
            "progress",
            format!("{}% {}", j.progress, j.progress_message),
        ));
    }
    if j.expirations > 0 {
        rows.push(("expirations", j.expirations.to_string()));
    }
    if j.finished_at_ms > 0 {
        rows.push(("finished", time(j.finished_at_ms)));
    }
    if j.expires_at_ms > 0 {
        rows.push(("removed after", time(j.expires_at_ms)));
    }
    if !j.last_error.is_empty() {
        rows.push(("last error", j.last_error.clone()));
    }
    let mut headers: Vec<_> = j.headers.iter().collect();
    headers.sort();
    for (k, v) in headers {
        rows.push(("header", format!("{k}={v}")));
    }
    rows.push(("payload", bytes_text(&j.payload)));
    if !j.result.is_empty() {
        rows.push(("result", bytes_text(&j.result)));
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{:<w$}  {v}", format!("{k}:"), w = w + 1);
    }
}

/// Queue counts as a JSON object with the `QueueStats` field names.
pub fn queue_json(s: &pb::QueueStats) -> Value {
    json!({
        "queue": s.queue,
        "ready": s.ready,
        "scheduled": s.scheduled,
        "leased": s.leased,
        "succeeded": s.succeeded,
        "dead": s.dead,
        "cancelled": s.cancelled,
        "paused": s.paused,
    })
}

/// Header of the queue table.
pub const QUEUE_HEADER: [&str; 8] = [
    "QUEUE",
    "READY",
    "SCHEDULED",
    "LEASED",
    "SUCCEEDED",
    "DEAD",
    "CANCELLED",
    "PAUSED",
];

/// One row of the queue table.
pub fn queue_row(s: &pb::QueueStats) -> Vec<String> {
    vec![
        s.queue.clone(),
        s.ready.to_string(),
        s.scheduled.to_string(),
        s.leased.to_string(),
        s.succeeded.to_string(),
        s.dead.to_string(),
        s.cancelled.to_string(),
        if s.paused { "yes" } else { "no" }.into(),
    ]
}
