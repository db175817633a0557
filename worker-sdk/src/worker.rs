//! [`Worker`]: leases jobs, runs handlers by `job_type`, settles them, shuts down
//! gracefully.
//!
//! The job loop keeps at most `concurrency + prefetch` jobs in hand ("hand slots") and
//! hands each job to its own task (see `runner.rs`) that waits for one of the
//! `concurrency` run slots, runs the handler and acks or nacks. How jobs come in is the
//! [`Protocol`]: by default one `Work` session whose credits are the free hand slots
//! (see `session.rs`); with [`Protocol::Poll`], the loop below, which long-polls
//! `Lease` for as many jobs as it has free slots:
//!
//! ```text
//!  Lease(queues, n = free hand slots, wait 20 s) ──> job task ──> run slot ──> handler
//!        ^                                              │
//!        └──────────── hand slot released on settle <───┘
//! ```
//!
//! Every `Lease` that brings jobs is one Raft log entry, so while all handlers are
//! busy and prefetched jobs wait for them, the loop does not lease as soon as one slot
//! frees up: it waits until half the slots are free, a handler slot would idle, or
//! `lease_linger` (5 ms) has passed, then leases them all in one call. Acks need no such batching: the
//! broker commits concurrent proposals together.
//!
//! Shutdown (the future given to [`Worker::run_until`], or SIGINT/SIGTERM for
//! [`Worker::run`]) stops leasing, sends back jobs that have not started, waits up to
//! `shutdown_timeout` for running handlers, then aborts the rest and sends them back
//! too, with a 1 ms retry delay so another worker picks them up at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use taskraft_proto::v1 as pb;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::job::{Job, JobOutput};
use crate::runner::{self, Counters, Handler, Phase, Shared};
use crate::session::{self, Link};
use crate::{Client, Error, HandlerError};

