"""Shared pieces of the benchmark: clusters, a persistent API client,
statistics, the machine description and the result records."""

from __future__ import annotations

import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from crane.core import messages as m
from crane.local import LocalCluster, make_config
from crane.polling import wait_for
from crane.transport import Client

BIN = os.path.dirname(sys.executable)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PROFILED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiled.py")


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- statistics


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def p99(xs: list[float]) -> float | None:
    """Nearest-rank 99th percentile (with fewer than 100 samples: the maximum)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


@dataclass
class Result:
    key: str
    scenario: str
    unit: str  # "ms", "jobs/s", "B/job", "% core"
    samples: list[float]
    target: str
    # True when lower is better (latency, memory, cpu), False for throughput
    lower_is_better: bool
    target_value: float | None
    variant: str = ""  # how this run differs from the scenario as specified
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def median(self) -> float | None:
        return median(self.samples)

    @property
    def p99(self) -> float | None:
        return p99(self.samples)

    @property
    def met(self) -> bool | None:
        if self.median is None or self.target_value is None:
            return None
        if self.lower_is_better:
            return self.median <= self.target_value
        return self.median >= self.target_value

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(median=self.median, p99=self.p99, met=self.met, n=len(self.samples))
        return d


def whole_command_ms(argv: list[str], env: dict[str, str] | None = None,
                     cwd: str | None = None) -> tuple[float, int]:  # fmt: skip
    """Wall time of a whole command, from outside: fork + exec + wait, timed
    with perf_counter (ms), and its exit code."""
    t0 = time.perf_counter()
    rc = subprocess.call(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    return round(1000.0 * (time.perf_counter() - t0), 3), rc


def floor_commands(python: str = sys.executable) -> dict[str, list[str]]:
    """The Python floor of issue 16: a bare interpreter, and the least a
    command needs (socket + msgpack, with this venv's site-packages put on
    sys.path by hand since -I -S skips site)."""
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    return {
        "floor_bare": [python, "-I", "-S", "-c", "pass"],
        "floor": [
            python,
            "-I",
            "-S",
            "-c",
            f"import sys; sys.path.append({site!r}); import socket, msgpack",
        ],
    }


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    from crane.agent.cgroup import detect_mode

    try:
        import psutil

        mem = psutil.virtual_memory().total
    except Exception:
        mem = None
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "cgroup_mode": detect_mode(),
        "event_loop": loop,
        "euid": os.geteuid(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def raise_fd_limit() -> int:
    """Children (controller, agents) inherit this: the 1,000-agent run needs fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[-1][:1] not in (b"Z", b"X")
    except OSError:
        return False


