"""QueryJobs (cqueue: active jobs; cacct: finished ones) and QueryNodes
(cinfo): read-only answers, and the view of a job every CLI shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crane.core import messages as m
from crane.core import untrusted
from crane.core.job import Job, Step
from crane.core.selection import ArrayInfo, check_filters, expand_refs, matches
from crane.core.states import JobState
from crane.permissions import Caller
from crane.requests.port import ARGS, Reply, RequestPort

PREEMPTED = "Preempted"  # the start of a preempted job's reason ("Preempted by job 12"), kept as it is


def handle_jobs(port: RequestPort, caller: Caller, msg: m.QueryJobs, rid: str, reply: Reply) -> None:
    err = check_filters(msg.filters)
    f, err = (msg.filters, err) if err else untrusted.bound_filters(msg.filters)
    if err:
        reply(m.Error(ARGS, err))
        return
    if "jobs" in f or "array_tasks" in f:  # array ids stand for their tasks; A_T for one task
        refs = [(j, None, None) for j in f.get("jobs") or ()]
        refs += [(t[0], None, t[1]) for t in f.get("array_tasks") or ()]
        if not f.get("expand_arrays"):  # an id alone is that job only (what scripts and Cluster.job ask)
            refs = [r for r in refs if r[2] is not None]
        pairs, _missing = expand_refs(refs, array_info(port), active_only=False)
        f = {k: v for k, v in f.items() if k not in ("array_tasks", "expand_arrays")}
        f["jobs"] = frozenset(j for j, _ in pairs) | frozenset(f.get("jobs") or ())
    if not msg.history:
        reasons = port.pending_reasons()
        reply(m.Ok({"jobs": [job_view(j, scheduler_reason(j, reasons)) for j in port.active_jobs() if matches(j, f)]}))
        return

    def read() -> None:  # behind the writes queued so far: a job that just ended is there
        jobs = [Job.from_dict(d) for d in port.store.finished_jobs(f.get("jobs"), ended_after=f.get("ended_after"))]
        reply(m.Ok({"jobs": [job_view(j) for j in jobs if matches(j, f)]}))

    read_anyway = reply.guard(read)  # a failed write before it: the history on disk is still whole
    port.store.barrier(read_anyway, lambda _reason: read_anyway())


def array_info(port: RequestPort) -> Callable[[int], ArrayInfo | None]:
    """What an array reference needs of job ``i``: active or in the history."""

    def info(i: int) -> ArrayInfo | None:
        job = port.job(i)
        if job is not None:
            return job.array_job_id, job.array_task_id, job.array_task_count, True
        rec = port.store.get_job(i) if 0 < i < 2**63 else None
        if rec is None:
            return None
        return int(rec.get("array_job_id") or 0), rec.get("array_task_id"), int(rec.get("array_task_count") or 0), False

    return info


def scheduler_reason(job: Job, reasons: Any) -> str | None:
    """Why a pending job waits, as the scheduler sees it now; None: the
    job's own reason (held, preempted, or not pending)."""
    if job.state == JobState.PENDING and not job.held and not job.reason.startswith(PREEMPTED):
        return reasons.get(job.id)  # type: ignore[no-any-return]
    return None


def handle_nodes(port: RequestPort, caller: Caller, msg: m.QueryNodes, rid: str, reply: Reply) -> None:
    cfg = port.cfg
    parts = [{"name": p.name, "nodes": p.nodes, "priority": p.priority,
              "default": p.name == cfg.default_partition} for p in cfg.partitions.values()]  # fmt: skip
    reply(m.Ok({"partitions": parts, "nodes": port.node_snapshot()}))


def job_view(job: Job, reason: str | None = None) -> dict[str, Any]:
    c = job.cancel
    return {
        "job_id": job.id, "name": job.name, "user": job.user, "uid": job.uid,
        "account": job.account, "partition": job.partition, "qos": job.qos,
        "state": job.state, "reason": reason if reason is not None else job.reason,
        "nodes": list(job.nodes), "num_nodes": len(job.nodes) or job.nnodes,
        "cpus": job.cpus, "memory": job.memory, "time_limit": job.time_limit,
        "submit_time": job.submit_time, "start_time": job.start_time, "end_time": job.end_time,
        "exit_code": job.exit_code, "exit_signal": job.exit_signal, "priority": job.priority,
        "steps": [step_view(s, st) for s, st in sorted(job.steps.items())],
        "cancelled_by": c.by_name if c else None, "cancel_path": c.path if c else None,
        "message": c.message if c else "", "cancel_time": c.time if c else None,
        "requeue_count": job.requeue_count, "held": job.held, "exclusive": job.exclusive,
        "gres": gres_request(job.gpus_per_node, job.gpu_type),
        "gpu_alloc": {n: list(ix) for n, ix in job.gpu_alloc.items()},
        "stdout": job.stdout, "stderr": job.stderr, "work_dir": job.cwd,
        "array_job_id": job.array_job_id or None, "array_task_id": job.array_task_id,
        "job_label": f"{job.array_job_id}_{job.array_task_id}" if job.array_job_id else None,  # A_T of a task
        "array_limit": job.array_limit or None, "dependency": job.dependency, "comment": job.comment,
        "ntasks": job.ntasks, "ntasks_per_node": job.ntasks_per_node, "open_mode": job.open_mode,
        "signal": job.signal,
    }  # fmt: skip


def step_view(step_id: int, st: Step) -> dict[str, Any]:
    """A step as cqueue/cacct show it: who cancelled it by name only."""
    d = st.to_dict()
    d.pop("cancelled", None)
    return {"step_id": step_id, **d, "cancelled_by": (st.cancelled or {}).get("by_name")}


def gres_request(gpus: int, gpu_type: str) -> str:
    """A per-node GPU request as Slurm writes it: "gpu:2", "gpu:a100:2", "" for none."""
    if not gpus:
        return ""
    return f"gpu:{gpu_type}:{gpus}" if gpu_type else f"gpu:{gpus}"
