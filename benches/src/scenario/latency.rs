//! `latency`: open-loop `Enqueue` at a fixed `--rate` for `--duration`.
//!
//! Call `i` is due at `start + i / rate` whatever happened to earlier calls, and its
//! latency is measured from that due time, not from when it was actually sent. A
//! stalled server therefore shows up as latency instead of as a slower send rate
//! (no coordinated omission).

use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::{job, queue_name, Params};
use crate::client::Pool;
use crate::report::{Report, Tally};

/// Runs `latency`.
pub async fn run(pool: &Pool, p: &Params) -> Result<Report> {
    anyhow::ensure!(p.rate.is_finite() && p.rate > 0.0, "--rate must be > 0");
    let total = p
        .jobs
        .unwrap_or_else(|| (p.rate * p.duration.as_secs_f64()).round() as u64);
    let queue = queue_name("latency");
    let payload = p.payload();
    let period = Duration::from_secs_f64(1.0 / p.rate);
    let start = Instant::now() + Duration::from_millis(10);
    let mut ticks = tokio::time::interval_at(start, period);
    // Behind schedule: send the missed calls at once, they are already late.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);

    let mut tally = Tally::default();
    let mut max_send_lag = Duration::ZERO;
    let mut set = JoinSet::new();
    for i in 0..total {
        ticks.tick().await;
        let due = start + Duration::from_secs_f64(i as f64 / p.rate);
        max_send_lag = max_send_lag.max(Instant::now().saturating_duration_since(due));
        let mut broker = pool.broker(i as usize);
        let req = job(&queue, &payload);
        set.spawn(async move {
            let r = broker.enqueue(req).await;
            (due.elapsed(), r)
        });
        while let Some(done) = set.try_join_next() {
            add(&mut tally, done?);
        }
    }
    while let Some(done) = set.join_next().await {
        add(&mut tally, done?);
    }
    let elapsed = start.elapsed();
    let mut report = Report::new("latency", &queue, tally, elapsed, "Enqueue, from due time");
    report.notes.insert(
        0,
        format!(
            "target {} jobs/s for {:?} ({total} calls); generator lag max {:.2} ms",
            p.rate,
            p.duration,
            max_send_lag.as_secs_f64() * 1000.0
        ),
    );
    Ok(report)
}

fn add(
    tally: &mut Tally,
    (latency, r): (
        Duration,
        Result<tonic::Response<taskraft_proto::v1::EnqueueResponse>, tonic::Status>,
    ),
) {
    match r {
        Ok(_) => tally.ok(1, latency),
        Err(e) => tally.error(e),
    }
}
