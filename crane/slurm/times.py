"""Times, dates and memory sizes as each Slurm command prints them (pure):
squeue ``M:SS``/``H:MM:SS``/``D-HH:MM:SS``, sacct and scontrol
``HH:MM:SS``/``D-HH:MM:SS``, dates ``YYYY-MM-DDTHH:MM:SS``, megabytes, and
sacct's ``-S``/``-E`` times (:func:`parse_when`)."""

from __future__ import annotations

import re
import time
from typing import Any

from crane.core.ids import format_duration
from crane.slurm.layout import Rec


def clock(seconds: float | None) -> str:
    """secs2time_str: ``HH:MM:SS``, ``D-HH:MM:SS``; None: ``UNLIMITED``
    (sacct Elapsed/Timelimit, scontrol RunTime/TimeLimit)."""
    if seconds is None:
        return "UNLIMITED"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    mi, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{mi:02d}:{s:02d}" if days else f"{h:02d}:{mi:02d}:{s:02d}"


def squeue_time(seconds: float | None) -> str:
    """squeue's TIME and TIME_LIMIT: ``0:05``, ``1:02:03``, ``2-03:04:05``;
    None: ``UNLIMITED``."""
    return format_duration(seconds)  # cqueue's, which is squeue's


def date(t: float | None, missing: str = "Unknown") -> str:
    if not t:
        return missing
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def elapsed(j: Rec, now: float) -> float:
    start = j.get("start_time")
    if not start:
        return 0.0
    return float(j.get("end_time") or now) - float(start)


def mb(nbytes: Any) -> int:
    """Bytes -> Slurm's megabytes (MiB), rounded up."""
    n = int(nbytes or 0)
    return (n + (1 << 20) - 1) >> 20


def mem_text(nbytes: Any) -> str:
    """squeue %m / sacct ReqMem: ``512M``, ``4G``; ``0`` when none asked."""
    n = mb(nbytes)
    if not n:
        return "0"
    return f"{n // 1024}G" if n % 1024 == 0 else f"{n}M"


_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def _midnight(now: float) -> float:
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def parse_when(text: str, now: float) -> float:
    """sacct's ``-S``/``-E``: ``YYYY-MM-DD[THH:MM[:SS]]``, ``MM/DD[/YY]``,
    ``MMDD[YY]``, ``HH:MM[:SS]`` (today), ``now[{+|-}N[seconds|minutes|hours|days|weeks]]``,
    ``today``, ``midnight``, ``noon``, ``teatime``; local time (ValueError otherwise)."""
    s = text.strip()
    low = s.lower()
    if low in ("today", "midnight"):
        return _midnight(now)
    if low in ("noon", "teatime", "elevenses", "fika"):
        return _midnight(now) + {"noon": 12, "teatime": 16, "elevenses": 11, "fika": 15}[low] * 3600
    m = re.fullmatch(r"now(?:([+-])([0-9]{1,9})([a-z]*))?", low)
    if m:
        if not m.group(1):
            return now
        unit = m.group(3) or "second"
        unit = next((u for u in _UNITS if u.startswith(unit.rstrip("s")) or unit in (u + "s", u[0])), "")
        if not unit:
            raise ValueError(f"Invalid time specification: {text}")
        delta = int(m.group(2)) * _UNITS[unit]
        return now + delta if m.group(1) == "+" else now - delta
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d", "%m/%d/%y", "%m/%d/%Y", "%m.%d.%y", "%m%d%y"):
        try:
            return time.mktime(time.strptime(s, fmt))
        except ValueError:
            continue
    today = time.localtime(now)
    for fmt in ("%H:%M:%S", "%H:%M", "%m/%d", "%m.%d", "%m%d"):
        try:
            t = time.strptime(s, fmt)
        except ValueError:
            continue
        if "H" in fmt:
            return time.mktime((today.tm_year, today.tm_mon, today.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0, 0, -1))
        return time.mktime((today.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
    raise ValueError(f"Invalid time specification: {text}")
