"""crane-pam-check: allow an ssh login to a node only to users with a running
job there (like Slurm's pam_slurm_adopt, without the adoption).

For ``pam_exec.so`` in /etc/pam.d/sshd::

    account required pam_exec.so quiet /opt/crane-venv/bin/crane-pam-check

pam_exec passes the user in ``PAM_USER``. Every node agent on this host keeps
``<CraneBaseDir>/<CranedStateDir>/<node>/users``: the uids with a running step
on that node, one a line. Exit 0 allows the login, anything else denies it.
Root is always allowed. Imports are kept light: this runs on every login.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys

PROG = "crane-pam-check"


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        pass
    if user.isdigit():
        try:
            return pwd.getpwuid(int(user)).pw_uid
        except KeyError:
            return None
    return None


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
            with open(os.path.join(state_dir, n, "users")) as f:
                lines = f.read().split()
        except OSError:  # not a node dir, or no step ever ran there
            continue
        for line in lines:
            if line.isdigit():
                uids.add(int(line))
    return uids


def check(user: str, config: str | None = None, node: str | None = None) -> tuple[bool, str]:
    """(allowed, reason-if-denied)."""
    uid = _uid_of(user)
    if uid is None:
        return False, f"unknown user {user}"
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
        "-C", "--config", help="config file (default: $CRANE_CONF, else /etc/crane/config.yaml)"
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
    allowed, reason = check(user, args.config, args.node)
    if not allowed:
        print(f"{PROG}: {reason}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
