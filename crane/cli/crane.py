"""crane: the umbrella command. ``crane local up|down|status`` runs a
one-machine cluster (SPEC §2)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import click

from crane.cli.common import CliError, click_main
from crane.core.text import safe

PROG = "crane"


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """An unsafe cluster or key directory (or a failed file operation) is one error line."""
    from crane.local import UnsafeDirError

    try:
        yield
    except (UnsafeDirError, OSError, ValueError) as e:
        raise CliError(str(e), 1) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG)
def command() -> None:
    """Crane workload manager."""


@command.group()
def local() -> None:
    """A controller and N node agents on this machine."""


@local.command()
@click.option("--nodes", "-N", type=click.IntRange(1, 512), default=4)
@click.option("--cpus", type=click.IntRange(1, 4096), default=4)
@click.option("--memory", default="8G")
@click.option("--dir", "base", type=click.Path(file_okay=False))
@click.option("--preempt-mode", type=click.Choice(["CANCEL", "REQUEUE", "SUSPEND", "OFF"], case_sensitive=False), default="CANCEL")
@click.option("--epilog", type=click.Path(dir_okay=False))
@_refusals()
def up(nodes: int, cpus: int, memory: str, base: str | None, preempt_mode: str, epilog: str | None) -> None:
    """Start a local cluster and print how to use it."""
    from crane.local import LocalCluster, default_dir, make_config

    base = os.path.abspath(base or default_dir())
    lc = LocalCluster(base)
    if lc.pids():
        raise CliError(f"a local cluster already runs in {base}: crane local down --dir {base}", 1)
    extra: dict[str, Any] = {}
    if preempt_mode.upper() == "OFF":
        extra["Preempt"] = {"PreemptType": "none", "PreemptMode": "OFF"}
    else:
        extra["Preempt"] = {"PreemptType": "qos", "PreemptMode": preempt_mode.upper()}
    if epilog:
        extra["Epilog"] = os.path.abspath(epilog)
    lc.write_config(make_config(base, nodes, cpus, memory, **extra))
    try:
        lc.up()
    except (TimeoutError, RuntimeError) as e:
        lc.down()
        raise CliError(str(e), 1) from None
    print(safe(f"Local cluster up: {nodes} nodes, config {lc.config_path}"))
    print(safe(f"export CRANE_CONF={lc.config_path}"))


@local.command()
@click.option("--dir", "base", type=click.Path(file_okay=False))
@_refusals()
def down(base: str | None) -> None:
    """Cancel every job and stop the local cluster."""
    from crane.local import LocalCluster, default_dir

    lc = LocalCluster(base or default_dir())
    if not lc.pids():
        raise CliError(f"no local cluster in {lc.base}", 1)
    lc.down()
    print("Local cluster stopped.")


@local.command()
@click.option("--dir", "base", type=click.Path(file_okay=False))
@_refusals()
def status(base: str | None) -> None:
    """Show the local cluster's processes and nodes."""
    from crane.local import LocalCluster, default_dir
    from crane.polling import pid_alive

    lc = LocalCluster(base or default_dir())
    pids = lc.pids()
    if not pids:
        raise CliError(f"no local cluster in {lc.base}", 1)
    for key, pid in sorted(pids.items()):
        print(safe(f"{key:<20} pid {pid:<8} {'running' if pid_alive(pid) else 'dead'}"))
    try:
        for n, st in sorted(lc.nodes_state().items()):
            print(safe(f"{n:<20} {st}"))
    except CliError as e:
        print(safe(f"controller: {e}"))
    print(safe(f"export CRANE_CONF={lc.config_path}"))


@command.command()
@click.option("-C", "--config")
@click.option("--force", is_flag=True, help="replace existing keys")
@click.argument("nodes", required=False)
@_refusals()
def keygen(config: str | None, force: bool, nodes: str | None) -> None:
    """Write CurveZMQ keys for the controller and the nodes (Auth.CurveKeyDir)."""
    from crane import keys
    from crane.cli.common import load_config
    from crane.core.ids import expand_nodes

    cfg = load_config(config)
    if not cfg.curve_key_dir:
        raise CliError("Auth.CurveKeyDir is not set in the config", 1)
    try:
        names = expand_nodes(nodes) if nodes else list(cfg.nodes)
    except ValueError as e:
        raise CliError(str(e)) from None
    written = keys.generate(cfg.curve_key_dir, names, force)
    for path in written:
        print(safe(f"wrote {path}"))
    print(safe(f"{len(written)} key files written in {cfg.curve_key_dir}; copy nodes/<node>.key_secret "
               "and controller.key to each node's key directory"))


def main() -> None:
    click_main(command, PROG)
