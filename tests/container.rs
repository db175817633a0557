//! The container image and the compose cluster, for real: the `Dockerfile` is built
//! with podman, `docker-compose.yml` is started with podman-compose, and the three
//! containers serve a job through the ports the compose file publishes.
//!
//! ```text
//!   apt: podman, podman-compose, runc, debootstrap,
//!        netavark, aardvark-dns                           (once per machine)
//!   tests/container/bases.sh: the two base images        (once per machine)
//!   podman build Dockerfile -> taskraft:latest           (cache mounts: a rebuild
//!                                                          compiles the workspace only)
//!   podman-compose up -d -> 3 nodes -> /readyz on 7071, 7081, 7091
//!   enqueue on node 2, lease + ack on node 3, SUCCEEDED on node 1
//!   podman-compose down -v
//! ```
//!
//! This machine reaches Debian's mirror and crates.io but no container registry, so the
//! Dockerfile's `rust:` and `debian:` bases are replaced (`--build-arg`) by images built
//! here from Debian's packages and this machine's Rust toolchain; everything after the
//! `FROM` lines is the Dockerfile as shipped.
//!
//! It skips (printing why) only when podman, once installed, cannot start any container
//! on the machine; as the issue asks, a machine without a usable container engine says
//! so rather than fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use taskraft_proto::v1 as pb;
use taskraft_tests::setup::{apt_install, lock, run};
use taskraft_tests::*;

/// Stand-ins for `rust:<version>-bookworm` and `debian:bookworm-slim`.
const RUST_BASE: &str = "localhost/taskraft-test-rust:bookworm";
const RUN_BASE: &str = "localhost/taskraft-test-debian:bookworm";
/// The compose project (container and volume names start with it).
const PROJECT: &str = "taskraft-test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Podman settings for this machine, written to a file that `CONTAINERS_CONF` names:
/// its sandbox refuses to raise a container's rlimits to podman's defaults, and crun
/// refuses its hybrid cgroup layout, so containers get explicit limits and runc.
/// Elsewhere the same settings are merely unusual, not wrong.
fn containers_conf(dir: &Path) -> PathBuf {
    let path = dir.join("containers.conf");
    std::fs::write(
        &path,
        "[containers]\n\
         default_ulimits = [\"nofile=16384:16384\", \"nproc=4096:4096\"]\n\
         [engine]\n\
         runtime = \"runc\"\n",
    )
    .expect("writing containers.conf");
    path
}

fn on_path(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs a podman or podman-compose command with this test's settings; panics with its
/// output when it fails.
fn podman(conf: &Path, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(repo())
        .env("CONTAINERS_CONF", conf);
    match run(&mut cmd) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => panic!("{e}"),
    }
}

/// Stops the compose cluster and deletes its volumes, also when the test fails.
struct ComposeDown {
    conf: PathBuf,
}

impl ComposeDown {
    fn run(&self) {
        let _ = Command::new("podman-compose")
            .args(["-p", PROJECT, "-f", "docker-compose.yml", "down", "-v"])
            .current_dir(repo())
            .env("CONTAINERS_CONF", &self.conf)
            .output();
    }
}

