"""Accounting model: QoS, accounts, users, and the operations ``cacctmgr`` performs.

Pure: no sockets, no SQLite. Each entity serialises to one plain JSON-able dict
(``to_dict``/``from_dict``) so the store can keep it as one row.

Operations arrive as the dicts built by :func:`crane.cacctmgr_parse.parse_argv`::

    {"verb": "add"|"modify"|"delete"|"show",
     "entity": "qos"|"account"|"user",
     "name": str | None,                 # add/delete/show target (None for modify)
     "where": {"name": str, "account": str},   # modify (and delete user ... Account=A)
     "set": [[key, "=" | "+=" | "-=", value], ...],   # add/modify
     "format": [column, ...] | None}     # show

``key`` is a canonical lower-case field name (see ``FIELDS``) or, when the parser
did not know it, the key exactly as typed (``apply`` then refuses it).
``value`` is a string, or a list of strings for list fields; ``apply`` does all
value checking so the error messages are uniform.

``AccountDB.apply`` either performs the whole operation and returns CraneSched's
success line, or raises :class:`AcctError` whose text is the full line the CLI
prints (``Failed to modify information: Unknown QoS: Foo``) and leaves the
database unchanged (it works on a copy and swaps it in only when valid).
After a successful ``apply``/``ensure_user``, ``last_changes`` lists
``(entity, name, row_or_None)`` for every row to write (None = delete the row).

Identity: a user record is bound to a system account by its *name*. A record's
``uid``, when set, must be the one passwd gives that name (or, for a name
passwd does not know, a uid passwd gives to no one); :meth:`AccountDB.user_by_uid`
resolves a uid only through passwd's name for it, never through a record's
``Uid`` field. Who may set a uid at all is :mod:`crane.permissions`' business.
"""

from __future__ import annotations

import pwd
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from crane.core.text import safe
from crane.core.untrusted import check_text

PREEMPT_MODES = ("OFF", "CANCEL", "REQUEUE", "SUSPEND")
ADMIN_LEVELS = ("none", "operator", "admin")
ENTITIES = ("qos", "account", "user")
OPS = ("=", "+=", "-=")
UNLIMITED_WORDS = ("", "unlimited", "infinite", "none", "-1")
MAX_UID = 2**32 - 1  # (uid_t)-1 is "no uid"

Entity: TypeAlias = Literal["qos", "account", "user"]
Change: TypeAlias = tuple[str, str, dict[str, Any] | None]

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}$")


class AcctError(Exception):
    """An operation was refused. ``str(err)`` is one line, ready to print."""


# --------------------------------------------------------------------------- passwd


class Passwd(Protocol):
    """The system's user table, both ways (None = no such entry)."""

    def uid_of(self, name: str) -> int | None: ...

    def name_of(self, uid: int) -> str | None: ...


