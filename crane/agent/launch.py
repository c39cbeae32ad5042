"""Starting a step: its cgroup, its state record, its process.

``launch`` handles a ``LaunchStep``: check the paths, create the step's
cgroup (memory limit, device rules), write the batch script, the step's
record and an empty exit-status file, then fork the wrapper into the cgroup
as the job's user (``launcher.spawn``). The agent answers ``StepStarted``,
or ``StepEnded(LAUNCH_FAILED)`` when any of this fails. A time limit arms a
timer (``kill.arm_timer``) that sends the job's ``--signal`` before it and
ends in ``kill.time_out``.

``adopt`` is the restart path: every step whose cgroup still exists is taken
back from its record and watched until its cgroup empties
(``cleanup.watch_adopted``).
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from crane.agent import cgroup as cgmod
from crane.agent import cleanup, devices, kill, statedir, tasks
from crane.agent import stream as streams
from crane.agent.launcher import spawn
from crane.agent.steprun import (
    StepRun,
    detail_line,
    path_problem,
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

# never passed on to a job, whatever the spec says (the agent's own names, past and present)
INTERNAL_ENV = frozenset({"CRANE_RC_FILE", "CRANE_SCOPE"})

# The step's main process is a shell that runs the command and records its exit
# status in a file owned by the job's user: a restarted agent (no longer the
# parent) still learns how an adopted step ended. Signals sent through the
# cgroup (ccancel --grace's SIGTERM, ccancel -s) reach the wrapper too: it
# catches every catchable one with a no-op handler (reset to default in the
# command, unlike an ignore) so that only the command decides what they do;
# otherwise the wrapper's death would end the step before its grace. The rc
# file's path is the wrapper's first argument, kept in a shell variable that
# is not exported: nothing of the agent's own reaches the job's environment.
_CATCH = " ".join(str(s) for s in range(1, 65) if s not in (9, 17, 18, 19))
# A streamed step's stdout/stderr pipes: the wrapper keeps a read end of each
# (fds 8, 9; not the command's) so that an agent's death does not kill the
# step by SIGPIPE, and a restarted agent reads on (crane.agent.stream.reattach).
# (silently: not a pipe, or no /proc; fd 7 is the stream while fd 2 is /dev/null)
_HOLD = "".join(f"{{ [ -p /proc/self/fd/7 ] && command exec {h}</proc/self/fd/7; }} 7>&{s} 2>/dev/null; "
                for s, h in ((1, 8), (2, 9)))  # fmt: skip
WRAPPER = f'__crane_rc=$1; shift; trap : {_CATCH}; {_HOLD}"$@" 8<&- 9<&-; rc=$?; echo $rc > "$__crane_rc"; exit $rc'



def launch(sm: StepManager, msg: m.LaunchStep) -> None:
    attempt = int(msg.spec.get("attempt") or 0)
    incarnation = msg.spec.get("incarnation") or ""  # the controller database's (crane.store)
    if sm.is_stale(msg.job_id, msg.step_id, attempt, incarnation):
        log.info("launch of %d.%d already done: ignored", msg.job_id, msg.step_id)
        return
    busy = sm.reclaim.in_progress(msg.job_id)
    if busy is not None:  # the job's directories are being removed right now: after that
        sm.deferred.add((msg.job_id, msg.step_id))
        sm.background(_launch_after(sm, msg, busy))
        return
    sm.launching(msg.job_id, attempt, incarnation)
    spec = msg.spec
    cg = cgmod.StepCgroup(sm.scope, msg.job_id, msg.step_id, sm.mode)
    run = StepRun(msg.job_id, msg.step_id, spec, cg, start=time.time())
    sm.add(run)
    try:
        run.pid = _start(sm, run)
    except Exception as e:
        log.error("launch of %d.%d failed: %s", msg.job_id, msg.step_id, e)
        run.status = 127 << 8
        cleanup.report(sm, run, StepEnd.LAUNCH_FAILED, detail_line(str(e)), at_once=True)
        return
    sm.children[run.pid] = lambda status, r=run: cleanup.main_exited(sm, r, status)
    sm.send(m.StepStarted(msg.job_id, msg.step_id, run.pid))
    if spec.get("time_limit"):
        kill.arm_timer(sm, run)  # the time limit, and the --signal warning before it


async def _launch_after(sm: StepManager, msg: m.LaunchStep, busy: asyncio.Future[Any]) -> None:
    try:
        await asyncio.shield(busy)
    except Exception:  # noqa: BLE001 - the cleanup's own failure is logged by it
        pass
    finally:
        sm.deferred.discard((msg.job_id, msg.step_id))
    launch(sm, msg)


def _start(sm: StepManager, run: StepRun) -> int:
    """Everything a launch does before the step runs; the main process's pid.
    Raises on any failure (the caller reports LAUNCH_FAILED)."""
    spec, cg = run.spec, run.cg
    problem = path_problem(spec)
    if problem:
        raise ValueError(problem)
    cg.create(spec.get("memory") or None)
    devices.apply(cg, spec)  # before any process joins the cgroup
    argv = list(spec.get("argv") or [])
    if spec.get("script"):
        argv = [_write_script(sm, run.job_id, spec)]
    argv = tasks.runner_argv(spec, argv)  # several tasks here, or -l: the fan-out runner (crane.agent.tasks)
    rc_file = _new_rc_file(sm, run.job_id, run.step_id, int(spec["uid"]), int(spec["gid"]))
    env = {k: v for k, v in dict(spec.get("env") or {}).items() if k not in INTERNAL_ENV}
    env.update(node_env(sm))
    flags = spec.get("stream") or []
    tty = streams.PTY in flags
    which = [s for s in (streams.STDIN, streams.STDOUT, streams.STDERR) if s in flags and not tty]
    fds = streams.open_pipes(run.job_id, run.step_id, which, (int(spec["uid"]), int(spec["gid"])))
    if tty:
        fds[streams.PTY] = _open_pty(int(spec["uid"]))
    # which pipes are the step's: reattach reopens only these (never what a user's process holds instead)
    spec["pipe_ids"] = streams.pipe_ids(fds)
    save_record(sm, run)
    # the child's reason if it fails before exec (an output file it cannot
    # open, ...): close-on-exec, so end of file means the exec happened
    err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        pid = spawn(
            cg, ["/bin/sh", "-c", WRAPPER, "crane-step", rc_file, *argv], uid=int(spec["uid"]),
            gid=int(spec["gid"]), user=str(spec["user"]), cwd=str(spec.get("cwd") or "/"), env=env,
            stdout=str(spec.get("stdout") or "/dev/null"), stderr=str(spec.get("stderr") or spec.get("stdout") or "/dev/null"),
            pipes=_child_ends(fds), error_fd=err_w, tty=tty, truncate=truncates_output(spec, run.step_id),
        )  # fmt: skip
    except BaseException:
        streams.close_all(fds)
        os.close(err_r)
        raise
    finally:
        os.close(err_w)
    run.exec_fd = err_r
    _watch_exec(run)
    for s, (r, w) in fds.items():
        if s == streams.STDIN:  # the step holds the read end; we write
            os.close(r)
            run.pipes.append(streams.Input(run.job_id, run.step_id, w, sm.try_send))
            continue
        os.close(w)  # the step holds the write ends: EOF once it and its children are gone
        if s == streams.PTY:  # the master: output as stream 1, input through a dup of it
            run.pipes.append(streams.Input(run.job_id, run.step_id, os.dup(r), sm.try_send, tty=True))
            s = streams.STDOUT
        run.pipes.append(streams.Pipe(run.job_id, run.step_id, s, r, sm.try_send, int(spec.get("node_index") or 0)))
    return pid


def node_env(sm: StepManager) -> dict[str, str]:
    """What only the node knows: its name and its cluster's (Slurm's
    SLURMD_NODENAME and SLURM_CLUSTER_NAME beside Crane's names)."""
    prefix, suffix = "crane/", "/" + sm.node
    cluster = sm.scope[len(prefix) : -len(suffix)] if sm.scope.startswith(prefix) and sm.scope.endswith(suffix) else ""
    env = {"CRANE_NODENAME": sm.node, "SLURMD_NODENAME": sm.node}
    if cluster:
        env.update(CRANE_CLUSTER_NAME=cluster, SLURM_CLUSTER_NAME=cluster)
    return env