def exec_done(pid: int) -> bool:
    """True once the step's main process is no longer the agent's pre-exec
    fork. The agent reports StepStarted right after fork(), before the child
    joins its cgroup; a kill in that window misses it (bug reported with the
    bench), so "running" here means exec'd, hence inside its cgroup."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"crane.agent" not in f.read()
    except OSError:
        return True  # gone: nothing to wait for


def leaked_processes(base: str) -> list[int]:
    """Processes still running a job script of the cluster in ``base``, or
    whose parent does (the step's children)."""
    marker = base.encode()
    found = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if marker in f.read():
                    found.add(int(d))
        except OSError:
            continue
    kids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in found:
                kids.add(int(d))
    return sorted(found | kids)


LEAKS: list[dict[str, Any]] = []


wait_until = wait_for


# ---------------------------------------------------------------- clusters


class BenchCluster(LocalCluster):
    """A LocalCluster whose controller may run under a windowed cProfile
    (``bench/profiled.py``: SIGUSR1 starts, SIGUSR2 stops and dumps), and
    optionally one agent too."""

    def __init__(
        self, base: str, profile_out: str | None = None, profile_agent: str | None = None
    ) -> None:
        super().__init__(base)
        self.profile_out = profile_out
        self.profile_agent = (
            profile_agent  # this node's agent runs under the same windowed cProfile
        )
        self.workdir = os.path.join(self.base, "work")
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o1777)
        self._api: Api | None = None

    def start_controller(self) -> subprocess.Popen[bytes]:
        if not self.profile_out:
            return super().start_controller()
        argv = [sys.executable, PROFILED, "ctld", self.profile_out, "-C", self.config_path]
        return self._spawn("cranectld", argv)

    def start_agent(self, node: str) -> subprocess.Popen[bytes]:
        if not (self.profile_out and node == self.profile_agent):
            return super().start_agent(node)
        out = self.profile_out.replace(".prof", f".{node}.prof")
        argv = [sys.executable, PROFILED, "agent", out, "-C", self.config_path, "-n", node]
        return self._spawn(f"craned-{node}", argv)

    @property
    def ctld_pid(self) -> int:
        return self.procs["cranectld"].pid

    def api(self) -> Api:
        if self._api is None:
            from crane.config import load

            self._api = Api(load(self.config_path).cli_address)
        return self._api

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CRANE_CONF"] = self.config_path
        env["PATH"] = BIN + ":" + env.get("PATH", "/usr/bin:/bin")
        return env

    def cli(self, *argv: str) -> list[str]:
        return [os.path.join(BIN, argv[0]), *argv[1:]]

    def run_cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cli(*argv), capture_output=True, text=True, env=self.env(),
                              cwd=self.workdir, timeout=timeout)  # fmt: skip

    # ------------------------------------------------------------ jobs

    def spec(self, script: str = "sleep 300", **kw: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {"script": "#!/bin/sh\n" + script + "\n", "name": "bench",
                                "cwd": self.workdir, "stdout": "/dev/null"}  # fmt: skip
        spec.update(kw)
        return spec

    def submit(self, spec: dict[str, Any], repeat: int = 1) -> list[int]:
        return list(self.api()(m.SubmitJob(spec, repeat), timeout=300)["job_ids"])

    def job(self, job_id: int) -> dict[str, Any] | None:
        api = self.api()
        for history in (False, True):
            data = api(m.QueryJobs({"jobs": [job_id]}, history=history))
            if data["jobs"]:
                return data["jobs"][0]  # type: ignore[no-any-return]
        return None

    def running_pid(self, job_id: int, timeout: float = 30.0) -> int:
        """Wait until the job is RUNNING and its batch step's process has
        exec'd (see ``exec_done``)."""

        def check() -> int | None:
            data = self.api()(m.QueryJobs({"jobs": [job_id]}))
            for j in data["jobs"]:
                if j["state"] == "RUNNING":
                    for s in j["steps"]:
                        if s["step_id"] == 1 and s.get("pid") and exec_done(int(s["pid"])):
                            return int(s["pid"])
            return None

        return wait_until(check, timeout, f"job {job_id} running with a pid", 0.002)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None


class Api:
    """One persistent DEALER connection to the controller's CLI socket (the
    bench's Python API: no socket setup per request)."""

    def __init__(self, address: str) -> None:
        self.client = Client(address, 60.0)

    def __call__(self, msg: m.Message, timeout: float | None = None) -> dict[str, Any]:
        reply = self.client.request(msg, timeout)
        if isinstance(reply, m.Error):
            raise RuntimeError(f"{msg.TYPE}: {reply.message}")
        assert isinstance(reply, m.Ok), reply
        return reply.data

    def close(self) -> None:
        self.client.close()


@contextmanager
def cluster(name: str, nodes: int = 1, cpus: int = 4, memory: str = "8G", agents: bool = True,
            profile_out: str | None = None, profile_agent: str | None = None, up_timeout: float = 60.0,
            **extra: Any) -> Iterator[BenchCluster]:  # fmt: skip
    base = tempfile.mkdtemp(prefix=f"cb-{name}-", dir="/tmp")
    os.chmod(base, 0o755)
    c = BenchCluster(base, profile_out, profile_agent)
    ok = False
    try:
        c.write_config(make_config(base, nodes, cpus, memory, **extra))
        t0 = time.monotonic()
        if agents:
            try:
                c.up(timeout=up_timeout)
            except TimeoutError:
                # an agent that exited at start (e.g. the tree changed under it mid-import):
                # restart the dead ones once, and say so
                dead = [k for k, p in c.procs.items() if k != "cranectld" and p.poll() is not None]
                if not dead:
                    raise
                log(
                    f"cluster {name}: {len(dead)} agents exited at start ({dead[:5]}); restarting them once"
                )
                for k in dead:
                    c.start_agent(k[len("craned-") :])
                c.wait_nodes_up(up_timeout)
        else:
            c.start_controller()
            wait_until(
                lambda: os.path.exists(os.path.join(base, "cranectld.sock")),
                30,
                "controller socket",
            )
        log(f"cluster {name}: up in {time.monotonic() - t0:.1f}s ({base})")
        yield c
        ok = True
    finally:
        c.close()
        t0 = time.monotonic()
        try:
            c.down()
        finally:
            log(f"cluster {name}: down in {time.monotonic() - t0:.1f}s")
            leaked = [p for p in leaked_processes(base) if pid_alive(p)]
            if leaked:
                # job processes that outlived their cancelled job and the cluster: a product bug
                # (recorded in the results); they are ours, so end them by pid
                log(
                    f"cluster {name}: LEAK: {len(leaked)} job processes survived down(): {leaked[:10]}"
                )
                LEAKS.append({"cluster": name, "pids": leaked})
                for p in leaked:
                    try:
                        os.kill(p, 9)
                    except OSError:
                        pass
            if ok:
                shutil.rmtree(base, ignore_errors=True)
            else:
                log(f"cluster {name}: logs kept in {base}/log")
