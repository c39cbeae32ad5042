"""How the cancel of running jobs grows with the number of agents (issue 16's
scaling table, controller side): 2,000 running jobs spread over 10 -> 100 ->
1,000 agents, one API ``Cancel`` by user, until ``WaitJobs`` answers (every
job terminal, its steps reported ended, its node share released, persisted).

The agents are fake (allowed for the controller side): ONE helper process,
one DEALER socket per node as ``bench/fake_agents.py`` sets them up, and a
*no-process executor*: a ``LaunchStep`` is answered at once with
``StepStarted`` (the helper's own pid stands for the step's), a ``KillJob``
with ``StepEnded`` (CANCELLED, signal 9) for each of the job's steps on that
node and ``JobReleased``. So the figures are the controller's own work (and
the messages'), not process start or death: the real-agent figure is the
side-by-side table's row.

    python -m bench.scaling_agents            # 10, 100, 1000 agents
    python -m bench.scaling_agents serve -C config.yaml    # the helper alone
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import zmq

from bench.common import cluster, log, wait_until
from bench.fake_agents import agent_sockets
from crane.config import load
from crane.core import messages as m
from crane.core.states import JobState, StepEnd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 60.0  # WaitJobs of one round: 2,000 cancelled jobs take seconds, not minutes


# ---------------------------------------------------------------- the fake executor


def serve(config: str) -> None:
    """Register every node of ``config``, heartbeat, and answer launches and
    kills at once (see the module's doc). Ends on SIGTERM."""
    cfg = load(config)
    names = list(cfg.nodes)
    ctx, socks, register, heartbeat = agent_sockets(cfg, names, {zmq.SNDHWM: 100_000})
    steps: list[dict[int, list[int]]] = [{} for _ in names]  # per node: job -> its step ids here
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    for i, s in enumerate(socks):
        s.send(register[i])
    n, pid = len(socks), os.getpid()
    interval = cfg.heartbeat_interval
    next_hb = [time.monotonic() + interval * (i + 1) / n for i in range(n)]
    poller = zmq.Poller()
    index = {}
    for i, s in enumerate(socks):
        poller.register(s, zmq.POLLIN)
        index[s] = i
    while not stop:
        now = time.monotonic()
        for i in range(n):
            if next_hb[i] <= now:
                socks[i].send(heartbeat[i])
                next_hb[i] += interval
        for s, _ in poller.poll(20):
            i = index[s]
            while True:
                try:
                    data = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg, _ = m.decode(data)
                except m.BadMessage:
                    continue
                if isinstance(msg, m.RegisterAck):
                    if not msg.ok:
                        s.send(register[i])
                elif isinstance(msg, m.LaunchStep):
                    steps[i].setdefault(msg.job_id, []).append(msg.step_id)
                    s.send(m.encode(m.StepStarted(msg.job_id, msg.step_id, pid)))
                elif isinstance(msg, m.KillJob):
                    here = steps[i].get(msg.job_id, [])
                    ended = here if msg.step_id is None else [x for x in here if x == msg.step_id]
                    for step in ended:
                        s.send(m.encode(m.StepEnded(msg.job_id, step, 0, 9, StepEnd.CANCELLED)))
                        here.remove(step)
                    if msg.step_id is None:
                        steps[i].pop(msg.job_id, None)
                        s.send(m.encode(m.JobReleased(msg.job_id)))
    for s in socks:
        s.close(linger=0)
    ctx.term()


# ---------------------------------------------------------------- the measurement


def measure(agents: int, jobs: int, rounds: int) -> dict[str, Any]:
    """``jobs`` running jobs over ``agents`` fake agents, cancelled by user
    ``rounds`` times: the Cancel reply and the WaitJobs answer, in ms."""
    per = -(-jobs // agents)
    width = max(4, len(str(agents)))
    names = f"crane[{1:0{width}d}-{agents:0{width}d}]"
    reply_ms: list[float] = []
    done_ms: list[float] = []
    with cluster(f"scale{agents}", nodes=1, cpus=per, agents=False,
                 Nodes=[{"name": names, "cpu": per, "memory": "64G"}],
                 Partitions=[{"name": "CPU", "nodes": names}], DefaultPartition="CPU") as c:  # fmt: skip
        fake = subprocess.Popen([sys.executable, "-m", "bench.scaling_agents", "serve", "-C", c.config_path],
                                env=c.env(), cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            c.wait_nodes_up(timeout=120)
            api = c.api()
            spec = c.spec(cpus=1)
            for _ in range(rounds):
                ids = c.submit(spec, jobs)

                def running(ids: list[int] = ids) -> bool:
                    got = api(m.QueryJobs({"jobs": ids}))["jobs"]
                    return len(got) == len(ids) and all(j["state"] == JobState.RUNNING for j in got)

                wait_until(running, 180, f"{jobs} jobs running on {agents} fake agents", 0.05)
                t0 = time.perf_counter()
                api(m.Cancel(filters={"user": "root"}), timeout=120)
                t1 = time.perf_counter()
                api(m.WaitJobs(ids), timeout=WAIT_S)
                t2 = time.perf_counter()
                left = api(m.QueryJobs({"jobs": ids}))["jobs"]
                if left:
                    raise RuntimeError(f"{len(left)} jobs still active after WaitJobs")
                reply_ms.append(round(1000 * (t1 - t0), 3))
                done_ms.append(round(1000 * (t2 - t0), 3))
            log(f"scaling: {jobs} jobs on {agents} fake agents: cancel -> all recorded, median "
                f"{statistics.median(done_ms):.0f} ms over {rounds}")  # fmt: skip
        finally:
            fake.send_signal(signal.SIGTERM)
            try:
                fake.wait(30)
            except subprocess.TimeoutExpired:
                fake.kill()
                fake.wait()
    return {
        "agents": agents,
        "jobs": jobs,
        "jobs_per_agent": per,
        "reply_ms": reply_ms,
        "done_ms": done_ms,
    }


def run(sizes: tuple[int, ...] = (10, 100, 1000), jobs: int = 2000,
        rounds: dict[int, int] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    rounds = rounds or {10: 10, 100: 10, 1000: 3}
    out = []
    for n in sizes:
        try:
            out.append(measure(n, jobs, rounds.get(n, 3)))
        except Exception as e:  # one size failing leaves the others
            log(f"scaling: {n} agents failed: {type(e).__name__}: {e}")
            out.append({"agents": n, "jobs": jobs, "error": f"{type(e).__name__}: {e}"[:300]})
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        ap = argparse.ArgumentParser(prog="scaling_agents serve")
        ap.add_argument("-C", "--config", required=True)
        serve(ap.parse_args(argv[1:]).config)
        return
    ap = argparse.ArgumentParser(prog="python -m bench.scaling_agents", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument(
        "--rounds", type=int, default=0, help="rounds per size (default 10, 3 for 1,000)"
    )
    a = ap.parse_args(argv)
    sizes = tuple(int(x) for x in a.sizes.split(","))
    rounds = {n: a.rounds for n in sizes} if a.rounds else None
    for row in run(sizes, a.jobs, rounds):
        if "error" in row:
            print(f"{row['agents']:>5} agents: FAILED: {row['error']}")
            continue
        d = row["done_ms"]
        print(f"{row['agents']:>5} agents x {row['jobs_per_agent']} jobs: cancel -> recorded median "
              f"{statistics.median(d):.0f} ms (max {max(d):.0f}, n={len(d)}); reply median "
              f"{statistics.median(row['reply_ms']):.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