def truncates_output(spec: dict[str, Any], step_id: int) -> bool:
    """``--open-mode=truncate``: the batch step's output files are emptied
    when the job's first run opens them; a requeued job's next runs append
    (as Slurm), and so do crun steps (they may share the job's files)."""
    return spec.get("open_mode") == "truncate" and step_id == 1 and not int(spec.get("attempt") or 0)


def _open_pty(uid: int) -> tuple[int, int]:
    """(master, slave) of a new pseudo-terminal for a ``pty`` step, the
    slave the step owner's (group tty, mode 0620, as a login's)."""
    master, slave = os.openpty()
    try:
        try:
            tty_gid = grp.getgrnam("tty").gr_gid
        except KeyError:
            tty_gid = -1
        os.fchown(slave, uid, tty_gid)
        os.fchmod(slave, 0o620)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def _child_ends(fds: dict[int, tuple[int, int]]) -> dict[int, int]:
    """The fds the step gets as 0, 1, 2 (``launcher.spawn``'s pipes)."""
    if streams.PTY in fds:
        slave = fds[streams.PTY][1]
        return {0: slave, 1: slave, 2: slave}
    ends = {s: w for s, (_r, w) in fds.items() if s != streams.STDIN}
    if streams.STDIN in fds:
        ends[0] = fds[streams.STDIN][0]
    return ends


