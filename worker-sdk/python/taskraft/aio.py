""":class:`AsyncClient`: producer, admin and lease calls for asyncio code.

Any node serves any call (followers forward to the leader), so the client keeps
one lazily connected channel per address, prefers the leader, and moves on to the
next address when a call fails with UNAVAILABLE or cannot connect::

    call ──> node[i] ──ok──> answer
               │ UNAVAILABLE / connect error
               └──> i = i + 1 (and ask it who leads), sleep 50 ms .. 1 s
                    (doubling, +-20 %) ──> again, until the retry window
                    (``retry_for``, 30 s) is used up ──> UnavailableError

Every other error is raised at once, classified (:mod:`taskraft.errors`). Each
attempt carries its own deadline (``call_timeout`` or the call's ``timeout``) and
the bearer token when one is set. ``DEADLINE_EXCEEDED`` is not retried (the call
may have taken effect), but the next call starts at the next node and asks it who
leads, so a node that hangs is left behind.

Retrying an enqueue after UNAVAILABLE cannot store the job twice (even when the
first attempt committed but its answer was lost): every enqueue request carries a
random ``request_id`` (each job of a batch its own), built once per call and resent
unchanged on each attempt, and the broker answers a repeat within 5 minutes with
the first job (``Enqueued.duplicate``). Calling ``enqueue`` again after an error is
a new call with a new request id: set ``idempotency_key`` to deduplicate separate
calls (it also lasts the broker's whole dedup window).

The synchronous :class:`taskraft.Client` runs one of these on a private event
loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Unpack

import grpc
import grpc.aio

from taskraft._rpc import AdminApi, BrokerApi, admin_stub, broker_stub, pb
from taskraft.errors import (
    ConfigError,
    DeadlineExceededError,
    UnavailableError,
    from_status,
)
from taskraft.models import (
    ClusterStatus,
    Enqueued,
    EnqueueOptions,
    JobInfo,
    JobState,
    LeasedJob,
    NackResult,
    NewJob,
    Payload,
    QueueStats,
    WorkerInfo,
    to_bytes,
)

log = logging.getLogger("taskraft")

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

#: Largest message the client accepts (a lease of many large payloads).
MAX_MESSAGE = 64 << 20


@dataclass(frozen=True)
class ClientConfig:
    """Connection settings shared by :class:`AsyncClient`, :class:`taskraft.Client`
    and :class:`taskraft.Worker` (which opens its own channels from them)."""

    #: ``host:port`` (or ``http://host:port``, ``https://host:port``) per node.
    addrs: tuple[str, ...]
    #: Sent as ``authorization: Bearer <token>`` on every call.
    token: str | None = None
    #: Use TLS (also implied by ``root_ca`` or an ``https://`` address).
    tls: bool = False
    #: PEM root certificates to verify the nodes with (None: the system's roots).
    root_ca: bytes | None = None
    #: Overrides the name checked against the nodes' certificates.
    tls_server_name: str | None = None
    #: Deadline of one attempt of one call, in seconds (long polls add their wait).
    call_timeout: float = 10.0
    #: How long to wait for a TCP (and TLS) connection to a node, in seconds.
    connect_timeout: float = 3.0
    #: How long a call keeps retrying UNAVAILABLE across the nodes, in seconds
    #: (0: one attempt).
    retry_for: float = 30.0

    @classmethod
    def make(
        cls,
        addrs: str | Sequence[str],
        *,
        token: str | None = None,
        tls: bool = False,
        root_ca: str | Path | bytes | None = None,
        tls_server_name: str | None = None,
        call_timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry_for: float = 30.0,
    ) -> ClientConfig:
        """Checks and normalizes the settings. ``addrs`` may be one string with
        comma-separated addresses; ``root_ca`` a PEM file path or the PEM bytes."""
        if isinstance(addrs, str):
            addrs = [a for a in addrs.split(",")]
        cleaned = tuple(a.strip() for a in addrs if a.strip())
        if not cleaned:
            raise ConfigError("no node address given")
        for a in cleaned:
            if not _bare(a) or " " in a:
                raise ConfigError(f"invalid address {a!r}: expected host:port")
        if call_timeout <= 0:
            raise ConfigError("call_timeout must be above zero")
        if connect_timeout <= 0:
            raise ConfigError("connect_timeout must be above zero")
        if retry_for < 0:
            raise ConfigError("retry_for must not be negative")
        if token is not None and (not token.isascii() or not token.isprintable()):
            raise ConfigError("the token must be printable ASCII")
        ca: bytes | None
        if isinstance(root_ca, (str, Path)):
            try:
                ca = Path(root_ca).read_bytes()
            except OSError as e:
                raise ConfigError(f"root_ca: cannot read {root_ca}: {e}") from e
        else:
            ca = root_ca
        return cls(
            addrs=cleaned,
            token=token,
            tls=tls or ca is not None or any(a.startswith("https://") for a in cleaned),
            root_ca=ca,
            tls_server_name=tls_server_name,
            call_timeout=call_timeout,
            connect_timeout=connect_timeout,
            retry_for=retry_for,
        )


def _bare(addr: str) -> str:
    for scheme in ("http://", "https://"):
        if addr.startswith(scheme):
            addr = addr[len(scheme) :]
    return addr.rstrip("/")


class _Node:
    """One address: its channel and stubs, opened on first use (in the loop that
    uses them: grpc.aio channels belong to one event loop)."""

    def __init__(self, addr: str, config: ClientConfig) -> None:
        self.addr = addr
        self.target = _bare(addr)
        self._config = config
        self._channel: grpc.aio.Channel | None = None
        self._broker: BrokerApi | None = None
        self._admin: AdminApi | None = None

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            c = self._config
            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                # Reconnect soon after a node comes back (the default backoff grows
                # to two minutes), and bound one connection attempt.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
                ("grpc.min_reconnect_backoff_ms", int(c.connect_timeout * 1000)),
            ]
            if c.tls_server_name:
                options.append(("grpc.ssl_target_name_override", c.tls_server_name))
            if c.tls:
                creds = grpc.ssl_channel_credentials(root_certificates=c.root_ca)
                self._channel = grpc.aio.secure_channel(self.target, creds, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=options)
        return self._channel

    @property
    def broker(self) -> BrokerApi:
        if self._broker is None:
            self._broker = broker_stub(self._open())
        return self._broker

    @property
    def admin(self) -> AdminApi:
        if self._admin is None:
            self._admin = admin_stub(self._open())
        return self._admin

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._broker = self._admin = None


@dataclass
class WorkConn:
    """A ``Work`` stream just opened (see :meth:`AsyncClient.open_work`)."""

    #: Index of the node it runs on (a resume must come back to it).
    node: int
    #: The call: read pushes and answers from it; requests come from the iterator
    #: given to ``open_work`` (its end half-closes the stream).
    call: grpc.aio.StreamStreamCall[pb.WorkRequest, pb.WorkResponse]
    #: The session's first answer.
    opened: pb.WorkOpened


def _trailing(e: grpc.aio.AioRpcError) -> dict[str, str]:
    out: dict[str, str] = {}
    md = e.trailing_metadata()
    if md:
        for key, value in md:
            out[str(key)] = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return out


class AsyncClient:
    """A handle to a taskraft cluster for asyncio code.

    ::

        async with AsyncClient(["127.0.0.1:7070"]) as client:
            job = await client.enqueue("emails", b"hello", job_type="send")
            print((await client.get_job(job.job_id)).state)

    Nothing is dialled until the first call, so a cluster that is still starting is
    not an error. Use one client from one event loop.
    """

    def __init__(
        self,
        addrs: str | Sequence[str] | ClientConfig,
        *,
        token: str | None = None,
        tls: bool = False,
        root_ca: str | Path | bytes | None = None,
        tls_server_name: str | None = None,
        call_timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry_for: float = 30.0,
    ) -> None:
        """``addrs``: node addresses (a list, or one comma-separated string), or a
        ready :class:`ClientConfig`. See :class:`ClientConfig` for the rest."""
        if isinstance(addrs, ClientConfig):
            self.config = addrs
        else:
            self.config = ClientConfig.make(
                addrs,
                token=token,
                tls=tls,
                root_ca=root_ca,
                tls_server_name=tls_server_name,
                call_timeout=call_timeout,
                connect_timeout=connect_timeout,
                retry_for=retry_for,
            )
        self._nodes = [_Node(a, self.config) for a in self.config.addrs]
        self._current = 0
        # False until a call has asked a node who leads (and again after UNAVAILABLE).
        self._leader_known = len(self._nodes) < 2
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {self.config.token}"),) if self.config.token else ()
        )

    @property
    def addrs(self) -> str:
        """The node addresses, comma separated."""
        return ",".join(self.config.addrs)

    @property
    def current_addr(self) -> str:
        """The address calls go to now (the leader, once known)."""
        return self._nodes[self._current].addr

    async def close(self) -> None:
        """Closes every channel. The client reopens them if used again."""
        for n in self._nodes:
            await n.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.addrs!r})"

    # -- the retry loop -------------------------------------------------------

    async def _call(
        self,
        pick: Callable[[_Node], grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp]],
        request: _Req,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> _Resp:
        """Runs one call: on the leader if known, moving across nodes on UNAVAILABLE.

        ``request`` is built once by the caller and sent unchanged on every attempt,
        which is what makes an enqueue's ``request_id`` the same on each retry."""
        deadline = timeout if timeout is not None else self.config.call_timeout
        md = self._metadata + tuple((k.lower(), v) for k, v in (metadata or {}).items())
        give_up = time.monotonic() + self.config.retry_for
        backoff = 0.05
        while True:
            await self._prefer_leader()
            idx = self._current
            method = pick(self._nodes[idx])
            try:
                # gRPC enforces the deadline on this side too, so a node that stopped
                # answering altogether ends the call with DEADLINE_EXCEEDED.
                return await method(request, timeout=deadline, metadata=md)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and len(self._nodes) > 1:
                    # Not retried (the call may have taken effect), but the next call
                    # starts at the next node and asks it who leads, so a hung node
                    # is left behind.
                    self._leader_known = False
                    if self._current == idx:
                        self._current = (idx + 1) % len(self._nodes)
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise from_status(code, e.details() or "", _trailing(e)) from None
                why = e.details() or "unavailable"
            # Try the next node (and ask it who leads).
            self._move_past(idx)
            # Keep trying for the whole window: the last pause is cut to what is left,
            # so the error comes no sooner than ``retry_for`` after the first attempt.
            left = give_up - time.monotonic()
            if left <= 0:
                raise UnavailableError(why, self.addrs)
            pause = min(backoff * random.uniform(0.8, 1.2), left)
            log.debug("retrying after UNAVAILABLE from %s: %s", self._nodes[idx].addr, why)
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, 1.0)

    async def _prefer_leader(self) -> None:
        """Any node serves any call, but the leader serves it without a forwarding
        hop: unless the leader is known, ask the current node who leads and, if the
        leader is one of our addresses, use it. Best effort: on any failure the current
        node stays.

        When the node answered that no leader is known (an election is under way), the
        next call asks again, so a client that failed over during an election does not
        stay on a follower for good."""
        if self._leader_known:
            return
        self._leader_known = True  # one ask at a time
        node = self._nodes[self._current]
        try:
            status = await asyncio.wait_for(
                node.admin.GetClusterStatus(
                    pb.GetClusterStatusRequest(), timeout=1.0, metadata=self._metadata
                ),
                2.0,
            )
        except (grpc.aio.AioRpcError, asyncio.TimeoutError):
            return
        leader = next((n for n in status.nodes if n.id == status.leader_id), None)
        if leader is None:
            self._leader_known = False
            return
        for i, n in enumerate(self._nodes):
            if n.target == _bare(leader.addr):
                self._current = i
                return

    # -- producer calls -------------------------------------------------------

    async def enqueue(
        self,
        queue: str,
        payload: Payload = b"",
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Enqueued:
        """Enqueues one job (``payload`` as bytes, or a ``str`` as UTF-8).

        ``options`` are :class:`NewJob`'s fields (``job_type``, ``priority``,
        ``delay``, ``run_at``, ``max_attempts``, ``idempotency_key``, ``headers``,
        ``webhook_url``). ``metadata`` is extra call metadata, e.g.
        ``{"traceparent": ...}``: the broker copies W3C trace context into the
        job's headers so the worker continues the trace.
        """
        return await self.enqueue_job(
            NewJob(queue, to_bytes(payload), **options), metadata=metadata, timeout=timeout
        )

    async def enqueue_json(
        self,
        queue: str,
        value: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Enqueued:
        """Enqueues ``value`` encoded as JSON; options as for :meth:`enqueue`."""
        return await self.enqueue_job(
            NewJob.json(queue, value, **options), metadata=metadata, timeout=timeout
        )

    async def enqueue_job(
        self,
        job: NewJob,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Enqueued:
        """Enqueues one :class:`NewJob`. The request (and its fresh ``request_id``)
        is built once here, so every retry of this call resends the same id."""
        req = job.to_proto()
        r = await self._call(lambda n: n.broker.Enqueue, req, timeout, metadata)
        return Enqueued.from_proto(r)

    async def enqueue_batch(
        self,
        jobs: Iterable[NewJob],
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[Enqueued]:
        """Enqueues many jobs in one call (one Raft log entry): all are stored, or
        none (the error names the index of a refused job, e.g. ``jobs[7]``). At most
        10,000 per call. Answers are in the order of ``jobs``. Each job gets its own
        ``request_id``, kept across the call's retries."""
        req = pb.EnqueueBatchRequest(jobs=[j.to_proto() for j in jobs])
        r = await self._call(lambda n: n.broker.EnqueueBatch, req, timeout, metadata)
        return [Enqueued.from_proto(x) for x in r.results]

    # -- jobs -----------------------------------------------------------------

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Reads one job (linearizable). :class:`NotFoundError` if unknown."""
        r = await self._call(lambda n: n.broker.GetJob, pb.GetJobRequest(job_id=job_id), timeout)
        return JobInfo.from_proto(r)

    async def wait_for_job(self, job_id: str, timeout: float = 60.0) -> JobInfo:
        """Polls a job until it is SUCCEEDED, DEAD or CANCELLED; raises
        :class:`DeadlineExceededError` if ``timeout`` seconds pass first."""
        end = time.monotonic() + timeout
        pause = 0.02
        while True:
            job = await self.get_job(job_id)
            if job.is_final:
                return job
            if time.monotonic() + pause > end:
                raise DeadlineExceededError(
                    f"job {job_id} still {job.state.name} after {timeout}s"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Cancels a job that has not finished. A worker holding it learns it at
        its next lease extension and stops the handler."""
        req = pb.CancelJobRequest(job_id=job_id)
        return JobInfo.from_proto(await self._call(lambda n: n.broker.CancelJob, req, timeout))

    async def retry_job(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Brings a DEAD or CANCELLED job back to READY with fresh attempts."""
        req = pb.RetryJobRequest(job_id=job_id)
        return JobInfo.from_proto(await self._call(lambda n: n.admin.RetryJob, req, timeout))

    async def list_jobs(
        self,
        queue: str,
        state: JobState | None = None,
        limit: int = 100,
        *,
        timeout: float | None = None,
    ) -> list[JobInfo]:
        """Up to ``limit`` (at most 1000) jobs of ``queue``, oldest first,
        optionally only those in ``state``."""
        req = pb.ListJobsRequest(
            queue=queue, state=pb.JobState.Name(int(state or JobState.UNSPECIFIED)), limit=limit
        )
        r = await self._call(lambda n: n.admin.ListJobs, req, timeout)
        return [JobInfo.from_proto(j) for j in r.jobs]

    # -- queues and cluster -----------------------------------------------------

    async def queue_stats(self, queue: str, *, timeout: float | None = None) -> QueueStats:
        """Job counts of one queue."""
        req = pb.GetQueueStatsRequest(queue=queue)
        return QueueStats.from_proto(await self._call(lambda n: n.admin.GetQueueStats, req, timeout))

    async def list_queues(self, *, timeout: float | None = None) -> list[QueueStats]:
        """Counts of every queue."""
        r = await self._call(lambda n: n.admin.ListQueues, pb.ListQueuesRequest(), timeout)
        return [QueueStats.from_proto(q) for q in r.queues]

    async def pause_queue(self, queue: str, *, timeout: float | None = None) -> QueueStats:
        """Stops handing out the queue's jobs (enqueues still work)."""
        req = pb.PauseQueueRequest(queue=queue)
        return QueueStats.from_proto(await self._call(lambda n: n.admin.PauseQueue, req, timeout))

    async def resume_queue(self, queue: str, *, timeout: float | None = None) -> QueueStats:
        """Undoes :meth:`pause_queue`."""
        req = pb.ResumeQueueRequest(queue=queue)
        return QueueStats.from_proto(await self._call(lambda n: n.admin.ResumeQueue, req, timeout))

    async def redrive_dead_jobs(self, queue: str, *, timeout: float | None = None) -> int:
        """Moves every DEAD job of ``queue`` back to READY; returns how many."""
        req = pb.RedriveDeadJobsRequest(queue=queue)
        return (await self._call(lambda n: n.admin.RedriveDeadJobs, req, timeout)).count

    async def cluster_status(self, *, timeout: float | None = None) -> ClusterStatus:
        """Leader, term, members and log indexes as seen by the node that answers."""
        req = pb.GetClusterStatusRequest()
        return ClusterStatus.from_proto(
            await self._call(lambda n: n.admin.GetClusterStatus, req, timeout)
        )

    async def list_workers(self, *, timeout: float | None = None) -> list[WorkerInfo]:
        """Workers the cluster has seen leasing recently."""
        r = await self._call(lambda n: n.admin.ListWorkers, pb.ListWorkersRequest(), timeout)
        return [WorkerInfo.from_proto(w) for w in r.workers]

    # -- worker calls (what taskraft.Worker is built on) -------------------------

    async def lease(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        max_jobs: int = 1,
        visibility_timeout: float | None = None,
        wait: float = 0.0,
        timeout: float | None = None,
    ) -> list[LeasedJob]:
        """Leases up to ``max_jobs`` jobs, serving ``queues`` in order; long-polls up
        to ``wait`` seconds when none is ready. ``visibility_timeout`` (seconds,
        None: the broker's default) is how long the lease lasts unless extended.
        The call's deadline is ``timeout`` if given, else ``call_timeout + wait``
        (the broker ends the long poll early enough to answer by the deadline)."""
        req = pb.LeaseRequest(
            queues=list(queues),
            worker_id=worker_id,
            max_jobs=max_jobs,
            visibility_timeout_ms=_ms(visibility_timeout),
            wait_ms=_ms(wait),
        )
        deadline = timeout if timeout is not None else self.config.call_timeout + wait
        r = await self._call(lambda n: n.broker.Lease, req, deadline)
        return [LeasedJob.from_proto(j) for j in r.jobs]

    async def ack(
        self, job_id: str, lease_id: str, result: Payload = b"", *, timeout: float | None = None
    ) -> None:
        """Completes a leased job, storing ``result``. :class:`LeaseLostError` if
        the lease is no longer ours, :class:`JobCancelledError` if it was cancelled."""
        req = ack_request(job_id, lease_id, to_bytes(result))
        await self._call(lambda n: n.broker.Ack, req, timeout)

    async def nack(
        self,
        job_id: str,
        lease_id: str,
        error: str = "",
        *,
        retry_after: float | None = None,
        dead_letter: bool = False,
        timeout: float | None = None,
    ) -> NackResult:
        """Fails a leased job: it runs again after ``retry_after`` seconds (None:
        the broker's exponential backoff), or dies when its attempts are used up or
        ``dead_letter`` is set."""
        req = nack_request(job_id, lease_id, error, retry_after=retry_after, dead_letter=dead_letter)
        r = await self._call(lambda n: n.broker.Nack, req, timeout)
        return NackResult(state=JobState.of(r.state), run_at_ms=r.run_at_ms)

    async def extend_lease(
        self,
        job_id: str,
        lease_id: str,
        *,
        visibility_timeout: float | None = None,
        progress: int = 0,
        progress_message: str = "",
        timeout: float | None = None,
    ) -> int:
        """Pushes the lease deadline out (and reports progress 0-100); returns the
        new deadline in Unix ms. :class:`JobCancelledError` once the job was
        cancelled, :class:`LeaseLostError` if the lease is no longer ours."""
        req = extend_request(
            job_id,
            lease_id,
            visibility_timeout=visibility_timeout,
            progress=progress,
            progress_message=progress_message,
        )
        return (await self._call(lambda n: n.broker.ExtendLease, req, timeout)).lease_deadline_ms

    async def open_work(
        self, requests: AsyncIterator[pb.WorkRequest], *, node: int | None = None
    ) -> WorkConn:
        """Opens a ``Work`` session (what :class:`taskraft.Worker` uses by default).

        ``requests`` yields the requests, the ``WorkOpen`` first; when it ends the
        stream is half-closed. ``node``: the index of the node to open it on (a
        resume must go back to the node of the session), else the current one (the
        leader once known). Waits up to ``call_timeout`` for ``WorkOpened``. One
        attempt: UNAVAILABLE, a connection failure or no answer in time raise
        :class:`UnavailableError` and move later calls to the next node; any other
        status raises its error (:class:`NotFoundError` for a resume the node does
        not know)."""
        if node is None:
            await self._prefer_leader()
            idx = self._current
        else:
            idx = node % len(self._nodes)
        call = self._nodes[idx].broker.Work(requests, metadata=self._metadata)
        wait = self.config.call_timeout
        why: str
        try:
            first = await asyncio.wait_for(call.read(), wait)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code != grpc.StatusCode.UNAVAILABLE:
                raise from_status(code, e.details() or "", _trailing(e)) from None
            why = e.details() or "unavailable"
        except asyncio.TimeoutError:
            call.cancel()
            why = f"no answer to Work within {wait}s"
        except BaseException:
            call.cancel()
            raise
        else:
            if isinstance(first, pb.WorkResponse) and first.WhichOneof("kind") == "opened":
                return WorkConn(node=idx, call=call, opened=first.opened)
            call.cancel()
            raise from_status(
                grpc.StatusCode.INTERNAL, f"the session's first answer must name it, got {first!r}"
            )
        self._move_past(idx)
        raise UnavailableError(why, self._nodes[idx].addr)

    def _move_past(self, idx: int) -> None:
        """Node ``idx`` was unavailable: calls go to the next node (which is asked who
        leads); another caller may have moved on already."""
        self._leader_known = len(self._nodes) < 2
        if self._current == idx:
            self._current = (idx + 1) % len(self._nodes)


def ack_request(job_id: str, lease_id: str, result: bytes = b"") -> pb.AckRequest:
    """The ``AckRequest`` of :meth:`AsyncClient.ack` (also sent on a ``Work`` stream)."""
    return pb.AckRequest(job_id=job_id, lease_id=lease_id, result=result)


def nack_request(
    job_id: str,
    lease_id: str,
    error: str = "",
    *,
    retry_after: float | None = None,
    dead_letter: bool = False,
) -> pb.NackRequest:
    """The ``NackRequest`` of :meth:`AsyncClient.nack` (also sent on a ``Work`` stream)."""
    retry_ms = 0 if retry_after is None else max(1, _ms(retry_after))
    return pb.NackRequest(
        job_id=job_id,
        lease_id=lease_id,
        error=error,
        retry_after_ms=retry_ms,
        dead_letter=dead_letter,
    )


def extend_request(
    job_id: str,
    lease_id: str,
    *,
    visibility_timeout: float | None = None,
    progress: int = 0,
    progress_message: str = "",
) -> pb.ExtendLeaseRequest:
    """The ``ExtendLeaseRequest`` of :meth:`AsyncClient.extend_lease` (also sent on a
    ``Work`` stream)."""
    return pb.ExtendLeaseRequest(
        job_id=job_id,
        lease_id=lease_id,
        visibility_timeout_ms=_ms(visibility_timeout),
        progress=max(0, min(100, progress)),
        progress_message=progress_message,
    )


def _ms(seconds: float | None) -> int:
    if seconds is None:
        return 0
    return max(0, int(round(seconds * 1000)))


__all__ = ["AsyncClient", "ClientConfig", "WorkConn"]
