"""Issue 10, class 3: identity rebinding through ``cacctmgr``.

End to end as real Unix users against a real cluster: a coordinator cannot
move uids between user records (its own, a member's, a new record's), so it
never resolves as another user nor makes another user resolve to a record it
controls; an operator cannot either; an admin may set a uid only to the one
passwd gives that name; a check about a user covers every account the user is
in; and a database written before the fix (a record carrying another user's
uid) still resolves callers strictly through passwd.

The pure rules are tested at the end with a fixed passwd table, so they do not
depend on the users of the machine they run on.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crane.accounts import AccountDB, AcctError, PasswdTable
from crane.cacctmgr_parse import parse_argv
from crane.config import load as load_config
from crane.permissions import Caller, authorize, caller_from, denial
from crane.store import pack
from tests.conftest import Cluster, open_ancestors, wait_for

DENIED = "cacctmgr: error: Permission denied"


def free_uid() -> int:
    """A uid passwd gives to no one (checked, not assumed)."""
    for uid in range(64000, 65000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid in 64000..64999")


def acct(c: Cluster, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return c.run("cacctmgr", *argv, user=user)


def users_table(c: Cluster) -> list[dict[str, Any]]:
    return json.loads(c.ok("cacctmgr", "--json", "show", "user"))  # type: ignore[no-any-return]


def wipe(c: Cluster) -> None:
    """Back to a fresh accounting database: root in default, nothing else."""
    for row in users_table(c):
        if row["name"] != "root":
            c.ok("cacctmgr", "delete", "user", row["name"])
    rows = json.loads(c.ok("cacctmgr", "--json", "show", "account"))
    left = [r["name"] for r in rows if r["name"] != "default"]
    while left:  # children first
        parents = {r["parent"] for r in json.loads(c.ok("cacctmgr", "--json", "show", "account"))}
        for name in [n for n in left if n not in parents]:
            c.ok("cacctmgr", "delete", "account", name)
            left.remove(name)


def scenario(c: Cluster) -> None:
    """rtA: alice (coordinator), bob. rtB: bob (coordinator), carol."""
    for cmd in (
        "add account rtA",
        "add account rtB",
        "add user alice Account=rtA Coordinator=true",
        "add user bob Account=rtB Coordinator=true",
        "add user bob Account=rtA",
        "add user carol Account=rtB",
        "add user oscar Account=default Level=operator",
    ):
        c.ok("cacctmgr", *cmd.split())


@pytest.fixture
def c(cluster: Cluster, users: dict[str, int]) -> Iterator[Cluster]:
    open_ancestors(cluster.base)
    wipe(cluster)
    scenario(cluster)
    yield cluster
    for j in cluster.jobs().values():
        cluster.run("ccancel", str(j["job_id"]))
    wipe(cluster)


def held_job(c: Cluster, user: str, account: str) -> int:
    """A job that stays PENDING (held): cancelling it needs no node."""
    jid = c.submit("-H", "-A", account, wrap="true", user=user)
    c.wait_state(jid, "PENDING")
    return jid


def refused(r: subprocess.CompletedProcess[str], prefix: str = DENIED) -> None:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr


def not_allowed(r: subprocess.CompletedProcess[str]) -> None:
    """ccancel's per-job refusal."""
    assert r.returncode != 0 and "Permission denied" in r.stdout + r.stderr, r


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("unbind_self", ["modify user where Name=alice set Uid={free}", "delete user alice"])
def test_coordinator_cannot_take_over_a_members_record(c: Cluster, users: dict[str, int], unbind_self: str) -> None:
    # Attacked (the issue): alice, coordinator of rtA, put her uid on bob (a
    # member of rtA, coordinator of rtB) with "where Account=rtA" (so only rtA
    # was checked), then unbound her own record (moved its uid away, or deleted
    # it). The controller then resolved alice's uid to bob's record through its
    # Uid field and let her cancel carol's job in rtB.
    victim = held_job(c, "carol", "rtB")
    not_allowed(c.run("ccancel", str(victim), user="alice"))  # control: not hers
    before = users_table(c)

    refused(acct(c, "modify", "user", "where", "Name=bob", "Account=rtA", "set",
                 f"Uid={users['alice']}", user="alice"))  # fmt: skip
    refused(acct(c, *unbind_self.format(free=free_uid()).split(), user="alice"))
    not_allowed(c.run("ccancel", str(victim), user="alice"))
    assert c.state(victim) == "PENDING"
    assert users_table(c) == before


