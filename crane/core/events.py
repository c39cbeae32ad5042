"""Messages between the controller's actors (events in) and what the pure
state machines ask the I/O layer to do (actions out). Wire messages live in
``crane.core.messages``; these never leave the process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from crane.core import messages as m


class ReplyTo(Protocol):
    """Where an answer goes (an ``asyncio.Future`` in the controller)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...


# ------------------------------------------------------------------ events to a job


@dataclass(slots=True)
class Allocated:
    nodes: list[str]
    cpus: int  # per node
    gpus: dict[str, list[int]] = field(default_factory=dict)  # node -> GPU indices given there


@dataclass(slots=True)
class StepStartedEv:
    node: str
    step_id: int
    pid: int


@dataclass(slots=True)
class StepEndedEv:
    node: str
    step_id: int
    exit_code: int
    signal: int
    reason: str


@dataclass(slots=True)
class ReleasedEv:
    node: str
    kill_failed: bool = False


@dataclass(slots=True)
class CancelEv:
    by_uid: int
    by_name: str
    path: str = "user"  # user | preemption | timeout | node_failure | admin
    step_id: int | None = None
    message: str = ""
    force: bool = False
    graceful: bool = False
    grace: float | None = None
    end_state: str = "CANCELLED"
    signal: int | None = None
    rid: str = ""
    requeue: bool = False  # preemption in REQUEUE mode
    reason: str = ""  # shown in cqueue/cacct, e.g. "Preempted by job 12"


@dataclass(slots=True)
class NewStepEv:
    argv: list[str]
    cpus: int
    env: dict[str, str]
    cwd: str
    reply: ReplyTo | None = None
    stream: list[int] = field(default_factory=list)  # 1 stdout, 2 stderr: live to crun
    stdout: str = ""  # a file instead of the job's (absolute)
    stderr: str = ""


@dataclass(slots=True)
class NodeDownEv:
    node: str


@dataclass(slots=True)
class AgentStepsEv:
    """The node's agent (re-)registered and runs these steps of this job."""

    node: str
    steps: list[int]


@dataclass(slots=True)
class SetReason:
    reason: str


@dataclass(slots=True)
class ControlEv:
    action: str  # hold | release | requeue | suspend | resume
    reply: ReplyTo | None = None
    rank: int = 0  # hold/release: the caller's rank over the job (0 owner, 1 coordinator, 2 operator/admin/root)


# ------------------------------------------------------------------ events to the scheduler


@dataclass(slots=True)
class Enqueue:
    req: Any  # crane.actors.scheduler.Request


@dataclass(slots=True)
class Dequeue:
    job_id: int


@dataclass(slots=True)
class FreeNode:
    job_id: int
    node: str


@dataclass(slots=True)
class NodeStatus:
    node: str
    up: bool | None = None
    drain: bool | None = None
    reason: str = ""


@dataclass(slots=True)
class Suspended:
    """A job's cpus are lent (True) or taken back (False) on its nodes."""

    job_id: int
    suspended: bool


# ------------------------------------------------------------------ actions out of a job


@dataclass(slots=True)
class ToNode:
    node: str
    msg: m.Message


@dataclass(slots=True)
class ToScheduler:
    msg: Any


@dataclass(slots=True)
class Persist:
    pass


@dataclass(slots=True)
class Terminal:
    """The job reached a terminal state; waiters may be told once persisted."""


@dataclass(slots=True)
class Reply:
    future: ReplyTo | None
    value: Any = None


@dataclass(slots=True)
class StepDone:
    """A step ended: wake whoever waits for it (crun, ccancel --wait)."""

    step_id: int
    step: dict[str, Any]
