"""Plain data the SDK hands out and takes in: what to enqueue (:class:`NewJob`),
what came back (:class:`Enqueued`, :class:`JobInfo`, :class:`QueueStats`, ...).

They are frozen dataclasses built from the generated protobuf messages, so code
using the SDK never depends on the generated module.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from taskraft._rpc import pb

Payload = bytes | bytearray | memoryview | str
"""What may be enqueued: bytes as they are, a ``str`` as UTF-8."""


def to_bytes(payload: Payload) -> bytes:
    """``payload`` as bytes (``str`` is encoded as UTF-8)."""
    if isinstance(payload, str):
        return payload.encode()
    return bytes(payload)


class JobState(enum.IntEnum):
    """A job's state; the values are the proto's ``JobState`` numbers."""

    UNSPECIFIED = 0
    #: Waiting for its run time (delayed job or retry backoff).
    SCHEDULED = 1
    #: Can be leased now.
    READY = 2
    #: Held by a worker until its lease deadline.
    LEASED = 3
    SUCCEEDED = 4
    #: Attempts used up or dead-lettered; ``retry_job`` brings it back.
    DEAD = 5
    CANCELLED = 6

    @property
    def is_final(self) -> bool:
        """True for SUCCEEDED, DEAD and CANCELLED."""
        return self in (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)

    @classmethod
    def of(cls, value: int) -> JobState:
        """The state for a proto number (UNSPECIFIED for numbers this SDK does not know)."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


def new_request_id() -> str:
    """A fresh random enqueue request id (a uuid4 as 32 hex characters)."""
    return uuid.uuid4().hex


def _ms(seconds: float) -> int:
    return max(0, int(round(seconds * 1000)))


class EnqueueOptions(TypedDict, total=False):
    """Keyword options of an enqueue; see :class:`NewJob` for each one."""

    job_type: str
    priority: int
    delay: float | None
    run_at: _dt.datetime | float | None
    max_attempts: int
    idempotency_key: str
    headers: Mapping[str, str]
    webhook_url: str


@dataclass(frozen=True)
class NewJob:
    """One job to enqueue (for :meth:`Client.enqueue_batch`); every option defaults
    to the broker's default.

    ``delay`` (seconds) and ``run_at`` (an aware or naive-UTC datetime, or Unix
    seconds) are alternatives: set at most one.
    """

    queue: str
    payload: Payload = b""
    job_type: str = ""
    priority: int = 0
    delay: float | None = None
    run_at: _dt.datetime | float | None = None
    #: Deliveries allowed before the job dies (0: the broker's ``--max-attempts``).
    max_attempts: int = 0
    #: A second enqueue with the same (queue, key) inside the broker's dedup window
    #: returns the first job's id with ``duplicate=True`` and stores nothing. The
    #: client's own retries never need it (each enqueue carries a request id, see
    #: :meth:`to_proto`); set it when *separate* calls must not store the job twice,
    #: e.g. your code enqueues again after an error, or another process may enqueue
    #: the same work. When set, it decides instead of the request id.
    idempotency_key: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The broker POSTs a signed event here when the job succeeds or dies.
    webhook_url: str = ""

    @classmethod
    def json(cls, queue: str, value: Any, **options: Unpack[EnqueueOptions]) -> NewJob:
        """A job whose payload is ``value`` encoded as JSON."""
        return cls(queue, json.dumps(value, separators=(",", ":")).encode(), **options)

    def to_proto(self, request_id: str | None = None) -> pb.EnqueueRequest:
        """The ``EnqueueRequest`` for this job.

        It carries ``request_id`` or, by default, a fresh random one (32 hex
        characters), so every request built is a new logical call. The client builds
        the request once per call and resends that same request on each retry: the
        broker answers a repeat of a (queue, request id) within 5 minutes with the
        first job (``duplicate=True``) instead of storing a second one. The broker
        ignores it when ``idempotency_key`` is set."""
        if self.delay is not None and self.run_at is not None:
            from taskraft.errors import ConfigError

            raise ConfigError("set at most one of delay and run_at")
        run_at_ms = 0
        if self.run_at is not None:
            at = self.run_at
            if isinstance(at, _dt.datetime):
                if at.tzinfo is None:
                    at = at.replace(tzinfo=_dt.timezone.utc)
                seconds = at.timestamp()
            else:
                seconds = float(at)
            # A time in the past means "now": 1 ms is the earliest the API can express.
            run_at_ms = max(1, _ms(seconds))
        return pb.EnqueueRequest(
            queue=self.queue,
            payload=to_bytes(self.payload),
            job_type=self.job_type,
            priority=self.priority,
            delay_ms=_ms(self.delay) if self.delay is not None else 0,
            max_attempts=self.max_attempts,
            idempotency_key=self.idempotency_key,
            headers=dict(self.headers),
            run_at_ms=run_at_ms,
            webhook_url=self.webhook_url,
            request_id=new_request_id() if request_id is None else request_id,
        )


@dataclass(frozen=True)
class Enqueued:
    """The broker's answer to an enqueue."""

    #: The job's id (the first job's id when ``duplicate``).
    job_id: str
    #: True when nothing was stored: the idempotency key (or, for a retried call, the
    #: request id) matched an earlier job.
    duplicate: bool = False

    @classmethod
    def from_proto(cls, r: pb.EnqueueResponse) -> Enqueued:
        """From an ``EnqueueResponse``."""
        return cls(job_id=r.job_id, duplicate=r.duplicate)


