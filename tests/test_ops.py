"""Operations: cranectld under supervisord, the ssh PAM check, and
``crane local up/status/down`` as a user runs them."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crane.local import LocalCluster, make_config
from tests.conftest import BIN, IS_ROOT, Cluster, open_ancestors, pid_alive, wait_for

PAM_CHECK = os.path.join(BIN, "crane-pam-check")


def _env(config: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CRANE_CONF"] = config
    env["PATH"] = BIN + ":" + env.get("PATH", "/usr/bin:/bin")
    return env


def _controller_answers(lc: LocalCluster) -> dict[str, str] | None:
    """The node states from ``cinfo --json`` if the controller answers, else None."""
    r = subprocess.run([os.path.join(BIN, "cinfo"), "--json"], capture_output=True, text=True,
                       env=_env(lc.config_path), timeout=30)  # fmt: skip
    if r.returncode != 0:
        return None
    return {n["name"]: n["state"] for n in json.loads(r.stdout)["nodes"]} or None


# --------------------------------------------------------------------------- supervisord


class Supervisor:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = str(root / "supervisord.conf")
        self.pidfile = str(root / "supervisord.pid")

    def write(self, programs: str) -> None:
        r = self.root
        text = f"""\
[unix_http_server]
file={r}/supervisor.sock
chmod=0700

[supervisord]
logfile={r}/supervisord.log
pidfile={self.pidfile}
childlogdir={r}
nodaemon=false
user=root

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{r}/supervisor.sock

{programs}"""
        if not IS_ROOT:
            text = text.replace("user=root\n", "")
        with open(self.conf, "w") as f:
            f.write(text)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([shutil.which("supervisorctl") or "supervisorctl", "-c", self.conf, *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    def status(self, program: str) -> tuple[str, int | None]:
        out = self.ctl("status", program).stdout
        m = re.search(rf"^{program}\s+(\S+)(?:\s+pid (\d+))?", out, re.M)
        if not m:
            return out.strip(), None
        return m.group(1), int(m.group(2)) if m.group(2) else None

    def daemon_pid(self) -> int | None:
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def shutdown(self) -> None:
        pid = self.daemon_pid()
        self.ctl("shutdown")
        if pid is not None:
            try:
                wait_for(lambda: not pid_alive(pid), 30, "supervisord to exit")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    if shutil.which("supervisord") is None or shutil.which("supervisorctl") is None:
        pytest.skip("supervisord is not installed (scripts/setup.sh installs it)")
    root = tmp_path / "sv"
    root.mkdir()
    sv = Supervisor(root)
    try:
        yield sv
    finally:
        sv.shutdown()


def test_cranectld_under_supervisord(tmp_path: Path, supervisor: Supervisor) -> None:
    base = str(tmp_path / "cluster")
    lc = LocalCluster(base)
    lc.write_config(make_config(base, nodes=2, cpus=2))
    supervisor.write(f"""\