def test_coordinator_cannot_make_a_member_resolve_to_its_record(c: Cluster, users: dict[str, int]) -> None:
    # Attacked: alice moved bob's uid away (where Account=rtA), then put bob's
    # uid on her own record: bob's requests then resolved to alice's record and
    # bob lost his coordinator rights in rtB (he could no longer cancel
    # carol's job) while gaining alice's in rtA.
    victim = held_job(c, "carol", "rtB")
    before = users_table(c)
    refused(acct(c, "modify", "user", "where", "Name=bob", "Account=rtA", "set",
                 f"Uid={free_uid()}", user="alice"))  # fmt: skip
    refused(acct(c, "modify", "user", "where", "Name=alice", "set", f"Uid={users['bob']}", user="alice"))
    assert users_table(c) == before
    c.ok("ccancel", str(victim), user="bob")  # bob still resolves to his own record
    assert c.wait_state(victim, "CANCELLED", timeout=60)["state"] == "CANCELLED"


def test_uid_and_user_wide_attributes_are_guarded(c: Cluster, users: dict[str, int]) -> None:
    # Each of these was accepted before: only the account named in "where" or
    # in the values was checked, any caller allowed to touch a user could set
    # its Uid, and no one compared a uid with passwd.
    before = users_table(c)
    attempts: list[tuple[str | None, str, str]] = [
        # a coordinator creates a record carrying another passwd user's uid
        ("alice", f"add user rtghost Account=rtA Uid={users['carol']}", DENIED),
        # a coordinator changes a user-wide attribute of a user also in rtB
        ("alice", "modify user where Name=bob Account=rtA set DefaultAccount=rtA", DENIED),
        # an operator may not set a uid either (not even the right one)
        ("oscar", f"modify user where Name=bob set Uid={users['bob']}", DENIED),
        # an admin may not give a name another passwd user's uid
        (None, f"modify user where Name=bob set Uid={users['alice']}", "cacctmgr: error: Failed"),
        (None, f"add user rtnopasswd Account=rtA Uid={users['oscar']}", "cacctmgr: error: Failed"),
    ]
    for who, cmd, prefix in attempts:
        r = acct(c, *cmd.split(), user=who)
        assert r.returncode != 0, (who, cmd, r.stdout)
        assert r.stderr.strip().startswith(prefix) and len(r.stderr.strip().splitlines()) == 1, (who, cmd, r.stderr)
    assert users_table(c) == before
    # the control case: an admin sets the uid passwd gives the name
    c.ok("cacctmgr", "modify", "user", "where", "Name=carol", "set", f"Uid={users['carol']}")
    assert {r["name"]: r["uid"] for r in users_table(c)}["carol"] == users["carol"]


HAND_MADE = """
import json, sys
from crane.core import messages as m
from crane.cli.common import CliError, call, load_config
try:
    print(json.dumps(call(load_config(None), m.AcctOp(json.loads(sys.argv[1])))))
except CliError as e:
    print(e, file=sys.stderr)
    sys.exit(e.code)
"""


def test_hand_made_op_cannot_check_one_user_and_change_another(c: Cluster, users: dict[str, int]) -> None:
    # Attacked: a hand-made AcctOp whose "name" (alice, in rtA: checked) is not
    # its "where.name" (bob: changed). The check looked at alice, the change hit
    # bob: "Account=rtA" took bob out of rtB and so stripped his coordinator
    # rights there.
    before = users_table(c)
    op = {"verb": "modify", "entity": "user", "name": "alice", "where": {"name": "bob"},
          "set": [["account", "=", ["rtA"]]], "format": None}  # fmt: skip
    r = c.run(os.path.basename(sys.executable), "-c", HAND_MADE, json.dumps(op), user="alice")
    assert r.returncode != 0 and r.stderr.startswith("Permission denied"), (r.stdout, r.stderr)
    assert users_table(c) == before


def test_a_database_from_before_the_fix_still_resolves_strictly(make_cluster: Any, users: dict[str, int]) -> None:
    # Attacked: a database already holding the rebinding (bob's record carries
    # alice's uid, alice's record another uid), e.g. written before the fix.
    # alice's uid resolved to bob's record through the Uid field.
    c: Cluster = make_cluster(nodes=1)
    open_ancestors(c.base)
    scenario(c)
    victim = held_job(c, "carol", "rtB")
    rows = {r["name"]: r for r in users_table(c)}
    rows["alice"]["uid"] = free_uid()
    rows["bob"]["uid"] = users["alice"]
    ctld = c.procs["cranectld"]
    ctld.send_signal(signal.SIGTERM)
    ctld.wait(timeout=60)
    db = sqlite3.connect(load_config(c.config_path).db_file)
    with db:
        for name in ("alice", "bob"):
            db.execute("INSERT OR REPLACE INTO entities VALUES (?, ?, ?)", ("user", name, pack(rows[name])))
    db.close()
    c.start_controller()
    c.wait_nodes_up(timeout=60)
    wait_for(lambda: c.run("cinfo").returncode == 0, 60, "controller back")
    not_allowed(c.run("ccancel", str(victim), user="alice"))
    assert c.state(victim) == "PENDING"


