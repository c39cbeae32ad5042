"""Accounting: cacctmgr parse -> AccountDB.apply, tables, submit checks, permissions."""

from __future__ import annotations

import json
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crane.accounts import AccountDB, AcctError, PasswdTable, Qos, parse_duration
from crane.cacctmgr_parse import (
    DEFAULT_COLUMNS,
    ParseError,
    format_table,
    parse_argv,
    render_show,
    rows_for,
)
from crane.permissions import Caller, authorize, caller_from, may_act_on_job, may_manage


def run(db: AccountDB, cmd: str) -> str:
    """One cacctmgr command line, exactly as a shell would split it."""
    op = parse_argv(shlex.split(cmd))
    # the op travels over msgpack/JSON: it must survive a round trip
    op = json.loads(json.dumps(op))
    if op["verb"] == "show":
        return render_show(db, op)
    return db.apply(op)


def fail(db: AccountDB, cmd: str) -> str:
    before = db.to_dict()
    with pytest.raises(AcctError) as ei:
        run(db, cmd)
    assert db.to_dict() == before, "a refused operation must leave the DB unchanged"
    text = str(ei.value)
    assert "\n" not in text
    return text


def table_rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


# a fixed passwd, so that the rules do not depend on the users of this machine
PASSWD = PasswdTable({"root": 0, "alice": 1001, "oscar": 1002, "carl": 2000, "bob": 2001, "eve": 2002})


@pytest.fixture
def db() -> AccountDB:
    return AccountDB.fresh(passwd=PASSWD)


# --------------------------------------------------------------------------- defaults


def test_fresh_db_contents(db: AccountDB) -> None:
    assert list(db.qos) == ["normal"] and db.qos["normal"].priority == 0
    acc = db.accounts["default"]
    assert acc.allowed_qos == ["normal"] and acc.default_qos == "normal"
    root = db.users["root"]
    assert root.uid == 0 and root.admin_level == "admin" and root.accounts == ["default"]


def test_round_trip_dicts(db: AccountDB) -> None:
    run(db, "add qos Hi Priority=10 MaxJobsPerUser=3 PreemptMode=cancel")
    again = AccountDB.from_dict(json.loads(json.dumps(db.to_dict())))
    assert again.to_dict() == db.to_dict()
    rows = [(e, r) for e, rs in db.to_dict().items() for r in rs]
    assert AccountDB.from_rows(rows).to_dict() == db.to_dict()
    assert Qos.from_dict(db.qos["Hi"].to_dict()) == db.qos["Hi"]


# --------------------------------------------------------------------------- the seed example


def test_seed_example_verbatim(db: AccountDB) -> None:
    assert run(db, "add qos Background Priority=100") == "QoS added successfully."
    assert (
        run(db, "add qos Interactive Priority=5000 Preempt=Background PreemptMode=CANCEL")
        == "QoS added successfully."
    )
    assert run(db, "add account MyAccount") == "Account added successfully."
    assert (
        run(db, "modify account where Name=MyAccount set AllowedQos+=Background,Interactive")
        == "Information was successfully modified."
    )
    assert db.accounts["MyAccount"].allowed_qos == ["normal", "Background", "Interactive"]
    table = run(db, "show qos format=Name,Priority,Preempt,PreemptMode")
    lines = table.splitlines()
    assert lines[0].startswith("+-") and lines[0].endswith("-+") and lines[-1] == lines[0]
    rows = table_rows(table)
    assert rows[0] == ["NAME", "PRIORITY", "PREEMPT", "PREEMPTMODE"]
    assert ["Background", "100", "-", "-"] in rows
    assert ["Interactive", "5000", "Background", "CANCEL"] in rows
    assert ["normal", "0", "-", "-"] in rows
    # a user of MyAccount may now submit with either QoS
    run(db, "add user alice Account=MyAccount Uid=1001")
    assert db.check_submit("alice", "MyAccount", "Interactive", "CPU") == (
        "MyAccount",
        "Interactive",
    )
    assert db.check_submit("alice", None, "Background", "CPU") == ("MyAccount", "Background")


