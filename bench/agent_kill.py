"""One agent's share of a mass cancel: a StepManager (no controller, no
network) runs N ``sleep 300`` steps, each its own job, then gets N KillJob
orders at once, as an agent of the mass-cancel scenario does. Measured per
round: every step process dead (pidfd + epoll), every StepEnded sent, every
JobReleased sent, and the event loop's longest stall meanwhile (a 1 ms
ticker); and the CPU time of the whole process (the agent's work, its
threads, and this harness's polling). Each KillJob carries a banner, as a
``ccancel`` does (written to ``/dev/null`` here). Needs root (real cgroups).

    python -m bench.agent_kill [--steps 20] [--rounds 10] [--profile OUT.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import select
import shutil
import signal
import statistics
import tempfile
import time
import uuid

from crane.agent import cgroup as cgmod
from crane.agent.launcher import set_child_subreaper
from crane.agent.steps import StepManager
from crane.core import messages as m
from crane.core.states import KillReason


def _exec_done(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"crane.agent" not in f.read()
    except OSError:
        return True


async def _round(sm: StepManager, sent: list[m.Message], work: str, n: int, base_job: int,
                 prof: cProfile.Profile | None, banner: str) -> dict[str, float]:  # fmt: skip
    spec = {"uid": 0, "gid": 0, "user": "root", "cwd": work, "env": {"PATH": "/usr/bin:/bin"},
            "stdout": "/dev/null", "stderr": "/dev/null", "argv": ["sleep", "300"]}  # fmt: skip
    jobs = list(range(base_job, base_job + n))
    for j in jobs:
        sm.launch(m.LaunchStep(j, 1, dict(spec)))
    pids = [sm.steps[(j, 1)].pid for j in jobs]
    deadline = time.monotonic() + 60
    while not all(
        _exec_done(p) and len(sm.steps[(j, 1)].cg.pids()) >= 2
        for j, p in zip(jobs, pids, strict=True)
    ):
        assert time.monotonic() < deadline, "steps not running"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    sent.clear()
    ep = select.epoll()
    fds = [os.pidfd_open(p) for p in pids]
    for fd in fds:
        ep.register(fd, select.EPOLLIN)
    loop = asyncio.get_running_loop()
    lag = [0.0]
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            lag[0] = max(lag[0], now - last - 0.001)
            last = now

    dead_at = [0.0]
    left = [len(fds)]

    def on_dead() -> None:
        for _fd, _ in ep.poll(0):
            ep.unregister(_fd)
            left[0] -= 1
        if left[0] == 0:
            dead_at[0] = time.perf_counter()
            loop.remove_reader(ep.fileno())

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    loop.add_reader(ep.fileno(), on_dead)
    if prof:
        prof.enable()
    cpu0 = (time.process_time(), resource.getrusage(resource.RUSAGE_SELF))
    t0 = time.perf_counter()
    tasks = [
        asyncio.ensure_future(sm.kill_job(m.KillJob(j, None, 0.0, False, KillReason.CANCELLED)))
        for j in jobs
    ]
    ended_at = released_at = 0.0
    while not (ended_at and released_at and dead_at[0]):
        now = time.perf_counter()
        if not ended_at and sum(isinstance(x, m.StepEnded) for x in sent) == n:
            ended_at = now
        if not released_at and sum(isinstance(x, m.JobReleased) for x in sent) == n:
            released_at = now
        assert now - t0 < 60, "kill not done"
        await asyncio.sleep(0.0005)
    await asyncio.gather(*tasks)
    t_all = time.perf_counter()
    cpu1 = (time.process_time(), resource.getrusage(resource.RUSAGE_SELF))
    if prof:
        prof.disable()
    stop.set()
    await tick
    ep.close()
    for fd in fds:
        os.close(fd)
    return {"dead": dead_at[0] - t0, "ended": ended_at - t0, "released": released_at - t0,
            "tasks_done": t_all - t0, "max_loop_stall": lag[0], "cpu": cpu1[0] - cpu0[0],
            "cpu_sys": cpu1[1].ru_stime - cpu0[1].ru_stime}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--profile", default="")
    ap.add_argument(
        "--no-banner", action="store_true", help="KillJob without a banner (none is written)"
    )
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="crane-agentkill-", dir="/tmp")
    os.chmod(base, 0o711)
    work = tempfile.mkdtemp(prefix="crane-agentkill-work-", dir="/tmp")
    scope = f"crane-bench/{uuid.uuid4().hex[:10]}/n1"
    mode = cgmod.detect_mode()
    sent: list[m.Message] = []
    prof = cProfile.Profile() if args.profile else None
    results: list[dict[str, float]] = []

    async def amain() -> None:
        set_child_subreaper()
        sm = StepManager("n1", scope, os.path.join(base, "n1"), mode, sent.append)
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, sm.reap)
        for r in range(args.rounds):
            banner = "" if args.no_banner else "*** JOB CANCELLED AT now BY root ***"
            results.append(await _round(sm, sent, work, args.steps, 1000 * (r + 1), prof, banner))
        await asyncio.sleep(0.5)  # cleanup after the last reports (if deferred)

    try:
        asyncio.run(amain())
    finally:
        for job_id, step_id in cgmod.existing_steps(scope, mode):
            cg = cgmod.StepCgroup(scope, job_id, step_id, mode)
            cg.kill()
            cgmod.remove_job(scope, job_id, mode)
        for root in cgmod.hierarchy_roots(mode):
            for p in (scope, os.path.dirname(scope)):
                try:
                    os.rmdir(os.path.join(root, p))
                except OSError:
                    pass
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"mode {mode}, {args.steps} steps killed at once, {len(results)} rounds (median [min-max] ms)"
    )
    for k in results[0]:
        vals = [1000 * r[k] for r in results]
        print(f"  {k:15s} {statistics.median(vals):8.1f}  [{min(vals):.1f} - {max(vals):.1f}]")
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(40)
        s2 = io.StringIO()
        pstats.Stats(prof, stream=s2).sort_stats("tottime").print_stats(30)
        with open(args.profile, "w") as f:
            f.write(s.getvalue() + "\n" + s2.getvalue())


if __name__ == "__main__":
    main()
