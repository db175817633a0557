// @ts-check
// Worker against a real one-node broker: dispatch, ack/nack, retries, dead-lettering,
// lease extension, progress, cancellation, concurrency, priority of queues, maxJobs,
// graceful shutdown.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  Client,
  InvalidArgumentError,
  JobCancelledError,
  LeaseLostError,
  UnavailableError,
  PermanentError,
  RetryableError,
  Worker,
} from "../dist/index.js";
import { eventually, startBroker } from "./broker.mjs";

/** @type {Awaited<ReturnType<typeof startBroker>>} */
let broker;
/** @type {Client} */
let client;

before(async () => {
  broker = await startBroker(["--retry-base", "50ms", "--retry-max", "200ms"]);
  client = new Client(broker.addr);
});
after(async () => {
  client?.close();
  await broker?.stop();
});

/** A promise with its resolve function. */
function latch() {
  /** @type {(v?: unknown) => void} */
  let open = () => {};
  /** @type {Promise<unknown>} */
  const opened = new Promise((r) => (open = r));
  return { opened, open };
}

test("handlers run by jobType and their results are stored", async () => {
  const a = await client.enqueue("w-dispatch", "3", { jobType: "double" });
  const b = await client.enqueue("w-dispatch", "ada", { jobType: "greet" });
  const c = await client.enqueue("w-dispatch", "x", { jobType: "bytes" });
  const worker = new Worker(client, { queues: "w-dispatch", maxJobs: 3, pollWaitMs: 200 })
    .handle("double", (job) => ({ double: Number(job.json()) * 2 }))
    .handle("greet", async (job) => `hello ${job.text()}`)
    .handle("bytes", () => Buffer.from([1, 2]));
  const report = await worker.runUntil();
  assert.deepEqual([report.succeeded, report.failed, report.leased], [3, 0, 3]);
  assert.equal((await client.getJob(a.jobId)).result.toString(), '{"double":6}');
  assert.equal((await client.getJob(b.jobId)).result.toString(), "hello ada");
  assert.deepEqual([...(await client.getJob(c.jobId)).result], [1, 2]);
});

test("a throwing handler nacks, the job is retried, and the worker carries on", async () => {
  const flaky = await client.enqueue("w-flaky", "flaky");
  const fine = await client.enqueue("w-flaky", "fine");
  const worker = new Worker(client, {
    queues: "w-flaky",
    pollWaitMs: 200,
    defaultHandler: (job) => {
      // Synchronous throw on the first delivery of one job.
      if (job.text() === "flaky" && job.attempt === 1) throw new Error("transient glitch");
      return "ok";
    },
  });
  const run = worker.runUntil();
  const done = await client.waitForJob(flaky.jobId, 20_000);
  assert.deepEqual([done.state, done.attempt], ["SUCCEEDED", 2]);
  assert.equal((await client.waitForJob(fine.jobId, 20_000)).state, "SUCCEEDED");
  worker.shutdown();
  const report = await run;
  assert.deepEqual([report.succeeded, report.failed], [2, 1]);
});

test("a handler that keeps failing is retried until its attempts are used up, then dead", async () => {
  const { jobId } = await client.enqueue("w-dead", "x", { maxAttempts: 3 });
  let calls = 0;
  const worker = new Worker(client, {
    queues: "w-dead",
    pollWaitMs: 200,
    defaultHandler: async () => {
      calls++;
      throw new Error("database is down", { cause: new Error("connection refused") });
    },
  });
  const run = worker.runUntil();
  const job = await client.waitForJob(jobId, 20_000);
  worker.shutdown();
  await run;
  assert.deepEqual([job.state, job.attempt, calls], ["DEAD", 3, 3]);
  assert.equal(job.lastError, "database is down: connection refused");
});

test("PermanentError and an undecodable JSON payload dead-letter at once", async () => {
  const perm = await client.enqueue("w-perm", "x", { jobType: "perm", maxAttempts: 5 });
  const json = await client.enqueue("w-perm", "{not json", { jobType: "json", maxAttempts: 5 });
  const worker = new Worker(client, {
    queues: "w-perm",
    maxJobs: 2,
    pollWaitMs: 200,
    handlers: {
      perm: () => {
        throw new PermanentError("card declined");
      },
      json: (job) => job.json(),
    },
  });
  const report = await worker.runUntil();
  assert.equal(report.failed, 2);
  const p = await client.getJob(perm.jobId);
  assert.deepEqual([p.state, p.attempt, p.lastError], ["DEAD", 1, "card declined"]);
  const j = await client.getJob(json.jobId);
  assert.deepEqual([j.state, j.attempt], ["DEAD", 1]);
  assert.match(j.lastError, /not valid JSON/);
});

test("RetryableError picks the retry delay", async () => {
  const { jobId } = await client.enqueue("w-later", "x");
  const worker = new Worker(client, {
    queues: "w-later",
    maxJobs: 1,
    pollWaitMs: 200,
    defaultHandler: () => {
      throw new RetryableError("rate limited", { retryAfterMs: 60_000 });
    },
  });
  await worker.runUntil();
  const job = await client.getJob(jobId);
  assert.deepEqual([job.state, job.attempt, job.lastError], ["SCHEDULED", 1, "rate limited"]);
  assert.ok(job.runAtMs - Date.now() > 30_000, `runs again in ${job.runAtMs - Date.now()} ms`);
});

