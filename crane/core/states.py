"""Every state and reason the system names, as ``StrEnum``s.

They are ``str`` subclasses: ``JobState.RUNNING == "RUNNING"``, so the wire
format, the database and the CLIs' output stay plain strings. Code outside
this module names them through these enums, never as literals.
"""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    """Lifecycle state of a job (or step)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"

    @property
    def short(self) -> str:
        """The compact code shown by ``cqueue`` (``PD``, ``R``, ...)."""
        return SHORT_CODES[self]

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.OUT_OF_MEMORY}
)
CANCELLABLE: frozenset[JobState] = frozenset(
    {JobState.PENDING, JobState.CONFIGURING, JobState.RUNNING, JobState.SUSPENDED}
)
ACTIVE: frozenset[JobState] = frozenset(JobState) - TERMINAL
#: states in which a job holds resources on its nodes
HOLDING: frozenset[JobState] = frozenset(
    {JobState.CONFIGURING, JobState.RUNNING, JobState.SUSPENDED, JobState.COMPLETING}
)

SHORT_CODES: dict[JobState, str] = {
    JobState.PENDING: "PD",
    JobState.CONFIGURING: "CF",
    JobState.RUNNING: "R",
    JobState.SUSPENDED: "S",
    JobState.COMPLETING: "CG",
    JobState.COMPLETED: "CD",
    JobState.FAILED: "F",
    JobState.CANCELLED: "CA",
    JobState.TIMEOUT: "TO",
    JobState.OUT_OF_MEMORY: "OOM",
}


class StepEnd(enum.StrEnum):
    """Why an agent says a step ended (``StepEnded.reason``)."""

    NORMAL = ""  # the step's processes exited on their own
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CANCELLED = "CANCELLED"
    LAUNCH_FAILED = "LAUNCH_FAILED"
    LOST = "LOST"  # the agent lost track of it (its record or wrapper gone)


class KillReason(enum.StrEnum):
    """Why the controller asks an agent to kill a job (``KillJob.reason``)."""

    CANCELLED = "CANCELLED"  # a cancel, a preemption or a time limit
    COMPLETED = "COMPLETED"  # the batch step ended: clean up the rest
    ORPHAN = "ORPHAN"  # the agent runs a job the controller does not know there


class CancelPath(enum.StrEnum):
    """Who or what ended a job early (metrics, history, banners)."""

    USER = "user"
    ADMIN = "admin"
    PREEMPTION = "preemption"


class EndState(enum.StrEnum):
    """The state a cancel asks for (``ccancel --end-state``)."""

    CANCELLED = "CANCELLED"
    FINISHED = "FINISHED"


class PendingReason(enum.StrEnum):
    """Why a pending job does not run (``cqueue`` NODELIST(REASON))."""

    PRIORITY = "Priority"
    RESOURCES = "Resources"
    QOS_MAX_JOBS_PER_USER = "QOSMaxJobsPerUserLimit"
    WAITING_FOR_PREEMPTION = "Waiting for preemption"
    HELD_USER = "JobHeldUser"
    HELD_ADMIN = "JobHeldAdmin"
    EXCEED_TIME_LIMIT = "ExceedTimeLimit"  # shown on a job its time limit ended
    CANCEL_PENDING_GRACEFUL = "CancelPending(graceful)"  # running steps finish, no new ones start
    DEPENDENCY = "Dependency"  # --dependency not met yet
    DEPENDENCY_NEVER_SATISFIED = "DependencyNeverSatisfied"  # --dependency can no longer be met (cancel it)
    ARRAY_TASK_LIMIT = "JobArrayTaskLimit"  # --array ...%N: N tasks of its array run already


class EndReason(enum.StrEnum):
    """Why a job's batch step ended, when not by its own exit (``Job.end_reason``)."""

    NONE = ""
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    FAILED = "FAILED"  # lost, launch failed, or released by its agent


class NodeState(enum.StrEnum):
    DOWN = "DOWN"
    DRAIN = "DRAIN"
    DRAINING = "DRAINING"
    IDLE = "IDLE"
    ALLOC = "ALLOC"
    MIX = "MIX"


class NodeReason(enum.StrEnum):
    """Why a node is drained or down, when the controller says so itself."""

    EPILOG_ERROR = "Epilog error"
    KILL_TASK_FAILED = "Kill task failed"
    NOT_RESPONDING = "Not responding"


class PreemptMode(enum.StrEnum):
    OFF = "OFF"
    CANCEL = "CANCEL"
    REQUEUE = "REQUEUE"
    SUSPEND = "SUSPEND"


class PreemptType(enum.StrEnum):
    NONE = "none"
    QOS = "qos"
    PARTITION = "partition"


class AdminLevel(enum.StrEnum):
    NONE = "none"
    OPERATOR = "operator"
    ADMIN = "admin"


class RegisterRefusal(enum.StrEnum):
    """Why the controller refuses an agent's frame (``RegisterAck.code``)."""

    UNKNOWN_NODE = "unknown_node"  # not in the configuration: do not retry fast
    REGISTER_AGAIN = "register_again"  # a frame on a route that never registered


class ControlAction(enum.StrEnum):
    """``Control.action`` (what ccontrol sends)."""

    UPDATE_NODE = "update_node"
    HOLD = "hold"
    RELEASE = "release"
    SUSPEND = "suspend"
    RESUME = "resume"
    REQUEUE = "requeue"
    UPDATE_JOB = "update_job"
    RECONFIGURE = "reconfigure"
