"""srun: Slurm's srun onto crun (crane.slurm.translate).

Inside an allocation (``--jobid``, ``CRANE_JOB_ID`` or ``SLURM_JOB_ID``
set: a batch script, an salloc shell) the command runs as a step of the job;
elsewhere in a new job. Output is live on srun's stdout/stderr (crun is
unbuffered: ``-u`` changes nothing); ``-o``/``-e`` patterns (``%j %t %s %n
...``) are passed to crun; the exit code is the step's (128+N for signal N).
Ctrl-C once forwards SIGINT to the step, twice within a second cancels it,
as srun. Inside an allocation the options that only shape a new job (-p -A
-q -t --mem -J --exclusive -w --gres ...) are accepted and ignored: the
step runs in the job's allocation."""

from __future__ import annotations

import os
from typing import Any

from crane.slurm.translate import (
    IGNORE,
    LOCAL,
    MAP,
    NONE,
    REFUSE,
    VERSION,
    Opt,
    TranslateError,
    crane_dest,
    given,
    help_text,
    main_guard,
    parse,
    run_crane,
    step_file,
    table,
    to_crane,
)

PROG = "srun"

OWN: list[Opt] = [
    Opt(("--jobid",), kind=LOCAL),
    Opt(("-l", "--label"), value=NONE, kind=LOCAL),
    Opt(("--pty",), value=NONE, kind=LOCAL),
    Opt(("-o", "--output"), kind=MAP, mapper=step_file("--output")),
    Opt(("-e", "--error"), kind=MAP, mapper=step_file("--error")),
    Opt(("--export",), kind=LOCAL),
    Opt(("-u", "--unbuffered"), value=NONE, kind=IGNORE, reason="crun's output is never buffered"),
    Opt(("--overlap",), value=NONE, kind=IGNORE, reason="steps share the job's CPUs"),
    Opt(("--exact",), value=NONE, kind=IGNORE, reason="a step gets the CPUs it asks for"),
    Opt(("--mpi",), kind=IGNORE, reason="no PMI: MPI programs start with mpirun inside the job"),
    Opt(("-K", "--kill-on-bad-exit"), value=2, kind=IGNORE, reason="a step ends when all its tasks end"),
    Opt(("-W", "--wait"), kind=IGNORE, reason="a step ends when all its tasks end"),
    Opt(("-X", "--disable-status"), value=NONE, kind=IGNORE, reason="Ctrl-C forwards SIGINT"),
    Opt(("-E", "--preserve-env"), value=NONE, kind=IGNORE, reason="the environment is passed as it is"),
    Opt(("--cpu-freq",), kind=IGNORE, reason="no CPU frequency control"),
    Opt(("--task-prolog",), kind=IGNORE, reason="no task prolog"),
    Opt(("--task-epilog",), kind=IGNORE, reason="no task epilog"),
    Opt(("--send-libs",), value=2, kind=IGNORE, reason="files are on a shared file system"),
    Opt(("--bcast",), value=2, kind=REFUSE, reason="files are on a shared file system"),
    Opt(("--multi-prog",), value=NONE, kind=REFUSE, reason="one command per step"),
    Opt(("-i", "--input"), kind=REFUSE, reason="srun's stdin is forwarded when it is a pipe or a file"),
    Opt(("-Z", "--no-allocate"), value=NONE, kind=REFUSE, reason="every step runs in a job"),
    Opt(("-T", "--threads"), kind=IGNORE, reason="one launcher per node"),
    Opt(("-h", "--help"), value=NONE, kind=LOCAL),
    Opt(("--usage",), value=NONE, kind=LOCAL),
    Opt(("-V", "--version"), value=NONE, kind=LOCAL),
]
ROWS = table(OWN)

#: Task layout: always passed (crun says when a step cannot take them)
TASK_LAYOUT = ("cpus_per_task", "ntasks", "nodes", "ntasks_per_node", "output", "error", "chdir")

USAGE = "[OPTIONS] COMMAND [ARGS...]"
INTRO = ("Run COMMAND as a step of the current allocation ($SLURM_JOB_ID/$CRANE_JOB_ID or --jobid), "
         "or in a new job, as Slurm's srun: translated onto crun. Output is live; the exit code is the step's. "
         "Inside an allocation the options that only shape a new job are ignored.")  # fmt: skip
EPILOG = ("Exit codes: the step's exit code (128+N when signal N ended it); 1 when srun itself fails.\n"
          "Crane's own extras (crun): -C/--config; CRUN_VERBOSE=1 says which step or job runs.")  # fmt: skip


def allocation(own: dict[str, Any], environ: Any) -> int | None:
    """The job a step runs in: --jobid, else $CRANE_JOB_ID, else $SLURM_JOB_ID."""
    for value in (own.get("jobid"), environ.get("CRANE_JOB_ID"), environ.get("SLURM_JOB_ID")):
        if value:
            text = str(value).split(".", 1)[0]
            if not text.isdigit() or int(text) <= 0:
                raise TranslateError(f"invalid job id {value!r}")
            return int(text)
    return None


