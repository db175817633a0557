//! Webhooks: a local HTTP receiver gets signed `job.succeeded` / `job.dead` events,
//! including after a receiver outage and after a leader failover; loopback, private and
//! link-local targets are refused unless `--webhook-allow` covers them (the receivers
//! here are on 127.0.0.1, so those tests allow 127.0.0.0/8 explicitly).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use taskraft_broker::webhook::target::TargetPolicy;
use taskraft_proto::v1 as pb;
use taskraft_tests::*;

/// (signature header, parsed body, raw body) of one delivery.
type Delivery = (Option<String>, serde_json::Value, Vec<u8>);

#[derive(Default)]
struct Receiver {
    events: Mutex<Vec<Delivery>>,
    down: AtomicBool,
    refused: AtomicUsize,
}

async fn hook(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        r.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let sig = headers
        .get("x-taskraft-signature")
        .map(|v| v.to_str().unwrap().to_string());
    let json = serde_json::from_slice(&body).expect("JSON body");
    r.events.lock().unwrap().push((sig, json, body.to_vec()));
    StatusCode::OK
}

/// The receiver's routes.
fn receiver_app(r: Arc<Receiver>) -> axum::Router {
    axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r)
}

/// A receiver over https with a certificate for 127.0.0.1 from a fresh CA; returns the
/// CA's PEM too.
async fn https_receiver(dir: &std::path::Path) -> (Arc<Receiver>, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let files = taskraft_broker::tls::TlsFiles {
        cert: dir.join("receiver.pem"),
        key: dir.join("receiver.key"),
        client_ca: None,
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    let tls = taskraft_broker::tls::Tls::load(files).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let incoming =
        taskraft_broker::tls::incoming(listener, Some((tls, taskraft_broker::tls::Port::Http)))
            .unwrap();
    let r = Arc::new(Receiver::default());
    let app = receiver_app(r.clone());
    tokio::spawn(async move { axum::serve(incoming, app).await.unwrap() });
    (r, url, ca.pem())
}

async fn receiver() -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver::default());
    let app = receiver_app(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn wait_events(r: &Receiver, n: usize) -> Vec<Delivery> {
    eventually_ok(&format!("{n} webhook events"), SOON, || {
        let ev = r.events.lock().unwrap().clone();
        std::future::ready(if ev.len() >= n {
            Ok(ev)
        } else {
            Err(format!("only {} arrived", ev.len()))
        })
    })
    .await
}

/// Waits until the receiver has refused at least `n` deliveries (while it is down).
async fn wait_refused(r: &Receiver, n: usize, what: &str) {
    eventually(what, SOON, || {
        std::future::ready((r.refused.load(Ordering::SeqCst) >= n).then_some(()))
    })
    .await;
}

/// `--webhook-allow 127.0.0.0/8`: the test receivers listen on loopback.
fn allow_loopback(c: &mut taskraft_broker::config::Config) {
    c.api.webhook_targets = Arc::new(TargetPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]));
}

