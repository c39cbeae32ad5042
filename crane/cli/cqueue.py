"""cqueue: the active jobs (or their steps) as a table, like squeue (SPEC §7).
The table helpers it shares with cacct, cinfo and ccontrol are in
crane/cli/format.py."""

from __future__ import annotations

import os
import sys

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
    Field,
    _s,
    build_filters,
    default_layout,
    duration,
    elapsed,
    job_elapsed,
    job_label,
    nodelist_reason,
    parse_format,
    render,
    short_state,
    sort_jobs,
    time_limit,
)
from crane.core.text import safe

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

    from crane.cli.format import Getter, Job

PROG = "cqueue"

__all__ = ["JOB_FIELDS", "QUEUE_COLUMNS", "STEP_FIELDS", "Field", "make_command", "main"]

QUEUE_COLUMNS: list[tuple[str, Getter]] = [
    ("JOBID", job_label),  # A_T for an array task
    ("PARTITION", _s("partition")),
    ("NAME", _s("name")),
    ("USER", _s("user")),
    ("ACCOUNT", _s("account")),
    ("STATUS", lambda j, now: str(j["state"])),
    ("TYPE", lambda j, now: "Batch"),
    ("TIME", job_elapsed),
    ("TIMELIMIT", time_limit),
    ("NODES", _s("num_nodes")),
    ("NODELIST(REASON)", nodelist_reason),
]

#: ``-l``: the default columns plus CPUs, memory and GPUs (request and allocation) and the dependency
LONG_COLUMNS: list[tuple[str, Getter]] = [
    *QUEUE_COLUMNS[:-1], JOB_FIELDS["C"], JOB_FIELDS["m"], JOB_FIELDS["b"], JOB_FIELDS["G"], JOB_FIELDS["E"],
    QUEUE_COLUMNS[-1],
]


def step_rows(jobs: list[Job], wanted: set[tuple[Any, int]], active_only: bool) -> list[Job]:
    """One flat dict per step (the job's fields the step table needs)."""
    from crane.core.ids import TERMINAL

    out = []
    for j in jobs:
        for s in j.get("steps") or []:
            if wanted and (j["job_id"], s["step_id"]) not in wanted and (job_label(j), s["step_id"]) not in wanted:
                continue
            if active_only and s.get("state") in TERMINAL:
                continue
            out.append({**s, "job_id": j["job_id"], "job_label": job_label(j), "job_name": j["name"], "partition": j["partition"],
                        "user": j["user"], "account": j["account"]})  # fmt: skip
    return out


def _step_name(s: Job, now: float) -> str:
    if s["step_id"] == 1:
        return "batch"
    argv = s.get("argv") or []
    return str(argv[0]).rsplit("/", 1)[-1] if argv else s["job_name"]


def _step_time(s: Job, now: float) -> str:
    return duration(elapsed(s.get("start"), s.get("end"), now))


STEP_FIELDS: dict[str, tuple[str, Getter]] = {
    "i": ("STEPID", lambda s, now: f"{s.get('job_label') or s['job_id']}.{s['step_id']}"),
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


# --------------------------------------------------------------------------- command


def my_name() -> str:
    """The caller's user name (its uid when passwd has no entry)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def show(o: dict[str, Any]) -> int:
    """Show the active jobs (pending, running, suspended...)."""
    from crane.core.states import ACTIVE
    from crane.core.wire import Request

    if o["me"]:
        if o["user"] is not None:
            raise CliError("--me and -u/--user are mutually exclusive", EXIT_ARGS)
        o["user"] = my_name()
    filters, wanted_steps = build_filters(o, sorted(ACTIVE))
    layout = None
    plain = o["fmt"] is None and not o["long"]  # the default table: no spaces in a cell
    if o["fmt"] is not None:
        layout = parse_format(o["fmt"], STEP_FIELDS if o["steps"] else JOB_FIELDS)
    cfg = load_config(o["config"])
    # crane.core.messages.QueryJobs, without importing the message classes
    jobs = sort_jobs(call(cfg, Request("QueryJobs", {"filters": filters, "history": False}))["jobs"])
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
    for line in render(layout, records, header=not o["noheader"], plain=plain):
        print(safe(line))
    return 0




#: The options the fast path parses (flags, dest, takes a value): the same
#: as make_command's, whose parse it must equal (tests/test_cli_fast_paths.py).
SIMPLE_OPTIONS: SimpleOptions = [
    *FILTER_FLAGS,
    (("-s", "--step", "--steps"), "steps", False), (("-l", "--long"), "long", False),
    (("--me",), "me", False),
]


def make_command() -> Any:
    import click

    from crane.cli.filter_options import FILTER_OPTIONS, with_options

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @with_options(FILTER_OPTIONS)
    @click.option("-s", "--step", "--steps", "steps", is_flag=True, help="list the jobs' steps instead")
    @click.option("-l", "--long", "long", is_flag=True,
                  help="more columns: CPUS, MIN_MEMORY, GRES, GPU_ALLOC, DEPENDENCY; names and reasons as they are")
    @click.option("--me", is_flag=True, help="only my jobs (the same as -u with my user name)")
    @click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG)
    def command(**o: Any) -> int:
        """Show the active jobs (pending, running, suspended...)."""
        return show(o)

    return command


def main() -> None:
    parsed = fast_parse(sys.argv[1:], SIMPLE_OPTIONS)
    if parsed is not None:
        run(PROG, show, parsed[0])
    click_main(make_command(), PROG)
