"""Promises under compute-host faults (issue 15), on the multi-host lab:
cranectld on host ``ctl``, one craned per compute host, CLIs on ``login``.

One lab cluster for the module (3 compute hosts, HeartbeatInterval 1 s,
CranedTimeout 10 s); every test starts from a healed network and an empty
queue. A "short" cut lasts 2.5 s: TCP's retransmission backoff (0.2, 0.4,
0.8, 1.6 s ...) delivers what was queued at most ~3 s after the heal, so the
controller's gap without a heartbeat stays well under CranedTimeout. Each
promise is checked with a bound on the time it takes (``BOUND`` seconds,
generous for a slow CI machine)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crane.core import messages as m
from crane.core.states import JobState, NodeState, PendingReason
from tests.conftest import open_ancestors, pid_alive, wait_for
from tests.netcluster import NetTestCluster, netns_works

HEARTBEAT, TIMEOUT = 1, 10
SHORT_CUT = 2.5  # seconds: well under CranedTimeout, TCP's backoff included
GRACE = 3  # seconds a preemption victim gets between SIGTERM and SIGKILL
BOUND = 30.0  # seconds any promised outcome may take after its cause (heal, timeout)
NODES = ("crane01", "crane02", "crane03")


# --------------------------------------------------------------------------- the module's cluster


@pytest.fixture(scope="module")
def nc(tmp_path_factory: pytest.TempPathFactory, users: dict[str, int]) -> Iterator[NetTestCluster]:
    if not netns_works():
        pytest.skip("needs root, iproute2 (ip, tc), util-linux (nsenter, unshare) and munge")
    base = str(tmp_path_factory.mktemp("netnodes"))
    os.chmod(base, 0o755)
    open_ancestors(base)
    c = NetTestCluster(base, f"t{os.getpid() % 10000}nd", len(NODES), 4, HeartbeatInterval=HEARTBEAT,
                       CranedTimeout=TIMEOUT)  # fmt: skip
    c.create()
    try:
        setup_qos(c)
        yield c
    finally:
        c.lab.heal_all()
        c.destroy()


@pytest.fixture
def c(nc: NetTestCluster) -> Iterator[NetTestCluster]:
    """The module's cluster, healed, every node up and idle, before and after each test."""
    reset(nc)
    yield nc
    reset(nc)


def reset(c: NetTestCluster) -> None:
    c.lab.heal_all()
    ids = [j["job_id"] for j in c.request(m.QueryJobs({}))["jobs"]]
    if ids:
        c.request(m.Cancel(ids=[[j, None] for j in ids], force=True))
        wait_for(lambda: not c.request(m.QueryJobs({}))["jobs"], 60, "an empty queue")
    c.wait_nodes_up(60)
    wait_for(lambda: all(n["cpus_free"] == n["cpus"] for n in nodes(c).values()), 60, "idle nodes")


def setup_qos(c: NetTestCluster) -> None:
    """QoS Background (preemptable, GraceTime 2 s) and Interactive (preempts
    Background, CANCEL), account MyAccount."""
    c.ok("cacctmgr", "add", "qos", "Background", "Priority=100", f"GraceTime={GRACE}")
    c.ok(
        "cacctmgr",
        "add",
        "qos",
        "Interactive",
        "Priority=5000",
        "Preempt=Background",
        "PreemptMode=CANCEL",
    )
    c.ok("cacctmgr", "add", "account", "MyAccount")
    c.ok(
        "cacctmgr",
        "modify",
        "account",
        "where",
        "Name=MyAccount",
        "set",
        "AllowedQos+=Background,Interactive",
    )
    c.ok("cacctmgr", "add", "user", "root", "Account=MyAccount")


# --------------------------------------------------------------------------- helpers


def nodes(c: NetTestCluster) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in c.request(m.QueryNodes(), timeout=5)["nodes"]}


def job(c: NetTestCluster, jid: int) -> dict[str, Any]:
    j = c.job(jid)
    assert j is not None, f"job {jid} unknown"
    return j


