// The life of one leased job inside a worker:
//
//  leased ──> wait for a run slot ──> handler(job) ──> resolves ──> Ack (result)
//    │                                     │          throws   ──> Nack (dead_letter for PermanentError,
//    │                                     │                          retry_after for RetryableError)
//    └─ lease keeper: ExtendLease every visibility/3 (+ progress, sent soon after a report)
//         ├─ FAILED_PRECONDITION reason=cancelled ──> abort job.signal, nothing to settle
//         └─ lease lost (stale / not found)       ──> abort job.signal, nothing to settle
//  shutdown: not started yet ──> Nack retry_after 1 ms; still running when the drain
//            deadline passes  ──> abort job.signal, Nack retry_after 1 ms
//
// With the stream protocol (session.ts) Ack, Nack and ExtendLease go up the Work stream
// by seq while a session is up, and their answers throw the same errors as the unary
// calls; a settle the stream could not answer (broken, UNAVAILABLE) is resent unary.
//
// JavaScript cannot kill a running function: when the worker stops waiting for a handler
// (cancel, lost lease, drain deadline) it aborts `job.signal`, frees the run slot and
// ignores whatever the handler does later.

import type { Client } from "./client.js";
import {
  FailedPreconditionError,
  JobCancelledError,
  NotFoundError,
  PermanentError,
  RetryableError,
  TaskraftError,
  errorText,
} from "./errors.js";
import { Job, resultBytes, type Handler, type ProgressSink } from "./job.js";
import type { Logger } from "./log.js";
import type { LeasedJob } from "./proto.js";
import type { Link } from "./session.js";
import { Latch, type Semaphore } from "./sync.js";

/** Outcome counters, shared by every job of a worker. */
export interface Counters {
  succeeded: number;
  failed: number;
  abandoned: number;
}

/** What every job of one worker shares. */
export interface Shared {
  client: Client;
  workerId: string;
  handlers: Map<string, Handler>;
  fallback: Handler | undefined;
  visibilityMs: number;
  runSlots: Semaphore;
  /** Opened when shutdown starts: no new handler starts. */
  draining: Latch;
  /** Opened when the drain deadline passes: running handlers are given up. */
  aborting: Latch;
  counters: Counters;
  logger: Logger;
  /** The Work session's link (stream protocol), undefined for the poll protocol. */
  link: Link | undefined;
}

type AckReq = { jobId: string; leaseId: string; result: Buffer };
type NackReq = { jobId: string; leaseId: string; error: string; retryAfterMs: number; deadLetter: boolean };
type ExtendReq = {
  jobId: string;
  leaseId: string;
  visibilityTimeoutMs: number;
  progress: number;
  progressMessage: string;
};

async function ack(shared: Shared, req: AckReq): Promise<void> {
  if (shared.link && (await shared.link.call({ ack: req }, shared.client.callTimeoutMs))) return;
  await shared.client.call("Ack", req);
}

async function nack(shared: Shared, req: NackReq): Promise<void> {
  if (shared.link && (await shared.link.call({ nack: req }, shared.client.callTimeoutMs))) return;
  await shared.client.call("Nack", req);
}

async function extend(shared: Shared, req: ExtendReq, timeoutMs: number, signal: AbortSignal): Promise<void> {
  if (shared.link && (await shared.link.call({ extend: req }, timeoutMs, signal))) return;
  await shared.client.call("ExtendLease", req, { timeoutMs, signal });
}

type LeaseEnd = { kind: "cancelled"; error: TaskraftError } | { kind: "lost"; error: TaskraftError };

type Outcome =
  | { kind: "done"; result: Buffer }
  | { kind: "failed"; error: unknown }
  | { kind: "ended"; end: LeaseEnd }
  | { kind: "interrupted" };

/** Runs one leased job to its end (settled or given up). Never rejects. */
export async function runJob(shared: Shared, leased: LeasedJob): Promise<void> {
  const abort = new AbortController();
  const keeper = new LeaseKeeper(shared, leased, abort);
  let outcome: Outcome;
  try {
    outcome = await execute(shared, leased, keeper, abort);
  } catch (e) {
    outcome = { kind: "failed", error: e };
  }
  keeper.stop();
  await settle(shared, leased, outcome);
}

async function execute(shared: Shared, leased: LeasedJob, keeper: LeaseKeeper, abort: AbortController): Promise<Outcome> {
  const slot = shared.runSlots.acquire();
  const first = await shared.draining.race(
    Promise.race([slot.granted.then(() => "slot" as const), keeper.ended.promise]),
    "draining" as const,
  );
  if (first !== "slot") {
    if (!slot.cancel()) shared.runSlots.release();
    return first === "draining" ? { kind: "interrupted" } : { kind: "ended", end: first };
  }
  try {
    const handler = shared.handlers.get(leased.jobType) ?? shared.fallback;
    if (!handler) {
      return {
        kind: "failed",
        error: new Error(`worker ${shared.workerId} has no handler for job_type ${JSON.stringify(leased.jobType)}`),
      };
    }
    const job = new Job(leased, abort.signal, keeper);
    // A synchronous throw becomes a rejection; the handler's later fate is always observed.
    const task: Promise<Outcome> = Promise.resolve()
      .then(() => handler(job))
      .then(
        (value) => ({ kind: "done", result: resultBytes(value) }) as Outcome,
        (error: unknown) => ({ kind: "failed", error }) as Outcome,
      );
    const outcome: Outcome = await shared.aborting.race(
      Promise.race([task, keeper.ended.promise.then((end) => ({ kind: "ended", end }) as Outcome)]),
      { kind: "interrupted" },
    );
    if (outcome.kind === "interrupted") {
      abort.abort(new TaskraftError("the worker shut down before the job finished"));
    }
    return outcome;
  } finally {
    shared.runSlots.release();
  }
}

