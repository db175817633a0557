// `Client`: producer and admin calls against a taskraft cluster.
//
// Any node serves any call (followers forward to the leader), but the leader serves it
// without a hop, so the client keeps one lazily connected channel per address, asks the
// current node who leads before its first call (and after every failure), and moves on
// to the next address when a call fails with UNAVAILABLE or the node does not answer
// within the call's deadline:
//
//   call ──> node[i] ──ok──> answer
//              │ UNAVAILABLE / connect error / no answer in time
//              └──> i = i + 1, sleep 50 ms .. 1 s (doubling, ±20 %) ──> again,
//                   until the retry window (default 30 s) is used up
//
// Every other error is thrown at once, classified (errors.ts). Each attempt carries its
// own deadline and the bearer token when one is set.
//
// Retrying an enqueue after UNAVAILABLE or a deadline cannot store the job twice, even
// when the first attempt committed and only its answer was lost: every enqueue request
// (each job of a batch) carries a random `requestId`, built once per call before the
// retry loop, so every attempt sends the same one, and the broker answers a repeat
// within 5 minutes with the first job (`duplicate: true`). An `idempotencyKey` does the
// same across separate calls, for as long as the broker's dedup window.

import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import * as grpc from "@grpc/grpc-js";

import { ConfigError, TaskraftError, TimeoutError, UnavailableError, fromServiceError } from "./errors.js";
import { stderrLogger, type Logger } from "./log.js";
import {
  isFinal,
  toJobInfo,
  toRequest,
  toWireState,
  type CallOptions,
  type Enqueued,
  type EnqueueOptions,
  type JobInfo,
  type JobState,
  type NewJob,
  type Payload,
} from "./options.js";
import {
  method,
  type ClusterStatus,
  type MethodName,
  type Methods,
  type QueueStats,
  type WorkerInfo,
  type WorkOpened,
  type WorkRequest,
  type WorkResponse,
} from "./proto.js";

const MAX_MESSAGE = 64 << 20;

/** TLS settings (the broker serves TLS with `taskraft serve --tls-cert --tls-key`, or sits behind a TLS proxy). */
export interface TlsOptions {
  /** PEM file of the CA that signed the server certificate (default: the system roots). */
  caFile?: string;
  /** The CA certificate(s) as PEM, instead of `caFile`. */
  ca?: string | Buffer;
  /** Overrides the name checked against the certificate. */
  serverName?: string;
}

/** Settings of a `Client`. */
export interface ClientOptions {
  /** Sends `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Connects over TLS (also implied by `https://` addresses). */
  tls?: boolean | TlsOptions;
  /** Deadline of one attempt of one call in ms (default 10 s; long polls add their wait). */
  callTimeoutMs?: number;
  /** How long a call keeps retrying UNAVAILABLE across the nodes, in ms (default 30 s; 0: one attempt). */
  retryForMs?: number;
  /** Where to log (default: stderr, level from `TASKRAFT_LOG`, warn and above). */
  logger?: Logger;
}

/** Options of one raw call (`Client.call`). */
export interface RawCallOptions {
  /** Deadline of each attempt in ms (default: `callTimeoutMs`). */
  timeoutMs?: number;
  /** Extra metadata (e.g. `traceparent`). */
  metadata?: Record<string, string>;
  /** Aborts the call (and its retries). */
  signal?: AbortSignal;
}

/** Leader, term, members and log indexes, as the answering node sees them. */
export type { ClusterStatus, QueueStats, WorkerInfo };

/** A `Work` stream just opened (`Client.openWork`). */
export interface WorkConn {
  /** Index of the node it runs on (a resume must come back to it). */
  node: number;
  /**
   * The call, paused after the first answer: attach a `data` listener and `resume()`
   * it to read pushes and answers; `write` requests, `end()` half-closes.
   */
  call: grpc.ClientDuplexStream<WorkRequest, WorkResponse>;
  /** The session's first answer. */
  opened: WorkOpened;
}

interface Node {
  addr: string;
  bare: string;
  channel: grpc.Client;
}

