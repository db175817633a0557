// The stream protocol's plumbing (`protocol: "stream"`, the default): one `Work`
// session per worker instead of long-polling `Lease` calls.
//
//   free hand slot ──> credit ──> broker pushes a job ──> runJob ──> hand slot freed
//                                                           │ ack / nack / extend
//                                            seq ──> Link ──┴──> answer by seq (reader)
//
// `Link` is the live session as jobs see it: where to send a request and who waits for
// which answer. Between sessions it is empty and every settle goes unary. An answer's
// code maps to the same `TaskraftError` the unary call would throw (the `reason` of a
// FAILED_PRECONDITION included, see errors.ts `fromStatus`), so a job's life in
// runner.ts does not depend on the protocol. A settle waiting when the stream breaks,
// answered UNAVAILABLE (or DEADLINE_EXCEEDED, which the unary call retries too), or not
// answered in time gets `undefined` and is resent as the unary call (a repeated Ack or
// Nack of the same lease answers as the first did).
//
// The session loop itself is `Worker.stream` in worker.ts.

import * as grpc from "@grpc/grpc-js";

import type { WorkConn } from "./client.js";
import { fromStatus } from "./errors.js";
import type { Logger } from "./log.js";
import type { LeasedJob, WorkAnswer, WorkRequest, WorkResponse } from "./proto.js";
import type { Mailbox } from "./sync.js";

/**
 * How long after a break the worker keeps trying to resume on the same node while it
 * cannot reach it (the broker keeps a broken session's jobs for 3 s).
 */
export const RESUME_FOR_MS = 2000;
/** Pause between those tries. */
export const RESUME_RETRY_MS = 100;

type Call = WorkConn["call"];

interface Live {
  generation: number;
  call: Call;
  pending: Map<number, (a: WorkAnswer | undefined) => void>;
}

function drop(live: Live): void {
  // Its waiters fall back to the unary calls.
  const waiters = [...live.pending.values()];
  live.pending.clear();
  for (const w of waiters) w(undefined);
}

/** The live session, if any (see above). */
export class Link {
  private live: Live | undefined;
  private seq = 0;

  /** True while a session is up. */
  get up(): boolean {
    return this.live !== undefined;
  }

  /** Session `generation` is up on `call` (a previous one's waiters go unary). */
  set(generation: number, call: Call): void {
    if (this.live) drop(this.live);
    this.live = { generation, call, pending: new Map() };
  }

  /** Session `generation` ended (a late reader of an old session cannot clear a newer one). */
  clear(generation: number): void {
    const live = this.live;
    if (live && live.generation === generation) {
      this.live = undefined;
      drop(live);
    }
  }

  /** Half-closes the stream after what was sent; settles go unary from now. */
  close(): void {
    const live = this.live;
    this.live = undefined;
    if (live) {
      live.call.end();
      drop(live);
    }
  }

  /** Routes an answer to its waiter. */
  answer(generation: number, a: WorkAnswer): void {
    const live = this.live;
    if (!live || live.generation !== generation) return;
    const w = live.pending.get(a.seq);
    if (w) {
      live.pending.delete(a.seq);
      w(a);
    }
  }

  /** Sends a request that expects no answer (credit, stop); false when no session is up. */
  send(req: WorkRequest): boolean {
    if (!this.live) return false;
    this.live.call.write(req);
    return true;
  }

