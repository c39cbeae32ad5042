"""Real, unmodified Slurm clients (submitit, dask-jobqueue, simple-slurm)
in a venv of their own, driven against a real Crane cluster as a real
Unix user with Crane's Slurm-named commands first on PATH (issue 14).

The venv is built from the package registry with pinned releases when it is
missing (CI starts from a clean machine; ~10-15 s); a build is serialised
with a lock so that parallel pytest sessions share one venv.

What the clients run (their sources, at these pins):

- submitit: ``sbatch FILE`` (id from ``job ([0-9]+)``); the script has
  ``#SBATCH --key=value`` lines (--time=MIN, --mem=1GB, --signal=USR2@90,
  --open-mode=append, --wckey, --array=0-3%2, -o/-e with %j/%A_%a) and runs
  ``srun --unbuffered --output F/%j_%t_log.out --error ... python -m
  submitit.core._submit F``; the task reads SLURM_JOB_ID, SLURM_PROCID,
  SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS, SLURM_JOB_NUM_NODES,
  SLURM_JOB_NODELIST and (arrays only) SLURM_ARRAY_JOB_ID/TASK_ID. States:
  ``sacct -o JobID,State,NodeList --parsable2 -j A [-j B]`` with its header
  row; cancel ``scancel ID``; on USR2 ``scontrol requeue ID``.
- dask-jobqueue: ``sbatch /tmp/X.sh`` (first number of stdout), script with
  ``#SBATCH -J -e/-o D/name-%J.err -n 1 --cpus-per-task --mem=954M -t -p``;
  ``close()``: ``scancel ID`` (errors ignored).
- simple-slurm: ``sbatch << EOF`` (script on stdin, ``#!/bin/sh``, padded
  ``#SBATCH --key      value``), ``Submitted batch job N`` split on spaces or
  ``--parsable``; ``squeue --me -o '"%i","%j","%t",...'`` read as CSV with
  its header; ``scancel ID``, ``scancel --me``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import BIN, Cluster, open_ancestors

CLIENTS_VENV = os.environ.get("CRANE_CLIENTS_VENV", "/opt/crane-clients-venv")
PINS = ("submitit==1.5.4", "dask-jobqueue==0.9.0", "simple-slurm==0.3.6")
STAMP = ".crane-clients"
SYSTEM_PYTHON = "/usr/bin/python3"  # not a pyenv/root-private one: jobs run it as other users
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scancel", "scontrol")
# pip's words when it cannot reach the registry at all (as opposed to a bad pin); "from versions:
# none" for a package that has released versions: the registry gave no answer for it
UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
               "Network is unreachable", "Connection refused", "ConnectTimeoutError", "ProxyError",
               "(from versions: none)")  # fmt: skip


class RegistryUnreachable(Exception):
    pass


def python() -> str:
    return os.path.join(CLIENTS_VENV, "bin", "python")


def venv_ready() -> bool:
    try:
        with open(os.path.join(CLIENTS_VENV, STAMP)) as f:
            return f.read().split() == list(PINS) and os.access(python(), os.X_OK)
    except OSError:
        return False


@contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_venv() -> float:
    """Build the clients' venv unless it is there with these pins; the
    seconds the build took (0 when it was there). RegistryUnreachable when pip
    cannot reach the registry; AssertionError on any other failure."""
    if venv_ready():
        return 0.0
    started = time.monotonic()
    old = os.umask(0o022)  # world-readable: jobs run its python as their owners
    try:
        with _locked(CLIENTS_VENV.rstrip("/") + ".lock"):
            if venv_ready():  # built by another session meanwhile
                return time.monotonic() - started
            shutil.rmtree(CLIENTS_VENV, ignore_errors=True)
            py = SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else "python3"
            r = subprocess.run([py, "-m", "venv", CLIENTS_VENV], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"venv {CLIENTS_VENV}: {r.stdout}{r.stderr}"
            r = subprocess.run([python(), "-m", "pip", "install", "--disable-pip-version-check", *PINS],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
            if r.returncode != 0:
                out = r.stdout + r.stderr
                shutil.rmtree(CLIENTS_VENV, ignore_errors=True)
                if any(w in out for w in UNREACHABLE):
                    errors = [line for line in out.splitlines() if "ERROR" in line or "WARNING: Retrying" in line]
                    raise RegistryUnreachable(" / ".join(errors[-2:]) or "pip failed")
                raise AssertionError(f"pip install {' '.join(PINS)} failed:\n{out[-3000:]}")
            subprocess.run(["chmod", "-R", "o+rX", CLIENTS_VENV], check=True)
            with open(os.path.join(CLIENTS_VENV, STAMP), "w") as f:
                f.write("\n".join(PINS) + "\n")
    finally:
        os.umask(old)
    return time.monotonic() - started


def command_dirs() -> list[str]:
    """Where Crane's commands are: its venv's bin (``$CRANE_SLURM_BIN``, a
    directory searched before it, is for trying commands not installed yet)."""
    extra = os.environ.get("CRANE_SLURM_BIN")
    return [extra, BIN] if extra else [BIN]


def missing_commands() -> list[str]:
    return [c for c in SLURM_COMMANDS if not any(os.access(os.path.join(d, c), os.X_OK) for d in command_dirs())]


def user_path() -> str:
    """Crane's commands (its Slurm-named ones included) first, as a user who
    has Crane installed would have them."""
    return ":".join([*command_dirs(), os.path.join(CLIENTS_VENV, "bin"), "/usr/bin", "/bin"])


def user_dir(c: Cluster, user: str, name: str) -> str:
    """A fresh directory owned by ``user`` under the cluster's work dir."""
    d = os.path.join(c.workdir, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    pw = pwd.getpwnam(user)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(d, 0o755)
    return d


def write(path: str, text: str, user: str, mode: int = 0o644) -> str:
    with open(path, "w") as f:
        f.write(textwrap.dedent(text).lstrip())
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, mode)
    return path


