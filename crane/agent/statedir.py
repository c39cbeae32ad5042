"""The agent's own files, kept private and never reached through a symlink.

Layout of a node's state directory (``<CranedStateDir>/<node>``)::

    <node>/            0711  others may traverse (to their own files) but not list
      steps/           0700  N.S.json: a step's spec (environment, script): root only
      scripts/         0711  job_N.sh: owned by the job's owner, 0500
      rc/              0711  N.S: the wrapper's exit status, owned by the owner, 0600
      users            0600  uids with a running step (crane-pam-check)
      adopt.sock       0600  crane-pam-check asks here to adopt an ssh session (sessions.py)

Only the agent creates entries in these directories, so a user cannot plant
a symlink there; files are still created with O_EXCL|O_NOFOLLOW (after an
unlink of whatever was there) and read with O_NOFOLLOW, and ``prepare``
refuses directories that are symlinks or belong to someone else and fixes
the modes left by older agents.
"""

from __future__ import annotations

import errno
import os
import stat

DIR_MODES = {"": 0o711, "steps": 0o700, "scripts": 0o711, "rc": 0o711}
SCRIPT_MODE = 0o500
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class StateDirError(Exception):
    pass


def _check_parent(path: str) -> None:
    """The directory holding the node directories: ours or root's, and if
    others may write into it, sticky (like /tmp) so our entries stay ours."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{path}: not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise StateDirError(f"{path}: owned by uid {st.st_uid}, not by this agent's user")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        if st.st_uid != os.geteuid():
            raise StateDirError(f"{path}: writable by others")
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)


def _make_traversable(path: str) -> None:
    """Create the missing directories up to ``path`` with 0711: job owners
    must traverse them to reach their script and rc file (our umask is 077)."""
    if os.path.lexists(path):
        return
    _make_traversable(os.path.dirname(path))
    try:
        os.mkdir(path)
    except FileExistsError:  # another agent of this host made it
        return
    os.chmod(path, 0o711)


def _own_dir(path: str, mode: int) -> None:
    """Create ``path`` with ``mode``, or check an existing one and fix its mode."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{path}: not a directory (a symlink?)")
    if st.st_uid != os.geteuid():
        raise StateDirError(f"{path}: owned by uid {st.st_uid}, not by this agent's user")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def prepare(state_dir: str) -> None:
    """Create or check the node's state directory (see the module doc)."""
    parent = os.path.dirname(os.path.abspath(state_dir))
    try:
        _make_traversable(parent)
        _check_parent(parent)
        for sub, mode in DIR_MODES.items():
            _own_dir(os.path.join(state_dir, sub) if sub else state_dir, mode)
        # files left by an older agent: nothing readable by others
        for sub in ("steps", "scripts", "rc", ""):
            d = os.path.join(state_dir, sub)
            for name in os.listdir(d):
                p = os.path.join(d, name)
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                    os.chmod(p, stat.S_IMODE(st.st_mode) & 0o700)
    except OSError as e:
        raise StateDirError(f"{state_dir}: {e.strerror or e}") from None


def write_new(path: str, data: bytes, mode: int = 0o600, uid: int = -1, gid: int = -1) -> None:
    """Replace ``path`` by a new file holding ``data`` (never through a
    symlink), then give it to ``uid``:``gid`` (as root) and ``mode``."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, _NEW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if uid >= 0 and os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def replace(path: str, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace ``path`` by a root-only file holding ``data``."""
    tmp = path + ".tmp"
    write_new(tmp, data, mode)
    os.replace(tmp, path)


def read(path: str, limit: int = -1) -> bytes:
    """Read a regular file without following a symlink or blocking on a FIFO."""
    fd = os.open(path, _READ)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if limit >= 0:
            return os.read(fd, limit)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
