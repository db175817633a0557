// `Worker`: gets jobs, runs handlers by `jobType`, settles them, shuts down gracefully.
//
// Jobs come one of two ways (`protocol`):
//
//   "stream" (default): one Work session (session.ts)
//       free hand slot ──> credit ──> broker pushes a job ──> runJob ──> run slot ──> handler
//             ^                                                  │
//             └────────── hand slot freed (credit again) on settle <┘
//   "poll":  Lease(queues, n = free hand slots, wait 20 s) ──> runJob ──> run slot ──> handler
//                 ^                                              │
//                 └──────────── hand slot released on settle <───┘
//
// The worker keeps at most `concurrency + prefetch` jobs in hand and runs at most
// `concurrency` handlers (runner.ts). On the stream, Ack, Nack and ExtendLease go up the
// session by seq and their answers throw the same errors as the unary calls, so a job's
// life does not depend on the protocol; a settle caught by a broken stream is resent as
// the unary call. A broken stream is resumed on the same node with the jobs still held
// (tried for up to 2 s), else a fresh session is opened (on the next node after
// UNAVAILABLE).
//
// Poll protocol: every `Lease` that brings jobs is one Raft log entry, so while all
// handlers are busy and prefetched jobs wait for them, the loop does not lease as soon
// as one slot frees up: it waits until half the slots are free, a handler slot would
// idle, or `leaseLingerMs` (5 ms) has passed, then leases them all in one call.
//
// Shutdown (`shutdown()`, the `stop` given to `runUntil`, or SIGINT/SIGTERM for `run`)
// stops taking jobs (the stream sends WorkStop), gives back jobs that have not started,
// waits up to `shutdownTimeoutMs` for running handlers, then aborts their signals and
// gives those jobs back too, with a 1 ms retry delay so another worker picks them up at
// once. A second SIGINT/SIGTERM skips the wait. Last, the stream is half-closed (the
// broker gives back at once any job it pushed after the stop).

import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";

import { status as grpcStatus } from "@grpc/grpc-js";

import type { Client } from "./client.js";
import {
  ConfigError,
  InvalidArgumentError,
  UnauthenticatedError,
  UnavailableError,
  errorText,
  fromServiceError,
} from "./errors.js";
import type { Handler } from "./job.js";
import type { Logger } from "./log.js";
import type { LeasedJob, WorkRequest } from "./proto.js";
import { runJob, type Shared } from "./runner.js";
import { Link, RESUME_FOR_MS, RESUME_RETRY_MS, Tail, endedByNode, isFatal, read } from "./session.js";
import { Latch, Mailbox, Semaphore } from "./sync.js";

/** How a worker gets its jobs: a `Work` session (default) or `Lease` long polls. */
export type Protocol = "stream" | "poll";

/** Settings of a `Worker`. */
export interface WorkerOptions {
  /** Queues to lease from, in priority order: the first one first. */
  queues: string | readonly string[];
  /** Handlers by `jobType`. More can be added with `Worker.handle`. */
  handlers?: Record<string, Handler>;
  /** Runs jobs whose `jobType` has no handler of its own. */
  defaultHandler?: Handler;
  /** Handlers running at once (default 4). */
  concurrency?: number;
  /** Jobs leased ahead of free run slots, to hide the lease round trip (default 0). Their leases are extended while they wait. */
  prefetch?: number;
  /**
   * Lease length asked for, in ms (default 30 s). The worker extends the lease every
   * third of this while a handler runs, so it bounds how soon a crashed worker's jobs
   * run again, not how long a handler may take.
   */
  visibilityTimeoutMs?: number;
  /** Stops after leasing this many jobs (and finishing them). */
  maxJobs?: number;
  /**
   * How the worker gets jobs. `"stream"` (default): one bidirectional `Work` session;
   * each free slot (`concurrency + prefetch`) is a credit, the broker pushes jobs as
   * credits allow, and acks, nacks and lease extensions go up the same stream (a broken
   * stream is resumed, settles caught by it are resent as unary calls). `"poll"`:
   * long-polling `Lease` calls and unary `Ack`/`Nack`/`ExtendLease`, as before.
   */
  protocol?: Protocol;
  /** Long-poll wait of each `Lease` call, in ms (default 20 s; `protocol: "poll"` only). */
  pollWaitMs?: number;
  /** How long the loop may wait for more free slots before leasing, in ms (default 5; see above; `protocol: "poll"` only). */
  leaseLingerMs?: number;
  /** How long shutdown waits for running handlers before giving them up, in ms (default 30 s). */
  shutdownTimeoutMs?: number;
  /** The id shown in `taskraft workers` (default `<host>-<pid>-<random>`). */
  workerId?: string;
  /** Where to log (default: the client's logger). */
  logger?: Logger;
}

