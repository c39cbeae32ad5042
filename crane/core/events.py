"""Messages between the controller's actors (events in) and what the pure
state machines ask the I/O layer to do (actions out). Wire messages live in
``crane.core.messages``; these never leave the process. Each carries a cause
id (``Traced``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from crane.core import messages as m
from crane.core.job import Step
from crane.core.ledger import Request
from crane.core.states import CancelPath, EndState


class ReplyTo(Protocol):
    """Where an answer goes (an ``asyncio.Future`` in the controller)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...


@dataclass(slots=True)
class Traced:
    """Every event and action carries the id of what caused it: a CLI request
    (numbered by the controller as it arrives, ``crane.requests``), an agent's
    report, or 0 for the controller's own timers. A job's actions take the
    cause of the event they answer, so any transition traces back to it
    (the job actor logs it)."""

    cause: int = field(default=0, kw_only=True)


Handler = Callable[..., list[Any]]  # (machine, event, ...) -> actions


def handler_table() -> tuple[dict[type, Handler], Callable[[type], Callable[[Handler], Handler]]]:
    """A pure machine's table of one handler per event type (its ``handle``
    is a dict lookup), and the ``@on(EventType)`` decorator that fills it."""
    table: dict[type, Handler] = {}

    def on(event_type: type) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            table[event_type] = fn
            return fn

        return register

    return table, on


# ------------------------------------------------------------------ events to a job


@dataclass(slots=True)
class Allocated(Traced):
    nodes: list[str]
    cpus: int  # per node
    gpus: dict[str, list[int]] = field(default_factory=dict)  # node -> GPU indices given there


@dataclass(slots=True)
class StepStartedEv(Traced):
    node: str
    step_id: int
    pid: int


@dataclass(slots=True)
class StepEndedEv(Traced):
    node: str
    step_id: int
    exit_code: int
    signal: int
    reason: str
    detail: str = ""  # why a launch failed


@dataclass(slots=True)
class ReleasedEv(Traced):
    node: str
    kill_failed: bool = False


@dataclass(slots=True)
class CancelEv(Traced):
    by_uid: int
    by_name: str
    path: str = CancelPath.USER
    step_id: int | None = None
    message: str = ""
    force: bool = False
    graceful: bool = False
    grace: float | None = None
    end_state: str = EndState.CANCELLED
    signal: int | None = None
    rid: str = ""
    requeue: bool = False  # preemption in REQUEUE mode
    reason: str = ""  # shown in cqueue/cacct, e.g. "Preempted by job 12"


@dataclass(slots=True)
class NewStepEv(Traced):
    argv: list[str]
    cpus: int
    env: dict[str, str]
    cwd: str
    reply: ReplyTo | None = None
    stream: list[int] = field(default_factory=list)  # 1 stdout, 2 stderr: live to crun
    stdout: str = ""  # a file instead of the job's (absolute)
    stderr: str = ""
    ntasks: int = 0  # crun -n (0: one task per node, or from ntasks_per_node)
    ntasks_per_node: int = 0
    label: bool = False  # crun -l
    nnodes: int = 0  # crun -N (0: every node of the job)


@dataclass(slots=True)
class NodeDownEv(Traced):
    node: str


@dataclass(slots=True)
class AgentStepsEv(Traced):
    """The node's agent (re-)registered and runs these steps of this job."""

    node: str
    steps: list[int]


@dataclass(slots=True)
class SetReason(Traced):
    reason: str


@dataclass(slots=True)
class ControlEv(Traced):
    action: str  # hold | release | requeue | suspend | resume
    reply: ReplyTo | None = None
    rank: int = 0  # hold/release: the caller's rank over the job (0 owner, 1 coordinator, 2 operator/admin/root)


@dataclass(slots=True)
class UpdateEv(Traced):
    """ccontrol update job: the fields to change (any of ``name``,
    ``time_limit`` (seconds, None = unlimited), ``partition``, ``qos``,
    ``priority``), checked for rights by the request handler; the machine
    checks the job's state (partition, QoS and priority only while pending)."""

    fields: dict[str, Any]
    reply: ReplyTo | None = None


# ------------------------------------------------------------------ events to the scheduler


@dataclass(slots=True)
class Enqueue(Traced):
    req: Request


@dataclass(slots=True)
class Dequeue(Traced):
    job_id: int


@dataclass(slots=True)
class FreeNode(Traced):
    job_id: int
    node: str


@dataclass(slots=True)
class NodeStatus(Traced):
    node: str
    up: bool | None = None
    drain: bool | None = None
    reason: str = ""


@dataclass(slots=True)
class Suspended(Traced):
    """A job's cpus are lent (True) or taken back (False) on its nodes."""

    job_id: int
    suspended: bool


@dataclass(slots=True)
class Ending(Traced):
    """The job started ending (a cancel, its batch step ended, a node lost):
    no longer a preemption candidate; as a victim it is on its way out."""

    job_id: int


@dataclass(slots=True)
class Adopt(Traced):
    """Recovery: a job that holds resources on ``nodes`` (its live ones)."""

    job_id: int
    nodes: list[str]
    cpus: int  # per node
    memory: int  # per node
    exclusive: bool
    suspended: bool
    gpus: dict[str, list[int]] = field(default_factory=dict)  # node -> GPU indices held there
    qos: str = ""
    partition: str = ""
    uid: int = 0
    start_time: float = 0.0
    ending: bool = False  # cancelled or completing before the restart


@dataclass(slots=True)
class RestoreNode(Traced):
    """Recovery: a node's saved drain state (nothing to save again)."""

    node: str
    drain: bool
    reason: str = ""


# ------------------------------------------------------------------ actions out of a job


@dataclass(slots=True)
class ToNode(Traced):
    node: str
    msg: m.Message


@dataclass(slots=True)
class ToScheduler(Traced):
    msg: Any


@dataclass(slots=True)
class Persist(Traced):
    pass


@dataclass(slots=True)
class AfterSaved(Traced):
    """The job's messages to nodes from here on (``ToNode``, this and later
    events') go out only once what was persisted before is committed: a
    step's launch never precedes its record on disk."""


@dataclass(slots=True)
class Terminal(Traced):
    """The job reached a terminal state; waiters may be told once persisted."""


@dataclass(slots=True)
class Reply(Traced):
    future: ReplyTo | None
    value: Any = None


@dataclass(slots=True)
class StepDone(Traced):
    """A step ended: wake whoever waits for it (crun, ccancel --wait)."""

    step_id: int
    step: Step
