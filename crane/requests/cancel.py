"""Cancel (ccancel) and WaitJobs (ccancel --wait, cbatch --wait).

Cancel: one request in, the selection made here (never one request per job
from the client), permissions checked per job, the cancel events told to
each job, and the answer sent only once every cancel intent is on disk."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

from crane.core import events as ev
from crane.core import messages as m
from crane.core import untrusted
from crane.core.job import Job
from crane.core.selection import Selection, check_filters, expand_refs, select
from crane.core.states import AdminLevel, CancelPath, EndState, JobState
from crane.permissions import Caller
from crane.requests.port import ARGS, REFUSED, Reply, RequestPort
from crane.requests.query import array_info

MAX_MESSAGE = 320
SIGNALLABLE = (JobState.RUNNING, JobState.SUSPENDED)


def handle(port: RequestPort, caller: Caller, req: m.Cancel, rid: str, reply: Reply) -> None:
    """Answered once, after the intents are persisted."""
    with gc_paused():  # 100,000 jobs make as many small objects: no collection over every job meanwhile
        _handle(port, caller, req, rid, reply)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _handle(port: RequestPort, caller: Caller, req: m.Cancel, rid: str, reply: Reply) -> None:
    err = validate(req)
    filters, err = (req.filters, err) if err else untrusted.bound_filters(req.filters)
    if err:
        reply(m.Error(ARGS, err))
        return
    # ids [job, step]; filter array_tasks [array, task(, step)] (A_T[.S]); an array id alone: each active task
    filters = dict(filters)
    tasks = filters.pop("array_tasks", None) or []
    refs = [(int(a), b, None) for a, b in req.ids]  # type: ignore[arg-type]
    refs += [(t[0], t[2] if len(t) == 3 else None, t[1]) for t in tasks]
    ids, missing = expand_refs(refs, array_info(port)) if refs else ([], [])
    # ids that all named nothing select nothing (never every job the filters allow)
    sel = Selection() if refs and not ids else select(
        ids,
        filters,
        active=port.job,
        all_active=port.active_jobs,
        finished_state=port.finished_state,
        may_act=lambda job: port.may_act(caller, job),
        sees_all=caller.admin_level != AdminLevel.NONE,
    )  # fmt: skip
    refused: list[dict[str, Any]] = [{"job_id": j, "step_id": s, "reason": r} for j, s, r in missing]
    refused += [{"job_id": j, "step_id": s, "reason": r} for j, s, r in sel.refused]
    if req.dry_run:
        reply(m.Ok({
            "dry_run": True,
            "would_cancel": [describe(j) for j in sel.jobs],
            "would_cancel_steps": [{**describe(j), "step_id": s} for j, s in sel.steps],
            "not_cancelled": refused,
        }))  # fmt: skip
        return
    # whole jobs (steps []: one shared empty list) and jobs with steps, each job once
    cancelled: dict[int, list[int]] = {}
    path = CancelPath.USER if caller.admin_level == AdminLevel.NONE else CancelPath.ADMIN
    if req.grace is None:  # --grace overrides KillWait for this request (SPEC §3, §5)
        req.grace = float(port.cfg.kill_wait)
    whole = cancel_event(caller, req, rid, path, None, reply.cause)  # one event object, read-only, for every job
    no_steps: list[int] = []
    job_event = port.job_event
    for job in sel.jobs:
        if req.signal is not None and job.state not in SIGNALLABLE:
            refused.append({"job_id": job.id, "step_id": None, "reason": f"Job is {job.state}, not running"})
            continue
        cancelled.setdefault(job.id, no_steps)
        job_event(job.id, whole)
    for job, step_id in sel.steps:
        steps = cancelled.get(job.id)
        if steps is None or steps is no_steps:
            steps = cancelled[job.id] = []
        steps.append(step_id)
        port.job_event(job.id, cancel_event(caller, req, rid, path, step_id, reply.cause))
    port.metrics["cancel_requests"] += 1
    port.metrics["jobs_cancelled"] += len(cancelled)
    result = {
        "cancelled": [{"job_id": j, "steps": sorted(s) if (s := cancelled[j]) else s} for j in sorted(cancelled)],
        "not_cancelled": refused,
        "dry_run": False,
        "signal": req.signal,
    }
    # the jobs persist their intent as they handle the events told above;
    # the answer waits for those writes to be committed
    port.after_persisted(reply.guard(lambda: reply(m.Ok(result))), reply.unsaved("the cancel"))


def validate(req: m.Cancel) -> str | None:
    if not req.ids and not req.filters:
        return "at least one job id or filter is required"
    for item in req.ids:
        if len(item) != 2 or not isinstance(item[0], int) or item[0] <= 0:
            return "invalid job id"
        if item[1] is not None and (not isinstance(item[1], int) or item[1] <= 0):
            return "invalid step id"
    err = check_filters(req.filters)
    if err:
        return err
    if req.force and req.graceful:
        return "--force and --graceful cannot be used together"
    if req.signal is not None and (req.graceful or req.end_state != EndState.CANCELLED):
        return "--signal cannot be combined with --graceful or --end-state"
    if req.signal is not None and not 1 <= req.signal <= 64:
        return f"invalid signal {req.signal}"
    if req.end_state not in (EndState.CANCELLED, EndState.FINISHED):
        return f'invalid end state "{req.end_state}": use CANCELLED or FINISHED'
    if req.grace is not None and not 0 <= req.grace <= 86400:
        return "--grace must be between 0 and 86400 seconds"
    if len(req.message) > MAX_MESSAGE:
        return f"--message is longer than {MAX_MESSAGE} characters"
    if untrusted.has_control(req.message):  # stored, shown to others, written into the job's stderr
        return "message contains a control character"
    return None


def describe(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "name": job.name, "partition": job.partition, "state": job.state,
            "user": job.user}  # fmt: skip


def cancel_event(caller: Caller, req: m.Cancel, rid: str, path: CancelPath, step_id: int | None,
                 cause: int) -> ev.CancelEv:  # fmt: skip
    return ev.CancelEv(
        by_uid=caller.uid, by_name=caller.name, path=path, step_id=step_id,
        message=req.message, force=req.force, graceful=req.graceful, grace=req.grace,
        end_state=req.end_state, signal=req.signal, rid=rid, cause=cause,
    )  # fmt: skip


# ---------------------------------------------------------------- WaitJobs


def handle_wait(port: RequestPort, caller: Caller, msg: m.WaitJobs, rid: str, reply: Reply) -> None:
    """Only on jobs the caller may act on (their own; any a coordinator,
    operator or admin may cancel); bounded per user (crane.actors.waits)."""
    for j in set(msg.job_ids):
        job = port.job(j)
        if job is not None and not port.may_act(caller, job):
            reply(m.Error(REFUSED, f"Job {j}: Permission denied"))
            return
    err = port.wait_jobs(caller.uid, msg.job_ids, reply.guard(lambda: reply(m.Ok())), reply.alive)
    if err:
        reply(m.Error(ARGS, err))
