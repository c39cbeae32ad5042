"""The accounting package piece by piece, no daemons: the model (records, tables,
lookups, invariants), single-value fields, the operations (``ops.apply`` /
``ops.ensure_user`` returning what changed) and the submission rules.

The end-to-end behaviour through ``cacctmgr``'s parser is tests/test_accounts.py.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import msgpack
import pytest

from crane.accounts import AccountDB, ops, submit_rules
from crane.accounts.fields import (
    FIELDS,
    MAX_UID,
    apply_list,
    canonical_key,
    check_name,
    names,
    scalar,
    spec_of,
)
from crane.accounts.model import Account, AccountModel, AcctError, Qos, User, diff, find_cycle
from crane.accounts.passwd import PasswdTable, uid_mismatch, user_by_uid
from crane.core.states import AdminLevel, PendingReason, PreemptMode
from crane.permissions import caller_from, denial

PASSWD = PasswdTable({"root": 0, "alice": 1001, "bob": 1002, "carol": 1003})


def op(
    verb: str, entity: str, name: str | None = None, *sets: tuple[str, str, Any], **where: str
) -> dict[str, Any]:
    """An op dict as the parser builds it (modify names its target in ``where``)."""
    w = dict(where)
    if verb == "modify" and name is not None:
        w["name"] = name
        name = None
    return {
        "verb": verb,
        "entity": entity,
        "name": name,
        "where": w,
        "set": [list(s) for s in sets],
    }


def apply(m: AccountModel, o: dict[str, Any]) -> ops.Applied:
    return ops.apply(m, o, PASSWD)


def refused(m: AccountModel, o: dict[str, Any]) -> str:
    """The error line of a refused op; the model must be left exactly as it was."""
    before = m.to_dict()
    with pytest.raises(AcctError) as ei:
        apply(m, o)
    assert m.to_dict() == before
    return str(ei.value)


@pytest.fixture
def m() -> AccountModel:
    return AccountModel.fresh()


def tree(m: AccountModel) -> AccountModel:
    """root account T with child C and grandchild G; alice in G, bob in T."""
    apply(m, op("add", "account", "T"))
    apply(m, op("add", "account", "C", ("parent", "=", "T")))
    apply(m, op("add", "account", "G", ("parent", "=", "C")))
    apply(m, op("add", "user", "alice", ("account", "=", ["G"])))
    apply(m, op("add", "user", "bob", ("account", "=", ["T"])))
    return m


# --------------------------------------------------------------------------- the model alone


def test_model_module_imports_no_operations_and_no_os() -> None:
    import crane.accounts.model as model

    tree_ = ast.parse(Path(model.__file__).read_text())
    mods = {n.module for n in ast.walk(tree_) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name for n in ast.walk(tree_) if isinstance(n, ast.Import) for a in n.names}
    assert all(x is not None for x in mods)
    crane_mods = {x for x in mods if x and x.startswith("crane")}
    assert crane_mods <= {"crane.core.states"}, crane_mods
    assert not mods & {"os", "pwd", "sqlite3", "asyncio", "zmq"}


def test_fresh_model(m: AccountModel) -> None:
    assert list(m.qos) == ["normal"]
    assert m.accounts["default"].allowed_qos == ["normal"]
    assert m.accounts["default"].default_qos == "normal"
    root = m.users["root"]
    assert (root.uid, root.accounts, root.admin_level) == (0, ["default"], AdminLevel.ADMIN)
    m.validate()


def test_rows_round_trip_as_plain_strings(m: AccountModel) -> None:
    tree(m)
    apply(m, op("modify", "qos", "normal", ("preemptmode", "=", "suspend")))
    rows = [(e, r) for e, rs in m.to_dict().items() for r in rs]
    again = AccountModel.from_rows(rows)
    assert again.to_dict() == m.to_dict()
    # through the wire/store encoding the enums are plain strings
    wire = msgpack.unpackb(msgpack.packb(m.to_dict()))
    assert wire == m.to_dict()
    assert type(wire["user"][0]["admin_level"]) is str
    assert m.qos["normal"].preempt_mode == PreemptMode.SUSPEND
    assert m.copy().to_dict() == m.to_dict() and m.copy().users is not m.users


def test_from_dict_defaults() -> None:
    m = AccountModel.from_dict({"user": [{"name": "x"}], "qos": [{"name": "q"}]})
    assert m.users["x"] == User("x")
    assert m.users["x"].admin_level == AdminLevel.NONE
    assert m.qos["q"] == Qos("q")
    assert m.qos["q"].effective_preempt_mode("requeue") == PreemptMode.REQUEUE


def test_lookups(m: AccountModel) -> None:
    tree(m)
    assert m.get_account("G").parent == "C"
    for get, what in ((m.get_qos, "QoS"), (m.get_account, "account"), (m.get_user, "user")):
        with pytest.raises(AcctError, match=f"Unknown {what}: nope"):
            get("nope")
    assert m.ancestors("G") == ["C", "T"]
    assert m.ancestors("T") == []
    assert sorted(m.children("T")) == ["C"]
    assert m.uid_holder(0) == "root" and m.uid_holder(5) is None
    assert [r["name"] for r in m.show("account")] == ["C", "default", "G", "T"]
    assert [r["name"] for r in m.show("user", ["bob", "alice"])] == ["bob", "alice"]
    with pytest.raises(AcctError, match="Unknown user: zed"):
        m.show("user", ["zed"])
    with pytest.raises(AcctError, match="Unknown entity"):
        m.show("cluster")


def test_ancestors_stop_on_a_cycle_in_a_stored_database() -> None:
    m = AccountModel(accounts={"a": Account("a", parent="b"), "b": Account("b", parent="a")})
    assert m.ancestors("a") == ["b"]
    with pytest.raises(AcctError, match="Parent cycle: a -> b -> a"):
        m.validate()


@pytest.mark.parametrize(
    ("graph", "order", "cycle"),
    [
        ({"a": ["b"], "b": []}, ["a", "b"], None),
        ({"a": ["a"]}, ["a"], ["a", "a"]),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["b", "a", "c"], ["b", "c", "a", "b"]),
        ({"a": ["x"]}, ["a"], None),  # an edge out of the graph is not followed
    ],
)
def test_find_cycle(graph: dict[str, list[str]], order: list[str], cycle: list[str] | None) -> None:
    assert find_cycle(graph, order) == cycle


def test_invariants(m: AccountModel) -> None:
    m.qos["hi"] = Qos("hi", preempt=["hi"])
    with pytest.raises(AcctError, match="QoS hi cannot preempt itself"):
        m.validate()
    m.qos["hi"].preempt = ["ghost"]
    with pytest.raises(AcctError, match="Unknown QoS: ghost"):
        m.validate()
    m.qos["hi"].preempt = ["normal"]
    m.qos["normal"].preempt = ["hi"]
    with pytest.raises(AcctError, match="Preempt cycle: normal -> hi -> normal"):
        m.validate()
    # the entity an operation touched is looked at first
    with pytest.raises(AcctError, match="Preempt cycle: hi -> normal -> hi"):
        m.validate(first_qos="hi")
    m.qos["normal"].preempt = []
    m.validate()
    m.accounts["default"].default_qos = "hi"
    with pytest.raises(
        AcctError, match="DefaultQos hi is not in the AllowedQos of account default"
    ):
        m.validate()
    m.accounts["default"].default_qos = "normal"
    m.accounts["x"] = Account("x", parent="x")
    with pytest.raises(AcctError, match="Account x cannot be its own parent"):
        m.validate()
    del m.accounts["x"]
    m.users["u"] = User("u", uid=0, accounts=["default"], default_account="default")
    with pytest.raises(AcctError, match="Uid 0 is already used by user root"):
        m.validate()
    m.users["u"] = User("u", accounts=["default"], default_account="default", coordinator_of=["T"])
    with pytest.raises(AcctError, match="User u is not a member of account T"):
        m.validate()
    m.users["u"] = User("u", accounts=[], default_account=None)
    with pytest.raises(AcctError, match="User u must belong to at least one account"):
        m.validate()


def test_diff(m: AccountModel) -> None:
    new = m.copy()
    new.qos["hi"] = Qos("hi")
    new.users["root"].admin_level = AdminLevel.OPERATOR
    del new.accounts["default"]
    assert diff(m, new) == [
        ("qos", "hi", Qos("hi").to_dict()),
        ("account", "default", None),
        ("user", "root", new.users["root"].to_dict()),
    ]
    assert diff(m, m.copy()) == []


# --------------------------------------------------------------------------- one value


def test_field_keys() -> None:
    assert canonical_key("qos", "MaxWall") == "maxtimelimitperjob"
    assert canonical_key("account", "QOS") == "allowedqos"
    assert canonical_key("user", "AdminLevel") == "level"
    assert canonical_key("user", "Priority") is None
    with pytest.raises(AcctError, match='Unknown field "Priority" for user'):
        spec_of("user", "Priority")
    assert check_name("user", "a.b@c-d_1") == "a.b@c-d_1"
    for bad in ("", "-x", "a b", "x" * 129, 5):
        with pytest.raises(AcctError, match="Invalid user name"):
            check_name("user", bad)


@pytest.mark.parametrize(
    ("entity", "key", "raw", "value"),
    [
        ("user", "level", " Operator ", AdminLevel.OPERATOR),
        ("qos", "preemptmode", "suspend", PreemptMode.SUSPEND),
        ("qos", "preemptmode", "", None),
        ("qos", "maxjobsperuser", "Unlimited", None),
        ("qos", "maxjobsperuser", "7", 7),
        ("qos", "maxtimelimitperjob", "1-00:00:30", 86430),
        ("qos", "maxtimelimitperjob", "90", 5400),
        ("qos", "gracetime", "-1", None),
        ("user", "coordinator", "yes", True),
        ("user", "coordinator", False, False),
        ("user", "uid", "none", None),
        ("user", "uid", 1001, 1001),
        ("account", "parent", "-", None),
        ("account", "description", "a b", "a b"),
    ],
)
def test_scalar_values(entity: str, key: str, raw: Any, value: Any) -> None:
    got = scalar(FIELDS[entity][key], raw)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("entity", "key", "raw", "message"),
    [
        ("user", "level", "root", 'Invalid value "root" for Level: use none, operator or admin'),
        (
            "qos",
            "preemptmode",
            "kill",
            'Invalid PreemptMode "kill": use OFF, CANCEL, REQUEUE or SUSPEND',
        ),
        ("qos", "priority", "-3", 'Invalid value "-3" for Priority'),
        ("qos", "maxtimelimitperjob", "soon", 'Invalid value "soon" for MaxTimeLimitPerJob: use'),
        ("user", "uid", str(MAX_UID), f": a uid must be below {MAX_UID}"),
        ("user", "coordinator", "maybe", ": use true or false"),
        ("qos", "description", "a\x1bb", "Description"),
    ],
)
def test_scalar_refusals(entity: str, key: str, raw: str, message: str) -> None:
    with pytest.raises(AcctError) as ei:
        scalar(FIELDS[entity][key], raw)
    assert message in str(ei.value)
    assert "\n" not in str(ei.value) and "\x1b" not in str(ei.value)


def test_list_values() -> None:
    spec = FIELDS["account"]["allowedqos"]
    assert names(spec, "a, b,,a") == ["a", "b"]
    assert names(spec, ["b", "a"]) == ["b", "a"]
    assert names(spec, None) == []
    with pytest.raises(AcctError, match='Invalid value "a b" for AllowedQos'):
        names(spec, "a b")
    assert apply_list(["a", "b"], "=", ["c"]) == ["c"]
    assert apply_list(["a", "b"], "+=", ["b", "c"]) == ["a", "b", "c"]
    assert apply_list(["a", "b"], "-=", ["a", "z"]) == ["b"]


# --------------------------------------------------------------------------- operations


def test_apply_returns_message_and_changed_rows(m: AccountModel) -> None:
    done = apply(m, op("add", "qos", "hi", ("priority", "=", "10"), ("preempt", "=", ["normal"])))
    assert done.message == "QoS added successfully."
    assert done.changes == [("qos", "hi", m.qos["hi"].to_dict())]
    assert m.qos["hi"].priority == 10 and m.qos["hi"].preempt == ["normal"]
    done = apply(m, op("modify", "qos", "hi", ("preempt", "-=", ["normal"])))
    assert done.message == "Information was successfully modified."
    assert done.changes == [("qos", "hi", m.qos["hi"].to_dict())]
    done = apply(m, op("delete", "qos", "hi"))
    assert (done.message, done.changes) == ("QoS deleted successfully.", [("qos", "hi", None)])


def test_refusals_carry_the_cli_prefix_and_change_nothing(m: AccountModel) -> None:
    assert refused(m, op("add", "qos", "normal")) == "Failed to add QoS: QoS normal already exists"
    assert refused(m, op("modify", "qos", "ghost", ("priority", "=", "1"))) == (
        "Failed to modify information: Unknown QoS: ghost"
    )
    assert refused(m, op("modify", "qos", "normal")) == (
        "Failed to modify information: nothing to modify: use set KEY=VALUE"
    )
    assert refused(m, op("add", "qos", "q", ("priority", "+=", "1"))) == (
        'Failed to add QoS: Operator "+=" is only valid in modify (field priority)'
    )
    assert refused(m, op("modify", "qos", "normal", ("priority", "+=", "1"))) == (
        'Failed to modify information: Operator "+=" is not valid for Priority: use ='
    )
    assert refused(m, op("delete", "qos", "normal")) == (
        "Failed to delete QoS: QoS normal is used by account default"
    )
    assert refused(m, op("show", "qos")) == "Invalid operation: show qos"
    assert refused(m, {"verb": "add", "entity": "qos", "name": "q", "set": "x"}) == (
        "Failed to add QoS: Invalid operation: set must be a list"
    )


def test_preempt_graph_through_operations(m: AccountModel) -> None:
    apply(m, op("add", "qos", "low"))
    apply(m, op("add", "qos", "mid", ("preempt", "=", ["low"])))
    apply(m, op("add", "qos", "high", ("preempt", "=", ["mid"])))
    assert refused(m, op("modify", "qos", "high", ("preempt", "+=", ["high"]))) == (
        "Failed to modify information: QoS high cannot preempt itself"
    )
    assert refused(m, op("modify", "qos", "low", ("preempt", "=", ["high"]))) == (
        "Failed to modify information: Preempt cycle: low -> high -> mid -> low"
    )
    assert refused(m, op("add", "qos", "x", ("preempt", "=", ["ghost"]))) == (
        "Failed to add QoS: Unknown QoS: ghost"
    )
    assert refused(m, op("delete", "qos", "low")) == (
        "Failed to delete QoS: QoS low is in the Preempt list of QoS mid"
    )
    m.validate()


def test_accounts_inherit_and_fall_back(m: AccountModel) -> None:
    apply(m, op("add", "qos", "hi"))
    apply(
        m,
        op(
            "add",
            "account",
            "T",
            ("allowedqos", "=", ["hi", "normal"]),
            ("defaultqos", "=", "normal"),
        ),
    )
    apply(m, op("add", "account", "C", ("parent", "=", "T")))
    assert (m.accounts["C"].allowed_qos, m.accounts["C"].default_qos) == (
        ["hi", "normal"],
        "normal",
    )
    apply(m, op("add", "account", "top"))
    assert (m.accounts["top"].allowed_qos, m.accounts["top"].default_qos) == (["normal"], "normal")
    apply(m, op("add", "account", "d", ("defaultqos", "=", "hi")))
    assert (m.accounts["d"].allowed_qos, m.accounts["d"].default_qos) == (["normal", "hi"], "hi")
    # removing the default falls back to the first allowed
    apply(m, op("modify", "account", "T", ("allowedqos", "-=", ["normal"])))
    assert m.accounts["T"].default_qos == "hi"
    assert refused(m, op("modify", "account", "T", ("parent", "=", "C"))) == (
        "Failed to modify information: Parent cycle: T -> C -> T"
    )
    assert refused(m, op("delete", "account", "T")) == (
        "Failed to delete account: Account T has child accounts: C"
    )


def test_users_membership_and_coordinators(m: AccountModel) -> None:
    tree(m)
    assert (
        refused(m, op("delete", "account", "G"))
        == "Failed to delete account: Account G has users: alice"
    )
    assert refused(m, op("add", "user", "carol")) == (
        "Failed to add user: Account=ACCOUNT is required to add a user"
    )
    assert refused(m, op("add", "user", "alice", ("account", "=", ["G"]))) == (
        "Failed to add user: User alice is already in account G"
    )
    done = apply(
        m, op("add", "user", "alice", ("account", "=", ["C"]), ("coordinator", "=", "true"))
    )
    assert done.changes == [("user", "alice", m.users["alice"].to_dict())]
    alice = m.users["alice"]
    assert (alice.accounts, alice.default_account, alice.coordinator_of) == (["G", "C"], "G", ["C"])
    apply(m, op("modify", "user", "alice", ("coordinator", "=", "true"), account="G"))
    assert alice is not m.users["alice"]  # the model swapped in the working copy
    assert m.users["alice"].coordinator_of == ["C", "G"]
    # leaving an account drops the coordinator right there, and the default moves
    apply(m, op("delete", "user", "alice", account="G"))
    alice = m.users["alice"]
    assert (alice.accounts, alice.default_account, alice.coordinator_of) == (["C"], "C", ["C"])
    assert apply(m, op("delete", "account", "G")).changes == [("account", "G", None)]
    # a new account list drops the coordinator rights outside it
    apply(m, op("modify", "user", "alice", ("account", "=", ["default"])))
    assert m.users["alice"].coordinator_of == [] and m.users["alice"].default_account == "default"
    apply(m, op("modify", "user", "alice", ("level", "=", "Operator")))
    assert m.users["alice"].admin_level == AdminLevel.OPERATOR
    assert (
        refused(m, op("delete", "user", "root"))
        == "Failed to delete user: Cannot delete user root (uid 0)"
    )
    assert apply(m, op("delete", "user", "bob")).changes == [("user", "bob", None)]


def test_coordinator_reach_follows_the_account_tree(m: AccountModel) -> None:
    tree(m)
    apply(m, op("add", "user", "carol", ("account", "=", ["C"]), ("coordinator", "=", "true")))
    db = AccountDB.of(m, PASSWD)
    carol = caller_from(db, 1003, "carol")
    assert carol.coordinator_of == frozenset({"C"})
    # C and its descendant G are in reach; T (the parent) is not
    assert denial(db, carol, op("modify", "user", "alice", ("account", "+=", ["C"]))) is None
    assert denial(db, carol, op("delete", "user", "alice", account="G")) is None
    assert denial(db, carol, op("modify", "user", "bob", ("account", "+=", ["C"]))) is None
    assert denial(db, carol, op("modify", "user", "bob", ("defaultaccount", "=", "C"))) == (
        "Permission denied: user bob is also in account T, which you do not coordinate"
    )
    assert denial(db, carol, op("add", "user", "bob", ("account", "=", ["T"]))) == (
        "Permission denied: you do not coordinate account T"
    )


def test_uid_rules(m: AccountModel) -> None:
    apply(m, op("add", "user", "alice", ("account", "=", ["default"]), ("uid", "=", "1001")))
    assert m.users["alice"].uid == 1001
    assert refused(
        m, op("add", "user", "bob", ("account", "=", ["default"]), ("uid", "=", "1003"))
    ) == ("Failed to add user: Uid 1003 is the system uid of carol, not of bob")
    # uniqueness is an invariant of the model, checked before passwd
    assert refused(
        m, op("add", "user", "bob", ("account", "=", ["default"]), ("uid", "=", "1001"))
    ) == ("Failed to add user: Uid 1001 is already used by user alice")
    assert refused(
        m, op("add", "user", "bob", ("account", "=", ["default"]), ("uid", "=", "4000"))
    ) == ("Failed to add user: Uid 4000 does not match passwd: the system uid of bob is 1002")
    # a name passwd does not know may take a uid no one has, once
    apply(m, op("add", "user", "ghost", ("account", "=", ["default"]), ("uid", "=", "4000")))
    assert refused(
        m, op("add", "user", "ghost2", ("account", "=", ["default"]), ("uid", "=", "4000"))
    ) == ("Failed to add user: Uid 4000 is already used by user ghost")
    # unbinding is always possible; a record with an unchanged uid is not re-checked
    apply(m, op("modify", "user", "alice", ("uid", "=", "none")))
    assert m.users["alice"].uid is None
    assert uid_mismatch(PASSWD, "alice", 1001) is None
    assert uid_mismatch(PASSWD, "nobody-here", 9999) is None
    # a uid resolves only through passwd's name for it
    apply(m, op("modify", "user", "ghost", ("uid", "=", "none")))
    assert user_by_uid(m, PASSWD, 1001) is m.users["alice"]
    assert user_by_uid(m, PASSWD, 4000) is None
    assert user_by_uid(m, PASSWD, 0) is m.users["root"]


def test_ensure_user(m: AccountModel) -> None:
    u, changes = ops.ensure_user(m, PASSWD, "alice", 1001, "newacct")
    assert (u.uid, u.accounts, u.default_account) == (1001, ["newacct"], "newacct")
    assert [c[:2] for c in changes] == [("account", "newacct"), ("user", "alice")]
    assert m.accounts["newacct"].allowed_qos == ["normal"]
    assert ops.ensure_user(m, PASSWD, "alice", 1001) == (m.users["alice"], [])
    # a uid passwd does not give the name is never bound
    u, changes = ops.ensure_user(m, PASSWD, "bob", 1001)
    assert u.uid is None and changes == [("user", "bob", u.to_dict())]
    # an existing record without a uid gets passwd's
    u, changes = ops.ensure_user(m, PASSWD, "bob", 1002)
    assert u.uid == 1002 and changes == [("user", "bob", u.to_dict())]
    with pytest.raises(AcctError, match="Invalid user name"):
        ops.ensure_user(m, PASSWD, "bad name", None)
    m.validate()


def test_facade_keeps_last_changes_of_the_last_success() -> None:
    db = AccountDB.fresh(passwd=PASSWD)
    db.apply(op("add", "qos", "hi"))
    assert db.last_changes == [("qos", "hi", db.qos["hi"].to_dict())]
    with pytest.raises(AcctError):
        db.apply(op("add", "qos", "hi"))
    assert db.last_changes == [("qos", "hi", db.qos["hi"].to_dict())]
    db.ensure_user("root", 0)
    assert db.last_changes == []
    assert db.copy().passwd is PASSWD and isinstance(db.copy(), AccountDB)


# --------------------------------------------------------------------------- submission rules


def test_check_submit_defaults(m: AccountModel) -> None:
    tree(m)
    apply(m, op("add", "qos", "hi"))
    apply(m, op("modify", "account", "G", ("allowedqos", "+=", ["hi"])))
    assert submit_rules.check_submit(m, "alice", None, None, None) == ("G", "normal")
    assert submit_rules.check_submit(m, "alice", "G", "hi", None) == ("G", "hi")
    with pytest.raises(AcctError, match="QoS hi is not allowed for account T"):
        submit_rules.check_submit(m, "bob", None, "hi", None)
    with pytest.raises(AcctError, match="User alice is not a member of account T"):
        submit_rules.check_submit(m, "alice", "T", None, None)
    with pytest.raises(AcctError, match="Unknown user: carol"):
        submit_rules.check_submit(m, "carol", None, None, None)
    # no default account among several: the only account, else an error
    m.users["alice"].default_account = None
    m.users["alice"].accounts = ["G"]
    assert submit_rules.check_submit(m, "alice", None, None, None)[0] == "G"
    m.users["alice"].accounts = ["G", "T"]
    with pytest.raises(AcctError, match="has no default account: use -A ACCOUNT"):
        submit_rules.check_submit(m, "alice", None, None, None)
    # no DefaultQos: the first allowed
    m.accounts["T"].default_qos = None
    m.accounts["T"].allowed_qos = ["hi", "normal"]
    assert submit_rules.check_submit(m, "bob", None, None, None) == ("T", "hi")
    m.accounts["T"].allowed_qos = []
    with pytest.raises(AcctError, match="Account T has no allowed QoS"):
        submit_rules.check_submit(m, "bob", None, None, None)


def test_check_submit_without_any_qos() -> None:
    m = AccountModel(
        accounts={"a": Account("a")}, users={"u": User("u", accounts=["a"], default_account="a")}
    )
    assert submit_rules.check_submit(m, "u", None, None, None) == ("a", None)
    submit_rules.qos_limits_check(m, None, 100, 100, 10**6)
    assert submit_rules.max_jobs_reason(m, None, 100) is None


def test_check_submit_partitions_follow_ancestors(m: AccountModel) -> None:
    tree(m)
    apply(m, op("modify", "account", "T", ("allowedpartition", "=", ["CPU", "GPU"])))
    apply(m, op("modify", "account", "G", ("allowedpartition", "=", ["GPU", "BIG"])))
    assert submit_rules.check_submit(m, "alice", None, None, "GPU") == ("G", "normal")
    for part in ("CPU", "BIG"):  # refused by G, then by its ancestor T
        with pytest.raises(AcctError, match=f"Partition {part} is not allowed for account G"):
            submit_rules.check_submit(m, "alice", None, None, part)


def test_qos_limits(m: AccountModel) -> None:
    apply(
        m,
        op(
            "modify",
            "qos",
            "normal",
            ("maxjobsperuser", "=", "2"),
            ("maxsubmitjobsperuser", "=", "3"),
            ("maxtimelimitperjob", "=", "1:00:00"),
        ),
    )
    submit_rules.qos_limits_check(m, "normal", 1, 2, 3600)
    with pytest.raises(AcctError, match=r"QoS normal: MaxSubmitJobsPerUser limit reached \(3\)"):
        submit_rules.qos_limits_check(m, "normal", 0, 3, None)
    with pytest.raises(AcctError, match=r"QoS normal: MaxJobsPerUser limit reached \(2\)"):
        submit_rules.qos_limits_check(m, "normal", 2, 2, None)
    with pytest.raises(
        AcctError, match="Time limit 01:00:01 exceeds MaxTimeLimitPerJob 01:00:00 of QoS normal"
    ):
        submit_rules.qos_limits_check(m, "normal", 0, 0, 3601)
    with pytest.raises(AcctError, match="Unknown QoS: ghost"):
        submit_rules.qos_limits_check(m, "ghost", 0, 0, None)
    assert submit_rules.max_jobs_reason(m, "normal", 1) is None
    assert submit_rules.max_jobs_reason(m, "normal", 2) == PendingReason.QOS_MAX_JOBS_PER_USER
    assert submit_rules.max_jobs_reason(m, "ghost", 9) is None
