"""ccancel end to end (SPEC §4-5, seed 000): real cranectld and craned
processes, real job processes in real cgroups, real Unix users.

Every wait is a poll with a deadline (``wait_for``/``wait_state``); job
scripts may sleep, the tests never do. The module cluster (crane01-04, CPU =
crane01-02, GPU = crane03-04, 4 cpus each) is shared: the ``c`` fixture
force-cancels whatever a test leaves behind so the filter tests start from an
empty queue. Clusters with special configs or daemons that get killed come
from ``make_cluster``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BIN, IS_ROOT, Cluster, acct, clear, open_ancestors, pid_alive, wait_for

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")
CANCELLABLE = ["PENDING", "CONFIGURING", "RUNNING", "SUSPENDED"]
ID_USAGE = "use <job_id>[.<step_id>][,<job_id>[.<step_id>]...]"


# --------------------------------------------------------------------------- helpers


def ccancel(
    c: Cluster, *argv: str, user: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return c.run("ccancel", *argv, user=user, timeout=timeout)


def ok_line(*ids: int) -> str:
    return f"Job {','.join(str(i) for i in sorted(ids))} cancelled successfully."


def expect(
    r: subprocess.CompletedProcess[str], code: int, stdout: list[str], stderr: str = ""
) -> None:
    """Exact exit code and stdout lines (and stderr)."""
    assert (r.returncode, r.stdout.splitlines(), r.stderr) == (code, stdout, stderr), (
        f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    )



def script(c: Cluster, name: str, body: str) -> str:
    path = c.file(name)
    with open(path, "w") as f:
        f.write("#!/bin/bash\n" + body)
    os.chmod(path, 0o755)
    return path


def running(c: Cluster, *args: str, wrap: str = "sleep 300", user: str | None = None) -> int:
    jid = c.submit(*args, wrap=wrap, user=user)
    c.wait_state(jid, "RUNNING")
    return jid


def pending(c: Cluster, *args: str, user: str | None = None) -> int:
    """A job that cannot start now (the caller filled its nodes)."""
    jid = c.submit(*args, wrap="sleep 300", user=user)
    assert c.wait_state(jid, "PENDING")["nodes"] == []
    return jid


def fill(c: Cluster, partition: str) -> list[int]:
    """Two 4-cpu jobs: the partition's two nodes are full."""
    return [running(c, "-p", partition, "-c", "4") for _ in range(2)]


def final(c: Cluster, jid: int, timeout: float = 30.0) -> dict[str, Any]:
    return c.wait_state(jid, *TERMINAL, timeout=timeout)


def cancelled(c: Cluster, *jids: int, state: str = "CANCELLED", timeout: float = 30.0) -> None:
    for jid in jids:
        j = final(c, jid, timeout)
        assert j["state"] == state, j


def states(c: Cluster, *jids: int) -> list[str | None]:
    return [c.state(j) for j in jids]


def all_dead(pids: list[int], timeout: float = 15.0) -> None:
    wait_for(lambda: not [p for p in pids if pid_alive(p)], timeout, f"death of {pids}")


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if pid_alive(p)]


def read_pids(c: Cluster, name: str) -> list[int]:
    return [int(x) for x in c.read(name).split()]


def job_cgroups(c: Cluster, node: str, jid: int) -> list[str]:
    """The job's cgroup directories that exist (root only)."""
    from crane.agent import cgroup as cgmod

    rel = f"crane/{c.config()['ClusterName']}/{node}/job_{jid}"
    return [p for p in (os.path.join(r, rel) for r in cgmod.hierarchy_roots()) if os.path.isdir(p)]



@pytest.fixture
def c(cluster: Cluster) -> Iterator[Cluster]:
    clear(cluster)
    yield cluster
    clear(cluster)


@pytest.fixture(scope="module")
def _accounts(cluster: Cluster, users: dict[str, int]) -> dict[str, int]:
    acct(cluster, "add", "account", "PKU")
    acct(cluster, "add", "account", "physics", "Parent=PKU")
    acct(cluster, "add", "user", "alice", "Account=PKU")
    acct(cluster, "add", "user", "bob", "Account=physics")
    acct(cluster, "add", "user", "carol", "Account=PKU", "Coordinator=true")
    acct(cluster, "add", "user", "oscar", "Account=default", "Level=operator")
    return users


@pytest.fixture
def accounts(c: Cluster, _accounts: dict[str, int]) -> dict[str, int]:
    """PKU with sub-account physics; alice in PKU, bob in physics, carol a
    coordinator of PKU, oscar an operator (in account default). The path to
    the cluster is opened for the test users at every test: another pytest
    session starting meanwhile resets pytest's temp root to 0700."""
    open_ancestors(c.base)
    return _accounts


# --------------------------------------------------------------------------- seed examples