test("the lease is extended while a handler runs longer than the visibility timeout", async () => {
  const { jobId } = await client.enqueue("w-long", "x");
  // Extended every third of it: a heartbeat may come 2 s late before the lease runs out.
  const visibilityTimeoutMs = 3000;
  const started = latch();
  const release = latch();
  const worker = new Worker(client, {
    queues: "w-long",
    maxJobs: 1,
    visibilityTimeoutMs,
    pollWaitMs: 200,
    defaultHandler: async () => {
      started.open();
      await release.opened;
    },
  });
  const run = worker.runUntil();
  await started.opened;
  // The first deadline (or a later one, if an extension came already). An extension sets
  // the deadline one visibility timeout past the broker's time, and none is granted on a
  // lease that ran out: one this far out proves the job outlived its first deadline.
  const first = await client.getJob(jobId);
  const pastFirst = first.leaseDeadlineMs + visibilityTimeoutMs;
  await eventually("an extension granted after the first deadline", async () => {
    const j = await client.getJob(jobId);
    assert.deepEqual([j.state, j.attempt, j.expirations], ["LEASED", 1, 0], "the first lease ran out");
    return j.leaseDeadlineMs >= pastFirst;
  });
  release.open();
  await run;
  const job = await client.getJob(jobId);
  assert.deepEqual([job.state, job.attempt, job.expirations], ["SUCCEEDED", 1, 0]);
});

test("progress reported by a handler is visible on the job while it runs", async () => {
  const { jobId } = await client.enqueue("w-progress", "x");
  const release = latch();
  const worker = new Worker(client, {
    queues: "w-progress",
    maxJobs: 1,
    pollWaitMs: 200,
    defaultHandler: async (job) => {
      job.progress(40, "halfway");
      await release.opened;
    },
  });
  const run = worker.runUntil();
  const seen = await eventually("progress 40 on the job", async () => {
    const j = await client.getJob(jobId);
    return j.progress === 40 ? j : null;
  });
  assert.deepEqual([seen.state, seen.progressMessage], ["LEASED", "halfway"]);
  release.open();
  await run;
  assert.equal((await client.getJob(jobId)).state, "SUCCEEDED");
});

test("cancelling a running job aborts the handler's signal with JobCancelledError", async () => {
  const { jobId } = await client.enqueue("w-cancel", "x");
  const started = latch();
  const aborted = latch();
  const worker = new Worker(client, {
    queues: "w-cancel",
    maxJobs: 1,
    visibilityTimeoutMs: 3000,
    pollWaitMs: 200,
    defaultHandler: (job) => {
      started.open();
      return new Promise((_resolve, reject) => {
        job.signal.addEventListener("abort", () => {
          aborted.open(job.signal.reason);
          reject(job.signal.reason);
        });
      });
    },
  });
  const run = worker.runUntil();
  await started.opened;
  const cancelled = await client.cancelJob(jobId);
  assert.equal(cancelled.state, "CANCELLED");
  const reason = await aborted.opened;
  assert.ok(reason instanceof JobCancelledError, String(reason));
  const report = await run;
  assert.deepEqual([report.succeeded, report.failed, report.abandoned], [0, 0, 1]);
  assert.equal((await client.getJob(jobId)).state, "CANCELLED");
});

test("a lease lost while extensions failed aborts the handler's signal with LeaseLostError", async () => {
  // A client whose ExtendLease calls fail while `partitioned` (as if the network were cut).
  class Partitioned extends Client {
    partitioned = true;
    /** @override @type {Client["call"]} */
    call(name, request, options) {
      if (name === "ExtendLease" && this.partitioned) return Promise.reject(new UnavailableError(this.addrs, "cut"));
      return super.call(name, request, options);
    }
  }
  const flaky = new Partitioned(broker.addr);
  const { jobId } = await client.enqueue("w-lost", "x");
  const started = latch();
  const aborted = latch();
  const worker = new Worker(flaky, {
    // The partition above cuts the unary ExtendLease: the poll protocol's extensions.
    protocol: "poll",
    queues: "w-lost",
    maxJobs: 1,
    visibilityTimeoutMs: 300,
    pollWaitMs: 200,
    defaultHandler: (job) => {
      started.open();
      return new Promise((_resolve, reject) => {
        job.signal.addEventListener("abort", () => {
          aborted.open(job.signal.reason);
          reject(job.signal.reason);
        });
      });
    },
  });
  const run = worker.runUntil();
  try {
    await started.opened;
    // The lease runs out; another worker gets the job.
    const again = await client.call("Lease", { queues: ["w-lost"], workerId: "thief", maxJobs: 1, visibilityTimeoutMs: 30_000, waitMs: 5000 });
    const stolen = again.jobs[0];
    assert.ok(stolen, "the expired job was leased again");
    assert.equal(stolen.attempt, 2);
    flaky.partitioned = false;
    const reason = await aborted.opened;
    assert.ok(reason instanceof LeaseLostError, String(reason));
    const report = await run;
    assert.deepEqual([report.succeeded, report.failed, report.abandoned], [0, 0, 1]);
    await client.call("Ack", { jobId: stolen.jobId, leaseId: stolen.leaseId });
    const job = await client.getJob(jobId);
    assert.deepEqual([job.state, job.attempt, job.expirations], ["SUCCEEDED", 2, 1]);
  } finally {
    flaky.close();
  }
});

