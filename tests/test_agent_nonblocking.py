"""The node agent never blocks on a job's cleanup or kill (issue 16).

Real processes in real cgroups (as root): a step's end is reported while
its cgroup still exists (the cleanup comes after the report); a cleanup the
kernel refuses (a process left in the step's cgroup of another hierarchy,
or a mount on a child cgroup) is retried until it succeeds, while the agent
goes on killing, reporting and launching other jobs with its event loop
free; a kill that takes long (mode 'none': sweeps over every process) runs
beside the event loop. Then the same through real daemons (``make_cluster``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crane.agent import cgroup as cgmod
from crane.agent import reclaim
from crane.agent.launcher import set_child_subreaper
from crane.agent.steps import StepManager
from crane.core import messages as m
from crane.core.states import KillReason, StepEnd
from tests.conftest import wait_for

IS_ROOT = os.geteuid() == 0
MODE = cgmod.detect_mode() if IS_ROOT else "none"
needs_cgroups = pytest.mark.skipif(MODE == "none", reason="needs root and writable cgroups")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
DEADLINE = 60.0
STALL_BOUND = 1.0  # the loop's longest stall allowed while another job's cleanup fails (s)

set_child_subreaper()  # the steps' orphans are ours to reap


@dataclass
class Node:
    scope: str
    state: Path
    work: Path
    mode: str
    sent: list[m.Message] = field(default_factory=list)
    on_send: list[Callable[[m.Message], None]] = field(default_factory=list)

    def send(self, msg: m.Message) -> None:
        for f in self.on_send:
            f(msg)
        self.sent.append(msg)

    def manager(self) -> StepManager:
        return StepManager("n1", self.scope, str(self.state), self.mode, self.send)

    def of(self, kind: type[Any], job_id: int | None = None) -> list[Any]:
        return [
            x for x in self.sent if isinstance(x, kind) and (job_id is None or x.job_id == job_id)
        ]

    def spec(self, **kw: Any) -> dict[str, Any]:
        return {"uid": 0, "gid": 0, "user": "root", "cwd": str(self.work), "env": {"PATH": "/usr/bin:/bin"},
                "stdout": str(self.work / "out"), "stderr": str(self.work / "err"), **kw}  # fmt: skip


def _node(mode: str) -> Iterator[Node]:
    base = Path(tempfile.mkdtemp(prefix="crane-nb-", dir="/tmp"))
    base.chmod(0o711)
    work = Path(tempfile.mkdtemp(prefix="crane-nb-work-", dir="/tmp"))
    work.chmod(0o777)
    top = f"crane-test/{uuid.uuid4().hex[:12]}"
    n = Node(f"{top}/n1", base / "n1", work, mode)
    try:
        yield n
    finally:
        for job_id, step_id in cgmod.existing_steps(n.scope, mode):  # a failed test's leftovers
            cg = cgmod.StepCgroup(n.scope, job_id, step_id, mode)
            cg.kill()
            cgmod.remove_job(n.scope, job_id, mode)
        for root in cgmod.hierarchy_roots(mode) if mode != "none" else []:
            for path in (os.path.join(root, n.scope), os.path.join(root, top)):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def node() -> Iterator[Node]:
    yield from _node(MODE)


@pytest.fixture
def none_node() -> Iterator[Node]:
    yield from _node("none")


def run(node: Node, body: Callable[[StepManager], Awaitable[None]]) -> None:
    async def main() -> None:
        sm = node.manager()
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, sm.reap)
        try:
            await body(sm)
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    asyncio.run(main())


async def until(cond: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Ticker:
    """The event loop's longest stall while it runs (a 10 ms heartbeat of our own)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.worst = max(self.worst, now - last - 0.01)
            last = now

    def __enter__(self) -> Ticker:
        self.task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


