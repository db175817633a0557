"""Polling helpers: wait for an outcome with a generous bound, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

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
