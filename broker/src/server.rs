//! Binds the listeners, starts the Raft node and the gRPC and HTTP servers, and owns
//! every task. [`run`] serves until the shutdown future resolves (ctrl-c / SIGTERM in
//! `main`, a oneshot in tests), then drains in-flight calls and stops Raft.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskraft_proto::raft::raft_peer_server::RaftPeerServer;
use taskraft_proto::v1::admin_server::AdminServer;
use taskraft_proto::v1::broker_server::BrokerServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

use crate::api::admin::AdminService;
use crate::api::auth::{Auth, AuthLayer};
use crate::api::broker::BrokerService;
use crate::config::Config;
use crate::raft::addr::MemberAddr;
use crate::raft::network::MAX_PEER_MESSAGE;
use crate::raft::peer_auth::PeerAuth;
use crate::raft::service::PeerService;
use crate::raft::{NodeOptions, RaftNode};
use crate::tls::{incoming, Port};

mod watchers;
use watchers::{listen_hangup, reload_on_sighup, report_health};

/// Longest wait at shutdown for the stores to be closed by the tasks that still hold
/// them: an apply or a commit under way, and the tasks of connections just cut, which
/// take milliseconds. Whatever holds them longer is logged, not waited for.
const STORES_RELEASED_LIMIT: Duration = Duration::from_secs(3);

/// A node that is serving.
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound peer (Raft) address.
    pub peer_addr: SocketAddr,
    /// The Raft node.
    pub node: Arc<RaftNode>,
    /// Client credentials (reload them with [`Auth::reload`]; SIGHUP does).
    pub auth: Auth,
    /// TLS material when TLS is on (reload it with [`crate::tls::Tls::reload`];
    /// SIGHUP does).
    pub tls: Option<Arc<crate::tls::Tls>>,
    stop: Option<oneshot::Sender<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    peer: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    /// Tasks the node cannot work without, by name: if one ends (or panics) the node
    /// stops, naming it, instead of answering health checks while writes fail.
    background: Vec<(&'static str, JoinHandle<()>)>,
    /// How long shutdown waits for open calls and connections.
    drain_limit: Duration,
    /// `Work` sessions, ended first at shutdown (they would hold the drain open).
    work_sessions: Arc<crate::api::work_stream::Sessions>,
    /// Where the stores live: shutdown returns once they are closed.
    data_dir: std::path::PathBuf,
    /// Open connections of the client, peer and HTTP listeners.
    conns: Vec<crate::conns::Conns>,
}

