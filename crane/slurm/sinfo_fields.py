"""sinfo's fields (pure): its ``-o`` letters, each a getter of a group of
nodes of one partition, the default formats, and the grouping of nodes
into lines (:func:`sinfo_groups`)."""

from __future__ import annotations

from typing import Any

from crane.cli.format import aiot_counts
from crane.core.ids import compress_nodes
from crane.core.states import NodeReason
from crane.slurm.layout import Col, Getter, Layout, Rec, parse_percent
from crane.slurm.records import node_long, node_not_responding, node_short
from crane.slurm.times import clock, mb

SgRec = dict[str, Any]  # {"part": partition view, "members": [node view, ...]}


def _first(g: SgRec) -> Rec:
    return g["members"][0]  # type: ignore[no-any-return]


def _part_limit(g: SgRec, now: float) -> str:
    limit = g["part"].get("time_limit") or g["part"].get("max_time")
    return clock(limit) if limit else "infinite"


def _aiot_nodes(g: SgRec, now: float) -> str:
    return aiot_counts(g["members"])[0]


def _aiot_cpus(g: SgRec, now: float) -> str:
    return aiot_counts(g["members"])[1]


def _nodelist(g: SgRec, now: float) -> str:
    return compress_nodes([n["name"] for n in g["members"]])


def _free_mem(g: SgRec, now: float) -> str:
    vals = sorted({mb(n.get("mem_free")) for n in g["members"]})
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


def _reason(g: SgRec, now: float) -> str:
    n = _first(g)
    if n.get("reason"):
        return str(n["reason"])
    return NodeReason.NOT_RESPONDING.value if node_not_responding(n) else "none"


#: sinfo ``-o`` letters: letter -> (header, getter of a group of nodes)
SINFO_FIELDS: dict[str, tuple[str, Getter]] = {
    "P": ("PARTITION", lambda g, now: str(g["part"]["name"]) + ("*" if g["part"].get("default") else "")),
    "R": ("PARTITION", lambda g, now: str(g["part"]["name"])),
    "a": ("AVAIL", lambda g, now: "up"),
    "l": ("TIMELIMIT", _part_limit),
    "L": ("DEFAULTTIME", lambda g, now: "n/a"),
    "D": ("NODES", lambda g, now: str(len(g["members"]))),
    "F": ("NODES(A/I/O/T)", _aiot_nodes),
    "t": ("STATE", lambda g, now: node_short(_first(g))),
    "T": ("STATE", lambda g, now: node_long(_first(g))),
    "N": ("NODELIST", _nodelist),
    "n": ("HOSTNAMES", _nodelist),
    "o": ("NODE_ADDR", _nodelist),
    "c": ("CPUS", lambda g, now: str(_first(g).get("cpus") or 0)),
    "C": ("CPUS(A/I/O/T)", _aiot_cpus),
    "m": ("MEMORY", lambda g, now: str(mb(_first(g).get("memory")))),
    "e": ("FREE_MEM", _free_mem),
    "O": ("CPU_LOAD", lambda g, now: "0.00"),
    "G": ("GRES", lambda g, now: str(_first(g).get("gres") or "(null)")),
    "E": ("REASON", _reason),
    "s": ("JOB_SIZE", lambda g, now: "1-infinite"),
    "r": ("ROOT", lambda g, now: "no"),
    "h": ("OVERSUBSCRIBE", lambda g, now: "NO"),
    "g": ("GROUPS", lambda g, now: "all"),
    "z": ("S:C:T", lambda g, now: f"{_first(g).get('cpus') or 1}:1:1"),
    "d": ("TMP_DISK", lambda g, now: "0"),
    "w": ("WEIGHT", lambda g, now: "1"),
    "f": ("AVAIL_FEATURES", lambda g, now: "(null)"),
}
SINFO_AGGREGATE = frozenset("DFNnoCe")  # computed over a line's nodes; the others group nodes into lines

SINFO_DEFAULT = "%#P %.5a %.10l %.6D %.6t %N"
SINFO_NODE = "%#N %.6D %#P %6t"
SINFO_SUMMARIZE = "%#P %.5a %.10l %.16F  %N"
SINFO_LONG = "%#P %.5a %.10l %.10s %.4r %.8h %.10g %.6D %.11T %N"
SINFO_NODE_LONG = "%#N %.6D %#P %.11T %.4c %.8z %.6m %.8d %.6w %.8f %20E"


def sinfo_groups(layout: Layout, parts: list[Rec], nodes: dict[str, Rec], per_node: bool) -> list[SgRec]:
    """The lines of sinfo as groups of nodes: per partition, the nodes whose
    non-aggregate fields print the same share a line (sinfo's grouping);
    ``per_node``: one line per node and partition (``-N``)."""
    aggregate = {SINFO_FIELDS[k][1] for k in SINFO_AGGREGATE}
    keyed = [c for c in layout if isinstance(c, Col) and c.get not in aggregate]
    out: list[SgRec] = []
    for p in parts:
        groups: dict[tuple[str, ...], SgRec] = {}
        for name in p.get("nodes") or []:
            n = nodes.get(name)
            if n is None:
                continue
            one = {"part": p, "members": [n]}
            if per_node:
                out.append(one)
                continue
            key = tuple(c.get(one, 0.0) for c in keyed)
            groups.setdefault(key, {"part": p, "members": []})["members"].append(n)
        out += groups.values()
    if per_node:
        out.sort(key=lambda g: _first(g)["name"])
    return out


def parse_sinfo_format(fmt: str) -> Layout:
    return parse_percent(fmt, SINFO_FIELDS)
