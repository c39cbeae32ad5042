"""The login host and the controller host cut off, and bounded outboxes
(issue 15), on the multi-host lab (bench/netlab.py): one cluster for the
module, every fault healed and every job gone between tests.

- A CLI on the login host that cannot reach the controller (its cable cut,
  a partition between it and the controller, the controller's host pulled)
  prints one line naming the address and exits with the documented code
  within $CRANE_CONNECT_TIMEOUT plus a margin; nothing is applied.
- A request whose reply is lost (the connection was up, the controller
  applied it, the answer never came back) ends within $CRANE_REPLY_TIMEOUT
  with a line saying it may have been applied; the client never sends it
  again, so it is applied once.
- The controller cut off from every agent while users cancel and submit:
  the CLIs answer, and once the agents are back each acknowledged cancel is
  carried out once and nothing else is killed.
- A node's outbox is bounded (MaxNodeOutbox): past it the node is DOWN, its
  jobs end (a cancelled one CANCELLED), what its agent still runs when it
  comes back is killed, and the controller's memory stays bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bench.netlab import CONTROLLER, LOGIN
from crane.actors.node import OUTBOX_FULL, SIGNALS_PER_JOB, Outbox
from crane.core import messages as m
from tests.conftest import open_ancestors, pid_alive, wait_for
from tests.netcluster import NetTestCluster, netns_works

CONNECT_TIMEOUT = 2.0  # $CRANE_CONNECT_TIMEOUT for the CLIs here
REPLY_TIMEOUT = 4.0  # $CRANE_REPLY_TIMEOUT
MARGIN = 15.0  # a Python CLI's start and exit on a slow, busy 2-core machine
OUTBOX_LIMIT = (
    40  # MaxNodeOutbox of this module's cluster (a step's 1 MiB of held stdin is 32 chunks)
)
FLOOD_MIB = 24  # the controller's RSS may grow by less than this while 62.5 MiB of stdin is sent to an away agent
ADDRESS = "tcp://10.77.0.1:10012"  # the controller's CLI port (host ctl)

# ---------------------------------------------------------------- the outbox, directly


def test_outbox_coalesces_per_job_and_refuses_past_its_limit() -> None:
    o = Outbox()
    launch = m.LaunchStep(7, 1, {})
    assert o.add(launch, 100)
    for _ in range(50):  # the same signal, again and again: pending once
        assert o.add(m.SignalJob(7, None, signal.SIGUSR1), 100)
    assert len(o) == 2
    for sig in range(1, 40):  # distinct signals: at most SIGNALS_PER_JOB per job, the rest dropped
        assert o.add(m.SignalJob(7, None, sig), 100)
    assert sum(isinstance(x, m.SignalJob) for x in o) == SIGNALS_PER_JOB
    assert o.dropped > 0
    assert o.add(m.SuspendJob(7, True), 100) and o.add(m.SuspendJob(7, False), 100)
    assert [x.suspend for x in o if isinstance(x, m.SuspendJob)] == [False]  # the latest wins
    assert o.add(m.KillJob(7, 2), 100) and o.add(m.KillJob(7, 2, grace=5.0), 100)
    assert [x.grace for x in o if isinstance(x, m.KillJob)] == [5.0]
    # a whole-job kill: what was pending for job 7 is moot, its launch is kept (and goes first)
    assert o.add(m.KillJob(7, None, 1.0), 100) and o.add(m.KillJob(7, None, 0.0, True), 100)
    assert [type(x) for x in o] == [m.LaunchStep, m.KillJob]
    assert o.first() is launch and list(o)[1].force
    # input: a chunk sent again is kept once; at most the input window per step
    chunk = b"x" * m.INPUT_CHUNK
    for seq in range(2 * m.INPUT_WINDOW // m.INPUT_CHUNK):
        assert o.add(m.StepInput(8, 1, seq, chunk), 1000)
        assert o.add(m.StepInput(8, 1, seq, chunk), 1000)
    held = sum(len(x.data) for x in o if isinstance(x, m.StepInput))
    assert held == m.INPUT_WINDOW
    # the hard limit: refused (the node actor then drops it all and marks the node down)
    small = Outbox()
    for j in range(3):
        assert small.add(m.KillJob(j), 3)
    assert small.add(m.KillJob(1, None, 2.0), 3)  # replaces: no new room needed
    assert not small.add(m.KillJob(3), 3)
    assert [x.job_id for x in small] == [0, 2, 1]
    assert small.pop_first().job_id == 0 and len(small) == 2


def test_max_node_outbox_is_a_config_key() -> None:
    from crane.config import ConfigError, parse

    nodes = [{"name": "n1", "cpu": 2}]
    assert parse({"Nodes": nodes}).nodes["n1"].outbox_max == 10_000
    assert parse({"Nodes": nodes, "MaxNodeOutbox": 5}).nodes["n1"].outbox_max == 5
    with pytest.raises(ConfigError, match="MaxNodeOutbox: must be at least 1"):
        parse({"Nodes": nodes, "MaxNodeOutbox": 0})


# ---------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetTestCluster]:
    if not netns_works():
        pytest.skip("needs root, iproute2 (ip, tc), util-linux (nsenter, unshare) and munge")
    base = str(tmp_path_factory.mktemp("netcontrol"))
    os.chmod(base, 0o755)
    open_ancestors(base)
    c = NetTestCluster(base, f"k{os.getpid() % 100000}", 2, 4, HeartbeatInterval=1, CranedTimeout=30,
                       MaxNodeOutbox=OUTBOX_LIMIT)  # fmt: skip
    c.create()
    try:
        yield c
    finally:
        c.lab.heal_all()
        c.destroy()


def admin(c: NetTestCluster, msg: m.Message, timeout: float = 30.0) -> dict[str, Any]:
    """As root on the controller host (its ipc socket: never cut off)."""
    from crane.cli.common import call, load_config

    return call(load_config(c.admin_config), msg, timeout=timeout)


def clear(c: NetTestCluster) -> None:
    ids = [j["job_id"] for j in admin(c, m.QueryJobs({}))["jobs"]]
    if ids:
        admin(c, m.Cancel(ids=[[j, None] for j in ids], force=True))
        admin(c, m.WaitJobs(ids), timeout=60)


@pytest.fixture
def c(net: NetTestCluster, users: dict[str, int]) -> Iterator[NetTestCluster]:
    net.lab.heal_all()
    if "craned-crane02" not in net.procs:
        net.start_agent("crane02")
    net.wait_nodes_up(60)
    yield net
    net.lab.heal_all()
    if "craned-crane02" not in net.procs:
        net.start_agent("crane02")
    net.wait_nodes_up(60)
    clear(net)


def timed(c: NetTestCluster, argv: list[str], user: str | None = "alice", **env: str) -> tuple[float, subprocess.CompletedProcess[str]]:  # fmt: skip
    """``argv`` on the login host; how long it took, and its result."""
    t0 = time.monotonic()
    r = subprocess.run(c.command(*argv, user=user), capture_output=True, text=True, timeout=120,
                       env={**c.env(), **env}, cwd=c.workdir)  # fmt: skip
    return time.monotonic() - t0, r


def job_ids(c: NetTestCluster) -> set[int]:
    return {
        j["job_id"] for h in (False, True) for j in admin(c, m.QueryJobs({}, history=h))["jobs"]
    }


def lines(c: NetTestCluster, name: str) -> list[str]:
    return c.read(name).splitlines()


# ---------------------------------------------------------------- 1. the CLI cannot reach the controller

COMMANDS: dict[str, tuple[list[str], int]] = {  # what runs, its documented exit code
    "cbatch": (["cbatch", "--wrap", "true"], 3),
    "ccancel": (["ccancel", "1"], 3),
    "cqueue": (["cqueue"], 3),
    "crun": (["crun", "true"], 3),
    "sbatch": (["sbatch", "--wrap", "true"], 1),  # Slurm's commands: every error exits 1
    "scancel": (["scancel", "1"], 1),
    "squeue": (["squeue"], 1),
}

FAULTS: dict[str, tuple[Callable[[Any], None], Callable[[Any], None]]] = {
    "login host cut": (lambda lab: lab.cut(LOGIN), lambda lab: lab.heal(LOGIN)),
    "login and controller blocked": (lambda lab: lab.block(LOGIN, CONTROLLER), lambda lab: lab.unblock(LOGIN, CONTROLLER)),
    "controller host pulled": (lambda lab: lab.pull(CONTROLLER), lambda lab: lab.plug(CONTROLLER)),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(FAULTS))
def test_cli_gets_one_line_within_its_connect_timeout(c: NetTestCluster, fault: str) -> None:
    before = job_ids(c)
    cause, heal = FAULTS[fault]
    cause(c.lab)
    try:
        assert not c.lab.reachable(LOGIN, CONTROLLER)
        env = {
            "CRANE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            "CRANE_REPLY_TIMEOUT": str(REPLY_TIMEOUT),
        }
        with ThreadPoolExecutor(len(COMMANDS)) as pool:  # all at once: the bound is per command
            runs = {
                prog: pool.submit(timed, c, argv, **env) for prog, (argv, _) in COMMANDS.items()
            }
            results = {prog: f.result() for prog, f in runs.items()}
    finally:
        heal(c.lab)
    for prog, (elapsed, r) in results.items():
        err = r.stderr.splitlines()
        assert r.returncode == COMMANDS[prog][1], (prog, r)
        assert len(err) == 1 and err[0].startswith(f"{prog}: error: ") and ADDRESS in err[0], (
            prog,
            r.stderr,
        )
        assert "within 2 s" in err[0], (prog, err)
        assert r.stdout == "", (prog, r.stdout)
        assert elapsed < CONNECT_TIMEOUT + MARGIN, (prog, elapsed)
    assert job_ids(c) == before  # nothing was submitted
    wait_for(lambda: c.lab.reachable(LOGIN, CONTROLLER), 30, "login reaching the controller again")
    elapsed, r = timed(c, ["cqueue"], CRANE_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT))
    assert r.returncode == 0, r


# ---------------------------------------------------------------- 1b. the reply is lost


def munged_pid(c: NetTestCluster, host: str) -> int:
    with open(os.path.join(c.lab.munge_dir(host), "munged.pid")) as f:
        return int(f.read().strip())


def cli_connections(c: NetTestCluster) -> dict[str, int]:
    """The login host's established connections to the controller's CLI
    port: local address -> bytes the controller acknowledged."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{c.lab.ns(LOGIN)}", "ss", "-tniH", "state", "established",
                          "dst", f"{c.lab.address(CONTROLLER)}:10012"], capture_output=True, text=True).stdout  # fmt: skip
    found = re.findall(r"(\S+:\d+)\s+\S+:10012.*?bytes_acked:(\d+)", out, re.S)
    return {local: int(acked) for local, acked in found}


