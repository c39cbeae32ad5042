"""Job arrays (pure): ``--array`` parsed, and the variables an array task
sees. Owned by the arrays work of issue 14."""

from __future__ import annotations

from typing import Any


def array_env(job: Any) -> dict[str, str]:
    """CRANE_ARRAY_* variables of an array task (to be filled in; {} for a
    job that is not an array task)."""
    return {}
