"""The scheduling machine (placement + preemption), driven directly: events
in, actions out, no sockets. ``validate_state()`` runs after every event."""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crane.accounts import Qos
from crane.actors.base import Actor
from crane.actors.scheduler import Scheduler, policy_of
from crane.config import Config, GpuDevice, NodeConf, PartitionConf
from crane.core import events as ev
from crane.core.ledger import NodeLedger, Request, place
from crane.core.scheduling import (
    Allocate,
    PartitionPolicy,
    Policy,
    Preempt,
    QosPolicy,
    Reserve,
    Resume,
    SaveNode,
    SchedulePass,
    SchedulingMachine,
    Suspend,
)
from crane.core.states import NodeState, PendingReason, PreemptMode, PreemptType

GiB = 1 << 30


def ledger(name: str, cpus: int = 4, mem: int = 4 * GiB, gpus: tuple[str, ...] = (), up: bool = True) -> NodeLedger:
    return NodeLedger(name, cpus, mem, cpus, mem, up=up, gpu_types=list(gpus), gpus_free=set(range(len(gpus))))


def machine(*ledgers: NodeLedger) -> SchedulingMachine:
    mc = SchedulingMachine({led.name: led for led in ledgers or (ledger("n1"), ledger("n2"))})
    mc.validate_state()
    return mc


def req(job_id: int, cpus: int = 1, *, partition: str = "P", qos: str = "normal", priority: int = 0,
        uid: int = 1000, nnodes: int = 1, memory: int = 0, exclusive: bool = False,
        nodelist: tuple[str, ...] = (), gpus: int = 0, gpu_type: str = "") -> Request:  # fmt: skip
    return Request(job_id, partition, cpus, memory, nnodes, exclusive, list(nodelist), qos, priority, uid, gpus, gpu_type)


def policy(nodes: tuple[str, ...] = ("n1", "n2"), *, ptype: PreemptType = PreemptType.NONE,
           mode: PreemptMode = PreemptMode.OFF, exempt: float = 0.0, qos: dict[str, QosPolicy] | None = None,
           partitions: dict[str, PartitionPolicy] | None = None) -> Policy:  # fmt: skip
    return Policy(ptype, mode, exempt, qos or {"normal": QosPolicy()}, partitions or {"P": PartitionPolicy(0, None, 0.0, nodes)})


def qos_policy(mode: PreemptMode = PreemptMode.CANCEL, nodes: tuple[str, ...] = ("n1", "n2"), **kw: Any) -> Policy:
    """QoS ``high`` may preempt ``low``."""
    low = QosPolicy(priority=1, **kw)
    return policy(nodes, ptype=PreemptType.QOS, mode=mode,
                  qos={"low": low, "high": QosPolicy(priority=10, preempt=frozenset({"low"}))})  # fmt: skip


def run(mc: SchedulingMachine, event: Any) -> list[Any]:
    acts = mc.handle(event)
    mc.validate_state()
    return acts


def allocs(acts: list[Any]) -> dict[int, list[str]]:
    return {a.job_id: a.nodes for a in acts if isinstance(a, Allocate)}


def kinds(acts: list[Any]) -> list[str]:
    return [type(a).__name__ for a in acts]


def start(mc: SchedulingMachine, r: Request, pol: Policy, now: float = 0.0) -> list[str]:
    """Queue ``r`` and run a pass; it must start: its nodes."""
    run(mc, ev.Enqueue(r))
    got = allocs(run(mc, SchedulePass(now, pol)))
    assert r.job_id in got, mc.reasons
    return got[r.job_id]


# ------------------------------------------------------------------ placement


