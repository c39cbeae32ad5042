"""ccontrol: show jobs, nodes and partitions; drain/resume nodes; hold,
release, requeue, suspend and resume jobs (SPEC §7), like scontrol::

    ccontrol show job [N[,N]] | show node [NAME] | show partition [NAME]
    ccontrol update NodeName=X State=DRAIN|RESUME [Reason=TEXT]
    ccontrol update JobId=N [TimeLimit=T] [Partition=P] [QOS=Q] [Priority=N] [JobName=NAME]
    ccontrol hold|release|requeue|suspend|resume N[,N]
    ccontrol reconfigure
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from crane.cli.common import (
    EXIT_ARGS,
    EXIT_INTERNAL,
    EXIT_PARTIAL,
    CliError,
    call,
    check_text,
    click_main,
    load_config,
    print_json,
)
from crane.cli.gres import alloc_text, gres_text
from crane.core.states import ControlAction, NodeState
from crane.core.text import safe

PROG = "ccontrol"

JOB_ACTIONS = tuple(ControlAction(a) for a in ("hold", "release", "requeue", "suspend", "resume"))
USAGE = (
    "use: show job [ID] | show node [NAME] | show partition [NAME] | "
    "update NodeName=X State=DRAIN|RESUME [Reason=TEXT] | update JobId=N KEY=VALUE... | "
    "hold|release|requeue|suspend|resume ID[,ID] | reconfigure"
)
# ccontrol update JobId=N: Slurm's keys (case-insensitive) -> the request's fields
JOB_KEYS = {"timelimit": "time_limit", "partition": "partition", "qos": "qos", "priority": "priority",
            "jobname": "name", "name": "name"}  # fmt: skip
ENTITIES = {
    "job": "job", "jobs": "job", "jobid": "job",
    "node": "node", "nodes": "node", "nodename": "node",
    "partition": "partition", "partitions": "partition", "partitionname": "partition",
}  # fmt: skip


def _v(x: Any, none: str = "") -> str:
    return none if x is None or x == "" or x == [] else str(x)


def _bool(x: Any) -> str:
    return "yes" if x else "no"


# --------------------------------------------------------------------------- show


def _block(lines: list[str]) -> list[str]:
    """A record's lines as printed: the first, then the rest indented."""
    return lines[:1] + ["   " + ln for ln in lines[1:]]


def print_blocks(blocks: list[list[str]]) -> None:
    """Records separated by a blank line; every line escaped on its own (a
    newline inside a value prints as ``\\n``, not as a new line)."""
    if not blocks:
        print()
    for i, block in enumerate(blocks):
        if i:
            print()
        for line in block:
            print(safe(line))