class Pin:
    """Keeps a step's cgroup from being removed, for real: a process of ours
    in the step's directory of a hierarchy the agent does not kill through
    (hybrid, v1: memory, pids, devices), or else (pure v2) a mount on a
    child cgroup of the step's directory."""

    def __init__(self, cg: cgmod.StepCgroup) -> None:
        self.cg = cg
        self.proc: subprocess.Popen[bytes] | None = None
        self.mount = ""
        others = [p for p in cg.paths.values() if p != cg.path]
        if others:
            self.proc = subprocess.Popen(["sleep", "600"])
            with open(os.path.join(others[0], "cgroup.procs"), "w") as f:
                f.write(str(self.proc.pid))
            self.where = others[0]
        else:
            assert cg.path
            self.mount = os.path.join(cg.path, "pin")
            os.mkdir(self.mount)
            subprocess.run(["mount", "-t", "tmpfs", "crane-test-pin", self.mount], check=True)
            self.where = self.mount

    def release(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.mount:
            subprocess.run(["umount", "-l", self.mount], check=False)
            self.mount = ""


# ---------------------------------------------------------------- the report comes first


@needs_cgroups
def test_end_reported_before_the_cgroup_is_removed(node: Node) -> None:
    """At the moment StepEnded is sent, the step's processes are dead and its
    cgroup and state files are still there; they are removed right after."""
    seen: dict[str, Any] = {}

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(11, 1, node.spec(argv=["sleep", "300"])))
        run = sm.steps[(11, 1)]
        await until(lambda: len(run.cg.pids()) >= 2, "the step in its cgroup")
        pids = run.cg.pids()

        def on_send(msg: m.Message) -> None:
            if isinstance(msg, m.StepEnded) and msg.job_id == 11:
                seen["alive"] = [p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)]
                seen["dirs"] = [p for p in run.cg.paths.values() if os.path.isdir(p)]
                seen["record"] = os.path.exists(node.state / "steps" / "11.1.json")

        node.on_send.append(on_send)
        await sm.kill_job(m.KillJob(11, None, 0.0, False, KillReason.CANCELLED))
        [ended] = node.of(m.StepEnded)
        assert (ended.reason, ended.signal) == (StepEnd.CANCELLED, 9)
        assert seen["alive"] == []  # dead before the report
        assert seen["dirs"] == list(run.cg.paths.values()) and seen["record"]  # cleanup after it
        await until(
            lambda: not any(os.path.isdir(p) for p in run.cg.paths.values()), "the cgroup removed"
        )
        assert cgmod.existing_steps(node.scope, node.mode) == []
        assert (
            sorted(os.listdir(node.state / "steps")) == []
            and sorted(os.listdir(node.state / "rc")) == []
        )

    run(node, body)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# ---------------------------------------------------------------- a cleanup the kernel refuses


@needs_cgroups
def test_refused_cleanup_is_retried_and_blocks_nothing(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """Job 21's cgroup cannot be removed (pinned). Its end and release are
    reported all the same; meanwhile job 22 is killed and reported, job 23
    launched, and the event loop never stalls; the failure is logged, and
    once the pin is gone the directories are removed by a later retry."""
    pin: Pin | None = None

    async def body(sm: StepManager) -> None:
        nonlocal pin
        for j in (21, 22):
            sm.launch(m.LaunchStep(j, 1, node.spec(argv=["sleep", "300"])))
        a, b = sm.steps[(21, 1)], sm.steps[(22, 1)]
        await until(lambda: len(a.cg.pids()) >= 2 and len(b.cg.pids()) >= 2, "both steps running")
        pin = Pin(a.cg)
        with Ticker() as tick:
            await asyncio.wait_for(
                sm.kill_job(m.KillJob(21, None, 0.0, False, KillReason.CANCELLED)), DEADLINE
            )
            assert [e.reason for e in node.of(m.StepEnded, 21)] == [StepEnd.CANCELLED]
            assert [r.kill_failed for r in node.of(m.JobReleased, 21)] == [False]
            assert os.path.isdir(pin.where)
            assert any("job 21" in p or "step 21.1" in p for p in sm.reclaim.pending())
            # the agent goes on: another job's kill, a launch
            await asyncio.wait_for(
                sm.kill_job(m.KillJob(22, None, 0.0, False, KillReason.CANCELLED)), DEADLINE
            )
            assert [e.reason for e in node.of(m.StepEnded, 22)] == [StepEnd.CANCELLED]
            assert not any(os.path.exists(p) for p in b.cg.paths.values())
            sm.launch(m.LaunchStep(23, 1, node.spec(argv=["sleep", "300"])))
            assert node.of(m.StepStarted, 23)
            c = sm.steps[(23, 1)]
            await until(lambda: len(c.cg.pids()) >= 2, "job 23 running")
            # the retries go on (their pauses grow: three failures make it 4 x the
            # first) without holding the loop
            await until(lambda: any(i.pause >= 4 * reclaim.RETRY_FIRST for i in sm.reclaim.items),
                        "three failed removals retried", timeout=DEADLINE)  # fmt: skip
            assert os.path.isdir(pin.where) and sm.reclaim.pending()
        assert tick.worst < STALL_BOUND, f"the event loop stalled {tick.worst:.2f}s"
        pin.release()
        await until(
            lambda: not sm.reclaim.pending(), "the cleanup done once unpinned", timeout=DEADLINE
        )
        assert not any(os.path.exists(p) for p in a.cg.paths.values())
        job_dirs = [os.path.join(r, node.scope, "job_21") for r in cgmod.hierarchy_roots(node.mode)]
        assert not any(os.path.exists(d) for d in job_dirs)
        await sm.kill_job(m.KillJob(23, None, 0.0, False, KillReason.CANCELLED))

    try:
        with caplog.at_level("INFO", logger="craned.reclaim"):
            run(node, body)
    finally:
        if pin is not None:
            pin.release()
    assert re.search(r"job 21: cannot remove \(.*\); tried again until it goes", caplog.text), (
        caplog.text
    )
    assert "job 21: removed at last" in caplog.text


# ---------------------------------------------------------------- a long kill


@needs_root
def test_long_kill_runs_beside_the_loop(none_node: Node) -> None:
    """Mode 'none' finds a step's processes by scanning every process of the
    host: killing a step of 400 processes takes many scans. Meanwhile the
    event loop runs (another job is killed and reported)."""
    node = none_node
    tree = "for i in $(seq 400); do sleep 600 & done; echo ready; wait"

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(31, 1, node.spec(argv=["sh", "-c", tree])))
        sm.launch(
            m.LaunchStep(32, 1, node.spec(argv=["sleep", "300"], stdout=str(node.work / "out32")))
        )
        out = node.work / "out"
        await until(lambda: out.exists() and "ready" in out.read_text(), "400 processes started")
        big = sm.steps[(31, 1)]
        with Ticker() as tick:
            first = asyncio.ensure_future(
                sm.kill_job(m.KillJob(31, None, 0.0, False, KillReason.CANCELLED))
            )
            await asyncio.sleep(0.05)
            await asyncio.wait_for(
                sm.kill_job(m.KillJob(32, None, 0.0, False, KillReason.CANCELLED)), DEADLINE
            )
            assert [e.reason for e in node.of(m.StepEnded, 32)] == [StepEnd.CANCELLED]
            await asyncio.wait_for(first, DEADLINE)
        assert [e.reason for e in node.of(m.StepEnded, 31)] == [StepEnd.CANCELLED]
        assert big.cg.pids() == set()
        assert tick.worst < STALL_BOUND, f"the event loop stalled {tick.worst:.2f}s"

    run(node, body)


