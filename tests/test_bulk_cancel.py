"""A pending job has no processes: the cancel of many pending jobs is one
pass over their records (crane.core.bulk_cancel), one store operation
(crane.store.Store.put_cancelled), and everything seen from outside stays
as when each job's actor cancelled it: the answer, the history (who, when,
why), waits, the dependents, the scheduler's queue, metrics, a restart."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from crane import store as st
from crane.core import bulk_cancel
from crane.core import events as ev
from crane.core.job import Job
from crane.core.job_machine import JobMachine
from crane.core.states import CancelPath, EndState, JobState, PendingReason
from crane.local import free_port
from tests.conftest import Cluster, wait_for

# ---------------------------------------------------------------- pure


def pending_job(job_id: int, held: bool = False, reason: str = "") -> Job:
    j = Job(id=job_id, name="n", uid=1000, user="alice", gid=1000, account="default", qos="normal",
            partition="CPU", submit_time=100.0, held=held, reason=reason, dependency="")  # fmt: skip
    return j


def cancel(**kw: Any) -> ev.CancelEv:
    base: dict[str, Any] = {"by_uid": 0, "by_name": "root", "path": CancelPath.ADMIN, "message": "mass",
                            "grace": 30.0, "rid": "7:1", "cause": 3}  # fmt: skip
    base.update(kw)
    return ev.CancelEv(**base)


@pytest.mark.parametrize(
    "kw", [{}, {"end_state": EndState.FINISHED}, {"reason": "Preempted by job 9"}]
)
def test_end_pending_is_the_machines_transition(kw: dict[str, Any]) -> None:
    """The bulk pass changes each record exactly as JobMachine does, and
    that is: ended when cancelled (started = ended), CANCELLED (COMPLETED
    with --end-state FINISHED), the intent with who, when and why kept."""
    e = cancel(**kw)
    for job in (pending_job(5), pending_job(6, held=True, reason=PendingReason.HELD_USER)):
        want = job.to_dict()
        want.update(state=JobState.COMPLETED if kw.get("end_state") else JobState.CANCELLED,
                    start_time=1234.5, end_time=1234.5, reason=kw.get("reason") or job.reason,
                    cancel={"by_uid": 0, "by_name": "root", "path": CancelPath.ADMIN, "message": "mass",
                            "time": 1234.5, "force": False, "graceful": False, "grace": 30.0,
                            "end_state": kw.get("end_state", EndState.CANCELLED), "rid": "7:1",
                            "requeue": False, "reason": kw.get("reason", "")})  # fmt: skip
        by_machine = copy.deepcopy(job)
        actions = JobMachine(by_machine).handle(e, 1234.5)
        assert [type(a) for a in actions] == [ev.ToScheduler, ev.Persist, ev.Terminal]
        assert isinstance(actions[0].msg, ev.Dequeue) and actions[0].msg.cause == 3
        bulk_cancel.end_pending(job, bulk_cancel.intent_of(e, 1234.5), e, 1234.5)
        assert job.to_dict() == by_machine.to_dict() == want


def test_eligible_only_for_a_whole_pending_job() -> None:
    assert bulk_cancel.eligible(pending_job(1), cancel())
    assert not bulk_cancel.eligible(pending_job(1), cancel(step_id=2))
    assert not bulk_cancel.eligible(pending_job(1), cancel(signal=10))
    running = pending_job(1)
    running.state = JobState.RUNNING
    assert not bulk_cancel.eligible(running, cancel())


def test_stored_fields_laid_over_the_old_record_give_the_new_one() -> None:
    """What the store writes once for a batch, laid over each record as it
    was stored when pending, is each job's new record; one group per
    pending reason (the only field that differs)."""
    jobs = [pending_job(i, held=i % 2 == 0, reason=PendingReason.HELD_USER if i % 2 == 0 else "")
            for i in range(10, 20)]  # fmt: skip
    before = {j.id: j.to_dict() for j in jobs}
    e = cancel()
    intent = bulk_cancel.intent_of(e, 50.0)
    for j in jobs:
        bulk_cancel.end_pending(j, intent, e, 50.0)
    groups = bulk_cancel.stored_fields(jobs)
    assert sorted(len(ids) for _f, ids in groups) == [5, 5]
    for fields, ids in groups:
        assert set(fields) == set(bulk_cancel.CHANGED)
        for i in ids:
            rec = st.record(st.pack(before[i]), st.pack(fields))
            assert rec == next(j for j in jobs if j.id == i).to_dict()


def test_id_ranges() -> None:
    assert bulk_cancel.id_ranges([]) == []
    assert bulk_cancel.id_ranges([7, 1, 2, 3, 3, 9, 8, 20]) == [(1, 3), (7, 9), (20, 20)]


# ---------------------------------------------------------------- the store


def _record(job_id: int, state: str = JobState.PENDING) -> dict[str, Any]:
    rec = pending_job(job_id, held=True, reason=PendingReason.HELD_USER).to_dict()
    rec["state"] = state
    return rec


def test_store_bulk_cancel_reads_the_same_before_and_after_the_fold(tmp_path: Any) -> None:
    """Committed as a few rows, folded into the job rows afterwards: every
    read (one job, history by ids, by time window, the newest, the active
    jobs at a start) gives the jobs' new records throughout, and after a
    stop between the commit and the fold too."""
    path = str(tmp_path / "db" / "crane.db")
    # alternately held and queued: a range per job (one patch per pending reason)
    jobs = [pending_job(i, reason=PendingReason.HELD_USER if i % 2 else "") for i in range(1, 301)]
    e = cancel()
    intent = bulk_cancel.intent_of(e, time.time())

    def check(store: st.Store) -> None:
        got = {r["id"]: r for r in store.finished_jobs()}
        assert sorted(got) == [*range(1, 101), *range(201, 301), 400]
        assert all(got[j.id] == j.to_dict() for j in jobs if j.id in got)
        assert store.get_job(150)["state"] == JobState.PENDING  # type: ignore[index]
        assert store.get_job(250) == jobs[249].to_dict()
        by_ids = store.finished_jobs([5, 150, 250, 400])
        assert [r["id"] for r in by_ids] == [5, 250, 400] and by_ids[0] == jobs[4].to_dict()
        window = store.finished_jobs(ended_after=intent.time)
        assert len(window) == 200 and [r["id"] for r in window] == [
            *range(1, 101),
            *range(201, 301),
        ]
        assert [r["id"] for r in store.finished_jobs(limit=3)] == [299, 300, 400]
        assert sorted(r["id"] for r in store.load()[1]) == list(range(101, 201))

    async def run() -> None:
        store = st.Store(path)
        store.start()
        for j in jobs:
            store.put_job(j.to_dict())
        store.put_job(_record(400, JobState.COMPLETED))
        done = [j for j in jobs if not 100 < j.id <= 200]
        for j in done:
            bulk_cancel.end_pending(j, intent, e, intent.time or 0.0)
        for fields, ids in bulk_cancel.stored_fields(done):
            store.put_cancelled(fields, bulk_cancel.id_ranges(ids))
        saved = asyncio.get_running_loop().create_future()
        store.barrier(lambda: saved.set_result(True))
        await asyncio.wait_for(saved, 30)
        check(store)  # read over the rows, or folded already: the same
        for _ in range(3000):  # the writer folds while idle
            if not len(store.cancels):
                break
            await asyncio.sleep(0.01)
        assert not len(store.cancels)
        check(store)
        store.stop()

    asyncio.run(run())
    with sqlite3.connect(path) as conn:  # folded: the rows say it, no range left
        assert conn.execute("SELECT count(*) FROM cancels").fetchone()[0] == 0
        assert (
            conn.execute("SELECT count(*) FROM jobs WHERE state='CANCELLED'").fetchone()[0] == 200
        )
        # a stop between the commit and the fold: the ranges alone say it
        conn.execute(
            "UPDATE jobs SET state='PENDING', end_time=NULL, patch=NULL WHERE id BETWEEN 201 AND 300"
        )
        for fields, ids in bulk_cancel.stored_fields([j for j in jobs if j.id > 200]):
            conn.executemany("INSERT INTO cancels VALUES (?, ?, ?)",
                             [(lo, hi, st.pack(fields)) for lo, hi in bulk_cancel.id_ranges(ids)])  # fmt: skip
    reopened = st.Store(path)
    try:
        check(reopened)
        assert len(reopened.cancels) == 100
    finally:
        reopened.read.close()


# ---------------------------------------------------------------- a real cluster


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def cqueue_ids(c: Cluster, *argv: str) -> set[int]:
    return {j["job_id"] for j in json.loads(c.ok("cqueue", "--json", *argv))}


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLIs as real users (root only)")
def test_mass_cancel_by_filter_pending_and_running(make_cluster: Callable[..., Cluster],
                                                   users: dict[str, int]) -> None:  # fmt: skip
    """One ``ccancel -u alice`` over 1,500 held jobs, 40 queued behind a
    running job and the running job itself: the answer names each; every
    pending one is CANCELLED at once with who, when and why, the queued
    ones never start when the node frees, the running one ends as before;
    bob's jobs stay, his dependents on alice's jobs are released or fail
    as before; the metrics count each; a restart keeps it all."""
    port = free_port()
    c = make_cluster(nodes=1, cpus=2, MetricsPort=port)
    held = json.loads(c.ok("cbatch", "--json", "-H", "--repeat", "1500", "-o", "/dev/null", "--wrap", "true",
                           user="alice"))["job_ids"]  # fmt: skip
    running = c.submit("-c", "2", "-o", "/dev/null", wrap="sleep 300", user="alice")
    c.step_pid(running)
    queued = json.loads(c.ok("cbatch", "--json", "--repeat", "40", "-o", "/dev/null", "--wrap", "true",
                             user="alice"))["job_ids"]  # fmt: skip
    bobs = c.submit("-H", "-o", "/dev/null", wrap="true", user="bob")
    after_any = c.submit("-d", f"afterany:{held[7]}", "-o", "/dev/null", wrap="true", user="bob")
    after_ok = c.submit("-d", f"afterok:{held[8]}", "-o", "/dev/null", wrap="true", user="bob")
    assert c.wait_state(after_any, "PENDING")["reason"] == PendingReason.DEPENDENCY
    ours = {*held, *queued, running}

    # --wait: returns once every one ended and is recorded, the running one's processes gone
    out = json.loads(c.ok("ccancel", "--json", "--wait", "-u", "alice", "-m", "mass cancel"))
    assert sorted(x["job_id"] for x in out["cancelled"]) == sorted(ours)
    assert all(x["steps"] == [] for x in out["cancelled"]) and out["not_cancelled"] == []
    assert not cqueue_ids(c) & set(held + queued)  # the pending ones are gone at once

    hist = {
        j["job_id"]: j
        for j in json.loads(c.ok("cacct", "--json", "-u", "alice", "-S", "2000-01-01"))
    }
    assert set(hist) >= ours
    for jid in held + queued:
        j = hist[jid]
        assert (j["state"], j["cancelled_by"], j["message"]) == (
            JobState.CANCELLED,
            "root",
            "mass cancel",
        ), j
        assert j["start_time"] == j["end_time"] == j["cancel_time"], j
    assert hist[running]["state"] == JobState.CANCELLED and hist[running]["cancelled_by"] == "root"
    # the node is free: alice's queued jobs never start, bob's dependents go on as before
    assert c.wait_state(after_any, "COMPLETED", timeout=60)
    assert c.wait_state(after_ok, "PENDING")["reason"] == PendingReason.DEPENDENCY_NEVER_SATISFIED
    assert all(hist[j]["state"] == JobState.CANCELLED for j in queued)
    assert all(c.state(j) == JobState.CANCELLED for j in queued[:5] + queued[-5:])
    assert cqueue_ids(c) == {bobs, after_ok}

    n = len(ours)
    got = wait_for(lambda: (m := scrape(port)).get('crane_cancels_total{path="admin"}') == n and m,
                   30, "the metrics to count every cancel")  # fmt: skip
    assert got["crane_cancel_latency_seconds_count"] == n
    assert got.get('crane_jobs{state="PENDING"}', 0) == 2  # bob's two

    c.restart()  # every daemon stopped and started: the controller recovers from the store
    assert cqueue_ids(c) == {bobs, after_ok}
    hist = {
        j["job_id"]: j
        for j in json.loads(c.ok("cacct", "--json", "-u", "alice", "-S", "2000-01-01"))
    }
    assert all(
        hist[j]["state"] == JobState.CANCELLED and hist[j]["message"] == "mass cancel" for j in held
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLIs as real users (root only)")
def test_mass_cancel_of_an_array_dry_run_end_state_and_rights(make_cluster: Callable[..., Cluster],
                                                              users: dict[str, int]) -> None:  # fmt: skip
    """An array id stands for its 300 held tasks; a dry run changes nothing;
    ``--end-state FINISHED`` ends them COMPLETED; a plain user's filter
    cancels their own pending jobs only; a job named twice in one request
    is cancelled once."""
    c = make_cluster(nodes=1, cpus=2)
    array = c.submit("-H", "--array", "0-299", "-o", "/dev/null", wrap="true", user="alice")
    bobs = json.loads(c.ok("cbatch", "--json", "-H", "--repeat", "100", "-o", "/dev/null", "--wrap", "true",
                           user="bob"))["job_ids"]  # fmt: skip
    tasks = list(range(array, array + 300))
    dry = json.loads(c.ok("ccancel", "--json", "--dry-run", str(array), user="alice"))
    assert sorted(x["job_id"] for x in dry["cancelled"]) == tasks and dry["dry_run"]
    assert cqueue_ids(c) == {*tasks, *bobs}
    out = json.loads(c.ok("ccancel", "--json", "--end-state", "FINISHED", str(array), str(array + 3),
                          user="alice"))  # fmt: skip
    assert sorted(x["job_id"] for x in out["cancelled"]) == tasks
    assert cqueue_ids(c) == set(bobs)
    hist = {
        j["job_id"]: j
        for j in json.loads(c.ok("cacct", "--json", "-j", str(array), "-S", "2000-01-01"))
    }
    assert sorted(hist) == tasks and {j["state"] for j in hist.values()} == {JobState.COMPLETED}
    assert {j["cancelled_by"] for j in hist.values()} == {"alice"}
    # bob's filter (every pending job) reaches his own only; alice's are not even listed
    out = json.loads(c.ok("ccancel", "--json", "-t", "PD", user="bob"))
    assert (
        sorted(x["job_id"] for x in out["cancelled"]) == sorted(bobs) and out["not_cancelled"] == []
    )
    assert cqueue_ids(c) == set()
    assert {c.state(j) for j in (bobs[0], bobs[-1])} == {JobState.CANCELLED}


# ---------------------------------------------------------------- the job table


class Inbox:
    """The scheduler's mailbox, as the job table tells it."""

    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, msg: Any) -> None:
        self.told.append(msg)


