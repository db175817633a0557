"""Polling helpers: wait for an outcome with a generous bound, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import taskraft

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Calls ``probe`` until it returns a truthy value; fails after ``timeout`` s."""
    end = time.monotonic() + timeout
    pause = 0.01
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def assert_lease_outlives_first_deadline(
    client: taskraft.Client, job_id: str, visibility_ms: int
) -> None:
    """Waits for a lease deadline at least one visibility timeout past the job's current
    one. An extension sets the deadline one visibility timeout past the broker's time,
    and none is granted on a lease that ran out, so a deadline that far out was granted
    after the first one had passed: the lease outlived its timeout on extensions alone."""
    first_deadline = client.get_job(job_id).lease_deadline_ms
    eventually(
        lambda: client.get_job(job_id).lease_deadline_ms >= first_deadline + visibility_ms,
        what="an extension granted after the first deadline",
    )
