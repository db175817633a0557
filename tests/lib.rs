//! Fixtures for the end-to-end tests: nodes started in-process (on `127.0.0.1:0`) or
//! as real `taskraft serve` processes that can be SIGKILLed, and gRPC clients.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskraft_broker::clock::{system_wall_ms, Clock, ClockHandle};
use taskraft_broker::config::Config;
use taskraft_broker::server::{self, Running};
use taskraft_proto::v1 as pb;
use taskraft_proto::v1::admin_client::AdminClient;
use taskraft_proto::v1::broker_client::BrokerClient;
use tonic::transport::Channel;

pub mod node;
pub mod setup;

/// Generous bound for anything that should happen "soon" (startup, elections).
pub const SOON: Duration = Duration::from_secs(30);

/// How often the poll-until helpers look again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok`, for at most `within`; when it never does, the
/// last `Err` it returned (it is always asked at least once). The one poll-until loop of
/// the tests: generous bounds, no fixed sleeps racing a timeout. [`eventually`] and
/// [`eventually_ok`] panic on timeout; call this one where the caller reports the
/// failure itself (with a node's log, say).
pub async fn poll_until<T, E, F, Fut>(within: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// Polls `check` until it returns `Some`, for at most `within`; panics naming `what`
/// when it never does.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let polled = poll_until(within, || {
        let look = check();
        async move { look.await.ok_or(()) }
    })
    .await;
    polled.unwrap_or_else(|()| panic!("timed out after {within:?} waiting for {what}"))
}

/// Polls `check` until it returns `Ok`, for at most `within`; panics naming `what` and
/// the last error (what was seen instead) when it never does.
pub async fn eventually_ok<T, E, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    poll_until(within, check)
        .await
        .unwrap_or_else(|e| panic!("timed out after {within:?} waiting for {what}: {e}"))
}

/// A clock for in-process nodes that the test moves forward: [`JumpClock::advance`]
/// makes the node's wall and monotonic clocks jump ahead together, as if that much time
/// had passed at once. Leases, delays, backoffs and retention then run out when the test
/// says, without sleeping and whatever the machine's load. (Stepping only the wall
/// clock, as `SteppableClock` does, moves none of them: replicated time follows the
/// monotonic clock, see `broker/src/raft/time.rs`.)
#[derive(Clone, Default)]
pub struct JumpClock {
    ahead_ms: Arc<AtomicU64>,
}

impl JumpClock {
    /// The machine's clocks, not moved yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves both clocks forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.ahead_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// A handle to put in a node's `Config::clock` (it shares this clock's jumps).
    pub fn handle(&self) -> ClockHandle {
        ClockHandle::new(self.clone())
    }

    /// Unix ms as the node's wall clock says now.
    pub fn wall_ms(&self) -> u64 {
        system_wall_ms() + self.ahead()
    }

    fn ahead(&self) -> u64 {
        self.ahead_ms.load(Ordering::SeqCst)
    }
}

impl Clock for JumpClock {
    fn wall_ms(&self) -> u64 {
        JumpClock::wall_ms(self)
    }

    fn mono(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.ahead())
    }
}

/// A child process that is SIGKILLed and reaped when the guard drops, so that a test that
/// fails (panics) leaves no process behind. [`ProcessNode`] keeps its `taskraft serve` in
/// one.
#[derive(Default)]
pub struct ProcessGuard(Option<Child>);

impl ProcessGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The process, unless it was killed or taken.
    pub fn child(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    /// Its OS process id, unless it was killed or taken.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Takes the process out of the guard: it is no longer killed on drop.
    pub fn take(&mut self) -> Option<Child> {
        self.0.take()
    }

    /// SIGKILL and reap (nothing when there is no process).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` to its end, for at most `limit`: its output (what `cmd` pipes), or None when
/// it ran longer and was SIGKILLed.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.expect("waiting for the process")),
        Err(_) => {
            // Not reaped yet (the waiting thread reaps it), so the id is still its own.
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            let _ = rx.recv();
            None
        }
    }
}

/// Public API clients of one node.
#[derive(Clone)]
pub struct Clients {
    /// Broker service.
    pub broker: BrokerClient<Channel>,
    /// Admin service.
    pub admin: AdminClient<Channel>,
}