def test_seed_high_low_qos(db: AccountDB) -> None:
    run(db, "add qos LowQos Priority=500")
    run(db, "add qos HighQos Priority=2000 Preempt=LowQos PreemptMode=CANCEL")
    run(db, "add qos MediumQos Priority=1000")
    assert (
        run(db, "modify qos where Name=HighQos set Preempt=LowQos,MediumQos")
        == "Information was successfully modified."
    )
    assert db.qos["HighQos"].preempt == ["LowQos", "MediumQos"]
    run(db, 'modify qos where Name=HighQos set Preempt=""')
    assert db.qos["HighQos"].preempt == []
    run(db, "modify qos where Name=HighQos set Preempt+=LowQos")
    run(db, "modify qos where Name=HighQos set Preempt+=MediumQos,LowQos")
    assert db.qos["HighQos"].preempt == ["LowQos", "MediumQos"]
    run(db, "modify qos where Name=HighQos set Preempt-=LowQos")
    assert db.qos["HighQos"].preempt == ["MediumQos"]
    # the shell passes Preempt= for Preempt="" too; a literal "" also clears
    assert parse_argv(["modify", "qos", "where", "Name=HighQos", "set", "Preempt="])["set"] == [
        ["preempt", "=", []]
    ]
    db.apply(parse_argv(["modify", "qos", "where", "Name=HighQos", "set", 'Preempt=""']))
    assert db.qos["HighQos"].preempt == []
    run(db, "modify qos where Name=HighQos set PreemptMode=requeue Priority=2500")
    assert db.qos["HighQos"].preempt_mode == "REQUEUE" and db.qos["HighQos"].priority == 2500
    run(db, "modify qos where Name=HighQos set PreemptMode=")
    assert db.qos["HighQos"].preempt_mode is None
    assert db.qos["HighQos"].effective_preempt_mode("cancel") == "CANCEL"


def test_parse_shape() -> None:
    op = parse_argv(shlex.split("modify qos where Name=HighQos set Preempt=LowQos,MediumQos"))
    assert op == {
        "verb": "modify",
        "entity": "qos",
        "name": None,
        "where": {"name": "HighQos"},
        "set": [["preempt", "=", ["LowQos", "MediumQos"]]],
        "format": None,
    }
    op = parse_argv(shlex.split("ADD QOS Hi priority=5 PREEMPTMODE=Cancel Foo=bar"))
    assert op["verb"] == "add" and op["entity"] == "qos" and op["name"] == "Hi"
    assert op["set"] == [
        ["priority", "=", "5"],
        ["preemptmode", "=", "Cancel"],
        ["Foo", "=", "bar"],
    ]
    op = parse_argv(shlex.split("show qos format=name,PRIORITY"))
    assert op["format"] == ["Name", "Priority"]
    op = parse_argv(shlex.split("modify user where Name=bob Account=A set Level=operator"))
    assert op["where"] == {"name": "bob", "account": "A"}
    op = parse_argv(shlex.split("delete user bob Account=A"))
    assert op["name"] == "bob" and op["where"] == {"account": "A"}
    op = parse_argv(shlex.split("add account Sub Parent=Top AllowedQos=a,b Description='x y'"))
    assert op["set"] == [
        ["parent", "=", "Top"],
        ["allowedqos", "=", ["a", "b"]],
        ["description", "=", "x y"],
    ]


@pytest.mark.parametrize(
    "cmd",
    [
        "",
        "add",
        "frobnicate qos X",
        "add cluster X",
        "add qos",
        "add qos X Priority+=3",
        "add qos X junk",
        "modify qos where Name=X",
        "modify qos where Name=X set",
        "modify qos set Priority=1",
        "modify qos where Account=A set Priority=1",
        "modify qos where Name=X set junk",
        "delete qos",
        "show qos format=Name,Bogus",
        "show qos Priority=3",
    ],
)
def test_parse_errors(cmd: str) -> None:
    with pytest.raises(ParseError) as ei:
        parse_argv(shlex.split(cmd))
    assert str(ei.value) and "\n" not in str(ei.value)


def test_unknown_format_column_message() -> None:
    with pytest.raises(ParseError, match='Unknown column "Bogus" for qos'):
        parse_argv(["show", "qos", "format=Name,Bogus"])


# --------------------------------------------------------------------------- QoS validation


