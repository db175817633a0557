// @ts-check
// Enqueue request ids against a real broker: every request the client builds carries
// its own random id, the broker answers a repeat of one with the first job, and a
// retried call whose first attempt was stored (its answer lost on the way back) keeps
// its id, so the job is stored once.
import assert from "node:assert/strict";
import { connect, createServer } from "node:net";
import { after, before, test } from "node:test";

import { Client, InvalidArgumentError } from "../dist/index.js";
import { startBroker } from "./broker.mjs";

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

/** A client that records the request of every call it makes (once per call, not per attempt). */
class Recording extends Client {
  /** @type {{ name: string, request: any }[]} */
  calls = [];
  /** @override @type {Client["call"]} */
  call(name, request, options) {
    this.calls.push({ name, request });
    return super.call(name, request, options);
  }
}

test("every enqueue, JSON enqueue and job of a batch carries its own random request id", async () => {
  const c = new Recording(broker.addr);
  try {
    const a = await c.enqueue("r-ids", "same");
    const b = await c.enqueue("r-ids", "same");
    await c.enqueueJson("r-ids", { same: true });
    await c.enqueueJson("r-ids", { same: true });
    const batch = await c.enqueueBatch([
      { queue: "r-ids", payload: "same" },
      { queue: "r-ids", payload: "same" },
      { queue: "r-ids", payload: "same" },
    ]);
    /** @type {string[]} */
    const ids = c.calls.flatMap(({ name, request }) =>
      name === "EnqueueBatch" ? request.jobs.map((/** @type {any} */ j) => j.requestId) : [request.requestId],
    );
    assert.equal(ids.length, 7);
    for (const id of ids) assert.match(id, /^[0-9a-f]{32}$/);
    assert.equal(new Set(ids).size, 7, `request ids repeat: ${ids.join(" ")}`);
    // Equal jobs are still separate jobs: only a repeat of the same call is a duplicate.
    assert.notEqual(a.jobId, b.jobId);
    assert.ok([a, b, ...batch].every((r) => !r.duplicate));
    assert.equal((await c.listJobs("r-ids")).length, 7);
  } finally {
    c.close();
  }
});

test("the same request id twice returns the first job (duplicate) and stores nothing", async () => {
  /** @param {string} queue @param {string} payload @param {Record<string, string>} ids */
  const send = (queue, payload, ids) => client.call("Enqueue", { queue, payload: Buffer.from(payload), ...ids });
  const first = await send("r-dup", "one", { requestId: "req-1" });
  assert.equal(first.duplicate, false);
  const again = await send("r-dup", "two", { requestId: "req-1" });
  assert.deepEqual([again.jobId, again.duplicate], [first.jobId, true]);
  assert.equal((await client.getJob(first.jobId)).payload.toString(), "one");
  // Another id, or the same id on another queue, is another job.
  assert.equal((await send("r-dup", "three", { requestId: "req-2" })).duplicate, false);
  assert.equal((await send("r-dup-other", "four", { requestId: "req-1" })).duplicate, false);
  // With an idempotency key the key decides, not the request id.
  const k1 = await send("r-dup", "five", { requestId: "req-3", idempotencyKey: "k1" });
  const k2 = await send("r-dup", "six", { requestId: "req-3", idempotencyKey: "k2" });
  assert.notEqual(k1.jobId, k2.jobId);
  assert.equal(k2.duplicate, false);
  assert.equal((await client.listJobs("r-dup")).length, 4);
  // At most 200 bytes.
  await assert.rejects(send("r-dup", "x", { requestId: "r".repeat(201) }), InvalidArgumentError);
  assert.equal((await send("r-dup", "x", { requestId: "r".repeat(200) })).duplicate, false);
});

/**
 * Splits an HTTP/2 byte stream into frames, calling `onFrame(type, stream, bytes)` for
 * each; with `preface` (the client's side) its first 24 bytes, the connection preface,
 * come first as type -1.
 * @param {boolean} preface
 * @param {(type: number, stream: number, bytes: Buffer) => void} onFrame
 */
function frameSplitter(preface, onFrame) {
  let buf = Buffer.alloc(0);
  let inPreface = preface;
  return (/** @type {Buffer} */ chunk) => {
    buf = Buffer.concat([buf, chunk]);
    if (inPreface) {
      if (buf.length < 24) return;
      onFrame(-1, 0, buf.subarray(0, 24));
      buf = buf.subarray(24);
      inPreface = false;
    }
    while (buf.length >= 9) {
      const end = 9 + buf.readUIntBE(0, 3);
      if (buf.length < end) return;
      const frame = buf.subarray(0, end);
      buf = buf.subarray(end);
      onFrame(frame.readUInt8(3), frame.readUInt32BE(5) & 0x7fffffff, frame);
    }
  };
}

