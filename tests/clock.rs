//! Replicated time under wall-clock steps and skewed nodes (see `broker/src/raft/time.rs`):
//! a lease or a delay runs out after its duration by the monotonic clock, whichever
//! node leads and whatever its wall clock says, never hours early and never frozen.
//!
//! In-process nodes with a [`SteppableClock`] each: a step is what an NTP correction or
//! a VM resume does to a running machine. `clock_faketime.rs` does the same to real
//! processes with libfaketime.

use std::cell::Cell;
use std::time::Duration;

use taskraft_broker::clock::SteppableClock;
use taskraft_proto::v1 as pb;
use taskraft_tests::{eventually_ok, job, lease, Clients, InProcCluster, InProcNode, SOON};
use tokio::time::Instant;

const H2: i64 = 2 * 3600 * 1000;
/// How far a lease's end or a delayed job's release may be from its due time.
const TOLERANCE: Duration = Duration::from_secs(1);

/// Steady writes on a queue of their own while the test runs, so that time is checked
/// under load: enqueue, lease, ack, through `c` (errors while leaders change are fine).
fn load(mut c: Clients) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if c.broker.enqueue(job("load", "x")).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let Ok(r) = c.broker.lease(lease("load", 8, 30_000, 0)).await else {
                continue;
            };
            for j in r.into_inner().jobs {
                let ack = pb::AckRequest {
                    job_id: j.job_id,
                    lease_id: j.lease_id,
                    result: Default::default(),
                };
                let _ = c.broker.ack(ack).await;
            }
        }
    })
}

/// A job leased for `due` and one delayed by it; the leader stamped both between `sent`
/// (before the calls) and `from` (after their answers).
struct Timed {
    leased: String,
    delayed: String,
    sent: Instant,
    from: Instant,
    due: Duration,
}

async fn lease_and_delay(c: &mut Clients, tag: &str, due: Duration) -> Timed {
    let sent = Instant::now();
    let q = format!("held-{tag}");
    c.broker.enqueue(job(&q, "held")).await.expect("enqueue");
    let jobs = c
        .broker
        .lease(lease(&q, 1, due.as_millis() as u64, 0))
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "the job is leased");
    let mut later = job(&format!("later-{tag}"), "later");
    later.delay_ms = due.as_millis() as u64;
    let delayed = c
        .broker
        .enqueue(later)
        .await
        .expect("enqueue")
        .into_inner()
        .job_id;
    Timed {
        leased: jobs[0].job_id.clone(),
        delayed,
        sent,
        from: Instant::now(),
        due,
    }
}

