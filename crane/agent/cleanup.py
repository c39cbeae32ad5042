"""The end of a step, and the release of a job on this node.

A launched step: SIGCHLD -> ``reap`` -> ``main_exited`` (the status, from the
wait or from the wrapper's exit code) -> ``finish`` (kill what the main
process left behind, after the rest of a grace in progress) -> ``report``.
An adopted step (not our child): ``watch_adopted`` polls its cgroup and reads
the status the wrapper wrote to its rc file.

``report`` sends ``StepEnded`` once (after the step's last live output),
as soon as the step's processes are dead, and keeps it for re-registration
until the job is released; then (``reclaim``, off the event loop) the step's
cgroup, record and rc file are removed and the users file crane-pam-check
reads is rewritten.

``release_job`` (after a kill of the whole job): the epilog, ``JobReleased``,
then the job's cgroup directories and batch script removed (``reclaim``),
then the stray sweep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from crane.agent import offloop, reclaim, statedir
from crane.agent.steprun import (
    POLL,
    StepRun,
    rc_path,
    read_launch_error,
    record_path,
    script_path,
)
from crane.core import messages as m
from crane.core.states import StepEnd

if TYPE_CHECKING:
    from crane.agent.steps import StepManager

log = logging.getLogger("craned.steps")

DRAIN_TIMEOUT = 10.0  # a streamed step's last output is sent before its end, if within this
EPILOG_TIMEOUT = 120.0

# ------------------------------------------------------------ our children


def reap(sm: StepManager) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        cb = sm.children.pop(pid, None)
        if cb is not None:
            try:
                cb(status)
            except Exception:
                log.exception("exit callback for pid %d failed", pid)


async def child_status(sm: StepManager, pid: int, timeout: float, group: bool = False) -> int | None:
    """The wait status of our child ``pid`` (reaped by ``reap``), or None
    once ``timeout`` has passed (the child, or its process group, is then killed)."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    sm.children[pid] = lambda st: fut.done() or fut.set_result(st)
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        try:  # not reaped yet: the pid is still ours
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)
        except OSError:
            pass
        return None


# ------------------------------------------------------------ a step's end


def read_rc(sm: StepManager, job_id: int, step_id: int) -> int | None:
    """The wait status recorded by the wrapper, or None."""
    try:
        rc = int(statedir.read(rc_path(sm.state_dir, job_id, step_id), 64).strip())
    except (OSError, ValueError):
        return None
    return (rc - 128) if 128 < rc < 128 + 65 else (rc & 0xFF) << 8


def main_exited(sm: StepManager, run: StepRun, status: int) -> None:
    log.info("step %d.%d: main process exited (status %d)", run.job_id, run.step_id, status)
    read_launch_error(run)  # the child failed before its exec: why
    if run.launch_error:
        log.error("launch of %d.%d failed: %s", run.job_id, run.step_id, run.launch_error)
    if os.WIFEXITED(status) and 128 < os.WEXITSTATUS(status) < 128 + 65:
        status = os.WEXITSTATUS(status) - 128  # the wrapped command died of a signal
    run.status = status
    if run.timer:
        run.timer.cancel()
    sm.background(finish(sm, run))


async def finish(sm: StepManager, run: StepRun) -> None:
    """The main process is gone: kill what it left behind, then report."""
    if run.killing and not await offloop.empty(run.cg):
        # a kill with a grace period: what is left gets the rest of the grace
        # (kill.kill_step sends SIGKILL when it ends), e.g. a TERM trap of the script
        await run.wait_empty(max(0.0, run.grace_until - time.monotonic()) + 1.0)
    if not await offloop.empty(run.cg):
        await offloop.kill(run.cg)
        ok = await run.wait_empty(5.0)
        if not ok:
            log.error("step %d.%d: processes survive cgroup kill", run.job_id, run.step_id)
    reason = run.kill_reason
    if not reason and run.launch_error:
        reason = StepEnd.LAUNCH_FAILED
    elif not reason and run.cg.oom_killed():
        reason = StepEnd.OUT_OF_MEMORY
    report(sm, run, reason, run.launch_error if reason == StepEnd.LAUNCH_FAILED else "")


async def watch_adopted(sm: StepManager, run: StepRun) -> None:
    """Not our child: we cannot wait() for it; its cgroup emptying is the end.
    Once the wrapper recorded its status the main process is gone: what is
    left (background processes, an adopted ssh session) is killed, as
    ``finish`` does for a step we launched ourselves."""
    while not await offloop.empty(run.cg):
        if not run.killing and read_rc(sm, run.job_id, run.step_id) is not None:
            await offloop.kill(run.cg)
        await asyncio.sleep(0.5 if not run.killing else POLL)
    if not run.reported:
        if run.status is None:
            run.status = read_rc(sm, run.job_id, run.step_id)
        if run.status is None:  # ended without a trace while we were away
            run.status = 255 << 8
            report(sm, run, run.kill_reason or StepEnd.LOST)
        else:
            report(sm, run, run.kill_reason)


