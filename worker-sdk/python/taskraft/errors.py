"""Errors: :class:`TaskraftError` and its subclasses for client and worker calls,
:class:`HandlerError` (:class:`RetryableError`, :class:`PermanentError`) for handlers.

Server answers are classified by gRPC status code, and ``FAILED_PRECONDITION``
also by the ``taskraft-reason`` trailing metadata the broker attaches
(``stale-lease``, ``cancelled``, ``wrong-state``), so a cancelled job is told
apart from a lease that merely ran out::

    TaskraftError
    ├── ConfigError               bad client or worker settings (also a ValueError)
    ├── UnavailableError          no node answered within the retry window  (retryable)
    ├── DeadlineExceededError     a call ran past its deadline               (retryable)
    ├── InvalidArgumentError      the message names the field and the limit
    ├── NotFoundError             unknown job, or removed by retention
    ├── FailedPreconditionError   wrong state; ``reason`` holds taskraft-reason
    │   ├── JobCancelledError     reason "cancelled"
    │   └── LeaseLostError        reason "stale-lease"
    ├── UnauthenticatedError      missing or wrong token
    ├── PermissionDeniedError
    ├── ResourceExhaustedError
    └── ServerError               any other status code
"""

from __future__ import annotations

import grpc

#: Trailing metadata key the broker sets on FAILED_PRECONDITION answers.
REASON_KEY = "taskraft-reason"


class TaskraftError(Exception):
    """Base class of every error an SDK call raises."""

    #: The gRPC status code the error came from (None for client-side errors).
    code: grpc.StatusCode | None = None
    #: True when the same call may succeed if retried later.
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TaskraftError, ValueError):
    """A client or worker setting is invalid (the message names it)."""


class UnavailableError(TaskraftError):
    """No node answered (connection refused, no leader, no quorum) within the retry
    window. Safe to retry later. The client's own retries of an enqueue never store
    the job twice (they resend its request id), but calling ``enqueue`` again is a
    new call: pass an ``idempotency_key`` if the first one may have been stored."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True

    def __init__(self, message: str, addrs: str = "") -> None:
        text = f"cannot reach taskraft at {addrs}: {message}" if addrs else message
        super().__init__(text)
        self.addrs = addrs


class DeadlineExceededError(TaskraftError):
    """A call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class InvalidArgumentError(TaskraftError):
    """The server refused the input; the message names the field and the limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(TaskraftError):
    """The job does not exist, or retention already removed it."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(TaskraftError):
    """The job is in the wrong state for this call. ``reason`` is the broker's
    ``taskraft-reason`` (``stale-lease``, ``cancelled``, ``wrong-state``) or ``""``."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class JobCancelledError(FailedPreconditionError):
    """The job was cancelled while leased; its handler should stop."""


class LeaseLostError(FailedPreconditionError):
    """The lease is no longer ours: it ran out and the job went to another worker,
    or the job already finished."""


class UnauthenticatedError(TaskraftError):
    """The token is missing or wrong (``Client(..., token=...)``)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(TaskraftError):
    """The token is valid but not allowed to make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(TaskraftError):
    """A size or rate limit was hit (e.g. a message over the gRPC size limit)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServerError(TaskraftError):
    """Any other server answer; ``code`` holds the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(f"server error ({code.name}): {message}")
        self.code = code


def from_status(
    code: grpc.StatusCode, details: str, metadata: dict[str, str] | None = None
) -> TaskraftError:
    """Classifies a server status (UNAVAILABLE included, without addresses)."""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        reason = (metadata or {}).get(REASON_KEY, "")
        if reason == "cancelled":
            return JobCancelledError(details, reason)
        if reason == "stale-lease":
            return LeaseLostError(details, reason)
        return FailedPreconditionError(details, reason)
    simple: dict[grpc.StatusCode, type[TaskraftError]] = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
        grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
        grpc.StatusCode.NOT_FOUND: NotFoundError,
        grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
        grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
        grpc.StatusCode.UNAVAILABLE: UnavailableError,
    }
    cls = simple.get(code)
    if cls is not None:
        return cls(details)
    return ServerError(details, code)


class HandlerError(Exception):
    """Raised by a handler to control what happens to its job. Any other exception
    counts as a :class:`RetryableError` with the exception's text."""

    #: Dead-letter at once instead of retrying.
    permanent: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Seconds until the retry (None: the broker's exponential backoff).
        self.retry_after = retry_after


class RetryableError(HandlerError):
    """A failure worth retrying: the job is nacked and runs again after the broker's
    backoff (``--retry-base`` x 2^(attempt-1), +-20 %), or after ``retry_after``
    seconds, until its attempts are used up; then it is DEAD."""


class PermanentError(HandlerError):
    """A failure no retry can fix: the job is dead-lettered now (``Nack`` with
    ``dead_letter``), whatever attempts remain."""

    permanent = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
