//! The Rust SDK's runner of the conformance suite (`tests/conformance/README.md`).
//!
//! ```text
//! conformance-rust <scenario.json> --addrs host:port[,host:port...]
//! ```
//!
//! Runs one scenario with the `taskraft` crate against brokers the harness started.
//! Line-delimited JSON on stdout: events, then the result as the last line
//! (`{"result":"pass"}`, `{"result":"fail","reason":..}`, `{"result":"unsupported",..}`;
//! exit code 0, 1, 2). To have the leader killed it prints `{"control":"kill_leader"}`
//! and reads `{"killed": <node id>}` from stdin. The token, if any, comes from
//! `TASKRAFT_CONFORMANCE_TOKEN`; logs (`RUST_LOG`) go to stderr.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use taskraft::{
    Client, EnqueueOptions, HandlerError, Job, JobInfo, JobState, NewJob, Report, Worker,
};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Why a scenario did not pass.
enum Outcome {
    Fail(String),
    Unsupported(String),
}

impl From<taskraft::Error> for Outcome {
    fn from(e: taskraft::Error) -> Self {
        Outcome::Fail(format!("SDK error: {e}"))
    }
}

type Res<T = ()> = Result<T, Outcome>;

fn fail<T>(reason: impl Into<String>) -> Res<T> {
    Err(Outcome::Fail(reason.into()))
}

fn check(ok: bool, reason: impl FnOnce() -> String) -> Res {
    if ok {
        Ok(())
    } else {
        fail(reason())
    }
}

fn emit(line: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Typed access to a scenario's `params` or `expect`, failing clearly on a missing key.
struct Fields<'a> {
    name: &'static str,
    v: &'a Value,
}

