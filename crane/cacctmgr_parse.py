"""``cacctmgr`` command line -> operation dict, and the bordered tables ``show`` prints.

Pure. Syntax (CraneSched's; verbs, entities and keys are case-insensitive,
entity names are case-sensitive)::

    add qos NAME [Priority=N] [Preempt=Q1,Q2] [PreemptMode=M] [Description=..]
                 [MaxJobsPerUser=N] [MaxSubmitJobsPerUser=N] [MaxTimeLimitPerJob=TIME]
                 [GraceTime=S] [PreemptExemptTime=S]
    add account NAME [Parent=P] [AllowedQos=Q1,Q2] [DefaultQos=Q] [Description=..]
                     [AllowedPartition=CPU,GPU]
    add user NAME Account=A[,B] [Level=none|operator|admin] [Coordinator=true] [Uid=N (admin only)]
    modify qos|account NAME-CLAUSE set KEY=V KEY+=V KEY-=V ...
    modify user where Name=U [Account=A] set ...
    delete qos|account NAME        delete user NAME [Account=A]
    show qos|account|user [NAME] [format=Col,Col]

``NAME-CLAUSE`` is ``where Name=X``. ``Name=X`` is also accepted in place of a
bare NAME for add/delete/show. An empty value (``Preempt=`` or ``Preempt=""``)
clears a list. Verb aliases: create=add, update=modify, remove=delete, list=show.

The op dict always has the same keys::

    {"verb": str, "entity": str, "name": str | None, "where": dict[str, str],
     "set": [[key, op, value], ...], "format": list[str] | None}

Known keys are canonical lower-case (``preempt``, ``allowedqos``...); unknown
keys are passed through as typed so ``AccountDB.apply`` can refuse them by
name. List-field values are lists of strings, all others raw strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from crane.accounts import AccountDB, canonical_key, format_duration, is_list_field
from crane.core.text import safe

VERBS = {
    "add": "add",
    "create": "add",
    "modify": "modify",
    "update": "modify",
    "delete": "delete",
    "remove": "delete",
    "show": "show",
    "list": "show",
}
ENTITY_WORDS = {
    "qos": "qos",
    "account": "account",
    "accounts": "account",
    "user": "user",
    "users": "user",
}

COLUMNS: dict[str, list[str]] = {
    "qos": [
        "Name",
        "Description",
        "Priority",
        "Preempt",
        "PreemptMode",
        "MaxJobsPerUser",
        "MaxSubmitJobsPerUser",
        "MaxTimeLimitPerJob",
        "GraceTime",
        "PreemptExemptTime",
    ],
    "account": ["Name", "Description", "Parent", "AllowedQos", "DefaultQos", "AllowedPartition"],
    "user": ["Name", "Uid", "Account", "DefaultAccount", "AdminLevel", "Coordinator"],
}
DEFAULT_COLUMNS: dict[str, list[str]] = {k: list(v) for k, v in COLUMNS.items()}

USAGE = (
    "usage: cacctmgr add|modify|delete|show qos|account|user ... "
    "(e.g. cacctmgr modify qos where Name=HighQos set Preempt=LowQos)"
)

_TOKEN_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(\+=|-=|=)(.*)$", re.DOTALL)


class ParseError(Exception):
    """Bad command line. ``str(err)`` is one line, ready to print."""


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return v[1:-1]
    return v


def _split_kv(token: str) -> tuple[str, str, str] | None:
    m = _TOKEN_RE.match(token)
    if not m:
        return None
    return m.group(1), m.group(2), _unquote(m.group(3))


def _value(entity: str, key: str, raw: str) -> str | list[str]:
    if is_list_field(entity, key):
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


def parse_format(entity: str, value: str) -> list[str]:
    """``Name,priority`` -> canonical column names; ParseError on an unknown one."""
    by_lower = {c.lower(): c for c in COLUMNS[entity]}
    out: list[str] = []
    for part in value.split(","):
        p = part.strip()
        if not p:
            continue
        col = by_lower.get(p.lower())
        if col is None:
            raise ParseError(f'Unknown column "{p}" for {entity}: use {",".join(COLUMNS[entity])}')
        out.append(col)
    if not out:
        raise ParseError("format= needs at least one column")
    return out


def parse_argv(argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``cacctmgr`` arguments (without the program name) into an op dict."""
    args = list(argv)
    if len(args) < 2:
        raise ParseError(USAGE)
    verb = VERBS.get(args[0].lower())
    if verb is None:
        raise ParseError(f'Unknown command "{args[0]}": use add, modify, delete or show')
    entity = ENTITY_WORDS.get(args[1].lower())
    if entity is None:
        raise ParseError(f'Unknown entity "{args[1]}": use qos, account or user')
    rest = args[2:]
    op: dict[str, Any] = {
        "verb": verb,
        "entity": entity,
        "name": None,
        "where": {},
        "set": [],
        "format": None,
    }
    if verb == "modify":
        _parse_modify(entity, rest, op)
    elif verb == "add":
        _parse_add(entity, rest, op)
    elif verb == "delete":
        _parse_delete(entity, rest, op)
    else:
        _parse_show(entity, rest, op)
    return op