/// Starts a node and returns once it is listening.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding gRPC address {}", config.listen))?;
    let grpc_addr = listener.local_addr()?;
    let http_listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding HTTP address {}", config.http))?;
    let http_addr = http_listener.local_addr()?;
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::Tls::load(files.clone()).context("loading TLS files")?),
        None => None,
    };
    crate::config::check_peer_exposure(
        config.peer_listen,
        config.cluster_secret.as_deref(),
        tls.as_ref().is_some_and(|t| t.peer_client().is_some()),
    )?;
    let peer_listener = TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| format!("binding peer address {}", config.peer_listen))?;
    let peer_addr = peer_listener.local_addr()?;
    let advertise = MemberAddr {
        client: config
            .advertise
            .clone()
            .unwrap_or_else(|| grpc_addr.to_string()),
        peer: config
            .peer_advertise
            .clone()
            .unwrap_or_else(|| peer_addr.to_string()),
    };

    let node = RaftNode::start(NodeOptions {
        id: config.id,
        advertise: advertise.encode(),
        data_dir: config.data_dir.clone(),
        peers: config.peers.clone(),
        cluster_secret: config.cluster_secret.clone(),
        tls: tls.clone(),
        request_timeout: config.request_timeout,
        keep_logs: config.keep_logs,
        keep_log_bytes: config.keep_log_bytes,
        heartbeat: config.heartbeat,
        resolver: config.resolver.clone(),
        clock: config.clock.clone(),
        min_free_disk: config.min_free_disk,
        verify_on_start: config.verify_on_start,
    })
    .await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Reflection in both protocols: grpcurl and Postman ask `v1`, several older tools
    // (Evans, some grpcurl builds) only `v1alpha`.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(taskraft_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("building reflection service")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("building v1alpha reflection service")?;

    let auth = Auth::with_file(config.token.as_deref(), config.tokens_file.as_deref())?;
    // Built before serving: reading the system's CA roots takes a moment.
    let webhook_ca = match &config.webhook_ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading --webhook-ca {}", path.display()))?,
        ),
        None => None,
    };
    let webhook_client =
        crate::webhook::client::client(config.api.webhook_targets.clone(), webhook_ca.as_deref())?;
    let hangup = if config.tokens_file.is_some() || tls.is_some() {
        listen_hangup()
    } else {
        None
    };
    let metrics = if config.metrics {
        crate::metrics::Metrics::new(&node).context("creating metrics")?
    } else {
        crate::metrics::Metrics::disabled()
    };
    if let Some(observer) = metrics.fsync_observer() {
        node.observe_fsync(observer);
    }
    let max_msg = (64 * 1024 * 1024).max(config.api.max_payload * 2);
    let broker_service =
        BrokerService::new(node.clone(), config.api.clone()).with_metrics(metrics.clone());
    let work_sessions = broker_service.sessions().clone();
    let broker = BrokerServer::new(broker_service)
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let admin = AdminServer::new(AdminService::new(node.clone(), config.token.clone()))
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (http_stop_tx, http_stop_rx) = tokio::sync::watch::channel(false);
    let (peer_stop_tx, peer_stop_rx) = tokio::sync::watch::channel(false);
    // The leader holds what followers forward to the same rules as its own clients' calls.
    let forward_check = {
        let api = config.api.clone();
        Arc::new(move |cmd: &crate::queue::Command, now_ms: u64| {
            crate::api::validate::forwarded(cmd, &api, now_ms).map_err(|e| e.to_string())
        })
    };
    let peer = RaftPeerServer::new(
        PeerService::new(node.clone(), forward_check).with_stop(peer_stop_rx.clone()),
    )
    .max_decoding_message_size(MAX_PEER_MESSAGE)
    .max_encoding_message_size(MAX_PEER_MESSAGE);
    // Open connections of each listener: shutdown cuts those its drain gave up on.
    let grpc_incoming = incoming(listener, tls.clone().map(|t| (t, Port::Client)))?;
    let peer_incoming = incoming(peer_listener, tls.clone().map(|t| (t, Port::Peer)))?;
    let http_incoming = incoming(http_listener, tls.clone().map(|t| (t, Port::Http)))?;
    let conns = vec![
        grpc_incoming.conns(),
        peer_incoming.conns(),
        http_incoming.conns(),
    ];
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            // Per connection: calls beyond the limits are answered RESOURCE_EXHAUSTED at
            // once (load shedding) instead of queueing without bound.
            .concurrency_limit_per_connection(config.max_concurrent_per_connection)
            .load_shed(true)
            .layer(crate::metrics::RpcMetricsLayer::new(metrics.clone()))
            .layer(crate::api::limits::RateLimitLayer::new(
                config.rate_per_connection,
            ))
            // Credential and role of every Broker/Admin call, before it is decoded.
            .layer(AuthLayer::new(auth.clone()))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(broker)
            .add_service(admin)
            // `incoming` sets tcp_nodelay on each connection (the builder's does not apply
            // to a pre-bound listener; Nagle + delayed ACKs would add ~40 ms to replies).
            .serve_with_incoming_shutdown(grpc_incoming, async move {
                let _ = stop_rx.await;
                let _ = http_stop_tx.send(true);
                let _ = peer_stop_tx.send(true);
            }),
    );
    // The Raft peer service on its own listener, behind the cluster secret: client
    // credentials never reach it, and the client port does not serve it at all.
    let peer_auth = PeerAuth::new(config.cluster_secret.as_deref());
    let peer = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(InterceptedService::new(peer, peer_auth))
            .serve_with_incoming_shutdown(peer_incoming, async move {
                let mut rx = peer_stop_rx;
                let _ = rx.wait_for(|v| *v).await;
            }),
    );
    let router = crate::http::router(
        node.clone(),
        metrics.clone(),
        auth.clone(),
        config.http_auth_all,
    );
    let http = tokio::spawn(async move {
        let mut rx = http_stop_rx;
        axum::serve(http_incoming, router)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
    });

    let mut background = vec![
        (
            "ticker",
            tokio::spawn(node.clone().run_ticker(Duration::from_millis(200))),
        ),
        (
            "snapshot trigger",
            tokio::spawn(
                node.clone()
                    .run_compactor(config.snapshot_every, config.snapshot_max_age),
            ),
        ),
        (
            "health reporter",
            tokio::spawn(report_health(node.clone(), health)),
        ),
        ("metrics sampler", tokio::spawn(metrics.run_sampler())),
        ("disk guard", tokio::spawn(node.disk().clone().run())),
        (
            "webhook delivery",
            tokio::spawn(crate::webhook::run(
                node.clone(),
                webhook_client,
                config.webhook_secret.clone(),
                config.api.webhook_targets.clone(),
            )),
        ),
    ];
    if let Some(task) = node.take_proposer_task() {
        background.push(("proposer", task));
    }
    if config.tokens_file.is_some() || tls.is_some() {
        background.push((
            "credentials reloader",
            tokio::spawn(reload_on_sighup(
                hangup,
                config.tokens_file.is_some().then(|| auth.clone()),
                tls.clone(),
                node.peers().clone(),
            )),
        ));
    }
    tracing::info!(node_id = config.id, %grpc_addr, %http_addr, %peer_addr, advertise = %advertise, data_dir = %config.data_dir.display(), "taskraft node serving");
    Ok(Running {
        grpc_addr,
        http_addr,
        peer_addr,
        node,
        auth,
        tls,
        stop: Some(stop_tx),
        grpc,
        peer,
        http,
        background,
        drain_limit: config.request_timeout + Duration::from_secs(5),
        work_sessions,
        data_dir: config.data_dir.clone(),
        conns,
    })
}