/** What a worker did, returned when it stops. */
export interface Report {
  /** Jobs acked. */
  succeeded: number;
  /** Jobs nacked because the handler threw. */
  failed: number;
  /** Jobs given back (shutdown), cancelled, or whose lease was lost. */
  abandoned: number;
  /** Jobs leased. */
  leased: number;
  /**
   * `protocol: "poll"`: `Lease` calls answered (with jobs, or empty after the long poll).
   * `protocol: "stream"`: `Work` sessions opened (1, plus one per resume or reconnect).
   */
  leaseCalls: number;
}

/** What the job loops of one run count. */
interface LoopState {
  leased: number;
  leaseCalls: number;
  fatal: Error | undefined;
}

function positiveInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new ConfigError(`${name} must be an integer of at least ${min}, got ${v}`);
  return v;
}

/**
 * Leases jobs from some queues and runs handlers on them.
 *
 * ```ts
 * const worker = new Worker(client, { queues: ["emails"], concurrency: 8 });
 * worker.handle("send", async (job) => { await send(job.json(), { signal: job.signal }); });
 * const report = await worker.run(); // until SIGINT / SIGTERM
 * ```
 */
export class Worker {
  /** This worker's id. */
  readonly id: string;
  /** How it gets jobs. */
  readonly protocol: Protocol;
  private readonly client: Client;
  private readonly queues: string[];
  private readonly concurrency: number;
  private readonly hand: number;
  private readonly visibilityMs: number;
  private readonly maxJobs: number | undefined;
  private readonly pollWaitMs: number;
  private readonly lingerMs: number;
  private readonly shutdownTimeoutMs: number;
  private readonly handlers = new Map<string, Handler>();
  private fallback: Handler | undefined;
  private readonly logger: Logger;
  private readonly stop = new Latch();
  private readonly forceStop = new Latch();
  private running = false;

  constructor(client: Client, options: WorkerOptions) {
    this.client = client;
    this.queues = typeof options.queues === "string" ? [options.queues] : [...options.queues];
    if (this.queues.length === 0) throw new ConfigError("name at least one queue");
    const protocol: unknown = options.protocol ?? "stream";
    if (protocol !== "stream" && protocol !== "poll") {
      throw new ConfigError(`protocol must be "stream" or "poll", got ${JSON.stringify(protocol)}`);
    }
    this.protocol = protocol;
    this.concurrency = positiveInt("concurrency", options.concurrency ?? 4, 1);
    const prefetch = positiveInt("prefetch", options.prefetch ?? 0, 0);
    this.hand = this.concurrency + prefetch;
    if (this.hand > 1000) throw new ConfigError("concurrency + prefetch must be at most 1000 (the Lease limit)");
    this.visibilityMs = positiveInt("visibilityTimeoutMs", options.visibilityTimeoutMs ?? 30_000, 30);
    this.maxJobs = options.maxJobs === undefined ? undefined : positiveInt("maxJobs", options.maxJobs, 1);
    this.pollWaitMs = positiveInt("pollWaitMs", options.pollWaitMs ?? 20_000, 0);
    this.lingerMs = positiveInt("leaseLingerMs", options.leaseLingerMs ?? 5, 0);
    this.shutdownTimeoutMs = positiveInt("shutdownTimeoutMs", options.shutdownTimeoutMs ?? 30_000, 0);
    this.id = options.workerId ?? `${hostname() || "worker"}-${process.pid}-${Math.floor(Math.random() * 0x10000).toString(16).padStart(4, "0")}`;
    this.logger = options.logger ?? client.logger;
    for (const [type, h] of Object.entries(options.handlers ?? {})) this.handlers.set(type, h);
    this.fallback = options.defaultHandler;
  }

  /** Runs `handler` for jobs whose `jobType` is `jobType` ("" is the empty type). */
  handle(jobType: string, handler: Handler): this {
    this.handlers.set(jobType, handler);
    return this;
  }

  /** Runs `handler` for jobs whose `jobType` has no handler of its own. */
  handleOther(handler: Handler): this {
    this.fallback = handler;
    return this;
  }

  /** Asks a running worker to shut down gracefully; `run`/`runUntil` resolve when done. */
  shutdown(): void {
    this.stop.open();
  }

