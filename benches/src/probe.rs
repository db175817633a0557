//! What a spawned node costs the machine: resident memory from `/proc/<pid>/status` and
//! the size of its data dir, sampled in the background.
//!
//! ```text
//!  every 500 ms:  VmRSS of each node's current pid ─┐
//!                 bytes under each node's data dir ─┴─► Vec<Sample> (kept whole run)
//! ```
//!
//! Sampling can miss a short spike, so phases also read the kernel's own high-water mark
//! (`VmHWM`), which they reset first through `/proc/<pid>/clear_refs` when allowed.
//! Linux only; elsewhere every figure reads as unknown.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::scenario::retention::dir_bytes;

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`), if readable.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resident memory of `pid` now.
pub fn rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS")
}

/// Peak resident memory of `pid` since it started or since [`reset_peak`].
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM")
}

/// Resets `pid`'s `VmHWM` to its current RSS (writes 5 to `clear_refs`); false when the
/// kernel did not allow it.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// One sampling round.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was taken.
    pub at: SystemTime,
    /// Resident bytes per node (`None`: no process, e.g. between kill and restart).
    pub rss: Vec<Option<u64>>,
    /// Data dir bytes per node.
    pub disk: Vec<u64>,
}

/// Per-node maxima over some samples.
#[derive(Clone, Debug, Default)]
pub struct Peaks {
    /// Highest sampled resident bytes per node.
    pub rss: Vec<u64>,
    /// Highest sampled data dir bytes per node.
    pub disk: Vec<u64>,
}

struct Shared {
    pids: Vec<Option<u32>>,
    samples: Vec<Sample>,
}

/// Samples every node's memory and data dir until dropped.
pub struct Sampler {
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling the processes `pids` and the dirs `dirs` (same order) every `every`.
    pub fn start(pids: Vec<u32>, dirs: Vec<PathBuf>, every: Duration) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            pids: pids.into_iter().map(Some).collect(),
            samples: Vec::new(),
        }));
        let task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    let pids = lock(&shared).pids.clone();
                    let sample = take(&pids, &dirs);
                    lock(&shared).samples.push(sample);
                    tokio::time::sleep(every).await;
                }
            })
        };
        Self { shared, task }
    }

    /// Node `i` now runs as `pid` (`None`: not running).
    pub fn set_pid(&self, i: usize, pid: Option<u32>) {
        lock(&self.shared).pids[i] = pid;
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<Sample> {
        lock(&self.shared).samples.last().cloned()
    }

    /// Maxima over the samples taken in `from..=to` (`None`: unbounded).
    pub fn peaks(&self, from: Option<SystemTime>, to: Option<SystemTime>) -> Peaks {
        let g = lock(&self.shared);
        let n = g.pids.len();
        let mut p = Peaks {
            rss: vec![0; n],
            disk: vec![0; n],
        };
        let inside = |t: SystemTime| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t <= e);
        for s in g.samples.iter().filter(|s| inside(s.at)) {
            for i in 0..n {
                p.rss[i] = p.rss[i].max(s.rss[i].unwrap_or(0));
                p.disk[i] = p.disk[i].max(s.disk[i]);
            }
        }
        p
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn take(pids: &[Option<u32>], dirs: &[PathBuf]) -> Sample {
    Sample {
        at: SystemTime::now(),
        rss: pids.iter().map(|p| p.and_then(rss)).collect(),
        disk: dirs.iter().map(|d| dir_bytes(d)).collect(),
    }
}

/// Bytes as "812.3 MiB" / "1.24 GiB".
pub fn size(b: u64) -> String {
    let mib = b as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// An optional size, "?" when unknown.
pub fn size_opt(b: Option<u64>) -> String {
    b.map_or_else(|| "?".into(), size)
}