def _take_name(entity: str, rest: list[str], op: dict[str, Any]) -> list[str]:
    """Consume a leading bare NAME (or ``where``); return the remaining tokens."""
    if rest and rest[0].lower() == "where":
        rest = rest[1:]
    if rest and _split_kv(rest[0]) is None:
        name = _unquote(rest[0])
        if not name:
            raise ParseError(f"{entity} name is empty")
        op["name"] = name
        return rest[1:]
    return rest


def _set_name(entity: str, op: dict[str, Any], value: str) -> None:
    if not value:
        raise ParseError(f"{entity} name is empty")
    if op["name"] is not None and op["name"] != value:
        raise ParseError(f'Two names given: "{op["name"]}" and "{value}"')
    op["name"] = value


def _parse_add(entity: str, rest: list[str], op: dict[str, Any]) -> None:
    rest = _take_name(entity, rest, op)
    for tok in rest:
        kv = _split_kv(tok)
        if kv is None:
            raise ParseError(f'Unexpected argument "{tok}": use KEY=VALUE')
        key, sign, raw = kv
        if sign != "=":
            raise ParseError(f'"{key}{sign}" is only valid in modify ... set')
        if key.lower() == "name":
            _set_name(entity, op, raw)
            continue
        canon = canonical_key(entity, key) or key
        op["set"].append([canon, "=", _value(entity, canon, raw)])
    if op["name"] is None:
        raise ParseError(f"add {entity}: a name is required (cacctmgr add {entity} NAME ...)")


def _parse_modify(entity: str, rest: list[str], op: dict[str, Any]) -> None:
    low = [t.lower() for t in rest]
    if "set" not in low:
        raise ParseError(f"modify {entity}: use modify {entity} where Name=NAME set KEY=VALUE")
    i = low.index("set")
    head, tail = rest[:i], rest[i + 1 :]
    if head and head[0].lower() == "where":
        head = head[1:]
    where: dict[str, str] = {}
    for tok in head:
        kv = _split_kv(tok)
        if kv is None:
            if "name" in where:
                raise ParseError(f'Unexpected argument "{tok}" before set')
            where["name"] = _unquote(tok)
            continue
        key, sign, raw = kv
        k = key.lower()
        if sign != "=" or k not in (("name", "account") if entity == "user" else ("name",)):
            raise ParseError(f'Invalid where condition "{tok}" for {entity}')
        if k == "account" or (k == "name" and "name" not in where):
            where[k] = raw
        else:
            raise ParseError(f'Invalid where condition "{tok}" for {entity}')
    if not where.get("name"):
        raise ParseError(f"modify {entity}: where Name=NAME is required")
    if not tail:
        raise ParseError(f"modify {entity}: nothing after set")
    for tok in tail:
        kv = _split_kv(tok)
        if kv is None:
            raise ParseError(
                f'Unexpected argument "{tok}": use KEY=VALUE, KEY+=VALUE or KEY-=VALUE'
            )
        key, sign, raw = kv
        canon = canonical_key(entity, key) or key
        op["set"].append([canon, sign, _value(entity, canon, raw)])
    op["where"] = where


def _parse_delete(entity: str, rest: list[str], op: dict[str, Any]) -> None:
    rest = _take_name(entity, rest, op)
    for tok in rest:
        kv = _split_kv(tok)
        if kv is None or kv[1] != "=":
            raise ParseError(f'Unexpected argument "{tok}"')
        key, _, raw = kv
        if key.lower() == "name":
            _set_name(entity, op, raw)
        elif key.lower() == "account" and entity == "user":
            op["where"]["account"] = raw
        else:
            raise ParseError(f'Unexpected argument "{tok}"')
    if op["name"] is None:
        raise ParseError(f"delete {entity}: a name is required")


