"""crane-pam-check: allow an ssh login to a node only to users with a running
job there (like Slurm's pam_slurm_adopt, without the adoption).

For ``pam_exec.so`` in /etc/pam.d/sshd::

    account required pam_exec.so quiet /opt/crane-venv/bin/crane-pam-check

pam_exec passes the user in ``PAM_USER``. Every node agent on this host keeps
``<CraneBaseDir>/<CranedStateDir>/<node>/users``: the uids with a running step
on that node, one a line (trusted only when owned by root and writable by no
one else). Exit 0 allows the login, anything else denies it. The user is a
name, resolved through passwd only: "0" or any other number is not a uid, an
unknown name is denied. Root (the name whose passwd uid is 0) is always allowed. Imports are kept light: this runs on every login.
"""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import sys

PROG = "crane-pam-check"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _uid_of(user: str) -> int | None:
    """The uid of the user *named* ``user`` in passwd, or None. A name is a
    name: "0" or "1000" is not read as a uid (it would make "0" root), and
    nothing but an exact passwd entry is accepted."""
    if not user or user.isdigit() or not user.isprintable() or user.strip() != user:
        return None
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):
        return None


def _trusted(fd: int) -> bool:
    """A users file written by an agent: a regular file owned by root or by
    us, writable by no one else (a user must not be able to list himself)."""
    st = os.fstat(fd)
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid in (0, os.geteuid())
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _listed_uids(state_dir: str, node: str | None) -> set[int]:
    """The uids in the users files under ``state_dir`` (one node's or all)."""
    if node is not None:
        nodes = [node]
    else:
        try:
            nodes = sorted(os.listdir(state_dir))
        except OSError:
            return set()
    uids: set[int] = set()
    for n in nodes:
        try:
            fd = os.open(os.path.join(state_dir, n, "users"), _READ)
        except OSError:  # not a node dir, or no step ever ran there
            continue
        try:
            if not _trusted(fd):
                continue
            lines = os.read(fd, 1 << 20).decode(errors="replace").split()
        except OSError:
            continue
        finally:
            os.close(fd)
        for line in lines:
            if line.isdigit():
                uids.add(int(line))
    return uids


def check(user: str, config: str | None = None, node: str | None = None) -> tuple[bool, str]:
    """(allowed, reason-if-denied)."""
    uid = _uid_of(user)
    if uid is None:
        return False, f"unknown user {user!r}"
    if uid == 0:
        return True, ""
    from crane.config import ConfigError, load

    try:
        cfg = load(config)
    except ConfigError as e:
        return False, str(e)
    if node is not None and node not in cfg.nodes:
        return False, f"node {node} is not in the config {cfg.path}"
    if uid in _listed_uids(cfg.resolve(cfg.craned_state_dir), node):
        return True, ""
    return False, f"access denied: {user} has no running job on this node"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description="Allow a login only to users with a running job on this node."
    )
    ap.add_argument("user", nargs="?", help="the user (default: $PAM_USER)")
    ap.add_argument(
        "-C", "--config", help="config file (default: $CRANE_CONF, else /etc/crane/config.yaml; under PAM only -C changes it)"
    )
    ap.add_argument("-n", "--node", help="look only at this node's users file")
    args = ap.parse_args(argv)
    # closing a session is never refused (pam_exec in a session stack)
    if os.environ.get("PAM_TYPE") == "close_session":
        sys.exit(0)
    user = args.user or os.environ.get("PAM_USER")
    if not user:
        print(f"{PROG}: no user: set PAM_USER or give one", file=sys.stderr)
        sys.exit(1)
    config = args.config
    if config is None and "PAM_TYPE" in os.environ:
        # under pam_exec the environment is not ours to trust: only -C moves the config
        from crane.config import DEFAULT_PATH

        config = DEFAULT_PATH
    allowed, reason = check(user, config, args.node)
    if not allowed:
        print(f"{PROG}: {reason}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
