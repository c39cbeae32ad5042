from __future__ import annotations

import copy
from collections.abc import Callable, Collection

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crane.core.preempt import (
    Candidate,
    NodeFree,
    Plan,
    Want,
    fits_after,
    node_fits_after,
    plan_preemption,
    victim_order_key,
)

GiB = 1024**3


# --------------------------------------------------------------------------- helpers


def node(
    name: str,
    cpus: int = 4,
    free: int = 0,
    mem: int = 8 * GiB,
    mem_free: int | None = None,
    usable: bool = True,
    exclusive_job: int | None = None,
) -> NodeFree:
    return NodeFree(
        name=name,
        cpus_total=cpus,
        mem_total=mem,
        cpus_free=free,
        mem_free=mem if mem_free is None else mem_free,
        usable=usable,
        exclusive_job=exclusive_job,
    )


def cand(
    job_id: int,
    nodes: list[str],
    cpus: int,
    *,
    memory: int = 0,
    qos: str = "low",
    qos_priority: int = 100,
    partition_priority: int = 0,
    start: float = 0.0,
    exclusive: bool = False,
) -> Candidate:
    return Candidate(
        job_id=job_id,
        qos=qos,
        qos_priority=qos_priority,
        partition_priority=partition_priority,
        start_time=start,
        nodes=nodes,
        cpus=cpus,
        memory=memory,
        exclusive=exclusive,
    )


def want(
    cpus: int = 1,
    *,
    memory: int = 0,
    nnodes: int = 1,
    exclusive: bool = False,
    allowed: list[str] | None = None,
    required: list[str] | None = None,
) -> Want:
    return Want(
        job_id=999,
        cpus=cpus,
        memory=memory,
        nnodes=nnodes,
        exclusive=exclusive,
        allowed_nodes=["n1"] if allowed is None else allowed,
        required_nodes=[] if required is None else required,
    )


def cluster(*ns: NodeFree) -> dict[str, NodeFree]:
    return {n.name: n for n in ns}


def always(_: Candidate) -> bool:
    return True


def check_plan(
    w: Want,
    nodes: dict[str, NodeFree],
    cands: list[Candidate],
    may: Callable[[Candidate], bool],
    plan: Plan,
) -> None:
    """Every invariant a returned plan must satisfy."""
    by_id = {c.job_id: c for c in cands}
    assert len(set(plan.victims)) == len(plan.victims)
    for v in plan.victims:
        assert v in by_id and may(by_id[v])
    got = fits_after(w, nodes, cands, plan.victims)
    assert got is not None
    assert got == plan.nodes
    assert len(plan.nodes) == w.nnodes == len(set(plan.nodes))
    assert set(w.required_nodes) <= set(plan.nodes)
    assert set(plan.nodes) <= set(w.allowed_nodes)
    for n in plan.nodes:
        assert node_fits_after(w, nodes[n], cands, plan.victims)
    assert_irreducible(w, nodes, cands, plan.victims)
    if plan.victims:
        assert fits_after(w, nodes, cands, []) is None


def assert_irreducible(
    w: Want, nodes: dict[str, NodeFree], cands: list[Candidate], victims: Collection[int]
) -> None:
    for v in victims:
        rest = [x for x in victims if x != v]
        assert fits_after(w, nodes, cands, rest) is None, f"victim {v} is not needed"


def plan_ok(
    w: Want,
    nodes: dict[str, NodeFree],
    cands: list[Candidate],
    may: Callable[[Candidate], bool] = always,
) -> Plan:
    plan = plan_preemption(w, nodes, cands, may)
    assert plan is not None
    check_plan(w, nodes, cands, may, plan)
    return plan


# --------------------------------------------------------------------------- examples


def test_seed_example_exclusive_background_job_is_preempted() -> None:
    # cbatch -p CPU --exclusive -q Background long_job.sh ; then -q Interactive wants 1 cpu.
    nodes = cluster(node("n1", cpus=4, free=0, mem_free=0, exclusive_job=10))
    bg = cand(10, ["n1"], 1, qos="Background", qos_priority=100, exclusive=True)
    plan = plan_ok(want(1), nodes, [bg], lambda c: c.qos == "Background")
    assert plan == Plan(victims=[10], nodes=["n1"])


