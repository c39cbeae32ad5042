"""cinfo: partitions and node states, like sinfo (SPEC §7).

When a node shown declares GPUs, two columns appear before NODELIST (before
REASON with ``-N``): ``GRES`` (``gpu:a100:2``) and ``GPUS(A/F/T)``, the GPUs
allocated, free and in total."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from crane.cli.common import EXIT_ARGS, CliError, call, click_main, load_config, print_json
from crane.cli.format import Field, aiot_counts, duration, node_reason, parse_format, render
from crane.core.states import NodeState
from crane.core.text import safe

if TYPE_CHECKING:
    from crane.cli.format import Getter

PROG = "cinfo"

#: Display order of node states within a partition.
STATE_ORDER = [NodeState.IDLE, NodeState.MIX, NodeState.ALLOC, NodeState.DRAINING, NodeState.DRAIN, NodeState.DOWN]
STATE_ALIASES: dict[str, set[str]] = {
    **{s.value: {s.value} for s in NodeState},
    "MIXED": {NodeState.MIX},
    "ALLOCATED": {NodeState.ALLOC},
    NodeState.DRAIN.value: {NodeState.DRAIN, NodeState.DRAINING},
    "DRAINED": {NodeState.DRAIN},
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


def has_gpus(nodes: dict[str, dict[str, Any]]) -> bool:
    """Whether any node shown declares GPUs (the GPU columns appear only then)."""
    return any(int(n.get("gpus") or 0) for n in nodes.values())


def gpu_counts(members: list[dict[str, Any]]) -> str:
    """``A/F/T``: GPUs allocated, free and in total on these nodes."""
    used = sum(int(n.get("gpus_used") or 0) for n in members)
    free = sum(int(n.get("gpus_free") or 0) for n in members)
    total = sum(int(n.get("gpus") or 0) for n in members)
    return f"{used}/{free}/{total}"


def gres_of(members: list[dict[str, Any]]) -> str:
    """The nodes' distinct GRES strings, comma-joined (``-`` for none)."""
    seen: list[str] = []
    for n in members:
        for g in str(n.get("gres") or "").split(","):
            if g and g not in seen:
                seen.append(g)
    return ",".join(seen) or "-"


GPU_HEADER = ["GRES", "GPUS(A/F/T)"]


def part_limit(p: dict[str, Any]) -> str:
    """The partition's time limit as ``[D-]HH:MM:SS``; ``UNLIMITED`` (none)."""
    return duration(p.get("time_limit") or p.get("max_time"))


# --------------------------------------------------------------------------- -o/--format, -s, -l

#: sinfo's compact state names (``%t``)
SHORT_STATE = {**{s.value: s.value.lower() for s in NodeState}, NodeState.DRAINING.value: "drng"}

Group = dict[str, Any]  # {"part": partition, "members": [node, ...]}


def _first(g: Group) -> dict[str, Any]:
    return g["members"][0]  # type: ignore[no-any-return]


def _cpus_aiot(g: Group, now: float) -> str:
    return aiot_counts(g["members"])[1]


def _nodes_aiot(g: Group, now: float) -> str:
    return aiot_counts(g["members"])[0]


def _nodelist(g: Group, now: float) -> str:
    from crane.core.ids import compress_nodes

    return compress_nodes([n["name"] for n in g["members"]])


def _memory(g: Group, now: float) -> str:
    from crane.core.ids import format_memory

    return format_memory(int(_first(g).get("memory") or 0))


#: ``-o`` letters (sinfo's): letter -> (header, getter of a group of nodes)
NODE_FIELDS: dict[str, tuple[str, Getter]] = {
    "P": ("PARTITION", lambda g, now: g["part"]["name"] + ("*" if g["part"].get("default") else "")),
    "R": ("PARTITION", lambda g, now: str(g["part"]["name"])),
    "a": ("AVAIL", lambda g, now: "up"),
    "l": ("TIMELIMIT", lambda g, now: part_limit(g["part"])),
    "D": ("NODES", lambda g, now: str(len(g["members"]))),
    "F": ("NODES(A/I/O/T)", _nodes_aiot),
    "t": ("STATE", lambda g, now: SHORT_STATE.get(_first(g)["state"], str(_first(g)["state"]).lower())),
    "T": ("STATE", lambda g, now: str(_first(g)["state"])),
    "N": ("NODELIST", _nodelist),
    "n": ("HOSTNAMES", _nodelist),
    "c": ("CPUS", lambda g, now: str(_first(g).get("cpus") or "")),
    "C": ("CPUS(A/I/O/T)", _cpus_aiot),
    "m": ("MEMORY", _memory),
    "G": ("GRES", lambda g, now: str(_first(g).get("gres") or "-")),
    "g": ("GPUS(A/F/T)", lambda g, now: gpu_counts(g["members"])),
    "E": ("REASON", lambda g, now: node_reason(_first(g))),
}
AGGREGATES = frozenset("DFNnCg")  # computed over a line's nodes; the others group nodes into lines

SUMMARY_FORMAT = "%P %a %l %F %N"
LONG_FORMAT = "%P %a %l %c %m %G %D %T %N"
NODE_LONG_FORMAT = "%N %P %T %C %c %m %G %g %E"


