"""The Python runner of the language-neutral conformance scenarios
(``tests/conformance/`` of the taskraft repository; its README is the protocol).

::

    python -m taskraft.conformance <scenario.json> --addrs host:port[,host:port...]

One function per scenario id reads ``params`` and ``expect`` from the file and
drives the SDK (a :class:`taskraft.Client` and :class:`taskraft.Worker`) against
the cluster at ``--addrs``. Progress events are JSON lines on stdout; the last
stdout line is ``{"result": "pass"}`` (exit 0), ``{"result": "fail", "reason":
...}`` (exit 1) or ``{"result": "unsupported", "reason": ...}`` (exit 2).
``{"control": "kill_leader"}`` asks the harness to SIGKILL the leader; it answers
``{"killed": <node id>}`` on stdin. Logs go to stderr. ``TASKRAFT_CONFORMANCE_TOKEN``
is sent as the bearer token when set.

``params.queue`` is a prefix: the runner appends a unique suffix, so repeated
runs against one cluster never see each other's jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from taskraft.client import Client
from taskraft.errors import PermanentError, RetryableError
from taskraft.job import Job
from taskraft.models import JobState, NewJob
from taskraft.worker import Report, Worker

log = logging.getLogger("taskraft.conformance")

_T = TypeVar("_T")


class Fail(Exception):
    """The SDK did not behave as the scenario expects."""


class Unsupported(Exception):
    """The scenario needs something this SDK does not offer."""


_stdout_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    """Writes one JSON line to stdout."""
    with _stdout_lock:
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()


@dataclass
class Ctx:
    """What a scenario function gets."""

    scenario: dict[str, Any]
    addrs: list[str]
    token: str | None
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = self.scenario.get("params", {})
        return p

    @property
    def expect(self) -> dict[str, Any]:
        e: dict[str, Any] = self.scenario.get("expect", {})
        return e

    @property
    def timeout(self) -> float:
        """The scenario's time budget in seconds (``params.timeout_ms``)."""
        return float(self.params.get("timeout_ms", 60000)) / 1000

    def queue(self) -> str:
        return f"{self.params['queue']}-{self.suffix}"

    def client(self, **kw: Any) -> Client:
        return Client(self.addrs, token=self.token, **kw)

    def kill_leader(self) -> int:
        """Asks the harness to SIGKILL the leader; returns the killed node's id."""
        emit({"control": "kill_leader"})
        line = sys.stdin.readline()
        if not line:
            raise Fail("the harness closed stdin instead of answering kill_leader")
        try:
            killed = int(json.loads(line)["killed"])
        except (ValueError, KeyError, TypeError) as e:
            raise Fail(f"unreadable kill_leader answer {line.strip()!r}: {e}") from e
        emit({"event": "leader_killed", "node": killed})
        return killed


def check(cond: bool, reason: str) -> None:
    """Fails the scenario with ``reason`` unless ``cond``."""
    if not cond:
        raise Fail(reason)


def poll(probe: Callable[[], _T | None], timeout: float, what: str) -> _T:
    """Calls ``probe`` until it returns something other than None/False, pausing
    20 ms .. 250 ms; fails after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    pause = 0.02
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= end:
            raise Fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


class Recorder:
    """Thread-safe notes taken by handlers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def add(self, **event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)

    def count(self, **match: Any) -> int:
        return sum(
            1 for e in self.snapshot() if all(e.get(k) == v for k, v in match.items())
        )