def request_delivered(c: NetTestCluster, old: set[str]) -> bool:
    """A new connection of the login host to the controller has had more
    than a handshake acknowledged: the request (with its MUNGE credential)
    is in the controller's hands."""
    return any(acked > 200 for local, acked in cli_connections(c).items() if local not in old)


def with_reply_lost(
    c: NetTestCluster, argv: list[str], user: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``argv`` on the login host so that the controller gets the request
    and applies it, and its answer is lost: the controller host's munged is
    stopped (the controller waits on it to check the credential) until the
    request has arrived; then the controller's route back to the login host
    is a black hole (one way: the connection stays up) while it answers."""
    pid = munged_pid(c, CONTROLLER)
    route = ["ip", "-n", c.lab.ns(CONTROLLER), "route"]
    back = ["blackhole", f"{c.lab.address(LOGIN)}/32"]
    old = set(cli_connections(c))
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        p = subprocess.Popen(c.command(*argv, user=user), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**c.env(), "CRANE_REPLY_TIMEOUT": str(REPLY_TIMEOUT)}, cwd=c.workdir)  # fmt: skip
        try:
            wait_for(lambda: request_delivered(c, old), 30, "the request at the controller")
            subprocess.run([*route, "replace", *back], check=True)
        except BaseException:
            p.kill()
            p.communicate()
            raise
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        out, err = p.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        subprocess.run([*route, "del", *back], check=False)
    return elapsed, subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_a_lost_reply_times_out_and_is_applied_once(c: NetTestCluster) -> None:
    before = job_ids(c)
    wrap = "echo run >> ran_$CRANE_JOB_ID; sleep 300"
    elapsed, r = with_reply_lost(c, ["cbatch", "-w", "crane01", "--wrap", wrap], "alice")
    err = r.stderr.splitlines()
    assert r.returncode == 3 and r.stdout == "", r
    assert len(err) == 1 and err[0].startswith(
        f"cbatch: error: cannot reach the controller at {ADDRESS}: no reply within 4 s"
    )
    assert (
        "the submission was sent and may have been accepted: check cqueue before submitting again"
        in err[0]
    )
    assert elapsed < REPLY_TIMEOUT + MARGIN, elapsed
    new = job_ids(c) - before
    assert len(new) == 1, new  # applied, once: the client did not send it again
    (j,) = new
    job = c.wait_state(j, "RUNNING")
    assert job["user"] == "alice"
    wait_for(lambda: lines(c, f"ran_{j}") == ["run"], 30, "the job's one run")

    # a cancel whose answer is lost: applied; cancelling again is harmless
    elapsed, r = with_reply_lost(c, ["ccancel", str(j)], "alice")
    assert r.returncode == 3 and len(r.stderr.splitlines()) == 1, r
    assert "may have been applied: check cqueue; cancelling again is harmless" in r.stderr
    assert elapsed < REPLY_TIMEOUT + MARGIN, elapsed
    done = c.wait_state(j, "CANCELLED", timeout=60)
    assert done["cancelled_by"] == "alice"
    _, again = timed(c, ["ccancel", str(j)])
    assert again.returncode == 4 and "already finished (CANCELLED)" in again.stdout, (
        again
    )  # said, not applied twice
    assert c.job(j)["state"] == "CANCELLED" and c.job(j)["cancel_time"] == done["cancel_time"]  # type: ignore[index]
    assert lines(c, f"ran_{j}") == ["run"]
    assert job_ids(c) - before == {j}


# ---------------------------------------------------------------- 2. the controller cut off from every agent


def test_cancels_while_the_controller_is_cut_off_from_all_agents(c: NetTestCluster) -> None:
    wrap = "echo run >> ran_$CRANE_JOB_ID; sleep 300"
    a1 = c.submit("-w", "crane01", wrap=wrap, user="alice")
    a2 = c.submit("-w", "crane02", wrap=wrap, user="alice")
    b1 = c.submit("-w", "crane01", wrap=wrap, user="bob")
    b2 = c.submit("-w", "crane02", wrap=wrap, user="bob")
    pids = {j: c.step_pid(j) for j in (a1, a2, b1, b2)}
    before = job_ids(c)
    for node in ("crane01", "crane02"):
        c.lab.block(CONTROLLER, node)
    try:
        assert not c.lab.reachable("crane01", CONTROLLER) and not c.lab.reachable(
            "crane02", CONTROLLER
        )
        assert c.lab.reachable(LOGIN, CONTROLLER)
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            runs = [pool.submit(timed, c, ["ccancel", str(a1)], "alice"),
                    pool.submit(timed, c, ["ccancel", str(b2)], "bob"),
                    pool.submit(timed, c, ["cbatch", "-w", "crane01", "--wrap", wrap], "alice"),
                    pool.submit(timed, c, ["cbatch", "-w", "crane02", "--wrap", wrap], "bob")]  # fmt: skip
            results = [f.result() for f in runs]
        for elapsed, r in results:  # the users get their answers
            assert r.returncode == 0 and elapsed < 30, (elapsed, r)
        assert time.monotonic() - t0 < 30
        # acknowledged, not yet carried out: nothing gets through between the agents and the controller
        # 4 s and more without a frame from either agent (the link is quiet: 2.5 heartbeats)
        for node in ("crane01", "crane02"):
            heartbeats_held_back(c, node, 5)
        assert all(pid_alive(pids[j]) for j in (a1, b2))
        # what is sent to a quiet link waits in the outbox (bounded), not in the socket's queue
        ctl = c.procs["cranectld"].pid
        rss0 = rss_kib(ctl)
        flooded = flood_input(c, a2, 2000)  # 62.5 MiB of stdin for a step on crane02
        rss1 = rss_kib(ctl)
        assert flooded == {"ok": 2000} and rss1 - rss0 < FLOOD_MIB * 1024, (rss0, rss1, flooded)
        for j, who in ((a1, "alice"), (b2, "bob")):
            job = c.job(j)
            assert (
                job is not None and job["state"] == "COMPLETING" and job["cancelled_by"] == who
            ), job
        assert all(s != "DOWN" for s in c.node_states().values())
    finally:
        for node in ("crane01", "crane02"):
            c.lab.unblock(CONTROLLER, node)
    new = job_ids(c) - before
    assert len(new) == 2, new
    for j, who in ((a1, "alice"), (b2, "bob")):
        done = c.wait_state(j, "CANCELLED", timeout=60)
        assert done["cancelled_by"] == who
        wait_for(lambda j=j: not pid_alive(pids[j]), 60, f"job {j}'s processes gone")
    for j in new:
        c.wait_state(j, "RUNNING", timeout=60)
        wait_for(lambda j=j: lines(c, f"ran_{j}") == ["run"], 60, f"job {j}'s one run")
    # nothing else was killed, nothing ran twice, no node went down
    for j in (a2, b1):
        job = c.job(j)
        assert job is not None and job["state"] == "RUNNING" and pid_alive(pids[j]), job
        assert c.step_pid(j) == pids[j]
    for j in (a1, a2, b1, b2, *new):
        assert lines(c, f"ran_{j}") == ["run"], j
    assert all(s != "DOWN" for s in c.node_states().values())


# ---------------------------------------------------------------- 3. the outbox's bound


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def agent_connected(c: NetTestCluster, node: str) -> bool:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{c.lab.ns(CONTROLLER)}", "ss", "-tn", "state", "established",
                          "dst", c.lab.address(node)], capture_output=True, text=True).stdout  # fmt: skip
    return ":10011" in out


def agent_unsent(c: NetTestCluster, node: str) -> int:
    """Bytes ``node``'s agent sent the controller that were not acknowledged."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{c.lab.ns(node)}", "ss", "-tnH", "state", "established",
                          "dst", f"{c.lab.address(CONTROLLER)}:10011"], capture_output=True, text=True).stdout  # fmt: skip
    return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())


