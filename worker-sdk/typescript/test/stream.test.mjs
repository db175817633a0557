// @ts-check
// The worker's protocols against a real broker: the default `Work` stream (one session,
// credits, settles and extensions by seq, resume after a break) and `protocol: "poll"`
// (`Lease` calls, unary settles).
//
// Each test has a broker of its own, so the broker's `/metrics` RPC counters
// (`taskraft_rpc_duration_seconds_count` by method) show which calls the worker made: a
// stream worker opens `Work` sessions and makes no `Lease`, `Ack`, `Nack` or
// `ExtendLease` call while its session is up.
import assert from "node:assert/strict";
import { createConnection, createServer } from "node:net";
import { test } from "node:test";

import { Client, ConfigError, JobCancelledError, PermanentError, RetryableError, Worker } from "../dist/index.js";
import { eventually, startBroker } from "./broker.mjs";

const UNARY = ["Lease", "Ack", "Nack", "ExtendLease"];

/**
 * `Broker` calls the node has seen since it started, by method (any code).
 * @param {{ http: string }} node
 * @returns {Promise<Record<string, number>>}
 */
async function rpcCalls(node) {
  const r = await fetch(`http://${node.http}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await r.text();
  /** @type {Record<string, number>} */
  const counts = {};
  for (const line of text.split("\n")) {
    if (!line.startsWith("taskraft_rpc_duration_seconds_count{")) continue;
    const m = /method="\/taskraft\.v1\.Broker\/(\w+)"/.exec(line);
    if (!m || !m[1]) continue;
    counts[m[1]] = (counts[m[1]] ?? 0) + Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return counts;
}

/**
 * Waits until the node has counted `sessions` Work calls (a stream is counted when it
 * ends), then asserts there was no unary worker call.
 * @param {{ http: string }} node
 * @param {number} sessions
 */
async function assertUsedTheStream(node, sessions) {
  /** @type {Record<string, number>} */
  let calls = {};
  try {
    await eventually(
      `${sessions} Work session(s) counted`,
      async () => (calls = await rpcCalls(node))["Work"] === sessions,
      10_000,
    );
  } catch {
    assert.fail(`expected ${sessions} Work session(s), saw ${JSON.stringify(calls)}`);
  }
  const unary = Object.fromEntries(UNARY.map((m) => [m, calls[m] ?? 0]));
  assert.deepEqual(unary, Object.fromEntries(UNARY.map((m) => [m, 0])), `unary worker calls on the stream: ${JSON.stringify(calls)}`);
}

/**
 * A broker of the test's own and a client of it, both closed when `body` ends.
 * @param {string[]} extra
 * @param {(b: Awaited<ReturnType<typeof startBroker>>, client: Client) => Promise<void>} body
 */
async function withBroker(extra, body) {
  const b = await startBroker(extra);
  const client = new Client(b.addr);
  try {
    await body(b, client);
  } finally {
    client.close();
    await b.stop();
  }
}

/** A promise with its resolve function. */
function latch() {
  /** @type {(v?: unknown) => void} */
  let open = () => {};
  /** @type {Promise<unknown>} */
  const opened = new Promise((r) => (open = r));
  return { opened, open };
}

test("the default protocol processes every job on one Work session", async () => {
  await withBroker([], async (b, client) => {
    const ids = (
      await client.enqueueBatch(Array.from({ length: 40 }, (_, i) => ({ queue: "s", payload: String(i), jobType: "t" })))
    ).map((e) => e.jobId);
    const worker = new Worker(client, {
      queues: "s",
      concurrency: 4,
      prefetch: 2,
      maxJobs: 40,
      handlers: { t: async (job) => `done ${job.text()}` },
    });
    assert.equal(worker.protocol, "stream");
    const report = await worker.runUntil();
    assert.deepEqual([report.succeeded, report.failed, report.leased], [40, 0, 40]);
    assert.equal(report.leaseCalls, 1, "sessions opened");
    for (const [i, id] of ids.entries()) {
      const job = await client.getJob(id);
      assert.deepEqual([job.state, job.result.toString(), job.attempt], ["SUCCEEDED", `done ${i}`, 1]);
    }
    assert.equal((await client.queueStats("s")).leased, 0);
    await assertUsedTheStream(b.node, 1);
    // @ts-expect-error: not a protocol
    assert.throws(() => new Worker(client, { queues: "s", protocol: "carrier-pigeon" }), ConfigError);
  });
});

test('protocol: "poll" still leases with Lease calls and settles unary, unlike the default', async () => {
  await withBroker([], async (b, client) => {
    const run = async (/** @type {"stream" | "poll" | undefined} */ protocol, /** @type {string} */ queue) => {
      const ids = (
        await client.enqueueBatch(Array.from({ length: 10 }, (_, i) => ({ queue, payload: String(i), jobType: "t" })))
      ).map((e) => e.jobId);
      const worker = new Worker(client, {
        queues: queue,
        concurrency: 2,
        maxJobs: 10,
        pollWaitMs: 200,
        handlers: { t: (job) => job.payload },
        ...(protocol ? { protocol } : {}),
      });
      const report = await worker.runUntil();
      assert.deepEqual([report.succeeded, report.leased], [10, 10]);
      for (const id of ids) assert.equal((await client.getJob(id)).state, "SUCCEEDED");
    };
    // The default first: a Work session and no unary worker call.
    await run(undefined, "d");
    await assertUsedTheStream(b.node, 1);
    // Then poll: Lease calls and one Ack per job, no more Work sessions.
    await run("poll", "p");
    const calls = await rpcCalls(b.node);
    assert.equal(calls["Work"], 1, JSON.stringify(calls));
    assert.ok((calls["Lease"] ?? 0) >= 1, JSON.stringify(calls));
    assert.equal(calls["Ack"], 10, JSON.stringify(calls));
  });
});

test("failing handlers end in the same states on both protocols (retry, then dead letter)", async () => {
  /** @type {Record<string, unknown>} */
  const seen = {};
  for (const protocol of /** @type {const} */ (["stream", "poll"])) {
    await withBroker(["--retry-base", "50ms", "--retry-max", "200ms"], async (b, client) => {
      const always = (await client.enqueue("f", "always", { jobType: "t", maxAttempts: 3 })).jobId;
      const permanent = (await client.enqueue("f", "permanent", { jobType: "t", maxAttempts: 5 })).jobId;
      const flaky = (await client.enqueue("f", "flaky", { jobType: "t", maxAttempts: 3 })).jobId;
      /** @type {Record<string, number[]>} */
      const runs = {};
      const worker = new Worker(client, {
        queues: "f",
        // The stream leg runs on the default protocol.
        ...(protocol === "poll" ? { protocol } : {}),
        concurrency: 2,
        // 3 + 1 + 2 deliveries.
        maxJobs: 6,
        pollWaitMs: 200,
        handlers: {
          t: (job) => {
            (runs[job.text()] ??= []).push(job.attempt);
            if (job.text() === "always") throw new RetryableError("always fails", { retryAfterMs: 50 });
            if (job.text() === "permanent") throw new PermanentError("never works");
            if (job.attempt === 1) throw new Error("first try fails");
            return "ok";
          },
        },
      });
      const report = await worker.runUntil();
      assert.deepEqual([report.succeeded, report.failed, report.leased], [1, 5, 6], protocol);
      const [a, p, f] = await Promise.all([always, permanent, flaky].map((id) => client.getJob(id)));
      assert.ok(a && p && f);
      const states = {
        always: [a.state, a.attempt, a.lastError],
        permanent: [p.state, p.attempt, p.lastError],
        flaky: [f.state, f.attempt, f.result.toString(), f.lastError],
        runs,
      };
      assert.deepEqual(states, {
        always: ["DEAD", 3, "always fails"],
        permanent: ["DEAD", 1, "never works"],
        flaky: ["SUCCEEDED", 2, "ok", "first try fails"],
        runs: { always: [1, 2, 3], permanent: [1], flaky: [1, 2] },
      }, protocol);
      seen[protocol] = states;
      if (protocol === "stream") {
        await assertUsedTheStream(b.node, 1);
      } else {
        const calls = await rpcCalls(b.node);
        assert.equal(calls["Work"] ?? 0, 0, JSON.stringify(calls));
        assert.equal(calls["Nack"], 5, JSON.stringify(calls));
      }
    });
  }
  assert.deepEqual(seen["stream"], seen["poll"]);
});

test("extensions on the stream keep a long job's lease, with its progress", async () => {
  await withBroker([], async (b, client) => {
    const { jobId } = await client.enqueue("hb", "x", { jobType: "t" });
    const release = latch();
    // Extended every second; an extension may come 2 s late on a loaded machine.
    const worker = new Worker(client, {
      queues: "hb",
      maxJobs: 1,
      visibilityTimeoutMs: 3000,
      handlers: {
        t: async (job) => {
          job.progress(60, "most of it");
          await release.opened;
          return "finished";
        },
      },
    });
    const run = worker.runUntil();
    try {
      await eventually("progress 60", async () => (await client.getJob(jobId)).progress === 60);
      assert.equal((await client.getJob(jobId)).progressMessage, "most of it");
      // A deadline this far out was granted after the first one had passed: the lease
      // outlived its visibility timeout on extensions alone.
      const first = (await client.getJob(jobId)).leaseDeadlineMs;
      await eventually(
        "an extension granted after the first deadline",
        async () => (await client.getJob(jobId)).leaseDeadlineMs >= first + 3000,
      );
    } finally {
      release.open();
    }
    const report = await run;
    assert.equal(report.succeeded, 1);
    const job = await client.getJob(jobId);
    assert.deepEqual([job.state, job.result.toString(), job.attempt, job.expirations], ["SUCCEEDED", "finished", 1, 0]);
    await assertUsedTheStream(b.node, 1);
  });
});

test("a cancel reaches the handler through a stream extension's answer as JobCancelledError", async () => {
  await withBroker([], async (b, client) => {
    const { jobId } = await client.enqueue("c", "x", { jobType: "t" });
    const started = latch();
    /** @type {unknown} */
    let reason;
    // Extended every 200 ms: the answer to the first extension after the cancel says
    // FAILED_PRECONDITION with reason "cancelled".
    const worker = new Worker(client, {
      queues: "c",
      maxJobs: 1,
      visibilityTimeoutMs: 600,
      handlers: {
        t: (job) => {
          started.open();
          return new Promise((_resolve, reject) => {
            job.signal.addEventListener("abort", () => {
              reason = job.signal.reason;
              reject(job.signal.reason);
            });
          });
        },
      },
    });
    const run = worker.runUntil();
    await started.opened;
    await client.cancelJob(jobId);
    const report = await run;
    assert.ok(reason instanceof JobCancelledError, String(reason));
    assert.deepEqual([report.succeeded, report.failed, report.abandoned], [0, 0, 1]);
    assert.equal((await client.getJob(jobId)).state, "CANCELLED");
    await assertUsedTheStream(b.node, 1);
  });
});

/**
 * A TCP proxy to one address whose connections can all be cut at once (the listener
 * stays), so a worker's stream breaks while the broker runs on.
 * @param {string} target host:port
 */
async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  /** @type {Set<import("node:net").Socket>} */
  const open = new Set();
  const server = createServer((down) => {
    const up = createConnection({ host, port });
    for (const [a, z] of [
      [down, up],
      [up, down],
    ]) {
      if (!a || !z) continue;
      open.add(a);
      a.pipe(z);
      a.on("error", () => z.destroy());
      a.on("close", () => {
        open.delete(a);
        z.destroy();
      });
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const address = server.address();
  assert.ok(address && typeof address === "object");
  return {
    addr: `127.0.0.1:${address.port}`,
    /** Breaks every connection made so far. */
    cut() {
      for (const s of [...open]) s.destroy();
    },
    close() {
      server.close();
      this.cut();
    },
  };
}

test("a cut connection: the worker resumes its session, the session adopts the held jobs, none is lost", async () => {
  await withBroker([], async (b, client) => {
    const proxy = await startProxy(b.addr);
    const viaProxy = new Client(proxy.addr);
    try {
      const ids = (
        await client.enqueueBatch(Array.from({ length: 9 }, (_, i) => ({ queue: "r", payload: String(i), jobType: "t" })))
      ).map((e) => e.jobId);
      /** @type {string[]} */
      const runs = [];
      const release = latch();
      /** @type {Array<{ message: string, fields: Record<string, unknown> | undefined }>} */
      const logs = [];
      const record = (/** @type {string} */ message, /** @type {Record<string, unknown> | undefined} */ fields) => {
        logs.push({ message, fields });
      };
      // A long visibility timeout, so only the session's own handling of the break
      // decides what happens to the held jobs.
      const worker = new Worker(viaProxy, {
        queues: "r",
        concurrency: 3,
        maxJobs: 9,
        visibilityTimeoutMs: 60_000,
        logger: { debug: record, info: record, warn: record, error: record },
        handlers: {
          t: async (job) => {
            runs.push(job.id);
            await release.opened;
          },
        },
      });
      const run = worker.runUntil();
      try {
        await eventually("3 handlers running", () => runs.length === 3);
        proxy.cut();
        await eventually("a resumed session adopting the 3 held jobs", () =>
          logs.some((l) => l.message === "work session open" && l.fields?.["adopted"] === 3),
        );
      } finally {
        release.open();
      }
      const report = await run;
      assert.deepEqual([report.succeeded, report.leased, report.leaseCalls], [9, 9, 2]);
      assert.deepEqual([...runs].sort(), [...ids].sort());
      for (const id of ids) {
        const job = await client.getJob(id);
        assert.deepEqual([job.state, job.attempt, job.expirations], ["SUCCEEDED", 1, 0]);
      }
    } finally {
      viaProxy.close();
      proxy.close();
    }
    const calls = await eventually("both sessions counted", async () => {
      const c = await rpcCalls(b.node);
      return c["Work"] === 2 ? c : undefined;
    }, 10_000);
    assert.equal(calls["Lease"] ?? 0, 0, JSON.stringify(calls));
  });
});

test("a broker restart under a stream worker: a fresh session, and every job succeeds", async () => {
  // The broker is killed mid-run and started again on its data dir (same ports): the
  // session cannot be resumed (it lived in the dead process), so the worker opens a
  // fresh one, settles what it held, and every job ends SUCCEEDED.
  await withBroker([], async (b, client) => {
    const ids = (
      await client.enqueueBatch(Array.from({ length: 30 }, (_, i) => ({ queue: "k", payload: String(i), jobType: "t" })))
    ).map((e) => e.jobId);
    /** @type {string[]} */
    const done = [];
    let gate = latch();
    gate.open();
    const workerClient = new Client(b.addr);
    const worker = new Worker(workerClient, {
      queues: "k",
      concurrency: 3,
      visibilityTimeoutMs: 2000,
      handlers: {
        t: async (job) => {
          await gate.opened;
          done.push(job.id);
        },
      },
    });
    const run = worker.runUntil();
    try {
      await eventually("a few jobs done before the restart", () => done.length >= 5);
      gate = latch();
      await b.node.kill();
      b.node.launch();
      await b.node.ready();
      gate.open();
      await eventually(
        "every job to succeed after the restart",
        async () => (await Promise.all(ids.map((id) => client.getJob(id)))).every((j) => j.state === "SUCCEEDED"),
        60_000,
      );
    } finally {
      gate.open();
      worker.shutdown();
    }
    const report = await run.finally(() => workerClient.close());
    assert.ok(report.leaseCalls >= 2, `a second session after the restart: ${JSON.stringify(report)}`);
    assert.equal((await client.queueStats("k")).leased, 0);
    // The restarted node's counters: the worker came back on a Work session.
    const calls = await eventually("a Work session counted after the restart", async () => {
      const c = await rpcCalls(b.node);
      return (c["Work"] ?? 0) >= 1 ? c : undefined;
    }, 10_000);
    assert.equal(calls["Lease"] ?? 0, 0, JSON.stringify(calls));
  });
});