class SystemPasswd:
    """passwd through NSS (``pwd``), looked up afresh every time."""

    def uid_of(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except (KeyError, ValueError, OverflowError):
            return None

    def name_of(self, uid: int) -> str | None:
        try:
            return pwd.getpwuid(uid).pw_name
        except (KeyError, ValueError, OverflowError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class PasswdTable:
    """A fixed passwd (name -> uid); the first name listed for a uid is its name."""

    entries: Mapping[str, int]

    def uid_of(self, name: str) -> int | None:
        return self.entries.get(name)

    def name_of(self, uid: int) -> str | None:
        return next((n for n, u in self.entries.items() if u == uid), None)


SYSTEM_PASSWD: Passwd = SystemPasswd()


def uid_mismatch(passwd: Passwd, name: str, uid: int) -> str | None:
    """Why ``uid`` may not be the uid of record ``name``, or None if it may.

    It may when passwd gives ``name`` exactly ``uid``, or when passwd knows
    neither ``name`` nor ``uid`` (a record for a name not on this system).
    """
    own = passwd.uid_of(name)
    if own == uid:
        return None
    holder = passwd.name_of(uid)
    if holder is not None and holder != name:
        return f"Uid {uid} is the system uid of {holder}, not of {name}"
    if own is not None:
        return f"Uid {uid} does not match passwd: the system uid of {name} is {own}"
    return None


# --------------------------------------------------------------------------- fields


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


# --------------------------------------------------------------------------- values


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


def _scalar(spec: FieldSpec, value: Any) -> Any:
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
    if k == "limit":
        return None if s.lower() in UNLIMITED_WORDS else _int(spec, raw)
    if k == "seconds":
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
        return s.upper()
    if k == "level":
        if s.lower() not in ADMIN_LEVELS:
            raise _bad(spec, raw, ": use none, operator or admin")
        return s.lower()
    if k == "bool":
        if s.lower() in ("true", "yes", "1", "on"):
            return True
        if s.lower() in ("false", "no", "0", "off"):
            return False
        raise _bad(spec, raw, ": use true or false")
    if k == "ref":
        return None if s in ("", "-") else s
    raise AcctError(f"Invalid field {spec.label}")  # pragma: no cover


def _names(spec: FieldSpec, value: Any) -> list[str]:
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
        if it and not _NAME_RE.match(it):
            raise AcctError(f'Invalid value "{safe(it)}" for {spec.label}')
        if it and it not in out:
            out.append(it)
    return out


def _apply_list(current: list[str], op: str, items: list[str]) -> list[str]:
    if op == "=":
        return list(items)
    if op == "+=":
        return current + [i for i in items if i not in current]
    return [c for c in current if c not in items]


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise AcctError(f'Invalid {kind} name "{name}"')
    return name


# --------------------------------------------------------------------------- entities


@dataclass(slots=True)
class Qos:
    name: str
    description: str = ""
    priority: int = 0
    preempt: list[str] = field(default_factory=list)
    preempt_mode: str | None = None  # OFF|CANCEL|REQUEUE|SUSPEND; None = cluster default
    max_jobs_per_user: int | None = None
    max_submit_jobs_per_user: int | None = None
    max_time_limit_per_job: int | None = None  # seconds
    grace_time: int | None = None  # seconds
    preempt_exempt_time: int | None = None  # seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "priority": self.priority,
            "preempt": list(self.preempt),
            "preempt_mode": self.preempt_mode,
            "max_jobs_per_user": self.max_jobs_per_user,
            "max_submit_jobs_per_user": self.max_submit_jobs_per_user,
            "max_time_limit_per_job": self.max_time_limit_per_job,
            "grace_time": self.grace_time,
            "preempt_exempt_time": self.preempt_exempt_time,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Qos:
        return cls(
            name=str(d["name"]),
            description=str(d.get("description") or ""),
            priority=int(d.get("priority") or 0),
            preempt=[str(x) for x in d.get("preempt") or []],
            preempt_mode=d.get("preempt_mode"),
            max_jobs_per_user=d.get("max_jobs_per_user"),
            max_submit_jobs_per_user=d.get("max_submit_jobs_per_user"),
            max_time_limit_per_job=d.get("max_time_limit_per_job"),
            grace_time=d.get("grace_time"),
            preempt_exempt_time=d.get("preempt_exempt_time"),
        )

    def effective_preempt_mode(self, cluster_default: str) -> str:
        return self.preempt_mode or cluster_default.upper()


@dataclass(slots=True)
class Account:
    name: str
    description: str = ""
    parent: str | None = None
    allowed_qos: list[str] = field(default_factory=list)
    default_qos: str | None = None
    allowed_partitions: list[str] = field(default_factory=list)  # empty = all

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parent": self.parent,
            "allowed_qos": list(self.allowed_qos),
            "default_qos": self.default_qos,
            "allowed_partitions": list(self.allowed_partitions),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Account:
        return cls(
            name=str(d["name"]),
            description=str(d.get("description") or ""),
            parent=d.get("parent"),
            allowed_qos=[str(x) for x in d.get("allowed_qos") or []],
            default_qos=d.get("default_qos"),
            allowed_partitions=[str(x) for x in d.get("allowed_partitions") or []],
        )


@dataclass(slots=True)
class User:
    name: str
    uid: int | None = None
    accounts: list[str] = field(default_factory=list)
    default_account: str | None = None
    admin_level: str = "none"  # none|operator|admin
    coordinator_of: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uid": self.uid,
            "accounts": list(self.accounts),
            "default_account": self.default_account,
            "admin_level": self.admin_level,
            "coordinator_of": list(self.coordinator_of),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> User:
        uid = d.get("uid")
        return cls(
            name=str(d["name"]),
            uid=None if uid is None else int(uid),
            accounts=[str(x) for x in d.get("accounts") or []],
            default_account=d.get("default_account"),
            admin_level=str(d.get("admin_level") or "none"),
            coordinator_of=[str(x) for x in d.get("coordinator_of") or []],
        )


_LABEL = {"qos": "QoS", "account": "account", "user": "user"}
_ADD_OK = {
    "qos": "QoS added successfully.",
    "account": "Account added successfully.",
    "user": "User added successfully.",
}
_DEL_OK = {
    "qos": "QoS deleted successfully.",
    "account": "Account deleted successfully.",
    "user": "User deleted successfully.",
}
MODIFY_OK = "Information was successfully modified."


def target_name(op: Mapping[str, Any]) -> str | None:
    """The entity an add/modify/delete op acts on, exactly as ``apply`` reads it:
    ``where.name`` for modify, ``name`` (else ``where.name``) for delete, ``name`` for add."""
    where = op.get("where") or {}
    if not isinstance(where, Mapping):
        raise AcctError("Invalid operation: where must be a mapping")
    verb = op.get("verb")
    if verb == "modify":
        name = where.get("name")
    elif verb == "delete":
        name = op.get("name") or where.get("name")
    else:
        name = op.get("name")
    return None if name is None or name == "" else str(name)


def _fail_prefix(verb: str, entity: str) -> str:
    if verb == "modify":
        return "Failed to modify information: "
    return f"Failed to {verb} {_LABEL.get(entity, entity)}: "


# --------------------------------------------------------------------------- database


class AccountDB:
    """In-memory accounting database. All mutations go through ``apply``/``ensure_user``."""

    def __init__(
        self,
        qos: Mapping[str, Qos] | None = None,
        accounts: Mapping[str, Account] | None = None,
        users: Mapping[str, User] | None = None,
        passwd: Passwd | None = None,
    ) -> None:
        self.qos: dict[str, Qos] = dict(qos or {})
        self.accounts: dict[str, Account] = dict(accounts or {})
        self.users: dict[str, User] = dict(users or {})
        self.passwd: Passwd = passwd if passwd is not None else SYSTEM_PASSWD
        self.last_changes: list[Change] = []

    # ---- construction / serialisation

    @classmethod
    def fresh(cls, passwd: Passwd | None = None) -> AccountDB:
        """QoS ``normal``; account ``default`` (allows ``normal``); user ``root`` (uid 0, admin)."""
        return cls(
            qos={"normal": Qos("normal")},
            accounts={"default": Account("default", allowed_qos=["normal"], default_qos="normal")},
            users={
                "root": User(
                    "root",
                    uid=0,
                    accounts=["default"],
                    default_account="default",
                    admin_level="admin",
                )
            },
            passwd=passwd,
        )

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "qos": [q.to_dict() for q in self.qos.values()],
            "account": [a.to_dict() for a in self.accounts.values()],
            "user": [u.to_dict() for u in self.users.values()],
        }

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Iterable[Mapping[str, Any]]], passwd: Passwd | None = None
    ) -> AccountDB:
        qs = [Qos.from_dict(x) for x in d.get("qos", [])]
        acs = [Account.from_dict(x) for x in d.get("account", [])]
        us = [User.from_dict(x) for x in d.get("user", [])]
        return cls(
            {q.name: q for q in qs}, {a.name: a for a in acs}, {u.name: u for u in us}, passwd
        )

    @classmethod
    def from_rows(
        cls, entity_rows: Iterable[tuple[str, Mapping[str, Any]]], passwd: Passwd | None = None
    ) -> AccountDB:
        """Build from ``(entity, row_dict)`` pairs as stored one per row."""
        grouped: dict[str, list[Mapping[str, Any]]] = {"qos": [], "account": [], "user": []}
        for entity, row in entity_rows:
            grouped[entity].append(row)
        return cls.from_dict(grouped, passwd)

    def copy(self) -> AccountDB:
        return AccountDB.from_dict(self.to_dict(), self.passwd)

    # ---- lookups

    def get_qos(self, name: str) -> Qos:
        q = self.qos.get(name)
        if q is None:
            raise AcctError(f"Unknown QoS: {name}")
        return q

    def get_account(self, name: str) -> Account:
        a = self.accounts.get(name)
        if a is None:
            raise AcctError(f"Unknown account: {name}")
        return a

    def get_user(self, name: str) -> User:
        u = self.users.get(name)
        if u is None:
            raise AcctError(f"Unknown user: {name}")
        return u

    def user_by_uid(self, uid: int) -> User | None:
        """The record of the user passwd names for ``uid``, strictly: the record
        named passwd's name for ``uid``, if its own uid is unset or ``uid``.
        Never a record found by its ``Uid`` field alone; None for a uid passwd
        does not know."""
        name = self.passwd.name_of(uid)
        u = self.users.get(name) if name is not None else None
        if u is None or (u.uid is not None and u.uid != uid):
            return None
        return u

    def ancestors(self, account: str) -> list[str]:
        """Parent, grandparent, ... of ``account`` (nearest first, itself excluded)."""
        out: list[str] = []
        cur = self.get_account(account).parent
        while cur is not None and cur not in out and cur != account:
            out.append(cur)
            a = self.accounts.get(cur)
            cur = a.parent if a else None
        return out

    def children(self, account: str) -> list[str]:
        return [a.name for a in self.accounts.values() if a.parent == account]

    def show(self, entity: str, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Rows (``to_dict``) of ``entity``, all or the named ones in the given order."""
        table: Mapping[str, Qos | Account | User]
        if entity == "qos":
            table = self.qos
        elif entity == "account":
            table = self.accounts
        elif entity == "user":
            table = self.users
        else:
            raise AcctError(f"Unknown entity: {entity}")
        if not names:
            return [table[k].to_dict() for k in sorted(table, key=lambda n: (n.lower(), n))]
        out = []
        for n in names:
            if n not in table:
                raise AcctError(f"Unknown {_LABEL[entity]}: {n}")
            out.append(table[n].to_dict())
        return out

    # ---- submission checks

    def check_submit(
        self, user: str, account: str | None, qos: str | None, partition: str | None
    ) -> tuple[str, str | None]:
        """Resolve and check the account and QoS of a submission; return ``(account, qos)``.

        - account: the given one (the user must be a direct member), else the
          user's default account, else the user's only account.
        - qos: the given one (it must exist and be in the account's AllowedQos),
          else the account's DefaultQos, else its first AllowedQos. If the
          account allows no QoS: ``None`` when the cluster defines no QoS at all
          (QoS-less operation), otherwise an error.
        - partition: must be in the AllowedPartition list of the account and of
          each ancestor that has a non-empty list (empty = all). ``None`` skips it.

        Errors are AcctError with the bare reason (no ``Failed to`` prefix).
        """
        u = self.get_user(user)
        if account is None:
            if u.default_account and u.default_account in u.accounts:
                account = u.default_account
            elif len(u.accounts) == 1:
                account = u.accounts[0]
            elif not u.accounts:
                raise AcctError(f"User {user} has no account")
            else:
                raise AcctError(f"User {user} has no default account: use -A ACCOUNT")
        acct = self.get_account(account)
        if account not in u.accounts:
            raise AcctError(f"User {user} is not a member of account {account}")
        if qos is None:
            if acct.default_qos is not None:
                qos = acct.default_qos
            elif acct.allowed_qos:
                qos = acct.allowed_qos[0]
            elif not self.qos:
                qos = None
            else:
                raise AcctError(f"Account {account} has no allowed QoS")
        if qos is not None:
            self.get_qos(qos)
            if qos not in acct.allowed_qos:
                raise AcctError(f"QoS {qos} is not allowed for account {account}")
        if partition is not None:
            for name in [account, *self.ancestors(account)]:
                a = self.accounts.get(name)
                if a and a.allowed_partitions and partition not in a.allowed_partitions:
                    raise AcctError(f"Partition {partition} is not allowed for account {account}")
        return account, qos

    def qos_limits_check(
        self,
        qos: str | None,
        user_active_jobs: int,
        user_submitted_jobs: int,
        time_limit: int | None,
    ) -> None:
        """Check one new job against its QoS's per-user limits (``qos=None``: no limits).

        ``user_active_jobs``: the user's running jobs in this QoS;
        ``user_submitted_jobs``: the user's pending + running jobs in this QoS,
        both *excluding* the new job. ``time_limit`` in seconds, None = not given
        (the caller may then clamp to ``max_time_limit_per_job``).
        Raises AcctError (bare reason) when MaxSubmitJobsPerUser, MaxJobsPerUser
        or MaxTimeLimitPerJob would be exceeded. At submit time a caller that
        lets jobs wait for MaxJobsPerUser passes ``user_active_jobs=0`` and uses
        :meth:`max_jobs_reason` in the scheduler instead.
        """
        if qos is None:
            return
        q = self.get_qos(qos)
        if q.max_submit_jobs_per_user is not None and (
            user_submitted_jobs >= q.max_submit_jobs_per_user
        ):
            raise AcctError(
                f"QoS {qos}: MaxSubmitJobsPerUser limit reached ({q.max_submit_jobs_per_user})"
            )
        if q.max_jobs_per_user is not None and user_active_jobs >= q.max_jobs_per_user:
            raise AcctError(f"QoS {qos}: MaxJobsPerUser limit reached ({q.max_jobs_per_user})")
        if (
            q.max_time_limit_per_job is not None
            and time_limit is not None
            and time_limit > q.max_time_limit_per_job
        ):
            raise AcctError(
                f"Time limit {format_duration(time_limit)} exceeds MaxTimeLimitPerJob "
                f"{format_duration(q.max_time_limit_per_job)} of QoS {qos}"
            )

    def max_jobs_reason(self, qos: str | None, user_running_jobs: int) -> str | None:
        """Pending reason if starting one more job would break MaxJobsPerUser, else None."""
        if qos is None or qos not in self.qos:
            return None
        lim = self.qos[qos].max_jobs_per_user
        if lim is not None and user_running_jobs >= lim:
            return "QOSMaxJobsPerUserLimit"
        return None

    # ---- AutoCreateUsers

    def ensure_user(self, name: str, uid: int | None, account: str = "default") -> User:
        """Return user ``name``, creating it (in ``account``) if absent.

        If ``account`` does not exist it is created allowing every existing QoS
        (DefaultQos ``normal`` if present, else the first). An existing user
        without a uid gets ``uid``. ``last_changes`` lists the rows written.
        """
        self.last_changes = []
        if uid is not None and uid_mismatch(self.passwd, name, uid) is not None:
            uid = None  # never bind a name to a uid passwd does not give it
        u = self.users.get(name)
        if u is not None:
            if u.uid is None and uid is not None and self._uid_holder(uid) is None:
                u.uid = uid
                self.last_changes = [("user", name, u.to_dict())]
            return u
        _check_name("user", name)
        _check_name("account", account)
        changes: list[Change] = []
        if account not in self.accounts:
            allowed = list(self.qos)
            default = "normal" if "normal" in allowed else (allowed[0] if allowed else None)
            a = Account(account, allowed_qos=allowed, default_qos=default)
            self.accounts[account] = a
            changes.append(("account", account, a.to_dict()))
        if uid is not None and self._uid_holder(uid) is not None:
            uid = None  # an old record holds it: uids stay unique
        u = User(name, uid=uid, accounts=[account], default_account=account)
        self.users[name] = u
        changes.append(("user", name, u.to_dict()))
        self.last_changes = changes
        return u

    def _uid_holder(self, uid: int) -> str | None:
        return next((u.name for u in self.users.values() if u.uid == uid), None)

    # ---- operations

    def apply(self, op: Mapping[str, Any]) -> str:
        """Perform one add/modify/delete operation; see the module docstring."""
        verb = op.get("verb")
        entity = op.get("entity")
        if verb not in ("add", "modify", "delete") or entity not in ENTITIES:
            raise AcctError(safe(f"Invalid operation: {verb} {entity}"))
        work = self.copy()
        try:
            msg = work._do(str(verb), str(entity), op)
            work._validate(str(entity), op)
            work._check_uids(self)
        except AcctError as e:
            raise AcctError(safe(_fail_prefix(str(verb), str(entity)) + str(e))) from None
        changes = _diff(self, work)
        self.qos, self.accounts, self.users = work.qos, work.accounts, work.users
        self.last_changes = changes
        return msg

    def _do(self, verb: str, entity: str, op: Mapping[str, Any]) -> str:
        sets = _set_items(op.get("set") or [])
        if verb == "add":
            name = target_name(op)
            if entity == "qos":
                self._add_qos(str(name) if name is not None else "", sets)
            elif entity == "account":
                self._add_account(str(name) if name is not None else "", sets)
            else:
                self._add_user(str(name) if name is not None else "", sets)
            return _ADD_OK[entity]
        if verb == "modify":
            where = dict(op.get("where") or {})
            name = target_name(op)
            if not name:
                raise AcctError("a target is required: where Name=NAME")
            if not sets:
                raise AcctError("nothing to modify: use set KEY=VALUE")
            if entity == "qos":
                self._modify_qos(str(name), sets)
            elif entity == "account":
                self._modify_account(str(name), sets)
            else:
                acct = where.get("account")
                self._modify_user(str(name), None if acct is None else str(acct), sets)
            return MODIFY_OK
        name = target_name(op)
        if not name:
            raise AcctError("a name is required")
        if entity == "qos":
            self._delete_qos(str(name))
        elif entity == "account":
            self._delete_account(str(name))
        else:
            acct = op.get("where", {}).get("account") if op.get("where") else None
            self._delete_user(str(name), None if acct is None else str(acct))
        return _DEL_OK[entity]

    # qos

    def _add_qos(self, name: str, sets: list[tuple[str, str, Any]]) -> None:
        _check_name("QoS", name)
        if name in self.qos:
            raise AcctError(f"QoS {name} already exists")
        q = Qos(name)
        self.qos[name] = q
        for key, op, value in sets:
            self._set_qos(q, key, _only_assign(key, op, "qos"), value)

    def _modify_qos(self, name: str, sets: list[tuple[str, str, Any]]) -> None:
        q = self.get_qos(name)
        for key, op, value in sets:
            self._set_qos(q, key, op, value)

    def _set_qos(self, q: Qos, key: str, op: str, value: Any) -> None:
        spec = _spec("qos", key)
        if spec.key == "preempt":
            q.preempt = _apply_list(q.preempt, op, _names(spec, value))
            return
        _scalar_op(spec, op)
        v = _scalar(spec, value)
        if spec.key == "description":
            q.description = v
        elif spec.key == "priority":
            q.priority = v
        elif spec.key == "preemptmode":
            q.preempt_mode = v
        elif spec.key == "maxjobsperuser":
            q.max_jobs_per_user = v
        elif spec.key == "maxsubmitjobsperuser":
            q.max_submit_jobs_per_user = v
        elif spec.key == "maxtimelimitperjob":
            q.max_time_limit_per_job = v
        elif spec.key == "gracetime":
            q.grace_time = v
        elif spec.key == "preemptexempttime":
            q.preempt_exempt_time = v

    def _delete_qos(self, name: str) -> None:
        self.get_qos(name)
        for a in self.accounts.values():
            if name in a.allowed_qos or a.default_qos == name:
                raise AcctError(f"QoS {name} is used by account {a.name}")
        for q in self.qos.values():
            if q.name != name and name in q.preempt:
                raise AcctError(f"QoS {name} is in the Preempt list of QoS {q.name}")
        del self.qos[name]

    # accounts

    def _add_account(self, name: str, sets: list[tuple[str, str, Any]]) -> None:
        _check_name("account", name)
        if name in self.accounts:
            raise AcctError(f"Account {name} already exists")
        a = Account(name)
        self.accounts[name] = a
        keys = set()
        for key, op, value in sets:
            keys.add(self._set_account(a, key, _only_assign(key, op, "account"), value))
        if "allowedqos" not in keys:
            # inherit from the parent; a top-level account gets "normal" (like Slurm)
            parent = self.accounts.get(a.parent) if a.parent else None
            if parent is not None:
                a.allowed_qos = list(parent.allowed_qos)
                if "defaultqos" not in keys:
                    a.default_qos = parent.default_qos
            elif "normal" in self.qos:
                a.allowed_qos = ["normal"]
            if "defaultqos" in keys and a.default_qos and a.default_qos not in a.allowed_qos:
                a.allowed_qos.append(a.default_qos)
        if a.default_qos is None and a.allowed_qos and "defaultqos" not in keys:
            a.default_qos = a.allowed_qos[0]

    def _modify_account(self, name: str, sets: list[tuple[str, str, Any]]) -> None:
        a = self.get_account(name)
        keys = set()
        for key, op, value in sets:
            keys.add(self._set_account(a, key, op, value))
        if a.default_qos is not None and a.default_qos not in a.allowed_qos:
            if "defaultqos" not in keys:  # the default was removed: fall back
                a.default_qos = a.allowed_qos[0] if a.allowed_qos else None
        elif a.default_qos is None and a.allowed_qos and "defaultqos" not in keys:
            a.default_qos = a.allowed_qos[0]

    def _set_account(self, a: Account, key: str, op: str, value: Any) -> str:
        spec = _spec("account", key)
        if spec.key == "allowedqos":
            a.allowed_qos = _apply_list(a.allowed_qos, op, _names(spec, value))
        elif spec.key == "allowedpartition":
            a.allowed_partitions = _apply_list(a.allowed_partitions, op, _names(spec, value))
        else:
            _scalar_op(spec, op)
            v = _scalar(spec, value)
            if spec.key == "description":
                a.description = v
            elif spec.key == "parent":
                a.parent = v
            elif spec.key == "defaultqos":
                a.default_qos = v
        return spec.key

    def _delete_account(self, name: str) -> None:
        self.get_account(name)
        kids = self.children(name)
        if kids:
            raise AcctError(f"Account {name} has child accounts: {','.join(sorted(kids))}")
        members = sorted(u.name for u in self.users.values() if name in u.accounts)
        if members:
            raise AcctError(f"Account {name} has users: {','.join(members)}")
        del self.accounts[name]
        for u in self.users.values():
            if name in u.coordinator_of:
                u.coordinator_of.remove(name)

    # users

    def _add_user(self, name: str, sets: list[tuple[str, str, Any]]) -> None:
        _check_name("user", name)
        values: dict[str, Any] = {}
        for key, op, value in sets:
            spec = _spec("user", key)
            _only_assign(key, op, "user")
            values[spec.key] = _names(spec, value) if spec.is_list else _scalar(spec, value)
        accounts: list[str] = values.get("account") or []
        if not accounts:
            raise AcctError("Account=ACCOUNT is required to add a user")
        for acc in accounts:
            self.get_account(acc)
        u = self.users.get(name)
        if u is None:
            u = User(name)
            self.users[name] = u
            new = accounts
        else:
            new = [a for a in accounts if a not in u.accounts]
            if not new:
                raise AcctError(f"User {name} is already in account {','.join(accounts)}")
        u.accounts.extend(new)
        if "uid" in values:
            u.uid = values["uid"]
        if "level" in values:
            u.admin_level = values["level"]
        if values.get("coordinator"):
            for acc in new:
                if acc not in u.coordinator_of:
                    u.coordinator_of.append(acc)
        if values.get("defaultaccount"):
            u.default_account = values["defaultaccount"]
        elif u.default_account is None:
            u.default_account = u.accounts[0]

    def _modify_user(
        self, name: str, account: str | None, sets: list[tuple[str, str, Any]]
    ) -> None:
        u = self.get_user(name)
        if account is not None:
            self.get_account(account)
            if account not in u.accounts:
                raise AcctError(f"User {name} is not a member of account {account}")
        for key, op, value in sets:
            spec = _spec("user", key)
            if spec.key == "account":
                items = _names(spec, value)
                for acc in items:
                    if op != "-=":
                        self.get_account(acc)
                u.accounts = _apply_list(u.accounts, op, items)
                u.coordinator_of = [c for c in u.coordinator_of if c in u.accounts]
                if u.default_account not in u.accounts:
                    u.default_account = u.accounts[0] if u.accounts else None
                continue
            _scalar_op(spec, op)
            v = _scalar(spec, value)
            if spec.key == "level":
                u.admin_level = v
            elif spec.key == "uid":
                u.uid = v
            elif spec.key == "defaultaccount":
                if v is None:
                    raise AcctError("DefaultAccount cannot be empty")
                u.default_account = v
            elif spec.key == "coordinator":
                target = account or u.default_account
                if target is None:
                    raise AcctError(f"User {name} has no account")
                if v and target not in u.coordinator_of:
                    u.coordinator_of.append(target)
                elif not v and target in u.coordinator_of:
                    u.coordinator_of.remove(target)

    def _delete_user(self, name: str, account: str | None) -> None:
        u = self.get_user(name)
        if account is not None:
            self.get_account(account)
            if account not in u.accounts:
                raise AcctError(f"User {name} is not a member of account {account}")
            if len(u.accounts) > 1:
                u.accounts.remove(account)
                if account in u.coordinator_of:
                    u.coordinator_of.remove(account)
                if u.default_account == account:
                    u.default_account = u.accounts[0]
                return
        if u.uid == 0:
            raise AcctError(f"Cannot delete user {name} (uid 0)")
        del self.users[name]

    # ---- whole-database validation (run on the working copy)

    def _validate(self, entity: str, op: Mapping[str, Any]) -> None:
        target = op.get("name") or (op.get("where") or {}).get("name")
        # QoS preempt lists
        order = [str(target)] if entity == "qos" and target in self.qos else []
        order += [n for n in self.qos if n not in order]
        for n in order:
            q = self.qos[n]
            if n in q.preempt:
                raise AcctError(f"QoS {n} cannot preempt itself")
            for t in q.preempt:
                if t not in self.qos:
                    raise AcctError(f"Unknown QoS: {t}")
        cycle = _find_cycle({n: self.qos[n].preempt for n in order}, order)
        if cycle:
            raise AcctError("Preempt cycle: " + " -> ".join(cycle))
        # accounts
        for a in self.accounts.values():
            if a.parent is not None:
                if a.parent == a.name:
                    raise AcctError(f"Account {a.name} cannot be its own parent")
                if a.parent not in self.accounts:
                    raise AcctError(f"Unknown account: {a.parent}")
            for qn in a.allowed_qos:
                if qn not in self.qos:
                    raise AcctError(f"Unknown QoS: {qn}")
            if a.default_qos is not None:
                if a.default_qos not in self.qos:
                    raise AcctError(f"Unknown QoS: {a.default_qos}")
                if a.default_qos not in a.allowed_qos:
                    raise AcctError(
                        f"DefaultQos {a.default_qos} is not in the AllowedQos of account {a.name}"
                    )
        parents = {a.name: [a.parent] if a.parent else [] for a in self.accounts.values()}
        order = [str(target)] if entity == "account" and target in self.accounts else []
        order += [n for n in self.accounts if n not in order]
        cycle = _find_cycle(parents, order)
        if cycle:
            raise AcctError("Parent cycle: " + " -> ".join(cycle))
        # users
        uids: dict[int, str] = {}
        for u in self.users.values():
            for acc in u.accounts:
                if acc not in self.accounts:
                    raise AcctError(f"Unknown account: {acc}")
            if not u.accounts:
                raise AcctError(f"User {u.name} must belong to at least one account")
            if u.default_account not in u.accounts:
                raise AcctError(f"User {u.name} is not a member of account {u.default_account}")
            for acc in u.coordinator_of:
                if acc not in u.accounts:
                    raise AcctError(f"User {u.name} is not a member of account {acc}")
            if u.uid is not None:
                if u.uid in uids and uids[u.uid] != u.name:
                    raise AcctError(f"Uid {u.uid} is already used by user {uids[u.uid]}")
                uids[u.uid] = u.name

    def _check_uids(self, before: AccountDB) -> None:
        """Every record whose uid is new or changed carries passwd's uid for its name."""
        for u in self.users.values():
            old = before.users.get(u.name)
            if u.uid is None or (old is not None and old.uid == u.uid):
                continue
            why = uid_mismatch(self.passwd, u.name, u.uid)
            if why is not None:
                raise AcctError(why)


# --------------------------------------------------------------------------- helpers


def _set_items(raw: Any) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []
    if not isinstance(raw, list | tuple):
        raise AcctError("Invalid operation: set must be a list")
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise AcctError("Invalid operation: each set item is [key, op, value]")
        key, op, value = item
        if op not in OPS:
            raise AcctError(f'Invalid operator "{op}"')
        out.append((str(key), str(op), value))
    return out


def _spec(entity: str, key: str) -> FieldSpec:
    canon = canonical_key(entity, key)
    if canon is None:
        raise AcctError(f'Unknown field "{key}" for {entity}')
    return FIELDS[entity][canon]


def _scalar_op(spec: FieldSpec, op: str) -> None:
    if op != "=":
        raise AcctError(f'Operator "{op}" is not valid for {spec.label}: use =')


def _only_assign(key: str, op: str, entity: str) -> str:
    if op != "=":
        raise AcctError(f'Operator "{op}" is only valid in modify (field {key})')
    return op


def _find_cycle(graph: Mapping[str, Sequence[str]], order: Sequence[str]) -> list[str] | None:
    """First cycle found by an iterative DFS visiting ``order``; as a closed path."""
    state: dict[str, int] = {}  # 1 = on stack, 2 = done
    for start in order:
        if start in state:
            continue
        path: list[str] = [start]
        iters = [iter(graph.get(start, ()))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            st = state.get(nxt)
            if st == 1:
                return path[path.index(nxt) :] + [nxt]
            if st is None and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(graph.get(nxt, ())))
    return None


def _diff(old: AccountDB, new: AccountDB) -> list[Change]:
    changes: list[Change] = []
    pairs: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = [
        ("qos", old.qos, new.qos),
        ("account", old.accounts, new.accounts),
        ("user", old.users, new.users),
    ]
    for entity, before, after in pairs:
        for name, obj in after.items():
            row = obj.to_dict()
            if name not in before or before[name].to_dict() != row:
                changes.append((entity, name, row))
        for name in before:
            if name not in after:
                changes.append((entity, name, None))
    return changes