def test_places_what_fits_and_says_why_the_rest_waits() -> None:
    mc, pol = machine(), policy()
    for j in (1, 2, 3):
        assert run(mc, ev.Enqueue(req(j, 3))) == []
        assert mc.reasons[j] == PendingReason.PRIORITY and mc.pass_wanted
    acts = run(mc, SchedulePass(0.0, pol))
    assert allocs(acts) == {1: ["n1"], 2: ["n2"]}
    assert acts[0] == Allocate(1, ["n1"], 3, {})
    assert mc.reasons == {3: PendingReason.RESOURCES} and list(mc.pending) == [3]
    assert mc.ledgers["n1"].cpus_free == 1 and mc.ledgers["n1"].state() == NodeState.MIX
    assert allocs(run(mc, ev.FreeNode(1, "n1"))) == {} and mc.pass_wanted
    assert allocs(run(mc, SchedulePass(1.0, pol))) == {3: ["n1"]}
    assert run(mc, ev.FreeNode(1, "n1")) == []  # a duplicate frees nothing


def test_higher_priority_first_then_job_id() -> None:
    mc, pol = machine(ledger("n1")), policy(("n1",))
    run(mc, ev.Enqueue(req(1, 4, priority=1)))
    run(mc, ev.Enqueue(req(2, 4, priority=5)))
    run(mc, ev.Enqueue(req(3, 4, priority=5)))
    assert allocs(run(mc, SchedulePass(0.0, pol))) == {2: ["n1"]}
    assert mc.reasons == {1: PendingReason.RESOURCES, 3: PendingReason.RESOURCES}


def test_dequeue_of_a_pending_job_needs_no_pass() -> None:
    mc = machine()
    run(mc, ev.Enqueue(req(1)))
    mc.pass_wanted = False
    assert run(mc, ev.Dequeue(1)) == [] and not mc.pass_wanted and not mc.pending
    assert run(mc, SchedulePass(0.0, policy())) == [] and mc.passes == 0  # nothing pending: no pass


def test_qos_max_jobs_per_user() -> None:
    mc = machine()
    pol = policy(qos={"normal": QosPolicy(max_jobs_per_user=1)})
    run(mc, ev.Enqueue(req(1, uid=1000)))
    run(mc, ev.Enqueue(req(2, uid=1000)))
    run(mc, ev.Enqueue(req(3, uid=1001)))
    assert set(allocs(run(mc, SchedulePass(0.0, pol)))) == {1, 3}
    assert mc.reasons == {2: PendingReason.QOS_MAX_JOBS_PER_USER}
    run(mc, ev.Ending(1))  # still holds its node: still counts
    assert allocs(run(mc, SchedulePass(1.0, pol))) == {}
    run(mc, ev.FreeNode(1, "n1"))
    assert allocs(run(mc, SchedulePass(2.0, pol))) == {2: ["n1"]}


def test_down_and_drained_nodes_take_nothing() -> None:
    mc, pol = machine(ledger("n1", up=False)), policy(("n1",))
    run(mc, ev.Enqueue(req(1)))
    assert allocs(run(mc, SchedulePass(0.0, pol))) == {} and mc.reasons[1] == PendingReason.RESOURCES
    assert mc.ledgers["n1"].state() == NodeState.DOWN
    assert run(mc, ev.NodeStatus("n1", drain=True, reason="disk")) == [SaveNode("n1", True, "disk")]
    run(mc, ev.NodeStatus("n1", up=True))
    assert mc.ledgers["n1"].state() == NodeState.DRAIN
    assert allocs(run(mc, SchedulePass(1.0, pol))) == {}
    assert run(mc, ev.NodeStatus("n1", drain=False)) == [SaveNode("n1", False, "")]
    assert allocs(run(mc, SchedulePass(2.0, pol))) == {1: ["n1"]}
    assert run(mc, ev.NodeStatus("nX", up=True)) == []  # unknown node: ignored
    run(mc, ev.RestoreNode("n1", True, "restored"))
    assert mc.ledgers["n1"].state() == NodeState.DRAINING and mc.ledgers["n1"].reason == "restored"


