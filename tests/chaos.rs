//! Chaos test: a three-node cluster of real `taskraft serve` processes under steady
//! producers and workers, while a seeded nemesis kills (-9) and restarts nodes, freezes
//! them (SIGSTOP / SIGCONT), cuts one off from the others (through TCP proxies in front
//! of the peer ports, see `chaos/proxy.rs`) and restarts one with its wall clock two
//! hours off (libfaketime). Every call and its outcome is recorded; afterwards the
//! faults are healed, the workers drain the queue, and the history is checked against
//! the final state (`chaos/check.rs`) and the nodes against each other.
//!
//! ```text
//!   TASKRAFT_CHAOS_SEED=<u64>      replay a nemesis schedule (printed on every run)
//!   TASKRAFT_CHAOS_LONG=<seconds>  long mode: faults for that long (default: 3 rounds
//!                                  of every kind, under a minute with the drain)
//!   TASKRAFT_CHAOS_FAULTS=<kinds>  only these faults (default all:
//!                                  kill9,sigstop,partition,clock-skew)
//! ```
//!
//! The short mode runs in the normal test command:
//! `cargo test -p taskraft-tests --test chaos -- --nocapture`.

#[path = "chaos/check.rs"]
mod check;
#[path = "chaos/history.rs"]
mod history;
#[path = "chaos/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use history::{Fault, FaultKind, History, Leased, Op, Outcome};
use proxy::Proxies;
use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tonic::{Code, Status};

const QUEUE: &str = "chaos";
const NODES: u64 = 3;
/// Lease length of the normal workers: long enough that an ack answered well inside it
/// is never refused (the early-expiry check), short enough for the drain to pick up
/// jobs whose Lease answer was lost.
const WORK_VT_MS: u64 = 5_000;
/// Lease length of the sleeper, which sleeps 3-4 s past it before some acks.
const SLEEPER_VT_MS: u64 = 1_000;
/// The client's own bound on one call (the server's is the 3 s request timeout).
const CALL_GUARD: Duration = Duration::from_secs(5);

/// splitmix64: small, seedable, good enough to drive a nemesis.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in lo..hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// An independent stream for a named client.
    fn fork(&self, name: &str) -> Rng {
        let mut h = self.0;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        let mut r = Rng(h);
        r.next();
        r
    }
}

/// The cluster: nodes, the proxies in front of their peer ports, and which node runs
/// with a skewed clock.
struct Cluster {
    nodes: Vec<ProcessNode>,
    proxies: Proxies,
    faketime: PathBuf,
    skewed: Option<u64>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(faketime: PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let loopback = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        let proxies = Proxies::default();
        let mut addrs = Vec::new();
        for id in 1..=NODES {
            let (client, http, peer) = (loopback(), loopback(), loopback());
            let proxy = proxies.add(id, peer).await;
            addrs.push((client, http, peer, proxy));
        }
        // Everyone reaches a node's peer service through its proxy.
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, (client, _, _, proxy))| format!("{}={client}/{proxy}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, (client, http, peer, proxy)) in addrs.iter().enumerate() {
            let id = (i + 1).to_string();
            let proxy = proxy.to_string();
            let args = [
                "--id",
                id.as_str(),
                "--peers",
                peers.as_str(),
                "--peer-advertise",
                proxy.as_str(),
                "--request-timeout",
                "3s",
                "--snapshot-every",
                "2000",
            ];
            let node = ProcessNode::spawn_at(
                &dir.path().join(format!("node-{}", i + 1)),
                *client,
                *http,
                *peer,
                &args,
            )
            .await;
            proxies.set_pid(i as u64 + 1, node.pid());
            nodes.push(node);
        }
        let cluster = Self {
            nodes,
            proxies,
            faketime,
            skewed: None,
            _dir: dir,
        };
        cluster.wait_healthy().await;
        cluster
    }

    fn node(&mut self, id: u64) -> &mut ProcessNode {
        &mut self.nodes[id as usize - 1]
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Every node is ready (knows a leader) and they agree on who leads.
    async fn wait_healthy(&self) {
        for n in &self.nodes {
            n.wait_ready().await;
        }
        let addrs = self.addrs();
        eventually("the nodes to agree on a leader", SOON, || {
            let addrs = addrs.clone();
            async move {
                let mut leaders = Vec::new();
                for a in addrs {
                    leaders.push(status_of(a).await?.leader_id);
                }
                (leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0])).then_some(())
            }
        })
        .await;
    }

    /// The current leader, as the first node that knows one says.
    async fn leader(&self) -> Option<u64> {
        for a in self.addrs() {
            if let Some(s) = status_of(a).await {
                if s.leader_id != 0 {
                    return Some(s.leader_id);
                }
            }
        }
        None
    }

    /// kill -9 and start again, with `envs` from now on.
    async fn restart(&mut self, id: u64, envs: Option<&[(&str, &str)]>) {
        if let Some(envs) = envs {
            self.node(id).set_envs(envs);
        }
        self.proxies.set_pid(id, None);
        self.node(id).restart().await;
        let pid = self.node(id).pid();
        self.proxies.set_pid(id, pid);
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {} log tail ---\n{}\n", i + 1, n.log_tail()))
            .collect()
    }
}

