"""cinfo: partitions and node states, like sinfo (SPEC §7)."""

from __future__ import annotations

from typing import Any

import click

from crane.cli.common import EXIT_ARGS, CliError, call, click_main, load_config, print_json
from crane.text import safe

PROG = "cinfo"

#: Display order of node states within a partition.
STATE_ORDER = ["IDLE", "MIX", "ALLOC", "DRAINING", "DRAIN", "DOWN"]
STATE_ALIASES = {
    "IDLE": {"IDLE"},
    "MIX": {"MIX"},
    "MIXED": {"MIX"},
    "ALLOC": {"ALLOC"},
    "ALLOCATED": {"ALLOC"},
    "DRAIN": {"DRAIN", "DRAINING"},
    "DRAINED": {"DRAIN"},
    "DRAINING": {"DRAINING"},
    "DOWN": {"DOWN"},
}


def parse_node_states(text: str) -> set[str]:
    out: set[str] = set()
    for item in text.split(","):
        key = item.strip().upper() if item.isascii() else ""
        if key not in STATE_ALIASES:
            raise CliError(
                f'invalid node state "{text}": valid states are IDLE, MIX, ALLOC, DRAIN, DOWN',
                EXIT_ARGS,
            )
        out |= STATE_ALIASES[key]
    return out


def table(header: list[str], rows: list[list[str]], with_header: bool) -> list[str]:
    """Aligned lines; every cell escaped with :func:`safe` before it is measured."""
    lines = [header] if with_header else []
    lines += rows
    if not lines:
        return []
    cells = [[safe(c) for c in r] for r in lines]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return [" ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def _order(state: str) -> tuple[int, str]:
    return (STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER), state)


def partition_rows(
    parts: list[dict[str, Any]], nodes: dict[str, dict[str, Any]], states: set[str] | None
) -> list[list[str]]:
    from crane.ids import compress_nodes

    rows = []
    for p in parts:
        groups: dict[str, list[str]] = {}
        for name in p["nodes"]:
            n = nodes.get(name)
            if n is None:
                continue
            groups.setdefault(n["state"], []).append(name)
        for state in sorted(groups, key=_order):
            if states is not None and state not in states:
                continue
            members = groups[state]
            rows.append([p["name"] + ("*" if p.get("default") else ""), "up", "infinite",
                         str(len(members)), state, compress_nodes(members)])  # fmt: skip
    return rows


def node_rows(
    parts: list[dict[str, Any]], nodes: dict[str, dict[str, Any]], states: set[str] | None
) -> list[list[str]]:
    from crane.ids import format_memory

    rows = []
    for name, n in nodes.items():
        if states is not None and n["state"] not in states:
            continue
        in_parts = [p for p in parts if name in p["nodes"]] or [{"name": "-"}]
        for p in in_parts:
            rows.append([name, p["name"] + ("*" if p.get("default") else ""), n["state"],
                         f"{n['cpus_alloc']}/{n['cpus']}", format_memory(int(n["memory"])),
                         n.get("reason") or "None"])  # fmt: skip
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--partition", help="comma list of partitions")
@click.option("-n", "--nodes", help="only these nodes (hostlist expression)")
@click.option("-t", "--states", help="comma list of node states: IDLE, MIX, ALLOC, DRAIN, DOWN")
@click.option("-N", "--node", "node_oriented", is_flag=True, help="one line per node")
@click.option("--noheader", is_flag=True, help="no header line")
@click.option("--json", "as_json", is_flag=True)
@click.option("-C", "--config")
@click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG)
def command(partition: str | None, nodes: str | None, states: str | None, node_oriented: bool,
            noheader: bool, as_json: bool, config: str | None) -> int:  # fmt: skip
    """Show partitions and the state of their nodes."""
    from crane import messages as m
    from crane.ids import expand_nodes

    want_states = parse_node_states(states) if states is not None else None
    want_nodes = None
    if nodes is not None:
        try:
            want_nodes = set(expand_nodes(nodes))
        except ValueError as e:
            raise CliError(str(e), EXIT_ARGS) from None
    cfg = load_config(config)
    data = call(cfg, m.QueryNodes())
    parts = data["partitions"]
    if partition is not None:
        wanted = {p for p in partition.split(",") if p}
        unknown = wanted - {p["name"] for p in parts}
        if unknown:
            raise CliError(f"unknown partition: {','.join(sorted(unknown))}", EXIT_ARGS)
        parts = [p for p in parts if p["name"] in wanted]
    by_name = {n["name"]: n for n in data["nodes"]}
    if want_nodes is not None:
        by_name = {k: v for k, v in by_name.items() if k in want_nodes}
    if partition is not None:
        members = {n for p in parts for n in p["nodes"]}
        by_name = {k: v for k, v in by_name.items() if k in members}
    if as_json:
        node_list = []
        for name, n in by_name.items():
            if want_states is None or n["state"] in want_states:
                node_list.append(
                    {**n, "partitions": [p["name"] for p in parts if name in p["nodes"]]}
                )
        print_json({"partitions": parts, "nodes": node_list})
        return 0
    if node_oriented:
        header = ["NODELIST", "PARTITION", "STATE", "CPUS(A/T)", "MEMORY", "REASON"]
        rows = node_rows(parts, by_name, want_states)
    else:
        header = ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"]
        rows = partition_rows(parts, by_name, want_states)
    for line in table(header, rows, not noheader):
        print(safe(line))
    return 0


def main() -> None:
    click_main(command, PROG)
