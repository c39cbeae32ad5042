"""The side-by-side table of ``python -m bench --with-slurm`` (issue 16):
measure | Slurm | Crane | Crane/Slurm | goal | met?, each figure a median
with its p99 (nearest rank: with fewer than 100 samples, the maximum), or
min-max when fewer than 10 runs were possible (said in the cell). The goals
that depend on the Python floor are computed from the floor measured in the
same run. Pure functions only: the runs feed them samples."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

MIN_RUNS = 10  # below this a cell shows min-max instead of the p99


@dataclass
class Figure:
    """The samples of one side of one row (ms for times, jobs/s for rates)."""

    samples: list[float]
    note: str = ""  # how this side differs, e.g. "256 running jobs on 16 slurmd"


@dataclass
class Goal:
    """``kind``: "floor_x" (<= value x floor), "floor_plus" (<= floor + value ms),
    "max" (<= value), "min" (>= value, rates)."""

    kind: str
    value: float
    text: str = ""  # as the issue says it, e.g. "100,000 in <= 1 s"


@dataclass
class Row:
    key: str
    measure: str
    unit: str  # "ms" or "jobs/s"
    slurm: Figure | None = None
    crane: Figure | None = None
    goal: Goal | None = None
    notes: list[str] = field(default_factory=list)


def p99(xs: list[float]) -> float | None:
    """Nearest-rank 99th percentile (fewer than 100 samples: the maximum)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def summary(xs: list[float]) -> dict[str, Any] | None:
    if not xs:
        return None
    return {"n": len(xs), "median": statistics.median(xs), "p99": p99(xs),
            "min": min(xs), "max": max(xs)}  # fmt: skip


def ratio(crane: float | None, slurm: float | None) -> float | None:
    """Crane's median over Slurm's (for times: > 1 is slower; for rates: > 1 is faster)."""
    if crane is None or slurm is None or slurm == 0:
        return None
    return crane / slurm


def threshold(goal: Goal, floor_ms: float | None) -> tuple[float, bool] | None:
    """(the goal's value in the row's unit, lower_is_better); None when it
    depends on a floor that was not measured."""
    if goal.kind == "floor_x":
        return None if floor_ms is None else (goal.value * floor_ms, True)
    if goal.kind == "floor_plus":
        return None if floor_ms is None else (floor_ms + goal.value, True)
    if goal.kind == "max":
        return goal.value, True
    if goal.kind == "min":
        return goal.value, False
    raise ValueError(f"unknown goal kind {goal.kind!r}")


def verdict(value: float | None, goal: Goal | None, floor_ms: float | None) -> str:
    """Return "met", "missed" or "n/a" (no figure, no goal, or no floor)."""
    if value is None or goal is None:
        return "n/a"
    th = threshold(goal, floor_ms)
    if th is None:
        return "n/a"
    limit, lower = th
    ok = value <= limit if lower else value >= limit
    return "met" if ok else "missed"


def fmt_value(v: float, unit: str) -> str:
    if unit == "ms":
        if v >= 10_000:
            return f"{v / 1000:.1f} s"
        if v >= 1000:
            return f"{v / 1000:.2f} s"
        return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "jobs/s":
        return f"{v:,.0f} jobs/s" if v >= 100 else f"{v:.1f} jobs/s"
    return f"{v:g} {unit}"


def slow_tail(xs: list[float], unit: str) -> float | None:
    """The p99 on the slow side: of times the 99th percentile, of rates
    (jobs/s) the 1st (nearest rank; fewer than 100 samples: max / min)."""
    if unit == "jobs/s":
        neg = p99([-x for x in xs])
        return None if neg is None else -neg
    return p99(xs)


def fmt_figure(fig: Figure | None, unit: str) -> str:
    if fig is None or not fig.samples:
        return "-"
    s = summary(fig.samples)
    assert s is not None
    med = fmt_value(s["median"], unit)
    if s["n"] == 1:
        spread = "1 run"
    elif s["n"] < MIN_RUNS:
        spread = f"min-max {fmt_value(s['min'], unit)}-{fmt_value(s['max'], unit)}, n={s['n']}"
    else:
        tail = slow_tail(fig.samples, unit)
        assert tail is not None
        spread = f"{'p99' if unit == 'ms' else 'slow p99'} {fmt_value(tail, unit)}, n={s['n']}"
    note = f"; {fig.note}" if fig.note else ""
    return f"{med} ({spread}{note})"


def fmt_ratio(r: float | None, unit: str) -> str:
    if r is None:
        return "-"
    if unit == "ms":
        word = "slower" if r > 1 else "faster"
        return f"{r:.1f}x ({word})" if r > 1 else f"{r:.2f}x ({word})"
    word = "faster" if r > 1 else "slower"
    return f"{r:.1f}x ({word})" if r >= 1 else f"{r:.2f}x ({word})"


