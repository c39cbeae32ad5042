"""Job dependencies (pure): ``--dependency`` parsed and evaluated.

``after:ID[:ID...]`` (each job started, or ended), ``afterany`` (ended),
``afterok`` (ended COMPLETED: exit 0), ``afternotok`` (ended otherwise),
``singleton`` (no other job of the same user and name runs, or is queued
ahead of it). Terms joined by ``,`` must all hold; joined by ``?`` one of
them. An array id stands for every task of the array (the caller expands
it when it gives the statuses of an id).

Evaluation gives MET (the job may run), WAIT (not yet) or NEVER (it cannot
be met any more: an ``afterok`` job failed). The caller keeps a NEVER job
pending (reason ``DependencyNeverSatisfied``), as Slurm does by default.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_DEPENDENCY_CHARS = 4096
MAX_DEPENDENCY_IDS = 1000
# jobs a dependency stands for, every term's array ids counted as their tasks: each
# evaluation (on every start and end of a job it names) looks at each of them
MAX_DEPENDENCY_TASKS = 10_000
# jobs named by all of one user's waiting dependents together (each dependent
# counts the jobs it names): what one job's start or end can make the
# controller re-evaluate for that user
MAX_USER_DEPENDENCY_REFS = 100_000
KINDS = ("after", "afterany", "afterok", "afternotok", "singleton")
_ID = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)
_MAX_ID = 2**31 - 1


class Status(enum.Enum):
    """What is known of one job a dependency names."""

    PENDING = "pending"  # not started
    STARTED = "started"  # running (or holding its nodes)
    OK = "ok"  # ended COMPLETED (exit 0)
    NOTOK = "notok"  # ended otherwise (failed, cancelled, timeout, ...)
    UNKNOWN = "unknown"  # not known any more (treated as ended, outcome unknown)


class Outcome(enum.Enum):
    MET = "met"
    WAIT = "wait"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class Term:
    kind: str  # one of KINDS
    ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Dependency:
    terms: tuple[Term, ...]
    any_of: bool = False  # "?": one term is enough; ",": all of them

    @property
    def ids(self) -> list[int]:
        """Every job id named, in order, without duplicates."""
        return list(dict.fromkeys(i for t in self.terms for i in t.ids))

    @property
    def singleton(self) -> bool:
        return any(t.kind == "singleton" for t in self.terms)


def _short(text: str) -> str:
    return text if len(text) <= 64 else text[:61] + "..."


def parse(text: str) -> Dependency:
    """``"afterok:12:13,singleton"`` -> Dependency; ValueError (``invalid
    dependency ...``) for anything else."""
    if not isinstance(text, str) or not text:
        raise ValueError("invalid dependency: empty")
    if len(text) > MAX_DEPENDENCY_CHARS:
        raise ValueError(f"invalid dependency: longer than {MAX_DEPENDENCY_CHARS} characters")
    if "," in text and "?" in text:
        raise ValueError(f'invalid dependency "{_short(text)}": use either "," (all) or "?" (any), not both')
    any_of = "?" in text
    terms: list[Term] = []
    count = 0
    for item in text.split("?" if any_of else ","):
        kind, sep, rest = item.partition(":")
        kind = kind.lower() if kind.isascii() else kind
        if kind not in KINDS:
            raise ValueError(f'invalid dependency "{_short(text)}": unknown type "{_short(kind)}" '
                             f"(use {', '.join(KINDS)})")  # fmt: skip
        if kind == "singleton":
            if rest or sep:
                raise ValueError(f'invalid dependency "{_short(text)}": singleton takes no job ids')
            terms.append(Term(kind))
            continue
        if not rest:
            raise ValueError(f'invalid dependency "{_short(text)}": {kind} needs job ids ({kind}:ID[:ID...])')
        ids: list[int] = []
        for part in rest.split(":"):
            if not _ID.fullmatch(part) or int(part) > _MAX_ID:
                raise ValueError(f'invalid dependency "{_short(text)}": "{_short(part)}" is not a job id')
            ids.append(int(part))
        count += len(ids)
        if count > MAX_DEPENDENCY_IDS:
            raise ValueError(f"invalid dependency: more than {MAX_DEPENDENCY_IDS} job ids")
        terms.append(Term(kind, tuple(dict.fromkeys(ids))))
    return Dependency(tuple(dict.fromkeys(terms)), any_of)  # a term repeated is one term


def work(dep: Dependency, tasks_of: Callable[[int], int]) -> int:
    """How many job statuses one evaluation of ``dep`` reads: ``tasks_of(id)``
    is the number of jobs ``id`` stands for (an array's tasks, else 1)."""
    return sum(tasks_of(i) for t in dep.terms for i in t.ids)


def _one(kind: str, st: Status) -> Outcome:
    ended = st in (Status.OK, Status.NOTOK, Status.UNKNOWN)
    if kind == "after":
        return Outcome.MET if st != Status.PENDING else Outcome.WAIT
    if kind == "afterany":
        return Outcome.MET if ended else Outcome.WAIT
    if kind == "afterok":
        if st == Status.OK:
            return Outcome.MET
        return Outcome.NEVER if ended else Outcome.WAIT
    if kind == "afternotok":
        if st == Status.NOTOK:
            return Outcome.MET
        return Outcome.NEVER if ended else Outcome.WAIT
    raise ValueError(f"unknown dependency type {kind}")


def _all(outcomes: Iterable[Outcome]) -> Outcome:
    out = Outcome.MET
    for o in outcomes:
        if o == Outcome.NEVER:
            return Outcome.NEVER
        if o == Outcome.WAIT:
            out = Outcome.WAIT
    return out


def evaluate(dep: Dependency, statuses: Callable[[int], list[Status]], singleton_clear: bool = True) -> Outcome:
    """``statuses(id)``: the status of each job ``id`` stands for (one, or
    every task of an array). ``singleton_clear``: no other job of the same
    user and name runs or is queued ahead."""
    results: list[Outcome] = []
    for t in dep.terms:
        if t.kind == "singleton":
            results.append(Outcome.MET if singleton_clear else Outcome.WAIT)
            continue
        results.append(_all(_one(t.kind, st) for i in t.ids for st in statuses(i)))
    if not dep.any_of:
        return _all(results)
    if Outcome.MET in results:
        return Outcome.MET
    return Outcome.NEVER if all(r == Outcome.NEVER for r in results) else Outcome.WAIT
