"""Worker behaviour against a real broker: handlers (sync and async), results,
failures, retries, dead-lettering, lease extension, progress, cancellation,
concurrency, queue priority, max_jobs, graceful shutdown (signal and stop)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import taskraft
from brokers import BrokerNode
from conftest import WorkerThread
from taskraft import Job, JobState
from util import assert_lease_outlives_first_deadline, eventually

HERE = Path(__file__).resolve().parent


def test_sync_and_async_handlers_ack_with_results(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    ids = {
        "bytes": client.enqueue(queue, b"a", job_type="bytes").job_id,
        "json": client.enqueue_json(queue, {"n": 21}, job_type="json").job_id,
        "async": client.enqueue(queue, b"c", job_type="async").job_id,
        "other": client.enqueue(queue, b"d", job_type="unlisted").job_id,
    }
    w = taskraft.Worker(client, queue, max_jobs=4)

    @w.handler("bytes")
    def raw(job: Job) -> bytes:
        return job.payload + b"!"

    @w.handler("json")
    def double(job: Job) -> dict[str, int]:
        return {"double": job.json()["n"] * 2}

    @w.handler("async")
    async def later(job: Job) -> str:
        await asyncio.sleep(0.01)
        return f"async {job.text()}"

    @w.default
    def fallback(job: Job) -> str:
        return f"default for {job.job_type}"

    report = start_worker(w).join()
    assert (report.succeeded, report.failed, report.leased) == (4, 0, 4)
    results = {k: client.get_job(v) for k, v in ids.items()}
    assert all(j.state == JobState.SUCCEEDED for j in results.values())
    assert results["bytes"].result == b"a!"
    assert results["json"].result_json() == {"double": 42}
    assert results["async"].result == b"async c"
    assert results["other"].result == b"default for unlisted"


def test_an_exception_nacks_and_the_worker_carries_on(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    bad = client.enqueue(queue, b"bad", job_type="t", max_attempts=1).job_id
    good = client.enqueue(queue, b"good", job_type="t").job_id
    missing = client.enqueue(queue, b"?", job_type="nobody", max_attempts=1).job_id

    def handler(job: Job) -> None:
        if job.payload == b"bad":
            raise ValueError("cannot handle bad")

    report = start_worker(taskraft.Worker(client, queue, max_jobs=3, handlers={"t": handler})).join()
    assert (report.succeeded, report.failed) == (1, 2)
    failed = client.get_job(bad)
    assert failed.state == JobState.DEAD and failed.last_error == "ValueError: cannot handle bad"
    assert client.get_job(good).state == JobState.SUCCEEDED
    assert "no handler for job_type 'nobody'" in client.get_job(missing).last_error


def test_retryable_error_retries_then_succeeds(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    job_id = client.enqueue(queue, b"x", job_type="t", max_attempts=3).job_id
    attempts: list[int] = []

    async def flaky(job: Job) -> None:
        attempts.append(job.attempt)
        if job.attempt == 1:
            raise taskraft.RetryableError("try again soon", retry_after=0.05)

    start_worker(taskraft.Worker(client, queue, max_jobs=2, handlers={"t": flaky})).join()
    job = client.get_job(job_id)
    assert attempts == [1, 2]
    assert job.state == JobState.SUCCEEDED and job.attempt == 2


def test_permanent_error_dead_letters_at_once(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    job_id = client.enqueue(queue, b"not json", job_type="t", max_attempts=5).job_id

    def decode(job: Job) -> None:
        job.json()  # a payload that is not JSON is a PermanentError

    start_worker(taskraft.Worker(client, queue, max_jobs=1, handlers={"t": decode})).join()
    job = client.get_job(job_id)
    assert job.state == JobState.DEAD and job.attempt == 1
    assert "payload is not valid JSON" in job.last_error


def test_lease_is_extended_and_progress_reported_while_a_sync_handler_runs(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    job_id = client.enqueue(queue, b"x", job_type="t").job_id
    release = threading.Event()

    def slow(job: Job) -> None:
        job.progress(40, "step 2 of 5")
        release.wait(30)

    # Extended every second: a heartbeat may come 2 s late on a loaded machine.
    wt = start_worker(taskraft.Worker(client, queue, max_jobs=1, visibility_timeout=3, handlers={"t": slow}))
    eventually(lambda: client.get_job(job_id).progress == 40, what="progress 40")
    assert client.get_job(job_id).progress_message == "step 2 of 5"
    assert_lease_outlives_first_deadline(client, job_id, visibility_ms=3000)
    release.set()
    wt.join()
    job = client.get_job(job_id)
    assert job.state == JobState.SUCCEEDED
    assert (job.attempt, job.expirations) == (1, 0)


def test_cancellation_reaches_async_and_sync_handlers(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    a = client.enqueue(queue, b"a", job_type="async").job_id
    s = client.enqueue(queue, b"s", job_type="sync").job_id
    seen: dict[str, str] = {}
    running = threading.Semaphore(0)

    async def long_async(job: Job) -> None:
        running.release()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen["async"] = f"CancelledError, token {job.cancelled.reason}"
            raise

    def long_sync(job: Job) -> None:
        running.release()
        if job.cancelled.wait(60):
            seen["sync"] = f"token {job.cancelled.reason}"

    w = taskraft.Worker(client, queue, concurrency=2, visibility_timeout=3, handlers={"async": long_async, "sync": long_sync})
    wt = start_worker(w)
    for _ in range(2):
        assert running.acquire(timeout=30)
    client.cancel_job(a)
    client.cancel_job(s)
    eventually(lambda: len(seen) == 2, what="both handlers to see the cancellation")
    report = wt.stop()
    assert seen == {"async": "CancelledError, token cancelled", "sync": "token cancelled"}
    assert report.abandoned == 2 and report.succeeded == 0
    assert client.get_job(a).state == client.get_job(s).state == JobState.CANCELLED


def test_concurrency_limit_is_honoured(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    client.enqueue_batch(taskraft.NewJob(queue, f"{i}", job_type="t") for i in range(9))
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def busy(job: Job) -> None:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        # The first handlers hold on until three run at once, however slowly the machine
        # starts them (a fourth would show in the peak).
        eventually(lambda: peak[0] >= 3, what="three handlers running at once")
        with lock:
            now[0] -= 1

    report = start_worker(taskraft.Worker(client, queue, concurrency=3, prefetch=2, max_jobs=9,
                                          handlers={"t": busy})).join()
    assert report.succeeded == 9
    assert peak[0] == 3


def test_queues_are_served_in_the_order_given(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    low, high = f"{queue}-low", f"{queue}-high"
    for i in range(3):
        client.enqueue(low, f"low{i}", job_type="t")
    for i in range(3):
        client.enqueue(high, f"high{i}", job_type="t")
    order: list[str] = []
    w = taskraft.Worker(client, [high, low], concurrency=1, max_jobs=6,
                        handlers={"t": lambda job: order.append(job.text())})
    start_worker(w).join()
    assert order == ["high0", "high1", "high2", "low0", "low1", "low2"]


def test_max_jobs_stops_the_worker(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    client.enqueue_batch(taskraft.NewJob(queue, f"{i}", job_type="t") for i in range(5))
    report = start_worker(taskraft.Worker(client, queue, concurrency=2, max_jobs=3,
                                          handlers={"t": lambda job: None})).join()
    assert (report.leased, report.succeeded) == (3, 3)
    stats = client.queue_stats(queue)
    assert (stats.succeeded, stats.ready, stats.leased) == (3, 2, 0)


def test_stop_finishes_running_jobs_and_gives_back_unstarted_ones(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    ids = [e.job_id for e in client.enqueue_batch(taskraft.NewJob(queue, f"{i}", job_type="t") for i in range(4))]
    started = threading.Semaphore(0)
    release = threading.Event()

    def work(job: Job) -> None:
        started.release()
        assert release.wait(timeout=30), "never released"

    wt = start_worker(taskraft.Worker(client, queue, concurrency=2, prefetch=2, handlers={"t": work}))
    for _ in range(2):
        assert started.acquire(timeout=30)
    eventually(lambda: client.queue_stats(queue).leased == 4, what="4 jobs in hand")
    # The running handlers finish only once the stop has given the two unstarted jobs
    # back, whatever the machine's speed.
    wt.worker.stop()
    eventually(lambda: client.queue_stats(queue).leased == 2, what="the unstarted jobs given back")
    release.set()
    report = wt.join()
    assert (report.succeeded, report.abandoned) == (2, 2)
    stats = client.queue_stats(queue)
    assert (stats.succeeded, stats.leased, stats.ready + stats.scheduled) == (2, 0, 2)
    given_back = [client.get_job(i) for i in ids if client.get_job(i).state != JobState.SUCCEEDED]
    assert all(j.last_error == "worker shut down before the job finished" for j in given_back)


def test_shutdown_timeout_gives_running_jobs_back(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    job_id = client.enqueue(queue, b"x", job_type="t").job_id
    started = threading.Event()
    tokens: list[str | None] = []

    def stubborn(job: Job) -> None:
        started.set()
        job.cancelled.wait(60)
        tokens.append(job.cancelled.reason)

    wt = start_worker(taskraft.Worker(client, queue, shutdown_timeout=0.3, handlers={"t": stubborn}))
    assert started.wait(30)
    report = wt.stop()
    assert report.abandoned == 1
    eventually(lambda: tokens == ["shutdown"], what="the handler's token to say shutdown")
    job = client.get_job(job_id)
    assert job.state in (JobState.READY, JobState.SCHEDULED) and job.attempt == 1


def test_sigterm_finishes_in_flight_jobs_and_gives_back_the_rest(
    broker: BrokerNode, client: taskraft.Client, queue: str
) -> None:
    ids = [client.enqueue(queue, f"{i}", job_type="slow").job_id for i in range(3)]
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "signal_worker.py"), broker.addr, queue],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[:1] == ["started"], first
        eventually(lambda: client.queue_stats(queue).leased == 2, what="one running, one prefetched")
        proc.send_signal(signal.SIGTERM)
        # The running handler finishes (on a line on its stdin) only once the SIGTERM has
        # given the prefetched job back, whatever the machine's speed.
        eventually(lambda: client.queue_stats(queue).leased == 1, what="the prefetched job given back")
        out, err = proc.communicate(input="go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.split() == ["report", "1", "1"], (out, err)
    assert client.get_job(first[1]).state == JobState.SUCCEEDED
    stats = client.queue_stats(queue)
    assert (stats.succeeded, stats.leased, stats.ready + stats.scheduled) == (1, 0, 2)
    assert first[1] in ids


def test_worker_runs_on_the_callers_event_loop(broker: BrokerNode, queue: str) -> None:
    async def main() -> taskraft.Report:
        async with taskraft.AsyncClient([broker.addr]) as c:
            await c.enqueue(queue, b"x", job_type="t")
            loop = asyncio.get_running_loop()
            seen: list[bool] = []

            async def handler(job: Job) -> None:
                seen.append(asyncio.get_running_loop() is loop)

            report = await taskraft.Worker(c, queue, max_jobs=1, handlers={"t": handler}).run_async()
            assert seen == [True]
            return report

    assert asyncio.run(main()).succeeded == 1


def test_worker_settings_are_validated(client: taskraft.Client) -> None:
    with pytest.raises(taskraft.ConfigError):
        taskraft.Worker(client, [])
    with pytest.raises(taskraft.ConfigError):
        taskraft.Worker(client, "q", concurrency=0)
    with pytest.raises(taskraft.ConfigError):
        taskraft.Worker(client, "q", concurrency=900, prefetch=200)
    with pytest.raises(taskraft.ConfigError, match="handler"):
        taskraft.Worker(client, "q").run(handle_signals=False)



def test_a_lost_lease_stops_the_handler_without_settling(
    client: taskraft.Client, queue: str, start_worker: type[WorkerThread]
) -> None:
    job_id = client.enqueue(queue, b"x", job_type="t", max_attempts=5).job_id
    reasons: list[str | None] = []

    def handler(job: Job) -> str:
        if job.attempt == 1:
            # Someone else settles this delivery: the lease is no longer ours.
            client.nack(job.id, job.lease_id, "taken away", retry_after=60)
            job.cancelled.wait(30)
            reasons.append(job.cancelled.reason)
        return "late result"

    wt = start_worker(taskraft.Worker(client, queue, visibility_timeout=0.6, handlers={"t": handler}))
    eventually(lambda: reasons == ["lease-lost"], what="the handler to learn its lease was lost")
    report = wt.stop()
    assert (report.succeeded, report.abandoned) == (0, 1)
    job = client.get_job(job_id)
    assert job.state == JobState.SCHEDULED and job.last_error == "taken away" and job.result == b""