def heartbeats_held_back(c: NetTestCluster, node: str, count: int) -> None:
    """Wait until ``count`` more frames of ``node``'s agent (its heartbeats,
    one a second) are held back: sent, not acknowledged."""
    seen = {agent_unsent(c, node)}

    def more() -> bool:
        seen.add(agent_unsent(c, node))
        return len(seen) > count

    wait_for(more, 60, f"{count} heartbeats of {node} held back", interval=0.1)


def flood_input(c: NetTestCluster, job_id: int, count: int) -> dict[str, int]:
    """``count`` chunks of stdin (32 KiB each) for the batch step of ``job_id``,
    as root over the ipc socket, a window at a time; the answers by kind."""
    from crane.client import Client

    client = Client("ipc://" + os.path.join(c.base, "cranectld.sock"), 30.0)
    seen: dict[str, int] = {}
    try:
        chunk = b"y" * m.INPUT_CHUNK
        for start in range(0, count, 100):
            rids = [
                client.send(m.StepInput(job_id, 1, 1_000_000 + i, chunk))
                for i in range(start, min(count, start + 100))
            ]
            for rid in rids:
                reply = client.wait_reply(rid)
                kind = "ok" if isinstance(reply, m.Ok) else "refused"
                seen[kind] = seen.get(kind, 0) + 1
    finally:
        client.close()
    return seen


