"""cqueue: the active jobs (or their steps) as a table, like squeue (SPEC §7).

The table helpers here (state filters, ``-o`` format strings, column
rendering) are shared with ``cacct``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from crane.cli.common import EXIT_ARGS, CliError, call, click_main, load_config, print_json
from crane.cli.gres import alloc_text, gres_text
from crane.core.text import safe

PROG = "cqueue"

Job = dict[str, Any]
Getter = Callable[[Job, float], str]

# --------------------------------------------------------------------------- states


def _state_aliases() -> dict[str, list[str]]:
    from crane.core.ids import SHORT_CODES, JobState

    out: dict[str, list[str]] = {}
    for s in JobState:
        out[s.value] = [s.value]
        out[SHORT_CODES[s]] = [s.value]
    out["P"] = ["PENDING"]
    out["CANCELED"] = ["CANCELLED"]
    out["OOM"] = ["OUT_OF_MEMORY"]
    return out


def parse_states(text: str, all_states: Sequence[str]) -> list[str]:
    """``"R,pd"`` -> ``["PENDING", "RUNNING"]``: full names or short codes,
    any case, comma-separated; ``ALL`` means ``all_states``."""
    from crane.core.ids import SHORT_CODES, JobState

    aliases = _state_aliases()
    out: set[str] = set()
    for item in text.split(","):
        key = item.strip().upper() if item.isascii() else ""
        if key == "ALL":
            out.update(all_states)
        elif key in aliases:
            out.update(aliases[key])
        else:
            valid = ", ".join(f"{s.value}({SHORT_CODES[s]})" for s in JobState)
            raise CliError(f'invalid state "{text}": valid states are {valid}, ALL', EXIT_ARGS)
    return sorted(out)


def build_filters(
    o: dict[str, Any], all_states: Sequence[str]
) -> tuple[dict[str, Any], set[tuple[int, int]]]:
    """The QueryJobs filter map from the common options, plus the step ids
    named with ``-j J.S`` (used by ``--step``)."""
    from crane.core.ids import IdListError, expand_nodes, parse_id_list

    filters: dict[str, Any] = {}
    steps: set[tuple[int, int]] = set()
    for key in ("name", "user", "account", "partition", "qos"):
        if o.get(key) is not None:
            filters[key] = o[key]
    if o.get("job") is not None:
        try:
            ids = parse_id_list(o["job"])
        except IdListError as e:
            raise CliError(str(e), EXIT_ARGS) from None
        filters["jobs"] = sorted({j for j, _ in ids})
        steps = {(j, s) for j, s in ids if s is not None}
    if o.get("state") is not None:
        filters["states"] = parse_states(o["state"], all_states)
    if o.get("nodelist") is not None:
        try:
            filters["nodes"] = expand_nodes(o["nodelist"])
        except ValueError as e:
            raise CliError(str(e), EXIT_ARGS) from None
    return filters, steps


# --------------------------------------------------------------------------- values


def fmt_time(t: float | None) -> str:
    if not t:
        return "Unknown"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def elapsed(start: float | None, end: float | None, now: float) -> float:
    if not start:
        return 0.0
    return (end or now) - start


def job_elapsed(j: Job, now: float) -> str:
    from crane.core.ids import format_duration

    return format_duration(elapsed(j.get("start_time"), j.get("end_time"), now))


def nodelist(j: Job) -> str:
    from crane.core.ids import compress_nodes

    return compress_nodes(list(j.get("nodes") or []))


def nodelist_reason(j: Job, now: float) -> str:
    if j.get("nodes") and j["state"] != "PENDING":
        return nodelist(j)
    return f"({j.get('reason') or 'None'})"


def short_state(state: str) -> str:
    from crane.core.ids import JobState

    try:
        return JobState(state).short
    except ValueError:
        return state


def time_limit(j: Job, now: float) -> str:
    from crane.core.ids import format_duration

    return format_duration(j.get("time_limit"))


def memory(j: Job, now: float) -> str:
    from crane.core.ids import format_memory

    return format_memory(int(j.get("memory") or 0))


def _s(key: str, default: str = "") -> Getter:
    def get(j: Job, now: float) -> str:
        v = j.get(key)
        return default if v is None or v == "" else str(v)

    return get


#: ``-o`` letters (Slurm's squeue where they exist): letter -> (header, getter)
JOB_FIELDS: dict[str, tuple[str, Getter]] = {
    "i": ("JOBID", _s("job_id")),
    "A": ("JOBID", _s("job_id")),
    "j": ("NAME", _s("name")),
    "u": ("USER", _s("user")),
    "U": ("UID", _s("uid")),
    "a": ("ACCOUNT", _s("account")),
    "P": ("PARTITION", _s("partition")),
    "q": ("QOS", _s("qos")),
    "T": ("STATE", lambda j, now: j["state"]),
    "t": ("ST", lambda j, now: short_state(j["state"])),
    "M": ("TIME", job_elapsed),
    "l": ("TIME_LIMIT", time_limit),
    "D": ("NODES", _s("num_nodes")),
    "N": ("NODELIST", lambda j, now: nodelist(j)),
    "R": ("NODELIST(REASON)", nodelist_reason),
    "r": ("REASON", _s("reason", "None")),
    "C": ("CPUS", _s("cpus")),
    "m": ("MIN_MEMORY", memory),
    "p": ("PRIORITY", _s("priority")),
    "Q": ("PRIORITY", _s("priority")),
    "V": ("SUBMIT_TIME", lambda j, now: fmt_time(j.get("submit_time"))),
    "S": ("START_TIME", lambda j, now: fmt_time(j.get("start_time"))),
    "e": ("END_TIME", lambda j, now: fmt_time(j.get("end_time"))),
    "Z": ("WORK_DIR", _s("work_dir")),
    "o": ("STDOUT", _s("stdout")),
    "h": ("HELD", lambda j, now: "yes" if j.get("held") else "no"),
    "y": ("TYPE", lambda j, now: "Batch"),
    "b": ("GRES", lambda j, now: gres_text(j) or "N/A"),
    "G": ("GPU_ALLOC", lambda j, now: alloc_text(j) or "N/A"),
}

QUEUE_COLUMNS: list[tuple[str, Getter]] = [
    ("JOBID", _s("job_id")),
    ("PARTITION", _s("partition")),
    ("NAME", _s("name")),
    ("USER", _s("user")),
    ("ACCOUNT", _s("account")),
    ("STATUS", lambda j, now: j["state"]),
    ("TYPE", lambda j, now: "Batch"),
    ("TIME", job_elapsed),
    ("TIMELIMIT", time_limit),
    ("NODES", _s("num_nodes")),
    ("NODELIST(REASON)", nodelist_reason),
]

#: ``-l``: the default columns plus CPUs, memory and GPUs (request and allocation)
LONG_COLUMNS: list[tuple[str, Getter]] = [
    *QUEUE_COLUMNS[:-1], JOB_FIELDS["C"], JOB_FIELDS["m"], JOB_FIELDS["b"], JOB_FIELDS["G"], QUEUE_COLUMNS[-1],
]


def step_rows(jobs: list[Job], wanted: set[tuple[int, int]], active_only: bool) -> list[Job]:
    """One flat dict per step (the job's fields the step table needs)."""
    from crane.core.ids import TERMINAL

    out = []
    for j in jobs:
        for s in j.get("steps") or []:
            if wanted and (j["job_id"], s["step_id"]) not in wanted:
                continue
            if active_only and s.get("state") in TERMINAL:
                continue
            out.append({**s, "job_id": j["job_id"], "job_name": j["name"], "partition": j["partition"],
                        "user": j["user"], "account": j["account"]})  # fmt: skip
    return out


def _step_name(s: Job, now: float) -> str:
    if s["step_id"] == 1:
        return "batch"
    argv = s.get("argv") or []
    return str(argv[0]).rsplit("/", 1)[-1] if argv else s["job_name"]


def _step_time(s: Job, now: float) -> str:
    from crane.core.ids import format_duration

    return format_duration(elapsed(s.get("start"), s.get("end"), now))


STEP_FIELDS: dict[str, tuple[str, Getter]] = {
    "i": ("STEPID", lambda s, now: f"{s['job_id']}.{s['step_id']}"),
    "j": ("NAME", _step_name),
    "P": ("PARTITION", _s("partition")),
    "u": ("USER", _s("user")),
    "a": ("ACCOUNT", _s("account")),
    "T": ("STATE", _s("state")),
    "t": ("ST", lambda s, now: short_state(s.get("state") or "")),
    "M": ("TIME", _step_time),
    "N": ("NODELIST", _s("node")),
    "C": ("CPUS", _s("cpus")),
}

STEP_COLUMNS: list[tuple[str, Getter]] = [
    STEP_FIELDS["i"], STEP_FIELDS["j"], STEP_FIELDS["P"], STEP_FIELDS["u"],
    STEP_FIELDS["T"], STEP_FIELDS["M"], STEP_FIELDS["N"],
]  # fmt: skip


# --------------------------------------------------------------------------- rendering

_SPEC_RE = re.compile(r"%(\.)?(-)?([0-9]*)([A-Za-z%])")


class Field:
    __slots__ = ("get", "header", "right", "width")

    def __init__(
        self, header: str, get: Getter, width: int | None = None, right: bool = False
    ) -> None:
        self.header, self.get, self.width, self.right = header, get, width, right


def parse_format(fmt: str, fields: dict[str, tuple[str, Getter]]) -> list[str | Field]:
    """A Slurm-like format string -> literal text and fields.

    ``%i`` a field sized to its widest value; ``%10i`` left-justified in 10
    columns; ``%.10i`` right-justified; ``%-10i`` left-justified (values
    longer than an explicit width are truncated); ``%%`` a percent sign.
    """
    out: list[str | Field] = []
    pos = 0

    def literal(text: str) -> None:
        if "%" in text:
            raise CliError(f'invalid format "{fmt}": stray "%"', EXIT_ARGS)
        out.append(text)

    for m in _SPEC_RE.finditer(fmt):
        if m.start() > pos:
            literal(fmt[pos : m.start()])
        pos = m.end()
        letter = m.group(4)
        if letter == "%":
            out.append("%")
            continue
        if letter not in fields:
            known = "".join(sorted(fields))
            raise CliError(
                f'invalid format "{fmt}": unknown field %{letter} (known: {known})', EXIT_ARGS
            )
        header, get = fields[letter]
        width = int(m.group(3)) if m.group(3) else None
        out.append(Field(header, get, width, right=bool(m.group(1))))
    if pos < len(fmt):
        literal(fmt[pos:])
    if not any(isinstance(p, Field) for p in out):
        raise CliError(f'invalid format "{fmt}": no fields', EXIT_ARGS)
    return out


def default_layout(columns: list[tuple[str, Getter]]) -> list[str | Field]:
    out: list[str | Field] = []
    for i, (header, get) in enumerate(columns):
        if i:
            out.append(" ")
        out.append(Field(header, get))
    return out


def render(
    layout: list[str | Field], records: list[Job], header: bool, now: float | None = None
) -> list[str]:
    """The table's lines, every value (and literal of a ``-o`` format)
    escaped with :func:`safe` before it is measured and padded."""
    now = time.time() if now is None else now
    fields = [p for p in layout if isinstance(p, Field)]
    values = [[safe(f.get(r, now)) for f in fields] for r in records]
    widths = []
    for i, f in enumerate(fields):
        if f.width is not None:
            widths.append(f.width)
        else:
            widths.append(max([len(f.header) if header else 0] + [len(v[i]) for v in values]))

    def line(cells: list[str]) -> str:
        parts: list[str] = []
        k = 0
        for p in layout:
            if isinstance(p, str):
                parts.append(safe(p))
                continue
            text, w = cells[k], widths[k]
            if p.width is not None:
                text = text[:w]
            parts.append(text.rjust(w) if p.right else text.ljust(w))
            k += 1
        return "".join(parts).rstrip()

    lines = [line([safe(f.header) for f in fields])] if header else []
    lines += [line(v) for v in values]
    return lines


# --------------------------------------------------------------------------- command

FILTER_OPTIONS = [
    click.option("-j", "--job", "--jobs", "job", help="comma list of job ids (JOB or JOB.STEP)"),
    click.option("-n", "--name", help="job name"),
    click.option("-u", "--user", help="job owner (name or uid)"),
    click.option("-A", "--account"),
    click.option("-p", "--partition"),
    click.option("-q", "--qos"),
    click.option(
        "-t", "--state", help="comma list of states: names or short codes (PD,R,...) or ALL"
    ),
    click.option("-w", "--nodelist", help="jobs on any of these nodes (hostlist expression)"),
    click.option(
        "-o",
        "--format",
        "fmt",
        help="Slurm-like format: %i %j %u %a %P %q %T %t %M %l %D %R %r %b (GRES) %G (GPUs) ...",
    ),
    click.option("-N", "--noheader", is_flag=True, help="no header line"),
    click.option("--json", "as_json", is_flag=True, help="print the jobs as one JSON array"),
    click.option("-C", "--config"),
]


def with_options(options: list[Any]) -> Callable[[Any], Any]:
    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


def sort_jobs(jobs: list[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: j["job_id"])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@with_options(FILTER_OPTIONS)
@click.option("-s", "--step", "--steps", "steps", is_flag=True, help="list the jobs' steps instead")
@click.option("-l", "--long", "long", is_flag=True, help="more columns: CPUS, MIN_MEMORY, GRES, GPU_ALLOC")
@click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG)
def command(**o: Any) -> int:
    """Show the active jobs (pending, running, suspended...)."""
    from crane.core import messages as m
    from crane.core.ids import ACTIVE

    filters, wanted_steps = build_filters(o, sorted(ACTIVE))
    layout = None
    if o["fmt"] is not None:
        layout = parse_format(o["fmt"], STEP_FIELDS if o["steps"] else JOB_FIELDS)
    cfg = load_config(o["config"])
    jobs = sort_jobs(call(cfg, m.QueryJobs(filters, history=False))["jobs"])
    if o["steps"]:
        rows = step_rows(jobs, wanted_steps, active_only=not wanted_steps)
        if o["as_json"]:
            print_json(rows)
            return 0
        layout = layout or default_layout(STEP_COLUMNS)
        records = rows
    else:
        if o["as_json"]:
            print_json(jobs)
            return 0
        layout = layout or default_layout(LONG_COLUMNS if o["long"] else QUEUE_COLUMNS)
        records = jobs
    for line in render(layout, records, header=not o["noheader"]):
        print(safe(line))
    return 0


def main() -> None:
    click_main(command, PROG)
