// @ts-check
// Test fixture: real `taskraft serve` processes (binary from TASKRAFT_BIN) on free
// loopback ports, each with its own temporary data dir, killed when the test ends.
// `startBroker(extra, { tls })` serves TLS (`--tls-cert`/`--tls-key`) on every port;
// readiness is then polled over HTTPS, trusting the given CA.

import { spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { get as httpsGet } from "node:https";
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
 * Certificate, key and CA (PEM files) of a broker serving TLS.
 * @typedef {{ cert: string, key: string, ca: string }} TlsFiles
 */

/**
 * HTTP GET status code, or 0 when the node does not answer. With `ca` (PEM) the URL is
 * https:// and the server certificate is checked against that CA (fetch() cannot be
 * given one).
 * @param {string} url
 * @param {Buffer} [ca]
 * @returns {Promise<number>}
 */
async function httpStatus(url, ca) {
  if (ca) {
    return new Promise((resolve) => {
      const req = httpsGet(url, { ca, timeout: 2000 }, (res) => {
        res.resume();
        res.once("end", () => resolve(res.statusCode ?? 0));
        res.once("error", () => resolve(0));
      });
      req.once("timeout", () => req.destroy());
      req.once("error", () => resolve(0));
    });
  }
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
   * @param {TlsFiles} [tls] serve TLS with these files
   */
  constructor(dir, addr, http, extra, tls) {
    this.dir = dir;
    this.addr = addr;
    this.http = http;
    /** CA to check the HTTPS readiness probe against, when the node serves TLS. */
    this.ca = tls ? readFileSync(tls.ca) : undefined;
    const tlsFlags = tls ? ["--tls-cert", tls.cert, "--tls-key", tls.key] : [];
    this.args = ["serve", "--listen", addr, "--http", http, "--data-dir", dir, ...tlsFlags, ...extra];
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
    const url = `${this.ca ? "https" : "http"}://${this.http}/readyz`;
    while ((await httpStatus(url, this.ca)) !== 200) {
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
 * @param {{ tls?: TlsFiles }} [options] `tls`: serve TLS on every port with these files
 */
export async function startBroker(extra = [], options = {}) {
  const root = mkdtempSync(join(tmpdir(), "taskraft-ts-"));
  const node = new BrokerNode(
    join(root, "node"),
    `127.0.0.1:${await freePort()}`,
    `127.0.0.1:${await freePort()}`,
    ["--peer-listen", `127.0.0.1:${await freePort()}`, ...extra],
    options.tls,
  );
  try {
    await node.ready();
  } catch (e) {
    await node.kill();
    rmSync(root, { recursive: true, force: true });
    throw e;
  }
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