def test_self_preempt(db: AccountDB) -> None:
    run(db, "add qos A")
    assert (
        fail(db, "modify qos where Name=A set Preempt=A")
        == "Failed to modify information: QoS A cannot preempt itself"
    )
    assert fail(db, "add qos B Preempt=B") == "Failed to add QoS: QoS B cannot preempt itself"


def test_preempt_cycle(db: AccountDB) -> None:
    run(db, "add qos A")
    run(db, "add qos B Preempt=A")
    assert (
        fail(db, "modify qos where Name=A set Preempt=B")
        == "Failed to modify information: Preempt cycle: A -> B -> A"
    )
    run(db, "add qos C Preempt=B")
    assert (
        fail(db, "modify qos where Name=A set Preempt+=C")
        == "Failed to modify information: Preempt cycle: A -> C -> B -> A"
    )
    assert db.qos["A"].preempt == []


def test_unknown_qos(db: AccountDB) -> None:
    assert (
        fail(db, "modify qos where Name=Foo set Priority=1")
        == "Failed to modify information: Unknown QoS: Foo"
    )
    run(db, "add qos A")
    assert (
        fail(db, "modify qos where Name=A set Preempt=Foo")
        == "Failed to modify information: Unknown QoS: Foo"
    )
    assert fail(db, "add qos B Preempt=Foo") == "Failed to add QoS: Unknown QoS: Foo"
    assert (
        fail(db, "modify account where Name=default set AllowedQos+=Foo")
        == "Failed to modify information: Unknown QoS: Foo"
    )
    assert fail(db, "add qos A") == "Failed to add QoS: QoS A already exists"


def test_bad_mode_number_key(db: AccountDB) -> None:
    run(db, "add qos A")
    assert fail(db, "modify qos where Name=A set PreemptMode=kill") == (
        'Failed to modify information: Invalid PreemptMode "kill": '
        "use OFF, CANCEL, REQUEUE or SUSPEND"
    )
    assert (
        fail(db, "modify qos where Name=A set Priority=abc")
        == 'Failed to modify information: Invalid value "abc" for Priority'
    )
    assert fail(db, "add qos B Priority=-4") == 'Failed to add QoS: Invalid value "-4" for Priority'
    assert (
        fail(db, "modify qos where Name=A set Foo=1")
        == 'Failed to modify information: Unknown field "Foo" for qos'
    )
    assert fail(db, "modify qos where Name=A set Priority+=1").startswith(
        'Failed to modify information: Operator "+=" is not valid for Priority'
    )
    # several items: the bad last one leaves the good first one unapplied
    fail(db, "modify qos where Name=A set Priority=7 MaxJobsPerUser=x")
    assert db.qos["A"].priority == 0
    for mode in ("off", "Cancel", "REQUEUE", "suspend"):
        run(db, f"modify qos where Name=A set PreemptMode={mode}")
        assert db.qos["A"].preempt_mode == mode.upper()


def test_qos_limit_fields(db: AccountDB) -> None:
    run(
        db,
        "add qos L MaxJobsPerUser=2 MaxSubmitJobsPerUser=5 MaxTimeLimitPerJob=1:00:00 "
        "GraceTime=30 PreemptExemptTime=600 Description='short jobs'",
    )
    q = db.qos["L"]
    assert (q.max_jobs_per_user, q.max_submit_jobs_per_user) == (2, 5)
    assert q.max_time_limit_per_job == 3600 and q.grace_time == 30
    assert q.preempt_exempt_time == 600 and q.description == "short jobs"
    run(db, "modify qos where Name=L set MaxJobsPerUser=unlimited MaxTimeLimitPerJob=2-00:00:00")
    assert db.qos["L"].max_jobs_per_user is None
    assert db.qos["L"].max_time_limit_per_job == 2 * 86400
    rows = table_rows(run(db, "show qos L"))
    header, row = rows[0], rows[1]
    assert header == [c.upper() for c in DEFAULT_COLUMNS["qos"]]
    cell = dict(zip(header, row, strict=True))
    assert cell["MAXJOBSPERUSER"] == "unlimited" and cell["MAXSUBMITJOBSPERUSER"] == "5"
    assert cell["MAXTIMELIMITPERJOB"] == "2-00:00:00" and cell["GRACETIME"] == "30"
    assert fail(db, "modify qos where Name=L set MaxTimeLimitPerJob=soon").startswith(
        'Failed to modify information: Invalid value "soon" for MaxTimeLimitPerJob'
    )


