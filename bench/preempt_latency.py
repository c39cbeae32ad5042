"""Preemption latency (CANCEL mode), end to end on a real local cluster.

A 2-node local cluster (partition CPU = crane01), QoS Background and
Interactive (Preempt=Background, PreemptMode=CANCEL) as in the seed. N times:
an exclusive Background job fills crane01; once it runs, an Interactive job is
submitted through the Python API and the clock runs from just before that
SubmitJob call until the Interactive job is RUNNING *and* the victim's batch
step pid is dead (both polled every 1 ms over one persistent API connection).
The Interactive job is cancelled between rounds.

Usage: python bench/preempt_latency.py [-n ROUNDS] [--keep]
Writes bench/results/preempt_latency.json and prints median / p99 in ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from crane.cacctmgr_parse import parse_argv
from crane.cli.common import load_config
from crane.core import messages as m
from crane.local import LocalCluster, make_config
from crane.polling import pid_alive, wait_for
from crane.transport import Client

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "preempt_latency.json")
POLL = 0.001
SETUP = (
    ["add", "qos", "Background", "Priority=100"],
    ["add", "qos", "Interactive", "Priority=5000", "Preempt=Background", "PreemptMode=CANCEL"],
    ["add", "account", "MyAccount"],
    ["modify", "account", "where", "Name=MyAccount", "set", "AllowedQos+=Background,Interactive"],
    ["add", "user", "root", "Account=MyAccount"],
)


class Api:
    """One persistent DEALER connection to the controller's CLI socket."""

    def __init__(self, address: str) -> None:
        self.client = Client(address, 30.0)

    def __call__(self, msg: m.Message) -> dict[str, Any]:
        reply = self.client.request(msg)
        if isinstance(reply, m.Error):
            raise RuntimeError(f"{msg.TYPE}: {reply.message}")
        assert isinstance(reply, m.Ok), reply
        return reply.data

    def job(self, job_id: int) -> dict[str, Any] | None:
        for history in (False, True):
            jobs = self(m.QueryJobs({"jobs": [job_id]}, history=history))["jobs"]
            if jobs:
                return jobs[0]  # type: ignore[no-any-return]
        return None


def wait(cond: Any, timeout: float, what: str) -> Any:
    return wait_for(cond, timeout, what, interval=POLL)


def spec(workdir: str, qos: str, command: str, exclusive: bool = False) -> dict[str, Any]:
    return {
        "name": qos.lower(), "partition": "CPU", "qos": qos, "account": "MyAccount",
        "script": "#!/bin/sh\n" + command + "\n", "cwd": workdir, "exclusive": exclusive,
        "stdout": os.path.join(workdir, "crane-%j.out"), "env": {"PATH": "/usr/bin:/bin"},
    }  # fmt: skip


def percentile(xs: list[float], q: float) -> float:
    """Nearest rank (with fewer than 100 samples, p99 is the maximum)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def run(rounds: int, keep: bool) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="crane-preempt-bench-")
    os.chmod(base, 0o755)
    workdir = os.path.join(base, "work")
    os.makedirs(workdir, mode=0o1777)
    c = LocalCluster(base)
    c.write_config(make_config(base, nodes=2, cpus=4))
    samples: list[float] = []
    to_dead: list[float] = []
    to_running: list[float] = []
    try:
        c.up(timeout=60)
        api = Api(load_config(c.config_path).cli_address)
        for argv in SETUP:
            api(m.AcctOp(parse_argv(argv)))
        low_spec = spec(workdir, "Background", "sleep 300", exclusive=True)
        high_spec = spec(workdir, "Interactive", "sleep 300")
        for r in range(rounds):
            low = api(m.SubmitJob(low_spec))["job_ids"][0]

            def low_pid(low: int = low) -> int | None:
                j = api.job(low)
                if j is None or j["state"] != "RUNNING":
                    return None
                pids = [s.get("pid") for s in j["steps"] if s["step_id"] == 1]
                return pids[0] if pids and pids[0] else None

            vpid = wait(low_pid, 30, f"round {r}: victim {low} running")
            # ---- measured path
            t0 = time.perf_counter()
            high = api(m.SubmitJob(high_spec))["job_ids"][0]
            query = m.QueryJobs({"jobs": [high]})
            t_dead = t_run = None
            deadline = t0 + 30
            while t_dead is None or t_run is None:
                if t_dead is None and not pid_alive(vpid):
                    t_dead = time.perf_counter()
                if t_run is None:
                    jobs = api(query)["jobs"]
                    if jobs and jobs[0]["state"] == "RUNNING":
                        t_run = time.perf_counter()
                if time.perf_counter() > deadline:
                    raise TimeoutError(
                        f"round {r}: victim dead at {t_dead}, preemptor running at {t_run}"
                    )
                if t_dead is None or t_run is None:
                    time.sleep(POLL)
            t_end = max(t_dead, t_run)
            # ---- end of the measured path
            v = wait(lambda low=low: (j := api.job(low)) and j["state"] == "CANCELLED" and j, 30,
                     f"round {r}: victim {low} CANCELLED")  # fmt: skip
            assert v["reason"] == f"Preempted by job {high}", v
            samples.append((t_end - t0) * 1000)
            to_dead.append((t_dead - t0) * 1000)
            to_running.append((t_run - t0) * 1000)
            api(m.Cancel(ids=[[high, None]], force=True))
            wait(lambda high=high: (j := api.job(high)) and j["state"] == "CANCELLED", 30,
                 f"round {r}: preemptor {high} cancelled")  # fmt: skip
            print(f"round {r + 1:2d}/{rounds}: {samples[-1]:7.1f} ms "
                  f"(victim dead {to_dead[-1]:.1f} ms, preemptor RUNNING {to_running[-1]:.1f} ms)",
                  file=sys.stderr)  # fmt: skip
    finally:
        c.down()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return {
        "benchmark": "preempt_latency",
        "description": "SubmitJob(Interactive) -> preemptor RUNNING and victim batch step pid dead; "
        "2-node local cluster, exclusive Background victim on crane01, PreemptMode CANCEL, 1 ms polling",
        "unit": "ms",
        "rounds": rounds,
        "median_ms": statistics.median(samples),
        "p99_ms": percentile(samples, 0.99),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "victim_dead_median_ms": statistics.median(to_dead),
        "preemptor_running_median_ms": statistics.median(to_running),
        "samples_ms": [round(x, 3) for x in samples],
        "victim_dead_ms": [round(x, 3) for x in to_dead],
        "preemptor_running_ms": [round(x, 3) for x in to_running],
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "root": os.geteuid() == 0,
        },  # fmt: skip
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", "--rounds", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the cluster directory (logs)")
    args = ap.parse_args()
    res = run(args.rounds, args.keep)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(res, f, indent=2)
    print(f"preemption latency over {res['rounds']} rounds: median {res['median_ms']:.1f} ms, "
          f"p99 {res['p99_ms']:.1f} ms (victim dead {res['victim_dead_median_ms']:.1f} ms, "
          f"preemptor RUNNING {res['preemptor_running_median_ms']:.1f} ms, medians); -> {RESULTS}")  # fmt: skip


if __name__ == "__main__":
    main()
