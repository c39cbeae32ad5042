"""``python -m bench``: run every scenario of issue 7 on local clusters, print
the table and write bench/results/latest.json (+ profile_*.txt).

    python -m bench                 # default sizes, < 10 minutes on 2 cores
    python -m bench --full          # 100,000 pending jobs for the mass cancel
    python -m bench --only cancel1,preempt --no-profile
    python -m bench --with-slurm    # the Slurm anchor (../shared/anchor-slurm) first, then ours:
                                    # one side-by-side table -> bench/results/side_by_side.md
    python -m bench --with-slurm --quick   # a short smoke of the same (few rounds, small sizes)
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
        [
            "floor_bare",
            "floor",
            "cancel_cli_dead",
            "cancel_cli_visible",
            "cancel_cli_visible_acct",
            "cancel_api_done",
            "ccancel_wall",
            "cqueue_wall",
        ],  # fmt: skip
    ),
    "queue": (
        scenarios.queue_scale,
        ["cancel_pending_user", "submit_api", "submit_cbatch_single", "memory_per_job"],
    ),
    "running": (scenarios.cancel_running, ["cancel_running"]),
    "preempt": (scenarios.preemption, ["preemption"]),
    "idle": (scenarios.idle_agents, ["idle_agents_cpu"]),
}
ORDER = ["floor_bare", "floor", "cancel_cli_dead", "cancel_cli_visible", "cancel_cli_visible_acct",
         "cancel_api_done", "ccancel_wall", "cqueue_wall", "cancel_pending_user",
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
    ap.add_argument(
        "--with-slurm",
        action="store_true",
        help="run the Slurm anchor first (then stop it), then ours (by default the groups of the "
        "side-by-side table, 100,000 pending jobs, no profiles); print and write the side-by-side table",
    )
    ap.add_argument("--quick", action="store_true", help="a short smoke: few rounds, small sizes")
    ap.add_argument(
        "--no-scaling", action="store_true", help="with --with-slurm: skip the scaling table"
    )
    ap.add_argument(
        "--slurm-pending", type=int, default=1000, help="Slurm: held jobs for its mass cancel"
    )
    ap.add_argument("--slurm-pending-reps", type=int, default=3)
    ap.add_argument(
        "--slurm-running", type=int, default=256, help="Slurm: running jobs for its mass cancel"
    )
    ap.add_argument("--slurm-running-reps", type=int, default=2)
    ap.add_argument("--side-md", default=os.path.join(RESULTS, "side_by_side.md"))
    opts = ap.parse_args(argv)
    given = {
        a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")
    }
    if opts.quick:
        for k, v in QUICK.items():
            if f"--{k.replace('_', '-')}" not in given:
                setattr(opts, k, v)
    if opts.with_slurm:
        if "--only" not in given:
            opts.only = ",".join(SIDE_GROUPS)
        if "--pending" not in given and not opts.quick:
            opts.pending = 100_000
    return opts


# --quick: sizes for a smoke run (each can still be given explicitly)
QUICK = {"rounds": 3, "pending": 2000, "singles": 10, "agents": 10, "agent_cpus": 4, "running_rounds": 1,
         "idle_agents": 50, "idle_seconds": 3, "slurm_pending": 200, "slurm_pending_reps": 1,
         "slurm_running": 16, "slurm_running_reps": 1, "no_profile": True}  # fmt: skip
SIDE_GROUPS = ["cancel1", "queue", "running"]  # what the side-by-side table needs


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


def run_slurm(opts: argparse.Namespace) -> dict[str, Any]:
    """The Slurm anchor's column; its daemons are stopped before ours start."""
    from bench import slurm_side

    why = slurm_side.available()
    if why:
        log(f"slurm: not run: {why}")
        return {"figures": {}, "errors": {"anchor": why}, "version": "-", "seconds": 0}
    t0 = time.monotonic()
    try:
        out = slurm_side.run(opts)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        traceback.print_exc()
        out = {
            "figures": {},
            "errors": {"anchor": f"{type(e).__name__}: {e}"[:300]},
            "version": "-",
        }
    out["seconds"] = round(time.monotonic() - t0, 1)
    log(f"slurm: part took {out['seconds']:.1f}s")
    return out


def run_scaling(opts: argparse.Namespace) -> dict[str, Any]:
    """The scaling table: a mass cancel of 1k -> 10k -> 100k pending jobs
    (bench/scaling.py) and 2,000 running jobs over 10 -> 100 -> 1,000 fake
    agents (bench/scaling_agents.py), controller side, over the API."""
    from bench import scaling_agents
    from bench import side_by_side as sbs

    t0 = time.monotonic()
    rows: list[sbs.ScaleRow] = []
    out: dict[str, Any] = {}
    try:
        from bench import scaling

        q = opts.quick
        ns = argparse.Namespace(sizes=[1000, 10_000] if q else [1000, 10_000, 100_000],
                                runs=3 if q else 10, big_runs=1 if q else 3)  # fmt: skip
        out["pending"] = scaling.pending_figures(ns)
        rows += sbs.scale_rows_pending(out["pending"])
    except KeyboardInterrupt:
        raise
    except Exception as e:
        traceback.print_exc()
        rows.append(
            sbs.ScaleRow(
                "cancel pending jobs by filter", "-", 0, [], [], f"{type(e).__name__}: {e}"
            )
        )
    sizes, jobs = ((10, 100), 200) if opts.quick else ((10, 100, 1000), 2000)
    rounds = {n: 3 for n in sizes} if opts.quick else None
    out["agents"] = scaling_agents.run(sizes, jobs, rounds)
    rows += sbs.scale_rows_agents(out["agents"])
    heading = ["Scaling (same run, controller side, over the bench's API connection; 0.5 ms resolution): one "
               "Cancel by user, until WaitJobs answers. Fake agents: one helper process answering launches and "
               "kills at once (bench/scaling_agents.py), so these rows are the controller's and the messages' "
               "share only."]  # fmt: skip
    out["md"] = sbs.scaling_markdown(rows, heading)
    out["seconds"] = round(time.monotonic() - t0, 1)
    log(f"scaling took {out['seconds']:.1f}s")
    return out


