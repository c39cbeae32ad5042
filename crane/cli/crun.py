"""crun: run a command as the next step of the current allocation
(``CRANE_JOB_ID`` set), block until it ends, exit with its exit code.

crun never creates a job, so it takes no ``--gres``/``--gpus``: a step runs
with the GPUs of its job on its node (CUDA_VISIBLE_DEVICES set by the
controller, the other device files denied by the agent)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from crane.cli.common import (
    CliError,
    call,
    call_until_answered,
    check_text,
    click_main,
    load_config,
)
from crane.text import safe

PROG = "crun"
WAIT_REASK = float(os.environ.get("CRUN_WAIT_REASK", "10"))  # seconds


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True,
                                "allow_interspersed_args": False})
@click.option("-c", "--cpus-per-task", type=click.IntRange(1, 100_000), default=1)
@click.option("-j", "--jobid", type=int, help="the allocation (default: $CRANE_JOB_ID)")
@click.option("-C", "--config")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def command(cpus_per_task: int, jobid: int | None, config: str | None, argv: tuple[str, ...]) -> int:
    """Run COMMAND as a step of the current job."""
    from crane import messages as m

    job_id = jobid or int(os.environ.get("CRANE_JOB_ID", "0") or 0)
    if not job_id:
        raise CliError("not inside an allocation: CRANE_JOB_ID is not set (or use --jobid)")
    try:
        cwd = os.getcwd()  # absolute: the step starts where crun was run
    except OSError as e:
        raise CliError(f"cannot read the current directory: {e.strerror}") from None
    check_text("the working directory", cwd)
    cfg = load_config(config)
    env = {k: v for k, v in os.environ.items()}
    started: dict[str, Any] = call(cfg, m.StartStep(job_id, list(argv), cpus_per_task, env, cwd))
    step_id = int(started["step_id"])
    if os.environ.get("CRUN_VERBOSE"):
        print(safe(f"crun: step {job_id}.{step_id} started on {started.get('node')}"), file=sys.stderr)
    done = wait_step(cfg, job_id, step_id)
    st = done["step"]
    state = st.get("state")
    code = int(st.get("exit_code") or 0)
    if state == "CANCELLED":
        print(safe(f"crun: step {job_id}.{step_id} cancelled"), file=sys.stderr)
        return code or 130
    if state not in ("COMPLETED",) and code == 0:
        return 1
    return code


def wait_step(cfg: Any, job_id: int, step_id: int) -> dict[str, Any]:
    """Block until the step ends, surviving controller restarts."""
    from crane import messages as m

    return call_until_answered(cfg, m.WaitStep(job_id, step_id), WAIT_REASK)


def main() -> None:
    click_main(command, PROG)
