"""What a submission may use: its account and QoS, and its QoS's per-user limits.

Pure reads of an :class:`AccountModel`; errors are :class:`AcctError` with the
bare reason (no ``Failed to`` prefix).
"""

from __future__ import annotations

from crane.accounts.fields import format_duration
from crane.accounts.model import AccountModel, AcctError
from crane.core.states import PendingReason


def check_submit(
    model: AccountModel, user: str, account: str | None, qos: str | None, partition: str | None
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
    """
    u = model.get_user(user)
    if account is None:
        if u.default_account and u.default_account in u.accounts:
            account = u.default_account
        elif len(u.accounts) == 1:
            account = u.accounts[0]
        elif not u.accounts:
            raise AcctError(f"User {user} has no account")
        else:
            raise AcctError(f"User {user} has no default account: use -A ACCOUNT")
    acct = model.get_account(account)
    if account not in u.accounts:
        raise AcctError(f"User {user} is not a member of account {account}")
    if qos is None:
        if acct.default_qos is not None:
            qos = acct.default_qos
        elif acct.allowed_qos:
            qos = acct.allowed_qos[0]
        elif not model.qos:
            qos = None
        else:
            raise AcctError(f"Account {account} has no allowed QoS")
    if qos is not None:
        model.get_qos(qos)
        if qos not in acct.allowed_qos:
            raise AcctError(f"QoS {qos} is not allowed for account {account}")
    if partition is not None:
        for name in [account, *model.ancestors(account)]:
            a = model.accounts.get(name)
            if a and a.allowed_partitions and partition not in a.allowed_partitions:
                raise AcctError(f"Partition {partition} is not allowed for account {account}")
    return account, qos


def qos_limits_check(
    model: AccountModel,
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
    Raises AcctError when MaxSubmitJobsPerUser, MaxJobsPerUser or
    MaxTimeLimitPerJob would be exceeded. At submit time a caller that lets
    jobs wait for MaxJobsPerUser passes ``user_active_jobs=0`` and uses
    :func:`max_jobs_reason` in the scheduler instead.
    """
    if qos is None:
        return
    q = model.get_qos(qos)
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


def max_jobs_reason(model: AccountModel, qos: str | None, user_running_jobs: int) -> str | None:
    """Pending reason if starting one more job would break MaxJobsPerUser, else None."""
    if qos is None or qos not in model.qos:
        return None
    lim = model.qos[qos].max_jobs_per_user
    if lim is not None and user_running_jobs >= lim:
        return PendingReason.QOS_MAX_JOBS_PER_USER
    return None
