// @ts-check
// Throughput of TypeScript workers, the TypeScript twin of `taskraft-bench sdk-lifecycle`:
// a fresh one-node broker, 100,000 jobs preloaded with EnqueueBatch, then 4 workers with
// a no-op handler drain them; jobs/s is counted from starting the workers to the first
// GetQueueStats (polled every 10 ms) that shows every job succeeded. Then the workers
// stop and the run checks succeeded == N, ready == leased == 0, and the workers' reports.
//
//   TASKRAFT_BIN=/path/to/taskraft node bench.mjs [mode...]
//
// Modes (default: all three, each on its own fresh broker):
//   sdk        4 Workers (each with its own Client) in this process, concurrency 100
//   sdk-procs  4 worker processes, one Worker each, concurrency 100 (uses every core)
//   raw        4 loops of Lease(max 100) + concurrent Acks through Client.call, no Worker
// Env: BENCH_JOBS (100000), BENCH_WORKERS (4), BENCH_CONCURRENCY (100), BENCH_PREFETCH (0),
// BENCH_PROTOCOL (stream; or poll) for the Workers of sdk and sdk-procs.

import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

import { Client, Worker } from "./dist/index.js";

const JOBS = Number(process.env["BENCH_JOBS"] ?? 100_000);
const WORKERS = Number(process.env["BENCH_WORKERS"] ?? 4);
const CONCURRENCY = Number(process.env["BENCH_CONCURRENCY"] ?? 100);
const PREFETCH = Number(process.env["BENCH_PREFETCH"] ?? 0);
const PROTOCOL = process.env["BENCH_PROTOCOL"] === "poll" ? "poll" : "stream";
const QUEUE = "bench";

/**
 * One worker process (mode sdk-procs): runs until SIGTERM, prints its report as JSON.
 * @param {string} addr
 */
async function child(addr) {
  const client = new Client(addr);
  const worker = new Worker(client, {
    queues: QUEUE,
    concurrency: CONCURRENCY,
    prefetch: PREFETCH,
    protocol: PROTOCOL,
    pollWaitMs: 1000,
    handlers: { bench: () => undefined },
  });
  const report = await worker.run();
  process.stdout.write(`${JSON.stringify(report)}\n`);
  client.close();
}

/** @param {Client} client */
async function preload(client) {
  const t = Date.now();
  for (let done = 0; done < JOBS; ) {
    const n = Math.min(10_000, JOBS - done);
    await client.enqueueBatch(Array.from({ length: n }, () => ({ queue: QUEUE, payload: "x", jobType: "bench" })));
    done += n;
  }
  return (JOBS / (Date.now() - t)) * 1000;
}

/**
 * Polls until every job succeeded; returns the time it took from `t0`.
 * @param {Client} client
 * @param {number} t0
 */
async function drained(client, t0) {
  for (;;) {
    const s = await client.queueStats(QUEUE);
    if (s.succeeded >= JOBS) return Date.now() - t0;
    if (Date.now() - t0 > 600_000) throw new Error(`not drained after 10 minutes: ${JSON.stringify(s)}`);
    await sleep(10);
  }
}

/**
 * @param {string} addr
 * @returns {Promise<{ ms: number, reports: Array<Record<string, number>> }>}
 */
async function runSdk(addr) {
  const clients = Array.from({ length: WORKERS }, () => new Client(addr));
  const workers = clients.map(
    (c) =>
      new Worker(c, {
        queues: QUEUE,
        concurrency: CONCURRENCY,
        prefetch: PREFETCH,
        protocol: PROTOCOL,
        pollWaitMs: 1000,
        handlers: { bench: () => undefined },
      }),
  );
  const t0 = Date.now();
  const runs = workers.map((w) => w.runUntil());
  const ms = await drained(/** @type {Client} */ (clients[0]), t0);
  for (const w of workers) w.shutdown();
  const reports = /** @type {Array<Record<string, number>>} */ (/** @type {unknown} */ (await Promise.all(runs)));
  for (const c of clients) c.close();
  return { ms, reports };
}

