"""The agent's step manager on its own: real processes in real cgroups (as
root), no controller. The messages it would send are collected in a list.

Each test runs its own event loop with the manager's SIGCHLD reaper, a fresh
state directory and its own cgroup scope, removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crane.agent import cgroup as cgmod
from crane.agent.main import _refusal
from crane.agent.steps import StepManager
from crane.core import messages as m
from crane.core.states import KillReason, RegisterRefusal, StepEnd

IS_ROOT = os.geteuid() == 0
MODE = cgmod.detect_mode() if IS_ROOT else "none"

needs_cgroups = pytest.mark.skipif(MODE == "none", reason="needs root and writable cgroups")

DEADLINE = 60.0


@dataclass
class Node:
    """One step manager, its state directory, its cgroup scope and a work
    directory every user may write in (the steps' output files)."""

    scope: str
    state: Path
    work: Path
    sent: list[m.Message] = field(default_factory=list)
    managers: list[StepManager] = field(default_factory=list)

    def manager(self) -> StepManager:
        sm = StepManager("n1", self.scope, str(self.state), MODE, self.sent.append)
        self.managers.append(sm)
        return sm

    def of(self, kind: type[Any], job_id: int | None = None) -> list[Any]:
        return [x for x in self.sent if isinstance(x, kind) and (job_id is None or x.job_id == job_id)]

    def spec(self, uid: int = 0, user: str = "root", **kw: Any) -> dict[str, Any]:
        return {"uid": uid, "gid": uid, "user": user, "cwd": str(self.work),
                "env": {"PATH": "/usr/bin:/bin"}, "stdout": str(self.work / "out"),
                "stderr": str(self.work / "err"), **kw}  # fmt: skip

    def users_file(self) -> list[int]:
        return [int(x) for x in (self.state / "users").read_text().split()]

    def state_files(self) -> list[str]:
        return sorted(f"{d}/{f}" for d in ("steps", "rc") for f in os.listdir(self.state / d))


@pytest.fixture
def node() -> Iterator[Node]:
    base = Path(tempfile.mkdtemp(prefix="crane-steps-", dir="/tmp"))
    base.chmod(0o711)  # a step's owner reaches its rc file through it
    work = Path(tempfile.mkdtemp(prefix="crane-steps-work-", dir="/tmp"))
    work.chmod(0o777)
    top = f"crane-test/{uuid.uuid4().hex[:12]}"
    n = Node(f"{top}/n1", base / "n1", work)
    yield n
    for job_id, step_id in cgmod.existing_steps(n.scope, MODE):  # a failed test's leftovers
        cg = cgmod.StepCgroup(n.scope, job_id, step_id, MODE)
        cg.kill()
        _poll_sync(cg.empty)
        cgmod.remove_job(n.scope, job_id, MODE)
    _reap_all()
    for root in cgmod.hierarchy_roots(MODE):
        for path in (os.path.join(root, n.scope), os.path.join(root, top), os.path.join(root, "crane-test")):
            try:
                os.rmdir(path)
            except OSError:
                pass
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def _poll_sync(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


async def until(cond: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def run(node: Node, body: Callable[[StepManager], Awaitable[None]]) -> None:
    """``body(manager)`` in an event loop whose SIGCHLD handler reaps for the manager."""

    async def main() -> None:
        sm = node.manager()
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, sm.reap)
        await body(sm)

    asyncio.run(main())


def cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read()


# ---------------------------------------------------------------- tests


@needs_cgroups
def test_launch_then_kill(node: Node, users: dict[str, int]) -> None:
    """A step runs as its owner in its cgroup, with its record, rc file and
    the users file; a kill ends it CANCELLED by SIGKILL, releases the job
    and removes every trace."""
    alice = users["alice"]

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(7, 1, node.spec(alice, "alice", argv=["sleep", "300"])))
        [started] = node.of(m.StepStarted)
        run = sm.steps[(7, 1)]
        assert started.pid == run.pid > 0
        await until(lambda: len(run.cg.pids()) >= 2, "the wrapper and sleep in the cgroup")
        for pid in run.cg.pids():
            assert f"/{node.scope}/job_7/step_1" in cgroup_of(pid)
            assert os.stat(f"/proc/{pid}").st_uid == alice
        assert node.state_files() == ["rc/7.1", "steps/7.1.json"]
        assert os.stat(node.state / "rc" / "7.1").st_uid == alice
        assert node.users_file() == [alice] and sm.has_step(alice) and sm.running() == [[7, 1]]

        await sm.kill_job(m.KillJob(7, None, 0.0, False, KillReason.CANCELLED))
        [ended] = node.of(m.StepEnded)
        assert (ended.job_id, ended.step_id, ended.reason, ended.signal) == (7, 1, StepEnd.CANCELLED, 9)
        [released] = node.of(m.JobReleased)
        assert (released.job_id, released.epilog_ok, released.kill_failed) == (7, True, False)
        assert node.sent.index(ended) < node.sent.index(released)
        assert sm.steps == {} and sm.ended == {} and sm.running() == []
        assert node.state_files() == [] and node.users_file() == []
        assert not run.cg.path or not os.path.exists(run.cg.path)
        assert cgmod.existing_steps(node.scope, MODE) == []

        # the same launch again (a resend) is ignored; the job's next run is not
        sm.launch(m.LaunchStep(7, 1, node.spec(alice, "alice", argv=["true"])))
        assert len(node.of(m.StepStarted)) == 1
        sm.launch(m.LaunchStep(7, 1, node.spec(alice, "alice", argv=["true"], attempt=1)))
        assert len(node.of(m.StepStarted)) == 2
        await until(lambda: len(node.of(m.StepEnded)) == 2, "the requeued run's end")
        assert node.of(m.StepEnded)[1].reason == StepEnd.NORMAL and node.of(m.StepEnded)[1].exit_code == 0
        await sm.kill_job(m.KillJob(7, None, 0.0, False, KillReason.COMPLETED))

    run(node, body)


@needs_cgroups
def test_grace_then_kill(node: Node) -> None:
    """A step whose script survives SIGTERM (a trap) gets SIGKILL once the
    grace period is over."""
    script = "trap 'echo got-term' TERM\necho ready\nwhile :; do sleep 0.2; done\n"
    grace = 1.0

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(3, 1, node.spec(script=script)))
        out = node.work / "out"
        await until(lambda: out.exists() and "ready" in out.read_text(), "the trap set")
        t0 = time.monotonic()
        await sm.kill_job(m.KillJob(3, None, grace, False, KillReason.CANCELLED))
        assert time.monotonic() - t0 >= grace  # TERM did not end it: SIGKILL after the grace
        assert "got-term" in out.read_text()
        [ended] = node.of(m.StepEnded)
        assert (ended.reason, ended.signal) == (StepEnd.CANCELLED, 9)
        assert node.of(m.JobReleased)[0].kill_failed is False
        assert node.state_files() == [] and not (node.state / "scripts" / "job_3.sh").exists()

    run(node, body)