/// Waits for a server task to end its graceful drain, until `deadline` at most; past
/// that it is aborted and counts as stopped (its open connections are cut afterwards).
async fn drained<E>(
    what: &str,
    task: &mut JoinHandle<Result<(), E>>,
    deadline: tokio::time::Instant,
) -> Result<Result<(), E>, tokio::task::JoinError> {
    match tokio::time::timeout_at(deadline, &mut *task).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                server = what,
                "calls still open after the drain limit: closing them"
            );
            task.abort();
            Ok(Ok(()))
        }
    }
}

impl Running {
    /// Stops accepting calls, waits for in-flight ones, and stops Raft. A leader then
    /// hands leadership to its most up-to-date follower (see `RaftNode::campaign`), so
    /// a rolling restart waits about one leader lease per leader instead of a lease
    /// plus an election timeout.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.work_sessions.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for (_, t) in &self.background {
            t.abort();
        }
        // HTTP/2's graceful close waits for each client to acknowledge the GOAWAY: a
        // client that never does (hung, or its process stopped) must not keep the node
        // from stopping, so the drains are bounded, together, by one deadline (the
        // connections left are cut below). The peer server began its drain with the
        // others.
        let drain_until = tokio::time::Instant::now() + self.drain_limit;
        let grpc = drained("gRPC", &mut self.grpc, drain_until).await;
        let http = drained("HTTP", &mut self.http, drain_until).await;
        let successor = self.node.successor(Duration::from_secs(1)).await;
        self.node.shutdown_raft().await;
        if let Some((to, addr)) = successor {
            match self.node.hand_off(to, &addr).await {
                Ok(()) => tracing::info!(
                    node_id = self.node.id(),
                    successor = to,
                    "handed leadership off"
                ),
                Err(e) => {
                    tracing::warn!(node_id = self.node.id(), error = %e, "leadership hand-off failed")
                }
            }
        }
        let peer = drained("peer", &mut self.peer, drain_until).await;
        // Connections still open now are ones the drains gave up on (or that have not
        // noticed yet): their tasks hold the node, so they are cut.
        let cut: usize = self.conns.iter().map(|c| c.cut()).sum();
        if cut > 0 {
            tracing::info!(
                node_id = self.node.id(),
                connections = cut,
                "cut connections left open after the drain"
            );
        }
        let (id, dir) = (self.node.id(), std::mem::take(&mut self.data_dir));
        // The node's last handles on its stores go with it, some on other tasks and
        // blocking threads a moment later: return once they have, so that a node started
        // on this dir right after (a restart in the same process) can open them.
        drop(self);
        let deadline = tokio::time::Instant::now() + STORES_RELEASED_LIMIT;
        for file in [crate::storage::LOG_FILE, crate::storage::STATE_FILE] {
            let path = dir.join(file);
            if !crate::storage::wait_released(&path, deadline).await {
                tracing::warn!(node_id = id, path = %path.display(), limit = ?STORES_RELEASED_LIMIT, "store still open after the node stopped");
            }
        }
        grpc.context("gRPC server task")?.context("gRPC server")?;
        peer.context("peer server task")?.context("peer server")?;
        http.context("HTTP server task")?.context("HTTP server")?;
        tracing::info!(node_id = id, "node stopped");
        Ok(())
    }

    /// Aborts the background task `name` as if it had died, for tests of the supervision
    /// in [`Running::failed`]. Returns false when no task has that name.
    #[doc(hidden)]
    pub fn abort_task(&self, name: &str) -> bool {
        let found = self.background.iter().find(|(n, _)| *n == name);
        if let Some((_, task)) = found {
            task.abort();
        }
        found.is_some()
    }

    /// Resolves if a server or background task ends on its own (a fault): the process
    /// should exit rather than linger as a half-working node.
    pub async fn failed(&mut self) -> anyhow::Error {
        let node = self.node.clone();
        let names: Vec<&'static str> = self.background.iter().map(|(n, _)| *n).collect();
        let background = futures::future::select_all(self.background.iter_mut().map(|(_, t)| t));
        tokio::select! {
            r = &mut self.grpc => anyhow::anyhow!("gRPC server stopped: {r:?}"),
            r = &mut self.peer => anyhow::anyhow!("peer server stopped: {r:?}"),
            r = &mut self.http => anyhow::anyhow!("HTTP server stopped: {r:?}"),
            e = node.fatal() => anyhow::anyhow!("raft stopped: {e}"),
            (r, i, _) = background => {
                let how = match r {
                    Ok(()) => "ended".to_string(),
                    Err(e) if e.is_panic() => "panicked".to_string(),
                    Err(e) => format!("stopped: {e}"),
                };
                anyhow::anyhow!("the {} task {how}; stopping the node", names[i])
            }
        }
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut running = start(config).await?;
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested: draining in-flight calls");
            let r = running.shutdown().await;
            crate::telemetry::flush();
            r
        }
        e = running.failed() => Err(e),
    }
}
