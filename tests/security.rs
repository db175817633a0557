//! Security: the Raft peer service is apart from the public API and closed to anyone
//! without the cluster secret (client tokens included), a forwarded write is checked
//! again by the leader, and every input limit answers INVALID_ARGUMENT naming its field.

use std::net::SocketAddr;

use taskraft_broker::queue::Command;
use taskraft_broker::raft::forward::{ForwardMsg, ForwardReply};
use taskraft_broker::raft::proposer::ProposeError;
use taskraft_broker::storage::{decode, encode};
use taskraft_proto::raft::raft_peer_client::RaftPeerClient;
use taskraft_proto::raft::RaftMessage;
use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tonic::transport::Channel;
use tonic::Code;

const SECRET: &str = "cluster-s3cret";
const TOKEN: &str = "client-t0ken";

async fn peer_client(addr: SocketAddr) -> RaftPeerClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    RaftPeerClient::new(ch)
}

/// A peer call carrying `metadata` (key, value) pairs.
fn msg(data: Vec<u8>, metadata: &[(&'static str, String)]) -> tonic::Request<RaftMessage> {
    let mut req = tonic::Request::new(RaftMessage { data: data.into() });
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    req
}

/// Calls every RaftPeer method with `metadata` and returns the codes.
async fn every_peer_rpc(addr: SocketAddr, metadata: &[(&'static str, String)]) -> Vec<Code> {
    let mut c = peer_client(addr).await;
    let mut codes = Vec::new();
    let err = |r: Result<tonic::Response<RaftMessage>, tonic::Status>| match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    codes.push(err(c.vote(msg(vec![1, 2, 3], metadata)).await));
    codes.push(err(c.append_entries(msg(vec![1, 2, 3], metadata)).await));
    codes.push(err(c.install_snapshot(msg(vec![1, 2, 3], metadata)).await));
    codes.push(err(c.propose(msg(vec![1, 2, 3], metadata)).await));
    codes.push(err(c.read_index(msg(vec![], metadata)).await));
    codes.push(
        match c
            .forward(forward_stream(vec![vec![1, 2, 3]], metadata))
            .await
        {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        },
    );
    codes
}

/// A `Forward` call carrying `messages`, then half-closed.
fn forward_stream(
    messages: Vec<Vec<u8>>,
    metadata: &[(&'static str, String)],
) -> tonic::Request<impl futures::Stream<Item = RaftMessage>> {
    let items = messages
        .into_iter()
        .map(|data| RaftMessage { data: data.into() });
    let mut req = tonic::Request::new(futures::stream::iter(items));
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    req
}

async fn secured_cluster() -> InProcCluster {
    InProcCluster::start(3, |c| {
        c.cluster_secret = Some(SECRET.into());
        c.token = Some(TOKEN.into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_rpcs_are_not_served_on_the_client_port() {
    let cluster = secured_cluster().await;
    cluster.wait_leader().await;
    let bearer = [("authorization", format!("Bearer {TOKEN}"))];
    for id in 1..=3 {
        let node = cluster.node(id);
        assert_ne!(node.grpc_addr, node.peer_addr);
        // With the client token, and even with the cluster secret: not served here.
        let with_secret = [
            ("authorization", format!("Bearer {TOKEN}")),
            ("taskraft-cluster-secret", SECRET.to_string()),
        ];
        for md in [&bearer[..], &with_secret[..], &[]] {
            let codes = every_peer_rpc(node.grpc_addr, md).await;
            assert!(
                codes.iter().all(|c| *c == Code::Unimplemented),
                "node {id} client port answered a Raft RPC: {codes:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_port_refuses_client_tokens_and_unauthenticated_callers() {
    let cluster = secured_cluster().await;
    let leader = cluster.wait_leader().await;
    for id in 1..=3 {
        let peer = cluster.node(id).peer_addr;
        let callers: [&[(&'static str, String)]; 4] = [
            &[],
            &[("authorization", format!("Bearer {TOKEN}"))],
            &[("taskraft-cluster-secret", TOKEN.to_string())],
            &[("taskraft-cluster-secret", format!("{SECRET}x"))],
        ];
        for md in callers {
            let codes = every_peer_rpc(peer, md).await;
            assert!(
                codes.iter().all(|c| *c == Code::Unauthenticated),
                "node {id} peer port with {md:?}: {codes:?}"
            );
        }
        // With the secret the call gets past authentication (and the garbage is refused
        // by the decoder, not applied).
        let codes = every_peer_rpc(peer, &[("taskraft-cluster-secret", SECRET.into())]).await;
        assert_eq!(codes[0], Code::InvalidArgument, "{codes:?}");
    }
    // The cluster itself, which knows the secret, replicates and forwards.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut c = cluster.clients(follower).await;
    let mut req = tonic::Request::new(job("sec", "x"));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let id = c
        .broker
        .enqueue(req)
        .await
        .expect("forwarded enqueue")
        .into_inner()
        .job_id;
    assert!(!id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_secret_cannot_take_part() {
    let cluster = InProcCluster::start(3, |c| {
        c.cluster_secret = Some(if c.id == 3 {
            "wrong".into()
        } else {
            SECRET.into()
        });
    })
    .await;
    let leader = cluster.wait_leader_among(&[1, 2]).await;
    assert_ne!(leader, 3);
    // Node 3 never hears from the leader: it knows no leader, or only itself as a
    // candidate, while writes commit on the other two.
    let mut c = cluster.clients(leader).await;
    c.broker
        .enqueue(job("w", "x"))
        .await
        .expect("enqueue on 1+2");
    let applied_3 = cluster.applied(3);
    let leader_applied = cluster.applied(leader);
    assert!(
        applied_3 < leader_applied,
        "node 3 applied {applied_3} of {leader_applied}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_commands_are_checked_again_by_the_leader() {
    let cluster = secured_cluster().await;
    let leader = cluster.wait_leader().await;
    let mut c = peer_client(cluster.node(leader).peer_addr).await;
    let secret = [("taskraft-cluster-secret", SECRET.to_string())];
    let propose = |cmd: &Command| msg(encode(cmd).unwrap(), &secret);

    let too_many_queues = Command::Lease {
        queues: (0..100_000).map(|i| format!("q{i}")).collect(),
        worker_id: "w".into(),
        max_jobs: 1,
        visibility_timeout_ms: 1000,
    };
    let err = c.propose(propose(&too_many_queues)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("queues"), "{}", err.message());

    for internal in [
        Command::Batch(vec![Command::Tick]),
        Command::Tick,
        Command::WebhookDelivered { id: 1 },
    ] {
        let err = c.propose(propose(&internal)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{internal:?}: {err:?}");
    }

    // A million nested batches: refused by the decoder, the leader keeps serving.
    let batch = encode(&Command::Batch(vec![])).unwrap()[0];
    let mut nested = Vec::new();
    for _ in 0..1_000_000 {
        nested.extend_from_slice(&[batch, 1]);
    }
    nested.extend_from_slice(&encode(&Command::Tick).unwrap());
    let err = c.propose(msg(nested.clone(), &secret)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let ok = Command::Pause {
        queue: "fine".into(),
    };
    c.propose(propose(&ok))
        .await
        .expect("a valid forwarded command");

    // A deadline of u64::MAX seconds is capped, not an Instant overflow.
    let mut far = propose(&ok);
    far.metadata_mut()
        .insert("grpc-timeout", "18446744073709551615S".parse().unwrap());
    c.propose(far).await.expect("a huge grpc-timeout is served");
    c.read_index(msg(vec![], &secret))
        .await
        .expect("the leader still serves");

    // The same on the `Forward` stream: each proposal answered on its own.
    let proposals = [too_many_queues, Command::Tick, ok];
    let messages = proposals
        .iter()
        .enumerate()
        .map(|(i, cmd)| {
            let id = i as u64 + 1;
            encode(&ForwardMsg::Propose {
                id,
                timeout_ms: 5_000,
                cmd,
            })
            .unwrap()
        })
        .collect();
    let mut replies = c
        .forward(forward_stream(messages, &secret))
        .await
        .expect("a Forward stream opens")
        .into_inner();
    let mut answers = std::collections::BTreeMap::new();
    while let Some(m) = replies.message().await.expect("the stream ends cleanly") {
        let r: ForwardReply = decode(&m.data).expect("a forwarded reply");
        answers.insert(r.id, r.reply);
    }
    assert_eq!(answers.len(), 3, "{answers:?}");
    for id in [1, 2] {
        match &answers[&id] {
            Err(ProposeError::Unavailable(m)) => assert!(m.contains("refused"), "{m}"),
            other => panic!("proposal {id} was not refused: {other:?}"),
        }
    }
    assert!(answers[&3].is_ok(), "{:?}", answers[&3]);
    // An undecodable message ends the stream with INVALID_ARGUMENT: the million nested
    // batches as a proposal (variant 0, id 1, 1 ms), and bytes that are no message.
    let mut deep = vec![0, 1, 1];
    deep.extend_from_slice(&nested);
    for bad in [deep, vec![0xff; 16]] {
        let mut replies = c
            .forward(forward_stream(vec![bad], &secret))
            .await
            .expect("a Forward stream opens")
            .into_inner();
        let err = replies.message().await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    c.read_index(msg(vec![], &secret))
        .await
        .expect("the leader still serves");
}

/// Asserts INVALID_ARGUMENT with a message naming `field`.
fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
    assert!(e.message().contains(field), "{field}: {}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_limit_answers_invalid_argument_naming_the_field() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;

    let lease = |queues: Vec<String>, worker: &str| pb::LeaseRequest {
        queues,
        worker_id: worker.into(),
        max_jobs: 1,
        ..Default::default()
    };
    let many: Vec<String> = (0..65).map(|i| format!("q{i}")).collect();
    refused(c.broker.lease(lease(many, "w")).await, "queues");
    let r = c
        .broker
        .lease(lease(vec!["q".into()], &"w".repeat(257)))
        .await;
    refused(r, "worker_id");
    let r = c
        .broker
        .lease(lease((0..64).map(|i| format!("q{i}")).collect(), "w"))
        .await;
    assert!(r.is_ok(), "64 queues are allowed: {r:?}");

    let mut j = job("lim", "x");
    j.run_at_ms = u64::MAX;
    refused(c.broker.enqueue(j).await, "run_at_ms");
    let mut j = job("lim", "x");
    j.job_type = "t".repeat(257);
    refused(c.broker.enqueue(j).await, "job_type");
    let mut j = job("lim", "x");
    j.headers = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    refused(c.broker.enqueue(j).await, "headers");
    let mut j = job("lim", "x");
    j.headers = (0..2)
        .map(|i| (format!("k{i}"), "v".repeat(40_000)))
        .collect();
    refused(c.broker.enqueue(j).await, "headers");

    // 5 jobs of 1 MiB (each within --max-payload): over the 4 MiB of one batch.
    let big = pb::EnqueueRequest {
        queue: "lim".into(),
        payload: vec![7u8; 1 << 20].into(),
        ..Default::default()
    };
    let batch = pb::EnqueueBatchRequest {
        jobs: vec![big.clone(); 5],
    };
    refused(c.broker.enqueue_batch(batch).await, "jobs");
    let ok = pb::EnqueueBatchRequest { jobs: vec![big; 3] };
    c.broker.enqueue_batch(ok).await.expect("3 MiB batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_call_rate_gets_resource_exhausted() {
    let node = InProcNode::start_with(|c| c.rate_per_connection = Some(5)).await;
    let mut c = node.clients().await;
    let mut codes = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let r = c
            .admin
            .get_queue_stats(pb::GetQueueStatsRequest { queue: "r".into() })
            .await;
        codes.push(r.map_or_else(|s| s.code(), |_| Code::Ok));
    }
    let took = started.elapsed();
    assert!(codes.contains(&Code::Ok), "{codes:?}");
    let exhausted = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert_eq!(
        exhausted + codes.iter().filter(|c| **c == Code::Ok).count(),
        30,
        "{codes:?}"
    );
    // A burst of 5, then 5 a second for as long as the calls took (on a quiet machine
    // well under a second: at least 20 of the 30 refused; a slow one refills more).
    let allowed = 5 + (5.0 * took.as_secs_f64()).ceil() as usize;
    assert!(
        30 - exhausted <= allowed,
        "{} of 30 served in {took:?} (at most {allowed}): {codes:?}",
        30 - exhausted
    );
    // Another connection has its own budget.
    let mut other = connect(node.addr()).await;
    other
        .admin
        .get_queue_stats(pb::GetQueueStatsRequest { queue: "r".into() })
        .await
        .expect("a fresh connection is not limited by the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_concurrency_gets_resource_exhausted() {
    let node = InProcNode::start_with(|c| c.max_concurrent_per_connection = 2).await;
    let c = node.clients().await;
    let poll = |mut c: Clients| async move {
        c.broker
            .lease(pb::LeaseRequest {
                queues: vec!["empty".into()],
                worker_id: "w".into(),
                max_jobs: 1,
                wait_ms: 20_000,
                ..Default::default()
            })
            .await
    };
    // Two long polls fill the connection; once both wait at the node, a third call on
    // it is shed.
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(poll(c.clone()))).collect();
    eventually("both long polls to wait", SOON, || async {
        (node.lease_calls_on("empty") == 2).then_some(())
    })
    .await;
    let err = c
        .clone()
        .admin
        .get_queue_stats(pb::GetQueueStatsRequest { queue: "x".into() })
        .await
        .expect_err("a third call is shed");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Another connection is served meanwhile.
    let mut other = connect(node.addr()).await;
    other
        .admin
        .get_queue_stats(pb::GetQueueStatsRequest { queue: "x".into() })
        .await
        .expect("another connection is served");
    for h in held {
        h.abort();
    }
}

const TOKENS: &str = "\
# token        roles                 queues
prod-t         produce
work-t         work
read-t         read
ops-t          admin
scoped-t       produce,work,read     emails,sms.*
";

/// A call with a bearer token.
fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_what_it_may_not_do() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, TOKENS).unwrap();
    let node = InProcNode::start_with(|c| c.tokens_file = Some(file.clone())).await;
    let mut c = node.clients().await;
    let seeded = c
        .broker
        .enqueue(authed(job("emails", "x"), "ops-t"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let other = c
        .broker
        .enqueue(authed(job("payments", "x"), "ops-t"))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    let denied = Code::PermissionDenied;
    for (token, may_produce, may_work, may_read, may_admin) in [
        ("prod-t", true, false, false, false),
        ("work-t", false, true, false, false),
        ("read-t", false, false, true, false),
        ("ops-t", true, true, true, true),
    ] {
        let want = |may: bool, r: Code| assert_eq!(r == denied, !may, "{token}: {r:?}");
        want(
            may_produce,
            code(c.broker.enqueue(authed(job("emails", "y"), token)).await),
        );
        let lease = pb::LeaseRequest {
            queues: vec!["nothing-here".into()],
            worker_id: "w".into(),
            max_jobs: 1,
            ..Default::default()
        };
        want(may_work, code(c.broker.lease(authed(lease, token)).await));
        let get = pb::GetJobRequest {
            job_id: seeded.clone(),
        };
        want(may_read, code(c.broker.get_job(authed(get, token)).await));
        let list = pb::ListQueuesRequest {};
        want(
            may_read,
            code(c.admin.list_queues(authed(list, token)).await),
        );
        let pause = pb::PauseQueueRequest {
            queue: "paused".into(),
        };
        want(
            may_admin,
            code(c.admin.pause_queue(authed(pause, token)).await),
        );
        let remove = pb::RemoveNodeRequest { node_id: 1 };
        want(
            may_admin,
            code(c.admin.remove_node(authed(remove, token)).await),
        );
    }
    // No token, an unknown token: UNAUTHENTICATED.
    let r = c.broker.enqueue(job("emails", "z")).await;
    assert_eq!(code(r), Code::Unauthenticated);
    let r = c.broker.enqueue(authed(job("emails", "z"), "nope")).await;
    assert_eq!(code(r), Code::Unauthenticated);

    // A token limited to emails and sms.*: other queues and their jobs are refused.
    let s = "scoped-t";
    assert_eq!(
        code(c.broker.enqueue(authed(job("sms.eu", "y"), s)).await),
        Code::Ok
    );
    assert_eq!(
        code(c.broker.enqueue(authed(job("payments", "y"), s)).await),
        denied
    );
    let batch = pb::EnqueueBatchRequest {
        jobs: vec![job("emails", "a"), job("payments", "b")],
    };
    assert_eq!(code(c.broker.enqueue_batch(authed(batch, s)).await), denied);
    // On EnqueueStream the refusal is the job's own answer; the stream goes on. A
    // worker's token may not open one at all.
    let msgs = vec![
        pb::EnqueueStreamRequest {
            seq: 1,
            job: Some(job("emails", "a")),
        },
        pb::EnqueueStreamRequest {
            seq: 2,
            job: Some(job("payments", "b")),
        },
        pb::EnqueueStreamRequest {
            seq: 3,
            job: Some(job("sms.us", "c")),
        },
    ];
    let mut answers = c
        .broker
        .enqueue_stream(authed(tokio_stream::iter(msgs.clone()), s))
        .await
        .unwrap()
        .into_inner();
    let mut codes = std::collections::BTreeMap::new();
    while let Some(a) = answers.message().await.unwrap() {
        codes.insert(a.seq, a.code);
    }
    let want_codes = [(1, 0), (2, denied as i32), (3, 0)];
    assert_eq!(codes, want_codes.into_iter().collect());
    let r = c
        .broker
        .enqueue_stream(authed(tokio_stream::iter(msgs), "work-t"))
        .await;
    assert_eq!(code(r), denied);
    let get = |id: &str| pb::GetJobRequest { job_id: id.into() };
    assert_eq!(
        code(c.broker.get_job(authed(get(&seeded), s)).await),
        Code::Ok
    );
    assert_eq!(code(c.broker.get_job(authed(get(&other), s)).await), denied);
    let lease = pb::LeaseRequest {
        queues: vec!["emails".into(), "payments".into()],
        worker_id: "w".into(),
        max_jobs: 1,
        ..Default::default()
    };
    assert_eq!(code(c.broker.lease(authed(lease, s)).await), denied);
    let listed = c
        .admin
        .list_queues(authed(pb::ListQueuesRequest {}, s))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = listed.queues.into_iter().map(|q| q.queue).collect();
    assert!(names.contains(&"emails".to_string()), "{names:?}");
    assert!(!names.contains(&"payments".to_string()), "{names:?}");

    // The dashboard API: reads need read, changes admin, and no queue patterns.
    let http = node.http_addr();
    assert_eq!(
        http_request(http, "GET", "/api/queues", Some("read-t"))
            .await
            .0,
        200
    );
    assert_eq!(
        http_request(http, "GET", "/api/queues", Some("prod-t"))
            .await
            .0,
        403
    );
    assert_eq!(
        http_request(http, "GET", "/api/queues", Some("scoped-t"))
            .await
            .0,
        403
    );
    assert_eq!(http_request(http, "GET", "/api/queues", None).await.0, 401);
    let pause = "/api/queues/emails/pause";
    assert_eq!(
        http_request(http, "POST", pause, Some("read-t")).await.0,
        403
    );
    assert_eq!(
        http_request(http, "POST", pause, Some("ops-t")).await.0,
        200
    );
    // /metrics stays open unless --http-auth all.
    assert_eq!(http_request(http, "GET", "/metrics", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_dashboard_can_require_a_token() {
    let node = InProcNode::start_with(|c| {
        c.token = Some(TOKEN.into());
        c.http_auth_all = true;
    })
    .await;
    let http = node.http_addr();
    for path in ["/metrics", "/", "/assets/app.js"] {
        assert_eq!(http_request(http, "GET", path, None).await.0, 401, "{path}");
        assert_eq!(
            http_request(http, "GET", path, Some(TOKEN)).await.0,
            200,
            "{path}"
        );
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http_request(http, "GET", path, None).await.0, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_file_is_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "old-t admin\n").unwrap();
    let node = ProcessNode::spawn(
        &dir.path().join("data"),
        &["--tokens-file", file.to_str().unwrap()],
    )
    .await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    let stats = || pb::GetQueueStatsRequest { queue: "q".into() };
    assert_eq!(
        code(c.admin.get_queue_stats(authed(stats(), "old-t")).await),
        Code::Ok
    );
    assert_eq!(
        code(c.admin.get_queue_stats(authed(stats(), "new-t")).await),
        Code::Unauthenticated
    );

    std::fs::write(&file, "new-t read\n").unwrap();
    node.hangup();
    eventually("the new token to work", SOON, || {
        let mut c = c.clone();
        async move {
            let r = c.admin.get_queue_stats(authed(stats(), "new-t")).await;
            (code(r) == Code::Ok).then_some(())
        }
    })
    .await;
    assert_eq!(
        code(c.admin.get_queue_stats(authed(stats(), "old-t")).await),
        Code::Unauthenticated
    );
    // A broken file keeps the tokens in force.
    std::fs::write(&file, "new-t nonsense-role\n").unwrap();
    node.hangup();
    let log = eventually("the reload error in the log", SOON, || async {
        let log = node.log_tail();
        log.contains("credentials not reloaded").then_some(log)
    })
    .await;
    assert!(log.contains("nonsense-role"), "{log}");
    assert_eq!(
        code(c.admin.get_queue_stats(authed(stats(), "new-t")).await),
        Code::Ok
    );
}

/// A broken `Work` session is resumed only by a token allowed every queue it worked:
/// a worker's token scoped to other queues is refused (and the session stays parked),
/// while the session's own token adopts its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_work_session_is_resumed_only_by_a_token_allowed_its_queues() {
    use pb::work_response::Kind as Down;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        "prod-t produce\nemails-w work,read emails\nsms-w work sms.*\n",
    )
    .unwrap();
    let node = InProcNode::start_with(|c| c.tokens_file = Some(file.clone())).await;
    let mut c = node.clients().await;
    let id = c
        .broker
        .enqueue(authed(job("emails", "x"), "prod-t"))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    // A session over a connection the test can cut, holding the job.
    let proxy = CutProxy::start(node.addr()).await;
    let mut via = connect(proxy.addr()).await;
    let open = |queue: &str, resume: &str, holding: Vec<String>| pb::WorkOpen {
        queues: vec![queue.into()],
        worker_id: "scoped-worker".into(),
        visibility_timeout_ms: 600_000,
        resume: resume.into(),
        holding,
    };
    let (_tx, mut down) = open_work(&mut via, open("emails", "", vec![]), 1, Some("emails-w"))
        .await
        .unwrap();
    let Down::Opened(opened) = next_push(&mut down).await else {
        panic!("the first answer names the session")
    };
    let Down::Job(pushed) = next_push(&mut down).await else {
        panic!("the job is pushed")
    };
    assert_eq!(pushed.job_id, id);
    proxy.cut();
    let seen = tokio::time::timeout(SOON, down.message()).await;
    assert!(
        matches!(seen, Ok(Err(_))),
        "the client sees the break: {seen:?}"
    );

    // Same worker id, a worker token for other queues: refused, naming the queue.
    let resume = |queue: &str| open(queue, &opened.session_id, vec![id.clone()]);
    let refused = open_work(&mut c, resume("sms.eu"), 0, Some("sms-w")).await;
    let Err(e) = refused else {
        panic!("a token for other queues resumed the session")
    };
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("\"emails\""), "{e:?}");
    // The session is still parked: its own token adopts the job, still leased (the
    // call stays open: a half-close would give the job back).
    let (_tx_again, mut again) = open_work(&mut c, resume("emails"), 0, Some("emails-w"))
        .await
        .expect("the session's own token resumes it");
    let Down::Opened(resumed) = next_push(&mut again).await else {
        panic!("the resumed session names itself")
    };
    assert_eq!(resumed.adopted, 1, "{resumed:?}");
    let held = c
        .broker
        .get_job(authed(pb::GetJobRequest { job_id: id.clone() }, "emails-w"))
        .await;
    let held = held.map(|r| r.into_inner());
    assert!(
        matches!(&held, Ok(j) if j.state == pb::JobState::Leased as i32 && j.attempt == 1),
        "{held:?}"
    );
}