ROW_NOTES = {
    "cqueue_wall": ["one running job in the queue on both sides"],
    "cancel_dead": ["Slurm: measure.py's test_single (the job's shell and children polled every 1 ms while its "
                    "scontrol/squeue/sacct pollers run); Crane: the step's pid polled every 0.5 ms"],
    "visible_queue": ["Slurm: the end of the first `scontrol show job` showing CANCELLED (polled every 5 ms, the "
                      "command's own time included); Crane: cqueue's query (the active queue) over the bench's API "
                      "connection every 0.5 ms, showing the job CANCELLED or no longer listing it"],
    "visible_acct": ["Slurm: the first `sacct` showing CANCELLED (as above); Crane: cacct's query (the history) "
                     "showing CANCELLED"],
    "server_side": ["Crane only: API Cancel + WaitJobs on the bench's persistent connection (two local round trips "
                    "included)"],
    "mass_pending": ["Slurm: measure.py's test_pending: N held jobs submitted by 8 parallel sbatch, `scancel -u "
                     "root` until squeue lists none; Crane: N held jobs, one `ccancel -u root`, until WaitJobs says "
                     "all terminal and persisted; jobs/s = N / that time"],
    "cancel_running": ["Slurm: measure.py's test_running (until processes and slurmstepd gone, squeue and sacct "
                       "show it); Crane: `sleep 300` jobs on real agents, `ccancel -v --wait -t R` until it exits "
                       "(terminal, processes gone, persisted); jobs/s = jobs / that time"],
    "cbatch_seq": ["per command, one after the other: 1000 / wall ms of `sbatch --hold -o /dev/null --wrap true` / "
                   "`cbatch --hold --wrap true -o /dev/null`"],
}  # fmt: skip


def side_table(results: list[Result], slurm: dict[str, Any] | None, scaling: dict[str, Any] | None,
               info: dict[str, Any], total: float, opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    from bench import side_by_side as sbs

    crane = sbs.crane_figures([r.to_json() for r in results])
    sfig = {k: sbs.Figure(list(v[0]), v[1]) for k, v in (slurm or {}).get("figures", {}).items()}
    rows = sbs.build_rows(crane, sfig, ROW_NOTES)
    floor = sbs.floor_of(rows)
    how = "`python -m bench --with-slurm" + (" --quick`" if opts.quick else "`")
    heading = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {info['cpu_model']} ({info['cores']} cores, "
        f"{(info['memory_bytes'] or 0) / 2**30:.0f} GiB), kernel {info['kernel']}, Python {info['python']}, "
        f"cgroup {info['cgroup_mode']}; {how}, one run, total {total / 60:.1f} min; load average at start "
        f"{info['loadavg_at_start'][0]:.2f}, at end {info['loadavg_at_end'][0]:.2f}.",
    ]
    if slurm is not None:
        heading.append(
            f"Slurm: {slurm.get('version', '-')} from Debian, the anchor of ../shared/anchor-slurm (16 slurmd x 16 "
            f"CPUs on this host, munge, slurmdbd + MariaDB), measured first ({slurm.get('seconds', 0):.0f} s), "
            "its daemons stopped before ours started."
        )
    heading.append(
        "Each cell: median (p99, n runs): nearest-rank p99, which with fewer than 100 runs is the slowest run "
        "(for rates the slowest); min-max where fewer than 10 runs were possible. Whole-command walls: "
        "fork+exec+wait timed from outside, after a warm-up run. Crane/Slurm: ratio of the medians. Goals "
        f"from the floor measured in this run ({'-' if floor is None else f'{floor:.1f} ms'})."
    )
    notes: list[str] = []
    for k, e in ((slurm or {}).get("errors") or {}).items():
        notes.append(f"- Slurm {k}: FAILED: {' '.join(str(e).split())}")
    for r in results:
        if r.error:
            notes.append(f"- Crane {r.key}: FAILED: {' '.join(r.error.split())}")
    md = sbs.markdown(rows, floor, heading)
    if notes:
        md += "\n" + "\n".join(notes) + "\n"
    if scaling is not None:
        md += "\n" + str(scaling.get("md") or scaling.get("error") or "") + "\n"
    return {"md": md, "json": sbs.to_json(rows, floor)}


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
    slurm: dict[str, Any] | None = None
    if opts.with_slurm:
        slurm = run_slurm(opts)
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
    scaling = run_scaling(opts) if opts.with_slurm and not opts.no_scaling else None
    total = time.monotonic() - t_start
    info["loadavg_at_end"] = list(os.getloadavg())
    side = side_table(results, slurm, scaling, info, total, opts)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_s": round(total, 1),
        "machine": info,
        "options": vars(opts),
        "results": [r.to_json() for r in results],
        "profiles": profiles,
        "leaked_processes": LEAKS,
        "slurm": slurm,
        "side_by_side": side["json"],
        "scaling": scaling,
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
    print()
    print(side["md"])
    if opts.with_slurm:
        with open(opts.side_md, "w") as f:
            f.write(side["md"])
        print(f"written: {opts.side_md}")
    print(f"\nwritten: {opts.out}")


if __name__ == "__main__":
    main()
