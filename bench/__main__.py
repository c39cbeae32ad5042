"""``python -m bench``: run every scenario of issue 7 on local clusters, print
the table and write bench/results/latest.json (+ profile_*.txt).

    python -m bench                 # default sizes, < 10 minutes on 2 cores
    python -m bench --full          # 100,000 pending jobs for the mass cancel
    python -m bench --only cancel1,preempt --no-profile
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

from bench import scenarios
from bench.common import LEAKS, RESULTS, Result, log, machine, raise_fd_limit

GROUPS = {
    "cancel1": (
        scenarios.cancel_one,
        ["cancel_cli_dead", "cancel_cli_visible", "cancel_api_done", "ccancel_wall"],
    ),
    "queue": (
        scenarios.queue_scale,
        ["cancel_pending_user", "submit_api", "submit_cbatch_single", "memory_per_job"],
    ),
    "running": (scenarios.cancel_running, ["cancel_running"]),
    "preempt": (scenarios.preemption, ["preemption"]),
    "idle": (scenarios.idle_agents, ["idle_agents_cpu"]),
}
ORDER = ["cancel_cli_dead", "cancel_cli_visible", "cancel_api_done", "ccancel_wall", "cancel_pending_user",
         "cancel_running", "preemption", "submit_api", "submit_cbatch_single", "memory_per_job", "idle_agents_cpu"]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--full",
        action="store_true",
        help="100,000 pending jobs for the mass cancel (default 20,000)",
    )
    ap.add_argument(
        "--rounds", type=int, default=20, help="rounds of the single-job latency scenarios"
    )
    ap.add_argument(
        "--pending", type=int, default=20_000, help="held jobs for mass cancel / memory"
    )
    ap.add_argument("--singles", type=int, default=200, help="single cbatch submissions")
    ap.add_argument(
        "--agents", type=int, default=100, help="real agents for the running mass cancel"
    )
    ap.add_argument("--agent-cpus", type=int, default=20, help="cpus per agent (one job per cpu)")
    ap.add_argument("--running-rounds", type=int, default=2)
    ap.add_argument("--idle-agents", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=int, default=10)
    ap.add_argument(
        "--no-plain-idle", action="store_true", help="skip the idle run without CurveZMQ"
    )
    ap.add_argument("--only", default="", help=f"comma list of {','.join(GROUPS)},profile")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", default=os.path.join(RESULTS, "latest.json"))
    return ap.parse_args(argv)


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "jobs/s":
        return f"{v:,.0f} jobs/s"
    if unit == "B/job":
        return f"{v:,.0f} B/job"
    if unit == "% core":
        return f"{v:.1f} %"
    return f"{v:g} {unit}"


def table(results: list[Result]) -> str:
    rows = [("scenario", "median", "p99", "target", "met?")]
    notes = []
    for i, r in enumerate(results, 1):
        met = {True: "yes", False: "NO", None: "n/a"}[r.met]
        if r.error:
            met = "ERROR"
        p = fmt(r.p99, r.unit) if len(r.samples) > 1 else "(1 run)"
        name = f"{i}. {r.scenario}" + (" *" if r.variant else "")
        rows.append((name, fmt(r.median, r.unit), p, r.target, met))
        if r.variant:
            notes.append(f"  * {i}: {r.variant}")
        if r.error:
            notes.append(f"  ! {i}: {r.error}")
    w = [max(len(row[k]) for row in rows) for k in range(5)]
    lines = []
    for j, row in enumerate(rows):
        lines.append(" | ".join(c.ljust(w[k]) for k, c in enumerate(row)))
        if j == 0:
            lines.append("-+-".join("-" * x for x in w))
    return "\n".join(lines + ([""] + notes if notes else []))


def details(results: list[Result]) -> str:
    out = []
    for r in results:
        if r.key == "ccancel_wall" and r.extra:
            nf = r.extra["not_found_ms"]
            out.append(
                f"ccancel 999999 (not found): median {nf['median']:.1f} ms, max {nf['max']:.1f} ms"
            )
            for k, v in r.extra["baselines_ms"].items():
                out.append(f"baseline {k}: median {v:.1f} ms")
            for label, d in r.extra["import_costs"].items():
                out.append(
                    f"-X importtime, {label}: total {d['total_ms']} ms; top-level cumulative:"
                )
                out.append(
                    "    " + ", ".join(f"{k} {v}" for k, v in d["top_level_cumulative_ms"][:8])
                )
                out.append("  top self: " + ", ".join(f"{k} {v}" for k, v in d["top_self_ms"][:8]))
                out.append(
                    "  self by package: "
                    + ", ".join(f"{k} {v}" for k, v in d["self_ms_by_package"][:10])
                )
        elif r.extra and not r.error:
            short = {
                k: v for k, v in r.extra.items() if not (isinstance(v, dict) and "samples" in v)
            }
            for k, v in r.extra.items():
                if isinstance(v, dict) and "samples" in v:
                    short[k] = {"median": v["median"], "max": v["max"]}
            out.append(f"{r.key}: {json.dumps(short)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    if opts.full:
        opts.pending = 100_000
    only = [x for x in opts.only.split(",") if x]
    unknown = set(only) - set(GROUPS) - {"profile"}
    if unknown:
        sys.exit(f"unknown --only group(s): {', '.join(sorted(unknown))}")

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    fds = raise_fd_limit()
    os.makedirs(RESULTS, exist_ok=True)
    info = machine()
    info["fd_limit"] = fds
    log(f"machine: {info['cpu_model']}, {info['cores']} cores, kernel {info['kernel']}, "
        f"python {info['python']}, cgroup {info['cgroup_mode']}")  # fmt: skip
    t_start = time.monotonic()
    results: list[Result] = []
    for group, (fn, keys) in GROUPS.items():
        if only and group not in only:
            continue
        t0 = time.monotonic()
        try:
            results += fn(opts)
        except KeyboardInterrupt:
            log("interrupted")
            raise
        except Exception as e:
            traceback.print_exc()
            for k in keys:
                results.append(
                    Result(k, k, "", [], "", True, None, error=f"{type(e).__name__}: {e}"[:300])
                )
        log(f"group {group} took {time.monotonic() - t0:.1f}s")
    results.sort(key=lambda r: ORDER.index(r.key) if r.key in ORDER else 99)
    profiles: list[dict[str, Any]] = []
    if not opts.no_profile and (not only or "profile" in only):
        from bench.profiling import profile_all

        t0 = time.monotonic()
        try:
            profiles = profile_all(opts)
        except Exception as e:
            traceback.print_exc()
            profiles = [{"error": f"{type(e).__name__}: {e}"}]
        log(f"profiles took {time.monotonic() - t0:.1f}s")
    total = time.monotonic() - t_start
    info["loadavg_at_end"] = list(os.getloadavg())
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_s": round(total, 1),
        "machine": info,
        "options": vars(opts),
        "results": [r.to_json() for r in results],
        "profiles": profiles,
        "leaked_processes": LEAKS,
    }
    with open(opts.out, "w") as f:
        json.dump(doc, f, indent=1)
    print()
    print(f"Crane bench: {info['cpu_model']} ({info['cores']} cores), kernel {info['kernel']}, "
          f"Python {info['python']}, cgroup {info['cgroup_mode']}; total {total:.0f} s; "
        f"load average at start {info['loadavg_at_start'][0]:.2f}")  # fmt: skip
    print()
    print(table(results))
    print()
    print(details(results))
    for p in profiles:
        if "error" in p:
            print(f"profile failed: {p['error']}")
            continue
        print(f"\nprofile {p['name']} [{p['process']}] ({p['what']}): wall {p['wall_s']} s, loop thread "
              f"{p['loop_thread_cpu_s']} s CPU, other threads {p['other_threads_cpu_s']} s CPU, profiled "
              f"{p['profiled_s']} s (idle {p['idle_s']} s) -> {p['file']}; shares of the busy time:")  # fmt: skip
        for row in p["top_cumulative"][:15]:
            share = f"{100 * row['cum_share']:5.1f}%" if row["cum_share"] is not None else "   - "
            print(
                f"  {share} cum {row['cum_s']:8.3f}s own {row['own_s']:7.3f}s {row['calls']:>8} {row['func']}"
            )
    for leak in LEAKS:
        print(
            f"LEAK: cluster {leak['cluster']}: {len(leak['pids'])} job processes outlived down() (killed)"
        )
    print(f"\nwritten: {opts.out}")


if __name__ == "__main__":
    main()