def report(sm: StepManager, run: StepRun, reason: StepEnd, detail: str = "", at_once: bool = False) -> None:
    """Once per step: StepEnded (``detail``: why a launch failed, one line),
    then the step's traces removed, off the loop (``at_once``: here and now,
    before the report: a launch that failed, whose caller is the launch)."""
    if run.reported:
        return
    run.reported = True
    log.info("step %d.%d ended (%s)", run.job_id, run.step_id, reason or "normal")
    status = run.status if run.status is not None else 0
    if os.WIFSIGNALED(status):
        code, sig = 0, os.WTERMSIG(status)  # Slurm style: ExitCode 0:9
    else:
        code, sig = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0, 0
    body = {"job_id": run.job_id, "step_id": run.step_id, "exit_code": code, "signal": sig,
            "reason": str(reason)}  # fmt: skip
    if detail:
        body["detail"] = detail
    sm.ended_step(run, body)
    files = [record_path(sm.state_dir, run.job_id, run.step_id), rc_path(sm.state_dir, run.job_id, run.step_id)]
    if at_once:
        for why in reclaim.attempt([reclaim.Item("", run.job_id, run.step_id, list(run.cg.paths.values()), files)]):
            if why:
                log.warning("step %d.%d: %s", run.job_id, run.step_id, why)
        sm.write_users()
    if run.pipes:  # the step's last output before its end (one link: order kept)
        sm.background(_end_after_output(sm, run, body, files, at_once))
    else:
        _ended(sm, run, body, files, at_once)


async def _end_after_output(sm: StepManager, run: StepRun, body: dict[str, Any], files: list[str],
                            done: bool) -> None:  # fmt: skip
    try:
        await asyncio.gather(*(p.drained(DRAIN_TIMEOUT) for p in run.pipes))
    finally:
        _ended(sm, run, body, files, done)


def _ended(sm: StepManager, run: StepRun, body: dict[str, Any], files: list[str], cleaned: bool) -> None:
    run.done.set()  # a kill of the job waits for it: JobReleased comes after StepEnded
    sm.send(m.StepEnded(**body))
    if not cleaned:  # the report first, then what the step leaves
        sm.reclaim.step(run.cg, files)
        sm.users.changed()


# ------------------------------------------------------------ a job's release


async def release_job(sm: StepManager, msg: m.KillJob, kill_failed: bool) -> None:
    """All the job's steps here have been killed: epilog, cleanup, JobReleased."""
    if msg.job_id in sm.releasing:
        return
    sm.releasing.add(msg.job_id)
    try:
        ok = True
        if sm.epilog and not msg.force and msg.job_id not in sm.released:
            ok = await run_epilog(sm, msg.env or {"CRANE_JOB_ID": str(msg.job_id)})
        owner = sm.released_job(msg.job_id)
        if not sm.runs_here(msg.job_id, None):  # (a new run of the job keeps its directories)
            sm.reclaim.job(msg.job_id, [script_path(sm.state_dir, msg.job_id)])
        log.info("job %d released (epilog ok %s, kill failed %s)", msg.job_id, ok, kill_failed)
        sm.send(m.JobReleased(msg.job_id, ok, kill_failed))
        # the job's cgroup directories and files, and the users file, before the
        # stray sweep (which reads the users files): one attempt, retries go on
        await sm.reclaim.settled(msg.job_id)
        await sm.users.flush()
        if owner is None and str((msg.env or {}).get("CRANE_JOB_UID", "")).isdigit():
            owner = int(msg.env["CRANE_JOB_UID"])
        if sm.on_release is not None:
            try:
                sm.on_release(msg.job_id, owner)
            except Exception:
                log.exception("after the release of job %d", msg.job_id)
    finally:
        sm.releasing.discard(msg.job_id)


async def run_epilog(sm: StepManager, env: dict[str, str]) -> bool:
    full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env, "CRANE_NODE": sm.node}
    try:
        pid = os.fork()
    except OSError as e:
        log.error("epilog fork failed: %s", e)
        return False
    if pid == 0:  # child
        try:
            os.setsid()
            os.execve(sm.epilog, [sm.epilog], full)
        finally:
            os._exit(127)
    status = await child_status(sm, pid, EPILOG_TIMEOUT, group=True)
    if status is None:
        log.error("epilog timed out")
        return False
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    if not ok:
        log.error("epilog failed with status %d", status)
    return ok