impl Fields<'_> {
    fn has(&self, key: &str) -> bool {
        !self.v.get(key).unwrap_or(&Value::Null).is_null()
    }

    fn get(&self, key: &str) -> Res<&Value> {
        match self.v.get(key) {
            Some(v) if !v.is_null() => Ok(v),
            _ => fail(format!("the scenario file has no {}.{key}", self.name)),
        }
    }

    fn str(&self, key: &str) -> Res<String> {
        match self.get(key)?.as_str() {
            Some(s) => Ok(s.to_string()),
            None => fail(format!("{}.{key} is not a string", self.name)),
        }
    }

    fn i64(&self, key: &str) -> Res<i64> {
        match self.get(key)?.as_i64() {
            Some(n) => Ok(n),
            None => fail(format!("{}.{key} is not an integer", self.name)),
        }
    }

    fn u64(&self, key: &str) -> Res<u64> {
        match self.get(key)?.as_u64() {
            Some(n) => Ok(n),
            None => fail(format!("{}.{key} is not a non-negative integer", self.name)),
        }
    }

    fn u64_or(&self, key: &str, default: u64) -> Res<u64> {
        if self.has(key) {
            self.u64(key)
        } else {
            Ok(default)
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Res<bool> {
        if !self.has(key) {
            return Ok(default);
        }
        match self.get(key)?.as_bool() {
            Some(b) => Ok(b),
            None => fail(format!("{}.{key} is not a boolean", self.name)),
        }
    }
}

struct Ctx {
    client: Client,
    params: Value,
    expect: Value,
    deadline: Instant,
    stdin: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Ctx {
    fn p(&self) -> Fields<'_> {
        Fields {
            name: "params",
            v: &self.params,
        }
    }

    fn e(&self) -> Fields<'_> {
        Fields {
            name: "expect",
            v: &self.expect,
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    async fn wait_final(&self, id: &str) -> Res<JobInfo> {
        Ok(self.client.wait_for_job(id, self.remaining()).await?)
    }

    /// Polls `f` until it holds, failing with `what` at the scenario deadline.
    async fn until<F, Fut>(&self, what: &str, mut f: F) -> Res
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Res<bool>>,
    {
        while !f().await? {
            if Instant::now() > self.deadline {
                return fail(format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// A worker builder on the scenario's queue with its visibility timeout.
    fn worker(&self) -> Res<taskraft::WorkerBuilder> {
        let p = self.p();
        Ok(Worker::builder(self.client.clone())
            .queue(p.str("queue")?)
            .visibility_timeout(Duration::from_millis(
                p.u64_or("visibility_timeout_ms", 30_000)?,
            ))
            .poll_wait(Duration::from_millis(500)))
    }

    /// Checks the `expect` fields that describe one finished job.
    fn check_job(&self, job: &JobInfo) -> Res {
        let e = self.e();
        if e.has("final_state") {
            let want = e.str("final_state")?;
            let got = state_name(job.state);
            check(got == want, || {
                format!(
                    "job {} ended {got}, expected {want} (last_error {:?})",
                    job.id, job.last_error
                )
            })?;
        }
        if e.has("attempts") {
            let want = e.u64("attempts")?;
            check(u64::from(job.attempt) == want, || {
                format!(
                    "job {} took {} attempts, expected {want}",
                    job.id, job.attempt
                )
            })?;
        }
        if e.has("expirations") {
            let want = e.u64("expirations")?;
            check(u64::from(job.expirations) == want, || {
                format!(
                    "job {} had {} lease expirations, expected {want}",
                    job.id, job.expirations
                )
            })?;
        }
        if e.has("last_error_contains") {
            let want = e.str("last_error_contains")?;
            check(job.last_error.contains(&want), || {
                format!("last_error {:?} lacks {want:?}", job.last_error)
            })?;
        }
        Ok(())
    }

    fn check_runs(&self, runs: usize) -> Res {
        if self.e().has("handler_runs") {
            let want = self.e().u64("handler_runs")?;
            check(runs as u64 == want, || {
                format!("the handler ran {runs} times, expected {want}")
            })?;
        }
        Ok(())
    }

    /// Asks the harness to SIGKILL the leader and waits for its answer.
    async fn kill_leader(&self) -> Res<u64> {
        emit(json!({"control": "kill_leader"}));
        let line = match self.stdin.lock().await.recv().await {
            Some(l) => l,
            None => return fail("stdin closed before the harness answered kill_leader"),
        };
        let v: Value = serde_json::from_str(&line)
            .or_else(|e| fail(format!("bad answer to kill_leader {line:?}: {e}")))?;
        match v.get("killed").and_then(Value::as_u64) {
            Some(id) => Ok(id),
            None => fail(format!(
                "the harness answered {line} instead of {{\"killed\": id}}"
            )),
        }
    }
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Scheduled => "SCHEDULED",
        JobState::Ready => "READY",
        JobState::Leased => "LEASED",
        JobState::Succeeded => "SUCCEEDED",
        JobState::Dead => "DEAD",
        JobState::Cancelled => "CANCELLED",
        _ => "UNKNOWN",
    }
}

/// A worker running in the background until `stop` is sent.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Report, taskraft::Error>>,
}

impl Running {
    fn start(worker: Worker) -> Self {
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run_until(async move {
            let _ = rx.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) -> Res<Report> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(e) => fail(format!("the worker task failed: {e}")),
        }
    }
}

async fn roundtrip(ctx: &Ctx) -> Res {
    let p = ctx.p();
    let queue = p.str("queue")?;
    let job_type = p.str("job_type")?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(p.str("payload_base64")?)
        .or_else(|e| fail(format!("params.payload_base64: {e}")))?;
    let headers: HashMap<String, String> = serde_json::from_value(p.get("headers")?.clone())
        .or_else(|e| fail(format!("params.headers: {e}")))?;
    let priority = i32::try_from(p.i64("priority")?).or_else(|e| fail(e.to_string()))?;
    let opts = EnqueueOptions::new()
        .job_type(&job_type)
        .priority(priority)
        .headers(headers.clone());
    let id = ctx
        .client
        .enqueue_with(&queue, payload.clone(), &opts)
        .await?
        .job_id;
    emit(json!({"event": "enqueued", "job_id": id}));
    type Seen = (Vec<u8>, HashMap<String, String>, String, String, i32, u32);
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let s = seen.clone();
    let worker = ctx
        .worker()?
        .concurrency(1)
        .handler(job_type.clone(), move |job: Job| {
            let s = s.clone();
            async move {
                *s.lock().unwrap() = Some((
                    job.payload().to_vec(),
                    job.headers().clone(),
                    job.queue().to_string(),
                    job.job_type().to_string(),
                    job.priority(),
                    job.attempt(),
                ));
                Ok::<_, HandlerError>(job.payload().clone())
            }
        })
        .build()?;
    let running = Running::start(worker);
    let job = ctx.wait_final(&id).await?;
    running.stop().await?;
    ctx.check_job(&job)?;
    let Some((got_payload, got_headers, got_queue, got_type, got_priority, got_attempt)) =
        seen.lock().unwrap().clone()
    else {
        return fail("the handler never ran");
    };
    check(got_queue == queue && got_type == job_type, || {
        format!("handler saw queue {got_queue:?} job_type {got_type:?}")
    })?;
    check(got_priority == priority, || {
        format!("handler saw priority {got_priority}, enqueued {priority}")
    })?;
    check(got_attempt == 1, || {
        format!("handler saw attempt {got_attempt}")
    })?;
    if ctx.e().bool_or("payload_intact", false)? {
        check(got_payload == payload, || {
            format!("payload changed: {got_payload:?}")
        })?;
    }
    if ctx.e().bool_or("headers_intact", false)? {
        check(got_headers == headers, || {
            format!("headers changed: {got_headers:?}")
        })?;
    }
    if ctx.e().bool_or("result_is_payload", false)? {
        check(job.result.as_ref() == payload.as_slice(), || {
            format!("result {:?} is not the payload", job.result)
        })?;
    }
    Ok(())
}

async fn priority_order(ctx: &Ctx) -> Res {
    let p = ctx.p();
    let queue = p.str("queue")?;
    let job_type = p.str("job_type")?;
    let jobs = p.get("jobs")?.as_array().cloned().unwrap_or_default();
    let mut ids = Vec::new();
    for j in &jobs {
        let name = j["name"].as_str().unwrap_or_default().to_string();
        let priority = j["priority"].as_i64().unwrap_or(0) as i32;
        let opts = EnqueueOptions::new().job_type(&job_type).priority(priority);
        ids.push(ctx.client.enqueue_with(&queue, name, &opts).await?.job_id);
    }
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let o = order.clone();
    let worker = ctx
        .worker()?
        .concurrency(p.u64_or("concurrency", 1)? as usize)
        .prefetch(p.u64_or("prefetch", 0)? as usize)
        .handler(job_type, move |job: Job| {
            o.lock()
                .unwrap()
                .push(String::from_utf8_lossy(job.payload()).into_owned());
            async { Ok::<_, HandlerError>(()) }
        })
        .build()?;
    let running = Running::start(worker);
    let mut finals = Vec::new();
    for id in &ids {
        finals.push(ctx.wait_final(id).await?);
    }
    running.stop().await?;
    let order = order.lock().unwrap().clone();
    emit(json!({"event": "order", "order": order}));
    let want: Vec<String> = serde_json::from_value(ctx.e().get("order")?.clone())
        .or_else(|e| fail(format!("expect.order: {e}")))?;
    check(order == want, || {
        format!("ran in order {order:?}, expected {want:?}")
    })?;
    finals.iter().try_for_each(|j| ctx.check_job(j))
}

async fn lease_extension(ctx: &Ctx) -> Res {
    let p = ctx.p();
    let job_type = p.str("job_type")?;
    let handler_time = Duration::from_millis(p.u64("handler_ms")?);
    let opts = EnqueueOptions::new().job_type(&job_type);
    let id = ctx
        .client
        .enqueue_with(&p.str("queue")?, "slow", &opts)
        .await?
        .job_id;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let worker = ctx
        .worker()?
        .concurrency(1)
        .handler(job_type, move |_job: Job| {
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(handler_time).await;
                Ok::<_, HandlerError>(())
            }
        })
        .build()?;
    let running = Running::start(worker);
    let job = ctx.wait_final(&id).await?;
    running.stop().await?;
    ctx.check_job(&job)?;
    ctx.check_runs(runs.load(Ordering::SeqCst))
}

/// Enqueues one job whose handler always fails with `error`; returns the final job and
/// the handler's start times.
async fn always_failing(ctx: &Ctx, error: HandlerError) -> Res<(JobInfo, Vec<Instant>)> {
    let p = ctx.p();
    let job_type = p.str("job_type")?;
    let opts = EnqueueOptions::new()
        .job_type(&job_type)
        .max_attempts(p.u64("max_attempts")? as u32);
    let id = ctx
        .client
        .enqueue_with(&p.str("queue")?, "x", &opts)
        .await?
        .job_id;
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let s = starts.clone();
    let worker = ctx
        .worker()?
        .concurrency(1)
        .handler(job_type, move |_job: Job| {
            s.lock().unwrap().push(Instant::now());
            let error = error.clone();
            async move { Err::<(), _>(error) }
        })
        .build()?;
    let running = Running::start(worker);
    let job = ctx.wait_final(&id).await?;
    running.stop().await?;
    let starts = starts.lock().unwrap().clone();
    Ok((job, starts))
}

async fn retry_until_dead(ctx: &Ctx) -> Res {
    let message = ctx.p().str("error_message")?;
    let (job, starts) = always_failing(ctx, HandlerError::new(message)).await?;
    let gaps: Vec<u64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    emit(json!({"event": "gaps_ms", "gaps": gaps}));
    ctx.check_job(&job)?;
    ctx.check_runs(starts.len())?;
    if ctx.e().has("min_gaps_ms") {
        let want: Vec<u64> = serde_json::from_value(ctx.e().get("min_gaps_ms")?.clone())
            .or_else(|e| fail(format!("expect.min_gaps_ms: {e}")))?;
        check(gaps.len() >= want.len(), || {
            format!("only {} retries", gaps.len())
        })?;
        for (i, (got, min)) in gaps.iter().zip(&want).enumerate() {
            check(got >= min, || {
                format!(
                    "retry {} came after {got} ms, expected at least {min} ms",
                    i + 1
                )
            })?;
        }
    }
    Ok(())
}

async fn permanent_error(ctx: &Ctx) -> Res {
    let message = ctx.p().str("error_message")?;
    let (job, starts) = always_failing(ctx, HandlerError::permanent(message)).await?;
    ctx.check_job(&job)?;
    ctx.check_runs(starts.len())
}

/// Records when the handler's future stops because its job was cancelled: either the
/// handler saw `Job::cancelled` itself, or the worker dropped (aborted) the handler
/// while the job was marked cancelled.
struct CancelObserver<'a> {
    job: &'a Job,
    observed: Arc<Mutex<Option<Instant>>>,
}

impl Drop for CancelObserver<'_> {
    fn drop(&mut self) {
        if self.job.is_cancelled() {
            self.observed
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
        }
    }
}

async fn cancel_running(ctx: &Ctx) -> Res {
    let p = ctx.p();
    let job_type = p.str("job_type")?;
    let max = Duration::from_millis(p.u64("handler_max_ms")?);
    let opts = EnqueueOptions::new().job_type(&job_type);
    let id = ctx
        .client
        .enqueue_with(&p.str("queue")?, "long", &opts)
        .await?
        .job_id;
    let runs = Arc::new(AtomicUsize::new(0));
    let observed: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (r, o) = (runs.clone(), observed.clone());
    let worker = ctx
        .worker()?
        .concurrency(1)
        .handler(job_type, move |job: Job| {
            r.fetch_add(1, Ordering::SeqCst);
            let observed = o.clone();
            async move {
                let _guard = CancelObserver {
                    job: &job,
                    observed: observed.clone(),
                };
                tokio::select! {
                    _ = job.cancelled() => {
                        observed.lock().unwrap().get_or_insert_with(Instant::now);
                        Err(HandlerError::new("cancelled"))
                    }
                    _ = tokio::time::sleep(max) => Ok(()),
                }
            }
        })
        .build()?;
    let running = Running::start(worker);
    ctx.until("the handler to start", || async {
        Ok(runs.load(Ordering::SeqCst) > 0)
    })
    .await?;
    let cancelled_at = Instant::now();
    let info = ctx.client.cancel_job(&id).await?;
    emit(json!({"event": "cancelled", "state": state_name(info.state)}));
    let within = Duration::from_millis(ctx.e().u64_or("observe_within_ms", 10_000)?);
    ctx.until("the handler to observe the cancellation", || async {
        Ok(observed.lock().unwrap().is_some() || cancelled_at.elapsed() > within)
    })
    .await?;
    if ctx.e().bool_or("handler_observed_cancel", true)? {
        let at = *observed.lock().unwrap();
        let Some(at) = at else {
            return fail(format!(
                "the handler did not observe the cancellation within {within:?}"
            ));
        };
        emit(json!({"event": "observed", "after_ms": (at - cancelled_at).as_millis() as u64}));
    }
    running.stop().await?;
    let job = ctx.client.get_job(&id).await?;
    ctx.check_job(&job)?;
    ctx.check_runs(runs.load(Ordering::SeqCst))
}

async fn graceful_shutdown(ctx: &Ctx) -> Res {
    let p = ctx.p();
    let e = ctx.e();
    let queue = p.str("queue")?;
    let job_type = p.str("job_type")?;
    let n = p.u64("jobs")?;
    let handler_time = Duration::from_millis(p.u64("handler_ms")?);
    let concurrency = p.u64("concurrency")? as usize;
    let jobs = (0..n)
        .map(|i| {
            NewJob::new(queue.clone(), format!("job-{i}"))
                .options(EnqueueOptions::new().job_type(&job_type))
        })
        .collect();
    let ids: Vec<String> = ctx
        .client
        .enqueue_batch(jobs)
        .await?
        .into_iter()
        .map(|r| r.job_id)
        .collect();
    let running_now = Arc::new(AtomicUsize::new(0));
    let r = running_now.clone();
    // The first worker stops on SIGTERM, as a deployed one would (`Worker::run`).
    let first = ctx
        .worker()?
        .concurrency(concurrency)
        .prefetch(p.u64("prefetch")? as usize)
        .handler(job_type.clone(), move |_job: Job| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(handler_time).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()?;
    let first = tokio::spawn(first.run());
    let want_running = e.u64("running_at_stop")?;
    let want_held = e.u64("held_at_stop")?;
    ctx.until(
        &format!("{want_running} handlers running and {want_held} jobs leased"),
        || async {
            Ok(running_now.load(Ordering::SeqCst) as u64 == want_running
                && ctx.client.queue_stats(&queue).await?.leased == want_held)
        },
    )
    .await?;
    emit(json!({"event": "stopping", "running": want_running, "held": want_held}));
    let pid = std::process::id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    check(killed.is_ok_and(|s| s.success()), || {
        "could not send SIGTERM to the runner itself".into()
    })?;
    let report = match first.await {
        Ok(r) => r?,
        Err(e) => return fail(format!("the first worker failed: {e}")),
    };
    let leased_after = ctx.client.queue_stats(&queue).await?.leased;
    emit(
        json!({"event": "first_worker_stopped", "succeeded": report.succeeded,
        "abandoned": report.abandoned, "leased_after": leased_after}),
    );
    let want = e.u64("first_worker_succeeded")?;
    check(report.succeeded == want, || {
        format!(
            "the first worker acked {} jobs, expected {want}",
            report.succeeded
        )
    })?;
    let want = e.u64("leased_after_stop")?;
    check(leased_after == want, || {
        format!("{leased_after} jobs still LEASED after the worker stopped")
    })?;
    let second = ctx
        .worker()?
        .concurrency(concurrency)
        .handler(job_type, |_job: Job| async { Ok::<_, HandlerError>(()) })
        .build()?;
    let second = Running::start(second);
    let mut finals = Vec::new();
    for id in &ids {
        finals.push(ctx.wait_final(id).await?);
    }
    second.stop().await?;
    let lost = finals
        .iter()
        .filter(|j| j.state != JobState::Succeeded)
        .count() as u64;
    check(lost == e.u64_or("lost", 0)?, || {
        format!("{lost} jobs did not succeed")
    })?;
    finals.iter().try_for_each(|j| ctx.check_job(j))
}

async fn leader_failover(ctx: &Ctx) -> Res {
    let p = ctx.p();
    let e = ctx.e();
    let queue = p.str("queue")?;
    let job_type = p.str("job_type")?;
    let n = p.u64("jobs")?;
    let interval = Duration::from_millis(p.u64_or("enqueue_interval_ms", 0)?);
    let kill_after = p.u64("kill_after_succeeded")? as usize;
    let keyed = p.bool_or("use_idempotency_keys", true)?;
    let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let kill_now = Arc::new(Notify::new());
    let asked = Arc::new(AtomicBool::new(false));
    let (h, k, a) = (handled.clone(), kill_now.clone(), asked.clone());
    let worker = ctx
        .worker()?
        .concurrency(p.u64_or("concurrency", 4)? as usize)
        .handler(job_type.clone(), move |job: Job| {
            let count = {
                let mut h = h.lock().unwrap();
                h.insert(job.id().to_string());
                h.len()
            };
            if count >= kill_after && !a.swap(true, Ordering::SeqCst) {
                k.notify_one();
            }
            async { Ok::<_, HandlerError>(()) }
        })
        .build()?;
    let running = Running::start(worker);
    let client = ctx.client.clone();
    let (q, t) = (queue.clone(), job_type.clone());
    let producer = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..n {
            let mut opts = EnqueueOptions::new().job_type(&t);
            if keyed {
                opts = opts.idempotency_key(format!("{q}-{i}"));
            }
            ids.push(
                client
                    .enqueue_with(&q, format!("job-{i}"), &opts)
                    .await?
                    .job_id,
            );
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
        }
        Ok::<_, taskraft::Error>(ids)
    });
    if tokio::time::timeout(ctx.remaining(), kill_now.notified())
        .await
        .is_err()
    {
        return fail(format!(
            "fewer than {kill_after} jobs ran before the deadline"
        ));
    }
    let node = ctx.kill_leader().await?;
    emit(json!({"event": "leader_killed", "node": node}));
    let ids = match producer.await {
        Ok(r) => r?,
        Err(e) => return fail(format!("the producer task failed: {e}")),
    };
    emit(json!({"event": "enqueued", "jobs": ids.len()}));
    let mut lost = 0u64;
    for id in &ids {
        if ctx.wait_final(id).await?.state != JobState::Succeeded {
            lost += 1;
        }
    }
    running.stop().await?;
    let distinct = ids.iter().collect::<HashSet<_>>().len() as u64;
    let s = ctx.client.queue_stats(&queue).await?;
    let stored = s.ready + s.scheduled + s.leased + s.succeeded + s.dead + s.cancelled;
    let handled = handled.lock().unwrap().len();
    emit(
        json!({"event": "done", "distinct": distinct, "stored": stored, "lost": lost, "handled": handled}),
    );
    check(lost == e.u64_or("lost", 0)?, || {
        format!("{lost} jobs did not succeed")
    })?;
    if e.has("distinct_jobs") {
        let want = e.u64("distinct_jobs")?;
        check(distinct == want, || {
            format!("{distinct} distinct job ids, expected {want}")
        })?;
        check(stored == want, || {
            format!("the queue holds {stored} jobs, expected {want} (an enqueue was stored twice)")
        })?;
    }
    if e.bool_or("all_succeeded", true)? {
        check(s.succeeded == stored, || {
            format!("only {} of {stored} jobs succeeded", s.succeeded)
        })?;
    }
    Ok(())
}