async function settle(shared: Shared, leased: LeasedJob, outcome: Outcome): Promise<void> {
  const c = shared.counters;
  const log = shared.logger;
  const ids = { jobId: leased.jobId, attempt: leased.attempt };
  const base = { jobId: leased.jobId, leaseId: leased.leaseId };
  let req: { error: string; retryAfterMs: number; deadLetter: boolean };
  switch (outcome.kind) {
    case "done":
      try {
        await ack(shared, { ...base, result: outcome.result });
        c.succeeded++;
        log.debug("acked", ids);
      } catch (e) {
        c.abandoned++;
        logSettleError(log, "ack", e, ids);
      }
      return;
    case "failed": {
      const e = outcome.error;
      const permanent = e instanceof PermanentError;
      log.info("handler failed", { ...ids, error: errorText(e), permanent });
      c.failed++;
      req = {
        error: errorText(e),
        retryAfterMs: e instanceof RetryableError ? (e.retryAfterMs ?? 0) : 0,
        deadLetter: permanent,
      };
      break;
    }
    case "ended":
      c.abandoned++;
      if (outcome.end.kind === "cancelled") log.info("job cancelled; handler stopped", ids);
      else log.warn("lease lost; handler stopped", { ...ids, error: outcome.end.error.message });
      return;
    case "interrupted":
      c.abandoned++;
      // 1 ms, not 0: 0 would mean the broker's exponential backoff.
      req = { error: "worker shut down before the job finished", retryAfterMs: 1, deadLetter: false };
      break;
  }
  try {
    await nack(shared, { ...base, ...req });
  } catch (e) {
    logSettleError(log, "nack", e, ids);
  }
}

function logSettleError(log: Logger, call: string, e: unknown, ids: Record<string, unknown>): void {
  if (e instanceof JobCancelledError) log.info("job was cancelled meanwhile", { ...ids, call });
  else if (e instanceof FailedPreconditionError || e instanceof NotFoundError) {
    log.warn("lease lost before settling; the job runs again elsewhere", { ...ids, call, error: (e as Error).message });
  } else {
    log.error("settling failed; the job runs again after its lease expires", { ...ids, call, error: errorText(e) });
  }
}

/**
 * Extends the lease every third of the visibility timeout, and soon after a progress
 * report, until stopped or the lease ends (then `ended` opens and the job's signal aborts).
 */
class LeaseKeeper implements ProgressSink {
  readonly ended = new Latch<LeaseEnd>();
  private readonly every: number;
  private readonly minGap: number;
  private last = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private due = 0;
  private inFlight: AbortController | undefined;
  private progress: { percent: number; message: string } | undefined;
  private stopped = false;

  constructor(
    private readonly shared: Shared,
    private readonly leased: LeasedJob,
    private readonly abort: AbortController,
  ) {
    this.every = Math.max(Math.floor(shared.visibilityMs / 3), 10);
    this.minGap = Math.min(this.every, 200);
    this.schedule(this.last + this.every);
  }

  report(percent: number, message: string): void {
    this.progress = { percent, message };
    if (!this.inFlight) this.schedule(Math.max(this.last + this.minGap, Date.now()));
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.inFlight?.abort();
  }

  /** Schedules the next extension at `at`, unless one is due earlier. */
  private schedule(at: number): void {
    if (this.stopped) return;
    if (this.timer && this.due <= at) return;
    if (this.timer) clearTimeout(this.timer);
    this.due = at;
    this.timer = setTimeout(() => void this.extend(), Math.max(0, at - Date.now()));
  }

  private async extend(): Promise<void> {
    this.timer = undefined;
    if (this.stopped) return;
    const ctl = new AbortController();
    this.inFlight = ctl;
    this.last = Date.now();
    const { percent, message } = this.progress ?? { percent: 0, message: "" };
    try {
      const timeoutMs = Math.max(this.every, 1000);
      await extend(
        this.shared,
        {
          jobId: this.leased.jobId,
          leaseId: this.leased.leaseId,
          visibilityTimeoutMs: this.shared.visibilityMs,
          progress: percent,
          progressMessage: message,
        },
        timeoutMs,
        AbortSignal.any([ctl.signal, AbortSignal.timeout(this.shared.visibilityMs)]),
      );
    } catch (e) {
      if (this.stopped) return;
      if (e instanceof JobCancelledError) return this.end({ kind: "cancelled", error: e });
      if (e instanceof FailedPreconditionError || e instanceof NotFoundError) {
        return this.end({ kind: "lost", error: e });
      }
      this.shared.logger.warn("lease extension failed; retrying", { jobId: this.leased.jobId, error: errorText(e) });
    } finally {
      this.inFlight = undefined;
    }
    this.schedule(this.last + this.every);
  }

  private end(end: LeaseEnd): void {
    this.stopped = true;
    this.abort.abort(end.error);
    this.ended.open(end);
  }
}
