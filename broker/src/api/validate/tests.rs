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