def run_as(c: Cluster, user: str, argv: list[str], cwd: str, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``argv`` as ``user`` (runuser), in ``cwd``, with the user's PATH and
    the cluster's CRANE_CONF; a timeout is a result (rc -9), not an exception."""
    open_ancestors(c.base)
    env_args = [f"CRANE_CONF={c.config_path}", f"PATH={user_path()}", "HOME=/tmp", "LANG=C.UTF-8",
                f"USER={user}", f"LOGNAME={user}", "PYTHONDONTWRITEBYTECODE=1"]  # fmt: skip
    cmd = ["runuser", "-u", user, "--", "env", "-i", *env_args, *argv]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                          start_new_session=True) as p:  # fmt: skip
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            # the whole group: a client's own children (a dask scheduler, sacct) too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            err += f"\n[timed out after {timeout} s]"
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def run_client(c: Cluster, user: str, script: str, *args: str, timeout: float = 150) -> dict[str, Any]:
    """Run a client script (python of the clients' venv) as ``user``; its
    last stdout line is a JSON object, returned. Fails with everything the
    client printed and the logs of its directory otherwise."""
    cwd = os.path.dirname(script)
    r = run_as(c, user, [python(), script, *args], cwd, timeout=timeout)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode == 0 and last.startswith("{"):
        return json.loads(last)  # type: ignore[no-any-return]
    raise AssertionError(f"{os.path.basename(script)} as {user} -> rc {r.returncode}\n"
                         f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-6000:]}\n{logs(cwd)}")  # fmt: skip


def slurm(c: Cluster, user: str, cwd: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """One of Crane's Slurm-named commands, as ``user``."""
    return run_as(c, user, list(argv), cwd, timeout=60, input=input)


def slurm_ok(c: Cluster, user: str, cwd: str, *argv: str, input: str | None = None) -> str:
    r = slurm(c, user, cwd, *argv, input=input)
    assert r.returncode == 0, f"{' '.join(argv)} as {user} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def sacct_states(c: Cluster, user: str, cwd: str, job: str) -> dict[str, str]:
    """``sacct --parsable2 -n -o JobID,State -j JOB`` as a dict id -> state
    (job rows only, not steps)."""
    out = slurm_ok(c, user, cwd, "sacct", "--parsable2", "-n", "-o", "JobID,State", "-j", job)
    rows = (line.split("|") for line in out.splitlines() if line.strip())
    return {r[0]: r[1] for r in rows if len(r) >= 2 and "." not in r[0]}


def logs(d: str, limit: int = 3000) -> str:
    """The text files of ``d`` (client logs, job outputs), for a failure message."""
    parts = []
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return ""
    for n in names:
        p = os.path.join(d, n)
        if os.path.isfile(p) and n.endswith((".out", ".err", ".log")):
            with open(p, errors="replace") as f:
                parts.append(f"--- {n}\n{f.read()[-limit:]}")
    return "\n".join(parts)
