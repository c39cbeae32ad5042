"""cbatch: submit a batch job (a script with #CBATCH lines, or --wrap).

Paths are sent absolute: ``-D`` against the submitter's current directory,
``-o``/``-e`` against the job's working directory (``-D``, else the current
directory), from the command line and ``#CBATCH`` lines alike; the
controller refuses relative ones. A job name, path or working directory
holding a control character is refused here with exit 2 (the controller
refuses it too). GPUs: ``--gres gpu:[TYPE:]N`` per node, ``--gpus [TYPE:]N``
per job (``crane.cli.gres``)."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import click

from crane.cli.common import CliError, call, check_text, click_main, load_config, print_json
from crane.core.text import safe

PROG = "cbatch"


def script_options(script: str) -> list[str]:
    """The arguments of the #CBATCH lines at the top of a script (before the
    first command), as Slurm reads #SBATCH lines."""
    args: list[str] = []
    for line in script.splitlines()[1:] if script.startswith("#!") else script.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#CBATCH"):
            try:
                args += shlex.split(s[len("#CBATCH") :].split(" #", 1)[0])
            except ValueError as e:
                raise CliError(f"bad #CBATCH line {s!r}: {e}") from None
        elif not s.startswith("#"):
            break
    return args


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
    try:
        if o.get("mem"):
            spec["memory"] = parse_memory(o["mem"])
        if o.get("time"):
            spec["time_limit"] = parse_time_limit(o["time"])
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
    if o.get("export_env", True):
        spec["env"] = {k: v for k, v in os.environ.items() if k == "CRANE_CONF" or not k.startswith("CRANE_")}
    return spec


OPTIONS = [
    click.option("-p", "--partition"),
    click.option("-q", "--qos"),
    click.option("-A", "--account"),
    click.option("-J", "--job-name"),
    click.option("-N", "--nodes", type=click.IntRange(1, 10_000)),
    click.option("-c", "--cpus-per-task", type=click.IntRange(1, 100_000)),
    click.option("--mem"),
    click.option("-t", "--time"),
    click.option("-w", "--nodelist"),
    click.option("--exclusive", is_flag=True, default=None),
    click.option("-o", "--output"),
    click.option("-e", "--error"),
    click.option("-D", "--chdir"),
    click.option("-H", "--hold", is_flag=True, default=None),
    click.option("--gres", help="GPUs per node: gpu:N or gpu:TYPE:N"),
    click.option("-G", "--gpus", help="GPUs for the whole job: N or TYPE:N (N / nodes per node)"),
]


def _parse_script_args(args: list[str]) -> dict[str, Any]:
    """Parse #CBATCH arguments with the same options as the command line."""
    sub = click.Command("cbatch-script", params=[], callback=lambda **kw: kw)
    for opt in OPTIONS:
        opt(sub)
    try:
        return sub.main(args, standalone_mode=False)  # type: ignore[no-any-return]
    except click.UsageError as e:
        raise CliError(f"in #CBATCH lines: {e.format_message()}") from None


def merge_options(script: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """#CBATCH options overridden by the command line's; a GPU request on the
    command line (--gres or --gpus) replaces the script's either way."""
    merged = dict(script)
    if line.get("gres") is not None or line.get("gpus") is not None:
        merged["gres"] = merged["gpus"] = None
    for k, v in line.items():
        if v is not None:
            merged[k] = v
    return merged


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("script", required=False, type=click.Path(dir_okay=False))
@click.option("--wrap", help="run COMMAND as the job's script")
@click.option("--repeat", type=click.IntRange(1, 100_000), default=1, help="submit N identical jobs")
@click.option("--json", "as_json", is_flag=True)
@click.option("-C", "--config")
def command(script: str | None, wrap: str | None, repeat: int, as_json: bool, config: str | None, **opts: Any) -> int:
    """Submit a batch job."""
    if (script is None) == (wrap is None):
        raise CliError("give a script or --wrap COMMAND (not both)")
    text = None
    if script is not None:
        try:
            with open(script) if script != "-" else sys.stdin as f:
                text = f.read()
        except OSError as e:
            raise CliError(f"cannot read {script}: {e.strerror}") from None
        if not text.strip():
            raise CliError(f"{script} is empty")
        opts = merge_options(_parse_script_args(script_options(text)), opts)
        if not opts.get("job_name"):  # the script's file name, non-printables escaped
            name = os.path.basename(script)
            opts["job_name"] = safe(name)
    spec = build_spec(opts, text, wrap)
    from crane.core import messages as m

    cfg = load_config(config)
    data = call(cfg, m.SubmitJob(spec, repeat), timeout=120)
    ids = data["job_ids"]
    if as_json:
        print_json({"job_id": ids[0]} if repeat == 1 else {"job_ids": ids})
    elif repeat == 1:
        print(safe(f"Job id allocated: {ids[0]}."))
    else:
        print(safe(f"Job ids allocated: {ids[0]}-{ids[-1]}."))
    return 0


for _opt in OPTIONS:
    command = _opt(command)


def main() -> None:
    click_main(command, PROG)