/// GetClusterStatus of one node: answered from its own state, never forwarded.
async fn status_of(addr: SocketAddr) -> Option<pb::ClusterStatus> {
    let fut = async {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .ok()?;
        pb::admin_client::AdminClient::new(ch)
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}

/// A request with a 3 s deadline.
fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(3));
    r
}

/// One call with the client-side guard (a frozen node answers nothing at all).
async fn guarded<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_GUARD, f).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(
            "no answer in time (client guard)",
        )),
    }
}

/// Errors after which a call may have been applied or not, and is worth retrying.
fn retryable(c: Code) -> bool {
    !matches!(
        c,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

fn outcome<T, U>(r: &Result<T, Status>, f: impl FnOnce(&T) -> U) -> Outcome<U> {
    match r {
        Ok(t) => Outcome::Ok(f(t)),
        Err(s) => Outcome::Err(s.code(), s.message().to_string()),
    }
}

/// What the client tasks share.
#[derive(Clone)]
struct Load {
    clients: Vec<Clients>,
    addrs: Vec<SocketAddr>,
    history: History,
    /// Producers stop at the end of the nemesis window.
    producing: Arc<AtomicBool>,
    /// The sleeper sleeps past its leases only while this holds.
    sleeping: Arc<AtomicBool>,
    /// Workers stop once the queue is drained.
    working: Arc<AtomicBool>,
}

fn max_attempts(rng: &mut Rng) -> u32 {
    // Some jobs with few attempts, so that some run out (DEAD) under the sleeper.
    if rng.chance(0.15) {
        2
    } else {
        6
    }
}

/// Raw gRPC producer: its own request id per logical enqueue, kept across retries that
/// go to the next node.
async fn rid_producer(p: usize, load: Load, mut rng: Rng) {
    let name = format!("rid-{p}");
    let mut node = p % load.clients.len();
    let mut n = 0u64;
    while load.producing.load(Ordering::SeqCst) {
        n += 1;
        let payload = format!("rid|{p}|{n}");
        let request_id = format!("{name}-{n}-{:x}", rng.next());
        let max_attempts = max_attempts(&mut rng);
        for attempt in 0..6u64 {
            let start = load.history.now_ms();
            let mut c = load.clients[node].broker.clone();
            let r = guarded(c.enqueue(req(pb::EnqueueRequest {
                queue: QUEUE.into(),
                payload: payload.clone().into_bytes().into(),
                job_type: "chaos".into(),
                max_attempts,
                request_id: request_id.clone(),
                ..Default::default()
            })))
            .await;
            load.history.record(
                &name,
                node as u64 + 1,
                start,
                Op::Enqueue {
                    payload: payload.clone(),
                    key: None,
                    request_id: Some(request_id.clone()),
                    max_attempts,
                    out: outcome(&r, |x| (x.job_id.clone(), x.duplicate)),
                },
            );
            match r {
                Ok(_) => break,
                Err(s) if retryable(s.code()) => {
                    node = (node + 1) % load.clients.len();
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(10, 40))).await;
    }
}

/// SDK producer; with `keys`, every enqueue carries an idempotency key, a third of
/// them new and the rest repeating a recent one.
async fn sdk_producer(keys: bool, load: Load, mut rng: Rng) {
    let name = if keys { "sdk-key" } else { "sdk" };
    let client = taskraft::Client::builder()
        .addrs(load.addrs.iter().map(|a| format!("http://{a}")))
        .call_timeout(Duration::from_secs(3))
        .retry_for(Duration::from_secs(15))
        .connect()
        .await
        .expect("SDK client");
    let mut n = 0u64;
    let mut recent: Vec<String> = Vec::new();
    while load.producing.load(Ordering::SeqCst) {
        n += 1;
        let max_attempts = max_attempts(&mut rng);
        let mut opts = taskraft::EnqueueOptions::new()
            .job_type("chaos")
            .max_attempts(max_attempts);
        let (payload, key) = if keys {
            let key = if recent.is_empty() || rng.chance(0.34) {
                let k = format!("k{n}");
                recent.push(k.clone());
                if recent.len() > 8 {
                    recent.remove(0);
                }
                k
            } else {
                recent[rng.range(0, recent.len() as u64) as usize].clone()
            };
            opts = opts.idempotency_key(key.clone());
            (format!("key|{key}|{n}"), Some(key))
        } else {
            (format!("sdk|0|{n}"), None)
        };
        let start = load.history.now_ms();
        let r = client
            .enqueue_with(QUEUE, payload.clone().into_bytes(), &opts)
            .await;
        let out = match &r {
            Ok(e) => Outcome::Ok((e.job_id.clone(), e.duplicate)),
            Err(e) => Outcome::Err(e.code().unwrap_or(Code::Unknown), e.to_string()),
        };
        load.history.record(
            name,
            0,
            start,
            Op::Enqueue {
                payload,
                key,
                request_id: None,
                max_attempts,
                out,
            },
        );
        tokio::time::sleep(Duration::from_millis(rng.range(10, 40))).await;
    }
}

/// Acks (or, for one job in ten, nacks with a short retry delay) one leased job,
/// retrying on errors that leave the outcome open; the retry of an ack or nack that
/// was applied gets the same answer.
async fn settle(
    load: &Load,
    name: &str,
    node: &mut usize,
    j: &Leased,
    nack: bool,
    stale: bool,
) -> Option<Code> {
    for attempt in 0..5u64 {
        let start = load.history.now_ms();
        let mut c = load.clients[*node].broker.clone();
        let (r, op) = if nack {
            let r = guarded(c.nack(req(pb::NackRequest {
                job_id: j.job_id.clone(),
                lease_id: j.lease_id.clone(),
                error: "chaos nack".into(),
                retry_after_ms: 200,
                dead_letter: false,
            })))
            .await
            .map(|_| ());
            let op = Op::Nack {
                job_id: j.job_id.clone(),
                lease_id: j.lease_id.clone(),
                attempt: j.attempt,
                out: outcome(&r, |_| ()),
            };
            (r, op)
        } else {
            let r = guarded(c.ack(req(pb::AckRequest {
                job_id: j.job_id.clone(),
                lease_id: j.lease_id.clone(),
                result: "ok".into(),
            })))
            .await
            .map(|_| ());
            let op = Op::Ack {
                job_id: j.job_id.clone(),
                lease_id: j.lease_id.clone(),
                attempt: j.attempt,
                stale,
                out: outcome(&r, |_| ()),
            };
            (r, op)
        };
        load.history.record(name, *node as u64 + 1, start, op);
        match r {
            Ok(()) => return None,
            Err(s) if retryable(s.code()) => {
                *node = (*node + 1) % load.clients.len();
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
            Err(s) => return Some(s.code()),
        }
    }
    Some(Code::Unavailable)
}

/// A worker: Lease (long-poll), then ack or nack each job at once. The sleeper takes
/// one job at a time on a 1 s lease and, while `sleeping`, half the time sleeps 3-4 s
/// before acking: a stale ack, which must be refused.
async fn worker(name: String, sleeper: bool, start_node: usize, load: Load, mut rng: Rng) {
    let mut node = start_node % load.clients.len();
    let vt = if sleeper { SLEEPER_VT_MS } else { WORK_VT_MS };
    while load.working.load(Ordering::SeqCst) {
        let start = load.history.now_ms();
        let mut c = load.clients[node].broker.clone();
        let r = guarded(c.lease(req(pb::LeaseRequest {
            queues: vec![QUEUE.into()],
            worker_id: name.clone(),
            max_jobs: if sleeper { 1 } else { 4 },
            visibility_timeout_ms: vt,
            wait_ms: 500,
        })))
        .await;
        let got: Vec<Leased> = match &r {
            Ok(resp) => resp
                .jobs
                .iter()
                .map(|j| Leased {
                    job_id: j.job_id.clone(),
                    lease_id: j.lease_id.clone(),
                    attempt: j.attempt,
                    deadline_ms: j.lease_deadline_ms,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        load.history.record(
            &name,
            node as u64 + 1,
            start,
            Op::Lease {
                visibility_ms: vt,
                out: outcome(&r, |_| got.clone()),
            },
        );
        if r.is_err() {
            node = (node + 1) % load.clients.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for j in &got {
            let stale = sleeper && load.sleeping.load(Ordering::SeqCst) && rng.chance(0.5);
            if stale {
                tokio::time::sleep(Duration::from_millis(rng.range(3_000, 4_000))).await;
            }
            let nack = !stale && rng.chance(0.1);
            settle(&load, &name, &mut node, j, nack, stale).await;
        }
    }
}

/// Injects one fault of `kind` on node `target` and heals it; returns what was done.
async fn inject(cluster: &mut Cluster, kind: FaultKind, target: u64, rng: &mut Rng) -> String {
    match kind {
        FaultKind::Kill => {
            cluster.node(target).kill9();
            cluster.proxies.set_pid(target, None);
            let down = rng.range(500, 2_000);
            tokio::time::sleep(Duration::from_millis(down)).await;
            cluster.restart(target, None).await;
            format!("down {down} ms")
        }
        FaultKind::Stop => {
            cluster.node(target).pause();
            let frozen = rng.range(1_000, 4_000);
            tokio::time::sleep(Duration::from_millis(frozen)).await;
            cluster.node(target).resume();
            format!("frozen {frozen} ms")
        }
        FaultKind::Partition => {
            cluster.proxies.isolate(target);
            let cut = rng.range(1_500, 3_500);
            tokio::time::sleep(Duration::from_millis(cut)).await;
            cluster.proxies.heal_all();
            format!("cut off {cut} ms")
        }
        FaultKind::Skew => {
            let mut detail = String::new();
            if let Some(prev) = cluster.skewed.take().filter(|p| *p != target) {
                cluster.restart(prev, Some(&[])).await;
                detail = format!("(node {prev} restarted on the real clock first) ");
            }
            let offset = if rng.chance(0.5) { "+2h" } else { "-2h" };
            let lib = cluster.faketime.display().to_string();
            let envs = [
                ("LD_PRELOAD", lib.as_str()),
                ("FAKETIME", offset),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ];
            cluster.restart(target, Some(&envs)).await;
            cluster.skewed = Some(target);
            format!("{detail}restarted with FAKETIME={offset}")
        }
    }
}

/// Faults one at a time (each healed, and the cluster healthy again, before the next),
/// in rounds of one of each kind in a seeded order, half of them on the leader. Short
/// mode: three rounds; long mode: rounds until `long` has passed.
async fn nemesis(
    cluster: &mut Cluster,
    history: &History,
    rng: &mut Rng,
    long: Option<Duration>,
    kinds_on: &[FaultKind],
) -> BTreeMap<FaultKind, u64> {
    let started = std::time::Instant::now();
    let mut counts = BTreeMap::new();
    let mut round = 0;
    loop {
        match long {
            None if round >= 3 => break,
            Some(d) if started.elapsed() >= d => break,
            _ => {}
        }
        round += 1;
        let mut kinds = kinds_on.to_vec();
        for i in (1..kinds.len()).rev() {
            let j = rng.range(0, i as u64 + 1) as usize;
            kinds.swap(i, j);
        }
        for kind in kinds {
            let on_leader = rng.chance(0.5);
            let random = rng.range(1, NODES + 1);
            let target = match on_leader {
                true => cluster.leader().await.unwrap_or(random),
                false => random,
            };
            let start_ms = history.now_ms();
            let mut detail = inject(cluster, kind, target, rng).await;
            cluster.wait_healthy().await;
            if let Some(l) = cluster.leader().await {
                detail += &format!("; leader now {l}");
            }
            let end_ms = history.now_ms();
            eprintln!(
                "chaos: {start_ms:>6}..{end_ms:>6} ms  {} node {target}{} {detail}",
                kind.name(),
                if on_leader { " (leader)" } else { "" }
            );
            history.fault(Fault {
                kind,
                node: target,
                detail,
                start_ms,
                end_ms,
            });
            *counts.entry(kind).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(rng.range(200, 700))).await;
        }
    }
    counts
}

/// Every job of the queue as node `c` sees it (ListJobs reads the node's own state
/// after a read barrier).
async fn list_all(c: &mut Clients) -> Result<BTreeMap<String, pb::Job>, Status> {
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = guarded(c.admin.list_jobs(req(pb::ListJobsRequest {
            queue: QUEUE.into(),
            state: 0,
            limit: 1000,
            page_token: token.clone(),
        })))
        .await?;
        for j in page.jobs {
            out.insert(j.job_id.clone(), j);
        }
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Queue stats as node `c` sees them.
async fn node_stats(c: &mut Clients) -> Option<pb::QueueStats> {
    guarded(c.admin.get_queue_stats(req(pb::GetQueueStatsRequest {
        queue: QUEUE.into(),
    })))
    .await
    .ok()
}

fn seed() -> u64 {
    match std::env::var("TASKRAFT_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TASKRAFT_CHAOS_SEED={s:?} is not a u64")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Rng(t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32).next()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_history_holds_under_kills_pauses_partitions_and_clock_skew() {
    let seed = seed();
    let long = std::env::var("TASKRAFT_CHAOS_LONG").ok().map(|s| {
        Duration::from_secs(
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("TASKRAFT_CHAOS_LONG={s:?} is not seconds")),
        )
    });
    let kinds_on: Vec<FaultKind> = match std::env::var("TASKRAFT_CHAOS_FAULTS") {
        Ok(s) => s
            .split(',')
            .map(|k| {
                FaultKind::ALL
                    .into_iter()
                    .find(|f| f.name() == k.trim())
                    .unwrap_or_else(|| panic!("TASKRAFT_CHAOS_FAULTS: unknown fault {k:?}"))
            })
            .collect(),
        Err(_) => FaultKind::ALL.to_vec(),
    };
    eprintln!(
        "chaos: seed {seed} (replay with TASKRAFT_CHAOS_SEED={seed}), mode {}, faults {}",
        match long {
            Some(d) => format!("long ({} s of faults)", d.as_secs()),
            None => "short".into(),
        },
        kinds_on
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    let faketime = setup::faketime();
    let mut cluster = Cluster::start(faketime).await;
    let addrs = cluster.addrs();
    let clients: Vec<Clients> = futures::future::join_all(addrs.iter().map(|a| connect(*a))).await;
    let history = History::new();
    let load = Load {
        clients: clients.clone(),
        addrs: addrs.clone(),
        history: history.clone(),
        producing: Arc::new(AtomicBool::new(true)),
        sleeping: Arc::new(AtomicBool::new(true)),
        working: Arc::new(AtomicBool::new(true)),
    };
    let rng = Rng(seed);
    let producers = vec![
        tokio::spawn(rid_producer(0, load.clone(), rng.fork("rid-0"))),
        tokio::spawn(rid_producer(1, load.clone(), rng.fork("rid-1"))),
        tokio::spawn(sdk_producer(false, load.clone(), rng.fork("sdk"))),
        tokio::spawn(sdk_producer(true, load.clone(), rng.fork("sdk-key"))),
    ];
    let workers = vec![
        tokio::spawn(worker(
            "worker-0".into(),
            false,
            0,
            load.clone(),
            rng.fork("w0"),
        )),
        tokio::spawn(worker(
            "worker-1".into(),
            false,
            1,
            load.clone(),
            rng.fork("w1"),
        )),
        tokio::spawn(worker(
            "sleeper".into(),
            true,
            2,
            load.clone(),
            rng.fork("sl"),
        )),
    ];

    // Faults.
    let mut nemesis_rng = rng.fork("nemesis");
    let counts = nemesis(&mut cluster, &history, &mut nemesis_rng, long, &kinds_on).await;
    let nemesis_end = history.now_ms();

    // Heal (every fault already ended healed; make sure), stop producing, drain.
    cluster.proxies.heal_all();
    cluster.wait_healthy().await;
    load.producing.store(false, Ordering::SeqCst);
    load.sleeping.store(false, Ordering::SeqCst);
    for p in producers {
        p.await.expect("producer task");
    }
    let producers_end = history.now_ms();
    // Short mode: nemesis and drain together within a minute where possible (the
    // drain usually takes 3-10 s), but never less than 20 s for the drain.
    let drain_for = match long {
        // Faults slow the workers more than the producers, so a long run ends with a
        // backlog of hundreds of jobs.
        Some(_) => Duration::from_secs(180),
        None => Duration::from_millis(60_000u64.saturating_sub(producers_end).max(20_000)),
    };
    let drain_deadline = tokio::time::Instant::now() + drain_for;
    let mut c = clients[0].clone();
    let backlog = node_stats(&mut c)
        .await
        .map(|s| s.ready + s.scheduled + s.leased);
    let mut i = 0;
    let drained = loop {
        i += 1;
        let mut c = clients[i % clients.len()].clone();
        if let Some(s) = node_stats(&mut c).await {
            if s.ready + s.scheduled + s.leased == 0 {
                break true;
            }
        }
        if tokio::time::Instant::now() > drain_deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let drained_at = history.now_ms();
    load.working.store(false, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker task");
    }
    let drain_end = history.now_ms();

    // Convergence: once writes stopped, every node applies up to the same index and
    // holds the same jobs.
    let mut violations = Vec::new();
    let mut converged = None;
    for _ in 0..100 {
        let mut st = Vec::new();
        for a in &addrs {
            st.push(status_of(*a).await);
        }
        let applied: Vec<Option<u64>> = st
            .iter()
            .map(|s| s.as_ref().map(|s| s.applied_index))
            .collect();
        if applied[0].is_some() && applied.iter().all(|a| *a == applied[0]) {
            converged = applied[0];
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if converged.is_none() {
        violations.push(check::Violation {
            what: "the nodes never reached the same applied index after writes stopped".into(),
            jobs: Vec::new(),
            payload: None,
            at_ms: history.now_ms(),
        });
    }
    let mut views = Vec::new();
    let mut per_node_stats = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        per_node_stats.push(node_stats(&mut c).await);
        match list_all(&mut c).await {
            Ok(v) => views.push(v),
            Err(e) => panic!("seed {seed}: ListJobs on node {} failed: {e}", i + 1),
        }
    }
    let summary_of = |j: &pb::Job| (j.state, j.attempt, j.expirations, j.payload.clone());
    for (i, view) in views.iter().enumerate().skip(1) {
        if per_node_stats[i] != per_node_stats[0] {
            violations.push(check::Violation {
                what: format!(
                    "node {} counts {:?} differ from node 1's {:?}",
                    i + 1,
                    per_node_stats[i],
                    per_node_stats[0]
                ),
                jobs: Vec::new(),
                payload: None,
                at_ms: history.now_ms(),
            });
        }
        let ids: std::collections::BTreeSet<&String> = view.keys().chain(views[0].keys()).collect();
        for id in ids {
            let (a, b) = (
                views[0].get(id).map(summary_of),
                view.get(id).map(summary_of),
            );
            if a != b {
                violations.push(check::Violation {
                    what: format!(
                        "node 1 and node {} disagree on the job: {:?} vs {:?}",
                        i + 1,
                        views[0]
                            .get(id)
                            .map(|j| (check::state_name(j.state), j.attempt)),
                        view.get(id)
                            .map(|j| (check::state_name(j.state), j.attempt)),
                    ),
                    jobs: vec![id.clone()],
                    payload: None,
                    at_ms: history.now_ms(),
                });
            }
        }
    }
    if !drained {
        violations.push(check::Violation {
            what: format!(
                "the queue did not drain within {drain_for:?}: {:?}",
                per_node_stats[0]
            ),
            jobs: Vec::new(),
            payload: None,
            at_ms: history.now_ms(),
        });
    }

    // The history against the final state.
    let events = history.events();
    let faults = history.faults();
    let (found, stats) = check::check(&events, &faults, &views[0]);
    violations.extend(found);

    for v in violations.iter().take(20) {
        eprintln!(
            "VIOLATION (seed {seed}){}: {}\n{}",
            v.jobs
                .first()
                .map(|j| format!(" job {j}"))
                .unwrap_or_default(),
            v.what,
            check::excerpt(v, &events, &faults)
        );
    }
    let mut ops: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for e in &events {
        let ok = match &e.op {
            Op::Enqueue { out, .. } => out.is_ok(),
            Op::Lease { out, .. } => out.is_ok(),
            Op::Ack { out, .. } | Op::Nack { out, .. } => out.is_ok(),
        };
        let c = ops.entry(e.kind()).or_default();
        c.0 += 1;
        c.1 += u64::from(ok);
    }
    let (unknown, refused) = cluster.proxies.counters();
    eprintln!(
        "chaos summary: seed {seed}; {} operations ({}); faults {} ({}); jobs {} \
         ({} succeeded, {} dead); stale acks refused {}, accepted during faults {}; \
         nemesis {:.1} s, drain {:.1} s (producers stopped after {:.1} s, {} jobs left then, queue empty after {:.1} s); proxy: {refused} connections cut, {unknown} \
         callers unidentified; violations {}",
        events.len(),
        ops.iter()
            .map(|(k, (n, ok))| format!("{k} {n}/{ok} ok"))
            .collect::<Vec<_>>()
            .join(", "),
        counts.values().sum::<u64>(),
        counts
            .iter()
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect::<Vec<_>>()
            .join(", "),
        views[0].len(),
        stats.succeeded,
        stats.dead,
        stats.stale_acks_refused,
        stats.stale_acks_accepted_during_faults,
        nemesis_end as f64 / 1000.0,
        (drain_end - nemesis_end) as f64 / 1000.0,
        (producers_end - nemesis_end) as f64 / 1000.0,
        backlog.map_or("?".to_string(), |b| b.to_string()),
        (drained_at - nemesis_end) as f64 / 1000.0,
        violations.len(),
    );
    if !violations.is_empty() {
        eprintln!("{}", cluster.log_tails());
        // Keep the whole history and the node logs for a closer look.
        let keep = std::env::temp_dir().join(format!("taskraft-chaos-{seed}"));
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::write(keep.join("history.txt"), check::dump(&events, &faults));
        for (i, n) in cluster.nodes.iter().enumerate() {
            let _ = std::fs::copy(
                n.data_dir.with_extension("log"),
                keep.join(format!("node-{}.log", i + 1)),
            );
        }
        eprintln!("chaos: history and node logs kept in {}", keep.display());
    }
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations (see above)",
        violations.len()
    );
    assert!(
        stats.stale_acks_refused > 0,
        "seed {seed}: no stale ack was refused, so the sleeper checked nothing"
    );
    for kind in kinds_on {
        assert!(
            counts.get(&kind).copied().unwrap_or(0) >= 3,
            "seed {seed}: fewer than 3 {} faults",
            kind.name()
        );
    }
}
