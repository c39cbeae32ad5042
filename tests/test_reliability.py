"""Reliability under faults (issue 6, items 2, 3, 6, 7): agent loss and
re-adoption, reconciliation both ways, a paused agent (network fault),
escapes from the step's process tree, and a storm of 1,200 concurrent clients.

Real cranectld and craned processes, real job processes in real cgroups.
Every wait is a poll with a deadline; job scripts may sleep, the tests never do.

Policies asserted here (the product's documented behaviour):

* An agent that dies does not take its jobs with it; a restarted agent
  re-adopts them from the cgroup tree and learns how they ended (the step
  wrapper's rc file). A step that vanished with no trace ends FAILED
  ``Node re-registered but step lost``.
* A cancel sent while the agent is away is carried out when it re-registers.
* An agent silent for longer than ``CranedTimeout`` makes its node DOWN and
  every job on it ends FAILED with reason ``Node <name> down``; when the agent
  comes back, it re-registers, the processes it still runs for those jobs are
  killed (orphans) and the node takes work again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from crane.agent import cgroup as cgmod
from crane.config import load
from tests.conftest import IS_ROOT, Cluster, pid_alive, wait_for

pytestmark = pytest.mark.skipif(
    not IS_ROOT, reason="needs root (cgroups, job processes of other users)"
)

FAST = {"HeartbeatInterval": 0.5}
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- helpers


def step_cgroup(c: Cluster, node: str, job_id: int, step_id: int = 1) -> cgmod.StepCgroup:
    scope = f"crane/{c.config()['ClusterName']}/{node}"
    return cgmod.StepCgroup(scope, job_id, step_id, cgmod.detect_mode())


def job_dirs(c: Cluster, node: str, job_id: int) -> list[str]:
    scope = f"crane/{c.config()['ClusterName']}/{node}"
    return [
        os.path.join(r, scope, f"job_{job_id}") for r in cgmod.hierarchy_roots(cgmod.detect_mode())
    ]


def state_dir(c: Cluster, node: str) -> str:
    cfg = load(c.config_path)
    return os.path.join(cfg.resolve(cfg.craned_state_dir), node)


def log_of(c: Cluster, key: str) -> str:
    try:
        with open(os.path.join(c.base, "log", f"{key}.log")) as f:
            return f.read()
    except OSError:
        return ""


def kill_agent(c: Cluster, node: str) -> None:
    p = c.procs.pop(f"craned-{node}")
    p.send_signal(signal.SIGKILL)
    p.wait(10)


def sigkill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def node_state(c: Cluster, node: str) -> str | None:
    return c.nodes_state().get(node)


def never(cond: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll for ``seconds``: ``cond`` must stay false the whole time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not cond(), what
        time.sleep(0.1)  # polling: this is an observation window, not a wait


def lines(c: Cluster, name: str) -> list[str]:
    return c.read(name).splitlines()


# ---------------------------------------------------------------- agent loss


def test_agent_kill9_readopt_died_meanwhile_and_cancel_on_return(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=1, cpus=8, **FAST)
    go = c.file("go-readopt")
    os.mkfifo(go, 0o666)
    # keep: no forks, a stable process set; died_rc: its command is killed, the
    # wrapper records 137; died_all: everything killed, no trace at all;
    # cancelled: ccancel while the agent is away
    keep = c.submit("-w", "crane01", wrap=f"read x < {go}; exit 3")
    died_rc = c.submit("-w", "crane01", wrap="sleep 300")
    died_all = c.submit("-w", "crane01", wrap="sleep 300")
    cancelled = c.submit("-w", "crane01", wrap="sleep 300")
    jobs = (keep, died_rc, died_all, cancelled)
    wrappers = {j: c.step_pid(j) for j in jobs}
    cgs = {j: step_cgroup(c, "crane01", j) for j in jobs}
    wait_for(
        lambda: all(len(cgs[j].pids()) >= 2 - (j == keep) for j in jobs), 10, "job commands started"
    )
    procs = {j: cgs[j].pids() for j in jobs}

    kill_agent(c, "crane01")
    # the jobs outlive their agent: processes alive, cgroups there, still RUNNING
    assert all(pid_alive(p) for j in jobs for p in procs[j])
    assert all(c.state(j) == "RUNNING" for j in jobs)

    # while the agent is away: died_rc's command dies (its wrapper survives and
    # records the status), every process of died_all dies, cancelled is cancelled
    sigkill_all(procs[died_rc] - {wrappers[died_rc]})
    # the wrapper first: killed after its command, it could still record the
    # command's status (137), and the step would not be "no trace at all"
    sigkill_all({wrappers[died_all]})
    sigkill_all(procs[died_all] - {wrappers[died_all]})
    wait_for(
        lambda: cgs[died_rc].empty() and cgs[died_all].empty(), 10, "killed steps' cgroups empty"
    )
    c.ok("ccancel", str(cancelled))
    assert all(pid_alive(p) for p in procs[cancelled]), "nobody could have killed it yet"
    assert c.state(cancelled) in ("RUNNING", "COMPLETING")

    c.start_agent("crane01")
    c.wait_nodes_up()
    wait_for(
        lambda: f"adopted step {keep}.1" in log_of(c, "craned-crane01"), 10, "agent log: adopted"
    )

    # the cancel is carried out on return
    j = c.wait_state(cancelled, *TERMINAL, timeout=20)
    assert j["state"] == "CANCELLED", j
    wait_for(
        lambda: not any(pid_alive(p) for p in procs[cancelled]),
        10,
        "cancelled job's processes dead",
    )

    # the wrapper recorded that the command was killed by SIGKILL
    j = c.wait_state(died_rc, *TERMINAL, timeout=20)
    assert j["state"] == "FAILED" and j["exit_signal"] == signal.SIGKILL, j

    # nothing left at all: the step is lost
    j = c.wait_state(died_all, *TERMINAL, timeout=20)
    assert j["state"] == "FAILED" and j["reason"] == "Node re-registered but step lost", j

    # the adopted job keeps running and ends with its own exit code
    assert c.state(keep) == "RUNNING" and all(pid_alive(p) for p in procs[keep])
    fd = os.open(go, os.O_WRONLY | os.O_NONBLOCK)  # the job is blocked opening it for reading
    os.write(fd, b"go\n")
    os.close(fd)
    j = c.wait_state(keep, *TERMINAL, timeout=20)
    assert j["state"] == "FAILED" and j["exit_code"] == 3 and j["exit_signal"] == 0, j

    for jid in jobs:
        wait_for(
            lambda jid=jid: not any(os.path.exists(d) for d in job_dirs(c, "crane01", jid)),
            10,
            "cgroups gone",
        )


def test_step_lost_without_trace_ends_failed(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Controller expects a step, the re-registered agent lacks it: FAILED."""
    c: Cluster = make_cluster(nodes=1, **FAST)
    jid = c.submit("-w", "crane01", wrap="sleep 300")
    c.step_pid(jid)
    cg = step_cgroup(c, "crane01", jid)
    wait_for(lambda: len(cg.pids()) >= 2, 10, "job started")
    kill_agent(c, "crane01")
    pids = cg.pids()
    sigkill_all(pids)
    wait_for(cg.empty, 10, "step cgroup empty")
    for d in job_dirs(c, "crane01", jid):  # nothing left: no cgroup, no state files
        for sub in sorted(os.listdir(d)):
            if os.path.isdir(os.path.join(d, sub)):
                os.rmdir(os.path.join(d, sub))
        os.rmdir(d)
    sd = state_dir(c, "crane01")
    for f in (f"steps/{jid}.1.json", f"rc/{jid}.1"):
        os.unlink(os.path.join(sd, f))

    c.start_agent("crane01")
    c.wait_nodes_up()
    j = c.wait_state(jid, *TERMINAL, timeout=20)
    assert j["state"] == "FAILED" and j["reason"] == "Node re-registered but step lost", j
    assert j["steps"][0]["state"] == "FAILED", j
    assert f"adopted step {jid}" not in log_of(c, "craned-crane01")
    # the node is fine afterwards
    ok = c.submit("-w", "crane01", wrap="true")
    assert c.wait_state(ok, *TERMINAL)["state"] == "COMPLETED"


