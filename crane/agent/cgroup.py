"""Per-step cgroups: the unit the node agent tracks, signals, freezes and kills.

Layout: ``<hierarchy root>/<scope>/job_<job>/step_<step>`` in every hierarchy used.

Modes:

* ``v2``     pure cgroup v2 at /sys/fs/cgroup (tracking, kill, freeze, memory).
* ``hybrid`` v2 at /sys/fs/cgroup/unified for tracking/kill/freeze, v1 memory for limits.
* ``v1``     v1 only: freezer (tracking/kill/freeze) + memory + pids hierarchies.

In ``hybrid`` and ``v1`` the v1 ``devices`` hierarchy is used too when mounted
(GPU isolation, see ``agent.devices``).
* ``none``   no writable cgroups (not root): processes are found through their
  environment (CRANE_JOB_ID/CRANE_STEP_ID/CRANE_SCOPE) and their process group.

Nothing here touches asyncio; calls that wait (freeze, v1 kill, the sweeps of
mode 'none') are bounded and are run off the agent's event loop (``agent.offloop``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import time

import psutil

log = logging.getLogger(__name__)

CGROUP_ROOT = os.environ.get("CRANE_CGROUP_ROOT", "/sys/fs/cgroup")
MODES = ("v2", "hybrid", "v1", "none")
FREEZE_TIMEOUT = 5.0
ENV_JOB, ENV_STEP, ENV_SCOPE = "CRANE_JOB_ID", "CRANE_STEP_ID", "CRANE_SCOPE"

_STEP_RE = re.compile(r"^step_(-?\d+)$")
_JOB_RE = re.compile(r"^job_(-?\d+)$")


# ---------------------------------------------------------------- low-level io


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _write(path: str, value: str) -> None:
    """Write with a raw fd (safe between fork and exec); raise a clear OSError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"cannot open {path}: {e.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise OSError(e.errno, f"cannot write {value!r} to {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _keyed(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _is_hierarchy(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "cgroup.procs"))


def _is_v2(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "cgroup.controllers"))


def _writable(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK)


