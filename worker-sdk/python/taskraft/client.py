""":class:`Client`: the synchronous client, for producers, scripts and admin tools.

It is a thin blocking front of :class:`taskraft.AsyncClient`, which runs on a
private event loop in a daemon thread, so both share one implementation of
leader discovery, retries, deadlines and error mapping (see :mod:`taskraft.aio`).
A ``Client`` may be used from many threads at once.

Retrying an enqueue after UNAVAILABLE cannot store the job twice: each enqueue
carries a random request id, the same on all of its attempts (see
:mod:`taskraft.aio`). Set ``idempotency_key`` to deduplicate separate calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Unpack

from taskraft.aio import AsyncClient, ClientConfig
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
)

_T = TypeVar("_T")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="taskraft-client", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a taskraft.Client cannot be called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class Client:
    """A handle to a taskraft cluster (blocking calls).

    ::

        client = taskraft.Client(["127.0.0.1:7070", "127.0.0.1:7080"], token="s3cret")
        job = client.enqueue("emails", b"hello", job_type="send", priority=5)
        print(client.get_job(job.job_id).state)

    ``addrs`` is one or more node addresses (a list or a comma-separated string);
    calls go to the leader (found by asking a node) and move to the next node on
    UNAVAILABLE, retrying with backoff for up to ``retry_for`` seconds. Each
    attempt has a deadline of ``call_timeout`` seconds (or the call's ``timeout``).
    ``token`` is sent as ``authorization: Bearer <token>``; ``root_ca`` (a PEM file
    or its bytes), ``tls=True`` or an ``https://`` address turn on TLS.

    Nothing is dialled until the first call. Close it with :meth:`close` (or use it
    as a context manager) to release its thread and connections.
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
        self._aio = AsyncClient(self.config)
        self._loop: _LoopThread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("this taskraft.Client is closed")
            if self._loop is None:
                self._loop = _LoopThread()
            loop = self._loop
        return loop.run(coro)

    def close(self) -> None:
        """Closes the connections and stops the client's thread."""
        with self._lock:
            loop, self._loop = self._loop, None
            self._closed = True
        if loop is not None:
            try:
                loop.run(self._aio.close())
            finally:
                loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.addrs!r})"

    @property
    def addrs(self) -> str:
        """The node addresses, comma separated."""
        return self._aio.addrs

    @property
    def current_addr(self) -> str:
        """The address calls go to now (the leader, once a call has found it)."""
        return self._aio.current_addr

    # -- producer calls -------------------------------------------------------

    def enqueue(
        self,
        queue: str,
        payload: Payload = b"",
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Enqueued:
        """Enqueues one job. ``options``: ``job_type``, ``priority``, ``delay``
        (seconds), ``run_at``, ``max_attempts``, ``idempotency_key``, ``headers``,
        ``webhook_url`` (see :class:`NewJob`). ``metadata`` is extra call metadata,
        e.g. ``{"traceparent": ...}``, which the broker copies into the job's
        headers."""
        return self._run(
            self._aio.enqueue(queue, payload, metadata=metadata, timeout=timeout, **options)
        )

    def enqueue_json(
        self,
        queue: str,
        value: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Enqueued:
        """Enqueues ``value`` encoded as JSON; options as for :meth:`enqueue`."""
        return self._run(
            self._aio.enqueue_json(queue, value, metadata=metadata, timeout=timeout, **options)
        )

    def enqueue_job(
        self,
        job: NewJob,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Enqueued:
        """Enqueues one :class:`NewJob`."""
        return self._run(self._aio.enqueue_job(job, metadata=metadata, timeout=timeout))

    def enqueue_batch(
        self,
        jobs: Iterable[NewJob],
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[Enqueued]:
        """Enqueues many jobs in one call: all or none, at most 10,000; answers in
        the order of ``jobs``."""
        return self._run(self._aio.enqueue_batch(list(jobs), metadata=metadata, timeout=timeout))

    # -- jobs -----------------------------------------------------------------

    def get_job(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Reads one job. :class:`NotFoundError` if unknown."""
        return self._run(self._aio.get_job(job_id, timeout=timeout))

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> JobInfo:
        """Polls a job until it is final; :class:`DeadlineExceededError` after
        ``timeout`` seconds."""
        return self._run(self._aio.wait_for_job(job_id, timeout))

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Cancels a job that has not finished; a worker running it is told at its
        next lease extension."""
        return self._run(self._aio.cancel_job(job_id, timeout=timeout))

    def retry_job(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Brings a DEAD or CANCELLED job back to READY with fresh attempts."""
        return self._run(self._aio.retry_job(job_id, timeout=timeout))

    def list_jobs(
        self,
        queue: str,
        state: JobState | None = None,
        limit: int = 100,
        *,
        timeout: float | None = None,
    ) -> list[JobInfo]:
        """Up to ``limit`` (at most 1000) jobs of ``queue``, oldest first."""
        return self._run(self._aio.list_jobs(queue, state, limit, timeout=timeout))

    # -- queues and cluster -----------------------------------------------------

    def queue_stats(self, queue: str, *, timeout: float | None = None) -> QueueStats:
        """Job counts of one queue."""
        return self._run(self._aio.queue_stats(queue, timeout=timeout))

    def list_queues(self, *, timeout: float | None = None) -> list[QueueStats]:
        """Counts of every queue."""
        return self._run(self._aio.list_queues(timeout=timeout))

    def pause_queue(self, queue: str, *, timeout: float | None = None) -> QueueStats:
        """Stops handing out the queue's jobs (enqueues still work)."""
        return self._run(self._aio.pause_queue(queue, timeout=timeout))

    def resume_queue(self, queue: str, *, timeout: float | None = None) -> QueueStats:
        """Undoes :meth:`pause_queue`."""
        return self._run(self._aio.resume_queue(queue, timeout=timeout))

    def redrive_dead_jobs(self, queue: str, *, timeout: float | None = None) -> int:
        """Moves every DEAD job of ``queue`` back to READY; returns how many."""
        return self._run(self._aio.redrive_dead_jobs(queue, timeout=timeout))

    def cluster_status(self, *, timeout: float | None = None) -> ClusterStatus:
        """Leader, term, members and log indexes as seen by the node that answers."""
        return self._run(self._aio.cluster_status(timeout=timeout))

    def list_workers(self, *, timeout: float | None = None) -> list[WorkerInfo]:
        """Workers the cluster has seen leasing recently."""
        return self._run(self._aio.list_workers(timeout=timeout))

    # -- worker calls (taskraft.Worker does these for you) -----------------------

    def lease(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        max_jobs: int = 1,
        visibility_timeout: float | None = None,
        wait: float = 0.0,
        timeout: float | None = None,
    ) -> list[LeasedJob]:
        """Leases up to ``max_jobs`` jobs; see :meth:`AsyncClient.lease`."""
        return self._run(
            self._aio.lease(
                queues,
                worker_id=worker_id,
                max_jobs=max_jobs,
                visibility_timeout=visibility_timeout,
                wait=wait,
                timeout=timeout,
            )
        )

    def ack(
        self, job_id: str, lease_id: str, result: Payload = b"", *, timeout: float | None = None
    ) -> None:
        """Completes a leased job."""
        self._run(self._aio.ack(job_id, lease_id, result, timeout=timeout))

    def nack(
        self,
        job_id: str,
        lease_id: str,
        error: str = "",
        *,
        retry_after: float | None = None,
        dead_letter: bool = False,
        timeout: float | None = None,
    ) -> NackResult:
        """Fails a leased job; see :meth:`AsyncClient.nack`."""
        return self._run(
            self._aio.nack(
                job_id,
                lease_id,
                error,
                retry_after=retry_after,
                dead_letter=dead_letter,
                timeout=timeout,
            )
        )

    def extend_lease(
        self,
        job_id: str,
        lease_id: str,
        *,
        visibility_timeout: float | None = None,
        progress: int = 0,
        progress_message: str = "",
        timeout: float | None = None,
    ) -> int:
        """Extends a lease (and reports progress); returns the new deadline (Unix ms)."""
        return self._run(
            self._aio.extend_lease(
                job_id,
                lease_id,
                visibility_timeout=visibility_timeout,
                progress=progress,
                progress_message=progress_message,
                timeout=timeout,
            )
        )
