//! `--spawn`: a fresh `taskraft serve` child on free loopback ports with a temporary
//! data dir, killed (and its data removed) when the run ends.
//!
//! A child can be killed with SIGKILL and started again on the same ports, flags and data
//! dir (`restart`), also after its data dir was deleted (`kill9_and_wipe`); its log
//! (stdout and stderr) is appended to `<temp dir>/serve.log` across restarts.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use taskraft_proto::v1 as pb;
use tokio::time::Instant;

use crate::client::Pool;

/// How long the child may take to elect itself and serve reads.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The child's log filter when `RUST_LOG` is not set: warnings, plus the few info lines
/// that mark a snapshot being built or installed (the `backlog` scenario times them).
const DEFAULT_LOG_FILTER: &str =
    "warn,openraft::core::sm::worker=info,taskraft_broker::raft::state_machine=info";

/// A running `taskraft serve` child.
pub struct SpawnedNode {
    child: Child,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its peer (Raft) address (`--peer-listen`).
    pub peer: SocketAddr,
    /// The `taskraft` binary and every argument after it, for restarts.
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    // Dropped after the child is killed (field order), removing the data dir.
    _dir: tempfile::TempDir,
}

/// The `taskraft` binary: `--taskraft-bin`, else next to this executable.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let bin = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating the taskraft-bench executable")?
            .parent()
            .context("the executable has no parent dir")?
            .join("taskraft"),
    };
    if !bin.is_file() {
        bail!(
            "taskraft binary not found at {} (build it with `cargo build --release --bins`, or pass --taskraft-bin)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `n` distinct free loopback addresses. The listeners are held until all are
/// bound, so no two are the same port; they are released before the child binds them,
/// so another process can still take one meanwhile: [`START_ATTEMPTS`] covers that.
fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding a free loopback port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().context("reading the bound port"))
        .collect()
}

/// Starts of a spawned node (or cluster) on fresh ports before giving up, when a child
/// exits because another process took one of its ports between our pick and its bind.
const START_ATTEMPTS: usize = 3;