def rmdir_tree(path: str) -> str:
    """rmdir ``path`` and its sub-cgroups bottom-up; '' once it is gone,
    else why not. The common case (no sub-directory) is a single rmdir."""
    try:
        os.rmdir(path)
        return ""
    except FileNotFoundError:
        return ""
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EBUSY, errno.EEXIST):
            return f"{path}: {e.strerror}"
    why = ""
    try:
        for dirpath, _dirs, _files in os.walk(path, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError as e:
                why = why or f"{dirpath}: {e.strerror}"
    except OSError as e:
        why = why or f"{path}: {e.strerror}"
    return "" if not os.path.exists(path) else (why or f"{path}: still there")


def _check_scope(scope: str) -> str:
    parts = [p for p in scope.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid cgroup scope {scope!r}")
    return "/".join(parts)


# ---------------------------------------------------------------- detection


def detect_mode() -> str:
    """Best cgroup mode usable by this process (CRANE_CGROUP_MODE forces one)."""
    forced = os.environ.get("CRANE_CGROUP_MODE")
    if forced:
        if forced not in MODES:
            raise ValueError(f"CRANE_CGROUP_MODE={forced!r}: expected one of {MODES}")
        return forced
    if os.geteuid() != 0:
        return "none"
    if _is_v2(CGROUP_ROOT) and _writable(CGROUP_ROOT):
        return "v2"
    unified = os.path.join(CGROUP_ROOT, "unified")
    if _is_v2(unified) and _writable(unified):
        return "hybrid"
    freezer = os.path.join(CGROUP_ROOT, "freezer")
    if _is_hierarchy(freezer) and _writable(freezer):
        return "v1"
    return "none"


def available_modes() -> list[str]:
    """Every mode that would work here (best first); 'none' is always available."""
    if os.geteuid() != 0:
        return ["none"]
    out = []
    for mode in ("v2", "hybrid", "v1"):
        try:
            _hierarchies(mode)
        except OSError:
            continue
        out.append(mode)
    return [*out, "none"]


def _v1(name: str) -> str | None:
    path = os.path.join(CGROUP_ROOT, name)
    return path if _is_hierarchy(path) and not _is_v2(path) and _writable(path) else None


def _hierarchies(mode: str) -> list[tuple[str, str]]:
    """[(kind, root)] for a mode; the first entry is the tracking hierarchy."""
    if mode not in MODES:
        raise ValueError(f"unknown cgroup mode {mode!r}")
    if mode == "none":
        return []
    if mode == "v2":
        if not (_is_v2(CGROUP_ROOT) and _writable(CGROUP_ROOT)):
            raise OSError(errno.ENOTSUP, f"no writable cgroup v2 tree at {CGROUP_ROOT}")
        return [("v2", CGROUP_ROOT)]
    if mode == "hybrid":
        unified = os.path.join(CGROUP_ROOT, "unified")
        if not (_is_v2(unified) and _writable(unified)):
            raise OSError(errno.ENOTSUP, f"no writable cgroup v2 tree at {unified}")
        out = [("v2", unified)]
    else:
        freezer = _v1("freezer")
        if freezer is None:
            raise OSError(errno.ENOTSUP, f"no writable v1 freezer at {CGROUP_ROOT}/freezer")
        out = [("freezer", freezer)]
        pids = _v1("pids")
        if pids:
            out.append(("pids", pids))
    memory = _v1("memory")
    if memory:
        out.append(("memory", memory))
    devices = _v1("devices")  # GPU isolation (agent.devices): devices.deny
    if devices:
        out.append(("devices", devices))
    return out


def hierarchy_roots(mode: str | None = None) -> list[str]:
    """Root directories of the hierarchies a mode uses (empty for 'none')."""
    return [root for _kind, root in _hierarchies(mode or detect_mode())]


# ---------------------------------------------------------------- none mode


def _scan_env(scope: str, pgid: int | None = None) -> dict[int, tuple[int, int]]:
    """pid -> (job, step) of live processes of our uid tagged with ``scope``
    (or in process group ``pgid``, reported as (-1, -1))."""
    me, uid = os.getpid(), os.getuid()
    found: dict[int, tuple[int, int]] = {}
    for proc in psutil.process_iter(["uids", "status"]):
        info = proc.info
        if proc.pid == me or info.get("uids") is None or info["uids"].real != uid:
            continue
        if info.get("status") in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            env = {}
        if env.get(ENV_SCOPE) == scope:
            try:
                found[proc.pid] = (int(env[ENV_JOB]), int(env[ENV_STEP]))
                continue
            except (KeyError, ValueError):
                pass
        if pgid is not None:
            try:
                if os.getpgid(proc.pid) == pgid:
                    found[proc.pid] = (-1, -1)
            except OSError:
                pass
    return found


def _started(pid: int) -> tuple[int, int]:
    """When ``pid`` started (clock ticks since boot), then the pid: a parent
    sorts before its children. A vanished process sorts first (and is skipped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19]), pid
    except (OSError, ValueError, IndexError):
        return 0, pid


def _send(pids: set[int], sig: int) -> int:
    """Signal ``pids`` oldest first: a shell that traps the signal while it
    ``wait``s for a child gets it before the child dies, so that its trap runs
    (the other order lets ``wait`` return the child's death and the script end
    without its trap)."""
    n = 0
    for pid in sorted(pids, key=_started):
        try:
            os.kill(pid, sig)
            n += 1
        except ProcessLookupError:
            pass
        except PermissionError as e:
            log.warning("cannot send signal %d to pid %d: %s", sig, pid, e)
    return n


# ---------------------------------------------------------------- the step


class StepCgroup:
    """One job step's cgroup (or its env/pgid emulation in 'none' mode)."""

    def __init__(self, scope: str, job_id: int, step_id: int, mode: str | None = None) -> None:
        self.scope = _check_scope(scope)
        self.job_id = int(job_id)
        self.step_id = int(step_id)
        self.mode = mode or detect_mode()
        self.pgid: int | None = None
        self.rel = f"{self.scope}/job_{self.job_id}/step_{self.step_id}"
        self._hier = _hierarchies(self.mode)
        self.paths: dict[str, str] = {k: os.path.join(r, self.rel) for k, r in self._hier}

    def __repr__(self) -> str:
        return f"StepCgroup({self.rel!r}, mode={self.mode!r}, pgid={self.pgid})"

    @property
    def path(self) -> str | None:
        """Tracking directory (None in 'none' mode)."""
        return os.path.join(self._hier[0][1], self.rel) if self._hier else None

    def marker_env(self) -> dict[str, str]:
        """Environment that tags the step's processes: only in 'none' mode,
        where it is how they are found (a cgroup needs no tag, and the job's
        environment then holds nothing of the agent's)."""
        if self.mode != "none":
            return {}
        return {ENV_JOB: str(self.job_id), ENV_STEP: str(self.step_id), ENV_SCOPE: self.scope}

    # -- lifecycle

    def create(self, memory: int | None = None) -> None:
        for kind, root in self._hier:
            path = self.paths[kind]
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:
                raise OSError(e.errno, f"cannot create cgroup {path}: {e.strerror}") from None
            if kind == "v2":
                self._enable_v2_controllers(root)
        if memory is not None:
            self._set_memory(int(memory))

    def _enable_v2_controllers(self, root: str) -> None:
        """Best effort: delegate memory/pids from the root down to the job dir."""
        dirs = [root]
        for part in os.path.dirname(self.rel).split("/"):
            dirs.append(os.path.join(dirs[-1], part))
        for cur in dirs:  # root, <scope parts...>, job_<id>; never the step itself
            avail = set((_read(os.path.join(cur, "cgroup.controllers")) or "").split())
            enabled = set((_read(os.path.join(cur, "cgroup.subtree_control")) or "").split())
            for ctl in ("memory", "pids"):
                if ctl in avail and ctl not in enabled:
                    try:
                        _write(os.path.join(cur, "cgroup.subtree_control"), f"+{ctl}")
                    except OSError as e:
                        log.debug("enable %s in %s: %s", ctl, cur, e)

    def _set_memory(self, limit: int) -> None:
        v2 = self.paths.get("v2")
        if v2 and os.path.exists(os.path.join(v2, "memory.max")):
            _write(os.path.join(v2, "memory.max"), str(limit))
            if os.path.exists(os.path.join(v2, "memory.swap.max")):
                try:
                    _write(os.path.join(v2, "memory.swap.max"), "0")
                except OSError as e:
                    log.debug("memory.swap.max: %s", e)
            return
        v1 = self.paths.get("memory")
        if not v1:
            log.warning("%s: no memory controller, limit %d not enforced", self.rel, limit)
            return
        lim = os.path.join(v1, "memory.limit_in_bytes")
        memsw = os.path.join(v1, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw)
        try:
            _write(lim, str(limit))
        except OSError as e:
            if e.errno != errno.EINVAL or not has_memsw:
                raise
            _write(memsw, str(limit))  # raising the limit: memsw must grow first
            _write(lim, str(limit))
        if has_memsw:
            _write(memsw, str(limit))

    def attach_pid(self, pid: int) -> None:
        """Move ``pid`` into the step (raw writes only: safe in a forked child)."""
        for kind in self.paths:
            _write(os.path.join(self.paths[kind], "cgroup.procs"), str(pid))

    def remove(self) -> bool:
        ok = True
        for path in self.paths.values():
            why = rmdir_tree(path)
            if why:
                log.debug("rmdir %s", why)
            ok = not why and ok
        return ok

    # -- inspection

    def pids(self) -> set[int]:
        if not self._hier:
            mine = {(self.job_id, self.step_id), (-1, -1)}
            return {p for p, js in _scan_env(self.scope, self.pgid).items() if js in mine}
        out: set[int] = set()
        try:
            for dirpath, _dirs, _files in os.walk(self.path or ""):
                text = _read(os.path.join(dirpath, "cgroup.procs"))
                out.update(int(x) for x in (text or "").split())
        except OSError:
            pass
        return out

    def empty(self) -> bool:
        if self._hier and self._hier[0][0] == "v2":
            events = _keyed(_read(os.path.join(self.paths["v2"], "cgroup.events")))
            if "populated" in events:
                return events["populated"] == 0
        return not self.pids()

    def oom_killed(self) -> bool:
        v2 = self.paths.get("v2")
        if v2:
            events = _read(os.path.join(v2, "memory.events"))
            if events is not None:
                return _keyed(events).get("oom_kill", 0) > 0
        v1 = self.paths.get("memory")
        if v1:
            ctl = _keyed(_read(os.path.join(v1, "memory.oom_control")))
            if "oom_kill" in ctl:
                return ctl["oom_kill"] > 0
            failcnt = _keyed("x " + (_read(os.path.join(v1, "memory.failcnt")) or "0")).get("x", 0)
            limit = int((_read(os.path.join(v1, "memory.limit_in_bytes")) or "0").strip() or 0)
            peak = int((_read(os.path.join(v1, "memory.max_usage_in_bytes")) or "0").strip() or 0)
            return failcnt > 0 and limit > 0 and peak >= limit
        return False

    # -- signals

    def signal(self, sig: int) -> int:
        """Send ``sig`` to every process in the step now, once, as Slurm does.
        SIGKILL and SIGSTOP rescan to catch fresh forks; other signals must
        not: a TERM trap that starts ``sleep 2; cleanup`` would see its own
        sleep killed by the rescan and skip its grace period."""
        seen: set[int] = set()
        n = 0
        for _ in range(3 if sig in (signal.SIGKILL, signal.SIGSTOP) else 1):
            new = self.pids() - seen
            if not new:
                break
            n += _send(new, sig)
            seen |= new
        if not self._hier and self.pgid is not None:
            try:
                os.killpg(self.pgid, sig)  # backstop for forks racing the scan
            except OSError:
                pass
        return n

    def kill_file(self) -> bool:
        """Whether the kernel kills the whole step in one write (cgroup v2's ``cgroup.kill``)."""
        kind = self._hier[0][0] if self._hier else "none"
        return kind == "v2" and os.path.exists(os.path.join(self.paths["v2"], "cgroup.kill"))

    def kill(self) -> None:
        """SIGKILL every process in the step. Never raises for vanished processes."""
        kind = self._hier[0][0] if self._hier else "none"
        if kind == "v2" and os.path.exists(os.path.join(self.paths["v2"], "cgroup.kill")):
            try:
                _write(os.path.join(self.paths["v2"], "cgroup.kill"), "1")
                return
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                log.warning("cgroup.kill failed, falling back: %s", e)
        if kind == "none":
            self._stop_sweep()
            self._kill_sweep(deadline=time.monotonic() + 2.0)
            return
        try:
            self.freeze()
        except OSError as e:
            log.warning("%s: freeze before kill failed: %s", self.rel, e)
        try:
            _send(self.pids(), signal.SIGKILL)
        finally:
            try:
                self.thaw()
            except OSError as e:
                log.warning("%s: thaw after kill failed: %s", self.rel, e)
        self._kill_sweep(deadline=time.monotonic() + 1.0)

    def _kill_sweep(self, deadline: float) -> None:
        while True:
            if not self._hier and self.pgid is not None:
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except OSError:
                    pass
            left = self.pids()
            if not left or time.monotonic() > deadline:
                return
            _send(left, signal.SIGKILL)

    def _stop_sweep(self, limit: float = 2.0) -> set[int]:
        """none mode: SIGSTOP until no new process shows up (stopped ones can't fork)."""
        seen: set[int] = set()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.pgid is not None:
                try:
                    os.killpg(self.pgid, signal.SIGSTOP)
                except OSError:
                    pass
            new = self.pids() - seen
            if not new:
                break
            _send(new, signal.SIGSTOP)
            seen |= new
        return seen

    # -- freezer

    def freeze(self, timeout: float = FREEZE_TIMEOUT) -> None:
        """Stop every process; returns once the kernel reports the step frozen.

        Raises TimeoutError (an OSError) if it does not settle within ``timeout``.
        """
        kind = self._hier[0][0] if self._hier else "none"
        if kind == "none":
            self._stop_sweep(limit=timeout)
            return
        path = self.paths[kind]
        if not os.path.isdir(path):
            return
        deadline = time.monotonic() + timeout
        if kind == "v2":
            _write(os.path.join(path, "cgroup.freeze"), "1")
            while _keyed(_read(os.path.join(path, "cgroup.events"))).get("frozen") != 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(errno.ETIMEDOUT, f"{path}: not frozen after {timeout}s")
                time.sleep(0.002)
            return
        state = os.path.join(path, "freezer.state")
        _write(state, "FROZEN")
        while (_read(state) or "").strip() != "FROZEN":
            if time.monotonic() > deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"{path}: not frozen after {timeout}s")
            time.sleep(0.002)
            _write(state, "FROZEN")  # v1 retries freezing stragglers on each write

    def thaw(self) -> None:
        kind = self._hier[0][0] if self._hier else "none"
        if kind == "none":
            if self.pgid is not None:
                try:
                    os.killpg(self.pgid, signal.SIGCONT)
                except OSError:
                    pass
            _send(self.pids(), signal.SIGCONT)
            return
        path = self.paths[kind]
        try:
            if kind == "v2":
                _write(os.path.join(path, "cgroup.freeze"), "0")
            else:
                _write(os.path.join(path, "freezer.state"), "THAWED")
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


# ---------------------------------------------------------------- scope-wide helpers


def remove_job(scope: str, job_id: int, mode: str | None = None) -> None:
    """rmdir job_<id> in every hierarchy (empty step dirs too). Never raises."""
    try:
        rel = f"{_check_scope(scope)}/job_{int(job_id)}"
        roots = hierarchy_roots(mode)
    except (OSError, ValueError) as e:
        log.debug("remove_job: %s", e)
        return
    for root in roots:
        why = rmdir_tree(os.path.join(root, rel))
        if why:
            log.debug("rmdir %s", why)


def existing_steps(scope: str, mode: str | None = None) -> list[tuple[int, int]]:
    """(job, step) pairs present under ``scope``, for re-adoption after a restart."""
    try:
        scope = _check_scope(scope)
        mode = mode or detect_mode()
        roots = hierarchy_roots(mode)
    except (OSError, ValueError) as e:
        log.debug("existing_steps: %s", e)
        return []
    found: set[tuple[int, int]] = set()
    if mode == "none":
        found.update(v for v in _scan_env(scope).values() if v != (-1, -1))
    for root in roots:
        base = os.path.join(root, scope)
        try:
            jobs = os.listdir(base)
        except OSError:
            continue
        for job in jobs:
            jm = _JOB_RE.match(job)
            if not jm:
                continue
            try:
                steps = os.listdir(os.path.join(base, job))
            except OSError:
                continue
            for step in steps:
                sm = _STEP_RE.match(step)
                if sm and os.path.isdir(os.path.join(base, job, step)):
                    found.add((int(jm.group(1)), int(sm.group(1))))
    return sorted(found)
