// @ts-check
// TLS against a real broker started with `--tls-cert/--tls-key`: a throwaway CA and a
// server certificate for IP 127.0.0.1 (ECDSA P-256, made with the openssl CLI), then
// an enqueue and a worker's lease + ack over https://, and the errors of clients that
// do not trust the CA or do not speak TLS.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Client, UnavailableError, Worker } from "../dist/index.js";
import { startBroker } from "./broker.mjs";

/**
 * Writes ca.pem, node.pem and node.key (PKCS#8; the broker takes SEC1 "EC PRIVATE KEY"
 * files too) into `dir` with the openssl CLI.
 * @param {string} dir
 * @returns {import("./broker.mjs").TlsFiles}
 */
function makeCertificates(dir) {
  /** @param {string[]} args */
  const openssl = (...args) => {
    try {
      execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      const err = /** @type {Error & { stderr?: Buffer }} */ (e);
      throw new Error(`openssl ${args.join(" ")} failed (is the openssl CLI installed?): ${err.message}\n${err.stderr ?? ""}`);
    }
  };
  const p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
  openssl("genpkey", ...p256, "-out", "ca.key");
  openssl(
    "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=taskraft test CA", "-days", "1",
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    "-out", "ca.pem",
  );
  openssl("genpkey", ...p256, "-out", "node.key");
  openssl("req", "-new", "-key", "node.key", "-subj", "/CN=127.0.0.1", "-out", "node.csr");
  writeFileSync(
    join(dir, "node.ext"),
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
      "subjectAltName=IP:127.0.0.1",
      "",
    ].join("\n"),
  );
  openssl(
    "x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "0x5eed",
    "-days", "1", "-extfile", "node.ext", "-out", "node.pem",
  );
  return { cert: join(dir, "node.pem"), key: join(dir, "node.key"), ca: join(dir, "ca.pem") };
}

/** @type {string} */
let certDir;
/** @type {import("./broker.mjs").TlsFiles} */
let files;
/** @type {Awaited<ReturnType<typeof startBroker>>} */
let broker;

before(async () => {
  certDir = mkdtempSync(join(tmpdir(), "taskraft-ts-tls-"));
  files = makeCertificates(certDir);
  broker = await startBroker([], { tls: files });
});
after(async () => {
  await broker?.stop();
  if (certDir) rmSync(certDir, { recursive: true, force: true });
});

test("with the CA, an https:// client enqueues and a worker leases and acks over TLS", async () => {
  const client = new Client(`https://${broker.addr}`, { tls: { caFile: files.ca } });
  try {
    const { jobId, duplicate } = await client.enqueue("t-tls", "over tls", { jobType: "echo" });
    assert.equal(duplicate, false);
    assert.equal((await client.getJob(jobId)).state, "READY");
    const worker = new Worker(client, { queues: "t-tls", maxJobs: 1, pollWaitMs: 200 }).handle(
      "echo",
      (job) => `got ${job.text()}`,
    );
    const report = await worker.runUntil();
    assert.deepEqual([report.succeeded, report.failed, report.leased], [1, 0, 1]);
    const job = await client.getJob(jobId);
    assert.deepEqual([job.state, job.result.toString()], ["SUCCEEDED", "got over tls"]);
  } finally {
    client.close();
  }
});

test("the CA can be given as PEM (tls.ca), and a tls object turns TLS on for host:port", async () => {
  const client = new Client(broker.addr, { tls: { ca: readFileSync(files.ca, "utf8") } });
  try {
    const { jobId } = await client.enqueue("t-tls-pem", "x");
    // A raw lease + ack over the same TLS channel.
    const leased = await client.call("Lease", {
      queues: ["t-tls-pem"],
      workerId: "tls-test",
      maxJobs: 1,
      visibilityTimeoutMs: 30_000,
      waitMs: 0,
    });
    assert.deepEqual(leased.jobs.map((j) => j.jobId), [jobId]);
    const lease = /** @type {NonNullable<(typeof leased.jobs)[0]>} */ (leased.jobs[0]);
    await client.call("Ack", { jobId, leaseId: lease.leaseId, result: Buffer.from("done") });
    assert.equal((await client.getJob(jobId)).state, "SUCCEEDED");
  } finally {
    client.close();
  }
});

test("without the CA, or for another name, the client fails with a certificate error soon", async () => {
  const cases = [
    { options: {}, reason: /unable to verify|self[- ]signed|certificate/i },
    { options: { tls: { caFile: files.ca, serverName: "taskraft.example" } }, reason: /altnames|does not match/i },
  ];
  for (const { options, reason } of cases) {
    // retryForMs bounds the wait: a certificate error is retried like any connect error.
    const client = new Client(`https://${broker.addr}`, { retryForMs: 1000, callTimeoutMs: 2000, ...options });
    const start = Date.now();
    try {
      await assert.rejects(client.enqueue("t-tls-untrusted", "x"), (e) => {
        assert.ok(e instanceof UnavailableError, String(e));
        assert.match(e.message, reason);
        assert.match(e.message, /a TLS failure: .*tls\.caFile/);
        return true;
      });
      assert.ok(Date.now() - start < 10_000, `failed after ${Date.now() - start} ms, not soon after the 1 s window`);
    } finally {
      client.close();
    }
  }
  // Nothing got through.
  const trusted = new Client(`https://${broker.addr}`, { tls: { caFile: files.ca } });
  try {
    assert.equal((await trusted.queueStats("t-tls-untrusted")).ready, 0);
  } finally {
    trusted.close();
  }
});

test("a plaintext client gets UNAVAILABLE from a TLS broker soon, not a hang", async () => {
  const client = new Client(broker.addr, { retryForMs: 1000, callTimeoutMs: 2000 });
  const start = Date.now();
  try {
    await assert.rejects(client.enqueue("t-tls-plain", "x"), UnavailableError);
    assert.ok(Date.now() - start < 10_000, `failed after ${Date.now() - start} ms`);
  } finally {
    client.close();
  }
});
