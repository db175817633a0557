//! Network partitions without network namespaces: every node advertises a TCP proxy (a
//! task of the test) in front of its real peer port, so all Raft and forwarding
//! traffic between nodes passes through the proxies.
//!
//! ```text
//!   node 2 ──> proxy of node 1 ──> node 1's peer port
//!   node 3 ──> proxy of node 1 ──┘
//! ```
//!
//! Cutting node N off must stop traffic both ways: connections *to* N (they arrive at
//! N's proxy) and connections *from* N (they arrive at the other nodes' proxies). A
//! proxy learns which node opened a connection from the kernel: the accepted socket's
//! remote port is the local port of the caller's socket, whose inode `/proc/net/tcp`
//! names, and whose owner is the node process holding that inode among its fds.
//! While N is cut off, its proxy refuses new connections, the other proxies refuse
//! N's, and every connection to or from N that is open is dropped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Node ids are 1-based; index 0 is unused.
const MAX_NODES: usize = 8;

#[derive(Default)]
struct State {
    /// Process id of each node (None while it is down).
    pids: [Option<u32>; MAX_NODES],
    /// Nodes cut off from the others.
    cut: BTreeSet<u64>,
    /// Open proxied connections: (caller node if known, callee node, copy task).
    conns: Vec<(Option<u64>, u64, AbortHandle)>,
}

/// The proxies of a cluster.
#[derive(Clone, Default)]
pub struct Proxies {
    state: Arc<Mutex<State>>,
    /// Connections whose caller could not be identified.
    unknown: Arc<AtomicU64>,
    /// Connections refused or dropped because of a cut.
    refused: Arc<AtomicU64>,
}

impl Proxies {
    /// Binds a proxy for node `id` on a fresh loopback port and returns its address;
    /// it forwards to `target` (the node's real peer port).
    pub async fn add(&self, id: u64, target: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, from)) = listener.accept().await else {
                    continue;
                };
                let this = this.clone();
                tokio::spawn(async move { this.serve(id, addr, target, stream, from).await });
            }
        });
        addr
    }

    /// Records node `id`'s process id (call after every start; None when it is down).
    pub fn set_pid(&self, id: u64, pid: Option<u32>) {
        self.lock().pids[id as usize] = pid;
    }

    /// Cuts node `id` off from every other node.
    pub fn isolate(&self, id: u64) {
        let mut s = self.lock();
        s.cut.insert(id);
        let mut kept = Vec::new();
        for (from, to, task) in s.conns.drain(..) {
            if from == Some(id) || to == id {
                task.abort();
                self.refused.fetch_add(1, Ordering::Relaxed);
            } else if !task.is_finished() {
                kept.push((from, to, task));
            }
        }
        s.conns = kept;
    }

    /// Connects every node with every other again.
    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    /// (connections whose caller was not identified, connections refused or dropped).
    pub fn counters(&self) -> (u64, u64) {
        (
            self.unknown.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn serve(
        &self,
        to: u64,
        proxy: SocketAddr,
        target: SocketAddr,
        mut inbound: TcpStream,
        from_addr: SocketAddr,
    ) {
        let pids = self.lock().pids;
        let from =
            tokio::task::spawn_blocking(move || owner_of(from_addr.port(), proxy.port(), &pids))
                .await
                .ok()
                .flatten();
        if from.is_none() {
            self.unknown.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(Ok(mut outbound)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await
        else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        // Check the cut and register under one lock, so `isolate` either sees this
        // connection or this connection sees the cut.
        let mut s = self.lock();
        if s.cut.contains(&to) || from.is_some_and(|f| s.cut.contains(&f)) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let task = tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
        s.conns.retain(|(_, _, t)| !t.is_finished());
        s.conns.push((from, to, task.abort_handle()));
    }
}

/// The node whose process holds the loopback socket of local port `port` connected to
/// `remote_port`.
fn owner_of(port: u16, remote_port: u16, pids: &[Option<u32>; MAX_NODES]) -> Option<u64> {
    // The caller may still be finishing its connect; look a few times.
    for _ in 0..3 {
        if let Some(inode) = socket_inode(port, remote_port) {
            let link = format!("socket:[{inode}]");
            for (id, pid) in pids.iter().enumerate() {
                let Some(pid) = pid else { continue };
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                for fd in fds.flatten() {
                    if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()) {
                        return Some(id as u64);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Inode of the TCP socket with local port `port` and remote port `remote_port`.
fn socket_inode(port: u16, remote_port: u16) -> Option<u64> {
    let local = format!(":{port:04X}");
    let remote = format!(":{remote_port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[1].ends_with(&local) && f[2].ends_with(&remote) {
                if let Ok(inode) = f[9].parse::<u64>() {
                    if inode != 0 {
                        return Some(inode);
                    }
                }
            }
        }
    }
    None
}