def test_required_nodes_exclusive_and_multi_node() -> None:
    mc, pol = machine(ledger("n1"), ledger("n2"), ledger("n3", cpus=2)), policy(("n1", "n2", "n3"))
    assert start(mc, req(1, 1, nodelist=("n2",)), pol) == ["n2"]
    assert start(mc, req(2, 1, exclusive=True), pol) == ["n1"]
    ex = mc.ledgers["n1"]
    assert ex.cpus_free == 0 and ex.exclusive_holder() == 2 and ex.state() == NodeState.ALLOC
    run(mc, ev.Enqueue(req(3, 1, nodelist=("n1",))))  # n1 is held exclusively
    run(mc, ev.Enqueue(req(4, 1, nnodes=2)))
    assert allocs(run(mc, SchedulePass(1.0, pol))) == {4: ["n2", "n3"]}
    assert mc.reasons == {3: PendingReason.RESOURCES}
    assert place(req(9, 1, nodelist=("nX",)), mc.ledgers, ["n1", "n2", "n3"]) is None  # unknown -w node


def test_gpus_by_type_and_count() -> None:
    mc = machine(ledger("g1", gpus=("a100", "a100", "v100")))
    pol = policy(("g1",))
    run(mc, ev.Enqueue(req(1, 1, gpus=1, gpu_type="v100")))
    run(mc, ev.Enqueue(req(2, 1, gpus=2)))
    run(mc, ev.Enqueue(req(3, 1, gpus=1)))
    acts = run(mc, SchedulePass(0.0, pol))
    assert [(a.job_id, a.gpus) for a in acts] == [(1, {"g1": [2]}), (2, {"g1": [0, 1]})]
    assert mc.reasons == {3: PendingReason.RESOURCES}
    run(mc, ev.FreeNode(2, "g1"))
    assert [a.gpus for a in run(mc, SchedulePass(1.0, pol))] == [{"g1": [0]}]


# ------------------------------------------------------------------ preemption


def test_cancel_preemption_reserves_before_touching_victims() -> None:
    mc, pol = machine(ledger("n1")), qos_policy(nodes=("n1",), grace=30)
    start(mc, req(1, 4, qos="low"), pol)
    run(mc, ev.Enqueue(req(2, 4, qos="high")))
    acts = run(mc, SchedulePass(10.0, pol))
    assert kinds(acts) == ["Reserve", "Preempt"]
    assert acts[0] == Reserve(2, ["n1"], [1])
    assert acts[1] == Preempt(1, 2, PreemptMode.CANCEL, 30.0, "Preempted by job 2")
    assert mc.reasons[2] == PendingReason.WAITING_FOR_PREEMPTION
    assert mc.reserved_nodes == {"n1": 2}
    # the victim is going: no second plan, no other job on the reserved node
    run(mc, ev.Enqueue(req(3, 1, qos="low", priority=-1)))
    assert run(mc, SchedulePass(11.0, pol)) == []
    run(mc, ev.Ending(1))
    run(mc, ev.FreeNode(1, "n1"))
    acts = run(mc, SchedulePass(12.0, pol))
    assert allocs(acts) == {2: ["n1"]} and not mc.reserved and not mc.reserved_nodes
    assert mc.reasons[3] == PendingReason.RESOURCES


def test_actions_carry_the_cause_of_the_request_behind_them() -> None:
    mc, pol = machine(ledger("n1")), qos_policy(nodes=("n1",))
    run(mc, ev.Enqueue(req(1, 4, qos="low"), cause=11))
    assert [a.cause for a in run(mc, SchedulePass(0.0, pol))] == [11]
    run(mc, ev.Enqueue(req(2, 4, qos="high"), cause=12))
    assert [a.cause for a in run(mc, SchedulePass(10.0, pol))] == [12, 12]
    assert run(mc, ev.NodeStatus("n1", drain=True, reason="r", cause=13))[0].cause == 13


def test_requeue_mode_and_a_requeued_victim_counts_as_gone() -> None:
    mc, pol = machine(ledger("n1")), qos_policy(PreemptMode.REQUEUE, nodes=("n1",))
    start(mc, req(1, 4, qos="low"), pol)
    run(mc, ev.Enqueue(req(2, 4, qos="high")))
    acts = run(mc, SchedulePass(10.0, pol))
    assert [a.mode for a in acts if isinstance(a, Preempt)] == [PreemptMode.REQUEUE]
    run(mc, ev.FreeNode(1, "n1"))
    run(mc, ev.Enqueue(req(1, 4, qos="low")))  # back in the queue
    assert allocs(run(mc, SchedulePass(11.0, pol))) == {2: ["n1"]}
    assert mc.reasons == {1: PendingReason.RESOURCES}


