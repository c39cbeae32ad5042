"""squeue: the active jobs in Slurm's formats (``-o``/``-O``, ``--json``),
from the same QueryJobs request as cqueue.

Exit codes as Slurm's: 0, or 1 on any error (the message is one line on
stderr). ``-r/--array`` is always in effect (Crane keeps each array task as
a job of its own, so each has its line); ``-i/--iterate`` is refused.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click

from crane.cli.common import CliError, call, load_config, print_json
from crane.core.states import JobState
from crane.core.text import safe
from crane.slurm.job_values import nodes_text, reason_text, total_cpus
from crane.slurm.layout import Getter, getter, parse_percent, render
from crane.slurm.refs import jobs_for_ids, parse_ids
from crane.slurm.sacct_fields import acct_rows
from crane.slurm.squeue_fields import (
    SQUEUE_DEFAULT,
    SQUEUE_FIELDS,
    SQUEUE_LONG,
    SQUEUE_STEPS,
    command_text,
    parse_squeue_names,
)
from crane.slurm.states import STATE_CODES, job_state, parse_state_list
from crane.slurm.times import elapsed, mb, squeue_time
from crane.slurm.translate import VERSION, click_slurm_main

EPILOG = "Exit codes: 0, or 1 on any error (as Slurm's). Crane's own command: cqueue."
PROG = "squeue"
MIN_JOB_AGE = 300  # seconds an ended job is still shown when named with -j or -t (Slurm's MinJobAge)
#: the states squeue shows without -t (Slurm: pending, running, suspended, completing, configuring)
ACTIVE = {JobState.PENDING, JobState.RUNNING, JobState.SUSPENDED, JobState.COMPLETING, JobState.CONFIGURING}
STATE_ORDER = [JobState.RUNNING, JobState.CONFIGURING, JobState.COMPLETING, JobState.SUSPENDED, JobState.PENDING]


def ask(cfg: Any, filters: dict[str, Any], history: bool) -> list[dict[str, Any]]:
    from crane.core.wire import Request  # crane.core.messages.QueryJobs, without the classes

    try:
        return list(call(cfg, Request("QueryJobs", {"filters": filters, "history": history}))["jobs"])
    except CliError as e:
        raise CliError(f"slurm_load_jobs error: {e}", 1) from None


def my_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def known_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def csv(text: str | None) -> set[str] | None:
    if text is None:
        return None
    return {x.strip() for x in text.split(",") if x.strip()}


def keep(j: dict[str, Any], o: dict[str, Any], states: set[str] | None, nodes: set[str] | None) -> bool:
    """The client-side filters (each a comma list, as Slurm's)."""
    for key, opt in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("name", "name")):
        want = csv(o[opt])
        if want is not None and str(j.get(key) or "") not in want:
            return False
    users = csv(o["user"])
    if users is not None and str(j.get("user")) not in users and str(j.get("uid")) not in users:
        return False
    st = job_state(j)
    if states is not None and st not in states and str(j.get("state")) not in states:
        return False
    return not (nodes is not None and not nodes.intersection(j.get("nodes") or []))


def sort_key(j: dict[str, Any]) -> tuple[int, int, int]:
    st = j.get("state")
    order = STATE_ORDER.index(st) if st in STATE_ORDER else len(STATE_ORDER)
    return (order, -int(j.get("priority") or 0), int(j["job_id"]))