def group_nodes(
    layout: list[str | Field], parts: list[dict[str, Any]], nodes: dict[str, dict[str, Any]],
    states: set[str] | None, per_node: bool,
) -> list[Group]:  # fmt: skip
    """The table's lines as groups of nodes: per partition, the nodes whose
    non-aggregate fields (state, CPUs, memory, GRES, reason...) print the same
    share a line, as sinfo does; ``per_node``: one line per node and partition."""
    keyed = [f for f in layout if isinstance(f, Field) and f.get not in _AGGREGATE_GETTERS]
    out: list[Group] = []
    for p in parts:
        groups: dict[tuple[str, ...], Group] = {}
        for name in p["nodes"]:
            n = nodes.get(name)
            if n is None or (states is not None and n["state"] not in states):
                continue
            one = {"part": p, "members": [n]}
            if per_node:
                out.append(one)
                continue
            key = tuple(f.get(one, 0.0) for f in keyed)
            groups.setdefault(key, {"part": p, "members": []})["members"].append(n)
        out += sorted(groups.values(), key=lambda g: _order(_first(g)["state"]))
    return out


_AGGREGATE_GETTERS = {NODE_FIELDS[k][1] for k in AGGREGATES}


def partition_rows(
    parts: list[dict[str, Any]], nodes: dict[str, dict[str, Any]], states: set[str] | None,
    gpus: bool = False,
) -> list[list[str]]:  # fmt: skip
    from crane.core.ids import compress_nodes

    rows = []
    for p in parts:
        # one line per state (and per GRES, when shown: nodes with other GPUs
        # are not summed into one line)
        groups: dict[tuple[str, str], list[str]] = {}
        for name in p["nodes"]:
            n = nodes.get(name)
            if n is None:
                continue
            groups.setdefault((n["state"], str(n.get("gres") or "") if gpus else ""), []).append(name)
        for state, gres in sorted(groups, key=lambda k: (_order(k[0]), k[1])):
            if states is not None and state not in states:
                continue
            members = groups[(state, gres)]
            extra = [gres_of([nodes[x] for x in members]), gpu_counts([nodes[x] for x in members])] if gpus else []
            rows.append([p["name"] + ("*" if p.get("default") else ""), "up", part_limit(p),
                         str(len(members)), state, *extra, compress_nodes(members)])  # fmt: skip
    return rows


def node_rows(
    parts: list[dict[str, Any]], nodes: dict[str, dict[str, Any]], states: set[str] | None,
    gpus: bool = False,
) -> list[list[str]]:  # fmt: skip
    from crane.core.ids import format_memory

    rows = []
    for name, n in nodes.items():
        if states is not None and n["state"] not in states:
            continue
        in_parts = [p for p in parts if name in p["nodes"]] or [{"name": "-"}]
        extra = [gres_of([n]), gpu_counts([n])] if gpus else []
        for p in in_parts:
            rows.append([name, p["name"] + ("*" if p.get("default") else ""), n["state"],
                         f"{n['cpus_alloc']}/{n['cpus']}", format_memory(int(n["memory"])),
                         *extra, node_reason(n)])  # fmt: skip
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--partition", help="comma list of partitions")
@click.option("-n", "--nodes", help="only these nodes (hostlist expression)")
@click.option("-t", "--states", help="comma list of node states: IDLE, MIX, ALLOC, DRAIN, DOWN")
@click.option("-N", "--node", "node_oriented", is_flag=True, help="one line per node")
@click.option("-o", "--format", "fmt",
              help="sinfo-like format: %P %a %l %D %t %T %N %c %C %m %G %E %F, with widths (%10P, %.5D)")
@click.option("-s", "--summarize", is_flag=True,
              help="one line per partition: NODES(A/I/O/T) allocated/idle/other/total")
@click.option("-l", "--long", "long", is_flag=True,
              help="more columns: CPUS, MEMORY, GRES (with -N: CPUS(A/I/O/T), GPUS(A/F/T))")
@click.option("--noheader", is_flag=True, help="no header line")
@click.option("--json", "as_json", is_flag=True, help="print the nodes as JSON")
@click.option("-C", "--config", help="the config file (default: $CRANE_CONF, else /etc/crane/config.yaml)")
@click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG)
def command(partition: str | None, nodes: str | None, states: str | None, node_oriented: bool,
            fmt: str | None, summarize: bool, long: bool,
            noheader: bool, as_json: bool, config: str | None) -> int:  # fmt: skip
    """Show partitions and the state of their nodes."""
    if fmt is None and summarize:
        fmt = SUMMARY_FORMAT
    elif fmt is None and long:
        fmt = NODE_LONG_FORMAT if node_oriented else LONG_FORMAT
    layout = parse_format(fmt, NODE_FIELDS) if fmt is not None else None
    from crane.core import messages as m
    from crane.core.ids import expand_nodes

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
    if layout is not None:
        groups = group_nodes(layout, parts, by_name, want_states, node_oriented and not summarize)
        for line in render(layout, groups, header=not noheader):
            print(safe(line))
        return 0
    gpus = has_gpus(by_name)
    extra = GPU_HEADER if gpus else []
    if node_oriented:
        header = ["NODELIST", "PARTITION", "STATE", "CPUS(A/T)", "MEMORY", *extra, "REASON"]
        rows = node_rows(parts, by_name, want_states, gpus)
    else:
        header = ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", *extra, "NODELIST"]
        rows = partition_rows(parts, by_name, want_states, gpus)
    for line in table(header, rows, not noheader):
        print(safe(line))
    return 0


def main() -> None:
    click_main(command, PROG)
