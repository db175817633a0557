//! The history the clients and the nemesis record: every call with its outcome and
//! when it started and ended, and every fault with when it started and ended.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tonic::Code;

/// A call's outcome: OK, or the gRPC code and message it failed with.
#[derive(Clone, Debug)]
pub enum Outcome<T> {
    Ok(T),
    Err(Code, String),
}

impl<T> Outcome<T> {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    pub fn code(&self) -> Option<Code> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Err(c, _) => Some(*c),
        }
    }
}

/// One leased job as the Lease answer named it.
#[derive(Clone, Debug)]
pub struct Leased {
    pub job_id: String,
    pub lease_id: String,
    pub attempt: u32,
    /// The lease deadline the broker stamped: replicated time at the lease plus the
    /// visibility timeout.
    pub deadline_ms: u64,
}

/// What a client asked.
#[derive(Clone, Debug)]
pub enum Op {
    /// `request_id` is set by the raw producers (the SDK sets its own, unseen).
    Enqueue {
        payload: String,
        key: Option<String>,
        request_id: Option<String>,
        max_attempts: u32,
        /// Answer: (job id, duplicate).
        out: Outcome<(String, bool)>,
    },
    Lease {
        visibility_ms: u64,
        out: Outcome<Vec<Leased>>,
    },
    Ack {
        job_id: String,
        lease_id: String,
        attempt: u32,
        /// Sent after sleeping past the visibility timeout on purpose.
        stale: bool,
        out: Outcome<()>,
    },
    Nack {
        job_id: String,
        lease_id: String,
        attempt: u32,
        out: Outcome<()>,
    },
}

/// One call.
#[derive(Clone, Debug)]
pub struct Event {
    /// Which client made it (`rid-0`, `sdk`, `key`, `worker-1`, `sleeper`).
    pub client: String,
    /// Node it was sent to (0: the SDK, which picks one itself).
    pub node: u64,
    /// Milliseconds since the test started, when the call was sent and answered.
    pub start_ms: u64,
    pub end_ms: u64,
    pub op: Op,
}

impl Event {
    /// The job ids this call names (asked or answered).
    pub fn job_ids(&self) -> Vec<&str> {
        match &self.op {
            Op::Enqueue { out, .. } => match out {
                Outcome::Ok((id, _)) => vec![id.as_str()],
                Outcome::Err(..) => vec![],
            },
            Op::Lease { out, .. } => match out {
                Outcome::Ok(jobs) => jobs.iter().map(|j| j.job_id.as_str()).collect(),
                Outcome::Err(..) => vec![],
            },
            Op::Ack { job_id, .. } | Op::Nack { job_id, .. } => vec![job_id.as_str()],
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.op {
            Op::Enqueue { .. } => "enqueue",
            Op::Lease { .. } => "lease",
            Op::Ack { .. } => "ack",
            Op::Nack { .. } => "nack",
        }
    }
}

/// Fault kinds the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Kill,
    Stop,
    Partition,
    Skew,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Stop,
        FaultKind::Partition,
        FaultKind::Skew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill9",
            FaultKind::Stop => "sigstop",
            FaultKind::Partition => "partition",
            FaultKind::Skew => "clock-skew",
        }
    }
}

/// One injected fault; `end_ms` is when it was healed (the node answers again).
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub node: u64,
    pub detail: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Calls and faults, shared by every client task and the nemesis.
#[derive(Clone)]
pub struct History {
    t0: Instant,
    events: Arc<Mutex<Vec<Event>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
}

impl History {
    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            events: Arc::default(),
            faults: Arc::default(),
        }
    }

    /// Milliseconds since the test started.
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub fn record(&self, client: &str, node: u64, start_ms: u64, op: Op) {
        let e = Event {
            client: client.to_string(),
            node,
            start_ms,
            end_ms: self.now_ms(),
            op,
        };
        self.events.lock().unwrap().push(e);
    }

    pub fn fault(&self, f: Fault) {
        self.faults.lock().unwrap().push(f);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.faults.lock().unwrap().clone()
    }
}
