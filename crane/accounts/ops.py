"""The operations that change an :class:`AccountModel`: ``cacctmgr`` add/modify/delete
(:func:`apply`) and AutoCreateUsers (:func:`ensure_user`).

Operations arrive as the dicts built by :func:`crane.cacctmgr_parse.parse_argv`::

    {"verb": "add"|"modify"|"delete"|"show",
     "entity": "qos"|"account"|"user",
     "name": str | None,                 # add/delete/show target (None for modify)
     "where": {"name": str, "account": str},   # modify (and delete user ... Account=A)
     "set": [[key, "=" | "+=" | "-=", value], ...],   # add/modify
     "format": [column, ...] | None}     # show

``key`` is a canonical lower-case field name (see :data:`.fields.FIELDS`) or,
when the parser did not know it, the key exactly as typed (refused here).
``value`` is a string, or a list of strings for list fields; the checking is
all here and in :mod:`.fields`, so the error messages are uniform.

:func:`apply` either performs the whole operation and returns CraneSched's
success line with the rows that changed, or raises :class:`AcctError` whose
text is the full line the CLI prints (``Failed to modify information: Unknown
QoS: Foo``) and leaves the model unchanged: it works on a copy, checks the
copy's invariants and uids, and swaps it in only when valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from crane.accounts.fields import OPS, FieldSpec, apply_list, check_name, names, scalar, spec_of
from crane.accounts.model import (
    ENTITIES,
    LABEL,
    Account,
    AccountModel,
    AcctError,
    Change,
    Qos,
    User,
    diff,
)
from crane.accounts.passwd import Passwd, uid_mismatch
from crane.core.text import safe

Sets = list[tuple[str, str, Any]]

ADD_OK = {
    "qos": "QoS added successfully.",
    "account": "Account added successfully.",
    "user": "User added successfully.",
}
DEL_OK = {
    "qos": "QoS deleted successfully.",
    "account": "Account deleted successfully.",
    "user": "User deleted successfully.",
}
MODIFY_OK = "Information was successfully modified."


class Applied(NamedTuple):
    message: str  # the success line the CLI prints
    changes: list[Change]  # the rows to write


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
    return f"Failed to {verb} {LABEL.get(entity, entity)}: "


# --------------------------------------------------------------------------- entry points


def apply(model: AccountModel, op: Mapping[str, Any], passwd: Passwd) -> Applied:
    """Perform one add/modify/delete operation on ``model``; see the module docstring."""
    verb = op.get("verb")
    entity = op.get("entity")
    if verb not in ("add", "modify", "delete") or entity not in ENTITIES:
        raise AcctError(safe(f"Invalid operation: {verb} {entity}"))
    work = model.copy()
    try:
        msg = _do(work, str(verb), str(entity), op)
        target = op.get("name") or (op.get("where") or {}).get("name")
        first_qos = str(target) if entity == "qos" and target in work.qos else None
        first_account = str(target) if entity == "account" and target in work.accounts else None
        work.validate(first_qos, first_account)
        _check_uids(work, model, passwd)
    except AcctError as e:
        raise AcctError(safe(_fail_prefix(str(verb), str(entity)) + str(e))) from None
    changes = diff(model, work)
    model.swap_in(work)
    return Applied(msg, changes)


def ensure_user(
    model: AccountModel, passwd: Passwd, name: str, uid: int | None, account: str = "default"
) -> tuple[User, list[Change]]:
    """User ``name``, created (in ``account``) if absent, and the rows written.

    If ``account`` does not exist it is created allowing every existing QoS
    (DefaultQos ``normal`` if present, else the first). An existing user
    without a uid gets ``uid``. A uid passwd does not give ``name``, or one
    another record holds, is never bound.
    """
    if uid is not None and uid_mismatch(passwd, name, uid) is not None:
        uid = None  # never bind a name to a uid passwd does not give it
    u = model.users.get(name)
    if u is not None:
        if u.uid is None and uid is not None and model.uid_holder(uid) is None:
            u.uid = uid
            return u, [("user", name, u.to_dict())]
        return u, []
    check_name("user", name)
    check_name("account", account)
    changes: list[Change] = []
    if account not in model.accounts:
        allowed = list(model.qos)
        default = "normal" if "normal" in allowed else (allowed[0] if allowed else None)
        a = Account(account, allowed_qos=allowed, default_qos=default)
        model.accounts[account] = a
        changes.append(("account", account, a.to_dict()))
    if uid is not None and model.uid_holder(uid) is not None:
        uid = None  # an old record holds it: uids stay unique
    u = User(name, uid=uid, accounts=[account], default_account=account)
    model.users[name] = u
    changes.append(("user", name, u.to_dict()))
    return u, changes


def _check_uids(work: AccountModel, before: AccountModel, passwd: Passwd) -> None:
    """Every record whose uid is new or changed carries passwd's uid for its name."""
    for u in work.users.values():
        old = before.users.get(u.name)
        if u.uid is None or (old is not None and old.uid == u.uid):
            continue
        why = uid_mismatch(passwd, u.name, u.uid)
        if why is not None:
            raise AcctError(why)


