"""After a user's last job on a host ends, end that user's processes left
outside any job (a nohup, a daemonised server, a tmux): SIGTERM, then SIGKILL
after ``KillWait``, like the seed's "Process Termination".

"Outside any job": no line of ``/proc/PID/cgroup`` names a job cgroup
(``/crane/<cluster>/<node>/job_<id>/...`` at the top of a hierarchy), of any
Crane cluster on this host, so jobs and adopted ssh sessions are never
touched. "Last job": no running step of the user on this agent, in the users
file of any other agent under the same state directory, nor any process of
the user inside a job cgroup on this host. Root, system accounts (uid below
``SweepMinUid``) and ``ExemptUsers`` are never swept.

A process is pinned with a pidfd before it is checked again and signalled,
so a pid reused between the scan and the signal is never hit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import signal
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from crane.core import messages as m

log = logging.getLogger("craned.sweep")
_JOB = re.compile(r"^job_-?\d+$")
KILL_ROUNDS_FOR = 5.0  # seconds of SIGKILL rounds after the SIGTERM wait
POLL = 0.05


# ---------------------------------------------------------------- pure


def in_job(cgroup_text: str) -> bool:
    """Whether a ``/proc/PID/cgroup`` text puts the process in a Crane job
    (any cluster, any hierarchy). Only paths at the top of a hierarchy count
    (``/crane/...``): a user may create cgroups under a delegated subtree,
    never at the root, so a process cannot pose as a job's."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        comps = [c for c in parts[2].split("/") if c]
        if len(comps) >= 2 and comps[0] == "crane" and any(_JOB.match(c) for c in comps[1:]):
            return True
    return False


def status_uid(status_text: str) -> int | None:
    """The real uid in a ``/proc/PID/status`` text."""
    for line in status_text.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def is_dead(status_text: str) -> bool:
    """A zombie (or dying) process: nothing left to signal."""
    for line in status_text.splitlines():
        if line.startswith("State:"):
            fields = line.split()
            return len(fields) > 1 and fields[1] in ("Z", "X")
    return False


def select(procs: Iterable[tuple[int, str]], uid: int, cgroup_of: Callable[[int], str | None],
           exclude: Collection[int] = ()) -> tuple[list[int], int]:  # fmt: skip
    """(pids of ``uid``'s live processes outside any job, count of its
    processes inside a job). ``procs``: (pid, status text)."""
    strays, in_jobs = [], 0
    for pid, status in procs:
        if pid in exclude or status_uid(status) != uid or is_dead(status):
            continue
        cg = cgroup_of(pid)
        if cg is None:  # gone meanwhile
            continue
        if in_job(cg):
            in_jobs += 1
        else:
            strays.append(pid)
    return sorted(strays), in_jobs


def exempt(uid: int, name: str, min_uid: int, exempt_users: Collection[str]) -> str:
    """Why ``uid`` is never swept nor adopted, or ''."""
    if uid == 0:
        return "root"
    if uid < min_uid:
        return f"system account (uid below SweepMinUid {min_uid})"
    if name in exempt_users:
        return "listed in ExemptUsers"
    return ""


# ---------------------------------------------------------------- /proc


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read(65536)
    except OSError:
        return None


def _procs() -> Iterator[tuple[int, str]]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            status = _read(f"/proc/{name}/status")
            if status is not None:
                yield int(name), status


def scan(uid: int) -> tuple[list[int], int]:
    """(strays, processes in jobs) of ``uid`` on this host now."""
    return select(_procs(), uid, lambda pid: _read(f"/proc/{pid}/cgroup"), exclude=(os.getpid(),))


