"""The accounting records: QoS, accounts and users, and the database holding them.

Pure data: no passwd, no sockets, no SQLite, no operations. Each record
serialises to one plain JSON-able dict (``to_dict``/``from_dict``) so the store
can keep it as one row; :class:`AccountModel` groups the three tables, answers
lookups (``get_*``, ``ancestors``, ``children``, ``show``) and checks the
invariants every valid database keeps (:meth:`AccountModel.validate`).

What a field may hold and how one typed value is read: :mod:`.fields`. What
changes the records: :mod:`.ops`. What a submission may use: :mod:`.submit_rules`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from crane.core.states import AdminLevel

ENTITIES = ("qos", "account", "user")

Entity: TypeAlias = Literal["qos", "account", "user"]
#: one row to write: ``(entity, name, row)``, row None = delete the row
Change: TypeAlias = tuple[str, str, dict[str, Any] | None]

LABEL = {"qos": "QoS", "account": "account", "user": "user"}


class AcctError(Exception):
    """An operation was refused. ``str(err)`` is one line, ready to print."""


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class Qos:
    name: str
    description: str = ""
    priority: int = 0
    preempt: list[str] = field(default_factory=list)
    preempt_mode: str | None = None  # a PreemptMode; None = cluster default
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
    admin_level: str = AdminLevel.NONE
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
            admin_level=str(d.get("admin_level") or AdminLevel.NONE),
            coordinator_of=[str(x) for x in d.get("coordinator_of") or []],
        )


# --------------------------------------------------------------------------- the tables


class AccountModel:
    """The three tables, by name. Lookups and invariants; no operations."""

    def __init__(
        self,
        qos: Mapping[str, Qos] | None = None,
        accounts: Mapping[str, Account] | None = None,
        users: Mapping[str, User] | None = None,
    ) -> None:
        self.qos: dict[str, Qos] = dict(qos or {})
        self.accounts: dict[str, Account] = dict(accounts or {})
        self.users: dict[str, User] = dict(users or {})

    # ---- construction / serialisation

    @classmethod
    def fresh(cls) -> AccountModel:
        """QoS ``normal``; account ``default`` (allows ``normal``); user ``root`` (uid 0, admin)."""
        root = User("root", uid=0, accounts=["default"], default_account="default",
                    admin_level=AdminLevel.ADMIN)  # fmt: skip
        return AccountModel(
            qos={"normal": Qos("normal")},
            accounts={"default": Account("default", allowed_qos=["normal"], default_qos="normal")},
            users={"root": root},
        )

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "qos": [q.to_dict() for q in self.qos.values()],
            "account": [a.to_dict() for a in self.accounts.values()],
            "user": [u.to_dict() for u in self.users.values()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Iterable[Mapping[str, Any]]]) -> AccountModel:
        qs = [Qos.from_dict(x) for x in d.get("qos", [])]
        acs = [Account.from_dict(x) for x in d.get("account", [])]
        us = [User.from_dict(x) for x in d.get("user", [])]
        return AccountModel(
            {q.name: q for q in qs}, {a.name: a for a in acs}, {u.name: u for u in us}
        )

    @classmethod
    def from_rows(cls, entity_rows: Iterable[tuple[str, Mapping[str, Any]]]) -> AccountModel:
        """Build from ``(entity, row_dict)`` pairs as stored one per row."""
        grouped: dict[str, list[Mapping[str, Any]]] = {"qos": [], "account": [], "user": []}
        for entity, row in entity_rows:
            grouped[entity].append(row)
        return AccountModel.from_dict(grouped)

    def copy(self) -> AccountModel:
        """A deep copy of the tables."""
        return AccountModel.from_dict(self.to_dict())

    def swap_in(self, other: AccountModel) -> None:
        """Take ``other``'s tables as this model's."""
        self.qos, self.accounts, self.users = other.qos, other.accounts, other.users

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

    def uid_holder(self, uid: int) -> str | None:
        """The name of the record whose ``Uid`` field is ``uid``, if any."""
        return next((u.name for u in self.users.values() if u.uid == uid), None)

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
                raise AcctError(f"Unknown {LABEL[entity]}: {n}")
            out.append(table[n].to_dict())
        return out

    # ---- invariants

    def validate(self, first_qos: str | None = None, first_account: str | None = None) -> None:
        """Raise AcctError (bare reason) unless every invariant holds.

        QoS: none preempts itself, every Preempt entry exists, the preempt graph
        has no cycle. Accounts: parents exist, no account is its own parent, no
        parent cycle, AllowedQos/DefaultQos exist and DefaultQos is allowed.
        Users: every account exists, at least one, DefaultAccount and each
        Coordinator account among them, uids unique. ``first_qos`` /
        ``first_account`` are looked at first, so an error names the entity an
        operation touched.
        """
        self._validate_qos(first_qos)
        self._validate_accounts(first_account)
        self._validate_users()

    def _validate_qos(self, first: str | None) -> None:
        order = [first] if first is not None else []
        order += [n for n in self.qos if n not in order]
        for n in order:
            q = self.qos[n]
            if n in q.preempt:
                raise AcctError(f"QoS {n} cannot preempt itself")
            for t in q.preempt:
                if t not in self.qos:
                    raise AcctError(f"Unknown QoS: {t}")
        cycle = find_cycle({n: self.qos[n].preempt for n in order}, order)
        if cycle:
            raise AcctError("Preempt cycle: " + " -> ".join(cycle))

    def _validate_accounts(self, first: str | None) -> None:
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
        order = [first] if first is not None else []
        order += [n for n in self.accounts if n not in order]
        cycle = find_cycle(parents, order)
        if cycle:
            raise AcctError("Parent cycle: " + " -> ".join(cycle))

    def _validate_users(self) -> None:
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


def find_cycle(graph: Mapping[str, Sequence[str]], order: Sequence[str]) -> list[str] | None:
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


def diff(old: AccountModel, new: AccountModel) -> list[Change]:
    """The rows to write to turn ``old`` into ``new`` (None = delete the row)."""
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