/// When job `job` left state `waiting` (a lease ran out, a delayed job became ready), as
/// the test saw it: after the start of the last GetJob that still found it waiting (or
/// `since`), and before the end of the first that did not.
async fn left_state(
    c: &Clients,
    job: &str,
    waiting: pb::JobState,
    since: Instant,
) -> (Instant, Instant) {
    let last_waiting = Cell::new(since);
    let what = format!("job {job} to leave {waiting:?}");
    let out_by = eventually_ok(&what, Duration::from_secs(10) + SOON, || {
        let (mut c, last_waiting) = (c.clone(), &last_waiting);
        async move {
            let asked = Instant::now();
            let req = pb::GetJobRequest {
                job_id: job.to_string(),
            };
            match c.broker.get_job(req).await {
                Ok(j) if j.get_ref().state != waiting as i32 => Ok(Instant::now()),
                Ok(_) => {
                    last_waiting.set(asked);
                    Err("still there".to_string())
                }
                // Leaders change meanwhile.
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    (last_waiting.get(), out_by)
}

/// Waits until every lease has run out and every delayed job is ready, and asserts that
/// each happened within [`TOLERANCE`] of its due time. All are watched at once, so that
/// one's wait does not make another look late.
///
/// Each is judged by the bounds of what the test saw, so that a slow machine (a slow
/// answer, a late poll) widens them instead of making a punctual lease look early or
/// late: it began between `sent` and `from`, and ran out after the last look that found
/// it waiting and before the first that did not.
async fn assert_on_time(c: &Clients, all: &[(&Timed, String)]) {
    let mut checks = Vec::new();
    for (t, what) in all {
        for (job, kind, waiting) in [
            (&t.leased, "lease", pb::JobState::Leased),
            (&t.delayed, "delay", pb::JobState::Scheduled),
        ] {
            checks.push(async move {
                let (waiting_at, out_by) = left_state(c, job, waiting, t.sent).await;
                let due = t.due;
                let longest = out_by - t.sent;
                let shortest = waiting_at.saturating_duration_since(t.from);
                assert!(
                    longest + TOLERANCE >= due,
                    "{what}: a {due:?} {kind} ran out early, within {longest:?}"
                );
                assert!(
                    shortest <= due + TOLERANCE,
                    "{what}: a {due:?} {kind} ran out late, after {shortest:?}"
                );
            });
        }
    }
    futures::future::join_all(checks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepping_a_running_leaders_wall_clock_2h_moves_no_lease_and_no_delay() {
    for step in [H2, -H2] {
        let clock = SteppableClock::new();
        let node = InProcNode::start_with(|c| c.clock = clock.handle()).await;
        let mut c = node.clients().await;
        let load = load(node.clients().await);
        // Leases and delays that span the step, and ones that begin after it.
        let before = lease_and_delay(&mut c, "before", Duration::from_secs(4)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        clock.step(step);
        let after = lease_and_delay(&mut c, "after", Duration::from_secs(3)).await;
        let all = [
            (&before, format!("begun before a {step} ms step")),
            (&after, format!("begun after a {step} ms step")),
        ];
        assert_on_time(&c, &all).await;
        let running = node.running.as_ref().expect("running");
        let skew = running.node.clock_skew_ms();
        assert!(
            (skew - step).abs() < 2_000,
            "the skew is reported: {skew} ms after a {step} ms step"
        );
        load.abort();
        assert!(load.await.is_err(), "the load ran until aborted");
    }
}

/// Both followers' clocks are stepped (one cluster +2 h, another -2 h), then the leader
/// is cut off: a node two hours off takes over a cluster under load, with leases and
/// delays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_2h_ahead_or_behind_takes_over_without_moving_leases_or_delays() {
    for step in [H2, -H2] {
        let clocks: Vec<SteppableClock> = (0..3).map(|_| SteppableClock::new()).collect();
        let handles: Vec<_> = clocks.iter().map(|c| c.handle()).collect();
        let cluster =
            InProcCluster::start(3, |c| c.clock = handles[c.id as usize - 1].clone()).await;
        let old = cluster.wait_leader().await;
        let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
        let mut c = cluster.clients(old).await;
        let load = load(cluster.clients(others[0]).await);
        let spanning = lease_and_delay(&mut c, "spanning", Duration::from_secs(6)).await;
        // The followers anchor replicated time on what they apply; then their clocks step.
        let index = cluster.applied(old);
        for id in &others {
            taskraft_tests::eventually("followers apply the leases", SOON, || async {
                (cluster.applied(*id) >= index).then_some(())
            })
            .await;
            clocks[*id as usize - 1].step(step);
        }
        cluster.isolate(old);
        let new = cluster.wait_leader_among(&others).await;
        let mut c = cluster.clients(new).await;
        let fresh = lease_and_delay(&mut c, "fresh", Duration::from_secs(3)).await;
        let what = format!("node {new} {step} ms off took over from node {old}");
        let all = [
            (&spanning, format!("{what}, lease and delay spanning it")),
            (&fresh, format!("{what}, lease and delay begun after")),
        ];
        assert_on_time(&c, &all).await;
        let leader_time = cluster.node(new).node.now_ms();
        let wall = taskraft_broker::clock::system_wall_ms();
        assert!(
            leader_time.abs_diff(wall) < 2_000,
            "{what}: replicated time {leader_time} stays with the true time {wall}"
        );
        cluster.heal();
        load.abort();
        let _ = load.await;
    }
}
