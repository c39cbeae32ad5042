"""The SLURM_* variables a step sees beside Crane's CRANE_* ones (pure):
scripts and tools written for Slurm read them. Owned by the runtime work
of issue 14; called from Job.step_spec with the step's full environment.

Each SLURM_* name is the value of a CRANE_* one (``SAME``, ``ALIASES``), so
the two never disagree; a few follow Slurm's rules on when they are set:

- ``SLURM_STEP_ID``/``SLURM_STEPID``: Slurm's step number (Crane's step 2 is
  Slurm's 0); unset in the batch script, as Slurm's batch step;
- ``SLURM_RESTART_COUNT``: only once the job was requeued (Slurm sets it
  only when not 0);
- ``SLURM_NTASKS_PER_NODE``: only with ``--ntasks-per-node``;
- ``SLURMD_NODENAME`` and ``SLURM_CLUSTER_NAME``: from ``CRANE_NODENAME``
  and ``CRANE_CLUSTER_NAME``, which the node agent adds (it knows both).

A name of these that the environment already holds (a job submitted from
inside another job inherits its SLURM_* variables) is dropped when it does
not apply to this step, so that no stale value reaches it.
"""

from __future__ import annotations

from typing import Any

# CRANE_X -> SLURM_X
SAME = (
    "JOB_ID", "JOB_NAME", "JOB_NODELIST", "NNODES", "NTASKS", "CPUS_PER_TASK", "CPUS_ON_NODE",
    "JOB_CPUS_PER_NODE", "TASKS_PER_NODE", "JOB_ACCOUNT", "JOB_PARTITION", "JOB_QOS", "JOB_USER",
    "JOB_UID", "JOB_GID", "SUBMIT_DIR", "SUBMIT_HOST", "MEM_PER_NODE", "MEM_PER_CPU",
    "ARRAY_JOB_ID", "ARRAY_TASK_ID", "ARRAY_TASK_COUNT", "ARRAY_TASK_MIN", "ARRAY_TASK_MAX",
    "ARRAY_TASK_STEP", "PROCID", "LOCALID", "NODEID", "CLUSTER_NAME",
    "STEP_NUM_TASKS", "STEP_NUM_NODES", "STEP_NODELIST", "STEP_TASKS_PER_NODE",
)  # fmt: skip
# CRANE_X -> more Slurm names of the same value (Slurm's older names)
ALIASES = {
    "JOB_ID": ("SLURM_JOBID",),
    "JOB_NODELIST": ("SLURM_NODELIST",),
    "NNODES": ("SLURM_JOB_NUM_NODES",),
    "NTASKS": ("SLURM_NPROCS",),
    "NODENAME": ("SLURMD_NODENAME",),
}
# every name this module sets (and so drops when it does not apply)
MANAGED = frozenset(
    [f"SLURM_{k}" for k in SAME]
    + [a for names in ALIASES.values() for a in names]
    + ["SLURM_STEP_ID", "SLURM_STEPID", "SLURM_RESTART_COUNT", "SLURM_NTASKS_PER_NODE",
       "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_JOB_DEPENDENCY"]
)  # fmt: skip
BATCH_STEP = 1  # Crane's batch step; its crun steps are numbered from 2 (Slurm's 0)


def slurm_env(env: dict[str, str], job: Any) -> dict[str, str]:
    """The SLURM_* variables for the CRANE_* ones in ``env`` (the step's full
    environment). Drops from ``env`` the inherited SLURM_* names this sets
    when they do not apply here (see the module's docstring)."""
    for name in MANAGED & env.keys():
        del env[name]
    out: dict[str, str] = {}
    for key in SAME:
        value = env.get(f"CRANE_{key}")
        if value is not None:
            out[f"SLURM_{key}"] = value
    for key, names in ALIASES.items():
        value = env.get(f"CRANE_{key}")
        if value is not None:
            out.update(dict.fromkeys(names, value))
    step = env.get("CRANE_STEP_ID", "")
    if step.isascii() and step.isdigit() and int(step) != BATCH_STEP:
        out["SLURM_STEP_ID"] = out["SLURM_STEPID"] = str(max(int(step) - 2, 0))
    restarts = env.get("CRANE_RESTART_COUNT", "0")
    if restarts not in ("", "0"):
        out["SLURM_RESTART_COUNT"] = restarts
    if int(getattr(job, "ntasks_per_node", 0) or 0) > 0 and "CRANE_NTASKS_PER_NODE" in env:
        out["SLURM_NTASKS_PER_NODE"] = env["CRANE_NTASKS_PER_NODE"]
    gpus = env.get("CRANE_GPUS", "")
    if gpus:
        out["SLURM_JOB_GPUS"] = gpus
        out["SLURM_GPUS_ON_NODE"] = str(len(gpus.split(",")))
    dependency = getattr(job, "dependency", "")
    if isinstance(dependency, str) and dependency:
        out["SLURM_JOB_DEPENDENCY"] = dependency
    return out


def tasks_per_node(nnodes: int, ntasks: int, ntasks_per_node: int) -> list[int]:
    """A job's tasks on each of its ``nnodes`` nodes (at least one node):
    ``--ntasks-per-node`` on each (at most ``-n`` in all), else ``-n`` spread
    as Slurm's block layout (the first nodes one more), else one per node."""
    nnodes = max(nnodes, 1)
    if ntasks_per_node > 0:
        total = min(ntasks, ntasks_per_node * nnodes) if ntasks > 0 else ntasks_per_node * nnodes
        return [max(min(ntasks_per_node, total - i * ntasks_per_node), 0) for i in range(nnodes)]
    if ntasks > 0:
        base, extra = divmod(ntasks, nnodes)
        return [base + (1 if i < extra else 0) for i in range(nnodes)]
    return [1] * nnodes


def repeat_counts(counts: list[int]) -> str:
    """``[2, 2, 1]`` -> ``"2(x2),1"``: Slurm's form of per-node counts
    (SLURM_TASKS_PER_NODE, SLURM_JOB_CPUS_PER_NODE)."""
    out: list[str] = []
    i = 0
    while i < len(counts):
        j = i
        while j + 1 < len(counts) and counts[j + 1] == counts[i]:
            j += 1
        out.append(str(counts[i]) if j == i else f"{counts[i]}(x{j - i + 1})")
        i = j + 1
    return ",".join(out)
