// The TypeScript runner of the conformance suite (tests/conformance/README.md):
//
//   node dist/conformance.js <scenario.json> --addrs host:port[,host:port...]
//
// It runs one scenario with this SDK against brokers the harness started, prints
// line-delimited JSON on stdout (events, then the result as the last line) and exits
// 0 (pass), 1 (fail) or 2 (unsupported). To have the leader killed it prints
// {"control":"kill_leader"} and reads {"killed": <node id>} from stdin. The token, if
// any, comes from TASKRAFT_CONFORMANCE_TOKEN. Logs go to stderr.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

import { Client } from "./client.js";
import { JobCancelledError, PermanentError } from "./errors.js";
import type { Job } from "./job.js";
import type { JobInfo } from "./options.js";
import { Worker, type Report, type WorkerOptions } from "./worker.js";

interface Scenario {
  id: string;
  description?: string;
  nodes: number;
  params: Record<string, unknown>;
  expect: Record<string, unknown>;
}

/** The scenario's expectations were not met. */
class Fail extends Error {}
/** This SDK cannot express the scenario; the message names the gap. */
class Unsupported extends Error {}

function emit(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function check(ok: boolean, reason: string): void {
  if (!ok) throw new Fail(reason);
}

/** Typed access to a scenario's params/expect, failing clearly on a missing key. */
class Fields {
  constructor(
    private readonly where: string,
    private readonly o: Record<string, unknown>,
  ) {}

  has(key: string): boolean {
    return this.o[key] !== undefined;
  }

  private get(key: string): unknown {
    const v = this.o[key];
    if (v === undefined) throw new Fail(`the scenario file has no ${this.where}.${key}`);
    return v;
  }

  num(key: string, fallback?: number): number {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const v = this.get(key);
    if (typeof v !== "number") throw new Fail(`${this.where}.${key} is not a number`);
    return v;
  }

  str(key: string, fallback?: string): string {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const v = this.get(key);
    if (typeof v !== "string") throw new Fail(`${this.where}.${key} is not a string`);
    return v;
  }

  bool(key: string, fallback?: boolean): boolean {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const v = this.get(key);
    if (typeof v !== "boolean") throw new Fail(`${this.where}.${key} is not a boolean`);
    return v;
  }

  raw(key: string): unknown {
    return this.get(key);
  }
}

interface Ctx {
  scenario: Scenario;
  client: Client;
  params: Fields;
  expect: Fields;
  /** Unix ms by which the scenario must be over. */
  deadline: number;
  nextLine: () => Promise<string>;
}

function remaining(ctx: Ctx): number {
  return Math.max(1, ctx.deadline - Date.now());
}

/** Runs a worker in the background. */
function startWorker(ctx: Ctx, options: Omit<WorkerOptions, "queues">): { worker: Worker; done: Promise<Report> } {
  const worker = new Worker(ctx.client, {
    queues: ctx.params.str("queue"),
    visibilityTimeoutMs: ctx.params.num("visibility_timeout_ms", 30_000),
    pollWaitMs: 500,
    ...options,
  });
  return { worker, done: worker.runUntil() };
}

async function waitFinal(ctx: Ctx, jobId: string): Promise<JobInfo> {
  return ctx.client.waitForJob(jobId, remaining(ctx));
}

/** Polls `f` until it returns true, failing with `what` at the scenario deadline. */
async function until(ctx: Ctx, what: string, f: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await f())) {
    if (Date.now() > ctx.deadline) throw new Fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function checkState(ctx: Ctx, job: JobInfo): void {
  if (ctx.expect.has("final_state")) {
    const want = ctx.expect.str("final_state");
    check(job.state === want, `job ${job.jobId} ended ${job.state}, expected ${want} (last_error ${JSON.stringify(job.lastError)})`);
  }
  if (ctx.expect.has("attempts")) {
    const want = ctx.expect.num("attempts");
    check(job.attempt === want, `job ${job.jobId} took ${job.attempt} attempts, expected ${want}`);
  }
  if (ctx.expect.has("expirations")) {
    const want = ctx.expect.num("expirations");
    check(job.expirations === want, `job ${job.jobId} had ${job.expirations} lease expirations, expected ${want}`);
  }
  if (ctx.expect.has("last_error_contains")) {
    const want = ctx.expect.str("last_error_contains");
    check(job.lastError.includes(want), `last_error ${JSON.stringify(job.lastError)} lacks ${JSON.stringify(want)}`);
  }
}

function checkRuns(ctx: Ctx, runs: number): void {
  if (ctx.expect.has("handler_runs")) {
    const want = ctx.expect.num("handler_runs");
    check(runs === want, `the handler ran ${runs} times, expected ${want}`);
  }
}

const scenarios: Record<string, (ctx: Ctx) => Promise<void>> = {
  async roundtrip(ctx) {
    const p = ctx.params;
    const queue = p.str("queue");
    const jobType = p.str("job_type");
    const payload = Buffer.from(p.str("payload_base64"), "base64");
    const headers = p.raw("headers") as Record<string, string>;
    const priority = p.num("priority", 0);
    const { jobId } = await ctx.client.enqueue(queue, payload, { jobType, headers, priority });
    emit({ event: "enqueued", job_id: jobId });
    let seen: { payload: Buffer; headers: Record<string, string>; queue: string; jobType: string; priority: number; attempt: number; id: string } | undefined;
    const { worker, done } = startWorker(ctx, {
      concurrency: 1,
      handlers: {
        [jobType]: (job: Job) => {
          seen = { payload: job.payload, headers: { ...job.headers }, queue: job.queue, jobType: job.jobType, priority: job.priority, attempt: job.attempt, id: job.id };
          return job.payload;
        },
      },
    });
    const job = await waitFinal(ctx, jobId);
    worker.shutdown();
    await done;
    checkState(ctx, job);
    check(seen !== undefined, "the handler never ran");
    const s = seen as NonNullable<typeof seen>;
    check(s.id === jobId && s.queue === queue && s.jobType === jobType, `handler saw ${s.id}/${s.queue}/${s.jobType}`);
    check(s.priority === priority, `handler saw priority ${s.priority}, enqueued ${priority}`);
    check(s.attempt === 1, `handler saw attempt ${s.attempt}`);
    if (ctx.expect.bool("payload_intact", false)) {
      check(s.payload.equals(payload), `payload changed: ${s.payload.toString("base64")}`);
    }
    if (ctx.expect.bool("headers_intact", false)) {
      check(JSON.stringify(sorted(s.headers)) === JSON.stringify(sorted(headers)), `headers changed: ${JSON.stringify(s.headers)}`);
    }
    if (ctx.expect.bool("result_is_payload", false)) {
      check(job.result.equals(payload), `result ${job.result.toString("base64")} is not the payload`);
    }
  },

  async priority_order(ctx) {
    const p = ctx.params;
    const queue = p.str("queue");
    const jobType = p.str("job_type");
    const jobs = p.raw("jobs") as Array<{ name: string; priority: number }>;
    const ids: string[] = [];
    for (const j of jobs) ids.push((await ctx.client.enqueue(queue, j.name, { jobType, priority: j.priority })).jobId);
    const order: string[] = [];
    const { worker, done } = startWorker(ctx, {
      concurrency: p.num("concurrency", 1),
      prefetch: p.num("prefetch", 0),
      handlers: { [jobType]: (job: Job) => void order.push(job.text()) },
    });
    const finals: JobInfo[] = [];
    for (const id of ids) finals.push(await waitFinal(ctx, id));
    worker.shutdown();
    await done;
    emit({ event: "order", order });
    const want = ctx.expect.raw("order") as string[];
    check(JSON.stringify(order) === JSON.stringify(want), `ran in order ${JSON.stringify(order)}, expected ${JSON.stringify(want)}`);
    for (const f of finals) checkState(ctx, f);
  },

  async lease_extension(ctx) {
    const p = ctx.params;
    const jobType = p.str("job_type");
    const { jobId } = await ctx.client.enqueue(p.str("queue"), "slow", { jobType });
    let runs = 0;
    const { worker, done } = startWorker(ctx, {
      concurrency: 1,
      handlers: {
        [jobType]: async () => {
          runs++;
          await sleep(p.num("handler_ms"));
        },
      },
    });
    const job = await waitFinal(ctx, jobId);
    worker.shutdown();
    await done;
    checkState(ctx, job);
    checkRuns(ctx, runs);
  },

  async retry_until_dead(ctx) {
    const p = ctx.params;
    const jobType = p.str("job_type");
    const message = p.str("error_message");
    const { jobId } = await ctx.client.enqueue(p.str("queue"), "flaky", { jobType, maxAttempts: p.num("max_attempts") });
    const starts: number[] = [];
    const { worker, done } = startWorker(ctx, {
      concurrency: 1,
      handlers: {
        [jobType]: () => {
          starts.push(Date.now());
          throw new Error(message);
        },
      },
    });
    const job = await waitFinal(ctx, jobId);
    worker.shutdown();
    await done;
    const gaps = starts.slice(1).map((t, i) => t - (starts[i] as number));
    emit({ event: "gaps_ms", gaps });
    checkState(ctx, job);
    checkRuns(ctx, starts.length);
    if (ctx.expect.has("min_gaps_ms")) {
      const want = ctx.expect.raw("min_gaps_ms") as number[];
      check(gaps.length >= want.length, `only ${gaps.length} retries`);
      want.forEach((min, i) => check((gaps[i] as number) >= min, `retry ${i + 1} came after ${gaps[i]} ms, expected at least ${min} ms`));
    }
  },

  async permanent_error(ctx) {
    const p = ctx.params;
    const jobType = p.str("job_type");
    const message = p.str("error_message");
    const { jobId } = await ctx.client.enqueue(p.str("queue"), "doomed", { jobType, maxAttempts: p.num("max_attempts") });
    let runs = 0;
    const { worker, done } = startWorker(ctx, {
      concurrency: 1,
      handlers: {
        [jobType]: () => {
          runs++;
          throw new PermanentError(message);
        },
      },
    });
    const job = await waitFinal(ctx, jobId);
    worker.shutdown();
    await done;
    checkState(ctx, job);
    checkRuns(ctx, runs);
  },

  async cancel_running(ctx) {
    const p = ctx.params;
    const jobType = p.str("job_type");
    const { jobId } = await ctx.client.enqueue(p.str("queue"), "long", { jobType });
    let runs = 0;
    let started = false;
    let observedAt: number | undefined;
    let reason: unknown;
    const { worker, done } = startWorker(ctx, {
      concurrency: 1,
      handlers: {
        [jobType]: async (job: Job) => {
          runs++;
          started = true;
          // Runs until cancelled, at most handler_max_ms.
          try {
            await sleep(p.num("handler_max_ms"), undefined, { signal: job.signal });
          } catch {
            observedAt = Date.now();
            reason = job.signal.reason;
            throw job.signal.reason;
          }
        },
      },
    });
    await until(ctx, "the handler to start", () => started);
    const cancelledAt = Date.now();
    const cancelled = await ctx.client.cancelJob(jobId);
    emit({ event: "cancelled", state: cancelled.state });
    const within = ctx.expect.num("observe_within_ms", remaining(ctx));
    await until(ctx, "the handler to observe the cancellation", () => observedAt !== undefined || Date.now() - cancelledAt > within);
    if (ctx.expect.bool("handler_observed_cancel", true)) {
      check(observedAt !== undefined, `the handler did not observe the cancellation within ${within} ms`);
      check(reason instanceof JobCancelledError, `the abort reason was ${String(reason)}, not JobCancelledError`);
      emit({ event: "observed", after_ms: (observedAt as number) - cancelledAt });
    }
    worker.shutdown();
    await done;
    const job = await ctx.client.getJob(jobId);
    checkState(ctx, job);
    checkRuns(ctx, runs);
  },

  async graceful_shutdown(ctx) {
    const p = ctx.params;
    const queue = p.str("queue");
    const jobType = p.str("job_type");
    const n = p.num("jobs");
    const handlerMs = p.num("handler_ms");
    const results = await ctx.client.enqueueBatch(Array.from({ length: n }, (_, i) => ({ queue, payload: `job-${i}`, jobType })));
    const ids = results.map((r) => r.jobId);
    let running = 0;
    const handler = async () => {
      running++;
      try {
        await sleep(handlerMs);
      } finally {
        running--;
      }
    };
    // The first worker stops on SIGTERM, as a deployed one would.
    const first = new Worker(ctx.client, {
      queues: queue,
      concurrency: p.num("concurrency"),
      prefetch: p.num("prefetch"),
      visibilityTimeoutMs: p.num("visibility_timeout_ms"),
      pollWaitMs: 500,
      handlers: { [jobType]: handler },
    });
    const firstDone = first.run();
    const wantRunning = ctx.expect.num("running_at_stop");
    const wantHeld = ctx.expect.num("held_at_stop");
    await until(ctx, `${wantRunning} handlers running and ${wantHeld} jobs leased`, async () => {
      return running === wantRunning && (await ctx.client.queueStats(queue)).leased === wantHeld;
    });
    emit({ event: "stopping", running, held: wantHeld });
    process.kill(process.pid, "SIGTERM");
    const report = await firstDone;
    const leasedAfter = Number((await ctx.client.queueStats(queue)).leased);
    emit({ event: "first_worker_stopped", succeeded: report.succeeded, abandoned: report.abandoned, leased_after: leasedAfter });
    check(report.succeeded === ctx.expect.num("first_worker_succeeded"), `the first worker acked ${report.succeeded} jobs, expected ${ctx.expect.num("first_worker_succeeded")}`);
    check(leasedAfter === ctx.expect.num("leased_after_stop"), `${leasedAfter} jobs still LEASED after the worker stopped`);
    const second = new Worker(ctx.client, {
      queues: queue,
      concurrency: p.num("concurrency"),
      visibilityTimeoutMs: p.num("visibility_timeout_ms"),
      pollWaitMs: 500,
      handlers: { [jobType]: () => undefined },
    });
    const secondDone = second.runUntil();
    const finals: JobInfo[] = [];
    for (const id of ids) finals.push(await waitFinal(ctx, id));
    second.shutdown();
    await secondDone;
    const lost = finals.filter((j) => j.state !== "SUCCEEDED").length;
    check(lost === ctx.expect.num("lost", 0), `${lost} jobs did not succeed`);
    for (const f of finals) checkState(ctx, f);
  },

  async leader_failover(ctx) {
    const p = ctx.params;
    const queue = p.str("queue");
    const jobType = p.str("job_type");
    const n = p.num("jobs");
    const interval = p.num("enqueue_interval_ms", 0);
    const killAfter = p.num("kill_after_succeeded");
    const keyed = p.bool("use_idempotency_keys", true);
    const handled = new Set<string>();
    let killed = false;
    let killing: Promise<void> | undefined;
    const { worker, done } = startWorker(ctx, {
      concurrency: p.num("concurrency", 4),
      handlers: {
        [jobType]: (job: Job) => {
          handled.add(job.id);
          if (!killing && handled.size >= killAfter) {
            killing = (async () => {
              emit({ control: "kill_leader" });
              const answer = JSON.parse(await ctx.nextLine()) as { killed?: number };
              emit({ event: "leader_killed", node: answer.killed });
              killed = answer.killed !== undefined;
            })();
          }
        },
      },
    });
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const r = await ctx.client.enqueue(queue, `job-${i}`, { jobType, ...(keyed ? { idempotencyKey: `${queue}-${i}` } : {}) });
      ids.push(r.jobId);
      if (interval > 0) await sleep(interval);
    }
    emit({ event: "enqueued", jobs: ids.length });
    await until(ctx, "the leader to be killed", () => killing !== undefined);
    await killing;
    let lost = 0;
    for (const id of ids) {
      const job = await waitFinal(ctx, id);
      if (job.state !== "SUCCEEDED") lost++;
    }
    worker.shutdown();
    await done;
    const distinct = new Set(ids).size;
    const stats = await ctx.client.queueStats(queue);
    const stored = stats.ready + stats.scheduled + stats.leased + stats.succeeded + stats.dead + stats.cancelled;
    emit({ event: "done", distinct, stored, lost, handled: handled.size });
    check(!ctx.expect.bool("killed_leader", true) || killed, "the harness did not confirm the kill");
    check(lost === ctx.expect.num("lost", 0), `${lost} jobs did not succeed`);
    if (ctx.expect.has("distinct_jobs")) {
      const want = ctx.expect.num("distinct_jobs");
      check(distinct === want, `${distinct} distinct job ids, expected ${want}`);
      check(stored === want, `the queue holds ${stored} jobs, expected ${want} (an enqueue was stored twice)`);
    }
    if (ctx.expect.bool("all_succeeded", true)) {
      check(stats.succeeded === stored, `only ${stats.succeeded} of ${stored} jobs succeeded`);
    }
  },

  async trace_context(ctx) {
    const p = ctx.params;
    const queue = p.str("queue");
    const jobType = p.str("job_type");
    const traceparent = p.str("traceparent");
    const tracestate = p.str("tracestate", "");
    const via = (p.has("via") ? p.raw("via") : ["metadata"]) as string[];
    const ids = new Map<string, string>();
    for (const how of via) {
      let r;
      if (how === "header") {
        const headers: Record<string, string> = { traceparent };
        if (tracestate) headers["tracestate"] = tracestate;
        r = await ctx.client.enqueue(queue, how, { jobType, headers });
      } else if (how === "metadata") {
        r = await ctx.client.enqueue(queue, how, { jobType, traceparent, ...(tracestate ? { tracestate } : {}) });
      } else {
        throw new Unsupported(`unknown trace context carrier ${JSON.stringify(how)}`);
      }
      ids.set(how, r.jobId);
    }
    const seen = new Map<string, Record<string, string>>();
    const { worker, done } = startWorker(ctx, {
      handlers: { [jobType]: (job: Job) => void seen.set(job.text(), { ...job.headers }) },
    });
    const finals: JobInfo[] = [];
    for (const id of ids.values()) finals.push(await waitFinal(ctx, id));
    worker.shutdown();
    await done;
    for (const f of finals) checkState(ctx, f);
    for (const how of via) {
      const h = seen.get(how);
      check(h !== undefined, `the handler never saw the job sent via ${how}`);
      if (ctx.expect.bool("traceparent_equal", true)) {
        check(h?.["traceparent"] === traceparent, `via ${how} the handler saw traceparent ${JSON.stringify(h?.["traceparent"])}`);
      }
      if (tracestate && ctx.expect.bool("tracestate_equal", false)) {
        check(h?.["tracestate"] === tracestate, `via ${how} the handler saw tracestate ${JSON.stringify(h?.["tracestate"])}`);
      }
    }
  },
};

