"""Real-kernel tests for crane.agent.cgroup / crane.agent.launcher.

cgroup-backed modes need root; 'none' mode is always exercised (forced).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from crane.agent import cgroup as cgmod
from crane.agent.cgroup import (
    StepCgroup,
    available_modes,
    detect_mode,
    existing_steps,
    hierarchy_roots,
    remove_job,
)
from crane.agent.launcher import set_child_subreaper, spawn

IS_ROOT = os.geteuid() == 0
CG_MODES = [m for m in available_modes() if m != "none"]
TEST_USER = "crane-cgtest"
MiB = 1 << 20

# Orphaned escapees reparent to us so we can reap them (no zombies left behind).
set_child_subreaper()

if CG_MODES:
    cg_modes = pytest.mark.parametrize("mode", CG_MODES)
else:
    cg_modes = pytest.mark.parametrize(
        "mode",
        [
            pytest.param(
                "-", marks=pytest.mark.skip(reason="no writable cgroup hierarchy (not root)")
            )
        ],
    )


# ---------------------------------------------------------------- helpers


def wait_for(cond: Callable[[], object], timeout: float = 10.0, every: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_exit(pid: int, timeout: float = 20.0) -> int:
    """Poll our child ``pid`` until it exits; return its raw wait status."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        assert time.monotonic() < deadline, f"pid {pid} did not exit"
        time.sleep(0.01)


def tagged(scope: str) -> set[int]:
    """Live processes carrying CRANE_SCOPE=scope in their environ (any uid)."""
    out = set()
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("CRANE_SCOPE") == scope:
                out.add(p.pid)
        except (psutil.Error, OSError):
            pass
    return out


def snapshot(pids: set[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).create_time()
        except psutil.Error:
            pass
    return out


def alive(recorded: dict[int, float]) -> list[int]:
    reap()
    left = []
    for pid, ctime in recorded.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == ctime and p.status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.Error:
            pass
    return left


def getsid(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


def read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or -1)
    except (OSError, ValueError):
        return -1


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="crane-cgtest-", dir="/tmp"))
    d.chmod(0o777)  # the unprivileged test user writes here
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def scope() -> Iterator[str]:
    s = f"crane-test/{uuid.uuid4().hex[:12]}"
    yield s
    for mode in CG_MODES:
        for root in hierarchy_roots(mode):
            base = os.path.join(root, s)
            for dirpath, _d, _f in os.walk(base, topdown=False):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
            try:
                os.rmdir(os.path.join(root, "crane-test"))
            except OSError:
                pass


@pytest.fixture
def steps(scope: str) -> Iterator[Callable[..., StepCgroup]]:
    """Factory for step cgroups that are killed and removed at teardown."""
    made: list[StepCgroup] = []

    def make(mode: str, job: int = 1, step: int = 0, memory: int | None = None) -> StepCgroup:
        cg = StepCgroup(scope, job, step, mode=mode)
        cg.create(memory=memory)
        made.append(cg)
        return cg

    yield make
    for cg in made:
        cg.kill()
        wait_for(cg.empty, 10)
        reap()
        wait_for(cg.remove, 5)
        remove_job(cg.scope, cg.job_id, mode=cg.mode)


@pytest.fixture(scope="session")
def test_user() -> Iterator[pwd.struct_passwd]:
    if not IS_ROOT:
        pytest.skip("needs root to switch users")
    created = False
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("useradd unavailable")
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", TEST_USER], check=True)
        created = True
        pw = pwd.getpwnam(TEST_USER)
    yield pw
    if created and shutil.which("userdel"):
        subprocess.run(["userdel", TEST_USER], check=False)


def launch(
    cg: StepCgroup, workdir: Path, body: str, uid: int = 0, gid: int = 0, user: str = "root"
) -> int:
    script = workdir / f"step_{cg.job_id}_{cg.step_id}.sh"
    script.write_text(f"#!/bin/bash\nD={workdir}\n{body}\n")
    script.chmod(0o755)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/"}
    return spawn(
        cg,
        ["/bin/bash", str(script)],
        uid=uid,
        gid=gid,
        user=user,
        cwd=str(workdir),
        env=env,
        stdout="out.txt",
        stderr="err.txt",
    )


# ---------------------------------------------------------------- tests


def test_detect_mode() -> None:
    mode = detect_mode()
    assert mode in cgmod.MODES
    if not IS_ROOT:
        assert mode == "none"
    else:
        assert mode == (CG_MODES[0] if CG_MODES else "none")