def plan(argv: list[str], environ: Any, crun_params: set[str], step_only: tuple[str, ...]) -> dict[str, Any]:
    """The crun words for ``argv`` (pure): ``crun_params`` are crun's click
    parameter names, ``step_only`` those it takes for a step."""
    line = parse(argv, ROWS)
    own = line.local()
    if not line.rest:
        raise TranslateError("No command given to execute.")
    job = allocation(own, environ)
    keep = set(step_only) | set(TASK_LAYOUT)

    def skip(opt: Opt) -> bool:  # inside an allocation: the job-only options are moot
        return job is not None and crane_dest(opt.crane or opt.long) not in keep

    words = error_like_output(to_crane(line, skip=skip))
    if job is not None and not given(words, "--ntasks", "--ntasks-per-node", "--nodes") \
            and str(job) in (environ.get("SLURM_JOB_ID"), environ.get("CRANE_JOB_ID")):  # fmt: skip
        words += allocation_layout(environ)
    cpus = str(environ.get("SRUN_CPUS_PER_TASK") or "")
    if cpus.isdigit() and int(cpus) > 0 and not given(words, "--cpus-per-task"):
        words += ["--cpus-per-task", cpus]  # Slurm 22.05 reads this one, not SLURM_CPUS_PER_TASK
    if job is not None and "nodes" not in step_only:
        words = nodes_as_tasks(words)
    if job is not None and (own.get("jobid") or not environ.get("CRANE_JOB_ID")):
        words += ["--jobid", str(job)]
    if own.get("label"):
        if "label" not in crun_params:
            raise TranslateError("-l/--label is not supported by this version of crun")
        words.append("--label")
    if own.get("pty"):
        words.append("--pty")
    export = own.get("export")
    if export is not None and job is None:
        words += ["--export", export]
    return {"words": [*words, "--", *line.rest], "job": job, "export": export, "own": own}


def error_like_output(words: list[str]) -> list[str]:
    """srun -o FILE without -e: stderr goes to FILE too (srun's rule; crun
    keeps a step's stderr live unless -e is given)."""
    if given(words, "--error"):
        return words
    for i, w in enumerate(words):
        if w == "--output" and i + 1 < len(words):
            return [*words, "--error", words[i + 1]]
        if w.startswith("--output="):
            return [*words, "--error", w.split("=", 1)[1]]
    return words


def allocation_layout(environ: Any) -> list[str]:
    """A step without -n/-N/--ntasks-per-node takes the allocation's
    layout, as Slurm's srun reads SLURM_NTASKS, SLURM_NTASKS_PER_NODE (set
    in a job submitted with -n or --ntasks-per-node) and SLURM_NNODES."""
    words: list[str] = []
    for name, option in (("SLURM_NTASKS", "--ntasks"), ("SLURM_NTASKS_PER_NODE", "--ntasks-per-node"),
                         ("SLURM_NNODES", "--nodes")):  # fmt: skip
        value = str(environ.get(name) or "")
        if value.isdigit() and int(value) > 0:
            words += [option, value]
    return words


def nodes_as_tasks(words: list[str]) -> list[str]:
    """``-N K`` for a step, as tasks (crun places a step's tasks in blocks
    on the allocation's first nodes): ``--ntasks-per-node`` ceil(n/K) and
    ``--ntasks`` n (default K x per node), so the step uses K nodes."""
    if "--nodes" not in words:
        return words
    values: dict[str, int] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        if words[i] in ("--nodes", "--ntasks", "--ntasks-per-node") and i + 1 < len(words) and words[i + 1].isdigit():
            values[words[i]] = int(words[i + 1])
            i += 2
            continue
        rest.append(words[i])
        i += 1
    k = max(values.pop("--nodes", 1), 1)
    per_node = values.get("--ntasks-per-node") or -(-(values.get("--ntasks") or k) // k)
    ntasks = values.get("--ntasks") or k * per_node
    return [*rest, "--ntasks", str(ntasks), "--ntasks-per-node", str(per_node)]


def step_environment(export: str, environ: Any) -> dict[str, str]:
    """--export for a step: the variables it names (crane's own job
    variables kept, so the step knows its job)."""
    from crane.cli.job_options import exported_env

    env = exported_env(export, environ)
    env.update({k: v for k, v in environ.items() if k.startswith(("CRANE_", "SLURM_"))})
    return env


def body(argv: list[str]) -> int:
    first = parse(argv, ROWS).local()
    if first.get("help") or first.get("usage"):
        print(help_text(PROG, "crun", USAGE, INTRO, ROWS, EPILOG), end="")
        return 0
    if first.get("version"):
        print(VERSION)
        return 0
    from crane.cli import crun

    params = {p.name for p in crun.command.params if p.name}
    p = plan(argv, os.environ, params, crun.STEP_ONLY)
    if p["export"] is not None and p["job"] is not None:
        env = step_environment(p["export"], os.environ)
        os.environ.clear()
        os.environ.update(env)
    return run_crane(crun.command, p["words"], PROG, "crun")


def main() -> None:
    main_guard(PROG, body)


if __name__ == "__main__":
    main()