/// Runs `start` (one attempt on fresh ports, failing with the error and whether a child
/// lost a port) until it succeeds, fails otherwise, or [`START_ATTEMPTS`] are used up.
async fn with_fresh_ports<T, F, Fut>(what: &str, mut start: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, (anyhow::Error, bool)>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Ok(started) => return Ok(started),
            Err((e, true)) if attempt < START_ATTEMPTS => {
                eprintln!("{what} lost a port to another process, starting again: {e:#}");
                attempt += 1;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

impl SpawnedNode {
    /// Starts `bin serve` with `extra` flags appended, on fresh ports, and waits until
    /// it is ready; starts it again on other ports if one was taken meanwhile.
    pub async fn start(bin: &Path, extra: &[String]) -> Result<Self> {
        with_fresh_ports("the spawned node", || async {
            let [addr, peer, http] = free_addrs(3).map_err(|e| (e, false))?[..] else {
                unreachable!("free_addrs(3) returns 3 addresses")
            };
            let mut node = Self::launch_at(bin, extra, addr, peer, http).map_err(|e| (e, false))?;
            match node.wait_ready().await {
                Ok(()) => Ok(node),
                Err(e) => Err((e, node.port_was_taken())),
            }
        })
        .await
    }

    /// True when the child exited because an address it was given was in use.
    fn port_was_taken(&mut self) -> bool {
        self.exited().is_some() && {
            let log = self.log_last(60);
            log.contains("binding") && log.contains("Address already in use")
        }
    }

    /// Starts `bin serve` listening on `addr` for clients, `peer` for peers and `http`
    /// for HTTP.
    fn launch_at(
        bin: &Path,
        extra: &[String],
        addr: SocketAddr,
        peer: SocketAddr,
        http: SocketAddr,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("taskraft-bench-")
            .tempdir()
            .context("creating a temp data dir")?;
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            addr.to_string(),
            "--http".into(),
            http.to_string(),
            "--peer-listen".into(),
            peer.to_string(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let log = dir.path().join("serve.log");
        let child = launch(bin, &args, &log)?;
        eprintln!(
            "spawned {} serve on {addr} (pid {}, data {})",
            bin.display(),
            child.id(),
            dir.path().display()
        );
        Ok(Self {
            child,
            addr,
            peer,
            bin: bin.to_path_buf(),
            args,
            log,
            _dir: dir,
        })
    }

    /// Waits until the node answers a linearizable read (it has elected itself).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling the child")? {
                bail!(
                    "taskraft serve exited with {status}; log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(pool) = Pool::connect(&[self.addr.to_string()], 1, None).await {
                let probe = pb::GetQueueStatsRequest {
                    queue: "bench-ready-probe".into(),
                };
                if pool.admin().get_queue_stats(probe).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "taskraft serve at {} not ready after {READY_TIMEOUT:?}; log:\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last 30 lines of the node's log.
    pub fn log_tail(&self) -> String {
        self.log_last(30)
    }

    /// The last `n` lines of the node's log.
    pub fn log_last(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Starts `bin args..`, appending its output to `log`.
fn launch(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .context("opening the serve log")?;
    let err = out.try_clone().context("cloning the serve log handle")?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", DEFAULT_LOG_FILTER);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

impl SpawnedNode {
    /// The node's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// The node's log file (kept across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Bytes in the log file now: where lines written from now on start.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The exit status when the current child has exited by itself (or was killed).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Process id of the current child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (no shutdown code runs).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then start the same command again (same ports, flags and data dir).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.child = launch(&self.bin, &self.args, &self.log)?;
        eprintln!("restarted {} (pid {})", self.addr, self.child.id());
        Ok(())
    }

    /// SIGKILL, then delete the data dir (start it again with [`Self::restart`]).
    pub fn kill9_and_wipe(&mut self) -> Result<()> {
        self.kill9();
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("deleting {}", data.display()))?;
        }
        eprintln!("killed {} and deleted {}", self.addr, data.display());
        Ok(())
    }

    /// Sets the value of `flag` for the next start (appends it if absent).
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.to_string(),
            _ => self.args.extend([flag.to_string(), value.to_string()]),
        }
    }
}

/// `--spawn-cluster N`: N `taskraft serve` children forming one cluster via `--peers`.
pub struct SpawnedCluster {
    /// Nodes by position; node id = position + 1.
    pub nodes: Vec<SpawnedNode>,
}

impl SpawnedCluster {
    /// Starts `n` nodes, each with `--id`, the shared `--peers`, and `extra` flags, and
    /// waits until each is ready; starts them all again on other ports if a port was
    /// taken meanwhile (every node's `--peers` names every port).
    pub async fn start(bin: &Path, n: usize, extra: &[String]) -> Result<Self> {
        with_fresh_ports("the spawned cluster", || Self::start_once(bin, n, extra)).await
    }

    /// One attempt of [`start`](Self::start): the error, and whether a node lost a port.
    async fn start_once(
        bin: &Path,
        n: usize,
        extra: &[String],
    ) -> std::result::Result<Self, (anyhow::Error, bool)> {
        let ports = free_addrs(3 * n).map_err(|e| (e, false))?;
        let addrs: Vec<_> = ports.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, (a, p, _))| format!("{}={a}/{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, (addr, peer, http)) in addrs.iter().enumerate() {
            let mut args = vec![
                "--id".to_string(),
                (i + 1).to_string(),
                "--peers".into(),
                peers.clone(),
            ];
            args.extend(extra.iter().cloned());
            let node = SpawnedNode::launch_at(bin, &args, *addr, *peer, *http);
            nodes.push(node.map_err(|e| (e, false))?);
        }
        for i in 0..nodes.len() {
            if let Err(e) = nodes[i].wait_ready().await {
                let taken = nodes.iter_mut().any(SpawnedNode::port_was_taken);
                return Err((e, taken));
            }
        }
        Ok(Self { nodes })
    }

    /// gRPC address of the current leader (as node 1 sees it).
    pub async fn leader_addr(&self) -> Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let pool = Pool::connect(&[self.nodes[0].addr.to_string()], 1, None).await?;
            if let Ok(st) = pool
                .admin()
                .get_cluster_status(pb::GetClusterStatusRequest {})
                .await
            {
                let st = st.into_inner();
                if let Some(n) = st.nodes.iter().find(|n| n.id == st.leader_id) {
                    return Ok(n.addr.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("no leader elected in the spawned cluster");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// gRPC addresses of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.to_string()).collect()
    }
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
