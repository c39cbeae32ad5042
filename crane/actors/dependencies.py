"""The jobs waiting on a ``--dependency`` and the live tasks of each array,
for the job table (crane.actors.jobs): re-evaluated when a job they name
starts or ends, never polled."""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from crane.core import dependency as dp
from crane.core import scheduling as sc
from crane.core.job import Job
from crane.core.states import TERMINAL, JobState, PendingReason

if TYPE_CHECKING:
    from crane.actors.jobs import JobTable

log = logging.getLogger("crane.jobs")


class Dependencies:
    """The jobs whose ``--dependency`` is not met yet, re-evaluated when a
    job they name starts or ends (no polling); the scheduler keeps them out
    of its passes through a ``Gate`` (reason Dependency, or
    DependencyNeverSatisfied: pending until cancelled, as Slurm). Also the
    live tasks of each array (an array id stands for all its tasks)."""

    def __init__(self, table: JobTable) -> None:
        self.table = table
        self.waiting: dict[int, set[int]] = {}  # job named -> pending jobs whose dependency names it
        # dependent -> (its dependency, ids named, its (uid, name) if singleton)
        self.watched: dict[int, tuple[dp.Dependency, list[int], tuple[int, str] | None]] = {}
        self.singletons: dict[tuple[int, str], set[int]] = {}  # (uid, name) -> dependents with singleton
        self.array_live: collections.Counter[int] = collections.Counter()  # array id -> active tasks
        self.array_count: dict[int, int] = {}  # array id -> task count (while tasks are active)
        # jobs named by each user's waiting dependents, counted once per dependent: a job's
        # start or end re-evaluates every dependent naming it, so this total bounds that work
        # (submit refuses past dp.MAX_USER_DEPENDENCY_REFS)
        self.user_refs: collections.Counter[int] = collections.Counter()
        self.refs_of: dict[int, tuple[int, int]] = {}  # dependent -> (uid, jobs it names)

    # ------------------------------------------------------------ arrays

    def array_added(self, job: Job) -> None:
        aid = job.array_job_id
        self.array_live[aid] += 1
        self.array_count[aid] = max(job.array_task_count, 1)
        if job.array_limit:
            self.table.scheduler.tell(sc.ArrayTask(job.id, aid, job.array_limit))

    def tasks(self, job_id: int) -> list[int]:
        """The jobs ``job_id`` stands for: every task when it is an array id."""
        count = self.array_count.get(job_id)
        if count is None:
            rec = self.table.store.get_job(job_id) if job_id not in self.table.jobs else None
            job = self.table.get(job_id)
            if job is not None and job.array_job_id == job_id:
                count = job.array_task_count
            elif rec is not None and rec.get("array_job_id") == job_id:
                count = int(rec.get("array_task_count") or 1)
        return list(range(job_id, job_id + count)) if count and count > 1 else [job_id]

    # ------------------------------------------------------------ evaluation

    def status(self, job_id: int, starting: int = 0) -> dp.Status:
        actor = self.table.jobs.get(job_id)
        if actor is not None:
            st = actor.job.state
            if st == JobState.PENDING and job_id != starting:
                return dp.Status.PENDING
            return dp.Status.STARTED
        state = self.table.recent.get(job_id)
        if state is None:
            rec = self.table.store.get_job(job_id)
            state = rec.get("state") if rec else None
        if state is None or state not in TERMINAL:
            return dp.Status.UNKNOWN
        return dp.Status.OK if state == JobState.COMPLETED else dp.Status.NOTOK

    def singleton_clear(self, job: Job, seen: dict[tuple[int, str], tuple[int, set[int]]] | None = None) -> bool:
        """No other job of the same user and name runs, or is queued ahead.
        ``seen``: what one pass over the jobs found for each (uid, name),
        shared by the evaluations of one event (a job's end re-evaluates
        every singleton of its name: one pass each was N x M work)."""
        key = (job.uid, job.name)
        if seen is None:
            seen = {}
        if key not in seen:
            first, started = 2**63, set()  # the smallest id of that user's jobs of that name
            for a in self.table.jobs.values():
                o = a.job
                if o.uid == job.uid and o.name == job.name:
                    first = min(first, o.id)
                    if o.state != JobState.PENDING:
                        started.add(o.id)
            seen[key] = (first, started)
        first, started = seen[key]
        return first >= job.id and not (started - {job.id})

    def outcome(self, job: Job, dep: dp.Dependency, starting: int = 0,
                seen: dict[tuple[int, str], tuple[int, set[int]]] | None = None) -> dp.Outcome:  # fmt: skip
        clear = self.singleton_clear(job, seen) if dep.singleton else True
        return dp.evaluate(dep, lambda i: [self.status(t, starting) for t in self.tasks(i)], clear)

    def watch(self, job: Job) -> None:
        """A pending job with a dependency enters (submitted or recovered)."""
        try:
            dep = dp.parse(job.dependency)
        except ValueError as e:  # accepted at submission: a record from elsewhere
            log.error("job %d: %s: ignored", job.id, e)
            return
        result = self.outcome(job, dep)
        if result == dp.Outcome.MET:
            return
        self._gate(job.id, result)
        if result == dp.Outcome.WAIT:
            named = [t for i in dep.ids for t in self.tasks(i)]
            key = (job.uid, job.name) if dep.singleton else None
            self.watched[job.id] = (dep, named, key)
            self.user_refs[job.uid] += len(named)
            self.refs_of[job.id] = (job.uid, len(named))
            for t in named:
                self.waiting.setdefault(t, set()).add(job.id)
            if key is not None:
                self.singletons.setdefault(key, set()).add(job.id)

    def _gate(self, job_id: int, result: dp.Outcome) -> None:
        reason = {dp.Outcome.MET: "", dp.Outcome.WAIT: PendingReason.DEPENDENCY,
                  dp.Outcome.NEVER: PendingReason.DEPENDENCY_NEVER_SATISFIED}[result]  # fmt: skip
        self.table.scheduler.tell(sc.Gate(job_id, reason))

    def _unwatch(self, job_id: int) -> None:
        got = self.watched.pop(job_id, None)
        if got is None:
            return
        uid, n = self.refs_of.pop(job_id, (0, 0))
        self.user_refs[uid] -= n
        if self.user_refs[uid] <= 0:
            del self.user_refs[uid]
        for t in got[1]:
            w = self.waiting.get(t)
            if w is not None:
                w.discard(job_id)
                if not w:
                    del self.waiting[t]
        key = got[2]
        if key is not None:
            s = self.singletons.get(key)
            if s is not None:
                s.discard(job_id)
                if not s:
                    del self.singletons[key]

    def reevaluate(self, dependents: set[int], starting: int = 0) -> None:
        seen: dict[tuple[int, str], tuple[int, set[int]]] = {}  # one pass over the jobs per (uid, name)
        for jid in sorted(dependents):
            got = self.watched.get(jid)
            job = self.table.get(jid)
            if got is None or job is None:
                continue
            result = self.outcome(job, got[0], starting, seen)
            if result != dp.Outcome.WAIT:
                self._unwatch(jid)
                self._gate(jid, result)

    # ------------------------------------------------------------ events

    def started(self, job_id: int) -> None:
        self.reevaluate(set(self.waiting.get(job_id, ())), starting=job_id)

    def involved(self, job: Job) -> bool:
        """Would ``ended(job)`` do anything (it does nothing otherwise)?"""
        return bool(job.id in self.watched or job.dependency or job.array_limit
                    or (job.array_job_id and job.array_job_id in self.array_live) or job.id in self.waiting
                    or (self.singletons and (job.uid, job.name) in self.singletons))  # fmt: skip

    def ended(self, job: Job) -> None:
        if job.id in self.watched:
            self._unwatch(job.id)
        if job.dependency or job.array_limit:
            self.table.scheduler.tell(sc.Forget(job.id))
        aid = job.array_job_id
        if aid and aid in self.array_live:
            self.array_live[aid] -= 1
            if self.array_live[aid] <= 0:
                del self.array_live[aid]
                self.array_count.pop(aid, None)
        todo = set(self.waiting.get(job.id, ()))
        if self.singletons:
            todo |= self.singletons.get((job.uid, job.name), set())
        if todo:
            self.reevaluate(todo)