def format_job(j: dict[str, Any], now: float) -> list[str]:
    from crane.cli.format import duration, elapsed, fmt_time, nodelist
    from crane.core.ids import format_memory

    lines = [
        f"JobId={j['job_id']} JobName={j['name']}",
        f"UserId={j['user']}({j['uid']}) Account={_v(j.get('account'))} QOS={_v(j.get('qos'))}",
        f"JobState={j['state']} Reason={_v(j.get('reason'))}",
        f"Priority={_v(j.get('priority'), '0')} Held={_bool(j.get('held'))} "
        f"Exclusive={_bool(j.get('exclusive'))} RequeueCount={j.get('requeue_count') or 0} "
        f"ExitCode={j.get('exit_code') or 0}:{j.get('exit_signal') or 0}",
        f"RunTime={duration(elapsed(j.get('start_time'), j.get('end_time'), now))} "
        f"TimeLimit={duration(j.get('time_limit'))}",
        f"SubmitTime={fmt_time(j.get('submit_time'))} StartTime={fmt_time(j.get('start_time'))} "
        f"EndTime={fmt_time(j.get('end_time'))}",
        f"Partition={j['partition']} NodeList={nodelist(j)} NumNodes={j.get('num_nodes')} "
        f"NumCPUs={j.get('cpus')} Memory={format_memory(int(j.get('memory') or 0))}",
        f"WorkDir={_v(j.get('work_dir'))}",
        f"StdOut={_v(j.get('stdout'))}",
        f"StdErr={_v(j.get('stderr'))}",
    ]
    if j.get("array_job_id"):  # as scontrol: ArrayJobId=A ArrayTaskId=T
        limit = f" ArrayTaskThrottle={j['array_limit']}" if j.get("array_limit") else ""
        lines.insert(1, f"ArrayJobId={j['array_job_id']} ArrayTaskId={j.get('array_task_id')}{limit}")
    if j.get("dependency"):
        lines.append(f"Dependency={j['dependency']}")
    if j.get("comment"):
        lines.append(f"Comment={j['comment']}")
    if gres_text(j):
        lines.append(f"Gres={gres_text(j)} GpuAlloc={_v(alloc_text(j))}")
    if j.get("cancelled_by"):
        lines.append(f"CancelledBy={j['cancelled_by']} CancelPath={_v(j.get('cancel_path'))} "
                     f"CancelTime={fmt_time(j.get('cancel_time'))}")  # fmt: skip
        lines.append(f"CancelMessage={_v(j.get('message'))}")
    steps = j.get("steps") or []
    if steps:
        lines.append("Steps:")
    for s in steps:
        lines.append(
            f"  StepId={j['job_id']}.{s['step_id']} State={_v(s.get('state'))} "
            f"NodeList={_v(s.get('node'))} CPUs={_v(s.get('cpus'))} Pid={_v(s.get('pid'))} "
            f"StartTime={fmt_time(s.get('start'))} EndTime={fmt_time(s.get('end'))} "
            f"ExitCode={s.get('exit_code') or 0}:{s.get('signal') or 0}"
            + (f" CancelledBy={s['cancelled_by']}" if s.get("cancelled_by") else "")
            + (f" Reason={s['reason']}" if s.get("reason") else "")
        )
    return _block(lines)


def format_node(n: dict[str, Any], parts: list[dict[str, Any]]) -> list[str]:
    from crane.cli.format import node_reason
    from crane.core.ids import format_memory

    in_parts = [p["name"] for p in parts if n["name"] in p["nodes"]]
    lines = [
        f"NodeName={n['name']} State={n['state']} CPUTot={n['cpus']} CPUAlloc={n['cpus_alloc']} "
        f"CPUFree={n['cpus_free']}",
        f"RealMemory={format_memory(int(n['memory']))} FreeMem={format_memory(int(n['mem_free']))}",
        f"Partitions={_v(','.join(in_parts))}",
        f"Jobs={_v(','.join(str(x) for x in n.get('jobs') or []))}",
        f"Cgroup={_v(n.get('cgroup'))}",
        f"Gres={_v(n.get('gres'))} GpusUsed={int(n.get('gpus_used') or 0)} GpusFree={int(n.get('gpus_free') or 0)}",
        f"Reason={node_reason(n)}",
    ]
    return _block(lines)


