"""Fork/exec of step processes into their cgroup, as the job's user.

The caller (an asyncio agent) owns reaping: ``spawn`` returns a bare pid and never
waits on it. Between fork and exec the child touches neither asyncio nor logging.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import pwd
import signal
import termios

from crane.agent.cgroup import StepCgroup

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC
JOB_UMASK = 0o022  # the agent itself runs with 077; jobs get the usual default


def set_child_subreaper() -> None:
    """Make orphaned descendants (double-fork escapees) reparent to this process."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s", os.strerror(err))
    except (OSError, AttributeError) as e:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) unavailable: %s", e)


def _groups(user: str, gid: int) -> list[int]:
    try:
        return os.getgrouplist(user, gid)
    except (KeyError, OSError):
        return [gid]


def _home(user: str) -> str | None:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return None


def spawn(
    cg: StepCgroup,
    argv: list[str],
    *,
    uid: int,
    gid: int,
    user: str,
    cwd: str,
    env: dict[str, str],
    stdout: str,
    stderr: str,
    pipes: dict[int, int] | None = None,
    error_fd: int = -1,
    tty: bool = False,
    truncate: bool = False,
) -> int:
    """Start ``argv`` in its own session inside ``cg``; returns the pid (== pgid).

    The step's cgroup must already exist (``cg.create()``). Launch failures in the
    child are reported on the step's stderr (or the agent's stderr if that cannot
    be opened) and the child exits 127. ``pipes``: ``{1 or 2: fd}``, the write
    end of a pipe the agent reads (live output, ``crane.agent.stream``) used
    for stdout/stderr instead of the file. ``error_fd``: the write end of a
    close-on-exec pipe on which a child that fails before its exec writes
    why, in one line (``cannot open output file PATH: REASON``).
    ``pipes[0]``: the read end of the step's stdin pipe (else /dev/null).
    ``tty``: ``pipes`` 0, 1 and 2 are the slave of the step's pseudo-terminal,
    made the step's controlling terminal (its session is new).
    ``truncate``: the output files are emptied when opened (``--open-mode
    truncate``; else output is appended).
    """
    if not argv:
        raise ValueError("empty argv")
    if not os.path.isabs(cwd):  # output paths are joined to it: never to the agent's cwd
        raise ValueError(f"cwd is not an absolute path: {cwd!r}")
    root = os.geteuid() == 0
    if not root and uid != os.getuid():
        raise PermissionError(errno.EPERM, f"cannot run as uid {uid} without root")
    # Everything that may allocate locks (NSS, logging) is resolved here, pre-fork.
    groups = _groups(user, gid) if root else []
    fallback_dirs = [d for d in (_home(user), "/") if d]
    out_path = os.path.join(cwd, stdout)
    err_path = os.path.join(cwd, stderr)
    full_env = {**env, **cg.marker_env()}
    try:
        maxfd = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        maxfd = 65536
    pid = os.fork()
    if pid == 0:  # child: never returns
        _child(
            cg,
            argv,
            root,
            uid,
            gid,
            groups,
            cwd,
            fallback_dirs,
            out_path,
            err_path,
            full_env,
            maxfd,
            pipes or {},
            error_fd,
            tty,
            _OUT_FLAGS | os.O_TRUNC if truncate else _OUT_FLAGS,
        )
    cg.pgid = pid
    # The child attaches itself too, but only once it is scheduled: attach it
    # from here so that it is in its cgroup before spawn returns. Otherwise a
    # kill handled right after the launch finds the cgroup empty, the job is
    # released, and the step runs on outside any accounting.
    try:
        cg.attach_pid(pid)
    except OSError as e:  # the child already exited (launch failure)
        log.debug("attach of pid %d from the parent: %s", pid, e)
    return pid


def _reset_signals() -> None:
    try:
        signal.set_wakeup_fd(-1)  # do not poke the agent's event loop
    except (ValueError, OSError):
        pass
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)  # also undoes Python's SIGPIPE/SIGXFSZ ignore
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _child(
    cg: StepCgroup,
    argv: list[str],
    root: bool,
    uid: int,
    gid: int,
    groups: list[int],
    cwd: str,
    fallback_dirs: list[str],
    out_path: str,
    err_path: str,
    env: dict[str, str],
    maxfd: int,
    pipes: dict[int, int],
    error_fd: int,
    tty: bool = False,
    out_flags: int = _OUT_FLAGS,
) -> None:
    err_fd = 2
    what = "cannot start the step"  # what failed, for error_fd
    try:
        _reset_signals()
        os.setsid()
        cg.attach_pid(os.getpid())
        if root:
            what = f"cannot become uid {uid}"
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        os.umask(JOB_UMASK)
        # the output files are opened only now, with the owner's rights
        what = f"cannot open output file {out_path}"
        out_fd = pipes[1] if 1 in pipes else os.open(out_path, out_flags, 0o644)
        what = f"cannot open error file {err_path}"
        if 2 in pipes:
            err_fd = pipes[2]
        elif err_path != out_path or 1 in pipes:
            err_fd = os.open(err_path, out_flags, 0o644)
        else:
            err_fd = out_fd
        what = "cannot set up the step's standard streams"
        null = pipes[0] if 0 in pipes else os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        err_fd = 2
        if tty:
            what = "cannot set the step's controlling terminal"
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        what = f"cannot change to the working directory {cwd}"
        try:
            os.chdir(cwd)
        except OSError as e:
            for alt in fallback_dirs:
                try:
                    os.chdir(alt)
                except OSError:
                    continue
                os.write(2, f"crane: cannot chdir to {cwd}: {e.strerror}; using {alt}\n".encode())
                break
            else:
                raise
        if error_fd > 2:  # everything else closed; this one closes itself on exec
            os.closerange(3, error_fd)
            os.closerange(error_fd + 1, maxfd)
        else:
            os.closerange(3, maxfd)
        what = f"cannot execute {argv[0]}"
        os.execvpe(argv[0], argv, env)
    except BaseException as e:  # noqa: BLE001 - the child must always _exit
        try:
            os.write(err_fd, f"crane: cannot launch {argv[0]!r}: {e}\n".encode(errors="replace"))
        except BaseException:  # noqa: BLE001
            pass
        if error_fd > 2:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            try:
                os.write(error_fd, f"{what}: {why}\n".encode(errors="replace"))
            except BaseException:  # noqa: BLE001
                pass
    finally:
        os._exit(127)