def test_suspend_mode_lends_at_once_and_resumes_when_the_preemptor_leaves() -> None:
    mc, pol = machine(ledger("n1")), qos_policy(PreemptMode.SUSPEND, nodes=("n1",))
    start(mc, req(1, 4, memory=GiB, qos="low"), pol)
    run(mc, ev.Enqueue(req(2, 4, qos="high")))
    acts = run(mc, SchedulePass(10.0, pol))
    assert kinds(acts) == ["Reserve", "Suspend", "Allocate"]
    assert acts[1] == Suspend(1, 2, "Preempted by job 2")
    assert mc.lent == {2: [1]} and mc.held[1].suspended and mc.ledgers["n1"].suspended == {1}
    assert run(mc, ev.Suspended(1, True)) == []  # the job's own report changes nothing
    assert run(mc, ev.FreeNode(2, "n1")) == [Resume(1)]
    assert not mc.lent and not mc.held[1].suspended and mc.ledgers["n1"].cpus_free == 0


def test_suspended_victims_keep_their_gpus() -> None:
    mc = machine(ledger("g1", gpus=("a100", "a100")))
    pol = qos_policy(PreemptMode.SUSPEND, nodes=("g1",))
    start(mc, req(1, 1, gpus=2, qos="low"), pol)
    run(mc, ev.Enqueue(req(2, 1, gpus=1, qos="high")))  # cpus are free; GPUs are not, and stay held
    assert run(mc, SchedulePass(10.0, pol)) == [] and mc.reasons[2] == PendingReason.RESOURCES
    run(mc, ev.Enqueue(req(3, 4, qos="high")))  # cpus only: suspending job 1 lends them
    acts = run(mc, SchedulePass(11.0, pol))
    assert kinds(acts) == ["Reserve", "Suspend", "Allocate"] and allocs(acts) == {3: ["g1"]}
    assert mc.ledgers["g1"].gpus_free == set()
    run(mc, ev.FreeNode(1, "g1"))  # the suspended job ends: its GPUs come back
    assert mc.ledgers["g1"].gpus_free == {0, 1}


def test_gpu_preemption_picks_the_job_holding_gpus() -> None:
    mc = machine(ledger("g1", cpus=8, gpus=("a100", "a100")))
    pol = qos_policy(nodes=("g1",))
    start(mc, req(1, 2, qos="low"), pol)  # cpus only
    start(mc, req(2, 2, gpus=2, qos="low"), pol, now=1.0)
    run(mc, ev.Enqueue(req(3, 1, gpus=1, qos="high")))
    acts = run(mc, SchedulePass(10.0, pol))
    assert [a.victim for a in acts if isinstance(a, Preempt)] == [2]
    run(mc, ev.FreeNode(2, "g1"))
    assert [a.gpus for a in run(mc, SchedulePass(11.0, pol))] == [{"g1": [0]}]


def test_exempt_time_protects_young_jobs() -> None:
    mc = machine(ledger("n1"))
    pol = qos_policy(nodes=("n1",), exempt=100)
    start(mc, req(1, 4, qos="low"), pol, now=0.0)
    run(mc, ev.Enqueue(req(2, 4, qos="high")))
    assert run(mc, SchedulePass(50.0, pol)) == [] and mc.reasons[2] == PendingReason.RESOURCES
    assert kinds(run(mc, SchedulePass(150.0, pol))) == ["Reserve", "Preempt"]
    glob = policy(("n1",), ptype=PreemptType.QOS, mode=PreemptMode.CANCEL, exempt=1000,
                  qos={"low": QosPolicy(1), "high": QosPolicy(10, frozenset({"low"}))})  # fmt: skip
    mc2 = machine(ledger("n1"))
    start(mc2, req(1, 4, qos="low"), glob)
    run(mc2, ev.Enqueue(req(2, 4, qos="high")))
    assert run(mc2, SchedulePass(500.0, glob)) == []  # the cluster's PreemptExemptTime