def test_cancel_one_job_by_id(c: Cluster) -> None:
    jid = running(c, "-J", "test1")
    pid = c.step_pid(jid)
    node = c.job(jid)["nodes"][0]  # type: ignore[index]
    if IS_ROOT:
        assert job_cgroups(c, node, jid)
    expect(ccancel(c, str(jid)), 0, [ok_line(jid)])
    j = final(c, jid)
    assert j["state"] == "CANCELLED" and j["cancelled_by"] == "root"
    assert j["end_time"] >= j["start_time"]
    assert [s["state"] for s in j["steps"]] == ["CANCELLED"]
    assert not pid_alive(pid)  # CANCELLED is reported only once the cgroup is empty
    if IS_ROOT:
        assert job_cgroups(c, node, jid) == []
    if importlib.util.find_spec("crane.cli.cacct") is not None:
        hist = {x["job_id"]: x for x in json.loads(c.ok("cacct", "-S", "2000-01-01", "--json"))}
        assert hist[jid]["state"] == "CANCELLED" and hist[jid]["cancelled_by"] == "root"


def test_cancel_id_list(c: Cluster) -> None:
    a, b = running(c), running(c, "-p", "GPU")
    held = c.submit("-H", wrap="sleep 300")
    assert c.wait_state(held, "PENDING")
    pids = [c.step_pid(a), c.step_pid(b)]
    expect(ccancel(c, f"{a},{b},{held}"), 0, [ok_line(a, b, held)])
    cancelled(c, a, b, held)
    assert not alive(pids)
    h = c.job(held)
    assert h and h["start_time"] == h["end_time"]  # a pending job: start = end = now


def test_cancel_by_name(c: Cluster) -> None:
    t1 = running(c, "-J", "test1")
    t2 = running(c, "-J", "test1", "-p", "GPU")
    other = running(c, "-J", "test2")
    expect(ccancel(c, "-n", "test1"), 0, [ok_line(t1, t2)])
    cancelled(c, t1, t2)
    assert c.state(other) == "RUNNING"


def test_cancel_by_partition(c: Cluster) -> None:
    g1, g2 = running(c, "-p", "GPU"), running(c, "-p", "GPU")
    cpu = running(c, "-p", "CPU")
    expect(ccancel(c, "-p", "GPU"), 0, [ok_line(g1, g2)])
    cancelled(c, g1, g2)
    assert c.state(cpu) == "RUNNING"


def test_cancel_by_node(c: Cluster) -> None:
    n1 = running(c, "-w", "crane01")
    n2a, n2b = running(c, "-w", "crane02"), running(c, "-w", "crane02")
    n3 = running(c, "-w", "crane03", "-p", "GPU")
    expect(ccancel(c, "-w", "crane02"), 0, [ok_line(n2a, n2b)])
    cancelled(c, n2a, n2b)
    assert states(c, n1, n3) == ["RUNNING", "RUNNING"]
    # a hostlist expression
    expect(ccancel(c, "-w", "crane[01-03]"), 0, [ok_line(n1, n3)])
    cancelled(c, n1, n3)


def test_cancel_by_state(c: Cluster) -> None:
    run = fill(c, "CPU")
    pend = [pending(c, "-p", "CPU", "-c", "4") for _ in range(2)]
    expect(ccancel(c, "-t", "Pending"), 0, [ok_line(*pend)])
    cancelled(c, *pend)
    assert states(c, *run) == ["RUNNING", "RUNNING"]
    expect(ccancel(c, "-t", "Running"), 0, [ok_line(*run)])
    cancelled(c, *run)
    # -t All (any case): pending and running alike
    run = fill(c, "CPU")
    pend = [pending(c, "-p", "CPU", "-c", "4")]
    expect(ccancel(c, "-t", "all"), 0, [ok_line(*run, *pend)])
    cancelled(c, *run, *pend)


def test_cancel_pending_in_one_partition(c: Cluster) -> None:
    run = fill(c, "CPU") + fill(c, "GPU")
    p_cpu = pending(c, "-p", "CPU", "-c", "4")
    p_gpu = pending(c, "-p", "GPU", "-c", "4")
    expect(ccancel(c, "-t", "Pending", "-p", "CPU"), 0, [ok_line(p_cpu)])
    cancelled(c, p_cpu)
    assert states(c, p_gpu, *run) == ["PENDING"] + ["RUNNING"] * 4


def test_cancel_running_on_nodes(c: Cluster) -> None:
    r1 = running(c, "-w", "crane01", "-c", "4")
    r2 = running(c, "-w", "crane02", "-c", "4")
    r3 = running(c, "-p", "GPU")
    p = pending(c, "-p", "CPU", "-c", "4")
    expect(ccancel(c, "-t", "Running", "-w", "crane01,crane02"), 0, [ok_line(r1, r2)])
    cancelled(c, r1, r2)
    assert c.state(r3) == "RUNNING"
    assert c.wait_state(p, "RUNNING")  # not selected (pending), and it gets the freed node


def test_cancel_by_account(c: Cluster, accounts: dict[str, int]) -> None:
    a1 = running(c, "-A", "PKU", user="alice")
    a2 = running(c, "-A", "PKU", "-p", "GPU", user="alice")
    b = running(c, "-A", "physics", user="bob")  # a sub-account of PKU: -A matches exactly
    r = running(c)
    expect(ccancel(c, "-A", "PKU"), 0, [ok_line(a1, a2)])
    cancelled(c, a1, a2)
    assert states(c, b, r) == ["RUNNING", "RUNNING"]


