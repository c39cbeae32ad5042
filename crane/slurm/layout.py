"""The table layouts of squeue, sinfo and sacct (pure): a format parsed into
literal text and :class:`Col` fields, each with a header, a getter of the
value from a record and a width, and :func:`render` printing records in it.

squeue/sinfo's ``%[#][.][width]X`` formats (:func:`parse_percent`: a field
without a width is printed as it is, unpadded); the records are job views,
node groups or sacct rows (crane/requests/query.py), fields they may not
carry yet read with ``.get``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Rec = dict[str, Any]
Getter = Callable[[Rec, float], str]
UidOf = Callable[[str], int | None]


def getter(key: str, missing: str = "") -> Getter:
    def get(j: Rec, now: float) -> str:
        v = j.get(key)
        return missing if v is None or v == "" else str(v)

    return get


@dataclass(slots=True)
class Col:
    """One field of a format: no width: printed as it is; ``right``: right-justified."""

    header: str
    get: Getter
    width: int | None = None
    right: bool = False
    plus: bool = False  # sacct: a value longer than the width ends in "+"
    auto: bool = False  # sinfo's %#X: as wide as the widest value (header included)


Layout = list[str | Col]

_SPEC = re.compile(r"%(#)?(\.)?(-)?([0-9]*)([A-Za-z%])")
MAX_WIDTH = 4096


class FormatError(ValueError):
    pass


def parse_width(digits: str, fmt: str) -> int | None:
    if not digits:
        return None
    if len(digits) > 6 or int(digits) > MAX_WIDTH:
        raise FormatError(f"Invalid format specification: {fmt[:64]} (a width is at most {MAX_WIDTH})")
    return int(digits) or None


def parse_percent(fmt: str, fields: dict[str, tuple[str, Getter]]) -> Layout:
    """``"%.18i %.9P %j"`` -> literal text and fields (Slurm's ``-o``):
    ``%X`` unpadded, ``%NX`` left-justified in N columns, ``%.NX``
    right-justified (values longer than N are cut), ``%#X`` as wide as the
    widest value (sinfo's default formats), ``%%`` a percent sign."""
    out: Layout = []
    pos = 0
    for m in _SPEC.finditer(fmt):
        if m.start() > pos:
            out.append(fmt[pos : m.start()])
        pos = m.end()
        letter = m.group(5)
        if letter == "%":
            out.append("%")
            continue
        if letter not in fields:
            raise FormatError(f"Invalid job format specification: {letter}")
        header, get = fields[letter]
        out.append(Col(header, get, parse_width(m.group(4), fmt), right=bool(m.group(2)), auto=bool(m.group(1))))
    if pos < len(fmt):
        out.append(fmt[pos:])
    return out


def fit(text: str, col: Col) -> str:
    if col.width is None:
        return text
    if len(text) > col.width:
        text = text[: col.width - 1] + "+" if col.plus else text[: col.width]
    return text.rjust(col.width) if col.right else text.ljust(col.width)


def render(layout: Layout, records: Iterable[Rec], header: bool, now: float,
           escape: Callable[[str], str] = str) -> list[str]:  # fmt: skip
    """The lines of a squeue/sinfo/sacct table: each field padded and cut to
    its width (none: as it is); ``escape`` applied to every value first (the
    format's own text is the caller's, printed as given: Open OnDemand
    separates fields with \\x1f)."""
    records = list(records)
    for c in layout:
        if isinstance(c, Col) and c.auto:
            c.width = max([len(c.header)] + [len(escape(c.get(r, now))) for r in records])
    lines = []
    if header:
        lines.append("".join(p if isinstance(p, str) else fit(p.header, p) for p in layout))
    for r in records:
        lines.append("".join(p if isinstance(p, str) else fit(escape(p.get(r, now)), p) for p in layout))
    return lines
