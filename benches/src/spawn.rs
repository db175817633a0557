//! `--spawn`: a fresh `taskraft serve` child on free loopback ports with a temporary
//! data dir, killed (and its data removed) when the run ends.

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

/// A running `taskraft serve` child.
pub struct SpawnedNode {
    child: Child,
    /// Its gRPC address.
    pub addr: SocketAddr,
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

fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    l.local_addr().context("reading the bound port")
}

impl SpawnedNode {
    /// Starts `bin serve` with `extra` flags appended.
    pub fn start(bin: &Path, extra: &[String]) -> Result<Self> {
        Self::start_at(bin, extra, free_addr()?)
    }

    /// Starts `bin serve` listening on `addr`.
    pub fn start_at(bin: &Path, extra: &[String], addr: SocketAddr) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("taskraft-bench-")
            .tempdir()
            .context("creating a temp data dir")?;
        let http = free_addr()?;
        let log = dir.path().join("serve.log");
        let out = std::fs::File::create(&log).context("creating the serve log")?;
        let err = out.try_clone().context("cloning the serve log handle")?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--http")
            .arg(http.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        eprintln!(
            "spawned {} serve on {addr} (pid {}, data {})",
            bin.display(),
            child.id(),
            dir.path().display()
        );
        Ok(Self {
            child,
            addr,
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

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl SpawnedNode {
    /// The node's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// SIGKILL (no shutdown code runs).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--spawn-cluster N`: N `taskraft serve` children forming one cluster via `--peers`.
pub struct SpawnedCluster {
    /// Nodes by position; node id = position + 1.
    pub nodes: Vec<SpawnedNode>,
}

impl SpawnedCluster {
    /// Starts `n` nodes, each with `--id`, the shared `--peers`, and `extra` flags.
    pub async fn start(bin: &Path, n: usize, extra: &[String]) -> Result<Self> {
        let addrs = (0..n).map(|_| free_addr()).collect::<Result<Vec<_>>>()?;
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut args = vec![
                "--id".to_string(),
                (i + 1).to_string(),
                "--peers".into(),
                peers.clone(),
            ];
            args.extend(extra.iter().cloned());
            nodes.push(SpawnedNode::start_at(bin, &args, *addr)?);
        }
        for node in &mut nodes {
            node.wait_ready().await?;
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
