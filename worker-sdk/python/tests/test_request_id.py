"""Enqueue request ids against a real broker: every enqueue the client builds carries
a fresh random ``request_id`` (each job of a batch its own), and the client's retry
loop resends the same one, so an attempt whose answer was lost after the broker
stored the job cannot store it twice.

The lost answer is made by :class:`LossyProxy`, a gRPC server in the test process
that forwards ``Enqueue`` / ``EnqueueBatch`` to the real broker, records what the
client sent, and answers the first ``lose`` calls with UNAVAILABLE *after* the broker
stored their jobs, which is exactly the case a request id exists for.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import taskraft
from brokers import BrokerNode
from taskraft import NewJob
from taskraft.v1 import taskraft_pb2 as pb
from taskraft.v1 import taskraft_pb2_grpc as pb_grpc

REQUEST_ID = re.compile(r"[0-9a-f]{32}")


class LossyProxy(pb_grpc.BrokerServicer):
    """Forwards the enqueue calls to ``upstream`` and records each request it got;
    the next ``lose`` calls are forwarded, then answered UNAVAILABLE."""

    def __init__(self, upstream: str) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._stub = pb_grpc.BrokerStub(self._channel)  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()
        self.requests: list[Any] = []
        self.lose = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_BrokerServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.addr = f"127.0.0.1:{port}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)
        self._channel.close()

    def _forward(self, method: Callable[..., Any], request: Any, context: grpc.ServicerContext) -> Any:
        copy = type(request)()
        copy.CopyFrom(request)
        with self._lock:
            self.requests.append(copy)
        try:
            answer = method(request, timeout=10)
        except grpc.RpcError as e:
            context.abort(e.code(), e.details() or "")
        with self._lock:
            lost = self.lose > 0
            if lost:
                self.lose -= 1
        if lost:
            context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: the broker stored it, the answer is lost")
        return answer

    def Enqueue(self, request: pb.EnqueueRequest, context: grpc.ServicerContext) -> Any:
        return self._forward(self._stub.Enqueue, request, context)

    def EnqueueBatch(self, request: pb.EnqueueBatchRequest, context: grpc.ServicerContext) -> Any:
        return self._forward(self._stub.EnqueueBatch, request, context)

    def enqueue_ids(self) -> list[str]:
        """The request ids of every job of every request received, in order."""
        out: list[str] = []
        for r in self.requests:
            jobs = r.jobs if isinstance(r, pb.EnqueueBatchRequest) else [r]
            out.extend(j.request_id for j in jobs)
        return out


@pytest.fixture
def proxy(broker: BrokerNode) -> Iterator[LossyProxy]:
    p = LossyProxy(broker.addr)
    try:
        yield p
    finally:
        p.close()


def test_each_enqueue_request_carries_its_own_request_id(
    proxy: LossyProxy, client: taskraft.Client, queue: str
) -> None:
    job = NewJob(queue, b"same")
    with taskraft.Client([proxy.addr]) as c:
        answers = [
            c.enqueue(queue, b"same"),
            c.enqueue(queue, b"same"),
            c.enqueue_json(queue, {"same": True}),
            c.enqueue_job(job),
            c.enqueue_job(job),  # the same NewJob twice: two calls, two jobs
            *c.enqueue_batch([job, job, NewJob.json(queue, [1])]),
        ]

    async def with_async_client() -> list[taskraft.Enqueued]:
        async with taskraft.AsyncClient([proxy.addr]) as ac:
            return [
                await ac.enqueue(queue, b"same"),
                await ac.enqueue_json(queue, {"same": True}),
                *await ac.enqueue_batch([job, job]),
            ]

    answers += asyncio.run(with_async_client())

    ids = proxy.enqueue_ids()
    assert len(proxy.requests) == 9 and len(ids) == len(answers) == 12
    assert all(REQUEST_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    # Each was a new call: the broker stored every one of them.
    assert not any(a.duplicate for a in answers)
    assert len({a.job_id for a in answers}) == 12
    assert client.queue_stats(queue).ready == 12


def test_to_proto_builds_a_fresh_request_id_unless_given_one() -> None:
    job = NewJob("q", b"x", idempotency_key="k")
    a, b = job.to_proto(), job.to_proto()
    assert REQUEST_ID.fullmatch(a.request_id) and REQUEST_ID.fullmatch(b.request_id)
    assert a.request_id != b.request_id
    assert job.to_proto(request_id="mine").request_id == "mine"


def _enqueue_sync(addr: str, queue: str) -> taskraft.Enqueued:
    with taskraft.Client([addr], retry_for=20) as c:
        return c.enqueue(queue, b"once")


def _enqueue_json_sync(addr: str, queue: str) -> taskraft.Enqueued:
    with taskraft.Client([addr], retry_for=20) as c:
        return c.enqueue_json(queue, "once")


def _enqueue_async(addr: str, queue: str) -> taskraft.Enqueued:
    async def main() -> taskraft.Enqueued:
        async with taskraft.AsyncClient([addr], retry_for=20) as ac:
            return await ac.enqueue(queue, b"once")

    return asyncio.run(main())


@pytest.mark.parametrize("call", [_enqueue_sync, _enqueue_json_sync, _enqueue_async])
def test_a_retried_enqueue_resends_its_request_id_and_stores_one_job(
    proxy: LossyProxy,
    client: taskraft.Client,
    queue: str,
    call: Callable[[str, str], taskraft.Enqueued],
) -> None:
    proxy.lose = 2  # two attempts reach the broker, their answers are lost
    e = call(proxy.addr, queue)
    ids = proxy.enqueue_ids()
    assert len(ids) == 3, "the client retries UNAVAILABLE until an answer arrives"
    assert REQUEST_ID.fullmatch(ids[0]) and ids == [ids[0]] * 3, ids
    # The retry got the job the first attempt stored; nothing else was stored.
    assert e.duplicate
    assert [j.job_id for j in client.list_jobs(queue)] == [e.job_id]
    assert client.get_job(e.job_id).payload in (b"once", b'"once"')


def test_a_retried_batch_resends_each_jobs_request_id(
    proxy: LossyProxy, client: taskraft.Client, queue: str
) -> None:
    proxy.lose = 1
    with taskraft.Client([proxy.addr], retry_for=20) as c:
        results = c.enqueue_batch(NewJob(queue, f"{i}") for i in range(3))
    assert len(proxy.requests) == 2
    first, retry = ([j.request_id for j in r.jobs] for r in proxy.requests)
    assert first == retry and len(set(first)) == 3 and all(REQUEST_ID.fullmatch(i) for i in first)
    assert all(r.duplicate for r in results)
    assert sorted(j.job_id for j in client.list_jobs(queue)) == sorted(r.job_id for r in results)
    assert len({r.job_id for r in results}) == 3 and client.queue_stats(queue).ready == 3


def test_the_broker_dedups_a_repeated_request_id(broker: BrokerNode, queue: str) -> None:
    """The property the client relies on, with the generated stubs alone."""
    other_queue = f"{queue}-other"
    with grpc.insecure_channel(broker.addr) as channel:
        stub = pb_grpc.BrokerStub(channel)  # type: ignore[no-untyped-call]

        def enqueue(request_id: str, payload: bytes = b"x", q: str = queue, key: str = "") -> Any:
            return stub.Enqueue(
                pb.EnqueueRequest(queue=q, payload=payload, request_id=request_id, idempotency_key=key),
                timeout=10,
            )

        first = enqueue("req-a", b"first")
        again = enqueue("req-a", b"second")
        assert not first.duplicate and again.duplicate and again.job_id == first.job_id
        other = enqueue("req-b")
        assert not other.duplicate and other.job_id != first.job_id
        # Scoped by queue; and an idempotency key decides instead of the request id.
        assert not enqueue("req-a", q=other_queue).duplicate
        keyed = enqueue("req-a", key="order-1")
        assert not keyed.duplicate and keyed.job_id != first.job_id
        # A request the SDK built, sent twice as its retry loop does.
        built = NewJob(queue, b"built").to_proto()
        sent = [stub.Enqueue(built, timeout=10) for _ in range(2)]
        assert [s.duplicate for s in sent] == [False, True] and sent[0].job_id == sent[1].job_id
        # Without a request id nothing is deduplicated.
        bare = [stub.Enqueue(pb.EnqueueRequest(queue=queue, payload=b"y"), timeout=10) for _ in range(2)]
        assert not any(b.duplicate for b in bare) and bare[0].job_id != bare[1].job_id

    with taskraft.Client([broker.addr]) as c:
        assert c.get_job(first.job_id).payload == b"first"
        assert c.queue_stats(queue).ready == 6