/**
 * @param {string} addr
 * @param {Client} client
 */
async function runProcs(addr, client) {
  const self = fileURLToPath(import.meta.url);
  const procs = Array.from({ length: WORKERS }, () =>
    spawn(process.execPath, [self, "--child", addr], { stdio: ["ignore", "pipe", "inherit"] }),
  );
  const outputs = procs.map(
    (p) =>
      /** @type {Promise<string>} */ (
        new Promise((resolve) => {
          let out = "";
          p.stdout?.on("data", (d) => (out += d));
          p.once("exit", () => resolve(out));
        })
      ),
  );
  const t0 = Date.now();
  const ms = await drained(client, t0);
  for (const p of procs) p.kill("SIGTERM");
  const reports = (await Promise.all(outputs)).map((o) => JSON.parse(o.trim()));
  return { ms, reports };
}

/**
 * Raw calls: each loop leases up to CONCURRENCY jobs and acks them all concurrently.
 * @param {string} addr
 */
async function runRaw(addr) {
  const clients = Array.from({ length: WORKERS }, () => new Client(addr));
  let stop = false;
  const loops = clients.map(async (c, i) => {
    let acked = 0;
    let leaseCalls = 0;
    while (!stop) {
      const r = await c.call("Lease", {
        queues: [QUEUE],
        workerId: `raw-${i}`,
        maxJobs: CONCURRENCY,
        visibilityTimeoutMs: 30_000,
        waitMs: 200,
      });
      leaseCalls++;
      await Promise.all(r.jobs.map((j) => c.call("Ack", { jobId: j.jobId, leaseId: j.leaseId })));
      acked += r.jobs.length;
    }
    return { succeeded: acked, failed: 0, abandoned: 0, leased: acked, leaseCalls };
  });
  const t0 = Date.now();
  const ms = await drained(/** @type {Client} */ (clients[0]), t0);
  stop = true;
  const reports = await Promise.all(loops);
  for (const c of clients) c.close();
  return { ms, reports };
}

/** @param {string} mode */
async function round(mode) {
  const { startBroker } = await import("./test/broker.mjs");
  const broker = await startBroker();
  const client = new Client(broker.addr);
  try {
    const preloadRate = await preload(client);
    const { ms, reports } =
      mode === "sdk" ? await runSdk(broker.addr) : mode === "raw" ? await runRaw(broker.addr) : await runProcs(broker.addr, client);
    const s = await client.queueStats(QUEUE);
    const sum = (/** @type {string} */ k) => reports.reduce((a, r) => a + (r[k] ?? 0), 0);
    const ok = s.succeeded === JOBS && s.ready === 0 && s.leased === 0 && sum("succeeded") === JOBS && sum("failed") === 0;
    const leaseCalls = sum("leaseCalls");
    const line = {
      mode,
      jobs: JOBS,
      workers: WORKERS,
      concurrency: CONCURRENCY,
      prefetch: PREFETCH,
      protocol: mode === "raw" ? "poll" : PROTOCOL,
      jobs_per_s: Math.round((JOBS / ms) * 1000),
      seconds: ms / 1000,
      jobs_per_lease: Number((sum("leased") / Math.max(1, leaseCalls)).toFixed(1)),
      preload_jobs_per_s: Math.round(preloadRate),
      verified: ok,
    };
    console.log(JSON.stringify(line));
    if (!ok) {
      console.error("verification failed", JSON.stringify({ stats: s, reports }));
      process.exitCode = 1;
    }
  } finally {
    client.close();
    await broker.stop();
  }
}

const args = process.argv.slice(2);
if (args[0] === "--child") {
  await child(/** @type {string} */ (args[1]));
} else {
  console.error(`broker: ${process.env["TASKRAFT_BIN"]}`);
  for (const mode of args.length > 0 ? args : ["sdk", "sdk-procs", "raw"]) await round(mode);
}
