"""cacct: finished jobs with their end state, exit code, and who cancelled
them and why, like sacct (SPEC §7).

Time window (``-S``/``-E``): a job is shown when it was submitted before the
window's end and had not ended before its start; without ``-S`` the window
starts at midnight today, unless ``-j`` names jobs (then every named job is
shown), as sacct does. The controller's history query has no time filter, so
the window is applied here, over the finished jobs the controller returns.
"""

from __future__ import annotations

import sys
import time

from crane.cli.common import (
    EXIT_ARGS,
    CliError,
    SimpleOptions,
    call,
    click_main,
    fast_parse,
    load_config,
    print_json,
    run,
)
from crane.cli.format import (
    FILTER_FLAGS,
    JOB_FIELDS,
    build_filters,
    default_layout,
    duration,
    fmt_time,
    is_named_format,
    job_elapsed,
    job_label,
    memory,
    nodelist,
    parse_format,
    parse_named_format,
    render,
    render_parsable,
    sort_jobs,
)
from crane.core.text import safe

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

    from crane.cli.format import Getter, Job

PROG = "cacct"


def acct_state(j: Job, now: float = 0.0) -> str:
    """``CANCELLED by alice`` when someone cancelled the job, else the state."""
    from crane.core.states import JobState

    who = j.get("cancelled_by")
    if who and j["state"] in (JobState.CANCELLED, JobState.COMPLETED):
        return f"{j['state']} by {who}"
    return str(j["state"])


def acct_state_short(j: Job, now: float = 0.0) -> str:
    """The default table's state: ``CANCELLED+`` when it has a "by" (as sacct)."""
    from crane.core.states import JobState

    if j.get("cancelled_by") and j["state"] in (JobState.CANCELLED, JobState.COMPLETED):
        return f"{j['state']}+"
    return str(j["state"])


def exit_code(j: Job, now: float = 0.0) -> str:
    return f"{j.get('exit_code') or 0}:{j.get('exit_signal') or 0}"


def acct_reason(j: Job, now: float = 0.0) -> str:
    return str(j.get("message") or j.get("reason") or "")


def acct_nodes(j: Job, now: float = 0.0) -> str:
    return nodelist(j)


def acct_limit(j: Job, now: float = 0.0) -> str:
    return "" if j.get("is_step") else duration(j.get("time_limit"))


def _t(key: str) -> Getter:
    return lambda j, now: fmt_time(j.get(key))


def _v(key: str) -> Getter:
    def get(j: Job, now: float) -> str:
        v = j.get(key)
        return "" if v is None or v == "" else str(v)

    return get


ACCT_FIELDS: dict[str, tuple[str, Getter]] = {
    **JOB_FIELDS,
    "j": ("JOBNAME", JOB_FIELDS["j"][1]),
    "T": ("STATE", acct_state),
    "x": ("EXITCODE", exit_code),
    "E": ("ELAPSED", job_elapsed),
    "M": ("ELAPSED", job_elapsed),
    "N": ("NODELIST", acct_nodes),
    "r": ("REASON", acct_reason),
    "l": ("TIME_LIMIT", acct_limit),
    "b": ("CANCELLED_BY", lambda j, now: str(j.get("cancelled_by") or "")),
    "g": ("GRES", JOB_FIELDS["b"][1]),  # %b is CANCELLED_BY here; %G the GPU allocation
}