async fn trace_context(ctx: &Ctx) -> Res {
    let p = ctx.p();
    let e = ctx.e();
    let queue = p.str("queue")?;
    let job_type = p.str("job_type")?;
    let traceparent = p.str("traceparent")?;
    let tracestate = if p.has("tracestate") {
        Some(p.str("tracestate")?)
    } else {
        None
    };
    let via: Vec<String> = if p.has("via") {
        serde_json::from_value(p.get("via")?.clone())
            .or_else(|e| fail(format!("params.via: {e}")))?
    } else {
        vec!["metadata".into()]
    };
    let mut ids = Vec::new();
    for how in &via {
        let mut opts = EnqueueOptions::new().job_type(&job_type);
        match how.as_str() {
            "header" => {
                opts = opts.header("traceparent", &traceparent);
                if let Some(s) = &tracestate {
                    opts = opts.header("tracestate", s);
                }
            }
            "metadata" => opts = opts.trace_context(&traceparent, tracestate.clone()),
            other => {
                return Err(Outcome::Unsupported(format!(
                    "unknown trace context carrier {other:?}"
                )))
            }
        }
        ids.push(
            ctx.client
                .enqueue_with(&queue, how.clone(), &opts)
                .await?
                .job_id,
        );
    }
    let seen: Arc<Mutex<HashMap<String, HashMap<String, String>>>> = Arc::default();
    let s = seen.clone();
    let worker = ctx
        .worker()?
        .handler(job_type, move |job: Job| {
            s.lock().unwrap().insert(
                String::from_utf8_lossy(job.payload()).into_owned(),
                job.headers().clone(),
            );
            async { Ok::<_, HandlerError>(()) }
        })
        .build()?;
    let running = Running::start(worker);
    let mut finals = Vec::new();
    for id in &ids {
        finals.push(ctx.wait_final(id).await?);
    }
    running.stop().await?;
    finals.iter().try_for_each(|j| ctx.check_job(j))?;
    let seen = seen.lock().unwrap().clone();
    for how in &via {
        let Some(h) = seen.get(how) else {
            return fail(format!("the handler never saw the job sent via {how}"));
        };
        if e.bool_or("traceparent_equal", true)? {
            check(h.get("traceparent") == Some(&traceparent), || {
                format!(
                    "via {how} the handler saw traceparent {:?}",
                    h.get("traceparent")
                )
            })?;
        }
        if let Some(state) = &tracestate {
            if e.bool_or("tracestate_equal", false)? {
                check(h.get("tracestate") == Some(state), || {
                    format!(
                        "via {how} the handler saw tracestate {:?}",
                        h.get("tracestate")
                    )
                })?;
            }
        }
    }
    Ok(())
}

