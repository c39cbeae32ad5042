"""Launches are told apart by something the controller never reuses (issue 15).

An agent remembers the jobs it released so that a resent launch of a run it
already ended is ignored. Job ids alone cannot say which run a launch is: a
controller whose database was replaced counts from job 1 again. Every launch
carries its database's incarnation (a random id made once with the database,
crane.store.incarnation), so the new job 1 runs although the agent killed and
released an old job 1 a moment before.

Real cranectld and craned processes; every wait is a poll with a deadline.
"""

from __future__ import annotations

import os
import sqlite3

import pytest

from crane.config import load
from crane.store import Store
from tests.conftest import IS_ROOT, Cluster, pid_alive, wait_for

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root (cgroups, job processes of other users)")

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")


def agent_log(c: Cluster, node: str) -> str:
    try:
        with open(os.path.join(c.base, "log", f"craned-{node}.log")) as f:
            return f.read()
    except OSError:
        return ""


def test_new_job_1_runs_after_the_database_is_replaced(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=1, HeartbeatInterval=0.5)
    db = load(c.config_path).db_file
    old = c.submit("-w", "crane01", wrap="sleep 300")
    assert old == 1
    pid = c.step_pid(old)

    # the database is replaced: the controller stopped, its SQLite files deleted
    c.stop("cranectld")
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(db + suffix)
        except FileNotFoundError:
            pass
    c.start_controller()
    c.wait_nodes_up(timeout=60)
    # the agent's job 1 is unknown to the new database: killed and released there
    wait_for(lambda: not pid_alive(pid), 60, "the old job 1 killed as unknown")
    wait_for(lambda: "job 1 released" in agent_log(c, "crane01"), 60, "the old job 1 released by the agent")

    out = c.file("new-job-1")
    new = c.submit("-w", "crane01", wrap=f"echo ran > {out}")
    assert new == 1  # the same id, another job
    j = c.wait_state(new, *TERMINAL, timeout=60)
    assert j["state"] == "COMPLETED", j
    assert c.read("new-job-1").strip() == "ran"
    assert "launch of 1.1 already done" not in agent_log(c, "crane01")


def test_incarnation_kept_across_restarts_and_new_with_a_new_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "db" / "crane.db")

    def incarnation() -> int:
        store = Store(path)
        store.read.close()
        return store.incarnation

    first = incarnation()
    again = incarnation()  # a controller restart: the same database
    assert first == again and first > 0
    with sqlite3.connect(path) as conn:  # it is in the database itself
        assert conn.execute("SELECT value FROM meta WHERE key='incarnation'").fetchone()[0] == first
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    assert incarnation() != first  # a replaced database (2**-62 to collide)


def test_agent_staleness_by_incarnation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The agent's check alone: a released job's launch is a resend only when
    it comes from the same database incarnation and is no newer a run."""
    from crane.agent.steps import StepManager

    sm = StepManager("n1", "crane/test-launch-identity/n1", str(tmp_path / "state"), "none", lambda _m: None)
    assert not sm.is_stale(1, 1, 0, 111)
    sm.launching(1, 0, 111)
    sm.released_job(1)
    assert sm.is_stale(1, 1, 0, 111)  # a resend of the run it released
    assert not sm.is_stale(1, 1, 1, 111)  # the job requeued: its next run
    assert not sm.is_stale(1, 1, 0, 222)  # job 1 of a replaced database
    sm.released_job(5)  # killed as unknown, never launched here
    assert not sm.is_stale(5, 1, 0, 222)
    assert sm.is_stale(5, 1, 0, "")  # a controller that sends no incarnation: as before