def _parse_show(entity: str, rest: list[str], op: dict[str, Any]) -> None:
    rest = _take_name(entity, rest, op)
    for tok in rest:
        kv = _split_kv(tok)
        if kv is None or kv[1] != "=":
            raise ParseError(f'Unexpected argument "{tok}"')
        key, _, raw = kv
        if key.lower() == "format":
            op["format"] = parse_format(entity, raw)
        elif key.lower() == "name":
            _set_name(entity, op, raw)
        else:
            raise ParseError(f'Unexpected argument "{tok}": use [NAME] [format=COL,COL]')


# --------------------------------------------------------------------------- tables


def _lst(v: Any) -> str:
    return ",".join(str(x) for x in v) if v else "-"


def _opt(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def _lim(v: Any) -> str:
    return "unlimited" if v is None else str(v)


def rows_for(
    entity: str,
    objects: Iterable[Mapping[str, Any] | Any],
    default_preempt_mode: str | None = None,
) -> list[dict[str, str]]:
    """Display rows (column name -> text) from ``AccountDB.show`` dicts or entity objects.

    Empty lists and unset values show ``-``; unset Max* limits show ``unlimited``.
    A QoS without its own PreemptMode shows ``default_preempt_mode`` if given.
    """
    out: list[dict[str, str]] = []
    for obj in objects:
        d: Mapping[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else obj
        if entity == "qos":
            mtl = d.get("max_time_limit_per_job")
            mode = d.get("preempt_mode") or default_preempt_mode
            row = {
                "Name": str(d["name"]),
                "Description": _opt(d.get("description")),
                "Priority": str(d.get("priority", 0)),
                "Preempt": _lst(d.get("preempt")),
                "PreemptMode": _opt(mode),
                "MaxJobsPerUser": _lim(d.get("max_jobs_per_user")),
                "MaxSubmitJobsPerUser": _lim(d.get("max_submit_jobs_per_user")),
                "MaxTimeLimitPerJob": "unlimited" if mtl is None else format_duration(mtl),
                "GraceTime": _opt(d.get("grace_time")),
                "PreemptExemptTime": _opt(d.get("preempt_exempt_time")),
            }
        elif entity == "account":
            row = {
                "Name": str(d["name"]),
                "Description": _opt(d.get("description")),
                "Parent": _opt(d.get("parent")),
                "AllowedQos": _lst(d.get("allowed_qos")),
                "DefaultQos": _opt(d.get("default_qos")),
                "AllowedPartition": _lst(d.get("allowed_partitions")),
            }
        elif entity == "user":
            row = {
                "Name": str(d["name"]),
                "Uid": _opt(d.get("uid")),
                "Account": _lst(d.get("accounts")),
                "DefaultAccount": _opt(d.get("default_account")),
                "AdminLevel": str(d.get("admin_level") or "none"),
                "Coordinator": _lst(d.get("coordinator_of")),
            }
        else:
            raise ParseError(f'Unknown entity "{entity}"')
        out.append(row)
    return out


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A bordered table with upper-case headers, CraneSched style::

    +------------+----------+
    | NAME       | PRIORITY |
    +------------+----------+
    | Background | 100      |
    +------------+----------+
    """
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    heads = [c.upper() for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(vals: Sequence[str]) -> str:
        return "|" + "|".join(f" {v.ljust(w)} " for v, w in zip(vals, widths, strict=True)) + "|"

    out = [border, line(heads), border]
    out += [line(r) for r in cells]
    if cells:
        out.append(border)
    return "\n".join(out)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return safe(_lst(v))
    return safe(str(v))


def render_show(
    db: AccountDB, op: Mapping[str, Any], default_preempt_mode: str | None = None
) -> str:
    """The table ``cacctmgr show ...`` prints for a parsed show op (AcctError if a name is unknown)."""
    entity = str(op["entity"])
    names = [n for n in str(op["name"]).split(",") if n] if op.get("name") else None
    cols = op.get("format") or DEFAULT_COLUMNS[entity]
    rows = rows_for(entity, db.show(entity, names), default_preempt_mode)
    return format_table(rows, cols)
