"""Job and step ids as Slurm shows them (pure).

Crane numbers a job's batch step 1 and its crun steps from 2; Slurm calls
the batch step ``batch`` and numbers srun steps from 0. So Crane step 1 is
``J.batch`` and Crane step ``s >= 2`` is ``J.(s-2)``; an array task is
``A_T`` (array id, task index) wherever a job id is shown or accepted."""

from __future__ import annotations

BATCH = "batch"
FIRST_STEP = 2  # Crane's first crun step: Slurm's step 0


def slurm_step(crane_step: int) -> str:
    """Crane's step number as Slurm names it: 1 -> "batch", 2 -> "0"."""
    return BATCH if crane_step == 1 else str(crane_step - FIRST_STEP)


def crane_step(slurm: str) -> int:
    """A Slurm step name as Crane's number: "batch" -> 1, "0" -> 2.
    ValueError if it is neither."""
    if slurm == BATCH:
        return 1
    if not slurm.isdigit() or len(slurm) > 9:
        raise ValueError(f"invalid step id: {slurm!r}")
    return int(slurm) + FIRST_STEP


def slurm_job_id(job_id: int, array_job_id: int = 0, array_task_id: int | None = None) -> str:
    """``A_T`` for an array task, else the job id."""
    if array_job_id and array_task_id is not None:
        return f"{array_job_id}_{array_task_id}"
    return str(job_id)
