"""Which jobs a request names: filters (ANDed) and id lists. Pure functions,
shared by cqueue/cacct (queries) and ccancel (selection)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from crane.core.ids import CANCELLABLE
from crane.core.job import Job
from crane.core.states import JobState

FILTER_KEYS = ("name", "user", "account", "partition", "qos", "states", "nodes", "jobs", "ended_after")


def check_filters(filters: dict[str, Any]) -> str | None:
    """Return an error line for a malformed filter map, else None."""
    for k, v in filters.items():
        if k not in FILTER_KEYS:
            return f"unknown filter {k!r}"
        if k in ("states", "nodes", "jobs"):
            if not isinstance(v, list):
                return f"filter {k} must be a list"
        elif k == "ended_after":  # cacct -S: finished at or after this time (seconds since the epoch)
            if not isinstance(v, int | float) or isinstance(v, bool) or v != v:
                return f"filter {k} must be a number"
        elif not isinstance(v, str | int) or isinstance(v, bool):
            return f"filter {k} must be a string"
    return None


def matches(job: Job, f: dict[str, Any]) -> bool:
    if "jobs" in f and job.id not in f["jobs"]:
        return False
    if "ended_after" in f and job.end_time is not None and job.end_time < f["ended_after"]:
        return False
    if "name" in f and job.name != f["name"]:
        return False
    if "user" in f:
        u = f["user"]
        if not (job.user == str(u) or str(job.uid) == str(u)):
            return False
    if "account" in f and job.account != f["account"]:
        return False
    if "partition" in f and job.partition != f["partition"]:
        return False
    if "qos" in f and job.qos != f["qos"]:
        return False
    if "states" in f and job.state not in f["states"]:
        return False
    if "nodes" in f:
        wanted = set(f["nodes"])
        if not wanted.intersection(job.nodes):
            return False
    return True


@dataclass(slots=True)
class Selection:
    jobs: list[Job] = field(default_factory=list)  # whole jobs to cancel
    steps: list[tuple[Job, int]] = field(default_factory=list)
    refused: list[tuple[int, int | None, str]] = field(default_factory=list)




def select(
    ids: list[tuple[int, int | None]],
    filters: dict[str, Any],
    active: Callable[[int], Job | None],
    all_active: Callable[[], Iterable[Job]],
    finished_state: Callable[[int], str | None],
    may_act: Callable[[Job], bool],
    sees_all: bool,
) -> Selection:
    """Resolve a ccancel selection.

    - ids: each is checked (exists, cancellable, matches the filters, caller
      allowed); failures are reported, never skipped.
    - filters only: every active cancellable job that matches; a caller who
      may not act on every job (``sees_all`` False) only selects jobs it may
      act on (a plain user: their own).
    """
    sel = Selection()
    if ids:
        seen_whole = {j for j, s in ids if s is None}
        for job_id, step_id in ids:
            job = active(job_id)
            if job is None:
                st = finished_state(job_id)
                if st is None:
                    sel.refused.append((job_id, step_id, "Job not found"))
                else:
                    sel.refused.append((job_id, step_id, f"Job already finished ({st})"))
                continue
            if job.state not in CANCELLABLE:
                if job.cancel:  # being cancelled already: a duplicate is harmless
                    if step_id is None:
                        sel.jobs.append(job)
                    continue
                sel.refused.append((job_id, step_id, f"Job already finished ({job.state})"))
                continue
            if filters and not matches(job, filters):
                sel.refused.append((job_id, step_id, "Job does not match the filters"))
                continue
            if not may_act(job):
                sel.refused.append((job_id, step_id, "Permission denied"))
                continue
            if step_id is None:
                sel.jobs.append(job)
            elif job_id in seen_whole:
                continue  # the whole job goes anyway
            else:
                st = job.steps.get(step_id)
                if st is None or st.state != JobState.RUNNING:
                    sel.refused.append((job_id, step_id, "Step not found"))
                else:
                    sel.steps.append((job, step_id))
        return sel
    for job in all_active():
        if job.state not in CANCELLABLE or not matches(job, filters):
            continue
        if may_act(job):
            sel.jobs.append(job)
        elif sees_all:
            sel.refused.append((job.id, None, "Permission denied"))
    return sel
