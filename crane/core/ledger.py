"""Every node's resource ledger and the pure placement of one request.

``NodeLedger`` holds what each job holds on one node (cpus, memory, GPU
indices); a suspended job keeps its place and its GPUs but lends its cpus and
memory. ``place`` picks nodes for a ``Request`` and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crane.core.states import NodeState


def gres_text(types: list[str]) -> str:
    """GPUs by type, as Slurm prints them: "gpu:2", "gpu:a100:1,gpu:v100:1", "" for none."""
    counts: dict[str, int] = {}
    for t in types:
        counts[t] = counts.get(t, 0) + 1
    return ",".join(f"gpu:{t}:{n}" if t else f"gpu:{n}" for t, n in counts.items())


@dataclass(slots=True)
class Request:
    """What a pending job asks the scheduler for."""

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
    reason: str = ""  # why drained
    down_reason: str = ""  # why DOWN ("no heartbeat for 30s", "outbox full (N messages)"); "" while up
    jobs: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # job -> (cpus, mem, exclusive)
    suspended: set[int] = field(default_factory=set)
    gpu_types: list[str] = field(default_factory=list)  # the node's GPUs: type by index
    gpus_free: set[int] = field(default_factory=set)  # indices no job holds
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
        known (recovery; only those still free), all free ones for an
        exclusive job, else the lowest free ones of ``gpu_type``."""
        if exclusive:
            cpus, memory = self.cpus_free, self.mem_free
        self.jobs[job_id] = (cpus, memory, exclusive)
        self.cpus_free -= cpus
        self.mem_free -= memory
        if indices is not None:
            got = sorted(i for i in set(indices) if i in self.gpus_free)
        elif exclusive:
            got = sorted(self.gpus_free)
        else:
            got = self.free_gpus(gpu_type)[:gpus] if gpus > 0 else []
        if got:
            self.gpu_jobs[job_id] = got
            self.gpus_free.difference_update(got)
        return got

    def give(self, job_id: int) -> bool:
        """The job left the node: its cpus and memory (unless lent while
        suspended) and its GPUs (a suspended job kept them) are free again."""
        got = self.jobs.pop(job_id, None)
        if got is None:
            return False
        self.gpus_free.update(self.gpu_jobs.pop(job_id, []))
        if job_id not in self.suspended:
            self.cpus_free += got[0]
            self.mem_free += got[1]
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
        """The node's GPUs as cinfo shows them."""
        total = len(self.gpu_types)
        return {"gres": gres_text(self.gpu_types), "gpus": total,
                "gpus_used": total - len(self.gpus_free), "gpus_free": len(self.gpus_free)}  # fmt: skip

    def state(self) -> NodeState:
        if not self.up:
            return NodeState.DOWN
        if self.drain:
            return NodeState.DRAIN if not self.jobs else NodeState.DRAINING
        if not self.jobs:
            return NodeState.IDLE
        return NodeState.ALLOC if self.cpus_free <= 0 or self.exclusive_holder() else NodeState.MIX


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