def running(
    c: NetTestCluster, node: str, user: str = "alice", wrap: str = "sleep 300", *argv: str
) -> tuple[int, int]:
    """A job on ``node`` that records each start in ``starts_<id>``: (id, batch step pid)."""
    jid = c.submit("-w", node, *argv, wrap=f"echo $$ >> starts_$CRANE_JOB_ID; {wrap}", user=user)
    c.wait_state(jid, JobState.RUNNING)
    return jid, c.step_pid(jid)


def starts(c: NetTestCluster, jid: int) -> int:
    return len(c.read(f"starts_{jid}").split())


def netns_inode(c: NetTestCluster, host: str) -> int:
    return os.stat(f"/run/netns/{c.lab.ns(host)}").st_ino


def job_procs(c: NetTestCluster, jid: int, host: str | None = None) -> list[int]:
    """Live processes of this cluster's job ``jid`` (by their environment),
    on ``host``'s network stack if given."""
    want = [f"CRANE_JOB_ID={jid}".encode(), f"CRANE_CLUSTER_NAME={c.cfg['ClusterName']}".encode()]
    net = netns_inode(c, host) if host else None
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            if net is not None and os.stat(f"/proc/{d}/ns/net").st_ino != net:
                continue
        except OSError:
            continue
        if all(w in env for w in want) and pid_alive(int(d)):
            found.append(int(d))
    return found


def stays(cond: Callable[[], Any], seconds: float, what: str, interval: float = 0.1) -> None:
    """``cond`` holds all along for ``seconds`` (an observation window, polled)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cond(), f"no longer true: {what}"
        time.sleep(interval)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.monotonic()
    return fn(), time.monotonic() - t


def node_up(c: NetTestCluster, name: str) -> bool:
    return nodes(c)[name]["state"] != NodeState.DOWN


def agent_log(c: NetTestCluster, node: str) -> str:
    with open(os.path.join(c.base, "log", f"craned-{node}.log")) as f:
        return f.read()


def kills_logged(c: NetTestCluster, node: str, jid: int, *, killing: bool = False) -> int:
    """The KillJob orders for ``jid`` the agent on ``node`` carried out
    (``killing``: only those that found steps to kill)."""
    lines = [ln for ln in agent_log(c, node).splitlines() if f"kill job {jid} step " in ln]
    return len([ln for ln in lines if not killing or ": 0 steps," not in ln])


# --------------------------------------------------------------------------- 1. cancel across a partition


def check_cancelled_once(
    c: NetTestCluster, jid: int, pid: int, node: str, user: str, message: str
) -> None:
    """The cancel was carried out, once: processes dead, history CANCELLED
    with who/why, the node's cpus free and usable by a new job, one kill."""
    j = job(c, jid)
    assert j["state"] == JobState.CANCELLED, j
    assert not pid_alive(pid), f"step pid {pid} of job {jid} still alive"
    assert job_procs(c, jid) == [], f"processes of job {jid} still alive"
    hist = c.ok("cacct", "-P", "--format=JobID,State,Reason", "-j", str(jid), user=user)
    assert f"{jid}|CANCELLED by {user}|" in hist and message in hist, hist
    assert starts(c, jid) == 1
    # the node's resources came back: a job wanting every cpu of it runs there
    full = c.submit("-w", node, "-c", "4", wrap="true", user="bob")
    assert (
        c.wait_state(full, JobState.COMPLETED, JobState.FAILED, timeout=BOUND)["state"]
        == JobState.COMPLETED
    )
    # exactly once: the agent killed the job once, and its record did not change since
    assert kills_logged(c, node, jid) == 1, agent_log(c, node)
    assert job(c, jid)["end_time"] == j["end_time"]


