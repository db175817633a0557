//! The HTTP client webhooks are delivered with: `http://` and `https://` (rustls, the
//! system's roots plus `--webhook-ca`), connecting only to addresses the target policy
//! allows (`webhook/target.rs`), checked on the resolved addresses themselves.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::tls::Conn;
use crate::webhook::target::TargetPolicy;

/// The webhook HTTP client.
pub type WebhookClient = Client<Connector, Full<Bytes>>;

/// A connect timeout for webhook receivers.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The error a refused target resolves to (found again in the client's error chain).
#[derive(Debug)]
pub struct TargetRefused(pub String);

impl std::fmt::Display for TargetRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "webhook target not allowed: {}", self.0)
    }
}

impl std::error::Error for TargetRefused {}

/// True when `e` (or an error under it) is a refused target.
pub fn is_refused_target(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<TargetRefused>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<TargetRefused>()) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Resolves a webhook host and keeps only addresses the policy allows, so the
/// connection is made to an address that was checked (no re-resolution in between).
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<_> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = Vec::new();
            let allowed: Vec<_> = all
                .into_iter()
                .filter(|a| match policy.refusal(a.ip()) {
                    None => true,
                    Some(kind) => {
                        refused.push(format!("{} ({kind})", a.ip()));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    TargetRefused(format!("{host} resolves to {}", refused.join(", "))),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// The webhook client's connections are [`Conn`]s (plain for `http://`, TLS for
/// `https://`); hyper asks them what they are connected to.
impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain(s) => s.connected(),
            Conn::Tls(s) => s.get_ref().0.connected(),
        }
    }
}

/// Connects through the guarded resolver, then TLS for `https://`.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector<GuardedResolver>,
    tls: tokio_rustls::TlsConnector,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            if !https {
                return Ok(TokioIo::new(Conn::Plain(tcp)));
            }
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| format!("not a TLS server name: {e}"))?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(Conn::Tls(Box::new(stream.into()))))
        })
    }
}

/// The client: `targets` decides which addresses may be reached; `extra_ca` (PEM)
/// is trusted for `https://` besides the system's roots.
pub fn client(
    targets: Arc<TargetPolicy>,
    extra_ca: Option<&[u8]>,
) -> anyhow::Result<WebhookClient> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system certificate rustls cannot use is skipped, like a browser would.
        let _ = roots.add(cert);
    }
    if let Some(pem) = extra_ca {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            roots
                .add(cert.context("parsing --webhook-ca")?)
                .context("adding a --webhook-ca certificate")?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { policy: targets });
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let connector = Connector {
        http,
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
    };
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
