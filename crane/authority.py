"""Who may do what, and under which limits: the controller's view of the
accounts database (crane.accounts) for requests and the scheduler.

One object holds the database (replaced as a whole at recovery); the request
handlers ask it for the caller's identity and rights over a job, the submit
rules and QoS priorities; the scheduler asks it for its policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from crane.accounts import AccountDB, AcctError
from crane.actors.scheduler import policy_of
from crane.config import Config
from crane.core.job import Job
from crane.core.scheduling import Policy
from crane.core.states import AdminLevel
from crane.permissions import Caller, caller_from, may_act_on_job
from crane.requests.envelope import user_name
from crane.store import Store


class Authority:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.acct = AccountDB.fresh()

    def recover(self, rows: list[tuple[str, str, Any]]) -> None:
        """The database as saved, or (first start) save the fresh one."""
        if rows:
            self.acct = AccountDB.from_rows((k, d) for k, _n, d in rows)
            return
        for kind, saved in self.acct.to_dict().items():
            for row in saved:
                self.store.put_entity(kind, row["name"], row)

    def caller(self, uid: int) -> Caller:
        return caller_from(self.acct, uid, user_name(uid))

    def may_act(self, caller: Caller, job: Job) -> bool:
        owner = self.acct.users.get(job.user)
        level = owner.admin_level if owner is not None else AdminLevel.NONE
        if job.uid == 0:
            level = AdminLevel.ADMIN
        ancestors = self.acct.ancestors(job.account) if job.account in self.acct.accounts else []
        return may_act_on_job(caller, job.uid, level, job.account, ancestors)

    def hold_rank(self, caller: Caller, job: Job) -> int:
        """The caller's rank for holds on ``job``: 2 root, an admin or an
        operator over the job; 1 a coordinator over it; 0 its owner as such."""
        if caller.uid == 0 or caller.admin_level == AdminLevel.ADMIN:
            return 2
        as_other = dataclasses.replace(caller, uid=-1)  # rights not merely from owning it
        if caller.admin_level == AdminLevel.OPERATOR and self.may_act(as_other, job):
            return 2
        if self.may_act(dataclasses.replace(as_other, admin_level=AdminLevel.NONE), job):
            return 1
        return 0

    def qos_priority(self, qos: str | None) -> int:
        q = self.acct.qos.get(qos or "")
        return q.priority if q is not None else 0

    def check_submit(self, caller: Caller, spec: dict[str, Any], part: str, repeat: int,
                     active: Iterable[Job]) -> tuple[str, str | None]:  # fmt: skip
        """The job's account and QoS, or ValueError with the line to show;
        ``active``: the jobs in the system (for the QoS's per-user limits)."""
        db = self.acct
        try:
            if caller.name not in db.users and (self.cfg.auto_create_users or caller.uid == 0):
                db.ensure_user(caller.name, caller.uid)
                for kind, name, data in db.last_changes:
                    self.store.put_entity(kind, name, data)
            if caller.name not in db.users:
                raise AcctError(f"User {caller.name} is not registered (ask an admin: cacctmgr add user)")
            account, qos = db.check_submit(caller.name, spec.get("account"), spec.get("qos"), part)
            if qos is not None:
                mine = sum(1 for j in active if j.uid == caller.uid and j.qos == qos)
                for i in range(repeat):
                    db.qos_limits_check(qos, 0, mine + i, spec.get("time_limit"))
        except AcctError as e:
            raise ValueError(str(e)) from None
        return account, qos

    def default_time_limit(self, qos: str | None) -> int | None:
        """A job submitted without a time limit gets its QoS's
        MaxTimeLimitPerJob (the QoS limit is both the default and the cap)."""
        q = self.acct.qos.get(qos or "")
        return q.max_time_limit_per_job if q is not None else None

    def policy(self) -> Policy:
        return policy_of(self.cfg, self.acct.qos)