function sorted(o: Record<string, string>): Array<[string, string]> {
  return Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function parseArgs(argv: string[]): { file: string; addrs: string } {
  let file: string | undefined;
  let addrs: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--addrs") addrs = argv[++i];
    else if (a.startsWith("--addrs=")) addrs = a.slice("--addrs=".length);
    else if (!file) file = a;
  }
  if (!file || !addrs) {
    process.stderr.write("usage: conformance.js <scenario.json> --addrs host:port[,host:port...]\n");
    process.exit(2);
  }
  return { file, addrs };
}

async function main(): Promise<number> {
  const { file, addrs } = parseArgs(process.argv.slice(2));
  let scenario: Scenario;
  try {
    scenario = JSON.parse(readFileSync(file, "utf8")) as Scenario;
  } catch (e) {
    emit({ result: "fail", reason: `cannot read scenario ${file}: ${(e as Error).message}` });
    return 1;
  }
  const run = scenarios[scenario.id];
  if (!run) {
    emit({ result: "unsupported", reason: `the TypeScript runner has no scenario ${JSON.stringify(scenario.id)}` });
    return 2;
  }
  const token = process.env["TASKRAFT_CONFORMANCE_TOKEN"];
  const client = new Client(addrs, token ? { token } : {});
  const lines = createInterface({ input: process.stdin });
  const pending: string[] = [];
  const waiting: Array<(l: string) => void> = [];
  lines.on("line", (l) => {
    const w = waiting.shift();
    if (w) w(l);
    else pending.push(l);
  });
  // params.queue is a prefix: a unique suffix keeps runs that share a cluster apart.
  const rawParams = { ...(scenario.params ?? {}) };
  if (typeof rawParams["queue"] === "string") rawParams["queue"] = `${rawParams["queue"]}-${randomBytes(5).toString("hex")}`;
  const params = new Fields("params", rawParams);
  const ctx: Ctx = {
    scenario,
    client,
    params,
    expect: new Fields("expect", scenario.expect ?? {}),
    deadline: Date.now() + params.num("timeout_ms", 60_000),
    nextLine: () => {
      const l = pending.shift();
      return l !== undefined ? Promise.resolve(l) : new Promise((resolve) => waiting.push(resolve));
    },
  };
  emit({ event: "start", scenario: scenario.id, sdk: "typescript" });
  try {
    await run(ctx);
    emit({ result: "pass" });
    return 0;
  } catch (e) {
    if (e instanceof Unsupported) {
      emit({ result: "unsupported", reason: e.message });
      return 2;
    }
    const reason = e instanceof Fail ? e.message : `error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
    emit({ result: "fail", reason });
    return 1;
  } finally {
    lines.close();
    client.close();
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    emit({ result: "fail", reason: `runner crashed: ${String(e)}` });
    process.exit(1);
  },
);