def json_job(j: dict[str, Any], now: float) -> dict[str, Any]:
    """One job of ``--json`` (a subset of Slurm 22.05's ``v0.0.38`` shape)."""
    task = j.get("array_task_id")
    array = int(j.get("array_job_id") or 0)
    return {
        "account": j.get("account") or "", "array_job_id": array,
        "array_task_id": task if array else None, "array_task_string": str(task) if array else "",
        "command": command_text(j, now) if j.get("command") else "", "comment": j.get("comment") or "",
        "cpus": total_cpus(j), "cpus_per_task": j.get("cpus") or 1,
        "current_working_directory": j.get("work_dir") or "", "dependency": j.get("dependency") or "",
        "end_time": int(j.get("end_time") or 0), "exit_code": int(j.get("exit_code") or 0),
        "group_id": j.get("gid"), "job_id": int(j["job_id"]), "job_state": job_state(j),
        "memory_per_node": mb(j.get("memory")), "name": j.get("name") or "", "node_count": j.get("num_nodes") or 1,
        "nodes": nodes_text(j), "partition": j.get("partition") or "", "priority": int(j.get("priority") or 0),
        "qos": j.get("qos") or "", "standard_error": j.get("stderr") or j.get("stdout") or "",
        "standard_output": j.get("stdout") or "", "start_time": int(j.get("start_time") or 0),
        "state_reason": reason_text(j), "submit_time": int(j.get("submit_time") or 0),
        "tasks": j.get("ntasks") or j.get("num_nodes") or 1,
        "time_limit": None if j.get("time_limit") is None else int(j["time_limit"]) // 60,
        "user_id": j.get("uid"), "user_name": j.get("user") or "",
    }  # fmt: skip


#: squeue -s: step letters
STEP_FIELDS: dict[str, tuple[str, Getter]] = {
    "i": ("STEPID", lambda s, now: str(s["slurm_id"])),
    "j": ("NAME", getter("name")),
    "P": ("PARTITION", getter("partition")),
    "u": ("USER", getter("user")),
    "M": ("TIME", lambda s, now: squeue_time(elapsed(s, now))),
    "N": ("NODELIST", lambda s, now: nodes_text(s)),
    "T": ("STATE", lambda s, now: job_state(s)),
    "A": ("JOBID", lambda s, now: str(s["raw_id"]).split(".")[0]),
    "C": ("CPUS", lambda s, now: str(s.get("alloc_cpus") or 0)),
}