# --------------------------------------------------------------------------- pure rules

ALICE, BOB, CAROL, OSCAR, ROOT = 2001, 2002, 2003, 2004, 0
PASSWD = PasswdTable({"root": ROOT, "alice": ALICE, "bob": BOB, "carol": CAROL, "oscar": OSCAR})
FREE = 2999  # in no passwd entry of the table


def world() -> AccountDB:
    db = AccountDB.fresh(passwd=PASSWD)
    for cmd in (
        "add account Top",
        "add account Lab Parent=Top",
        "add account Else",
        f"add user alice Account=Lab Coordinator=true Uid={ALICE}",
        f"add user bob Account=Else Coordinator=true Uid={BOB}",
        "add user bob Account=Lab",
        f"add user carol Account=Else Uid={CAROL}",
        f"add user oscar Account=default Level=operator Uid={OSCAR}",
    ):
        db.apply(parse_argv(cmd.split()))
    return db


def test_uid_must_match_passwd() -> None:
    db = world()
    db.users["alice"].uid = db.users["carol"].uid = None  # uniqueness alone would refuse their uids
    for cmd, needle in (
        (f"modify user where Name=bob set Uid={ALICE}", f"Uid {ALICE} is the system uid of alice"),
        (f"modify user where Name=bob set Uid={FREE}", f"the system uid of bob is {BOB}"),
        (f"add user ghost Account=Lab Uid={CAROL}", f"Uid {CAROL} is the system uid of carol"),
        ("modify user where Name=carol set Uid=0", "Uid 0 is (the system uid of|already used by user) root"),
        (f"add user ghost Account=Lab Uid={ALICE}", f"Uid {ALICE} is the system uid of alice"),
    ):
        before = db.to_dict()
        with pytest.raises(AcctError, match=needle):
            db.apply(parse_argv(cmd.split()))
        assert db.to_dict() == before
    db.apply(parse_argv(f"add user ghost Account=Lab Uid={FREE}".split()))  # no passwd entry: any free uid
    assert db.users["ghost"].uid == FREE


def test_resolution_is_strict() -> None:
    # a record from an old database that carries another user's uid
    db = world()
    db.users["alice"].uid = FREE
    db.users["bob"].uid = ALICE
    assert db.user_by_uid(ALICE) is None  # alice's record disagrees with passwd; bob's is not hers
    alice = caller_from(db, ALICE, "alice")
    assert alice == Caller(ALICE, "alice", "none", frozenset())
    assert db.user_by_uid(CAROL) is db.users["carol"]
    assert db.user_by_uid(FREE) is None  # no passwd name: no record, whatever the Uid fields say
    assert caller_from(db, FREE, str(FREE)).coordinator_of == frozenset()
    # a name that is not passwd's name for the uid resolves to nothing
    assert caller_from(db, CAROL, "bob") == Caller(CAROL, "bob", "none", frozenset())
    # a record without a uid resolves by its passwd name
    db.users["carol"].uid = None
    assert caller_from(db, CAROL, "carol").name == "carol" and db.user_by_uid(CAROL) is db.users["carol"]
    assert caller_from(db, ROOT, "root").admin_level == "admin"


def _denied(db: AccountDB, who: Caller, cmd: str) -> str:
    op = parse_argv(cmd.split())
    reason = denial(db, who, op)
    assert reason is not None and reason.startswith("Permission denied"), (cmd, reason)
    assert not authorize(db, who, op)
    return reason


def test_coordinator_reach_covers_every_account_of_the_user() -> None:
    db = world()
    alice = caller_from(db, ALICE, "alice")  # coordinates Lab
    oscar = caller_from(db, OSCAR, "oscar")  # operator
    root = caller_from(db, ROOT, "root")
    assert alice.coordinator_of == frozenset({"Lab"})
    for cmd in (
        f"modify user where Name=bob set Uid={BOB}",
        f"modify user where Name=bob Account=Lab set Uid={BOB}",
        f"add user ghost Account=Lab Uid={FREE}",
        f"modify user where Name=alice set Uid={FREE}",
    ):
        assert "Uid" in _denied(db, alice, cmd)
        assert "Uid" in _denied(db, oscar, cmd)
        assert denial(db, root, parse_argv(cmd.split())) is None
    for cmd in (
        "modify user where Name=bob Account=Lab set DefaultAccount=Lab",  # bob is also in Else
        "modify user where Name=bob Account=Lab set Coordinator=false",
        "modify user where Name=bob Account=Lab set Level=none",
        "modify user where Name=bob set Account=Lab",  # drops Else
        "delete user bob",  # in Else too
        "modify user where Name=alice set Account+=Else",
        "add user alice Account=Else",
        "add user alice Account=Lab,Top Coordinator=true",
        "add user carol Account=Lab DefaultAccount=Lab",  # carol's default is in Else
        "modify user where Name=alice Account=Lab set Level=operator",
        "delete user alice",  # would drop her own coordinator rights
        "delete user alice Account=Lab",
        "modify user where Name=oscar set Account+=Lab",  # an operator's record
    ):
        _denied(db, alice, cmd)
    # what a coordinator may still do: membership in the accounts it coordinates
    for cmd in (
        "add user carol Account=Lab",
        "delete user bob Account=Lab",
        "modify user where Name=bob set Account-=Lab",
    ):
        assert denial(db, alice, parse_argv(cmd.split())) is None, cmd
        assert authorize(db, alice, parse_argv(cmd.split())), cmd
    # red team: records for names passwd does not know, without bound
    assert "not a user of this system" in _denied(db, alice, "add user dan Account=Lab")


