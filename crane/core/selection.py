"""Which jobs a request names: filters (ANDed) and id lists. Pure functions,
shared by cqueue/cacct (queries) and ccancel (selection)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from crane.core.ids import CANCELLABLE
from crane.core.job import Job
from crane.core.states import JobState

FILTER_KEYS = ("name", "user", "account", "partition", "qos", "states", "nodes", "jobs", "ended_after", "array_tasks",
               "expand_arrays")
MAX_ARRAY_REFS = 10_000  # [A, T] pairs in one array_tasks filter
MAX_PAIRS = 100_000  # (job, step) pairs a list of references may name, arrays expanded

#: what resolving an array id needs of a job: (array_job_id, array_task_id, array_task_count, active)
ArrayInfo = tuple[int, int | None, int, bool]


def check_filters(filters: dict[str, Any]) -> str | None:
    """Return an error line for a malformed filter map, else None."""
    for k, v in filters.items():
        if k not in FILTER_KEYS:
            return f"unknown filter {k!r}"
        if k in ("states", "nodes", "jobs"):
            if not isinstance(v, list):
                return f"filter {k} must be a list"
        elif k == "expand_arrays":  # cqueue/cacct -j A: an array id stands for every task
            if not isinstance(v, bool):
                return f"filter {k} must be true or false"
        elif k == "array_tasks":  # -j A_T: [[A, T], ...]; ccancel A_T.S: [A, T, S]
            if not isinstance(v, list) or len(v) > MAX_ARRAY_REFS or not all(_array_ref(p) for p in v):
                return f"filter {k} must be a list of [array id, task index(, step id)] (at most {MAX_ARRAY_REFS})"
        elif k == "ended_after":  # cacct -S: finished at or after this time (seconds since the epoch)
            if not isinstance(v, int | float) or isinstance(v, bool) or v != v:
                return f"filter {k} must be a number"
        elif not isinstance(v, str | int) or isinstance(v, bool):
            return f"filter {k} must be a string"
    return None


def _array_ref(p: Any) -> bool:
    """``[A, T]`` or ``[A, T, S]``: A and S positive, T not negative."""
    if not isinstance(p, list) or len(p) not in (2, 3):
        return False
    if any(not isinstance(x, int) or isinstance(x, bool) for x in p):
        return False
    return bool(p[0] > 0 and p[1] >= 0 and (len(p) == 2 or p[2] > 0))


def matches(job: Job, f: dict[str, Any]) -> bool:
    """Does ``job`` pass every filter (``array_tasks`` and ``expand_arrays``
    are resolved into ``jobs`` by the query before)."""
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


def array_tasks(array_id: int, info: Callable[[int], ArrayInfo | None]) -> list[int] | None:
    """The job ids of every task of array ``array_id`` (consecutive from
    it), or None when ``array_id`` is not an array's id."""
    inf = info(array_id)
    if inf is None or inf[0] != array_id or inf[2] <= 1:
        return None
    return list(range(array_id, array_id + inf[2]))


def find_task(array_id: int, task: int, info: Callable[[int], ArrayInfo | None]) -> int | None:
    """The job id of task ``task`` of array ``array_id`` (``A_T``), or None."""
    inf = info(array_id)
    if inf is None or inf[0] != array_id:
        return None
    for jid in range(array_id, array_id + max(inf[2], 1)):  # indices ascend with the ids
        t = info(jid)
        if t is not None and t[0] == array_id and t[1] == task:
            return jid
    return None


def expand_refs(refs: Iterable[tuple[int, int | None, int | None]], info: Callable[[int], ArrayInfo | None],
                active_only: bool = True) -> tuple[list[tuple[int, int | None]], list[tuple[str, int | None, str]]]:  # fmt: skip
    """Job references (``J``, ``J.S``, ``A``, ``A_T``, ``A_T.S``) -> (job id,
    step) pairs, and those not found (label, step, reason). An array id
    alone stands for each of its tasks (only the active ones with
    ``active_only``, if any is active: a cancel of a partly finished array
    cancels the rest)."""
    out: dict[tuple[int, int | None], None] = {}  # in order, each pair once
    missing: list[tuple[str, int | None, str]] = []
    # bounded work per request: each job is looked up once (``info`` may read
    # the history on disk), each array's tasks indexed once, a reference
    # repeated is resolved once (10,000 ``A_T`` of one big finished array once
    # cost 10 million lookups; an array id repeated, millions of pairs)
    memo: dict[int, ArrayInfo | None] = {}

    def known(i: int) -> ArrayInfo | None:
        if i not in memo:
            memo[i] = info(i)
        return memo[i]

    index: dict[int, dict[int, int]] = {}  # array id -> {task index: job id}
    for job, step, task in dict.fromkeys(refs):
        if len(out) >= MAX_PAIRS:  # at most what a jobs filter may list
            missing.append((str(job), step, f"more than {MAX_PAIRS} jobs named"))
            break
        if task is not None:
            if job not in index:
                index[job] = {}
                inf = known(job)
                for j in range(job, job + max(inf[2], 1)) if inf is not None and inf[0] == job else ():
                    t = known(j)
                    if t is not None and t[0] == job and t[1] is not None:
                        index[job].setdefault(t[1], j)
            jid = index[job].get(task)
            if jid is None:
                missing.append((f"{job}_{task}", step, "Job not found"))
            else:
                out[jid, step] = None
            continue
        tasks = array_tasks(job, known)
        if tasks is None:
            out[job, step] = None
            continue
        if active_only:
            live = [t for t in tasks if (i := known(t)) is not None and i[3]]
            tasks = live or [job]
        out.update(((t, step), None) for t in tasks[: MAX_PAIRS - len(out)])
    return list(out), missing


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
