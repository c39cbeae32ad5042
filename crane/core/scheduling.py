"""The scheduler and preemption as one pure machine.

``SchedulingMachine.handle(event) -> actions``: no clock, no I/O. The
scheduler actor (``crane.actors.scheduler``) feeds it events (a job queued or
dequeued, a node freed, up, down or drained, a job suspended or ending, a
scheduling pass with the time and the policy) and carries out what it returns
(``Allocate``, ``Reserve``, ``Preempt``, ``Suspend``, ``Resume``, ``SaveNode``).

State: every node's ledger (``crane.core.ledger``), the pending requests and
their reasons, the reservations (preemptor -> nodes kept for it and the
victims it waits for), the victims suspended for each preemptor (``lent``),
and its own view of every job holding resources (``held``: what preemption
needs to know), fed by events and never read from the job actors.

A pass walks the pending requests in priority order and places what fits. A
request that does not fit may preempt (``crane.core.preempt``): the planned
nodes are reserved for it *before* any victim is touched; CANCEL and REQUEUE
victims are told to end, SUSPEND victims lend their cpus and memory at once
(they keep their GPUs) and are resumed once the preemptor has left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crane.core import events as ev
from crane.core.ledger import NodeLedger, Request, place
from crane.core.preempt import Candidate, NodeFree, Want, plan_preemption
from crane.core.states import PendingReason, PreemptMode, PreemptType

# ------------------------------------------------------------------ policy


@dataclass(frozen=True, slots=True)
class QosPolicy:
    priority: int = 0
    preempt: frozenset[str] = frozenset()  # QoS names this one may preempt
    mode: PreemptMode | None = None  # None: the cluster's PreemptMode
    grace: float | None = None  # seconds
    exempt: float | None = None  # PreemptExemptTime; None: the cluster's
    max_jobs_per_user: int | None = None


@dataclass(frozen=True, slots=True)
class PartitionPolicy:
    priority: int = 0
    mode: PreemptMode | None = None  # None: the cluster's PreemptMode
    grace: float = 0.0
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """What a pass needs from the configuration and the accounts."""

    preempt_type: PreemptType = PreemptType.NONE
    mode: PreemptMode = PreemptMode.OFF  # the cluster's PreemptMode
    exempt: float = 0.0  # the cluster's PreemptExemptTime
    qos: Mapping[str, QosPolicy] = field(default_factory=dict)
    partitions: Mapping[str, PartitionPolicy] = field(default_factory=dict)

    def preempting(self) -> bool:
        return self.preempt_type != PreemptType.NONE

    def qos_priority(self, qos: str) -> int:
        q = self.qos.get(qos)
        return q.priority if q is not None else 0

    def partition_priority(self, partition: str) -> int:
        p = self.partitions.get(partition)
        return p.priority if p is not None else 0

    def could_preempt(self, req: Request) -> bool:
        """Cheap trigger check: may this request preempt anything at all?"""
        if self.preempt_type == PreemptType.QOS:
            q = self.qos.get(req.qos)
            return bool(q and q.preempt)
        if self.preempt_type == PreemptType.PARTITION:
            if req.partition not in self.partitions:
                return False
            mine = self.partitions[req.partition].priority
            return any(p.priority < mine for p in self.partitions.values())
        return False

    def victim_mode(self, qos: str, partition: str) -> PreemptMode:
        if self.preempt_type == PreemptType.PARTITION:
            p = self.partitions.get(partition)
            return (p.mode if p is not None else None) or self.mode
        q = self.qos.get(qos)
        return (q.mode if q is not None else None) or self.mode

    def grace(self, qos: str, partition: str) -> float:
        if self.preempt_type == PreemptType.PARTITION:
            p = self.partitions.get(partition)
            return float(p.grace) if p is not None else 0.0
        q = self.qos.get(qos)
        return float(q.grace or 0) if q is not None else 0.0

    def exempt_time(self, qos: str) -> float:
        q = self.qos.get(qos)
        if q is not None and q.exempt is not None:
            return float(q.exempt)
        return float(self.exempt)

    def job_limits(self) -> dict[str, int]:
        """QoS MaxJobsPerUser, only where set."""
        return {name: q.max_jobs_per_user for name, q in self.qos.items() if q.max_jobs_per_user is not None}


# ------------------------------------------------------------------ events only the actor sends


@dataclass(slots=True)
class SchedulePass(ev.Traced):
    now: float
    policy: Policy


@dataclass(frozen=True, slots=True)
class NodeShape:
    """A node as the configuration describes it."""

    cpus: int
    memory: int
    gpu_types: tuple[str, ...] = ()


@dataclass(slots=True)
class Reconfigure(ev.Traced):
    """The configuration was re-read: every node it names, with its shape.
    New nodes get a ledger (down until their agent registers), resized ones
    are resized; a node not named is removed only if no job holds it, is
    pending for it (``-w``) or has it reserved, else kept (``NodesKept``)."""

    nodes: dict[str, NodeShape]


@dataclass(slots=True)
class Gate(ev.Traced):
    """Sent by the job table: keep the job out of passes while ``reason``
    (a PendingReason: Dependency, DependencyNeverSatisfied) holds; "" lifts
    the gate. A gate outlives the job's place in the queue (a hold, an
    update) until lifted or ``Forget``."""

    job_id: int
    reason: str = ""


@dataclass(slots=True)
class ArrayTask(ev.Traced):
    """The job is a task of array ``array_id`` whose tasks run at most
    ``limit`` at once (``--array ...%limit``)."""

    job_id: int
    array_id: int
    limit: int


@dataclass(slots=True)
class Forget(ev.Traced):
    """The job ended: drop its gate and array membership."""

    job_id: int


# ------------------------------------------------------------------ actions


@dataclass(slots=True)
class Allocate(ev.Traced):
    """Start the job on these nodes (``ev.Allocated`` to the job)."""

    job_id: int
    nodes: list[str]
    cpus: int  # per node
    gpus: dict[str, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class Reserve(ev.Traced):
    """The nodes are kept for the preemptor while its victims go."""

    preemptor: int
    nodes: list[str]
    victims: list[int]


@dataclass(slots=True)
class Preempt(ev.Traced):
    """End the victim (CANCEL) or send it back to the queue (REQUEUE)."""

    victim: int
    preemptor: int
    mode: PreemptMode
    grace: float
    reason: str


@dataclass(slots=True)
class Suspend(ev.Traced):
    """Suspend the victim: its cpus and memory are already lent to the preemptor."""

    victim: int
    preemptor: int
    reason: str


@dataclass(slots=True)
class Resume(ev.Traced):
    victim: int


@dataclass(slots=True)
class SaveNode(ev.Traced):
    name: str
    drain: bool
    reason: str


@dataclass(slots=True)
class NodesKept(ev.Traced):
    """A reconfiguration left out these nodes (or shrank their GPUs below
    what jobs hold), but jobs use them: kept as they were."""

    nodes: list[str]
    why: str


# ------------------------------------------------------------------ the machine's view of a job


@dataclass(slots=True)
class Held:
    """A job holding resources, as preemption needs to know it."""

    job_id: int
    qos: str
    partition: str
    uid: int
    start_time: float
    nodes: list[str]  # nodes it still holds
    cpus: int  # per node
    memory: int  # per node
    exclusive: bool
    gpus: dict[str, list[int]] = field(default_factory=dict)
    suspended: bool = False
    ending: bool = False  # cancelled or completing: not a candidate any more


_HANDLERS, on = ev.handler_table()  # one handler per event type, filled by @on


class SchedulingMachine:
    """Pure: ``handle(event)`` changes the state and returns actions.
    ``pass_wanted`` says an event may have made room (the actor then runs a
    ``SchedulePass`` on the next loop turn)."""

    def __init__(self, ledgers: dict[str, NodeLedger]) -> None:
        self.ledgers = ledgers
        self.pending: dict[int, Request] = {}
        self.causes: dict[int, int] = {}  # pending job -> cause of its Enqueue (carried by what it leads to)
        self.reasons: dict[int, PendingReason] = {}
        self.held: dict[int, Held] = {}
        self.reserved: dict[int, tuple[list[str], list[int]]] = {}  # preemptor -> (nodes, victims)
        self.reserved_nodes: dict[str, int] = {}  # node -> preemptor it is kept for
        self.lent: dict[int, list[int]] = {}  # preemptor -> jobs suspended for it
        self.passes = 0
        self.pass_wanted = False
        self._order: list[Request] | None = None  # pending in priority order; None = re-sort
        self._fresh: set[int] = set()  # placed during the current pass: not candidates yet
        self.gates: dict[int, PendingReason] = {}  # job -> why it may not run (its dependency)
        self.arrays: dict[int, tuple[int, int]] = {}  # array task with a limit -> (array id, limit)

    def handle(self, event: Any) -> list[Any]:
        fn = _HANDLERS.get(type(event))
        if fn is None:
            raise TypeError(f"scheduler: unexpected event {type(event).__name__}")
        return fn(self, event)

    # ---------------------------------------------------------- queue

    @on(ev.Enqueue)
    def _on_Enqueue(self, e: ev.Enqueue) -> list[Any]:
        req: Request = e.req
        if req.job_id in self.held:
            # stale: the job was placed while it asked to be queued again (a
            # ccontrol update's Dequeue + Enqueue crossing its Allocate)
            return []
        self.pending[req.job_id] = req
        self.causes[req.job_id] = e.cause
        self.reasons[req.job_id] = self.gates.get(req.job_id, PendingReason.PRIORITY)
        self._order = None
        self.pass_wanted = True
        return []

    @on(ev.Dequeue)
    def _on_Dequeue(self, e: ev.Dequeue) -> list[Any]:
        # nothing was freed: no pass needed (a mass cancel of pending jobs stays cheap)
        self.pending.pop(e.job_id, None)
        self.reasons.pop(e.job_id, None)
        self.causes.pop(e.job_id, None)
        actions: list[Any] = []
        if e.job_id in self.reserved:
            self._unreserve(e.job_id)  # a preemptor cancelled (or held) while its victims die
            self.pass_wanted = True
        if e.job_id in self.lent and e.job_id not in self.held:
            actions += self._resume_lent(e.job_id, e.cause)  # it never started: its suspended victims go on
            self.pass_wanted = True
        return actions

    @on(Gate)
    def _on_Gate(self, e: Gate) -> list[Any]:
        if e.reason:
            self.gates[e.job_id] = PendingReason(e.reason)
            if e.job_id in self.pending:
                self.reasons[e.job_id] = self.gates[e.job_id]
        elif self.gates.pop(e.job_id, None) is not None and e.job_id in self.pending:
            self.reasons[e.job_id] = PendingReason.PRIORITY
            self.pass_wanted = True
        return []

    @on(ArrayTask)
    def _on_ArrayTask(self, e: ArrayTask) -> list[Any]:
        if e.limit > 0:
            self.arrays[e.job_id] = (e.array_id, e.limit)
        return []

    @on(Forget)
    def _on_Forget(self, e: Forget) -> list[Any]:
        self.gates.pop(e.job_id, None)
        if self.arrays.pop(e.job_id, None) is not None:
            self.pass_wanted = True  # one task fewer of its array: another may start
        return []

    # ---------------------------------------------------------- nodes and jobs holding them

    @on(ev.FreeNode)
    def _on_FreeNode(self, e: ev.FreeNode) -> list[Any]:
        led = self.ledgers.get(e.node)
        if led is None or not led.give(e.job_id):
            return []
        h = self.held.get(e.job_id)
        if h is not None:
            h.nodes = [n for n in h.nodes if n != e.node]
            h.gpus.pop(e.node, None)
            if not h.nodes:
                del self.held[e.job_id]
                for victims in self.lent.values():
                    if e.job_id in victims:
                        victims.remove(e.job_id)
        actions: list[Any] = []
        if e.job_id in self.lent and e.job_id not in self.held:
            actions += self._resume_lent(e.job_id, e.cause)  # the preemptor is done: resume
        self.pass_wanted = True
        return actions

    @on(ev.NodeStatus)
    def _on_NodeStatus(self, e: ev.NodeStatus) -> list[Any]:
        led = self.ledgers.get(e.node)
        if led is None:
            return []
        actions: list[Any] = []
        if e.up is not None:
            led.up = e.up
            led.down_reason = "" if e.up else e.reason
        if e.drain is not None:
            led.drain = e.drain
            led.reason = e.reason if e.drain else ""
            actions.append(SaveNode(led.name, led.drain, led.reason, cause=e.cause))
        self.pass_wanted = True
        return actions

    @on(ev.RestoreNode)
    def _on_RestoreNode(self, e: ev.RestoreNode) -> list[Any]:
        led = self.ledgers.get(e.node)
        if led is not None:
            led.drain, led.reason = e.drain, e.reason if e.drain else ""
        return []

    @on(ev.Suspended)
    def _on_Suspended(self, e: ev.Suspended) -> list[Any]:
        self._set_suspended(e.job_id, e.suspended)
        if not e.suspended:  # resumed by hand: not waiting for its preemptor any more
            for victims in self.lent.values():
                if e.job_id in victims:
                    victims.remove(e.job_id)
        self.pass_wanted = True
        return []

    @on(ev.Ending)
    def _on_Ending(self, e: ev.Ending) -> list[Any]:
        h = self.held.get(e.job_id)
        if h is not None:
            h.ending = True
        return []

    @on(ev.Adopt)
    def _on_Adopt(self, e: ev.Adopt) -> list[Any]:
        """Recovery: a job that held resources before the restart holds them again."""
        if e.job_id in self.held:
            return []
        nodes: list[str] = []
        gpus: dict[str, list[int]] = {}
        for n in dict.fromkeys(e.nodes):
            led = self.ledgers.get(n)
            if led is None or e.job_id in led.jobs:
                continue
            got = led.take(e.job_id, e.cpus, e.memory, e.exclusive, indices=list(e.gpus.get(n) or []))
            if got:
                gpus[n] = got
            if e.suspended:
                led.lend(e.job_id, True)
            nodes.append(n)
        if nodes:
            self.held[e.job_id] = Held(e.job_id, e.qos, e.partition, e.uid, e.start_time, nodes, e.cpus,
                                       e.memory, e.exclusive, gpus, e.suspended, e.ending)  # fmt: skip
        return []

    @on(Reconfigure)
    def _on_Reconfigure(self, e: Reconfigure) -> list[Any]:
        in_use = {name for name, led in self.ledgers.items() if led.jobs}
        in_use |= {n for r in self.pending.values() for n in r.nodelist} | set(self.reserved_nodes)
        kept = [n for n in self.ledgers if n not in e.nodes and n in in_use]
        for n in [n for n in self.ledgers if n not in e.nodes and n not in in_use]:
            del self.ledgers[n]
        gpus_kept: list[str] = []
        for name, shape in e.nodes.items():
            led = self.ledgers.get(name)
            if led is None:
                types = list(shape.gpu_types)
                self.ledgers[name] = NodeLedger(name, shape.cpus, shape.memory, shape.cpus, shape.memory,
                                                gpu_types=types, gpus_free=set(range(len(types))))  # fmt: skip
                continue
            led.cpus_free += shape.cpus - led.cpus
            led.mem_free += shape.memory - led.memory
            led.cpus, led.memory = shape.cpus, shape.memory
            if list(shape.gpu_types) != led.gpu_types:
                held = {i for ix in led.gpu_jobs.values() for i in ix}
                if any(i >= len(shape.gpu_types) for i in held):
                    gpus_kept.append(name)  # a job holds a GPU the new config drops
                    continue
                led.gpu_types = list(shape.gpu_types)
                led.gpus_free = set(range(len(led.gpu_types))) - held
        self._order = None
        self.pass_wanted = True
        actions: list[Any] = []
        if kept:
            actions.append(NodesKept(kept, "jobs use them", cause=e.cause))
        if gpus_kept:
            actions.append(NodesKept(gpus_kept, "jobs hold GPUs the new configuration drops", cause=e.cause))
        return actions

    # ---------------------------------------------------------- the pass

    @on(SchedulePass)
    def _on_SchedulePass(self, e: SchedulePass) -> list[Any]:
        self.pass_wanted = False
        if not self.pending:
            return []
        self.passes += 1
        policy, now = e.policy, e.now
        self._fresh = set()
        actions: list[Any] = []
        if self._order is None:
            self._order = sorted(self.pending.values(), key=lambda r: (-r.priority, r.job_id))
        else:
            self._order = [r for r in self._order if r.job_id in self.pending]
        order = self._order
        free_cpus = sum(led.cpus_free for led in self.ledgers.values() if led.usable())
        preempting = policy.preempting()
        reasons = self.reasons
        limits = policy.job_limits()
        running: dict[tuple[int, str], int] = {}
        if limits:
            for h in self.held.values():
                running[(h.uid, h.qos)] = running.get((h.uid, h.qos), 0) + 1
        gates, arrays = self.gates, self.arrays
        array_running: dict[int, int] = {}
        if arrays:  # tasks of limited arrays holding resources, per array
            for jid, (aid, _lim) in arrays.items():
                if jid in self.held:
                    array_running[aid] = array_running.get(aid, 0) + 1
        for req in order:
            if gates and req.job_id in gates:
                reasons[req.job_id] = gates[req.job_id]
                continue
            arr = arrays.get(req.job_id) if arrays else None
            if arr is not None and array_running.get(arr[0], 0) >= arr[1]:
                reasons[req.job_id] = PendingReason.ARRAY_TASK_LIMIT
                continue
            lim = limits.get(req.qos) if limits else None
            if lim is not None and running.get((req.uid, req.qos), 0) >= lim:
                reasons[req.job_id] = PendingReason.QOS_MAX_JOBS_PER_USER
                continue
            if req.job_id in self.reserved:
                rnodes, victims = self.reserved[req.job_id]
                nodes = place(req, self.ledgers, rnodes)
                if nodes is not None:
                    actions.append(self._allocate(req, nodes, now))
                    if arr is not None:
                        array_running[arr[0]] = array_running.get(arr[0], 0) + 1
                    continue
                if not all(self._victim_gone(v) for v in victims):
                    reasons[req.job_id] = PendingReason.WAITING_FOR_PREEMPTION
                    continue
                self._unreserve(req.job_id)  # the victims are gone and it still does not fit
            if free_cpus <= 0 and not (preempting and policy.could_preempt(req)):
                if reasons.get(req.job_id) != PendingReason.RESOURCES:
                    reasons[req.job_id] = PendingReason.RESOURCES
                continue
            parts = policy.partitions
            members = list(parts[req.partition].nodes) if req.partition in parts else []
            if self.reserved_nodes:
                members = [n for n in members if n not in self.reserved_nodes]
            nodes = place(req, self.ledgers, members)
            if nodes is None:
                preempted = self._try_preempt(req, members, policy, now) if preempting else None
                if preempted is not None:
                    actions += preempted
                    reasons[req.job_id] = PendingReason.WAITING_FOR_PREEMPTION
                    if req.job_id in self.reserved:  # suspended victims: maybe it fits now
                        nodes = place(req, self.ledgers, self.reserved[req.job_id][0])
                        if nodes is not None:
                            actions.append(self._allocate(req, nodes, now))
                            if arr is not None:
                                array_running[arr[0]] = array_running.get(arr[0], 0) + 1
                else:
                    reasons[req.job_id] = PendingReason.RESOURCES
                continue
            actions.append(self._allocate(req, nodes, now))
            free_cpus -= req.cpus * len(nodes)
            if arr is not None:
                array_running[arr[0]] = array_running.get(arr[0], 0) + 1
            if lim is not None:
                running[(req.uid, req.qos)] = running.get((req.uid, req.qos), 0) + 1
        self._fresh = set()
        return actions

    def _allocate(self, req: Request, nodes: list[str], now: float) -> Allocate:
        # an exclusive job gets every cpu of its nodes (the smallest node counts)
        cpus = min(self.ledgers[n].cpus_free for n in nodes) if req.exclusive else req.cpus
        gpus: dict[str, list[int]] = {}
        for n in nodes:
            got = self.ledgers[n].take(req.job_id, req.cpus, req.memory, req.exclusive, req.gpus, req.gpu_type)
            if got:
                gpus[n] = got
        del self.pending[req.job_id]
        self.reasons.pop(req.job_id, None)
        cause = self.causes.pop(req.job_id, 0)
        self._unreserve(req.job_id)
        self.held[req.job_id] = Held(req.job_id, req.qos, req.partition, req.uid, now, list(nodes), cpus,
                                     req.memory, req.exclusive, {n: list(g) for n, g in gpus.items()})  # fmt: skip
        self._fresh.add(req.job_id)
        return Allocate(req.job_id, list(nodes), cpus, gpus, cause=cause)

    # ---------------------------------------------------------- preemption

    def _victim_gone(self, job_id: int) -> bool:
        h = self.held.get(job_id)
        return h is None or h.suspended or job_id in self.pending

    def _try_preempt(self, req: Request, members: list[str], policy: Policy, now: float) -> list[Any] | None:
        """Plan; if a plan fits, reserve its nodes first, then tell the victims."""
        if not policy.could_preempt(req):
            return None
        my_part_prio = policy.partition_priority(req.partition)
        q = policy.qos.get(req.qos)
        preemptable = q.preempt if policy.preempt_type == PreemptType.QOS and q is not None else frozenset()
        allowed = [n for n in members if n not in self.reserved_nodes]
        allowed_set = set(allowed)
        nodes = {
            n: NodeFree(n, led.cpus, led.memory, led.cpus_free, led.mem_free, led.usable(), led.exclusive_holder(),
                        list(led.gpu_types), sorted(led.gpus_free))
            for n, led in self.ledgers.items()
        }  # fmt: skip
        cands: list[Candidate] = []
        for jid in sorted(self.held):
            h = self.held[jid]
            if h.ending or h.suspended or jid in self._fresh or not h.nodes or not allowed_set.intersection(h.nodes):
                continue
            cands.append(Candidate(
                jid, h.qos, policy.qos_priority(h.qos), policy.partition_priority(h.partition), h.start_time,
                list(h.nodes), h.cpus, h.memory, h.exclusive, {n: list(ix) for n, ix in h.gpus.items()},
                keeps_gpus=policy.victim_mode(h.qos, h.partition) == PreemptMode.SUSPEND,
            ))  # fmt: skip

        def may_preempt(c: Candidate) -> bool:
            if policy.victim_mode(c.qos, self.held[c.job_id].partition) == PreemptMode.OFF:
                return False
            if now - c.start_time < policy.exempt_time(c.qos):
                return False
            if policy.preempt_type == PreemptType.QOS:
                return c.qos in preemptable
            return c.partition_priority < my_part_prio

        want = Want(req.job_id, req.cpus, req.memory, max(req.nnodes, len(req.nodelist)), req.exclusive,
                    allowed, list(req.nodelist), req.gpus, req.gpu_type)  # fmt: skip
        plan = plan_preemption(want, nodes, cands, may_preempt)
        if plan is None or not plan.victims:
            return None
        # reserve first: no other job may take these nodes while the victims go
        self.reserved[req.job_id] = (list(plan.nodes), list(plan.victims))
        for n in plan.nodes:
            self.reserved_nodes[n] = req.job_id
        cause = self.causes.get(req.job_id, 0)
        actions: list[Any] = [Reserve(req.job_id, list(plan.nodes), list(plan.victims), cause=cause)]
        reason = f"Preempted by job {req.job_id}"
        for vid in plan.victims:
            h = self.held[vid]
            mode = policy.victim_mode(h.qos, h.partition)
            if mode == PreemptMode.SUSPEND:
                self._set_suspended(vid, True)
                self.lent.setdefault(req.job_id, []).append(vid)
                actions.append(Suspend(vid, req.job_id, reason, cause=cause))
            else:
                h.ending = True  # told to end: no other preemptor counts on it
                actions.append(Preempt(vid, req.job_id, mode, policy.grace(h.qos, h.partition), reason, cause=cause))
        return actions

    # ---------------------------------------------------------- helpers

    def _set_suspended(self, job_id: int, suspended: bool) -> None:
        """A suspended job keeps its place and GPUs on its nodes but lends its cpus and memory."""
        h = self.held.get(job_id)
        if h is not None:
            h.suspended = suspended
        for n in h.nodes if h is not None else self.ledgers:
            led = self.ledgers.get(n)
            if led is not None:
                led.lend(job_id, suspended)

    def _resume_lent(self, preemptor: int, cause: int) -> list[Any]:
        out: list[Any] = []
        for victim in self.lent.pop(preemptor, []):
            self._set_suspended(victim, False)
            out.append(Resume(victim, cause=cause))
        return out

    def _unreserve(self, preemptor: int) -> None:
        nodes, _ = self.reserved.pop(preemptor, ([], []))
        for n in nodes:
            if self.reserved_nodes.get(n) == preemptor:
                del self.reserved_nodes[n]

    # ---------------------------------------------------------- invariants

    def validate_state(self) -> None:
        """Raise AssertionError naming the first broken invariant."""

        def check(ok: bool, what: str) -> None:
            if not ok:
                raise AssertionError(what)

        on_ledgers: dict[int, set[str]] = {}
        for name, led in self.ledgers.items():
            lent_cpus = sum(c for j, (c, _, _) in led.jobs.items() if j not in led.suspended)
            lent_mem = sum(mem for j, (_, mem, _) in led.jobs.items() if j not in led.suspended)
            check(led.cpus_free == led.cpus - lent_cpus, f"{name}: cpus_free {led.cpus_free} != {led.cpus} - {lent_cpus}")
            check(led.mem_free == led.memory - lent_mem, f"{name}: mem_free {led.mem_free} != {led.memory} - {lent_mem}")
            check(led.suspended <= set(led.jobs), f"{name}: suspended jobs not on the node")
            check(set(led.gpu_jobs) <= set(led.jobs), f"{name}: GPUs held by jobs not on the node")
            seen: set[int] = set()
            for j, ix in led.gpu_jobs.items():
                check(not (seen & set(ix)), f"{name}: GPU held twice (job {j})")
                seen |= set(ix)
            check(not (seen & led.gpus_free), f"{name}: a held GPU is also free")
            check(seen | led.gpus_free == set(range(len(led.gpu_types))), f"{name}: GPUs lost or invented")
            for j in led.jobs:
                on_ledgers.setdefault(j, set()).add(name)
        check(set(self.reasons) == set(self.pending) == set(self.causes), "reasons, causes and pending differ")
        both = set(self.pending) & set(on_ledgers)
        check(not both, f"jobs both pending and holding: {sorted(both)}")
        check(set(self.held) == set(on_ledgers), "the held view and the ledgers differ")
        for jid, h in self.held.items():
            check(set(h.nodes) == on_ledgers[jid], f"job {jid}: nodes {h.nodes} != ledgers {on_ledgers[jid]}")
            for n in h.nodes:
                led = self.ledgers[n]
                check((jid in led.suspended) == h.suspended, f"job {jid}: suspended on {n} differs")
                check(sorted(h.gpus.get(n, [])) == sorted(led.gpu_jobs.get(jid, [])), f"job {jid}: GPUs on {n} differ")
        for p, (nodes, _victims) in self.reserved.items():
            check(p in self.pending, f"reservation of job {p}, not pending")
            for n in nodes:
                check(self.reserved_nodes.get(n) == p, f"node {n} of job {p}'s reservation not kept for it")
        for n, p in self.reserved_nodes.items():
            check(p in self.reserved and n in self.reserved[p][0], f"node {n} kept for job {p} without a reservation")
        victims_seen: set[int] = set()
        for p, victims in self.lent.items():
            for v in victims:
                check(v not in victims_seen, f"job {v} lent twice")
                victims_seen.add(v)
                h = self.held.get(v)
                check(h is not None and h.suspended, f"job {v} lent to {p} but not suspended")
