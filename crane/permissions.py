"""Who may do what. Pure functions over an :class:`~crane.accounts.AccountDB`.

Jobs (cancel, signal, hold, ...): the owner; an admin (any job); an operator
(any job except one owned by an admin, unless the operator owns it); a
coordinator of the job's account or of any ancestor account.

``cacctmgr``: anyone may ``show``. Only operators and admins change QoS and
accounts. Coordinators may add/modify/delete users of the accounts they
coordinate (and their descendants), but may not grant a Level, make
coordinators, or touch operator/admin users. Only an admin may grant
``Level=operator``/``Level=admin`` or change an operator's/admin's level or
entry at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crane.accounts import AccountDB, AcctError, canonical_key

PRIVILEGED = ("operator", "admin")


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    name: str
    admin_level: str = "none"  # none|operator|admin
    coordinator_of: frozenset[str] = frozenset()


def caller_from(db: AccountDB, uid: int, name: str) -> Caller:
    """The caller as the kernel identified them (``uid``, and ``name`` from passwd).

    uid 0 is always admin. The user record is found by name when its uid is
    unset or equal, else by uid; an unknown caller is a plain user.
    """
    u = db.users.get(name)
    if u is not None and u.uid is not None and u.uid != uid:
        u = None
    if u is None:
        u = db.user_by_uid(uid)
    level = u.admin_level if u is not None else "none"
    coord = frozenset(u.coordinator_of) if u is not None else frozenset()
    if uid == 0:
        level = "admin"
    return Caller(uid=uid, name=name, admin_level=level, coordinator_of=coord)


def _coordinates(caller: Caller, account: str | None, ancestors: Sequence[str]) -> bool:
    if account is None or not caller.coordinator_of:
        return False
    return account in caller.coordinator_of or any(a in caller.coordinator_of for a in ancestors)


def may_act_on_job(
    caller: Caller,
    owner_uid: int,
    owner_level: str,
    account: str | None,
    ancestors_of_account: Sequence[str],
) -> bool:
    """May ``caller`` cancel/signal/hold/... a job owned by ``owner_uid`` in ``account``?"""
    if caller.uid == owner_uid:
        return True
    if caller.admin_level == "admin":
        return True
    if caller.admin_level == "operator" and owner_level != "admin" and owner_uid != 0:
        return True
    return _coordinates(caller, account, ancestors_of_account)


def _verb_and_sets(op: Mapping[str, Any] | str) -> tuple[str, list[Any]]:
    if isinstance(op, str):
        return op, []
    return str(op.get("verb", "")), list(op.get("set") or [])


def _user_grants(sets: Sequence[Any]) -> tuple[str | None, bool]:
    """(level being set or None, whether Coordinator=true is being set)."""
    level: str | None = None
    coord = False
    for item in sets:
        try:
            key, _, value = item
        except (TypeError, ValueError):
            continue
        canon = canonical_key("user", str(key))
        if canon == "level":
            level = str(value).strip().lower()
        elif canon == "coordinator" and str(value).strip().lower() in ("true", "yes", "1", "on"):
            coord = True
    return level, coord


def may_manage(
    caller: Caller,
    entity: str,
    op: Mapping[str, Any] | str,
    target_account: str | None = None,
    target_ancestors: Sequence[str] = (),
    target_level: str = "none",
) -> bool:
    """May ``caller`` perform ``op`` (an op dict, or just its verb) on ``entity``?

    ``target_account``/``target_ancestors``: for user operations, the account
    the user is being added to/modified in/removed from and its ancestors.
    ``target_level``: the current admin level of the target user (if any).
    """
    verb, sets = _verb_and_sets(op)
    if verb == "show":
        return True
    if caller.admin_level == "admin":
        return True
    if entity in ("qos", "account"):
        return caller.admin_level == "operator"
    if entity != "user":
        return False
    level, coord = _user_grants(sets)
    if target_level in PRIVILEGED or (level is not None and level != "none"):
        return False  # only an admin grants/changes privileged levels
    if caller.admin_level == "operator":
        return True
    if coord:
        return False
    return _coordinates(caller, target_account, target_ancestors)


def authorize(db: AccountDB, caller: Caller, op: Mapping[str, Any]) -> bool:
    """``may_manage`` with the targets worked out from ``db`` (every account involved
    in a user operation must be within a coordinator's reach)."""
    entity = str(op.get("entity", ""))
    verb = str(op.get("verb", ""))
    if verb == "show" or caller.admin_level == "admin":
        return True
    if entity != "user":
        return may_manage(caller, entity, op)
    where = op.get("where") or {}
    name = op.get("name") or where.get("name")
    user = db.users.get(str(name)) if name else None
    level = user.admin_level if user is not None else "none"
    if user is not None and user.uid == 0:
        level = "admin"
    involved: list[str] = []
    if where.get("account"):
        involved.append(str(where["account"]))
    elif verb != "add" and user is not None:
        involved.extend(user.accounts)
    for item in op.get("set") or []:
        try:
            key, _, value = item
        except (TypeError, ValueError):
            continue
        canon = canonical_key("user", str(key))
        if canon == "account":
            vals = value if isinstance(value, list) else str(value).split(",")
            involved.extend(str(v).strip() for v in vals if str(v).strip())
        elif canon == "defaultaccount" and str(value).strip():
            involved.append(str(value).strip())
    if not involved:
        return caller.admin_level == "operator" and may_manage(caller, entity, op, None, (), level)
    for acc in dict.fromkeys(involved):
        try:
            anc = db.ancestors(acc)
        except AcctError:
            anc = []
        if not may_manage(caller, entity, op, acc, anc, level):
            return False
    return True
