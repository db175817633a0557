//! Client side of the peer service: openraft's network, plus the connection pool the
//! node uses to forward writes and read-index requests to the leader.
//!
//! Peer addresses may be DNS names (a StatefulSet's stable names): they are resolved at
//! every connection attempt through a [`Resolver`], so a name that does not resolve yet
//! (a pod not created yet) is simply an unreachable peer that is tried again, and a pod
//! that comes back with a new IP is found under its name.
//!
//! Raft messages travel postcard-encoded inside `taskraft.raft.v1.RaftMessage`.
//! openraft 0.9 keeps one append in flight per follower, so `max_payload_entries`
//! (entries per append) is what lets replication keep up under load.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use taskraft_proto::raft::raft_peer_client::RaftPeerClient;
use taskraft_proto::raft::RaftMessage;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::addr::MemberAddr;
use super::peer_auth::SecretInjector;
use super::types::{NodeId, TypeConfig};
use super::wire::{decode, encode};

/// Largest peer message, sent or accepted. An append carries at least one entry, and an
/// entry is at most a 4 MiB proposer batch or one command the API admitted (payloads
/// and enqueue batches are capped at 4 MiB, see `api/validate.rs`); snapshot chunks
/// are 8 MiB. A message over this is refused before it is decoded.
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// Entries sent in one AppendEntries, by approximate bytes (always at least one entry).
/// openraft 0.9 gives an AppendEntries one heartbeat interval (100 ms) before it counts
/// it as failed; 64 entries of up to 4 MiB each could never make it, and a follower that
/// fell behind a burst of big batches would retry forever. Sending a prefix and
/// answering `PartialSuccess` is how openraft lets the network cut a batch.
const APPEND_BUDGET_BYTES: usize = 2 << 20;

/// How many of `entries` fit in [`APPEND_BUDGET_BYTES`] (at least one).
fn entries_within_budget(entries: &[super::types::Entry]) -> usize {
    let mut bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        bytes += match &e.payload {
            openraft::EntryPayload::Normal(env) => env.cmd.approx_size(),
            _ => 256,
        };
        if bytes > APPEND_BUDGET_BYTES {
            return i.max(1);
        }
    }
    entries.len()
}

type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns `host:port` into socket addresses at each connection attempt. The system
/// resolver by default; tests give one whose names start resolving when they say.
#[derive(Clone)]
pub struct Resolver(Arc<dyn Fn(String) -> Resolving + Send + Sync>);

impl Resolver {
    /// The system's resolver (`getaddrinfo` on a blocking thread).
    pub fn system() -> Self {
        Self(Arc::new(|host_port| {
            Box::pin(async move { Ok(tokio::net::lookup_host(host_port).await?.collect()) })
        }))
    }

    /// A resolver that answers with `f` (which sees `host:port`).
    pub fn from_fn(
        f: impl Fn(&str) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(move |host_port| {
            let r = f(&host_port);
            Box::pin(async move { r })
        }))
    }

    /// The addresses of `host_port` now.
    pub async fn resolve(&self, host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
        (self.0)(host_port.to_string()).await
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// Opens peer TCP connections: resolves the URI's host through the [`Resolver`] (at
/// every attempt) and tries each address in turn.
#[derive(Clone)]
struct PeerConnector {
    resolver: Resolver,
}

impl tower::Service<http::Uri> for PeerConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let host_port = format!("{host}:{}", uri.port_u16().unwrap_or(80));
            let addrs = resolver.resolve(&host_port).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("resolving {host_port}: {e}"))
            })?;
            let mut last = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host_port} resolved to no address"),
            );
            for addr in addrs {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        stream.set_nodelay(true)?;
                        return Ok(hyper_util::rt::TokioIo::new(stream));
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => {
                        last = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("connecting to {addr} ({host_port}) timed out"),
                        )
                    }
                }
            }
            Err(last)
        })
    }
}

/// A peer client that carries the cluster secret.
pub type PeerClient = RaftPeerClient<InterceptedService<Channel, SecretInjector>>;