@dataclass(frozen=True)
class JobInfo:
    """A job as ``GetJob`` (or ``ListJobs``, ``CancelJob``, ``RetryJob``) returns it."""

    job_id: str
    queue: str
    job_type: str
    state: JobState
    #: Deliveries so far (1 after the first lease).
    attempt: int
    max_attempts: int
    priority: int
    payload: bytes
    result: bytes
    last_error: str
    created_at_ms: int
    run_at_ms: int
    progress: int
    progress_message: str
    #: Deliveries that ended because the lease ran out (worker crash or hang).
    expirations: int
    headers: dict[str, str]
    lease_deadline_ms: int
    worker_id: str
    finished_at_ms: int
    expires_at_ms: int
    webhook_url: str

    @classmethod
    def from_proto(cls, j: pb.Job) -> JobInfo:
        """From a ``Job`` message."""
        return cls(
            job_id=j.job_id,
            queue=j.queue,
            job_type=j.job_type,
            state=JobState.of(j.state),
            attempt=j.attempt,
            max_attempts=j.max_attempts,
            priority=j.priority,
            payload=j.payload,
            result=j.result,
            last_error=j.last_error,
            created_at_ms=j.created_at_ms,
            run_at_ms=j.run_at_ms,
            progress=j.progress,
            progress_message=j.progress_message,
            expirations=j.expirations,
            headers=dict(j.headers),
            lease_deadline_ms=j.lease_deadline_ms,
            worker_id=j.worker_id,
            finished_at_ms=j.finished_at_ms,
            expires_at_ms=j.expires_at_ms,
            webhook_url=j.webhook_url,
        )

    @property
    def is_final(self) -> bool:
        """True once SUCCEEDED, DEAD or CANCELLED."""
        return self.state.is_final

    def result_json(self) -> Any:
        """The result decoded as JSON."""
        return json.loads(self.result)


@dataclass(frozen=True)
class LeasedJob:
    """One job handed out by ``Lease``: what a worker needs to run and settle it."""

    job_id: str
    #: Fencing token: ``ack``/``nack``/``extend_lease`` must carry it.
    lease_id: str
    queue: str
    job_type: str
    payload: bytes
    #: 1 on the first delivery.
    attempt: int
    lease_deadline_ms: int
    headers: dict[str, str]
    priority: int
    max_attempts: int

    @classmethod
    def from_proto(cls, j: pb.LeasedJob) -> LeasedJob:
        """From a ``LeasedJob`` message."""
        return cls(
            job_id=j.job_id,
            lease_id=j.lease_id,
            queue=j.queue,
            job_type=j.job_type,
            payload=j.payload,
            attempt=j.attempt,
            lease_deadline_ms=j.lease_deadline_ms,
            headers=dict(j.headers),
            priority=j.priority,
            max_attempts=j.max_attempts,
        )


@dataclass(frozen=True)
class NackResult:
    """Where a nacked job went: SCHEDULED (retry at ``run_at_ms``), READY or DEAD."""

    state: JobState
    run_at_ms: int


@dataclass(frozen=True)
class QueueStats:
    """Job counts of one queue."""

    queue: str
    ready: int
    scheduled: int
    leased: int
    succeeded: int
    dead: int
    cancelled: int
    paused: bool

    @classmethod
    def from_proto(cls, s: pb.QueueStats) -> QueueStats:
        """From a ``QueueStats`` message."""
        return cls(
            queue=s.queue,
            ready=s.ready,
            scheduled=s.scheduled,
            leased=s.leased,
            succeeded=s.succeeded,
            dead=s.dead,
            cancelled=s.cancelled,
            paused=s.paused,
        )


@dataclass(frozen=True)
class ClusterNode:
    """A cluster member."""

    id: int
    addr: str
    #: "leader", "follower" or "learner".
    role: str
    matched_index: int


@dataclass(frozen=True)
class ClusterStatus:
    """Leader, term, members and log indexes as seen by the node that answered."""

    leader_id: int
    term: int
    nodes: tuple[ClusterNode, ...]
    last_log_index: int
    commit_index: int
    applied_index: int
    #: The node that answered.
    node_id: int

    @classmethod
    def from_proto(cls, s: pb.ClusterStatus) -> ClusterStatus:
        """From a ``ClusterStatus`` message."""
        return cls(
            leader_id=s.leader_id,
            term=s.term,
            nodes=tuple(
                ClusterNode(id=n.id, addr=n.addr, role=n.role, matched_index=n.matched_index)
                for n in s.nodes
            ),
            last_log_index=s.last_log_index,
            commit_index=s.commit_index,
            applied_index=s.applied_index,
            node_id=s.node_id,
        )

    @property
    def leader(self) -> ClusterNode | None:
        """The leader's entry, if a leader is known."""
        return next((n for n in self.nodes if n.id == self.leader_id), None)


@dataclass(frozen=True)
class WorkerInfo:
    """A worker the cluster has seen leasing recently."""

    worker_id: str
    queues: tuple[str, ...]
    jobs_in_hand: int
    last_seen_ms: int
    leased_total: int

    @classmethod
    def from_proto(cls, w: pb.Worker) -> WorkerInfo:
        """From a ``Worker`` message."""
        return cls(
            worker_id=w.worker_id,
            queues=tuple(w.queues),
            jobs_in_hand=w.jobs_in_hand,
            last_seen_ms=w.last_seen_ms,
            leased_total=w.leased_total,
        )