def _do(m: AccountModel, verb: str, entity: str, op: Mapping[str, Any]) -> str:
    sets = _set_items(op.get("set") or [])
    if verb == "add":
        name = target_name(op)
        add = {"qos": _add_qos, "account": _add_account, "user": _add_user}[entity]
        add(m, str(name) if name is not None else "", sets)
        return ADD_OK[entity]
    if verb == "modify":
        where = dict(op.get("where") or {})
        name = target_name(op)
        if not name:
            raise AcctError("a target is required: where Name=NAME")
        if not sets:
            raise AcctError("nothing to modify: use set KEY=VALUE")
        if entity == "qos":
            _modify_qos(m, str(name), sets)
        elif entity == "account":
            _modify_account(m, str(name), sets)
        else:
            acct = where.get("account")
            _modify_user(m, str(name), None if acct is None else str(acct), sets)
        return MODIFY_OK
    name = target_name(op)
    if not name:
        raise AcctError("a name is required")
    if entity == "qos":
        _delete_qos(m, str(name))
    elif entity == "account":
        _delete_account(m, str(name))
    else:
        acct = op.get("where", {}).get("account") if op.get("where") else None
        _delete_user(m, str(name), None if acct is None else str(acct))
    return DEL_OK[entity]


# --------------------------------------------------------------------------- QoS


def _add_qos(m: AccountModel, name: str, sets: Sets) -> None:
    check_name("QoS", name)
    if name in m.qos:
        raise AcctError(f"QoS {name} already exists")
    q = Qos(name)
    m.qos[name] = q
    for key, op, value in sets:
        _set_qos(q, key, _only_assign(key, op), value)


def _modify_qos(m: AccountModel, name: str, sets: Sets) -> None:
    q = m.get_qos(name)
    for key, op, value in sets:
        _set_qos(q, key, op, value)


_QOS_ATTR = {
    "description": "description",
    "priority": "priority",
    "preemptmode": "preempt_mode",
    "maxjobsperuser": "max_jobs_per_user",
    "maxsubmitjobsperuser": "max_submit_jobs_per_user",
    "maxtimelimitperjob": "max_time_limit_per_job",
    "gracetime": "grace_time",
    "preemptexempttime": "preempt_exempt_time",
}


def _set_qos(q: Qos, key: str, op: str, value: Any) -> None:
    spec = spec_of("qos", key)
    if spec.key == "preempt":
        q.preempt = apply_list(q.preempt, op, names(spec, value))
        return
    _scalar_op(spec, op)
    setattr(q, _QOS_ATTR[spec.key], scalar(spec, value))


def _delete_qos(m: AccountModel, name: str) -> None:
    m.get_qos(name)
    for a in m.accounts.values():
        if name in a.allowed_qos or a.default_qos == name:
            raise AcctError(f"QoS {name} is used by account {a.name}")
    for q in m.qos.values():
        if q.name != name and name in q.preempt:
            raise AcctError(f"QoS {name} is in the Preempt list of QoS {q.name}")
    del m.qos[name]


# --------------------------------------------------------------------------- accounts