/// Lazily connected clients, one per peer address.
///
/// It doubles as the test router: links to chosen addresses (or all links) can be cut,
/// so that fault tests can isolate a node without touching the kernel's network.
pub struct PeerPool {
    secret: SecretInjector,
    tls: Option<Arc<crate::tls::Tls>>,
    resolver: Resolver,
    clients: Mutex<HashMap<String, PeerClient>>,
    cut: Mutex<HashSet<String>>,
    isolated: AtomicBool,
    /// Bumped by [`PeerPool::reset_connections`]: long-lived streams opened before are
    /// replaced too (`forward.rs`).
    generation: AtomicU64,
}

impl PeerPool {
    /// A pool whose clients send the cluster `secret` (if any), speak TLS when `tls`
    /// has peer settings, and find peers through `resolver`.
    pub fn new(
        secret: Option<&str>,
        tls: Option<Arc<crate::tls::Tls>>,
        resolver: Resolver,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            secret: SecretInjector::new(secret)?,
            tls,
            resolver,
            clients: Mutex::new(HashMap::new()),
            cut: Mutex::new(HashSet::new()),
            isolated: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }))
    }

    /// Forgets every connection (after a certificate reload: new ones present it).
    pub fn reset_connections(&self) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the connections were reset.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// An endpoint for `addr` (host:port) of another node: `https://` with the cluster
    /// CA and this node's certificate when TLS is on.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let tls = self.tls.as_ref().and_then(|t| t.peer_client());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS settings for {addr}: {e}"))?;
        }
        Ok(endpoint)
    }

    /// Drops every outgoing message to `addr` until [`PeerPool::heal`] (fault tests).
    pub fn cut_link(&self, addr: &str) {
        self.cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string());
    }

    /// Drops every outgoing message until [`PeerPool::heal`] (fault tests).
    pub fn isolate(&self) {
        self.isolated.store(true, Ordering::SeqCst);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.isolated.store(false, Ordering::SeqCst);
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// True while messages to `addr` are dropped (fault tests).
    pub fn is_cut(&self, addr: &str) -> bool {
        self.isolated.load(Ordering::SeqCst)
            || self
                .cut
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(addr)
    }

    /// A client for the peer address `addr` (host:port); connects on first use.
    pub fn client(&self, addr: &str) -> Result<PeerClient, String> {
        if self.is_cut(addr) {
            return Err(format!("link to {addr} is cut"));
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        // The endpoint carries the TLS settings; tonic puts TLS over the connector's
        // stream, and the connector resolves the host at every attempt.
        let channel = self
            .endpoint(addr)?
            .connect_with_connector_lazy(PeerConnector {
                resolver: self.resolver.clone(),
            });
        let client = RaftPeerClient::with_interceptor(channel, self.secret.clone())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// openraft's network factory.
pub struct Network {
    pool: Arc<PeerPool>,
}

impl Network {
    /// A factory that connects through `pool`.
    pub fn new(pool: Arc<PeerPool>) -> Self {
        Self { pool }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: MemberAddr::peer_of(&node.addr),
            pool: self.pool.clone(),
        }
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    pool: Arc<PeerPool>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: serde::de::DeserializeOwned + std::error::Error,
    {
        let mut client = self
            .pool
            .client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftMessage { data: data.into() });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        }
        .map_err(|s| {
            // Only a peer that could not be reached at all is `Unreachable` (openraft
            // then backs off); a timeout, a reset stream or a refusal is a `Network`
            // error, retried at the next heartbeat, so a slow append to a lagging
            // follower is not mistaken for a dead node.
            if super::node::never_sent(&s) {
                RPCError::Unreachable(Unreachable::new(&s))
            } else {
                RPCError::Network(NetworkError::new(&s))
            }
        })?
        .into_inner();
        let res: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum Method {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let keep = entries_within_budget(&rpc.entries);
        if keep == rpc.entries.len() {
            return self.call(Method::Append, &rpc, &option).await;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        match self.call(Method::Append, &rpc, &option).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<openraft::error::InstallSnapshotError>>
    {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
