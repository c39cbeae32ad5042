"""The job actor: runs one job's pure ``JobMachine`` (crane.core.job_machine)
and carries out the actions it returns."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from crane.actors.base import Actor
from crane.actors.ports import JobPort
from crane.core import events as ev
from crane.core import messages as m
from crane.core.job import Job
from crane.core.job_machine import JobMachine
from crane.core.states import JobState

log = logging.getLogger("crane.job")


class JobActor(Actor):
    """Runs a JobMachine and carries out its actions through its port."""

    __slots__ = ("held", "machine", "port")

    def __init__(self, job: Job, port: JobPort) -> None:
        super().__init__()
        self.machine = JobMachine(job)
        self.port = port
        # messages to nodes waiting for a store commit (ev.AfterSaved), a group
        # per barrier, oldest first: while any waits, every later one queues
        # behind it (a step's cancel never overtakes its launch)
        self.held: deque[list[ev.ToNode]] = deque()

    @property
    def job(self) -> Job:
        return self.machine.job

    def describe(self) -> str:
        return f"job {self.machine.job.id}"

    def idle(self) -> bool:
        """No mail waiting and no message held for a commit: an event
        handled outside it now comes after everything it handled."""
        return not self._mailbox and not self._scheduled and not self.held

    def start(self) -> None:
        self.execute(self.machine.start(time.time()))

    def receive(self, msg: Any) -> None:
        job = self.machine.job
        if isinstance(msg, ev.Allocated) and job.launch is None and job.state == JobState.PENDING:
            job.launch = self.port.store.get_launch(job.launch_id or job.id) or {}
        before = job.state
        self.execute(self.machine.handle(msg, time.time()))
        if job.state != before:
            log.debug("job %d: %s -> %s on %s (cause %d)", job.id, before, job.state, type(msg).__name__,
                      getattr(msg, "cause", 0))  # fmt: skip

    def execute(self, actions: list[Any]) -> None:
        for a in actions:
            _EXECUTE[type(a)](self, a)

    def _to_node(self, a: ev.ToNode) -> None:
        if self.held:
            self.held[-1].append(a)
        else:
            self._send(a)

    def _after_saved(self, a: ev.AfterSaved) -> None:
        self.held.append([])
        # the store's barriers answer in order, one callback each
        self.port.store.barrier(self._saved, self._not_saved)

    def _saved(self) -> None:
        for a in self.held.popleft():
            self._send(a)

    def _not_saved(self, reason: str) -> None:
        # the record is not on disk; the controller still knows the step: as before the barrier
        log.error("job %d: store commit failed (%s): sending its held messages anyway", self.job.id, reason)
        self._saved()

    def _send(self, a: ev.ToNode) -> None:
        msg = a.msg
        if isinstance(msg, m.LaunchStep):
            devices = self.port.node_devices(a.node)
            if devices:  # the agent denies the job every device it was not given
                msg.spec["gpu_devices"] = devices
            # tells this launch from one of another controller database reusing the job id
            msg.spec["incarnation"] = getattr(self.port.store, "incarnation", "")
        self.port.to_node(a.node, msg)

    def _to_scheduler(self, a: ev.ToScheduler) -> None:
        self.port.scheduler.tell(a.msg)

    def _persist(self, a: ev.Persist) -> None:
        self.port.store.put_job(self.machine.job.to_dict())

    def _terminal(self, a: ev.Terminal) -> None:
        self.port.ended(self.machine.job)

    def _reply(self, a: ev.Reply) -> None:
        if a.future is not None and not a.future.done():
            a.future.set_result(a.value)

    def _step_ended(self, a: ev.StepDone) -> None:
        self.port.step_done(self.machine.job, a.step_id, a.step)


_EXECUTE: dict[type, Callable[[JobActor, Any], None]] = {
    ev.ToNode: JobActor._to_node,
    ev.ToScheduler: JobActor._to_scheduler,
    ev.Persist: JobActor._persist,
    ev.AfterSaved: JobActor._after_saved,
    ev.Terminal: JobActor._terminal,
    ev.Reply: JobActor._reply,
    ev.StepDone: JobActor._step_ended,
}
