"""The fields of each record as ``cacctmgr`` names them, and how one value is read.

``FIELDS`` maps an entity to its canonical lower-case keys (the keys of an op's
``set`` items), ``ALIASES`` the other accepted spellings. :func:`scalar` and
:func:`names` turn one raw value (a string, or a list for list fields) into
what the record holds, raising :class:`AcctError` with a uniform message.
Pure: whole-database rules live in :meth:`AccountModel.validate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from crane.accounts.model import AcctError
from crane.core.states import AdminLevel, PreemptMode
from crane.core.text import safe
from crane.core.untrusted import check_text

PREEMPT_MODES: tuple[PreemptMode, ...] = tuple(PreemptMode)
ADMIN_LEVELS: tuple[AdminLevel, ...] = tuple(AdminLevel)
OPS = ("=", "+=", "-=")
UNLIMITED_WORDS = ("", "unlimited", "infinite", "none", "-1")
MAX_UID = 2**32 - 1  # (uid_t)-1 is "no uid"

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}$")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    key: str  # canonical lower-case key used in op dicts
    label: str  # CraneSched spelling used in messages
    kind: str  # str|int|limit|duration|seconds|mode|qoslist|list|ref|level|bool|uid|accounts
    is_list: bool = False


def _specs(*items: FieldSpec) -> dict[str, FieldSpec]:
    return {s.key: s for s in items}


FIELDS: dict[str, dict[str, FieldSpec]] = {
    "qos": _specs(
        FieldSpec("description", "Description", "str"),
        FieldSpec("priority", "Priority", "int"),
        FieldSpec("preempt", "Preempt", "qoslist", True),
        FieldSpec("preemptmode", "PreemptMode", "mode"),
        FieldSpec("maxjobsperuser", "MaxJobsPerUser", "limit"),
        FieldSpec("maxsubmitjobsperuser", "MaxSubmitJobsPerUser", "limit"),
        FieldSpec("maxtimelimitperjob", "MaxTimeLimitPerJob", "duration"),
        FieldSpec("gracetime", "GraceTime", "seconds"),
        FieldSpec("preemptexempttime", "PreemptExemptTime", "seconds"),
    ),
    "account": _specs(
        FieldSpec("description", "Description", "str"),
        FieldSpec("parent", "Parent", "ref"),
        FieldSpec("allowedqos", "AllowedQos", "qoslist", True),
        FieldSpec("defaultqos", "DefaultQos", "ref"),
        FieldSpec("allowedpartition", "AllowedPartition", "list", True),
    ),
    "user": _specs(
        FieldSpec("account", "Account", "accounts", True),
        FieldSpec("defaultaccount", "DefaultAccount", "ref"),
        FieldSpec("level", "Level", "level"),
        FieldSpec("coordinator", "Coordinator", "bool"),
        FieldSpec("uid", "Uid", "uid"),
    ),
}

# accepted spellings (lower-case) -> canonical key
ALIASES: dict[str, dict[str, str]] = {
    "qos": {
        "maxtimelimitpertask": "maxtimelimitperjob",
        "maxwall": "maxtimelimitperjob",
        "maxjobs": "maxjobsperuser",
        "maxsubmitjobs": "maxsubmitjobsperuser",
        "desc": "description",
    },
    "account": {
        "qos": "allowedqos",
        "qoslist": "allowedqos",
        "allowedqoslist": "allowedqos",
        "partition": "allowedpartition",
        "partitions": "allowedpartition",
        "allowedpartitions": "allowedpartition",
        "desc": "description",
    },
    "user": {
        "accounts": "account",
        "adminlevel": "level",
        "defaultacct": "defaultaccount",
    },
}


def canonical_key(entity: str, key: str) -> str | None:
    """The canonical key for ``key`` (any case, aliases allowed), or None if unknown."""
    k = key.lower()
    fields = FIELDS.get(entity, {})
    if k in fields:
        return k
    return ALIASES.get(entity, {}).get(k)


def is_list_field(entity: str, key: str) -> bool:
    spec = FIELDS.get(entity, {}).get(key)
    return bool(spec and spec.is_list)


def spec_of(entity: str, key: str) -> FieldSpec:
    """The field ``key`` (any accepted spelling) names, or AcctError."""
    canon = canonical_key(entity, key)
    if canon is None:
        raise AcctError(f'Unknown field "{key}" for {entity}')
    return FIELDS[entity][canon]


def check_name(kind: str, name: Any) -> str:
    """``name`` if it is a valid record name, else AcctError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AcctError(f'Invalid {kind} name "{name}"')
    return name