def test_no_preemption_without_a_preempt_list_or_mode_off() -> None:
    for pol in (policy(("n1",)), qos_policy(PreemptMode.OFF, nodes=("n1",)),
                policy(("n1",), ptype=PreemptType.QOS, mode=PreemptMode.CANCEL,
                       qos={"low": QosPolicy(1), "high": QosPolicy(10)})):  # fmt: skip
        mc = machine(ledger("n1"))
        start(mc, req(1, 4, qos="low"), pol)
        run(mc, ev.Enqueue(req(2, 4, qos="high")))
        assert run(mc, SchedulePass(10.0, pol)) == []
        assert mc.reasons[2] == PendingReason.RESOURCES


def test_a_cancelled_preemptor_releases_its_reservation() -> None:
    mc, pol = machine(ledger("n1")), qos_policy(nodes=("n1",))
    start(mc, req(1, 4, qos="low"), pol)
    run(mc, ev.Enqueue(req(2, 4, qos="high")))
    run(mc, SchedulePass(10.0, pol))
    assert mc.reserved
    run(mc, ev.Dequeue(2))
    assert not mc.reserved and not mc.reserved_nodes and mc.pass_wanted
    run(mc, ev.FreeNode(1, "n1"))
    run(mc, ev.Enqueue(req(3, 4, qos="low")))
    assert allocs(run(mc, SchedulePass(11.0, pol))) == {3: ["n1"]}


def test_a_dequeued_preemptor_that_never_ran_resumes_its_victims() -> None:
    mc = machine(ledger("n1"))
    pol = qos_policy(PreemptMode.SUSPEND, nodes=("n1",))
    start(mc, req(1, 4, qos="low"), pol)
    mc.lent[2] = [1]  # as if job 2 had suspended job 1 and was then held before it started
    run(mc, ev.Suspended(1, True))
    mc.pending[2], mc.reasons[2], mc.causes[2] = req(2, 4, qos="high"), PendingReason.WAITING_FOR_PREEMPTION, 0
    mc.validate_state()
    assert run(mc, ev.Dequeue(2)) == [Resume(1)] and not mc.held[1].suspended


def test_ending_jobs_are_not_candidates() -> None:
    mc, pol = machine(ledger("n1")), qos_policy(nodes=("n1",))
    start(mc, req(1, 4, qos="low"), pol)
    run(mc, ev.Ending(1))
    run(mc, ev.Enqueue(req(2, 4, qos="high")))
    assert run(mc, SchedulePass(10.0, pol)) == [] and mc.reasons[2] == PendingReason.RESOURCES


def test_victims_gone_but_still_no_fit_drops_the_reservation() -> None:
    mc, pol = machine(ledger("n1")), qos_policy(nodes=("n1",))
    start(mc, req(1, 4, qos="low"), pol)
    run(mc, ev.Enqueue(req(2, 4, qos="high")))
    run(mc, SchedulePass(10.0, pol))
    run(mc, ev.FreeNode(1, "n1"))
    run(mc, ev.NodeStatus("n1", drain=True, reason="x"))
    assert run(mc, SchedulePass(11.0, pol)) == []
    assert not mc.reserved and mc.reasons[2] == PendingReason.RESOURCES


def test_partition_priority_tiers() -> None:
    mc = machine(ledger("n1"))
    parts = {"LOW": PartitionPolicy(1, None, 5.0, ("n1",)), "HIGH": PartitionPolicy(10, PreemptMode.REQUEUE, 0.0, ("n1",))}
    pol = policy(ptype=PreemptType.PARTITION, mode=PreemptMode.CANCEL, partitions=parts)
    start(mc, req(1, 4, partition="HIGH"), pol)
    run(mc, ev.Enqueue(req(2, 4, partition="LOW")))
    assert run(mc, SchedulePass(10.0, pol)) == []  # a lower tier never preempts
    run(mc, ev.FreeNode(1, "n1"))
    run(mc, ev.Dequeue(2))
    start(mc, req(3, 4, partition="LOW"), pol, now=11.0)
    run(mc, ev.Enqueue(req(4, 4, partition="HIGH")))
    acts = run(mc, SchedulePass(20.0, pol))
    assert [a for a in acts if isinstance(a, Preempt)] == [Preempt(3, 4, PreemptMode.CANCEL, 5.0, "Preempted by job 4")]


