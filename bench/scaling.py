"""How the controller's cancel figures grow (issue 16): a mass cancel of 1k,
10k and 100k pending jobs by one filter, measured over the bench's API
connection (server side: the request in -> every job terminal and committed).
Two kinds of pending jobs: held ones (out of the scheduler's queue), and
queued ones (in it: the cluster's agents never start, so they wait).

    python -m bench.scaling [--sizes 1000,10000,100000] [--runs 10] [--big-runs 3] [--kinds held,queued]

``pending_figures(opts)`` returns the figures (for ``python -m bench``):
one dict per size with the median and p99 of each measure over the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import psutil

from bench.common import BenchCluster, cluster, log
from crane.core import messages as m

SIZES = (1_000, 10_000, 100_000)
CHUNK = 10_000  # jobs per SubmitJob(repeat=...)


def p99(samples: list[float]) -> float:
    """The 99th percentile (nearest rank; the maximum below 100 samples)."""
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, -(-99 * len(s) // 100) - 1))]


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(samples), 3), "p99": round(p99(samples), 3),
            "min": round(min(samples), 3), "max": round(max(samples), 3), "runs": len(samples),
            "samples": [round(x, 3) for x in samples]}  # fmt: skip


def _loop_cpu(pid: int) -> float:
    """CPU seconds of the controller's event-loop thread (its main thread)."""
    for t in psutil.Process(pid).threads():
        if t.id == pid:
            return float(t.user_time + t.system_time)
    return 0.0


def _held(c: BenchCluster, spec: dict[str, Any], n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += c.submit(spec, min(CHUNK, n - len(ids)))
    return ids


def cancel_pending_once(c: BenchCluster, spec: dict[str, Any], n: int) -> dict[str, float]:
    """Queue ``n`` held jobs, then one ``Cancel(user=root)``: ms until its
    reply (every intent on disk) and until ``WaitJobs`` over them answers
    (every job terminal, committed); the controller loop's CPU ms."""
    api = c.api()
    ids = _held(c, spec, n)
    time.sleep(0.2)  # the submissions' commits and launch bookkeeping settle
    cpu0 = _loop_cpu(c.ctld_pid)
    t0 = time.perf_counter()
    res = api(m.Cancel(filters={"user": "root"}), timeout=600)
    t1 = time.perf_counter()
    api(m.WaitJobs(ids), timeout=600)
    t2 = time.perf_counter()
    cpu = _loop_cpu(c.ctld_pid) - cpu0
    if len(res["cancelled"]) != n:
        raise RuntimeError(f"cancelled {len(res['cancelled'])} of {n}")
    return {"reply_ms": 1000 * (t1 - t0), "done_ms": 1000 * (t2 - t0), "loop_cpu_ms": 1000 * cpu}


def pending_figures(opts: Any = None) -> list[dict[str, Any]]:
    """Mass cancel of pending (held) jobs by one filter, per size: median and
    p99 of the reply, of all terminal and committed, and of the
    controller loop's CPU time. ``opts``: ``sizes``, ``runs`` (sizes up to
    10k), ``big_runs`` (larger sizes)."""
    sizes = list(getattr(opts, "sizes", None) or SIZES)
    runs = int(getattr(opts, "runs", 10) or 10)
    big_runs = int(getattr(opts, "big_runs", 3) or 3)
    kinds = list(getattr(opts, "kinds", None) or ["held"])
    out = []
    for kind in kinds:
        # queued: no agent ever registers, so the jobs wait in the scheduler's queue
        with cluster(f"scaling-{kind}", nodes=1, cpus=4, agents=kind != "queued") as c:
            spec = c.spec("true", hold=kind == "held")
            cancel_pending_once(c, spec, 100)  # warm-up: the user exists, code paths are hot
            for n in sizes:
                out.append(_size(c, spec, kind, n, runs if n <= 10_000 else big_runs))
    return out


def _size(c: BenchCluster, spec: dict[str, Any], kind: str, n: int, k: int) -> dict[str, Any]:
    log(f"scaling: cancel {n} pending ({kind}) jobs by filter, {k} runs")
    got = [cancel_pending_once(c, spec, n) for _ in range(k)]
    row: dict[str, Any] = {"what": "cancel pending jobs by filter (API: Cancel user=root, then WaitJobs)",
                           "kind": kind, "jobs": n}  # fmt: skip
    for key in ("reply_ms", "done_ms", "loop_cpu_ms"):
        row[key] = summary([g[key] for g in got])
    row["jobs_per_s"] = round(n / (row["done_ms"]["median"] / 1000), 1)
    log(
        f"  {n}: all terminal median {row['done_ms']['median']:.1f} ms, p99 {row['done_ms']['p99']:.1f} ms"
    )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = "kind   | jobs     | reply median / p99  | all terminal median / p99 | loop CPU median | jobs/s  | runs"
    lines = [head]
    for r in rows:
        lines.append(f"{r['kind']:<6} | {r['jobs']:>8} | {r['reply_ms']['median']:7.1f} / {r['reply_ms']['p99']:7.1f} ms | "
                     f"{r['done_ms']['median']:9.1f} / {r['done_ms']['p99']:9.1f} ms  | "
                     f"{r['loop_cpu_ms']['median']:9.1f} ms  | {r['jobs_per_s']:>7,.0f} | {r['done_ms']['runs']}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--runs", type=int, default=10, help="runs per size up to 10,000 jobs")
    ap.add_argument("--big-runs", type=int, default=3, help="runs per larger size")
    ap.add_argument(
        "--kinds", default="held,queued", help="held (out of the queue), queued (in it)"
    )
    ap.add_argument("--json", default="", help="also write the figures to this file")
    opts = ap.parse_args(argv)
    opts.sizes = [int(x) for x in opts.sizes.split(",") if x]
    opts.kinds = [x for x in opts.kinds.split(",") if x]
    rows = pending_figures(opts)
    print(table(rows))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