impl Drop for ComposeDown {
    fn drop(&mut self) {
        self.run();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_built_from_the_dockerfile_runs_the_compose_cluster_and_serves_a_job() {
    // netavark and aardvark-dns by name: without recommended packages, podman may get
    // only the CNI plugins, whose networks do not resolve the compose service names.
    apt_install(
        &[
            "podman",
            "podman-compose",
            "runc",
            "debootstrap",
            "netavark",
            "aardvark-dns",
        ],
        || {
            ["podman", "podman-compose", "runc", "debootstrap"]
                .iter()
                .all(|c| on_path(c))
                && ["/usr/lib/podman/netavark", "/usr/lib/podman/aardvark-dns"]
                    .iter()
                    .all(|p| Path::new(p).exists())
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let conf = containers_conf(tmp.path());
    // One container test per machine at a time: the compose file publishes fixed ports
    // and the image tag is shared.
    let _machine = lock(
        &std::env::temp_dir()
            .join("taskraft-tests")
            .join("container.lock"),
    );

    let bases = repo().join("tests/container/bases.sh");
    let mut cmd = Command::new(&bases);
    cmd.args([RUST_BASE, RUN_BASE])
        .env("CONTAINERS_CONF", &conf);
    run(&mut cmd).unwrap_or_else(|e| panic!("building the base images: {e}"));

    // The one condition under which this test does not run: the engine installed but
    // cannot start any container on this machine (a sandbox without the needed
    // namespaces or rlimits). It says so and why; anything later that fails, fails.
    let mut smoke = Command::new("podman");
    smoke
        .args(["run", "--rm", RUN_BASE, "true"])
        .env("CONTAINERS_CONF", &conf);
    if let Err(e) = run(&mut smoke) {
        eprintln!(
            "SKIPPED: podman is installed but cannot run a container on this machine, so \
             the image cannot be built or run here:\n{e}"
        );
        return;
    }

    podman(
        &conf,
        "podman",
        &[
            "build",
            "--format",
            "docker",
            "--build-arg",
            &format!("RUST_IMAGE={RUST_BASE}"),
            "--build-arg",
            &format!("RUN_IMAGE={RUN_BASE}"),
            "-t",
            "taskraft:latest",
            ".",
        ],
    );

    // The image the build replaced, no longer tagged: without this every run would
    // keep one more.
    podman(&conf, "podman", &["image", "prune", "-f"]);

    let down = ComposeDown { conf: conf.clone() };
    down.run(); // what a killed earlier run left behind
    let secret = format!("test-{}", std::process::id());
    let mut up = Command::new("podman-compose");
    up.args(["-p", PROJECT, "-f", "docker-compose.yml", "up", "-d"])
        .current_dir(repo())
        .env("CONTAINERS_CONF", &conf)
        .env("TASKRAFT_CLUSTER_SECRET", &secret);
    run(&mut up).unwrap_or_else(|e| panic!("compose up: {e}"));

    let node = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for http in [7071, 7081, 7091] {
        eventually(
            &format!("node on {http} ready"),
            Duration::from_secs(120),
            || async move {
                http_get(node(http), "/readyz")
                    .await
                    .filter(|(code, _)| *code == 200)
            },
        )
        .await;
    }

    // The image's promises, on a running container: not root, healthy by its own check.
    let container = format!("{PROJECT}_taskraft-1_1");
    let uid = podman(&conf, "podman", &["exec", &container, "id", "-u"]);
    assert_eq!(uid.trim(), "10001", "the node runs as the image's user");
    podman(&conf, "podman", &["healthcheck", "run", &container]);
    let published = podman(&conf, "podman", &["port", &container]);
    assert!(
        published.lines().all(|l| l.contains("127.0.0.1:")) && !published.contains("7072"),
        "published on loopback only, peer port not at all: {published}"
    );

    // A job enqueued on one node, leased and acked on another, seen done on the third.
    let mut n2 = connect(node(7080)).await;
    let id = n2
        .broker
        .enqueue(job("container", "hello"))
        .await
        .expect("enqueue through node 2")
        .into_inner()
        .job_id;
    let mut n3 = connect(node(7090)).await;
    let leased = n3
        .broker
        .lease(lease("container", 1, 30_000, 5_000))
        .await
        .expect("lease through node 3")
        .into_inner()
        .jobs;
    assert_eq!(leased.len(), 1, "the job is leasable");
    let l = &leased[0];
    assert_eq!(
        (l.job_id.as_str(), &l.payload[..]),
        (id.as_str(), &b"hello"[..])
    );
    n3.broker
        .ack(pb::AckRequest {
            job_id: l.job_id.clone(),
            lease_id: l.lease_id.clone(),
            result: "done".into(),
        })
        .await
        .expect("ack through node 3");
    let mut n1 = connect(node(7070)).await;
    let done = get_job(&mut n1, &id).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    assert_eq!(&done.result[..], b"done");
    drop(down);
}