def test_parse_duration() -> None:
    assert parse_duration("90") == 90 * 60
    assert parse_duration("1:30") == 90
    assert parse_duration("01:00:00") == 3600
    assert parse_duration("1-2") == 86400 + 7200
    assert parse_duration("1-00:00:10") == 86410
    assert parse_duration("45s") == 45 and parse_duration("2h") == 7200
    with pytest.raises(ValueError):
        parse_duration("1:2:3:4")


# --------------------------------------------------------------------------- deletes


def test_delete_refusals(db: AccountDB) -> None:
    run(db, "add qos Low")
    run(db, "add qos High Preempt=Low")
    assert (
        fail(db, "delete qos Low")
        == "Failed to delete QoS: QoS Low is in the Preempt list of QoS High"
    )
    assert (
        fail(db, "delete qos normal")
        == "Failed to delete QoS: QoS normal is used by account default"
    )
    assert fail(db, "delete qos Nope") == "Failed to delete QoS: Unknown QoS: Nope"
    assert run(db, "delete qos High") == "QoS deleted successfully."
    assert run(db, "delete qos Low") == "QoS deleted successfully."

    run(db, "add account Top")
    run(db, "add account Sub Parent=Top")
    assert (
        fail(db, "delete account Top")
        == "Failed to delete account: Account Top has child accounts: Sub"
    )
    assert (
        fail(db, "delete account default")
        == "Failed to delete account: Account default has users: root"
    )
    run(db, "add user bob Account=Sub")
    assert fail(db, "delete account Sub") == "Failed to delete account: Account Sub has users: bob"
    assert run(db, "delete user bob") == "User deleted successfully."
    assert run(db, "delete account Sub") == "Account deleted successfully."
    assert run(db, "delete account Top") == "Account deleted successfully."
    assert fail(db, "delete user root") == "Failed to delete user: Cannot delete user root (uid 0)"


# --------------------------------------------------------------------------- accounts and users


def test_account_tree(db: AccountDB) -> None:
    run(db, "add qos gpu")
    run(db, "add account Top AllowedQos=normal,gpu DefaultQos=gpu AllowedPartition=GPU")
    run(db, "add account Mid Parent=Top")
    run(db, "add account Leaf Parent=Mid Description=leaf")
    assert db.accounts["Mid"].allowed_qos == ["normal", "gpu"]  # inherited
    assert db.accounts["Mid"].default_qos == "gpu"
    assert db.ancestors("Leaf") == ["Mid", "Top"]
    assert fail(db, "add account X Parent=Nope") == "Failed to add account: Unknown account: Nope"
    assert (
        fail(db, "modify account where Name=Top set Parent=Leaf")
        == "Failed to modify information: Parent cycle: Top -> Leaf -> Mid -> Top"
    )
    assert (
        fail(db, "add account Y AllowedQos=normal DefaultQos=gpu")
        == "Failed to add account: DefaultQos gpu is not in the AllowedQos of account Y"
    )
    # removing the default QoS falls back to the first remaining one
    run(db, "modify account where Name=Top set AllowedQos-=gpu")
    assert db.accounts["Top"].default_qos == "normal"
    run(db, "modify account where Name=Top set AllowedQos=")
    assert db.accounts["Top"].allowed_qos == [] and db.accounts["Top"].default_qos is None
    rows = table_rows(run(db, "show account Top"))
    cell = dict(zip(rows[0], rows[1], strict=True))
    assert cell["ALLOWEDQOS"] == "-" and cell["ALLOWEDPARTITION"] == "GPU" and cell["PARENT"] == "-"


