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
