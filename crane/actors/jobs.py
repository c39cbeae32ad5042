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
from crane.actors.node import Send
from crane.actors.ports import AgentSender, Mailbox
from crane.actors.streams import Relay
from crane.actors.waits import Waits
from crane.config import NodeConf
from crane.core import events as ev
from crane.core import messages as m
from crane.core.job import Job, Step
from crane.core.states import TERMINAL, CancelPath, JobState
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

    # ------------------------------------------------------------ the table

    def add(self, job: Job, new: bool = True) -> JobActor:
        """A job enters (submitted, or recovered when ``new`` is False)."""
        actor = JobActor(job, self)
        self.jobs[job.id] = actor
        self.active_by_uid[job.uid] += 1
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
        elif isinstance(event, ev.Allocated):  # the job ended while being placed
            for n in event.nodes:
                self.scheduler.tell(ev.FreeNode(job_id, n))

    def job_expected_on(self, job_id: int, node: str) -> bool:
        a = self.jobs.get(job_id)
        return a is not None and node in a.job.nodes and node not in a.job.released

    def jobs_on_node(self, node: str) -> list[int]:
        return [j for j, a in self.jobs.items() if node in a.job.nodes and node not in a.job.released]

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

    def _flush_ended(self) -> None:
        """One store barrier for every job that ended this loop turn: once
        their final state is committed, forget them and wake their waiters."""
        ids, self._ended = self._ended, []

        def committed() -> None:
            for job_id in ids:
                self.recent.pop(job_id, None)
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
        live = [j for j in set(job_ids) if j in self.jobs or j in self.recent]
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
            log.info("step %d.%d: its crun is gone: cancelled", job_id, step_id)
            self.metrics["crun_gone_cancels"] += 1
            whole = step_id == 1  # the batch step: crun's own job (only its crun streams step 1)
            actor.tell(ev.CancelEv(actor.job.uid, actor.job.user, CancelPath.USER, None if whole else step_id,
                                   "crun gone", grace=kill_wait))  # fmt: skip
