"""Slurm's job state names and compact codes (pure): ``PREEMPTED`` for a job
a preemption cancelled, ``NODE_FAIL`` for one its node's failure ended,
sacct's ``CANCELLED by UID``, and the codes ``PD R CG CD CA F TO PR NF OOM``
(squeue %t, squeue -t, sacct -s)."""

from __future__ import annotations

import re

from crane.core.states import CancelPath, EndReason, JobState
from crane.slurm.layout import Rec, UidOf

#: Slurm's job states that Crane has no state of its own for (shown from the
#: job's CANCELLED/FAILED state and why it ended)
PREEMPTED = "PREEMPTED"
NODE_FAIL = EndReason.NODE_FAIL.value
REQUEUED = "REQUEUED"

#: Slurm's compact state codes (squeue %t, scancel/sacct -s)
STATE_CODES: dict[str, str] = {
    JobState.PENDING: "PD", JobState.RUNNING: "R", JobState.SUSPENDED: "S", JobState.COMPLETING: "CG",
    JobState.COMPLETED: "CD", JobState.CONFIGURING: "CF", JobState.CANCELLED: "CA", JobState.FAILED: "F",
    JobState.TIMEOUT: "TO", PREEMPTED: "PR", NODE_FAIL: "NF", JobState.OUT_OF_MEMORY: "OOM",
    "BOOT_FAIL": "BF", "DEADLINE": "DL", REQUEUED: "RQ", "REQUEUE_HOLD": "RH", "REQUEUE_FED": "RF",
    "RESV_DEL_HOLD": "RD", "RESIZING": "RS", "REVOKED": "RV", "SIGNALING": "SI", "SPECIAL_EXIT": "SE",
    "STAGE_OUT": "SO", "STOPPED": "ST",
}  # fmt: skip
#: code -> Slurm state name
CODE_STATES: dict[str, str] = {v: k for k, v in STATE_CODES.items()}

_NODE_DOWN = re.compile(r"^Node \S+ down$")


def job_state(j: Rec) -> str:
    """A job's (or step's) state as Slurm names it: PREEMPTED for a job
    ended by a preemption, NODE_FAIL for one its node's failure ended, else
    Crane's state (which are Slurm's names)."""
    st = str(j.get("state") or "")
    if st == JobState.CANCELLED and j.get("cancel_path") == CancelPath.PREEMPTION:
        return PREEMPTED
    if st == JobState.FAILED and (
        j.get("end_reason") == EndReason.NODE_FAIL or _NODE_DOWN.match(str(j.get("reason") or ""))
    ):
        return NODE_FAIL
    return st


def state_code(state: str) -> str:
    return STATE_CODES.get(state, state)


def canceller_uid(j: Rec, uid_of: UidOf) -> str | None:
    """The uid (as text) of who cancelled the job: ``cancelled_by_uid`` when
    the view has it, else the name's uid (``uid_of``), else the name."""
    uid = j.get("cancelled_by_uid")
    if uid is not None:
        return str(uid)
    name = j.get("cancelled_by")
    if not name:
        return None
    found = uid_of(str(name))
    return str(found) if found is not None else str(name)


def acct_state(j: Rec, uid_of: UidOf) -> str:
    """sacct's State: ``CANCELLED by 1001`` when someone cancelled it, else :func:`job_state`."""
    st = job_state(j)
    if st == JobState.CANCELLED:
        who = canceller_uid(j, uid_of)
        if who is not None:
            return f"{st} by {who}"
    return st


def parse_state_list(text: str) -> set[str]:
    """``-t/--states`` of squeue and ``-s/--state`` of sacct: names or
    compact codes, any case, comma-separated, ``ALL``: Slurm state names
    (ValueError on an unknown one)."""
    out: set[str] = set()
    for item in text.split(","):
        key = item.strip().upper()
        if not key:
            continue
        if key == "ALL":
            out |= set(STATE_CODES)
        elif key in STATE_CODES:
            out.add(key)
        elif key in CODE_STATES:
            out.add(CODE_STATES[key])
        elif key == "CANCELED":
            out.add(JobState.CANCELLED)
        else:
            raise ValueError(f"Invalid job state specified: {item.strip()}")
    return out
