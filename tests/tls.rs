//! TLS: a 3-node cluster with mutual TLS between peers (certificates of a cluster CA
//! generated here) and TLS to clients; peers without a cluster certificate and
//! plaintext clients get nowhere; certificates are reloaded without a restart.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use taskraft_broker::tls::TlsFiles;
use taskraft_proto::raft::raft_peer_client::RaftPeerClient;
use taskraft_proto::raft::RaftMessage;
use taskraft_tests::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA that signs node certificates valid for 127.0.0.1 and localhost.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// (certificate PEM, key PEM) of a node.
    fn node(&self) -> (String, String) {
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a node certificate, its key and the CA into `dir`.
    fn write_node(&self, dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = self.node();
        let files = TlsFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
            client_ca: Some(dir.join("ca.pem")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(files.client_ca.as_ref().unwrap(), self.pem()).unwrap();
        files
    }
}

async fn tls_client(addr: std::net::SocketAddr, ca: &str) -> taskraft::Client {
    taskraft::Client::builder()
        .addr(addr.to_string())
        .tls_ca_pem(ca.as_bytes().to_vec())
        .retry_for(std::time::Duration::from_secs(5))
        .connect()
        .await
        .expect("client")
}

/// A peer-service call over TLS trusting `ca`, presenting `identity` if given.
async fn vote_over_tls(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    RaftPeerClient::new(ch)
        .vote(RaftMessage {
            data: vec![1, 2, 3].into(),
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_node_cluster_runs_with_mutual_tls_between_peers_and_tls_to_clients() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("taskraft test cluster CA");
    let files: Vec<TlsFiles> = (1..=3)
        .map(|i| ca.write_node(&certs.path().join(format!("node-{i}"))))
        .collect();
    let cluster = InProcCluster::start(3, |c| c.tls = Some(files[c.id as usize - 1].clone())).await;
    let leader = cluster.wait_leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();

    // A write through a follower is forwarded to the leader over mutual TLS and
    // replicated to all three.
    let client = tls_client(cluster.node(follower).grpc_addr, &ca.pem()).await;
    let id = client
        .enqueue("tls", "over tls")
        .await
        .expect("enqueue over TLS");
    let job = client.get_job(&id).await.expect("get over TLS");
    assert_eq!(job.payload.as_ref(), b"over tls");
    let index = cluster.applied(leader);
    eventually("all three nodes to apply the write", SOON, || async {
        (1..=3).all(|i| cluster.applied(i) >= index).then_some(())
    })
    .await;

    // Plaintext to the client port does not work.
    let plain = taskraft::Client::builder()
        .addr(cluster.node(follower).grpc_addr.to_string())
        .retry_for(std::time::Duration::ZERO)
        .call_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .unwrap();
    assert!(plain.enqueue("tls", "plain").await.is_err());

    // The peer port: without a client certificate, or with one of another CA, the
    // handshake fails; with a cluster certificate the call reaches the service (and
    // the garbage message is refused by the decoder).
    let peer = cluster.node(leader).peer_addr;
    let no_cert = vote_over_tls(peer, &ca.pem(), None).await.unwrap_err();
    assert!(!no_cert.starts_with("InvalidArgument"), "{no_cert}");
    let stranger = Ca::new("someone else").node();
    let foreign = vote_over_tls(peer, &ca.pem(), Some(stranger))
        .await
        .unwrap_err();
    assert!(!foreign.starts_with("InvalidArgument"), "{foreign}");
    let member = vote_over_tls(peer, &ca.pem(), Some(ca.node()))
        .await
        .unwrap_err();
    assert!(member.starts_with("InvalidArgument"), "{member}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_without_a_restart() {
    let certs = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let files = old_ca.write_node(certs.path());
    let node = InProcNode::start_with(|c| c.tls = Some(files.clone())).await;
    let addr = node.addr();
    let old = tls_client(addr, &old_ca.pem()).await;
    old.enqueue("r", "x").await.expect("old certificate served");

    // New files (another CA), then a reload, as SIGHUP does.
    let new_ca = Ca::new("new CA");
    let written: PathBuf = certs.path().join("next");
    let next = new_ca.write_node(&written);
    std::fs::copy(&next.cert, &files.cert).unwrap();
    std::fs::copy(&next.key, &files.key).unwrap();
    std::fs::copy(
        next.client_ca.as_ref().unwrap(),
        files.client_ca.as_ref().unwrap(),
    )
    .unwrap();
    let running = node.running.as_ref().unwrap();
    running
        .tls
        .as_ref()
        .expect("TLS on")
        .reload()
        .expect("reload");

    let new = tls_client(addr, &new_ca.pem()).await;
    new.enqueue("r", "y").await.expect("new certificate served");
    let stale = tls_client(addr, &old_ca.pem()).await;
    assert!(
        stale.enqueue("r", "z").await.is_err(),
        "a client trusting only the old CA must not connect any more"
    );
}

/// GET `path` over https from `addr`, trusting `ca`: (status code, body), or the error.
async fn https_get(
    addr: std::net::SocketAddr,
    ca: &str,
    path: &str,
) -> Result<(u16, String), String> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    Ok((code, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_serves_probes_and_metrics_over_tls_only() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("http CA");
    let files = ca.write_node(certs.path());
    let node = InProcNode::start_with(|c| c.tls = Some(files.clone())).await;
    let http = node.http_addr();
    let (code, _) = https_get(http, &ca.pem(), "/readyz").await.expect("https");
    assert_eq!(code, 200);
    let (code, body) = https_get(http, &ca.pem(), "/metrics").await.expect("https");
    assert_eq!(code, 200);
    assert!(body.contains("taskraft_"), "{body}");
    // Another CA's client does not get through; plain HTTP gets no answer.
    assert!(https_get(http, &Ca::new("other").pem(), "/readyz")
        .await
        .is_err());
    assert_eq!(http_get(http, "/readyz").await.map(|(c, _)| c), None);
}
