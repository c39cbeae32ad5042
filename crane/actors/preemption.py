"""Preemption glue for the scheduler actor.

``try_preempt`` turns the scheduler's ledgers and the running jobs into the
pure planner's input (``crane.core.preempt.plan_preemption``), and, only when a
plan fits, reserves the planned nodes for the preemptor *before* any victim
is touched; then it tells each victim what its PreemptMode says (CANCEL,
REQUEUE or SUSPEND). If no plan fits, nothing is killed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from crane.core import events as ev
from crane.core.preempt import Candidate, NodeFree, Want, plan_preemption

log = logging.getLogger("crane.preemption")


def could_preempt(ctl: Any, req: Any) -> bool:
    """Cheap trigger check (seed conditions 1 and 2)."""
    cfg = ctl.cfg
    if cfg.preempt_type == "qos":
        q = ctl.acct.qos.get(req.qos)
        return bool(q and q.preempt)
    if cfg.preempt_type == "partition":
        mine = cfg.partitions[req.partition].priority
        return any(p.priority < mine for p in cfg.partitions.values())
    return False


def victim_mode(ctl: Any, job: Any) -> str:
    cfg = ctl.cfg
    if cfg.preempt_type == "partition":
        return cfg.partitions[job.partition].preempt_mode or cfg.preempt_mode
    q = ctl.acct.qos.get(job.qos)
    return q.effective_preempt_mode(cfg.preempt_mode) if q is not None else cfg.preempt_mode


def grace_time(ctl: Any, job: Any) -> float:
    if ctl.cfg.preempt_type == "partition":
        return float(ctl.cfg.partitions[job.partition].grace_time or 0)
    q = ctl.acct.qos.get(job.qos)
    return float(q.grace_time or 0) if q is not None else 0.0


def exempt_time(ctl: Any, job: Any) -> float:
    q = ctl.acct.qos.get(job.qos)
    if q is not None and q.preempt_exempt_time is not None:
        return float(q.preempt_exempt_time)
    return float(ctl.cfg.preempt_exempt_time)


def try_preempt(ctl: Any, req: Any, ledgers: dict[str, Any], members: list[str]) -> bool:
    if not could_preempt(ctl, req):
        return False
    cfg = ctl.cfg
    sched = ctl.scheduler
    now = time.time()
    my_part_prio = cfg.partitions[req.partition].priority
    preemptable = set(ctl.acct.qos[req.qos].preempt) if cfg.preempt_type == "qos" else set()
    allowed = [n for n in members if n not in sched.reserved_nodes]
    nodes = {
        n: NodeFree(n, led.cpus, led.memory, led.cpus_free, led.mem_free, led.usable(), led.exclusive_holder(),
                    list(led.gpu_types), sorted(led.gpus_free))
        for n, led in ledgers.items()
    }  # fmt: skip
    cands: list[Candidate] = []
    jobs_by_id = {}
    for actor in ctl.jobs.values():
        j = actor.job
        if j.state != "RUNNING" or j.cancel or not j.nodes:
            continue
        live = [n for n in j.nodes if n not in j.released]
        if not set(live) & set(allowed):
            continue
        q = ctl.acct.qos.get(j.qos)
        cands.append(Candidate(
            j.id, j.qos, q.priority if q else 0, cfg.partitions[j.partition].priority,
            j.start_time or now, live, j.cpus, j.memory, j.exclusive,
            {n: list(ix) for n, ix in j.gpu_alloc.items() if n in live},
            keeps_gpus=victim_mode(ctl, j) == "SUSPEND",
        ))  # fmt: skip
        jobs_by_id[j.id] = j

    def may_preempt(c: Candidate) -> bool:
        j = jobs_by_id[c.job_id]
        if victim_mode(ctl, j) == "OFF":
            return False
        if now - (j.start_time or now) < exempt_time(ctl, j):
            return False
        if cfg.preempt_type == "qos":
            return c.qos in preemptable
        return c.partition_priority < my_part_prio

    want = Want(req.job_id, req.cpus, req.memory, max(req.nnodes, len(req.nodelist)), req.exclusive,
                allowed, list(req.nodelist), req.gpus, req.gpu_type)  # fmt: skip
    plan = plan_preemption(want, nodes, cands, may_preempt)
    if plan is None or not plan.victims:
        return False
    # reserve first: no other job may take these nodes while the victims die
    sched.reserve(req.job_id, plan.nodes, plan.victims)
    reason = f"Preempted by job {req.job_id}"
    log.info("job %d preempts %s on %s", req.job_id, plan.victims, plan.nodes)
    ctl.metrics["preemptions"] += 1
    for vid in plan.victims:
        victim = jobs_by_id[vid]
        mode = victim_mode(ctl, victim)
        ctl.metrics["preempted_" + mode.lower()] += 1
        if mode == "SUSPEND":
            sched.lend(req.job_id, vid)
            ctl.job_event(vid, ev.ControlEv("suspend"))
            ctl.job_event(vid, ev.SetReason(reason))
        else:
            ctl.job_event(vid, ev.CancelEv(
                by_uid=0, by_name="preemption", path="preemption", message=reason,
                grace=grace_time(ctl, victim), requeue=mode == "REQUEUE", reason=reason,
            ))  # fmt: skip
    return True
