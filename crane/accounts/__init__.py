"""Accounting: QoS, accounts, users, and the operations ``cacctmgr`` performs.

- :mod:`.model`: the records and the tables holding them (pure data, lookups,
  invariants);
- :mod:`.fields`: each record's fields and how one value is read;
- :mod:`.passwd`: the system's user table and the uid rule;
- :mod:`.ops`: add/modify/delete (``apply``) and AutoCreateUsers (``ensure_user``),
  each returning the rows that changed;
- :mod:`.submit_rules`: which account/QoS a submission gets, and QoS limits;
- :mod:`.db`: :class:`AccountDB`, the model plus passwd plus operations, as the
  controller holds it.

The names below are the package's public surface; import them from here.
"""

from crane.accounts.db import AccountDB
from crane.accounts.fields import (
    ADMIN_LEVELS,
    ALIASES,
    FIELDS,
    MAX_UID,
    OPS,
    PREEMPT_MODES,
    UNLIMITED_WORDS,
    FieldSpec,
    canonical_key,
    format_duration,
    is_list_field,
    parse_duration,
)
from crane.accounts.model import (
    ENTITIES,
    Account,
    AccountModel,
    AcctError,
    Change,
    Entity,
    Qos,
    User,
)
from crane.accounts.ops import MODIFY_OK, Applied, target_name
from crane.accounts.passwd import SYSTEM_PASSWD, Passwd, PasswdTable, SystemPasswd, uid_mismatch

__all__ = [
    "ADMIN_LEVELS",
    "ALIASES",
    "ENTITIES",
    "FIELDS",
    "MAX_UID",
    "MODIFY_OK",
    "OPS",
    "PREEMPT_MODES",
    "SYSTEM_PASSWD",
    "UNLIMITED_WORDS",
    "Account",
    "AccountDB",
    "AccountModel",
    "AcctError",
    "Applied",
    "Change",
    "Entity",
    "FieldSpec",
    "Passwd",
    "PasswdTable",
    "Qos",
    "SystemPasswd",
    "User",
    "canonical_key",
    "format_duration",
    "is_list_field",
    "parse_duration",
    "target_name",
    "uid_mismatch",
]
