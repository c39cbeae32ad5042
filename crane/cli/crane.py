"""crane: the umbrella command. ``crane local up|down|restart|status`` runs a
one-machine cluster (SPEC §2)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import click

from crane.cli.common import CliError, click_main
from crane.core.states import PreemptMode
from crane.core.text import safe

#: the --preempt-mode choices, in the order shown
PREEMPT_MODES = (PreemptMode.CANCEL, PreemptMode.REQUEUE, PreemptMode.SUSPEND, PreemptMode.OFF)

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
@click.option("--nodes", "-N", type=click.IntRange(1, 512), default=4, help="number of node agents (default 4)")
@click.option("--cpus", type=click.IntRange(1, 4096), default=4, help="CPUs per node (default 4)")
@click.option("--memory", default="8G", help="memory per node (default 8G)")
@click.option("--dir", "base", type=click.Path(file_okay=False), help="the cluster's directory (default: a private runtime directory)")
@click.option("--preempt-mode", type=click.Choice([m.value for m in PREEMPT_MODES], case_sensitive=False),
              default=PreemptMode.CANCEL.value, help="the cluster's PreemptMode (default CANCEL)")
@click.option("--epilog", type=click.Path(dir_okay=False), help="a script each node runs after every job")
@_refusals()
def up(nodes: int, cpus: int, memory: str, base: str | None, preempt_mode: str, epilog: str | None) -> None:
    """Start a local cluster and print how to use it."""
    from crane.local import LocalCluster, default_dir, make_config

    base = os.path.abspath(base or default_dir())
    lc = LocalCluster(base)
    if lc.running():
        raise CliError(f"a local cluster already runs in {base}: crane local down --dir {base}", 1)
    lc.stop_all()  # nothing runs: forget a stale pids.json
    extra: dict[str, Any] = {}
    if preempt_mode.upper() == PreemptMode.OFF:
        extra["Preempt"] = {"PreemptType": "none", "PreemptMode": PreemptMode.OFF.value}
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


def _base(base: str | None) -> str:
    """The cluster directory: ``--dir``, else the directory of ``$CRANE_CONF``
    when it names a config.yaml, else the default one."""
    from crane.local import default_dir

    if base:
        return base
    conf = os.environ.get("CRANE_CONF", "")
    if conf and os.path.basename(conf) == "config.yaml" and os.path.isabs(conf):
        return os.path.dirname(conf)
    return default_dir()


def _stopped_text(stopped: list[tuple[str, int]]) -> str:
    return ", ".join(f"{key} (pid {pid})" for key, pid in stopped)


DIR_HELP = "the cluster's directory (default: that of $CRANE_CONF, else a private runtime directory)"


@local.command()
@click.option("--dir", "base", type=click.Path(file_okay=False), help=DIR_HELP)
@_refusals()
def down(base: str | None) -> None:
    """Cancel every job and stop the local cluster: every controller and
    agent running with its config, those restarted by hand included."""
    from crane.local import LocalCluster

    lc = LocalCluster(_base(base))
    recorded = lc.pids()
    if not recorded and not lc.running():
        raise CliError(f"no local cluster in {lc.base}", 1)
    stopped = lc.down()
    if stopped:
        print(safe(f"Stopped {_stopped_text(stopped)}."))
    else:
        print(safe(f"Nothing was running in {lc.base}."))
    print("Local cluster stopped.")


@local.command()
@click.option("--dir", "base", type=click.Path(file_okay=False), help=DIR_HELP)
@_refusals()
def restart(base: str | None) -> None:
    """Stop the local cluster's daemons (jobs are kept) and start them again."""
    from crane.local import LocalCluster

    lc = LocalCluster(_base(base))
    if not lc.check_dir() or not os.path.exists(lc.config_path):
        raise CliError(f"no local cluster in {lc.base}: crane local up --dir {lc.base}", 1)
    nodes = len(lc.node_names())
    try:
        stopped = lc.restart()
    except (TimeoutError, RuntimeError) as e:
        raise CliError(str(e), 1) from None
    if stopped:
        print(safe(f"Stopped {_stopped_text(stopped)}."))
    print(safe(f"Local cluster restarted: {nodes} nodes, config {lc.config_path}"))
    print(safe(f"export CRANE_CONF={lc.config_path}"))


@local.command()
@click.option("--dir", "base", type=click.Path(file_okay=False), help=DIR_HELP)
@_refusals()
def status(base: str | None) -> None:
    """Show the local cluster's processes and nodes."""
    from crane.local import ControllerError, LocalCluster

    lc = LocalCluster(_base(base))
    pids = lc.pids()
    running = lc.running()
    if not pids and not running:
        raise CliError(f"no local cluster in {lc.base}", 1)
    for key, pid in sorted(pids.items()):
        alive = running.get(key) == pid
        print(safe(f"{key:<20} pid {pid:<8} {'running' if alive else 'dead'}"))
    for key, pid in sorted(running.items()):
        if pids.get(key) != pid:
            print(safe(f"{key:<20} pid {pid:<8} running (not started by crane local)"))
    try:
        for n, st in sorted(lc.nodes_state().items()):
            print(safe(f"{n:<20} {st}"))
    except ControllerError as e:
        print(safe(f"controller: {e}"))
    print(safe(f"export CRANE_CONF={lc.config_path}"))


@command.command()
@click.option("-C", "--config", help="the config file (default: $CRANE_CONF, else /etc/crane/config.yaml)")
@click.option("--force", is_flag=True, help="replace existing keys")
@click.argument("nodes", required=False)
@_refusals()
def keygen(config: str | None, force: bool, nodes: str | None) -> None:
    """Write CurveZMQ keys for the controller and the nodes (Auth.CurveKeyDir)."""
    from crane import keys
    from crane.cli.common import load_full_config
    from crane.core.ids import expand_nodes

    cfg = load_full_config(config)
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