def test_job_submitted_while_agent_dead_runs_once_on_return(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The controller does not know yet that the agent is gone: the launch
    must wait for its return, not vanish (and then fail as lost)."""
    c: Cluster = make_cluster(nodes=1, **FAST)
    kill_agent(c, "crane01")
    out = c.file("launched-while-dead")
    jid = c.submit("-w", "crane01", wrap=f"echo run >> {out}")
    assert c.wait_state(jid, "RUNNING")  # allocated: the node is not known to be down
    c.start_agent("crane01")
    c.wait_nodes_up()
    j = c.wait_state(jid, *TERMINAL, timeout=20)
    assert j["state"] == "COMPLETED", j
    assert lines(c, "launched-while-dead") == ["run"]


def test_agent_away_past_timeout_node_down_jobs_failed_orphans_killed(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=2, CranedTimeout=3, **FAST)
    jid = c.submit("-w", "crane01", wrap="sleep 300")
    c.step_pid(jid)
    cg = step_cgroup(c, "crane01", jid)
    wait_for(lambda: len(cg.pids()) >= 2, 10, "job started")
    pids = cg.pids()
    kill_agent(c, "crane01")

    wait_for(lambda: node_state(c, "crane01") == "DOWN", 15, "node DOWN")
    assert "DOWN" in c.ok("cinfo")
    j = c.wait_state(jid, *TERMINAL, timeout=10)
    # policy: the node's jobs end FAILED, the reason names the node
    assert j["state"] == "FAILED" and j["reason"] == "Node crane01 down", j
    # nobody could kill them: the job's processes still run on the lost node
    assert all(pid_alive(p) for p in pids)
    assert node_state(c, "crane02") != "DOWN"

    c.start_agent("crane01")
    c.wait_nodes_up()
    # reconciliation: the agent still runs a job the controller no longer expects
    wait_for(lambda: not any(pid_alive(p) for p in pids), 15, "orphan processes killed")
    wait_for(
        lambda: not any(os.path.exists(d) for d in job_dirs(c, "crane01", jid)),
        10,
        "orphan cgroup gone",
    )
    assert f"runs unknown job {jid}: killing it" in log_of(c, "cranectld")
    assert c.state(jid) == "FAILED"
    # the node is usable again
    again = c.submit("-w", "crane01", wrap="exit 0")
    assert c.wait_state(again, *TERMINAL, timeout=20)["state"] == "COMPLETED"


# ---------------------------------------------------------------- network faults


def test_paused_agent_short_and_past_timeout(make_cluster) -> None:  # type: ignore[no-untyped-def]
    timeout = 5.0
    c: Cluster = make_cluster(nodes=1, CranedTimeout=timeout, **FAST)
    agent = c.procs["craned-crane01"]
    running = c.submit("-w", "crane01", wrap="sleep 300")
    rpid = c.step_pid(running)

    # 1. paused for ~4 heartbeats, well under CranedTimeout
    agent.send_signal(signal.SIGSTOP)
    try:
        jid = c.submit("-w", "crane01", wrap=f"echo start >> {c.file('once')}; sleep 1")
        assert c.wait_state(jid, "RUNNING")
        never(lambda: node_state(c, "crane01") == "DOWN", 2.0, "node DOWN during a short pause")
    finally:
        agent.send_signal(signal.SIGCONT)
    j = c.wait_state(jid, *TERMINAL, timeout=20)
    assert j["state"] == "COMPLETED", j
    assert lines(c, "once") == ["start"], "the step was launched more than once"
    assert log_of(c, "craned-crane01").count(f"launch of {jid}.1 already done") == 0
    # heartbeats resumed: longer than CranedTimeout later the node is still up
    never(lambda: node_state(c, "crane01") == "DOWN", timeout + 1.5, "node DOWN after resuming")
    assert c.state(running) == "RUNNING" and pid_alive(rpid), c.job(running)

    # 2. paused past CranedTimeout: DOWN, then back up after SIGCONT
    agent.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: node_state(c, "crane01") == "DOWN", timeout + 10, "node DOWN")
        j = c.wait_state(running, *TERMINAL, timeout=10)
        assert j["state"] == "FAILED" and j["reason"] == "Node crane01 down", j
    finally:
        agent.send_signal(signal.SIGCONT)
    c.wait_nodes_up(timeout=20)  # the agent re-registers by itself
    assert agent.poll() is None
    wait_for(
        lambda: "register again" in log_of(c, "craned-crane01"), 10, "agent asked to register again"
    )
    wait_for(lambda: not pid_alive(rpid), 15, "the failed job's leftover processes killed")
    after = c.submit("-w", "crane01", wrap=f"echo after >> {c.file('after')}")
    assert c.wait_state(after, *TERMINAL, timeout=20)["state"] == "COMPLETED"
    assert lines(c, "after") == ["after"]


# ---------------------------------------------------------------- escapes

ESCAPES = r"""
P={pids}
rec() {{ sh -c 'echo $$ >> "$1"; exec sleep 300' rec "$P"; }}
# a new session
setsid sh -c 'echo $$ >> "$1"; exec sleep 300' s "$P" &
# a double fork: the middle process exits, the grandchild is reparented
sh -c 'sh -c '"'"'echo $$ >> "$1"; exec sleep 300'"'"' g "$1" & exit 0' d "$P"
# deaf to the polite signals
sh -c 'trap "" TERM HUP INT; echo $$ >> "$1"; while :; do sleep 1; done' t "$P" &
# a bounded fork bomb: a binary tree of {depth} levels (2^{depth}-1 leaves + their shells)
bomb() {{ if [ "$1" -gt 0 ]; then bomb $(($1 - 1)) & bomb $(($1 - 1)) & fi; rec; }}
bomb {depth} &
echo ready >> {ready}
wait
"""


@pytest.mark.parametrize("how", ["time_limit", "cancel"])
def test_escapes_are_dead_after_kill(make_cluster, how: str) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=1, **FAST)
    depth = 6  # 63 leaves recorded + 63 shells + the escapees: ~130 processes
    expected = (1 << depth) - 1 + 3
    pids_file, ready = c.file(f"esc-{how}.pids"), c.file(f"esc-{how}.ready")
    script = ESCAPES.format(pids=pids_file, ready=ready, depth=depth)
    limit = ["-t", "0:05"] if how == "time_limit" else []
    jid = c.submit("-w", "crane01", *limit, wrap=script)
    cg = step_cgroup(c, "crane01", jid)
    wait_for(
        lambda: len(lines(c, os.path.basename(pids_file))) >= expected, 10, "every escapee recorded"
    )
    recorded = {int(x) for x in lines(c, os.path.basename(pids_file))}
    tree = cg.pids()  # everything in the step right now (still running: the limit is 5 s)
    assert c.state(jid) == "RUNNING", "the tree took longer to build than the time limit"
    assert recorded <= tree, "an escapee is outside the step's cgroup"
    assert len(tree) >= 100, len(tree)
    if how == "cancel":
        c.ok("ccancel", str(jid))
    j = c.wait_state(jid, *TERMINAL, timeout=30)
    assert j["state"] == ("TIMEOUT" if how == "time_limit" else "CANCELLED"), j
    survivors = [p for p in tree | recorded if pid_alive(p)]
    assert not survivors, f"{len(survivors)} processes survived: {survivors[:10]}"
    assert not any(os.path.exists(d) for d in job_dirs(c, "crane01", jid)), "job cgroup left behind"


# ---------------------------------------------------------------- load


def test_storm_of_1200_concurrent_clients(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=2, cpus=4)
    jobs = [c.submit(wrap="sleep 300") for _ in range(4)]  # fills partition CPU (crane01)
    for j in jobs:
        c.wait_state(j, "RUNNING")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "load_storm.py"), "--config", c.config_path,
           "--queries", "1000", "--cancels", "200", "--expect-jobs", ",".join(map(str, jobs)), "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=c.env(), cwd=ROOT)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["errors"] == 0, res["error_samples"]
    assert res["answered_ok"] == {"QueryJobs": 1000, "Cancel": 200}
    assert res["query_p99_ms"] < 30_000, res
    assert all(c.state(j) == "RUNNING" for j in jobs)  # bogus cancels touched nothing
