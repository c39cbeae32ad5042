"""The scheduler actor: the pending queue and every node's resource ledger.

Scheduling is event-driven: any change (a job queued, resources freed, a node
up) schedules one pass on the next loop turn; there is no timer. A pass walks
the queue in priority order and places what fits (``place`` is pure). A job
that does not fit may trigger preemption (``crane.core.preempt``): the freed
resources are reserved for the preemptor before any victim is touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from crane.actors.base import Actor
from crane.core import events as ev

log = logging.getLogger("crane.scheduler")


@dataclass(slots=True)
class Request:
    job_id: int
    partition: str
    cpus: int
    memory: int
    nnodes: int
    exclusive: bool
    nodelist: list[str]
    qos: str
    priority: int
    uid: int
    gpus: int = 0  # per node
    gpu_type: str = ""  # "" = any type


@dataclass(slots=True)
class NodeLedger:
    name: str
    cpus: int
    memory: int
    cpus_free: int
    mem_free: int
    up: bool = False
    drain: bool = False
    reason: str = ""
    jobs: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # job -> (cpus, mem, exclusive)
    suspended: set[int] = field(default_factory=set)
    gpu_types: list[str] = field(default_factory=list)  # the node's GPUs: type by index
    gpus_free: set[int] = field(default_factory=set)  # indices no (running) job holds
    gpu_jobs: dict[int, list[int]] = field(default_factory=dict)  # job -> GPU indices it holds

    def free_gpus(self, gpu_type: str = "") -> list[int]:
        """Free GPU indices of ``gpu_type`` (any when ""), lowest first."""
        return sorted(i for i in self.gpus_free if not gpu_type or self.gpu_types[i] == gpu_type)

    def gpu_count(self, gpu_type: str = "") -> int:
        return sum(1 for t in self.gpu_types if not gpu_type or t == gpu_type)

    def usable(self) -> bool:
        return self.up and not self.drain

    def exclusive_holder(self) -> int | None:
        for jid, (_, _, excl) in self.jobs.items():
            if excl and jid not in self.suspended:
                return jid
        return None

    def fits(self, cpus: int, memory: int, exclusive: bool, gpus: int = 0, gpu_type: str = "") -> bool:
        if not self.usable() or self.exclusive_holder() is not None:
            return False
        if gpus > 0 and len(self.free_gpus(gpu_type)) < gpus:
            return False
        if exclusive:
            return not (set(self.jobs) - self.suspended)
        return self.cpus_free >= cpus and (memory == 0 or self.mem_free >= memory)

    def take(self, job_id: int, cpus: int, memory: int, exclusive: bool, gpus: int = 0,
             gpu_type: str = "", indices: list[int] | None = None) -> list[int]:  # fmt: skip
        """Hold the resources; returns the GPU indices given: ``indices`` when
        known (recovery), all free ones for an exclusive job, else the lowest
        free ones of ``gpu_type``."""
        if exclusive:
            cpus, memory = self.cpus_free, self.mem_free
        self.jobs[job_id] = (cpus, memory, exclusive)
        self.cpus_free -= cpus
        self.mem_free -= memory
        if indices is not None:
            got = sorted(i for i in set(indices) if 0 <= i < len(self.gpu_types))
        elif exclusive:
            got = sorted(self.gpus_free)
        else:
            got = self.free_gpus(gpu_type)[:gpus] if gpus > 0 else []
        if got:
            self.gpu_jobs[job_id] = got
            self.gpus_free.difference_update(got)
        return got

    def give(self, job_id: int) -> bool:
        got = self.jobs.pop(job_id, None)
        if got is None:
            return False
        gpus = self.gpu_jobs.pop(job_id, [])
        if job_id not in self.suspended:
            self.cpus_free += got[0]
            self.mem_free += got[1]
            self.gpus_free.update(gpus)
        self.suspended.discard(job_id)
        return True

    def lend(self, job_id: int, suspended: bool) -> None:
        """A suspended job keeps its place and its GPUs (its processes keep the
        devices open, as in Slurm) but lends its cpus and memory."""
        if job_id not in self.jobs or suspended == (job_id in self.suspended):
            return
        c, mem, _ = self.jobs[job_id]
        sign = 1 if suspended else -1
        self.cpus_free += sign * c
        self.mem_free += sign * mem
        if suspended:
            self.suspended.add(job_id)
        else:
            self.suspended.discard(job_id)

    def gpu_row(self) -> dict[str, Any]:
        from crane.config import gres_text

        total = len(self.gpu_types)
        return {"gres": gres_text(self.gpu_types), "gpus": total,
                "gpus_used": total - len(self.gpus_free), "gpus_free": len(self.gpus_free)}  # fmt: skip

    def state(self) -> str:
        if not self.up:
            return "DOWN"
        if self.drain:
            return "DRAIN" if not self.jobs else "DRAINING"
        if not self.jobs:
            return "IDLE"
        return "ALLOC" if self.cpus_free <= 0 or self.exclusive_holder() else "MIX"


def place(req: Request, ledgers: dict[str, NodeLedger], members: list[str]) -> list[str] | None:
    """Pick ``req.nnodes`` nodes of ``members`` that fit the request, the -w
    nodes first. Pure: reads the ledgers, changes nothing."""
    required = [n for n in dict.fromkeys(req.nodelist) if n in ledgers]
    if len(required) != len(set(req.nodelist)) or any(n not in members for n in required):
        return None
    chosen = [n for n in required if ledgers[n].fits(req.cpus, req.memory, req.exclusive, req.gpus, req.gpu_type)]
    if len(chosen) != len(required):
        return None
    if len(chosen) >= req.nnodes:
        return chosen[: max(req.nnodes, len(required))]
    for n in members:
        if n not in chosen and ledgers[n].fits(req.cpus, req.memory, req.exclusive, req.gpus, req.gpu_type):
            chosen.append(n)
            if len(chosen) == req.nnodes:
                return chosen
    return None


class Scheduler(Actor):
    __slots__ = ("ctl", "ledgers", "pending", "reasons", "_pass_scheduled", "reserved",
                 "reserved_nodes", "lent", "passes", "_order")  # fmt: skip

    def __init__(self, ctl: Any) -> None:
        super().__init__()
        self.ctl = ctl
        cfg = ctl.cfg
        self.ledgers = {
            n.name: NodeLedger(n.name, n.cpus, n.memory, n.cpus, n.memory,
                               gpu_types=[g.type for g in n.gpus], gpus_free={g.index for g in n.gpus})
            for n in cfg.nodes.values()
        }  # fmt: skip
        self.pending: dict[int, Request] = {}
        self.reasons: dict[int, str] = {}
        self.reserved: dict[int, tuple[list[str], list[int]]] = {}  # preemptor -> (nodes, victims)
        self.reserved_nodes: dict[str, int] = {}  # node -> preemptor it is kept for
        self.lent: dict[int, list[int]] = {}  # preemptor -> jobs suspended for it
        self._pass_scheduled = False
        self.passes = 0
        self._order: list[Request] | None = None  # pending in priority order; None = re-sort

    def receive(self, msg: Any) -> None:
        if isinstance(msg, ev.Enqueue):
            req: Request = msg.req
            self.pending[req.job_id] = req
            self.reasons[req.job_id] = "Priority"
            self._order = None
        elif isinstance(msg, ev.Dequeue):
            # nothing was freed: no pass needed (a mass cancel of pending jobs stays cheap)
            self.pending.pop(msg.job_id, None)
            self.reasons.pop(msg.job_id, None)
            if msg.job_id not in self.reserved:
                return
            self._unreserve(msg.job_id)  # a preemptor cancelled while its victims die
        elif isinstance(msg, ev.FreeNode):
            led = self.ledgers.get(msg.node)
            if led is None or not led.give(msg.job_id):
                return
            if msg.job_id in self.lent and not any(msg.job_id in x.jobs for x in self.ledgers.values()):
                for victim in self.lent.pop(msg.job_id):  # the preemptor is done: resume
                    self._set_suspended(victim, False)
                    self.ctl.job_event(victim, ev.ControlEv("resume"))
        elif isinstance(msg, ev.NodeStatus):
            led = self.ledgers.get(msg.node)
            if led is None:
                return
            if msg.up is not None:
                led.up = msg.up
            if msg.drain is not None:
                led.drain = msg.drain
                led.reason = msg.reason if msg.drain else ""
                self.ctl.store.put_node(led.name, {"drain": led.drain, "reason": led.reason})
        elif isinstance(msg, ev.Suspended):
            self._set_suspended(msg.job_id, msg.suspended)
        else:
            log.warning("scheduler: unexpected %r", msg)
            return
        self.request_pass()

    def _set_suspended(self, job_id: int, suspended: bool) -> None:
        """A suspended job keeps its place on its nodes but lends its cpus, memory and GPUs."""
        for led in self.ledgers.values():
            led.lend(job_id, suspended)

    def reserve(self, preemptor: int, nodes: list[str], victims: list[int]) -> None:
        self.reserved[preemptor] = (list(nodes), list(victims))
        for n in nodes:
            self.reserved_nodes[n] = preemptor

    def lend(self, preemptor: int, victim: int) -> None:
        self._set_suspended(victim, True)
        self.lent.setdefault(preemptor, []).append(victim)

    def _unreserve(self, preemptor: int) -> None:
        nodes, _ = self.reserved.pop(preemptor, ([], []))
        for n in nodes:
            if self.reserved_nodes.get(n) == preemptor:
                del self.reserved_nodes[n]

    def request_pass(self) -> None:
        if not self._pass_scheduled:
            self._pass_scheduled = True
            assert Actor._loop is not None
            Actor._loop.call_soon(self._schedule)

    def _schedule(self) -> None:
        self._pass_scheduled = False
        if not self.pending:
            return
        self.passes += 1
        parts = self.ctl.cfg.partitions
        if self._order is None:
            self._order = sorted(self.pending.values(), key=lambda r: (-r.priority, r.job_id))
        else:
            self._order = [r for r in self._order if r.job_id in self.pending]
        order = self._order
        free_cpus = sum(led.cpus_free for led in self.ledgers.values() if led.usable())
        preempting = self.ctl.preemption_enabled()
        reasons = self.reasons
        limits = self.ctl.qos_job_limits()  # QoS MaxJobsPerUser, only where set
        running = self.ctl.running_per_user_qos() if limits else {}
        for req in order:
            lim = limits.get(req.qos) if limits else None
            if lim is not None and running.get((req.uid, req.qos), 0) >= lim:
                reasons[req.job_id] = "QOSMaxJobsPerUserLimit"
                continue
            if req.job_id in self.reserved:
                rnodes, victims = self.reserved[req.job_id]
                nodes = place(req, self.ledgers, rnodes)
                if nodes is not None:
                    self._allocate(req, nodes)
                    continue
                if not all(self.ctl.victim_gone(v) for v in victims):
                    self.reasons[req.job_id] = "Waiting for preemption"
                    continue
                self._unreserve(req.job_id)  # the victims are gone and it still does not fit
            if free_cpus <= 0 and not (preempting and self.ctl.could_preempt(req)):
                if reasons.get(req.job_id) != "Resources":
                    reasons[req.job_id] = "Resources"
                continue
            members = parts[req.partition].nodes if req.partition in parts else []
            if self.reserved_nodes:
                members = [n for n in members if n not in self.reserved_nodes]
            nodes = place(req, self.ledgers, members)
            if nodes is None:
                if preempting and self.ctl.try_preempt(req, self.ledgers, members):
                    self.reasons[req.job_id] = "Waiting for preemption"
                    if req.job_id in self.reserved:  # suspended victims: maybe it fits now
                        nodes = place(req, self.ledgers, self.reserved[req.job_id][0])
                        if nodes is not None:
                            self._allocate(req, nodes)
                else:
                    self.reasons[req.job_id] = "Resources"
                continue
            self._allocate(req, nodes)
            free_cpus -= req.cpus * len(nodes)
            if lim is not None:
                running[(req.uid, req.qos)] = running.get((req.uid, req.qos), 0) + 1

    def _allocate(self, req: Request, nodes: list[str]) -> None:
        # an exclusive job gets every cpu of its nodes (the smallest node counts)
        cpus = min(self.ledgers[n].cpus_free for n in nodes) if req.exclusive else req.cpus
        gpus: dict[str, list[int]] = {}
        for n in nodes:
            got = self.ledgers[n].take(req.job_id, req.cpus, req.memory, req.exclusive, req.gpus, req.gpu_type)
            if got:
                gpus[n] = got
        del self.pending[req.job_id]
        self.reasons.pop(req.job_id, None)
        self._unreserve(req.job_id)
        self.ctl.job_event(req.job_id, ev.Allocated(nodes, cpus, gpus))

    # restore allocations of running jobs after a controller restart
    def adopt(self, job_id: int, nodes: list[str], cpus: int, memory: int, exclusive: bool, suspended: bool,
              gpu_alloc: dict[str, list[int]] | None = None) -> None:  # fmt: skip
        for n in nodes:
            led = self.ledgers.get(n)
            if led is not None and job_id not in led.jobs:
                led.take(job_id, cpus, memory, exclusive, indices=list((gpu_alloc or {}).get(n) or []))
                if suspended:
                    led.lend(job_id, True)

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for led in self.ledgers.values():
            out.append({
                "name": led.name, "state": led.state(), "cpus": led.cpus, "cpus_free": led.cpus_free,
                "cpus_alloc": led.cpus - led.cpus_free, "memory": led.memory, "mem_free": led.mem_free,
                "reason": led.reason, "jobs": sorted(led.jobs), "time": time.time(), **led.gpu_row(),
            })  # fmt: skip
        return out