def test_users(db: AccountDB) -> None:
    run(db, "add account A")
    run(db, "add account B")
    assert run(db, "add user bob Account=A Uid=2001") == "User added successfully."
    assert run(db, "add user bob Account=B Coordinator=true") == "User added successfully."
    bob = db.users["bob"]
    assert bob.accounts == ["A", "B"] and bob.default_account == "A"
    assert bob.coordinator_of == ["B"] and bob.uid == 2001
    assert (
        fail(db, "add user bob Account=A") == "Failed to add user: User bob is already in account A"
    )
    assert (
        fail(db, "add user carol")
        == "Failed to add user: Account=ACCOUNT is required to add a user"
    )
    assert fail(db, "add user carol Account=Z") == "Failed to add user: Unknown account: Z"
    assert fail(db, "add user carol Account=A Uid=2001") == (
        "Failed to add user: Uid 2001 is already used by user bob"
    )
    # a uid must be the one passwd gives the name (carol is not in PASSWD: a free uid)
    assert fail(db, "add user carol Account=A Uid=1001") == (
        "Failed to add user: Uid 1001 is the system uid of alice, not of carol"
    )
    assert fail(db, "modify user where Name=bob set Uid=3001") == (
        "Failed to modify information: Uid 3001 does not match passwd: the system uid of bob is 2001"
    )
    run(db, "modify user where Name=bob set Uid=")  # an admin may unbind a record
    assert db.users["bob"].uid is None
    run(db, "modify user where Name=bob set Uid=2001")
    assert fail(db, "add user carol Account=A Level=god").startswith(
        'Failed to add user: Invalid value "god" for Level'
    )
    run(db, "modify user where Name=bob set DefaultAccount=B Level=Operator")
    assert db.users["bob"].default_account == "B" and db.users["bob"].admin_level == "operator"
    run(db, "modify user where Name=bob Account=A set Coordinator=true")
    assert db.users["bob"].coordinator_of == ["B", "A"]
    run(db, "modify user where Name=bob set Account-=B")
    assert db.users["bob"].accounts == ["A"] and db.users["bob"].default_account == "A"
    assert db.users["bob"].coordinator_of == ["A"]
    assert fail(db, "modify user where Name=bob Account=B set Level=none") == (
        "Failed to modify information: User bob is not a member of account B"
    )
    assert fail(db, "modify user where Name=bob set Account-=A") == (
        "Failed to modify information: User bob must belong to at least one account"
    )
    run(db, "add user bob Account=B")
    assert run(db, "delete user bob Account=A") == "User deleted successfully."
    assert db.users["bob"].accounts == ["B"]
    rows = table_rows(run(db, "show user bob format=Name,Account,AdminLevel"))
    assert rows == [["NAME", "ACCOUNT", "ADMINLEVEL"], ["bob", "B", "operator"]]
    assert fail(db, "show user nobody") == "Unknown user: nobody"


def test_last_changes(db: AccountDB) -> None:
    run(db, "add qos A")
    assert [(e, n) for e, n, _ in db.last_changes] == [("qos", "A")]
    run(db, "modify account where Name=default set AllowedQos+=A")
    assert [(e, n) for e, n, _ in db.last_changes] == [("account", "default")]
    run(db, "modify account where Name=default set AllowedQos-=A")
    run(db, "delete qos A")
    assert db.last_changes == [("qos", "A", None)]


# --------------------------------------------------------------------------- submission


def test_check_submit(db: AccountDB) -> None:
    run(db, "add qos hi Priority=10")
    run(db, "add account Lab AllowedQos=normal,hi DefaultQos=hi AllowedPartition=CPU")
    run(db, "add account Sub Parent=Lab AllowedPartition=CPU,GPU")
    run(db, "add account Other AllowedQos=normal")
    run(db, "add user alice Account=Lab")
    run(db, "add user alice Account=Sub")
    assert db.check_submit("alice", None, None, "CPU") == ("Lab", "hi")
    assert db.check_submit("alice", "Sub", "normal", None) == ("Sub", "normal")
    with pytest.raises(AcctError, match="^QoS hi is not allowed for account Other$"):
        run(db, "add user alice Account=Other")
        db.check_submit("alice", "Other", "hi", "CPU")
    with pytest.raises(AcctError, match="^Unknown QoS: nope$"):
        db.check_submit("alice", "Lab", "nope", "CPU")
    with pytest.raises(AcctError, match="^Unknown account: Nope$"):
        db.check_submit("alice", "Nope", None, "CPU")
    with pytest.raises(AcctError, match="^User root is not a member of account Lab$"):
        db.check_submit("root", "Lab", None, "CPU")
    with pytest.raises(AcctError, match="^Unknown user: zed$"):
        db.check_submit("zed", None, None, "CPU")
    with pytest.raises(AcctError, match="^Partition GPU is not allowed for account Lab$"):
        db.check_submit("alice", "Lab", None, "GPU")
    # Sub allows GPU but its parent Lab does not: ancestors restrict too
    with pytest.raises(AcctError, match="^Partition GPU is not allowed for account Sub$"):
        db.check_submit("alice", "Sub", None, "GPU")
    # only account -> used; account allowing no QoS -> error while QoS exist
    run(db, "add account Empty AllowedQos=")
    run(db, "add user dan Account=Empty")
    with pytest.raises(AcctError, match="^Account Empty has no allowed QoS$"):
        db.check_submit("dan", None, None, None)
    # no default account and several accounts: ask for -A
    db.users["alice"].default_account = None
    with pytest.raises(AcctError, match="use -A ACCOUNT"):
        db.check_submit("alice", None, None, None)


