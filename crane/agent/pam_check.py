"""crane-pam-check: allow an ssh login to a node only to users with a running
job there, and adopt the session into that job (like Slurm's pam_slurm_adopt).

For ``pam_exec.so`` in /etc/pam.d/sshd (see conf/pam_sshd.conf)::

    account required pam_exec.so quiet /opt/crane-venv/bin/crane-pam-check
    session required pam_exec.so quiet /opt/crane-venv/bin/crane-pam-check

In the session phase (``PAM_TYPE=open_session``) the access check is made
again, then the calling process (our parent: sshd's session process, which
forks the user's shell afterwards) is moved into the cgroup of the user's
newest running job on this host, or of the job named by ``CRANE_ADOPT_JOB``
in the PAM environment when it is one of the user's running jobs here. The
agents do the move (``crane/agent/sessions.py``): a cancel, timeout or
preemption of the job then ends the session too. Root and exempt users are
never adopted; a failed adoption does not refuse the login (it is printed).

pam_exec passes the user in ``PAM_USER``. Every node agent on this host keeps
``<CraneBaseDir>/<CranedStateDir>/<node>/users``: the uids with a running step
on that node, one a line (trusted only when owned by root and writable by no
one else). Exit 0 allows the login, anything else denies it. The user is a
name, resolved through passwd only: "0" or any other number is not a uid, an
unknown name is denied. Root (the name whose passwd uid is 0) is always allowed. Imports are kept light: this runs on every login.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import socket
import stat
import struct
import sys
from typing import Any

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


def _ask(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request to an agent's adoption socket (``crane/agent/sessions.py``).
    The socket and the process serving it must be root's (or ours)."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid not in (0, os.geteuid()):
        raise OSError(f"{path}: not an agent's socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", raw)[1] not in (0, os.geteuid()):
            raise OSError(f"{path}: served by another user")
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while b"\n" not in buf and len(buf) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf.split(b"\n", 1)[0] or b"null")
    if not isinstance(reply, dict):
        raise ValueError(f"{path}: no reply")
    return reply


# A user listed in the users file whose jobs cannot take a session (being
# cancelled, suspended) is refused in the session phase: an unadopted session
# would outlive the job (red team).
NO_JOB = "access denied: no job to adopt the session into"


def adopt(user: str, cfg: Any, pid: int, node: str | None = None,
          wanted: str | None = None) -> tuple[int | None, str, bool]:  # fmt: skip
    """Move ``pid`` into the cgroup of ``user``'s (not root: see ``access``;
    ``cfg`` as it loaded) newest running job on this host (or job ``wanted``, if it is
    one of them). (job, note, refused): the job or None, what to tell (why not
    adopted, a choice that was ignored), and whether the session must be
    refused: every agent answered and none runs a job that can take it (being
    cancelled, suspended) — an unadopted session would outlive the job."""
    notes: list[str] = []
    job_wanted = None
    if wanted:
        if wanted.isdigit() and len(wanted) < 19:
            job_wanted = int(wanted)
        else:
            notes.append(f"CRANE_ADOPT_JOB={wanted[:40]!r} is not a job id: ignored")
    state = cfg.resolve(cfg.craned_state_dir)
    try:
        nodes = [node] if node is not None else sorted(os.listdir(state))
    except OSError as e:
        return None, "; ".join([*notes, f"session not adopted: cannot read {state}: {e.strerror}"]), False
    best: tuple[bool, float, int, str] | None = None  # (asked for, start, job, socket)
    errors = []
    for n in nodes:
        path = os.path.join(state, n, "adopt.sock")
        if not os.path.lexists(path):
            continue
        try:
            r = _ask(path, {"op": "query", "user": user, "pid": pid, "job": job_wanted})
        except (OSError, ValueError) as e:
            errors.append(f"{n}: {e}")
            continue
        if "exempt" in r:
            return None, "", False  # root, system accounts, ExemptUsers: never adopted
        if "error" in r:
            errors.append(f"{n}: {r['error']}")
        elif type(r.get("job")) is int:
            cand = (r["job"] == job_wanted, float(r.get("start") or 0.0), int(r["job"]), path)
            best = cand if best is None or cand[:3] > best[:3] else best
    if best is None:
        if not errors:  # every agent answered: none runs a job that can take it
            return None, "; ".join([*notes, f"{NO_JOB}: {user} has no running job here"]), True
        return None, "; ".join([*notes, "session not adopted: " + "; ".join(errors)]), False
    if job_wanted is not None and not best[0]:
        notes.append(f"CRANE_ADOPT_JOB={job_wanted} is not a running job of {user} here: newest job taken")
    try:
        r = _ask(best[3], {"op": "adopt", "user": user, "pid": pid, "job": best[2]})
    except (OSError, ValueError) as e:
        return None, "; ".join([*notes, f"session not adopted into job {best[2]}: {e}"]), False
    if type(r.get("job")) is not int:
        return None, "; ".join([*notes, f"session not adopted into job {best[2]}: {r.get('error') or 'job gone'}"]), False
    return int(r["job"]), "; ".join(notes), False


def access(user: str, config: str | None = None, node: str | None = None) -> tuple[int | None, Any, str]:
    """(uid, config, reason-if-denied): uid None when denied; root is allowed
    without reading the config (None)."""
    uid = _uid_of(user)
    if uid is None:
        return None, None, f"unknown user {user!r}"
    if uid == 0:
        return 0, None, ""
    from crane.config import ConfigError, load

    try:
        cfg = load(config)
    except ConfigError as e:
        return None, None, str(e)
    if node is not None and node not in cfg.nodes:
        return None, None, f"node {node} is not in the config {cfg.path}"
    if uid in _listed_uids(cfg.resolve(cfg.craned_state_dir), node):
        return uid, cfg, ""
    return None, None, f"access denied: {user} has no running job on this node"


def check(user: str, config: str | None = None, node: str | None = None) -> tuple[bool, str]:
    """(allowed, reason-if-denied)."""
    uid, _cfg, reason = access(user, config, node)
    return uid is not None, reason


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
    uid, cfg, reason = access(user, config, args.node)
    if uid is None:
        print(f"{PROG}: {reason}", file=sys.stderr)
        sys.exit(1)
    if os.environ.get("PAM_TYPE") == "open_session" and uid != 0:
        # the session is allowed when adoption fails for another reason (an
        # agent unreachable, no cgroups: pam_slurm_adopt's
        # action_adopt_failure=allow), and said why on stderr; it is refused
        # when the user's jobs here cannot take it (being cancelled, suspended)
        _job, note, refused = adopt(user, cfg, os.getppid(), args.node, os.environ.get("CRANE_ADOPT_JOB"))
        if note:
            print(f"{PROG}: {note}", file=sys.stderr)
        if refused:
            sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
