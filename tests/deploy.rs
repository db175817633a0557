//! Deployment and operations: the config file, node ids from StatefulSet host names,
//! peers whose DNS names resolve late, backup and restore. Real `taskraft` processes or
//! in-process nodes on loopback ports, over real gRPC.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use taskraft_proto::v1 as pb;
use taskraft_tests::*;

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Runs `taskraft` with `args` and `envs`, expecting it to exit (not serve) within
/// [`SOON`]; returns (exit status, stderr).
fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(taskraft_bin());
    cmd.args(args)
        .envs(envs.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = output_within(&mut cmd, SOON)
        .unwrap_or_else(|| panic!("taskraft {args:?} did not exit within {SOON:?}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--config` (here from `TASKRAFT_CONFIG`) fills what flags and variables leave
/// unset: the file's listen address and max payload lose to the command line and to
/// `TASKRAFT_MAX_PAYLOAD`, its visibility timeout (set nowhere else) is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_is_overridden_by_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    // The file names an address that is taken: the node can only serve if the
    // command line's --listen and --http win.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap();
    let path = dir.path().join("taskraft.toml");
    std::fs::write(
        &path,
        format!(
            "# taskraft serve --config\nlisten = \"{taken}\"\nhttp = \"{taken}\"\n\
             max-payload = 100\nvisibility_timeout = \"7s\"\nmax-attempts = 5\n"
        ),
    )
    .unwrap();
    let path = path.display().to_string();
    let node = ProcessNode::spawn_with_env(
        &dir.path().join("data"),
        loopback(),
        loopback(),
        loopback(),
        &[],
        &[
            ("TASKRAFT_CONFIG", path.as_str()),
            ("TASKRAFT_MAX_PAYLOAD", "200"),
        ],
    )
    .await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    // 150 bytes: over the file's 100, within the variable's 200.
    let id = c
        .broker
        .enqueue(job("cfg", &"x".repeat(150)))
        .await
        .expect("150 bytes fit the environment's max payload")
        .into_inner()
        .job_id;
    let err = c
        .broker
        .enqueue(job("cfg", &"x".repeat(250)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("200"), "{}", err.message());
    // Visibility timeout 0 means the configured default: 7 s from the file.
    let before = taskraft_broker::clock::system_wall_ms();
    let leased = c
        .broker
        .lease(lease("cfg", 1, 0, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job_id, id);
    let visibility = leased[0].lease_deadline_ms.saturating_sub(before);
    assert!(
        (5_000..=9_000).contains(&visibility),
        "lease deadline {visibility} ms away, want about 7 s"
    );
    assert_eq!(get_job(&mut c, &id).await.max_attempts, 5);

    // The container health check: `taskraft probe` exits 0 on /readyz, 1 on a 404.
    let http = node.http.to_string();
    let (status, stderr) =
        tokio::task::block_in_place(|| run_to_exit(&["probe", "--http", &http], &[]));
    assert!(status.success(), "{stderr}");
    let (status, stderr) = tokio::task::block_in_place(|| {
        run_to_exit(&["probe", "--http", &http, "--path", "/nowhere"], &[])
    });
    assert!(
        !status.success() && stderr.contains("answered 404"),
        "{stderr}"
    );
}

/// A key that is no flag stops the node before it serves, naming the key.
#[test]
fn config_file_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taskraft.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nretries = 4\n").unwrap();
    let data = dir.path().join("data").display().to_string();
    let (status, stderr) = run_to_exit(
        &[
            "serve",
            "--config",
            &path.display().to_string(),
            "--data-dir",
            &data,
        ],
        &[],
    );
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("unknown key \"retries\""), "{stderr}");
}

/// `--id-from-hostname` in a pod named `taskraft-2`: node 3 of the cluster.
#[tokio::test]
async fn node_id_comes_from_the_statefulset_pod_ordinal() {
    let dir = tempfile::tempdir().unwrap();
    let addr = loopback();
    let peer = loopback();
    let peers = format!("3={addr}/{peer}");
    let node = ProcessNode::spawn_with_env(
        &dir.path().join("data"),
        addr,
        loopback(),
        peer,
        &["--id-from-hostname", "--peers", &peers],
        &[("HOSTNAME", "taskraft-2")],
    )
    .await;
    // Ready only if it is node 3: the one-node cluster --peers describes.
    node.wait_ready().await;
    let mut c = node.clients().await;
    let status = c
        .admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.node_id, 3);
    assert_eq!(status.leader_id, 3);

    let (status, stderr) = run_to_exit(
        &["serve", "--id-from-hostname", "--data-dir", "unused"],
        &[("HOSTNAME", "taskraft")],
    );
    assert!(!status.success());
    assert!(stderr.contains("does not end in -<ordinal>"), "{stderr}");
}

/// A StatefulSet's pods start before their peers' DNS names exist. Nodes 1 and 2 start
/// while no name resolves: neither can elect. Once their names resolve they form a
/// quorum and serve. Node 3 (whose name was never resolved by anyone before) starts
/// later, joins, catches up and serves.
#[tokio::test]
async fn peers_named_by_dns_that_resolve_late_form_the_cluster() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use taskraft_broker::config::Config;
    use taskraft_broker::raft::network::Resolver;

    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let host = |id: u64| format!("taskraft-{}.taskraft.test", id - 1);
    let name = |id: u64| format!("{}:{}", host(id), ports[id as usize - 1]);
    let peer_name = |id: u64| format!("{}:{}", host(id), peer_ports[id as usize - 1]);
    // The "DNS zone": a name resolves once the test publishes it (its client and peer
    // ports alike).
    let zone: Arc<Mutex<HashMap<String, SocketAddr>>> = Arc::default();
    let publish = |id: u64| {
        let mut zone = zone.lock().unwrap();
        for (n, port) in [
            (name(id), ports[id as usize - 1]),
            (peer_name(id), peer_ports[id as usize - 1]),
        ] {
            zone.insert(n, format!("127.0.0.1:{port}").parse().unwrap());
        }
    };
    let resolver = {
        let zone = zone.clone();
        Resolver::from_fn(move |host_port| {
            zone.lock()
                .unwrap()
                .get(host_port)
                .map(|a| vec![*a])
                .ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such host (yet)")
                })
        })
    };
    let peers: std::collections::BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("{}/{}", name(id), peer_name(id))))
        .collect();
    let start = |id: u64| {
        let mut c = Config::ephemeral(dir.path().join(format!("node-{id}")));
        c.id = id;
        c.listen = format!("127.0.0.1:{}", ports[id as usize - 1])
            .parse()
            .unwrap();
        c.peers = peers.clone();
        c.peer_listen = format!("127.0.0.1:{}", peer_ports[id as usize - 1])
            .parse()
            .unwrap();
        c.advertise = Some(name(id));
        c.resolver = resolver.clone();
        c.request_timeout = Duration::from_secs(3);
        taskraft_broker::server::start(c)
    };
    let mut nodes = vec![start(1).await.unwrap(), start(2).await.unwrap()];
    // No name resolves: each node stands for election again and again (its term goes up
    // with every try, as no message reaches it from the other) and never wins a vote.
    // Checked once each has tried a few times, however long that takes on a loaded
    // machine.
    eventually_ok("nodes 1 and 2 to stand for election", SOON, || async {
        let terms: Vec<u64> = nodes.iter().map(|n| n.node.cluster_view().term).collect();
        if terms.iter().all(|t| *t >= 4) {
            Ok(())
        } else {
            Err(format!("their terms are {terms:?}"))
        }
    })
    .await;
    assert!(
        nodes.iter().all(|n| n.node.leader().is_none()),
        "a leader was elected while no peer name resolved"
    );

    publish(1);
    publish(2);
    let leader = eventually("a leader among nodes 1 and 2", SOON, || async {
        let l = nodes[0].node.leader()?;
        (nodes[1].node.leader() == Some(l)).then_some(l)
    })
    .await;
    let mut c = connect(nodes[leader as usize - 1].grpc_addr).await;
    let id = c
        .broker
        .enqueue(job("dns", "hello"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // Node 3's pod appears (its name with it) after the cluster formed: it joins.
    publish(3);
    nodes.push(start(3).await.unwrap());
    let c3 = connect(nodes[2].grpc_addr).await;
    let job = eventually("node 3 serving a linearizable read", SOON, || {
        let (c3, id) = (c3.clone(), id.clone());
        async move {
            let mut c3 = c3;
            c3.broker
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(job.into_inner().payload.as_ref(), b"hello");
    // Node 3 is behind on the log: it can follow, never lead.
    assert!(matches!(nodes[2].node.leader(), Some(1 | 2)));
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A job in each state, a payload, a schedule, a dead job with its error, a result and
/// a paused queue are backed up from a live 3-node cluster (while writes go on) by
/// `taskraft backup`, restored by `taskraft restore` into the three data dirs of a new
/// cluster, and read back there; the new cluster takes new work. A backup cut short,
/// and a data dir that already holds a node, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_live_cluster_restores_into_a_new_cluster() {
    let mut source = ProcessCluster::spawn(3, &[]).await;
    for id in 1..=3 {
        source.node(id).wait_ready().await;
    }
    let mut c = source.node(1).clients().await;
    let producer = c.clone();
    let enqueue = |req: pb::EnqueueRequest| {
        let mut c = producer.clone();
        async move { c.broker.enqueue(req).await.unwrap().into_inner().job_id }
    };
    let ready = enqueue(pb::EnqueueRequest {
        priority: 7,
        headers: [("k".to_string(), "v".to_string())].into(),
        ..job("bk", "alpha")
    })
    .await;
    let scheduled = enqueue(pb::EnqueueRequest {
        delay_ms: 3_600_000,
        ..job("bk-later", "later")
    })
    .await;
    let dead = enqueue(pb::EnqueueRequest {
        max_attempts: 1,
        ..job("bk-dead", "doomed")
    })
    .await;
    let leased = c
        .broker
        .lease(lease("bk-dead", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    c.broker
        .nack(pb::NackRequest {
            job_id: dead.clone(),
            lease_id: leased[0].lease_id.clone(),
            error: "boom".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = enqueue(job("bk-done", "work")).await;
    let leased = c
        .broker
        .lease(lease("bk-done", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    c.broker
        .ack(pb::AckRequest {
            job_id: done.clone(),
            lease_id: leased[0].lease_id.clone(),
            result: bytes::Bytes::from_static(b"the result"),
        })
        .await
        .unwrap();
    enqueue(job("bk-paused", "held")).await;
    c.admin
        .pause_queue(pb::PauseQueueRequest {
            queue: "bk-paused".into(),
        })
        .await
        .unwrap();

    // Writes go on while the backup is taken from node 2.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (mut c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.broker.enqueue(job("bk-live", "x")).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let out = file.display().to_string();
    let server = source.nodes[1].addr.to_string();
    let (status, stderr) = tokio::task::block_in_place(|| {
        run_to_exit(&["backup", "--server", &server, "--out", &out], &[])
    });
    assert!(status.success(), "backup failed: {stderr}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let live_written = writer.await.unwrap();
    assert!(file.exists() && !dir.path().join("cluster.backup.partial").exists());
    drop(c);
    drop(source);

    // A new cluster on new ports, every node restored from the same file.
    let addrs: Vec<SocketAddr> = (0..3).map(|_| loopback()).collect();
    let peer_addrs: Vec<SocketAddr> = (0..3).map(|_| loopback()).collect();
    let peers = addrs
        .iter()
        .zip(&peer_addrs)
        .enumerate()
        .map(|(i, (a, p))| format!("{}={a}/{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let data = |id: usize| dir.path().join(format!("new-{id}"));
    for id in 1..=3usize {
        let (id_s, d) = (id.to_string(), data(id).display().to_string());
        let (status, stderr) = run_to_exit(
            &[
                "restore",
                "--from",
                &out,
                "--id",
                &id_s,
                "--peers",
                &peers,
                "--data-dir",
                &d,
            ],
            &[],
        );
        assert!(status.success(), "restore of node {id} failed: {stderr}");
    }
    // Never over an existing node, never from a cut file.
    let d1 = data(1).display().to_string();
    let (status, stderr) = run_to_exit(
        &[
            "restore",
            "--from",
            &out,
            "--id",
            "1",
            "--peers",
            &peers,
            "--data-dir",
            &d1,
        ],
        &[],
    );
    assert!(
        !status.success() && stderr.contains("never overwrites"),
        "{stderr}"
    );
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    let spare = dir.path().join("spare").display().to_string();
    let (status, stderr) = run_to_exit(
        &[
            "restore",
            "--from",
            &cut.display().to_string(),
            "--id",
            "1",
            "--data-dir",
            &spare,
        ],
        &[],
    );
    assert!(
        !status.success() && stderr.contains("cut short"),
        "{stderr}"
    );

    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = (i + 1).to_string();
        nodes.push(
            ProcessNode::spawn_at(
                &data(i + 1),
                *addr,
                loopback(),
                peer_addrs[i],
                &["--id", &id, "--peers", &peers],
            )
            .await,
        );
    }
    for n in &nodes {
        n.wait_ready().await;
    }
    // Read through node 3, whatever its role.
    let mut c = nodes[2].clients().await;
    let j = get_job(&mut c, &ready).await;
    assert_eq!(
        (j.state(), j.priority, j.payload.as_ref()),
        (pb::JobState::Ready, 7, &b"alpha"[..])
    );
    assert_eq!(j.headers.get("k").map(String::as_str), Some("v"));
    let j = get_job(&mut c, &scheduled).await;
    assert_eq!(j.state(), pb::JobState::Scheduled);
    assert!(j.run_at_ms > j.created_at_ms + 3_500_000, "{j:?}");
    let j = get_job(&mut c, &dead).await;
    assert_eq!(
        (j.state(), j.last_error.as_str()),
        (pb::JobState::Dead, "boom")
    );
    let j = get_job(&mut c, &done).await;
    assert_eq!(
        (j.state(), j.result.as_ref()),
        (pb::JobState::Succeeded, &b"the result"[..])
    );
    let s = stats(&mut c, "bk-paused").await;
    assert!(s.paused && s.ready == 1, "{s:?}");
    let live = stats(&mut c, "bk-live").await.ready;
    assert!(
        live <= live_written,
        "{live} live jobs restored, {live_written} written"
    );
    // The restored cluster works: the dead job retried, the ready one leased.
    c.admin
        .retry_job(pb::RetryJobRequest {
            job_id: dead.clone(),
        })
        .await
        .unwrap();
    let leased = c
        .broker
        .lease(lease("bk", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(leased[0].job_id, ready);
    let new = c
        .broker
        .enqueue(job("bk", "new"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert_eq!(
        get_job(&mut nodes[0].clients().await, &new).await.state(),
        pb::JobState::Ready
    );
}

/// The repository root (tests/ is one level down).
fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The venv with the manifest validators (built once per machine from
/// tests/manifests/requirements.txt).
fn validators() -> std::path::PathBuf {
    let dir = repo().join("tests/manifests");
    let python = taskraft_tests::setup::python_venv(
        &dir.join(".venv"),
        &dir.join("requirements.txt"),
        "import kubernetes_validate, yaml",
    );
    python.parent().expect("venv bin").to_path_buf()
}

fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("running a validator");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// deploy/k8s/taskraft.yaml passes strict validation against the Kubernetes 1.33
/// schemas (unknown fields are errors), and agrees with the Helm chart it renders.
#[test]
fn kubernetes_manifests_validate_and_match_the_helm_chart() {
    let bin = validators();
    let rendered = repo().join("deploy/k8s/taskraft.yaml");
    let (ok, stdout, stderr) = output(
        Command::new(bin.join("kubernetes-validate"))
            .args(["--strict", "-k", "1.33.0"])
            .arg(&rendered),
    );
    assert!(ok, "kubernetes-validate failed:\n{stdout}\n{stderr}");
    for kind in [
        "statefulset/taskraft",
        "service/taskraft-headless",
        "poddisruptionbudget/taskraft",
    ] {
        assert!(
            stdout.contains(&format!("passed for resource {kind}")),
            "{stdout}"
        );
    }
    let (ok, stdout, stderr) = output(
        Command::new(bin.join("python"))
            .arg(repo().join("tests/manifests/check_chart.py"))
            .arg(repo().join("deploy/helm/taskraft"))
            .arg(&rendered),
    );
    assert!(ok, "chart check failed:\n{stdout}\n{stderr}");
}

/// docker-compose.yml loads in Compose v2's own validator (no daemon needed): three
/// nodes with distinct ids and one peer list, each with its own volume, a peer
/// listener open to the other containers with one shared cluster secret (without it
/// the nodes would refuse to start), and the peer port not published to the host.
#[test]
fn compose_file_is_a_valid_three_node_cluster() {
    let bin = validators();
    let (ok, stdout, stderr) = output(
        Command::new(bin.join("docker-compose"))
            .arg("-f")
            .arg(repo().join("docker-compose.yml"))
            .args(["config", "--format", "json"]),
    );
    // This build reports validation errors on stderr with exit status 0.
    assert!(
        ok && stderr.trim().is_empty(),
        "compose config failed:\n{stderr}"
    );
    let config: serde_json::Value = serde_json::from_str(&stdout).expect("compose JSON");
    let services = config["services"].as_object().expect("services");
    assert_eq!(services.len(), 3);
    let mut ids = Vec::new();
    let mut secrets = std::collections::BTreeSet::new();
    for (name, s) in services {
        let env = &s["environment"];
        ids.push(env["TASKRAFT_ID"].as_str().unwrap().to_string());
        assert_eq!(
            env["TASKRAFT_PEERS"], "1=taskraft-1:7070,2=taskraft-2:7070,3=taskraft-3:7070",
            "{name}"
        );
        assert_eq!(env["TASKRAFT_PEER_LISTEN"], "0.0.0.0:7072", "{name}");
        let secret = env["TASKRAFT_CLUSTER_SECRET"].as_str().unwrap_or_default();
        assert!(!secret.is_empty(), "{name} has no cluster secret");
        secrets.insert(secret.to_string());
        for port in s["ports"].as_array().expect("ports") {
            assert_ne!(
                port["target"], 7072,
                "{name} publishes the peer port: {port}"
            );
            assert_eq!(
                port["host_ip"], "127.0.0.1",
                "{name} publishes beyond loopback by default: {port}"
            );
        }
        assert_eq!(s["volumes"][0]["target"], "/var/lib/taskraft", "{name}");
    }
    ids.sort();
    assert_eq!(ids, ["1", "2", "3"]);
    assert_eq!(secrets.len(), 1, "one cluster secret for all nodes");
}

/// The systemd unit passes `systemd-analyze verify` (with ExecStart pointed at the
/// built binary) and its hardening scores at most 2.5 on `systemd-analyze security`
/// (0 is the most locked down, 10 the least).
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    taskraft_tests::setup::apt_install(&["systemd"], || analyze.exists());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/taskraft.service")).unwrap();
    let env = repo().join("deploy/systemd/taskraft.env");
    let unit = unit
        .replace(
            "/usr/local/bin/taskraft",
            &taskraft_bin().display().to_string(),
        )
        .replace("/etc/taskraft/taskraft.env", &env.display().to_string());
    let path = dir.path().join("taskraft.service");
    std::fs::write(&path, unit).unwrap();
    let (ok, stdout, stderr) = output(Command::new(analyze).arg("verify").arg(&path));
    assert!(
        ok && stderr.trim().is_empty(),
        "verify:\n{stdout}\n{stderr}"
    );
    let (ok, stdout, stderr) = output(
        Command::new(analyze)
            .args(["security", "--offline=true", "--threshold=25", "--no-pager"])
            .arg(&path),
    );
    assert!(ok, "hardening above 2.5:\n{stdout}\n{stderr}");
}

/// What the image promises: a build stage at least at the workspace's Rust version
/// (the default base, which a build may replace), a non-root user, the data volume, and
/// a health check on /readyz through the binary. `tests/container.rs` builds and runs it.
#[test]
fn dockerfile_pins_the_workspace_toolchain_and_runs_unprivileged() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let want = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace rust-version");
    let from: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        from,
        ["FROM ${RUST_IMAGE} AS build", "FROM ${RUN_IMAGE}"],
        "a build and a run stage"
    );
    assert!(
        dockerfile.contains(&format!("ARG RUST_IMAGE=rust:{want}-bookworm")),
        "the default build image is not rust:{want}"
    );
    for needle in [
        "USER 10001:10001",
        "VOLUME [\"/var/lib/taskraft\"]",
        "CMD [\"taskraft\", \"probe\", \"--http\", \"127.0.0.1:7071\", \"--path\", \"/readyz\"]",
        "TASKRAFT_HTTP=0.0.0.0:7071",
        "TASKRAFT_PEER_LISTEN=127.0.0.1:7072",
        "TASKRAFT_DATA_DIR=/var/lib/taskraft",
        "--locked",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
}

/// A client that opened an HTTP/2 connection and then stopped reading (hung, or its
/// process stopped) cannot hold a node's shutdown: the drain ends after
/// `--request-timeout` + 5 s. (HTTP/2's graceful close waits for the client to
/// acknowledge the GOAWAY, which this one never does.) Nor does it keep the node alive
/// after that: its connection is cut, and the node's store files are closed by the
/// time the stop returns, with the client still there. The same holds for one on the
/// peer port.
#[tokio::test]
async fn shutdown_is_not_held_by_a_client_that_never_answers() {
    use tokio::io::AsyncWriteExt;
    let mut node = InProcNode::start_with(|c| c.request_timeout = Duration::from_secs(1)).await;
    let peer_addr = node.running.as_ref().expect("running").peer_addr;
    let mut silent = Vec::new();
    for addr in [node.addr(), peer_addr] {
        let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The client preface and an empty SETTINGS frame; then silence.
        stuck
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        silent.push(stuck);
    }
    // Let the server take the connection in.
    let mut c = node.clients().await;
    c.broker.enqueue(job("drain", "x")).await.unwrap();
    drop(c);
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), node.stop())
        .await
        .expect("shutdown finished despite the silent client");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    for file in ["raft-log.redb", "state.redb"] {
        let path = node.dir.path().join(file);
        let db = taskraft_broker::storage::open_redb(&path, 1 << 20, false, file);
        assert!(db.is_ok(), "{file} still held after stop: {:?}", db.err());
    }
    // The cut reached the clients: their reads end (the end of the stream, or a reset)
    // instead of waiting for data that never comes.
    for mut stuck in silent {
        let mut rest = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut stuck, &mut rest),
        )
        .await
        .expect("the silent client's connection was closed")
        .ok();
    }
}