def test_check_submit_without_any_qos() -> None:
    empty = AccountDB(passwd=PASSWD)
    assert empty.ensure_user("eve", 2002).name == "eve"
    assert empty.check_submit("eve", None, None, "CPU") == ("default", None)


def test_ensure_user(db: AccountDB) -> None:
    run(db, "add qos hi")
    u = db.ensure_user("alice", 1001)
    assert u.accounts == ["default"] and u.uid == 1001
    assert [(e, n) for e, n, _ in db.last_changes] == [("user", "alice")]
    assert db.ensure_user("alice", 1001) is db.users["alice"] and db.last_changes == []
    db.ensure_user("bob", 2001, account="auto")
    assert db.users["bob"].uid == 2001
    # a uid passwd does not give the name is never recorded
    assert db.ensure_user("carl", 1002).uid is None
    assert db.ensure_user("dan", 4000).uid == 4000  # neither in passwd: nothing to contradict
    assert db.accounts["auto"].allowed_qos == ["normal", "hi"]
    assert db.accounts["auto"].default_qos == "normal"
    assert db.check_submit("bob", None, "hi", None) == ("auto", "hi")


def test_qos_limits(db: AccountDB) -> None:
    run(db, "add qos L MaxJobsPerUser=2 MaxSubmitJobsPerUser=3 MaxTimeLimitPerJob=60")
    db.qos_limits_check("L", 1, 2, 3600)
    db.qos_limits_check("L", 0, 0, None)
    db.qos_limits_check(None, 99, 99, 10**9)
    db.qos_limits_check("normal", 99, 99, 10**9)
    with pytest.raises(AcctError, match="MaxSubmitJobsPerUser limit reached \\(3\\)"):
        db.qos_limits_check("L", 0, 3, None)
    with pytest.raises(AcctError, match="MaxJobsPerUser limit reached \\(2\\)"):
        db.qos_limits_check("L", 2, 2, None)
    with pytest.raises(
        AcctError, match="^Time limit 01:00:01 exceeds MaxTimeLimitPerJob 01:00:00 of QoS L$"
    ):
        db.qos_limits_check("L", 0, 0, 3601)
    assert db.max_jobs_reason("L", 2) == "QOSMaxJobsPerUserLimit"
    assert db.max_jobs_reason("L", 1) is None


# --------------------------------------------------------------------------- tables


def test_format_table() -> None:
    rows = rows_for(
        "qos",
        [{"name": "a", "priority": 1, "preempt": ["b", "c"], "max_jobs_per_user": None}],
    )
    out = format_table(rows, ["Name", "Preempt", "MaxJobsPerUser"])
    assert out.splitlines() == [
        "+------+---------+----------------+",
        "| NAME | PREEMPT | MAXJOBSPERUSER |",
        "+------+---------+----------------+",
        "| a    | b,c     | unlimited      |",
        "+------+---------+----------------+",
    ]
    assert rows_for("qos", [{"name": "x"}], default_preempt_mode="CANCEL")[0]["PreemptMode"] == (
        "CANCEL"
    )
    assert format_table([], ["Name"]).count("\n") == 2


# --------------------------------------------------------------------------- permissions


def _caller(uid: int, level: str = "none", coord: tuple[str, ...] = ()) -> Caller:
    return Caller(uid=uid, name=f"u{uid}", admin_level=level, coordinator_of=frozenset(coord))


