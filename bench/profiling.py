"""Profiles of the slowest server-side paths: the controller runs under a
windowed cProfile (``bench/profiled.py``), the window covers exactly the
operation, and the top entries go to ``bench/results/profile_<name>.txt``.

cProfile sees only the event-loop thread; the store writer thread's CPU time
over the same window is read from /proc (psutil) and printed alongside."""

from __future__ import annotations

import io
import os
import pstats
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.common import RESULTS, BenchCluster, cluster, exec_done, log, wait_until
from crane.core import messages as m

OUTDIR = [RESULTS]  # profile_*.txt go next to the JSON (--out)


def _thread_cpu(pid: int) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def _window(c: BenchCluster, name: str, what: str, op: Callable[[], Any], out: str,
            agent: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Profile ``op`` in the controller (and in ``agent``'s craned when given)."""
    targets = [("cranectld", c.ctld_pid, out, name)]
    if agent:
        targets.append((f"craned {agent}", c.procs[f"craned-{agent}"].pid,
                        out.replace(".prof", f".{agent}.prof"), name + "_agent"))  # fmt: skip
    before = {pid: _thread_cpu(pid) for _, pid, _, _ in targets}
    for _, pid, _, _ in targets:
        os.kill(pid, signal.SIGUSR1)
    time.sleep(0.2)  # the handler runs on the next loop turn
    t0 = time.perf_counter()
    op()
    wall = time.perf_counter() - t0
    for _, pid, _, _ in targets:
        os.kill(pid, signal.SIGUSR2)
    results = []
    for label, pid, path_prof, pname in targets:
        wait_until(lambda p=path_prof: os.path.exists(p + ".done"), 60, "profile dump")
        after = _thread_cpu(pid)
        main = after.get(pid, 0) - before[pid].get(pid, 0)
        others = sum(v - before[pid].get(k, 0) for k, v in after.items() if k != pid)
        results.append(_report(pname, label, what, wall, main, others, path_prof))
    return results


def _report(name: str, label: str, what: str, wall: float, main: float, others: float,
            prof: str) -> dict[str, Any]:  # fmt: skip
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    # the profiler starts inside a running callback: a frame already on the stack can
    # show a cumulative time a little above the sum of own times; use the larger
    total = max([st.total_tt] + [v[3] for v in st.stats.values()])  # type: ignore[attr-defined]
    buf.write(f"profile {name} ({label}): {what}\n")
    buf.write(f"operation wall time {wall:.3f} s (profiled: cProfile slows Python code ~1.5-2x)\n")
    buf.write(f"{label} CPU in the window: event-loop thread {main:.3f} s (includes the 0.2 s lead-in), "
              f"other threads (store writer, zmq I/O) {others:.3f} s\n")  # fmt: skip
    buf.write(f"profiled event-loop time {total:.3f} s, of which idle in epoll {_idle(st):.3f} s "
              "(top lists below include the idle wait for plain-asyncio processes)\n\n")  # fmt: skip
    buf.write("=== top 15 by cumulative time ===\n")
    st.sort_stats("cumulative").print_stats(15)
    buf.write("\n=== top 15 by own (tottime) ===\n")
    st.sort_stats("tottime").print_stats(15)
    buf.write("\n=== callers of the top 6 by own time ===\n")
    st.print_callers(6)
    path = os.path.join(OUTDIR[0], f"profile_{name}.txt")
    with open(path, "w") as f:
        f.write(buf.getvalue())
    log(f"profile {name}: wall {wall:.2f}s -> {path}")
    return {"name": name, "process": label, "what": what,
            "file": path, "wall_s": round(wall, 3),
            "loop_thread_cpu_s": round(main, 3), "other_threads_cpu_s": round(others, 3),
            "profiled_s": round(total, 3), "idle_s": round(_idle(st), 3),
            "top_cumulative": _top(st, total)}  # fmt: skip


IDLE = ("<method 'poll' of 'select.epoll' objects>", "<method 'select' of 'select.epoll' objects>")
LOOP = ("_run_once", "select", "run_forever", "run_until_complete") + IDLE


def _idle(st: pstats.Stats) -> float:
    """Time blocked in epoll (plain asyncio loops, e.g. craned); uvloop's wait is invisible."""
    return sum(v[2] for (_f, _l, func), v in st.stats.items() if func in IDLE)  # type: ignore[attr-defined]


def _top(st: pstats.Stats, total: float, n: int = 15) -> list[dict[str, Any]]:
    """Top entries by cumulative time, shares of the busy (non-idle) time; the
    event loop's own frames are left out."""
    total = max(1e-9, total - _idle(st))
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        if func in LOOP:
            continue
        rows.append((ct, tt, nc, f"{os.path.basename(file)}:{line}({func})"))
    rows.sort(reverse=True)
    return [{"func": f, "calls": nc, "cum_s": round(ct, 4), "own_s": round(tt, 4),
             "cum_share": round(ct / total, 3) if total else None} for ct, tt, nc, f in rows[:n]]  # fmt: skip


def profile_all(opts: Any) -> list[dict[str, Any]]:
    OUTDIR[0] = (
        os.path.dirname(os.path.abspath(opts.out)) if getattr(opts, "out", None) else RESULTS
    )
    os.makedirs(OUTDIR[0], exist_ok=True)
    n = opts.pending
    out: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="crane-bench-prof-")
    try:
        return _profile_all(opts, tmp, n, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _profile_all(opts: Any, tmp: str, n: int, out: list[dict[str, Any]]) -> list[dict[str, Any]]:

    # 1. cancel N pending jobs by user (the mass-cancel path), and submission of N held jobs
    for name in ("submit", "cancel_pending"):
        prof = os.path.join(tmp, f"{name}.prof")
        with cluster(f"prof-{name}", nodes=1, cpus=4, profile_out=prof) as c:
            spec = c.spec("true", hold=True)
            c.submit(spec)

            def submit_all(c: BenchCluster = c, spec: dict[str, Any] = spec) -> list[int]:
                ids: list[int] = []
                for _ in range(n // 10_000 or 1):
                    ids += c.submit(spec, min(10_000, n))
                return ids

            if name == "submit":
                what = f"SubmitJob(repeat=10000) x {n // 10_000} (held jobs)"
                out += _window(c, name, what, submit_all, prof)
            else:
                ids = submit_all()

                def cancel(c: BenchCluster = c, ids: list[int] = ids) -> None:
                    r = subprocess.run(
                        c.cli("ccancel", "-Q", "-u", "root"), capture_output=True, env=c.env()
                    )
                    assert r.returncode == 0, r.stderr
                    c.api()(m.WaitJobs(ids), timeout=600)

                what = f"ccancel -u root over {len(ids)} pending jobs + WaitJobs"
                out += _window(c, name, what, cancel, prof)

    # 2. cancel many running jobs
    agents, cpus = opts.agents, opts.agent_cpus
    names = [f"crane{i:02d}" for i in range(1, agents + 1)]
    prof = os.path.join(tmp, "cancel_running.prof")
    with cluster("prof-running", nodes=agents, cpus=cpus, up_timeout=120, profile_out=prof, profile_agent=names[0],
                 Partitions=[{"name": "CPU", "nodes": ",".join(names)}]) as c:  # fmt: skip
        ids = c.submit(c.spec(), agents * cpus)
        api = c.api()

        def running() -> bool:
            jobs = api(m.QueryJobs({"jobs": ids}))["jobs"]
            pids = [
                s["pid"]
                for j in jobs
                if j["state"] == "RUNNING"
                for s in j["steps"]
                if s.get("pid")
            ]
            return len(pids) == len(ids) and all(exec_done(p) for p in pids)

        wait_until(running, 180, "jobs running", 0.5)
        time.sleep(0.5)

        def cancel_r(c: BenchCluster = c) -> None:
            r = subprocess.run(
                c.cli("ccancel", "-Q", "--wait", "-t", "R"), capture_output=True, env=c.env()
            )
            assert r.returncode == 0, r.stderr

        what = f"ccancel --wait -t R over {len(ids)} running jobs on {agents} agents"
        out += _window(c, "cancel_running", what, cancel_r, prof, agent=names[0])
    return out
