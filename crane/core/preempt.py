"""Victim selection for QoS / partition preemption (SPEC §6).

The scheduling machine (:mod:`crane.core.scheduling`) calls
:func:`plan_preemption` when a pending job cannot be placed.  Everything
here is pure: the caller passes a snapshot of the node ledger and of the
running/suspended jobs, plus a predicate saying which jobs
the pending job may preempt (QoS ``Preempt`` lists, partition priority tiers,
``PreemptExemptTime`` ...).  The result is either a :class:`Plan` (victims to
cancel, nodes the pending job then gets) or ``None`` -- in which case nothing
must be killed.

Accounting rules:

* removing a victim gives back ``cpus``/``memory`` on *each* of its nodes;
  an ``exclusive`` victim gives back the whole node (capped at the totals);
* a node fits the want when it is usable, has no exclusive holder left and
  has ``cpus_free >= want.cpus`` and (``want.memory == 0`` or
  ``mem_free >= want.memory``);
* an exclusive want additionally needs the node empty, i.e.
  ``cpus_free == cpus_total`` after the removals;
* GPUs: a victim gives back the GPU indices it holds on the node (an
  exclusive victim all of them); the node fits a want of ``gpus`` GPUs of
  ``gpu_type`` ("" = any) when at least that many free indices are of that
  type. So a victim is worth choosing only if it frees what the node lacks:
  a job holding only CPUs never helps a node that lacks GPUs, and one holding
  GPUs of another type never helps either (the irreducibility passes below
  drop such victims).

Selection: preemptable candidates are ordered lowest QoS priority first, then
lowest partition priority, then youngest (latest ``start_time``), then highest
job id.  Nodes are chosen one at a time (required nodes first) by the fewest
*additional* victims needed (then the lowest summed priorities, then the
caller's preference order); each node's additional victims are picked
greedily in that order and made irreducible.  A final pass over the union
drops every victim without which the want still fits, so the returned set is
irreducible: removing any single victim makes the want not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Candidate",
    "NodeFree",
    "Plan",
    "Want",
    "fits_after",
    "node_fits_after",
    "plan_preemption",
    "victim_order_key",
]


@dataclass(slots=True)
class NodeFree:
    """One node's ledger as the scheduler sees it now."""

    name: str
    cpus_total: int
    mem_total: int  # bytes
    cpus_free: int
    mem_free: int
    usable: bool = True  # up and not drained
    exclusive_job: int | None = None  # a job holding the node exclusively
    gpu_types: list[str] = field(default_factory=list)  # the node's GPUs: type by index ("" untyped)
    gpus_free: list[int] = field(default_factory=list)  # indices no running job holds


@dataclass(slots=True)
class Candidate:
    """A running (or suspended) job that might be preempted."""

    job_id: int
    qos: str
    qos_priority: int
    partition_priority: int
    start_time: float
    nodes: list[str]
    cpus: int  # per node
    memory: int  # per node, bytes
    exclusive: bool
    gpus: dict[str, list[int]] = field(default_factory=dict)  # node -> GPU indices held there
    keeps_gpus: bool = False  # preempted by SUSPEND: it keeps its GPUs (frees only CPUs and memory)


@dataclass(slots=True)
class Want:
    """The pending job."""

    job_id: int
    cpus: int  # per node
    memory: int  # per node (0 = none)
    nnodes: int
    exclusive: bool  # needs whole empty nodes
    allowed_nodes: list[str]  # partition nodes (intersected with -w), in preference order
    required_nodes: list[str]  # -w nodes that must all be in the allocation (may be empty)
    gpus: int = 0  # per node
    gpu_type: str = ""  # "" = any type


@dataclass(slots=True)
class Plan:
    """Cancel ``victims`` (in this order), then start the want on ``nodes``."""

    victims: list[int]  # job ids, in the order chosen
    nodes: list[str]  # the nodes the pending job will get once the victims are gone


# --------------------------------------------------------------------------- ordering


def victim_order_key(c: Candidate) -> tuple[int, int, float, int]:
    """Sort key: lowest QoS priority, lowest partition priority, youngest, highest id."""
    return (c.qos_priority, c.partition_priority, -c.start_time, -c.job_id)


