"""The multi-host cluster itself: controller, login and compute hosts on
separate network stacks, users on the login host over TCP with MUNGE."""

from __future__ import annotations

import json

from tests.conftest import wait_for
from tests.netcluster import NetTestCluster


def test_login_host_submits_and_cancels_across_hosts(make_net_cluster, users) -> None:  # type: ignore[no-untyped-def]
    c: NetTestCluster = make_net_cluster(nodes=2)
    assert c.lab.reachable("login", "ctl") and c.lab.reachable("crane01", "ctl")
    j = c.submit("-N", "2", wrap="hostname -I > out_$CRANE_JOB_ID; sleep 300", user="alice")
    job = c.wait_state(j, "RUNNING")
    assert job["user"] == "alice"
    pid = c.step_pid(j)
    out = c.ok("ccancel", "--wait", str(j), user="alice")
    assert str(j) in out
    final = c.job(j)
    assert final is not None and final["state"] == "CANCELLED", final
    wait_for(lambda: c.read(f"out_{j}").strip(), 10, "the job's output")
    assert c.read(f"out_{j}").split()[0].startswith("10.77.0."), c.read(f"out_{j}")
    assert pid > 0
    r = c.run("ccancel", str(j), user="bob")
    assert r.returncode != 0
    q = json.loads(c.ok("cinfo", "--json", user="alice"))
    assert q


def test_leftovers_are_confirmed_by_the_nodes_registration_and_step_ends() -> None:
    from crane.actors.leftovers import Leftovers

    lo = Leftovers()
    lo.node_down("n1", [1, 2, 3])
    lo.node_down("n2", [3])
    assert 1 in lo and 3 in lo and 4 not in lo
    assert lo.step_gone("n1", 1, 1) is False  # before the node registered: not known yet
    # n1 back running job 2's steps 1 and 2 (and job 9, never down here)
    assert lo.node_back("n1", {2: [1, 2], 9: [1]}) == [1]
    assert 1 not in lo and 2 in lo
    assert lo.step_gone("n1", 2, 1) is False and lo.step_gone("n1", 2, 2) is True and 2 not in lo
    assert lo.node_back("n1", {}) == [] and 3 in lo  # still unconfirmed on n2
    assert lo.node_back("n2", {}) == [3] and 3 not in lo


def test_wait_on_a_cancel_holds_until_the_down_nodes_processes_are_gone(make_net_cluster, users) -> None:  # type: ignore[no-untyped-def]
    """A node cut off past CranedTimeout goes DOWN and its jobs end, but
    their processes may live on behind the cut: ``ccancel --wait`` returns
    only once the node is back and they are dead (found by the soak: it
    returned at DOWN while the job's processes ran)."""
    import subprocess

    from tests.conftest import pid_alive

    c: NetTestCluster = make_net_cluster(nodes=1, HeartbeatInterval=1, CranedTimeout=4)
    j = c.submit("-w", "crane01", wrap="sleep 300", user="alice")
    c.wait_state(j, "RUNNING")
    pid = c.step_pid(j)
    c.lab.cut("crane01")
    try:
        waiter = subprocess.Popen(c.command("ccancel", "--wait", str(j), user="alice"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=c.env(), cwd=c.workdir)  # fmt: skip
        wait_for(lambda: c.nodes_state().get("crane01") == "DOWN", 30, "crane01 DOWN")
        c.wait_state(j, "CANCELLED", "FAILED", timeout=30)
        # the job ended on the controller; its processes still run behind the cut: no answer yet
        assert pid_alive(pid)
        assert waiter.poll() is None, waiter.communicate()
    finally:
        c.lab.heal("crane01")
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, (out, err)
    assert not pid_alive(pid), "ccancel --wait returned while the job's process was alive"
    job = c.job(j)
    assert job is not None and job["state"] == "CANCELLED" and job["cancelled_by"] == "alice", job