/// Connects to a node's gRPC address, retrying until it accepts.
pub async fn connect(addr: SocketAddr) -> Clients {
    let what = format!("a connection to {addr}");
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("uri");
    let ch = eventually_ok(&what, SOON, || endpoint.connect()).await;
    Clients {
        broker: BrokerClient::new(ch.clone()).max_decoding_message_size(64 << 20),
        admin: AdminClient::new(ch).max_decoding_message_size(64 << 20),
    }
}

/// A node running inside the test process.
pub struct InProcNode {
    /// The running server (None after `stop`).
    pub running: Option<Running>,
    /// Its data dir (kept for restarts).
    pub dir: tempfile::TempDir,
    /// Config it was started with.
    pub config: Config,
}

impl InProcNode {
    /// Starts a one-node cluster with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a one-node cluster after `tweak` adjusts the config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::ephemeral(dir.path());
        tweak(&mut config);
        let running = server::start(config.clone()).await.expect("node starts");
        let node = Self {
            running: Some(running),
            dir,
            config,
        };
        node.wait_ready().await;
        node
    }

    /// gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().expect("running").grpc_addr
    }

    /// HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.running.as_ref().expect("running").http_addr
    }

    /// Clients of this node.
    pub async fn clients(&self) -> Clients {
        connect(self.addr()).await
    }

    /// Waits until the node leads (a one-node cluster elects itself).
    pub async fn wait_ready(&self) {
        let node = self.running.as_ref().expect("running").node.clone();
        eventually("the node to lead", SOON, || async {
            node.is_leader().then_some(())
        })
        .await;
    }

    /// How many Lease calls on `queue` this node is serving now (long polls waiting for a
    /// job, and calls looking for one): each holds the queue's wake-up handle
    /// (`RaftNode::watch_queues`) until it returns or its
    /// caller goes away.
    pub fn lease_calls_on(&self, queue: &str) -> usize {
        let node = &self.running.as_ref().expect("running").node;
        let handles = node.watch_queues(&[queue.to_string()]);
        // Less the handle just taken here.
        Arc::strong_count(&handles[0]) - 1
    }

    /// Graceful stop, keeping the data dir.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }

    /// Starts again on the same data dir (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = server::start(self.config.clone())
            .await
            .expect("node restarts");
        self.running = Some(running);
        self.wait_ready().await;
    }
}

/// A free loopback port: bound and released, and never handed out twice by this
/// process. (The kernel may give a just-released port to the next `bind(0)`, so two
/// tests of one binary, which run on parallel threads, could otherwise get the same
/// port before either child process binds it. `cargo test` runs test binaries one at a
/// time, so a per-process record is enough.)
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Path of the `taskraft` binary built alongside the tests, building it if needed.
pub fn taskraft_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TASKRAFT_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/taskraft
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = profile_dir.join("taskraft");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "taskraft-broker", "--bin", "taskraft"])
            .status()
            .expect("running cargo build for the taskraft binary");
        assert!(status.success(), "building the taskraft binary failed");
    }
    assert!(
        bin.exists(),
        "taskraft binary not found at {}",
        bin.display()
    );
    bin
}

/// A `taskraft serve` process.
pub struct ProcessNode {
    child: ProcessGuard,
    /// gRPC address (fixed across restarts).
    pub addr: SocketAddr,
    /// HTTP address (fixed across restarts).
    pub http: SocketAddr,
    /// Peer (Raft) address (fixed across restarts).
    pub peer: SocketAddr,
    /// Data dir.
    pub data_dir: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
}

impl ProcessNode {
    /// Starts `taskraft serve` on fresh loopback ports with `extra` flags.
    pub async fn spawn(data_dir: &Path, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let peer: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::spawn_at(data_dir, addr, http, peer, extra).await
    }

    /// Starts `taskraft serve` on the given client, HTTP and peer addresses.
    pub async fn spawn_at(
        data_dir: &Path,
        addr: SocketAddr,
        http: SocketAddr,
        peer: SocketAddr,
        extra: &[&str],
    ) -> Self {
        Self::spawn_with_env(data_dir, addr, http, peer, extra, &[]).await
    }

