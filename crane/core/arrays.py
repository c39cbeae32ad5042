"""Job arrays (pure): ``--array`` parsed, and the variables an array task
sees. Owned by the arrays work of issue 14.

``--array`` as sbatch's: ``N``, ``N-M``, ``N-M:STEP``, comma-separated
lists of those, and an optional ``%LIMIT`` at the end (at most LIMIT tasks
of the array run at once). Indices are 0..MaxArraySize-1; the tasks are
the distinct indices in ascending order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_SPEC_CHARS = 4096  # longer --array texts are refused before any parsing
_DIGITS = 10  # no index has more (MaxArraySize fits an int32)
_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?", re.ASCII)


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """The parsed ``--array``: its indices (ascending, distinct) and limit (0: none)."""

    indices: tuple[int, ...]
    limit: int = 0

    @property
    def count(self) -> int:
        return len(self.indices)

    @property
    def step(self) -> int:
        """The spacing of the indices when uniform (``0-9:2`` -> 2), else 1 (one task: 1)."""
        return uniform_step(self.indices)


def uniform_step(indices: tuple[int, ...] | list[int]) -> int:
    if len(indices) < 2:
        return 1
    step = indices[1] - indices[0]
    ok = all(b - a == step for a, b in zip(indices, indices[1:], strict=False))
    return step if ok else 1


def _number(digits: str, what: str, text: str) -> int:
    if len(digits) > _DIGITS:
        raise ValueError(f'invalid array "{_short(text)}": {what} {digits[:12]}... is too large')
    return int(digits)


def _short(text: str) -> str:
    return text if len(text) <= 64 else text[:61] + "..."


def parse_array(text: str, max_size: int = 1001) -> ArraySpec:
    """``"0-9:2%3"`` -> ArraySpec((0, 2, 4, 6, 8), 3); ``"1,3,5-7"`` ->
    ArraySpec((1, 3, 5, 6, 7)). Raises ValueError (the message names the
    problem) for anything else, or an index outside 0..max_size-1."""
    if not isinstance(text, str) or not text:
        raise ValueError("invalid array: empty")
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"invalid array: longer than {MAX_SPEC_CHARS} characters")
    body, pct, lim = text.partition("%")
    limit = 0
    if pct:
        if not lim.isascii() or not lim.isdigit():
            raise ValueError(f'invalid array "{_short(text)}": the limit after % must be a number')
        limit = _number(lim, "limit", text)
        if limit < 1:
            raise ValueError(f'invalid array "{_short(text)}": the limit after % must be at least 1')
    if not body:
        raise ValueError(f'invalid array "{_short(text)}": no indices')
    found: set[int] = set()
    for item in body.split(","):
        mo = _ITEM.fullmatch(item)
        if mo is None:
            raise ValueError(f'invalid array "{_short(text)}": use N, N-M, N-M:STEP, lists with "," and %LIMIT')
        lo = _number(mo.group(1), "index", text)
        hi = lo if mo.group(2) is None else _number(mo.group(2), "index", text)
        step = 1 if mo.group(3) is None else _number(mo.group(3), "step", text)
        if hi < lo:
            raise ValueError(f'invalid array "{_short(text)}": range {lo}-{hi} ends before it starts')
        if step < 1:
            raise ValueError(f'invalid array "{_short(text)}": the step must be at least 1')
        if hi >= max_size:
            raise ValueError(f'invalid array "{_short(text)}": indices must be between 0 and {max_size - 1} '
                             f"(MaxArraySize {max_size})")  # fmt: skip
        found.update(range(lo, hi + 1, step))
    return ArraySpec(tuple(sorted(found)), limit)


def task_label(array_job_id: int, array_task_id: int | None, job_id: int) -> str:
    """How a job is named to users: ``A_T`` for an array task, else its id."""
    if array_job_id and array_task_id is not None:
        return f"{array_job_id}_{array_task_id}"
    return str(job_id)


def array_env(job: Any) -> dict[str, str]:
    """CRANE_ARRAY_* variables of an array task ({} for a job that is not one)."""
    if not getattr(job, "array_job_id", 0) or job.array_task_id is None:
        return {}
    return {
        "CRANE_ARRAY_JOB_ID": str(job.array_job_id),
        "CRANE_ARRAY_TASK_ID": str(job.array_task_id),
        "CRANE_ARRAY_TASK_COUNT": str(getattr(job, "array_task_count", 0) or 1),
        "CRANE_ARRAY_TASK_MIN": str(getattr(job, "array_task_min", job.array_task_id)),
        "CRANE_ARRAY_TASK_MAX": str(getattr(job, "array_task_max", job.array_task_id)),
        "CRANE_ARRAY_TASK_STEP": str(getattr(job, "array_task_step", 1) or 1),
    }
