"""One step running on this node (``StepRun``) and the files the agent keeps
for it in its state directory.

Shared by ``launch`` (creates runs), ``kill`` (ends them early) and
``cleanup`` (notices their end and reports it); ``steps.StepManager`` holds
the registry of runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from crane.agent import cgroup as cgmod
from crane.agent import offloop
from crane.agent import stream as streams
from crane.core.states import StepEnd
from crane.core.text import safe

POLL = 0.01
DETAIL_MAX = 200  # characters of a launch failure's reason (StepEnded.detail)


def detail_line(text: str) -> str:
    """A launch failure's reason as the job shows it: one line, printable, bounded."""
    line = safe(" ".join(text.split()))
    return line if len(line) <= DETAIL_MAX else line[: DETAIL_MAX - 3] + "..."


def path_problem(spec: dict[str, Any]) -> str:
    """Why the step's paths cannot be used, or ''. They must be absolute: a
    relative one would resolve against whatever directory the opener is in."""
    for key in ("cwd", "stdout", "stderr"):
        value = spec.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not os.path.isabs(value):
            return f"{key} is not an absolute path: {value!r}"
        if "\0" in value:
            return f"{key} contains a NUL byte"
    return ""


@dataclass(slots=True)
class StepRun:
    job_id: int
    step_id: int
    spec: dict[str, Any]
    cg: cgmod.StepCgroup
    pid: int = 0
    start: float = 0.0
    status: int | None = None  # raw wait status of the main process
    adopted: bool = False
    kill_reason: StepEnd = StepEnd.NORMAL
    killing: bool = False
    grace_until: float = 0.0  # monotonic end of the grace of a kill in progress
    frozen: bool = False
    reported: bool = False
    timer: asyncio.TimerHandle | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one signal/freeze/thaw of the step at a time
    pipes: list[streams.Pipe] = field(default_factory=list)  # live output (crun)
    exec_fd: int = -1  # read end of the pipe the child reports a failure before its exec on
    launch_error: str = ""  # that failure, one line (StepEnded.detail)

    @property
    def key(self) -> tuple[int, int]:
        return (self.job_id, self.step_id)

    async def wait_empty(self, timeout: float) -> bool:
        """Poll the cgroup with a deadline: fast at first (a cgroup kill
        empties it in a few ms), backing off to POLL."""
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while not await offloop.empty(self.cg):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL)
        return True


def read_launch_error(run: StepRun) -> None:
    """Read the step's exec pipe once (it never blocks): what the child wrote
    before failing becomes ``run.launch_error``; the pipe is then closed,
    unless it is still open at the other end (the child has not exec'd yet)."""
    fd = run.exec_fd
    if fd < 0:
        return
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return  # nothing yet: the child is still before its exec
    except OSError:
        data = b""
    if data:
        run.launch_error = detail_line(data.decode(errors="replace"))
    run.exec_fd = -1
    try:
        asyncio.get_running_loop().remove_reader(fd)
    except (RuntimeError, ValueError, OSError):
        pass
    os.close(fd)


# ------------------------------------------------------------ state files
# <state_dir>/steps/J.S.json   the step's record, for adoption after a restart
# <state_dir>/rc/J.S           the wrapper's exit status, owned by the job's user
# <state_dir>/scripts/job_J.sh the batch script
# <state_dir>/users            uids with a running step (crane-pam-check)


def record_path(state_dir: str, job_id: int, step_id: int) -> str:
    return os.path.join(state_dir, "steps", f"{job_id}.{step_id}.json")


def rc_path(state_dir: str, job_id: int, step_id: int) -> str:
    return os.path.join(state_dir, "rc", f"{job_id}.{step_id}")


def script_path(state_dir: str, job_id: int) -> str:
    return os.path.join(state_dir, "scripts", f"job_{job_id}.sh")


def users_path(state_dir: str) -> str:
    return os.path.join(state_dir, "users")