#: ``--format=Name,Name%W``: sacct's field names (any case) -> (header, getter)
NAMED_FIELDS: dict[str, tuple[str, Getter]] = {
    k.lower(): (k, g)
    for k, g in {
        "JobID": job_label,  # A_T for an array task (as sacct)
        "JobIDRaw": _v("job_id"),
        "ArrayJobID": lambda j, now: str(j.get("array_job_id") or ""),
        "ArrayTaskID": lambda j, now: "" if j.get("array_task_id") is None else str(j["array_task_id"]),
        "Comment": _v("comment"),
        "JobName": _v("name"),
        "User": _v("user"),
        "UID": _v("uid"),
        "Account": _v("account"),
        "Partition": _v("partition"),
        "QOS": _v("qos"),
        "State": acct_state,
        "ExitCode": exit_code,
        "Submit": _t("submit_time"),
        "Start": _t("start_time"),
        "End": _t("end_time"),
        "Elapsed": job_elapsed,
        "TimeLimit": acct_limit,
        "NodeList": acct_nodes,
        "NNodes": _v("num_nodes"),
        "AllocCPUS": _v("cpus"),
        "NCPUS": _v("cpus"),
        "ReqMem": lambda j, now: "" if j.get("is_step") else memory(j, now),
        "Reason": acct_reason,
        "Message": _v("message"),
        "CancelledBy": _v("cancelled_by"),
        "WorkDir": _v("work_dir"),
        "ReqGRES": lambda j, now: "" if j.get("is_step") else JOB_FIELDS["b"][1](j, now).replace("N/A", ""),
    }.items()
}


def acct_columns(long: bool, full_state: bool) -> list[tuple[str, Getter]]:
    state = ("STATE", acct_state if full_state else acct_state_short)
    cols: list[tuple[str, Getter]] = [
        ("JOBID", job_label),
        ("JOBNAME", _v("name")),
        ("PARTITION", _v("partition")),
        ("ACCOUNT", _v("account")),
        ("USER", _v("user")),
    ]
    if long:
        cols += [("QOS", _v("qos")), ("ALLOCCPUS", _v("cpus")), state, ACCT_FIELDS["x"],
                 ("SUBMIT", _t("submit_time")), ("START", _t("start_time")), ("END", _t("end_time")),
                 ACCT_FIELDS["E"], ("TIMELIMIT", acct_limit), ACCT_FIELDS["N"], ACCT_FIELDS["r"]]  # fmt: skip
    else:
        cols += [state, ACCT_FIELDS["x"], ACCT_FIELDS["E"], ACCT_FIELDS["N"], ACCT_FIELDS["r"]]
    return cols


# --------------------------------------------------------------------------- time window

_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
          "d": 86400, "day": 86400, "w": 604800, "week": 604800}  # fmt: skip