/// Builds a [`Worker`]; see [`Worker::builder`].
pub struct WorkerBuilder {
    client: Client,
    queues: Vec<String>,
    concurrency: usize,
    prefetch: usize,
    visibility: Duration,
    max_jobs: Option<u64>,
    protocol: Protocol,
    poll_wait: Duration,
    lease_linger: Duration,
    shutdown_timeout: Duration,
    worker_id: Option<String>,
    handlers: HashMap<String, Handler>,
    fallback: Option<Handler>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Adds a queue; queues are served in the order added (the first one first).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// Adds several queues, in priority order.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues.extend(queues.into_iter().map(Into::into));
        self
    }

    /// Handlers running at once (default 4).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Jobs leased ahead of free run slots, to hide the lease round trip (default 0).
    /// Their leases are extended while they wait.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Lease length asked for (default 30 s); the worker extends it every third of
    /// this while a handler runs, so it bounds how soon a crashed worker's jobs run
    /// again, not how long a handler may take.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility = d;
        self
    }

    /// Stops after leasing this many jobs (and finishing them).
    pub fn max_jobs(mut self, n: u64) -> Self {
        self.max_jobs = Some(n);
        self
    }

    /// How the worker gets jobs and settles them (default [`Protocol::Stream`]).
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }

    /// Long-poll wait of each `Lease` call (default 20 s; [`Protocol::Poll`] only).
    pub fn poll_wait(mut self, d: Duration) -> Self {
        self.poll_wait = d;
        self
    }

    /// How long the lease loop may wait for more free slots before leasing (default
    /// 5 ms; zero: lease as soon as one slot is free; [`Protocol::Poll`] only: a
    /// session needs no batching, each free slot is one credit on the open stream).
    ///
    /// A busy worker frees its slots one job at a time; leasing at once would bring one
    /// job per `Lease` call, i.e. one Raft log entry per job. Instead, while every
    /// handler is busy (prefetched jobs are waiting for them), the loop waits until
    /// half of its slots (`concurrency + prefetch`) are free, or this linger has passed,
    /// and leases them all in one call. It never lingers while a handler slot is free,
    /// so without `prefetch` nothing changes; give `prefetch` some slots to batch
    /// leases without idling handlers.
    pub fn lease_linger(mut self, d: Duration) -> Self {
        self.lease_linger = d;
        self
    }

    /// How long shutdown waits for running handlers before aborting them (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// The id shown in `taskraft workers` (default `<host>-<pid>-<random>`).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Runs `f` for jobs whose `job_type` is `job_type`.
    ///
    /// `f` is an async function from [`Job`] to `Result<R, HandlerError>` where `R` is
    /// `()`, bytes, a string or [`Json`](crate::Json); any `std::error::Error` turns
    /// into a `HandlerError` with `?`.
    pub fn handler<F, Fut, R>(mut self, job_type: impl Into<String>, f: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
        R: JobOutput + 'static,
    {
        self.handlers.insert(job_type.into(), erase(f));
        self
    }

    /// Runs `f` for jobs whose `job_type` has no handler of its own.
    pub fn default_handler<F, Fut, R>(mut self, f: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
        R: JobOutput + 'static,
    {
        self.fallback = Some(erase(f));
        self
    }

    /// Checks the settings and builds the worker.
    pub fn build(self) -> Result<Worker, Error> {
        if self.queues.is_empty() {
            return Err(Error::Config("name at least one queue".into()));
        }
        if self.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if self.concurrency + self.prefetch > 1000 {
            return Err(Error::Config(
                "concurrency + prefetch must be at most 1000 (the Lease limit)".into(),
            ));
        }
        if self.visibility < Duration::from_millis(30) {
            return Err(Error::Config(
                "visibility_timeout must be at least 30ms".into(),
            ));
        }
        if self.handlers.is_empty() && self.fallback.is_none() {
            return Err(Error::Config(
                "register a handler (WorkerBuilder::handler or default_handler)".into(),
            ));
        }
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        Ok(Worker {
            client: self.client,
            queues: self.queues,
            hand: self.concurrency + self.prefetch,
            concurrency: self.concurrency,
            visibility: self.visibility,
            max_jobs: self.max_jobs,
            protocol: self.protocol,
            poll_wait: self.poll_wait,
            lease_linger: self.lease_linger,
            shutdown_timeout: self.shutdown_timeout,
            worker_id,
            handlers: self.handlers,
            fallback: self.fallback,
        })
    }
}

fn erase<F, Fut, R>(f: F) -> Handler
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    R: JobOutput + 'static,
{
    Arc::new(move |job| {
        let fut = f(job);
        async move { fut.await?.into_result() }.boxed()
    })
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// How a worker gets its jobs; see [`WorkerBuilder::protocol`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// One `Work` session (a bidirectional stream) on the node the client prefers: the
    /// broker pushes jobs as credits allow, and acks, nacks and lease extensions go on
    /// the same stream. A broken stream is resumed (its jobs kept) or replaced; see the
    /// crate docs.
    #[default]
    Stream,
    /// Long-polling `Lease` calls, and unary `Ack`, `Nack` and `ExtendLease`.
    Poll,
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Jobs acked.
    pub succeeded: u64,
    /// Jobs nacked because the handler failed or panicked.
    pub failed: u64,
    /// Jobs given back (shutdown), cancelled, or whose lease was lost.
    pub abandoned: u64,
    /// Jobs leased.
    pub leased: u64,
    /// [`Protocol::Poll`]: `Lease` calls answered (with jobs or empty after the long
    /// poll); `leased / lease_calls` shows how well [`WorkerBuilder::lease_linger`]
    /// batches. [`Protocol::Stream`]: `Work` sessions opened (1, plus one per resume or
    /// reconnect).
    pub lease_calls: u64,
}

/// Leases jobs from some queues and runs handlers on them.
///
/// ```no_run
/// # async fn demo() -> Result<(), taskraft::Error> {
/// use taskraft::{Client, Worker, Job, HandlerError};
/// let client = Client::connect(["127.0.0.1:7070"]).await?;
/// Worker::builder(client)
///     .queue("emails")
///     .concurrency(8)
///     .handler("send", |job: Job| async move {
///         println!("sending {:?}", job.payload());
///         Ok::<_, HandlerError>(())
///     })
///     .build()?
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    pub(crate) client: Client,
    pub(crate) queues: Vec<String>,
    hand: usize,
    concurrency: usize,
    pub(crate) visibility: Duration,
    pub(crate) max_jobs: Option<u64>,
    protocol: Protocol,
    poll_wait: Duration,
    lease_linger: Duration,
    shutdown_timeout: Duration,
    pub(crate) worker_id: String,
    handlers: HashMap<String, Handler>,
    fallback: Option<Handler>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker_id", &self.worker_id)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A builder with defaults: concurrency 4, no prefetch, visibility 30 s, poll
    /// wait 20 s, lease linger 5 ms, shutdown timeout 30 s.
    pub fn builder(client: Client) -> WorkerBuilder {
        WorkerBuilder {
            client,
            queues: Vec::new(),
            concurrency: 4,
            prefetch: 0,
            visibility: Duration::from_secs(30),
            max_jobs: None,
            protocol: Protocol::default(),
            poll_wait: Duration::from_secs(20),
            lease_linger: Duration::from_millis(5),
            shutdown_timeout: Duration::from_secs(30),
            worker_id: None,
            handlers: HashMap::new(),
            fallback: None,
        }
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.worker_id
    }

    /// Runs until SIGINT or SIGTERM (then shuts down gracefully) or until `max_jobs`.
    pub async fn run(self) -> Result<Report, Error> {
        self.run_until(crate::shutdown_signal()).await
    }

    /// Runs until `shutdown` resolves (then shuts down gracefully) or until `max_jobs`.
    ///
    /// Returns an error only for problems retrying cannot fix: a refused token or an
    /// invalid queue name. An unreachable cluster is retried (and logged) forever.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<Report, Error> {
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        let link = match self.protocol {
            Protocol::Stream => Some(Arc::new(Link::default())),
            Protocol::Poll => None,
        };
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            worker_id: self.worker_id.clone(),
            handlers: std::mem::take(&mut self.handlers),
            fallback: self.fallback.take(),
            visibility: self.visibility,
            run_slots: Arc::new(Semaphore::new(self.concurrency)),
            phase: phase_rx,
            counters: Counters::default(),
            link: link.clone(),
        });
        let hand = Arc::new(Semaphore::new(self.hand));
        let mut st = LoopState::default();
        let mut shutdown = std::pin::pin!(shutdown.fuse());
        tracing::info!(worker_id = %self.worker_id, queues = ?self.queues, protocol = ?self.protocol, "worker started");

        let session = match &link {
            Some(link) => session::run(&self, &shared, link, &hand, &mut st, &mut shutdown).await,
            None => {
                self.poll(&shared, &hand, &mut st, &mut shutdown).await;
                None
            }
        };
        let tasks = &mut st.tasks;
        if !st.shutdown_asked {
            // max_jobs reached: let every job finish, unless shutdown comes meanwhile.
            tokio::select! {
                _ = join_all(tasks) => {}
                _ = &mut shutdown => {}
            }
        }
        let _ = phase_tx.send(Phase::Draining);
        if !tasks.is_empty() {
            tracing::info!(
                in_flight = tasks.len(),
                "shutting down: finishing jobs in hand"
            );
            if tokio::time::timeout(self.shutdown_timeout, join_all(tasks))
                .await
                .is_err()
            {
                tracing::warn!(
                    in_flight = tasks.len(),
                    "shutdown timeout: aborting handlers and giving their jobs back"
                );
                let _ = phase_tx.send(Phase::Abort);
                join_all(tasks).await;
            }
        }
        if let Some(session) = session {
            session.finish().await;
        }
        let c = &shared.counters;
        let report = Report {
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
            leased: st.leased_total,
            lease_calls: st.lease_calls,
        };
        tracing::info!(?report, "worker stopped");
        match st.fatal {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// The poll protocol's job loop: long-polling `Lease` calls for free hand slots.
    async fn poll<S>(
        &self,
        shared: &Arc<Shared>,
        hand: &Arc<Semaphore>,
        st: &mut LoopState,
        shutdown: &mut S,
    ) where
        S: Future<Output = ()> + Unpin,
    {
        loop {
            while st.tasks.try_join_next().is_some() {}
            let remaining = match self.max_jobs {
                Some(max) if st.leased_total >= max => break,
                Some(max) => (max - st.leased_total) as usize,
                None => usize::MAX,
            };
            let first = tokio::select! {
                biased;
                _ = &mut *shutdown => { st.shutdown_asked = true; break }
                p = hand.clone().acquire_owned() => p.expect("hand slots are never closed"),
            };
            let want = remaining.min(self.hand);
            let mut permits = vec![first];
            take_free(hand, &mut permits, want);
            // Every handler busy (prefetched jobs wait for them): linger for more free
            // slots so one Lease brings several jobs. A free run slot means a handler
            // would idle, so then lease at once.
            let enough = want.div_ceil(2);
            if permits.len() < enough
                && !self.lease_linger.is_zero()
                && shared.run_slots.available_permits() == 0
            {
                let linger_end = tokio::time::Instant::now() + self.lease_linger;
                while permits.len() < enough {
                    tokio::select! {
                        biased;
                        _ = &mut *shutdown => { st.shutdown_asked = true; break }
                        _ = tokio::time::sleep_until(linger_end) => break,
                        // Fair semaphore: granted only when no job waits for a slot.
                        _ = shared.run_slots.acquire() => break,
                        p = hand.clone().acquire_owned() => {
                            permits.push(p.expect("hand slots are never closed"));
                            take_free(hand, &mut permits, want);
                        }
                    }
                }
                if st.shutdown_asked {
                    break;
                }
            }
            let req = pb::LeaseRequest {
                queues: self.queues.clone(),
                worker_id: self.worker_id.clone(),
                max_jobs: permits.len() as u32,
                visibility_timeout_ms: self.visibility.as_millis() as u64,
                wait_ms: self.poll_wait.as_millis() as u64,
            };
            let timeout = self.poll_wait + self.client.call_timeout();
            let call = self
                .client
                .broker(req, timeout, |mut b, r| async move { b.lease(r).await });
            // Dropping a lease call on shutdown may, rarely, leave jobs leased to nobody;
            // they run again once their lease expires.
            let res = tokio::select! {
                biased;
                _ = &mut *shutdown => { st.shutdown_asked = true; break }
                r = call => r,
            };
            match res {
                Ok(resp) => {
                    st.lease_calls += 1;
                    for job in resp.jobs {
                        let permit = permits.pop().expect("never more jobs than asked for");
                        st.leased_total += 1;
                        st.tasks.spawn(runner::run(shared.clone(), job, permit));
                    }
                }
                Err(e @ (Error::Unauthenticated(_) | Error::InvalidArgument(_))) => {
                    tracing::error!(error = %e, "worker cannot lease; stopping");
                    st.fatal = Some(e);
                    st.shutdown_asked = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease failed; retrying in 1s");
                    tokio::select! {
                        _ = &mut *shutdown => { st.shutdown_asked = true; break }
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// What the job loop (either protocol) leaves to the drain and the report.
#[derive(Default)]
pub(crate) struct LoopState {
    /// One task per job in hand.
    pub tasks: JoinSet<()>,
    pub leased_total: u64,
    pub lease_calls: u64,
    /// A refusal that stops the worker (bad token, bad queue name).
    pub fatal: Option<Error>,
    pub shutdown_asked: bool,
}

/// Adds free hand slots to `permits` without waiting, up to `want` in all.
pub(crate) fn take_free(
    hand: &Arc<Semaphore>,
    permits: &mut Vec<tokio::sync::OwnedSemaphorePermit>,
    want: usize,
) {
    while permits.len() < want {
        match hand.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}