def fmt_goal(goal: Goal | None, unit: str, floor_ms: float | None) -> str:
    if goal is None:
        return "-"
    th = threshold(goal, floor_ms)
    text = goal.text or {"floor_x": f"<= {goal.value:g} x floor",
                         "floor_plus": f"<= floor + {goal.value:g} ms"}.get(goal.kind, "")  # fmt: skip
    if th is None:
        return text or "-"
    limit, lower = th
    shown = f"{'<=' if lower else '>='} {fmt_value(limit, unit)}"
    return f"{text} = {shown}" if goal.kind.startswith("floor") or not text else text


def row_cells(row: Row, floor_ms: float | None) -> list[str]:
    cm = statistics.median(row.crane.samples) if row.crane and row.crane.samples else None
    sm = statistics.median(row.slurm.samples) if row.slurm and row.slurm.samples else None
    return [row.measure, fmt_figure(row.slurm, row.unit), fmt_figure(row.crane, row.unit),
            fmt_ratio(ratio(cm, sm), row.unit), fmt_goal(row.goal, row.unit, floor_ms),
            verdict(cm, row.goal, floor_ms)]  # fmt: skip


HEADER = ["measure", "Slurm", "Crane", "Crane/Slurm", "goal", "met?"]


def _esc(cell: str) -> str:
    return cell.replace("|", "\\|")


def markdown(rows: list[Row], floor_ms: float | None, heading: list[str] | None = None) -> str:
    """The table as markdown (the README's form), with ``heading`` lines
    (machine, date) above it and each row's notes below it."""
    out = list(heading or [])
    if out:
        out.append("")
    out.append("| " + " | ".join(HEADER) + " |")
    out.append("|" + "---|" * len(HEADER))
    notes = []
    for row in rows:
        out.append("| " + " | ".join(_esc(c) for c in row_cells(row, floor_ms)) + " |")
        notes += [f"- {row.measure}: {n}" for n in row.notes]
    if notes:
        out += [""] + notes
    return "\n".join(out) + "\n"


def to_json(rows: list[Row], floor_ms: float | None) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        cs = summary(row.crane.samples) if row.crane else None
        ss = summary(row.slurm.samples) if row.slurm else None
        out.append({"key": row.key, "measure": row.measure, "unit": row.unit,
                    "slurm": ss, "crane": cs,
                    "slurm_samples": row.slurm.samples if row.slurm else None,
                    "crane_samples": row.crane.samples if row.crane else None,
                    "ratio": ratio(cs["median"] if cs else None, ss["median"] if ss else None),
                    "goal": fmt_goal(row.goal, row.unit, floor_ms),
                    "verdict": verdict(cs["median"] if cs else None, row.goal, floor_ms),
                    "notes": row.notes})  # fmt: skip
    return out


# ---------------------------------------------------------------- the rows of issue 16

FLOOR_KEY = "floor"  # the goals' floor: python3 -I -S + import socket, msgpack

SPECS: list[tuple[str, str, str, Goal | None]] = [
    ("floor_bare", "Python floor: `python3 -I -S -c pass`", "ms", None),
    (FLOOR_KEY, "**the floor**: `python3 -I -S` + `import socket, msgpack`", "ms", None),
    ("ccancel_wall", "`ccancel ID` whole-command wall (Slurm: `scancel ID`)", "ms", Goal("floor_x", 1.3)),
    ("cqueue_wall", "`cqueue` whole-command wall (Slurm: `squeue`)", "ms", Goal("floor_x", 1.5)),
    ("cancel_dead", "cancel one running job: command start -> all processes dead", "ms",
     Goal("floor_plus", 10)),
    ("visible_queue", "same -> CANCELLED visible to `cqueue` (Slurm: `scontrol show job`)", "ms",
     Goal("floor_plus", 15)),
    ("visible_acct", "same -> CANCELLED visible to `cacct` (Slurm: `sacct`)", "ms", Goal("floor_plus", 15)),
    ("server_side", "server side: request in -> processes dead -> persisted (ours only)", "ms",
     Goal("max", 3.0, "<= 3 ms")),
    ("mass_pending", "mass cancel of pending jobs by filter", "jobs/s",
     Goal("min", 100_000.0, "100,000 in <= 1 s (>= 100,000 jobs/s)")),
    ("cancel_running", "cancel 2,000 running jobs on 100 agents, until dead and recorded", "jobs/s",
     Goal("min", 2000 / 1.5, "2,000 in <= 1.5 s (>= 1,333 jobs/s)")),
    ("cbatch_seq", "one `cbatch` per job, sequential (Slurm: `sbatch`)", "jobs/s", Goal("min", 30.0, ">= 30 jobs/s")),
]  # fmt: skip


