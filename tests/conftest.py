"""Shared fixtures: real local clusters (cranectld + craned processes on
loopback/ipc), CLIs run as real subprocesses, optionally as real Unix users."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crane.local import LocalCluster, make_config
from crane.polling import pid_alive, wait_for  # noqa: F401  (the tests import them from here)

BIN = os.path.dirname(sys.executable)
IS_ROOT = os.geteuid() == 0
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "COMPLETING")


class Cluster(LocalCluster):
    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.workdir = os.path.join(base, "work")
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o1777)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CRANE_CONF"] = self.config_path
        env["PATH"] = BIN + ":" + env.get("PATH", "/usr/bin:/bin")
        return env

    def command(self, *argv: str, user: str | None = None) -> list[str]:
        """The argv that runs the CLI ``argv[0]`` of this venv, as ``user`` if given."""
        cmd = [os.path.join(BIN, argv[0]), *argv[1:]]
        if user is not None:
            # pytest closes its temp root (0700) whenever a pytest session
            # starts: reopen the way to the config before acting as a user
            open_ancestors(self.base)
            env_args = [f"CRANE_CONF={self.config_path}", f"PATH={BIN}:/usr/bin:/bin", "HOME=/tmp"]
            cmd = ["runuser", "-u", user, "--", "env", *env_args, *cmd]
        return cmd

    def run(self, *argv: str, user: str | None = None, input: str | None = None,
            timeout: float = 60, cwd: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(self.command(*argv, user=user), capture_output=True, text=True, input=input, timeout=timeout,
                              env=self.env(), cwd=cwd or self.workdir)  # fmt: skip

    def ok(self, *argv: str, **kw: Any) -> str:
        r = self.run(*argv, **kw)
        assert r.returncode == 0, (
            f"{argv} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        )
        return r.stdout

    def submit(self, *argv: str, wrap: str | None = None, user: str | None = None) -> int:
        args = ["cbatch", "--json", *argv]
        if wrap is not None:
            args += ["--wrap", wrap]
        out = self.ok(*args, user=user)
        return int(json.loads(out)["job_id"])

    def jobs(self, history: bool = False) -> dict[int, dict[str, Any]]:
        out = self.ok(*(("cacct", "-S", "2000-01-01") if history else ("cqueue",)), "--json")
        return {j["job_id"]: j for j in json.loads(out)}

    def query_config(self) -> str:
        """The config the test's own queries (``job``) read."""
        return self.config_path

    def job(self, job_id: int) -> dict[str, Any] | None:
        from crane.cli.common import call, load_config
        from crane.core import messages as m

        cfg = load_config(self.query_config())
        for history in (False, True):
            data = call(cfg, m.QueryJobs({"jobs": [job_id]}, history=history))
            if data["jobs"]:
                return data["jobs"][0]  # type: ignore[no-any-return]
        return None

    def state(self, job_id: int) -> str | None:
        j = self.job(job_id)
        return j["state"] if j else None

    def wait_state(self, job_id: int, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            j = self.job(job_id)
            return j if j and j["state"] in states else None

        return wait_for(check, timeout, f"job {job_id} in {states}")  # type: ignore[no-any-return]

    def step_pid(self, job_id: int, step_id: int = 1, timeout: float = 30.0) -> int:
        def check() -> int | None:
            j = self.job(job_id)
            for s in (j or {}).get("steps", []):
                if s["step_id"] == step_id and s.get("pid"):
                    return int(s["pid"])
            return None

        return wait_for(check, timeout, f"pid of step {job_id}.{step_id}")  # type: ignore[no-any-return]

    def file(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def read(self, name: str) -> str:
        try:
            with open(self.file(name)) as f:
                return f.read()
        except OSError:
            return ""


def open_ancestors(path: str) -> None:
    """Let other users traverse to ``path`` (pytest's temp root is 0700)."""
    p = os.path.realpath(path)
    while p != "/":
        st = os.stat(p)
        if not st.st_mode & 0o001 and st.st_uid == os.geteuid():
            os.chmod(p, st.st_mode | 0o011)
        p = os.path.dirname(p)


def start_cluster(base: str, nodes: int = 4, cpus: int = 4, **extra: Any) -> Cluster:
    if IS_ROOT:
        open_ancestors(base)
    c = Cluster(base)
    c.write_config(make_config(base, nodes, cpus, **extra))
    try:
        c.up(timeout=60)
    except BaseException:
        c.down()  # never leak daemons from a failed start
        raise
    return c


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = str(tmp_path_factory.mktemp("cluster"))
    os.chmod(base, 0o755)
    c = start_cluster(base)
    try:
        yield c
    finally:
        c.down()


@pytest.fixture
def make_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(nodes: int = 4, cpus: int = 4, **extra: Any) -> Cluster:
        base = str(tmp_path_factory.mktemp("cluster"))
        os.chmod(base, 0o755)
        c = start_cluster(base, nodes, cpus, **extra)
        made.append(c)
        return c

    yield make
    for c in made:
        c.down()


TEST_USERS = ("alice", "bob", "carol", "oscar")


def ensure_user(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True, capture_output=True)
        return pwd.getpwnam(name).pw_uid


@pytest.fixture(scope="session")
def users() -> dict[str, int]:
    """Real Unix users for permission tests (root only)."""
    if not IS_ROOT:
        pytest.skip("needs root to create test users and run CLIs as them")
    if not os.access(sys.executable, os.X_OK) or _private(sys.executable):
        pytest.skip(f"{sys.executable} is not usable by other users (install into a shared venv)")
    return {u: ensure_user(u) for u in TEST_USERS}


def _private(path: str) -> bool:
    """True if some directory on the way to ``path`` is closed to others."""
    p = os.path.realpath(path)
    while p != "/":
        p = os.path.dirname(p)
        if not os.stat(p).st_mode & 0o001:
            return True
    return False


def acct(c: Cluster, *argv: str) -> None:
    """One cacctmgr operation (as root), through the CLI's own parser."""
    from crane.cacctmgr_parse import parse_argv
    from crane.cli.common import call, load_config
    from crane.core import messages as m

    call(load_config(c.config_path), m.AcctOp(parse_argv(list(argv))))


def clear(c: Cluster) -> None:
    """Force-cancel every active job and wait until all are gone."""
    from crane.cli.common import call, load_config
    from crane.core import messages as m

    cfg = load_config(c.config_path)
    ids = [j["job_id"] for j in call(cfg, m.QueryJobs({}))["jobs"]]
    if ids:
        call(cfg, m.Cancel(ids=[[j, None] for j in ids], force=True))
        call(cfg, m.WaitJobs(ids), timeout=60)


# the multi-host lab's fixture (tests/netcluster.py imports this module first)
from tests.netcluster import make_net_cluster  # noqa: E402, F401
