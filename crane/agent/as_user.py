"""Small file operations done as a job's owner, never as root.

Whatever the agent writes into a path that a user chose (today: the cancel and
time-limit banner appended to the job's stderr file) is done by a short-lived
child that first becomes the owner (supplementary groups, gid, uid) and only
then opens the path. The kernel then checks the owner's rights: a symlink or a
hard link to a root file is refused as it would be in the owner's own shell.
The open never takes a controlling terminal, never blocks on a FIFO, and
anything but a regular file is refused. A missing file is created (as the
owner, 0644, as the launcher would: the step may not have opened its files yet
when a cancel arrives) only when the caller asks for it. Without root the agent
is the owner already (it runs jobs only as itself).

The caller owns reaping: ``start`` returns the child's pid and never waits.
Between fork and ``_exit`` the child touches neither asyncio nor logging.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass

# exit codes of the child: 0 = done, 1..125 = the errno of the failure
_FAILED = 125

APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Owner:
    uid: int
    gid: int
    groups: tuple[int, ...]


def owner_of(uid: int, gid: int, user: str) -> Owner:
    """The credentials a job's processes run with (resolved before any fork:
    NSS may take locks that a forked child must not need)."""
    try:
        groups = tuple(os.getgrouplist(user, gid)) if user else (gid,)
    except (KeyError, OSError):
        groups = (gid,)
    return Owner(uid, gid, groups)


def append(path: str, data: bytes, create: bool = False) -> None:
    """Append ``data`` to the regular file ``path`` with the caller's own
    rights: O_NONBLOCK (a FIFO does not hang us), O_NOCTTY, and O_CREAT only
    if ``create`` (then mode 0644 whatever the caller's umask)."""
    if not os.path.isabs(path):
        raise OSError(errno.EINVAL, "not an absolute path", path)
    try:
        fd = os.open(path, APPEND_FLAGS)
    except FileNotFoundError:
        if not create:
            raise
        fd = os.open(path, APPEND_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        os.fchmod(fd, 0o644)  # the agent's umask is 077
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def start(who: Owner, op: Callable[[], None]) -> int:
    """Fork a child that drops to ``who`` and runs ``op``; returns its pid.

    The child exits 0 when ``op`` succeeded, else with the errno of the
    failure (``exit_error`` reads it back)."""
    root = os.geteuid() == 0
    if not root and who.uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"cannot act as uid {who.uid} without root")
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = _FAILED
        try:
            try:
                signal.set_wakeup_fd(-1)  # a signal here must not poke the agent's event loop
            except ValueError:  # not forked from the main thread: there is none
                pass
            if root:
                os.setgroups(list(who.groups))
                os.setgid(who.gid)
                os.setuid(who.uid)
                if os.geteuid() != who.uid or os.getegid() != who.gid:
                    raise PermissionError(errno.EPERM, "privileges not dropped")
            op()
            code = 0
        except OSError as e:
            code = e.errno if e.errno and 0 < e.errno < _FAILED else _FAILED
        except BaseException:  # noqa: BLE001 - the child must always _exit
            code = _FAILED
        finally:
            os._exit(code)
    return pid


def exit_error(status: int) -> str:
    """'' for a child that succeeded, else why it did not."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == 0:
            return ""
        return os.strerror(code) if code < _FAILED else "failed"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"wait status {status}"