const RST_STREAM = 0x3;

/**
 * A TCP proxy (plaintext HTTP/2) to `target` that loses the answer to the first call
 * sent through it; everything else passes. The first call reaches the broker, which
 * stores what it asks for, but its answer does not reach the client:
 *   `drop`:      the connection is closed when the answer starts (the client sees
 *                UNAVAILABLE and retries on a new connection);
 *   `blackhole`: the answer is held back until the client gives up on it (its deadline
 *                passes and it resets the stream), then let through, too late; the
 *                retry's answer, behind it, passes. (Held, not dropped: a dropped
 *                HEADERS frame would break the connection's header compression.)
 * Frames on stream 0 (SETTINGS, PING, connection WINDOW_UPDATE) always pass.
 * @param {string} target host:port
 * @param {"drop" | "blackhole"} mode
 */
async function answerLosingProxy(target, mode) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  /** Answers lost, client connections, and whether the client reset the held stream. */
  const state = { lost: 0, connections: 0, reset: false };
  /** @type {{ conn: number, stream: number } | undefined} */
  let victim;
  /** @type {Set<import("node:net").Socket>} */
  const sockets = new Set();
  const server = createServer((down) => {
    const conn = ++state.connections;
    const up = connect(port, host);
    for (const s of [down, up]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        down.destroy();
        up.destroy();
      });
    }
    /** Server frames held back while the victim's answer is held (blackhole). */
    /** @type {Buffer[] | undefined} */
    let held;
    down.on(
      "data",
      frameSplitter(true, (type, stream, frame) => {
        if (held && type === RST_STREAM && victim?.conn === conn && stream === victim.stream) {
          state.reset = true;
          up.write(frame);
          for (const f of held) down.write(f);
          held = undefined;
          return;
        }
        up.write(frame);
      }),
    );
    up.on(
      "data",
      frameSplitter(false, (_type, stream, frame) => {
        if (stream !== 0 && victim === undefined) {
          victim = { conn, stream };
          state.lost++;
          if (mode === "drop") {
            down.destroy();
            up.destroy();
            return;
          }
          held = [];
        }
        if (stream !== 0 && held) held.push(frame);
        else down.write(frame);
      }),
    );
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const addr = server.address();
  assert.ok(addr && typeof addr === "object");
  return {
    addr: `127.0.0.1:${addr.port}`,
    state,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

test("an enqueue whose answer is lost (connection dropped) is retried with the same id: one job", async () => {
  const proxy = await answerLosingProxy(broker.addr, "drop");
  const c = new Client(proxy.addr, { retryForMs: 20_000 });
  try {
    const r = await c.enqueue("r-lost", "once");
    assert.equal(proxy.state.lost, 1, "the first answer was lost");
    assert.ok(proxy.state.connections >= 2, "the retry came on a new connection");
    // The first attempt stored the job; the retry found it by its request id.
    assert.equal(r.duplicate, true);
    const jobs = await client.listJobs("r-lost");
    assert.deepEqual(jobs.map((j) => [j.jobId, j.payload.toString()]), [[r.jobId, "once"]]);
  } finally {
    c.close();
    proxy.close();
  }
});

test("a batch whose answer never comes (deadline) is retried with the same ids: each job once", async () => {
  const proxy = await answerLosingProxy(broker.addr, "blackhole");
  const c = new Client(proxy.addr, { retryForMs: 20_000, callTimeoutMs: 1000 });
  try {
    const results = await c.enqueueBatch([
      { queue: "r-lost-batch", payload: "a" },
      { queue: "r-lost-batch", payload: "b" },
      { queue: "r-lost-batch", payload: "c" },
    ]);
    assert.equal(proxy.state.lost, 1, "the first answer was lost");
    assert.ok(proxy.state.reset, "the client gave up on the first attempt (reset its stream)");
    assert.equal(proxy.state.connections, 1, "the retry came on the same connection");
    assert.deepEqual(results.map((r) => r.duplicate), [true, true, true]);
    const jobs = await client.listJobs("r-lost-batch");
    assert.deepEqual(
      jobs.map((j) => [j.jobId, j.payload.toString()]),
      results.map((r, i) => [r.jobId, ["a", "b", "c"][i]]),
    );
  } finally {
    c.close();
    proxy.close();
  }
});
