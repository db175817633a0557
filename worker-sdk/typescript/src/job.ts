// What a handler sees: the `Job` (payload, attempt, headers, progress reporting, and an
// `AbortSignal` that fires when the job is cancelled, its lease is lost, or the worker
// gives up waiting for it at shutdown), and what it may return.

import { PermanentError } from "./errors.js";
import type { LeasedJob } from "./proto.js";

/**
 * What a handler may return; stored as the job's result. `undefined`/`null`: empty;
 * a string: its UTF-8 bytes (not JSON-quoted); a `Uint8Array`/`Buffer`: as is; any
 * other value: JSON.
 */
export type HandlerResult = void | undefined | null | string | Uint8Array | object | number | boolean;

/** A job handler. Throwing (or rejecting) nacks the job; see `PermanentError`, `RetryableError`. */
export type Handler = (job: Job) => HandlerResult | Promise<HandlerResult>;

/** Receives progress reports of one job (the worker's lease keeper). */
export interface ProgressSink {
  report(percent: number, message: string): void;
}

/**
 * A leased job, handed to a handler. While the handler runs the worker extends the
 * lease in the background; progress reported here travels with the next extension
 * (sent soon, at most about five times a second).
 */
export class Job {
  /** The job's id. */
  readonly id: string;
  /** The queue it came from. */
  readonly queue: string;
  /** Its dispatch name. */
  readonly jobType: string;
  /** The raw payload. */
  readonly payload: Buffer;
  /** This delivery's number: 1 on the first. */
  readonly attempt: number;
  /** Deliveries allowed in all. */
  readonly maxAttempts: number;
  /** The job's priority. */
  readonly priority: number;
  /** Headers set at enqueue (plus `traceparent`/`tracestate` when the producer sent trace context). */
  readonly headers: Readonly<Record<string, string>>;
  /** The fencing token of this delivery. */
  readonly leaseId: string;
  /**
   * Aborted when the handler should stop: the job was cancelled (`reason` is a
   * `JobCancelledError`), the lease was lost (`LeaseLostError`), or shutdown stopped
   * waiting for the handler. The worker stops waiting for the handler then; pass the
   * signal on to `fetch`, timers, child processes, ... so the work really stops.
   */
  readonly signal: AbortSignal;
  private readonly sink: ProgressSink;

  /** @internal Built by the worker. */
  constructor(leased: LeasedJob, signal: AbortSignal, sink: ProgressSink) {
    this.id = leased.jobId;
    this.queue = leased.queue;
    this.jobType = leased.jobType;
    this.payload = leased.payload;
    this.attempt = leased.attempt;
    this.maxAttempts = leased.maxAttempts;
    this.priority = leased.priority;
    this.headers = leased.headers;
    this.leaseId = leased.leaseId;
    this.signal = signal;
    this.sink = sink;
  }

  /** True when a failure now dead-letters the job. */
  get isLastAttempt(): boolean {
    return this.attempt >= this.maxAttempts;
  }

  /** The W3C `traceparent` the producer sent, if any. */
  get traceparent(): string | undefined {
    return this.headers["traceparent"];
  }

  /** One header. */
  header(key: string): string | undefined {
    return this.headers[key];
  }

  /** The payload as UTF-8 text. */
  text(): string {
    return this.payload.toString("utf8");
  }

  /**
   * The payload decoded as JSON. A payload that does not decode throws a
   * `PermanentError` (retrying cannot fix it), so the job is dead-lettered.
   */
  json<T = unknown>(): T {
    try {
      return JSON.parse(this.text()) as T;
    } catch (e) {
      throw new PermanentError(`payload is not valid JSON: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Reports progress (0-100, clamped) with a short message; stored on the job. */
  progress(percent: number, message = ""): void {
    this.sink.report(Math.max(0, Math.min(100, Math.round(percent))), message);
  }
}

/** Encodes what a handler returned. */
export function resultBytes(value: unknown): Buffer {
  if (value === undefined || value === null) return Buffer.alloc(0);
  if (typeof value === "string") return Buffer.from(value, "utf8");
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    throw new PermanentError(`result does not encode as JSON: ${(e as Error).message}`, { cause: e });
  }
  if (json === undefined) throw new PermanentError(`result of type ${typeof value} does not encode as JSON`);
  return Buffer.from(json, "utf8");
}
