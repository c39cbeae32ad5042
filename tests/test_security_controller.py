"""Security of the controller (issue 10, classes 1, 2, 4, 6, 7 and 8 on the
controller's side), attacked as real Unix users against real daemons.

Requests are hand-made where a CLI would sanitize first: a small Python
program run as the user (``send_as``) builds the message and sends it on the
CLI socket through ``crane.cli.common.call``, so only the controller stands
between it and the cluster. Each test says what it attacked; every attack
succeeded on the code before the fix.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from crane.cacctmgr_parse import parse_argv
from crane.cli.common import call, load_config
from crane.config import load
from crane.core import messages as m
from tests.conftest import Cluster, open_ancestors, wait_for

SEND = r"""
import json, sys
from crane.core import messages as m
from crane.cli.common import CliError, call, load_config
cfg = load_config(None)
out = []
for t, body in json.loads(sys.argv[1]):
    try:
        out.append({"ok": call(cfg, getattr(m, t)(**body))})
    except CliError as e:
        out.append({"code": e.code, "error": str(e)})
print(json.dumps(out))
"""


def send_as(c: Cluster, user: str | None, *reqs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Send hand-made requests as ``user`` (None: root); each answer is
    {"ok": data} or {"code": exit code, "error": text}."""
    r = c.run("python", "-c", SEND, json.dumps(reqs), user=user)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def acct(c: Cluster, *argv: str) -> None:
    call(load_config(c.config_path), m.AcctOp(parse_argv(list(argv))))


def jobs_of(c: Cluster, user: str) -> list[int]:
    return sorted(j["job_id"] for j in c.jobs().values() if j["user"] == user)


def force_cancel(c: Cluster, *jids: int) -> None:
    live = [j for j in jids if c.state(j) in ("PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING")]
    if live:
        call(load_config(c.config_path), m.Cancel(ids=[[j, None] for j in live], force=True))
        call(load_config(c.config_path), m.WaitJobs(live), timeout=60)


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture
def opened(cluster: Cluster, users: dict[str, int]) -> Cluster:
    """The module cluster, reachable by the test users (another pytest
    session may have reset pytest's temp root to 0700 meanwhile)."""
    open_ancestors(cluster.base)
    return cluster


# --------------------------------------------------------------------------- class 2


def test_coordinators_and_operators_cannot_run_code_in_a_members_job(opened: Cluster) -> None:
    c = opened
    acct(c, "add", "account", "secpku")
    acct(c, "add", "user", "alice", "Account=secpku")
    acct(c, "add", "user", "carol", "Account=secpku", "Coordinator=true")
    acct(c, "add", "user", "oscar", "Account=default", "Level=operator")
    jid = c.submit("-A", "secpku", wrap="sleep 300", user="alice")
    try:
        c.wait_state(jid, "RUNNING")
        # attack: carol coordinates alice's account; `crun --jobid` ran her command as alice
        r = c.run("crun", "--jobid", str(jid), "/bin/sh", "-c", "id -un > rt-stolen", user="carol")
        assert r.returncode == 4 and "Permission denied" in r.stderr, r
        # the same as a hand-made StartStep, by the coordinator and by an operator
        start = ("StartStep", {"job_id": jid, "argv": ["/bin/sh", "-c", "cat ~/.ssh/id_rsa"], "cwd": "/tmp"})
        for who in ("carol", "oscar"):
            assert send_as(c, who, start) == [{"code": 4, "error": "Permission denied"}], who
        assert [s["step_id"] for s in c.job(jid)["steps"]] == [1]  # type: ignore[index]
        # the owner still runs steps; the coordinator still cancels
        c.ok("crun", "--jobid", str(jid), "true", user="alice")
        c.ok("ccancel", str(jid), user="carol")
        assert c.wait_state(jid, "CANCELLED")["cancelled_by"] == "carol"
    finally:
        force_cancel(c, jid)


# --------------------------------------------------------------------------- classes 1 and 6


