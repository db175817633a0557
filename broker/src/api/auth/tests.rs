use super::*;

#[test]
fn globs() {
    assert!(glob("emails", "emails"));
    assert!(!glob("emails", "emails2"));
    assert!(glob("sms.*", "sms.eu"));
    assert!(glob("*", "anything"));
    assert!(glob("a*b*c", "a-x-b-y-c"));
    assert!(!glob("a*b*c", "a-x-c"));
    assert!(!glob("ab*ba", "aba"));
}

#[test]
fn tokens_file_roles_and_queues() {
    let parsed =
        parse_tokens("# producers\np1 produce emails,sms.*\nw1 work,read\nops admin # all\n")
            .unwrap();
    assert_eq!(parsed.len(), 3);
    let p1 = &parsed[0].1;
    assert!(p1.has(Role::Produce) && !p1.has(Role::Work) && !p1.has(Role::Admin));
    assert!(p1.may_use("sms.eu") && !p1.may_use("payments"));
    assert!(parsed[1].1.has(Role::Read) && parsed[1].1.may_use("x"));
    assert!(parsed[2].1.has(Role::Work));
    assert!(parse_tokens("t nope").is_err());
    assert!(parse_tokens("t read\nt work").is_err());
    assert!(parse_tokens("just-a-token").is_err());
}

#[test]
fn methods_need_their_role() {
    assert_eq!(
        required_role("/taskraft.v1.Broker/Enqueue"),
        Some(Role::Produce)
    );
    assert_eq!(required_role("/taskraft.v1.Broker/Ack"), Some(Role::Work));
    assert_eq!(
        required_role("/taskraft.v1.Admin/RemoveNode"),
        Some(Role::Admin)
    );
    assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
    let auth = Auth::new(Some("t"));
    assert!(auth.authorize(Some(b"Bearer t"), Role::Admin).is_ok());
    assert!(auth.authorize(Some(b"Bearer x"), Role::Read).is_err());
    assert!(Auth::new(None).authorize(None, Role::Admin).is_ok());
}