def test_cancel_during_a_cut_is_carried_out_once_after_the_heal(c: NetTestCluster) -> None:
    """A job on crane01; crane01 cut (< CranedTimeout); ``ccancel -m`` from
    the login host is acknowledged at once; ``ccancel --wait`` started during
    the cut does not return before the heal, and returns (within BOUND of the
    heal) only once the job is CANCELLED by alice with her message, its
    processes dead and its node's cpus free."""
    jid, pid = running(c, "crane01")
    c.lab.cut("crane01")
    try:
        wait_for(lambda: not c.lab.reachable("ctl", "crane01"), 10, "crane01 unreachable")
        r, took = timed(lambda: c.run("ccancel", "-m", "cut off", str(jid), user="alice"))
        assert r.returncode == 0 and took < 10, (r, took)
        waiter = subprocess.Popen(c.command("ccancel", "--wait", str(jid), user="alice"), env=c.env(),
                                  cwd=c.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        # while cut: the wait goes on, the job's processes too (nothing reached them)
        stays(lambda: waiter.poll() is None and pid_alive(pid) and node_up(c, "crane01"), SHORT_CUT,
              "ccancel --wait waiting, job alive, node up while cut")  # fmt: skip
        assert not JobState(job(c, jid)["state"]).is_terminal
    finally:
        c.lab.heal("crane01")
    healed = time.monotonic()
    out, err = waiter.communicate(timeout=BOUND + 30)
    assert waiter.returncode == 0, (out, err)
    assert time.monotonic() - healed < BOUND
    # at the moment it returned, all of the promise already held
    assert not pid_alive(pid) and job(c, jid)["state"] == JobState.CANCELLED
    check_cancelled_once(c, jid, pid, "crane01", "alice", "cut off")


def test_partition_heals_while_the_cancel_is_in_flight(c: NetTestCluster) -> None:
    """The cancel is sent, then the host is cut at once (the kill or its
    report in flight), then healed: the cancel is carried out exactly once."""
    jid, pid = running(c, "crane02")
    r = c.run("ccancel", "-m", "in flight", str(jid), user="alice")
    c.lab.cut("crane02")
    try:
        assert r.returncode == 0, r
        stays(lambda: node_up(c, "crane02"), SHORT_CUT, "crane02 not DOWN during a short cut")
    finally:
        c.lab.heal("crane02")
    c.wait_state(jid, JobState.CANCELLED, timeout=BOUND)
    wait_for(lambda: not pid_alive(pid), BOUND, f"step pid {pid} dead")
    check_cancelled_once(c, jid, pid, "crane02", "alice", "in flight")


# --------------------------------------------------------------------------- 2. a short cut keeps jobs


def gated(c: NetTestCluster, node: str, code: int) -> tuple[int, int]:
    """A job on ``node`` that exits ``code`` once the file ``go_<id>`` exists."""
    return running(
        c, node, "alice", f"while [ ! -e go_$CRANE_JOB_ID ]; do sleep 0.2; done; exit {code}"
    )


def go(c: NetTestCluster, jid: int) -> None:
    with open(c.file(f"go_{jid}"), "w"):
        pass


@pytest.mark.parametrize("fault", ["cut", "pull"])
def test_a_short_cut_keeps_the_jobs(c: NetTestCluster, fault: str) -> None:
    """crane02 off the network (``cut``: its switch port down; ``pull``: its
    veth off the bridge) for less than CranedTimeout: the node never goes
    DOWN, its running jobs keep their step pid and stay RUNNING, nothing is
    killed or started again, a job that ended during the cut is reported
    with its exit code after the heal, and one that ends later too."""
    a, apid = gated(c, "crane02", 5)
    b, bpid = gated(c, "crane02", 7)
    off, on = (c.lab.cut, c.lab.heal) if fault == "cut" else (c.lab.pull, c.lab.plug)
    off("crane02")
    try:
        wait_for(lambda: not c.lab.reachable("ctl", "crane02"), 10, "crane02 unreachable")
        go(c, b)  # b ends while its node is cut off: its report waits
        wait_for(lambda: not pid_alive(bpid), BOUND, "job b's shell ended")
        stays(lambda: node_up(c, "crane02") and job(c, a)["state"] == JobState.RUNNING, SHORT_CUT,
              "crane02 up and job a RUNNING during the cut")  # fmt: skip
    finally:
        on("crane02")
    jb = c.wait_state(b, JobState.FAILED, JobState.COMPLETED, timeout=BOUND)
    assert (jb["state"], jb["exit_code"]) == (JobState.FAILED, 7), jb
    ja = job(c, a)
    assert ja["state"] == JobState.RUNNING and c.step_pid(a) == apid and pid_alive(apid), ja
    assert node_up(c, "crane02")
    go(c, a)
    ja = c.wait_state(a, JobState.FAILED, JobState.COMPLETED, timeout=BOUND)
    assert (ja["state"], ja["exit_code"]) == (JobState.FAILED, 5), ja
    for jid in (a, b):
        assert starts(c, jid) == 1, f"job {jid} started again"
        assert kills_logged(c, "crane02", jid, killing=True) == 0, f"job {jid} was killed"


def test_a_slow_lossy_link_keeps_the_jobs_and_runs_new_ones(c: NetTestCluster) -> None:
    """crane03's link slowed to a token bucket that delays and drops (tbf
    200kbit, 100 ms queue) for a few seconds while jobs start and end on it:
    the running job keeps its pid, the short ones all complete (exit 0, one
    start each) within BOUND, and the node never goes DOWN."""
    a, apid = running(c, "crane03")
    c.lab.slow("crane03")
    try:
        shorts = [c.submit("-w", "crane03", wrap=f"echo $$ >> starts_$CRANE_JOB_ID; echo {i}", user="bob")
                  for i in range(4)]  # fmt: skip
        for s in shorts:
            js = c.wait_state(
                s, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, timeout=BOUND
            )
            assert (js["state"], js["exit_code"]) == (JobState.COMPLETED, 0), js
            assert starts(c, s) == 1
        stays(lambda: node_up(c, "crane03") and job(c, a)["state"] == JobState.RUNNING, SHORT_CUT,
              "crane03 up and job a RUNNING on the slow link")  # fmt: skip
    finally:
        c.lab.fast("crane03")
    assert c.step_pid(a) == apid and pid_alive(apid) and starts(c, a) == 1
    assert job(c, a)["state"] == JobState.RUNNING and node_up(c, "crane03")


# --------------------------------------------------------------------------- 3. a long cut


def test_a_long_cut_ends_the_jobs_and_nothing_runs_twice(c: NetTestCluster) -> None:
    """crane03 cut past CranedTimeout: the node goes DOWN (within
    CranedTimeout + BOUND), its running job ends FAILED with reason
    ``Node crane03 down`` (README: as Slurm's NODE_FAIL) and the node's
    resources are freed; a job being requeued on it runs again elsewhere.
    When crane03 comes back (UP within BOUND), nothing of either job still
    runs on it: the agent kills them when it registers again; the ended job
    started once, the requeued one twice and its new run goes on."""
    a, apid = running(c, "crane03")
    # r lands on crane03 (the others are full), so that its next run goes elsewhere
    fillers = [
        c.submit("-w", n, "-c", "4", wrap="sleep 300", user="bob") for n in ("crane01", "crane02")
    ]
    for f in fillers:
        c.wait_state(f, JobState.RUNNING)
    r = c.submit(wrap="echo $$ >> starts_$CRANE_JOB_ID; sleep 300", user="alice")
    assert c.wait_state(r, JobState.RUNNING)["nodes"] == ["crane03"]
    c.ok("ccancel", *map(str, fillers), user="bob")
    for f in fillers:
        c.wait_state(f, JobState.CANCELLED)
    rpid = c.step_pid(r)
    c.lab.cut("crane03")
    try:
        wait_for(lambda: not c.lab.reachable("ctl", "crane03"), 10, "crane03 unreachable")
        c.ok("ccontrol", "requeue", str(r), user="alice")
        wait_for(lambda: not node_up(c, "crane03"), TIMEOUT + BOUND, "crane03 DOWN")
        ja = c.wait_state(a, JobState.FAILED, timeout=BOUND)
        assert ja["reason"] == "Node crane03 down", ja
        n = nodes(c)["crane03"]
        assert n["cpus_free"] == n["cpus"] and not n["jobs"], n
        # the requeued job runs again, not on the node that is down
        jr = wait_for(lambda: (j := job(c, r))["state"] == JobState.RUNNING and j["nodes"] != ["crane03"] and j,
                      BOUND, "job r running again elsewhere")  # fmt: skip
        wait_for(lambda: starts(c, r) == 2, BOUND, "job r's second start recorded")
        # crane03 cannot be told: its processes still run there (it is cut off)
        assert pid_alive(apid) and pid_alive(rpid)
    finally:
        c.lab.heal("crane03")
    wait_for(lambda: node_up(c, "crane03"), BOUND, "crane03 UP again")
    wait_for(lambda: not job_procs(c, a) and not job_procs(c, r, "crane03"), BOUND,
             "nothing of jobs a and r left on crane03")  # fmt: skip
    assert not pid_alive(apid) and not pid_alive(rpid)
    assert starts(c, a) == 1 and job(c, a)["state"] == JobState.FAILED
    jr = job(c, r)
    assert jr["state"] == JobState.RUNNING and jr["nodes"] != ["crane03"] and starts(c, r) == 2, jr
    assert job_procs(c, r, jr["nodes"][0]), "the requeued run goes on"
    full = c.submit("-w", "crane03", "-c", "4", wrap="true", user="bob")
    assert (
        c.wait_state(full, JobState.COMPLETED, JobState.FAILED, timeout=BOUND)["state"]
        == JobState.COMPLETED
    )


# --------------------------------------------------------------------------- 4. preemption when the victim's node drops out

BG = ("-A", "MyAccount", "-q", "Background")
HIGH = ("-A", "MyAccount", "-q", "Interactive")
STUBBORN = "trap '' TERM; sleep 300"  # a victim that outlives SIGTERM: it dies at the end of its grace time


def preemption_setup(c: NetTestCluster) -> dict[str, tuple[int, int]]:
    """crane03 full with a job nobody may preempt; crane01 holds two
    preemptable jobs of 2 cpus, crane02 one of 4: a 4-cpu preemptor's plan
    (fewest victims first) is the job on crane02."""
    return {
        "keep": running(c, "crane03", "root", "sleep 300", *HIGH, "-c", "4"),
        "v1a": running(c, "crane01", "root", STUBBORN, *BG, "-c", "2"),
        "v1b": running(c, "crane01", "root", STUBBORN, *BG, "-c", "2"),
        "v2": running(c, "crane02", "root", STUBBORN, *BG, "-c", "4"),
    }


def preempted_by(c: NetTestCluster, jid: int, p: int) -> bool:
    return f"Preempted by job {p}" in str(job(c, jid).get("reason"))


def untouched(c: NetTestCluster, jobs: dict[str, tuple[int, int]], *names: str) -> None:
    for name in names:
        jid, pid = jobs[name]
        assert job(c, jid)["state"] == JobState.RUNNING and pid_alive(pid), f"{name} was touched"
        assert c.step_pid(jid) == pid and starts(c, jid) == 1


def test_preemptor_whose_victim_node_drops_out_briefly(c: NetTestCluster) -> None:
    """Promise: a preemptor's victims are chosen on nodes that are up and
    those nodes are reserved for it before any victim is told to end. When
    the victim's node drops out after the victim was told (here: it dies at
    the end of its grace time while its node is cut off, its report held by
    the cut) and comes back within CranedTimeout, the preemptor does not
    start while the node is away, the victim ends once (CANCELLED, reason
    ``Preempted by job P``), the preemptor then starts on that node (within
    BOUND of the heal, not before the victim ended), and no other job is
    killed for it meanwhile, although the scheduler runs passes (a job is
    queued during the cut): no victim dies while the preemptor cannot start."""
    jobs = preemption_setup(c)
    v2, v2pid = jobs["v2"]
    p = c.submit(*HIGH, "-c", "4", wrap="sleep 300")
    wait_for(lambda: kills_logged(c, "crane02", v2), BOUND, "the victim told to end")
    c.lab.cut("crane02")
    try:
        # a job queued meanwhile makes the scheduler run passes while the victim's end is unknown
        c.submit(*BG, "-c", "1", wrap="true")
        wait_for(
            lambda: not pid_alive(v2pid), BOUND, "the victim dead at the end of its grace time"
        )
        stays(lambda: node_up(c, "crane02") and job(c, p)["state"] == JobState.PENDING, 1.0,
              "crane02 up, the preemptor waiting")  # fmt: skip
    finally:
        c.lab.heal("crane02")
    jp = c.wait_state(p, JobState.RUNNING, timeout=BOUND)
    assert jp["nodes"] == ["crane02"], jp
    jv = c.wait_state(v2, JobState.CANCELLED, timeout=BOUND)
    assert preempted_by(c, v2, p) and jv["end_time"] <= jp["start_time"], (jv, jp)
    assert not job_procs(c, v2) and kills_logged(c, "crane02", v2) == 1 and starts(c, v2) == 1
    untouched(c, jobs, "keep", "v1a", "v1b")


def test_preemptor_whose_victim_node_goes_down(c: NetTestCluster) -> None:
    """Promise: the preemptor (submitted held, released once crane02 is cut
    off but not yet known to be) plans the job on crane02, which then stays
    away past CranedTimeout: the victim ends with its node, the preemptor is
    planned again on nodes that are up and starts there (within BOUND of the
    node going DOWN), after its new victims ended: every job killed for it
    is followed by its start. When crane02 returns, the agent kills what
    still runs of the victim there; the job nobody may preempt is untouched."""
    jobs = preemption_setup(c)
    v2, v2pid = jobs["v2"]
    p = c.submit(*HIGH, "-c", "4", "-H", wrap="sleep 300")
    c.lab.cut("crane02")
    try:
        wait_for(lambda: not c.lab.reachable("ctl", "crane02"), 10, "crane02 unreachable")
        c.ok("ccontrol", "release", str(p))
        wait_for(
            lambda: job(c, p)["reason"] == PendingReason.WAITING_FOR_PREEMPTION,
            BOUND,
            "the preemptor's plan",
        )
        wait_for(lambda: not node_up(c, "crane02"), TIMEOUT + BOUND, "crane02 DOWN")
        jp = c.wait_state(p, JobState.RUNNING, timeout=BOUND)
        assert jp["nodes"] == ["crane01"], jp
        for name in ("v1a", "v1b"):
            jid, pid = jobs[name]
            jv = job(c, jid)
            assert jv["state"] == JobState.CANCELLED and preempted_by(c, jid, p), jv
            assert jv["end_time"] <= jp["start_time"] and not pid_alive(pid)
        jv2 = job(c, v2)
        assert JobState(jv2["state"]).is_terminal and jv2["reason"] in (
            f"Preempted by job {p}",
            "Node crane02 down",
        )
        assert pid_alive(v2pid)  # never told: its node was cut off before the plan
    finally:
        c.lab.heal("crane02")
    wait_for(lambda: node_up(c, "crane02"), BOUND, "crane02 UP again")
    wait_for(lambda: not job_procs(c, v2), BOUND, "nothing of the victim left on crane02")
    assert starts(c, v2) == 1 and not pid_alive(v2pid)
    untouched(c, jobs, "keep")
    assert job(c, p)["state"] == JobState.RUNNING


def test_preemptor_whose_launch_node_goes_down_before_it_starts(c: NetTestCluster) -> None:
    """Promise: a preemptor placed on a node that drops out before its
    batch step started there (its launch held by the cut) is not ended with
    the node: it goes back to the queue (requeued, never having run) and
    starts once it fits again, here when the node returns; so the victim
    killed for it is followed by its start. Set-up: crane01 full with a job
    nobody may preempt, crane03 with a preemptable one, crane02 idle but cut
    off (not yet known to be); the 2-node preemptor (batch step on crane02)
    preempts the job on crane03 and is launched into the cut."""
    keep, kpid = running(c, "crane01", "root", "sleep 300", *HIGH, "-c", "4")
    v3, v3pid = running(c, "crane03", "root", "sleep 300", *BG, "-c", "4")
    p = c.submit(*HIGH, "-N", "2", "-c", "4", "-H",
                 wrap="echo $$ >> starts_$CRANE_JOB_ID; hostname >> hosts_$CRANE_JOB_ID; sleep 300")  # fmt: skip
    c.lab.cut("crane02")
    try:
        wait_for(lambda: not c.lab.reachable("ctl", "crane02"), 10, "crane02 unreachable")
        c.ok("ccontrol", "release", str(p))
        jv = c.wait_state(v3, JobState.CANCELLED, timeout=BOUND)
        assert preempted_by(c, v3, p), jv
        jp = wait_for(lambda: (j := job(c, p))["nodes"] and j, BOUND, "the preemptor placed")
        assert jp["nodes"][0] == "crane02", jp
        wait_for(lambda: not node_up(c, "crane02"), TIMEOUT + BOUND, "crane02 DOWN")
        jp = c.wait_state(p, JobState.PENDING, JobState.FAILED, timeout=BOUND)
        assert jp["state"] == JobState.PENDING, jp
        assert starts(c, p) == 0
    finally:
        c.lab.heal("crane02")
    wait_for(lambda: node_up(c, "crane02"), BOUND, "crane02 UP again")
    jp = c.wait_state(p, JobState.RUNNING, timeout=BOUND)
    wait_for(lambda: starts(c, p) == 1, BOUND, "the preemptor's start recorded")
    # it runs once: no second start, nothing of its first launch left
    stays(
        lambda: starts(c, p) == 1 and job(c, p)["state"] == JobState.RUNNING,
        2.0,
        "one run of the preemptor",
    )
    assert len(job_procs(c, p, "crane02")) >= 1
    assert job(c, keep)["state"] == JobState.RUNNING and c.step_pid(keep) == kpid


# --------------------------------------------------------------------------- the pieces, directly


def test_agent_refuses_a_launch_held_past_craned_timeout() -> None:
    """The agent's rule: a launch arriving more than CranedTimeout after the
    controller last heard from the node is refused and reported failed; one
    without a date (older controllers) or in time runs."""
    from types import SimpleNamespace

    from crane.agent.main import Agent
    from crane.core.states import StepEnd

    sent: list[m.Message] = []
    agent = SimpleNamespace(cfg=SimpleNamespace(craned_timeout=10.0), send=sent.append, clock_offset=0.0)

    def stale(spec: dict[str, Any]) -> bool:
        return Agent._stale_launch(agent, m.LaunchStep(7, 1, spec))  # type: ignore[arg-type]

    assert not stale({}) and not stale({"heard_at": "soon"}) and not stale({"heard_at": True})
    assert not stale({"heard_at": time.time() - 5}) and not sent
    assert stale({"heard_at": time.time() - 25})
    (report,) = sent
    assert isinstance(report, m.StepEnded) and (report.job_id, report.step_id) == (7, 1)
    assert report.reason == StepEnd.LAUNCH_FAILED and "CranedTimeout" in report.detail
    # dated by the controller's clock: an agent whose clock is 40 s behind (told
    # by the RegisterAck) still refuses the held launch, and runs a fresh one
    agent.clock_offset = 40.0
    assert stale({"heard_at": time.time() + 40 - 25}) and not stale({"heard_at": time.time() + 40 - 5})


def test_a_job_whose_node_went_down_before_it_started_is_requeued() -> None:
    """Node down before the batch step's start was reported: requeued, and
    no kill queued for the down node (its release would come back and end
    the next run there); after its start was reported, or crun's own job
    (its output streams to a crun): FAILED as before."""
    from crane.core import events as ev
    from crane.core.job import Job
    from crane.core.job_machine import JobMachine

    for started, streamed in ((False, False), (True, False), (False, True)):
        mc = JobMachine(Job(9, "j", 0, "root", 0, "acct", "normal", "CPU", cpus=4, nnodes=2))
        mc.job.launch = {"script": "#!/bin/sh\ntrue\n", "env": {}, **({"stream": [1, 2]} if streamed else {})}
        acts = mc.handle(ev.Allocated(["crane02", "crane03"], 4, {}), 1.0)
        launched = [a.node for a in acts if isinstance(a, ev.ToNode) and isinstance(a.msg, m.LaunchStep)]
        assert launched[0] == "crane02"
        if started:
            mc.handle(ev.StepStartedEv("crane02", 1, 4242), 2.0)
        acts = mc.handle(ev.NodeDownEv("crane02"), 3.0)
        kills = [a.node for a in acts if isinstance(a, ev.ToNode) and isinstance(a.msg, m.KillJob)]
        acts += mc.handle(ev.ReleasedEv("crane03"), 4.0)
        j = mc.job
        if started or streamed:
            assert "crane02" in kills or streamed, kills
            assert (j.state, j.reason, j.requeue_count) == (JobState.FAILED, "Node crane02 down", 0)
        else:
            assert kills == ["crane03"], kills
            assert (j.state, j.requeue_count, j.nodes) == (JobState.PENDING, 1, [])
            assert any(isinstance(a, ev.ToScheduler) and isinstance(a.msg, ev.Enqueue) for a in acts)
