"""What a handler sees: the :class:`Job` context (payload, attempt, headers,
progress reporting) and its :class:`CancelToken`."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from taskraft.errors import PermanentError
from taskraft.models import LeasedJob


class CancelToken:
    """Set when a running job should stop: it was cancelled (``reason ==
    "cancelled"``), its lease was lost (``"lease-lost"``), or the worker's shutdown
    deadline passed (``"shutdown"``).

    Sync handlers poll :meth:`is_set` or block in :meth:`wait` (like a
    ``threading.Event``); async handlers are also cancelled (``CancelledError`` at
    their next ``await``) and may ``await token.wait_async()`` instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        # Created on the first blocking wait: most jobs never wait on their token.
        self._event: threading.Event | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        #: Why the token was set (None while it is not).
        self.reason: str | None = None

    def is_set(self) -> bool:
        """True once the job should stop."""
        return self._set

    def __bool__(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until set or ``timeout`` seconds pass; returns :meth:`is_set`.
        ``job.cancelled.wait(1.0)`` is a sleep that ends early on cancellation."""
        with self._lock:
            if self._set:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    async def wait_async(self) -> None:
        """Returns once the token is set."""
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        with self._lock:
            if self._set:
                return
            self._waiters.append((loop, ev))
        await ev.wait()

    def set(self, reason: str) -> None:
        """Sets the token (the worker does this; handlers need not)."""
        with self._lock:
            if self._set:
                return
            self.reason = reason
            self._set = True
            event = self._event
            waiters, self._waiters = self._waiters, []
        if event is not None:
            event.set()
        for loop, ev in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(ev.set)


class Job:
    """A leased job, handed to a handler.

    While the handler runs, the worker extends the lease every third of the
    visibility timeout; progress reported with :meth:`progress` travels with the
    next extension (sent soon, at most every 200 ms).
    """

    def __init__(
        self,
        leased: LeasedJob,
        worker_id: str,
        cancelled: CancelToken | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.leased = leased
        #: The worker running the job.
        self.worker_id = worker_id
        #: Set when the job should stop; see :class:`CancelToken`.
        self.cancelled = cancelled or CancelToken()
        self._on_progress = on_progress
        self._progress_lock = threading.Lock()
        self._progress: tuple[int, str] | None = None

    @property
    def id(self) -> str:
        """The job's id."""
        return self.leased.job_id

    @property
    def queue(self) -> str:
        """The queue it came from."""
        return self.leased.queue

    @property
    def job_type(self) -> str:
        """Its dispatch name."""
        return self.leased.job_type

    @property
    def payload(self) -> bytes:
        """The raw payload."""
        return self.leased.payload

    def text(self) -> str:
        """The payload decoded as UTF-8 (invalid bytes are a :class:`PermanentError`)."""
        try:
            return self.leased.payload.decode()
        except UnicodeDecodeError as e:
            raise PermanentError(f"payload is not UTF-8: {e}") from e

    def json(self) -> Any:
        """The payload decoded as JSON. A payload that does not decode is a
        :class:`PermanentError` (retrying cannot fix it), so the job dies at once."""
        try:
            return json.loads(self.leased.payload)
        except (ValueError, UnicodeDecodeError) as e:
            raise PermanentError(f"payload is not valid JSON: {e}") from e

    @property
    def attempt(self) -> int:
        """This delivery's number: 1 on the first."""
        return self.leased.attempt

    @property
    def max_attempts(self) -> int:
        """Deliveries allowed in all."""
        return self.leased.max_attempts

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now dead-letters the job."""
        return self.leased.attempt >= self.leased.max_attempts

    @property
    def priority(self) -> int:
        """The job's priority."""
        return self.leased.priority

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers set at enqueue (and the broker's ``traceparent``/``tracestate``
        when the producer sent trace context)."""
        return self.leased.headers

    @property
    def lease_id(self) -> str:
        """The lease's fencing token."""
        return self.leased.lease_id

    def is_cancelled(self) -> bool:
        """True once the job should stop (see :attr:`cancelled`)."""
        return self.cancelled.is_set()

    def progress(self, percent: int, message: str = "") -> None:
        """Reports progress (0-100, clamped) with a short message; stored on the
        job (``GetJob``). Safe from any thread."""
        with self._progress_lock:
            self._progress = (max(0, min(100, int(percent))), message)
        if self._on_progress is not None:
            self._on_progress()

    def take_progress(self) -> tuple[int, str] | None:
        """The last progress reported (the worker reads it for each extension)."""
        with self._progress_lock:
            return self._progress

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, queue={self.queue!r}, job_type={self.job_type!r}, "
            f"attempt={self.attempt})"
        )
