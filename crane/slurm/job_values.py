"""Values of a job view that several Slurm commands print the same way
(pure): its Slurm id (``A_T`` for an array task), node list, Reason, total
CPUs and exit code."""

from __future__ import annotations

from crane.core.ids import compress_nodes
from crane.core.states import JobState, PendingReason
from crane.slurm.ids import slurm_job_id
from crane.slurm.layout import Rec


def job_id_text(j: Rec) -> str:
    """``A_T`` for an array task, else the job id."""
    return slurm_job_id(int(j["job_id"]), int(j.get("array_job_id") or 0), j.get("array_task_id"))


def nodes_text(j: Rec) -> str:
    return compress_nodes([str(n) for n in j.get("nodes") or [] if n])


def is_pending(j: Rec) -> bool:
    return j.get("state") == JobState.PENDING


#: Crane's pending reasons that Slurm has another word for
SLURM_REASONS = {PendingReason.WAITING_FOR_PREEMPTION.value: PendingReason.RESOURCES.value}


def reason_text(j: Rec) -> str:
    """Slurm's Reason: the pending job's reason (a preemptor waiting for
    its victims: ``Resources``), ``None`` otherwise (or when empty)."""
    r = str(j.get("reason") or "")
    if not r or (not is_pending(j) and j.get("state") in (JobState.RUNNING, JobState.CONFIGURING)):
        return "None"
    return SLURM_REASONS.get(r, r)


def nodelist_reason(j: Rec, now: float) -> str:
    if is_pending(j) or not j.get("nodes"):
        return f"({reason_text(j)})"
    return nodes_text(j)


def total_cpus(j: Rec) -> int:
    return int(j.get("cpus") or 0) * max(1, int(j.get("num_nodes") or 1))


def exit_code(r: Rec, now: float = 0.0) -> str:
    return f"{r.get('exit_code') or 0}:{r.get('exit_signal') or 0}"
