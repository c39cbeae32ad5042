"""The scheduler actor: runs the pure ``SchedulingMachine``
(crane.core.scheduling) and carries out its actions through a typed port.

Scheduling is event-driven: any change that may make room (a job queued,
resources freed, a node up) schedules one pass on the next loop turn; there
is no timer. The pass gets the time and the current ``Policy`` (config +
QoS) from here; placement and preemption decisions are the machine's.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from crane.accounts import Qos
from crane.actors.base import Actor
from crane.config import Config, NodeConf
from crane.core import events as ev
from crane.core import scheduling as sc
from crane.core.ledger import NodeLedger, Request, place
from crane.core.states import CancelPath, ControlAction, NodeReason, PreemptMode, PreemptType

__all__ = ["NodeLedger", "Request", "Scheduler", "SchedulerPort", "place", "policy_of"]

log = logging.getLogger("crane.scheduler")


class SchedulerPort(Protocol):
    """What the scheduler needs from the rest of the controller."""

    metrics: collections.Counter[str]

    def job_event(self, job_id: int, event: Any) -> None: ...

    def save_node(self, name: str, drain: bool, reason: str) -> None: ...

    def policy(self) -> sc.Policy: ...


def policy_of(cfg: Config, qos: Mapping[str, Qos]) -> sc.Policy:
    """The scheduling policy from the configuration and the QoS table."""

    def mode(v: str | None) -> PreemptMode | None:
        return PreemptMode(v.upper()) if v else None

    return sc.Policy(
        preempt_type=PreemptType(cfg.preempt_type),
        mode=PreemptMode(cfg.preempt_mode.upper()),
        exempt=float(cfg.preempt_exempt_time),
        qos={q.name: sc.QosPolicy(q.priority, frozenset(q.preempt), mode(q.preempt_mode),
                                  None if q.grace_time is None else float(q.grace_time),
                                  None if q.preempt_exempt_time is None else float(q.preempt_exempt_time),
                                  q.max_jobs_per_user) for q in qos.values()},
        partitions={p.name: sc.PartitionPolicy(p.priority, mode(p.preempt_mode), float(p.grace_time or 0),
                                               tuple(p.nodes)) for p in cfg.partitions.values()},
    )  # fmt: skip


def ledgers_of(nodes: Iterable[NodeConf]) -> dict[str, NodeLedger]:
    return {
        n.name: NodeLedger(n.name, n.cpus, n.memory, n.cpus, n.memory,
                           gpu_types=[g.type for g in n.gpus], gpus_free={g.index for g in n.gpus})
        for n in nodes
    }  # fmt: skip


class Scheduler(Actor):
    __slots__ = ("port", "machine", "_pass_scheduled")

    def __init__(self, port: SchedulerPort, nodes: Iterable[NodeConf]) -> None:
        super().__init__()
        self.port = port
        self.machine = sc.SchedulingMachine(ledgers_of(nodes))
        self._pass_scheduled = False

    # read by cinfo/cqueue (frontend) and /metrics
    @property
    def ledgers(self) -> dict[str, NodeLedger]:
        return self.machine.ledgers

    @property
    def reasons(self) -> dict[int, Any]:
        return self.machine.reasons

    @property
    def passes(self) -> int:
        return self.machine.passes

    def receive(self, msg: Any) -> None:
        self.execute(self.machine.handle(msg))
        if self.machine.pass_wanted:
            self.request_pass()

    def request_pass(self) -> None:
        if not self._pass_scheduled:
            self._pass_scheduled = True
            assert Actor._loop is not None
            Actor._loop.call_soon(self._schedule)

    def _schedule(self) -> None:
        self._pass_scheduled = False
        if not self.machine.pending:
            self.machine.pass_wanted = False
            return
        self.execute(self.machine.handle(sc.SchedulePass(time.time(), self.port.policy())))

    def execute(self, actions: list[Any]) -> None:
        for a in actions:
            _EXECUTE[type(a)](self, a)

    def _allocate(self, a: sc.Allocate) -> None:
        self.port.job_event(a.job_id, ev.Allocated(a.nodes, a.cpus, a.gpus, cause=a.cause))

    def _reserve(self, a: sc.Reserve) -> None:
        log.info("job %d preempts %s on %s (cause %d)", a.preemptor, a.victims, a.nodes, a.cause)
        self.port.metrics["preemptions"] += 1

    def _preempt(self, a: sc.Preempt) -> None:
        self.port.metrics["preempted_" + a.mode.lower()] += 1
        self.port.job_event(a.victim, ev.CancelEv(
            by_uid=0, by_name=CancelPath.PREEMPTION, path=CancelPath.PREEMPTION, message=a.reason,
            grace=a.grace, requeue=a.mode == PreemptMode.REQUEUE, reason=a.reason, cause=a.cause,
        ))  # fmt: skip

    def _suspend(self, a: sc.Suspend) -> None:
        self.port.metrics["preempted_" + PreemptMode.SUSPEND.lower()] += 1
        self.port.job_event(a.victim, ev.ControlEv(ControlAction.SUSPEND, cause=a.cause))
        self.port.job_event(a.victim, ev.SetReason(a.reason, cause=a.cause))

    def _resume(self, a: sc.Resume) -> None:
        self.port.job_event(a.victim, ev.ControlEv(ControlAction.RESUME, cause=a.cause))

    def _save_node(self, a: sc.SaveNode) -> None:
        self.port.save_node(a.name, a.drain, a.reason)

    # recovery after a controller restart (synchronous: before any job starts)
    def adopt(self, job_id: int, nodes: list[str], cpus: int, memory: int, exclusive: bool, suspended: bool,
              gpu_alloc: dict[str, list[int]] | None = None, *, qos: str = "", partition: str = "", uid: int = 0,
              start_time: float | None = None, ending: bool = False) -> None:  # fmt: skip
        self.execute(self.machine.handle(ev.Adopt(
            job_id, list(nodes), cpus, memory, exclusive, suspended, dict(gpu_alloc or {}), qos, partition, uid,
            time.time() if start_time is None else start_time, ending,
        )))  # fmt: skip

    def reconfigure(self, nodes: Iterable[NodeConf]) -> dict[str, str]:
        """A re-read configuration's nodes (synchronous, like recovery):
        returns the nodes kept as they were, with why (jobs use them)."""
        shapes = {n.name: sc.NodeShape(n.cpus, n.memory, tuple(g.type for g in n.gpus)) for n in nodes}
        actions = self.machine.handle(sc.Reconfigure(shapes))
        self.execute(actions)
        self.request_pass()
        return {n: a.why for a in actions if isinstance(a, sc.NodesKept) for n in a.nodes}

    def _nodes_kept(self, a: sc.NodesKept) -> None:
        log.error("reconfigure: nodes %s kept as they were: %s", ",".join(a.nodes), a.why)

    def restore_node(self, name: str, drain: bool, reason: str) -> None:
        self.execute(self.machine.handle(ev.RestoreNode(name, drain, reason)))

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        now = time.time()
        for led in self.machine.ledgers.values():
            out.append({
                "name": led.name, "state": led.state(), "cpus": led.cpus, "cpus_free": led.cpus_free,
                "cpus_alloc": led.cpus - led.cpus_free, "memory": led.memory, "mem_free": led.mem_free,
                "reason": led.reason or ("" if led.up else led.down_reason or NodeReason.NOT_RESPONDING),
                "jobs": sorted(led.jobs), "time": now, **led.gpu_row(),
            })  # fmt: skip
        return out


_EXECUTE: dict[type, Callable[[Scheduler, Any], None]] = {
    sc.Allocate: Scheduler._allocate,
    sc.Reserve: Scheduler._reserve,
    sc.Preempt: Scheduler._preempt,
    sc.Suspend: Scheduler._suspend,
    sc.Resume: Scheduler._resume,
    sc.SaveNode: Scheduler._save_node,
    sc.NodesKept: Scheduler._nodes_kept,
}
