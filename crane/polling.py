"""Waiting on a condition with a deadline (never a bare sleep), and whether a
process is alive. Shared by the local launcher, the tests and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(AssertionError, TimeoutError):
    """A condition did not hold in time (an assertion failure in tests)."""


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.02) -> Any:  # fmt: skip
    """Poll ``cond`` until it returns a truthy value (returned); raise
    WaitTimeout after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pid_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (works for any user's pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][0] not in "ZX"
    except OSError:
        return False