def _watch_exec(run: StepRun) -> None:
    """Close the step's exec pipe as soon as it says something (a launch
    failure, kept for the report) or ends (the exec happened)."""
    try:
        asyncio.get_running_loop().add_reader(run.exec_fd, read_launch_error, run)
    except (RuntimeError, ValueError, OSError):
        pass  # no loop here (a direct call): main_exited reads it



def _new_rc_file(sm: StepManager, job_id: int, step_id: int, uid: int, gid: int) -> str:
    """A new empty file for the wrapper's exit status, owned by the job's
    owner (the wrapper writes it as the owner) in a directory only the
    agent writes to."""
    path = rc_path(sm.state_dir, job_id, step_id)
    statedir.write_new(path, b"", 0o600, uid, gid)
    return path


def _write_script(sm: StepManager, job_id: int, spec: dict[str, Any]) -> str:
    """The batch script, readable and executable by its owner (and root) only."""
    path = script_path(sm.state_dir, job_id)
    script = spec["script"]
    if not script.startswith("#!"):
        script = "#!/bin/sh\n" + script
    statedir.write_new(path, script.encode(), statedir.SCRIPT_MODE, int(spec["uid"]), int(spec["gid"]))
    return path


def save_record(sm: StepManager, run: StepRun) -> None:
    """The step's record, read back by ``adopt`` after a restart."""
    body = {"job_id": run.job_id, "step_id": run.step_id, "spec": run.spec, "start": run.start}
    statedir.replace(record_path(sm.state_dir, run.job_id, run.step_id), json.dumps(body).encode())
    sm.write_users()


def adopt(sm: StepManager) -> None:
    """After a restart: take back every step whose cgroup still exists."""
    for job_id, step_id in cgmod.existing_steps(sm.scope, sm.mode):
        try:
            saved = json.loads(statedir.read(record_path(sm.state_dir, job_id, step_id)))
            spec, start = saved["spec"], float(saved.get("start") or 0.0)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            spec, start = {}, 0.0
        if not isinstance(spec, dict):
            spec = {}
        cg = cgmod.StepCgroup(sm.scope, job_id, step_id, sm.mode)
        run = StepRun(job_id, step_id, spec, cg, start=start, adopted=True)
        sm.add(run)
        log.info("adopted step %d.%d (%d processes)", job_id, step_id, len(cg.pids()))
        streams.reattach(run, sm.try_send)  # a crun step's output pipes, kept by its wrapper
        if start > 0:
            try:  # its time limit (and --signal, unless sent) still holds: what is left of it
                kill.arm_timer(sm, run)
            except RuntimeError:
                pass  # no loop here (a direct call)
        sm.background(cleanup.watch_adopted(sm, run))
    sm.write_users()
