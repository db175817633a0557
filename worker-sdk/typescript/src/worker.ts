// `Worker`: leases jobs, runs handlers by `jobType`, settles them, shuts down gracefully.
//
// The lease loop keeps at most `concurrency + prefetch` jobs in hand. It long-polls
// `Lease` for as many jobs as it has free hand slots and starts each job (runner.ts),
// which waits for one of the `concurrency` run slots, runs the handler and acks or nacks:
//
//  Lease(queues, n = free hand slots, wait 20 s) ──> runJob ──> run slot ──> handler
//        ^                                              │
//        └──────────── hand slot released on settle <───┘
//
// Every `Lease` that brings jobs is one Raft log entry, so while all handlers are busy
// and prefetched jobs wait for them, the loop does not lease as soon as one slot frees
// up: it waits until half the slots are free, a handler slot would idle, or
// `leaseLingerMs` (5 ms) has passed, then leases them all in one call.
//
// Shutdown (`shutdown()`, the `stop` given to `runUntil`, or SIGINT/SIGTERM for `run`)
// stops leasing, gives back jobs that have not started, waits up to `shutdownTimeoutMs`
// for running handlers, then aborts their signals and gives those jobs back too, with a
// 1 ms retry delay so another worker picks them up at once. A second SIGINT/SIGTERM
// skips the wait.

import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";

import type { Client } from "./client.js";
import { ConfigError, InvalidArgumentError, UnauthenticatedError, errorText } from "./errors.js";
import type { Handler } from "./job.js";
import type { Logger } from "./log.js";
import { runJob, type Shared } from "./runner.js";
import { Latch, Semaphore } from "./sync.js";

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
  /** Long-poll wait of each `Lease` call, in ms (default 20 s). */
  pollWaitMs?: number;
  /** How long the loop may wait for more free slots before leasing, in ms (default 5; see above). */
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
  /** `Lease` calls answered (with jobs, or empty after the long poll). */
  leaseCalls: number;
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
    };
    const tasks = new Set<Promise<void>>();
    const hand = new Semaphore(this.hand);
    let leased = 0;
    let leaseCalls = 0;
    let fatal: Error | undefined;
    // One abort signal for every lease call: shutdown abandons the long poll.
    const stopLeasing = new AbortController();
    void this.stop.promise.then(() => stopLeasing.abort(new Error("worker shutting down")));
    this.logger.info("worker started", { workerId: this.id, queues: this.queues });

    for (;;) {
      if (this.stop.isOpen) break;
      const remaining = this.maxJobs === undefined ? Infinity : this.maxJobs - leased;
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
        leaseCalls++;
        for (const job of resp.jobs) {
          permits--;
          leased++;
          const task: Promise<void> = runJob(shared, job).finally(() => {
            hand.release();
            tasks.delete(task);
          });
          tasks.add(task);
        }
      } catch (e) {
        if (this.stop.isOpen) {
          // The lease call was aborted by shutdown.
        } else if (e instanceof UnauthenticatedError || e instanceof InvalidArgumentError) {
          this.logger.error("worker cannot lease; stopping", { workerId: this.id, error: errorText(e) });
          fatal = e;
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
    const c = shared.counters;
    const report: Report = { succeeded: c.succeeded, failed: c.failed, abandoned: c.abandoned, leased, leaseCalls };
    this.logger.info("worker stopped", { workerId: this.id, ...report });
    if (fatal) throw fatal;
    return report;
  }
}