fn hooked(queue: &str, url: &str) -> pb::EnqueueRequest {
    let mut j = job(queue, "x");
    j.webhook_url = url.into();
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_arrive_on_success_and_death_even_after_an_outage() {
    let (r, url) = receiver().await;
    let node = InProcNode::start_with(|c| {
        allow_loopback(c);
        c.webhook_secret = Some("whsec".into());
    })
    .await;
    let mut c = node.clients().await;

    let ok = c
        .broker
        .enqueue(hooked("wh", &url))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let l = c
        .broker
        .lease(lease("wh", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    c.broker
        .ack(pb::AckRequest {
            job_id: ok.clone(),
            lease_id: l.lease_id,
            result: "done".into(),
        })
        .await
        .unwrap();
    let ev = wait_events(&r, 1).await;
    let (sig, json, raw) = &ev[0];
    assert_eq!(
        sig.as_deref(),
        Some(expected_signature("whsec", raw).as_str())
    );
    assert_eq!(json["event"], "job.succeeded");
    assert_eq!(json["job_id"], ok.as_str());
    assert_eq!(json["queue"], "wh");
    assert_eq!(json["attempt"], 1);
    let result = base64::engine::general_purpose::STANDARD
        .decode(json["result"].as_str().unwrap())
        .unwrap();
    assert_eq!(result, b"done");
    assert!(json["timestamp_ms"].as_u64().unwrap() > 0);

    // The receiver goes down; the death event is retried until it comes back.
    r.down.store(true, Ordering::SeqCst);
    let dead = c
        .broker
        .enqueue(hooked("wh", &url))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let l = c
        .broker
        .lease(lease("wh", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    c.broker
        .nack(pb::NackRequest {
            job_id: dead.clone(),
            lease_id: l.lease_id,
            error: "poison".into(),
            retry_after_ms: 0,
            dead_letter: true,
        })
        .await
        .unwrap();
    wait_refused(&r, 2, "redelivery attempts during the outage").await;
    r.down.store(false, Ordering::SeqCst);
    let ev = wait_events(&r, 2).await;
    let (sig, json, raw) = &ev[1];
    assert_eq!(
        sig.as_deref(),
        Some(expected_signature("whsec", raw).as_str())
    );
    assert_eq!(
        (
            json["event"].as_str(),
            json["job_id"].as_str(),
            json["error"].as_str()
        ),
        (Some("job.dead"), Some(dead.as_str()), Some("poison"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_are_delivered_by_the_new_leader_after_failover() {
    let (r, url) = receiver().await;
    r.down.store(true, Ordering::SeqCst);
    let mut cluster = InProcCluster::start(3, allow_loopback).await;
    let leader = cluster.wait_leader().await;
    let mut c = cluster.clients(leader).await;
    let id = c
        .broker
        .enqueue(hooked("whf", &url))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let l = c
        .broker
        .lease(lease("whf", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    c.broker
        .ack(pb::AckRequest {
            job_id: id.clone(),
            lease_id: l.lease_id,
            result: Default::default(),
        })
        .await
        .unwrap();
    wait_refused(&r, 1, "the old leader to try a delivery").await;
    cluster.stop(leader).await;
    r.down.store(false, Ordering::SeqCst);
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    cluster.wait_leader_among(&survivors).await;
    let ev = wait_events(&r, 1).await;
    assert_eq!(ev[0].1["job_id"], id.as_str());
    assert_eq!(ev[0].0, None, "no secret configured: unsigned");
}

#[tokio::test]
async fn malformed_webhook_urls_are_refused() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    for bad in ["ftp://x/y", "not a url", "https://", "http:///path"] {
        let err = c.broker.enqueue(hooked("whv", bad)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(err.message().contains("webhook_url"), "{}", err.message());
    }
}

#[tokio::test]
async fn webhook_targets_on_internal_addresses_are_refused_at_enqueue() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    for bad in [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://224.0.0.1/hook",
    ] {
        let err = c.broker.enqueue(hooked("whs", bad)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(
            err.message().contains("webhook_url") && err.message().contains("--webhook-allow"),
            "{bad}: {}",
            err.message()
        );
    }
    c.broker
        .enqueue(hooked("whs", "http://hooks.example.com/x"))
        .await
        .expect("a public name is accepted");
}

/// Enqueues a hooked job and completes it.
async fn complete(c: &mut Clients, queue: &str, url: &str) -> String {
    let id = c
        .broker
        .enqueue(hooked(queue, url))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let l = c
        .broker
        .lease(lease(queue, 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    c.broker
        .ack(pb::AckRequest {
            job_id: id.clone(),
            lease_id: l.lease_id,
            result: Default::default(),
        })
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_when_delivering_with_a_short_code() {
    let (r, url) = receiver().await;
    // `localhost` passes the enqueue check (a name) but resolves to loopback.
    let url = url.replace("127.0.0.1", "localhost");
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let id = complete(&mut c, "whl", &url).await;
    let running = node.running.as_ref().unwrap().node.clone();
    let ev = eventually("a refused delivery attempt", SOON, || {
        let running = running.clone();
        async move {
            let state = &running.view().state;
            state
                .due_webhooks(u64::MAX, 10)
                .into_iter()
                .find(|e| e.tries >= 1)
        }
    })
    .await;
    assert_eq!(ev.job_id, id);
    assert_eq!(ev.last_error, "target-not-allowed");
    assert!(
        r.events.lock().unwrap().is_empty(),
        "the receiver was reached"
    );

    // The same receiver with loopback allowed: delivered.
    let node = InProcNode::start_with(allow_loopback).await;
    let mut c = node.clients().await;
    let id = complete(&mut c, "whl", &url).await;
    let ev = wait_events(&r, 1).await;
    assert_eq!(ev[0].1["job_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_recorded_as_a_short_code_only() {
    let (r, url) = receiver().await;
    r.down.store(true, Ordering::SeqCst);
    let node = InProcNode::start_with(allow_loopback).await;
    let mut c = node.clients().await;
    complete(&mut c, "whc", &url).await;
    let running = node.running.as_ref().unwrap().node.clone();
    let ev = eventually("a failed delivery attempt", SOON, || {
        let running = running.clone();
        async move {
            let state = &running.view().state;
            state
                .due_webhooks(u64::MAX, 10)
                .into_iter()
                .find(|e| e.tries >= 1)
        }
    })
    .await;
    assert_eq!(ev.last_error, "http-503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_receivers_are_verified_with_the_system_roots_and_webhook_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (r, url, ca) = https_receiver(dir.path()).await;
    let ca_file = dir.path().join("webhook-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    // Without the receiver's CA the certificate is not trusted: nothing is delivered.
    let node = InProcNode::start_with(allow_loopback).await;
    let mut c = node.clients().await;
    complete(&mut c, "whtls", &url).await;
    let running = node.running.as_ref().unwrap().node.clone();
    let ev = eventually("a failed https attempt", SOON, || {
        let running = running.clone();
        async move {
            let state = &running.view().state;
            state
                .due_webhooks(u64::MAX, 10)
                .into_iter()
                .find(|e| e.tries >= 1)
        }
    })
    .await;
    assert_eq!(ev.last_error, "connect-failed");
    assert!(r.events.lock().unwrap().is_empty());

    // With --webhook-ca it is.
    let node = InProcNode::start_with(|c| {
        allow_loopback(c);
        c.webhook_ca = Some(ca_file.clone());
    })
    .await;
    let mut c = node.clients().await;
    let id = complete(&mut c, "whtls", &url).await;
    let ev = wait_events(&r, 1).await;
    assert_eq!(ev[0].1["job_id"], id.as_str());
}
