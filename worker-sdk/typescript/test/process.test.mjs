// @ts-check
// Worker processes: SIGTERM lets the job in hand finish before the process exits;
// and a 3-node cluster whose leader is SIGKILLed keeps serving the client.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { Client, Worker } from "../dist/index.js";
import { SOON_MS, eventually, startBroker, startCluster } from "./broker.mjs";

test("SIGTERM lets the job in hand finish before the worker process exits", async () => {
  const broker = await startBroker();
  const client = new Client(broker.addr);
  try {
    const { jobId } = await client.enqueue("p-term", "x");
    const script = fileURLToPath(new URL("./fixtures/sigterm-worker.mjs", import.meta.url));
    const child = spawn(process.execPath, [script, broker.addr, "p-term", "1500"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    const lines = createInterface({ input: /** @type {import("node:stream").Readable} */ (child.stdout) });
    /** @type {string[]} */
    const seen = [];
    const started = new Promise((resolve) =>
      lines.on("line", (line) => {
        seen.push(line);
        if (line.startsWith("started")) resolve(line);
      }),
    );
    const timer = setTimeout(() => child.kill("SIGKILL"), SOON_MS);
    assert.equal(await started, `started ${jobId}`);
    child.kill("SIGTERM");
    const { code, signal } = /** @type {{code: number, signal: string}} */ (await exited);
    clearTimeout(timer);
    assert.deepEqual([code, signal], [0, null], seen.join("\n"));
    assert.deepEqual(seen, [`started ${jobId}`, `finished ${jobId}`, "stopped succeeded=1"]);
    const job = await client.getJob(jobId);
    assert.deepEqual([job.state, job.attempt], ["SUCCEEDED", 1]);
  } finally {
    client.close();
    await broker.stop();
  }
});

test("when the leader of a 3-node cluster is SIGKILLed the client and a worker carry on", async () => {
  const cluster = await startCluster(3);
  const client = new Client(cluster.addrs, { retryForMs: 30_000 });
  try {
    const before = await client.enqueue("p-failover", "before", { idempotencyKey: "before" });
    /** @type {Set<string>} */
    const done = new Set();
    const worker = new Worker(client, {
      queues: "p-failover",
      concurrency: 2,
      pollWaitMs: 500,
      visibilityTimeoutMs: 3000,
      defaultHandler: (job) => void done.add(job.id),
    });
    const run = worker.runUntil();
    await eventually("the first job ran", () => done.has(before.jobId));
    const status = await client.clusterStatus();
    const leader = cluster.nodes[Number(status.leaderId) - 1];
    assert.ok(leader, `leader ${status.leaderId}`);
    await leader.kill();
    /** @type {string[]} */
    const ids = [];
    for (let i = 0; i < 5; i++) {
      ids.push((await client.enqueue("p-failover", `after-${i}`, { idempotencyKey: `after-${i}` })).jobId);
    }
    const after = await client.clusterStatus();
    assert.notEqual(after.leaderId, status.leaderId);
    await eventually("every job enqueued after the kill ran", () => ids.every((id) => done.has(id)));
    worker.shutdown();
    await run;
    for (const id of ids) assert.equal((await client.waitForJob(id, SOON_MS)).state, "SUCCEEDED");
  } finally {
    client.close();
    await cluster.stop();
  }
});
