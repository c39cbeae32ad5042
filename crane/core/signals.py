"""``--signal [B:]SIG[@SECS]`` (sbatch's): parsed and checked (pure).

``SIG`` is a name (``USR1``, ``SIGUSR1``, any case) or a number (1..64);
``SECS`` (0..65535, default 60) is how long before the job's time limit it
is sent. ``B:`` sends it to the batch shell only; without it every step of
the job gets it, the batch shell not (as Slurm). ``R:`` (Slurm: reservations)
is accepted and has no effect: Crane has no reservations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crane.core.ids import parse_signal

MAX_SECS = 65535
DEFAULT_SECS = 60
MAX_TEXT = 64
_FORM = re.compile(r"(?:([RB]{1,2}):)?([^@]*)(?:@(.*))?", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class JobSignal:
    signal: int  # the signal number
    secs: int  # sent this many seconds before the time limit
    batch_only: bool  # B: the batch shell only (else every step but the batch shell)


def parse_job_signal(text: str) -> JobSignal:
    """``"B:USR1@30"`` -> JobSignal(10, 30, True). Raises ValueError saying why."""
    shown = text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."
    m = _FORM.fullmatch(text) if len(text) <= MAX_TEXT else None
    if m is None or (m.group(1) and len(set(m.group(1).upper())) != len(m.group(1))):
        raise ValueError(f'invalid --signal "{shown}": expected [B:]SIG[@SECS], e.g. B:USR1@60')
    flags, sig, secs = (m.group(1) or "").upper(), m.group(2), m.group(3)
    try:
        number = parse_signal(sig)
    except ValueError:
        raise ValueError(f'invalid --signal "{shown}": unknown signal "{sig}"') from None
    if secs is None:
        wait = DEFAULT_SECS
    elif secs.isascii() and secs.isdigit() and int(secs) <= MAX_SECS:
        wait = int(secs)
    else:
        raise ValueError(f'invalid --signal "{shown}": the time after @ must be 0 to {MAX_SECS} seconds')
    return JobSignal(number, wait, "B" in flags)


def check_signal(text: str) -> str | None:
    """Why ``text`` is not a valid ``--signal``, or None (also for "": none)."""
    if not text:
        return None
    try:
        parse_job_signal(text)
    except ValueError as e:
        return str(e)
    return None


def job_signal(text: object) -> JobSignal | None:
    """The job's signal from a step spec's ``signal`` (None: none, or not valid)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_job_signal(text)
    except ValueError:
        return None
