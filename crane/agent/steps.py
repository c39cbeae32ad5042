"""The node agent's steps: launch, reap, kill, suspend, report.

Every step lives in its own cgroup (``agent.cgroup``), which is the unit of
signalling and killing: processes that left the process group die too. A
step is reported ended only when its main process has exited AND its cgroup
is empty; a job is reported released only when all its steps on this node
have ended and the epilog has run (skipped by ``--force``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crane.agent import as_user, devices, statedir
from crane.agent import cgroup as cgmod
from crane.agent import stream as streams
from crane.agent.launcher import spawn
from crane.core import messages as m

log = logging.getLogger("craned.steps")
# The step's main process is a shell that runs the command and records its exit
# status in a file owned by the job's user: a restarted agent (no longer the
# parent) still learns how an adopted step ended. Signals sent through the
# cgroup (ccancel --grace's SIGTERM, ccancel -s) reach the wrapper too: it
# catches every catchable one with a no-op handler (reset to default in the
# command, unlike an ignore) so that only the command decides what they do;
# otherwise the wrapper's death would end the step before its grace.
_CATCH = " ".join(str(s) for s in range(1, 65) if s not in (9, 17, 18, 19))
WRAPPER = f'trap : {_CATCH}; "$@"; rc=$?; echo $rc > "$CRANE_RC_FILE"; exit $rc'

KILL_RETRIES = 10
POLL = 0.01
BANNER_TIMEOUT = 5.0  # a banner write that takes longer (a hung file system) is abandoned
DRAIN_TIMEOUT = 10.0  # a streamed step's last output is sent before its end, if within this


def path_problem(spec: dict[str, Any]) -> str:
    """Why the step's paths cannot be used, or ''. They must be absolute: a
    relative one would resolve against whatever directory the opener is in."""
    for key in ("cwd", "stdout", "stderr"):
        value = spec.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not os.path.isabs(value):
            return f"{key} is not an absolute path: {value!r}"
        if "\0" in value:
            return f"{key} contains a NUL byte"
    return ""


@dataclass(slots=True)
class StepRun:
    job_id: int
    step_id: int
    spec: dict[str, Any]
    cg: cgmod.StepCgroup
    pid: int = 0
    start: float = 0.0
    status: int | None = None  # raw wait status of the main process
    adopted: bool = False
    kill_reason: str = ""
    killing: bool = False
    grace_until: float = 0.0  # monotonic end of the grace of a kill in progress
    frozen: bool = False
    reported: bool = False
    timer: asyncio.TimerHandle | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    pipes: list[streams.Pipe] = field(default_factory=list)  # live output (crun)


class StepManager:
    def __init__(self, node: str, scope: str, state_dir: str, mode: str,
                 send: Callable[[m.Message], None], epilog: str = "",
                 try_send: Callable[[m.Message], bool] | None = None) -> None:  # fmt: skip
        self.node = node
        # a send that may be refused (the link's queue is full): live output only
        self.try_send = try_send or (lambda msg: send(msg) or True)
        self.scope = scope
        self.state_dir = state_dir
        self.mode = mode
        self.send = send
        self.epilog = epilog
        self.steps: dict[tuple[int, int], StepRun] = {}
        self.children: dict[int, Callable[[int], None]] = {}  # pid -> on exit(status)
        self.ended: dict[tuple[int, int], dict[str, Any]] = {}  # reports kept until the job is released
        self.released: dict[int, float] = {}  # recently released jobs
        self.attempt: dict[int, int] = {}  # job -> its latest run (requeue count) launched here
        self.releasing: set[int] = set()
        self.tasks: set[asyncio.Future[Any]] = set()
        self.owners: dict[int, int] = {}  # job -> its owner's uid, until the job is released here
        # called with (job, owner uid or None) once a job is released here (the stray sweep)
        self.on_release: Callable[[int, int | None], None] | None = None
        statedir.prepare(state_dir)  # raises StateDirError

    # ------------------------------------------------------------ reaping

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            cb = self.children.pop(pid, None)
            if cb is not None:
                try:
                    cb(status)
                except Exception:
                    log.exception("exit callback for pid %d failed", pid)

    # ------------------------------------------------------------ launch

    def launch(self, msg: m.LaunchStep) -> None:
        key = (msg.job_id, msg.step_id)
        attempt = int(msg.spec.get("attempt") or 0)
        stale = msg.job_id in self.released and attempt <= self.attempt.get(msg.job_id, 0)
        if key in self.steps or key in self.ended or stale:
            log.info("launch of %d.%d already done: ignored", *key)
            return
        self.released.pop(msg.job_id, None)  # a requeued job's next run
        self.attempt[msg.job_id] = attempt
        spec = msg.spec
        cg = cgmod.StepCgroup(self.scope, msg.job_id, msg.step_id, self.mode)
        run = StepRun(msg.job_id, msg.step_id, spec, cg, start=time.time())
        self.steps[key] = run
        if "uid" in spec:
            self.owners[msg.job_id] = int(spec["uid"])
        try:
            problem = path_problem(spec)
            if problem:
                raise ValueError(problem)
            cg.create(spec.get("memory") or None)
            devices.apply(cg, spec)  # before any process joins the cgroup
            argv = list(spec.get("argv") or [])
            if spec.get("script"):
                argv = [self._write_script(msg.job_id, spec)]
            self._save(run)
            rc_file = self._rc_file(msg.job_id, msg.step_id, int(spec["uid"]), int(spec["gid"]))
            env = {**dict(spec.get("env") or {}), "CRANE_RC_FILE": rc_file}
            which = [s for s in (streams.STDOUT, streams.STDERR) if s in (spec.get("stream") or [])]
            fds = streams.open_pipes(msg.job_id, msg.step_id, which)
            try:
                pid = spawn(
                    cg, ["/bin/sh", "-c", WRAPPER, "crane-step", *argv], uid=int(spec["uid"]),
                    gid=int(spec["gid"]), user=str(spec["user"]), cwd=str(spec.get("cwd") or "/"), env=env,
                    stdout=str(spec.get("stdout") or "/dev/null"), stderr=str(spec.get("stderr") or spec.get("stdout") or "/dev/null"),
                    pipes={s: w for s, (_r, w) in fds.items()},
                )  # fmt: skip
            except BaseException:
                streams.close_all(fds)
                raise
            for s, (r, w) in fds.items():
                os.close(w)  # the step holds the write ends: EOF once it and its children are gone
                run.pipes.append(streams.Pipe(msg.job_id, msg.step_id, s, r, self.try_send))
        except Exception as e:
            log.error("launch of %d.%d failed: %s", msg.job_id, msg.step_id, e)
            run.status = 127 << 8
            self._report(run, "LAUNCH_FAILED")
            return
        run.pid = pid
        self.children[pid] = lambda status, r=run: self._main_exited(r, status)
        self.send(m.StepStarted(msg.job_id, msg.step_id, pid))
        if spec.get("time_limit"):
            loop = asyncio.get_running_loop()
            run.timer = loop.call_later(float(spec["time_limit"]), self._timeout, run)

    def _background(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _rc_file(self, job_id: int, step_id: int, uid: int, gid: int) -> str:
        """A new empty file for the wrapper's exit status, owned by the job's
        owner (the wrapper writes it as the owner) in a directory only the
        agent writes to."""
        path = os.path.join(self.state_dir, "rc", f"{job_id}.{step_id}")
        statedir.write_new(path, b"", 0o600, uid, gid)
        return path

    def _read_rc(self, job_id: int, step_id: int) -> int | None:
        """The wait status recorded by the wrapper, or None."""
        try:
            rc = int(statedir.read(os.path.join(self.state_dir, "rc", f"{job_id}.{step_id}"), 64).strip())
        except (OSError, ValueError):
            return None
        return (rc - 128) if 128 < rc < 128 + 65 else (rc & 0xFF) << 8

    def _write_script(self, job_id: int, spec: dict[str, Any]) -> str:
        """The batch script, readable and executable by its owner (and root) only."""
        path = os.path.join(self.state_dir, "scripts", f"job_{job_id}.sh")
        script = spec["script"]
        if not script.startswith("#!"):
            script = "#!/bin/sh\n" + script
        statedir.write_new(path, script.encode(), statedir.SCRIPT_MODE, int(spec["uid"]), int(spec["gid"]))
        return path

    def _save(self, run: StepRun) -> None:
        path = os.path.join(self.state_dir, "steps", f"{run.job_id}.{run.step_id}.json")
        body = {"job_id": run.job_id, "step_id": run.step_id, "spec": run.spec, "start": run.start}
        statedir.replace(path, json.dumps(body).encode())
        self.write_users()

    def adopt(self) -> None:
        """After a restart: take back every step whose cgroup still exists."""
        for job_id, step_id in cgmod.existing_steps(self.scope, self.mode):
            path = os.path.join(self.state_dir, "steps", f"{job_id}.{step_id}.json")
            try:
                saved = json.loads(statedir.read(path))
                spec, start = saved["spec"], float(saved.get("start") or 0.0)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                spec, start = {}, 0.0
            cg = cgmod.StepCgroup(self.scope, job_id, step_id, self.mode)
            run = StepRun(job_id, step_id, spec, cg, start=start, adopted=True)
            if isinstance(spec, dict) and "uid" in spec:
                self.owners[job_id] = int(spec["uid"])
            self.steps[(job_id, step_id)] = run
            log.info("adopted step %d.%d (%d processes)", job_id, step_id, len(cg.pids()))
            asyncio.ensure_future(self._watch_adopted(run))
        self.write_users()

    async def _watch_adopted(self, run: StepRun) -> None:
        # not our child: we cannot wait() for it; its cgroup emptying is the end.
        # Once the wrapper recorded its status the main process is gone: what
        # is left (background processes, an adopted ssh session) is killed, as
        # _finish does for a step we launched ourselves.
        while not run.cg.empty():
            if not run.killing and self._read_rc(run.job_id, run.step_id) is not None:
                run.cg.kill()
            await asyncio.sleep(0.5 if not run.killing else POLL)
        if not run.reported:
            if run.status is None:
                run.status = self._read_rc(run.job_id, run.step_id)
            if run.status is None:  # ended without a trace while we were away
                run.status = 255 << 8
                self._report(run, run.kill_reason or "LOST")
            else:
                self._report(run, run.kill_reason)

    # ------------------------------------------------------------ ends

    def _main_exited(self, run: StepRun, status: int) -> None:
        log.info("step %d.%d: main process exited (status %d)", run.job_id, run.step_id, status)
        if os.WIFEXITED(status) and 128 < os.WEXITSTATUS(status) < 128 + 65:
            status = os.WEXITSTATUS(status) - 128  # the wrapped command died of a signal
        run.status = status
        if run.timer:
            run.timer.cancel()
        asyncio.ensure_future(self._finish(run))

    async def _finish(self, run: StepRun) -> None:
        """The main process is gone: kill what it left behind, then report."""
        if run.killing and not run.cg.empty():
            # a kill with a grace period: what is left gets the rest of the grace
            # (_kill_step sends SIGKILL when it ends), e.g. a TERM trap of the script
            await self._wait_empty(run, max(0.0, run.grace_until - time.monotonic()) + 1.0)
        if not run.cg.empty():
            run.cg.kill()
            ok = await self._wait_empty(run, 5.0)
            if not ok:
                log.error("step %d.%d: processes survive cgroup kill", run.job_id, run.step_id)
        reason = run.kill_reason
        if not reason and run.cg.oom_killed():
            reason = "OUT_OF_MEMORY"
        self._report(run, reason)

    def _report(self, run: StepRun, reason: str) -> None:
        if run.reported:
            return
        run.reported = True
        log.info("step %d.%d ended (%s)", run.job_id, run.step_id, reason or "normal")
        status = run.status if run.status is not None else 0
        if os.WIFSIGNALED(status):
            code, sig = 0, os.WTERMSIG(status)  # Slurm style: ExitCode 0:9
        else:
            code, sig = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0, 0
        if reason == "CANCELLED_STEP":
            reason = "CANCELLED"
        body = {"job_id": run.job_id, "step_id": run.step_id, "exit_code": code, "signal": sig, "reason": reason}
        self.ended[(run.job_id, run.step_id)] = body
        self.steps.pop((run.job_id, run.step_id), None)
        run.cg.remove()
        for path in (f"steps/{run.job_id}.{run.step_id}.json", f"rc/{run.job_id}.{run.step_id}"):
            try:
                os.unlink(os.path.join(self.state_dir, path))
            except OSError:
                pass
        self.write_users()
        if run.pipes:  # the step's last output before its end (one link: order kept)
            self._background(self._end_after_output(run, body))
        else:
            run.done.set()
            self.send(m.StepEnded(**body))

    async def _end_after_output(self, run: StepRun, body: dict[str, Any]) -> None:
        try:
            await asyncio.gather(*(p.drained(DRAIN_TIMEOUT) for p in run.pipes))
        finally:
            run.done.set()  # a kill of the job waits for it: JobReleased comes after StepEnded
            self.send(m.StepEnded(**body))

    def _timeout(self, run: StepRun) -> None:
        if not run.reported and not run.killing:
            log.info("step %d.%d exceeded its time limit", run.job_id, run.step_id)
            self._background(self._time_out(run))

    async def _time_out(self, run: StepRun) -> None:
        await self._write_banner(run, f"*** JOB {run.job_id} CANCELLED AT {_now()} DUE TO TIME LIMIT ***")
        await self._kill_step(run, 0.0, "TIMEOUT")

    # ------------------------------------------------------------ kill

    async def _wait_empty(self, run: StepRun, timeout: float) -> bool:
        """Poll the cgroup with a deadline: fast at first (a cgroup kill
        empties it in a few ms), backing off to POLL."""
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while not run.cg.empty():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL)
        return True

    async def _kill_step(self, run: StepRun, grace: float, reason: str) -> bool:
        """SIGCONT, SIGTERM, grace, SIGKILL through the cgroup; retry; True if empty."""
        if run.killing:
            if grace == 0:
                run.cg.kill()  # escalation of a graceful kill in progress
            await run.done.wait()
            return True
        run.killing = True
        run.kill_reason = reason
        if run.frozen:
            run.cg.thaw()
            run.frozen = False
        run.cg.signal(signal.SIGCONT)
        if grace > 0:
            run.grace_until = time.monotonic() + grace
            run.cg.signal(signal.SIGTERM)
            await self._wait_empty(run, grace)
        for _ in range(KILL_RETRIES):
            if run.cg.empty() and run.status is not None:
                break
            run.cg.kill()
            if run.status is None and run.pid:
                try:  # our own unreaped child: the pid cannot have been reused
                    os.kill(run.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if await self._wait_empty(run, 0.5):
                break
        empty = run.cg.empty()
        if run.adopted or run.pid == 0:
            if empty:
                self._report(run, reason)
        else:
            try:
                await asyncio.wait_for(run.done.wait(), 5.0 if empty else 0.1)
            except TimeoutError:
                pass
        return empty

    async def kill_job(self, msg: m.KillJob) -> None:
        runs = [r for (j, s), r in list(self.steps.items()) if j == msg.job_id and (msg.step_id is None or s == msg.step_id)]
        grace = 0.0 if msg.force else msg.grace
        if msg.banner:
            await asyncio.gather(*(self._write_banner(r, msg.banner) for r in runs))
            runs = [r for r in runs if not r.reported]  # ended while the banner was written
        reason = "CANCELLED" if msg.reason == "CANCELLED" else ""
        log.info("kill job %d step %s: %d steps, grace %.1fs, force %s", msg.job_id,
                 "all" if msg.step_id is None else msg.step_id, len(runs), grace, msg.force)  # fmt: skip
        results = await asyncio.gather(*(self._kill_step(r, grace, reason) for r in runs))
        failed = not all(results)
        if msg.step_id is not None:
            return
        if msg.job_id in self.releasing:
            return
        self.releasing.add(msg.job_id)
        try:
            ok = True
            if self.epilog and not msg.force and msg.job_id not in self.released:
                ok = await self.run_epilog(msg.env or {"CRANE_JOB_ID": str(msg.job_id)})
            cgmod.remove_job(self.scope, msg.job_id, self.mode)
            for key in [k for k in self.ended if k[0] == msg.job_id]:
                del self.ended[key]
            self.released[msg.job_id] = time.time()
            if len(self.released) > 10_000:
                for j in sorted(self.released, key=self.released.__getitem__)[:5_000]:
                    del self.released[j]
                    self.attempt.pop(j, None)
            try:
                os.unlink(os.path.join(self.state_dir, "scripts", f"job_{msg.job_id}.sh"))
            except OSError:
                pass
            log.info("job %d released (epilog ok %s, kill failed %s)", msg.job_id, ok, failed)
            self.send(m.JobReleased(msg.job_id, ok, failed))
            owner = self.owners.pop(msg.job_id, None)
            if owner is None and str((msg.env or {}).get("CRANE_JOB_UID", "")).isdigit():
                owner = int(msg.env["CRANE_JOB_UID"])
            if self.on_release is not None:
                try:
                    self.on_release(msg.job_id, owner)
                except Exception:
                    log.exception("after the release of job %d", msg.job_id)
        finally:
            self.releasing.discard(msg.job_id)

    async def _write_banner(self, run: StepRun, text: str) -> None:
        """Append ``text`` to the step's stderr file as the job's owner: the
        path is the user's, so root never opens it (a symlink or hard link
        planted there after the launch reaches only what the owner may write)."""
        spec = run.spec
        path = spec.get("stderr")
        if not path or not isinstance(path, str) or "uid" not in spec:
            return
        if path_problem({"stderr": path}):
            log.info("banner of %d.%d not written: relative path %r", run.job_id, run.step_id, path)
            return
        who = as_user.owner_of(int(spec["uid"]), int(spec["gid"]), str(spec.get("user") or ""))
        data = (text + "\n").encode(errors="replace")
        try:
            pid = as_user.start(who, lambda: as_user.append(path, data, create=True))
        except OSError as e:
            log.warning("cannot write banner to %s: %s", path, e)
            return
        status = await self._child_status(pid, BANNER_TIMEOUT)
        why = "timed out" if status is None else as_user.exit_error(status)
        if why:
            log.info("cannot write banner to %s as uid %d: %s", path, who.uid, why)

    async def _child_status(self, pid: int, timeout: float) -> int | None:
        """The wait status of our child ``pid`` (reaped by ``reap``), or None
        once ``timeout`` has passed (the child is then killed)."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.children[pid] = lambda st: fut.done() or fut.set_result(st)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            try:
                os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still ours
            except ProcessLookupError:
                pass
            return None

    async def run_epilog(self, env: dict[str, str]) -> bool:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env, "CRANE_NODE": self.node}
        try:
            pid = os.fork()
        except OSError as e:
            log.error("epilog fork failed: %s", e)
            return False
        if pid == 0:  # child
            try:
                os.setsid()
                os.execve(self.epilog, [self.epilog], full)
            finally:
                os._exit(127)
        self.children[pid] = lambda st: fut.done() or fut.set_result(st)
        try:
            status = await asyncio.wait_for(fut, 120)
        except TimeoutError:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            log.error("epilog timed out")
            return False
        ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if not ok:
            log.error("epilog failed with status %d", status)
        return ok

    # ------------------------------------------------------------ signal / suspend

    def signal_job(self, msg: m.SignalJob) -> None:
        for (j, s), r in self.steps.items():
            if j == msg.job_id and (msg.step_id is None or s == msg.step_id):
                r.cg.signal(msg.signal)

    def suspend_job(self, msg: m.SuspendJob) -> None:
        for (j, _s), r in self.steps.items():
            if j == msg.job_id:
                if msg.suspend:
                    r.cg.freeze()
                else:
                    r.cg.thaw()
                r.frozen = msg.suspend

    # ------------------------------------------------------------ ssh access

    def write_users(self) -> None:
        """The uids with a running step here, for crane-pam-check."""
        uids = sorted({int(r.spec["uid"]) for r in self.steps.values() if "uid" in r.spec})
        path = os.path.join(self.state_dir, "users")
        try:
            statedir.replace(path, "".join(f"{u}\n" for u in uids).encode())
        except OSError as e:
            log.warning("cannot write %s: %s", path, e)

    def has_step(self, uid: int) -> bool:
        """Whether ``uid`` has a step running here."""
        return any(int(r.spec.get("uid", -1)) == uid for r in self.steps.values())

    def running(self) -> list[list[int]]:
        return [[j, s] for (j, s) in self.steps]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
