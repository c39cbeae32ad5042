"""Issue 12, the agent and the job's environment (a user's first day):

- item 3: after a controller restart each agent registers once, not hundreds
  of times;
- item 6: a launch failure (an output file that cannot be opened) carries its
  reason to the job: cqueue/cacct --json and ccontrol show job;
- item 14: the job's environment (CRANE_JOB_NODELIST compressed, CRANE_NNODES,
  CRANE_NTASKS, CRANE_CPUS_PER_TASK, CRANE_MEM_PER_NODE, CRANE_SUBMIT_DIR,
  CRANE_RESTART_COUNT), and nothing of the agent's own (CRANE_RC_FILE,
  CRANE_SCOPE);
- item 15: output patterns %j %x %u %N %A %a %% expanded.

Real clusters, real users, real files; every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Cluster, wait_for


@pytest.fixture
def c(cluster: Cluster) -> Iterator[Cluster]:
    """The module cluster, with whatever a test leaves behind cancelled."""
    yield cluster
    left = [str(j) for j in cluster.jobs()]
    if left:
        cluster.run("ccancel", "--force", ",".join(left))


def read_env(path: str) -> dict[str, str]:
    """``env -0`` output written by a job: NAME=VALUE records."""
    with open(path, "rb") as f:
        records = f.read().split(b"\0")
    out = {}
    for rec in records:
        name, sep, value = rec.decode(errors="replace").partition("=")
        if sep:
            out[name] = value
    return out


def file_with(path: str, text: str = "") -> Callable[[], bool]:
    def check() -> bool:
        try:
            with open(path) as f:
                return text in f.read()
        except OSError:
            return False

    return check


def count_in(path: str, text: str) -> int:
    with open(path, errors="replace") as f:
        return f.read().count(text)


# ---------------------------------------------------------------- item 3


def test_controller_restart_registers_each_agent_once(make_cluster: Callable[..., Cluster]) -> None:
    """Before: each agent registered once for every frame it had queued while
    the controller was away (heartbeats, step ends: each drew a "register
    again", and each of those a Register), ~250 times within a second in the
    trial. Jobs run across the restart and others end while it is down."""
    c = make_cluster(nodes=4, cpus=8)
    nodes = c.node_names()
    part = {n: "CPU" if n in ("crane01", "crane02") else "GPU" for n in nodes}
    ending = 5  # jobs per node that end while the controller is down
    stay = [c.submit("-p", part[n], "-w", n, wrap="sleep 300") for n in nodes]
    flag = c.file("go")
    end = [c.submit("-p", part[n], "-w", n, "-o", c.file(f"end-{n}-{k}.out"),
                    wrap=f"while [ ! -e {flag} ]; do sleep 0.1; done; echo done")
           for n in nodes for k in range(ending)]  # fmt: skip
    for j in stay + end:
        c.step_pid(j)  # running before the restart
    log_path = os.path.join(c.base, "log", "cranectld.log")
    ctld = c.procs["cranectld"]
    ctld.send_signal(signal.SIGKILL)
    ctld.wait()
    offset = os.path.getsize(log_path)
    try:
        with open(flag, "w"):
            pass  # the ending jobs end now, while the controller is down
        for n in nodes:
            for k in range(ending):
                wait_for(file_with(c.file(f"end-{n}-{k}.out"), "done"), 30, f"job {n}-{k} to end")
        agent_logs = [os.path.join(c.base, "log", f"craned-{n}.log") for n in nodes]
        wait_for(lambda: all(count_in(p, "ended (normal)") >= ending for p in agent_logs), 30, "step ends")
        c.start_controller()
        c.wait_nodes_up(timeout=60)
        for j in end:
            c.wait_state(j, "COMPLETED", timeout=60)
        # more traffic both ways after the restart: a job on every node, run to its end
        for j in [c.submit("-p", part[n], "-w", n, wrap="echo ok") for n in nodes]:
            c.wait_state(j, "COMPLETED", timeout=60)
        for j in stay:
            assert c.state(j) == "RUNNING"
        c.ok("ccancel", ",".join(map(str, stay)))
        for j in stay:
            c.wait_state(j, "CANCELLED", timeout=60)
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            after = f.read()
        for n in nodes:
            count = len(re.findall(rf"node {n} registered\b", after))
            assert 1 <= count <= 3, f"{n} registered {count} times after the restart"
    finally:
        for name in os.listdir(c.workdir):
            if name == "go" or name.startswith("end-"):
                os.unlink(c.file(name))


# ---------------------------------------------------------------- item 6


def test_launch_failure_reason_reaches_the_user(c: Cluster, users: dict[str, int]) -> None:
    """Before: FAILED 127:0 with reason None everywhere; the cause only in the agent's log."""
    jid = c.submit("-o", "/nonexistent-dir/x.out", user="alice", wrap="echo never")
    j = c.wait_state(jid, "FAILED", timeout=30)
    want = "Launch failed: cannot open output file /nonexistent-dir/x.out: No such file or directory"
    assert j["reason"] == want, j
    hist = json.loads(c.ok("cacct", "--json", "-j", str(jid), user="alice"))
    assert [h["reason"] for h in hist if h["job_id"] == jid] == [want]
    assert f"Reason={want}" in c.ok("ccontrol", "show", "job", str(jid), user="alice")
    assert "\n" not in j["reason"] and len(j["reason"]) < 300


def test_launch_failure_reason_is_one_bounded_line(c: Cluster, users: dict[str, int]) -> None:
    """A long path: the reason stays one line of at most ~200 characters."""
    deep = "/nonexistent-dir/" + "d" * 240 + "/x.out"
    jid = c.submit("-o", deep, user="alice", wrap="true")
    j = c.wait_state(jid, "FAILED", timeout=30)
    assert j["reason"].startswith("Launch failed: cannot open output file /nonexistent-dir/dd")
    assert len(j["reason"]) <= len("Launch failed: ") + 200 and j["reason"].isprintable()


def test_output_file_of_another_user_is_not_opened(c: Cluster, users: dict[str, int]) -> None:
    """The file is still opened as the job's owner: bob cannot write to
    alice's private directory, and his job says why."""
    private = c.file("alice-private")
    os.makedirs(private, exist_ok=True)
    try:
        os.chown(private, users["alice"], -1)
        os.chmod(private, 0o700)
        jid = c.submit("-o", os.path.join(private, "%x.out"), "-J", "peek", user="bob", wrap="echo hi")
        j = c.wait_state(jid, "FAILED", timeout=30)
        assert j["reason"] == f"Launch failed: cannot open output file {private}/peek.out: Permission denied"
        assert not os.path.exists(os.path.join(private, "peek.out"))
    finally:
        for name in os.listdir(private):
            os.unlink(os.path.join(private, name))
        os.rmdir(private)


# ---------------------------------------------------------------- item 14


def test_job_environment(c: Cluster, users: dict[str, int]) -> None:
    """Before: CRANE_JOB_NODELIST=crane01,crane02, no CRANE_NNODES/NTASKS/
    CPUS_PER_TASK/MEM_PER_NODE/SUBMIT_DIR/RESTART_COUNT, and the agent's
    CRANE_RC_FILE and CRANE_SCOPE in every job's environment."""
    out = c.file("env-%j.bin")
    jid = c.submit("-N", "2", "-w", "crane[01-02]", "-c", "2", "--mem", "300M", "-o", out, user="alice",
                   wrap="env -0; crun env -0 > $CRANE_SUBMIT_DIR/env-$CRANE_JOB_ID.step")  # fmt: skip
    c.wait_state(jid, "COMPLETED", timeout=60)
    env = read_env(c.file(f"env-{jid}.bin"))
    assert env["CRANE_JOB_NODELIST"] == "crane[01-02]"
    assert env["CRANE_NNODES"] == "2" and env["CRANE_NTASKS"] == "2"
    assert env["CRANE_CPUS_PER_TASK"] == "2"
    assert env["CRANE_MEM_PER_NODE"] == "300"
    assert env["CRANE_SUBMIT_DIR"] == c.workdir
    assert env["CRANE_RESTART_COUNT"] == "0"
    assert env["CRANE_JOB_ID"] == str(jid) and env["CRANE_STEP_ID"] == "1"
    internal = {k for k in env if k in ("CRANE_RC_FILE", "CRANE_SCOPE") or k.startswith("__crane")}
    assert not internal, internal
    step = read_env(c.file(f"env-{jid}.step"))
    assert step["CRANE_STEP_ID"] == "2" and step["CRANE_JOB_NODELIST"] == "crane[01-02]"
    assert not {"CRANE_RC_FILE", "CRANE_SCOPE"} & set(step)
    for name in (f"env-{jid}.bin", f"env-{jid}.step"):
        os.unlink(c.file(name))


def test_restart_count_after_requeue(c: Cluster, users: dict[str, int]) -> None:
    out = c.file("restart-%j-%%.txt")
    jid = c.submit("-o", out, user="alice", wrap="echo restart=$CRANE_RESTART_COUNT; sleep 300")
    path = c.file(f"restart-{jid}-%.txt")
    wait_for(file_with(path, "restart=0"), 30, "first run's output")
    c.ok("ccontrol", "requeue", str(jid))
    wait_for(file_with(path, "restart=1"), 60, "second run's output")
    c.ok("ccancel", str(jid))
    c.wait_state(jid, "CANCELLED", timeout=30)
    os.unlink(path)


# ---------------------------------------------------------------- item 15


def test_output_patterns(c: Cluster, users: dict[str, int]) -> None:
    """Before: only %j was expanded (the file was literally `%x-42-%u-...`)."""
    jid = c.submit("-J", "train", "-w", "crane02", "-o", "pat-%x-%j-%u-%N-%A-%a-%%-%5j.out", user="alice",
                   wrap="echo hello")  # fmt: skip
    c.wait_state(jid, "COMPLETED", timeout=30)
    name = f"pat-train-{jid}-alice-crane02-{jid}-4294967294-%-{jid:05d}.out"
    wait_for(file_with(c.file(name), "hello"), 30, name)
    assert os.stat(c.file(name)).st_uid == users["alice"]  # opened as the owner
    # what the user is shown: everything known at submission expanded, %N at launch
    shown = c.ok("ccontrol", "show", "job", str(jid), user="alice")
    assert f"StdOut={c.workdir}/pat-train-{jid}-alice-%N-{jid}-4294967294-%%-{jid:05d}.out" in shown
    os.unlink(c.file(name))


def test_job_name_cannot_move_the_output(c: Cluster, users: dict[str, int]) -> None:
    """A job name with / or .. in it: each / becomes _ and a name of dots
    only becomes as many _, so %x never leaves the pattern's directory."""
    sub = c.file("names")
    os.makedirs(sub, exist_ok=True)
    os.chmod(sub, 0o1777)
    try:
        a = c.submit("-J", "../../escape", "-o", f"{sub}/%x.out", user="alice", wrap="echo a")
        b = c.submit("-J", "..", "-o", f"{sub}/%x/out", "-e", f"{sub}/%x.err", user="alice", wrap="echo b")
        c.wait_state(a, "COMPLETED", timeout=30)
        wait_for(file_with(os.path.join(sub, ".._.._escape.out"), "a"), 30, "a's output")
        j = c.wait_state(b, "FAILED", timeout=30)  # {sub}/__/ does not exist: refused, not {sub}/../out
        assert j["reason"] == f"Launch failed: cannot open output file {sub}/__/out: No such file or directory"
        assert not os.path.exists(os.path.join(c.workdir, "out"))
        assert not os.path.exists(os.path.join(os.path.dirname(c.workdir), "escape.out"))
    finally:
        for name in os.listdir(sub):
            os.unlink(os.path.join(sub, name))
        os.rmdir(sub)
