//! Worker processes built on the SDK (the `sdk-test-worker` helper binary) against an
//! in-process node: SIGKILL mid-job means redelivery after the visibility timeout (poll
//! protocol) or after the broker's resume grace (stream protocol: the broken session's
//! leases run out then), SIGTERM means the job in hand finishes before the process exits.

use std::process::{ExitStatus, Stdio};

use taskraft::{Client, JobState};
use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A running `sdk-test-worker` process and the lines it prints.
struct WorkerProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl WorkerProcess {
    /// A worker on the default protocol (stream).
    fn spawn(server: &str, queue: &str, id: &str, visibility_ms: u64, handler_ms: u64) -> Self {
        Self::spawn_on(server, queue, id, visibility_ms, handler_ms, "stream")
    }

    fn spawn_on(
        server: &str,
        queue: &str,
        id: &str,
        visibility_ms: u64,
        handler_ms: u64,
        protocol: &str,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sdk-test-worker"))
            .args([
                server,
                queue,
                id,
                &visibility_ms.to_string(),
                &handler_ms.to_string(),
                protocol,
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning sdk-test-worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line starting with `prefix`.
    async fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {prefix:?} line in time"))
                .unwrap_or_else(|| panic!("worker exited before printing {prefix:?}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid} failed");
    }

    async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(SOON, self.child.wait())
            .await
            .expect("worker process exits in time")
            .expect("wait")
    }
}

/// The poll protocol has nothing but the lease to tell that a worker died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_of_a_sigkilled_poll_worker_is_redelivered_after_the_visibility_timeout() {
    let node = InProcNode::start().await;
    let server = node.addr().to_string();
    let client = Client::connect([server.clone()]).await.unwrap();
    let id = client.enqueue("crash", "important").await.unwrap();

    // A 3 s lease, extended every second until the SIGKILL: a heartbeat may come 2 s
    // late on a loaded machine before the job would run out under the living worker.
    let mut doomed = WorkerProcess::spawn_on(&server, "crash", "doomed", 3000, 600_000, "poll");
    let line = doomed.expect_line("started").await;
    assert_eq!(line, format!("started {id} 1"));
    doomed.signal("-KILL");
    assert!(!doomed.wait().await.success());
    // The lease as the dead worker left it: nothing extends it any more.
    let mut c = node.clients().await;
    let held = get_job(&mut c, &id).await;
    assert_eq!(
        (held.state, held.attempt, held.worker_id.as_str()),
        (pb::JobState::Leased as i32, 1, "doomed"),
        "{held:?}"
    );

    let mut rescuer = WorkerProcess::spawn(&server, "crash", "rescuer", 30_000, 0);
    let line = rescuer.expect_line("started").await;
    assert_eq!(line, format!("started {id} 2"), "second delivery");
    let job = client.wait_for_job(&id, SOON).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!((job.attempt, job.expirations), (2, 1), "{job:?}");
    // Not before the dead worker's lease ran out, by the broker's own time (a wait
    // measured by the test would depend on how fast the machine is).
    assert!(
        job.finished_at_ms >= held.lease_deadline_ms,
        "finished at {} before the first lease ran out at {}",
        job.finished_at_ms,
        held.lease_deadline_ms
    );
    rescuer.signal("-TERM");
    assert!(rescuer.wait().await.success());
}

/// A stream worker's session breaks with its process: the broker keeps the job for the
/// resume grace (a few seconds), then ends the lease, long before its one-minute
/// visibility timeout. The delivery counts as an attempt, as an expired lease does, so
/// a job that keeps killing its workers reaches the dead-letter queue.
/// A poison job that kills every stream worker that takes it uses up its attempts and
/// is dead-lettered, as with polling workers: a broken session's leases end as expired
/// deliveries, not as jobs nobody started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_stream_worker_is_dead_lettered_after_max_attempts() {
    let node = InProcNode::start().await;
    let server = node.addr().to_string();
    let client = Client::connect([server.clone()]).await.unwrap();
    let opts = taskraft::EnqueueOptions::new().max_attempts(1);
    let id = client
        .enqueue_with("poison-s", "boom", &opts)
        .await
        .unwrap()
        .job_id;
    let mut doomed = WorkerProcess::spawn(&server, "poison-s", "doomed", 60_000, 600_000);
    assert_eq!(
        doomed.expect_line("started").await,
        format!("started {id} 1")
    );
    doomed.signal("-KILL");
    assert!(!doomed.wait().await.success());
    let job = client.wait_for_job(&id, SOON).await.unwrap();
    assert_eq!(job.state, JobState::Dead, "{job:?}");
    assert_eq!((job.attempt, job.expirations), (1, 1), "{job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_of_a_sigkilled_stream_worker_comes_back_after_the_resume_grace() {
    let node = InProcNode::start().await;
    let server = node.addr().to_string();
    let client = Client::connect([server.clone()]).await.unwrap();
    let id = client.enqueue("crash-s", "important").await.unwrap();

    let mut doomed = WorkerProcess::spawn(&server, "crash-s", "doomed", 60_000, 600_000);
    assert_eq!(
        doomed.expect_line("started").await,
        format!("started {id} 1")
    );
    doomed.signal("-KILL");
    assert!(!doomed.wait().await.success());
    let mut c = node.clients().await;
    let held = get_job(&mut c, &id).await;
    eventually("the dead worker's job to be given back", SOON, || {
        let (mut c, id) = (c.clone(), id.clone());
        async move {
            let j = get_job(&mut c, &id).await;
            (j.state == pb::JobState::Ready as i32).then_some(j)
        }
    })
    .await;
    let mut rescuer = WorkerProcess::spawn(&server, "crash-s", "rescuer", 30_000, 0);
    let line = rescuer.expect_line("started").await;
    assert_eq!(
        line,
        format!("started {id} 2"),
        "the crashed delivery counts"
    );
    let job = client.wait_for_job(&id, SOON).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!((job.attempt, job.expirations), (2, 1), "{job:?}");
    assert!(
        job.finished_at_ms < held.lease_deadline_ms,
        "given back at the visibility timeout, not after the grace: {job:?}"
    );
    rescuer.signal("-TERM");
    assert!(rescuer.wait().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_job_in_hand_finish_before_the_worker_exits() {
    let node = InProcNode::start().await;
    let server = node.addr().to_string();
    let client = Client::connect([server.clone()]).await.unwrap();
    let id = client.enqueue("term", "x").await.unwrap();

    let mut worker = WorkerProcess::spawn(&server, "term", "graceful", 30_000, 2000);
    worker.expect_line("started").await;
    worker.signal("-TERM");
    assert_eq!(
        worker.expect_line("finished").await,
        format!("finished {id}")
    );
    assert_eq!(worker.expect_line("stopped").await, "stopped succeeded=1");
    let status = worker.wait().await;
    assert!(status.success(), "{status:?}");
    let job = client.get_job(&id).await.unwrap();
    assert_eq!(
        (job.state, job.attempt),
        (JobState::Succeeded, 1),
        "{job:?}"
    );
}
