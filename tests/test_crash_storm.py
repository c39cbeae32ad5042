"""Controller crash storm, CI size (issue 6, item 1): the harness of
``python -m bench.crash_storm`` with 5 crashes; plus the regression test of the
launch/kill race the soak found."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.crash_storm import Storm, cancel_surprises, report, run_storm
from tests.conftest import IS_ROOT


def test_cancel_surprises_compares_the_reply_with_what_was_asked() -> None:
    def ok(*jobs: int, steps: dict[int, list[int]] | None = None) -> list[dict]:  # type: ignore[type-arg]
        return [{"job_id": j, "steps": (steps or {}).get(j, [])} for j in jobs]

    def no(job: int, reason: str, step: int | None = None) -> dict:  # type: ignore[type-arg]
        return {"job_id": job, "step_id": step, "reason": reason}

    asked = [[1, None], [2, None], [3, 2]]
    assert (
        cancel_surprises(asked, {"cancelled": ok(1, 2, 3, steps={3: [2]}), "not_cancelled": []})
        == []
    )
    # ended meanwhile: expected
    reply = {
        "cancelled": ok(1),
        "not_cancelled": [no(2, "Job already finished (COMPLETED)"), no(3, "Step not found", 2)],
    }
    assert cancel_surprises(asked, reply) == []
    # refused for another reason, left out, or more than asked: each one said
    reply = {"cancelled": ok(1, 9), "not_cancelled": [no(2, "Permission denied")]}
    got = cancel_surprises(asked, reply)
    assert any("job 2 not cancelled: 'Permission denied'" in g for g in got), got
    assert any("job 3.2 asked, neither cancelled nor refused" in g for g in got), got
    assert any("job 9 cancelled (whole) but not asked" in g for g in got), got
    assert len(got) == 3, got
    # a step is covered by its whole job, or by a job being cancelled already
    assert cancel_surprises([[4, None], [4, 1]], {"cancelled": ok(4)}) == []
    assert cancel_surprises([[5, 2]], {"cancelled": []}, being_cancelled={5}) == []
    assert cancel_surprises([[5, None]], {"cancelled": []}, being_cancelled={5}) != []
    # filters: nothing was asked by id, every refusal must be expected
    assert cancel_surprises(None, {"cancelled": ok(7), "not_cancelled": []}) == []
    assert (
        cancel_surprises(None, {"cancelled": [], "not_cancelled": [no(8, "Permission denied")]})
        != []
    )
    # expected=(): every refusal is a surprise (the fuzzer's own cancels)
    assert cancel_surprises(
        [[2, None]], {"not_cancelled": [no(2, "Job already finished (COMPLETED)")]}, expected=()
    )


def test_daemon_errors_fail_the_storm_unless_expected(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A traceback or an ERROR line in any daemon's log fails the storm
    (``ok`` False), but for the lines EXPECTED_LOG_ERRORS names."""
    import bench.crash_storm as cs

    base = str(tmp_path / "s")
    os.makedirs(base)
    storm = Storm(base, nodes=1)
    os.makedirs(os.path.join(base, "log"), exist_ok=True)
    with open(os.path.join(base, "log", "cranectld.log"), "w") as f:
        f.write("2026-01-01 00:00:00,000 crane.ctld INFO fine\n")
    assert storm.daemon_errors() == [] and storm.result(0, 1.0)["ok"]
    with open(os.path.join(base, "log", "craned-crane01.log"), "w") as f:
        f.write(
            "2026-01-01 00:00:00,000 crane.x ERROR actor JobActor failed on CancelEv\n"
            'Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: boom\n'
        )
    errors = storm.daemon_errors()
    assert len(errors) == 2 and "File" in errors[1], errors
    res = storm.result(0, 1.0)
    assert not res["ok"] and res["daemon_errors"] == errors
    monkeypatch.setattr(cs, "EXPECTED_LOG_ERRORS", ("failed on CancelEv", "Traceback"))
    assert storm.daemon_errors() == []


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
    # every acknowledged cancel did what it asked (or said why not, as expected)
    assert res["cancel_surprises"] == 0, res["violations"]
    # no traceback or unexpected ERROR line in any daemon's log
    assert res["daemon_errors"] == [], res["daemon_errors"]
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


def test_storm_judges_each_acknowledged_cancel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The storm's record of a Cancel: a refusal it does not expect is a
    violation at once; a step cancel left unmentioned only if its job was
    not cancelled whole by the end; "already finished" must be true."""
    from crane.core import messages as m

    def reply(done: list[int], refused: list[tuple[int, str]]) -> dict:  # type: ignore[type-arg]
        return {
            "cancelled": [{"job_id": j, "steps": []} for j in done],
            "not_cancelled": [{"job_id": j, "step_id": None, "reason": r} for j, r in refused],
        }

    base = str(tmp_path / "s")
    os.makedirs(base)
    storm = Storm(base, nodes=1)
    storm.record_cancel(m.Cancel(ids=[[1, None]]), reply([1], []))
    storm.record_cancel(m.Cancel(ids=[[2, None]]), reply([], [(2, "Permission denied")]))
    assert len(storm.violations) == 1 and "Permission denied" in storm.violations[0]
    storm.record_cancel(m.Cancel(ids=[[1, 3], [4, 2]]), reply([], []))  # job 1 was cancelled whole
    storm.record_cancel(
        m.Cancel(ids=[[5, None]]), reply([], [(5, "Job already finished (COMPLETED)")])
    )
    assert len(storm.violations) == 1, storm.violations
    storm.check_claims({5: {"state": "RUNNING"}})
    assert len(storm.violations) == 3, storm.violations
    assert "steps [2] of job 4" in storm.violations[1], storm.violations
    assert "job 5 was refused" in storm.violations[2], storm.violations
