"""Pure parsing and formatting helpers shared by the CLI, controller and agents.

Everything here is side-effect free: no I/O, no global state.  Errors are
reported as :class:`ValueError` (or a subclass) whose ``str`` is the exact
message shown to users.
"""

from __future__ import annotations

import math
import re
import signal

import hostlist

# JobState and its sets live in the core (crane.core.states); re-exported here.
from crane.core.states import ACTIVE, CANCELLABLE, SHORT_CODES, TERMINAL, EndReason, JobState

__all__ = [
    "ACTIVE",
    "CANCELLABLE",
    "MAX_ID",
    "SHORT_CODES",
    "TERMINAL",
    "IdListError",
    "JobState",
    "compress_nodes",
    "expand_nodes",
    "format_duration",
    "format_ids",
    "format_memory",
    "parse_bool",
    "parse_id_list",
    "parse_job_refs",
    "parse_job_states",
    "parse_memory",
    "parse_signal",
    "parse_state_filter",
    "parse_time_limit",
    "STATE_NAMES",
]


# --------------------------------------------------------------------------- states


# --------------------------------------------------------------------------- job ids

#: Largest accepted job or step id (fits a signed 32-bit integer).
MAX_ID = 2**31 - 1

# A positive decimal integer without leading zeros (ASCII digits only).
_POS_INT = r"[1-9][0-9]*"
_ID_ITEM_RE = re.compile(rf"({_POS_INT})(?:\.({_POS_INT}))?", re.ASCII)


