""":class:`Worker`: gets jobs, runs handlers by ``job_type``, settles them, and
shuts down gracefully.

The worker is one asyncio task tree (:meth:`Worker.run` starts an event loop,
:meth:`Worker.run_async` uses the caller's). ``async def`` handlers run as tasks
on that loop; plain functions run in a thread pool of ``concurrency`` threads.

Jobs come one of two ways (``protocol=``)::

    "stream" (default): one Work session (see taskraft._session)
        free hand slot ──> credit ──> broker pushes a job ──> one task per job
              ^                                                    │
              └────────── hand slot freed (credit again) on settle <┘
    "poll":   Lease(queues, n = free hand slots, wait 20 s) ──> one task per job
                   ^                                                    │
                   └──────── hand slot released on settle <─────────────┘

    job task:   wait for a run slot ──> handler ──> return  ──> Ack (result)
                  │                               raise     ──> Nack (dead_letter
                  │                                             for PermanentError)
                  └─ heartbeat: ExtendLease every visibility/3 (+ progress)
                       ├─ FAILED_PRECONDITION reason=cancelled ──> cancel token set,
                       │    async handler cancelled; nothing to settle
                       └─ lease lost ──> the same, reason "lease-lost"

On the stream, Ack, Nack and ExtendLease go up the session by seq and their answers
raise the same errors as the unary calls, so a job's life does not depend on the
protocol; a settle caught by a broken stream is resent as the unary call. A broken
stream is resumed on the same node with the jobs still held (tried for up to 2 s),
else a fresh session is opened (on the next node after UNAVAILABLE).

The worker holds at most ``concurrency + prefetch`` jobs (hand slots) and runs at
most ``concurrency`` handlers (run slots). With ``prefetch`` on the poll protocol,
while every handler is busy the loop waits up to ``lease_linger`` for half of its
hand slots to free up, so one ``Lease`` (one Raft log entry) brings several jobs.

Shutdown (:meth:`Worker.stop`, SIGINT or SIGTERM) stops taking jobs (the stream
sends ``WorkStop``), gives back the jobs that have not started (``Nack`` with a 1 ms
retry delay, so another worker takes them at once), and waits up to
``shutdown_timeout`` for running handlers; then it sets their cancel tokens, cancels
async ones and gives those jobs back too. A second signal skips the wait. A sync
handler cannot be killed: one that ignores its token keeps its thread until it
returns, its result discarded. Last, the stream is half-closed (the broker gives back
at once any job it pushed after the stop).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from taskraft import _session
from taskraft._rpc import pb
from taskraft.aio import (
    AsyncClient,
    ClientConfig,
    _trailing,
    ack_request,
    extend_request,
    nack_request,
)
from taskraft.client import Client
from taskraft.errors import (
    ConfigError,
    FailedPreconditionError,
    HandlerError,
    InvalidArgumentError,
    JobCancelledError,
    LeaseLostError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    TaskraftError,
    UnauthenticatedError,
    UnavailableError,
    from_status,
)
from taskraft.job import CancelToken, Job
from taskraft.models import LeasedJob

log = logging.getLogger("taskraft.worker")

#: A handler: ``def f(job) -> result`` or ``async def f(job) -> result``, where the
#: result is None, bytes, a str (UTF-8) or any JSON-encodable value.
Handler = Callable[[Job], Any]
_H = TypeVar("_H", bound=Handler)

#: Longest error text sent with a Nack (the broker takes up to 64 KiB).
_MAX_ERROR = 16 * 1024

#: How a worker gets jobs and settles them: ``"stream"`` (one ``Work`` session, the
#: default) or ``"poll"`` (long-polling ``Lease`` calls and unary settles).
Protocol = Literal["stream", "poll"]


@dataclass
class Report:
    """What a worker did, returned when it stops."""

    #: Jobs acked.
    succeeded: int = 0
    #: Jobs nacked because the handler raised.
    failed: int = 0
    #: Jobs given back (shutdown), cancelled, or whose lease was lost.
    abandoned: int = 0
    #: Jobs leased.
    leased: int = 0
    #: ``protocol="poll"``: ``Lease`` calls answered (``leased / lease_calls`` shows
    #: lease batching). ``protocol="stream"``: ``Work`` sessions opened (1, plus one
    #: per resume or reconnect).
    lease_calls: int = 0


def default_worker_id() -> str:
    """``<host>-<pid>-<4 hex digits>``."""
    return f"{socket.gethostname() or 'worker'}-{os.getpid()}-{random.getrandbits(16):04x}"


def result_bytes(value: Any) -> bytes:
    """A handler's return value as the job's result bytes."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise PermanentError(f"result does not encode as JSON: {e}") from e


