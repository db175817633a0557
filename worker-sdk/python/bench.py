"""Throughput of Python workers: enqueue N jobs with batch enqueue, then W worker
processes with a no-op handler drain them; prints jobs/s of the drain.

    python bench.py                      # starts a broker from $TASKRAFT_BIN in a temp dir
    python bench.py --addrs 127.0.0.1:7070 --jobs 100000 --workers 4

Each worker is a separate process (so the GIL is not shared) running
``taskraft.Worker`` with ``--concurrency`` handlers and ``--prefetch`` jobs
leased ahead; the clock runs from the workers' start until the broker counts
every job SUCCEEDED.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import taskraft


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_broker(binary: str, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    grpc_port, http_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}",
         "--data-dir", str(data)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            with opener.open(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, f"127.0.0.1:{grpc_port}"
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the broker did not become ready within 30 s")


def _worker(addr: str, queue: str, concurrency: int, prefetch: int, sync: bool,
            protocol: taskraft.Protocol) -> None:
    worker = taskraft.Worker(taskraft.Client([addr]), queue, concurrency=concurrency,
                             prefetch=prefetch, poll_wait=1.0, lease_linger=0.005,
                             protocol=protocol)
    if sync:
        worker.add_handler("noop", lambda job: None)
    else:
        async def noop(job: taskraft.Job) -> None:
            return None
        worker.add_handler("noop", noop)
    worker.run()  # until SIGTERM from the parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addrs", help="broker address (default: start one from $TASKRAFT_BIN)")
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--prefetch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--sync", action="store_true", help="a sync (thread pool) no-op handler instead of async")
    ap.add_argument("--protocol", choices=["stream", "poll"], default="stream",
                    help="the workers' protocol (default: one Work stream each)")
    args = ap.parse_args()

    broker: subprocess.Popen[bytes] | None = None
    data = Path(tempfile.mkdtemp(prefix="taskraft-bench-"))
    if args.addrs:
        addr = args.addrs
    else:
        binary = os.environ.get("TASKRAFT_BIN") or shutil.which("taskraft")
        if not binary:
            raise SystemExit("set TASKRAFT_BIN or pass --addrs")
        broker, addr = _start_broker(binary, data / "node")
        print(f"broker: {binary} at {addr}", file=sys.stderr)
    try:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        with taskraft.Client([addr], call_timeout=60) as client:
            t0 = time.monotonic()
            for start in range(0, args.jobs, args.batch):
                n = min(args.batch, args.jobs - start)
                client.enqueue_batch(taskraft.NewJob(queue, b"", job_type="noop") for _ in range(n))
            enq = time.monotonic() - t0
            print(f"enqueued {args.jobs} jobs in {enq:.2f}s ({args.jobs / enq:,.0f} jobs/s, batches of {args.batch})")

            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker, args=(addr, queue, args.concurrency, args.prefetch, args.sync,
                                                          args.protocol))
                     for _ in range(args.workers)]
            t0 = time.monotonic()
            for p in procs:
                p.start()
            while True:
                stats = client.queue_stats(queue)
                if stats.succeeded >= args.jobs:
                    break
                if not any(p.is_alive() for p in procs):
                    raise SystemExit("every worker process exited early")
                time.sleep(0.05)
            took = time.monotonic() - t0
            for p in procs:
                if p.pid is not None:
                    os.kill(p.pid, signal.SIGTERM)
            for p in procs:
                p.join(60)
        kind = "sync" if args.sync else "async"
        print(f"{args.workers} workers x concurrency {args.concurrency} (prefetch {args.prefetch}, {kind} no-op handler): "
              f"{args.jobs} jobs in {took:.2f}s = {args.jobs / took:,.0f} jobs/s")
    finally:
        if broker is not None:
            broker.kill()
            broker.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