def signal_stray(pid: int, uid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` if it still is a stray of ``uid``. The process
    is pinned first (pidfd), then checked again: a reused pid is not hit."""
    fd = None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        fd = None  # no pidfd here: check and signal by pid
    try:
        status, cg = _read(f"/proc/{pid}/status"), _read(f"/proc/{pid}/cgroup")
        if status is None or cg is None or status_uid(status) != uid or is_dead(status) or in_job(cg):
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except OSError as e:
        log.warning("cannot send signal %d to pid %d: %s", sig, pid, e)
        return False
    finally:
        if fd is not None:
            os.close(fd)


def stop_all_of(uid: int) -> None:
    """SIGSTOP every process of ``uid`` at once, so that a stray that forks all
    the time cannot outrun a scan (red team: a fork chain dodged the sweep).
    A child becomes ``uid`` and calls kill(-1): the kernel signals the whole
    task list in one walk, which forks cannot slip past, and a stopped process
    does not fork. Processes of ``uid`` found in a job afterwards get SIGCONT
    (``continue_in_jobs``)."""
    pid = os.fork()
    if pid == 0:  # child: syscalls only, then _exit
        code = 1
        try:
            os.setgroups([])
            os.setresuid(uid, uid, uid)
            try:
                os.kill(-1, signal.SIGSTOP)
            except ProcessLookupError:
                pass  # nothing of uid's left
            code = 0
        finally:
            os._exit(code)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # the agent's reaper took it: it has exited


def continue_in_jobs(uid: int) -> None:
    """SIGCONT the processes of ``uid`` that are in a job (stop_all_of hit them too)."""
    for pid, status in _procs():
        if status_uid(status) == uid and not is_dead(status) and in_job(_read(f"/proc/{pid}/cgroup") or ""):
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass


def _freeze_and_kill(uid: int) -> tuple[list[int], int]:
    """Stop everything of ``uid``, SIGKILL the strays, continue the rest."""
    stop_all_of(uid)
    try:
        return _round(uid, signal.SIGKILL)
    finally:
        continue_in_jobs(uid)


def _round(uid: int, sig: int, skip: Collection[int] = ()) -> tuple[list[int], int]:
    """Scan and signal the strays not in ``skip``: (signalled, in jobs)."""
    strays, in_jobs = scan(uid)
    if in_jobs:
        return [], in_jobs
    hit = [p for p in strays if p not in skip and signal_stray(p, uid, sig)]
    if sig == signal.SIGTERM:
        for p in hit:
            signal_stray(p, uid, signal.SIGCONT)  # a stopped process must run to die of TERM
    return hit, 0


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# ---------------------------------------------------------------- the agent's sweeper


class Sweeper:
    """Decides after each released job whether to sweep its owner, and does
    it in a task (the waits never block the agent's event loop)."""

    def __init__(self, node: str, state_dir: str, enabled: bool, min_uid: int, exempt_users: Collection[str],
                 kill_wait: float, has_step: Callable[[int], bool], send: Callable[[m.Message], None]) -> None:  # fmt: skip
        self.node = node
        self.state_dir = state_dir
        self.enabled = enabled and os.geteuid() == 0
        self.min_uid = min_uid
        self.exempt_users = set(exempt_users)
        self.kill_wait = kill_wait
        self.has_step = has_step
        self.send = send
        self.active: set[int] = set()  # uids being swept
        self.tasks: set[asyncio.Future[Any]] = set()

    def exempt(self, uid: int) -> str:
        return exempt(uid, user_name(uid), self.min_uid, self.exempt_users)

    def listed_elsewhere(self, uid: int) -> bool:
        """A running step of ``uid`` on any agent of this host (users files)."""
        from crane.agent.pam_check import _listed_uids

        return uid in _listed_uids(os.path.dirname(self.state_dir), None)

    def busy(self, uid: int) -> bool:
        return self.has_step(uid) or self.listed_elsewhere(uid)

    def job_released(self, job_id: int, uid: int | None, mode: str) -> None:
        if not self.enabled or uid is None or mode == "none":
            return  # without cgroups a job's processes cannot be told from strays
        if uid == 0 or uid < self.min_uid:  # local accounts (NSS files): no need to leave the loop
            name = user_name(uid)
            log.info("no sweep after job %d: user %s is exempt (%s)", job_id, name,
                     exempt(uid, name, self.min_uid, self.exempt_users))  # fmt: skip
            return
        if uid in self.active:
            log.info("no sweep after job %d: user %d is being swept already", job_id, uid)
            return
        self.active.add(uid)
        t = asyncio.ensure_future(self._sweep(job_id, uid))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _busy(self, uid: int) -> bool:
        """``busy`` with the users files read off the loop."""
        return self.has_step(uid) or await asyncio.to_thread(self.listed_elsewhere, uid)

    async def _sweep(self, job_id: int, uid: int) -> None:
        hit: set[int] = set()
        finished = False
        name = str(uid)
        try:
            name = await asyncio.to_thread(user_name, uid)  # NSS may ask a directory server
            why = exempt(uid, name, self.min_uid, self.exempt_users)
            if why:
                log.info("no sweep after job %d: user %s is exempt (%s)", job_id, name, why)
                return
            if await self._busy(uid):
                log.info("no sweep after job %d: user %s still has a job on this host", job_id, name)
                return
            deadline = time.monotonic() + self.kill_wait
            # SIGTERM to every stray (and to any that shows up during KillWait)
            while True:
                if await self._busy(uid):
                    log.info("sweep of user %s after job %d stopped: a new job started", name, job_id)
                    return
                new, in_jobs = await asyncio.to_thread(_round, uid, signal.SIGTERM, hit)
                if in_jobs:
                    log.info("no sweep after job %d: user %s still has processes in a job on this host", job_id, name)
                    return
                hit.update(new)
                left, _ = await asyncio.to_thread(scan, uid)
                if not left or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(POLL)
            # then SIGKILL, rescanning for forks, until none is left
            end = time.monotonic() + KILL_ROUNDS_FOR
            left = []
            while time.monotonic() < end:
                if await self._busy(uid):
                    break
                killed, in_jobs = await asyncio.to_thread(_freeze_and_kill, uid)
                hit.update(killed)
                left, _ = await asyncio.to_thread(scan, uid)
                if not left or in_jobs:
                    break
                await asyncio.sleep(POLL)
            if left:
                log.warning("sweep of user %s after job %d: processes survive: %s", name, job_id, left[:20])
            finished = True
        except Exception:
            log.exception("sweep of user %s after job %d failed", name, job_id)
        finally:
            self.active.discard(uid)
            if hit:
                pids = sorted(hit)
                log.info("swept %d processes of user %s after job %d: %s", len(pids), name, job_id,
                         " ".join(map(str, pids)))  # fmt: skip
                self.send(m.SessionEvent(self.node, "sweep", name, job_id, pids))
            elif finished:
                log.info("nothing to sweep of user %s after job %d", name, job_id)