def _truncate(text: str, limit: int = _MAX_ERROR) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


class _Slots:
    """A counter of free slots that one consumer (the lease loop) waits on."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._changed = asyncio.Event()

    def take(self, most: int) -> int:
        n = min(most, self.free)
        self.free -= n
        return n

    async def changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def wait_free(self) -> None:
        while self.free == 0:
            await self.changed()

    def release(self, n: int = 1) -> None:
        self.free += n
        self._changed.set()


class _Flag:
    """A one-shot flag whose future can be waited on with ``asyncio.wait`` (no task
    per waiter)."""

    __slots__ = ("fut",)

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)

    def is_set(self) -> bool:
        return self.fut.done()


@dataclass
class _Outcome:
    kind: str  # "done" | "failed" | "ended" | "interrupted"
    result: bytes = b""
    error: str = ""
    permanent: bool = False
    retry_after: float | None = None


class Worker:
    """Leases jobs from some queues and runs handlers on them.

    ::

        client = taskraft.Client(["127.0.0.1:7070"])
        worker = taskraft.Worker(client, ["emails"], concurrency=8)

        @worker.handler("send")
        def send(job: taskraft.Job) -> None:
            print("sending", job.payload, "attempt", job.attempt)

        worker.run()  # until SIGINT/SIGTERM; then finishes the jobs in hand

    Handlers may be sync or ``async def``. A handler that returns acks the job with
    its return value as the result; one that raises nacks it: the job is retried
    with the broker's backoff until its attempts are used up, or dead-lettered at
    once for :class:`taskraft.PermanentError`. The worker carries on either way.
    """

    def __init__(
        self,
        client: Client | AsyncClient | ClientConfig | str | Sequence[str],
        queues: str | Sequence[str],
        *,
        concurrency: int = 4,
        prefetch: int = 0,
        visibility_timeout: float = 30.0,
        max_jobs: int | None = None,
        poll_wait: float = 20.0,
        lease_linger: float = 0.005,
        shutdown_timeout: float = 30.0,
        worker_id: str | None = None,
        handlers: Mapping[str, Handler] | None = None,
        default_handler: Handler | None = None,
        protocol: Protocol = "stream",
    ) -> None:
        """
        ``client``: a :class:`Client` or :class:`ClientConfig` (the worker opens its
        own asyncio channels from its settings), an :class:`AsyncClient` used on the
        loop the worker runs in, or node addresses.
        ``queues``: served in order (the first one first).
        ``concurrency``: handlers running at once. ``prefetch``: jobs leased ahead
        of free run slots (their leases are extended while they wait).
        ``visibility_timeout`` (seconds): the lease length asked for; it is
        extended every third of it while a handler runs, so it bounds how soon a
        crashed worker's jobs run again, not how long a handler may take.
        ``max_jobs``: stop after leasing (and finishing) this many jobs.
        ``poll_wait``: long-poll wait of each ``Lease`` (``protocol="poll"`` only).
        ``lease_linger``: how long a poll waits for more free slots while every
        handler is busy (``protocol="poll"`` only). ``shutdown_timeout``: how long
        shutdown waits for running handlers.
        ``protocol``: ``"stream"`` (default): one ``Work`` session whose credits are
        the free slots; the broker pushes jobs as they become ready, and acks, nacks
        and lease extensions go up the same stream. ``"poll"``: long-polling
        ``Lease`` calls and unary ``Ack`` / ``Nack`` / ``ExtendLease``.
        """
        if isinstance(queues, str):
            queues = [queues]
        self.queues = list(queues)
        if not self.queues:
            raise ConfigError("name at least one queue")
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if prefetch < 0:
            raise ConfigError("prefetch must not be negative")
        if concurrency + prefetch > 1000:
            raise ConfigError("concurrency + prefetch must be at most 1000 (the Lease limit)")
        if visibility_timeout < 0.03:
            raise ConfigError("visibility_timeout must be at least 0.03 s")
        if max_jobs is not None and max_jobs < 0:
            raise ConfigError("max_jobs must not be negative")
        if poll_wait < 0 or lease_linger < 0 or shutdown_timeout < 0:
            raise ConfigError("poll_wait, lease_linger and shutdown_timeout must not be negative")
        if protocol not in ("stream", "poll"):
            raise ConfigError(f"protocol must be 'stream' or 'poll', not {protocol!r}")
        self.protocol: Protocol = protocol
        self._client_arg = client
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.visibility_timeout = visibility_timeout
        self.max_jobs = max_jobs
        self.poll_wait = poll_wait
        self.lease_linger = lease_linger
        self.shutdown_timeout = shutdown_timeout
        self.id = worker_id or default_worker_id()
        self._handlers: dict[str, Handler] = dict(handlers or {})
        self._fallback = default_handler
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_asked = False
        self._abort_asked = False
        self._running = False
        self._fatal: TaskraftError | None = None
        self._link: _session.Link | None = None

    # -- registration -----------------------------------------------------------

    def handler(self, job_type: str) -> Callable[[_H], _H]:
        """Decorator: runs the function for jobs whose ``job_type`` is ``job_type``."""

        def register(fn: _H) -> _H:
            self.add_handler(job_type, fn)
            return fn

        return register

    def add_handler(self, job_type: str, fn: Handler) -> None:
        """Runs ``fn`` (sync or async) for jobs whose ``job_type`` is ``job_type``."""
        self._handlers[job_type] = fn

    def default(self, fn: _H) -> _H:
        """Decorator: runs the function for job types without a handler of their own."""
        self._fallback = fn
        return fn

    # -- lifecycle --------------------------------------------------------------

    def run(self, *, handle_signals: bool = True) -> Report:
        """Runs until :meth:`stop`, SIGINT or SIGTERM (then shuts down gracefully),
        or until ``max_jobs``. Starts its own event loop; from asyncio code use
        :meth:`run_async`. Signals are handled only in the main thread."""
        return asyncio.run(self.run_async(handle_signals=handle_signals))

    def stop(self, *, abort: bool = False) -> None:
        """Asks the worker to shut down gracefully (from any thread, or a handler).
        ``abort``: do not wait for running handlers; cancel them and give their
        jobs back now."""
        with self._lock:
            self._stop_asked = True
            self._abort_asked = self._abort_asked or abort
            loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake_stop)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _on_signal(self, signum: int) -> None:
        again = self._stop_asked
        log.info(
            "%s: %s", signal.Signals(signum).name,
            "giving running jobs back now" if again else "shutting down (again to skip waiting)",
        )
        self.stop(abort=again)

    def _wake_stop(self) -> None:
        self._stop.set()
        if self._abort_asked:
            self._abort.set()

    async def run_async(self, *, handle_signals: bool = True) -> Report:
        """:meth:`run` for the caller's event loop."""
        if not self._handlers and self._fallback is None:
            raise ConfigError("register a handler (Worker.handler or Worker.default)")
        with self._lock:
            if self._running:
                raise RuntimeError("this worker is already running")
            self._running = True
            self._loop = asyncio.get_running_loop()
        loop = self._loop
        self._stop = _Flag()
        self._abort = _Flag()
        self._draining = _Flag()
        if self._stop_asked:
            self._wake_stop()
        owned = not isinstance(self._client_arg, AsyncClient)
        if isinstance(self._client_arg, AsyncClient):
            self._client = self._client_arg
        elif isinstance(self._client_arg, Client):
            self._client = AsyncClient(self._client_arg.config)
        else:
            self._client = AsyncClient(self._client_arg)
        self._run_slots = asyncio.Semaphore(self.concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._report = Report()
        signals: list[signal.Signals] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self._on_signal, int(sig))
                    signals.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        log.info("worker %s started on %s", self.id, self.queues)
        try:
            await self._main()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            if owned:
                await self._client.close()
            with self._lock:
                self._loop = None
                self._running = False
                self._stop_asked = self._abort_asked = False
        log.info("worker %s stopped: %s", self.id, self._report)
        if self._fatal is not None:
            raise self._fatal
        return self._report

    # -- the lease loop ---------------------------------------------------------

    async def _main(self) -> None:
        self._fatal = None
        hand = _Slots(self.concurrency + self.prefetch)
        tasks: set[asyncio.Task[None]] = set()
        stop = self._stop.fut
        tail: _session.Tail | None = None
        self._link = None
        if self.protocol == "stream":
            self._link = _session.Link()
            tail = await self._stream(self._link, hand, tasks)
        else:
            await self._poll(hand, tasks)
        if not self._stop.is_set() and tasks:
            # max_jobs reached: let every job finish, unless shutdown comes meanwhile.
            await _first(asyncio.wait(set(tasks)), stop)
        self._draining.set()
        pending = [t for t in tasks if not t.done()]
        if pending:
            log.info("shutting down: finishing %d job(s) in hand", len(pending))
            await _first(asyncio.wait(pending, timeout=self.shutdown_timeout), self._abort.fut)
            still = [t for t in pending if not t.done()]
            if still:
                log.warning(
                    "shutdown %s: giving %d running job(s) back",
                    "asked not to wait" if self._abort.is_set() else "timeout",
                    len(still),
                )
                self._abort.set()
                await asyncio.wait(still)
        if tail is not None:
            # Every job is settled: close our side; the broker gives back at once
            # anything it pushed after the stop.
            await tail.finish()

    def _spawn(self, tasks: set[asyncio.Task[None]], job: LeasedJob, hand: _Slots) -> asyncio.Task[None]:
        if self._stop.is_set():
            # Leased as shutdown began: straight back.
            t = asyncio.ensure_future(self._give_back(job, hand))
        else:
            t = asyncio.ensure_future(self._run_job(job, hand))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        return t

    async def _poll(self, hand: _Slots, tasks: set[asyncio.Task[None]]) -> None:
        """The poll protocol's loop: ``Lease`` calls for the free hand slots."""
        stop = self._stop.fut
        r = self._report
        while not self._stop.is_set():
            remaining = None if self.max_jobs is None else self.max_jobs - r.leased
            if remaining is not None and remaining <= 0:
                break
            if hand.free == 0 and not await _first(hand.wait_free(), stop):
                break
            want = self.concurrency + self.prefetch
            if remaining is not None:
                want = min(want, remaining)
            got = hand.take(want)
            got += await self._linger(hand, want - got, (want + 1) // 2 - got, stop)
            if self._stop.is_set():
                hand.release(got)
                break
            leased = await self._lease(got, stop)
            hand.release(got - len(leased))
            for job in leased:
                r.leased += 1
                self._spawn(tasks, job, hand)
            if self._fatal is not None:
                break

    async def _stream(
        self, link: _session.Link, hand: _Slots, tasks: set[asyncio.Task[None]]
    ) -> _session.Tail | None:
        """The stream protocol's loop (see :mod:`taskraft._session`): one ``Work``
        session whose credits are the free hand slots. When the stream breaks, the
        session is resumed on the same node with the jobs still held (for up to
        ``RESUME_FOR`` while the node cannot be reached), else a fresh one is opened
        (on the next node after UNAVAILABLE); jobs in hand keep running meanwhile and
        settle unary. Returns the session to close after the drain, if one is open."""
        stop = self._stop.fut
        r = self._report
        holding: set[str] = set()
        # The node, session id and until when a resume is worth trying.
        resume: tuple[int, str, float] | None = None
        generation = 0
        while True:
            if self._stop.is_set() or (self.max_jobs is not None and r.leased >= self.max_jobs):
                return None
            tried, resume = resume, None
            first = pb.WorkRequest(
                open=pb.WorkOpen(
                    queues=self.queues,
                    worker_id=self.id,
                    visibility_timeout_ms=max(1, int(round(self.visibility_timeout * 1000))),
                    resume=tried[1] if tried else "",
                    holding=sorted(holding) if tried else [],
                )
            )
            requests = _session.Requests(first)
            opening = asyncio.ensure_future(
                self._client.open_work(requests.iterate(), node=tried[0] if tried else None)
            )
            if not await _first(opening, stop):
                return None
            try:
                conn = opening.result()
            except (UnauthenticatedError, PermissionDeniedError, InvalidArgumentError) as e:
                if tried is not None:
                    log.warning("cannot resume the work session; opening a fresh one: %s", e)
                    continue
                log.error("worker %s cannot open a work session, stopping: %s", self.id, e)
                self._fatal = e
                self._stop.set()
                return None
            except TaskraftError as e:
                if (
                    isinstance(e, UnavailableError)
                    and tried is not None
                    and time.monotonic() < tried[2]
                ):
                    # The connection may be back soon: the broker keeps the session's
                    # jobs for 3 s.
                    log.debug("resuming the work session failed; trying again: %s", e)
                    if not await _first(asyncio.sleep(_session.RESUME_RETRY), stop):
                        return None
                    resume = tried
                    continue
                # NOT_FOUND for a resume: its leases ended, or it ran elsewhere.
                if tried is not None:
                    log.warning("cannot resume the work session; opening a fresh one: %s", e)
                    continue
                log.warning("opening a work session failed, retrying in 1 s: %s", e)
                if not await _first(asyncio.sleep(1.0), stop):
                    return None
                continue
            r.lease_calls += 1
            generation += 1
            log.info(
                "work session %s open on %s (adopted %d)",
                conn.opened.session_id, self._client.config.addrs[conn.node], conn.opened.adopted,
            )
            link.set(generation, requests)
            jobs: asyncio.Queue[pb.LeasedJob | None] = asyncio.Queue()
            reader = asyncio.ensure_future(_session.read(conn, link, generation, jobs))
            reserved = 0
            get: asyncio.Future[pb.LeasedJob | None] | None = None
            broken = False
            while True:
                left = None if self.max_jobs is None else self.max_jobs - r.leased
                if left is not None and left <= 0:
                    break
                # How many more credits may be granted (max_jobs counts pushes to come).
                room = self.concurrency + self.prefetch if left is None else left - reserved
                if room > 0 and hand.free > 0:
                    n = hand.take(room)
                    reserved += n
                    # A failed send means the stream broke: the reader ends it soon.
                    link.send(pb.WorkRequest(credit=n))
                    continue
                if get is None:
                    get = asyncio.ensure_future(jobs.get())
                waits: set[asyncio.Future[Any]] = {get, stop}
                freed: asyncio.Future[None] | None = None
                if room > 0:
                    freed = asyncio.ensure_future(hand.wait_free())
                    waits.add(freed)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if freed is not None and not freed.done():
                    freed.cancel()
                if stop.done():
                    break
                if not get.done():
                    continue
                pushed = get.result()
                get = None
                if pushed is None:
                    broken = True
                    break
                if reserved == 0:
                    log.warning(
                        "job %s pushed beyond the credits granted; the session gives it "
                        "back at the close", pushed.job_id,
                    )
                    continue
                reserved -= 1
                r.leased += 1
                job_id = pushed.job_id
                holding.add(job_id)
                t = self._spawn(tasks, LeasedJob.from_proto(pushed), hand)
                t.add_done_callback(functools.partial(_forget, holding, job_id))
            if get is not None:
                get.cancel()
            # Credits not used: the slots are free again (granted anew to the next
            # session; a stopped session forgets them).
            hand.release(reserved)
            if not broken:
                # Shutdown or max_jobs: no more pushes; acks, nacks and extensions go on
                # until the drain is over and the tail closes the stream.
                link.send(pb.WorkRequest(stop=pb.WorkStop()))
                return _session.Tail(link, reader, self._client.config.call_timeout)
            err = await reader
            if err is not None and _session.is_fatal(err):
                fatal = from_status(err.code(), err.details() or "", _trailing(err))
                log.error("the work session was refused, stopping: %s", fatal)
                self._fatal = fatal
                self._stop.set()
                return None
            why = "ended" if err is None else f"{err.code().name}: {err.details()}"
            if _session.ended_by_node(err):
                # Nothing to resume there: the jobs in hand settle through the next
                # session (or unary meanwhile).
                log.warning("work session ended by its node (%s); opening a new one", why)
            else:
                log.warning("work stream broke (%s); resuming the session", why)
                resume = (conn.node, conn.opened.session_id, time.monotonic() + _session.RESUME_FOR)

    async def _linger(self, hand: _Slots, most: int, enough: int, stop: asyncio.Future[Any]) -> int:
        """While every handler is busy, waits up to ``lease_linger`` for ``enough``
        more hand slots (so one Lease brings several jobs); returns how many it took."""
        got = 0
        if enough <= 0 or self.lease_linger <= 0 or not self._run_slots.locked():
            return got
        loop = asyncio.get_running_loop()
        end = loop.time() + self.lease_linger
        while got < enough and self._run_slots.locked() and not stop.done():
            left = end - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(hand.changed(), left)
            except asyncio.TimeoutError:
                break
            got += hand.take(most - got)
        return got

    async def _lease(self, n: int, stop: asyncio.Future[Any]) -> list[LeasedJob]:
        call = asyncio.ensure_future(
            self._client.lease(
                self.queues,
                worker_id=self.id,
                max_jobs=n,
                visibility_timeout=self.visibility_timeout,
                wait=self.poll_wait,
            )
        )
        await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not call.done():
            # Shutdown: drop the long poll. Jobs the broker leased for a call it then
            # saw cancelled (rare) run again once their lease expires.
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            if call.cancelled():
                return []
        try:
            jobs = call.result()
        except (UnauthenticatedError, PermissionDeniedError, InvalidArgumentError) as e:
            log.error("worker %s cannot lease, stopping: %s", self.id, e)
            self._fatal = e
            self._stop.set()
            return []
        except TaskraftError as e:
            log.warning("lease failed, retrying in 1 s: %s", e)
            await _first(asyncio.sleep(1.0), stop)
            return []
        self._report.lease_calls += 1
        return jobs

    # -- settles: on the Work session when one is up, else (or when it broke
    # -- meanwhile) the unary call, which raises the same errors ------------------

    async def _ack(self, job: Job, result: bytes) -> None:
        if self._link is not None:
            req = pb.WorkRequest(ack=ack_request(job.id, job.lease_id, result))
            if await self._link.call(req, self._client.config.call_timeout) is not None:
                return
        await self._client.ack(job.id, job.lease_id, result)

    async def _nack(
        self, job: Job, error: str, *, retry_after: float | None, dead_letter: bool = False
    ) -> None:
        if self._link is not None:
            req = pb.WorkRequest(
                nack=nack_request(
                    job.id, job.lease_id, error, retry_after=retry_after, dead_letter=dead_letter
                )
            )
            if await self._link.call(req, self._client.config.call_timeout) is not None:
                return
        await self._client.nack(
            job.id, job.lease_id, error, retry_after=retry_after, dead_letter=dead_letter
        )

    async def _extend(self, job: Job, percent: int, message: str, timeout: float) -> None:
        if self._link is not None:
            req = pb.WorkRequest(
                extend=extend_request(
                    job.id,
                    job.lease_id,
                    visibility_timeout=self.visibility_timeout,
                    progress=percent,
                    progress_message=message,
                )
            )
            if await self._link.call(req, timeout) is not None:
                return
        await self._client.extend_lease(
            job.id,
            job.lease_id,
            visibility_timeout=self.visibility_timeout,
            progress=percent,
            progress_message=message,
            timeout=timeout,
        )

    async def _give_back(self, leased: LeasedJob, hand: _Slots) -> None:
        try:
            await self._settle(Job(leased, self.id), _Outcome("interrupted"))
        finally:
            hand.release()

    # -- one job ----------------------------------------------------------------

    async def _run_job(self, leased: LeasedJob, hand: _Slots) -> None:
        lease = _Lease(self, leased)
        try:
            try:
                outcome = await self._execute(lease)
            finally:
                await lease.close()
            await self._settle(lease.job, outcome)
        except Exception:  # never let one job take the worker down
            log.exception("job %s: unexpected worker error", leased.job_id)
        finally:
            hand.release()

    async def _execute(self, lease: _Lease) -> _Outcome:
        slots = self._run_slots
        if slots.locked():
            # Wait for a run slot unless shutdown or the end of the lease comes first.
            acquire: asyncio.Future[Any] = asyncio.ensure_future(slots.acquire())
            await asyncio.wait(
                {acquire, self._draining.fut, lease.ended.fut},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not acquire.done():
                acquire.cancel()
                await asyncio.gather(acquire, return_exceptions=True)
            if not acquire.done() or acquire.cancelled():
                return _Outcome("ended" if lease.ended.is_set() else "interrupted")
        else:
            await slots.acquire()  # free: returns at once
        try:
            if lease.ended.is_set():
                return _Outcome("ended")
            if self._draining.is_set():
                return _Outcome("interrupted")
            return await self._run_handler(lease)
        finally:
            slots.release()

    async def _run_handler(self, lease: _Lease) -> _Outcome:
        job = lease.job
        fn = self._handlers.get(job.job_type, self._fallback)
        if fn is None:
            return _Outcome(
                "failed", error=f"worker {self.id} has no handler for job_type {job.job_type!r}"
            )
        loop = asyncio.get_running_loop()
        is_async = _is_async(fn)
        work: asyncio.Future[Any]
        if is_async:
            work = asyncio.ensure_future(fn(job))
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="taskraft-handler"
                )
            work = loop.run_in_executor(self._pool, _call_sync, fn, job, loop)
        # A handler abandoned on cancellation or shutdown may still fail later;
        # its exception is of no interest then.
        work.add_done_callback(_consume)
        abort = self._abort.fut
        await asyncio.wait({work, lease.ended.fut, abort}, return_when=asyncio.FIRST_COMPLETED)
        if lease.ended.is_set():
            # Cancelled or lease lost: the token is set; stop an async handler and
            # wait for the handler to return (a sync one cannot be stopped), unless
            # shutdown gives up on it. Whatever it returns is discarded.
            if not work.done():
                if is_async:
                    work.cancel()
                await asyncio.wait({work, abort}, return_when=asyncio.FIRST_COMPLETED)
            return _Outcome("ended")
        if work.done():
            return _finished(job, work)
        job.cancelled.set("shutdown")
        if is_async:
            work.cancel()
            await asyncio.wait({work}, timeout=1.0)
        return _Outcome("interrupted")

    async def _heartbeat(self, lease: _Lease) -> None:
        """Extends the lease now, then every third of the visibility timeout and soon
        after a progress report, until cancelled or the lease ends."""
        loop = asyncio.get_running_loop()
        job = lease.job
        every = lease.every
        while True:
            lease.progress.clear()
            percent, message = job.take_progress() or (0, "")
            last = loop.time()
            try:
                await asyncio.wait_for(
                    self._extend(job, percent, message, max(every, 1.0)),
                    self.visibility_timeout,
                )
            except JobCancelledError:
                log.info("job %s was cancelled; stopping its handler", job.id)
                lease.end("cancelled")
                return
            except (LeaseLostError, NotFoundError, FailedPreconditionError) as e:
                log.warning("job %s: lease lost (%s); stopping its handler", job.id, e)
                lease.end("lease-lost")
                return
            except TaskraftError as e:
                log.warning("job %s: lease extension failed, retrying: %s", job.id, e)
            except asyncio.TimeoutError:
                log.warning("job %s: lease extension timed out, retrying", job.id)
            try:
                await asyncio.wait_for(lease.progress.wait(), max(0.0, last + every - loop.time()))
                # Report soon, but not more often than every `min_gap`.
                await asyncio.sleep(max(0.0, last + lease.min_gap - loop.time()))
            except asyncio.TimeoutError:
                pass

    async def _settle(self, job: Job, outcome: _Outcome) -> None:
        r = self._report
        try:
            if outcome.kind == "done":
                await self._ack(job, outcome.result)
                r.succeeded += 1
            elif outcome.kind == "failed":
                r.failed += 1
                await self._nack(
                    job,
                    _truncate(outcome.error),
                    retry_after=outcome.retry_after,
                    dead_letter=outcome.permanent,
                )
            elif outcome.kind == "interrupted":
                r.abandoned += 1
                # 1 ms, not None: None would mean the broker's exponential backoff.
                await self._nack(
                    job, "worker shut down before the job finished", retry_after=0.001
                )
            else:
                r.abandoned += 1
        except JobCancelledError:
            if outcome.kind == "done":
                r.abandoned += 1
            log.info("job %s was cancelled meanwhile", job.id)
        except (LeaseLostError, NotFoundError) as e:
            if outcome.kind == "done":
                r.abandoned += 1
            log.warning("job %s: lease lost before settling; it runs again elsewhere: %s", job.id, e)
        except TaskraftError as e:
            if outcome.kind == "done":
                r.abandoned += 1
            log.error(
                "job %s: settling failed; it runs again after its lease expires: %s", job.id, e
            )


class _Lease:
    """One leased job's lease-keeping state. The heartbeat task starts only when the
    first extension is due (or soon after a progress report), so a short job costs
    a timer, not a task."""

    def __init__(self, worker: Worker, leased: LeasedJob) -> None:
        self._worker = worker
        self._loop = asyncio.get_running_loop()
        self.every = max(worker.visibility_timeout / 3, 0.01)
        self.min_gap = min(self.every, 0.2)
        self.ended = _Flag()
        self.progress = asyncio.Event()
        self.job = Job(leased, worker.id, CancelToken(), self._on_progress)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(self.every, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._worker._heartbeat(self))

    def _progress_now(self) -> None:
        self.progress.set()
        if self._task is None and not self._closed:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(self.min_gap, self._start)

    def _on_progress(self) -> None:  # any thread
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._progress_now)

    def end(self, reason: str) -> None:
        """The lease is over (``cancelled`` or ``lease-lost``): tell the handler."""
        self.job.cancelled.set(reason)
        self.ended.set()

    async def close(self) -> None:
        """Stops the heartbeat."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _forget(holding: set[str], job_id: str, _task: asyncio.Task[None]) -> None:
    """A job task ended: the job is no longer held (nothing to name in a resume)."""
    holding.discard(job_id)


def _is_async(fn: Handler) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    )


def _call_sync(fn: Handler, job: Job, loop: asyncio.AbstractEventLoop) -> Any:
    """Runs a sync handler in a pool thread (an awaitable it returns is awaited on
    the worker's loop)."""
    value = fn(job)
    if inspect.isawaitable(value):
        return asyncio.run_coroutine_threadsafe(_awaited(value), loop).result()
    return value


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def _finished(job: Job, work: asyncio.Future[Any]) -> _Outcome:
    """The outcome of a handler that returned or raised."""
    if work.cancelled():
        return _Outcome("failed", error="handler was cancelled")
    e = work.exception()
    if e is None:
        try:
            return _Outcome("done", result=result_bytes(work.result()))
        except PermanentError as pe:
            return _Outcome("failed", error=pe.message, permanent=True)
    if isinstance(e, HandlerError):
        log.info("job %s failed (%s): %s", job.id, "permanent" if e.permanent else "retryable", e)
        return _Outcome(
            "failed", error=e.message, permanent=e.permanent, retry_after=e.retry_after
        )
    log.warning("job %s: handler raised %s", job.id, type(e).__name__, exc_info=e)
    return _Outcome("failed", error=f"{type(e).__name__}: {e}")


async def _first(aw: Awaitable[Any], stop: asyncio.Future[Any]) -> bool:
    """Awaits ``aw`` unless ``stop`` finishes first; True if ``aw`` finished."""
    task = asyncio.ensure_future(aw)
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False