def test_control_characters_and_relative_paths_are_refused_at_the_controller(opened: Cluster) -> None:
    c = opened
    before = jobs_of(c, "alice")
    good = {"argv": ["/bin/true"], "cwd": c.workdir, "stdout": "/dev/null", "hold": True}
    # attack: names, paths and messages with escape sequences and newlines were
    # stored as sent and printed raw to other users (cqueue, cacct) or written
    # into files; a relative path resolved against the agent's directory
    cases = [
        ({"name": "x\x1b]52;c;cHduZWQ=\x07"}, "job name contains a control character"),
        ({"name": "two\nlines"}, "job name contains a control character"),
        ({"name": "c1\x9b2J"}, "job name contains a control character"),
        ({"stdout": c.file("out\n.txt")}, "output path contains a control character"),
        ({"stderr": "relative.err"}, "error path must be an absolute path"),
        ({"cwd": "work"}, "working directory must be an absolute path"),
        ({"account": "default\x1b[2J"}, "account contains a control character"),
        ({"env": {"A\x1b": "1"}}, "environment variable name"),
    ]
    answers = send_as(c, "alice", *[("SubmitJob", {"spec": {**good, **extra}}) for extra, _ in cases])
    for (extra, want), got in zip(cases, answers, strict=True):
        assert got.get("code") == 2 and want in got.get("error", ""), (extra, got)
    assert jobs_of(c, "alice") == before  # a refused request changes nothing

    jid = c.submit("-H", wrap="true", user="alice")
    try:
        msg = "bye\nroot2::0:0::/root:/bin/bash"  # the line the banner would have appended
        got = send_as(c, "alice", ("Cancel", {"ids": [[jid, None]], "message": msg}),
                      ("Cancel", {"ids": [[jid, None]], "message": "\x1b[2J"}))  # fmt: skip
        assert got == [{"code": 2, "error": "message contains a control character"}] * 2
        assert c.state(jid) == "PENDING"
        # a node's drain reason is shown to everyone by cinfo
        got = send_as(c, None, ("Control", {"action": "update_node",
                                            "args": {"node": "crane04", "state": "DRAIN", "reason": "x\x1b[31m"}}))  # fmt: skip
        assert got == [{"code": 2, "error": "reason contains a control character"}]
        assert "DRAIN" not in c.ok("cinfo", "-N", "--noheader", "-n", "crane04")
    finally:
        force_cancel(c, jid)


# --------------------------------------------------------------------------- class 7: waiters

WAITS = r"""
import json, sys, time, zmq
from crane.core import messages as m
from crane.config import load
cfg = load(None)
job, n = int(sys.argv[1]), getattr(cfg, "max_waits_per_user", 64)
ctx = zmq.Context.instance()

def sock():
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(cfg.cli_address)
    return s

def waited(s, rid):
    # WaitJobs, then QueryNodes on the same connection (handled in order): the
    # wait was accepted if no answer to it came before the QueryNodes reply
    s.send(m.encode(m.WaitJobs([job]), rid))
    s.send(m.encode(m.QueryNodes(), rid + 1))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not s.poll(1000):
            continue
        msg, got = m.decode(s.recv())  # liveness probes (other request ids) are skipped
        if got == rid:
            return msg.message if isinstance(msg, m.Error) else "answered"
        if got == rid + 1:
            return "waiting"
    return "no reply"

held = [sock() for _ in range(n)]
first = [waited(s, 2 * i + 2) for i, s in enumerate(held)]
over = waited(sock(), 1000)
for s in held:
    s.close(linger=0)
freed = "no reply"
deadline = time.monotonic() + 30
while time.monotonic() < deadline:  # the closed connections' waiters are dropped
    freed = waited(sock(), 2000)
    if freed == "waiting":
        break
    time.sleep(0.2)
print(json.dumps({"n": n, "first": sorted(set(first)), "over": over, "freed": freed}))
"""


def test_waiters_are_bounded_per_user_visible_only_and_freed(opened: Cluster) -> None:
    c = opened
    jid = c.submit("-H", wrap="true", user="alice")  # a held job never ends
    try:
        # attack: waiters were never dropped, so one user's WaitJobs on a held
        # job grew the controller's memory without bound
        r = c.run("python", "-c", WAITS, str(jid), user="alice", timeout=120)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["first"] == ["waiting"], res
        assert "MaxWaitsPerUser" in res["over"], res
        assert res["freed"] == "waiting", res  # the slots of closed connections came back
        # attack: bob placed waiters on alice's jobs
        got = send_as(c, "bob", ("WaitJobs", {"job_ids": [jid]}))
        assert got == [{"code": 4, "error": f"Job {jid}: Permission denied"}]
    finally:
        force_cancel(c, jid)


