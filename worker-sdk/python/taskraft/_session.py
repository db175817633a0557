"""The stream protocol's plumbing (``protocol="stream"``): one ``Work`` session per
worker instead of long-polling ``Lease`` calls.

::

     free hand slot ──> credit ──> broker pushes a job ──> job task ──> slot freed
                                                             │ ack / nack / extend
                                              seq ──> Link ──┴──> answer by seq (reader)

:class:`Link` is the live session as job tasks see it: where to send a request and
who waits for which answer. Between sessions it is empty and every settle goes
unary. An answer's code maps to the same :class:`taskraft.TaskraftError` the unary
call would raise (the ``reason`` of a FAILED_PRECONDITION included), so a job's life
in :mod:`taskraft.worker` does not depend on the protocol. A settle waiting when the
stream breaks, or answered UNAVAILABLE, gets ``None`` and is resent as the unary
call (a repeated Ack or Nack of the same lease answers as the first did).

The session loop itself is ``Worker._stream`` in :mod:`taskraft.worker`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from taskraft._rpc import pb
from taskraft.aio import WorkConn
from taskraft.errors import REASON_KEY, from_status

log = logging.getLogger("taskraft.worker")

#: How long after a break the worker keeps trying to resume on the same node while it
#: cannot reach it (the broker keeps a broken session's jobs for 3 s).
RESUME_FOR = 2.0
#: Pause between those tries.
RESUME_RETRY = 0.1

_CODES: dict[int, grpc.StatusCode] = {int(c.value[0]): c for c in grpc.StatusCode}


def status_code(code: int) -> grpc.StatusCode:
    """The gRPC status code numbered ``code`` (UNKNOWN for a number gRPC lacks)."""
    return _CODES.get(code, grpc.StatusCode.UNKNOWN)


class Requests:
    """The requests going up one stream, in order; :meth:`close` ends the iterator,
    which half-closes the stream once everything before it was sent."""

    def __init__(self, first: pb.WorkRequest) -> None:
        self._queue: asyncio.Queue[pb.WorkRequest | None] = asyncio.Queue()
        self._queue.put_nowait(first)
        self._closed = False

    def put(self, req: pb.WorkRequest) -> bool:
        if self._closed:
            return False
        self._queue.put_nowait(req)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    async def iterate(self) -> AsyncIterator[pb.WorkRequest]:
        while True:
            req = await self._queue.get()
            if req is None:
                return
            yield req


class _Live:
    __slots__ = ("generation", "requests", "pending")

    def __init__(self, generation: int, requests: Requests) -> None:
        self.generation = generation
        self.requests = requests
        self.pending: dict[int, asyncio.Future[pb.WorkAnswer | None]] = {}

    def drop(self) -> None:
        """Its waiters fall back to the unary calls."""
        for fut in self.pending.values():
            if not fut.done():
                fut.set_result(None)
        self.pending.clear()


class Link:
    """The live session, if any (see the module doc). One event loop, no locks."""

    def __init__(self) -> None:
        self._live: _Live | None = None
        self._seq = 0

    @property
    def up(self) -> bool:
        return self._live is not None

    def set(self, generation: int, requests: Requests) -> None:
        if self._live is not None:
            self._live.drop()
        self._live = _Live(generation, requests)

    def clear(self, generation: int) -> None:
        """The session ``generation`` ended (a late reader of an old session cannot
        clear a newer one)."""
        live = self._live
        if live is not None and live.generation == generation:
            self._live = None
            live.drop()

    def close(self) -> None:
        """Half-closes the stream after what was sent, and settles go unary from now."""
        live, self._live = self._live, None
        if live is not None:
            live.requests.close()
            live.drop()

    def answer(self, generation: int, a: pb.WorkAnswer) -> None:
        live = self._live
        if live is None or live.generation != generation:
            return
        fut = live.pending.pop(a.seq, None)
        if fut is not None and not fut.done():
            fut.set_result(a)

    def send(self, req: pb.WorkRequest) -> bool:
        """Sends a request that expects no answer (credit, stop); False when no
        session is up."""
        return self._live is not None and self._live.requests.put(req)

    async def call(self, req: pb.WorkRequest, timeout: float) -> pb.WorkAnswer | None:
        """Sends an ack, nack or extend (``req`` without its seq) on the session and
        waits up to ``timeout`` s for its answer. ``None``: no session, it broke before
        answering, no answer in time, or the answer was UNAVAILABLE; the caller then
        makes the unary call, which retries across nodes. Any other failure raises
        the error the unary call would (:func:`taskraft.errors.from_status`)."""
        live = self._live
        if live is None:
            return None
        self._seq += 1
        seq = self._seq
        req.seq = seq
        fut: asyncio.Future[pb.WorkAnswer | None] = asyncio.get_running_loop().create_future()
        live.pending[seq] = fut
        if not live.requests.put(req):
            live.pending.pop(seq, None)
            return None
        try:
            a = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            a = None
        finally:
            live.pending.pop(seq, None)
        if a is None:
            return None
        if a.code == 0:
            return a
        code = status_code(a.code)
        if code == grpc.StatusCode.UNAVAILABLE:
            return None
        raise from_status(code, a.message, {REASON_KEY: a.reason} if a.reason else None)


async def read(
    conn: WorkConn,
    link: Link,
    generation: int,
    jobs: asyncio.Queue[pb.LeasedJob | None],
) -> grpc.aio.AioRpcError | None:
    """Reads one stream: jobs to ``jobs`` (then ``None`` when it ends), answers to
    their waiters. Returns the error the stream ended with, if any."""
    end: grpc.aio.AioRpcError | None = None
    try:
        while True:
            msg = await conn.call.read()
            if not isinstance(msg, pb.WorkResponse):  # grpc.aio.EOF: the broker ended it
                break
            kind = msg.WhichOneof("kind")
            if kind == "job":
                jobs.put_nowait(msg.job)
            elif kind == "answer":
                link.answer(generation, msg.answer)
    except grpc.aio.AioRpcError as e:
        end = e
    finally:
        link.clear(generation)
        jobs.put_nowait(None)
    return end


def ended_by_node(e: grpc.aio.AioRpcError | None) -> bool:
    """The node ended the session itself because it is shutting down (nothing to
    resume there), as opposed to a broken connection."""
    return (
        e is not None
        and e.code() == grpc.StatusCode.UNAVAILABLE
        and "shutting down" in (e.details() or "")
    )


def is_fatal(e: grpc.aio.AioRpcError | None) -> bool:
    """A refusal no reconnect fixes."""
    return e is not None and e.code() in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )


class Tail:
    """What is left of a session once the worker stops taking jobs: close it after
    the jobs in hand are settled."""

    def __init__(self, link: Link, reader: asyncio.Task[grpc.aio.AioRpcError | None], wait: float) -> None:
        self._link = link
        self._reader = reader
        self._wait = wait

    async def finish(self) -> None:
        """Half-closes the stream and waits (bounded) for the broker to end it, i.e.
        to have given back whatever the session still held."""
        self._link.close()
        done, _ = await asyncio.wait({self._reader}, timeout=self._wait)
        if not done:
            log.warning("the work session did not end in time after closing it")
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