def build_rows(crane: dict[str, Figure], slurm: dict[str, Figure],
               notes: dict[str, list[str]] | None = None) -> list[Row]:  # fmt: skip
    return [Row(key, measure, unit, slurm.get(key), crane.get(key), goal, list((notes or {}).get(key, [])))
            for key, measure, unit, goal in SPECS]  # fmt: skip


def floor_of(rows: list[Row]) -> float | None:
    for row in rows:
        if row.key == FLOOR_KEY and row.crane and row.crane.samples:
            return float(statistics.median(row.crane.samples))
    return None


def _by_key(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in results if not r.get("error") and r.get("samples")}


def crane_figures(results: list[dict[str, Any]]) -> dict[str, Figure]:
    """Our column from the bench's result records (``Result.to_json()``)."""
    r = _by_key(results)
    out: dict[str, Figure] = {}
    for row_key, res_key in (("floor_bare", "floor_bare"), ("floor", "floor"), ("ccancel_wall", "ccancel_wall"),
                             ("cqueue_wall", "cqueue_wall"), ("cancel_dead", "cancel_cli_dead"),
                             ("visible_queue", "cancel_cli_visible"), ("visible_acct", "cancel_cli_visible_acct"),
                             ("server_side", "cancel_api_done")):  # fmt: skip
        if res_key in r:
            out[row_key] = Figure(list(r[res_key]["samples"]))
    pend = r.get("cancel_pending_user")
    if pend:
        x = pend["extra"]
        out["mass_pending"] = Figure([x["jobs_per_s"]], f"{x['n']:,} held jobs, `ccancel -u root` -> all terminal "
                                     f"in {x['all_terminal_s']:.2f} s")  # fmt: skip
    run = r.get("cancel_running")
    if run:
        x = run["extra"]
        secs = ", ".join(f"{t:.2f}" for t in x["recorded_s"])
        out["cancel_running"] = Figure(
            list(x["jobs_per_s"]), f"{run['scenario'].split(' (')[0][7:]}; s: {secs}"
        )
    single = r.get("submit_cbatch_single")
    if single and single["extra"].get("per_command_ms"):
        out["cbatch_seq"] = Figure([round(1000 / ms, 2) for ms in single["extra"]["per_command_ms"]],
                                   "per command, `cbatch --hold --wrap true`")  # fmt: skip
    return out


# ---------------------------------------------------------------- the scaling table


@dataclass
class ScaleRow:
    what: str  # e.g. "cancel pending jobs by filter"
    size: str  # e.g. "10,000 jobs", "100 agents x 20 jobs"
    jobs: int
    done_ms: list[float]  # request -> every job terminal and recorded
    reply_ms: list[float] = field(default_factory=list)  # request -> its reply
    error: str = ""


def scale_rows_pending(rows: list[dict[str, Any]]) -> list[ScaleRow]:
    """From ``bench.scaling.pending_figures`` (one dict per size)."""
    return [ScaleRow("cancel pending jobs by filter", f"{r['jobs']:,} jobs", int(r["jobs"]),
                     list(r["done_ms"]["samples"]), list(r["reply_ms"]["samples"]))  # fmt: skip
            for r in rows]  # fmt: skip


def scale_rows_agents(rows: list[dict[str, Any]]) -> list[ScaleRow]:
    """From ``bench.scaling_agents.run`` (one dict per agent count)."""
    out = []
    for r in rows:
        size = f"{r['agents']:,} agents"
        if "error" in r:
            out.append(
                ScaleRow(
                    "cancel running jobs (fake agents)", size, int(r["jobs"]), [], [], r["error"]
                )
            )
            continue
        size += f" x {r['jobs_per_agent']} jobs"
        out.append(ScaleRow("cancel running jobs (fake agents)", size, int(r["jobs"]), list(r["done_ms"]),
                            list(r["reply_ms"])))  # fmt: skip
    return out


def scaling_markdown(rows: list[ScaleRow], heading: list[str] | None = None) -> str:
    out = list(heading or [])
    if out:
        out.append("")
    out.append(
        "| scaling | size | request -> reply | request -> all terminal and recorded | jobs/s |"
    )
    out.append("|---|---|---|---|---|")
    for r in rows:
        if r.error:
            cells = [r.what, r.size, "-", f"FAILED: {' '.join(r.error.split())}", "-"]
        else:
            done = statistics.median(r.done_ms) if r.done_ms else None
            rate = "-" if not done else fmt_value(r.jobs / (done / 1000), "jobs/s")
            cells = [
                r.what,
                r.size,
                fmt_figure(Figure(r.reply_ms), "ms"),
                fmt_figure(Figure(r.done_ms), "ms"),
                rate,
            ]
        out.append("| " + " | ".join(_esc(c) for c in cells) + " |")
    return "\n".join(out) + "\n"
