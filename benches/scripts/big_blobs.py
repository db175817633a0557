"""Big payloads and results through snapshots and restarts (issue 11's 1,600 x 1 MiB case).

Starts a 3-node cluster of real `taskraft serve` processes, enqueues --jobs jobs with a
--size payload, leases and acks each with a --size result, waits for a snapshot that
covers them, kill -9s and restarts the leader, then wipes a follower, removes and re-adds
it so that it catches up by snapshot, and checks every count and a sample of payloads and
results on every node. Prints RSS and disk use along the way.

    worker-sdk/python/.venv/bin/python benches/scripts/big_blobs.py \
        --bin target/release/taskraft --jobs 1600 --size 1048576

Needs the Python SDK (the test suite's venv has it). Exit status 0 when every check held.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import taskraft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def disk_mib(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total / 2**20


class Node:
    def __init__(self, binary: str, node_id: int, addr: str, peers: str, data: str) -> None:
        self.binary, self.id, self.addr, self.data = binary, node_id, addr, data
        self.args = ["serve", "--id", str(node_id), "--listen", addr,
                     "--http", f"127.0.0.1:{free_port()}", "--data-dir", data,
                     "--peers", peers, "--snapshot-max-age", "2s"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(data + ".log", "ab")

    def start(self, peers: str | None = None) -> None:
        args = list(self.args)
        if peers is not None:
            args[args.index("--peers") + 1] = peers
        self.proc = subprocess.Popen([self.binary, *args], stdout=self.log, stderr=self.log)

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def log_text(self) -> str:
        with open(self.data + ".log", errors="replace") as f:
            return f.read()


def wait(what: str, check, timeout: float = 600.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except taskraft.TaskraftError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"FAIL: timed out waiting for {what}")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/taskraft")
    ap.add_argument("--jobs", type=int, default=1600)
    ap.add_argument("--size", type=int, default=1 << 20)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="taskraft-blobs-")
    addrs = {i: f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
    peers = ",".join(f"{i}={addr}" for i, addr in addrs.items())
    nodes = {i: Node(a.bin, i, addrs[i], peers, os.path.join(root, f"node-{i}")) for i in addrs}
    try:
        for n in nodes.values():
            n.start()
        client = taskraft.Client(list(addrs.values()), retry_for=120)
        wait("a leader", lambda: client.cluster_status().leader_id)
        payload = lambda i: (b"%08d" % i) * (a.size // 8)  # noqa: E731
        result = lambda i: (b"r%07d" % i) * (a.size // 8)  # noqa: E731
        t0 = time.monotonic()
        ids = [client.enqueue("blobs", payload(i), job_type="blob").job_id for i in range(a.jobs)]
        done = 0
        while done < a.jobs:
            for job in client.lease(["blobs"], worker_id="w", max_jobs=16, visibility_timeout=600):
                i = ids.index(job.job_id)
                assert job.payload == payload(i), f"payload of job {i}"
                client.ack(job.job_id, job.lease_id, result=result(i))
                done += 1
        print(f"enqueued and acked {a.jobs} jobs of {a.size} B payload + {a.size} B result "
              f"in {time.monotonic() - t0:.1f} s")

        def report(when: str) -> None:
            parts = [f"node {i}: RSS {rss_mib(n.proc.pid):.0f} MiB, disk {disk_mib(n.data):.0f} MiB"
                     for i, n in nodes.items() if n.proc is not None]
            print(f"{when}: " + " | ".join(parts))

        report("after the acks")

        def check(addr: str, label: str) -> None:
            with taskraft.Client([addr], retry_for=60) as c:
                s = c.queue_stats("blobs")
                assert s.succeeded == a.jobs, f"{label}: {s}"
                for i in range(0, a.jobs, max(1, a.jobs // 16)):
                    info = c.get_job(ids[i])
                    assert info.payload == payload(i), f"{label}: payload of job {i}"
                    assert info.result == result(i), f"{label}: result of job {i}"
            print(f"{label}: {a.jobs} succeeded, sampled payloads and results intact")

        leader = client.cluster_status().leader_id
        check(addrs[leader], "leader before the kill")
        wait("a snapshot on the leader covering every job",
             lambda: nodes[leader].log_text().count("built snapshot") >= 2, 120)
        t0 = time.monotonic()
        nodes[leader].kill9()
        nodes[leader].start()
        wait("the restarted node to answer", lambda: check(addrs[leader], "restarted leader") or True)
        print(f"leader {leader} kill -9 + restart: checks passed {time.monotonic() - t0:.2f} s later")
        report("after the restart")

        follower = next(i for i in addrs if i != client.cluster_status().leader_id)
        nodes[follower].kill9()
        shutil.rmtree(nodes[follower].data)
        leader_addr = addrs[client.cluster_status().leader_id]
        cli = lambda *args: subprocess.run(  # noqa: E731
            [a.bin, "--server", leader_addr, "cluster", *args], check=True, capture_output=True)
        cli("remove-node", str(follower))
        others = ",".join(f"{i}={addrs[i]}" for i in addrs if i != follower)
        t0 = time.monotonic()
        nodes[follower].start(peers=others)
        cli("add-node", str(follower), addrs[follower])
        wait("the wiped follower to install a snapshot",
             lambda: "installed snapshot" in nodes[follower].log_text(), 600)
        wait("the follower's counts", lambda: check(addrs[follower], "re-added follower") or True)
        print(f"wiped follower {follower} caught up by snapshot in {time.monotonic() - t0:.1f} s")
        report("after the catch-up")
        for i, n in nodes.items():
            assert n.proc is not None and n.proc.poll() is None, f"node {i} exited"
        print("PASS")
    finally:
        for n in nodes.values():
            n.kill9()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