# --------------------------------------------------------------------------- class 7: job counts


def test_job_count_limits_refuse_whole_requests(make_cluster: Callable[..., Cluster], users: dict[str, int]) -> None:
    c = make_cluster(nodes=1, cpus=2, MaxJobCount=6, MaxSubmitJobsPerUser=3)
    open_ancestors(c.base)

    def cbatch(n: int, user: str | None) -> subprocess.CompletedProcess[str]:
        return c.run("cbatch", "-H", "--repeat", str(n), "--wrap", "true", user=user)

    assert cbatch(2, "alice").returncode == 0
    # attack: one request could queue any number of jobs (1,000,000), with no total
    r = cbatch(2, "alice")
    assert r.returncode == 2 and "MaxSubmitJobsPerUser reached" in r.stderr and "(3)" not in r.stderr, r.stderr
    assert len(jobs_of(c, "alice")) == 2  # nothing of the refused request was queued
    r = cbatch(5, None)  # root is exempt from the per-user cap, not from the cluster's
    assert r.returncode == 2 and "MaxJobCount reached" in r.stderr, r.stderr
    assert len(c.jobs()) == 2
    assert cbatch(4, None).returncode == 0
    r = cbatch(1, "alice")
    assert r.returncode == 2 and "MaxJobCount reached" in r.stderr, r.stderr
    # an ended job frees its place
    c.ok("ccancel", str(jobs_of(c, "alice")[0]), user="alice")
    wait_for(lambda: len(c.jobs()) == 5, 30, "the cancelled job to leave the queue")
    assert cbatch(1, "alice").returncode == 0
    got = send_as(c, "alice", ("SubmitJob", {"spec": {"argv": ["/bin/true"], "cwd": "/tmp"}, "repeat": 10**6}))
    assert got[0]["code"] == 2 and "--repeat must be between 1 and" in got[0]["error"]


# --------------------------------------------------------------------------- class 8 (+ class 4 at restart)


def test_admin_hold_is_not_released_by_the_owner_and_survives_a_restart(
    make_cluster: Callable[..., Cluster], users: dict[str, int]
) -> None:
    c = make_cluster(nodes=1, cpus=2)
    open_ancestors(c.base)
    acct(c, "add", "user", "oscar", "Account=default", "Level=operator")
    jid = c.submit("-H", wrap="true", user="alice")
    assert c.job(jid)["reason"] == "JobHeldUser"  # type: ignore[index]
    c.ok("ccontrol", "hold", str(jid))  # root on alice's job: an admin hold
    assert c.job(jid)["reason"] == "JobHeldAdmin"  # type: ignore[index]
    # attack: the owner released the hold an admin had put on her job
    r = c.run("ccontrol", "release", str(jid), user="alice")
    assert r.returncode == 4 and "Permission denied" in r.stderr, r
    c.ok("ccontrol", "hold", str(jid), user="alice")  # her own hold does not lower it
    assert c.job(jid)["reason"] == "JobHeldAdmin"  # type: ignore[index]

    # a database left readable by an older version is made private at start
    db = load(c.config_path).db_file
    c.procs["cranectld"].send_signal(signal.SIGKILL)
    c.procs["cranectld"].wait()
    for p in (db, db + "-wal"):
        if os.path.exists(p):
            os.chmod(p, 0o644)
    c.start_controller()
    c.wait_nodes_up()
    for p in (db, db + "-wal", db + "-shm"):
        if os.path.exists(p):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p

    j = c.job(jid)
    assert j is not None and j["held"] and j["reason"] == "JobHeldAdmin"
    r = c.run("ccontrol", "release", str(jid), user="alice")
    assert r.returncode == 4 and "Permission denied" in r.stderr, r
    c.ok("ccontrol", "release", str(jid), user="oscar")  # an operator may
    assert not c.job(jid)["held"]  # type: ignore[index]
    c.wait_state(jid, "COMPLETED", timeout=60)


