"""The worker's protocols against a real broker: the default ``Work`` stream (one
session, credits, settles and extensions by seq, resume after a break) and
``protocol="poll"`` (``Lease`` calls, unary settles).

Each test has a broker of its own, so the broker's ``/metrics`` RPC counters
(``taskraft_rpc_duration_seconds_count`` by method) show which calls the worker made:
a stream worker opens ``Work`` sessions and makes no ``Lease``, ``Ack``, ``Nack`` or
``ExtendLease`` call while its session is up.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskraft
from brokers import BrokerNode
from conftest import WorkerThread
from taskraft import Job, JobState
from util import assert_lease_outlives_first_deadline, eventually

WORK = "Work"
UNARY = ("Lease", "Ack", "Nack", "ExtendLease")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BrokerNode]:
    """A broker of this test's own (fresh metrics)."""
    n = BrokerNode(tmp_path / "node").start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.kill()


def rpc_calls(node: BrokerNode) -> dict[str, int]:
    """``Broker`` calls the node has seen since it started, by method (any code)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{node.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("taskraft_rpc_duration_seconds_count{"):
            continue
        m = re.search(r'method="/taskraft\.v1\.Broker/(\w+)"', line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def assert_used_the_stream(node: BrokerNode, sessions: int | None = None) -> None:
    calls = rpc_calls(node)
    unary = {m: calls.get(m, 0) for m in UNARY}
    assert unary == dict.fromkeys(UNARY, 0), f"unary worker calls on the stream protocol: {calls}"
    assert calls.get(WORK, 0) >= 1, f"no Work session: {calls}"
    if sessions is not None:
        assert calls[WORK] == sessions, calls


def test_default_protocol_processes_every_job_on_one_work_session(
    node: BrokerNode, start_worker: type[WorkerThread]
) -> None:
    with taskraft.Client([node.addr]) as client:
        ids = [e.job_id for e in client.enqueue_batch(
            taskraft.NewJob("s", f"{i}", job_type="t") for i in range(40))]

        async def echo(job: Job) -> str:
            return f"done {job.text()}"

        w = taskraft.Worker(client, "s", concurrency=4, prefetch=2, max_jobs=40,
                            handlers={"t": echo})
        assert w.protocol == "stream"
        report = start_worker(w).join()
        assert (report.succeeded, report.failed, report.leased) == (40, 0, 40)
        assert report.lease_calls == 1  # sessions opened
        for i, job_id in enumerate(ids):
            job = client.get_job(job_id)
            assert (job.state, job.result, job.attempt) == (JobState.SUCCEEDED, f"done {i}".encode(), 1)
        assert client.queue_stats("s").leased == 0
    assert_used_the_stream(node, sessions=1)


def test_poll_protocol_still_uses_lease_calls(
    node: BrokerNode, start_worker: type[WorkerThread]
) -> None:
    with taskraft.Client([node.addr]) as client:
        ids = [e.job_id for e in client.enqueue_batch(
            taskraft.NewJob("p", f"{i}", job_type="t") for i in range(10))]
        w = taskraft.Worker(client, "p", concurrency=2, max_jobs=10, protocol="poll",
                            handlers={"t": lambda job: job.payload})
        report = start_worker(w).join()
        assert (report.succeeded, report.leased) == (10, 10)
        assert all(client.get_job(i).state == JobState.SUCCEEDED for i in ids)
    calls = rpc_calls(node)
    assert calls.get(WORK, 0) == 0, calls
    assert calls.get("Lease", 0) >= 1 and calls.get("Ack", 0) == 10, calls


def test_an_unknown_protocol_is_refused(node: BrokerNode) -> None:
    with pytest.raises(taskraft.ConfigError, match="protocol"):
        taskraft.Worker([node.addr], "q", protocol="carrier-pigeon")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["stream", "poll"])
def test_failures_end_in_the_same_states_on_both_protocols(
    node: BrokerNode, start_worker: type[WorkerThread], protocol: taskraft.Protocol
) -> None:
    """Retry then dead letter, a permanent error, a flaky job that succeeds on its
    second delivery: the same job states whichever protocol settles them."""
    with taskraft.Client([node.addr]) as client:
        always = client.enqueue(protocol, b"always", job_type="t", max_attempts=3).job_id
        permanent = client.enqueue(protocol, b"permanent", job_type="t", max_attempts=5).job_id
        flaky = client.enqueue(protocol, b"flaky", job_type="t", max_attempts=3).job_id
        runs: dict[str, list[int]] = {}

        def handler(job: Job) -> str:
            runs.setdefault(job.text(), []).append(job.attempt)
            if job.text() == "always":
                raise taskraft.RetryableError("always fails", retry_after=0.05)
            if job.text() == "permanent":
                raise taskraft.PermanentError("never works")
            if job.attempt == 1:
                raise ValueError("first try fails")
            return "ok"

        # 3 + 1 + 2 deliveries.
        w = taskraft.Worker(client, protocol, concurrency=2, max_jobs=6, protocol=protocol,
                            handlers={"t": handler})
        report = start_worker(w).join()
        assert (report.succeeded, report.failed, report.leased) == (1, 5, 6)
        a, p, f = client.get_job(always), client.get_job(permanent), client.get_job(flaky)
        assert (a.state, a.attempt, a.last_error) == (JobState.DEAD, 3, "always fails")
        assert (p.state, p.attempt, p.last_error) == (JobState.DEAD, 1, "never works")
        assert (f.state, f.attempt, f.result) == (JobState.SUCCEEDED, 2, b"ok")
        assert f.last_error == "ValueError: first try fails"
        assert runs == {"always": [1, 2, 3], "permanent": [1], "flaky": [1, 2]}
    if protocol == "stream":
        assert_used_the_stream(node, sessions=1)
    else:
        assert rpc_calls(node).get(WORK, 0) == 0


def test_heartbeats_on_the_stream_keep_a_long_jobs_lease(
    node: BrokerNode, start_worker: type[WorkerThread]
) -> None:
    with taskraft.Client([node.addr]) as client:
        job_id = client.enqueue("hb", b"x", job_type="t").job_id
        release = threading.Event()

        def slow(job: Job) -> str:
            job.progress(60, "most of it")
            assert release.wait(60), "never released"
            return "finished"

        # Extended every second; a heartbeat may come 2 s late on a loaded machine.
        wt = start_worker(taskraft.Worker(client, "hb", max_jobs=1, visibility_timeout=3,
                                          handlers={"t": slow}))
        eventually(lambda: client.get_job(job_id).progress == 60, what="progress 60")
        assert client.get_job(job_id).progress_message == "most of it"
        assert_lease_outlives_first_deadline(client, job_id, visibility_ms=3000)
        release.set()
        report = wt.join()
        assert report.succeeded == 1
        job = client.get_job(job_id)
        assert (job.state, job.result, job.attempt, job.expirations) == (
            JobState.SUCCEEDED, b"finished", 1, 0)
    assert_used_the_stream(node, sessions=1)


class Proxy:
    """A TCP proxy to one address whose connections can all be cut at once (the
    listener stays), so a worker's stream breaks while the broker runs on."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self._target, timeout=5)
                up.settimeout(None)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._open += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Breaks every connection made so far."""
        with self._lock:
            conns, self._open = self._open, []
            self.cuts += 1
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


def test_a_broken_stream_is_resumed_and_its_jobs_kept(
    node: BrokerNode, start_worker: type[WorkerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """The connection breaks while 3 handlers run: the worker resumes its session on
    the same node naming the jobs it holds, the session adopts them, and every job
    succeeds on its first delivery (none is lost or run twice)."""
    caplog.set_level(logging.INFO, logger="taskraft.worker")
    proxy = Proxy(node.addr)
    try:
        with taskraft.Client([node.addr]) as client:
            ids = [e.job_id for e in client.enqueue_batch(
                taskraft.NewJob("r", f"{i}", job_type="t") for i in range(9))]
            running = threading.Semaphore(0)
            release = threading.Event()
            runs: list[str] = []

            def held(job: Job) -> None:
                runs.append(job.id)
                running.release()
                assert release.wait(60), "never released"

            # Through the proxy; a long visibility timeout, so only the session's own
            # handling of the break decides what happens to the held jobs.
            wt = start_worker(taskraft.Worker([proxy.addr], "r", concurrency=3, max_jobs=9,
                                              visibility_timeout=60, handlers={"t": held}))
            for _ in range(3):
                assert running.acquire(timeout=30)
            proxy.cut()
            eventually(lambda: any("adopted 3" in r.getMessage() for r in caplog.records),
                       what="a resumed session adopting the 3 held jobs")
            release.set()
            report = wt.join(60)
            assert (report.succeeded, report.leased, report.lease_calls) == (9, 9, 2)
            assert sorted(runs) == sorted(ids)
            for job_id in ids:
                job = client.get_job(job_id)
                assert (job.state, job.attempt, job.expirations) == (JobState.SUCCEEDED, 1, 0)
    finally:
        proxy.close()
    calls = rpc_calls(node)
    assert calls.get(WORK, 0) == 2 and calls.get("Lease", 0) == 0, calls


def test_jobs_survive_a_broker_restart_under_a_stream_worker(
    node: BrokerNode, start_worker: type[WorkerThread]
) -> None:
    """The broker is killed mid-run and started again on its data dir (same ports):
    the session cannot be resumed (it lived in the dead process), so the worker opens
    a fresh one, settles what it held, and every job ends SUCCEEDED."""
    with taskraft.Client([node.addr]) as client:
        ids = [e.job_id for e in client.enqueue_batch(
            taskraft.NewJob("k", f"{i}", job_type="t") for i in range(30))]
    done: list[str] = []
    gate = threading.Event()
    gate.set()

    def work(job: Job) -> None:
        assert gate.wait(60), "never let through"
        done.append(job.id)

    wt = start_worker(taskraft.Worker([node.addr], "k", concurrency=3, visibility_timeout=2,
                                      handlers={"t": work}))
    eventually(lambda: len(done) >= 5, what="a few jobs done before the restart")
    gate.clear()
    node.kill()
    node.start()
    node.wait_ready()
    gate.set()
    with taskraft.Client([node.addr]) as client:
        def all_succeeded() -> bool:
            return all(client.get_job(i).state == JobState.SUCCEEDED for i in ids)

        eventually(all_succeeded, timeout=60, what="every job to succeed after the restart")
        report = wt.stop()
        assert report.lease_calls >= 2  # a second session after the restart
        assert client.queue_stats("k").leased == 0
    # The restarted node's counters: the worker came back on a Work session.
    calls = rpc_calls(node)
    assert calls.get(WORK, 0) >= 1 and calls.get("Lease", 0) == 0, calls


def test_stream_answers_raise_the_unary_calls_errors() -> None:
    """The session's answer codes map to the exceptions the unary calls raise (the
    worker's cancel / lost-lease / retry handling relies on it); UNAVAILABLE, a
    session that ends before answering, and no session at all give ``None`` (resend
    unary)."""
    from taskraft import _session
    from taskraft._rpc import pb

    async def main() -> None:
        link = _session.Link()
        ack = pb.WorkRequest(ack=pb.AckRequest(job_id="j", lease_id="l"))
        assert await link.call(ack, 1.0) is None  # no session
        requests = _session.Requests(pb.WorkRequest(open=pb.WorkOpen(queues=["q"])))
        link.set(1, requests)
        sent = requests.iterate()
        assert (await anext(sent)).WhichOneof("kind") == "open"

        async def answered(a: pb.WorkAnswer) -> pb.WorkAnswer | None:
            call = asyncio.ensure_future(link.call(pb.WorkRequest(ack=pb.AckRequest()), 5.0))
            req = await anext(sent)
            assert req.seq > 0
            a.seq = req.seq
            link.answer(1, a)
            return await call

        ok = await answered(pb.WorkAnswer(code=0))
        assert ok is not None and ok.code == 0
        with pytest.raises(taskraft.JobCancelledError):
            await answered(pb.WorkAnswer(code=9, message="cancelled", reason="cancelled"))
        with pytest.raises(taskraft.LeaseLostError):
            await answered(pb.WorkAnswer(code=9, message="stale", reason="stale-lease"))
        with pytest.raises(taskraft.FailedPreconditionError) as e:
            await answered(pb.WorkAnswer(code=9, message="done", reason="wrong-state"))
        assert e.value.reason == "wrong-state"
        with pytest.raises(taskraft.NotFoundError):
            await answered(pb.WorkAnswer(code=5, message="no such job"))
        with pytest.raises(taskraft.InvalidArgumentError):
            await answered(pb.WorkAnswer(code=3, message="bad"))
        assert await answered(pb.WorkAnswer(code=14, message="no leader")) is None
        # The stream breaks with a settle waiting: it gets None.
        waiting = asyncio.ensure_future(link.call(pb.WorkRequest(ack=pb.AckRequest()), 5.0))
        await anext(sent)
        link.clear(1)
        assert await waiting is None
        assert not link.up and await link.call(ack, 1.0) is None

    asyncio.run(main())