    /// Starts `taskraft serve` on the given addresses with extra environment variables.
    pub async fn spawn_with_env(
        data_dir: &Path,
        addr: SocketAddr,
        http: SocketAddr,
        peer: SocketAddr,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            addr.to_string(),
            "--http".into(),
            http.to_string(),
            "--peer-listen".into(),
            peer.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut node = Self {
            child: ProcessGuard::default(),
            addr,
            http,
            peer,
            data_dir: data_dir.to_path_buf(),
            args,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: data_dir.with_extension("log"),
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(taskraft_bin())
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning taskraft serve");
        self.child = ProcessGuard::new(child);
    }

    /// The node's whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The node's log so far (for assertion messages).
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = s.len().saturating_sub(4000);
        s[s.floor_char_boundary_compat(start)..].to_string()
    }

    /// Waits until `/readyz` says the node knows a leader.
    pub async fn wait_ready(&self) {
        let ready = poll_until(SOON, || async {
            match http_get(self.http, "/readyz").await {
                Some((200, _)) => Ok(()),
                _ => Err(()),
            }
        })
        .await;
        if ready.is_err() {
            panic!(
                "node at {} never became ready; log:\n{}",
                self.addr,
                self.log_tail()
            );
        }
    }

    /// Clients of this node.
    pub async fn clients(&self) -> Clients {
        connect(self.addr).await
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        self.child.kill();
    }