def test_already_fits_needs_no_victims() -> None:
    nodes = cluster(node("n1", free=0), node("n2", free=2))
    cands = [cand(1, ["n1"], 4)]
    plan = plan_ok(want(2, allowed=["n1", "n2"]), nodes, cands)
    assert plan == Plan(victims=[], nodes=["n2"])


def test_several_small_jobs_youngest_big_job_alone_suffices() -> None:
    # 4 cpus, 0 free: A=1, B=1, C=2 cpus, same priority; C is the youngest.
    nodes = cluster(node("n1", cpus=4, free=0))
    cands = [
        cand(1, ["n1"], 1, start=10),
        cand(2, ["n1"], 1, start=20),
        cand(3, ["n1"], 2, start=30),
    ]
    plan = plan_ok(want(2), nodes, cands)
    assert plan.victims == [3]


def test_several_small_jobs_youngest_first_then_irreducible() -> None:
    # The two 1-cpu jobs are the youngest: both go (least run time lost), C stays.
    nodes = cluster(node("n1", cpus=4, free=0))
    cands = [
        cand(1, ["n1"], 1, start=30),
        cand(2, ["n1"], 1, start=20),
        cand(3, ["n1"], 2, start=10),
    ]
    plan = plan_ok(want(2), nodes, cands)
    assert plan.victims == [1, 2]
    assert_irreducible(want(2), nodes, cands, plan.victims)


def test_irreducible_pass_drops_a_victim_made_useless_later() -> None:
    # Greedy takes A (1 cpu, youngest) then C (2 cpus); C alone suffices -> A dropped.
    nodes = cluster(node("n1", cpus=3, free=0))
    cands = [cand(1, ["n1"], 1, start=30), cand(3, ["n1"], 2, start=10)]
    plan = plan_ok(want(2), nodes, cands)
    assert plan.victims == [3]


def test_lower_qos_priority_preferred() -> None:
    nodes = cluster(node("n1", cpus=4, free=0))
    cands = [
        cand(1, ["n1"], 2, qos_priority=500, start=100),  # younger but higher priority
        cand(2, ["n1"], 2, qos_priority=100, start=1),
    ]
    assert plan_ok(want(2), nodes, cands).victims == [2]


def test_lower_partition_priority_breaks_qos_ties() -> None:
    nodes = cluster(node("n1", cpus=4, free=0))
    cands = [
        cand(1, ["n1"], 2, partition_priority=5, start=100),
        cand(2, ["n1"], 2, partition_priority=1, start=1),
    ]
    assert plan_ok(want(2), nodes, cands).victims == [2]


def test_among_equals_youngest_then_highest_id() -> None:
    nodes = cluster(node("n1", cpus=4, free=0))
    cands = [cand(1, ["n1"], 2, start=50), cand(2, ["n1"], 2, start=80)]
    assert plan_ok(want(2), nodes, cands).victims == [2]
    cands = [cand(7, ["n1"], 2, start=50), cand(4, ["n1"], 2, start=50)]
    assert plan_ok(want(2), nodes, cands).victims == [7]


def test_victim_order_key() -> None:
    cs = [
        cand(1, ["n1"], 1, qos_priority=2, start=5),
        cand(2, ["n1"], 1, qos_priority=1, start=1),
        cand(3, ["n1"], 1, qos_priority=1, start=9),
        cand(4, ["n1"], 1, qos_priority=1, start=9),
    ]
    assert [c.job_id for c in sorted(cs, key=victim_order_key)] == [4, 3, 2, 1]


def test_not_enough_even_with_all_candidates() -> None:
    nodes = cluster(node("n1", cpus=4, free=0))
    cands = [cand(1, ["n1"], 2), cand(2, ["n1"], 1)]  # 1 cpu held by a non-candidate job
    assert plan_preemption(want(4), nodes, cands, always) is None
    assert plan_preemption(want(8), nodes, cands, always) is None