[program:cranectld]
command={sys.executable} -m crane.controller -C {lc.config_path}
directory={base}
autostart=true
autorestart=true
startsecs=1
startretries=10
stopsignal=TERM
stopwaitsecs=30
redirect_stderr=true
stdout_logfile={supervisor.root}/cranectld.log
""")
    r = subprocess.run([shutil.which("supervisord") or "supervisord", "-c", supervisor.conf],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, f"supervisord: {r.stdout}{r.stderr}"
    try:
        for node in lc.node_names():
            lc.start_agent(node)

        wait_for(lambda: _controller_answers(lc), 60, "the supervised controller to answer")
        state, pid = wait_for(lambda: (s := supervisor.status("cranectld"))[0] == "RUNNING" and s, 30,
                              "supervisorctl status cranectld to say RUNNING")  # fmt: skip
        assert pid is not None and pid_alive(pid)
        lc.wait_nodes_up(60)

        # killed hard: supervisord starts it again, it recovers and agents re-register
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (s := supervisor.status("cranectld"))[0] == "RUNNING" and s[1] != pid and s, 60,
                 "supervisord to restart cranectld")  # fmt: skip
        wait_for(lambda: _controller_answers(lc), 60, "the restarted controller to answer")
        lc.wait_nodes_up(60)

        # a clean stop through supervisorctl (SIGTERM) leaves nothing behind
        _, pid = supervisor.status("cranectld")
        r = supervisor.ctl("stop", "cranectld")
        assert "stopped" in r.stdout, r.stdout + r.stderr
        assert pid is not None and not pid_alive(pid)
        assert supervisor.status("cranectld")[0] == "STOPPED"
        with open(supervisor.root / "cranectld.log") as f:
            log = f.read()
        assert "Traceback" not in log, log[-3000:]
    finally:
        for key in list(lc.procs):
            lc.stop(key)


# --------------------------------------------------------------------------- crane-pam-check


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"no user {name} on this machine")


def test_pam_check_users_files(tmp_path: Path) -> None:
    base = str(tmp_path / "cluster")
    lc = LocalCluster(base)
    lc.write_config(make_config(base, nodes=2))
    nobody, daemon = _user("nobody"), _user("daemon")
    assert nobody.pw_uid not in (0, daemon.pw_uid)
    state = os.path.join(base, "craned")
    for node, uids in (("crane01", []), ("crane02", [1234567, nobody.pw_uid])):
        os.makedirs(os.path.join(state, node))
        with open(os.path.join(state, node, "users"), "w") as f:
            f.write("".join(f"{u}\n" for u in uids))

    def check(
        *args: str, pam_user: str | None = None, conf: str | None = lc.config_path
    ) -> subprocess.CompletedProcess[str]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("PAM_USER", "PAM_TYPE", "CRANE_CONF")
        }
        if pam_user is not None:
            env["PAM_USER"] = pam_user
            env["PAM_TYPE"] = "account"
        if conf is not None and pam_user is not None:
            args = ("-C", conf, *args)  # under PAM, $CRANE_CONF is not trusted
        elif conf is not None:
            env["CRANE_CONF"] = conf
        return subprocess.run(
            [PAM_CHECK, *args], capture_output=True, text=True, env=env, timeout=30
        )

    # root always; a listed user on any node of this host, or on the named node only
    assert check(pam_user="root").returncode == 0
    assert check(pam_user="root", conf="/nonexistent/config.yaml").returncode == 0
    r = check(pam_user="nobody")
    assert r.returncode == 0, r.stderr
    assert check("nobody").returncode == 0  # argv instead of PAM_USER
    assert check(str(nobody.pw_uid)).returncode == 1  # a number is not a name
    assert check("-n", "crane02", pam_user="nobody").returncode == 0
    assert check("-C", lc.config_path, pam_user="nobody", conf=None).returncode == 0

    r = check("-n", "crane01", pam_user="nobody")
    assert r.returncode == 1
    assert (
        r.stderr.strip() == "crane-pam-check: access denied: nobody has no running job on this node"
    )

    r = check(pam_user="daemon")
    assert r.returncode == 1
    assert (
        r.stderr.strip() == "crane-pam-check: access denied: daemon has no running job on this node"
    )

    assert check(pam_user="no-such-user-xq").returncode == 1
    assert check().returncode == 1  # no user at all
    assert check("-n", "crane99", pam_user="nobody").returncode == 1  # unknown node
    assert check(pam_user="nobody", conf=str(tmp_path / "missing.yaml")).returncode == 1
    # under PAM a CRANE_CONF in the environment does not move the config
    pam_env = {**os.environ, "PAM_USER": "nobody", "PAM_TYPE": "account", "CRANE_CONF": lc.config_path}
    r = subprocess.run([PAM_CHECK], capture_output=True, text=True, env=pam_env, timeout=30)
    assert r.returncode == 1 and "/etc/crane/config.yaml" in r.stderr, r.stderr

    # the agent rewrites the file when the job ends: access ends with it
    with open(os.path.join(state, "crane02", "users"), "w") as f:
        f.write("")
    assert check(pam_user="nobody").returncode == 1


@pytest.fixture
def small_cluster(tmp_path: Path, users: dict[str, int]) -> Iterator[Cluster]:
    """Two nodes (for tests with real users); brought down even when they fail to come up."""
    base = str(tmp_path / "cluster")
    c = Cluster(base)
    os.chmod(base, 0o755)
    open_ancestors(base)
    c.write_config(make_config(base, nodes=2, cpus=2))
    try:
        c.up(timeout=60)
        yield c
    finally:
        c.down()


def test_pam_check_follows_real_jobs(small_cluster: Cluster) -> None:
    c = small_cluster

    def allowed(user: str, node: str) -> bool:
        r = subprocess.run([PAM_CHECK, "-n", node], capture_output=True, text=True, timeout=30,
                           env={**_env(c.config_path), "PAM_USER": user})  # fmt: skip
        return r.returncode == 0

    assert not allowed("alice", "crane01") and not allowed("alice", "crane02")
    job = c.submit("-N", "1", "-c", "1", wrap="sleep 300", user="alice")
    info = c.wait_state(job, "RUNNING")
    (node,) = info["nodes"]
    other = "crane02" if node == "crane01" else "crane01"
    wait_for(lambda: allowed("alice", node), 30, f"alice allowed on {node}")
    assert not allowed("alice", other)
    assert not allowed("bob", node)
    assert allowed("root", node)

    c.ok("ccancel", str(job))
    c.wait_state(job, "CANCELLED")
    wait_for(lambda: not allowed("alice", node), 30, f"alice refused on {node} after the cancel")


# --------------------------------------------------------------------------- crane local


def test_crane_local_up_status_down(tmp_path: Path) -> None:
    base = str(tmp_path / "local")
    crane = os.path.join(BIN, "crane")
    env = {k: v for k, v in os.environ.items() if k != "CRANE_CONF"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([crane, "local", *args, "--dir", base], capture_output=True, text=True,
                              env=env, timeout=120)  # fmt: skip

    r = run("up", "--nodes", "2")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        conf = os.path.join(base, "config.yaml")
        assert f"export CRANE_CONF={conf}" in r.stdout.splitlines()
        assert os.path.exists(conf)
        with open(os.path.join(base, "pids.json")) as f:
            pids = json.load(f)
        assert set(pids) == {"cranectld", "craned-crane01", "craned-crane02"}
        assert all(pid_alive(p) for p in pids.values())

        r = run("status")
        assert r.returncode == 0, r.stdout + r.stderr
        for key, pid in pids.items():
            assert re.search(rf"^{key}\s+pid {pid}\s+running$", r.stdout, re.M), r.stdout
        for node in ("crane01", "crane02"):
            assert re.search(rf"^{node}\s+(IDLE|MIX|ALLOC)\b", r.stdout, re.M), r.stdout
        assert f"export CRANE_CONF={conf}" in r.stdout

        r = run("up", "--nodes", "2")  # one per directory
        assert r.returncode == 1 and "already runs" in r.stderr, r.stdout + r.stderr
    finally:
        d = run("down")
    assert d.returncode == 0, d.stdout + d.stderr
    assert "stopped" in d.stdout
    for key, pid in pids.items():
        wait_for(lambda pid=pid: not pid_alive(pid), 15, f"{key} (pid {pid}) to exit")
    assert not os.path.exists(os.path.join(base, "pids.json"))

    r = run("status")
    assert r.returncode == 1 and "no local cluster" in r.stderr, r.stdout + r.stderr
    r = run("down")
    assert r.returncode == 1
