"""Status-to-exception mapping and small pure helpers (no broker needed)."""

from __future__ import annotations

import grpc
import pytest

import taskraft
from taskraft.errors import from_status
from taskraft.worker import result_bytes


def test_failed_precondition_is_split_by_taskraft_reason() -> None:
    fp = grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(from_status(fp, "x", {"taskraft-reason": "cancelled"}), taskraft.JobCancelledError)
    assert isinstance(from_status(fp, "x", {"taskraft-reason": "stale-lease"}), taskraft.LeaseLostError)
    wrong = from_status(fp, "x", {"taskraft-reason": "wrong-state"})
    assert type(wrong) is taskraft.FailedPreconditionError and wrong.reason == "wrong-state"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, taskraft.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, taskraft.NotFoundError),
        (grpc.StatusCode.UNAUTHENTICATED, taskraft.UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, taskraft.PermissionDeniedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, taskraft.ResourceExhaustedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, taskraft.DeadlineExceededError),
        (grpc.StatusCode.UNAVAILABLE, taskraft.UnavailableError),
        (grpc.StatusCode.INTERNAL, taskraft.ServerError),
    ],
)
def test_codes_map_to_exceptions(code: grpc.StatusCode, cls: type[taskraft.TaskraftError]) -> None:
    e = from_status(code, "details")
    assert isinstance(e, cls) and e.code == code and "details" in str(e)
    assert e.retryable == (cls in (taskraft.UnavailableError, taskraft.DeadlineExceededError))


def test_handler_results_become_bytes() -> None:
    assert result_bytes(None) == b""
    assert result_bytes(b"raw") == b"raw"
    assert result_bytes("t\u00e9") == "t\u00e9".encode()
    assert result_bytes({"a": [1]}) == b'{"a":[1]}'
    with pytest.raises(taskraft.PermanentError):
        result_bytes(object())