# --------------------------------------------------------------------------- fitting


def _dedupe(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for n in names:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _node_fits(
    want: Want,
    node: NodeFree,
    on_node: Sequence[Candidate],
    victims: Collection[int],
) -> bool:
    """Whether ``node`` fits ``want`` once the victims among ``on_node`` are gone.

    ``on_node`` are the candidates running on ``node`` (others are ignored).
    """
    if not node.usable:
        return False
    cpus = node.cpus_free
    mem = node.mem_free
    gpus = set(node.gpus_free) if want.gpus > 0 else set()
    holders: set[int] = set()
    if node.exclusive_job is not None:
        holders.add(node.exclusive_job)
    for c in on_node:
        if c.job_id in victims:
            if c.exclusive:
                cpus = node.cpus_total
                mem = node.mem_total
            else:
                cpus += c.cpus
                mem += c.memory
            if want.gpus > 0 and not c.keeps_gpus:
                gpus.update(range(len(node.gpu_types)) if c.exclusive else c.gpus.get(node.name, ()))
        elif c.exclusive:
            holders.add(c.job_id)
    cpus = min(cpus, node.cpus_total)
    mem = min(mem, node.mem_total)
    if holders - set(victims):
        return False
    if cpus < want.cpus:
        return False
    if want.memory > 0 and mem < want.memory:
        return False
    if want.gpus > 0:
        n = len(node.gpu_types)
        if sum(1 for i in gpus if 0 <= i < n and (not want.gpu_type or node.gpu_types[i] == want.gpu_type)) < want.gpus:
            return False
    return not (want.exclusive and cpus != node.cpus_total)


def _by_node(candidates: Iterable[Candidate]) -> dict[str, list[Candidate]]:
    out: dict[str, list[Candidate]] = {}
    for c in candidates:
        for n in _dedupe(c.nodes):
            out.setdefault(n, []).append(c)
    return out


def node_fits_after(
    want: Want,
    node: NodeFree,
    candidates: Iterable[Candidate],
    victims: Collection[int],
) -> bool:
    """Whether the single ``node`` fits ``want`` once ``victims`` are gone."""
    on_node = [c for c in candidates if node.name in c.nodes]
    return _node_fits(want, node, on_node, victims)


def _select(
    want: Want,
    nodes: dict[str, NodeFree],
    by_node: dict[str, list[Candidate]],
    victims: Collection[int],
) -> list[str] | None:
    allowed = _dedupe(want.allowed_nodes)
    allowed_set = set(allowed)
    required = _dedupe(want.required_nodes)
    if want.nnodes < 1 or len(required) > want.nnodes:
        return None

    def ok(name: str) -> bool:
        node = nodes.get(name)
        return node is not None and _node_fits(want, node, by_node.get(name, []), victims)

    chosen: list[str] = []
    for name in required:
        if name not in allowed_set or not ok(name):
            return None
        chosen.append(name)
    taken = set(chosen)
    for name in allowed:
        if len(chosen) >= want.nnodes:
            break
        if name not in taken and ok(name):
            chosen.append(name)
            taken.add(name)
    return chosen if len(chosen) == want.nnodes else None


def fits_after(
    want: Want,
    nodes: dict[str, NodeFree],
    candidates: Iterable[Candidate],
    victims: Collection[int],
) -> list[str] | None:
    """The nodes ``want`` would get once ``victims`` are gone, or ``None``.

    ``want.nnodes`` fitting nodes are taken from ``want.allowed_nodes``: every
    ``required_nodes`` entry first (each must be allowed and fit), then the
    other fitting nodes in preference order.  Victim ids not among
    ``candidates`` free nothing.
    """
    return _select(want, nodes, _by_node(candidates), set(victims))


# --------------------------------------------------------------------------- planning


def _extra_for_node(
    want: Want,
    node: NodeFree,
    on_node: Sequence[Candidate],
    tryable: Sequence[Candidate],
    chosen: set[int],
) -> list[Candidate] | None:
    """Minimal (irreducible) extra victims making ``node`` fit given ``chosen``.

    ``on_node`` are all jobs on the node (for the accounting), ``tryable`` the
    preemptable ones, in victim order.  Greedy in that order, then drop (in
    reverse order of addition) every extra victim the node still fits
    without.  ``None`` when even all preemptable jobs on the node are not
    enough.
    """
    current = set(chosen)
    added: list[Candidate] = []
    if not _node_fits(want, node, on_node, current):
        for c in tryable:
            if c.job_id in current:
                continue
            current.add(c.job_id)
            added.append(c)
            if _node_fits(want, node, on_node, current):
                break
        else:
            return None
    for c in reversed(list(added)):
        current.discard(c.job_id)
        if _node_fits(want, node, on_node, current):
            added.remove(c)
        else:
            current.add(c.job_id)
    return added


def plan_preemption(
    want: Want,
    nodes: dict[str, NodeFree],
    candidates: list[Candidate],
    may_preempt: Callable[[Candidate], bool],
) -> Plan | None:
    """Choose the jobs to preempt so that ``want`` can start, or ``None``.

    Only candidates with ``may_preempt(c)`` are ever chosen.  If the want
    already fits, the plan has no victims.  A returned plan always fits
    (checked with :func:`fits_after`) and its victim set is irreducible.
    """
    by_node_all = _by_node(candidates)
    seen_ids: set[int] = set()
    pool: list[Candidate] = []
    for c in candidates:
        if c.job_id not in seen_ids and may_preempt(c):
            seen_ids.add(c.job_id)
            pool.append(c)
    pool.sort(key=victim_order_key)
    pool_ids = {c.job_id for c in pool}

    free_fit = _select(want, nodes, by_node_all, ())
    if free_fit is not None:
        return Plan(victims=[], nodes=free_fit)
    # Cheap feasibility test before any search: even all preemptable jobs gone?
    if _select(want, nodes, by_node_all, pool_ids) is None:
        return None

    # Preemptable jobs per node, in victim order; other jobs stay put.
    ordered_on: dict[str, list[Candidate]] = {}
    for c in pool:
        for n in _dedupe(c.nodes):
            ordered_on.setdefault(n, []).append(c)

    allowed = _dedupe(want.allowed_nodes)
    pref = {n: i for i, n in enumerate(allowed)}
    required = _dedupe(want.required_nodes)

    def extra(name: str, chosen: set[int]) -> list[Candidate] | None:
        node = nodes.get(name)
        if node is None:
            return None
        # Non-preemptable jobs on the node matter (exclusive holders), so
        # account with every candidate on it but try only the pool ones.
        return _extra_for_node(
            want, node, by_node_all.get(name, []), ordered_on.get(name, []), chosen
        )

    victims: list[Candidate] = []
    chosen_ids: set[int] = set()
    picked: list[str] = []

    for name in required:
        add = extra(name, chosen_ids)
        if add is None:  # pragma: no cover - ruled out by the feasibility test
            return None
        picked.append(name)
        for c in add:
            victims.append(c)
            chosen_ids.add(c.job_id)

    while len(picked) < want.nnodes:
        best: tuple[tuple[int, int, int, int], str, list[Candidate]] | None = None
        for name in allowed:
            if name in picked:
                continue
            add = extra(name, chosen_ids)
            if add is None:
                continue
            cost = (
                len(add),
                sum(c.qos_priority for c in add),
                sum(c.partition_priority for c in add),
                pref[name],
            )
            if best is None or cost < best[0]:
                best = (cost, name, add)
        if best is None:  # pragma: no cover - ruled out by the feasibility test
            return None
        _, name, add = best
        picked.append(name)
        for c in add:
            victims.append(c)
            chosen_ids.add(c.job_id)

    # Final irreducibility pass on the union (reverse order of addition).
    # Fitting is monotone in the victim set, so one pass suffices.
    for c in reversed(list(victims)):
        chosen_ids.discard(c.job_id)
        if _select(want, nodes, by_node_all, chosen_ids) is not None:
            victims.remove(c)
        else:
            chosen_ids.add(c.job_id)

    final = _select(want, nodes, by_node_all, chosen_ids)
    if final is None:  # pragma: no cover - defensive: never kill for nothing
        return None
    return Plan(victims=[c.job_id for c in victims], nodes=final)
