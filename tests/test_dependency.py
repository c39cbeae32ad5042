"""Job dependencies (issue 14): the pure parser and evaluator, the
scheduling machine's gates, and end to end: afterok/afterany/afternotok/
after/singleton, arrays as dependencies, DependencyNeverSatisfied, unknown
jobs refused, and a controller restart."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crane.core import events as ev
from crane.core import scheduling as sc
from crane.core.dependency import Dependency, Outcome, Status, Term, evaluate, parse
from crane.core.ledger import NodeLedger, Request
from crane.core.states import PendingReason
from tests.conftest import Cluster, wait_for

# ---------------------------------------------------------------- parser


def test_parse() -> None:
    assert parse("afterok:12:13") == Dependency((Term("afterok", (12, 13)),))
    assert parse("afterany:1,singleton") == Dependency((Term("afterany", (1,)), Term("singleton")))
    assert parse("afterok:1?afternotok:2") == Dependency((Term("afterok", (1,)), Term("afternotok", (2,))), True)
    assert parse("AFTER:5:5").terms == (Term("after", (5,)),)
    assert parse("afterok:1:2,afterany:2:3").ids == [1, 2, 3]
    assert parse("singleton").singleton and not parse("after:1").singleton


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("afterok", "needs job ids"),
        ("afterok:", "needs job ids"),
        ("afterok:0", "is not a job id"),
        ("afterok:01", "is not a job id"),
        ("afterok:x", "is not a job id"),
        ("afterok:99999999999", "is not a job id"),
        ("afterok:1+10", "is not a job id"),
        ("aftercorr:1", "unknown type"),
        ("before:1", "unknown type"),
        ("singleton:3", "takes no job ids"),
        ("afterok:1,afterany:2?after:3", "not both"),
        ("afterok:1,", "unknown type"),
        ("a" * 5000, "longer than"),
        ("afterok:" + ":".join(["1"] * 1001), "more than 1000"),
    ],
)
def test_parse_refuses(text: str, words: str) -> None:
    with pytest.raises(ValueError) as e:
        parse(text)
    assert words in str(e.value) and str(e.value).startswith("invalid dependency")
    assert len(str(e.value)) < 300


@given(st.text(max_size=60))
def test_parse_never_crashes(text: str) -> None:
    try:
        dep = parse(text)
    except ValueError:
        return
    assert dep.terms and all(t.kind == "singleton" or t.ids for t in dep.terms)


# ---------------------------------------------------------------- evaluator

P, S, OK, NOK, U = Status.PENDING, Status.STARTED, Status.OK, Status.NOTOK, Status.UNKNOWN


@pytest.mark.parametrize(
    ("kind", "status", "outcome"),
    [
        ("after", P, Outcome.WAIT), ("after", S, Outcome.MET), ("after", OK, Outcome.MET), ("after", NOK, Outcome.MET),
        ("afterany", P, Outcome.WAIT), ("afterany", S, Outcome.WAIT), ("afterany", OK, Outcome.MET),
        ("afterany", NOK, Outcome.MET), ("afterany", U, Outcome.MET),
        ("afterok", P, Outcome.WAIT), ("afterok", S, Outcome.WAIT), ("afterok", OK, Outcome.MET),
        ("afterok", NOK, Outcome.NEVER), ("afterok", U, Outcome.NEVER),
        ("afternotok", S, Outcome.WAIT), ("afternotok", OK, Outcome.NEVER), ("afternotok", NOK, Outcome.MET),
    ],
)  # fmt: skip
def test_evaluate_one(kind: str, status: Status, outcome: Outcome) -> None:
    assert evaluate(parse(f"{kind}:1"), lambda i: [status]) == outcome


def test_evaluate_combinations() -> None:
    st_of = {1: [OK], 2: [NOK], 3: [S], 4: [OK, OK, S], 5: [OK, NOK]}.__getitem__
    assert evaluate(parse("afterok:1,afternotok:2"), st_of) == Outcome.MET
    assert evaluate(parse("afterok:1,afterany:3"), st_of) == Outcome.WAIT
    assert evaluate(parse("afterok:2,afterany:3"), st_of) == Outcome.NEVER  # one never: all never
    assert evaluate(parse("afterok:2?afterany:3"), st_of) == Outcome.WAIT  # "?": another may still hold
    assert evaluate(parse("afterok:2?afterok:1"), st_of) == Outcome.MET
    assert evaluate(parse("afterok:2?afternotok:1"), st_of) == Outcome.NEVER
    assert evaluate(parse("afterok:4"), st_of) == Outcome.WAIT  # an array: every task
    assert evaluate(parse("afterok:5"), st_of) == Outcome.NEVER
    assert evaluate(parse("afterany:5"), st_of) == Outcome.MET
    assert evaluate(parse("singleton"), st_of, singleton_clear=False) == Outcome.WAIT
    assert evaluate(parse("singleton,afterok:1"), st_of, singleton_clear=True) == Outcome.MET


# ---------------------------------------------------------------- the scheduling machine's gates


def _machine() -> sc.SchedulingMachine:
    return sc.SchedulingMachine({"n1": NodeLedger("n1", 4, 1 << 30, 4, 1 << 30, up=True)})


def _pass(m: sc.SchedulingMachine) -> list[int]:
    policy = sc.Policy(partitions={"p": sc.PartitionPolicy(nodes=("n1",))})
    out = [a.job_id for a in m.handle(sc.SchedulePass(0.0, policy)) if isinstance(a, sc.Allocate)]
    m.validate_state()
    return out


def _req(job_id: int) -> Request:
    return Request(job_id, "p", 1, 0, 1, False, [], "", 0, 0, 0, "")


def test_gate_keeps_a_job_out_until_lifted() -> None:
    m = _machine()
    m.handle(sc.Gate(1, PendingReason.DEPENDENCY))
    m.handle(ev.Enqueue(_req(1)))
    m.handle(ev.Enqueue(_req(2)))
    assert m.reasons[1] == PendingReason.DEPENDENCY
    assert _pass(m) == [2]
    assert m.reasons[1] == PendingReason.DEPENDENCY
    m.handle(sc.Gate(1, PendingReason.DEPENDENCY_NEVER_SATISFIED))
    assert _pass(m) == [] and m.reasons[1] == PendingReason.DEPENDENCY_NEVER_SATISFIED
    m.handle(sc.Gate(1, ""))
    assert m.pass_wanted and _pass(m) == [1]
    m.handle(sc.Gate(3, PendingReason.DEPENDENCY))
    m.handle(sc.Forget(3))
    m.handle(ev.Enqueue(_req(3)))
    assert _pass(m) == [3]


def test_array_limit_in_the_machine() -> None:
    m = _machine()
    for j in (10, 11, 12):
        m.handle(sc.ArrayTask(j, 10, 2))
        m.handle(ev.Enqueue(_req(j)))
    assert _pass(m) == [10, 11]
    assert m.reasons[12] == PendingReason.ARRAY_TASK_LIMIT
    assert _pass(m) == []
    m.handle(ev.FreeNode(10, "n1"))
    m.handle(sc.Forget(10))
    assert _pass(m) == [12]


# ---------------------------------------------------------------- end to end


def _submit(c: Cluster, *argv: str, user: str | None = None) -> int:
    return int(json.loads(c.ok("cbatch", "--json", *argv, user=user))["job_id"])


def _reason(c: Cluster, job_id: int) -> str | None:
    j = c.job(job_id)
    return j["reason"] if j and j["state"] == "PENDING" else None


def _wait_reason(c: Cluster, job_id: int, reason: str) -> None:
    wait_for(lambda: _reason(c, job_id) == reason or None, 60, f"job {job_id} pending ({reason})")


def test_afterok_afternotok_afterany(cluster: Cluster) -> None:
    c = cluster
    gate = c.file("dep-gate")
    first = _submit(c, "-o", "/dev/null", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.2; done; exit 3")
    ok = _submit(c, "-d", f"afterok:{first}", "-o", "/dev/null", "--wrap", "true")
    notok = _submit(c, "-d", f"afternotok:{first}", "-o", "/dev/null", "--wrap", "true")
    anyd = _submit(c, "--dependency", f"afterany:{first}", "-o", "/dev/null", "--wrap", "true")
    after = _submit(c, "-d", f"after:{first}", "-o", "/dev/null", "--wrap", "true")
    c.wait_state(after, "COMPLETED", timeout=60)  # after: once started
    for j in (ok, notok, anyd):
        _wait_reason(c, j, "Dependency")
    long = c.ok("cqueue", "-l", "-j", str(ok))
    assert f"afterok:{first}" in long and "(Dependency)" in long, long
    assert json.loads(c.ok("cqueue", "--json", "-j", str(ok)))[0]["dependency"] == f"afterok:{first}"
    open(gate, "w").close()
    c.wait_state(first, "FAILED", timeout=60)
    c.wait_state(notok, "COMPLETED", timeout=60)
    c.wait_state(anyd, "COMPLETED", timeout=60)
    _wait_reason(c, ok, "DependencyNeverSatisfied")  # stays pending, as Slurm: the user cancels it
    c.ok("ccancel", str(ok))
    c.wait_state(ok, "CANCELLED", timeout=60)
    # a job that ended before the submission: its end counts
    late = _submit(c, "-d", f"afternotok:{first}", "-o", "/dev/null", "--wrap", "true")
    c.wait_state(late, "COMPLETED", timeout=60)
    never = _submit(c, "-d", f"afterok:{first}", "-o", "/dev/null", "--wrap", "true")
    _wait_reason(c, never, "DependencyNeverSatisfied")
    c.ok("ccancel", str(never))
    c.wait_state(never, "CANCELLED", timeout=60)


def test_dependency_refusals(cluster: Cluster) -> None:
    c = cluster
    for dep, words in [("afterok:999999", "invalid dependency: job 999999 not found"),
                       ("afterok:x", "invalid dependency"), ("aftercorr:1", "unknown type")]:  # fmt: skip
        r = c.run("cbatch", "-d", dep, "--wrap", "true")
        assert r.returncode == 2 and words in r.stderr and r.stderr.startswith("cbatch: "), (dep, r.stderr)


def test_array_dependency_and_singleton(cluster: Cluster) -> None:
    c = cluster
    gate = c.file("arr-dep-gate")
    a = _submit(c, "-a", "0-2", "-o", "/dev/null", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.2; done")
    dep = _submit(c, "-d", f"afterok:{a}", "-o", "/dev/null", "--wrap", "true")
    one = _submit(c, "-d", f"afterok:{a + 1}", "-o", "/dev/null", "--wrap", "true")
    _wait_reason(c, dep, "Dependency")
    _wait_reason(c, one, "Dependency")
    # singleton: the second of the same name and user waits for the first
    s1 = _submit(c, "-J", "single", "-d", "singleton", "-o", "/dev/null", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.2; done")
    c.wait_state(s1, "RUNNING", timeout=60)
    s2 = _submit(c, "-J", "single", "-d", "singleton", "-o", "/dev/null", "--wrap", "true")
    _wait_reason(c, s2, "Dependency")
    open(gate, "w").close()
    for j in (a, a + 1, a + 2, dep, one, s1, s2):
        c.wait_state(j, "COMPLETED", timeout=60)


def test_dependency_survives_a_restart(make_cluster: Any) -> None:
    c = make_cluster(nodes=1, cpus=2)
    gate = c.file("restart-gate")
    first = _submit(c, "-o", "/dev/null", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.2; done")
    dep = _submit(c, "-d", f"afterok:{first}", "-o", "/dev/null", "--wrap", "true")
    arr = _submit(c, "-a", "0-1%1", "-o", "/dev/null", "--wrap", f"while [ ! -e {gate} ]; do sleep 0.2; done")
    _wait_reason(c, dep, "Dependency")
    c.wait_state(arr, "RUNNING", timeout=60)
    _wait_reason(c, arr + 1, "JobArrayTaskLimit")
    c.restart()  # every daemon stopped and started: the controller recovers the dependency and the limit
    _wait_reason(c, dep, "Dependency")
    _wait_reason(c, arr + 1, "JobArrayTaskLimit")
    assert c.state(arr) == "RUNNING"
    open(gate, "w").close()
    for j in (first, dep, arr, arr + 1):
        c.wait_state(j, "COMPLETED", timeout=60)


@given(st.lists(st.tuples(st.sampled_from(["enq", "gate", "lift", "forget", "free", "deq", "pass"]),
                          st.integers(1, 6)), max_size=60))  # fmt: skip
def test_gates_and_array_limits_hold_under_any_order(ops: list[tuple[str, int]]) -> None:
    """Random orders of queue, gate, forget, free and passes: a gated job is
    never placed, an array (jobs 1-4, limit 2) never runs more than 2 tasks,
    and the machine's invariants hold."""
    m = sc.SchedulingMachine({"n1": NodeLedger("n1", 8, 1 << 30, 8, 1 << 30, up=True)})
    for j in (1, 2, 3, 4):
        m.handle(sc.ArrayTask(j, 1, 2))
    gated: set[int] = set()
    for op, j in ops:
        if op == "enq" and j not in m.pending and j not in m.held:
            m.handle(ev.Enqueue(_req(j)))
        elif op == "gate":
            m.handle(sc.Gate(j, PendingReason.DEPENDENCY))
            gated.add(j)
        elif op == "lift":
            m.handle(sc.Gate(j, ""))
            gated.discard(j)
        elif op == "forget" and j > 4 and j not in m.held and j not in m.pending:  # an array task ends once
            m.handle(sc.Forget(j))
            gated.discard(j)
        elif op == "free" and j in m.held:
            m.handle(ev.FreeNode(j, "n1"))
        elif op == "deq":
            m.handle(ev.Dequeue(j))
        elif op == "pass":
            placed = _pass(m)
            assert not (set(placed) & gated), (placed, gated)
            for g in gated & set(m.pending):
                assert m.reasons[g] == PendingReason.DEPENDENCY
        assert sum(1 for t in (1, 2, 3, 4) if t in m.held) <= 2
        m.validate_state()