def test_cancel_by_user(c: Cluster, accounts: dict[str, int]) -> None:
    a_cpu = running(c, "-A", "PKU", user="alice")
    a_gpu = running(c, "-A", "PKU", "-p", "GPU", user="alice")
    b_gpu = running(c, "-A", "physics", "-p", "GPU", user="bob")
    r = running(c)
    expect(ccancel(c, "-u", "alice", "-p", "GPU"), 0, [ok_line(a_gpu)])
    cancelled(c, a_gpu)
    assert states(c, a_cpu, b_gpu, r) == ["RUNNING"] * 3
    expect(ccancel(c, "-u", "root"), 0, [ok_line(r)])
    cancelled(c, r)
    expect(ccancel(c, "-u", str(accounts["bob"])), 0, [ok_line(b_gpu)])  # by uid
    cancelled(c, b_gpu)
    expect(ccancel(c, "-u", "alice"), 0, [ok_line(a_cpu)])
    j = final(c, a_cpu)
    assert j["state"] == "CANCELLED" and j["cancelled_by"] == "root"


def test_json_output(c: Cluster) -> None:
    a = running(c)
    r = ccancel(c, str(a), "--json")
    assert r.returncode == 0 and r.stderr == ""
    out = json.loads(r.stdout)
    assert out == {"cancelled": [{"job_id": a, "steps": []}], "not_cancelled": [], "dry_run": False}
    assert list(out) == ["cancelled", "not_cancelled", "dry_run"]
    cancelled(c, a)
    # filters and json; a failure in the same answer
    x1, x2 = running(c, "-J", "jx"), running(c, "-J", "jx", "-p", "GPU")
    r = ccancel(c, "-n", "jx", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {
        "cancelled": [{"job_id": x1, "steps": []}, {"job_id": x2, "steps": []}],
        "not_cancelled": [], "dry_run": False,
    }  # fmt: skip
    cancelled(c, x1, x2)
    y = running(c)
    r = ccancel(c, f"{y},999999", "--json")
    assert r.returncode == 4
    assert json.loads(r.stdout) == {
        "cancelled": [{"job_id": y, "steps": []}],
        "not_cancelled": [{"job_id": 999999, "step_id": None, "reason": "Job not found"}],
        "dry_run": False,
    }
    cancelled(c, y)


STEPS_SCRIPT = """
for i in 1 2 3; do
  ( crun sleep 300; echo "crun exited $?" >> crun_$CRANE_JOB_ID.log ) &
done
wait
sleep 300  # the job outlives its steps
"""


def step_job(c: Cluster, name: str) -> tuple[int, dict[int, int]]:
    """A job whose batch script started steps 2, 3 and 4 with crun."""
    jid = c.submit("-c", "3", script(c, name, STEPS_SCRIPT))
    pids = {s: c.step_pid(jid, s) for s in (1, 2, 3, 4)}
    return jid, pids


def step_state(c: Cluster, jid: int, step: int) -> str:
    j = c.job(jid) or {}
    return next(s["state"] for s in j["steps"] if s["step_id"] == step)


def test_cancel_steps(c: Cluster) -> None:
    j, pids = step_job(c, "steps_a.sh")
    if importlib.util.find_spec("crane.cli.cqueue") is not None:
        listed = c.ok("cqueue", "--step", "-j", str(j))
        assert all(f"{j}.{s}" in listed for s in (2, 3, 4)), listed
    # one step: only that step ends, its crun exits non-zero
    expect(ccancel(c, f"{j}.2"), 0, [f"Step {j}.2 cancelled successfully."])
    wait_for(lambda: step_state(c, j, 2) == "CANCELLED", 15, "step 2 CANCELLED")
    all_dead([pids[2]])
    wait_for(lambda: c.read(f"crun_{j}.log"), 15, "crun of step 2 to exit")
    assert len(c.read(f"crun_{j}.log").splitlines()) == 1
    assert "crun exited 0" not in c.read(f"crun_{j}.log")
    assert c.state(j) == "RUNNING"
    assert [step_state(c, j, s) for s in (1, 3, 4)] == ["RUNNING"] * 3
    assert alive([pids[1], pids[3], pids[4]]) == [pids[1], pids[3], pids[4]]
    # two steps of one job, json
    r = ccancel(c, f"{j}.3,{j}.4", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {
        "cancelled": [{"job_id": j, "steps": [3, 4]}],
        "not_cancelled": [],
        "dry_run": False,
    }
    all_dead([pids[3], pids[4]])
    wait_for(lambda: len(c.read(f"crun_{j}.log").splitlines()) == 3, 15, "every crun to exit")
    assert c.state(j) == "RUNNING" and pid_alive(pids[1])
    # a whole job and a step of another: J,K.3
    k, kpids = step_job(c, "steps_b.sh")
    expect(ccancel(c, f"{j},{k}.3"), 0, [ok_line(j), f"Step {k}.3 cancelled successfully."])
    cancelled(c, j)
    assert not alive(list(pids.values()))
    all_dead([kpids[3]])
    assert c.state(k) == "RUNNING" and alive([kpids[1], kpids[2], kpids[4]]) == [
        kpids[1],
        kpids[2],
        kpids[4],
    ]
    # the seed's "J.1,J.2" form: two steps of one job, plain output, one line each
    expect(
        ccancel(c, f"{k}.2,{k}.4"),
        0,
        [f"Step {k}.2 cancelled successfully.", f"Step {k}.4 cancelled successfully."],
    )
    all_dead([kpids[2], kpids[4]])
    expect(ccancel(c, str(k)), 0, [ok_line(k)])
    cancelled(c, k)
    assert not alive(list(kpids.values()))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "argv, line",
    [
        ([], "at least one job id or filter is required"),
        (["0"], f'invalid job id list "0": {ID_USAGE}'),
        (["1.0"], f'invalid job id list "1.0": {ID_USAGE}'),
        (["01"], f'invalid job id list "01": {ID_USAGE}'),
        (["a"], f'invalid job id list "a": {ID_USAGE}'),
        (["1,,2"], f'invalid job id list "1,,2": {ID_USAGE}'),
        (["1, 2"], f'invalid job id list "1, 2": {ID_USAGE}'),
        (["1.2.3"], f'invalid job id list "1.2.3": {ID_USAGE}'),
        (["-t", "Done"], 'invalid state "Done": valid states are PENDING, RUNNING, SUSPENDED, ALL'),
        (
            ["-t", "COMPLETED", "5"],
            'invalid state "COMPLETED": valid states are PENDING, RUNNING, SUSPENDED, ALL',
        ),
        (["-s", "FOO", "5"], 'invalid signal "FOO"'),
        (["-s", "0", "5"], 'invalid signal "0"'),
        (["--force", "--graceful", "5"], "--force and --graceful cannot be used together"),
        (
            ["-s", "USR1", "--end-state", "FINISHED", "5"],
            "--signal cannot be combined with --graceful or --end-state",
        ),
        (
            ["-s", "USR1", "--graceful", "5"],
            "--signal cannot be combined with --graceful or --end-state",
        ),
        (["-m", "x" * 321, "5"], "--message is longer than 320 characters"),
    ],
)
def test_bad_arguments(cluster: Cluster, argv: list[str], line: str) -> None:
    expect(ccancel(cluster, *argv), 2, [], f"ccancel: error: {line}\n")


def test_not_cancelled_reasons(c: Cluster) -> None:
    expect(ccancel(c, "999999"), 4, ["Failed to cancel job: 999999. Reason: Job not found."])
    expect(ccancel(c, "999999.2"), 4, ["Failed to cancel step: 999999.2. Reason: Job not found."])
    done = c.submit(wrap="true")
    assert final(c, done)["state"] == "COMPLETED"
    expect(
        ccancel(c, str(done)),
        4,
        [f"Failed to cancel job: {done}. Reason: Job already finished (COMPLETED)."],
    )
    j = running(c)
    expect(ccancel(c, f"{j}.7"), 4, [f"Failed to cancel step: {j}.7. Reason: Step not found."])
    assert c.state(j) == "RUNNING"
    # a message of exactly 320 characters is fine; the good id goes, the bad is reported
    expect(ccancel(c, "-m", "y" * 320, f"{j},999999"), 4,
           [ok_line(j), "Failed to cancel job: 999999. Reason: Job not found."])  # fmt: skip
    cancelled(c, j)
    assert c.job(j)["message"] == "y" * 320  # type: ignore[index]
    expect(
        ccancel(c, str(j)),
        4,
        [f"Failed to cancel job: {j}. Reason: Job already finished (CANCELLED)."],
    )


def test_controller_unreachable(cluster: Cluster, tmp_path: Any) -> None:
    cfg = cluster.config()
    cfg["CliEndpoint"] = f"ipc://{tmp_path}/cranectld.sock"  # nobody listens there
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    r = ccancel(cluster, "-C", str(path), "1")
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.startswith("ccancel: error: cannot reach the controller")
    assert len(r.stderr.splitlines()) == 1


def test_filters_matching_nothing(c: Cluster) -> None:
    j = running(c, "-J", "keep")
    for argv in (["-n", "nosuchname"], ["-p", "GPU"], ["-t", "Pending"], ["-w", "crane04"],
                 ["-u", "nosuchuser"], ["-n", "keep", "-p", "GPU"], ["-A", "nosuchaccount"]):  # fmt: skip
        expect(ccancel(c, *argv), 0, [])
    assert c.state(j) == "RUNNING"


# --------------------------------------------------------------------------- real processes

ESCAPE_SCRIPT = """
P=$PWD/pids_$CRANE_JOB_ID
echo $$ >> $P
setsid -f bash -c 'echo $$ >> '$P'; exec sleep 300'
( (sleep 300 & echo $! >> $P) & )
( (setsid bash -c 'echo $$ >> '$P'; trap "" TERM HUP; exec sleep 300' &) & )
nohup sleep 300 >/dev/null 2>&1 & echo $! >> $P
(while true; do sleep 300 & echo $! >> $P; sleep 0.05; done) & echo $! >> $P
wait
"""


def test_escaped_processes_die(c: Cluster) -> None:
    j = c.submit(script(c, "escape.sh", ESCAPE_SCRIPT))
    node = c.wait_state(j, "RUNNING")["nodes"][0]
    wait_for(lambda: len(read_pids(c, f"pids_{j}")) >= 10, 15, "the script's processes")
    before = read_pids(c, f"pids_{j}")
    assert alive(before) == before
    if IS_ROOT:
        assert job_cgroups(c, node, j)
    expect(ccancel(c, str(j)), 0, [ok_line(j)])
    cancelled(c, j)
    pids = read_pids(c, f"pids_{j}")  # the forking loop may have added more
    assert len(pids) >= len(before)
    assert alive(pids) == []  # CANCELLED only after the cgroup is empty
    if IS_ROOT:
        assert job_cgroups(c, node, j) == []


TRAP_EXIT = """
trap 'echo TERM >> term_$CRANE_JOB_ID; exit 0' TERM
touch ready_$CRANE_JOB_ID
sleep 300 & wait
"""
TRAP_STAY = """
trap 'echo TERM >> term_$CRANE_JOB_ID' TERM
touch ready_$CRANE_JOB_ID
while true; do sleep 0.1; done
"""


def trap_job(c: Cluster, body: str, name: str) -> tuple[int, int]:
    j = c.submit(script(c, name, body))
    pid = c.step_pid(j)
    wait_for(lambda: os.path.exists(c.file(f"ready_{j}")), 15, "the trap to be set")
    return j, pid


def test_grace_sends_term_then_kill(c: Cluster) -> None:
    # the script exits on SIGTERM: no need to wait out the grace
    j, pid = trap_job(c, TRAP_EXIT, "trap_exit.sh")
    t0 = time.monotonic()
    expect(ccancel(c, "--grace", "5", str(j)), 0, [ok_line(j)])
    cancelled(c, j)
    assert time.monotonic() - t0 < 4.5
    assert c.read(f"term_{j}") == "TERM\n" and not pid_alive(pid)
    # the script survives SIGTERM: SIGKILL after the grace
    j, pid = trap_job(c, TRAP_STAY, "trap_stay.sh")
    t0 = time.monotonic()
    expect(ccancel(c, "--grace", "2", str(j)), 0, [ok_line(j)])
    wait_for(lambda: "TERM" in c.read(f"term_{j}"), 10, "SIGTERM")
    assert pid_alive(pid)
    job = final(c, j)
    assert time.monotonic() - t0 >= 1.8
    assert job["state"] == "CANCELLED" and job["steps"][0]["signal"] == signal.SIGKILL
    assert not pid_alive(pid)
    # --force: SIGKILL at once, no SIGTERM
    j, pid = trap_job(c, TRAP_EXIT, "trap_force.sh")
    expect(ccancel(c, "--force", str(j)), 0, [ok_line(j)])
    cancelled(c, j)
    assert c.read(f"term_{j}") == "" and not pid_alive(pid)


def test_epilog_and_killwait(make_cluster: Any, tmp_path: Any) -> None:
    log = tmp_path / "epilog.log"
    epilog = tmp_path / "epilog.sh"
    epilog.write_text(f'#!/bin/sh\necho "$CRANE_JOB_ID $CRANE_NODE" >> {log}\n')
    epilog.chmod(0o755)
    c = make_cluster(nodes=2, Epilog=str(epilog), KillWait=2)

    def ran() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    # a normal cancel: the epilog has run by the time the job is CANCELLED
    a = running(c, "-w", "crane01")
    expect(ccancel(c, str(a)), 0, [ok_line(a)])
    cancelled(c, a)
    assert ran() == [f"{a} crane01"]
    # --force skips it
    b = running(c, "-w", "crane01")
    expect(ccancel(c, "--force", str(b)), 0, [ok_line(b)])
    cancelled(c, b)
    done = c.submit("-w", "crane01", wrap="true")  # a later epilog proves b's never comes
    assert final(c, done)["state"] == "COMPLETED"
    assert ran() == [f"{a} crane01", f"{done} crane01"]
    # KillWait=2: a plain cancel sends SIGTERM first ...
    j, pid = trap_job(c, TRAP_STAY, "kw.sh")
    t0 = time.monotonic()
    expect(ccancel(c, str(j)), 0, [ok_line(j)])
    cancelled(c, j)
    assert "TERM" in c.read(f"term_{j}") and time.monotonic() - t0 >= 1.8
    # ... and --grace 0 overrides it
    j, pid = trap_job(c, TRAP_EXIT, "kw0.sh")
    expect(ccancel(c, "--grace", "0", str(j)), 0, [ok_line(j)])
    cancelled(c, j)
    assert c.read(f"term_{j}") == "" and not pid_alive(pid)


def test_resources_are_reused(c: Cluster) -> None:
    a = running(c, "--exclusive", "-w", "crane01")
    b = c.submit("-w", "crane01", wrap="sleep 300")
    wait_for(lambda: (c.job(b) or {}).get("reason"), 15, "the scheduler to look at the second job")
    assert c.state(b) == "PENDING"
    expect(ccancel(c, str(a)), 0, [ok_line(a)])
    assert c.wait_state(b, "RUNNING")["nodes"] == ["crane01"]
    assert c.state(a) == "CANCELLED"


def test_dry_run(c: Cluster) -> None:
    j = running(c, "-J", "dry")
    pid = c.step_pid(j)
    held = c.submit("-H", "-J", "dryheld", "-p", "GPU", wrap="sleep 300")
    expect(
        ccancel(c, "--dry-run", str(j)),
        0,
        [f"Would cancel job {j} (name=dry, partition=CPU, state=RUNNING)."],
    )
    expect(ccancel(c, "--whatif", "-t", "Pending"), 0,
           [f"Would cancel job {held} (name=dryheld, partition=GPU, state=PENDING)."])  # fmt: skip
    r = ccancel(c, "--dry-run", "--json", f"{j},999999")
    assert r.returncode == 4
    assert json.loads(r.stdout) == {
        "cancelled": [{"job_id": j, "steps": []}],
        "not_cancelled": [{"job_id": 999999, "step_id": None, "reason": "Job not found"}],
        "dry_run": True,
    }
    assert states(c, j, held) == ["RUNNING", "PENDING"] and pid_alive(pid)
    assert c.job(j)["cancelled_by"] is None  # type: ignore[index]


def test_end_state_finished(c: Cluster) -> None:
    r = running(c)
    pid = c.step_pid(r)
    held = c.submit("-H", wrap="sleep 300")
    expect(ccancel(c, "--end-state", "FINISHED", f"{r},{held}"), 0, [ok_line(r, held)])
    cancelled(c, r, held, state="COMPLETED")
    assert not pid_alive(pid)
    assert c.job(r)["cancelled_by"] == "root"  # type: ignore[index]
    x = running(c)
    expect(ccancel(c, "--end-state", "finished", str(x)), 0, [ok_line(x)])
    cancelled(c, x, state="COMPLETED")


GRACEFUL = """
touch ready_$CRANE_JOB_ID
while [ ! -e go_$CRANE_JOB_ID ]; do sleep 0.05; done
crun true; echo "crun rc=$?" >> res_$CRANE_JOB_ID
sleep 1
echo finished >> res_$CRANE_JOB_ID
"""


def test_graceful(c: Cluster) -> None:
    j, pid = trap_job(c, GRACEFUL, "graceful.sh")
    held = c.submit("-H", wrap="sleep 300")
    expect(ccancel(c, "--graceful", f"{j},{held}"), 0, [ok_line(j, held)])
    cancelled(c, held)  # a pending job goes at once
    assert c.state(j) == "RUNNING" and pid_alive(pid)  # it cannot end before go_<j>
    with open(c.file(f"go_{j}"), "w"):
        pass
    job = final(c, j)
    assert job["state"] == "CANCELLED" and job["cancelled_by"] == "root"
    res = c.read(f"res_{j}").splitlines()
    assert res[-1] == "finished"  # the running step was let finish
    assert res[0].startswith("crun rc=") and res[0] != "crun rc=0"  # no new step started
    # a graceful cancel is escalated by a forced one
    g = running(c)
    gpid = c.step_pid(g)
    expect(ccancel(c, "--graceful", str(g)), 0, [ok_line(g)])
    assert c.state(g) == "RUNNING"
    expect(ccancel(c, "--force", str(g)), 0, [ok_line(g)])
    cancelled(c, g)
    assert not pid_alive(gpid)


SIGNAL_SCRIPT = """
trap 'echo USR1 >> sig_$CRANE_JOB_ID' USR1
touch ready_$CRANE_JOB_ID
while true; do sleep 0.1; done
"""


def test_signal_does_not_cancel(c: Cluster) -> None:
    j, pid = trap_job(c, SIGNAL_SCRIPT, "sig.sh")
    r = ccancel(c, "-s", "USR1", str(j))
    assert r.returncode == 0 and str(j) in r.stdout and r.stderr == ""
    wait_for(lambda: "USR1" in c.read(f"sig_{j}"), 15, "SIGUSR1 in the job")
    r = ccancel(c, "--signal", str(int(signal.SIGUSR1)), str(j))
    assert r.returncode == 0
    wait_for(lambda: c.read(f"sig_{j}").count("USR1") >= 2, 15, "the second SIGUSR1")
    job = c.job(j)
    assert job and job["state"] == "RUNNING" and job["cancelled_by"] is None and pid_alive(pid)


IGNORE_TERM = "trap '' TERM\nsleep 300\n"


def test_wait_returns_after_processes_are_gone(c: Cluster) -> None:
    j = c.submit(script(c, "noterm.sh", IGNORE_TERM))
    pid = c.step_pid(j)
    k = c.submit(script(c, "noterm2.sh", IGNORE_TERM))
    kpid = c.step_pid(k)
    procs = [pid, kpid, *read_children(pid), *read_children(kpid)]
    # without --wait: acknowledged while the processes are still in their grace
    expect(ccancel(c, "--grace", "3", str(k)), 0, [ok_line(k)])
    assert pid_alive(kpid)
    t0 = time.monotonic()
    expect(ccancel(c, "--wait", "--grace", "2", str(j)), 0, [ok_line(j)])
    assert time.monotonic() - t0 >= 1.8
    assert not pid_alive(pid) and c.state(j) == "CANCELLED"  # at once, no polling
    cancelled(c, k)
    assert alive(procs) == []


def read_children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


BANNER = re.compile(
    r"\*\*\* JOB (\d+) CANCELLED AT \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d BY (\w+)(: .*)? \*\*\*"
)


def test_message_and_banner(c: Cluster) -> None:
    j = running(c, wrap="echo started; sleep 300")
    wait_for(lambda: "started" in c.read(f"crane-{j}.out"), 15, "the job's output")
    expect(ccancel(c, "-m", "node maintenance", str(j)), 0, [ok_line(j)])
    job = final(c, j)
    assert job["state"] == "CANCELLED" and job["cancelled_by"] == "root"
    assert job["message"] == "node maintenance"
    last = c.read(f"crane-{j}.out").splitlines()[-1]
    mt = BANNER.fullmatch(last)
    assert mt and mt.groups() == (str(j), "root", ": node maintenance"), last
    # no message, and a separate error file (-e): the banner goes there
    k = running(c, "-o", "k-%j.out", "-e", "k-%j.err")
    expect(ccancel(c, str(k)), 0, [ok_line(k)])
    cancelled(c, k)
    mt = BANNER.fullmatch(c.read(f"k-{k}.err").splitlines()[-1])
    assert mt and mt.groups() == (str(k), "root", None)
    if importlib.util.find_spec("crane.cli.cacct") is not None:
        hist = {x["job_id"]: x for x in json.loads(c.ok("cacct", "-S", "2000-01-01", "--json"))}
        assert hist[j]["message"] == "node maintenance" and hist[j]["cancelled_by"] == "root"
        assert "node maintenance" in c.ok("cacct", "-l", "-j", str(j))


def test_duplicate_cancel_is_harmless(c: Cluster) -> None:
    j = c.submit(script(c, "dup.sh", IGNORE_TERM))
    pid = c.step_pid(j)
    expect(ccancel(c, "--grace", "60", "-m", "first", str(j)), 0, [ok_line(j)])
    c.wait_state(j, "COMPLETING")
    expect(
        ccancel(c, "-m", "second", str(j)), 0, [ok_line(j)]
    )  # in progress: fine, changes nothing
    assert c.state(j) == "COMPLETING" and pid_alive(pid)
    # --force escalates the kill in progress (long before its 60 s grace)
    expect(ccancel(c, "--force", str(j)), 0, [ok_line(j)])
    job = final(c, j, timeout=20)
    assert job["state"] == "CANCELLED" and job["message"] == "first" and not pid_alive(pid)
    expect(
        ccancel(c, str(j)),
        4,
        [f"Failed to cancel job: {j}. Reason: Job already finished (CANCELLED)."],
    )


# --------------------------------------------------------------------------- permissions


def test_user_cannot_cancel_others_jobs(c: Cluster, accounts: dict[str, int]) -> None:
    a = running(c, "-A", "PKU", user="alice")
    b = running(c, "-A", "physics", user="bob")
    r = running(c)
    expect(
        ccancel(c, str(b), user="alice"),
        4,
        [f"Failed to cancel job: {b}. Reason: Permission denied."],
    )
    expect(
        ccancel(c, f"{b}.1", user="alice"),
        4,
        [f"Failed to cancel step: {b}.1. Reason: Permission denied."],
    )
    expect(
        ccancel(c, str(r), user="alice"),
        4,
        [f"Failed to cancel job: {r}. Reason: Permission denied."],
    )
    expect(ccancel(c, "-u", "bob", user="alice"), 0, [])  # filters select only her own jobs
    expect(ccancel(c, "-t", "All", "-p", "CPU", "-u", "bob", user="alice"), 0, [])
    assert states(c, a, b, r) == ["RUNNING"] * 3
    expect(
        ccancel(c, f"{a},{b}", user="alice"),
        4,
        [ok_line(a), f"Failed to cancel job: {b}. Reason: Permission denied."],
    )
    j = final(c, a)
    assert j["state"] == "CANCELLED" and j["cancelled_by"] == "alice"
    assert states(c, b, r) == ["RUNNING", "RUNNING"]
    if importlib.util.find_spec("crane.cli.cacct") is not None:
        assert "CANCELLED by alice" in c.ok("cacct", "-l", "-j", str(a))
    a2 = running(c, "-A", "PKU", user="alice")
    expect(ccancel(c, "-t", "All", user="alice"), 0, [ok_line(a2)])  # her own, nothing else
    cancelled(c, a2)
    assert states(c, b, r) == ["RUNNING", "RUNNING"]


def test_coordinator_of_parent_account(c: Cluster, accounts: dict[str, int]) -> None:
    b = running(c, "-A", "physics", user="bob")  # physics is under PKU
    a = running(c, "-A", "PKU", user="alice")
    o = running(c, "-A", "default", user="oscar")
    expect(
        ccancel(c, str(o), user="carol"),
        4,
        [f"Failed to cancel job: {o}. Reason: Permission denied."],
    )
    expect(ccancel(c, f"{a},{b}", user="carol"), 0, [ok_line(a, b)])
    for jid in (a, b):
        j = final(c, jid)
        assert j["state"] == "CANCELLED" and j["cancelled_by"] == "carol"
    assert c.state(o) == "RUNNING"


def test_operator_and_root(c: Cluster, accounts: dict[str, int]) -> None:
    a = running(c, "-A", "PKU", "-J", "perm", user="alice")
    r = running(c, "-J", "perm")
    b = running(c, "-A", "physics", user="bob")
    # an operator may cancel any job but an admin's (root's)
    expect(
        ccancel(c, str(r), user="oscar"),
        4,
        [f"Failed to cancel job: {r}. Reason: Permission denied."],
    )
    expect(
        ccancel(c, "-n", "perm", user="oscar"),
        4,
        [ok_line(a), f"Failed to cancel job: {r}. Reason: Permission denied."],
    )
    j = final(c, a)
    assert j["state"] == "CANCELLED" and j["cancelled_by"] == "oscar"
    expect(ccancel(c, str(b), user="oscar"), 0, [ok_line(b)])
    cancelled(c, b)
    assert c.state(r) == "RUNNING"
    # root may cancel anything
    b2 = running(c, "-A", "physics", user="bob")
    o = running(c, user="oscar")
    expect(ccancel(c, f"{r},{b2},{o}"), 0, [ok_line(r, b2, o)])
    cancelled(c, r, b2, o)


def test_pam_check_follows_running_jobs(c: Cluster, users: dict[str, int]) -> None:
    if importlib.util.find_spec("crane.agent.pam_check") is None:
        pytest.skip("crane-pam-check (crane/agent/pam_check.py) is not there yet")
    open_ancestors(c.base)

    def pam(user: str, node: str) -> int:
        env = {**c.env(), "PAM_USER": user, "PAM_TYPE": "account"}
        argv = [os.path.join(BIN, "crane-pam-check"), "-C", c.config_path, "-n", node]
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    a1 = running(c, "-w", "crane01", user="alice")
    a2 = running(c, "-w", "crane01", user="alice")
    assert [pam("alice", "crane01"), pam("alice", "crane02"), pam("bob", "crane01")] == [0, 1, 1]
    expect(ccancel(c, str(a1)), 0, [ok_line(a1)])
    cancelled(c, a1)
    assert pam("alice", "crane01") == 0  # another of her jobs still runs there
    expect(ccancel(c, str(a2)), 0, [ok_line(a2)])
    cancelled(c, a2)
    assert pam("alice", "crane01") == 1


# --------------------------------------------------------------------------- durability


def escape_job(c: Cluster, node: str) -> tuple[int, list[int]]:
    j = c.submit("-w", node, script(c, f"durable_{node}.sh", ESCAPE_SCRIPT))
    c.wait_state(j, "RUNNING")
    wait_for(lambda: len(read_pids(c, f"pids_{j}")) >= 10, 15, "the script's processes")
    return j, read_pids(c, f"pids_{j}")


def test_cancel_while_agent_stopped(make_cluster: Any) -> None:
    c = make_cluster(nodes=2)
    j, pids = escape_job(c, "crane01")
    agent = c.procs["craned-crane01"]
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        expect(ccancel(c, str(j), timeout=20), 0, [ok_line(j)])  # acknowledged once persisted
        assert c.state(j) == "COMPLETING" and alive(pids[:1]) == pids[:1]
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    cancelled(c, j)
    assert alive(read_pids(c, f"pids_{j}")) == []


def test_cancel_while_agent_dead(make_cluster: Any) -> None:
    c = make_cluster(nodes=2)
    j, pids = escape_job(c, "crane01")
    agent = c.procs.pop("craned-crane01")
    agent.kill()
    agent.wait()
    expect(ccancel(c, str(j)), 0, [ok_line(j)])
    assert c.state(j) == "COMPLETING" and alive(pids[:1]) == pids[:1]
    c.start_agent("crane01")
    cancelled(c, j)
    assert alive(read_pids(c, f"pids_{j}")) == []
    if IS_ROOT:
        assert job_cgroups(c, "crane01", j) == []


def test_cancel_survives_controller_crash(make_cluster: Any) -> None:
    c = make_cluster(nodes=2)
    j, pids = escape_job(c, "crane01")
    expect(ccancel(c, str(j)), 0, [ok_line(j)])
    ctld = c.procs.pop("cranectld")
    ctld.kill()
    ctld.wait()
    c.start_controller()
    c.wait_nodes_up()
    cancelled(c, j)
    assert alive(read_pids(c, f"pids_{j}")) == []
    assert c.job(j)["cancelled_by"] == "root"  # type: ignore[index]


def test_cancel_survives_both_daemons_dying(make_cluster: Any) -> None:
    """The kill order can only come from the persisted intent: the agent was
    stopped when the cancel came, and both daemons die before it wakes."""
    c = make_cluster(nodes=2)
    j, pids = escape_job(c, "crane01")
    agent = c.procs.pop("craned-crane01")
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        expect(ccancel(c, "-m", "durable", str(j), timeout=20), 0, [ok_line(j)])
        ctld = c.procs.pop("cranectld")
        ctld.kill()
        ctld.wait()
    finally:
        agent.kill()
        agent.wait()
    assert alive(pids[:1]) == pids[:1]
    c.start_controller()
    c.start_agent("crane01")
    c.wait_nodes_up()
    job = final(c, j)
    assert job["state"] == "CANCELLED" and job["message"] == "durable"
    assert alive(read_pids(c, f"pids_{j}")) == []
