"""The job options shared by cbatch, crun and calloc (Slurm's sbatch/srun/
salloc options), and the SubmitJob spec they make: one definition, so the
three commands (and #CBATCH lines) cannot drift apart."""

from __future__ import annotations

import os

from crane.cli.common import CliError, SimpleOptions, check_text, fast_parse

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any


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
        if o.get("mem") or o.get("mem_per_cpu") or o.get("time") or o.get("nodelist"):
            from crane.core.ids import (  # re: ~3 ms, when needed
                expand_nodes,
                parse_memory,
                parse_time_limit,
            )
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


#: The job options: (flags, what the option takes, help). What it takes:
#: "text"; "flag" (None when not given, as click's is_flag with default None);
#: (low, high), an integer in that range; [choices], one of them. cbatch,
#: crun and calloc get them as click options (click_options()); cbatch's
#: fast path parses them without click (fast_job_options()).
JOB_OPTIONS: list[tuple[tuple[str, ...], Any, str]] = [
    (("-p", "--partition"), "text",
     "the partition to run in (default: the default partition, marked * in cinfo)"),
    (("-q", "--qos"), "text",
     "the QoS (default: the account's default QoS)"),
    (("-A", "--account"), "text",
     "the account charged (default: the user's default account)"),
    (("-J", "--job-name"), "text",
     "the job's name (default: the script's file name)"),
    (("-N", "--nodes"), (1, 10_000),
     "number of nodes (default 1)"),
    (("-c", "--cpus-per-task"), (1, 100_000),
     "CPUs per task (default 1)"),
    (("--mem",), "text",
     "memory per node: 512M, 4G, ..."),
    (("-t", "--time"), "text",
     "time limit: [D-]HH:MM:SS, MM, MM:SS, D-HH; 0 or UNLIMITED: none"),
    (("-w", "--nodelist"), "text",
     "run on these nodes (crane[01-02],crane05)"),
    (("--exclusive",), "flag",
     "no other job on the job's nodes"),
    (("-o", "--output"), "text",
     "stdout file (default crane-%j.out in the working directory; %j id, %x name, %u user, %N node, %A/%a array, %% a %)"),
    (("-e", "--error"), "text",
     "stderr file (default: with stdout)"),
    (("-D", "--chdir"), "text",
     "the job's working directory (default: the current one)"),
    (("-H", "--hold"), "flag",
     "submit held: it runs after ccontrol release"),
    (("--gres",), "text",
     "GPUs per node: gpu:N or gpu:TYPE:N"),
    (("-G", "--gpus"), "text",
     "GPUs for the whole job: N or TYPE:N (N / nodes per node)"),
    (("-n", "--ntasks"), (1, 1_000_000),
     "number of tasks (default: one per node); each has --cpus-per-task cpus"),
    (("--ntasks-per-node",), (1, 100_000),
     "tasks on each node"),
    (("--mem-per-cpu",), "text",
     "memory per cpu: 512M, 4G, ... (instead of --mem)"),
    (("-a", "--array"), "text",
     "a job array (batch jobs): N-M[:STEP][%LIMIT] or a list 1,3,5-7; tasks are ID_INDEX"),
    (("-d", "--dependency"), "text",
     "start after other jobs: afterok:ID[:ID], afterany, afternotok, after, singleton; ',' all, '?' any"),
    (("--signal",), "text",
     "[B:]SIG@SECS: send SIG (to the batch shell only with B:) SECS seconds before the time limit"),
    (("--open-mode",), ["append", "truncate"],
     "output files: append (default) or truncate"),
    (("--comment",), "text",
     "a comment kept with the job"),
    (("--export",), "text",
     "the job's environment: ALL (default), NONE, or [ALL,]VAR[,VAR=value]..."),
]


def dest(flags: tuple[str, ...]) -> str:
    """The option's key in the parsed options, as click names it: its long flag."""
    long = next(f for f in flags if f.startswith("--"))
    return long[2:].replace("-", "_").lower()


def click_options() -> list[Any]:
    """JOB_OPTIONS as click option decorators."""
    import click

    out = []
    for flags, takes, text in JOB_OPTIONS:
        if takes == "text":
            out.append(click.option(*flags, help=text))
        elif takes == "flag":
            out.append(click.option(*flags, is_flag=True, default=None, help=text))
        elif isinstance(takes, tuple):
            out.append(click.option(*flags, type=click.IntRange(*takes), help=text))
        else:
            out.append(click.option(*flags, type=click.Choice(takes), help=text))
    return out


def fast_job_options(argv: list[str], extra: SimpleOptions, max_args: int = 0) -> tuple[dict[str, Any], list[str]] | None:
    """``argv`` parsed as click parses JOB_OPTIONS plus ``extra`` (untyped
    options and flags), without click; None for anything the fast path does
    not take (then click parses it, with its error messages): an integer
    written otherwise than plain digits or out of range, a choice not among
    the choices, and whatever crane.cli.common.fast_parse leaves to click."""
    table: SimpleOptions = [(flags, dest(flags), takes != "flag") for flags, takes, _ in JOB_OPTIONS]
    parsed = fast_parse(argv, table + extra, max_args=max_args)
    if parsed is None:
        return None
    o, args = parsed
    for flags, takes, _ in JOB_OPTIONS:
        key = dest(flags)
        value = o[key]
        if takes == "flag":
            o[key] = value or None
        elif value is None or takes == "text":
            continue
        elif isinstance(takes, tuple):
            if not (value.isascii() and value.isdigit() and takes[0] <= int(value) <= takes[1]):
                return None
            o[key] = int(value)
        elif value not in takes:
            return None
    return o, args
