//! TLS (rustls, no OpenSSL) on the client gRPC port, the peer port and the HTTP port,
//! and the connections this node makes to its peers.
//!
//! ```text
//!   --tls-cert/--tls-key   this node's certificate: served on all three ports, and
//!                          presented as the client certificate when calling peers
//!   --tls-client-ca        the cluster CA: the peer port requires a client
//!                          certificate it signed (mutual TLS), and peers' server
//!                          certificates are checked against it
//! ```
//!
//! Every listener accepts through [`incoming`]: one task accepts TCP connections and
//! runs each TLS handshake on its own task (with a timeout), so a slow or silent client
//! cannot hold up the others. [`Tls::reload`] (on SIGHUP) reads the files again; new
//! connections use the new certificates, established ones keep theirs.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::conns::{Accepted, Conns};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the node's certificate, key and cluster CA are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates of the cluster (peer mTLS); optional for one node.
    pub client_ca: Option<PathBuf>,
}

/// Which listener a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// Public gRPC: HTTP/2, no client certificate.
    Client,
    /// Peer gRPC: HTTP/2, a client certificate from the cluster CA when one is set.
    Peer,
    /// HTTP: HTTP/1.1 (or HTTP/2), no client certificate.
    Http,
}

struct Loaded {
    client: Arc<rustls::ServerConfig>,
    peer: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
    /// For calls to peers: the cluster CA and this node's identity.
    peer_client: Option<tonic::transport::ClientTlsConfig>,
}

/// The node's TLS material, reloadable.
pub struct Tls {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn server_config(
    files: &TlsFiles,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key in {}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .with_context(|| format!("adding a CA certificate of {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the certificate does not match the private key")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

impl Tls {
    /// Reads the files; fails with what is wrong with them.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let loaded = Self::read(&files)?;
        Ok(Arc::new(Self {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn read(files: &TlsFiles) -> anyhow::Result<Loaded> {
        let h2: &[&[u8]] = &[b"h2"];
        let peer_client = match &files.client_ca {
            Some(ca) => {
                let ca_pem = std::fs::read(ca)
                    .with_context(|| format!("reading --tls-client-ca {}", ca.display()))?;
                let cert = std::fs::read(&files.cert)
                    .with_context(|| format!("reading --tls-cert {}", files.cert.display()))?;
                let key = std::fs::read(&files.key)
                    .with_context(|| format!("reading --tls-key {}", files.key.display()))?;
                Some(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
            }
            None => None,
        };
        Ok(Loaded {
            client: server_config(files, None, h2)?,
            peer: server_config(files, files.client_ca.as_deref(), h2)?,
            http: server_config(files, None, &[b"h2", b"http/1.1"])?,
            peer_client,
        })
    }

    /// Reads the certificate, key and CA again; on error the current ones stay.
    pub fn reload(&self) -> anyhow::Result<()> {
        let loaded = Self::read(&self.files)?;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn acceptor(&self, port: Port) -> TlsAcceptor {
        let l = self.current();
        TlsAcceptor::from(match port {
            Port::Client => l.client.clone(),
            Port::Peer => l.peer.clone(),
            Port::Http => l.http.clone(),
        })
    }

    /// TLS settings for calls to peers (and to the leader's public port): the cluster
    /// CA and this node's certificate. None without a cluster CA.
    pub fn peer_client(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.current().peer_client.clone()
    }
}

/// A connection, plain or TLS: what the listeners accept (server side) and what the
/// webhook client dials (client side, `webhook/client.rs`).
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, either side.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Conn::Plain(s) => s.connect_info(),
            Conn::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepted connections of one listener. Dropping it stops accepting (and closes the
/// listener).
pub struct Incoming {
    rx: mpsc::Receiver<Accepted>,
    local: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
    conns: Conns,
}

impl Incoming {
    /// The connections accepted here and still open (a stopping node cuts them).
    pub fn conns(&self) -> Conns {
        self.conns.clone()
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl futures::Stream for Incoming {
    type Item = io::Result<Accepted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Accepted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Accepted, SocketAddr) {
        loop {
            match self.rx.recv().await {
                Some(c) => {
                    let addr = c.connect_info().remote_addr().unwrap_or(self.local);
                    return (c, addr);
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accepts on `listener`, with TLS for `port` when `tls` is set. Every connection is
/// registered in the listener's [`Conns`] ([`Incoming::conns`]) while it is open.
pub fn incoming(listener: TcpListener, tls: Option<(Arc<Tls>, Port)>) -> io::Result<Incoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(256);
    let conns = Conns::default();
    let registry = conns.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, %local, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let registration = registry.register();
            match &tls {
                None => {
                    let conn = Accepted::new(Conn::Plain(tcp), registration);
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                }
                Some((tls, port)) => {
                    let acceptor = tls.acceptor(*port);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                let conn = Conn::Tls(Box::new(s.into()));
                                let _ = tx.send(Accepted::new(conn, registration)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    Ok(Incoming {
        rx,
        local,
        accept,
        conns,
    })
}
