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
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from crane.actors.base import Actor
from crane.actors.dependencies import Dependencies
from crane.actors.job import JobActor
from crane.actors.leftovers import Leftovers
from crane.actors.node import Send
from crane.actors.ports import AgentSender, Mailbox
from crane.actors.streams import Relay
from crane.actors.waits import Waits
from crane.config import NodeConf
from crane.core import bulk_cancel
from crane.core import events as ev
from crane.core import messages as m
from crane.core.job import CancelIntent, Job, Step
from crane.core.states import TERMINAL, CancelPath, JobState
from crane.metrics import LatencyHistogram
from crane.store import Store

log = logging.getLogger("crane.jobs")

_ENDED_KEY: dict[str, str] = {s: "jobs_" + s.lower() for s in TERMINAL}
_PATH_KEY: dict[str | None, str] = {p: "cancel_path_" + p for p in CancelPath}
# pending jobs cancelled together from this many on are written as one shared
# patch over their records (Store.put_cancelled); fewer, as whole records
PATCH_FROM = 64


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
        self.pending_cancels = PendingCancels(self)

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
            if type(event) is ev.CancelEv and bulk_cancel.eligible(actor.job, event) and actor.idle():
                self.pending_cancels.add(actor, event)  # with the others of this turn
                return
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
        self._leave(job)
        self._after_ended([job])
        self._deps_ended(job)  # last: the table is consistent whatever happens here

    def _leave(self, job: Job) -> None:
        """Off the table; its final state kept in ``recent`` until committed."""
        if self.jobs.pop(job.id, None) is not None:
            self.active_by_uid[job.uid] -= 1
            if self.active_by_uid[job.uid] <= 0:
                del self.active_by_uid[job.uid]
        self.recent[job.id] = job.state

    def _deps_ended(self, job: Job) -> None:
        try:
            self.deps.ended(job)
        except Exception:
            log.exception("job %d: re-evaluating the dependencies on it failed", job.id)

    def _after_ended(self, jobs: list[Job]) -> None:
        """Counted, their step waiters and streams answered, and one store
        barrier (once the actors have run) before their job waiters are woken."""
        counts: collections.Counter[str] = collections.Counter()
        for state, n in collections.Counter(job.state for job in jobs).items():
            counts[_ENDED_KEY.get(state) or "jobs_" + state.lower()] += n
        cancels: dict[int, tuple[CancelIntent, int]] = {}  # by identity: a batch shares one intent
        for job in jobs:
            c = job.cancel
            if c:
                got = cancels.get(id(c))
                cancels[id(c)] = (c, got[1] + 1 if got else 1)
        now = time.time()
        for c, n in cancels.values():
            counts[_PATH_KEY.get(c.path) or "cancel_path_other"] += n
            latency = max(0.0, now - float(c.time or now))
            for _ in range(n):
                self.cancel_latency.observe(latency)
        self.metrics.update(counts)
        if self.waits.step_keys:
            for job in jobs:
                for key in self.waits.keys_of_job(job.id):
                    st = job.steps.get(key[1])
                    self.waits.fire(key, st.to_dict() if st is not None else {"state": job.state})
        if self.streams.subs:
            ids = {job.id for job in jobs}
            for key in [k for k in self.streams.subs if k[0] in ids]:
                self.streams.end(key)
        first = not self._ended
        self._ended += [job.id for job in jobs]
        if first and self._ended:
            Actor.when_idle(self._flush_ended)  # once the actors told so far have run: one barrier for all

    def cancel_pending(self, e: ev.CancelEv, actors: list[JobActor]) -> None:
        """Whole-job cancels of idle pending jobs told one event object
        (``PendingCancels``): each job as its machine would
        (crane.core.bulk_cancel), in the order told, and written together,
        as one store operation (a few jobs: their records)."""
        now = time.time()
        intent = bulk_cancel.intent_of(e, now)
        done: list[Job] = []
        tell = self.scheduler.tell
        involved = self.deps.involved
        debug = log.isEnabledFor(logging.DEBUG)
        for actor in actors:
            job = actor.job
            if not bulk_cancel.eligible(job, e):  # named twice: ended earlier in this batch
                actor.tell(e)
                continue
            bulk_cancel.end_pending(job, intent, e, now)
            if debug:
                log.debug("job %d: %s -> %s on CancelEv (cause %d)", job.id, JobState.PENDING, job.state, e.cause)
            if not job.held:  # a held job is out of the scheduler's queue (its hold, or its submission)
                tell(ev.Dequeue(job.id, cause=e.cause))
            done.append(job)
            self._leave(job)
            if involved(job):  # in order: what a job's end re-evaluates sees the jobs before it ended
                self._deps_ended(job)
        if len(done) < PATCH_FROM:
            for job in done:
                self.store.put_job(job.to_dict())
        else:
            for fields, ids in bulk_cancel.stored_fields(done):
                self.store.put_cancelled(fields, bulk_cancel.id_ranges(ids))
        self._after_ended(done)

    def _flush_ended(self) -> None:
        """One store barrier for every job that ended this loop turn: once
        their final state is committed, forget them and wake their waiters."""
        ids, self._ended = self._ended, []

        def committed() -> None:
            recent, waited, left = self.recent, self.waits.by_key, self.leftovers
            for job_id in ids:
                recent.pop(job_id, None)
                if job_id in waited and job_id not in left:  # else once its node is back and its processes gone
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


class PendingCancels(Actor):
    """The whole-job cancels of idle pending jobs told in one loop turn
    (``JobTable.job_event``), handled together in one turn of this actor:
    told once per batch, it runs among the job actors, so a request waiting
    for its jobs (``after_persisted``) also waits for these, and a job's
    later mail (its actor was idle) comes after its cancel."""

    __slots__ = ("table", "queued")

    def __init__(self, table: JobTable) -> None:
        super().__init__()
        self.table = table
        self.queued: list[tuple[ev.CancelEv, list[JobActor]]] = []  # in order, by event told

    def add(self, actor: JobActor, e: ev.CancelEv) -> None:
        q = self.queued
        if q and q[-1][0] is e:
            q[-1][1].append(actor)
            return
        q.append((e, [actor]))
        if len(q) == 1:
            self.tell(None)

    def receive(self, msg: Any) -> None:
        batch, self.queued = self.queued, []
        was = gc.isenabled()
        gc.disable()  # no collection over every job while thousands end
        try:
            for e, actors in batch:
                self.table.cancel_pending(e, actors)
        finally:
            if was:
                gc.enable()

    def describe(self) -> str:
        return "pending cancels"