def test_the_user_checked_is_the_user_changed() -> None:
    # a hand-made op naming one user in "name" and another in "where"
    db = world()
    alice = caller_from(db, ALICE, "alice")
    op = {"verb": "modify", "entity": "user", "name": "alice", "where": {"name": "bob"},
          "set": [["account", "=", ["Lab"]]], "format": None}  # fmt: skip
    assert denial(db, alice, op) == "Permission denied: you do not coordinate account Else"
    for bad in ({**op, "where": ["bob"]}, {**op, "set": [["account"]]}, {**op, "set": "x"}):
        assert not authorize(db, alice, bad)


_CMDS = st.sampled_from([
    "add user {u} Account={a}",
    "add user {u} Account={a} Uid={uid}",
    "add user {u} Account={a} DefaultAccount={a}",
    "add user {u} Account={a} Coordinator=true",
    "add user {u} Account={a} Level={lvl}",
    "modify user where Name={u} set Uid={uid}",
    "modify user where Name={u} Account={a} set Uid={uid}",
    "modify user where Name={u} Account={a} set DefaultAccount={a}",
    "modify user where Name={u} Account={a} set Coordinator={flag}",
    "modify user where Name={u} set Account{sign}{a}",
    "modify user where Name={u} set Level={lvl}",
    "delete user {u}",
    "delete user {u} Account={a}",
])
_USERS = st.sampled_from(["alice", "bob", "carol", "oscar", "root", "ghost"])
_ACCOUNTS = st.sampled_from(["Lab", "Top", "Else", "default"])
_UIDS = st.sampled_from([ROOT, ALICE, BOB, CAROL, OSCAR, FREE])


def _resolution(db: AccountDB) -> dict[int, tuple[str | None, str, frozenset[str]]]:
    out = {}
    for name, uid in PASSWD.entries.items():
        rec = db.user_by_uid(uid)
        who = caller_from(db, uid, name)
        out[uid] = (rec.name if rec else None, who.admin_level, who.coordinator_of)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_CMDS, _USERS, _ACCOUNTS, _UIDS, st.sampled_from(["none", "operator", "admin"]),
                          st.booleans(), st.sampled_from(["=", "+=", "-="])), max_size=20))  # fmt: skip
def test_no_coordinator_operation_rebinds_a_uid(ops: list[tuple[str, str, str, int, str, bool, str]]) -> None:
    """Whatever alice (coordinator of Lab) is allowed to do: every uid resolves
    to passwd's name for it or to nothing; nobody gains a level or coordinator
    rights; every record that existed keeps its uid, level and coordinator
    rights, and its accounts outside Lab, or is gone only if it lived in Lab alone."""
    db = world()
    start = world()
    alice = caller_from(db, ALICE, "alice")
    was = _resolution(db)
    for tmpl, u, a, uid, lvl, flag, sign in ops:
        cmd = tmpl.format(u=u, a=a, uid=uid, lvl=lvl, flag=str(flag).lower(), sign=sign)
        op = parse_argv(cmd.split())
        if not authorize(db, alice, op):
            continue
        try:
            db.apply(op)
        except AcctError:
            continue
        for uid_, (name, level, coord) in _resolution(db).items():
            assert name in (None, PASSWD.name_of(uid_)), cmd
            assert level == was[uid_][1] and coord <= was[uid_][2], cmd
        for old in start.users.values():
            new = db.users.get(old.name)
            if new is None:
                assert old.accounts == ["Lab"] and not old.coordinator_of, cmd
                continue
            assert (new.uid, new.admin_level, new.coordinator_of) == (
                old.uid, old.admin_level, old.coordinator_of), cmd  # fmt: skip
            assert [x for x in new.accounts if x != "Lab"] == [x for x in old.accounts if x != "Lab"], cmd
        for rec in db.users.values():
            assert rec.uid is None or rec.uid == PASSWD.uid_of(rec.name) or rec.name == "root", cmd
            assert rec.admin_level == start.users.get(rec.name, rec).admin_level == rec.admin_level
