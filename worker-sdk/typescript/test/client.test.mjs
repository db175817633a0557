// @ts-check
// Client against a real one-node broker: producer and admin calls, errors, token,
// retries across nodes.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  Client,
  ConfigError,
  InvalidArgumentError,
  NotFoundError,
  UnauthenticatedError,
  UnavailableError,
} from "../dist/index.js";
import { freePort, startBroker } from "./broker.mjs";

/** @type {Awaited<ReturnType<typeof startBroker>>} */
let broker;
/** @type {Client} */
let client;

before(async () => {
  broker = await startBroker();
  client = new Client(broker.addr);
});
after(async () => {
  client?.close();
  await broker?.stop();
});

describe("producer calls", () => {
  test("enqueue stores payload, options and headers; getJob reads them back", async () => {
    const { jobId, duplicate } = await client.enqueue("c-enq", Buffer.from([0, 1, 2, 255]), {
      jobType: "resize",
      priority: 7,
      maxAttempts: 5,
      headers: { tenant: "acme" },
    });
    assert.equal(duplicate, false);
    const job = await client.getJob(jobId);
    assert.deepEqual(
      [job.queue, job.jobType, job.priority, job.maxAttempts, job.state, job.attempt],
      ["c-enq", "resize", 7, 5, "READY", 0],
    );
    assert.deepEqual([...job.payload], [0, 1, 2, 255]);
    assert.equal(job.headers["tenant"], "acme");
  });

  test("the same idempotency key returns the first job and stores nothing", async () => {
    const a = await client.enqueue("c-idem", "one", { idempotencyKey: "order-42" });
    const b = await client.enqueue("c-idem", "two", { idempotencyKey: "order-42" });
    assert.deepEqual(b, { jobId: a.jobId, duplicate: true });
    assert.equal((await client.queueStats("c-idem")).ready, 1);
  });

  test("a delayed job is scheduled; runAt in the past is ready", async () => {
    const later = await client.enqueue("c-delay", "x", { delayMs: 60_000 });
    assert.equal((await client.getJob(later.jobId)).state, "SCHEDULED");
    const now = await client.enqueue("c-delay", "x", { runAt: new Date(0) });
    assert.equal((await client.getJob(now.jobId)).state, "READY");
    await assert.rejects(client.enqueue("c-delay", "x", { delayMs: 1, runAt: 5 }), ConfigError);
  });

  test("enqueueJson and a batch keep order; a bad job refuses the whole batch by index", async () => {
    const one = await client.enqueueJson("c-batch", { to: "ada@example.com" });
    assert.deepEqual(JSON.parse((await client.getJob(one.jobId)).payload.toString()), { to: "ada@example.com" });
    const results = await client.enqueueBatch([
      { queue: "c-batch", payload: "a", priority: 1 },
      { queue: "c-batch", payload: "b", jobType: "t" },
      { queue: "c-batch", payload: "c", idempotencyKey: "k" },
    ]);
    assert.equal(results.length, 3);
    const jobs = await client.listJobs("c-batch");
    assert.deepEqual(jobs.map((j) => j.payload.toString()), ['{"to":"ada@example.com"}', "a", "b", "c"]);
    await assert.rejects(
      client.enqueueBatch([
        { queue: "c-batch", payload: "ok" },
        { queue: "bad queue!", payload: "no" },
      ]),
      (e) => e instanceof InvalidArgumentError && /jobs\[1\]/.test(e.message),
    );
    assert.equal((await client.listJobs("c-batch")).length, 4);
  });

  test("traceparent sent with an enqueue lands in the job's headers", async () => {
    const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const { jobId } = await client.enqueue("c-trace", "x", { traceparent: tp });
    assert.equal((await client.getJob(jobId)).headers["traceparent"], tp);
  });

  test("bad input and unknown jobs raise typed errors", async () => {
    await assert.rejects(client.enqueue("no spaces allowed", "x"), InvalidArgumentError);
    await assert.rejects(client.getJob("01900000-0000-7000-8000-000000000000"), NotFoundError);
  });
});

