//! The caller's deadline, as gRPC carries it in the `grpc-timeout` header. Forwarded
//! calls and long polls honour it so no call outlives its caller.

use std::time::Duration;

/// The remaining time the caller gave the call, if it set a deadline.
pub fn grpc_timeout(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse(md.get("grpc-timeout")?.to_str().ok()?)
}

/// Parses a `grpc-timeout` value ("100m", "5S", ...).
fn parse(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_units() {
        assert_eq!(
            super::parse("250m"),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(super::parse("3S"), Some(std::time::Duration::from_secs(3)));
        assert_eq!(super::parse("x"), None);
    }
}
