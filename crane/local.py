"""A one-machine cluster: a controller and N agents as background processes
with a generated config. Used by ``crane local`` and by the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from typing import Any

import yaml

from crane.polling import pid_alive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_dir() -> str:
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"crane-local-{os.getuid()}")


def make_config(base: str, nodes: int = 4, cpus: int = 4, memory: str = "8G", **extra: Any) -> dict[str, Any]:
    names = [f"crane{i:02d}" for i in range(1, nodes + 1)]
    half = max(1, nodes // 2)
    parts = [{"name": "CPU", "nodes": ",".join(names[:half]), "priority": 5}]
    if nodes > half:
        parts.append({"name": "GPU", "nodes": ",".join(names[half:])})
    cfg: dict[str, Any] = {
        # unique per base dir: two clusters started by one process must not share
        # cgroup scopes (crane/<cluster>/<node>), or an agent adopts the other's steps
        "ClusterName": f"local{os.getpid() % 100000}-{zlib.crc32(os.path.abspath(base).encode()):08x}",
        "ControlMachine": "127.0.0.1",
        "CraneCtldListenPort": free_port(),
        "CraneCtldCliPort": free_port(),
        "CraneBaseDir": base,
        "Nodes": [{"name": n, "cpu": cpus, "memory": memory} for n in names],
        "Partitions": parts,
        "DefaultPartition": "CPU",
        "Preempt": {"PreemptType": "qos", "PreemptMode": "CANCEL"},
        "KillWait": 0,
        "AutoCreateUsers": True,
        "HeartbeatInterval": 1,
        "CranedTimeout": 30,
        "Auth": {"Type": "local", "CurveKeyDir": "keys"},
    }
    cfg.update(extra)
    return cfg


class LocalCluster:
    def __init__(self, base: str) -> None:
        self.base = os.path.abspath(base)
        self.config_path = os.path.join(self.base, "config.yaml")
        self.pids_path = os.path.join(self.base, "pids.json")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ config

    def write_config(self, cfg: dict[str, Any]) -> None:
        os.makedirs(self.base, exist_ok=True)
        os.chmod(self.base, 0o755)
        with open(self.config_path, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        os.chmod(self.config_path, 0o644)
        from crane.config import parse

        parsed = parse(cfg, self.config_path)
        if parsed.curve_key_dir:
            from crane import keys

            keys.generate(parsed.curve_key_dir, list(parsed.nodes))

    def config(self) -> dict[str, Any]:
        with open(self.config_path) as f:
            return yaml.safe_load(f)  # type: ignore[no-any-return]

    def node_names(self) -> list[str]:
        from crane.config import parse

        return list(parse(self.config(), self.config_path).nodes)

    # ------------------------------------------------------------ processes

    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen[bytes]:
        logdir = os.path.join(self.base, "log")
        os.makedirs(logdir, exist_ok=True)
        log = open(os.path.join(logdir, f"{key}.log"), "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.procs[key] = p
        self._save_pids()
        return p

    def _save_pids(self) -> None:
        pids = self.pids()
        pids.update({k: p.pid for k, p in self.procs.items()})
        with open(self.pids_path, "w") as f:
            json.dump(pids, f)

    def pids(self) -> dict[str, int]:
        try:
            with open(self.pids_path) as f:
                return {k: int(v) for k, v in json.load(f).items()}
        except (OSError, ValueError):
            return {}

    def start_controller(self) -> subprocess.Popen[bytes]:
        return self._spawn("cranectld", [sys.executable, "-m", "crane.controller", "-C", self.config_path])

    def start_agent(self, node: str) -> subprocess.Popen[bytes]:
        return self._spawn(f"craned-{node}", [sys.executable, "-m", "crane.agent.main", "-C", self.config_path, "-n", node])

    def up(self, timeout: float = 30.0) -> None:
        self.start_controller()
        for n in self.node_names():
            self.start_agent(n)
        self.wait_nodes_up(timeout)

    def nodes_state(self) -> dict[str, str]:
        from crane import messages as m
        from crane.cli.common import call, load_config

        data = call(load_config(self.config_path), m.QueryNodes(), timeout=2)
        return {n["name"]: n["state"] for n in data["nodes"]}

    def wait_nodes_up(self, timeout: float = 30.0, nodes: list[str] | None = None) -> None:
        from crane.cli.common import CliError

        deadline = time.monotonic() + timeout
        want = nodes or self.node_names()
        last: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                st = self.nodes_state()
                if all(st.get(n) not in (None, "DOWN") for n in want):
                    return
                last = st
            except CliError as e:
                last = str(e)
            time.sleep(0.05)  # polling a condition with a deadline
        raise TimeoutError(f"nodes not up after {timeout}s: {last}; logs in {self.base}/log")

    def _check_alive(self) -> None:
        p = self.procs.get("cranectld")
        if p is not None and p.poll() is not None:
            with open(os.path.join(self.base, "log", "cranectld.log")) as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"cranectld exited with {p.returncode}:\n{tail}")

    def stop(self, key: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        pid = self.procs[key].pid if key in self.procs else self.pids().get(key)
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        p = self.procs.get(key)
        if p is not None:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            del self.procs[key]
        else:
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

    def down(self) -> None:
        try:
            from crane import messages as m
            from crane.cli.common import call, load_config

            cfg = load_config(self.config_path)
            active = ["PENDING", "CONFIGURING", "RUNNING", "SUSPENDED"]
            res = call(cfg, m.Cancel(filters={"states": active}, force=True), timeout=5)
            jobs = [c["job_id"] for c in res["cancelled"]]
            if jobs:
                call(cfg, m.WaitJobs(jobs), timeout=20)
        except Exception:
            pass
        keys = set(self.pids()) | set(self.procs)
        for key in sorted(keys, key=lambda k: k == "cranectld"):  # agents first
            self.stop(key)
        try:
            os.unlink(self.pids_path)
        except OSError:
            pass
        self._remove_empty_cgroups()

    def _remove_empty_cgroups(self) -> None:
        """Drop this cluster's (now empty) cgroup scope: crane/<ClusterName>."""
        if os.geteuid() != 0:
            return
        try:
            from crane.agent.cgroup import hierarchy_roots

            scope = os.path.join("crane", str(self.config()["ClusterName"]))
            roots = hierarchy_roots()
        except (OSError, KeyError, ValueError):
            return
        for root in roots:
            top = os.path.join(root, scope)
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(dirpath)  # only empty cgroups can go; others stay
                except OSError:
                    pass
