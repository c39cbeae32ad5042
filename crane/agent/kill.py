"""Ending steps early: a ``KillJob``, a time limit (and the ``--signal``
sent before it).

A kill of one step (``kill_step``): thaw it if suspended, SIGCONT, then
SIGTERM and a grace period (``KillJob.grace``: the controller's ``KillWait``,
or ``ccancel --grace``; 0 with ``--force``), then SIGKILL through the cgroup,
retried ``KILL_RETRIES`` times until the cgroup is empty. The step's end
report itself is ``cleanup``'s (the main process's exit, or for an adopted
step the cgroup emptying).

A kill of the whole job (``kill_job`` with no step) then releases the job on
this node (``cleanup.release_job``: epilog, ``JobReleased``). If processes
survived every retry the release says ``kill_failed`` and the controller
drains the node.

Signals, kills, freezes and thaws never wait on the event loop
(``offloop``: what can wait or scan runs in a thread), one at a time per
step (``StepRun.lock``: a SIGSTOP and the SIGCONT after it arrive in that
order). A cancel's banner is written
before the signals when there is a grace period (what the job prints in
its grace comes after it, as in Slurm); with none, beside the SIGKILL,
which does not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

import psutil

from crane.agent import as_user, cleanup, offloop
from crane.agent.steprun import StepRun, path_problem
from crane.core import messages as m
from crane.core.signals import JobSignal, job_signal
from crane.core.states import KillReason, StepEnd

if TYPE_CHECKING:
    from crane.agent.steps import StepManager

log = logging.getLogger("craned.steps")

KILL_RETRIES = 10
BANNER_TIMEOUT = 5.0  # a banner write that takes longer (a hung file system) is abandoned


async def kill_job(sm: StepManager, msg: m.KillJob) -> None:
    runs = sm.of_job(msg.job_id, msg.step_id)
    grace = 0.0 if msg.force else msg.grace
    if msg.banner and grace > 0:
        await asyncio.gather(*(write_banner(sm, r, msg.banner) for r in runs))
        runs = [r for r in runs if not r.reported]  # ended while the banner was written
    # a cancel (or preemption, or time limit) ends the steps CANCELLED; the
    # rest of a completed job, or an orphan, ends as its processes say
    reason = StepEnd.CANCELLED if msg.reason == KillReason.CANCELLED else StepEnd.NORMAL
    log.info("kill job %d step %s: %d steps, grace %.1fs, force %s", msg.job_id,
             "all" if msg.step_id is None else msg.step_id, len(runs), grace, msg.force)  # fmt: skip
    kills = [asyncio.ensure_future(kill_step(sm, r, grace, reason)) for r in runs]  # these first
    if msg.banner and grace == 0:  # beside the SIGKILL, which does not wait for it
        await asyncio.gather(*(write_banner(sm, r, msg.banner) for r in runs))
    results = await asyncio.gather(*kills)
    if msg.step_id is None:
        await cleanup.release_job(sm, msg, kill_failed=not all(results))


async def kill_step(sm: StepManager, run: StepRun, grace: float, reason: StepEnd) -> bool:
    """SIGCONT, SIGTERM, grace, SIGKILL through the cgroup; retry; True if empty."""
    if run.killing:
        if grace == 0:
            await offloop.kill(run.cg)  # escalation of a graceful kill in progress
        await run.done.wait()
        return True
    run.killing = True
    run.kill_reason = reason
    async with run.lock:
        if run.frozen:
            run.frozen = False
            await offloop.thaw(run.cg)
        await offloop.signal(run.cg, signal.SIGCONT)
        if grace > 0:
            run.grace_until = time.monotonic() + grace
            await offloop.signal(run.cg, signal.SIGTERM)
    if grace > 0:
        await run.wait_empty(grace)
    for _ in range(KILL_RETRIES):
        if run.status is not None and await offloop.empty(run.cg):
            break
        await offloop.kill(run.cg)
        if run.status is None and run.pid:
            try:  # our own unreaped child: the pid cannot have been reused
                os.kill(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if await run.wait_empty(0.5):
            break
    empty = await offloop.empty(run.cg)
    if run.adopted or run.pid == 0:
        if empty:  # no main process of ours to wait for: the empty cgroup is the end
            cleanup.report(sm, run, reason)
    else:
        try:  # the main process's exit reports (cleanup.finish)
            await asyncio.wait_for(run.done.wait(), 5.0 if empty else 0.1)
        except TimeoutError:
            pass
    return empty


async def step_signal(run: StepRun, sig: int) -> None:
    """``sig`` to every process of the step (``ccancel -s``), off the loop, in order."""
    async with run.lock:
        try:
            await offloop.signal(run.cg, sig)
        except OSError as e:
            log.warning("step %d.%d: signal %d: %s", run.job_id, run.step_id, sig, e)


async def set_frozen(run: StepRun, frozen: bool) -> None:
    """Freeze or thaw the step (``SuspendJob``), off the loop, unless a later
    order or a kill came first."""
    async with run.lock:
        if run.frozen != frozen or run.killing or run.reported:
            return
        try:
            await (offloop.urgent(run.cg.freeze) if frozen else offloop.thaw(run.cg))
        except OSError as e:
            log.warning("step %d.%d: %s: %s", run.job_id, run.step_id, "freeze" if frozen else "thaw", e)


def arm_timer(sm: StepManager, run: StepRun) -> None:
    """(Re-)arm the step's one timer from its spec: the ``--signal`` warning
    (``spec["signal"]``, SECS before the limit, unless already sent) and
    then the time limit (``spec["time_limit"]``, from the step's start). A
    time already passed fires at once. Needs a running loop."""
    if run.timer is not None:
        run.timer.cancel()
        run.timer = None
    spec = run.spec
    limit = spec.get("time_limit")
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not 0 < limit < float("inf"):
        return
    loop = asyncio.get_running_loop()
    end = (run.start or time.time()) + limit
    warning = None if spec.get("signal_sent") else job_signal(spec.get("signal"))
    if warning is not None:
        run.timer = loop.call_later(max(0.0, end - warning.secs - time.time()), on_signal_time, sm, run)
    else:
        run.timer = loop.call_later(max(0.0, end - time.time()), on_time_limit, sm, run)


def on_signal_time(sm: StepManager, run: StepRun) -> None:
    """``--signal``'s time (the batch step's timer, armed by ``arm_timer``):
    send it once (the record keeps that it was sent, for an agent restart;
    a requeued job's new run sends it again), then wait for the limit."""
    run.timer = None
    if run.reported or run.killing:
        return
    warning = job_signal(run.spec.get("signal"))
    if warning is not None:
        sm.background(send_job_signal(sm, run, warning))
    run.spec["signal_sent"] = True
    _save(sm, run, "signal sent")
    arm_timer(sm, run)


async def send_job_signal(sm: StepManager, run: StepRun, warning: JobSignal) -> None:
    """Send the job's ``--signal`` as Slurm does: with ``B:`` to the batch
    shell only (the script's process, not its children); without it to every
    other step of the job on this node (every process of each), not to the
    batch shell."""
    if warning.batch_only:
        shells = await offloop.urgent(batch_shell, run)
        for pid in shells:
            try:
                os.kill(pid, warning.signal)
            except (ProcessLookupError, PermissionError):
                pass
        log.info("job %d: signal %d sent to the batch shell (%s)", run.job_id, warning.signal,
                 ",".join(map(str, shells)) or "gone")  # fmt: skip
        return
    steps = [r for r in sm.of_job(run.job_id) if r.step_id != run.step_id and not r.reported]
    await asyncio.gather(*(step_signal(r, warning.signal) for r in steps))
    log.info("job %d: signal %d sent to %d step(s)", run.job_id, warning.signal, len(steps))


def batch_shell(run: StepRun) -> list[int]:
    """The process(es) the step's wrapper runs (``launch.WRAPPER``'s child:
    the batch script's shell), found in the step's cgroup. The wrapper is
    our child, or after an agent restart the step's process started as
    ``crane-step``."""
    procs: dict[int, psutil.Process] = {}
    for pid in run.cg.pids():
        try:
            procs[pid] = psutil.Process(pid)
        except psutil.Error:
            continue
    wrapper = run.pid if run.pid and run.status is None else 0
    if not wrapper:
        for pid, p in procs.items():
            try:
                argv = p.cmdline()
            except psutil.Error:
                continue
            if len(argv) > 3 and argv[1] == "-c" and argv[3] == "crane-step":
                wrapper = pid
                break
    out = []
    for pid, p in procs.items():
        try:
            if wrapper and pid != wrapper and p.ppid() == wrapper:
                out.append(pid)
        except psutil.Error:
            continue
    return sorted(out)


def on_time_limit(sm: StepManager, run: StepRun) -> None:
    """The step's timer (armed by ``arm_timer``)."""
    run.timer = None
    if not run.reported and not run.killing:
        log.info("step %d.%d exceeded its time limit", run.job_id, run.step_id)
        sm.background(time_out(sm, run))


def set_time_limit(sm: StepManager, msg: m.SetTimeLimit) -> None:
    """The job's time limit changed (``ccontrol update``): re-arm its batch
    step's timer, ``msg.seconds`` after the step's start (0: no limit), and
    its ``--signal`` warning if not sent yet. A time already passed fires at
    once."""
    for run in sm.of_job(msg.job_id, 1):
        if run.reported or run.killing:
            continue
        run.spec["time_limit"] = msg.seconds or None
        _save(sm, run, "new time limit")  # the new limit holds after a restart of the agent too
        arm_timer(sm, run)
        log.info("step %d.%d: time limit now %s", run.job_id, run.step_id, msg.seconds or "unlimited")


def _save(sm: StepManager, run: StepRun, what: str) -> None:
    from crane.agent.launch import save_record  # (launch imports this module)

    try:
        save_record(sm, run)
    except OSError as e:
        log.warning("step %d.%d: %s not saved: %s", run.job_id, run.step_id, what, e)


async def time_out(sm: StepManager, run: StepRun) -> None:
    await write_banner(sm, run, f"*** JOB {run.job_id} CANCELLED AT {_now()} DUE TO TIME LIMIT ***")
    await kill_step(sm, run, 0.0, StepEnd.TIMEOUT)


async def write_banner(sm: StepManager, run: StepRun, text: str) -> None:
    """Append ``text`` to the step's stderr file as the job's owner: the
    path is the user's, so root never opens it (a symlink or hard link
    planted there after the launch reaches only what the owner may write)."""
    spec = run.spec
    path = spec.get("stderr")
    if not path or not isinstance(path, str) or "uid" not in spec:
        return
    if path == os.devnull:
        return  # not a regular file: the owner's child would refuse it (as_user.append)
    if path_problem({"stderr": path}):
        log.info("banner of %d.%d not written: relative path %r", run.job_id, run.step_id, path)
        return
    who = as_user.owner_of(int(spec["uid"]), int(spec["gid"]), str(spec.get("user") or ""))
    data = (text + "\n").encode(errors="replace")
    try:  # (a fork holds the interpreter's lock: in a thread it would stall the loop all the same)
        pid = as_user.start(who, lambda: as_user.append(path, data, create=True))
    except OSError as e:
        log.warning("cannot write banner to %s: %s", path, e)
        return
    status = await cleanup.child_status(sm, pid, BANNER_TIMEOUT)
    why = "timed out" if status is None else as_user.exit_error(status)
    if why:
        log.info("cannot write banner to %s as uid %d: %s", path, who.uid, why)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
