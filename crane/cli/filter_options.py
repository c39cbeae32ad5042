"""The click options cqueue and cacct share (job selection, output form),
apart from crane.cli.format so that a command's fast path renders a table
without importing click."""

from __future__ import annotations

from collections.abc import Callable

import click

from crane.cli.format import FILTER_FLAGS

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

JOB_FORMAT_HELP = ("Slurm-like format: %i (A_T for an array task) %A (job id) %F %K (array id, index) %j %u %a "
                   "%P %q %T %t %M %l %D %R %r %E (dependency) %b (GRES) %G (GPUs) ...")


FILTER_HELP = {
    "job": "comma list of job ids (JOB, JOB.STEP, array task A_T or A_T.STEP; an array id A: every task)",
    "name": "job name",
    "user": "job owner (name or uid)",
    "account": "account name",
    "partition": "partition name",
    "qos": "QoS name",
    "state": "comma list of states: names or short codes (PD,R,...) or ALL",
    "nodelist": "jobs on any of these nodes (hostlist expression)",
    "noheader": "no header line",
    "as_json": "print the jobs as one JSON array",
    "config": "config file (default: $CRANE_CONF, else /etc/crane/config.yaml)",
}


def filter_options(format_help: str = JOB_FORMAT_HELP) -> list[Any]:
    """The options cqueue and cacct share (job selection, output form):
    crane.cli.format.FILTER_FLAGS as click options."""
    return [click.option(*flags, dest, is_flag=not takes, help=format_help if dest == "fmt" else FILTER_HELP[dest])
            for flags, dest, takes in FILTER_FLAGS]  # fmt: skip


FILTER_OPTIONS = filter_options()


def with_options(options: list[Any]) -> Callable[[Any], Any]:
    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco
