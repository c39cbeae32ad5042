"""Profiles of the slowest server-side paths: the controller runs under a
windowed cProfile (``bench/profiled_ctld.py``), the window covers exactly the
operation, and the top entries go to ``bench/results/profile_<name>.txt``.

cProfile sees only the event-loop thread; the store writer thread's CPU time
over the same window is read from /proc (psutil) and printed alongside."""

from __future__ import annotations

import io
import os
import pstats
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.common import RESULTS, BenchCluster, cluster, log, wait_until
from crane import messages as m


def _thread_cpu(pid: int) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def _window(
    c: BenchCluster, name: str, what: str, op: Callable[[], Any], out: str
) -> dict[str, Any]:
    pid = c.ctld_pid
    before = _thread_cpu(pid)
    os.kill(pid, signal.SIGUSR1)
    time.sleep(0.2)  # the handler runs on the next loop turn
    t0 = time.perf_counter()
    op()
    wall = time.perf_counter() - t0
    os.kill(pid, signal.SIGUSR2)
    wait_until(lambda: os.path.exists(out + ".done"), 60, "profile dump")
    after = _thread_cpu(pid)
    main = after.get(pid, 0) - before.get(pid, 0)
    others = sum(v - before.get(k, 0) for k, v in after.items() if k != pid)
    buf = io.StringIO()
    st = pstats.Stats(out, stream=buf)
    # the profiler starts inside a running callback: a frame already on the stack can
    # show a cumulative time a little above the sum of own times; use the larger
    total = max([st.total_tt] + [v[3] for v in st.stats.values()])  # type: ignore[attr-defined]
    buf.write(f"profile {name}: {what}\n")
    buf.write(f"operation wall time {wall:.3f} s (profiled: cProfile slows Python code ~1.5-2x)\n")
    buf.write(f"cranectld CPU in the window: event-loop thread {main:.3f} s (includes the 0.2 s lead-in), "
              f"other threads (store writer, zmq I/O) {others:.3f} s\n")  # fmt: skip
    buf.write(f"profiled event-loop time {total:.3f} s\n\n")
    buf.write("=== top 15 by cumulative time ===\n")
    st.sort_stats("cumulative").print_stats(15)
    buf.write("\n=== top 15 by own (tottime) ===\n")
    st.sort_stats("tottime").print_stats(15)
    buf.write("\n=== callers of the top 6 by own time ===\n")
    st.print_callers(6)
    text = buf.getvalue()
    path = os.path.join(RESULTS, f"profile_{name}.txt")
    with open(path, "w") as f:
        f.write(text)
    top = _top(st, total)
    log(f"profile {name}: wall {wall:.2f}s -> {path}")
    return {"name": name, "what": what, "file": os.path.relpath(path, os.path.dirname(RESULTS)),
            "wall_s": round(wall, 3), "loop_thread_cpu_s": round(main, 3), "other_threads_cpu_s": round(others, 3),
            "profiled_s": round(total, 3), "top_cumulative": top}  # fmt: skip


def _top(st: pstats.Stats, total: float, n: int = 15) -> list[dict[str, Any]]:
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((ct, tt, nc, f"{os.path.basename(file)}:{line}({func})"))
    rows.sort(reverse=True)
    return [{"func": f, "calls": nc, "cum_s": round(ct, 4), "own_s": round(tt, 4),
             "cum_share": round(ct / total, 3) if total else None} for ct, tt, nc, f in rows[:n]]  # fmt: skip


def profile_all(opts: Any) -> list[dict[str, Any]]:
    os.makedirs(RESULTS, exist_ok=True)
    n = opts.pending
    out: list[dict[str, Any]] = []
    tmp = f"/tmp/crane-bench-prof-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)

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
                out.append(
                    _window(
                        c,
                        name,
                        f"SubmitJob(repeat=10000) x {n // 10_000} (held jobs)",
                        submit_all,
                        prof,
                    )
                )
            else:
                ids = submit_all()

                def cancel(c: BenchCluster = c, ids: list[int] = ids) -> None:
                    r = subprocess.run(
                        c.cli("ccancel", "-Q", "-u", "root"), capture_output=True, env=c.env()
                    )
                    assert r.returncode == 0, r.stderr
                    c.api()(m.WaitJobs(ids), timeout=600)

                out.append(
                    _window(
                        c,
                        name,
                        f"ccancel -u root over {len(ids)} pending jobs + WaitJobs",
                        cancel,
                        prof,
                    )
                )

    # 2. cancel many running jobs
    agents, cpus = opts.agents, opts.agent_cpus
    names = [f"crane{i:02d}" for i in range(1, agents + 1)]
    prof = os.path.join(tmp, "cancel_running.prof")
    with cluster("prof-running", nodes=agents, cpus=cpus, up_timeout=120, profile_out=prof,
                 Partitions=[{"name": "CPU", "nodes": ",".join(names)}]) as c:  # fmt: skip
        ids = c.submit(c.spec(), agents * cpus)
        api = c.api()
        wait_until(lambda: sum(j["state"] == "RUNNING" and any(s.get("pid") for s in j["steps"])
                               for j in api(m.QueryJobs({"jobs": ids}))["jobs"]) == len(ids),
                   120, "jobs running", 0.1)  # fmt: skip
        time.sleep(0.5)

        def cancel_r(c: BenchCluster = c) -> None:
            r = subprocess.run(
                c.cli("ccancel", "-Q", "--wait", "-t", "R"), capture_output=True, env=c.env()
            )
            assert r.returncode == 0, r.stderr

        out.append(_window(c, "cancel_running", f"ccancel --wait -t R over {len(ids)} running jobs on {agents} agents",
                           cancel_r, prof))  # fmt: skip
    return out