def test_caller_from(db: AccountDB) -> None:
    run(db, "add account Lab")
    run(db, "add user alice Account=Lab Uid=1001 Coordinator=true")
    run(db, "add user oscar Account=Lab Uid=1002 Level=operator")
    assert caller_from(db, 0, "root").admin_level == "admin"
    assert caller_from(db, 0, "whoever").admin_level == "admin"
    alice = caller_from(db, 1001, "alice")
    assert alice.admin_level == "none" and alice.coordinator_of == frozenset({"Lab"})
    assert caller_from(db, 1002, "oscar").admin_level == "operator"
    # a name whose recorded uid differs is not trusted
    assert caller_from(db, 4242, "oscar").admin_level == "none"
    assert caller_from(db, 5555, "stranger") == Caller(5555, "stranger", "none", frozenset())


def test_may_act_on_job_rules() -> None:
    owner = 1001
    plain = _caller(1002)
    # owner always
    assert may_act_on_job(_caller(owner), owner, "none", "Lab", [])
    assert may_act_on_job(_caller(owner, "operator"), owner, "admin", "Lab", [])
    # plain user denied
    assert not may_act_on_job(plain, owner, "none", "Lab", ["Top"])
    # admin anything, including another admin's job
    assert may_act_on_job(_caller(7, "admin"), owner, "admin", "Lab", [])
    # operator: anything except an admin's job
    op = _caller(8, "operator")
    assert may_act_on_job(op, owner, "none", "Lab", [])
    assert may_act_on_job(op, owner, "operator", "Lab", [])
    assert not may_act_on_job(op, owner, "admin", "Lab", [])
    assert not may_act_on_job(op, 0, "none", "Lab", [])  # uid 0 is an admin
    # coordinator of the job's account, or of a parent account
    assert may_act_on_job(_caller(9, coord=("Lab",)), owner, "none", "Lab", ["Top"])
    assert may_act_on_job(_caller(9, coord=("Top",)), owner, "none", "Lab", ["Top"])
    assert not may_act_on_job(_caller(9, coord=("Other",)), owner, "none", "Lab", ["Top"])
    # coordinator of a child account has no say over the parent's jobs
    assert not may_act_on_job(_caller(9, coord=("Lab",)), owner, "none", "Top", [])


def test_may_act_on_job_with_db_ancestors(db: AccountDB) -> None:
    run(db, "add account Top")
    run(db, "add account Lab Parent=Top")
    run(db, "add user carl Account=Top Uid=2000 Coordinator=true")
    carl = caller_from(db, 2000, "carl")
    assert may_act_on_job(carl, 1001, "none", "Lab", db.ancestors("Lab"))
    assert not may_act_on_job(carl, 1001, "none", "default", db.ancestors("default"))


def test_may_manage_rules() -> None:
    admin, oper, coord, plain = (
        _caller(1, "admin"),
        _caller(2, "operator"),
        _caller(3, coord=("Top",)),
        _caller(4),
    )
    add_qos = parse_argv(["add", "qos", "X"])
    for c in (admin, oper):
        assert may_manage(c, "qos", add_qos)
        assert may_manage(c, "account", "modify")
    for c in (coord, plain):
        assert not may_manage(c, "qos", add_qos)
        assert not may_manage(c, "account", "add", "Top")
        assert may_manage(c, "qos", "show")
    add_user = parse_argv(["add", "user", "bob", "Account=Lab"])
    assert may_manage(coord, "user", add_user, "Lab", ["Top"])  # descendant account
    assert may_manage(coord, "user", add_user, "Top", [])
    assert not may_manage(coord, "user", add_user, "Other", [])
    assert not may_manage(plain, "user", add_user, "Lab", ["Top"])
    assert may_manage(oper, "user", add_user, "Lab", ["Top"])
    # only admin grants operator/admin
    grant = parse_argv(["modify", "user", "where", "Name=bob", "set", "Level=operator"])
    assert may_manage(admin, "user", grant, "Lab")
    assert not may_manage(oper, "user", grant, "Lab")
    assert not may_manage(coord, "user", grant, "Lab", ["Top"])
    add_admin = parse_argv(["add", "user", "bob", "Account=Lab", "Level=admin"])
    assert not may_manage(oper, "user", add_admin, "Lab")
    # operators and coordinators cannot touch admin users; coordinators cannot make coordinators
    assert not may_manage(oper, "user", "delete", "Lab", [], target_level="admin")
    mk_coord = parse_argv(["add", "user", "bob", "Account=Lab", "Coordinator=true"])
    assert not may_manage(coord, "user", mk_coord, "Lab", ["Top"])
    assert may_manage(oper, "user", mk_coord, "Lab")