@needs_cgroups
def test_graceful_kill_escalated(node: Node) -> None:
    """A second kill without grace (ccancel --force) cuts a long grace short;
    while the grace lasts the step runs on."""
    script = "trap 'echo got-term' TERM\necho ready\nwhile :; do sleep 0.2; done\n"

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(4, 1, node.spec(script=script)))
        out = node.work / "out"
        await until(lambda: out.exists() and "ready" in out.read_text(), "the trap set")
        slow = asyncio.ensure_future(sm.kill_job(m.KillJob(4, None, 600.0, False, KillReason.CANCELLED)))
        await until(lambda: "got-term" in out.read_text(), "SIGTERM received")
        run = sm.steps[(4, 1)]
        assert run.killing and not run.cg.empty() and node.of(m.StepEnded) == []
        await sm.kill_job(m.KillJob(4, None, 0.0, True, KillReason.CANCELLED))
        await asyncio.wait_for(slow, DEADLINE)
        [ended] = node.of(m.StepEnded)
        assert (ended.reason, ended.signal) == (StepEnd.CANCELLED, 9)
        # each kill of the whole job ends in a release (the controller takes the first)
        assert {(r.job_id, r.kill_failed) for r in node.of(m.JobReleased)} == {(4, False)}

    run(node, body)