  /**
   * Sends an ack, nack or extend (`req` without its seq) on the session and waits up
   * to `timeoutMs` for its answer. `undefined`: no session, it broke before answering,
   * no answer in time, `signal` aborted, or the answer was UNAVAILABLE or
   * DEADLINE_EXCEEDED; the caller then makes the unary call, which retries across
   * nodes. Any other failure throws the error the unary call would.
   */
  async call(req: WorkRequest, timeoutMs: number, signal?: AbortSignal): Promise<WorkAnswer | undefined> {
    const live = this.live;
    if (!live || signal?.aborted) return undefined;
    const seq = ++this.seq;
    const a = await new Promise<WorkAnswer | undefined>((resolve) => {
      const finish = (v: WorkAnswer | undefined) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        live.pending.delete(seq);
        resolve(v);
      };
      const onAbort = () => finish(undefined);
      const timer = setTimeout(() => finish(undefined), timeoutMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      live.pending.set(seq, finish);
      live.call.write({ ...req, seq });
    });
    if (a === undefined || a.code === grpc.status.OK) return a;
    if (a.code === grpc.status.UNAVAILABLE || a.code === grpc.status.DEADLINE_EXCEEDED) return undefined;
    throw fromStatus(a.code as grpc.status, a.message, a.reason);
  }
}

/** How a stream ended: undefined when the broker ended it cleanly. */
export type StreamEnd = grpc.ServiceError | undefined;

function isServiceError(e: unknown): e is grpc.ServiceError {
  return typeof e === "object" && e !== null && "code" in e && typeof e.code === "number" && "metadata" in e;
}

/**
 * Reads one stream: jobs into `jobs` (closed when the stream ends), answers to their
 * waiters. Resolves with the error the stream ended with, if any.
 */
export function read(conn: WorkConn, link: Link, generation: number, jobs: Mailbox<LeasedJob>): Promise<StreamEnd> {
  const call = conn.call;
  return new Promise<StreamEnd>((resolve) => {
    let done = false;
    const finish = (end: StreamEnd) => {
      if (done) return;
      done = true;
      call.off("data", onData);
      link.clear(generation);
      jobs.close();
      resolve(end);
    };
    const onData = (msg: WorkResponse) => {
      if (msg.job) jobs.put(msg.job);
      else if (msg.answer) link.answer(generation, msg.answer);
    };
    // grpc-js ends the readable side, emits `error` (not OK) and then `status`; `end`
    // comes once every message before it was read. `status` is the backstop.
    let error: grpc.ServiceError | undefined;
    call.on("data", onData);
    call.on("error", (e: unknown) => {
      if (error === undefined && isServiceError(e)) error = e;
    });
    call.once("end", () => finish(error));
    call.once("status", (s: grpc.StatusObject) => {
      setImmediate(() => {
        if (error === undefined && s.code !== grpc.status.OK) {
          error = Object.assign(new Error(s.details), { code: s.code, details: s.details, metadata: s.metadata });
        }
        finish(error);
      });
    });
    call.resume();
  });
}

/**
 * The node ended the session itself because it is shutting down (nothing to resume
 * there), as opposed to a broken connection.
 */
export function endedByNode(e: StreamEnd): boolean {
  return e !== undefined && e.code === grpc.status.UNAVAILABLE && /shutting down/.test(e.details ?? "");
}

/** A refusal no reconnect fixes. */
export function isFatal(e: StreamEnd): boolean {
  return (
    e !== undefined &&
    (e.code === grpc.status.UNAUTHENTICATED ||
      e.code === grpc.status.PERMISSION_DENIED ||
      e.code === grpc.status.INVALID_ARGUMENT)
  );
}

/**
 * What is left of a session once the worker stops taking jobs: close it after the jobs
 * in hand are settled.
 */
export class Tail {
  constructor(
    private readonly link: Link,
    private readonly conn: WorkConn,
    private readonly reader: Promise<StreamEnd>,
    private readonly waitMs: number,
    private readonly logger: Logger,
  ) {}

  /**
   * Half-closes the stream and waits (bounded) for the broker to end it, i.e. to have
   * given back whatever the session still held.
   */
  async finish(): Promise<void> {
    this.link.close();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), this.waitMs);
    });
    const r = await Promise.race([this.reader, late]);
    clearTimeout(timer);
    if (r === "late") {
      this.logger.warn("the work session did not end in time after closing it");
      this.conn.call.cancel();
      await this.reader;
    }
  }
}
