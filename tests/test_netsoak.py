"""bench/netsoak.py: its classification (pure functions, tested directly) and
its short form on the multi-host lab (``--duration 40``: the four counts 0)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from typing import Any

from bench.soak_verdicts import (
    ARRAY,
    FINAL,
    HI,
    HIGH,
    LONG,
    LOW,
    CancelCall,
    Fault,
    Submit,
    array_ids,
    duplicate_ids,
    duplicate_runs,
    early_waits,
    false_downs,
    fault_mix,
    held_resources,
    lost_cancels,
    lost_submissions,
    orphans,
    plan_fault,
    why_ended,
)
from crane.core.states import CancelPath, JobState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 6.0  # CranedTimeout of these examples


def job(
    jid: int, state: str = JobState.COMPLETED, user: str = "alice", name: str = ARRAY, **kw: Any
) -> dict[str, Any]:
    j: dict[str, Any] = {"job_id": jid, "state": state, "user": user, "name": name, "qos": LOW, "nodes": ["crane01"],
                         "start_time": 100.0, "end_time": 110.0, "reason": "", "message": "", "cancel_path": None,
                         "cancelled_by": None, "requeue_count": 0, "array_job_id": None, "exit_code": 0,
                         "exit_signal": 0}  # fmt: skip
    j.update(kw)
    return j


def cancelled(jid: int, by: str, msg: str, **kw: Any) -> dict[str, Any]:
    return job(
        jid, JobState.CANCELLED, cancel_path=CancelPath.USER, cancelled_by=by, message=msg, **kw
    )


def call(seq: int, user: str = "alice", ids: list[int] | None = None, result: dict[str, Any] | None = None,
         **kw: Any) -> CancelCall:  # fmt: skip
    return CancelCall(
        seq, user, ids=ids or [], result=result, done=200.0, rc=0 if result is not None else 3, **kw
    )


# ---------------------------------------------------------------- faults


def test_plan_fault_keeps_short_under_and_long_over_the_timeout() -> None:
    rng = random.Random(1)
    nodes = ["crane01", "crane02"]
    for _ in range(50):
        host, secs = plan_fault(rng, "cut_short", nodes, T)
        assert host in nodes and secs < 0.5 * T
        host, secs = plan_fault(rng, "cut_long", nodes, T)
        assert host in nodes and secs > 1.5 * T
        assert plan_fault(rng, "login", nodes, T)[0] == "login"
        for kind in ("pull", "block"):
            assert plan_fault(rng, kind, nodes, T)[1] in (round(0.3 * T, 1), round(1.7 * T, 1))


def test_fault_mix_counts_and_sums() -> None:
    mix = fault_mix(
        [
            Fault("cut_long", "crane01", 0, 10),
            Fault("cut_long", "crane02", 20, 30.5),
            Fault("login", "login", 1, 4),
        ]
    )
    assert mix == {"cut_long": (2, 20.5), "login": (1, 3.0)}


def test_false_downs_need_a_long_cut_of_that_node() -> None:
    faults = [Fault("cut_long", "crane01", 100, 110), Fault("cut_short", "crane02", 100, 101.8),
              Fault("slow", "crane03", 100, 109)]  # fmt: skip
    assert false_downs([("crane01", 106.5, 111.0)], faults, T) == []
    assert len(false_downs([("crane02", 106.5, 107.0)], faults, T)) == 1  # a short cut took it down
    assert len(false_downs([("crane03", 106.5, 107.0)], faults, T)) == 1  # a slow link took it down
    assert (
        len(false_downs([("crane01", 130.0, 131.0)], faults, T)) == 1
    )  # long after the cut healed


# ---------------------------------------------------------------- lost


def test_lost_submission_unknown_or_another_job() -> None:
    subs = [
        Submit(1, "alice", ARRAY, LOW, 3, 0.0, ids=array_ids(10, 3)),
        Submit(2, "bob", HI, HIGH, 1, 0.0),
    ]
    assert array_ids(10, 3) == [10, 11, 12]
    known = {10: job(10), 11: job(11), 12: job(12)}
    assert lost_submissions(subs, known) == []
    del known[11]
    known[12] = job(12, user="bob")
    out = lost_submissions(subs, known)
    assert len(out) == 2 and "job 11" in out[0] and "job 12" in out[1]


def test_acknowledged_cancel_must_end_cancelled() -> None:
    c = call(5, ids=[1, 2], result={"cancelled": [{"job_id": 1, "steps": None}, {"job_id": 2, "steps": None}],
                                    "not_cancelled": []})  # fmt: skip
    known = {1: cancelled(1, "alice", "soak-5"), 2: job(2, JobState.COMPLETED)}
    out = lost_cancels([c], known)
    assert len(out) == 1 and "job 2 acknowledged cancelled, ended COMPLETED" in out[0]
    known[2] = job(2, JobState.RUNNING)  # still running after the settle
    assert "ended RUNNING" in lost_cancels([c], known)[0]
    # not acknowledged (exit 3): nothing was promised
    assert lost_cancels([call(6, ids=[2])], known) == []


def test_every_id_asked_is_accounted_for_except_array_ids() -> None:
    known = {
        1: job(1),
        7: job(7, array_job_id=7),
        8: cancelled(8, "alice", "soak-5", array_job_id=7),
    }
    c = call(5, ids=[1], result={"cancelled": [], "not_cancelled": []})
    assert "job 1 asked, neither cancelled nor refused" in lost_cancels([c], known)[0]
    # ccancel 7: the array's id names its tasks; task 7 itself had ended
    c = call(5, ids=[7], result={"cancelled": [{"job_id": 8, "steps": None}], "not_cancelled": []})
    assert lost_cancels([c], known) == []


def test_refusals_must_be_true() -> None:
    def refused(jid: int, why: str) -> CancelCall:
        return call(5, ids=[jid], result={"cancelled": [], "not_cancelled": [{"job_id": jid, "step_id": None,
                                                                               "reason": why}]})  # fmt: skip

    known = {1: job(1, JobState.COMPLETED, end_time=150.0), 2: job(2, JobState.COMPLETED, end_time=250.0),
             3: cancelled(3, "alice", "soak-5"), 4: job(4, user="bob")}  # fmt: skip
    assert lost_cancels([refused(1, "Job already finished (COMPLETED)")], known) == []
    # it ended after the answer (200.0) said it had
    assert lost_cancels([refused(2, "Job already finished (COMPLETED)")], known)
    # "already finished" yet that very call cancelled it
    assert lost_cancels([refused(3, "Job already finished (COMPLETING)")], known)
    assert lost_cancels([refused(1, "Job not found")], known)  # alice's own job exists
    assert lost_cancels([refused(4, "Permission denied")], known) == []  # bob's
    assert lost_cancels([refused(1, "Permission denied")], known)


def test_early_waits() -> None:
    res = {"cancelled": [{"job_id": 1, "steps": None}], "not_cancelled": []}
    ok = call(5, ids=[1], result=res, wait=True, after={1: JobState.CANCELLED})
    assert early_waits([ok]) == []
    assert early_waits([call(5, ids=[1], result=res, wait=True, after={1: JobState.COMPLETING})])
    assert early_waits(
        [
            call(
                5,
                ids=[1],
                result=res,
                wait=True,
                after={1: JobState.CANCELLED},
                after_procs={1: [42]},
            )
        ]
    )
    assert (
        early_waits([call(5, ids=[1], result=res, wait=False, after={1: JobState.RUNNING})]) == []
    )


# ---------------------------------------------------------------- duplicated


def test_duplicated_ids_and_runs() -> None:
    subs = [
        Submit(1, "alice", ARRAY, LOW, 2, 0.0, ids=[1, 2]),
        Submit(2, "bob", HI, HIGH, 1, 0.0, ids=[2]),
    ]
    assert duplicate_ids(subs) == ["job id 2 acknowledged twice (submissions #1 and #2)"]
    known = {1: job(1), 2: job(2), 3: job(3, requeue_count=1), 4: job(4, requeue_count=1)}
    marks = {1: ["crane01 100 0"], 2: ["crane01 100 0", "crane02 200 0"], 3: ["crane01 1 0", "crane02 2 1"],
             4: ["crane01 1 1", "crane02 2 1"]}  # fmt: skip
    out = duplicate_runs(marks, known)
    assert [o.split()[1] for o in out] == ["2", "4"]  # 3 ran twice, but was requeued once


# ---------------------------------------------------------------- wrongly killed


def ended(j: dict[str, Any], calls: list[CancelCall] | None = None, faults: list[Fault] | None = None,
          known: dict[int, dict[str, Any]] | None = None) -> tuple[str, str | None]:  # fmt: skip
    return why_ended(j, {c.message: c for c in calls or []}, faults or [], T, known or {})


def test_completed_and_active_are_fine() -> None:
    assert ended(job(1)) == ("completed", None)
    assert ended(job(1, JobState.RUNNING)) == ("active", None)


def test_user_cancel_needs_a_call_of_the_owner_that_asked() -> None:
    c = call(5, ids=[1])
    assert ended(cancelled(1, "alice", "soak-5"), [c]) == ("cancelled", None)
    assert ended(cancelled(1, "alice", "soak-9"), [c])[1]  # no such call
    assert ended(cancelled(2, "alice", "soak-5"), [c])[1]  # the call did not name job 2
    assert ended(cancelled(1, "bob", "soak-5", user="bob"), [c])[1]  # alice's call on bob's job
    assert ended(cancelled(3, "alice", "soak-5", array_job_id=1), [c]) == (
        "cancelled",
        None,
    )  # task of array 1
    assert ended(cancelled(4, "root", FINAL)) == ("final", None)


def test_filter_cancel_matches_user_name_and_pending() -> None:
    pd = call(5, filters={"user": "alice", "name": ARRAY, "pending": True})
    assert ended(cancelled(1, "alice", "soak-5", nodes=[]), [pd]) == ("cancelled", None)
    assert ended(cancelled(1, "alice", "soak-5"), [pd])[
        1
    ]  # it had started (nodes): -t pd cannot select it
    assert ended(cancelled(1, "alice", "soak-5", name=LONG, nodes=[]), [pd])[1]
    long_ = call(6, filters={"user": "alice", "name": LONG})
    assert ended(cancelled(1, "alice", "soak-6", name=LONG), [long_]) == ("cancelled", None)


def test_preemption_victim_needs_a_high_preemptor_that_ran() -> None:
    def victim(by: int, qos: str = LOW) -> dict[str, Any]:
        return job(1, JobState.CANCELLED, qos=qos, cancel_path=CancelPath.PREEMPTION, cancelled_by="preemption",
                   message=f"Preempted by job {by}", reason=f"Preempted by job {by}")  # fmt: skip

    known = {9: job(9, qos=HIGH, name=HI), 8: job(8, qos=LOW), 7: job(7, JobState.FAILED, qos=HIGH, name=HI, nodes=[]),
             6: cancelled(6, "alice", "soak-5", qos=HIGH, name=HI, nodes=[])}  # fmt: skip
    assert ended(victim(9), known=known) == ("preempted", None)
    assert ended(victim(8), known=known)[1]  # a low job cannot preempt
    assert ended(victim(9, qos=HIGH), known=known)[1]  # a high job is no victim
    assert ended(victim(7), known=known)[1]  # the preemptor never started
    assert ended(victim(6), [call(5, ids=[6])], known=known) == (
        "preempted",
        None,
    )  # cancelled before it started
    assert ended(victim(5), known=known)[1]  # unknown preemptor
    known[5] = job(
        5,
        JobState.CANCELLED,
        qos=HIGH,
        name=HI,
        nodes=[],
        cancel_path=CancelPath.ADMIN,
        message=FINAL,
    )
    assert ended(victim(5), known=known) == (
        "preempted",
        None,
    )  # cancelled at the end before it could start


def test_node_fail_needs_a_cut_past_the_timeout() -> None:
    nf = job(1, JobState.FAILED, reason="Node crane01 down", end_time=107.0)
    long_cut = Fault("cut_long", "crane01", 100.0, 110.2)
    assert ended(nf, faults=[long_cut]) == ("node_fail", None)
    assert ended(nf, faults=[Fault("block", "crane01", 100.0, 110.2)]) == ("node_fail", None)
    assert ended(nf, faults=[Fault("cut_short", "crane01", 100.0, 101.8)])[1]
    assert ended(nf, faults=[Fault("slow", "crane01", 100.0, 110.0)])[1]
    assert ended(nf, faults=[Fault("cut_long", "crane02", 100.0, 110.2)])[1]  # another node
    assert ended(
        job(1, JobState.FAILED, reason="Node crane01 down", end_time=130.0), faults=[long_cut]
    )[1]
    assert ended(job(1, JobState.FAILED, reason="Launch failed: x"), faults=[long_cut])[1]
    assert ended(job(1, JobState.TIMEOUT), faults=[long_cut])[1]


# ---------------------------------------------------------------- orphaned


def test_orphans_wait_for_the_grace_and_a_quiet_node() -> None:
    procs = {
        1: [(100, "crane01")],
        2: [(200, "crane02")],
        3: [(300, "crane03")],
        4: [(400, "crane01")],
    }
    known = {
        1: job(1, end_time=100.0),
        2: job(2, end_time=100.0),
        3: job(3, JobState.RUNNING),
        4: job(4, end_time=195.0),
    }
    faults = [Fault("cut_long", "crane02", 170.0, 190.0)]
    out = orphans(procs, known, faults, now=200.0, grace=15.0)
    # 2: its node was cut until 10 s ago; 3 still runs; 4 ended 5 s ago
    assert list(out) == [1]
    assert list(orphans(procs, known, faults, now=210.0, grace=15.0)) == [1, 2]
    assert list(orphans({5: [(500, "crane01")]}, {}, [], now=200.0)) == [
        5
    ]  # a job the controller never knew


def test_held_resources() -> None:
    nodes = [{"name": "crane01", "cpus_alloc": 2, "jobs": [1]}, {"name": "crane02", "cpus_alloc": 0, "jobs": []},
             {"name": "crane03", "cpus_alloc": 1, "jobs": []}]  # fmt: skip
    assert held_resources(nodes, [job(1, JobState.RUNNING)]) == [held_resources(nodes, [])[1]]
    assert len(held_resources(nodes, [])) == 2


# ---------------------------------------------------------------- the short form


def test_short_soak_on_the_lab_counts_zero(users: dict[str, int]) -> None:  # noqa: ARG001
    """``python -m bench.netsoak --duration 40`` on a fresh lab: every count
    is 0 (the four of issue 15, early waits and false downs)."""
    from tests.netcluster import netns_works

    if not netns_works():
        import pytest

        pytest.skip("needs root, iproute2, util-linux and munge")
    r = subprocess.run([sys.executable, "-m", "bench.netsoak", "--duration", "40", "--seed", "15"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    print(r.stdout)
    counts = dict(re.findall(r"^(\w+): (\d+)$", r.stdout, re.M))
    assert set(counts) >= {"lost", "duplicated", "orphaned", "wrongly_killed"}, (
        r.stdout + r.stderr[-3000:]
    )
    assert "harness errors" not in r.stdout, r.stdout
    names = ("lost", "duplicated", "orphaned", "wrongly_killed", "early_waits", "false_downs")
    assert {k: int(counts.get(k, -1)) for k in names} == dict.fromkeys(names, 0), r.stdout + r.stderr[-3000:]
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    submitted = int(re.search(r"jobs: submitted (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    faults = int(re.search(r"\(total (\d+), ", r.stdout).group(1))  # type: ignore[union-attr]
    assert submitted >= 100 and faults >= 4, r.stdout
