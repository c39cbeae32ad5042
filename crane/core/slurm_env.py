"""The SLURM_* variables a step sees beside Crane's CRANE_* ones (pure):
scripts and tools written for Slurm read them. Owned by the runtime work
of issue 14; called from Job.step_spec with the step's full environment."""

from __future__ import annotations

from typing import Any


def slurm_env(env: dict[str, str], job: Any) -> dict[str, str]:
    """The SLURM_* names for the CRANE_* variables in ``env`` (to be filled in)."""
    return {}
