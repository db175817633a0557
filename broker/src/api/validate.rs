//! Input validation. Every check names the field and the limit in its message.

use crate::error::BrokerError;

/// Longest timeout a caller may ask for (visibility, long-poll wait).
pub const MAX_TIMEOUT_MS: u64 = 12 * 3600 * 1000;
/// Longest delay for a scheduled job.
pub const MAX_DELAY_MS: u64 = 366 * 24 * 3600 * 1000;
/// Most jobs one lease may return.
pub const MAX_LEASE_JOBS: u32 = 1000;
/// Most jobs in one batch.
pub const MAX_BATCH: usize = 10_000;
/// Most attempts a job may allow.
pub const MAX_ATTEMPTS: u32 = 1000;
/// Longest short text field (job type, worker id, idempotency key, header key).
pub const MAX_NAME: usize = 256;
/// Longest long text field (header value, error text, progress message).
pub const MAX_TEXT: usize = 64 * 1024;
/// Most headers per job.
pub const MAX_HEADERS: usize = 64;
/// Most ListJobs results per page.
pub const MAX_PAGE: u32 = 1000;

type R = Result<(), BrokerError>;

/// Queue names match `[A-Za-z0-9._:-]{1,128}`.
pub fn queue_name(field: &'static str, name: &str) -> R {
    if name.is_empty() {
        return Err(BrokerError::invalid(field, "queue name is empty"));
    }
    if name.len() > 128 {
        return Err(BrokerError::invalid(
            field,
            format!("queue name is {} bytes; at most 128", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(BrokerError::invalid(
            field,
            format!("queue name {name:?} has {c:?}; allowed: A-Z a-z 0-9 . _ : -"),
        ));
    }
    Ok(())
}

/// Job ids are what Enqueue returned: 1-64 characters of `[A-Za-z0-9-]`.
pub fn job_id(id: &str) -> R {
    if id.is_empty() {
        return Err(BrokerError::invalid("job_id", "job_id is empty"));
    }
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(BrokerError::invalid(
            "job_id",
            format!("{id:?} is not a job id (ids are what Enqueue returned)"),
        ));
    }
    Ok(())
}

/// Lease ids are 16 hex digits, as Lease returned them.
pub fn lease_id(id: &str) -> Result<u64, BrokerError> {
    crate::queue::parse_lease_id(id).ok_or_else(|| {
        BrokerError::invalid(
            "lease_id",
            format!("{id:?} is not a lease id (16 hex digits, as Lease returned it)"),
        )
    })
}

/// A timeout in ms: 0 means `default`; more than 12 h is refused.
pub fn timeout_ms(field: &'static str, value: u64, default: u64) -> Result<u64, BrokerError> {
    if value > MAX_TIMEOUT_MS {
        return Err(BrokerError::invalid(
            field,
            format!("{value} ms is over the 12 h limit ({MAX_TIMEOUT_MS} ms)"),
        ));
    }
    Ok(if value == 0 { default } else { value })
}

/// A byte blob no larger than `max`.
pub fn blob(field: &'static str, len: usize, max: usize) -> R {
    if len > max {
        return Err(BrokerError::invalid(
            field,
            format!("{len} bytes is over the limit of {max} bytes (--max-payload)"),
        ));
    }
    Ok(())
}

/// A text field no longer than `max` bytes.
pub fn text(field: &'static str, value: &str, max: usize) -> R {
    if value.len() > max {
        return Err(BrokerError::invalid(
            field,
            format!("{} bytes is over the limit of {max} bytes", value.len()),
        ));
    }
    Ok(())
}

/// Webhook targets are http:// URLs (the broker has no TLS client yet).
pub fn webhook_url(url: &str) -> R {
    if url.is_empty() {
        return Ok(());
    }
    text("webhook_url", url, 2048)?;
    if url.starts_with("https://") {
        return Err(BrokerError::invalid(
            "webhook_url",
            "https:// targets are not supported yet: use http:// (e.g. a local TLS-terminating proxy)",
        ));
    }
    let ok =
        url.starts_with("http://") && url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
    if !ok {
        return Err(BrokerError::invalid(
            "webhook_url",
            format!("{url:?} is not an http:// URL"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(queue_name("queue", "emails.high:v1_x-y").is_ok());
        for bad in ["", "has space", "slash/no", &"x".repeat(129)] {
            let e = queue_name("queue", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid queue"), "{e}");
        }
    }

    #[test]
    fn lease_ids_and_timeouts() {
        assert_eq!(lease_id("000000000000002a").unwrap(), 42);
        assert!(lease_id("2a").is_err());
        assert!(lease_id("zzzzzzzzzzzzzzzz").is_err());
        assert_eq!(
            timeout_ms("visibility_timeout_ms", 0, 30_000).unwrap(),
            30_000
        );
        assert!(timeout_ms("visibility_timeout_ms", MAX_TIMEOUT_MS + 1, 1).is_err());
    }
}
