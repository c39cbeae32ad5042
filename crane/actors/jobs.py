"""The job table: every active job's actor, and what happens around a job's
end (waiters woken, streams closed, metrics, one store barrier per turn).

It is the port the job and node actors talk through (crane.actors.ports):
they never hold the controller. Jobs that ended but whose final state is not
yet committed stay in ``recent`` so a waiter or a query between the two
still sees them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from crane.actors.base import Actor
from crane.actors.job import JobActor
from crane.actors.leftovers import Leftovers
from crane.actors.node import Send
from crane.actors.ports import AgentSender, Mailbox
from crane.actors.streams import Relay
from crane.actors.waits import Waits
from crane.config import NodeConf
from crane.core import dependency as dp
from crane.core import events as ev
from crane.core import messages as m
from crane.core import scheduling as sc
from crane.core.job import Job, Step
from crane.core.states import TERMINAL, CancelPath, JobState, PendingReason
from crane.metrics import LatencyHistogram
from crane.store import Store

log = logging.getLogger("crane.jobs")

_ENDED_KEY = {s: "jobs_" + s.lower() for s in TERMINAL}
_PATH_KEY = {p: "cancel_path_" + p for p in CancelPath}


class LateSender:
    """The agent socket, bound once the controller has opened it."""

    def __init__(self) -> None:
        self.endpoint: AgentSender | None = None

    def send(self, identity: bytes, msg: m.Message, rid: int = 0) -> bool:
        return self.endpoint is not None and self.endpoint.send(identity, msg, rid)


class JobTable:
    def __init__(self, loop: asyncio.AbstractEventLoop, store: Store, scheduler: Mailbox,
                 nodes: dict[str, Mailbox], node_conf: dict[str, NodeConf], waits: Waits, streams: Relay,
                 metrics: collections.Counter[str], agents: AgentSender) -> None:  # fmt: skip
        self.loop = loop
        self.store = store
        self.scheduler = scheduler
        self.nodes = nodes
        self.node_conf = node_conf
        self.waits = waits
        self.streams = streams
        self.metrics = metrics
        self.agents = agents
        self.jobs: dict[int, JobActor] = {}
        self.recent: dict[int, str] = {}  # ended, not yet committed: id -> state
        self.active_by_uid: collections.Counter[int] = collections.Counter()  # jobs in self.jobs per owner
        self.cancel_latency = LatencyHistogram()
        self._ended: list[int] = []  # ended this loop turn, waiting for one barrier
        self.leftovers = Leftovers()  # ended while their node was DOWN: processes unconfirmed
        self.deps = Dependencies(self)

    # ------------------------------------------------------------ the table

    def add(self, job: Job, new: bool = True) -> JobActor:
        """A job enters (submitted, or recovered when ``new`` is False)."""
        actor = JobActor(job, self)
        self.jobs[job.id] = actor
        self.active_by_uid[job.uid] += 1
        if job.array_job_id:
            self.deps.array_added(job)
        if job.dependency and job.state == JobState.PENDING:
            self.deps.watch(job)  # before the actor queues it: the scheduler sees the gate first
        if new:
            self.store.put_job(job.to_dict())
            actor.start()
        return actor

    def get(self, job_id: int) -> Job | None:
        a = self.jobs.get(job_id)
        return a.job if a is not None else None

    def job_event(self, job_id: int, event: Any) -> None:
        actor = self.jobs.get(job_id)
        if actor is not None:
            actor.tell(event)
            if isinstance(event, ev.Allocated) and job_id in self.deps.waiting and not actor.job.held:
                self.deps.started(job_id)  # after:ID holds once ID starts
        elif isinstance(event, ev.Allocated):  # the job ended while being placed
            for n in event.nodes:
                self.scheduler.tell(ev.FreeNode(job_id, n))

    def job_expected_on(self, job_id: int, node: str) -> bool:
        a = self.jobs.get(job_id)
        return a is not None and node in a.job.nodes and node not in a.job.released

    def jobs_on_node(self, node: str) -> list[int]:
        return [j for j, a in self.jobs.items() if node in a.job.nodes and node not in a.job.released]

    def node_lost(self, node: str, job_ids: list[int]) -> None:
        self.leftovers.node_down(node, job_ids)

    def node_back(self, node: str, running: dict[int, list[int]]) -> None:
        for job_id in self.leftovers.node_back(node, running):
            self._confirmed(job_id)

    def step_gone(self, node: str, job_id: int, step_id: int) -> None:
        if self.leftovers.step_gone(node, job_id, step_id):
            self._confirmed(job_id)

    def _confirmed(self, job_id: int) -> None:
        """No process of the ended job ``job_id`` is left on a node that was DOWN."""
        if job_id not in self.jobs and job_id not in self.recent:
            self.waits.fire(job_id)

    def finished_state(self, job_id: int) -> str | None:
        if job_id in self.recent:
            return self.recent[job_id]
        rec = self.store.get_job(job_id)
        return rec["state"] if rec else None

    # ------------------------------------------------------------ the job port

    def to_node(self, node: str, msg: m.Message) -> None:
        actor = self.nodes.get(node)
        if actor is not None:
            actor.tell(Send(msg))

    def node_devices(self, node: str) -> list[list[Any]]:
        conf = self.node_conf.get(node)
        return [[g.index, g.path] for g in conf.gpus if g.path] if conf is not None else []

    def step_done(self, job: Job, step_id: int, step: Step) -> None:
        """Answer whoever waits for the step (crun, ccancel --wait)."""
        from crane.core.job import step_answer

        key = (job.id, step_id)
        lost = self.streams.end(key)
        if lost:  # live output its crun could not take: told in the WaitStep answer
            step.output_lost += lost
        self.waits.fire(key, step_answer(job, step))

    def ended(self, job: Job) -> None:
        if self.jobs.pop(job.id, None) is not None:
            self.active_by_uid[job.uid] -= 1
            if self.active_by_uid[job.uid] <= 0:
                del self.active_by_uid[job.uid]
        self.recent[job.id] = job.state
        self.metrics[_ENDED_KEY.get(JobState(job.state)) or "jobs_" + job.state.lower()] += 1
        if job.cancel:
            self.metrics[_PATH_KEY.get(job.cancel.path) or "cancel_path_other"] += 1
            self.cancel_latency.observe(max(0.0, time.time() - float(job.cancel.time or time.time())))
        for key in self.waits.keys_of_job(job.id):
            st = job.steps.get(key[1])
            self.waits.fire(key, st.to_dict() if st is not None else {"state": job.state})
        for key in [k for k in self.streams.subs if k[0] == job.id]:
            self.streams.end(key)
        self._ended.append(job.id)
        if len(self._ended) == 1:
            self.loop.call_soon(self._flush_ended)
        try:
            self.deps.ended(job)  # last: the table is consistent whatever happens here
        except Exception:
            log.exception("job %d: re-evaluating the dependencies on it failed", job.id)

    def _flush_ended(self) -> None:
        """One store barrier for every job that ended this loop turn: once
        their final state is committed, forget them and wake their waiters."""
        ids, self._ended = self._ended, []

        def committed() -> None:
            for job_id in ids:
                self.recent.pop(job_id, None)
                if job_id not in self.leftovers:  # else once its node is back and its processes gone
                    self.waits.fire(job_id)

        self.store.barrier(committed)

    # ------------------------------------------------------------ waiting

    def after_persisted(self, callback: Callable[[], None]) -> None:
        """Call back once the actors told so far have handled their mail and
        the store has committed what they wrote."""
        Actor.when_idle(lambda: self.store.barrier(callback))

    def wait_jobs(self, uid: int, job_ids: list[int], callback: Callable[[], None],
                  alive: Callable[[], bool] | None = None) -> str | None:  # fmt: skip
        """Call back once every job is terminal and committed; an error line
        if the caller is at a waiting limit."""
        live = [j for j in set(job_ids) if j in self.jobs or j in self.recent or j in self.leftovers]
        if not live:
            self.store.barrier(callback)
            return None
        return self.waits.add(uid, live, lambda _v: callback(), alive)

    def crun_departed(self, kill_wait: float) -> None:
        """A crun killed without a word (its connection gone, not back):
        cancel its step, as its own SIGTERM would (its job, if crun made it)."""
        for job_id, step_id in self.streams.departed():
            actor = self.jobs.get(job_id)
            st = actor.job.steps.get(step_id) if actor else None
            running = st is not None and st.state == JobState.RUNNING
            if actor is None or not (running or (step_id == 1 and actor.job.state == JobState.PENDING)):
                continue
            whole = step_id == 1  # the batch step: only crun's own job (its launch streams) ends with its crun
            if whole and not (self.store.get_launch(actor.job.launch_id or job_id) or {}).get("stream"):
                continue  # a batch job whose output someone watched (root, its owner): it runs on
            log.info("step %d.%d: its crun is gone: cancelled", job_id, step_id)
            self.metrics["crun_gone_cancels"] += 1
            actor.tell(ev.CancelEv(actor.job.uid, actor.job.user, CancelPath.USER, None if whole else step_id,
                                   "crun gone", grace=kill_wait))  # fmt: skip


# ---------------------------------------------------------------- dependencies and arrays


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
