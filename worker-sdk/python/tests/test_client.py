"""Client calls against a real broker: enqueue options, batches, idempotency,
job and queue admin, error classification, deadlines, retries, token, TLS."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

import taskraft
from brokers import BrokerNode, free_port
from taskraft import JobState, NewJob


def test_enqueue_stores_payload_options_and_headers(client: taskraft.Client, queue: str) -> None:
    e = client.enqueue(
        queue, b"\x00\xffbin", job_type="resize", priority=7, max_attempts=4,
        headers={"k": "v", "unicode": "\u2713"},
    )
    assert not e.duplicate
    job = client.get_job(e.job_id)
    assert (job.queue, job.job_type, job.priority, job.max_attempts) == (queue, "resize", 7, 4)
    assert job.payload == b"\x00\xffbin"
    assert job.headers == {"k": "v", "unicode": "\u2713"}
    assert job.state == JobState.READY and job.attempt == 0


def test_str_payload_is_utf8_and_json_helpers_round_trip(client: taskraft.Client, queue: str) -> None:
    a = client.enqueue(queue, "h\u00e9llo")
    assert client.get_job(a.job_id).payload == "h\u00e9llo".encode()
    b = client.enqueue_json(queue, {"order": 42, "items": [1, 2]}, job_type="j")
    import json
    assert json.loads(client.get_job(b.job_id).payload) == {"order": 42, "items": [1, 2]}


def test_delay_and_run_at_schedule_the_job(client: taskraft.Client, queue: str) -> None:
    delayed = client.enqueue(queue, b"d", delay=3600)
    at = client.enqueue(queue, b"a", run_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    now_ms = time.time() * 1000
    for job_id, hours in ((delayed.job_id, 1), (at.job_id, 2)):
        job = client.get_job(job_id)
        assert job.state == JobState.SCHEDULED
        assert abs(job.run_at_ms - (now_ms + hours * 3_600_000)) < 60_000
    with pytest.raises(taskraft.ConfigError):
        client.enqueue(queue, b"x", delay=1, run_at=time.time())


def test_idempotency_key_returns_the_first_job(client: taskraft.Client, queue: str) -> None:
    first = client.enqueue(queue, b"1", idempotency_key="order-42")
    again = client.enqueue(queue, b"2", idempotency_key="order-42")
    assert again.duplicate and again.job_id == first.job_id
    assert client.queue_stats(queue).ready == 1


def test_batch_enqueue_is_ordered_and_all_or_nothing(client: taskraft.Client, queue: str) -> None:
    results = client.enqueue_batch(NewJob(queue, f"{i}", priority=i) for i in range(50))
    assert len(results) == 50
    assert [client.get_job(r.job_id).payload for r in results[:3]] == [b"0", b"1", b"2"]
    with pytest.raises(taskraft.InvalidArgumentError, match=r"jobs\[1\]"):
        client.enqueue_batch([NewJob(queue, b"ok"), NewJob("bad queue name!", b"no")])
    assert client.queue_stats(queue).ready == 50


def test_errors_are_classified(client: taskraft.Client, queue: str) -> None:
    with pytest.raises(taskraft.NotFoundError):
        client.get_job("01900000-0000-7000-8000-000000000000")
    with pytest.raises(taskraft.InvalidArgumentError, match="queue") as bad:
        client.enqueue("no spaces allowed", b"x")
    assert bad.value.code is not None and bad.value.code.name == "INVALID_ARGUMENT"
    job = client.enqueue(queue, b"x", job_type="t")
    leased = client.lease([queue], worker_id="py-test", max_jobs=1, wait=5)
    assert [j.job_id for j in leased] == [job.job_id]
    with pytest.raises(taskraft.LeaseLostError) as stale:
        client.ack(job.job_id, "ffffffffffffffff")
    assert stale.value.reason == "stale-lease"
    with pytest.raises(taskraft.FailedPreconditionError) as wrong:
        client.retry_job(job.job_id)  # LEASED: not dead or cancelled
    assert not isinstance(wrong.value, (taskraft.LeaseLostError, taskraft.JobCancelledError))
    client.cancel_job(job.job_id)
    with pytest.raises(taskraft.JobCancelledError) as cancelled:
        client.extend_lease(job.job_id, leased[0].lease_id)
    assert cancelled.value.reason == "cancelled"
    with pytest.raises(taskraft.JobCancelledError):
        client.ack(job.job_id, leased[0].lease_id)


def test_lease_ack_nack_extend_by_hand(client: taskraft.Client, queue: str) -> None:
    a = client.enqueue(queue, b"a").job_id
    b = client.enqueue(queue, b"b").job_id
    jobs = client.lease([queue], worker_id="py-test", max_jobs=2, visibility_timeout=30, wait=5)
    assert {j.job_id for j in jobs} == {a, b} and all(j.attempt == 1 for j in jobs)
    ja, jb = sorted(jobs, key=lambda j: j.job_id != a)
    deadline = client.extend_lease(a, ja.lease_id, visibility_timeout=60, progress=30, progress_message="30%")
    assert deadline > time.time() * 1000 + 50_000
    assert (client.get_job(a).progress, client.get_job(a).progress_message) == (30, "30%")
    client.ack(a, ja.lease_id, b"result")
    assert client.get_job(a).result == b"result"
    r = client.nack(b, jb.lease_id, "boom", dead_letter=True)
    assert r.state == JobState.DEAD
    dead = client.get_job(b)
    assert dead.state == JobState.DEAD and dead.last_error == "boom"


def test_cancel_retry_redrive_pause_resume_and_listing(client: taskraft.Client, queue: str) -> None:
    j1 = client.enqueue(queue, b"1").job_id
    j2 = client.enqueue(queue, b"2").job_id
    assert client.cancel_job(j1).state == JobState.CANCELLED
    assert client.retry_job(j1).state == JobState.READY
    leased = client.lease([queue], worker_id="py-test", max_jobs=1, wait=5)
    client.nack(leased[0].job_id, leased[0].lease_id, "dead", dead_letter=True)
    assert client.redrive_dead_jobs(queue) == 1
    paused = client.pause_queue(queue)
    assert paused.paused
    assert client.lease([queue], worker_id="py-test", max_jobs=5, wait=0.2) == []
    assert not client.resume_queue(queue).paused
    assert len(client.lease([queue], worker_id="py-test", max_jobs=5, wait=5)) >= 1
    listed = client.list_jobs(queue)
    assert [j.job_id for j in listed] == [j1, j2]
    assert [j.job_id for j in client.list_jobs(queue, JobState.LEASED)] != []
    assert queue in {q.queue for q in client.list_queues()}
    assert "py-test" in {w.worker_id for w in client.list_workers()}
    status = client.cluster_status()
    assert status.leader_id >= 1 and status.leader is not None and status.leader.role == "leader"


def test_per_call_deadline(client: taskraft.Client, queue: str) -> None:
    # A long poll of 20 s with a 0.5 s deadline ends by the deadline: empty, or
    # DEADLINE_EXCEEDED if the answer came too late.
    start = time.monotonic()
    try:
        assert client.lease([queue], worker_id="py-test", wait=20, timeout=0.5) == []
    except taskraft.DeadlineExceededError:
        pass
    assert time.monotonic() - start < 3
    # Without a timeout the deadline is call_timeout + wait: the poll runs its course.
    start = time.monotonic()
    assert client.lease([queue], worker_id="py-test", wait=0.5) == []
    assert 0.4 < time.monotonic() - start < 5


def test_unreachable_cluster_raises_unavailable_after_the_retry_window() -> None:
    dead = f"127.0.0.1:{free_port()}"
    with taskraft.Client([dead], retry_for=1.0, connect_timeout=1.0) as c:
        start = time.monotonic()
        with pytest.raises(taskraft.UnavailableError) as e:
            c.queue_stats("q")
        took = time.monotonic() - start
    assert e.value.retryable and dead in str(e.value)
    assert 0.7 < took < 10, took


def test_a_dead_address_is_skipped(broker: BrokerNode, queue: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with taskraft.Client([dead, broker.addr], retry_for=10) as c:
        job = c.enqueue(queue, b"x")
        assert c.get_job(job.job_id).state == JobState.READY


def test_token_is_sent_as_bearer_metadata(tmp_path: Path, queue: str) -> None:
    node = BrokerNode(tmp_path / "auth", ["--token", "s3cret"]).start()
    try:
        node.wait_ready()
        with taskraft.Client([node.addr]) as anon, pytest.raises(taskraft.UnauthenticatedError):
            anon.enqueue(queue, b"x")
        with taskraft.Client([node.addr], token="wrong") as bad, pytest.raises(taskraft.UnauthenticatedError):
            bad.queue_stats(queue)
        with taskraft.Client([node.addr], token="s3cret") as good:
            job = good.enqueue(queue, b"x")
            assert good.get_job(job.job_id).payload == b"x"
            # A worker with a refused token stops at once with the error.
            w = taskraft.Worker(taskraft.Client([node.addr], token="wrong"), queue,
                                handlers={"": lambda job: None})
            with pytest.raises(taskraft.UnauthenticatedError):
                w.run(handle_signals=False)
    finally:
        node.kill()


def test_tls_settings(tmp_path: Path, broker: BrokerNode) -> None:
    with pytest.raises(taskraft.ConfigError, match="root_ca"):
        taskraft.Client([broker.addr], root_ca=tmp_path / "missing.pem")
    pem = tmp_path / "ca.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a real CA\n-----END CERTIFICATE-----\n")
    c = taskraft.Client([broker.addr], root_ca=pem, retry_for=0.5)
    assert c.config.tls and c.config.root_ca == pem.read_bytes()
    # The broker speaks plaintext: the TLS handshake fails, which is UNAVAILABLE.
    with c, pytest.raises(taskraft.UnavailableError):
        c.queue_stats("q")
    assert taskraft.ClientConfig.make("https://example.invalid:443").tls


def test_config_is_validated() -> None:
    with pytest.raises(taskraft.ConfigError):
        taskraft.Client([])
    with pytest.raises(taskraft.ConfigError):
        taskraft.Client(["127.0.0.1:1"], call_timeout=0)
    with pytest.raises(taskraft.ConfigError):
        taskraft.Client(["127.0.0.1:1"], token="bad\ntoken")
    c = taskraft.ClientConfig.make("127.0.0.1:1, 127.0.0.1:2")
    assert c.addrs == ("127.0.0.1:1", "127.0.0.1:2") and not c.tls


def test_async_client(broker: BrokerNode, queue: str) -> None:
    import asyncio

    async def main() -> None:
        async with taskraft.AsyncClient(broker.addr) as c:
            e = await c.enqueue_json(queue, [1, 2, 3])
            got = await c.get_job(e.job_id)
            assert got.payload == b"[1,2,3]"
            with pytest.raises(taskraft.NotFoundError):
                await c.get_job("nope")

    asyncio.run(main())


def test_calls_go_to_the_leader_and_follow_it_after_it_dies(tmp_path: Path, queue: str) -> None:
    from brokers import BrokerCluster

    cluster = BrokerCluster(tmp_path / "cluster", 3).start()
    try:
        with taskraft.Client(list(reversed(cluster.addrs)), retry_for=60) as c:
            first = c.enqueue(queue, b"1", idempotency_key="k1")
            leader = c.cluster_status().leader
            assert leader is not None and c.current_addr == leader.addr
            cluster.node(leader.id).kill()
            # The next calls fail over: UNAVAILABLE moves on and asks who leads now.
            second = c.enqueue(queue, b"2", idempotency_key="k2")
            status = c.cluster_status()
            assert status.leader_id not in (0, leader.id)
            assert c.current_addr == cluster.node(status.leader_id).addr
            assert c.enqueue(queue, b"1 again", idempotency_key="k1").duplicate
            assert {c.get_job(first.job_id).payload, c.get_job(second.job_id).payload} == {b"1", b"2"}
    finally:
        cluster.stop()
