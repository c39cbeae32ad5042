"""The system's user table, and the rule binding a record's ``Uid`` to it.

A user record is bound to a system account by its *name*. A record's ``uid``,
when set, must be the one passwd gives that name (or, for a name passwd does
not know, a uid passwd gives to no one); :func:`user_by_uid` resolves a uid
only through passwd's name for it, never through a record's ``Uid`` field.
Who may set a uid at all is :mod:`crane.permissions`' business.
"""

from __future__ import annotations

import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from crane.accounts.model import AccountModel, User


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


def user_by_uid(model: AccountModel, passwd: Passwd, uid: int) -> User | None:
    """The record of the user passwd names for ``uid``, strictly: the record
    named passwd's name for ``uid``, if its own uid is unset or ``uid``.
    Never a record found by its ``Uid`` field alone; None for a uid passwd
    does not know."""
    name = passwd.name_of(uid)
    u = model.users.get(name) if name is not None else None
    if u is None or (u.uid is not None and u.uid != uid):
        return None
    return u
