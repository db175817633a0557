//! gRPC connections to the node(s) under test.
//!
//! Each server gets `--connections` HTTP/2 connections; callers are spread over all of
//! them round-robin, so `--servers a,b,c` puts load on every node (followers forward
//! writes to the leader).

use std::time::Duration;

use anyhow::{Context, Result};
use taskraft_proto::v1::admin_client::AdminClient;
use taskraft_proto::v1::broker_client::BrokerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Bound on any single call (a Lease long-polls at most 1 s in these scenarios).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Broker service client with the bearer token attached.
pub type Broker = BrokerClient<InterceptedService<Channel, Auth>>;
/// Admin service client with the bearer token attached.
pub type Admin = AdminClient<InterceptedService<Channel, Auth>>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Open connections to every server.
#[derive(Clone)]
pub struct Pool {
    channels: Vec<Channel>,
    auth: Auth,
}

/// The CA every connection verifies TLS certificates with (`--tls-ca`), once set.
static TLS_CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Makes every later connection use TLS verified with the PEM CA `pem` (addresses
/// without a scheme become `https://`).
pub fn use_tls_ca(pem: Vec<u8>) {
    let _ = TLS_CA.set(pem);
}

impl Pool {
    /// Connects `per_server` channels to each of `servers` (`host:port` or a URI).
    pub async fn connect(
        servers: &[String],
        per_server: usize,
        token: Option<&str>,
    ) -> Result<Self> {
        let auth = match token {
            Some(t) => Auth(Some(
                format!("Bearer {t}")
                    .parse()
                    .context("--token is not a valid header value")?,
            )),
            None => Auth(None),
        };
        let mut channels = Vec::new();
        for server in servers {
            let uri = if server.contains("://") {
                server.clone()
            } else if TLS_CA.get().is_some() {
                format!("https://{server}")
            } else {
                format!("http://{server}")
            };
            for _ in 0..per_server.max(1) {
                let mut endpoint = Endpoint::from_shared(uri.clone())
                    .with_context(|| format!("bad server address {server:?}"))?;
                if let Some(ca) = TLS_CA.get() {
                    endpoint = endpoint
                        .tls_config(
                            tonic::transport::ClientTlsConfig::new()
                                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                        )
                        .context("TLS settings")?;
                }
                let ch = endpoint
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {uri}"))?;
                channels.push(ch);
            }
        }
        anyhow::ensure!(!channels.is_empty(), "no server given");
        Ok(Self { channels, auth })
    }

    /// HTTP/2 connections held.
    pub fn connections(&self) -> usize {
        self.channels.len()
    }

    /// A broker client on connection `i` (modulo the number of connections).
    pub fn broker(&self, i: usize) -> Broker {
        let ch = self.channels[i % self.channels.len()].clone();
        BrokerClient::with_interceptor(ch, self.auth.clone()).max_decoding_message_size(64 << 20)
    }

    /// An admin client on the first connection.
    pub fn admin(&self) -> Admin {
        AdminClient::with_interceptor(self.channels[0].clone(), self.auth.clone())
    }
}