def format_partition(p: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> list[str]:
    from crane.core.ids import compress_nodes

    members = [nodes[n] for n in p["nodes"] if n in nodes]
    counts: dict[str, int] = {}
    for n in members:
        counts[n["state"]] = counts.get(n["state"], 0) + 1
    lines = [
        f"PartitionName={p['name']} Default={'YES' if p.get('default') else 'NO'} "
        f"Priority={p.get('priority', 0)} State=UP",
        f"Nodes={compress_nodes(list(p['nodes']))} TotalNodes={len(p['nodes'])} "
        f"TotalCPUs={sum(int(n['cpus']) for n in members)} "
        f"AllocCPUs={sum(int(n['cpus_alloc']) for n in members)}",
        f"NodeStates={_v(','.join(f'{k}:{v}' for k, v in sorted(counts.items())))}",
    ]
    total_gpus = sum(int(n.get("gpus") or 0) for n in members)
    if total_gpus:
        lines.append(f"TotalGPUs={total_gpus} AllocGPUs={sum(int(n.get('gpus_used') or 0) for n in members)}")
    return _block(lines)


def show(cfg: Any, entity: str, name: str | None, as_json: bool) -> int:
    import time

    from crane.core import messages as m

    if entity == "job":
        wanted: list[Ref] = parse_job_ids(name) if name is not None else []
        jobs = call(cfg, m.QueryJobs(ref_filters(wanted) if wanted else {}, history=False))["jobs"]
        if wanted:
            rest = [r for r in wanted if not covers(jobs, r)]
            if rest:
                seen = {j["job_id"] for j in jobs}
                jobs += [j for j in call(cfg, m.QueryJobs(ref_filters(rest), history=True))["jobs"]
                         if j["job_id"] not in seen]  # fmt: skip
        jobs.sort(key=lambda j: j["job_id"])
        missing = [ref_text(r) for r in wanted if not covers(jobs, r)]
        if as_json:
            print_json({"jobs": jobs})
        else:
            now = time.time()
            print_blocks([format_job(j, now) for j in jobs])
        if missing:
            if len(missing) == 1 and not jobs:
                raise CliError(f"Job {missing[0]} not found", EXIT_INTERNAL)
            for i in missing:
                print(safe(f"{PROG}: error: Job {i} not found"), file=sys.stderr)
            return EXIT_INTERNAL
        return 0
    data = call(cfg, m.QueryNodes())
    parts, nodes = data["partitions"], data["nodes"]
    by_name = {n["name"]: n for n in nodes}
    if entity == "node":
        if name is not None:
            from crane.core.ids import expand_nodes

            try:
                names = expand_nodes(name)
            except ValueError as e:
                raise CliError(str(e), EXIT_ARGS) from None
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise CliError(f"Node {','.join(unknown)} not found", EXIT_INTERNAL)
            nodes = [by_name[n] for n in names]
        if as_json:
            print_json({"nodes": nodes})
        else:
            print_blocks([format_node(n, parts) for n in nodes])
        return 0
    if name is not None:
        parts = [p for p in parts if p["name"] == name]
        if not parts:
            raise CliError(f"Partition {name} not found", EXIT_INTERNAL)
    if as_json:
        print_json({"partitions": parts})
    else:
        print_blocks([format_partition(p, by_name) for p in parts])
    return 0


# --------------------------------------------------------------------------- actions


Ref = tuple[int, int | None]  # (job or array id, array task index or None): J, A or A_T


def parse_job_ids(text: str) -> list[Ref]:
    """``12,7_3``: job ids, array ids (every task) and array tasks ``A_T``."""
    from crane.core.ids import IdListError, parse_job_refs

    try:
        ids = parse_job_refs(text)
    except IdListError as e:
        raise CliError(str(e), EXIT_ARGS) from None
    if any(s is not None for _, s, _ in ids):
        raise CliError(f'invalid job id list "{text}": step ids are not accepted here', EXIT_ARGS)
    return [(j, t) for j, _, t in ids]


def ref_text(r: Ref) -> str:
    return str(r[0]) if r[1] is None else f"{r[0]}_{r[1]}"


def ref_filters(refs: list[Ref]) -> dict[str, Any]:
    f: dict[str, Any] = {"jobs": [j for j, t in refs if t is None], "expand_arrays": True}
    tasks = [[j, t] for j, t in refs if t is not None]
    if tasks:
        f["array_tasks"] = tasks
    return f


def covers(jobs: list[dict[str, Any]], r: Ref) -> bool:
    """Is reference ``r`` answered by one of ``jobs``?"""
    if r[1] is None:
        return any(j["job_id"] == r[0] or j.get("array_job_id") == r[0] for j in jobs)
    return any(j.get("array_job_id") == r[0] and j.get("array_task_id") == r[1] for j in jobs)


def resolve_job_ids(cfg: Any, refs: list[Ref]) -> list[int | str]:
    """The job ids an action applies to: an array id stands for each of its
    active tasks, ``A_T`` for that task's job; a reference nothing answers
    is kept (an id: the controller says why; ``A_T``: as text, not found)."""
    from crane.core import messages as m

    if all(t is None for _, t in refs) and len(refs) == 1:
        jobs = call(cfg, m.QueryJobs(ref_filters(refs), history=False))["jobs"]
        if not any(j.get("array_job_id") == refs[0][0] for j in jobs):
            return [refs[0][0]]  # a plain job (the common case): as before
    else:
        jobs = call(cfg, m.QueryJobs(ref_filters(refs), history=False))["jobs"]
    out: list[int | str] = []
    for r in refs:
        if r[1] is None:
            tasks = [j["job_id"] for j in jobs if j.get("array_job_id") == r[0]]
            out += tasks or [r[0]]
        else:
            hit = [j["job_id"] for j in jobs if j.get("array_job_id") == r[0] and j.get("array_task_id") == r[1]]
            out += hit or [ref_text(r)]
    return list(dict.fromkeys(out))


def parse_kv(args: list[str]) -> dict[str, str]:
    """``NodeName=x State=DRAIN Reason=under maintenance`` -> lower-case keys;
    a word without ``=`` continues the previous value (an unquoted reason)."""
    out: dict[str, str] = {}
    last = None
    for a in args:
        key, sep, value = a.partition("=")
        if not sep:
            if last is None:
                raise CliError(f'unexpected argument "{a}": use KEY=VALUE', EXIT_ARGS)
            out[last] += " " + a
            continue
        last = key.lower()
        out[last] = value
    return out


def update(cfg: Any, args: list[str]) -> int:
    from crane.core import messages as m
    from crane.core.ids import expand_nodes

    kv = parse_kv(args)
    if "jobid" in kv:
        return update_job(cfg, kv)
    if "nodename" not in kv:
        raise CliError(
            "update: use NodeName=X State=DRAIN|RESUME [Reason=TEXT] or JobId=N KEY=VALUE...", EXIT_ARGS
        )
    unknown = set(kv) - {"nodename", "state", "reason"}
    if unknown:
        raise CliError(f"update: unknown key {sorted(unknown)[0]}", EXIT_ARGS)
    state = kv.get("state", "").upper()
    if state not in (NodeState.DRAIN, "RESUME", NodeState.IDLE):
        raise CliError(
            f'update: invalid State "{kv.get("state", "")}": use DRAIN or RESUME', EXIT_ARGS
        )
    try:
        names = expand_nodes(kv["nodename"])
    except ValueError as e:
        raise CliError(str(e), EXIT_ARGS) from None
    check_text("Reason", kv.get("reason"))
    for node in names:
        a: dict[str, Any] = {"node": node, "state": state}
        if kv.get("reason"):
            a["reason"] = kv["reason"]
        call(cfg, m.Control("update_node", a))
    return 0


def job_update_fields(kv: dict[str, str]) -> dict[str, Any]:
    """``TimeLimit=1:00:00 Partition=GPU QOS=high Priority=5 JobName=x``
    (keys case-insensitive) -> the request's fields. TimeLimit in
    ``[D-]HH:MM:SS`` or minutes; ``0`` or ``UNLIMITED``: no limit (None)."""
    from crane.core.ids import parse_time_limit

    fields: dict[str, Any] = {}
    for key, value in kv.items():
        if key == "jobid":
            continue
        field = JOB_KEYS.get(key)
        if field is None:
            raise CliError(f"update: unknown key {key} (use TimeLimit, Partition, QOS, Priority or JobName)",
                           EXIT_ARGS)  # fmt: skip
        if field == "time_limit":
            try:
                fields[field] = parse_time_limit(value.strip(), zero_unlimited=True)
            except ValueError as e:
                raise CliError(f"update: {e}", EXIT_ARGS) from None
        elif field == "priority":
            if not value.strip().isdigit():
                raise CliError(f'update: invalid Priority "{value}": use a number', EXIT_ARGS)
            fields[field] = int(value.strip())
        else:
            check_text(key, value)
            fields[field] = value
    if not fields:
        raise CliError("update: nothing to change (TimeLimit, Partition, QOS, Priority or JobName)", EXIT_ARGS)
    return fields


def update_job(cfg: Any, kv: dict[str, str]) -> int:
    from crane.core import messages as m

    ids = resolve_job_ids(cfg, parse_job_ids(kv["jobid"]))
    fields = job_update_fields(kv)
    return each_job(cfg, ids, lambda job_id: m.Control("update_job", {"job_id": job_id, **fields}))


def job_action(cfg: Any, action: str, args: list[str]) -> int:
    from crane.core import messages as m

    if len(args) != 1:
        raise CliError(f"{action}: give one comma-separated list of job ids", EXIT_ARGS)
    ids = resolve_job_ids(cfg, parse_job_ids(args[0]))
    return each_job(cfg, ids, lambda job_id: m.Control(action, {"job_id": job_id}))


def each_job(cfg: Any, ids: list[int | str], request: Callable[[int], Any]) -> int:
    """One request per job: a single job's error is the command's error;
    with several, each failure is a line and the first one's code is the exit code.
    A text id is an array task ``A_T`` that no job answers."""
    code = 0
    for job_id in ids:
        try:
            if isinstance(job_id, str):
                raise CliError(f"Job {job_id} not found or not active", EXIT_PARTIAL)
            call(cfg, request(job_id))
        except CliError as e:
            text = str(e) if str(job_id) in str(e) else f"Job {job_id}: {e}"
            if len(ids) == 1:
                raise CliError(text, e.code) from None
            print(safe(f"{PROG}: error: {text}"), file=sys.stderr)
            code = code or e.code
    return code


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output for show")
@click.option("-C", "--config", help="the config file (default: $CRANE_CONF, else /etc/crane/config.yaml)")
@click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG)
def command(args: tuple[str, ...], as_json: bool, config: str | None) -> int:
    """Show and change jobs, nodes and partitions.

    \b
    show job [ID[,ID]] | show node [NAME] | show partition [NAME]
    update NodeName=X State=DRAIN|RESUME [Reason=TEXT]
    update JobId=N [TimeLimit=T] [Partition=P] [QOS=Q] [Priority=N] [JobName=NAME]
    hold|release|requeue|suspend|resume ID[,ID]
    reconfigure   (admins: re-read the config file, as SIGHUP)
    """
    verb, rest = args[0].lower(), list(args[1:])
    if verb == "show":
        if rest and "=" in rest[0]:  # show job=12, show NodeName=crane01
            rest = rest[0].split("=", 1) + rest[1:]
        if not rest or rest[0].lower() not in ENTITIES:
            raise CliError("show: use show job|node|partition [NAME]", EXIT_ARGS)
        entity = ENTITIES[rest[0].lower()]
        if len(rest) > 2:
            raise CliError(f'show {entity}: unexpected argument "{rest[2]}"', EXIT_ARGS)
        name = rest[1] if len(rest) == 2 else None
        if name is not None and entity == "job":
            parse_job_ids(name)
        return show(load_config(config), entity, name, as_json)
    if verb == "update":
        if not rest:
            raise CliError(
                "update: use update NodeName=X State=DRAIN|RESUME [Reason=TEXT] or update JobId=N KEY=VALUE...",
                EXIT_ARGS,
            )
        kv = parse_kv(rest)
        if "jobid" in kv:  # bad arguments are told before the config is read
            parse_job_ids(kv["jobid"])
            job_update_fields(kv)
        return update(load_config(config), rest)
    if verb == "reconfigure":
        if rest:
            raise CliError(f'reconfigure: unexpected argument "{rest[0]}"', EXIT_ARGS)
        from crane.core import messages as m

        call(load_config(config), m.Control("reconfigure", {}))
        return 0
    if verb in JOB_ACTIONS:
        if len(rest) != 1:
            raise CliError(f"{verb}: give one comma-separated list of job ids", EXIT_ARGS)
        parse_job_ids(rest[0])
        return job_action(load_config(config), verb, rest)
    raise CliError(f'unknown command "{args[0]}": {USAGE}', EXIT_ARGS)


def main() -> None:
    click_main(command, PROG)
