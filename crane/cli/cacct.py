"""cacct: finished jobs with their end state, exit code, and who cancelled
them and why, like sacct (SPEC §7)."""

from __future__ import annotations

from typing import Any

import click

from crane.cli.common import call, click_main, load_config, print_json
from crane.cli.cqueue import (
    FILTER_OPTIONS,
    JOB_FIELDS,
    Getter,
    Job,
    build_filters,
    default_layout,
    job_elapsed,
    nodelist,
    parse_format,
    render,
    sort_jobs,
    with_options,
)
from crane.core.text import safe

PROG = "cacct"


def acct_state(j: Job, now: float = 0.0) -> str:
    """``CANCELLED by alice`` when someone cancelled the job, else the state."""
    who = j.get("cancelled_by")
    if who and j["state"] in ("CANCELLED", "COMPLETED"):
        return f"{j['state']} by {who}"
    return str(j["state"])


def exit_code(j: Job, now: float = 0.0) -> str:
    return f"{j.get('exit_code') or 0}:{j.get('exit_signal') or 0}"


def acct_reason(j: Job, now: float = 0.0) -> str:
    return str(j.get("message") or j.get("reason") or "None")


def acct_nodes(j: Job, now: float = 0.0) -> str:
    return nodelist(j) or "None"


ACCT_FIELDS: dict[str, tuple[str, Getter]] = {
    **JOB_FIELDS,
    "j": ("JOBNAME", JOB_FIELDS["j"][1]),
    "T": ("STATE", acct_state),
    "x": ("EXITCODE", exit_code),
    "E": ("ELAPSED", job_elapsed),
    "M": ("ELAPSED", job_elapsed),
    "N": ("NODELIST", acct_nodes),
    "r": ("REASON", acct_reason),
    "b": ("CANCELLED_BY", lambda j, now: str(j.get("cancelled_by") or "-")),
    "g": ("GRES", JOB_FIELDS["b"][1]),  # %b is CANCELLED_BY here; %G the GPU allocation
}

ACCT_COLUMNS: list[tuple[str, Getter]] = [
    ("JOBID", JOB_FIELDS["i"][1]),
    ACCT_FIELDS["j"],
    ("PARTITION", JOB_FIELDS["P"][1]),
    ("ACCOUNT", JOB_FIELDS["a"][1]),
    ("USER", JOB_FIELDS["u"][1]),
    ACCT_FIELDS["T"],
    ACCT_FIELDS["x"],
    ACCT_FIELDS["E"],
    ACCT_FIELDS["N"],
    ACCT_FIELDS["r"],
]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@with_options(FILTER_OPTIONS)
@click.option(
    "-a", "--all", "all_jobs", is_flag=True, help="active jobs too, not only finished ones"
)
@click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG)
def command(**o: Any) -> int:
    """Show finished jobs (accounting)."""
    from crane.core import messages as m
    from crane.core.ids import ACTIVE, TERMINAL, JobState

    filters, _ = build_filters(o, sorted(TERMINAL | ACTIVE) if o["all_jobs"] else sorted(TERMINAL))
    layout = (
        parse_format(o["fmt"], ACCT_FIELDS)
        if o["fmt"] is not None
        else default_layout(ACCT_COLUMNS)
    )
    cfg = load_config(o["config"])
    jobs = call(cfg, m.QueryJobs(filters, history=True))["jobs"]
    want_active = o["all_jobs"] or any(JobState(s) in ACTIVE for s in filters.get("states", []))
    if want_active:
        seen = {j["job_id"] for j in jobs}
        jobs += [
            j
            for j in call(cfg, m.QueryJobs(filters, history=False))["jobs"]
            if j["job_id"] not in seen
        ]
    jobs = sort_jobs(jobs)
    if o["as_json"]:
        print_json(jobs)
        return 0
    for line in render(layout, jobs, header=not o["noheader"]):
        print(safe(line))
    return 0


def main() -> None:
    click_main(command, PROG)