# --------------------------------------------------------------------------- durations


def parse_duration(text: str) -> int:
    """Seconds from a Slurm-style time: ``MIN``, ``MIN:SEC``, ``H:M:S``, ``D-H``,
    ``D-H:M``, ``D-H:M:S``, or a number with a unit suffix ``30s``/``5m``/``2h``/``1d``.
    A bare number is minutes (as in Slurm). Raises ValueError."""
    t = text.strip()
    m = re.fullmatch(r"(\d+)([smhd])", t, re.IGNORECASE)
    if m:
        return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2).lower()]
    days = 0
    if "-" in t:
        d, _, t = t.partition("-")
        if not d.isdigit():
            raise ValueError(text)
        days = int(d)
        parts = t.split(":")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise ValueError(text)
        nums = [int(p) for p in parts] + [0] * (3 - len(parts))
        h, mi, s = nums
    else:
        parts = t.split(":")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise ValueError(text)
        nums = [int(p) for p in parts]
        if len(nums) == 1:
            h, mi, s = 0, nums[0], 0
        elif len(nums) == 2:
            h, mi, s = 0, nums[0], nums[1]
        else:
            h, mi, s = nums
    return days * 86400 + h * 3600 + mi * 60 + s


def format_duration(seconds: int) -> str:
    """``[D-]HH:MM:SS``."""
    d, rem = divmod(int(seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    core = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{d}-{core}" if d else core


# --------------------------------------------------------------------------- one value


def _text(spec: FieldSpec, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if value is None:
        return ""
    raise AcctError(f'Invalid value "{value}" for {spec.label}')


def _bad(spec: FieldSpec, raw: str, hint: str = "") -> AcctError:
    return AcctError(f'Invalid value "{safe(raw)}" for {spec.label}{hint}')


def _int(spec: FieldSpec, raw: str) -> int:
    s = raw.strip()
    if not re.fullmatch(r"\d{1,18}", s):
        raise _bad(spec, raw)
    return int(s)


def scalar(spec: FieldSpec, value: Any) -> Any:
    """Convert one scalar field value; raises AcctError with a uniform message."""
    raw = _text(spec, value)
    s = raw.strip()
    k = spec.kind
    if k == "str":
        why = check_text(spec.label, raw)
        if why is not None:
            raise AcctError(why)
        return raw
    if k == "int":
        return _int(spec, raw)
    if k == "uid":
        if s.lower() in ("", "-", "none"):
            return None  # unbind (a record from an old database may carry a wrong uid)
        uid = _int(spec, raw)
        if uid >= MAX_UID:
            raise _bad(spec, raw, f": a uid must be below {MAX_UID}")
        return uid
    if k in ("limit", "seconds"):
        return None if s.lower() in UNLIMITED_WORDS else _int(spec, raw)
    if k == "duration":
        if s.lower() in UNLIMITED_WORDS:
            return None
        try:
            return parse_duration(s)
        except ValueError:
            raise _bad(spec, raw, ": use [D-]HH:MM:SS, minutes, or unlimited") from None
    if k == "mode":
        if s == "":
            return None
        if s.upper() not in PREEMPT_MODES:
            raise AcctError(f'Invalid PreemptMode "{raw}": use OFF, CANCEL, REQUEUE or SUSPEND')
        return PreemptMode(s.upper())
    if k == "level":
        if s.lower() not in ADMIN_LEVELS:
            raise _bad(spec, raw, ": use none, operator or admin")
        return AdminLevel(s.lower())
    if k == "bool":
        if s.lower() in ("true", "yes", "1", "on"):
            return True
        if s.lower() in ("false", "no", "0", "off"):
            return False
        raise _bad(spec, raw, ": use true or false")
    if k == "ref":
        return None if s in ("", "-") else s
    raise AcctError(f"Invalid field {spec.label}")  # pragma: no cover


def names(spec: FieldSpec, value: Any) -> list[str]:
    """A list field value: a list of strings, or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        raise AcctError(f'Invalid value "{value}" for {spec.label}')
    out: list[str] = []
    for it in items:
        it = it.strip()
        if it and not NAME_RE.match(it):
            raise AcctError(f'Invalid value "{safe(it)}" for {spec.label}')
        if it and it not in out:
            out.append(it)
    return out


def apply_list(current: list[str], op: str, items: list[str]) -> list[str]:
    """``current`` after ``op`` (``=``, ``+=``, ``-=``) with ``items``."""
    if op == "=":
        return list(items)
    if op == "+=":
        return current + [i for i in items if i not in current]
    return [c for c in current if c not in items]