class WorkerThread:
    """Runs a :class:`Worker` in a daemon thread."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.report: Report | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="conformance-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.report = self.worker.run(handle_signals=False)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, timeout: float) -> Report:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise Fail(f"worker did not stop within {timeout:.0f}s")
        if self.error is not None:
            raise Fail(f"worker failed: {self.error!r}")
        assert self.report is not None
        return self.report

    def stop(self, timeout: float) -> Report:
        self.worker.stop()
        return self.join(timeout)


def _state(name: str) -> JobState:
    return JobState[name]


# -- scenarios ------------------------------------------------------------------


def roundtrip(ctx: Ctx) -> None:
    p, x = ctx.params, ctx.expect
    q = ctx.queue()
    payload = base64.b64decode(p["payload_base64"])
    headers: dict[str, str] = dict(p["headers"])
    with ctx.client() as client:
        job_id = client.enqueue(
            q, payload, job_type=p["job_type"], priority=p["priority"], headers=headers
        ).job_id
        rec = Recorder()

        def echo(job: Job) -> bytes:
            rec.add(
                id=job.id,
                payload=job.payload,
                headers=dict(job.headers),
                queue=job.queue,
                job_type=job.job_type,
                priority=job.priority,
                attempt=job.attempt,
            )
            return job.payload

        w = Worker(client, q, concurrency=1, max_jobs=1,
                   visibility_timeout=p["visibility_timeout_ms"] / 1000,
                   handlers={p["job_type"]: echo})
        WorkerThread(w).join(ctx.timeout)
        seen = rec.snapshot()
        check(len(seen) == 1, f"handler ran {len(seen)} times, expected 1")
        s = seen[0]
        check(s["id"] == job_id, "handler got another job")
        if x.get("payload_intact"):
            check(s["payload"] == payload, f"payload changed: {s['payload']!r} != {payload!r}")
        if x.get("headers_intact"):
            check(s["headers"] == headers, f"headers changed: {s['headers']} != {headers}")
        check(s["queue"] == q and s["job_type"] == p["job_type"], "queue or job_type changed")
        check(s["priority"] == p["priority"], f"priority {s['priority']} != {p['priority']}")
        info = client.wait_for_job(job_id, ctx.timeout)
        check(info.state == _state(x["final_state"]), f"job ended {info.state.name}")
        check(info.attempt == x["attempts"], f"attempt {info.attempt} != {x['attempts']}")
        check(s["attempt"] == x["attempts"], f"handler saw attempt {s['attempt']}")
        if x.get("result_is_payload"):
            check(info.result == payload, f"result {info.result!r} is not the payload")


def priority_order(ctx: Ctx) -> None:
    p, x = ctx.params, ctx.expect
    q = ctx.queue()
    with ctx.client() as client:
        client.enqueue_batch(
            [NewJob(q, j["name"], job_type=p["job_type"], priority=j["priority"]) for j in p["jobs"]]
        )
        order: list[str] = []

        def record(job: Job) -> None:
            order.append(job.text())

        w = Worker(client, q, concurrency=p["concurrency"], prefetch=p.get("prefetch", 0),
                   max_jobs=len(p["jobs"]), visibility_timeout=p["visibility_timeout_ms"] / 1000,
                   handlers={p["job_type"]: record})
        WorkerThread(w).join(ctx.timeout)
        check(order == x["order"], f"ran in order {order}, expected {x['order']}")
        stats = client.queue_stats(q)
        check(stats.succeeded == len(p["jobs"]), f"{stats.succeeded} jobs succeeded")


def lease_extension(ctx: Ctx) -> None:
    p, x = ctx.params, ctx.expect
    q = ctx.queue()
    with ctx.client() as client:
        job_id = client.enqueue(q, b"slow", job_type=p["job_type"]).job_id
        rec = Recorder()

        async def slow(job: Job) -> str:  # an asyncio handler
            rec.add(attempt=job.attempt)
            await asyncio.sleep(p["handler_ms"] / 1000)
            return "done"

        w = Worker(client, q, concurrency=1, max_jobs=1,
                   visibility_timeout=p["visibility_timeout_ms"] / 1000,
                   handlers={p["job_type"]: slow})
        WorkerThread(w).join(ctx.timeout)
        info = client.wait_for_job(job_id, ctx.timeout)
        check(info.state == _state(x["final_state"]), f"job ended {info.state.name}: {info.last_error}")
        check(info.attempt == x["attempts"], f"{info.attempt} deliveries, expected {x['attempts']}")
        check(info.expirations == x["expirations"], f"lease expired {info.expirations} times")
        check(len(rec.snapshot()) == x["handler_runs"], f"handler ran {len(rec.snapshot())} times")


def _failing(ctx: Ctx, raise_it: Callable[[str], BaseException]) -> None:
    p, x = ctx.params, ctx.expect
    q = ctx.queue()
    with ctx.client() as client:
        job_id = client.enqueue(
            q, b"x", job_type=p["job_type"], max_attempts=p["max_attempts"]
        ).job_id
        starts: list[float] = []

        def fail(job: Job) -> None:
            starts.append(time.monotonic())
            raise raise_it(p["error_message"])

        w = Worker(client, q, concurrency=1, visibility_timeout=p["visibility_timeout_ms"] / 1000,
                   handlers={p["job_type"]: fail})
        wt = WorkerThread(w)
        try:
            info = client.wait_for_job(job_id, ctx.timeout)
        finally:
            wt.stop(ctx.timeout)
        check(info.state == _state(x["final_state"]), f"job ended {info.state.name}")
        check(info.attempt == x["attempts"], f"attempt {info.attempt} != {x['attempts']}")
        check(len(starts) == x["handler_runs"], f"handler ran {len(starts)} times")
        check(x["last_error_contains"] in info.last_error, f"last_error is {info.last_error!r}")
        for i, want_ms in enumerate(x.get("min_gaps_ms", [])):
            gap_ms = (starts[i + 1] - starts[i]) * 1000
            check(gap_ms >= want_ms, f"retry {i + 1} came after {gap_ms:.0f} ms, expected >= {want_ms}")


def retry_until_dead(ctx: Ctx) -> None:
    _failing(ctx, RetryableError)


def permanent_error(ctx: Ctx) -> None:
    _failing(ctx, PermanentError)


def cancel_running(ctx: Ctx) -> None:
    p, x = ctx.params, ctx.expect
    q = ctx.queue()
    with ctx.client() as client:
        job_id = client.enqueue(q, b"long", job_type=p["job_type"]).job_id
        rec = Recorder()
        started = threading.Event()

        def long(job: Job) -> None:
            rec.add(event="started")
            started.set()
            observed = job.cancelled.wait(p["handler_max_ms"] / 1000)
            rec.add(event="finished", observed=observed, reason=job.cancelled.reason,
                    at=time.monotonic())

        w = Worker(client, q, concurrency=1, visibility_timeout=p["visibility_timeout_ms"] / 1000,
                   handlers={p["job_type"]: long})
        wt = WorkerThread(w)
        try:
            check(started.wait(ctx.timeout), "the handler never started")
            cancelled_at = time.monotonic()
            info = client.cancel_job(job_id)
            check(info.state == JobState.CANCELLED, f"CancelJob left the job {info.state.name}")
            done = poll(lambda: [e for e in rec.snapshot() if e["event"] == "finished"] or None,
                        x["observe_within_ms"] / 1000 + 1, "the handler to observe the cancellation")
        finally:
            wt.stop(ctx.timeout)
        ev = done[0]
        check(ev["observed"] is x["handler_observed_cancel"], "the handler did not see the cancellation")
        check(ev["reason"] == "cancelled", f"cancel token reason {ev['reason']!r}")
        took_ms = (ev["at"] - cancelled_at) * 1000
        check(took_ms <= x["observe_within_ms"], f"cancellation reached the handler after {took_ms:.0f} ms")
        final = client.get_job(job_id)
        check(final.state == _state(x["final_state"]), f"job ended {final.state.name}")
        check(rec.count(event="started") == x["handler_runs"], "the job ran again after cancellation")


def graceful_shutdown(ctx: Ctx) -> None:
    p, x = ctx.params, ctx.expect
    q = ctx.queue()
    with ctx.client() as client:
        ids = [e.job_id for e in client.enqueue_batch(
            [NewJob(q, f"job-{i}", job_type=p["job_type"]) for i in range(p["jobs"])]
        )]
        rec = Recorder()
        running = threading.Semaphore(0)

        def make(tag: str, sleep_s: float) -> Callable[[Job], None]:
            def work(job: Job) -> None:
                rec.add(worker=tag, id=job.id, event="started")
                running.release()
                time.sleep(sleep_s)
                rec.add(worker=tag, id=job.id, event="finished")
            return work

        vis = p["visibility_timeout_ms"] / 1000
        first = Worker(client, q, concurrency=p["concurrency"], prefetch=p["prefetch"],
                       visibility_timeout=vis, handlers={p["job_type"]: make("first", p["handler_ms"] / 1000)})
        wt = WorkerThread(first)
        try:
            poll(lambda: rec.count(worker="first", event="started") >= x["running_at_stop"],
                 ctx.timeout, f"{x['running_at_stop']} handlers to run")
            poll(lambda: client.queue_stats(q).leased >= x["held_at_stop"], ctx.timeout,
                 f"the worker to hold {x['held_at_stop']} jobs")
            emit({"event": "stopping_worker", "running": rec.count(worker="first", event="started")})
        finally:
            report = wt.stop(ctx.timeout)
        check(rec.count(worker="first", event="started") == x["running_at_stop"],
              f"{rec.count(worker='first', event='started')} handlers started, expected {x['running_at_stop']}")
        check(rec.count(worker="first", event="finished") == rec.count(worker="first", event="started"),
              "the stopped worker left a started handler unfinished")
        check(report.succeeded == x["first_worker_succeeded"],
              f"the stopped worker acked {report.succeeded} jobs, expected {x['first_worker_succeeded']}")
        stats = client.queue_stats(q)
        check(stats.leased == x["leased_after_stop"], f"{stats.leased} jobs still LEASED after the worker stopped")
        # No expiry, no waiting: a second worker drains the rest.
        second = Worker(client, q, concurrency=p["concurrency"], visibility_timeout=vis,
                        handlers={p["job_type"]: make("second", 0.0)})
        wt2 = WorkerThread(second)
        try:
            poll(lambda: client.queue_stats(q).succeeded >= len(ids), ctx.timeout, "every job to succeed")
        finally:
            wt2.stop(ctx.timeout)
        jobs = [client.get_job(i) for i in ids]
        lost = [j.job_id for j in jobs if j.state != _state(x["final_state"])]
        check(len(lost) == x["lost"], f"jobs not {x['final_state']}: {lost}")
        check(all(j.expirations == x["expirations"] for j in jobs),
              "a job waited for its lease to expire instead of being given back")


def leader_failover(ctx: Ctx) -> None:
    p, x = ctx.params, ctx.expect
    q = ctx.queue()
    if len(ctx.addrs) < 2:
        raise Fail("leader_failover needs the addresses of all 3 nodes")
    with ctx.client(retry_for=60.0) as client:
        rec = Recorder()
        ids: list[str] = []
        producer_error: list[BaseException] = []

        def produce() -> None:
            try:
                for i in range(p["jobs"]):
                    key = f"{q}-{i}" if p["use_idempotency_keys"] else ""
                    ids.append(client.enqueue(q, str(i), job_type=p["job_type"], idempotency_key=key).job_id)
                    time.sleep(p["enqueue_interval_ms"] / 1000)
            except BaseException as e:
                producer_error.append(e)

        def count(job: Job) -> None:
            rec.add(id=job.id)

        w = Worker(client, q, concurrency=p["concurrency"],
                   visibility_timeout=p["visibility_timeout_ms"] / 1000,
                   handlers={p["job_type"]: count})
        wt = WorkerThread(w)
        producer = threading.Thread(target=produce, name="conformance-producer", daemon=True)
        producer.start()
        try:
            poll(lambda: len(rec.snapshot()) >= p["kill_after_succeeded"] or bool(producer_error),
                 ctx.timeout, f"{p['kill_after_succeeded']} jobs to run")
            check(not producer_error, f"enqueue failed before the kill: {producer_error[:1]}")
            killed = ctx.kill_leader()
            producer.join(ctx.timeout)
            check(not producer.is_alive(), "the producer did not finish")
            check(not producer_error, f"enqueue failed after the kill: {producer_error[:1]}")
            distinct = sorted(set(ids))
            poll(lambda: client.queue_stats(q).succeeded >= len(distinct), ctx.timeout,
                 f"all {len(distinct)} jobs to succeed")
        finally:
            wt.stop(ctx.timeout)
        states = {i: client.get_job(i).state for i in distinct}
        lost = [i for i, s in states.items() if s != JobState.SUCCEEDED]
        handled = {e["id"] for e in rec.snapshot()}
        emit({"event": "failover_counts", "killed": killed, "enqueued": len(distinct),
              "handled": len(handled), "handler_runs": len(rec.snapshot())})
        check(x["killed_leader"] is True, "scenario must kill the leader")
        check(len(lost) == x["lost"], f"{len(lost)} jobs not SUCCEEDED: {lost[:5]}")
        check(x["all_succeeded"] is (not lost), "not every job succeeded")
        check(set(distinct) <= handled, "a job succeeded without its handler running")
        if p["use_idempotency_keys"]:
            check(len(distinct) == x["distinct_jobs"], f"{len(distinct)} distinct jobs, expected {x['distinct_jobs']}")


def trace_context(ctx: Ctx) -> None:
    p, x = ctx.params, ctx.expect
    q = ctx.queue()
    trace = {"traceparent": p["traceparent"], "tracestate": p["tracestate"]}
    with ctx.client() as client:
        ids: dict[str, str] = {}
        for via in p["via"]:
            if via == "header":
                ids[via] = client.enqueue(q, via, job_type=p["job_type"], headers=trace).job_id
            elif via == "metadata":
                ids[via] = client.enqueue(q, via, job_type=p["job_type"], metadata=trace).job_id
            else:
                raise Unsupported(f"unknown via {via!r}")
        seen: dict[str, dict[str, str]] = {}

        async def traced(job: Job) -> None:  # an asyncio handler
            seen[job.id] = dict(job.headers)

        w = Worker(client, q, concurrency=1, max_jobs=len(ids),
                   visibility_timeout=p["visibility_timeout_ms"] / 1000,
                   handlers={p["job_type"]: traced})
        WorkerThread(w).join(ctx.timeout)
        for via, job_id in ids.items():
            headers = seen.get(job_id)
            check(headers is not None, f"the {via} job never reached a handler")
            assert headers is not None
            if x.get("traceparent_equal"):
                check(headers.get("traceparent") == p["traceparent"],
                      f"{via}: handler saw traceparent {headers.get('traceparent')!r}")
            if x.get("tracestate_equal"):
                check(headers.get("tracestate") == p["tracestate"],
                      f"{via}: handler saw tracestate {headers.get('tracestate')!r}")
            info = client.wait_for_job(job_id, ctx.timeout)
            check(info.state == _state(x["final_state"]), f"{via}: job ended {info.state.name}")


SCENARIOS: dict[str, Callable[[Ctx], None]] = {
    "roundtrip": roundtrip,
    "priority_order": priority_order,
    "lease_extension": lease_extension,
    "retry_until_dead": retry_until_dead,
    "permanent_error": permanent_error,
    "cancel_running": cancel_running,
    "graceful_shutdown": graceful_shutdown,
    "leader_failover": leader_failover,
    "trace_context": trace_context,
}


def _finish(result: dict[str, Any], code: int) -> None:
    emit(result)
    sys.stderr.flush()
    # Handler threads or channels must not keep the process alive or print after
    # the result line.
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m taskraft.conformance``."""
    ap = argparse.ArgumentParser(prog="python -m taskraft.conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", type=Path, help="path to a scenario .json file")
    ap.add_argument("--addrs", required=True, help="host:port[,host:port...] of the cluster")
    args = ap.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("TASKRAFT_CONFORMANCE_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        scenario = json.loads(args.scenario.read_text())
        sid = scenario["id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        _finish({"result": "fail", "reason": f"cannot read scenario {args.scenario}: {e}"}, 1)
        return
    fn = SCENARIOS.get(sid)
    if fn is None:
        _finish({"result": "unsupported", "reason": f"the Python runner has no scenario {sid!r}"}, 2)
        return
    ctx = Ctx(
        scenario=scenario,
        addrs=[a for a in args.addrs.split(",") if a],
        token=os.environ.get("TASKRAFT_CONFORMANCE_TOKEN") or None,
    )
    # A hung SDK call must still end the run with a result line.
    watchdog = threading.Timer(
        ctx.timeout * 3 + 30,
        lambda: _finish({"result": "fail", "reason": f"runner watchdog: {sid} hung"}, 1),
    )
    watchdog.daemon = True
    watchdog.start()
    emit({"event": "start", "scenario": sid, "sdk": "python", "queue": ctx.queue()})
    started = time.monotonic()
    try:
        fn(ctx)
    except Fail as e:
        _finish({"result": "fail", "reason": str(e)}, 1)
    except Unsupported as e:
        _finish({"result": "unsupported", "reason": str(e)}, 2)
    except Exception as e:
        log.exception("scenario %s raised", sid)
        _finish({"result": "fail", "reason": f"{type(e).__name__}: {e}"}, 1)
    emit({"event": "done", "seconds": round(time.monotonic() - started, 3)})
    _finish({"result": "pass"}, 0)