def test_authorize_with_db(db: AccountDB) -> None:
    run(db, "add account Top")
    run(db, "add account Lab Parent=Top")
    run(db, "add account Else")
    run(db, "add user carl Account=Top Uid=2000 Coordinator=true")
    run(db, "add user bob Account=Lab Uid=2001")
    run(db, "add user eve Account=Else Uid=2002")
    carl = caller_from(db, 2000, "carl")
    bob = caller_from(db, 2001, "bob")
    ok = [
        "add user alice Account=Lab",  # a passwd user, new to the database
        "modify user where Name=bob set Account-=Top",
        "modify user where Name=bob Account=Lab set DefaultAccount=Lab",  # bob is in Lab only
        "add user eve Account=Lab",  # membership in an account carl coordinates
        "delete user bob",
    ]
    for cmd in ok:
        assert authorize(db, carl, parse_argv(shlex.split(cmd))), cmd
    denied = [
        "add user dan Account=Lab",  # not in passwd: only an operator or admin adds such a record
        "add user dan Account=Else",
        "modify user where Name=eve set Uid=3002",
        "modify user where Name=bob set Uid=2001",  # only an admin sets a Uid
        "add user eve Account=Lab DefaultAccount=Lab",  # eve is also in Else
        "modify user where Name=bob set Account+=Else",
        "modify user where Name=bob set Level=operator",
        "delete user eve",
        "add qos X",
        "modify account where Name=Lab set Description=x",
        "delete user root",
    ]
    for cmd in denied:
        assert not authorize(db, carl, parse_argv(shlex.split(cmd))), cmd
    assert not authorize(db, bob, parse_argv(shlex.split("add user dan Account=Lab")))
    assert authorize(db, bob, parse_argv(shlex.split("show user")))
    root = caller_from(db, 0, "root")
    assert authorize(
        db, root, parse_argv(shlex.split("modify user where Name=bob set Level=admin"))
    )


# --------------------------------------------------------------------------- properties


_names = st.sampled_from(["A", "B", "C", "D", "E"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(_names, st.sampled_from(["=", "+=", "-="]), st.lists(_names, max_size=3)),
        max_size=25,
    )
)
def test_preempt_graph_stays_acyclic(ops: list[tuple[str, str, list[str]]]) -> None:
    db = AccountDB.fresh()
    for n in "ABCDE":
        run(db, f"add qos {n}")
    for name, sign, targets in ops:
        op = {
            "verb": "modify",
            "entity": "qos",
            "name": None,
            "where": {"name": name},
            "set": [["preempt", sign, targets]],
            "format": None,
        }
        before = db.to_dict()
        try:
            db.apply(op)
        except AcctError as e:
            assert str(e).startswith("Failed to modify information: ")
            assert db.to_dict() == before
        # invariant: no self-preemption, no cycles
        graph = {n: q.preempt for n, q in db.qos.items()}

        def reaches(src: str, dst: str, graph: dict[str, list[str]] = graph) -> bool:
            stack, visited = list(graph[src]), set()
            while stack:
                x = stack.pop()
                if x == dst:
                    return True
                if x not in visited:
                    visited.add(x)
                    stack.extend(graph[x])
            return False

        for n in graph:
            assert not reaches(n, n)


def test_text_fields_refuse_control_characters(db: AccountDB) -> None:
    # a description or partition name reaches other users' terminals through show
    assert fail(db, "add account X Description=a\x1b[2Jb") == (
        "Failed to add account: Description contains a control character"
    )
    op = parse_argv(["add", "account", "X", "AllowedPartition=CPU,\x1b]52;c;eA==\x07"])
    with pytest.raises(AcctError) as ei:
        db.apply(op)
    assert ei.value.args[0].isprintable() and "X" not in db.accounts
    # a value stored before (or by a path that did not check) is escaped in the table
    db.apply(parse_argv(["add", "account", "X"]))
    db.accounts["X"].description = "red\x1b[31m\nline"
    table = run(db, "show account X format=Name,Description")
    assert "\x1b" not in table and "\\x1b[31m\\nline" in table
