"""The cancel of a pending job, and of many at once (pure).

A pending job has no processes: its cancel is a change of its record and
nothing else. ``JobMachine`` (crane.core.job_machine) cancels one pending job
with ``end_pending``; the job table (crane.actors.jobs) cancels every idle
pending job named by one request with the same function, in one pass, and
writes them with one store operation: the fields ``stored_fields`` gives,
shared by every job of the batch (grouped by their pending reason), laid
over each stored record (``crane.store.Store.put_cancelled``) instead of one
packed record per job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from crane.core import events as ev
from crane.core.job import CancelIntent, Job
from crane.core.states import EndState, JobState

#: the record fields ``end_pending`` changes (``reason`` only when the cancel gives one)
CHANGED = ("state", "start_time", "end_time", "cancel", "reason")


def intent_of(e: ev.CancelEv, now: float) -> CancelIntent:
    """The durable cancel intent of ``e`` received at ``now``."""
    return CancelIntent(
        by_uid=e.by_uid, by_name=e.by_name, path=e.path, message=e.message,
        time=now, force=e.force, graceful=e.graceful, grace=e.grace,
        end_state=e.end_state, rid=e.rid, requeue=e.requeue, reason=e.reason,
    )  # fmt: skip


def end_pending(job: Job, intent: CancelIntent, e: ev.CancelEv, now: float) -> None:
    """PENDING -> CANCELLED (COMPLETED with ``--end-state FINISHED``), started
    and ended ``now``: the whole transition of a pending job's cancel."""
    job.cancel = intent
    if e.reason:
        job.reason = e.reason
    job.start_time = job.end_time = now
    job.state = JobState.COMPLETED if e.end_state == EndState.FINISHED else JobState.CANCELLED


def eligible(job: Job, e: ev.CancelEv) -> bool:
    """Is ``e`` the whole cancel of the pending ``job`` (no signal, no step)?"""
    return job.state == JobState.PENDING and e.signal is None and e.step_id is None


def stored_fields(jobs: Iterable[Job]) -> list[tuple[dict[str, Any], list[int]]]:
    """The fields ``end_pending`` changed, as stored (``Job.to_dict``), and
    the ids of the jobs they apply to: one group per distinct value (the
    jobs of one batch share everything but, when the cancel gives none,
    their pending reason)."""
    groups: dict[tuple[Any, ...], tuple[dict[str, Any], list[int]]] = {}
    for job in jobs:
        c = job.cancel
        key = (job.state, job.start_time, job.end_time, job.reason, id(c))
        got = groups.get(key)
        if got is None:
            fields = {"state": job.state, "start_time": job.start_time, "end_time": job.end_time,
                      "cancel": c.to_dict() if c is not None else None, "reason": job.reason}  # fmt: skip
            got = groups[key] = (fields, [])
        got[1].append(job.id)
    return list(groups.values())


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted distinct ids as inclusive ranges: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    lo = hi = None
    for i in sorted(set(ids)):
        if hi is not None and i == hi + 1:
            hi = i
            continue
        if lo is not None and hi is not None:
            out.append((lo, hi))
        lo = hi = i
    if lo is not None and hi is not None:
        out.append((lo, hi))
    return out
