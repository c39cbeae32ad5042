""":class:`AccountDB`: the model the controller holds, with its passwd and operations.

A thin facade: the tables and lookups are :class:`AccountModel`'s, the changes
:mod:`.ops`', the submission rules :mod:`.submit_rules`'. It adds the system's
passwd and ``last_changes``: after a successful ``apply``/``ensure_user``, the
``(entity, name, row_or_None)`` rows to write (None = delete the row).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from crane.accounts import ops, submit_rules
from crane.accounts.model import Account, AccountModel, Change, Qos, User
from crane.accounts.passwd import SYSTEM_PASSWD, Passwd, user_by_uid


class AccountDB(AccountModel):
    """In-memory accounting database. All mutations go through ``apply``/``ensure_user``."""

    def __init__(
        self,
        qos: Mapping[str, Qos] | None = None,
        accounts: Mapping[str, Account] | None = None,
        users: Mapping[str, User] | None = None,
        passwd: Passwd | None = None,
    ) -> None:
        super().__init__(qos, accounts, users)
        self.passwd: Passwd = passwd if passwd is not None else SYSTEM_PASSWD
        self.last_changes: list[Change] = []

    # ---- construction

    @classmethod
    def of(cls, model: AccountModel, passwd: Passwd | None = None) -> AccountDB:
        return cls(model.qos, model.accounts, model.users, passwd)

    @classmethod
    def fresh(cls, passwd: Passwd | None = None) -> AccountDB:
        """QoS ``normal``; account ``default`` (allows ``normal``); user ``root`` (uid 0, admin)."""
        return cls.of(AccountModel.fresh(), passwd)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Iterable[Mapping[str, Any]]], passwd: Passwd | None = None
    ) -> AccountDB:
        return cls.of(AccountModel.from_dict(d), passwd)

    @classmethod
    def from_rows(
        cls, entity_rows: Iterable[tuple[str, Mapping[str, Any]]], passwd: Passwd | None = None
    ) -> AccountDB:
        """Build from ``(entity, row_dict)`` pairs as stored one per row."""
        return cls.of(AccountModel.from_rows(entity_rows), passwd)

    def copy(self) -> AccountDB:
        return AccountDB.of(AccountModel.copy(self), self.passwd)

    # ---- identity

    def user_by_uid(self, uid: int) -> User | None:
        """See :func:`crane.accounts.passwd.user_by_uid`."""
        return user_by_uid(self, self.passwd, uid)

    # ---- submission checks (see :mod:`crane.accounts.submit_rules`)

    def check_submit(
        self, user: str, account: str | None, qos: str | None, partition: str | None
    ) -> tuple[str, str | None]:
        return submit_rules.check_submit(self, user, account, qos, partition)

    def qos_limits_check(
        self,
        qos: str | None,
        user_active_jobs: int,
        user_submitted_jobs: int,
        time_limit: int | None,
    ) -> None:
        submit_rules.qos_limits_check(self, qos, user_active_jobs, user_submitted_jobs, time_limit)

    def max_jobs_reason(self, qos: str | None, user_running_jobs: int) -> str | None:
        return submit_rules.max_jobs_reason(self, qos, user_running_jobs)

    # ---- operations (see :mod:`crane.accounts.ops`)

    def ensure_user(self, name: str, uid: int | None, account: str = "default") -> User:
        """Return user ``name``, creating it (in ``account``) if absent; see :func:`ops.ensure_user`."""
        self.last_changes = []
        user, self.last_changes = ops.ensure_user(self, self.passwd, name, uid, account)
        return user

    def apply(self, op: Mapping[str, Any]) -> str:
        """Perform one add/modify/delete operation; see :mod:`crane.accounts.ops`."""
        done = ops.apply(self, op, self.passwd)
        self.last_changes = done.changes
        return done.message