def test_recovery_adopt() -> None:
    mc = machine(ledger("n1"), ledger("g1", gpus=("a100", "a100")))
    pol = qos_policy(nodes=("n1", "g1"))
    run(mc, ev.Adopt(1, ["g1"], 2, 0, False, False, {"g1": [1]}, qos="low", partition="P", uid=1000, start_time=5.0))
    run(mc, ev.Adopt(2, ["n1"], 2, 0, False, True, {}, qos="low", partition="P", uid=1000, start_time=5.0))
    run(mc, ev.Adopt(3, ["n1", "nX"], 1, 0, False, False, {}, qos="low", ending=True))  # unknown node: skipped
    run(mc, ev.Adopt(1, ["g1"], 2, 0, False, False, {"g1": [1]}))  # twice: once
    assert mc.ledgers["g1"].gpus_free == {0} and mc.ledgers["g1"].cpus_free == 2
    assert mc.ledgers["n1"].cpus_free == 3 and mc.held[2].suspended and mc.held[3].nodes == ["n1"]
    run(mc, ev.Enqueue(req(4, 4, gpus=2, qos="high")))
    acts = run(mc, SchedulePass(10.0, pol))
    assert acts[0] == Reserve(4, ["g1"], [1])


# ------------------------------------------------------------------ random sequences keep the invariants

NODES = ("n1", "n2", "g1")
MODES = (PreemptMode.CANCEL, PreemptMode.REQUEUE, PreemptMode.SUSPEND, PreemptMode.OFF)


