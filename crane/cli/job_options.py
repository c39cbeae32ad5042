"""The job options shared by cbatch, crun and calloc (Slurm's sbatch/srun/
salloc options), and the SubmitJob spec they make: one definition, so the
three commands (and #CBATCH lines) cannot drift apart."""

from __future__ import annotations

import os
from typing import Any

import click

from crane.cli.common import CliError, check_text


def current_dir() -> str:
    try:
        return os.getcwd()
    except OSError as e:
        raise CliError(f"cannot read the current directory: {e.strerror}") from None


def absolute(path: str, base: str) -> str:
    """``path`` made absolute against ``base`` (itself absolute), normalized
    lexically (``..`` and ``.`` removed; symlinks are not resolved here)."""
    return os.path.normpath(os.path.join(base, path))


def build_spec(o: dict[str, Any], script: str | None, wrap: str | None,
               argv: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The SubmitJob spec from the options ``o`` (cbatch's OPTIONS) and what
    the job runs: a script, a --wrap command, or (crun) an ``argv``."""
    from crane.core.ids import expand_nodes, parse_memory, parse_time_limit

    spec: dict[str, Any] = {}
    if argv is not None:
        spec["argv"] = list(argv)
        spec["name"] = o.get("job_name") or os.path.basename(argv[0]) or "crun"
    elif wrap is not None:
        spec["script"] = "#!/bin/sh\n" + wrap + "\n"
        spec["name"] = o.get("job_name") or "wrap"
    else:
        assert script is not None
        spec["script"] = script
    for key, field in (("partition", "partition"), ("qos", "qos"), ("account", "account"),
                       ("job_name", "name"), ("output", "stdout"), ("error", "stderr")):  # fmt: skip
        if o.get(key):
            spec[field] = o[key]
    if o.get("cpus_per_task") is not None:
        spec["cpus"] = o["cpus_per_task"]
    if o.get("nodes") is not None:
        spec["nnodes"] = o["nodes"]
    for key in ("ntasks", "ntasks_per_node"):
        if o.get(key) is not None:
            spec[key] = o[key]
    tasks = tasks_per_node(o)
    if tasks > 1:  # a node holds its tasks' cpus (the job's cpus are per node)
        spec["cpus"] = tasks * (o.get("cpus_per_task") or 1)
    for key in ("array", "dependency", "signal", "open_mode", "comment"):
        if o.get(key):
            spec[key] = o[key]
    try:
        if o.get("mem") and o.get("mem_per_cpu"):
            raise ValueError("give --mem or --mem-per-cpu (not both)")
        if o.get("mem"):
            spec["memory"] = parse_memory(o["mem"])
        elif o.get("mem_per_cpu"):
            spec["memory"] = parse_memory(o["mem_per_cpu"]) * spec.get("cpus", 1)
        if o.get("time"):
            spec["time_limit"] = parse_time_limit(o["time"], zero_unlimited=True)
        if o.get("nodelist"):
            spec["nodelist"] = expand_nodes(o["nodelist"])
    except ValueError as e:
        raise CliError(str(e)) from None
    from crane.cli.gres import gpu_spec

    spec.update(gpu_spec(o.get("gres"), o.get("gpus"), o.get("nodes")))
    if o.get("exclusive"):
        spec["exclusive"] = True
    if o.get("hold"):
        spec["hold"] = True
    spec["cwd"] = absolute(o.get("chdir") or ".", current_dir())
    for k in ("stdout", "stderr"):
        if k in spec:
            spec[k] = absolute(spec[k], spec["cwd"])
    for what, field in (("--job-name", "name"), ("--output", "stdout"), ("--error", "stderr"),
                        ("the working directory", "cwd")):  # fmt: skip
        check_text(what, spec.get(field))
    check_text("--comment", spec.get("comment"))
    if o.get("export_env", True):
        spec["env"] = exported_env(o.get("export"), os.environ)
    return spec


def tasks_per_node(o: dict[str, Any]) -> int:
    """Tasks on each node: --ntasks-per-node, else -n spread over -N nodes."""
    if o.get("ntasks_per_node"):
        return int(o["ntasks_per_node"])
    if o.get("ntasks"):
        nodes = o.get("nodes") or 1
        return -(-int(o["ntasks"]) // nodes)
    return 1


def exported_env(export: str | None, environ: Any) -> dict[str, str]:
    """The job's environment, as sbatch's --export: ALL (default) the
    submitter's environment; NONE nothing of it; ``[ALL,]VAR[,VAR=value]``
    the named variables (all of them too with ALL). Crane's own variables
    of an enclosing job never leak in (CRANE_CONF does)."""
    mine = {k: v for k, v in environ.items() if k == "CRANE_CONF" or not k.startswith("CRANE_")}
    if export is None or export.strip().upper() == "ALL":
        return mine
    items = [x for x in export.split(",") if x]
    env: dict[str, str] = {}
    if items and items[0].upper() in ("ALL", "NONE"):
        if items.pop(0).upper() == "ALL":
            env.update(mine)
    for item in items:
        name, eq, value = item.partition("=")
        if not name or not (name[0].isalpha() or name[0] == "_") or not all(c.isalnum() or c == "_" for c in name):
            raise CliError(f"--export: {name!r} is not a variable name")
        if eq:
            env[name] = value
        elif name in mine:
            env[name] = mine[name]
    if "CRANE_CONF" in mine:
        env.setdefault("CRANE_CONF", mine["CRANE_CONF"])
    return env


OPTIONS = [
    click.option("-p", "--partition", help="the partition to run in (default: the default partition, marked * in cinfo)"),
    click.option("-q", "--qos", help="the QoS (default: the account's default QoS)"),
    click.option("-A", "--account", help="the account charged (default: the user's default account)"),
    click.option("-J", "--job-name", help="the job's name (default: the script's file name)"),
    click.option("-N", "--nodes", type=click.IntRange(1, 10_000), help="number of nodes (default 1)"),
    click.option("-c", "--cpus-per-task", type=click.IntRange(1, 100_000), help="CPUs per task (default 1)"),
    click.option("--mem", help="memory per node: 512M, 4G, ..."),
    click.option("-t", "--time", help="time limit: [D-]HH:MM:SS, MM, MM:SS, D-HH; 0 or UNLIMITED: none"),
    click.option("-w", "--nodelist", help="run on these nodes (crane[01-02],crane05)"),
    click.option("--exclusive", is_flag=True, default=None, help="no other job on the job's nodes"),
    click.option("-o", "--output", help="stdout file (default crane-%j.out in the working directory; %j id, %x name, %u user, %N node, %A/%a array, %% a %)"),
    click.option("-e", "--error", help="stderr file (default: with stdout)"),
    click.option("-D", "--chdir", help="the job's working directory (default: the current one)"),
    click.option("-H", "--hold", is_flag=True, default=None, help="submit held: it runs after ccontrol release"),
    click.option("--gres", help="GPUs per node: gpu:N or gpu:TYPE:N"),
    click.option("-G", "--gpus", help="GPUs for the whole job: N or TYPE:N (N / nodes per node)"),
    click.option("-n", "--ntasks", type=click.IntRange(1, 1_000_000), help="number of tasks (default: one per node); each has --cpus-per-task cpus"),
    click.option("--ntasks-per-node", type=click.IntRange(1, 100_000), help="tasks on each node"),
    click.option("--mem-per-cpu", help="memory per cpu: 512M, 4G, ... (instead of --mem)"),
    click.option("-a", "--array", help="a job array (batch jobs): N-M[:STEP][%LIMIT] or a list 1,3,5-7; tasks are ID_INDEX"),
    click.option("-d", "--dependency", help="start after other jobs: afterok:ID[:ID], afterany, afternotok, after, singleton; ',' all, '?' any"),
    click.option("--signal", help="[B:]SIG@SECS: send SIG (to the batch shell only with B:) SECS seconds before the time limit"),
    click.option("--open-mode", type=click.Choice(["append", "truncate"]), help="output files: append (default) or truncate"),
    click.option("--comment", help="a comment kept with the job"),
    click.option("--export", help="the job's environment: ALL (default), NONE, or [ALL,]VAR[,VAR=value]..."),
]