def test_not_enough_memory() -> None:
    nodes = cluster(node("n1", cpus=4, free=0, mem=8 * GiB, mem_free=0))
    cands = [cand(1, ["n1"], 2, memory=2 * GiB), cand(2, ["n1"], 2, memory=2 * GiB)]
    # All 4 GiB in candidates -> only 4 GiB can be freed.
    assert plan_preemption(want(1, memory=6 * GiB), nodes, cands, always) is None
    plan = plan_ok(want(1, memory=3 * GiB), nodes, cands)
    assert sorted(plan.victims) == [1, 2]


def test_memory_drives_choice() -> None:
    nodes = cluster(node("n1", cpus=4, free=2, mem=8 * GiB, mem_free=0))
    cands = [
        cand(1, ["n1"], 1, memory=1 * GiB, start=20),  # youngest, too little memory alone
        cand(2, ["n1"], 1, memory=7 * GiB, start=10),
    ]
    plan = plan_ok(want(1, memory=4 * GiB), nodes, cands)
    assert plan.victims == [2]


def test_may_preempt_false_never_chosen() -> None:
    nodes = cluster(node("n1", free=0), node("n2", free=0))
    cands = [
        cand(1, ["n1"], 4, qos="protected", qos_priority=1, start=99),
        cand(2, ["n2"], 4, qos="low", qos_priority=50),
    ]

    def may(c: Candidate) -> bool:
        return c.qos != "protected"

    plan = plan_ok(want(1, allowed=["n1", "n2"]), nodes, cands, may)
    assert plan == Plan(victims=[2], nodes=["n2"])
    assert plan_preemption(want(1), nodes, cands, may) is None  # only n1 allowed


def test_non_preemptable_exclusive_holder_blocks_node() -> None:
    nodes = cluster(node("n1", free=3, exclusive_job=5))
    cands = [cand(5, ["n1"], 1, exclusive=True, qos="high")]
    assert plan_preemption(want(1), nodes, cands, lambda c: c.qos == "low") is None
    # Holder not even among the candidates: the node still does not fit.
    assert plan_preemption(want(1), nodes, [], always) is None


def test_unusable_nodes_skipped() -> None:
    nodes = cluster(node("n1", free=0, usable=False), node("n2", free=0))
    cands = [
        cand(1, ["n1"], 4, qos_priority=1),
        cand(2, ["n2"], 4, qos_priority=50),
    ]
    plan = plan_ok(want(1, allowed=["n1", "n2"]), nodes, cands)
    assert plan == Plan(victims=[2], nodes=["n2"])
    assert plan_preemption(want(1, allowed=["n1"]), nodes, cands, always) is None


def test_unknown_allowed_node_ignored() -> None:
    nodes = cluster(node("n1", free=0))
    cands = [cand(1, ["n1"], 4)]
    plan = plan_ok(want(1, allowed=["ghost", "n1"]), nodes, cands)
    assert plan == Plan(victims=[1], nodes=["n1"])


def test_required_nodes_honoured() -> None:
    nodes = cluster(node("n1", free=4), node("n2", free=0))
    cands = [cand(1, ["n2"], 4)]
    w = want(1, allowed=["n1", "n2"], required=["n2"])
    assert plan_ok(w, nodes, cands) == Plan(victims=[1], nodes=["n2"])
    # Without -w the free node is used and nothing is killed.
    assert plan_ok(want(1, allowed=["n1", "n2"]), nodes, cands).victims == []


def test_required_node_impossible_or_not_allowed() -> None:
    nodes = cluster(node("n1", free=0), node("n2", free=0))
    cands = [cand(1, ["n1"], 4), cand(2, ["n2"], 4)]
    w = want(1, allowed=["n1", "n2"], required=["n2"])
    assert plan_preemption(w, nodes, cands, lambda c: c.job_id == 1) is None
    w = want(1, allowed=["n1"], required=["n2"])
    assert plan_preemption(w, nodes, cands, always) is None
    w = want(1, nnodes=1, allowed=["n1", "n2"], required=["n1", "n2"])
    assert plan_preemption(w, nodes, cands, always) is None