def _policy(kind: int, mode: PreemptMode, limit: int | None) -> Policy:
    parts = {"P": PartitionPolicy(1, mode, 0.0, NODES), "Q": PartitionPolicy(5, None, 0.0, ("n2", "g1"))}
    if kind == 0:
        return policy(qos={"low": QosPolicy(1, max_jobs_per_user=limit), "high": QosPolicy(10)}, partitions=parts)
    if kind == 1:
        return policy(ptype=PreemptType.QOS, mode=PreemptMode.CANCEL, exempt=5.0, qos={
            "low": QosPolicy(1, mode=mode, grace=3.0, max_jobs_per_user=limit),
            "high": QosPolicy(10, frozenset({"low"}), exempt=0.0)}, partitions=parts)  # fmt: skip
    return policy(ptype=PreemptType.PARTITION, mode=PreemptMode.SUSPEND, partitions=parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_random_event_sequences_keep_the_invariants(seed: int) -> None:
    """Events in any order the actors can send them; the invariants hold after
    each. (A seeded generator: hypothesis' own draws rarely reach preemption.)"""
    rnd = random.Random(seed)
    mc = machine(ledger("n1"), ledger("n2", cpus=2), ledger("g1", gpus=("a100", "v100", "a100")))
    pol = _policy(rnd.choice((0, 1, 1, 2, 2)), rnd.choice(MODES), rnd.choice((None, 1, 2)))
    for n in NODES:
        run(mc, ev.NodeStatus(n, up=True))
    now, next_id = 0.0, 1
    for _ in range(rnd.randint(1, 120)):
        op = rnd.choice((0, 0, 1, 2, 3, 3, 4, 5, 5, 6, 7, 8, 9))
        held = sorted(mc.held)
        if op <= 2:  # a new job, or a requeued / released one back in the queue
            gone = [j for j in range(1, next_id) if j not in mc.held and j not in mc.pending]
            jid = rnd.choice(gone) if gone and op == 2 else next_id
            next_id += jid == next_id
            run(mc, ev.Enqueue(req(
                jid, rnd.randint(1, 4), partition=rnd.choice(("P", "Q")), qos=rnd.choice(("low", "high")),
                priority=rnd.randint(0, 3), uid=rnd.choice((1000, 1001)), nnodes=rnd.choice((1, 1, 2)),
                exclusive=rnd.random() < 0.15, gpus=rnd.choice((0, 0, 1, 2)), gpu_type=rnd.choice(("", "", "a100", "v100")),
                memory=rnd.choice((0, GiB)), nodelist=("g1",) if rnd.random() < 0.15 else (),
            )))  # fmt: skip
        elif op <= 4:
            now += rnd.choice((0.0, 1.0, 10.0))
            run(mc, SchedulePass(now, pol))
        elif op == 5 and held:  # a node released
            jid = rnd.choice(held)
            run(mc, ev.FreeNode(jid, rnd.choice(mc.held[jid].nodes)))
        elif op == 6 and held:
            run(mc, ev.Ending(rnd.choice(held)))
        elif op == 7 and held:  # ccontrol suspend / resume
            run(mc, ev.Suspended(rnd.choice(held), rnd.random() < 0.5))
        elif op == 8 and mc.pending:
            run(mc, ev.Dequeue(rnd.choice(sorted(mc.pending))))
        elif op == 9:
            up, drain = rnd.choice(((True, None), (False, None), (None, True), (None, False), (True, False)))
            run(mc, ev.NodeStatus(rnd.choice(NODES), up=up, drain=drain))


# ------------------------------------------------------------------ the actor around the machine


class RecordingPort:
    """A SchedulerPort that keeps what the actor does with the machine's actions."""

    def __init__(self, pol: Policy) -> None:
        self.metrics: collections.Counter[str] = collections.Counter()
        self.events: list[tuple[int, Any]] = []
        self.saved: list[tuple[str, bool, str]] = []
        self.pol = pol

    def job_event(self, job_id: int, event: Any) -> None:
        self.events.append((job_id, event))

    def save_node(self, name: str, drain: bool, reason: str) -> None:
        self.saved.append((name, drain, reason))

    def policy(self) -> Policy:
        return self.pol


def test_the_actor_runs_one_pass_per_loop_turn_and_carries_out_the_actions() -> None:
    cfg = Config("x", nodes={"n1": NodeConf("n1", 4, GiB, [GpuDevice(0, "a100")])},
                 partitions={"P": PartitionConf("P", ["n1"])}, preempt_type="qos", preempt_mode="CANCEL")  # fmt: skip
    pol = policy_of(cfg, {"low": Qos("low", priority=1), "high": Qos("high", priority=9, preempt=["low"], grace_time=7)})
    assert pol.preempt_type == PreemptType.QOS and pol.qos["high"].preempt == {"low"}
    assert pol.partitions["P"].nodes == ("n1",) and pol.victim_mode("low", "P") == PreemptMode.CANCEL

    async def scenario() -> RecordingPort:
        Actor.bind_loop(asyncio.get_running_loop())
        port = RecordingPort(pol)
        sched = Scheduler(port, cfg.nodes.values())
        sched.restore_node("n1", True, "maintenance")
        assert sched.snapshot()[0]["state"] == NodeState.DOWN and sched.snapshot()[0]["reason"] == "maintenance"
        sched.adopt(1, ["n1"], 4, 0, False, False, {"n1": [0]}, qos="low", partition="P", uid=5, start_time=0.0)
        row = sched.snapshot()[0]
        assert row["gres"] == "gpu:a100:1" and row["gpus_used"] == 1 and row["jobs"] == [1]
        sched.tell(ev.NodeStatus("n1", up=True, drain=False, reason=""))
        sched.tell(ev.Enqueue(req(2, 4, qos="high", partition="P"), cause=3))
        for _ in range(100):
            await asyncio.sleep(0)
            if port.events:
                break
        sched.machine.validate_state()
        assert sched.passes == 1 and sched.reasons == {2: PendingReason.WAITING_FOR_PREEMPTION}
        return port

    port = asyncio.run(scenario())
    assert port.saved == [("n1", False, "")]
    [(victim, cancel)] = port.events
    assert victim == 1 and isinstance(cancel, ev.CancelEv) and cancel.grace == 0.0 and cancel.cause == 3
    assert cancel.reason == "Preempted by job 2" and not cancel.requeue
    assert port.metrics == {"preemptions": 1, "preempted_cancel": 1}


# ---------------------------------------------------------------- reconfigure


def test_reconfigure_adds_resizes_and_removes_only_unused_nodes() -> None:
    from crane.core.scheduling import NodeShape, NodesKept, Reconfigure

    mc = machine(ledger("n1"), ledger("n2"), ledger("n3"))
    run(mc, ev.Enqueue(req(1, 2, nodelist=("n1",))))
    assert allocs(run(mc, SchedulePass(0.0, policy(("n1", "n2", "n3"))))) == {1: ["n1"]}
    run(mc, ev.Enqueue(req(3, 8, nodelist=("n2",))))  # pending for n2 (too big today)
    shapes = {"n3": NodeShape(8, 4 * GiB), "n4": NodeShape(2, GiB, ("a100",))}
    acts = run(mc, Reconfigure(shapes))  # n1 (a job holds it) and n2 (a job waits for it) are kept
    kept = [a for a in acts if isinstance(a, NodesKept)]
    assert len(kept) == 1 and sorted(kept[0].nodes) == ["n1", "n2"]
    assert sorted(mc.ledgers) == ["n1", "n2", "n3", "n4"]
    assert mc.ledgers["n3"].cpus == mc.ledgers["n3"].cpus_free == 8
    n4 = mc.ledgers["n4"]
    assert not n4.up and n4.gpu_types == ["a100"] and n4.gpus_free == {0}
    assert mc.pass_wanted
    run(mc, ev.FreeNode(1, "n1"))
    run(mc, ev.Dequeue(3))
    acts = run(mc, Reconfigure(shapes))  # nothing uses them now: removed
    assert not acts and sorted(mc.ledgers) == ["n3", "n4"]


def test_reconfigure_resizes_a_busy_node_and_keeps_the_books() -> None:
    from crane.core.scheduling import NodeShape, NodesKept, Reconfigure

    mc = machine(ledger("n1", 4, 4 * GiB, gpus=("a", "a")))
    run(mc, ev.Enqueue(req(1, 3, gpus=2, nodelist=("n1",))))
    assert allocs(run(mc, SchedulePass(0.0, policy(("n1",))))) == {1: ["n1"]}
    run(mc, Reconfigure({"n1": NodeShape(8, 8 * GiB, ("a", "a"))}))
    led = mc.ledgers["n1"]
    assert (led.cpus, led.cpus_free, led.mem_free) == (8, 5, 8 * GiB)
    acts = run(mc, Reconfigure({"n1": NodeShape(8, 8 * GiB, ("a",))}))  # GPU 1 is held: kept
    assert [type(a) for a in acts] == [NodesKept] and led.gpu_types == ["a", "a"]
    run(mc, ev.FreeNode(1, "n1"))
    run(mc, Reconfigure({"n1": NodeShape(2, GiB, ("a",))}))
    assert (led.cpus_free, led.gpu_types, led.gpus_free) == (2, ["a"], {0})


def test_an_enqueue_crossing_the_jobs_allocation_is_ignored() -> None:
    """A pending job updated (Dequeue + Enqueue of its new request) while the
    pass placing it was on its way: it is not queued (and placed) twice."""
    mc = machine()
    run(mc, ev.Enqueue(req(1, 2)))
    assert allocs(run(mc, SchedulePass(0.0, policy()))) == {1: ["n1"]}
    run(mc, ev.Dequeue(1))
    run(mc, ev.Enqueue(req(1, 2, priority=5)))
    assert 1 not in mc.pending and not run(mc, SchedulePass(1.0, policy()))
    assert mc.ledgers["n1"].cpus_free == 2