function bareAddr(a: string): string {
  return a.replace(/^[a-z]+:\/\//i, "").replace(/\/+$/, "");
}

/** The gRPC code of a failed call, or undefined when `e` is not a gRPC error. */
function grpcCode(e: unknown): grpc.status | undefined {
  return typeof e === "object" && e !== null && "code" in e && typeof e.code === "number" && "metadata" in e
    ? (e.code as grpc.status)
    : undefined;
}

/**
 * A handle to a taskraft cluster. Connections are opened on first use, so a cluster
 * that is still starting is not an error. Call `close()` when done.
 *
 * ```ts
 * const client = new Client(["127.0.0.1:7070", "127.0.0.1:7080"], { token: "s3cret" });
 * const { jobId } = await client.enqueue("emails", "hello", { jobType: "send" });
 * console.log((await client.getJob(jobId)).state);
 * ```
 */
export class Client {
  /** The node addresses, comma separated. */
  readonly addrs: string;
  /** Deadline of one attempt of one call, in ms. */
  readonly callTimeoutMs: number;
  /** The logger given in the options (or the default). */
  readonly logger: Logger;
  private readonly nodes: Node[];
  private readonly token: string | undefined;
  private readonly retryForMs: number;
  private current = 0;
  /** False until a call has asked a node who leads (and again after a failure). */
  private leaderKnown = false;
  private closed = false;

  constructor(addrs: string | readonly string[], options: ClientOptions = {}) {
    const list = (typeof addrs === "string" ? addrs.split(",") : [...addrs]).map((a) => a.trim()).filter(Boolean);
    if (list.length === 0) throw new ConfigError("no node address given");
    const callTimeoutMs = options.callTimeoutMs ?? 10_000;
    if (!(callTimeoutMs > 0)) throw new ConfigError("callTimeoutMs must be above zero");
    const retryForMs = options.retryForMs ?? 30_000;
    if (!(retryForMs >= 0)) throw new ConfigError("retryForMs must be zero or more");
    if (options.token !== undefined && !/^[\x20-\x7e]+$/.test(options.token)) {
      throw new ConfigError("the token must be printable ASCII");
    }
    this.addrs = list.join(",");
    this.callTimeoutMs = callTimeoutMs;
    this.retryForMs = retryForMs;
    this.token = options.token;
    this.logger = options.logger ?? stderrLogger();
    const channelOptions: grpc.ChannelOptions = {
      "grpc.max_receive_message_length": MAX_MESSAGE,
      "grpc.max_send_message_length": MAX_MESSAGE,
      // A restarted node is found again within a second, not after minutes of backoff.
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 1000,
    };
    const tls = options.tls;
    if (typeof tls === "object" && tls.serverName) channelOptions["grpc.ssl_target_name_override"] = tls.serverName;
    this.nodes = list.map((addr) => {
      const bare = bareAddr(addr);
      if (!/^[^\s/]+:\d+$/.test(bare)) throw new ConfigError(`invalid address ${JSON.stringify(addr)}: expected host:port`);
      const secure = tls !== undefined && tls !== false ? true : /^https:\/\//i.test(addr);
      return { addr, bare, channel: new grpc.Client(bare, credentials(secure, tls), channelOptions) };
    });
  }

  /**
   * Runs one call of either service by method name, with the client's retries, deadline
   * and token. The typed methods below are built on it; use it for calls they lack.
   * Every attempt sends `request` as given: a raw `Enqueue` is only safe to retry when
   * it carries a `requestId` (or an `idempotencyKey`), which this method does not add.
   */
  async call<M extends MethodName>(
    name: M,
    request: Methods[M]["req"],
    options: RawCallOptions = {},
  ): Promise<Methods[M]["res"]> {
    if (this.closed) throw new ConfigError("the client is closed");
    const timeoutMs = options.timeoutMs ?? this.callTimeoutMs;
    const giveUp = Date.now() + this.retryForMs;
    let backoff = 50;
    for (;;) {
      await this.preferLeader();
      const idx = this.current % this.nodes.length;
      let error: unknown;
      try {
        return (await this.attempt(idx, name, request, timeoutMs, options)) as Methods[M]["res"];
      } catch (e) {
        error = e;
      }
      const code = grpcCode(error);
      if (code === undefined) throw error;
      if (code === grpc.status.CANCELLED && options.signal?.aborted) throw abortError(options.signal);
      const e = error as grpc.ServiceError;
      if (code !== grpc.status.UNAVAILABLE && code !== grpc.status.DEADLINE_EXCEEDED) {
        throw fromServiceError(e);
      }
      // Try the next node (and ask it who leads); another call may have moved on already.
      this.leaderKnown = false;
      if (this.current % this.nodes.length === idx) this.current = (idx + 1) % this.nodes.length;
      // Keep trying for the whole window: the last pause is cut to what is left, so
      // the error comes no sooner than retryForMs after the first attempt.
      const left = giveUp - Date.now();
      const pause = Math.min(backoff * (0.8 + 0.4 * Math.random()), Math.max(left, 0));
      const detail = e.details || e.message;
      if (left <= 0) {
        throw code === grpc.status.DEADLINE_EXCEEDED
          ? new TimeoutError(`${name} at ${this.nodes[idx]?.addr}: no answer within ${timeoutMs} ms`)
          : new UnavailableError(this.addrs, detail);
      }
      this.logger.debug("retrying after UNAVAILABLE", { method: name, addr: this.nodes[idx]?.addr, error: detail });
      try {
        await sleep(pause, undefined, options.signal ? { signal: options.signal } : {});
      } catch {
        throw abortError(options.signal);
      }
      backoff = Math.min(backoff * 2, 1000);
    }
  }

  private metadata(extra?: Record<string, string>): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.token !== undefined) md.set("authorization", `Bearer ${this.token}`);
    for (const [k, v] of Object.entries(extra ?? {})) md.set(k, v);
    return md;
  }

  private attempt(
    idx: number,
    name: MethodName,
    request: unknown,
    timeoutMs: number,
    options: RawCallOptions,
  ): Promise<unknown> {
    const node = this.nodes[idx] as Node;
    const def = method(name);
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise((resolve, reject) => {
      let onAbort: (() => void) | undefined;
      const call = node.channel.makeUnaryRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        request,
        this.metadata(options.metadata),
        { deadline: Date.now() + timeoutMs },
        (err, value) => {
          if (onAbort) signal?.removeEventListener("abort", onAbort);
          if (err) reject(err);
          else resolve(value);
        },
      );
      if (signal) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }

  /**
   * Unless the leader is known, asks the current node who leads and, if the leader is
   * one of our addresses, sends the next calls there. Best effort: on any failure the
   * current node stays.
   */
  private async preferLeader(): Promise<void> {
    if (this.leaderKnown) return;
    this.leaderKnown = true; // one ask at a time
    if (this.nodes.length < 2) return;
    const idx = this.current % this.nodes.length;
    let status: ClusterStatus;
    try {
      status = (await this.attempt(idx, "GetClusterStatus", {}, 1000, {})) as ClusterStatus;
    } catch {
      return;
    }
    const leader = status.nodes.find((n) => n.id === status.leaderId);
    if (!leader) {
      // No leader known (an election is under way): the next call asks again, so a
      // client that failed over during an election does not stay on a follower for good.
      this.leaderKnown = false;
      return;
    }
    const pos = this.nodes.findIndex((n) => n.bare === bareAddr(leader.addr));
    if (pos >= 0) this.current = pos;
  }

  /**
   * Opens a `Work` session (what `Worker` uses by default): sends `open` (a
   * `WorkRequest` with `open` set) and waits up to `callTimeoutMs` for `WorkOpened`.
   * `node`: the index of the node to open it on (a resume must go back to the node of
   * the session), else the current one (the leader once known). One attempt:
   * UNAVAILABLE, a connection failure or no answer in time throw `UnavailableError` and
   * move later calls to the next node; any other status throws its error (`NotFoundError`
   * for a resume the node does not know).
   */
  async openWork(open: WorkRequest, node?: number): Promise<WorkConn> {
    if (this.closed) throw new ConfigError("the client is closed");
    let idx: number;
    if (node === undefined) {
      await this.preferLeader();
      idx = this.current % this.nodes.length;
    } else {
      idx = node % this.nodes.length;
    }
    const n = this.nodes[idx] as Node;
    const def = method("Work");
    const call = n.channel.makeBidiStreamRequest(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      this.metadata(),
      {},
    ) as grpc.ClientDuplexStream<WorkRequest, WorkResponse>;
    const first = await new Promise<{ ok: WorkResponse } | { error: unknown } | { timeout: true }>((resolve) => {
      const timer = setTimeout(() => finish({ timeout: true }), this.callTimeoutMs);
      const onData = (msg: WorkResponse) => {
        // Later messages wait for the caller's reader.
        call.pause();
        finish({ ok: msg });
      };
      const onError = (error: unknown) => finish({ error });
      const onEnd = () => finish({ error: new TaskraftError("the Work stream ended before it opened") });
      const finish = (r: { ok: WorkResponse } | { error: unknown } | { timeout: true }) => {
        clearTimeout(timer);
        call.off("data", onData);
        call.off("error", onError);
        call.off("end", onEnd);
        resolve(r);
      };
      call.on("data", onData);
      call.on("error", onError);
      call.on("end", onEnd);
      call.write(open);
    });
    // The reader watches for errors from here on; this listener only keeps one that comes
    // before it (or after a cancel) from going unhandled.
    call.on("error", () => {});
    let why: string;
    if ("ok" in first) {
      if (first.ok.opened) {
        return { node: idx, call, opened: first.ok.opened };
      }
      call.cancel();
      throw new TaskraftError(`the Work session's first answer must be WorkOpened, got ${first.ok.kind ?? "nothing"}`);
    } else if ("timeout" in first) {
      call.cancel();
      why = `no answer to Work within ${this.callTimeoutMs} ms`;
    } else {
      const code = grpcCode(first.error);
      if (code === undefined) throw first.error;
      const e = first.error as grpc.ServiceError;
      if (code !== grpc.status.UNAVAILABLE) throw fromServiceError(e);
      why = e.details || e.message;
    }
    // Like a unary call's UNAVAILABLE: later calls go to the next node.
    this.leaderKnown = false;
    if (this.current % this.nodes.length === idx) this.current = (idx + 1) % this.nodes.length;
    throw new UnavailableError(n.addr, why);
  }

  /** Closes every connection. In-flight calls fail. */
  close(): void {
    this.closed = true;
    for (const n of this.nodes) n.channel.close();
  }

  // ---- producer calls ----

  /**
   * Enqueues `payload` (bytes, or a string sent as UTF-8) on `queue`. The request, with
   * its fresh request id, is built once here and resent as is by every retry, so a retry
   * whose first attempt was stored returns that job (`duplicate: true`).
   */
  async enqueue(queue: string, payload: Payload, options: EnqueueOptions & CallOptions = {}): Promise<Enqueued> {
    const request = toRequest(queue, payload, options);
    const r = await this.call("Enqueue", request, callOptions(options));
    return { jobId: r.jobId, duplicate: r.duplicate };
  }

  /** Enqueues `value` encoded as JSON. */
  async enqueueJson(queue: string, value: unknown, options: EnqueueOptions & CallOptions = {}): Promise<Enqueued> {
    return this.enqueue(queue, JSON.stringify(value), options);
  }

  /**
   * Enqueues many jobs in one call: all are stored, or none (the error names the index
   * of a refused job, e.g. `jobs[7]`). At most 10,000 per call. Results are in order.
   * Each job gets its own request id, built once; a retried batch whose first attempt
   * was stored answers every job with `duplicate: true`.
   */
  async enqueueBatch(jobs: readonly NewJob[], options: CallOptions = {}): Promise<Enqueued[]> {
    const request = { jobs: jobs.map((j) => toRequest(j.queue, j.payload, j)) };
    const r = await this.call("EnqueueBatch", request, callOptions(options));
    return r.results.map((x) => ({ jobId: x.jobId, duplicate: x.duplicate }));
  }

  /** Reads one job (linearizable). */
  async getJob(jobId: string): Promise<JobInfo> {
    return toJobInfo(await this.call("GetJob", { jobId }));
  }

  /**
   * Polls a job until it is succeeded, dead or cancelled; throws `TimeoutError` when
   * `timeoutMs` passes first.
   */
  async waitForJob(jobId: string, timeoutMs: number): Promise<JobInfo> {
    const deadline = Date.now() + timeoutMs;
    let pause = 20;
    for (;;) {
      const job = await this.getJob(jobId);
      if (isFinal(job.state)) return job;
      if (Date.now() + pause > deadline) {
        throw new TimeoutError(`job ${jobId} still ${job.state} after ${timeoutMs} ms`);
      }
      await sleep(pause);
      pause = Math.min(pause * 2, 500);
    }
  }

  /**
   * Cancels a job that has not finished. A worker holding it learns it at its next
   * lease extension and aborts the handler's `signal`.
   */
  async cancelJob(jobId: string): Promise<JobInfo> {
    return toJobInfo(await this.call("CancelJob", { jobId }));
  }

  // ---- admin calls ----

  /** Brings a dead or cancelled job back to READY with fresh attempts. */
  async retryJob(jobId: string): Promise<JobInfo> {
    return toJobInfo(await this.call("RetryJob", { jobId }));
  }

  /** Counts of one queue. */
  async queueStats(queue: string): Promise<QueueStats> {
    return this.call("GetQueueStats", { queue });
  }

  /** Counts of every queue. */
  async listQueues(): Promise<QueueStats[]> {
    return (await this.call("ListQueues", {})).queues;
  }

  /** Stops handing out the queue's jobs (enqueues still work). */
  async pauseQueue(queue: string): Promise<QueueStats> {
    return this.call("PauseQueue", { queue });
  }

  /** Undoes `pauseQueue`. */
  async resumeQueue(queue: string): Promise<QueueStats> {
    return this.call("ResumeQueue", { queue });
  }

  /** Moves every dead job of `queue` back to READY; returns how many. */
  async redriveDeadJobs(queue: string): Promise<number> {
    return (await this.call("RedriveDeadJobs", { queue })).count;
  }

  /** Up to `limit` (at most 1000, default 100) jobs of `queue`, oldest first, optionally only those in `state`. */
  async listJobs(queue: string, options: { state?: JobState; limit?: number } = {}): Promise<JobInfo[]> {
    const r = await this.call("ListJobs", {
      queue,
      state: toWireState(options.state),
      limit: options.limit ?? 0,
      pageToken: "",
    });
    return r.jobs.map(toJobInfo);
  }

  /** Leader, term, members and log indexes as seen by the node that answers. */
  async clusterStatus(): Promise<ClusterStatus> {
    return this.call("GetClusterStatus", {});
  }

  /** Workers the cluster has seen leasing recently. */
  async listWorkers(): Promise<WorkerInfo[]> {
    return (await this.call("ListWorkers", {})).workers;
  }
}

function callOptions(o: CallOptions): RawCallOptions {
  const metadata: Record<string, string> = {};
  if (o.traceparent) metadata["traceparent"] = o.traceparent;
  if (o.tracestate) metadata["tracestate"] = o.tracestate;
  return o.timeoutMs === undefined ? { metadata } : { metadata, timeoutMs: o.timeoutMs };
}

function credentials(secure: boolean, tls: ClientOptions["tls"]): grpc.ChannelCredentials {
  if (!secure) return grpc.credentials.createInsecure();
  let ca: Buffer | null = null;
  if (typeof tls === "object") {
    if (tls.ca !== undefined) ca = Buffer.from(tls.ca);
    else if (tls.caFile !== undefined) {
      try {
        ca = readFileSync(tls.caFile);
      } catch (e) {
        throw new ConfigError(`cannot read tls.caFile ${tls.caFile}: ${(e as Error).message}`);
      }
    }
  }
  return grpc.credentials.createSsl(ca);
}

function abortError(signal: AbortSignal | undefined): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error) return reason;
  return new TaskraftError("the call was aborted");
}
