"""taskraft: the Python SDK of the taskraft task broker.

Layout:

- :mod:`taskraft.aio`: :class:`AsyncClient` and :class:`ClientConfig`: leader
  discovery, retries of UNAVAILABLE across nodes, deadlines, token and TLS.
- :mod:`taskraft.client`: :class:`Client`, the blocking front of ``AsyncClient``.
- :mod:`taskraft.worker`: :class:`Worker`: a ``Work`` session (or, with
  ``protocol="poll"``, a lease loop), heartbeats, handlers (sync in threads,
  ``async def`` on the loop), graceful shutdown; ``taskraft._session`` holds the
  stream protocol's plumbing.
- :mod:`taskraft.job`: :class:`Job` (what a handler gets) and :class:`CancelToken`.
- :mod:`taskraft.models`: data in and out (:class:`NewJob`, :class:`JobInfo`, ...).
- :mod:`taskraft.errors`: exceptions mapped from gRPC status codes, and the
  handler errors :class:`RetryableError` / :class:`PermanentError`.
- :mod:`taskraft.conformance`: the runner of the language-neutral scenarios.
- ``taskraft.v1``: stubs generated from ``proto/`` when the package is built.
"""

from taskraft.aio import AsyncClient, ClientConfig
from taskraft.client import Client
from taskraft.errors import (
    ConfigError,
    DeadlineExceededError,
    FailedPreconditionError,
    HandlerError,
    InvalidArgumentError,
    JobCancelledError,
    LeaseLostError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryableError,
    ServerError,
    TaskraftError,
    UnauthenticatedError,
    UnavailableError,
)
from taskraft.job import CancelToken, Job
from taskraft.models import (
    ClusterNode,
    ClusterStatus,
    Enqueued,
    EnqueueOptions,
    JobInfo,
    JobState,
    LeasedJob,
    NackResult,
    NewJob,
    QueueStats,
    WorkerInfo,
)
from taskraft.worker import Protocol, Report, Worker

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "CancelToken",
    "Client",
    "ClientConfig",
    "ClusterNode",
    "ClusterStatus",
    "ConfigError",
    "DeadlineExceededError",
    "EnqueueOptions",
    "Enqueued",
    "FailedPreconditionError",
    "HandlerError",
    "InvalidArgumentError",
    "Job",
    "JobCancelledError",
    "JobInfo",
    "JobState",
    "LeaseLostError",
    "LeasedJob",
    "NackResult",
    "NewJob",
    "NotFoundError",
    "PermanentError",
    "PermissionDeniedError",
    "Protocol",
    "Report",
    "ResourceExhaustedError",
    "RetryableError",
    "ServerError",
    "TaskraftError",
    "UnauthenticatedError",
    "UnavailableError",
    "Worker",
    "WorkerInfo",
]
