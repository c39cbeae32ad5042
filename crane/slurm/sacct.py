"""sacct: jobs and their steps in Slurm's accounting formats (``-P``, ``-p``,
``-o Field%N``, ``--json``), from the same QueryJobs requests as cacct.

Rows: each job (``J``, or ``A_T`` for an array task) followed by its steps
``J.batch`` (Crane's step 1) and ``J.0``, ``J.1``... (Crane's 2, 3...), each
with its own state; ``-X`` shows jobs only. States as Slurm's:
``CANCELLED by UID``, ``PREEMPTED``, ``NODE_FAIL``, ``TIMEOUT``,
``OUT_OF_MEMORY``... Time window as sacct's: jobs not ended before
``-S`` (default midnight today; with ``-j``: all time) and submitted before
``-E`` (default now). Without ``-a``/``-u`` a user other than root sees
their own jobs (with ``-j``: the jobs named, whoever owns them). Exit codes: 0, or 1 on any error.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click

from crane.cli.common import CliError, call, load_config, print_json
from crane.core.states import JobState
from crane.core.text import safe
from crane.slurm.job_values import nodes_text, reason_text
from crane.slurm.refs import jobs_for_ids, parse_ids
from crane.slurm.sacct_fields import (
    SACCT_BRIEF,
    SACCT_DEFAULT,
    SACCT_LONG,
    acct_rows,
    parse_sacct_format,
    render_sacct,
    sacct_fields,
)
from crane.slurm.states import job_state, parse_state_list
from crane.slurm.times import elapsed, parse_when
from crane.slurm.translate import VERSION, click_slurm_main

EPILOG = "Exit codes: 0, or 1 on any error (as Slurm's). Crane's own command: cacct."
PROG = "sacct"


def uid_of(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def ask(cfg: Any, filters: dict[str, Any], history: bool) -> list[dict[str, Any]]:
    from crane.core.wire import Request  # crane.core.messages.QueryJobs, without the classes

    try:
        return list(call(cfg, Request("QueryJobs", {"filters": filters, "history": history}))["jobs"])
    except CliError as e:
        raise CliError(str(e), 1) from None


def my_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def csv(text: str | None) -> set[str] | None:
    if text is None:
        return None
    return {x.strip() for x in text.split(",") if x.strip()}


def in_window(j: dict[str, Any], start: float | None, end: float | None, now: float) -> bool:
    begin = float(j.get("submit_time") or j.get("start_time") or 0.0)
    finish = float(j.get("end_time") or now)
    if end is not None and begin > end:
        return False
    return not (start is not None and finish < start)


def json_job(j: dict[str, Any], rows: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """One job of ``--json`` (a subset of Slurm 22.05's shape)."""

    def code(r: dict[str, Any]) -> dict[str, Any]:
        rc, sig = int(r.get("exit_code") or 0), int(r.get("exit_signal") or 0)
        status = "SIGNALED" if sig else ("SUCCESS" if rc == 0 else JobState.FAILED.value)
        return {"status": status, "return_code": rc, "signal": {"signal_id": sig}}

    def times(r: dict[str, Any]) -> dict[str, Any]:
        return {"elapsed": int(elapsed(r, now)), "start": int(r.get("start_time") or 0),
                "end": int(r.get("end_time") or 0), "submission": int(r.get("submit_time") or 0),
                "limit": None if r.get("time_limit") is None else int(r["time_limit"]) // 60}  # fmt: skip

    state = job_state(j)
    return {
        "job_id": int(j["job_id"]), "name": j.get("name") or "", "user": j.get("user") or "",
        "account": j.get("account") or "", "partition": j.get("partition") or "", "qos": j.get("qos") or "",
        "nodes": nodes_text(j) or "None assigned", "allocation_nodes": len(j.get("nodes") or []),
        "array": {"job_id": int(j.get("array_job_id") or 0),
                  "task_id": j.get("array_task_id") if j.get("array_job_id") else None},
        "state": {"current": state, "reason": reason_text(j)},
        "exit_code": code(j), "derived_exit_code": code(j), "time": times(j),
        "comment": {"job": j.get("comment") or ""}, "working_directory": j.get("work_dir") or "",
        "steps": [{"step": {"id": r["slurm_id"], "name": r.get("name") or ""}, "state": r.get("state") or "",
                   "exit_code": code(r), "nodes": {"range": nodes_text(r)}, "time": times(r)}
                  for r in rows if r.get("is_step") and str(r["raw_id"]).split(".")[0] == str(j["job_id"])],
    }  # fmt: skip


def help_format() -> str:
    names = sorted(name for name, _w, _g in sacct_fields(uid_of).values())
    lines = [" ".join(f"{n:<18}" for n in names[i : i + 4]).rstrip() for i in range(0, len(names), 4)]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option("-a", "--allusers", is_flag=True, help="every user's jobs (root: always)")
@click.option("-A", "--accounts", help="comma list of accounts")
@click.option("-b", "--brief", is_flag=True, help="JobID,State,ExitCode")
@click.option("-D", "--duplicates", is_flag=True, help="accepted (a requeued job is one record)")
@click.option("-e", "--helpformat", is_flag=True, help="list the fields -o accepts")
@click.option("-E", "--endtime", help="jobs submitted before this time (default now)")
@click.option("-j", "--jobs", "job_ids", multiple=True, help="comma list of J, A_T, J.batch, J.S (all time unless -S)")
@click.option("-l", "--long", "long", is_flag=True, help="many fields")
@click.option("-L", "--allclusters", is_flag=True, help="accepted (one cluster)")
@click.option("-M", "--clusters", help="accepted (one cluster)")
@click.option("--name", help="comma list of job names")
@click.option("-n", "--noheader", is_flag=True, help="no header")
@click.option("-N", "--nodelist", help="jobs that ran on any of these nodes (hostlist)")
@click.option("-o", "--format", "fmt", help="fields: JobID,JobName%30,State,ExitCode,...")
@click.option("-p", "--parsable", is_flag=True, help='fields followed by "|"')
@click.option("-P", "--parsable2", is_flag=True, help='fields separated by "|" (no trailing "|")')
@click.option("--delimiter", help="the separator of -p/-P instead of |")
@click.option("-q", "--qos", help="comma list of QoS")
@click.option("-r", "--partition", help="comma list of partitions")
@click.option("-s", "--state", "states", help="comma list of states: names or codes (CD,CA,F,TO,PR,NF,OOM...)")
@click.option("-S", "--starttime", help="jobs not ended before this time (default midnight today; none with -j)")
@click.option("-T", "--truncate", is_flag=True, help="accepted")
@click.option("-u", "--user", help="comma list of users (names or uids)")
@click.option("-X", "--allocations", is_flag=True, help="jobs only, no step rows")
@click.option("--json", "as_json", is_flag=True, help="Slurm's JSON shape (a subset of its fields)")
@click.option("--noconvert", is_flag=True, help="accepted")
@click.option("-C", "--config", "config", help="Crane's config file (default: $CRANE_CONF)")
@click.version_option(VERSION, "-V", "--version", message="%(version)s")
def command(**o: Any) -> int:
    """Accounting data of jobs and steps, in Slurm's formats.

    \b
    --json prints {"jobs": [...]}: job_id, name, user, account, partition,
    qos, nodes, array {job_id, task_id}, state {current, reason}, exit_code
    {status, return_code, signal}, time {elapsed, start, end, submission,
    limit}, comment, working_directory, steps [{step {id, name}, state,
    exit_code, nodes, time}]. Crane's own view: cacct (-l shows who cancelled
    by name and why).
    """
    now = time.time()
    if o["helpformat"]:
        print(help_format())
        return 0
    fields = sacct_fields(uid_of)
    spec = o["fmt"] or os.environ.get("SACCT_FORMAT") or (
        SACCT_BRIEF if o["brief"] else SACCT_LONG if o["long"] else SACCT_DEFAULT
    )
    try:
        layout = parse_sacct_format(spec, fields)
        states = parse_state_list(o["states"]) if o["states"] is not None else None
        ids = parse_ids(",".join(o["job_ids"])) if o["job_ids"] else None
        start = parse_when(o["starttime"], now) if o["starttime"] is not None else None
        end = parse_when(o["endtime"], now) if o["endtime"] is not None else None
    except ValueError as e:
        raise CliError(str(e), 1) from None
    if start is None and ids is None:
        start = parse_when("midnight", now)
    users = csv(o["user"])
    if users is None and not o["allusers"] and os.getuid() != 0 and ids is None:
        users = {my_name()}
    nodes = None
    if o["nodelist"] is not None:
        from crane.core.ids import expand_nodes

        try:
            nodes = set(expand_nodes(o["nodelist"]))
        except ValueError as e:
            raise CliError(str(e), 1) from None
    cfg = load_config(o["config"])
    base: dict[str, Any] = {}
    if users is not None and len(users) == 1:
        base["user"] = next(iter(users))
    wanted_steps: set[tuple[int, int]] | None = None
    if ids is not None:
        jobs, wanted_steps = jobs_for_ids(lambda f, h: ask(cfg, f, h), ids, (False, True), base)
    else:
        hist = ask(cfg, {**base, **({"ended_after": start} if start is not None else {})}, True)
        seen = {j["job_id"] for j in hist}
        jobs = hist + [j for j in ask(cfg, base, False) if j["job_id"] not in seen]
        jobs.sort(key=lambda j: int(j["job_id"]))

    def keep(j: dict[str, Any]) -> bool:
        if not in_window(j, start, end, now):
            return False
        if users is not None and str(j.get("user")) not in users and str(j.get("uid")) not in users:
            return False
        for key, want in (("account", csv(o["accounts"])), ("partition", csv(o["partition"])),
                          ("qos", csv(o["qos"])), ("name", csv(o["name"]))):  # fmt: skip
            if want is not None and str(j.get(key) or "") not in want:
                return False
        if states is not None and job_state(j) not in states and str(j.get("state")) not in states:
            return False
        if states is not None and end is not None and j.get("end_time") and float(j["end_time"]) > end:
            return False  # with -s, an ended job is in the window when it ended in it (sacct's rule)
        return not (nodes is not None and not nodes.intersection(j.get("nodes") or []))

    cluster = str(getattr(cfg, "cluster", "") or "")
    jobs = [{**j, "cluster": cluster} for j in jobs if keep(j)]
    rows = acct_rows(jobs, steps=not o["allocations"] or wanted_steps is not None, wanted_steps=wanted_steps)
    if o["allocations"]:
        rows = [r for r in rows if not r.get("is_step")]
    if o["as_json"]:
        print_json({"meta": {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"}},
                    "errors": [], "jobs": [json_job(j, rows, now) for j in jobs]})  # fmt: skip
        return 0
    parsable = None if not (o["parsable"] or o["parsable2"]) else (o["delimiter"] or "|")
    lines = render_sacct(layout, rows, header=not o["noheader"], now=now, parsable=parsable,
                           trailing=o["parsable"], escape=safe)  # fmt: skip
    for line in lines:
        print(line)
    return 0


def main() -> None:
    click_slurm_main(command, PROG)


if __name__ == "__main__":
    main()
