"""salloc: Slurm's salloc onto calloc (crane.slurm.translate).

Allocate, then run COMMAND (default: $SHELL) here inside the allocation;
``srun`` inside it runs steps of the job. The notices are Slurm's
(``salloc: Granted job allocation N``, ``salloc: Relinquishing job
allocation N``); the exit code is the command's, 1 when salloc fails."""

from __future__ import annotations

import os
from typing import Any

from crane.slurm.translate import (
    IGNORE,
    LOCAL,
    NONE,
    REFUSE,
    VERSION,
    Opt,
    help_text,
    input_env,
    main_guard,
    parse,
    run_crane,
    table,
    to_crane,
)

PROG = "salloc"

OWN: list[Opt] = [
    Opt(("--no-shell",), value=NONE, kind=REFUSE, reason="the allocation lasts as long as salloc's command"),
    Opt(("-W", "--wait"), kind=IGNORE, reason="salloc waits until the job starts"),
    Opt(("--bell",), value=NONE, kind=IGNORE, reason="no bell"),
    Opt(("--no-bell",), value=NONE, kind=IGNORE, reason="no bell"),
    Opt(("-K", "--kill-command"), value=2, kind=IGNORE, reason="a revoked allocation gets SIGHUP, then SIGKILL"),
    Opt(("--x11",), value=2, kind=REFUSE, reason="no X11 forwarding"),
    Opt(("-h", "--help"), value=NONE, kind=LOCAL),
    Opt(("--usage",), value=NONE, kind=LOCAL),
    Opt(("-V", "--version"), value=NONE, kind=LOCAL),
]
ROWS = table(OWN)

USAGE = "[OPTIONS] [COMMAND [ARGS...]]"
INTRO = ("Allocate resources and run COMMAND (default: $SHELL) here inside the allocation, as Slurm's salloc: "
         "translated onto calloc. srun inside runs steps of the job; the job ends when COMMAND exits.")  # fmt: skip
EPILOG = ("Exit codes: the command's exit code (128+N when signal N ended it); 1 when salloc itself fails.\n"
          "Crane's own extras (calloc): -C/--config.")  # fmt: skip


#: The command runs through this: it sees the allocation's SLURM_* names
#: (calloc sets the CRANE_* ones), then it is exec'd (same process).
SLURM_NAMES = ('export SLURM_JOB_ID="$CRANE_JOB_ID" SLURM_JOBID="$CRANE_JOB_ID" '
               'SLURM_JOB_NODELIST="$CRANE_JOB_NODELIST" SLURM_NODELIST="$CRANE_JOB_NODELIST" '
               'SLURM_NNODES="$CRANE_JOB_NUM_NODES" SLURM_JOB_NUM_NODES="$CRANE_JOB_NUM_NODES"; exec "$@"')  # fmt: skip


def plan(argv: list[str], environ: Any = None) -> dict[str, Any]:
    """The calloc words for ``argv`` (pure; ``environ``: SALLOC_* input
    variables, $SHELL the default command)."""
    env = environ or {}
    line = parse(argv, ROWS)
    words = input_env("SALLOC", env) + to_crane(line)
    command = line.rest or [env.get("SHELL") or "/bin/sh"]
    words += ["--", "/bin/sh", "-c", SLURM_NAMES, PROG, *command]
    return {"words": words, "own": line.local()}


def body(argv: list[str]) -> int:
    first = parse(argv, ROWS).local()
    if first.get("help") or first.get("usage"):
        print(help_text(PROG, "calloc", USAGE, INTRO, ROWS, EPILOG), end="")
        return 0
    if first.get("version"):
        print(VERSION)
        return 0
    from crane.cli.calloc import command

    words = plan(argv, os.environ)["words"]
    shell_environment(words, os.environ)
    return run_crane(command, words, PROG, "calloc")


def shell_environment(words: list[str], environ: Any) -> None:
    """The command's SLURM_* variables that salloc knows before the job
    starts: none inherited from an enclosing job, SLURM_NTASKS and
    SLURM_NTASKS_PER_NODE as asked (srun inside takes its tasks from them)."""
    from crane.core.slurm_env import MANAGED

    for name in MANAGED & set(environ):
        del environ[name]
    end = words.index("--") if "--" in words else len(words)
    for option, name in (("--ntasks", "SLURM_NTASKS"), ("--ntasks-per-node", "SLURM_NTASKS_PER_NODE")):
        for i in range(end - 1):
            if words[i] == option:
                environ[name] = words[i + 1]


def main() -> None:
    main_guard(PROG, body)


if __name__ == "__main__":
    main()