    /// The exit status if the process has ended (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.child().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let mut c = self.child.take().expect("running");
        c.wait().expect("wait")
    }

    /// SIGHUP (reloads the tokens file).
    pub fn hangup(&self) {
        self.signal("-HUP");
    }

    /// OS process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGSTOP: the process freezes, its sockets stay open, until [`Self::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a process frozen by [`Self::pause`] runs again.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running");
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill {sig}: {e}"));
        assert!(ok.success(), "kill {sig} failed");
    }

    /// Replaces the extra environment variables; they take effect at the next
    /// [`Self::restart`] (e.g. to run the node under libfaketime).
    pub fn set_envs(&mut self, envs: &[(&str, &str)]) {
        self.envs = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Starts the process again with the same flags and data dir.
    pub async fn restart(&mut self) {
        self.kill9();
        self.launch();
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// A minimal HTTP/1.1 GET over a raw TCP stream: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// One HTTP/1.1 request with an optional bearer token: (status code, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// An enqueue request with the usual defaults.
pub fn job(queue: &str, payload: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: queue.into(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        job_type: "test".into(),
        ..Default::default()
    }
}

/// A lease request for one queue.
pub fn lease(
    queue: &str,
    max_jobs: u32,
    visibility_timeout_ms: u64,
    wait_ms: u64,
) -> pb::LeaseRequest {
    pb::LeaseRequest {
        queues: vec![queue.into()],
        worker_id: "test-worker".into(),
        max_jobs,
        visibility_timeout_ms,
        wait_ms,
    }
}

/// Queue stats through the Admin API.
pub async fn stats(c: &mut Clients, queue: &str) -> pb::QueueStats {
    c.admin
        .get_queue_stats(pb::GetQueueStatsRequest {
            queue: queue.into(),
        })
        .await
        .expect("stats")
        .into_inner()
}

/// Jobs ready in `queue` once a new write has committed through `c` (so everything
/// before it in the log has applied): what abandoned writes left behind after a stall.
pub async fn ready_after_a_write_commits(c: &Clients, queue: &str) -> u64 {
    eventually("a write commits after quorum returned", SOON, || {
        let mut c = c.clone();
        async move { c.broker.enqueue(job("marker", "m")).await.ok() }
    })
    .await;
    stats(&mut c.clone(), queue).await.ready
}

/// The two ends of a `Work` call a test drives by hand: requests go up the sender,
/// answers come down the stream. Dropping the sender half-closes the call (the session
/// then gives back what it holds).
pub type WorkCall = (
    tokio::sync::mpsc::Sender<pb::WorkRequest>,
    tonic::Streaming<pb::WorkResponse>,
);

/// Opens a `Work` call on `c`: sends `open`, then `credits` (none when 0), as a bearer
/// `token` when given. Returns the call's status when the node refuses it.
pub async fn open_work(
    c: &mut Clients,
    open: pb::WorkOpen,
    credits: u32,
    token: Option<&str>,
) -> Result<WorkCall, tonic::Status> {
    use pb::work_request::Kind as Up;
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let mut first = vec![Up::Open(open)];
    if credits > 0 {
        first.push(Up::Credit(credits));
    }
    for kind in first {
        let req = pb::WorkRequest {
            kind: Some(kind),
            seq: 0,
        };
        tx.send(req).await.expect("the call takes requests");
    }
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(token) = token {
        let bearer = format!("Bearer {token}").parse().expect("a header value");
        req.metadata_mut().insert("authorization", bearer);
    }
    let down = c.broker.work(req).await?.into_inner();
    Ok((tx, down))
}

/// The next answer on a `Work` call, within [`SOON`].
pub async fn next_push(down: &mut tonic::Streaming<pb::WorkResponse>) -> pb::work_response::Kind {
    tokio::time::timeout(SOON, down.message())
        .await
        .expect("a push in time")
        .expect("the stream is up")
        .expect("stream open")
        .kind
        .expect("a kind")
}

/// The worker `worker_id` as `ListWorkers` reports it (panics if it is not listed).
pub async fn listed_worker(c: &mut Clients, worker_id: &str) -> pb::Worker {
    let workers = c
        .admin
        .list_workers(pb::ListWorkersRequest {})
        .await
        .expect("list workers")
        .into_inner()
        .workers;
    workers
        .into_iter()
        .find(|w| w.worker_id == worker_id)
        .unwrap_or_else(|| panic!("worker {worker_id} is not in ListWorkers"))
}

/// One job through GetJob.
pub async fn get_job(c: &mut Clients, id: &str) -> pb::Job {
    c.broker
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .expect("get_job")
        .into_inner()
}

/// Several nodes in this process that form one cluster through `--peers`-style config.
pub struct InProcCluster {
    /// Running nodes by position (node id = position + 1); `None` while stopped.
    pub nodes: Vec<Option<Running>>,
    /// Their configs (kept for restarts).
    pub configs: Vec<Config>,
    _dir: tempfile::TempDir,
}

impl InProcCluster {
    /// Starts `n` nodes on fresh loopback ports, all listing each other as peers.
    ///
    /// A port handed out by [`free_port`] is free when chosen but may be taken by
    /// another test's ephemeral bind before the node binds it; then the cluster is
    /// started again on other ports.
    pub async fn start(n: u64, tweak: impl Fn(&mut Config)) -> Self {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(n, &tweak).await {
                Ok(c) => return c,
                Err(e) if attempt < 5 && addr_in_use(&e) => {
                    eprintln!("a cluster port was taken meanwhile ({e:#}); trying other ports");
                }
                Err(e) => panic!("node starts: {e:?}"),
            }
        }
    }

    async fn try_start(n: u64, tweak: &impl Fn(&mut Config)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let peers: std::collections::BTreeMap<u64, String> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| (i as u64 + 1, format!("127.0.0.1:{c}/127.0.0.1:{p}")))
            .collect();
        let configs: Vec<Config> = (0..n)
            .map(|i| {
                let (client, peer) = ports[i as usize];
                let mut c = Config::ephemeral(dir.path().join(format!("node-{}", i + 1)));
                c.id = i + 1;
                c.listen = format!("127.0.0.1:{client}").parse().unwrap();
                c.peer_listen = format!("127.0.0.1:{peer}").parse().unwrap();
                c.peers = peers.clone();
                c.advertise = Some(format!("127.0.0.1:{client}"));
                c.peer_advertise = Some(format!("127.0.0.1:{peer}"));
                c.request_timeout = Duration::from_secs(3);
                tweak(&mut c);
                c
            })
            .collect();
        let mut nodes = Vec::new();
        for c in &configs {
            match server::start(c.clone()).await {
                Ok(r) => nodes.push(Some(r)),
                Err(e) => {
                    for r in nodes.into_iter().flatten() {
                        let _ = r.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self {
            nodes,
            configs,
            _dir: dir,
        })
    }

    /// The running node with this id.
    pub fn node(&self, id: u64) -> &Running {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("node is running")
    }

    /// Clients of node `id`.
    pub async fn clients(&self, id: u64) -> Clients {
        connect(self.node(id).grpc_addr).await
    }

    /// Ids of running nodes.
    pub fn running_ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.nodes[*id as usize - 1].is_some())
            .collect()
    }

    /// Waits until the running nodes in `among` agree on a leader that is one of them.
    pub async fn wait_leader_among(&self, among: &[u64]) -> u64 {
        let what = format!("an agreed leader among {among:?}");
        eventually_ok(&what, SOON, || async {
            let leaders: Vec<Option<u64>> = among
                .iter()
                .map(|id| self.node(*id).node.leader())
                .collect();
            match leaders.first() {
                Some(Some(l))
                    if among.contains(l)
                        && leaders.iter().all(|x| *x == Some(*l))
                        && self.node(*l).node.is_leader() =>
                {
                    Ok(*l)
                }
                _ => Err(format!("they name {leaders:?}")),
            }
        })
        .await
    }

    /// Waits until all running nodes agree on a leader.
    pub async fn wait_leader(&self) -> u64 {
        self.wait_leader_among(&self.running_ids()).await
    }

    /// Stops node `id` gracefully (its data dir stays).
    pub async fn stop(&mut self, id: u64) {
        if let Some(r) = self.nodes[id as usize - 1].take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }

    /// Starts node `id` again on its data dir and ports.
    pub async fn restart(&mut self, id: u64) {
        self.stop(id).await;
        let r = server::start(self.configs[id as usize - 1].clone())
            .await
            .expect("node restarts");
        self.nodes[id as usize - 1] = Some(r);
    }

    /// Cuts every link to and from node `id` (messages are dropped both ways).
    pub fn isolate(&self, id: u64) {
        let addr = self.configs[id as usize - 1].peer_listen.to_string();
        for other in self.running_ids() {
            if other == id {
                self.node(other).node.peers().isolate();
            } else {
                self.node(other).node.peers().cut_link(&addr);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for id in self.running_ids() {
            self.node(id).node.peers().heal();
        }
    }

    /// Applied index of node `id`.
    pub fn applied(&self, id: u64) -> u64 {
        self.node(id).node.applied_index()
    }
}

/// True when `e` comes from binding an address that is in use.
fn addr_in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

/// `n` `taskraft serve` processes forming one cluster through `--peers`.
pub struct ProcessCluster {
    /// Nodes by position (id = position + 1).
    pub nodes: Vec<ProcessNode>,
    _dir: tempfile::TempDir,
}

impl ProcessCluster {
    /// Spawns `n` processes with `extra` flags each.
    pub async fn spawn(n: u64, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let loopback = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        let addrs: Vec<(SocketAddr, SocketAddr)> =
            (0..n).map(|_| (loopback(), loopback())).collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, (a, p))| format!("{}={a}/{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, (addr, peer)) in addrs.iter().enumerate() {
            let id = (i + 1).to_string();
            let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut args = vec!["--id", id.as_str(), "--peers", peers.as_str()];
            args.extend_from_slice(extra);
            nodes.push(
                ProcessNode::spawn_at(
                    &dir.path().join(format!("node-{}", i + 1)),
                    *addr,
                    http,
                    *peer,
                    &args,
                )
                .await,
            );
        }
        Self { nodes, _dir: dir }
    }

    /// Node with id `id`.
    pub fn node(&mut self, id: u64) -> &mut ProcessNode {
        &mut self.nodes[id as usize - 1]
    }

    /// Waits until the nodes in `among` agree on a leader that is one of them (a killed
    /// leader is still named by its followers until they elect another).
    pub async fn wait_leader_among(&self, among: &[u64]) -> u64 {
        let what = format!("an agreed leader among {among:?}");
        eventually_ok(&what, SOON, || async {
            let mut leaders = Vec::new();
            for id in among {
                leaders.push(self.status(*id).await.map(|s| s.leader_id));
            }
            match leaders.first() {
                Some(Some(l)) if among.contains(l) && leaders.iter().all(|x| *x == Some(*l)) => {
                    Ok(*l)
                }
                _ => Err(format!("they name {leaders:?}")),
            }
        })
        .await
    }

    /// Waits until all nodes agree on a leader.
    pub async fn wait_leader(&self) -> u64 {
        let all: Vec<u64> = (1..=self.nodes.len() as u64).collect();
        self.wait_leader_among(&all).await
    }

    /// Asks node `id` for cluster status.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        let mut c = connect(self.nodes[id as usize - 1].addr).await;
        c.admin
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }
}

/// A TCP proxy in front of a node whose connections can be cut at once, as a lost
/// network would: both sides see their connection end without any gRPC goodbye (no
/// half-close, no GOAWAY). New connections are accepted after a cut.
pub struct CutProxy {
    addr: SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accepted: Arc<AtomicU64>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free local port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let (c, a) = (conns.clone(), accepted.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                c.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            conns,
            accepted,
            acceptor,
        }
    }

    /// The address to connect to instead of the node's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every open connection, both ways.
    pub fn cut(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}