  /**
   * Runs until SIGINT or SIGTERM (then shuts down gracefully; a second signal gives up
   * on running handlers at once), `shutdown()`, or `maxJobs`.
   */
  async run(): Promise<Report> {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      this.logger.info(`${sig}: shutting down`, { workerId: this.id });
      this.stop.open();
      if (signals > 1) this.forceStop.open();
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    try {
      return await this.runUntil();
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  }

  /**
   * Runs until `stop` (an AbortSignal or a promise) fires, `shutdown()` is called, or
   * `maxJobs` jobs are done; then shuts down gracefully.
   *
   * Rejects only for problems retrying cannot fix: a refused token or an invalid queue
   * name. An unreachable cluster is retried (and logged) forever.
   */
  async runUntil(stop?: AbortSignal | PromiseLike<unknown>): Promise<Report> {
    if (this.running) throw new ConfigError("a Worker runs once: create a new one to run again");
    if (this.handlers.size === 0 && !this.fallback) {
      throw new ConfigError("register a handler (WorkerOptions.handlers, handle or handleOther)");
    }
    this.running = true;
    if (stop instanceof AbortSignal) {
      if (stop.aborted) this.stop.open();
      else stop.addEventListener("abort", () => this.stop.open(), { once: true });
    } else if (stop) {
      void Promise.resolve(stop).then(
        () => this.stop.open(),
        () => this.stop.open(),
      );
    }
    const shared: Shared = {
      client: this.client,
      workerId: this.id,
      handlers: this.handlers,
      fallback: this.fallback,
      visibilityMs: this.visibilityMs,
      runSlots: new Semaphore(this.concurrency),
      draining: new Latch(),
      aborting: new Latch(),
      counters: { succeeded: 0, failed: 0, abandoned: 0 },
      logger: this.logger,
      link: this.protocol === "stream" ? new Link() : undefined,
    };
    const tasks = new Set<Promise<void>>();
    const hand = new Semaphore(this.hand);
    const st: LoopState = { leased: 0, leaseCalls: 0, fatal: undefined };
    // Runs one job to its end in a hand slot, which it frees when settled.
    const spawn = (job: LeasedJob): Promise<void> => {
      const task: Promise<void> = runJob(shared, job).finally(() => {
        hand.release();
        tasks.delete(task);
      });
      tasks.add(task);
      return task;
    };
    this.logger.info("worker started", { workerId: this.id, queues: this.queues, protocol: this.protocol });
    let tail: Tail | undefined;
    if (shared.link) tail = await this.stream(shared.link, hand, spawn, st);
    else await this.poll(shared, hand, spawn, st);

    const allDone = async () => {
      while (tasks.size > 0) await Promise.all([...tasks]);
    };
    if (!this.stop.isOpen) {
      // maxJobs reached: let every job finish, unless shutdown comes meanwhile.
      await this.stop.race(allDone(), undefined);
    }
    shared.draining.open();
    if (tasks.size > 0) {
      this.logger.info("shutting down: finishing jobs in hand", { workerId: this.id, inFlight: tasks.size });
      // A pending timer would keep the process alive after the worker is done.
      const cancelDeadline = new AbortController();
      const deadline = sleep(this.shutdownTimeoutMs, "timeout" as const, { signal: cancelDeadline.signal }).catch(
        () => "done" as const,
      );
      const forced = this.forceStop.promise.then(() => "timeout" as const);
      const why = await Promise.race([allDone().then(() => "done" as const), deadline, forced]);
      cancelDeadline.abort();
      if (why === "timeout") {
        this.logger.warn("shutdown timeout: giving running jobs back", { workerId: this.id, inFlight: tasks.size });
        shared.aborting.open();
        await allDone();
      }
    }
    if (tail) {
      // Every job is settled: close our side; the broker gives back at once anything it
      // pushed after the stop.
      await tail.finish();
    }
    const c = shared.counters;
    const report: Report = {
      succeeded: c.succeeded,
      failed: c.failed,
      abandoned: c.abandoned,
      leased: st.leased,
      leaseCalls: st.leaseCalls,
    };
    this.logger.info("worker stopped", { workerId: this.id, ...report });
    if (st.fatal) throw st.fatal;
    return report;
  }

  /** The poll protocol's loop: `Lease` calls for the free hand slots, until stopped or `maxJobs`. */
  private async poll(shared: Shared, hand: Semaphore, spawn: (job: LeasedJob) => Promise<void>, st: LoopState): Promise<void> {
    // One abort signal for every lease call: shutdown abandons the long poll.
    const stopLeasing = new AbortController();
    void this.stop.promise.then(() => stopLeasing.abort(new Error("worker shutting down")));
    for (;;) {
      if (this.stop.isOpen) break;
      const remaining = this.maxJobs === undefined ? Infinity : this.maxJobs - st.leased;
      if (remaining <= 0) break;
      const first = hand.acquire();
      if ((await this.stop.race(first.granted, "stop" as const)) === "stop") {
        if (!first.cancel()) hand.release();
        break;
      }
      const want = Math.min(remaining, this.hand);
      let permits = 1;
      while (permits < want && hand.tryAcquire()) permits++;
      // Every handler busy (prefetched jobs wait for them): linger for more free slots
      // so one Lease brings several jobs. A free run slot means a handler would idle,
      // so then lease at once.
      const enough = Math.ceil(want / 2);
      if (permits < enough && this.lingerMs > 0 && shared.runSlots.available === 0) {
        const lingerEnd = sleep(this.lingerMs, "linger" as const);
        // Fair semaphore: granted only when no job waits for a run slot.
        const probe = shared.runSlots.acquire();
        const idle = probe.granted.then(() => "idle" as const);
        while (permits < enough && !this.stop.isOpen) {
          const more = hand.acquire();
          const why = await this.stop.race(
            Promise.race([more.granted.then(() => "slot" as const), lingerEnd, idle]),
            "stop" as const,
          );
          if (why === "slot") {
            permits++;
            while (permits < want && hand.tryAcquire()) permits++;
            continue;
          }
          if (!more.cancel()) permits++;
          break;
        }
        if (!probe.cancel()) shared.runSlots.release();
        if (this.stop.isOpen) {
          for (; permits > 0; permits--) hand.release();
          break;
        }
      }
      // Aborting a lease call on shutdown may, rarely, leave jobs leased to nobody;
      // they run again once their lease expires.
      try {
        const resp = await this.client.call(
          "Lease",
          {
            queues: this.queues,
            workerId: this.id,
            maxJobs: permits,
            visibilityTimeoutMs: this.visibilityMs,
            waitMs: this.pollWaitMs,
          },
          { timeoutMs: this.pollWaitMs + this.client.callTimeoutMs, signal: stopLeasing.signal },
        );
        st.leaseCalls++;
        for (const job of resp.jobs) {
          permits--;
          st.leased++;
          void spawn(job);
        }
      } catch (e) {
        if (this.stop.isOpen) {
          // The lease call was aborted by shutdown.
        } else if (e instanceof UnauthenticatedError || e instanceof InvalidArgumentError) {
          this.logger.error("worker cannot lease; stopping", { workerId: this.id, error: errorText(e) });
          st.fatal = e;
          this.stop.open();
        } else {
          this.logger.warn("lease failed; retrying in 1s", { workerId: this.id, error: errorText(e) });
          const pause = new AbortController();
          await this.stop.race(sleep(1000, undefined, { signal: pause.signal }).catch(() => {}), undefined);
          pause.abort();
        }
      } finally {
        for (; permits > 0; permits--) hand.release();
      }
    }
  }

  /**
   * The stream protocol's loop (session.ts): one `Work` session whose credits are the
   * free hand slots. When the stream breaks, the session is resumed on the same node with
   * the jobs still held (for up to RESUME_FOR_MS while the node cannot be reached), else a
   * fresh one is opened (on the next node after UNAVAILABLE); jobs in hand keep running
   * meanwhile and settle unary. Returns the session to close after the drain, if one is
   * open.
   */
  private async stream(
    link: Link,
    hand: Semaphore,
    spawn: (job: LeasedJob) => Promise<void>,
    st: LoopState,
  ): Promise<Tail | undefined> {
    const holding = new Set<string>();
    // The node, session id and until when a resume is worth trying.
    let resume: { node: number; sessionId: string; until: number } | undefined;
    let generation = 0;
    const log = this.logger;
    const ids = { workerId: this.id };
    for (;;) {
      if (this.stop.isOpen || (this.maxJobs !== undefined && st.leased >= this.maxJobs)) return undefined;
      const tried = resume;
      resume = undefined;
      const open: WorkRequest = {
        open: {
          queues: this.queues,
          workerId: this.id,
          visibilityTimeoutMs: this.visibilityMs,
          resume: tried?.sessionId ?? "",
          holding: tried ? [...holding].sort() : [],
        },
      };
      const opening = this.client.openWork(open, tried?.node);
      const got = await this.stop.race(
        opening.then(
          (conn) => ({ conn }),
          (error: unknown) => ({ error }),
        ),
        "stop" as const,
      );
      if (got === "stop") {
        void opening.then(
          (conn) => conn.call.cancel(),
          () => {},
        );
        return undefined;
      }
      if ("error" in got) {
        const e = got.error;
        if (e instanceof UnauthenticatedError || e instanceof InvalidArgumentError) {
          if (tried) {
            log.warn("cannot resume the work session; opening a fresh one", { ...ids, error: errorText(e) });
            continue;
          }
          log.error("worker cannot open a work session; stopping", { ...ids, error: errorText(e) });
          st.fatal = e;
          this.stop.open();
          return undefined;
        }
        if (e instanceof UnavailableError && tried && Date.now() < tried.until) {
          // The connection may be back soon: the broker keeps the session's jobs for 3 s.
          log.debug("resuming the work session failed; trying again", { ...ids, error: errorText(e) });
          if (!(await this.pause(RESUME_RETRY_MS))) return undefined;
          resume = tried;
          continue;
        }
        if (tried) {
          // NOT_FOUND: its leases ended, or it ran elsewhere; or the node stayed away.
          log.warn("cannot resume the work session; opening a fresh one", { ...ids, error: errorText(e) });
          continue;
        }
        log.warn("opening a work session failed; retrying in 1s", { ...ids, error: errorText(e) });
        if (!(await this.pause(1000))) return undefined;
        continue;
      }
      const conn = got.conn;
      st.leaseCalls++;
      generation++;
      log.info("work session open", {
        ...ids,
        sessionId: conn.opened.sessionId,
        node: conn.node,
        adopted: conn.opened.adopted,
      });
      link.set(generation, conn.call);
      const jobs = new Mailbox<LeasedJob>();
      const reader = read(conn, link, generation, jobs);
      // Credits granted and not used by a push yet.
      let reserved = 0;
      let broken = false;
      for (;;) {
        const left = this.maxJobs === undefined ? Infinity : this.maxJobs - st.leased;
        if (left <= 0) break;
        // How many more credits may be granted (maxJobs counts pushes to come).
        const room = left - reserved;
        if (room > 0) {
          let n = 0;
          while (n < room && hand.tryAcquire()) n++;
          if (n > 0) {
            reserved += n;
            // A failed send means the stream broke: the reader ends it soon.
            link.send({ credit: n });
            continue;
          }
        }
        const next = jobs.take();
        if (next === "closed") {
          broken = true;
          break;
        }
        if (next !== "empty") {
          if (reserved === 0) {
            log.warn("job pushed beyond the credits granted; the session gives it back at the close", {
              ...ids,
              jobId: next.jobId,
            });
            continue;
          }
          reserved--;
          st.leased++;
          holding.add(next.jobId);
          void spawn(next).finally(() => holding.delete(next.jobId));
          continue;
        }
        // Wait for a push (or the end), a free hand slot when more credits may go out, or stop.
        const slot = room > 0 ? hand.acquire() : undefined;
        const waits: Array<Promise<"job" | "slot">> = [jobs.ready().then(() => "job" as const)];
        if (slot) waits.push(slot.granted.then(() => "slot" as const));
        const why = await this.stop.race(Promise.race(waits), "stop" as const);
        if (slot && !slot.cancel()) {
          reserved++;
          if (why !== "stop") link.send({ credit: 1 });
        }
        if (why === "stop") break;
      }
      // Credits not used: the slots are free again (granted anew to the next session; a
      // stopped session forgets them).
      for (; reserved > 0; reserved--) hand.release();
      if (!broken) {
        // Shutdown or maxJobs: no more pushes; acks, nacks and extensions go on until the
        // drain is over and the tail closes the stream.
        link.send({ stop: {} });
        return new Tail(link, conn, reader, this.client.callTimeoutMs, log);
      }
      const err = await reader;
      if (err && isFatal(err)) {
        const fatal = fromServiceError(err);
        log.error("the work session was refused; stopping", { ...ids, error: errorText(fatal) });
        st.fatal = fatal;
        this.stop.open();
        return undefined;
      }
      const why = err ? `${grpcStatus[err.code] ?? err.code}: ${err.details}` : "ended";
      if (endedByNode(err)) {
        // Nothing to resume there: the jobs in hand settle through the next session
        // (or unary meanwhile).
        log.warn("work session ended by its node; opening a new one", { ...ids, why });
      } else {
        log.warn("work stream broke; resuming the session", { ...ids, why });
        resume = { node: conn.node, sessionId: conn.opened.sessionId, until: Date.now() + RESUME_FOR_MS };
      }
    }
  }

  /** Sleeps `ms`; false when shutdown came first. */
  private async pause(ms: number): Promise<boolean> {
    const ctl = new AbortController();
    const r = await this.stop.race(
      sleep(ms, "slept" as const, { signal: ctl.signal }).catch(() => "aborted" as const),
      "stop" as const,
    );
    ctl.abort();
    return r === "slept";
  }
}