async fn run(id: &str, ctx: &Ctx) -> Res {
    match id {
        "roundtrip" => roundtrip(ctx).await,
        "priority_order" => priority_order(ctx).await,
        "lease_extension" => lease_extension(ctx).await,
        "retry_until_dead" => retry_until_dead(ctx).await,
        "permanent_error" => permanent_error(ctx).await,
        "cancel_running" => cancel_running(ctx).await,
        "graceful_shutdown" => graceful_shutdown(ctx).await,
        "leader_failover" => leader_failover(ctx).await,
        "trace_context" => trace_context(ctx).await,
        other => Err(Outcome::Unsupported(format!(
            "the Rust runner has no scenario {other:?}"
        ))),
    }
}

/// 40 bits that differ between runs (no rand dependency in this crate).
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish() & 0xff_ffff_ffff
}

fn usage() -> ! {
    eprintln!("usage: conformance-rust <scenario.json> --addrs host:port[,host:port...]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let mut file = None;
    let mut addrs = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--addrs" {
            addrs = args.next();
        } else if let Some(v) = a.strip_prefix("--addrs=") {
            addrs = Some(v.to_string());
        } else if file.is_none() {
            file = Some(a);
        }
    }
    let (Some(file), Some(addrs)) = (file, addrs) else {
        usage()
    };
    let code = match scenario(&file, &addrs).await {
        Ok(()) => {
            emit(json!({"result": "pass"}));
            0
        }
        Err(Outcome::Fail(reason)) => {
            emit(json!({"result": "fail", "reason": reason}));
            1
        }
        Err(Outcome::Unsupported(reason)) => {
            emit(json!({"result": "unsupported", "reason": reason}));
            2
        }
    };
    // Handlers given up on (cancel, shutdown) may still hold runtime tasks.
    std::process::exit(code);
}