# --------------------------------------------------------------------------- class 4


def test_database_and_state_are_not_readable_by_other_users(opened: Cluster) -> None:
    c = opened
    jid = c.submit("-H", wrap="echo rt-SECRET-5f3a", user="bob")  # bob's script is in the database
    try:
        cfg = load(c.config_path)
        db = cfg.db_file
        wait_for(lambda: os.path.exists(db + "-wal"), 30, "the database's WAL")
        for p in (db, db + "-wal", db + "-shm"):
            if os.path.exists(p):
                assert stat.S_IMODE(os.stat(p).st_mode) & 0o077 == 0, p
        assert stat.S_IMODE(os.stat(os.path.dirname(db)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(cfg.base_dir).st_mode) == 0o711
        sock = cfg.cli_ipc_address[len("ipc://"):]
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
        # attack: alice read bob's script and environment out of the database
        for p in (db, db + "-wal"):
            r = as_user("alice", "cat", p)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (p, r)
        r = as_user("alice", "grep", "-rl", "rt-SECRET-5f3a", cfg.base_dir)
        assert "rt-SECRET" not in r.stdout and r.returncode != 0, r
        # ... while the CLI socket still serves her
        assert str(jid) in c.ok("cqueue", user="alice")
    finally:
        force_cancel(c, jid)


def test_a_coordinator_does_not_release_an_operators_hold(
    make_cluster: Callable[..., Cluster], users: dict[str, int]
) -> None:
    """Attack (red team): a coordinator of the job's account released the hold
    root had put on a member's job; holds now carry the holder's rank."""
    c = make_cluster(nodes=1, cpus=2)
    open_ancestors(c.base)
    acct(c, "add", "account", "rthold")
    acct(c, "add", "user", "alice", "Account=rthold")
    acct(c, "add", "user", "carol", "Account=rthold", "Coordinator=true")
    held_by_root = c.submit("-H", "-A", "rthold", wrap="true", user="alice")
    c.ok("ccontrol", "hold", str(held_by_root))  # root: an admin hold
    r = c.run("ccontrol", "release", str(held_by_root), user="carol")
    assert r.returncode == 4 and "Permission denied" in r.stderr, r
    c.ok("ccontrol", "hold", str(held_by_root), user="carol")  # her hold does not lower root's
    r = c.run("ccontrol", "release", str(held_by_root), user="carol")
    assert r.returncode == 4 and "Permission denied" in r.stderr, r
    assert c.job(held_by_root)["reason"] == "JobHeldAdmin"  # type: ignore[index]
    # a coordinator's own hold on a member's job: she may release it, the owner may not
    held_by_carol = c.submit("-H", "-A", "rthold", wrap="true", user="alice")
    c.ok("ccontrol", "hold", str(held_by_carol), user="carol")
    assert c.job(held_by_carol)["reason"] == "JobHeldAdmin"  # type: ignore[index]
    r = c.run("ccontrol", "release", str(held_by_carol), user="alice")
    assert r.returncode == 4 and "Permission denied" in r.stderr, r
    c.ok("ccontrol", "release", str(held_by_carol), user="carol")
    c.ok("ccontrol", "release", str(held_by_root))
    c.wait_state(held_by_carol, "COMPLETED", timeout=60)
    c.wait_state(held_by_root, "COMPLETED", timeout=60)



def test_a_node_named_twice_is_refused(opened: Cluster) -> None:
    """Attack (red team): nodelist ["crane01", "crane01"] took the node's CPUs
    and GPUs twice and gave them back once; the job stayed COMPLETING forever."""
    c = opened
    spec = {"argv": ["/bin/true"], "cwd": "/tmp", "nodelist": ["crane01", "crane01"]}
    got = send_as(c, "alice", ("SubmitJob", {"spec": spec}))
    assert got == [{"code": 2, "error": "the node list names a node more than once"}], got
    got = send_as(c, "alice", ("SubmitJob", {"spec": {**spec, "nodelist": [["crane01"]]}}))
    assert got[0]["code"] == 2 and "node name" in got[0]["error"], got