def test_required_plus_extra_nodes() -> None:
    nodes = cluster(node("n1", free=0), node("n2", free=0), node("n3", free=4))
    cands = [cand(1, ["n1"], 4, qos_priority=1), cand(2, ["n2"], 4, qos_priority=2)]
    w = want(2, nnodes=2, allowed=["n1", "n2", "n3"], required=["n2"])
    plan = plan_ok(w, nodes, cands)
    assert plan.victims == [2]
    assert sorted(plan.nodes) == ["n2", "n3"]


def test_multi_node_want_across_two_nodes() -> None:
    nodes = cluster(node("n1", free=0), node("n2", free=0), node("n3", free=0))
    cands = [
        cand(1, ["n1"], 4, qos_priority=10),
        cand(2, ["n2"], 4, qos_priority=30),
        cand(3, ["n3"], 4, qos_priority=20),
    ]
    w = want(2, nnodes=2, allowed=["n1", "n2", "n3"])
    plan = plan_ok(w, nodes, cands)
    assert sorted(plan.victims) == [1, 3]
    assert sorted(plan.nodes) == ["n1", "n3"]


def test_multi_node_want_prefers_free_nodes() -> None:
    nodes = cluster(node("n1", free=0), node("n2", free=4), node("n3", free=0))
    cands = [cand(1, ["n1"], 4, qos_priority=10), cand(3, ["n3"], 4, qos_priority=20)]
    w = want(2, nnodes=2, allowed=["n1", "n2", "n3"])
    plan = plan_ok(w, nodes, cands)
    assert plan.victims == [1]
    assert sorted(plan.nodes) == ["n1", "n2"]


def test_multi_node_victim_frees_both_nodes() -> None:
    nodes = cluster(node("n1", free=0), node("n2", free=0))
    cands = [
        cand(1, ["n1", "n2"], 2, start=50),  # youngest, spans both nodes
        cand(2, ["n1"], 2, start=10),
        cand(3, ["n2"], 2, start=10),
    ]
    w = want(2, nnodes=2, allowed=["n1", "n2"])
    assert plan_ok(w, nodes, cands) == Plan(victims=[1], nodes=["n1", "n2"])


def test_multi_node_exclusive_victim_frees_whole_nodes() -> None:
    nodes = cluster(
        node("n1", free=0, mem_free=0, exclusive_job=1),
        node("n2", free=0, mem_free=0, exclusive_job=1),
    )
    cands = [cand(1, ["n1", "n2"], 1, memory=GiB, exclusive=True)]
    w = want(4, memory=8 * GiB, nnodes=2, exclusive=True, allowed=["n1", "n2"])
    assert plan_ok(w, nodes, cands) == Plan(victims=[1], nodes=["n1", "n2"])


def test_exclusive_want_needs_whole_nodes() -> None:
    nodes = cluster(node("n1", cpus=4, free=2), node("n2", cpus=4, free=1))
    cands = [
        cand(1, ["n1"], 2, qos_priority=10),
        cand(2, ["n2"], 1, qos_priority=1, start=5),
        cand(3, ["n2"], 2, qos_priority=1, start=9),
    ]
    # Non-exclusive: n1 has room already.
    assert plan_ok(want(1, allowed=["n1", "n2"]), nodes, cands).victims == []
    # Exclusive: n1 needs 1 victim, n2 needs 2 (despite their lower priority).
    w = want(1, exclusive=True, allowed=["n1", "n2"])
    assert plan_ok(w, nodes, cands) == Plan(victims=[1], nodes=["n1"])
    # Only n2 allowed: both its jobs go.
    w = want(1, exclusive=True, allowed=["n2"])
    plan = plan_ok(w, nodes, cands)
    assert plan.victims == [3, 2]


def test_exclusive_want_blocked_by_non_preemptable_job() -> None:
    nodes = cluster(node("n1", cpus=4, free=1))
    cands = [cand(1, ["n1"], 2), cand(2, ["n1"], 1, qos="high")]
    w = want(1, exclusive=True)
    assert plan_preemption(w, nodes, cands, lambda c: c.qos == "low") is None
    # Non-exclusive fits right away.
    assert plan_ok(want(1), nodes, cands, lambda c: c.qos == "low").victims == []