describe("admin calls", () => {
  test("cancel, retry, pause, resume, stats, listJobs by state, cluster status", async () => {
    const { jobId } = await client.enqueue("c-admin", "x");
    const cancelled = await client.cancelJob(jobId);
    assert.equal(cancelled.state, "CANCELLED");
    assert.equal((await client.listJobs("c-admin", { state: "CANCELLED" })).length, 1);
    assert.equal((await client.listJobs("c-admin", { state: "READY" })).length, 0);
    assert.equal((await client.retryJob(jobId)).state, "READY");
    assert.equal((await client.pauseQueue("c-admin")).paused, true);
    assert.ok((await client.listQueues()).some((q) => q.queue === "c-admin" && q.paused));
    const resumed = await client.resumeQueue("c-admin");
    assert.deepEqual([resumed.paused, resumed.ready], [false, 1]);
    assert.equal(await client.redriveDeadJobs("c-admin"), 0);
    const status = await client.clusterStatus();
    assert.equal(status.leaderId, status.nodeId);
    assert.equal(status.nodes.length, 1);
    assert.ok(Array.isArray(await client.listWorkers()));
  });

  test("waitForJob returns a final job, or times out on a live one", async () => {
    const { jobId } = await client.enqueue("c-wait", "x");
    await assert.rejects(client.waitForJob(jobId, 100), /still READY/);
    await client.cancelJob(jobId);
    assert.equal((await client.waitForJob(jobId, 5000)).state, "CANCELLED");
  });
});

describe("connections", () => {
  test("a dead address is skipped: calls move on to the next node", async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    const c = new Client([dead, broker.addr], { retryForMs: 10_000 });
    try {
      const { jobId } = await c.enqueue("c-failover", "x");
      assert.equal((await c.getJob(jobId)).state, "READY");
    } finally {
      c.close();
    }
  });

  test("no node answering is UNAVAILABLE once the retry window is used up", async () => {
    const c = new Client([`127.0.0.1:${await freePort()}`], { retryForMs: 400 });
    const start = Date.now();
    try {
      await assert.rejects(c.enqueue("c-down", "x"), (e) => e instanceof UnavailableError && e.retryable);
      assert.ok(Date.now() - start >= 100, "retried for a while");
    } finally {
      c.close();
    }
  });

  test("a broker that starts after the client is reached by retrying", async () => {
    const port = await freePort();
    const c = new Client(`127.0.0.1:${port}`, { retryForMs: 30_000 });
    /** @type {Awaited<ReturnType<typeof startBroker>> | undefined} */
    let late;
    try {
      // An enqueue needs a leader: the node answers it only once it has elected itself.
      const call = c.enqueue("c-late", "x");
      // The first attempts fail with connection refused while the node is not there.
      const { BrokerNode } = await import("./broker.mjs");
      const { mkdtempSync, rmSync } = await import("node:fs");
      const { tmpdir } = await import("node:os");
      const dir = mkdtempSync(`${tmpdir()}/taskraft-ts-late-`);
      const node = new BrokerNode(`${dir}/node`, `127.0.0.1:${port}`, `127.0.0.1:${await freePort()}`, [
        "--peer-listen",
        `127.0.0.1:${await freePort()}`,
      ]);
      late = {
        node,
        addr: node.addr,
        async stop() {
          await node.kill();
          rmSync(dir, { recursive: true, force: true });
        },
      };
      const { jobId } = await call;
      assert.equal((await c.getJob(jobId)).state, "READY");
    } finally {
      c.close();
      await late?.stop();
    }
  });

  test("configuration mistakes are refused up front", () => {
    assert.throws(() => new Client([]), ConfigError);
    assert.throws(() => new Client("not-an-address"), ConfigError);
    assert.throws(() => new Client("127.0.0.1:1", { callTimeoutMs: 0 }), ConfigError);
    assert.throws(() => new Client("127.0.0.1:1", { token: "bad\ntoken" }), ConfigError);
  });
});

describe("token", () => {
  test("calls need the broker's token; with it they pass", async () => {
    const secured = await startBroker(["--token", "s3cret"]);
    const without = new Client(secured.addr);
    const wrong = new Client(secured.addr, { token: "nope" });
    const right = new Client(secured.addr, { token: "s3cret" });
    try {
      await assert.rejects(without.enqueue("c-auth", "x"), UnauthenticatedError);
      await assert.rejects(wrong.queueStats("c-auth"), UnauthenticatedError);
      const { jobId } = await right.enqueue("c-auth", "x");
      assert.equal((await right.getJob(jobId)).state, "READY");
    } finally {
      without.close();
      wrong.close();
      right.close();
      await secured.stop();
    }
  });
});
