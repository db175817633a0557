// What goes into an enqueue (`EnqueueOptions`, `NewJob`), what comes back (`Enqueued`),
// and jobs as the broker reports them (`JobInfo`, `JobState`).

import { randomBytes } from "node:crypto";

import type { EnqueueRequest, WireJob, WireJobState } from "./proto.js";
import { ConfigError } from "./errors.js";

/** A payload: raw bytes, or a string sent as UTF-8. */
export type Payload = Uint8Array | string;

/** Optional fields of an enqueue. Every field defaults to the broker's default. */
export interface EnqueueOptions {
  /** The name workers dispatch on (`WorkerOptions.handlers`). */
  jobType?: string;
  /** Higher runs first; equal priorities run in FIFO order. */
  priority?: number;
  /** Keeps the job scheduled this long (ms) before it can run. Exclusive with `runAt`. */
  delayMs?: number;
  /** Runs the job at (or after) this time (a Date or Unix ms). Exclusive with `delayMs`. */
  runAt?: Date | number;
  /** Deliveries allowed before the job is dead-lettered (0 or unset: the broker's default). */
  maxAttempts?: number;
  /**
   * A second enqueue with the same (queue, key) inside the broker's dedup window returns
   * the first job's id with `duplicate: true` and stores nothing. The client's own
   * retries of one call never store a job twice even without a key (each call carries a
   * request id, see `Client`); set a key when separate calls, e.g. a producer that
   * restarts and sends again, must not store the job twice.
   */
  idempotencyKey?: string;
  /** Headers the worker sees on the job. */
  headers?: Record<string, string>;
  /** The broker POSTs a signed event here when the job succeeds or dies. */
  webhookUrl?: string;
}

/** One job of a batch: queue, payload and options. */
export interface NewJob extends EnqueueOptions {
  queue: string;
  payload: Payload;
}

/** The broker's answer to an enqueue. */
export interface Enqueued {
  /** The job's id (of the first job when `duplicate`). */
  jobId: string;
  /**
   * True when nothing was stored because the job already was: its idempotency key
   * matched an earlier job, or an earlier attempt of this same call (whose answer was
   * lost) stored it.
   */
  duplicate: boolean;
}

/** Per-call options of producer calls. */
export interface CallOptions {
  /**
   * W3C trace context of the producer's span, sent as `traceparent` metadata: the broker
   * continues the trace and stores it in the job's headers, so the handler gets it.
   */
  traceparent?: string;
  /** W3C `tracestate`, sent along with `traceparent`. */
  tracestate?: string;
  /** Deadline of each attempt of this call in ms (default: the client's `callTimeoutMs`). */
  timeoutMs?: number;
}

/** Encodes a payload as bytes. */
export function toBytes(payload: Payload): Buffer {
  return typeof payload === "string" ? Buffer.from(payload, "utf8") : Buffer.from(payload);
}

function nonNegativeInt(field: string, v: number | undefined): number {
  if (v === undefined) return 0;
  if (!Number.isFinite(v) || v < 0) throw new ConfigError(`${field} must be a non-negative number, got ${v}`);
  return Math.round(v);
}

/**
 * A fresh request id: 32 random hex characters (like the Rust SDK's). The broker answers
 * a second enqueue with the same (queue, request id) within 5 minutes with the first
 * job (`duplicate: true`) and stores nothing, so every attempt of one call must carry
 * the same id, and every call its own.
 */
export function newRequestId(): string {
  return randomBytes(16).toString("hex");
}

/**
 * The wire request of one job, with a fresh `requestId`. Build it once per call: the
 * client's retries resend this same object, so they carry the same id.
 */
export function toRequest(queue: string, payload: Payload, o: EnqueueOptions = {}): EnqueueRequest {
  if (o.delayMs !== undefined && o.runAt !== undefined) {
    throw new ConfigError("set delayMs or runAt, not both");
  }
  const runAt = o.runAt instanceof Date ? o.runAt.getTime() : o.runAt;
  return {
    queue,
    payload: toBytes(payload),
    jobType: o.jobType ?? "",
    priority: o.priority ?? 0,
    delayMs: nonNegativeInt("delayMs", o.delayMs),
    // A time in the past means "now": 1 ms is the earliest the API can express.
    runAtMs: runAt === undefined ? 0 : Math.max(1, nonNegativeInt("runAt", runAt)),
    maxAttempts: nonNegativeInt("maxAttempts", o.maxAttempts),
    idempotencyKey: o.idempotencyKey ?? "",
    headers: o.headers ?? {},
    webhookUrl: o.webhookUrl ?? "",
    requestId: newRequestId(),
  };
}

/** Where a job is in its life. */
export type JobState =
  | "SCHEDULED"
  | "READY"
  | "LEASED"
  | "SUCCEEDED"
  | "DEAD"
  | "CANCELLED"
  | "UNKNOWN";

/** True for states a job never leaves by itself (succeeded, dead, cancelled). */
export function isFinal(state: JobState): boolean {
  return state === "SUCCEEDED" || state === "DEAD" || state === "CANCELLED";
}

/** The wire enum value of a state. */
export function toWireState(state: JobState | undefined): WireJobState {
  if (state === undefined) return "JOB_STATE_UNSPECIFIED";
  if (state === "UNKNOWN") throw new ConfigError("state: UNKNOWN is not a filter");
  return `JOB_STATE_${state}`;
}

function fromWireState(s: WireJobState): JobState {
  const short = s.replace(/^JOB_STATE_/, "");
  switch (short) {
    case "SCHEDULED":
    case "READY":
    case "LEASED":
    case "SUCCEEDED":
    case "DEAD":
    case "CANCELLED":
      return short;
    default:
      return "UNKNOWN";
  }
}

/** A job as the broker reports it (`Client.getJob`, `listJobs`, `cancelJob`, ...). */
export interface JobInfo {
  jobId: string;
  queue: string;
  jobType: string;
  state: JobState;
  /** Deliveries so far (1 on the first). */
  attempt: number;
  maxAttempts: number;
  priority: number;
  payload: Buffer;
  /** What the handler returned (succeeded jobs). */
  result: Buffer;
  /** The last handler error (retried or dead jobs). */
  lastError: string;
  createdAtMs: number;
  runAtMs: number;
  /** Last reported progress, 0-100. */
  progress: number;
  progressMessage: string;
  /** Deliveries that ended because the lease ran out (worker crash or hang). */
  expirations: number;
  headers: Record<string, string>;
  leaseDeadlineMs: number;
  workerId: string;
  finishedAtMs: number;
  /** When retention removes the job (0 while it is live). */
  expiresAtMs: number;
  webhookUrl: string;
}

/** Converts the wire `Job`. */
export function toJobInfo(j: WireJob): JobInfo {
  return {
    jobId: j.jobId,
    queue: j.queue,
    jobType: j.jobType,
    state: fromWireState(j.state),
    attempt: j.attempt,
    maxAttempts: j.maxAttempts,
    priority: j.priority,
    payload: j.payload,
    result: j.result,
    lastError: j.lastError,
    createdAtMs: j.createdAtMs,
    runAtMs: j.runAtMs,
    progress: j.progress,
    progressMessage: j.progressMessage,
    expirations: j.expirations,
    headers: j.headers,
    leaseDeadlineMs: j.leaseDeadlineMs,
    workerId: j.workerId,
    finishedAtMs: j.finishedAtMs,
    expiresAtMs: j.expiresAtMs,
    webhookUrl: j.webhookUrl,
  };
}
