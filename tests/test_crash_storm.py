"""Controller crash storm, CI size (issue 6, item 1): the harness of
``python -m bench.crash_storm`` with 5 crashes; plus the regression test of the
launch/kill race the soak found."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.crash_storm import report, run_storm
from tests.conftest import IS_ROOT


def test_crash_storm_ci(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = str(tmp_path / "storm")
    os.makedirs(base)
    res = run_storm(
        crashes=5, nodes=4, seed=20261126, deadline=30.0, base=base, out=None, threads=2
    )
    print(report(res))
    assert res["crashes_injected"] >= 5
    assert res["jobs_acknowledged"] > 0 and res["cancels_acknowledged"] > 0
    assert res["lost"] == 0, res["violations"]
    assert res["orphans"] == 0, res["violations"]
    assert res["id_reuse"] == 0, res["violations"]
    assert res["integrity_ok"], res["violations"]
    assert res["ok"], res["violations"]
    assert res["wall_s"] < 120


# A KillJob handled right after the LaunchStep (a cancel or a preemption within
# milliseconds of the start, the soak's first failure): the forked child had not
# yet moved itself into its cgroup, the cgroup kill found it empty, the job was
# released and its processes ran on. Run in a subprocess: the StepManager reaps
# every child of its process.
RACE = r"""
import asyncio, os, signal, sys, tempfile
from crane.core import messages as m
from crane.agent import cgroup as cgmod
from crane.agent.launcher import set_child_subreaper
from crane.agent.steps import StepManager

def alive_in(scope):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(") ", 1)[1][0] in "ZX":
                    continue
            with open(f"/proc/{p}/cgroup") as f:
                cg = f.read()
            with open(f"/proc/{p}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if f"/{scope}/" in cg or f"CRANE_SCOPE={scope}/".encode() in env:
            out.append(int(p))
    return out

async def main(n):
    set_child_subreaper()
    sent = []
    scope = f"crane/race{os.getpid()}"
    sm = StepManager("n1", scope + "/n1", tempfile.mkdtemp(), cgmod.detect_mode(), sent.append)
    asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, sm.reap)
    bad = 0
    for i in range(1, n + 1):
        spec = {"uid": 0, "gid": 0, "user": "root", "argv": ["sleep", "300"], "cwd": "/tmp",
                "env": {"PATH": "/usr/bin:/bin"}, "stdout": "/dev/null", "stderr": "/dev/null"}
        sm.launch(m.LaunchStep(i, 1, spec))
        await sm.kill_job(m.KillJob(i, None, 0.0, True, "CANCELLED"))
        assert any(isinstance(x, m.JobReleased) and x.job_id == i for x in sent)
        await asyncio.sleep(0.05)
        left = alive_in(scope)
        if left:
            bad += 1
            for p in left:
                os.kill(p, signal.SIGKILL)
    print(f"{bad}/{n} released with processes alive")
    return bad

sys.exit(1 if asyncio.run(main(int(sys.argv[1]))) else 0)
"""


@pytest.mark.skipif(not IS_ROOT, reason="needs root for cgroups")
def test_kill_right_after_launch_leaves_nothing() -> None:
    from crane.agent.cgroup import detect_mode

    if detect_mode() == "none":
        pytest.skip("no writable cgroups")
    r = subprocess.run(
        [sys.executable, "-c", RACE, "10"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_crun_survives_a_controller_restart(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """crun blocks in WaitStep; a restarted controller has forgotten that
    request. crun asks again, so the job goes on with its next step and ends
    (it used to hang RUNNING forever, found by the storm's "keep" jobs)."""
    import signal

    from crane.cli.common import call, load_config
    from crane.core import messages as m
    from tests.conftest import BIN, wait_for

    c = make_cluster(nodes=1, cpus=2)
    cfg = load_config(c.config_path)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "CRANE_CONF": c.config_path, "CRUN_WAIT_REASK": "2"}
    spec = {
        "name": "multi",
        "script": "#!/bin/sh\ncrun sleep 3\ncrun true\n",
        "cwd": c.workdir,
        "env": env,
    }
    jid = call(cfg, m.SubmitJob(spec))["job_ids"][0]

    def step2_running() -> bool:
        j = c.job(jid) or {}
        return any(s["step_id"] == 2 and s["state"] == "RUNNING" for s in j.get("steps", []))

    wait_for(step2_running, 30, "step 2 running")
    p = c.procs["cranectld"]
    p.send_signal(signal.SIGKILL)
    p.wait()
    c.start_controller()
    c.wait_nodes_up(30)
    j = c.wait_state(jid, "COMPLETED", "FAILED", "CANCELLED", timeout=40)
    assert j["state"] == "COMPLETED", j
    assert [(s["step_id"], s["state"]) for s in j["steps"]] == [
        (1, "COMPLETED"),
        (2, "COMPLETED"),
        (3, "COMPLETED"),
    ]