def _add_account(m: AccountModel, name: str, sets: Sets) -> None:
    check_name("account", name)
    if name in m.accounts:
        raise AcctError(f"Account {name} already exists")
    a = Account(name)
    m.accounts[name] = a
    keys = set()
    for key, op, value in sets:
        keys.add(_set_account(a, key, _only_assign(key, op), value))
    if "allowedqos" not in keys:
        # inherit from the parent; a top-level account gets "normal" (like Slurm)
        parent = m.accounts.get(a.parent) if a.parent else None
        if parent is not None:
            a.allowed_qos = list(parent.allowed_qos)
            if "defaultqos" not in keys:
                a.default_qos = parent.default_qos
        elif "normal" in m.qos:
            a.allowed_qos = ["normal"]
        if "defaultqos" in keys and a.default_qos and a.default_qos not in a.allowed_qos:
            a.allowed_qos.append(a.default_qos)
    if a.default_qos is None and a.allowed_qos and "defaultqos" not in keys:
        a.default_qos = a.allowed_qos[0]


def _modify_account(m: AccountModel, name: str, sets: Sets) -> None:
    a = m.get_account(name)
    keys = set()
    for key, op, value in sets:
        keys.add(_set_account(a, key, op, value))
    if a.default_qos is not None and a.default_qos not in a.allowed_qos:
        if "defaultqos" not in keys:  # the default was removed: fall back
            a.default_qos = a.allowed_qos[0] if a.allowed_qos else None
    elif a.default_qos is None and a.allowed_qos and "defaultqos" not in keys:
        a.default_qos = a.allowed_qos[0]


def _set_account(a: Account, key: str, op: str, value: Any) -> str:
    spec = spec_of("account", key)
    if spec.key == "allowedqos":
        a.allowed_qos = apply_list(a.allowed_qos, op, names(spec, value))
    elif spec.key == "allowedpartition":
        a.allowed_partitions = apply_list(a.allowed_partitions, op, names(spec, value))
    else:
        _scalar_op(spec, op)
        v = scalar(spec, value)
        if spec.key == "description":
            a.description = v
        elif spec.key == "parent":
            a.parent = v
        elif spec.key == "defaultqos":
            a.default_qos = v
    return spec.key


def _delete_account(m: AccountModel, name: str) -> None:
    m.get_account(name)
    kids = m.children(name)
    if kids:
        raise AcctError(f"Account {name} has child accounts: {','.join(sorted(kids))}")
    members = sorted(u.name for u in m.users.values() if name in u.accounts)
    if members:
        raise AcctError(f"Account {name} has users: {','.join(members)}")
    del m.accounts[name]
    for u in m.users.values():
        if name in u.coordinator_of:
            u.coordinator_of.remove(name)


# --------------------------------------------------------------------------- users


def _add_user(m: AccountModel, name: str, sets: Sets) -> None:
    check_name("user", name)
    values: dict[str, Any] = {}
    for key, op, value in sets:
        spec = spec_of("user", key)
        _only_assign(key, op)
        values[spec.key] = names(spec, value) if spec.is_list else scalar(spec, value)
    accounts: list[str] = values.get("account") or []
    if not accounts:
        raise AcctError("Account=ACCOUNT is required to add a user")
    for acc in accounts:
        m.get_account(acc)
    u = m.users.get(name)
    if u is None:
        u = User(name)
        m.users[name] = u
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


def _modify_user(m: AccountModel, name: str, account: str | None, sets: Sets) -> None:
    u = m.get_user(name)
    if account is not None:
        m.get_account(account)
        if account not in u.accounts:
            raise AcctError(f"User {name} is not a member of account {account}")
    for key, op, value in sets:
        spec = spec_of("user", key)
        if spec.key == "account":
            items = names(spec, value)
            for acc in items:
                if op != "-=":
                    m.get_account(acc)
            u.accounts = apply_list(u.accounts, op, items)
            u.coordinator_of = [c for c in u.coordinator_of if c in u.accounts]
            if u.default_account not in u.accounts:
                u.default_account = u.accounts[0] if u.accounts else None
            continue
        _scalar_op(spec, op)
        v = scalar(spec, value)
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


def _delete_user(m: AccountModel, name: str, account: str | None) -> None:
    u = m.get_user(name)
    if account is not None:
        m.get_account(account)
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
    del m.users[name]


# --------------------------------------------------------------------------- op parts


def _set_items(raw: Any) -> Sets:
    out: Sets = []
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


def _scalar_op(spec: FieldSpec, op: str) -> None:
    if op != "=":
        raise AcctError(f'Operator "{op}" is not valid for {spec.label}: use =')


def _only_assign(key: str, op: str) -> str:
    if op != "=":
        raise AcctError(f'Operator "{op}" is only valid in modify (field {key})')
    return op