async fn scenario(file: &str, addrs: &str) -> Res {
    let text = std::fs::read_to_string(file)
        .or_else(|e| fail(format!("cannot read scenario {file}: {e}")))?;
    let scenario: Value =
        serde_json::from_str(&text).or_else(|e| fail(format!("scenario {file}: {e}")))?;
    let id = scenario["id"].as_str().unwrap_or_default().to_string();
    emit(json!({"event": "start", "scenario": id, "sdk": "rust"}));
    let mut builder = Client::builder().addrs(addrs.split(','));
    if let Ok(token) = std::env::var("TASKRAFT_CONFORMANCE_TOKEN") {
        if !token.is_empty() {
            builder = builder.token(token);
        }
    }
    let client = builder.connect().await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut params = scenario["params"].clone();
    // params.queue is a prefix: a unique suffix keeps runs that share a cluster apart.
    if let Some(q) = params["queue"].as_str() {
        params["queue"] = json!(format!("{q}-{:010x}", rand_suffix()));
    }
    let timeout = params["timeout_ms"].as_u64().unwrap_or(60_000);
    let ctx = Ctx {
        client,
        params,
        expect: scenario["expect"].clone(),
        deadline: Instant::now() + Duration::from_millis(timeout),
        stdin: tokio::sync::Mutex::new(rx),
    };
    // The scenario's own bound, plus a margin for its last checks.
    match tokio::time::timeout(ctx.remaining() + Duration::from_secs(5), run(&id, &ctx)).await {
        Ok(r) => r,
        Err(_) => fail(format!("the scenario did not finish within {timeout} ms")),
    }
}