def step_rows(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in acct_rows(jobs, steps=True):
        if r.get("is_step") and r.get("state") in ACTIVE:
            job = next(j for j in jobs if str(j["job_id"]) == str(r["raw_id"]).split(".")[0])
            rows.append({**r, "partition": job.get("partition"), "user": job.get("user")})
    return rows


@click.command(context_settings={"help_option_names": ["--help"]}, epilog=EPILOG)
@click.option("-A", "--account", help="comma list of accounts")
@click.option("-a", "--all", "all_parts", is_flag=True, help="accepted (every partition is shown)")
@click.option("-r", "--array", is_flag=True, help="one line per array task (always: each task is a job)")
@click.option("-h", "--noheader", is_flag=True, help="no header line")
@click.option("-i", "--iterate", type=int, help="not supported (use watch squeue)")
@click.option("-j", "--jobs", "job_ids", multiple=True, help="comma list of job ids (J, A_T; an array id: all its tasks)")
@click.option("-l", "--long", "long", is_flag=True, help="STATE and TIME_LIMIT columns")
@click.option("--me", is_flag=True, help="only my jobs")
@click.option("-n", "--name", help="comma list of job names")
@click.option("-o", "--format", "fmt", help='Slurm format, e.g. "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"')
@click.option("-O", "--Format", "fmt_long", help="field names: jobid,name:30,state,username,...")
@click.option("-p", "--partition", help="comma list of partitions")
@click.option("-q", "--qos", help="comma list of QoS")
@click.option("-s", "--steps", is_flag=True, help="list the running steps")
@click.option("-S", "--sort", help="accepted; jobs are sorted running first, by priority, then id")
@click.option("-t", "--states", "states", help="comma list of states: names or codes (PD,R,CD,...) or all")
@click.option("-u", "--user", help="comma list of users (names or uids)")
@click.option("-w", "--nodelist", help="jobs on any of these nodes (hostlist)")
@click.option("--json", "as_json", is_flag=True, help="Slurm's JSON shape (a subset of its fields)")
@click.option("-M", "--clusters", help="accepted (one cluster)")
@click.option("--noconvert", is_flag=True, help="accepted (memory is shown in M or G)")
@click.option("--local", "--federation", "local", is_flag=True, help="accepted (one cluster)")
@click.option("-v", "--verbose", is_flag=True, help="accepted")
@click.option("-C", "--config", "config", help="Crane's config file (default: $CRANE_CONF)")
@click.version_option(VERSION, "-V", "--version", message="%(version)s")
def command(**o: Any) -> int:
    """View the jobs in the queue, in Slurm's formats.

    \b
    --json prints {"meta", "errors", "jobs": [...]}: each job with account,
    array_job_id, array_task_id, command, comment, cpus, cpus_per_task,
    current_working_directory, dependency, end_time, exit_code, group_id,
    job_id, job_state, memory_per_node, name, node_count, nodes, partition,
    priority, qos, standard_error, standard_output, start_time, state_reason,
    submit_time, tasks, time_limit (minutes), user_id, user_name.
    Crane's own view: cqueue (--json, -l, --steps).
    """
    if o["iterate"] is not None:
        raise CliError("--iterate is not supported (use: watch squeue)", 1)
    for name in sorted(csv(o["user"]) or ()):
        if not name.isdigit() and not known_user(name):
            raise CliError(f"Invalid user: {name}", 1)
    if o["me"]:
        o["user"] = my_name() if o["user"] is None else o["user"] + "," + my_name()
    try:
        states = parse_state_list(o["states"]) if o["states"] is not None else None
        ids = parse_ids(",".join(o["job_ids"])) if o["job_ids"] else None
        if o["steps"]:
            layout = parse_percent(o["fmt"] or SQUEUE_STEPS, STEP_FIELDS)
        elif o["fmt_long"] is not None:
            layout = parse_squeue_names(o["fmt_long"])
        else:
            fmt = o["fmt"] or os.environ.get("SQUEUE_FORMAT") or (SQUEUE_LONG if o["long"] else SQUEUE_DEFAULT)
            layout = parse_percent(fmt, SQUEUE_FIELDS)
    except ValueError as e:
        raise CliError(str(e), 1) from None
    nodes = None
    if o["nodelist"] is not None:
        from crane.core.ids import expand_nodes

        try:
            nodes = set(expand_nodes(o["nodelist"]))
        except ValueError as e:
            raise CliError(str(e), 1) from None
    cfg = load_config(o["config"])
    now = time.time()
    ended_too = states is not None and bool(states - ACTIVE)
    if ids is not None:
        recent = {"ended_after": now - MIN_JOB_AGE}
        jobs, _ = jobs_for_ids(lambda f, h: ask(cfg, {**f, **recent} if h else f, h), ids, (False, True))
        if not jobs:
            raise CliError("slurm_load_jobs error: Invalid job id specified", 1)
        if states is None:
            states = set(STATE_CODES)  # named jobs: in any state (as Slurm)
    else:
        filters: dict[str, Any] = {}
        users = csv(o["user"])
        if users is not None and len(users) == 1:
            filters["user"] = next(iter(users))
        jobs = ask(cfg, filters, False)
        if ended_too:
            seen = {j["job_id"] for j in jobs}
            jobs += [j for j in ask(cfg, {**filters, "ended_after": now - MIN_JOB_AGE}, True) if j["job_id"] not in seen]
    jobs = sorted((j for j in jobs if keep(j, o, states, nodes)), key=sort_key)
    if o["as_json"]:
        print_json({"meta": {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
                             "Slurm": {"version": {"major": 22, "micro": 0, "minor": 5}, "release": "22.05"}},
                    "errors": [], "jobs": [json_job(j, now) for j in jobs]})  # fmt: skip
        return 0
    records = step_rows(jobs) if o["steps"] else jobs
    if o["long"] and not o["noheader"]:
        print(time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(now)))  # as squeue -l: the time first
    for line in render(layout, records, header=not o["noheader"], now=now, escape=safe):
        print(line)
    return 0


def main() -> None:
    click_slurm_main(command, PROG)


if __name__ == "__main__":
    main()
