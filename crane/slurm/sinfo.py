"""sinfo: partitions and nodes in Slurm's formats (default
``PARTITION AVAIL TIMELIMIT NODES STATE NODELIST``, ``-o``, ``-N``, ``-s``,
``-l``), from the same QueryNodes request as cinfo. Node states as sinfo's:
``idle mix alloc drain drng down`` (``down*``: the agent is not
responding); ``%T`` ``idle mixed allocated drained draining down``.
Exit codes: 0, or 1 on any error.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click

from crane.cli.common import CliError, call, load_config, print_json
from crane.core.ids import compress_nodes
from crane.core.states import NodeState
from crane.core.text import safe
from crane.slurm.layout import render
from crane.slurm.records import NODE_LONG, NODE_STATE_NAMES, node_not_responding
from crane.slurm.sinfo_fields import (
    SINFO_DEFAULT,
    SINFO_FIELDS,
    SINFO_LONG,
    SINFO_NODE,
    SINFO_NODE_LONG,
    SINFO_SUMMARIZE,
    parse_sinfo_format,
    sinfo_groups,
)
from crane.slurm.times import mb
from crane.slurm.translate import VERSION, click_slurm_main

EPILOG = "Exit codes: 0, or 1 on any error (as Slurm's). Crane's own command: cinfo."
PROG = "sinfo"


def parse_states(text: str) -> set[str]:
    out: set[str] = set()
    for item in text.split(","):
        key = item.strip().upper().rstrip("*")
        if not key:
            continue
        if key == "ALL":
            out |= {s for v in NODE_STATE_NAMES.values() for s in v}
        elif key in NODE_STATE_NAMES:
            out |= NODE_STATE_NAMES[key]
        else:
            raise CliError(f"Invalid node state specified: {item.strip()}", 1)
    return out


def json_view(parts: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``--json``: a subset of Slurm 22.05's ``sinfo --json`` (``v0.0.38``)."""
    out_nodes = []
    for name, n in nodes.items():
        cpus, alloc = int(n.get("cpus") or 0), int(n.get("cpus_alloc") or 0)
        total, free = mb(n.get("memory")), mb(n.get("mem_free"))
        out_nodes.append({
            "name": name, "hostname": name, "address": name, "state": NODE_LONG.get(n.get("state"), ""),
            "state_flags": ["NOT_RESPONDING"] if node_not_responding(n) else
                           ([NodeState.DRAIN.value] if n.get("state") in (NodeState.DRAIN, NodeState.DRAINING) else []),
            "cpus": cpus, "alloc_cpus": alloc, "idle_cpus": cpus - alloc, "real_memory": total,
            "free_memory": free, "alloc_memory": max(0, total - free), "gres": n.get("gres") or "",
            "reason": n.get("reason") or "", "partitions": [p["name"] for p in parts if name in p["nodes"]],
        })  # fmt: skip
    out_parts = [{
        "name": p["name"], "nodes": compress_nodes(list(p.get("nodes") or [])), "state": "UP",
        "flags": ["default"] if p.get("default") else [], "priority_tier": p.get("priority") or 1,
        "total_nodes": len(p.get("nodes") or []),
        "total_cpus": sum(int(nodes[x].get("cpus") or 0) for x in p.get("nodes") or [] if x in nodes),
        "max_time_limit": None,
    } for p in parts]  # fmt: skip
    return {"meta": {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"}}, "errors": [],
            "nodes": out_nodes, "partitions": out_parts}  # fmt: skip


@click.command(context_settings={"help_option_names": ["--help"]}, epilog=EPILOG)
@click.option("-a", "--all", "all_parts", is_flag=True, help="accepted (every partition is shown)")
@click.option("-h", "--noheader", is_flag=True, help="no header line")
@click.option("-l", "--long", "long", is_flag=True, help="more fields")
@click.option("-N", "--Node", "node_oriented", is_flag=True, help="one line per node")
@click.option("-n", "--nodes", help="only these nodes (hostlist)")
@click.option("-o", "--format", "fmt", help='Slurm format, e.g. "%P %a %l %D %t %N" (%c %C %m %e %G %E %F %O ...)')
@click.option("-p", "--partition", help="comma list of partitions")
@click.option("-r", "--responding", is_flag=True, help="only responding nodes")
@click.option("-d", "--dead", is_flag=True, help="only non-responding nodes")
@click.option("-R", "--list-reasons", is_flag=True, help="nodes down or drained, with their reason")
@click.option("-s", "--summarize", is_flag=True, help="NODES(A/I/O/T) per partition")
@click.option("-t", "--states", help="comma list of node states (idle, mix, alloc, drain, down, ...)")
@click.option("-e", "--exact", is_flag=True, help="accepted")
@click.option("-M", "--clusters", help="accepted (one cluster)")
@click.option("--json", "as_json", is_flag=True, help="Slurm's JSON shape (a subset of its fields)")
@click.option("-C", "--config", "config", help="Crane's config file (default: $CRANE_CONF)")
@click.version_option(VERSION, "-V", "--version", message="%(version)s")
def command(**o: Any) -> int:
    """Partitions and the state of their nodes, in Slurm's formats.
    Crane's own view: cinfo."""
    if o["fmt"] is not None:
        fmt = o["fmt"]
    elif os.environ.get("SINFO_FORMAT"):
        fmt = os.environ["SINFO_FORMAT"]
    elif o["list_reasons"]:
        fmt = "%20E %N"
    elif o["summarize"]:
        fmt = SINFO_SUMMARIZE
    elif o["node_oriented"]:
        fmt = SINFO_NODE_LONG if o["long"] else SINFO_NODE
    else:
        fmt = SINFO_LONG if o["long"] else SINFO_DEFAULT
    try:
        layout = parse_sinfo_format(fmt)
    except ValueError as e:
        raise CliError(str(e).replace("job format", "node format"), 1) from None
    states = parse_states(o["states"]) if o["states"] is not None else None
    want_nodes = None
    if o["nodes"] is not None:
        from crane.core.ids import expand_nodes

        try:
            want_nodes = set(expand_nodes(o["nodes"]))
        except ValueError as e:
            raise CliError(str(e), 1) from None
    from crane.core import messages as m

    try:
        data = call(load_config(o["config"]), m.QueryNodes())
    except CliError as e:
        raise CliError(f"slurm_load_partitions: {e}", 1) from None
    parts = data["partitions"]
    if o["partition"] is not None:
        wanted = {p.strip() for p in o["partition"].split(",") if p.strip()}
        parts = [p for p in parts if p["name"] in wanted]
    nodes: dict[str, dict[str, Any]] = {}
    for n in data["nodes"]:
        if want_nodes is not None and n["name"] not in want_nodes:
            continue
        if states is not None and n["state"] not in states:
            continue
        if o["responding"] and node_not_responding(n):
            continue
        if o["dead"] and not node_not_responding(n):
            continue
        if o["list_reasons"] and not (n.get("reason") or node_not_responding(n)):
            continue
        nodes[n["name"]] = n
    if o["as_json"]:
        print_json(json_view(parts, nodes))
        return 0
    groups = sinfo_groups(layout, parts, nodes, per_node=o["node_oriented"] and not o["summarize"])
    if o["summarize"]:
        groups = [{"part": p, "members": [nodes[x] for x in p["nodes"] if x in nodes]} for p in parts]
        groups = [g for g in groups if g["members"]]
    if o["list_reasons"]:  # one line per reason, partitions merged
        merged: dict[str, dict[str, Any]] = {}
        for g in groups:
            for n in g["members"]:
                key = SINFO_FIELDS["E"][1]({"part": g["part"], "members": [n]}, 0.0)
                entry = merged.setdefault(key, {"part": g["part"], "members": []})
                if n not in entry["members"]:
                    entry["members"].append(n)
        groups = list(merged.values())
    if o["long"] and not o["noheader"]:
        print(time.strftime("%a %b %d %H:%M:%S %Y"))
    for line in render(layout, groups, header=not o["noheader"], now=time.time(), escape=safe):
        print(line)
    return 0


def main() -> None:
    click_slurm_main(command, PROG)


if __name__ == "__main__":
    main()
