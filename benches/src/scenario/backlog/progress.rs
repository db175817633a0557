//! A progress line on stderr every few seconds: the phase, jobs enqueued and jobs/s
//! (while enqueueing), and each node's resident memory and data dir.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::probe::{size, size_opt, Sampler};

/// How often progress is printed.
const EVERY: Duration = Duration::from_secs(5);

/// Prints until dropped.
pub struct Progress {
    phase: Arc<Mutex<&'static str>>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts in phase "enqueue", counting `done` of `total` jobs.
    pub fn start(sampler: Arc<Sampler>, ids: Vec<u64>, done: Arc<AtomicU64>, total: u64) -> Self {
        let phase = Arc::new(Mutex::new("enqueue"));
        let task = {
            let phase = phase.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut last = (start, 0u64);
                loop {
                    tokio::time::sleep(EVERY).await;
                    let ph = *phase.lock().unwrap_or_else(|p| p.into_inner());
                    let mut line = format!("[{:>7.1}s {ph}]", start.elapsed().as_secs_f64());
                    if ph == "enqueue" {
                        let d = done.load(Ordering::Relaxed);
                        let rate = (d - last.1) as f64 / last.0.elapsed().as_secs_f64();
                        last = (Instant::now(), d);
                        line += &format!(" {d}/{total} jobs, {rate:.0} jobs/s |");
                    }
                    if let Some(s) = sampler.latest() {
                        for (i, id) in ids.iter().enumerate() {
                            line += &format!(
                                " node {id}: RSS {}, data {} |",
                                size_opt(s.rss[i]),
                                size(s.disk[i])
                            );
                        }
                    }
                    eprintln!("{}", line.trim_end_matches(" |"));
                }
            })
        };
        Self { phase, task }
    }

    /// Names the phase from now on (and says so on stderr).
    pub fn set(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
        eprintln!("backlog: {phase}");
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