# ---------------------------------------------------------------- pure pieces


def test_rmdir_tree_says_why(tmp_path: Path) -> None:
    """The agent's bottom-up rmdir (cgroups, reclaim): gone (or never there) is '', a directory it cannot
    remove says which and why; sub-directories go first."""
    d = tmp_path / "a"
    (d / "b" / "c").mkdir(parents=True)
    assert cgmod.rmdir_tree(str(d)) == "" and not d.exists()
    assert cgmod.rmdir_tree(str(tmp_path / "never")) == ""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("")
    why = cgmod.rmdir_tree(str(tmp_path / "x"))
    assert str(tmp_path / "x") in why and "not empty" in why.lower()
    item = reclaim.Item("t", 1, 1, [str(tmp_path / "x")], [str(tmp_path / "x" / "file")])
    [out] = reclaim.attempt([item])  # directories first, then files: the file is gone now
    assert "not empty" in out.lower() and not (tmp_path / "x" / "file").exists()
    assert reclaim.attempt([item]) == [""] and not (tmp_path / "x").exists()


# ---------------------------------------------------------------- through real daemons


def _agent_log(c: Any, node: str) -> str:
    try:
        with open(os.path.join(c.base, "log", f"craned-{node}.log")) as f:
            return f.read()
    except OSError:
        return ""


@needs_cgroups
def test_cluster_cancels_on_while_a_cleanup_is_refused(make_cluster: Any) -> None:
    """Real controller and agent: job A's cgroup is pinned when it is
    cancelled. A is CANCELLED at once; job B on the same node is cancelled
    and C runs to the end meanwhile; the agent logs the refusal; once the
    pin is gone A's directories are removed."""
    c = make_cluster(nodes=1, cpus=4)
    a = c.submit("-c", "1", wrap="sleep 300")
    b = c.submit("-c", "1", wrap="sleep 300")
    for j in (a, b):
        c.wait_state(j, "RUNNING", timeout=DEADLINE)
        c.step_pid(j, timeout=DEADLINE)
    scope = f"crane/{c.config()['ClusterName']}/crane01"
    cg = cgmod.StepCgroup(scope, a, 1, MODE)
    wait_for(lambda: len(cg.pids()) >= 2, DEADLINE, "job A in its cgroup")
    pin = Pin(cg)
    try:
        c.ok("ccancel", str(a))
        assert c.wait_state(a, "CANCELLED", timeout=DEADLINE)["state"] == "CANCELLED"
        assert os.path.isdir(pin.where)
        c.ok("ccancel", str(b))
        assert c.wait_state(b, "CANCELLED", timeout=DEADLINE)["state"] == "CANCELLED"
        done = c.submit("-c", "1", wrap="echo fine")
        assert c.wait_state(done, "COMPLETED", timeout=DEADLINE)["state"] == "COMPLETED"
        wait_for(lambda: re.search(rf"job {a}: cannot remove", _agent_log(c, "crane01")), DEADLINE,
                 "the refusal logged")  # fmt: skip
    finally:
        pin.release()
    dirs = [os.path.join(r, scope, f"job_{a}") for r in cgmod.hierarchy_roots(MODE)]
    wait_for(
        lambda: not any(os.path.exists(d) for d in dirs),
        DEADLINE,
        "job A's cgroup removed after the pin",
    )
    wait_for(
        lambda: f"job {a}: removed at last" in _agent_log(c, "crane01"),
        DEADLINE,
        "the removal logged",
    )