@cg_modes
def test_spawn_in_cgroup_as_user(mode: str, steps, workdir: Path, test_user) -> None:
    cg = steps(mode)
    pid = launch(
        cg,
        workdir,
        "echo hello; echo oops >&2; id -u\nexec sleep 1000",
        uid=test_user.pw_uid,
        gid=test_user.pw_gid,
        user=test_user.pw_name,
    )
    assert cg.pgid == pid
    out = workdir / "out.txt"
    assert wait_for(lambda: out.exists() and str(test_user.pw_uid) in out.read_text())
    assert out.read_text().splitlines() == ["hello", str(test_user.pw_uid)]
    assert (workdir / "err.txt").read_text() == "oops\n"
    assert out.stat().st_uid == test_user.pw_uid
    assert psutil.Process(pid).uids().real == test_user.pw_uid
    assert psutil.Process(pid).gids().real == test_user.pw_gid
    assert os.getsid(pid) == pid
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    want = f"0::/{cg.rel}" if mode in ("v2", "hybrid") else f":freezer:/{cg.rel}"
    assert any(line.endswith(want) if want.startswith(":") else line == want for line in lines)
    assert pid in cg.pids()
    assert not cg.empty()
    cg.kill()
    assert os.WTERMSIG(wait_exit(pid)) == signal.SIGKILL
    assert wait_for(cg.empty)


@cg_modes
def test_launch_failure_exits_127(mode: str, steps, workdir: Path) -> None:
    cg = steps(mode)
    pid = spawn(
        cg,
        ["/nonexistent/prog"],
        uid=0,
        gid=0,
        user="root",
        cwd=str(workdir),
        env={"PATH": "/bin"},
        stdout="o",
        stderr="o",
    )
    assert os.WEXITSTATUS(wait_exit(pid)) == 127
    assert "cannot launch" in (workdir / "o").read_text()


ESCAPE_TREE = """
for i in $(seq 5); do setsid sleep 1000 & done
for i in $(seq 5); do ( setsid bash -c 'sleep 1000 & sleep 1000' & ) ; done
for i in $(seq 50); do sleep 1000 & done
( for i in $(seq 300); do ( sleep 1000 & ); sleep 0.02; done ) &
echo started > $D/started
wait
"""


@pytest.mark.parametrize("mode", [*CG_MODES, "none"])
def test_kill_leaves_no_survivors(mode: str, steps, workdir: Path, scope: str) -> None:
    cg = steps(mode)
    pid = launch(cg, workdir, ESCAPE_TREE)
    # setsid + double-fork escapees and a still-running forker are all present
    assert wait_for(lambda: len(cg.pids()) >= 90, timeout=30), len(cg.pids())

    def escaped() -> set[int]:
        return {p for p in cg.pids() if p != pid and getsid(p) not in (pid, -1)}

    assert wait_for(lambda: len(escaped()) >= 10)
    members = cg.pids()
    recorded = snapshot(members | tagged(scope))
    cg.kill()
    assert wait_for(cg.empty, timeout=10), cg.pids()
    assert os.WTERMSIG(wait_exit(pid)) == signal.SIGKILL
    assert wait_for(lambda: not alive(recorded), timeout=10), alive(recorded)
    assert cg.pids() == set()
    assert tagged(scope) == set()
    assert cg.remove()