def midnight(now: float) -> float:
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def parse_when(text: str, now: float) -> float:
    """A ``-S``/``-E`` value -> epoch seconds: ``YYYY-MM-DD[THH:MM[:SS]]``,
    ``HH:MM[:SS]`` (today), ``MM/DD[/YY]``, ``now``, ``now-3hours``
    (``+``/``-`` N seconds|minutes|hours|days|weeks), ``today``/``midnight``,
    ``noon``; local time."""
    import re

    s = text.strip()
    low = s.lower()
    if low in ("today", "midnight"):
        return midnight(now)
    if low == "noon":
        return midnight(now) + 12 * 3600
    m = re.fullmatch(r"now(?:([+-])([0-9]{1,9})([a-z]*))?", low)  # bounded: 10**5000 weeks is no time
    if m:
        if not m.group(1):
            return now
        unit = m.group(3) or "s"
        unit = unit[:-1] if unit.endswith("s") and unit[:-1] in _UNITS else unit
        if unit not in _UNITS:
            raise CliError(f'invalid time "{text}": unknown unit "{m.group(3)}"', EXIT_ARGS)
        delta = int(m.group(2)) * _UNITS[unit]
        return now + delta if m.group(1) == "+" else now - delta
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d",
                "%m/%d/%y", "%m/%d/%Y"):  # fmt: skip
        try:
            return time.mktime(time.strptime(s, fmt))
        except ValueError:
            continue
    for fmt in ("%H:%M:%S", "%H:%M", "%m/%d"):
        try:
            t = time.strptime(s, fmt)
        except ValueError:
            continue
        today = time.localtime(now)
        if fmt == "%m/%d":
            return time.mktime((today.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
        return time.mktime((today.tm_year, today.tm_mon, today.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0, 0, -1))
    raise CliError(
        f'invalid time "{text}": use YYYY-MM-DD[THH:MM[:SS]], HH:MM[:SS], now[-N{{minutes,hours,days}}] or today',
        EXIT_ARGS,
    )


def in_window(j: Job, start: float | None, end: float | None, now: float) -> bool:
    """Whether the job existed (submitted, not yet ended) at some time in [start, end]."""
    begin = j.get("submit_time") or j.get("start_time") or 0.0
    finish = j.get("end_time") or now
    if end is not None and begin > end:
        return False
    return not (start is not None and finish < start)


# --------------------------------------------------------------------------- steps


def step_name(j: Job, s: dict[str, Any]) -> str:
    if s.get("step_id") == 1:
        return "batch"
    argv = s.get("argv") or []
    return str(argv[0]).rsplit("/", 1)[-1] if argv else str(j.get("name") or "")


def step_record(j: Job, s: dict[str, Any]) -> Job:
    """A step as a row of the job table: ``24.2`` with the step's own state,
    exit code, times, node and CPUs; owner, account, partition and QoS of its job."""
    node = s.get("node")
    return {
        "is_step": True, "job_id": f"{j['job_id']}.{s['step_id']}", "name": step_name(j, s),
        "job_label": f"{job_label(j)}.{s['step_id']}",
        "user": j.get("user"), "uid": j.get("uid"), "account": j.get("account"),
        "partition": j.get("partition"), "qos": j.get("qos"), "state": s.get("state") or "",
        "exit_code": s.get("exit_code"), "exit_signal": s.get("signal"),
        "submit_time": j.get("submit_time"), "start_time": s.get("start"), "end_time": s.get("end"),
        "nodes": [node] if node else [], "num_nodes": 1 if node else None, "cpus": s.get("cpus"),
        "reason": s.get("reason"), "cancelled_by": s.get("cancelled_by"), "message": "",
    }  # fmt: skip


def with_steps(jobs: list[Job], whole: set[Any] | None, steps: set[tuple[Any, int]], all_steps: bool) -> list[Job]:
    """The rows: each job (when wanted whole) followed by its steps (all of
    them with ``--steps``, else those named with ``-j J.S``). ``whole``:
    job ids, array ids (every task) and ``A_T`` labels."""
    out: list[Job] = []
    for j in jobs:
        show_job = whole is None or j["job_id"] in whole or job_label(j) in whole or j.get("array_job_id") in whole
        if show_job:
            out.append(j)
        for s in j.get("steps") or []:
            sid = s.get("step_id")
            if (show_job and all_steps) or (j["job_id"], sid) in steps or (job_label(j), sid) in steps:
                out.append(step_record(j, s))
    return out


# --------------------------------------------------------------------------- command


def show(o: dict[str, Any]) -> int:
    """Show finished jobs (accounting).

    \b
    -o/--format takes sacct's field names (--format=JobID,JobName%20,State,
    Elapsed; any case, %N a width) or cqueue-like %-letters (-o "%i %T %x").
    The default table has no space inside a cell: a cancelled job's state is
    CANCELLED+ (CANCELLED by USER with -l, -P, --format or --json) and each
    space of a name or reason is shown as "_".
    """
    from crane.core.states import ACTIVE, TERMINAL, JobState
    from crane.core.wire import Request

    now = time.time()
    filters, steps = build_filters(o, sorted(TERMINAL | ACTIVE) if o["all_jobs"] else sorted(TERMINAL))
    whole: set[int] | None = None
    if o["job"] is not None:
        from crane.core.ids import parse_job_refs  # valid: build_filters parsed it

        whole = {j if t is None else f"{j}_{t}" for j, s, t in parse_job_refs(o["job"]) if s is None}
    start = parse_when(o["starttime"], now) if o["starttime"] is not None else None
    end = parse_when(o["endtime"], now) if o["endtime"] is not None else None
    if start is None and o["job"] is None:
        start = midnight(now)
    if start is not None and end is not None and end < start:
        raise CliError("the end time (-E) is before the start time (-S)", EXIT_ARGS)
    fmt = o["fmt"]
    plain = fmt is None and not o["long"] and not o["parsable"]
    if fmt is not None and is_named_format(fmt):
        layout = parse_named_format(fmt, NAMED_FIELDS)
    elif fmt is not None:
        layout = parse_format(fmt, ACCT_FIELDS)
    else:
        layout = default_layout(acct_columns(o["long"], full_state=not plain))
    cfg = load_config(o["config"])
    if start is not None:  # the controller reads only what ended since (by index), not the whole history
        filters["ended_after"] = start
    # crane.core.messages.QueryJobs, without importing the message classes
    jobs = call(cfg, Request("QueryJobs", {"filters": filters, "history": True}))["jobs"]
    want_active = o["all_jobs"] or any(JobState(s) in ACTIVE for s in filters.get("states", []))
    if want_active:
        seen = {j["job_id"] for j in jobs}
        jobs += [
            j
            for j in call(cfg, Request("QueryJobs", {"filters": filters, "history": False}))["jobs"]
            if j["job_id"] not in seen
        ]
    jobs = sort_jobs([j for j in jobs if in_window(j, start, end, now)])
    if o["as_json"]:
        print_json(jobs)
        return 0
    rows = with_steps(jobs, whole, steps, o["all_steps"])
    if o["parsable"]:
        lines = render_parsable(layout, rows, header=not o["noheader"], now=now)
    else:
        lines = render(layout, rows, header=not o["noheader"], now=now, plain=plain)
    for line in lines:
        print(safe(line))
    return 0


#: The options the fast path parses (flags, dest, takes a value): the same
#: as make_command's, whose parse it must equal (tests/test_cli_fast_paths.py).
SIMPLE_OPTIONS: SimpleOptions = [
    *FILTER_FLAGS,
    (("-a", "--all"), "all_jobs", False), (("-S", "--starttime"), "starttime", True),
    (("-E", "--endtime"), "endtime", True), (("-P", "--parsable2"), "parsable", False),
    (("--steps",), "all_steps", False), (("-l", "--long"), "long", False),
]


def make_command() -> Any:
    import click

    from crane.cli.filter_options import filter_options, with_options

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @with_options(filter_options(
        "sacct's field names, any case, %N a width (--format=JobID,JobName%20,State,Elapsed), "
        'or %-letters (-o "%i %j %T %x %r")'
    ))
    @click.option("-a", "--all", "all_jobs", is_flag=True, help="active jobs too, not only finished ones")
    @click.option("-S", "--starttime", help="jobs not ended before this time (default: midnight today; none with -j)")
    @click.option("-E", "--endtime", help="jobs submitted before this time (default: now)")
    @click.option("-P", "--parsable2", "parsable", is_flag=True, help='fields separated by "|", no padding, no trailing "|"')
    @click.option("--steps", "all_steps", is_flag=True, help="a row for each step (24.1, 24.2) under its job's row")
    @click.option("-l", "--long", "long", is_flag=True,
                  help="more columns (QOS, ALLOCCPUS, SUBMIT, START, END, TIMELIMIT); states and reasons in full")
    @click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG)
    def command(**o: Any) -> int:
        """Show finished jobs (accounting).

        \b
        -o/--format takes sacct's field names (--format=JobID,JobName%20,State,
        Elapsed; any case, %N a width) or cqueue-like %-letters (-o "%i %T %x").
        The default table has no space inside a cell: a cancelled job's state is
        CANCELLED+ (CANCELLED by USER with -l, -P, --format or --json) and each
        space of a name or reason is shown as "_".
        """
        return show(o)

    return command


def main() -> None:
    parsed = fast_parse(sys.argv[1:], SIMPLE_OPTIONS)
    if parsed is not None:
        run(PROG, show, parsed[0])
    click_main(make_command(), PROG)