def test_a_full_outbox_marks_the_node_down_and_memory_stays_bounded(c: NetTestCluster) -> None:
    wrap = "echo run >> ran_$CRANE_JOB_ID; sleep 300"
    keep = c.submit("-w", "crane01", wrap=wrap, user="alice")
    b1 = c.submit("-w", "crane02", wrap=wrap, user="alice")
    b2 = c.submit("-w", "crane02", wrap=wrap, user="bob")
    b3 = c.submit("-w", "crane02", wrap=wrap, user="alice")
    pids = {j: c.step_pid(j) for j in (keep, b1, b2, b3)}
    # crane02's agent dies: the controller's sends to it fail, so they wait in its outbox
    c.stop("craned-crane02", signal.SIGKILL)
    wait_for(lambda: not agent_connected(c, "crane02"), 30, "crane02's agent disconnected")
    _, r = timed(c, ["ccancel", str(b2)], "bob")
    assert r.returncode == 0, r
    assert pid_alive(pids[b2])  # acknowledged: its kill waits in the outbox
    ctl = c.procs["cranectld"].pid
    rss0 = rss_kib(ctl)
    # 62.5 MiB of stdin for two steps whose agent is away: 1 MiB each is held (32 chunks), the
    # rest dropped; with the kill of b2 that is more than MaxNodeOutbox messages
    first = flood_input(c, b1, 1000)
    assert first == {"ok": 1000}, first
    seen = flood_input(c, b3, 1000)
    rss1 = rss_kib(ctl)
    assert rss1 - rss0 < FLOOD_MIB * 1024, (rss0, rss1, seen)
    nodes = {n["name"]: n for n in admin(c, m.QueryNodes())["nodes"]}
    assert nodes["crane02"]["state"] == "DOWN", nodes
    assert nodes["crane02"]["reason"] == f"{OUTBOX_FULL} ({OUTBOX_LIMIT} messages)", nodes  # cinfo shows why
    with open(os.path.join(c.base, "log", "cranectld.log")) as f:
        assert f"node crane02 is DOWN: {OUTBOX_FULL} ({OUTBOX_LIMIT} messages)" in f.read()
    assert nodes["crane01"]["state"] != "DOWN"
    assert seen.get("refused", 0) > 0, seen  # once the node is down its step no longer runs
    # the node's jobs ended: the cancelled one as cancelled, the others as on a node failure
    assert c.wait_state(b2, "CANCELLED")["cancelled_by"] == "bob"
    for j in (b1, b3):
        failed = c.wait_state(j, "FAILED")
        assert "crane02" in failed["reason"], failed
    assert all(pid_alive(pids[j]) for j in (b1, b2, b3))  # the agent is still away
    # the agent comes back: what it still runs is unknown to the controller and killed
    c.start_agent("crane02")
    c.wait_nodes_up(60)
    for j in (b1, b2, b3):
        wait_for(lambda j=j: not pid_alive(pids[j]), 60, f"job {j}'s processes gone")
    job = c.job(keep)
    assert job is not None and job["state"] == "RUNNING" and pid_alive(pids[keep]), job
    for j in (keep, b1, b2, b3):
        assert lines(c, f"ran_{j}") == ["run"], j
    assert {j["job_id"] for j in json.loads(c.ok("cqueue", "--json", user="alice"))} == {keep}
