"""Slurm job ids on a command line (pure): ``J``, ``A_T`` (array task),
``A_[T1-T2,...]``, ``J.batch``/``J.S`` (steps), resolved against the jobs
the controller returned (:func:`select`, :func:`jobs_for_ids`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from crane.slurm.layout import Rec


@dataclass(frozen=True, slots=True)
class SlurmId:
    """One id of a Slurm command line: ``J``, ``A_T``, with ``.batch``/``.S``."""

    job: int
    task: int | None = None
    step: str | None = None  # "batch", "0", ...


_ID = re.compile(r"^([0-9]{1,10})(?:_([0-9]{1,10}))?(?:\.(batch|extern|[0-9]{1,9}))?$")


_TASKS = re.compile(r"^([0-9]{1,10})_\[([0-9,\-]+)(?:%[0-9]+)?\]$")
MAX_TASK_IDS = 10_000  # task ids one ``A_[...]`` may name


def parse_ids(text: str) -> list[SlurmId]:
    """``"12,13_2,14.batch 15.0 16_[1-3,5]"`` -> ids (ValueError on a bad one)."""
    out: list[SlurmId] = []
    for item in re.findall(r"[^,\s\[]+(?:\[[^\]]*\])?[^,\s]*", text.strip()):
        m = _ID.match(item)
        if m:
            out.append(SlurmId(int(m.group(1)), int(m.group(2)) if m.group(2) else None, m.group(3)))
            continue
        b = _TASKS.match(item)
        if not b:
            raise ValueError(f"Invalid job id: {item}")
        for part in b.group(2).split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ValueError(f"Invalid job id: {item}")
            first, last = int(lo), int(hi or lo)
            if last < first or last - first >= MAX_TASK_IDS or len(out) > MAX_TASK_IDS:
                raise ValueError(f"Invalid job id: {item}")
            out += [SlurmId(int(b.group(1)), t) for t in range(first, last + 1)]
    if not out:
        raise ValueError(f"Invalid job id: {text}")
    return out


def id_matches(j: Rec, sid: SlurmId) -> bool:
    """Whether job view ``j`` is the job of ``sid``: ``J`` is job J or, for an
    array, every task of array J (as Slurm); ``A_T`` is task T of array A."""
    array = int(j.get("array_job_id") or 0)
    if sid.task is not None:
        return array == sid.job and j.get("array_task_id") == sid.task
    return int(j["job_id"]) == sid.job or (array == sid.job and array != 0)


def select(jobs: Iterable[Rec], ids: list[SlurmId]) -> tuple[list[Rec], set[tuple[int, int]]]:
    """The jobs ``ids`` name, and the (job, Crane step) pairs they name (0:
    the job itself). A step ``extern`` names nothing (Crane has none)."""
    picked: dict[int, Rec] = {}
    pairs: set[tuple[int, int]] = set()
    for j in jobs:
        for sid in ids:
            if not id_matches(j, sid):
                continue
            jid = int(j["job_id"])
            picked[jid] = j
            if sid.step is None:
                pairs.add((jid, 0))
            elif sid.step != "extern":
                pairs.add((jid, 1 if sid.step == "batch" else int(sid.step) + 2))
    return [picked[k] for k in sorted(picked)], pairs


def candidate_ids(ids: list[SlurmId]) -> list[int]:
    """The Crane job ids to ask the controller for first (the array's own id
    for ``A_T``: its tasks are numbered from it)."""
    return sorted({s.job for s in ids})


Ask = Callable[[dict[str, Any], bool], list[Rec]]  # (filters, history) -> job views


def jobs_for_ids(ask: Ask, ids: list[SlurmId], kinds: tuple[bool, ...], filters: dict[str, Any] | None = None,
                 ) -> tuple[list[Rec], set[tuple[int, int]]]:  # fmt: skip
    """The jobs ``ids`` name (see :func:`select`), asked with ``ask`` of the
    active jobs (``False`` in ``kinds``) and/or the finished ones (``True``):
    first the ids themselves, then, for an array, all its tasks (numbered
    from the array's id: ``array_task_count`` of them, when the view says)."""
    base = dict(filters or {})
    found: dict[int, Rec] = {}

    def get(jobs: list[int] | None, extra: dict[str, Any] | None = None) -> None:
        for history in kinds:
            f = {**base, **(extra or {})}
            if jobs is not None:
                f["jobs"] = jobs
            for j in ask(f, history):
                found.setdefault(int(j["job_id"]), j)

    get(candidate_ids(ids))
    wanted = {s.job for s in ids}
    arrays = {int(j.get("array_job_id") or 0): j for j in found.values()
              if int(j.get("array_job_id") or 0) in wanted}  # fmt: skip
    for a, j in arrays.items():
        count = int(j.get("array_task_count") or 0)
        if count:
            get(list(range(a, a + min(count, 1_000_000))))
        else:  # tasks were submitted with the array: none ended before it was submitted
            get(None, {"ended_after": float(j.get("submit_time") or 0) - 1})
    return select(found.values(), ids)