class IdListError(ValueError):
    """A malformed ``<job>[.<step>][,...]`` list."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(
            f'invalid job id list "{text}": use <job_id>[.<step_id>][,<job_id>[.<step_id>]...]'
        )

    def __str__(self) -> str:
        return str(self.args[0])


def _bounded_id(digits: str) -> int | None:
    # Reject over-long digit strings before converting them.
    if len(digits) > len(str(MAX_ID)):
        return None
    value = int(digits)
    return value if 1 <= value <= MAX_ID else None


def parse_id_list(text: str) -> list[tuple[int, int | None]]:
    """Parse ``"12,13.1,14"`` into ``[(12, None), (13, 1), (14, None)]``.

    Items are ``<job>`` or ``<job>.<step>``; ids are positive decimal integers
    without leading zeros, at most :data:`MAX_ID`.  No whitespace and no empty
    items are allowed.  Duplicates are dropped, keeping the first occurrence.
    """
    if not text:
        raise IdListError(text)
    result: list[tuple[int, int | None]] = []
    seen: set[tuple[int, int | None]] = set()
    for item in text.split(","):
        m = _ID_ITEM_RE.fullmatch(item)
        if m is None:
            raise IdListError(text)
        job = _bounded_id(m.group(1))
        if job is None:
            raise IdListError(text)
        step: int | None = None
        if m.group(2) is not None:
            step = _bounded_id(m.group(2))
            if step is None:
                raise IdListError(text)
        key = (job, step)
        if key not in seen:
            seen.add(key)
            result.append(key)
    return result


#: ``A_T[.S]``: task T of array A (T may be 0), optionally one of its steps
_REF_ITEM_RE = re.compile(rf"({_POS_INT})(?:_(0|{_POS_INT}))?(?:\.({_POS_INT}))?", re.ASCII)

JobRef = tuple[int, int | None, int | None]  # (job or array id, step or None, array task index or None)


def parse_job_refs(text: str) -> list[JobRef]:
    """Like :func:`parse_id_list`, also accepting Slurm's array task ids:
    ``"12,7_3,7_4.2"`` -> ``[(12, None, None), (7, None, 3), (7, 2, 4)]``
    (job or array id, step, task index). ``A`` alone is returned as
    ``(A, None, None)``: the controller knows whether it is an array (every
    task) or a job. Duplicates are dropped, keeping the first."""
    if not text:
        raise IdListError(text)
    result: list[JobRef] = []
    seen: set[JobRef] = set()
    for item in text.split(","):
        m = _REF_ITEM_RE.fullmatch(item)
        if m is None:
            raise IdListError(text)
        job = _bounded_id(m.group(1))
        task: int | None = None
        step: int | None = None
        if m.group(2) is not None:
            task = 0 if m.group(2) == "0" else _bounded_id(m.group(2))
            if task is None:
                raise IdListError(text)
        if m.group(3) is not None:
            step = _bounded_id(m.group(3))
            if step is None:
                raise IdListError(text)
        if job is None:
            raise IdListError(text)
        key = (job, step, task)
        if key not in seen:
            seen.add(key)
            result.append(key)
    return result


def format_ids(ids: list[int]) -> str:
    """``[13, 12, 13]`` -> ``"12,13"`` (sorted ascending, duplicates dropped)."""
    return ",".join(str(i) for i in sorted(set(ids)))


# --------------------------------------------------------------------------- state filter

_STATE_FILTERS: dict[str, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PENDING}),
    "P": frozenset({JobState.PENDING}),
    JobState.RUNNING: frozenset({JobState.RUNNING, JobState.CONFIGURING}),
    "R": frozenset({JobState.RUNNING, JobState.CONFIGURING}),
    JobState.SUSPENDED: frozenset({JobState.SUSPENDED}),
    "S": frozenset({JobState.SUSPENDED}),
    "ALL": CANCELLABLE,
}


#: Every state name and short code a command accepts (``-t``/``--state``), in
#: any case: the JobState names and their short codes (``PD R CG S CD CA F TO
#: OOM CF``), ``P`` and ``CANCELED``, and Slurm's ``PREEMPTED``/``PR`` and
#: ``NODE_FAIL``/``NF``. Crane has no states of those two: a preempted job ends
#: CANCELLED (or is requeued: PENDING), a job its node failure ends is FAILED,
#: so PR selects CANCELLED jobs and NF FAILED ones.
STATE_NAMES: dict[str, frozenset[JobState]] = {
    **{s.value: frozenset({s}) for s in JobState},
    **{SHORT_CODES[s]: frozenset({s}) for s in JobState},
    "P": frozenset({JobState.PENDING}),
    "CANCELED": frozenset({JobState.CANCELLED}),
    "PREEMPTED": frozenset({JobState.CANCELLED}),
    "PR": frozenset({JobState.CANCELLED}),
    EndReason.NODE_FAIL: frozenset({JobState.FAILED}),
    "NF": frozenset({JobState.FAILED}),
}


def parse_job_states(
    text: str, allowed: frozenset[JobState] | None = None, everything: frozenset[JobState] | None = None
) -> frozenset[JobState]:
    """``"pd,R"`` -> ``{PENDING, RUNNING}``: the names and short codes of
    :data:`STATE_NAMES`, any case, comma-separated; ``ALL`` is ``everything``
    (default: ``allowed``, else every state). A name outside ``allowed`` (when
    given) is refused like an unknown one. ``RUNNING``/``R`` include
    CONFIGURING (a job being launched is running to its user)."""
    pool = allowed if allowed is not None else frozenset(JobState)
    every = everything if everything is not None else pool
    states: set[JobState] = set()
    for item in text.split(","):
        key = item.strip().upper() if item.isascii() else ""
        if key == "ALL":
            states |= every
            continue
        selected = STATE_NAMES.get(key)
        if selected is not None and JobState.RUNNING in selected:
            selected = selected | {JobState.CONFIGURING}
        if selected is None or not (selected & pool):
            valid = ", ".join(sorted({s.value for s in pool} - {JobState.CONFIGURING.value}))
            raise ValueError(f'invalid state "{text}": valid states are {valid}, ALL')
        states |= selected & pool
    return frozenset(states)


def parse_state_filter(text: str) -> frozenset[JobState]:
    """Parse a ``ccancel --state`` value such as ``"R"``, ``"pending"`` or ``"P,R"``."""
    states: set[JobState] = set()
    for item in text.split(","):
        selected = _STATE_FILTERS.get(item.upper()) if item.isascii() else None
        if selected is None:
            raise ValueError(
                f'invalid state "{text}": valid states are PENDING, RUNNING, SUSPENDED, ALL'
            )
        states |= selected
    return frozenset(states)


# --------------------------------------------------------------------------- signals

MAX_SIGNAL = 64
_SIGNAL_NUMBER_RE = re.compile(r"[0-9]{1,3}", re.ASCII)
_SIGNAL_NAME_RE = re.compile(r"[A-Z][A-Z0-9]*", re.ASCII)


def parse_signal(text: str) -> int:
    """``"TERM"``, ``"SIGterm"``, ``"usr1"`` or ``"9"`` -> signal number (1..64)."""
    if _SIGNAL_NUMBER_RE.fullmatch(text):
        number = int(text)
        if 1 <= number <= MAX_SIGNAL:
            return number
        raise ValueError(f'invalid signal "{text}"')
    name = text.upper()
    if text.isascii() and _SIGNAL_NAME_RE.fullmatch(name):
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
    raise ValueError(f'invalid signal "{text}"')


# --------------------------------------------------------------------------- memory

_MEMORY_UNITS: dict[str, int] = {
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "T": 1024**4,
}
_MEMORY_RE = re.compile(r"([0-9]+)(?:([KMGT])B?)?", re.ASCII | re.IGNORECASE)


def parse_memory(text: str) -> int:
    """Parse a memory size into bytes.

    A bare number is MiB (Slurm convention); ``K``/``M``/``G``/``T`` suffixes
    (binary, case-insensitive, optionally followed by ``B``) are accepted:
    ``"8G"``, ``"512M"``, ``"1gb"``, ``"1024K"``.  ``"0"`` parses to 0.
    """
    m = _MEMORY_RE.fullmatch(text)
    if m is None:
        raise ValueError(f'invalid memory size "{text}"')
    unit = (m.group(2) or "M").upper()
    return int(m.group(1)) * _MEMORY_UNITS[unit]


def format_memory(nbytes: int) -> str:
    """Bytes -> ``"8G"``/``"512M"``: the largest unit (T, G, M) that divides exactly,
    otherwise MiB rounded half-up (never below ``"1M"`` for a positive size)."""
    if nbytes < 0:
        raise ValueError(f'invalid memory size "{nbytes}"')
    if nbytes == 0:
        return "0"
    for unit in ("T", "G", "M"):
        size = _MEMORY_UNITS[unit]
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    mib = _MEMORY_UNITS["M"]
    return f"{max(1, (nbytes + mib // 2) // mib)}M"


# --------------------------------------------------------------------------- time

_N = r"([0-9]+)"
_TIME_PATTERNS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(pattern, re.ASCII), fields)
    for pattern, fields in (
        (rf"{_N}", ("m",)),
        (rf"{_N}:{_N}", ("m", "s")),
        (rf"{_N}:{_N}:{_N}", ("h", "m", "s")),
        (rf"{_N}-{_N}", ("d", "h")),
        (rf"{_N}-{_N}:{_N}", ("d", "h", "m")),
        (rf"{_N}-{_N}:{_N}:{_N}", ("d", "h", "m", "s")),
    )
)
_FIELD_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Upper bound (exclusive) of a field that is not the leading one.
_FIELD_LIMIT = {"h": 24, "m": 60, "s": 60}


def parse_time_limit(text: str, zero_unlimited: bool = False) -> int | None:
    """Parse a Slurm time limit into seconds; ``UNLIMITED``/``INFINITE`` -> ``None``
    (and, with ``zero_unlimited``, a zero limit such as ``0`` or ``0:00:00``, as
    Slurm's ``-t 0``: what the CLIs pass).

    Accepted: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``.  The
    leading field is unbounded; later fields must be in range (hours < 24,
    minutes and seconds < 60).  A zero limit is rejected.
    """
    if text.isascii() and text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    for pattern, fields in _TIME_PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        total = 0
        for index, (field, digits) in enumerate(zip(fields, m.groups(), strict=True)):
            value = int(digits)
            if index > 0 and value >= _FIELD_LIMIT[field]:
                raise ValueError(f'invalid time limit "{text}"')
            total += value * _FIELD_SECONDS[field]
        if total <= 0:
            if zero_unlimited:
                return None
            break
        return total
    raise ValueError(f'invalid time limit "{text}"')


def format_duration(seconds: float | None) -> str:
    """Seconds -> squeue style: ``"0:05"``, ``"1:02:03"``, ``"2-03:04:05"``.

    ``None`` (or +inf) is ``"UNLIMITED"``; fractions are truncated and negative
    values (clock skew) are shown as ``"0:00"``.
    """
    if seconds is None or seconds == math.inf:
        return "UNLIMITED"
    if math.isnan(seconds):
        raise ValueError("invalid duration: nan")
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


# --------------------------------------------------------------------------- nodes

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)
_NODE_EXPR_RE = re.compile(r"[A-Za-z0-9._\-\[\],]+", re.ASCII)


def _top_level_items(expr: str) -> list[str]:
    """Split on commas outside brackets."""
    items: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(expr):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(expr[start:i])
            start = i + 1
    items.append(expr[start:])
    return items


def expand_nodes(expr: str) -> list[str]:
    """``"crane[01-03],gpu07"`` -> ``["crane01", "crane02", "crane03", "gpu07"]``.

    Order is preserved and duplicates are dropped.  Empty items, whitespace and
    characters outside ``[A-Za-z0-9._-]`` (plus range syntax) are rejected.
    """
    error = ValueError(f'invalid node list "{expr}"')
    if not _NODE_EXPR_RE.fullmatch(expr):
        raise error
    if any(not item for item in _top_level_items(expr)):
        raise error
    try:
        names: list[str] = hostlist.expand_hostlist(expr)
    except hostlist.BadHostlist:
        raise error from None
    if not names or not all(_HOSTNAME_RE.fullmatch(n) for n in names):
        raise error
    return names


def compress_nodes(names: list[str]) -> str:
    """``["crane01", "crane02", "gpu07"]`` -> ``"crane[01-02],gpu07"`` (``""`` if empty)."""
    if not names:
        return ""
    for name in names:
        if not _HOSTNAME_RE.fullmatch(name):
            raise ValueError(f'invalid node name "{name}"')
    result: str = hostlist.collect_hostlist(list(names))
    return result


# --------------------------------------------------------------------------- booleans

_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})


def parse_bool(text: str) -> bool:
    """``true/false/yes/no/1/0/on/off`` (any case) -> bool."""
    lowered = text.lower() if text.isascii() else ""
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f'invalid boolean "{text}": use true/false, yes/no, on/off or 1/0')