@needs_cgroups
def test_time_limit(node: Node) -> None:
    """A step past its time limit is killed: TIMEOUT, and a banner in its stderr."""

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(5, 1, node.spec(argv=["sleep", "300"], time_limit=0.5)))
        await until(lambda: node.of(m.StepEnded), "the time limit")
        [ended] = node.of(m.StepEnded)
        assert (ended.reason, ended.signal) == (StepEnd.TIMEOUT, 9)
        assert "CANCELLED AT" in (node.work / "err").read_text()
        await sm.kill_job(m.KillJob(5, None, 0.0, False, KillReason.COMPLETED))
        assert node.state_files() == []

    run(node, body)


@needs_cgroups
def test_launch_failure_reported(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """A launch that fails after its cgroup and state files were made reports
    LAUNCH_FAILED (exit code 127) and leaves nothing behind."""
    spec = node.spec(argv=["true"])
    del spec["user"]  # fails in the spawn itself: after cgroup, record and rc file

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(6, 2, spec))
        assert node.of(m.StepStarted) == []
        [ended] = node.of(m.StepEnded)
        assert (ended.job_id, ended.step_id, ended.reason, ended.exit_code) == (6, 2, StepEnd.LAUNCH_FAILED, 127)
        assert sm.steps == {} and node.state_files() == [] and node.users_file() == []
        assert cgmod.existing_steps(node.scope, MODE) == []
        sm.launch(m.LaunchStep(6, 3, node.spec(argv=["true"], cwd="relative/dir")))
        assert node.of(m.StepEnded)[1].reason == StepEnd.LAUNCH_FAILED
        await sm.kill_job(m.KillJob(6, None, 0.0, False, KillReason.COMPLETED))
        assert node.of(m.JobReleased)[0].job_id == 6

    with caplog.at_level("ERROR", logger="craned.steps"):
        run(node, body)
    assert "launch of 6.2 failed" in caplog.text and "launch of 6.3 failed: cwd" in caplog.text


@needs_cgroups
def test_adopted_after_restart(node: Node) -> None:
    """A restarted agent takes a running step back from its cgroup and record,
    kills it, and reports it released (the old manager is gone)."""

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(8, 1, node.spec(argv=["sleep", "300"])))
        old = sm.steps[(8, 1)]
        await until(lambda: len(old.cg.pids()) >= 2, "the step in its cgroup")
        sm.children.clear()  # the old agent is gone: its exit callbacks with it
        new = node.manager()
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, new.reap)
        new.adopt()
        run = new.steps[(8, 1)]
        assert run.adopted and run.spec["argv"] == ["sleep", "300"] and new.has_step(0)
        await new.kill_job(m.KillJob(8, None, 0.0, False, KillReason.CANCELLED))
        [ended] = node.of(m.StepEnded)
        assert (ended.job_id, ended.reason) == (8, StepEnd.CANCELLED)
        assert node.of(m.JobReleased)[0].kill_failed is False
        assert node.state_files() == [] and cgmod.existing_steps(node.scope, MODE) == []

    run(node, body)


@needs_cgroups
def test_adopted_step_ended_while_away(node: Node) -> None:
    """A step that ends on its own while the agent is away (its wrapper wrote
    its exit status) is reported with that status once its cgroup is empty."""

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(9, 1, node.spec(argv=["sh", "-c", "sleep 1; exit 3"])))
        old = sm.steps[(9, 1)]
        await until(lambda: len(old.cg.pids()) >= 2, "the step in its cgroup")
        sm.children.clear()
        new = node.manager()
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, new.reap)
        new.adopt()
        await until(lambda: node.of(m.StepEnded), "the adopted step's end")
        [ended] = node.of(m.StepEnded)
        assert (ended.job_id, ended.exit_code, ended.reason) == (9, 3, StepEnd.NORMAL)
        await new.kill_job(m.KillJob(9, None, 0.0, False, KillReason.COMPLETED))
        assert node.state_files() == []

    run(node, body)


def test_register_refusal_read_from_its_code() -> None:
    """The agent reads why it was refused from RegisterAck.code, not from its text."""
    assert _refusal(m.RegisterAck(False, "whatever", RegisterRefusal.UNKNOWN_NODE)) == RegisterRefusal.UNKNOWN_NODE
    assert _refusal(m.RegisterAck(False, "unknown node x", RegisterRefusal.REGISTER_AGAIN)) == RegisterRefusal.REGISTER_AGAIN
    assert _refusal(m.RegisterAck(False, "unknown node x")) is None
    assert _refusal(m.RegisterAck(False, "", "some future code")) is None