def test_inputs_not_mutated() -> None:
    nodes = cluster(node("n1", free=0), node("n2", free=0))
    cands = [cand(1, ["n1", "n2"], 4), cand(2, ["n2"], 0)]
    w = want(2, nnodes=2, allowed=["n2", "n1"])
    before = copy.deepcopy((w, nodes, cands))
    plan_ok(w, nodes, cands)
    assert (w, nodes, cands) == before


# --------------------------------------------------------------------------- property


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[Want, dict[str, NodeFree], list[Candidate], frozenset[int]]:
    n_nodes = draw(st.integers(1, 5))
    names = [f"n{i}" for i in range(n_nodes)]
    nodes: dict[str, NodeFree] = {}
    for name in names:
        cpus = draw(st.integers(1, 8))
        mem = draw(st.integers(4, 16))
        other_cpu = draw(st.integers(0, 2))  # load of jobs that are not candidates
        other_mem = draw(st.integers(0, 2))
        nodes[name] = NodeFree(
            name=name,
            cpus_total=cpus,
            mem_total=mem,
            cpus_free=max(0, cpus - other_cpu),
            mem_free=max(0, mem - other_mem),
            usable=draw(st.integers(0, 4)) > 0,
        )
    cands: list[Candidate] = []
    preemptable: set[int] = set()
    for job_id in range(1, draw(st.integers(0, 10)) + 1):
        on = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
        exclusive = draw(st.booleans())
        cpus = draw(st.integers(1, 4))
        memory = draw(st.integers(0, 6))
        if exclusive:
            ok = all(
                nodes[n].exclusive_job is None
                and nodes[n].cpus_free == nodes[n].cpus_total
                and nodes[n].mem_free == nodes[n].mem_total
                and cpus <= nodes[n].cpus_total
                and memory <= nodes[n].mem_total
                for n in on
            )
        else:
            ok = all(
                nodes[n].exclusive_job is None
                and cpus <= nodes[n].cpus_free
                and memory <= nodes[n].mem_free
                for n in on
            )
        if not ok:
            continue
        for n in on:
            if exclusive:
                nodes[n].exclusive_job = job_id
                nodes[n].cpus_free = 0
                nodes[n].mem_free = 0
            else:
                nodes[n].cpus_free -= cpus
                nodes[n].mem_free -= memory
        cands.append(
            Candidate(
                job_id=job_id,
                qos=draw(st.sampled_from(["a", "b", "c"])),
                qos_priority=draw(st.integers(0, 3)),
                partition_priority=draw(st.integers(0, 2)),
                start_time=float(draw(st.integers(0, 5))),
                nodes=on,
                cpus=cpus,
                memory=memory,
                exclusive=exclusive,
            )
        )
        if draw(st.integers(0, 3)) > 0:
            preemptable.add(job_id)
    nnodes = draw(st.sampled_from([1, 1, 2, 2, 3]))
    allowed = draw(st.permutations(names))
    allowed = allowed[: draw(st.integers(min(nnodes, len(allowed)), len(allowed)))]
    required = draw(
        st.lists(st.sampled_from(allowed), max_size=min(nnodes, len(allowed)), unique=True)
    )
    w = Want(
        job_id=1000,
        cpus=draw(st.integers(1, 5)),
        memory=draw(st.sampled_from([0, 0, 1, 2, 4, 8])),
        nnodes=nnodes,
        exclusive=draw(st.integers(0, 3)) == 0,
        allowed_nodes=list(allowed),
        required_nodes=required,
    )
    return w, nodes, cands, frozenset(preemptable)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_property_plans_fit_and_are_irreducible(
    sc: tuple[Want, dict[str, NodeFree], list[Candidate], frozenset[int]],
) -> None:
    w, nodes, cands, preemptable = sc

    def may(c: Candidate) -> bool:
        return c.job_id in preemptable

    before = copy.deepcopy(sc)
    plan = plan_preemption(w, nodes, cands, may)
    assert (w, nodes, cands, preemptable) == before  # pure
    if plan is None:
        assert fits_after(w, nodes, cands, [c.job_id for c in cands if may(c)]) is None
    else:
        check_plan(w, nodes, cands, may, plan)
        if fits_after(w, nodes, cands, []) is not None:
            assert plan.victims == []
