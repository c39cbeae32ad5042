"""The click options cqueue and cacct share (job selection, output form),
apart from crane.cli.format so that a command's fast path renders a table
without importing click."""

from __future__ import annotations

from collections.abc import Callable

import click

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

JOB_FORMAT_HELP = ("Slurm-like format: %i (A_T for an array task) %A (job id) %F %K (array id, index) %j %u %a "
                   "%P %q %T %t %M %l %D %R %r %E (dependency) %b (GRES) %G (GPUs) ...")


def filter_options(format_help: str = JOB_FORMAT_HELP) -> list[Any]:
    """The options cqueue and cacct share (job selection, output form)."""
    return [
        click.option("-j", "--job", "--jobs", "job", help="comma list of job ids (JOB, JOB.STEP, array task A_T or A_T.STEP; an array id A: every task)"),
        click.option("-n", "--name", help="job name"),
        click.option("-u", "--user", help="job owner (name or uid)"),
        click.option("-A", "--account", help="account name"),
        click.option("-p", "--partition", help="partition name"),
        click.option("-q", "--qos", help="QoS name"),
        click.option(
            "-t", "--state", help="comma list of states: names or short codes (PD,R,...) or ALL"
        ),
        click.option("-w", "--nodelist", help="jobs on any of these nodes (hostlist expression)"),
        click.option("-o", "--format", "fmt", help=format_help),
        click.option("-N", "--noheader", is_flag=True, help="no header line"),
        click.option("--json", "as_json", is_flag=True, help="print the jobs as one JSON array"),
        click.option("-C", "--config", help="config file (default: $CRANE_CONF, else /etc/crane/config.yaml)"),
    ]


FILTER_OPTIONS = filter_options()


def with_options(options: list[Any]) -> Callable[[Any], Any]:
    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco
