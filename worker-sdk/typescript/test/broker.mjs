// @ts-check
// Test fixture: real `taskraft serve` processes (binary from TASKRAFT_BIN) on free
// loopback ports, each with its own temporary data dir, killed when the test ends.

import { spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** Bound for anything that should happen "soon" (startup, elections). */
export const SOON_MS = 30_000;

export function taskraftBin() {
  const bin = process.env["TASKRAFT_BIN"];
  if (!bin) throw new Error("set TASKRAFT_BIN to the path of the taskraft binary (e.g. target/debug/taskraft)");
  return bin;
}

/** A free loopback port (bound and released; a tiny race is acceptable in tests). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/**
 * HTTP GET status code, or 0 when the node does not answer.
 * @param {string} url
 */
async function httpStatus(url) {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await r.arrayBuffer();
    return r.status;
  } catch {
    return 0;
  }
}

export class BrokerNode {
  /**
   * @param {string} dir data dir
   * @param {string} addr gRPC host:port
   * @param {string} http HTTP host:port
   * @param {string[]} extra more `serve` flags
   */
  constructor(dir, addr, http, extra) {
    this.dir = dir;
    this.addr = addr;
    this.http = http;
    this.args = ["serve", "--listen", addr, "--http", http, "--data-dir", dir, ...extra];
    this.log = `${dir}.log`;
    /** @type {import("node:child_process").ChildProcess | undefined} */
    this.child = undefined;
    this.launch();
  }

  launch() {
    const fd = openSync(this.log, "a");
    this.child = spawn(taskraftBin(), this.args, {
      stdio: ["ignore", fd, fd],
      env: { ...process.env, RUST_LOG: "info,openraft=warn" },
    });
  }

  /** Waits until /readyz says the node knows a leader. */
  async ready() {
    const deadline = Date.now() + SOON_MS;
    while ((await httpStatus(`http://${this.http}/readyz`)) !== 200) {
      if (Date.now() > deadline) throw new Error(`node ${this.addr} never became ready; log:\n${this.logTail()}`);
      if (this.child?.exitCode !== null) throw new Error(`node ${this.addr} exited; log:\n${this.logTail()}`);
      await sleep(50);
    }
    return this;
  }

  logTail() {
    try {
      return readFileSync(this.log, "utf8").slice(-4000);
    } catch {
      return "";
    }
  }

  /** SIGKILL and wait for the exit. */
  async kill() {
    const c = this.child;
    this.child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((resolve) => c.once("exit", resolve));
    c.kill("SIGKILL");
    await exited;
  }
}

/**
 * Starts a one-node broker and waits until it is ready.
 * @param {string[]} [extra] more `serve` flags
 */
export async function startBroker(extra = []) {
  const root = mkdtempSync(join(tmpdir(), "taskraft-ts-"));
  const node = new BrokerNode(join(root, "node"), `127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`, [
    "--peer-listen",
    `127.0.0.1:${await freePort()}`,
    ...extra,
  ]);
  await node.ready();
  return {
    node,
    addr: node.addr,
    async stop() {
      await node.kill();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/**
 * Starts `n` nodes that form one cluster through --peers, and waits until all are ready.
 * @param {number} n
 * @param {string[]} [extra]
 */
export async function startCluster(n, extra = []) {
  const root = mkdtempSync(join(tmpdir(), "taskraft-ts-"));
  const addrs = [];
  /** @type {string[]} */
  const peerAddrs = [];
  for (let i = 0; i < n; i++) {
    addrs.push(`127.0.0.1:${await freePort()}`);
    peerAddrs.push(`127.0.0.1:${await freePort()}`);
  }
  const peers = addrs.map((a, i) => `${i + 1}=${a}/${peerAddrs[i]}`).join(",");
  /** @type {BrokerNode[]} */
  const nodes = [];
  for (let i = 0; i < n; i++) {
    const http = `127.0.0.1:${await freePort()}`;
    nodes.push(new BrokerNode(join(root, `node-${i + 1}`), /** @type {string} */ (addrs[i]), http, ["--id", String(i + 1), "--peers", peers, "--peer-listen", /** @type {string} */ (peerAddrs[i]), ...extra]));
  }
  await Promise.all(nodes.map((x) => x.ready()));
  return {
    nodes,
    addrs,
    async stop() {
      await Promise.all(nodes.map((x) => x.kill()));
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/**
 * Polls `check` until it returns a truthy value; fails with `what` after `timeoutMs`.
 * @template T
 * @param {string} what
 * @param {() => Promise<T> | T} check
 * @param {number} [timeoutMs]
 * @returns {Promise<NonNullable<T>>}
 */
export async function eventually(what, check, timeoutMs = SOON_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return /** @type {NonNullable<T>} */ (v);
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await sleep(25);
  }
}