test("at most `concurrency` handlers run at once", async () => {
  await client.enqueueBatch(Array.from({ length: 9 }, (_, i) => ({ queue: "w-conc", payload: String(i) })));
  let now = 0;
  let most = 0;
  const worker = new Worker(client, {
    queues: "w-conc",
    concurrency: 3,
    prefetch: 2,
    maxJobs: 9,
    pollWaitMs: 200,
    defaultHandler: async () => {
      most = Math.max(most, ++now);
      // The first handlers hold on until three run at once, however slowly the machine
      // starts them (a fourth would show in `most`).
      await eventually("three handlers running at once", () => most >= 3);
      now--;
    },
  });
  const report = await worker.runUntil();
  assert.deepEqual([report.succeeded, most], [9, 3]);
});

test("queues are served in the order given, and priorities within a queue", async () => {
  await client.enqueueBatch([
    { queue: "w-low", payload: "low-1" },
    { queue: "w-high", payload: "high-1", priority: 1 },
    { queue: "w-high", payload: "high-9", priority: 9 },
    { queue: "w-low", payload: "low-2" },
  ]);
  /** @type {string[]} */
  const order = [];
  const worker = new Worker(client, {
    queues: ["w-high", "w-low"],
    concurrency: 1,
    maxJobs: 4,
    pollWaitMs: 200,
    defaultHandler: (job) => void order.push(job.text()),
  });
  await worker.runUntil();
  assert.deepEqual(order, ["high-9", "high-1", "low-1", "low-2"]);
});

test("shutdown lets the running handler finish and gives prefetched jobs back at once", async () => {
  const ids = (
    await client.enqueueBatch([1, 2, 3].map((i) => ({ queue: "w-shutdown", payload: String(i) })))
  ).map((r) => r.jobId);
  const started = latch();
  const release = latch();
  const worker = new Worker(client, {
    queues: "w-shutdown",
    concurrency: 1,
    prefetch: 2,
    pollWaitMs: 200,
    defaultHandler: async (job) => {
      started.open(job.id);
      await release.opened;
    },
  });
  const run = worker.runUntil();
  const first = await started.opened;
  await eventually("three jobs leased", async () => (await client.queueStats("w-shutdown")).leased === 3);
  worker.shutdown();
  // The two jobs that never started go back while the first still runs.
  await eventually("unstarted jobs given back", async () => (await client.queueStats("w-shutdown")).leased === 1);
  release.open();
  const report = await run;
  assert.deepEqual([report.succeeded, report.abandoned, report.leased], [1, 2, 3]);
  for (const id of ids) {
    const job = await client.getJob(id);
    if (id === first) assert.equal(job.state, "SUCCEEDED");
    else {
      assert.ok(job.state === "READY" || job.state === "SCHEDULED", job.state);
      assert.equal(job.expirations, 0);
    }
  }
});

test("past the shutdown timeout a hung handler's signal aborts and its job goes back", async () => {
  const { jobId } = await client.enqueue("w-hung", "x");
  const started = latch();
  let sawAbort = false;
  const worker = new Worker(client, {
    queues: "w-hung",
    pollWaitMs: 200,
    shutdownTimeoutMs: 200,
    defaultHandler: (job) => {
      started.open();
      job.signal.addEventListener("abort", () => (sawAbort = true));
      return new Promise(() => {});
    },
  });
  const run = worker.runUntil();
  await started.opened;
  worker.shutdown();
  const report = await run;
  assert.deepEqual([report.succeeded, report.abandoned, sawAbort], [0, 1, true]);
  const job = await client.getJob(jobId);
  assert.ok(job.state === "READY" || job.state === "SCHEDULED", job.state);
  assert.equal(job.lastError, "worker shut down before the job finished");
});

test("a queue name the broker refuses stops the worker with InvalidArgumentError", async () => {
  const worker = new Worker(client, { queues: "no spaces", defaultHandler: () => {} });
  await assert.rejects(worker.runUntil(), InvalidArgumentError);
});

test("an abort signal stops a waiting worker", async () => {
  const stop = new AbortController();
  const worker = new Worker(client, {
    queues: "w-idle",
    workerId: "idle-waiter",
    pollWaitMs: 20_000,
    defaultHandler: () => {},
  });
  const run = worker.runUntil(stop.signal);
  // Its long poll is under way once the broker lists the worker.
  await eventually("the worker's long poll", async () =>
    (await client.listWorkers()).some((w) => w.workerId === "idle-waiter"),
  );
  const t = Date.now();
  stop.abort();
  const report = await run;
  assert.equal(report.leased, 0);
  assert.ok(Date.now() - t < 2000, "the long poll was abandoned");
});
