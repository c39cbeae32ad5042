"""The job actor: runs one job's pure ``JobMachine`` (crane.core.job_machine)
and carries out the actions it returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from crane.actors.base import Actor
from crane.core import events as ev
from crane.core import messages as m
from crane.core.job import Job, step_answer
from crane.core.job_machine import JobMachine


class JobActor(Actor):
    """Runs a JobMachine and carries out its actions through the controller."""

    __slots__ = ("machine", "ctl")

    def __init__(self, job: Job, ctl: Any) -> None:
        super().__init__()
        self.machine = JobMachine(job)
        self.ctl = ctl

    @property
    def job(self) -> Job:
        return self.machine.job

    def describe(self) -> str:
        return f"job {self.machine.job.id}"

    def start(self) -> None:
        self.execute(self.machine.start(time.time()))

    def receive(self, msg: Any) -> None:
        job = self.machine.job
        if isinstance(msg, ev.Allocated) and job.launch is None and job.state == "PENDING":
            job.launch = self.ctl.store.get_launch(job.launch_id or job.id) or {}
        self.execute(self.machine.handle(msg, time.time()))

    def execute(self, actions: list[Any]) -> None:
        for a in actions:
            _EXECUTE[type(a)](self, a)

    def _to_node(self, a: ev.ToNode) -> None:
        msg = a.msg
        if isinstance(msg, m.LaunchStep):
            node = self.ctl.cfg.nodes.get(a.node)
            devices = [[g.index, g.path] for g in node.gpus if g.path] if node is not None else []
            if devices:  # the agent denies the job every device it was not given
                msg.spec["gpu_devices"] = devices
        self.ctl.to_node(a.node, msg)

    def _to_scheduler(self, a: ev.ToScheduler) -> None:
        msg = a.msg
        if isinstance(msg, ev.Enqueue) and isinstance(msg.req, int):
            msg = ev.Enqueue(self.ctl.request_of(self.machine.job))
        self.ctl.scheduler.tell(msg)

    def _persist(self, a: ev.Persist) -> None:
        self.ctl.store.put_job(self.machine.job.to_dict())

    def _terminal(self, a: ev.Terminal) -> None:
        self.ctl.job_terminal(self)

    def _reply(self, a: ev.Reply) -> None:
        if a.future is not None and not a.future.done():
            a.future.set_result(a.value)

    def _step_ended(self, a: ev.StepDone) -> None:
        self.step_done(a.step_id, a.step)

    def step_done(self, step_id: int, st: dict[str, Any]) -> None:
        """Answer whoever waits for the step (crun, ccancel --wait): see
        ``Frontend.on_WaitStep`` and ``crane.actors.waits``."""
        key = (self.machine.job.id, step_id)
        lost = self.ctl.streams.end(key)
        if lost:  # live output its crun could not take: told in the WaitStep answer
            st["output_lost"] = st.get("output_lost", 0) + lost
        self.ctl.waits.fire(key, step_answer(self.machine.job, st))


_EXECUTE: dict[type, Callable[[JobActor, Any], None]] = {
    ev.ToNode: JobActor._to_node,
    ev.ToScheduler: JobActor._to_scheduler,
    ev.Persist: JobActor._persist,
    ev.Terminal: JobActor._terminal,
    ev.Reply: JobActor._reply,
    ev.StepDone: JobActor._step_ended,
}