@pytest.mark.parametrize("mode", [*CG_MODES, "none"])
def test_signal_reaches_trap(mode: str, steps, workdir: Path) -> None:
    cg = steps(mode)
    pid = launch(
        cg,
        workdir,
        "trap 'echo got > $D/term; exit 0' TERM\n"
        "echo ready > $D/ready\nwhile true; do sleep 0.05; done",
    )
    assert wait_for((workdir / "ready").exists)
    assert cg.signal(signal.SIGTERM) >= 1
    assert wait_for((workdir / "term").exists)
    status = wait_exit(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("mode", [*CG_MODES, "none"])
def test_signal_reaches_parent_first(mode: str, steps, workdir: Path) -> None:
    # a script that traps TERM while it waits for its children must get the
    # signal before they die, or its wait returns their death and it ends
    # without running its trap (seen in CI: ccancel --grace lost the trap)
    cg = steps(mode)
    pid = launch(
        cg,
        workdir,
        "trap 'echo got > $D/term; exit 0' TERM\n"
        "for i in 1 2 3 4 5 6 7 8; do sleep 300 & done\necho ready > $D/ready\nwait",
    )
    assert wait_for((workdir / "ready").exists)
    assert wait_for(lambda: len(cg.pids()) >= 9)
    order = sorted(cg.pids(), key=cgmod._started)
    assert order[0] == pid, (order, pid)
    assert cg.signal(signal.SIGTERM) >= 9
    assert wait_for((workdir / "term").exists)
    status = wait_exit(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


COUNTER = (
    "i=0\nwhile true; do i=$((i+1)); echo $i > $D/c.tmp; mv $D/c.tmp $D/counter; sleep 0.01; done"
)


@pytest.mark.parametrize("mode", [*CG_MODES, "none"])
def test_freeze_thaw(mode: str, steps, workdir: Path) -> None:
    cg = steps(mode)
    pid = launch(cg, workdir, COUNTER)
    counter = workdir / "counter"
    assert wait_for(lambda: read_int(counter) >= 3)
    cg.freeze()
    if mode in ("v2", "hybrid"):
        assert "frozen 1" in Path(cg.paths["v2"], "cgroup.events").read_text()
    elif mode == "v1":
        assert Path(cg.paths["freezer"], "freezer.state").read_text().strip() == "FROZEN"
    else:
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    frozen_at = read_int(counter)
    # absence of progress can only be observed over a window: watch it for 0.5 s
    assert not wait_for(lambda: read_int(counter) != frozen_at, timeout=0.5)
    cg.thaw()
    assert wait_for(lambda: read_int(counter) > frozen_at + 2)
    cg.kill()
    wait_exit(pid)


def _memory_usable(cg: StepCgroup) -> bool:
    v2 = cg.paths.get("v2")
    if v2 and os.path.exists(os.path.join(v2, "memory.max")):
        return True
    return "memory" in cg.paths


@cg_modes
def test_memory_limit_oom(mode: str, steps, workdir: Path) -> None:
    cg = steps(mode, memory=64 * MiB)
    if not _memory_usable(cg):
        pytest.skip(f"no usable memory controller in mode {mode}")
    assert not cg.oom_killed()
    pid = launch(
        cg, workdir, f"exec {sys.executable} -c \"b = b'x' * (256 << 20); print('survived')\""
    )
    status = wait_exit(pid, timeout=60)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert "survived" not in (workdir / "out.txt").read_text()
    assert cg.oom_killed()


@cg_modes
def test_existing_steps_and_cleanup(mode: str, steps, scope: str) -> None:
    want = [(1, 0), (1, 1), (2, 5)]
    cgs = [steps(mode, job, step) for job, step in want]
    assert existing_steps(scope, mode=mode) == want
    for cg in cgs:
        cg.create()  # idempotent
        assert all(os.path.isdir(p) for p in cg.paths.values())
    assert existing_steps(scope, mode=mode) == want
    for cg in cgs:
        assert cg.remove()
        assert not any(os.path.exists(p) for p in cg.paths.values())
        assert cg.remove()  # already gone is fine
    remove_job(scope, 1, mode=mode)
    remove_job(scope, 2, mode=mode)
    remove_job(scope, 3, mode=mode)  # never existed: no error
    assert existing_steps(scope, mode=mode) == []
    for root in hierarchy_roots(mode):
        base = os.path.join(root, scope)
        assert [d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))] == []


@cg_modes
def test_remove_busy_returns_false(mode: str, steps, workdir: Path) -> None:
    cg = steps(mode)
    pid = launch(cg, workdir, "exec sleep 1000")
    assert wait_for(lambda: pid in cg.pids())
    assert cg.remove() is False
    cg.kill()
    wait_exit(pid)
    assert wait_for(cg.empty)
    assert wait_for(cg.remove, timeout=5)


def test_none_mode_finds_escapees_by_env(steps, workdir: Path, scope: str) -> None:
    cg = steps("none", job=7, step=3)
    other = steps("none", job=7, step=4)
    body = (
        "for i in $(seq 3); do setsid sleep 1000 & echo $! >> $D/esc; done\n"
        "( setsid bash -c 'sleep 1000 & echo $! >> '$D'/esc; wait' & )\n"
        "echo started > $D/started\nwait"
    )
    pid = launch(cg, workdir, body)
    assert wait_for(
        lambda: (
            len((workdir / "esc").read_text().split()) == 4 if (workdir / "esc").exists() else False
        )
    )
    escapees = {int(x) for x in (workdir / "esc").read_text().split()}
    assert wait_for(lambda: all(getsid(p) not in (pid, -1) for p in escapees))  # left the session
    assert wait_for(lambda: escapees <= cg.pids())
    assert pid in cg.pids()
    assert other.pids() == set()
    assert existing_steps(scope, mode="none") == [(7, 3)]
    recorded = snapshot(cg.pids())
    cg.kill()
    assert wait_for(cg.empty)
    wait_exit(pid)
    assert wait_for(lambda: not alive(recorded)), alive(recorded)
    assert existing_steps(scope, mode="none") == []


def test_none_mode_signal_counts_and_vanished(steps) -> None:
    cg = steps("none", job=9, step=0)
    assert cg.pids() == set()
    assert cg.signal(signal.SIGTERM) == 0
    cg.kill()  # nothing to kill: no error
    cg.pgid = 2**22 - 1  # a process group that does not exist
    cg.kill()
    cg.freeze()
    cg.thaw()
    assert cg.empty()


def test_invalid_scope_and_mode() -> None:
    with pytest.raises(ValueError):
        StepCgroup("../etc", 1, 0, mode="none")
    with pytest.raises(ValueError):
        StepCgroup("crane/x", 1, 0, mode="bogus")
