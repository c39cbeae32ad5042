"""Who may do what. Pure functions over an :class:`~crane.accounts.AccountDB`.

Jobs (cancel, signal, hold, ...): the owner; an admin (any job); an operator
(any job except one owned by an admin, unless the operator owns it); a
coordinator of the job's account or of any ancestor account.

``cacctmgr``: anyone may ``show``. Only operators and admins change QoS and
accounts. Only an admin sets a user's ``Uid`` or grants ``Level=operator`` /
``Level=admin``, and only an admin touches an operator's or admin's record.
Operators manage every other user. A coordinator manages *membership* in the
accounts it coordinates (and their descendants): it may add a user to them and
remove a user from them. Anything about the user as a whole (DefaultAccount,
deleting the record) needs every account the user is in to be within its
reach; it never sets Level or Coordinator, never removes anyone's coordinator
rights, and never sets a uid. The caller is resolved strictly through passwd
(:meth:`~crane.accounts.AccountDB.user_by_uid`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crane.accounts import AccountDB, AcctError, canonical_key, target_name
from crane.core.states import AdminLevel

PRIVILEGED = (AdminLevel.OPERATOR, AdminLevel.ADMIN)


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    name: str
    admin_level: str = AdminLevel.NONE  # none|operator|admin
    coordinator_of: frozenset[str] = frozenset()


def caller_from(db: AccountDB, uid: int, name: str) -> Caller:
    """The caller as the kernel identified them (``uid``, and ``name`` from passwd).

    uid 0 is always admin. The user record is the one passwd's name for
    ``uid`` names (and only if that is ``name`` and the record's own uid, if
    set, is ``uid``); never one found through its Uid field. Anyone else is a
    plain user.
    """
    u = db.user_by_uid(uid)
    if u is not None and u.name != name:
        u = None
    level = u.admin_level if u is not None else AdminLevel.NONE
    coord = frozenset(u.coordinator_of) if u is not None else frozenset()
    if uid == 0:
        level = AdminLevel.ADMIN
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
    if caller.admin_level == AdminLevel.ADMIN:
        return True
    if caller.admin_level == AdminLevel.OPERATOR and owner_level != AdminLevel.ADMIN and owner_uid != 0:
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
    target_level: str = AdminLevel.NONE,
) -> bool:
    """May ``caller`` perform ``op`` (an op dict, or just its verb) on ``entity``?

    ``target_account``/``target_ancestors``: for user operations, the account
    the user is being added to/modified in/removed from and its ancestors.
    ``target_level``: the current admin level of the target user (if any).
    """
    verb, sets = _verb_and_sets(op)
    if verb == "show":
        return True
    if caller.admin_level == AdminLevel.ADMIN:
        return True
    if entity in ("qos", "account"):
        return caller.admin_level == AdminLevel.OPERATOR
    if entity != "user":
        return False
    level, coord = _user_grants(sets)
    if target_level in PRIVILEGED or (level is not None and level != AdminLevel.NONE):
        return False  # only an admin grants/changes privileged levels
    if "uid" in _user_keys(sets):
        return False  # only an admin binds a record to a uid
    if caller.admin_level == AdminLevel.OPERATOR:
        return True
    if coord:
        return False
    return _coordinates(caller, target_account, target_ancestors)


def authorize(db: AccountDB, caller: Caller, op: Mapping[str, Any]) -> bool:
    """May ``caller`` perform ``op`` (an op dict) on ``db``? See :func:`denial`."""
    return denial(db, caller, op) is None


DENIED = "Permission denied"


def denial(db: AccountDB, caller: Caller, op: Mapping[str, Any]) -> str | None:
    """None if ``caller`` may perform ``op``, else the one-line reason
    (``Permission denied`` or ``Permission denied: ...``)."""
    entity = str(op.get("entity", ""))
    verb = str(op.get("verb", ""))
    if verb == "show" or caller.admin_level == AdminLevel.ADMIN:
        return None
    if entity != "user":
        return None if may_manage(caller, entity, op) else DENIED
    try:
        return _user_denial(db, caller, op)
    except (TypeError, ValueError, AttributeError, AcctError):
        return DENIED  # a malformed op is refused, never half-checked


def _user_keys(sets: Sequence[Any]) -> list[str | None]:
    keys: list[str | None] = []
    for item in sets:
        try:
            key, _, _ = item
        except (TypeError, ValueError):
            keys.append(None)
            continue
        keys.append(canonical_key("user", str(key)))
    return keys


def _account_values(value: Any) -> list[str]:
    vals = value if isinstance(value, list | tuple) else str(value).split(",")
    return [str(v).strip() for v in vals if str(v).strip()]


def _user_denial(db: AccountDB, caller: Caller, op: Mapping[str, Any]) -> str | None:
    verb = str(op.get("verb", ""))
    where = op.get("where") or {}
    name = target_name(op)
    target = db.users.get(name) if name else None
    sets = list(op.get("set") or [])
    keys = _user_keys(sets)
    if "uid" in keys:
        return f"{DENIED}: only an admin may set a Uid"
    if target is not None and (
        target.admin_level in PRIVILEGED or target.uid == 0 or target.name == "root"
    ):
        return f"{DENIED}: only an admin may change an operator's or admin's record"
    for key, item in zip(keys, sets, strict=True):
        if key == "level" and str(item[2]).strip().lower() != AdminLevel.NONE:
            return f"{DENIED}: only an admin may grant an operator or admin Level"
    if caller.admin_level == AdminLevel.OPERATOR:
        return None
    if not caller.coordinator_of:
        return DENIED
    if "level" in keys or "coordinator" in keys:
        return f"{DENIED}: only an operator or admin may set Level or Coordinator"
    if any(k not in ("account", "defaultaccount") for k in keys):
        return f"{DENIED}: a coordinator may set only Account and DefaultAccount"
    return _coordinator_denial(db, caller, verb, str(name or ""), target, where, sets)


def _coordinator_denial(
    db: AccountDB,
    caller: Caller,
    verb: str,
    name: str,
    target: Any,
    where: Mapping[str, Any],
    sets: Sequence[Any],
) -> str | None:
    """A coordinator's user operation: membership in accounts within reach;
    anything user-wide needs every account of the user within reach."""

    def reach(acc: str) -> bool:
        try:
            anc = db.ancestors(acc)
        except AcctError:
            return False
        return _coordinates(caller, acc, anc)

    def out_of_reach(accs: Sequence[str]) -> str | None:
        bad = [a for a in dict.fromkeys(accs) if not reach(a)]
        return f"{DENIED}: you do not coordinate account {bad[0]}" if bad else None

    def user_wide() -> str | None:
        if target is None:
            return None
        bad = [a for a in target.accounts if not reach(a)]
        if bad:
            return f"{DENIED}: user {name} is also in account {bad[0]}, which you do not coordinate"
        return None

    def keeps_coordinators(removed: Sequence[str]) -> str | None:
        lost = [a for a in removed if target is not None and a in target.coordinator_of]
        if lost:
            return f"{DENIED}: only an operator or admin may remove a coordinator of {lost[0]}"
        return None

    wacc = where.get("account")
    checks: list[str | None] = []
    if verb == "add":
        added: list[str] = []
        for key, _, value in sets:
            canon = canonical_key("user", str(key))
            if canon == "account":
                added += _account_values(value)
            elif canon == "defaultaccount":
                checks += [out_of_reach(_account_values(value)), user_wide()]
        if not added:
            return DENIED
        if target is None and db.passwd.uid_of(name) is None:
            # records for names no one has: unbounded, and pre-seeded for a future login
            return f"{DENIED}: {name} is not a user of this system (only an operator or admin adds such a record)"
        checks.insert(0, out_of_reach(added))
    elif target is None:
        return DENIED  # modify/delete of no one: nothing a coordinator reaches
    elif verb == "modify":
        if wacc:
            checks.append(out_of_reach([str(wacc)]))
        for key, sign, value in sets:
            canon = canonical_key("user", str(key))
            vals = _account_values(value)
            if canon == "defaultaccount":
                checks += [out_of_reach(vals), user_wide()]
            elif sign == "+=":
                checks.append(out_of_reach(vals))
            elif sign == "-=":
                checks += [out_of_reach(vals), keeps_coordinators(vals)]
            else:  # Account=: a whole new list
                old = list(target.accounts)
                changed = [a for a in old if a not in vals] + [a for a in vals if a not in old]
                checks += [out_of_reach(changed), keeps_coordinators([a for a in old if a not in vals])]
    elif verb == "delete":
        if wacc:
            checks += [out_of_reach([str(wacc)]), keeps_coordinators([str(wacc)])]
        else:
            checks += [user_wide(), keeps_coordinators(list(target.accounts))]
    else:
        return DENIED
    return next((c for c in checks if c is not None), None)