def test_job_table_cancels_idle_pending_jobs_together(tmp_path: Any) -> None:
    """Every whole cancel told in one turn, to idle pending jobs, is handled
    in one turn of the pending-cancels actor: each job leaves the table and
    the scheduler's queue (a held one is not in it), a busy job's actor gets
    its cancel in its turn, a waiter on the request is called back only once
    the cancels are committed, and a job's waiter once it is terminal."""
    import collections

    from crane.actors.base import Actor
    from crane.actors.jobs import JobTable
    from crane.actors.streams import Relay
    from crane.actors.waits import Waits

    async def run() -> None:
        loop = asyncio.get_running_loop()
        Actor.bind_loop(loop)
        store = st.Store(str(tmp_path / "db" / "crane.db"))
        store.start()
        sched = Inbox()
        table = JobTable(
            loop, store, sched, {}, {}, Waits(10), Relay(), collections.Counter(), None
        )  # type: ignore[arg-type]
        jobs = [pending_job(i, held=i % 3 == 0) for i in range(1, 201)]
        for j in jobs:
            table.add(j)
        saved = loop.create_future()
        store.barrier(lambda: saved.set_result(True))
        await asyncio.wait_for(saved, 30)
        sched.told.clear()
        woken: list[str] = []
        assert table.wait_jobs(0, [150], lambda: woken.append("job 150")) is None
        busy = table.jobs[200]
        busy.tell(ev.SetReason("x"))  # mail waiting: its cancel must come after it
        e = cancel()
        for j in jobs:
            table.job_event(j.id, e)

        on_disk: list[set[str]] = []

        def persisted() -> None:  # what a Cancel request's answer waits for
            woken.append("request")
            on_disk.append({(store.get_job(j.id) or {}).get("state", "") for j in jobs})

        table.after_persisted(persisted)
        for _ in range(3000):
            if "request" in woken and "job 150" in woken:
                break
            await asyncio.sleep(0.01)
        assert woken == ["request", "job 150"] or woken == ["job 150", "request"]
        assert on_disk == [{JobState.CANCELLED}]  # every cancel committed before the answer
        assert not table.jobs and not table.active_by_uid
        dequeued = sorted(x.job_id for x in sched.told if isinstance(x, ev.Dequeue))
        assert dequeued == [j.id for j in jobs if not j.held]
        assert all(x.cause == 3 for x in sched.told if isinstance(x, ev.Dequeue))
        assert (
            busy.job.reason == "x"
            and busy.job.cancel is not None
            and busy.job.cancel.time is not None
        )
        assert table.metrics["jobs_cancelled"] == 200 and table.metrics["cancel_path_admin"] == 200
        assert sum(table.cancel_latency.counts) == 200
        store.stop()

    asyncio.run(run())
