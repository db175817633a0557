//! What a scenario measured, and how it is printed (a table, or JSON with `--json`).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records one latency.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// What one caller (task) counted; merged into a [`Report`].
pub struct Tally {
    /// Latency of each successful call.
    pub latency: Histogram<u64>,
    /// Jobs the server accepted (or acked).
    pub jobs: u64,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The first error seen, for the notes.
    pub first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency: histogram(),
            jobs: 0,
            calls: 0,
            errors: 0,
            first_error: None,
        }
    }
}

impl Tally {
    /// Counts a failed call.
    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.calls += 1;
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    /// Counts a successful call that moved `jobs` jobs.
    pub fn ok(&mut self, jobs: u64, latency: Duration) {
        self.calls += 1;
        self.jobs += jobs;
        record(&mut self.latency, latency);
    }

    /// Adds another caller's counts.
    pub fn merge(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms share bounds");
        self.jobs += other.jobs;
        self.calls += other.calls;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One row of results.
pub struct Report {
    /// Scenario (or phase) name.
    pub scenario: String,
    /// Queue it used.
    pub queue: String,
    /// Counts and latencies.
    pub tally: Tally,
    /// Wall time the jobs/s figure is computed over.
    pub elapsed: Duration,
    /// Which call the latency columns describe.
    pub latency_of: &'static str,
    /// Free-form remarks (parameters, verification, first error).
    pub notes: Vec<String>,
    /// False when the end-of-run verification failed.
    pub verified: bool,
    /// `failover` only: SIGKILL of the leader to the first successful write.
    pub failover_ms: Option<f64>,
    /// Scenario-specific figures for the JSON output (`backlog`: memory, disk, snapshot,
    /// restart and catch-up times).
    pub details: Option<serde_json::Value>,
}

impl Report {
    /// Starts a report from a merged tally.
    pub fn new(
        scenario: &str,
        queue: &str,
        tally: Tally,
        elapsed: Duration,
        latency_of: &'static str,
    ) -> Self {
        let mut notes = Vec::new();
        if let Some(e) = &tally.first_error {
            notes.push(format!("{} errors, first: {e}", tally.errors));
        }
        Self {
            scenario: scenario.to_string(),
            queue: queue.to_string(),
            tally,
            elapsed,
            latency_of,
            notes,
            verified: true,
            failover_ms: None,
            details: None,
        }
    }

    /// Jobs per second over `elapsed`.
    pub fn jobs_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.tally.jobs as f64 / s
        } else {
            0.0
        }
    }

    fn ms_at(&self, q: f64) -> f64 {
        if self.tally.latency.is_empty() {
            return 0.0;
        }
        self.tally.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.tally.latency.max() as f64 / 1000.0
    }

    /// The report as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "scenario": self.scenario,
            "queue": self.queue,
            "jobs": self.tally.jobs,
            "calls": self.tally.calls,
            "errors": self.tally.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "jobs_per_s": self.jobs_per_s(),
            "latency_of": self.latency_of,
            "latency_ms": {
                "p50": self.ms_at(0.50),
                "p90": self.ms_at(0.90),
                "p99": self.ms_at(0.99),
                "max": self.max_ms(),
            },
            "verified": self.verified,
            "failover_ms": self.failover_ms,
            "notes": self.notes,
        });
        if let (Some(d), Some(obj)) = (&self.details, v.as_object_mut()) {
            obj.insert("details".into(), d.clone());
        }
        v
    }
}

/// Prints reports as an aligned table, notes underneath.
pub fn print_table(reports: &[Report]) {
    println!(
        "{:<20} {:>8} {:>8} {:>6} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}  latency of",
        "scenario",
        "jobs",
        "calls",
        "errors",
        "secs",
        "jobs/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    for r in reports {
        println!(
            "{:<20} {:>8} {:>8} {:>6} {:>8.2} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}",
            r.scenario,
            r.tally.jobs,
            r.tally.calls,
            r.tally.errors,
            r.elapsed.as_secs_f64(),
            r.jobs_per_s(),
            r.ms_at(0.50),
            r.ms_at(0.90),
            r.ms_at(0.99),
            r.max_ms(),
            r.latency_of,
        );
    }
    for r in reports {
        for n in &r.notes {
            println!("  {}: {n}", r.scenario);
        }
        if !r.verified {
            println!("  {}: WARNING: verification failed", r.scenario);
        }
    }
}
