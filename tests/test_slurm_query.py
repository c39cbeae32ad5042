"""Issue 14: the Slurm-named query and admin commands (squeue, sacct, sinfo,
scontrol, sacctmgr) print what Slurm's clients parse.

Unit tests of the pure format modules of crane/slurm first, then the commands on a
real cluster as real users."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from crane.core.states import JobState
from crane.slurm.layout import FormatError, parse_percent, render
from crane.slurm.records import record, scontrol_job
from crane.slurm.refs import SlurmId, jobs_for_ids, parse_ids, select
from crane.slurm.sacct_fields import (
    SACCT_DEFAULT,
    acct_rows,
    parse_sacct_format,
    render_sacct,
    sacct_fields,
)
from crane.slurm.sinfo_fields import SINFO_DEFAULT, parse_sinfo_format, sinfo_groups
from crane.slurm.squeue_fields import SQUEUE_DEFAULT, SQUEUE_FIELDS, parse_squeue_names
from crane.slurm.states import PREEMPTED, acct_state, job_state, parse_state_list, state_code
from crane.slurm.times import clock, mem_text, parse_when, squeue_time
from tests.conftest import BIN, Cluster, clear, wait_for

# --------------------------------------------------------------------------- formats (pure)

NOW = 1_800_000_000.0


def job(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "job_id": 12, "name": "train", "user": "alice", "uid": 1001, "account": "phys", "partition": "CPU",
        "qos": "normal", "state": JobState.RUNNING, "reason": "", "nodes": ["crane01"], "num_nodes": 1,
        "cpus": 2, "memory": 0, "time_limit": 3600, "submit_time": NOW - 100, "start_time": NOW - 65,
        "end_time": None, "exit_code": 0, "exit_signal": 0, "priority": 0, "steps": [],
    }  # fmt: skip
    base.update(kw)
    return base


def test_times_as_each_command_prints_them() -> None:
    assert squeue_time(5) == "0:05"
    assert squeue_time(65) == "1:05"
    assert squeue_time(3723) == "1:02:03"
    assert squeue_time(2 * 86400 + 3723) == "2-01:02:03"
    assert squeue_time(None) == "UNLIMITED"
    assert clock(5) == "00:00:05"
    assert clock(86400 + 5) == "1-00:00:05"
    assert clock(None) == "UNLIMITED"
    assert mem_text(0) == "0"
    assert mem_text(4 << 30) == "4G"
    assert mem_text(1000 << 20) == "1000M"


def test_slurm_state_names() -> None:
    assert job_state(job(state=JobState.CANCELLED, cancel_path="preemption")) == PREEMPTED
    assert job_state(job(state=JobState.FAILED, reason="Node crane02 down")) == "NODE_FAIL"
    assert job_state(job(state=JobState.FAILED, reason="")) == JobState.FAILED
    cancelled = job(state=JobState.CANCELLED, cancelled_by="bob")
    assert acct_state(cancelled, {"bob": 1002}.get) == "CANCELLED by 1002"
    assert acct_state({**cancelled, "cancelled_by_uid": 7}, {"bob": 1002}.get) == "CANCELLED by 7"
    assert acct_state(job(state=JobState.CANCELLED), {}.get) == JobState.CANCELLED
    assert state_code(JobState.PENDING) == "PD" and state_code(PREEMPTED) == "PR"
    assert parse_state_list("pd,R,cd") == {JobState.PENDING, JobState.RUNNING, JobState.COMPLETED}
    assert PREEMPTED in parse_state_list("all")
    with pytest.raises(ValueError):
        parse_state_list("bogus")


def test_squeue_default_format_is_slurms() -> None:
    layout = parse_percent(SQUEUE_DEFAULT, SQUEUE_FIELDS)
    lines = render(layout, [job(), job(job_id=13, state=JobState.PENDING, nodes=[], reason="Resources",
                                      start_time=None, name="a-very-long-name")], header=True, now=NOW)  # fmt: skip
    assert lines == [
        "             JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)",
        "                12       CPU    train    alice  R       1:05      1 crane01",
        "                13       CPU a-very-l    alice PD       0:00      1 (Resources)",
    ]


def test_squeue_fields_without_width_are_unpadded() -> None:
    layout = parse_percent("%i %j %T %u %t %M %l %D %R %a %P %q %C", SQUEUE_FIELDS)
    assert render(layout, [job()], header=False, now=NOW) == [
        "12 train RUNNING alice R 1:05 1:00:00 1 crane01 phys CPU normal 2"
    ]
    task = job(job_id=40, array_job_id=38, array_task_id=2)
    layout = parse_percent("%i|%A|%F|%K|%10j|%.4D|%%", SQUEUE_FIELDS)
    assert render(layout, [task, job()], header=True, now=NOW) == [
        "JOBID|JOBID|ARRAY_JOB_ID|ARRAY_TASK_ID|NAME      |NODE|%",
        "38_2|40|38|2|train     |   1|%",
        "12|12|12|N/A|train     |   1|%",
    ]
    with pytest.raises(FormatError):
        parse_percent("%i %s", SQUEUE_FIELDS)


def test_squeue_named_fields() -> None:
    layout = parse_squeue_names("jobid,name:10,state:.9,username")
    assert render(layout, [job()], header=True, now=NOW) == [
        "JOBID               NAME          STATEUSER                ",
        "12                  train       RUNNINGalice               ",
    ]
    with pytest.raises(FormatError):
        parse_squeue_names("jobid,nosuch")


def test_sacct_table_parsable_and_step_rows() -> None:
    uid_of = {"bob": 1002}.get
    steps = [{"step_id": 1, "state": JobState.CANCELLED, "node": "crane01", "cpus": 2, "start": NOW - 60,
              "end": NOW, "exit_code": 0, "signal": 9, "argv": []},
             {"step_id": 2, "state": JobState.COMPLETED, "node": "crane01", "cpus": 1, "start": NOW - 50,
              "end": NOW - 40, "exit_code": 0, "argv": ["/bin/hostname"]}]  # fmt: skip
    j = job(state=JobState.CANCELLED, cancelled_by="bob", exit_signal=9, end_time=NOW, steps=steps)
    rows = acct_rows([j], steps=True)
    assert [r["slurm_id"] for r in rows] == ["12", "12.batch", "12.0"]
    fields = sacct_fields(uid_of)
    layout = parse_sacct_format(SACCT_DEFAULT, fields)
    assert render_sacct(layout, rows, header=True, now=NOW) == [
        "JobID           JobName  Partition    Account  AllocCPUS      State ExitCode ",
        "------------ ---------- ---------- ---------- ---------- ---------- -------- ",
        "12                train        CPU       phys          2 CANCELLED+      0:9 ",
        "12.batch          batch                  phys          2  CANCELLED      0:9 ",
        "12.0           hostname                  phys          1  COMPLETED      0:0 ",
    ]
    layout = parse_sacct_format("JobID,State,ExitCode,Elapsed,NodeList", fields)
    assert render_sacct(layout, rows[:1], header=True, now=NOW, parsable="|") == [
        "JobID|State|ExitCode|Elapsed|NodeList",
        "12|CANCELLED by 1002|0:9|00:01:05|crane01",
    ]
    assert render_sacct(layout, rows[2:], header=False, now=NOW, parsable="|", trailing=True) == [
        "12.0|COMPLETED|0:0|00:00:10|crane01|",
    ]
    layout = parse_sacct_format("jobname%-4,state%20", fields)
    assert render_sacct(layout, rows[:1], header=False, now=NOW) == ["tra+    CANCELLED by 1002 "]
    with pytest.raises(FormatError):
        parse_sacct_format("JobID,Nosuch", fields)
    task = job(job_id=40, array_job_id=38, array_task_id=2, steps=steps[:1])
    assert [r["slurm_id"] for r in acct_rows([task], steps=True)] == ["38_2", "38_2.batch"]
    assert [r["raw_id"] for r in acct_rows([task], steps=True)] == ["40", "40.batch"]


def test_slurm_ids_name_jobs_tasks_and_steps() -> None:
    ids = parse_ids("12,38_2 40.batch 41.0")
    assert ids == [SlurmId(12), SlurmId(38, 2), SlurmId(40, None, "batch"), SlurmId(41, None, "0")]
    assert parse_ids("16_[1-3,5]") == [SlurmId(16, t) for t in (1, 2, 3, 5)]
    for bad in ("12x", "16_[3-1]", "16_[a]", "", "12,,x"):
        with pytest.raises(ValueError):
            parse_ids(bad)
    jobs = [job(job_id=12), job(job_id=38, array_job_id=38, array_task_id=0),
            job(job_id=39, array_job_id=38, array_task_id=1), job(job_id=41)]  # fmt: skip
    picked, pairs = select(jobs, parse_ids("38"))
    assert [j["job_id"] for j in picked] == [38, 39]  # an array's id: every task
    picked, pairs = select(jobs, parse_ids("38_1,41.0,12.batch"))
    assert [j["job_id"] for j in picked] == [12, 39, 41]
    assert pairs == {(39, 0), (41, 2), (12, 1)}


def test_jobs_for_ids_asks_for_the_array_tasks() -> None:
    store = {38: job(job_id=38, array_job_id=38, array_task_id=0, array_task_count=3),
             39: job(job_id=39, array_job_id=38, array_task_id=1, array_task_count=3),
             40: job(job_id=40, array_job_id=38, array_task_id=2, array_task_count=3)}  # fmt: skip
    asked: list[dict[str, Any]] = []

    def ask(f: dict[str, Any], history: bool) -> list[dict[str, Any]]:
        asked.append(f)
        return [store[i] for i in f.get("jobs", store) if i in store]

    picked, _ = jobs_for_ids(ask, parse_ids("38_2"), (False,))
    assert [j["job_id"] for j in picked] == [40]
    assert asked == [{"jobs": [38]}, {"jobs": [38, 39, 40]}]


def test_key_value_records() -> None:
    lines = scontrol_job(job(comment="note"), NOW, "alice", 1001, "/w/job.sh")
    text = record(lines, oneliner=False)
    first, *rest = text.split("\n")
    assert first == "JobId=12 JobName=train"
    assert all(r.startswith("   ") for r in rest)
    kv = dict(w.split("=", 1) for w in record(lines, oneliner=True).split(" ") if "=" in w)
    assert kv["UserId"] == "alice(1001)" and kv["GroupId"] == "alice(1001)"
    assert kv["JobState"] == "RUNNING" and kv["Reason"] == "None" and kv["NumCPUs"] == "2"
    assert kv["TimeLimit"] == "01:00:00" and kv["RunTime"] == "00:01:05" and kv["NodeList"] == "crane01"
    assert kv["Command"] == "/w/job.sh" and kv["Comment"] == "note" and kv["Dependency"] == "(null)"
    task = record(scontrol_job(job(job_id=40, array_job_id=38, array_task_id=2), NOW, "g", 5, "x"), True)
    assert task.startswith("JobId=40 ArrayJobId=38 ArrayTaskId=2 JobName=train ")


def test_sinfo_groups_and_auto_width() -> None:
    parts = [{"name": "CPU", "nodes": ["a1", "a2", "a3"], "default": True}, {"name": "LONGNAME", "nodes": ["b1"]}]
    nodes = {"a1": {"name": "a1", "state": "IDLE", "cpus": 4}, "a2": {"name": "a2", "state": "IDLE", "cpus": 4},
             "a3": {"name": "a3", "state": "MIX", "cpus": 4}, "b1": {"name": "b1", "state": "DOWN", "cpus": 4}}
    layout = parse_sinfo_format(SINFO_DEFAULT)
    groups = sinfo_groups(layout, parts, nodes, per_node=False)
    assert render(layout, groups, header=True, now=NOW) == [
        "PARTITION AVAIL  TIMELIMIT  NODES  STATE NODELIST",
        "CPU*         up   infinite      2   idle a[1-2]",
        "CPU*         up   infinite      1    mix a3",
        "LONGNAME     up   infinite      1  down* b1",
    ]


def test_time_specifications() -> None:
    midnight = parse_when("midnight", NOW)
    assert time.localtime(midnight)[3:6] == (0, 0, 0) and NOW - 86400 < midnight <= NOW
    assert parse_when("now-2hours", NOW) == NOW - 7200
    assert parse_when("now-30minutes", NOW) == NOW - 1800
    assert parse_when("2026-01-02T03:04:05", NOW) == time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    with pytest.raises(ValueError):
        parse_when("someday", NOW)


def test_sacctmgr_words_to_cacctmgr() -> None:
    from crane.slurm.sacctmgr import layout_for, split_where, to_argv

    assert to_argv(["AdminLevel=Administrator", "Cluster=x", "Organization=o", "MaxJobsPU=3", "MaxWall=1:00:00",
                    "Account+=b", "Description=d"]) == [
        "Level=admin", "MaxJobsPerUser=3", "MaxWall=1:00:00", "Account+=b", "Description=d"]  # fmt: skip
    assert split_where(["alice", "where", "account=a", "set", "DefaultAccount=a", "format=User"]) == (
        "alice", {"account": "a"}, ["DefaultAccount=a", "format=User"], [])
    assert split_where(["where", "name=q", "format=Name,Priority"]) == (None, {"name": "q"}, [], ["format=Name,Priority"])
    rows = [{"name": "alice", "default_account": "physics", "admin_level": "admin"}]
    layout = layout_for("user", None)
    assert render_sacct(layout, rows, header=True, now=0.0) == [
        "      User   Def Acct     Admin ", "---------- ---------- --------- ", "     alice    physics Administ+ "]
    assert render_sacct(layout_for("user", "user,defaultaccount%-12"), rows, header=False, now=0.0,
                          parsable="|") == ["alice|physics"]  # fmt: skip


# --------------------------------------------------------------------------- the commands on a cluster


def slurm(c: Cluster, prog: str, *args: str, user: str | None = None) -> Any:
    """Run a Slurm-named command: its console script once installed, else its module."""
    if os.path.exists(os.path.join(BIN, prog)):
        return c.run(prog, *args, user=user)
    return c.run("python", "-m", f"crane.slurm.{prog}", *args, user=user)


def ok(c: Cluster, prog: str, *args: str, user: str | None = None) -> str:
    r = slurm(c, prog, *args, user=user)
    assert r.returncode == 0, f"{prog} {args} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return str(r.stdout)


def test_squeue_formats_json_and_errors(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    run = c.submit("-J", "runner", user="alice", wrap="sleep 300")
    held = c.submit("-J", "held", "--hold", user="bob", wrap="true")
    try:
        c.wait_state(run, "RUNNING", timeout=60)
        lines = ok(c, "squeue", "-h", "-o", "%i %j %T %u").splitlines()
        assert f"{run} runner RUNNING alice" in lines, lines
        assert f"{held} held PENDING bob" in lines, lines
        out = ok(c, "squeue").splitlines()
        assert out[0] == "             JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)"
        row = next(ln for ln in out if ln.split()[0] == str(held))
        assert row.split()[4:] == ["PD", "0:00", "1", "(JobHeldUser)"], out
        mine = ok(c, "squeue", "--me", "-h", "-o", "%i", user="alice").split()
        assert str(run) in mine and str(held) not in mine, mine
        assert f"{held} PD JobHeldUser" in ok(c, "squeue", "-u", "bob", "-t", "pd", "-h", "-o", "%i %t %r").splitlines()
        assert str(run) not in ok(c, "squeue", "-u", "bob", "-h", "-o", "%i").split()
        named = ok(c, "squeue", "-O", "jobid,name,state,username", "-j", str(run)).splitlines()
        assert named[0].split() == ["JOBID", "NAME", "STATE", "USER"] and named[1].split() == [
            str(run), "runner", "RUNNING", "alice"]
        data = json.loads(ok(c, "squeue", "--json", user="bob"))
        by_id = {j["job_id"]: j for j in data["jobs"]}
        assert by_id[run]["job_state"] == "RUNNING" and by_id[run]["user_name"] == "alice"
        assert by_id[held]["name"] == "held" and by_id[held]["partition"] == "CPU"
        assert by_id[held]["state_reason"] == "JobHeldUser", by_id[held]
        r = slurm(c, "squeue", "-j", "987654")
        assert r.returncode == 1 and "Invalid job id specified" in r.stderr, (r.returncode, r.stdout, r.stderr)
        r = slurm(c, "squeue", "-o", "%i %s")
        assert r.returncode == 1 and r.stderr.startswith("squeue: "), (r.returncode, r.stdout, r.stderr)
    finally:
        clear(c)


def submit_and_end(c: Cluster, *args: str, wrap: str, states: tuple[str, ...]) -> int:
    j = c.submit(*args, user="alice", wrap=wrap)
    c.wait_state(j, *states, timeout=60)
    return j


def test_sacct_states_exit_codes_and_steps(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    done = submit_and_end(c, wrap="crun true; crun false; true", states=("COMPLETED",))
    failed = submit_and_end(c, wrap="exit 3", states=("FAILED",))
    timeout = submit_and_end(c, "-t", "0:02", wrap="sleep 300", states=("TIMEOUT",))
    victim = c.submit(user="alice", wrap="sleep 300")
    c.wait_state(victim, "RUNNING", timeout=60)
    c.ok("ccancel", str(victim), user="alice")
    c.wait_state(victim, "CANCELLED", timeout=60)
    ids = ",".join(str(x) for x in (done, failed, timeout, victim))
    out = ok(c, "sacct", "-P", "-n", "-o", "JobID,State,ExitCode", "-j", ids, user="alice")
    rows = {ln.split("|")[0]: ln.split("|")[1:] for ln in out.splitlines()}
    alice = users["alice"]
    assert rows[str(done)] == ["COMPLETED", "0:0"]
    assert rows[f"{done}.batch"] == ["COMPLETED", "0:0"]
    assert rows[f"{done}.0"] == ["COMPLETED", "0:0"]
    assert rows[f"{done}.1"] == ["FAILED", "1:0"]
    assert rows[str(failed)] == ["FAILED", "3:0"] and rows[f"{failed}.batch"][0] == "FAILED"
    assert rows[str(timeout)][0] == "TIMEOUT"
    assert rows[str(victim)][0] == f"CANCELLED by {alice}"
    # submitit's poll: a header, one -j per job accumulating, --parsable2
    out = ok(c, "sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", str(done), "-j", str(failed))
    lines = out.splitlines()
    assert lines[0] == "JobID|State|NodeList"
    assert {ln.split("|")[0] for ln in lines[1:] if "." not in ln.split("|")[0]} == {str(done), str(failed)}
    assert all(ln.split("|")[2].startswith("crane") for ln in lines[1:])
    # -X: jobs only; -p: a trailing "|"; a window that holds them
    out = ok(c, "sacct", "-X", "-p", "-n", "-o", "JobID,State", "-S", "now-1hours", user="alice")
    ended = {ln.split("|")[0]: ln for ln in out.splitlines()}
    assert ended[str(failed)] == f"{failed}|FAILED|" and not any("." in k for k in ended)
    assert {str(done), str(timeout), str(victim)} <= set(ended)
    # bob (not root, no -a) sees his own jobs only
    out = ok(c, "sacct", "-X", "-P", "-n", "-o", "JobID,User", "-S", "now-1hours", user="bob")
    assert all(ln.endswith("|bob") for ln in out.splitlines())
    # the default table: fixed widths, a dashed line, CANCELLED+ cut
    out = ok(c, "sacct", "-j", str(victim), "-X").splitlines()
    assert out[0].split() == ["JobID", "JobName", "Partition", "Account", "AllocCPUS", "State", "ExitCode"]
    assert set(out[1].replace(" ", "")) == {"-"} and "CANCELLED+" in out[2]
    data = json.loads(ok(c, "sacct", "--json", "-j", str(done)))
    (j,) = data["jobs"]
    assert j["state"]["current"] == "COMPLETED" and [s["step"]["id"] for s in j["steps"]] == [
        f"{done}.batch", f"{done}.0", f"{done}.1"]
    r = slurm(c, "sacct", "-o", "JobID,Nosuch")
    assert r.returncode == 1 and r.stderr.startswith("sacct: "), (r.returncode, r.stdout, r.stderr)


def test_sinfo_formats(cluster: Cluster) -> None:
    c = cluster
    lines = ok(c, "sinfo", "-h", "-o", "%P %D %t").splitlines()
    per_part: dict[str, int] = {}
    for ln in lines:
        part, count, state = ln.split()
        assert state in ("idle", "mix", "alloc", "drain", "drng", "down", "down*")
        per_part[part] = per_part.get(part, 0) + int(count)
    assert per_part == {"CPU*": 2, "GPU": 2}
    out = ok(c, "sinfo").splitlines()
    assert out[0].split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"]
    assert out[1].split()[:3] == ["CPU*", "up", "infinite"]
    nodes = ok(c, "sinfo", "-N", "-h", "-o", "%N %P").split("\n")
    assert {ln.split()[0] for ln in nodes if ln} == {"crane01", "crane02", "crane03", "crane04"}
    data = json.loads(ok(c, "sinfo", "--json"))
    assert {n["name"] for n in data["nodes"]} == {"crane01", "crane02", "crane03", "crane04"}
    assert [(p["name"], p["total_nodes"], p["flags"]) for p in data["partitions"]] == [
        ("CPU", 2, ["default"]), ("GPU", 2, [])]
    part, aiot = ok(c, "sinfo", "-s", "-h", "-p", "GPU", "-o", "%R %F").split()
    assert part == "GPU" and aiot.split("/")[3] == "2"


def test_scontrol_show_update_hold_release(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    clear(c)
    big = c.submit("-p", "CPU", "-N", "2", "-c", "4", user="alice", wrap="sleep 300")
    c.wait_state(big, "RUNNING", timeout=60)
    waiting = c.submit("-p", "CPU", "-c", "4", "-J", "waiter", user="alice", wrap="true")
    try:
        text = ok(c, "scontrol", "show", "job", str(big), user="alice")
        assert text.startswith(f"JobId={big} JobName=wrap\n   UserId=alice({users['alice']}) GroupId=")
        kv = dict(w.split("=", 1) for w in text.split() if "=" in w)
        assert kv["JobState"] == "RUNNING" and kv["Partition"] == "CPU" and kv["NumNodes"] == "2"
        assert kv["NumCPUs"] == "8" and kv["NodeList"] == "crane[01-02]" and kv["WorkDir"] == c.workdir
        one = ok(c, "scontrol", "-o", "show", "job", str(waiting)).strip()
        assert "\n" not in one and f"JobId={waiting} JobName=waiter " in one and " JobState=PENDING " in one
        r = slurm(c, "scontrol", "show", "job", "987654")
        assert r.returncode == 1 and "Invalid job id specified" in r.stderr, (r.returncode, r.stdout, r.stderr)
        assert ok(c, "scontrol", "show", "hostnames", "crane[01-03]").split() == ["crane01", "crane02", "crane03"]
        assert ok(c, "scontrol", "show", "hostlist", "crane01,crane02,crane04").strip() == "crane[01-02,04]"
        assert ok(c, "scontrol", "ping").strip().endswith(" is UP")
        ok(c, "scontrol", "hold", str(waiting), user="alice")
        wait_for(lambda: (c.job(waiting) or {}).get("reason") == "JobHeldUser", 30, "held")
        assert " Reason=JobHeldUser " in ok(c, "scontrol", "-o", "show", "job", str(waiting))
        ok(c, "scontrol", "release", str(waiting), user="alice")
        wait_for(lambda: not (c.job(waiting) or {}).get("held"), 30, "released")
        ok(c, "scontrol", "update", f"JobId={waiting}", "TimeLimit=5:00", "JobName=renamed", user="alice")
        kv = dict(w.split("=", 1) for w in ok(c, "scontrol", "show", "job", str(waiting)).split() if "=" in w)
        assert kv["TimeLimit"] == "00:05:00" and kv["JobName"] == "renamed"
        r = slurm(c, "scontrol", "hold", "987654")
        assert r.returncode == 1 and r.stderr.startswith("scontrol: "), (r.returncode, r.stdout, r.stderr)
        node = ok(c, "scontrol", "show", "node", "crane01")
        assert node.startswith("NodeName=crane01 ") and "State=ALLOCATED" in node
        part = ok(c, "scontrol", "show", "partition", "CPU")
        assert part.startswith("PartitionName=CPU\n") and "Default=YES" in part and "Nodes=crane[01-02]" in part
    finally:
        clear(c)


def test_sacctmgr_accounts_users_and_associations(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    acct = f"sq{os.getpid() % 100000}"
    try:
        ok(c, "sacctmgr", "-i", "add", "account", acct, "Description=test", "Organization=none", "Parent=default")
        ok(c, "sacctmgr", "-i", "add", "user", "carol", f"Account={acct}")
        out = ok(c, "sacctmgr", "show", "assoc", "-P", "where", f"account={acct}", "format=Cluster,Account,User,QOS")
        lines = out.splitlines()
        assert lines[0] == "Cluster|Account|User|QOS"
        assert {tuple(ln.split("|")[1:3]) for ln in lines[1:]} == {(acct, ""), (acct, "carol")}
        out = ok(c, "sacctmgr", "-n", "-P", "show", "account", acct, "format=Account,ParentName,Descr")
        assert out.splitlines() == [f"{acct}|default|test"]
        ok(c, "sacctmgr", "-i", "modify", "user", "where", "name=carol", "set", f"DefaultAccount={acct}")
        out = ok(c, "sacctmgr", "-n", "-P", "show", "user", "carol", "format=User,DefaultAccount,Admin")
        assert out.splitlines() == [f"carol|{acct}|None"]
        r = slurm(c, "sacctmgr", "-i", "add", "account", acct, user="alice")
        assert r.returncode == 1 and r.stderr.startswith("sacctmgr: "), (r.returncode, r.stdout, r.stderr)
    finally:
        slurm(c, "sacctmgr", "-i", "delete", "user", "carol")
        slurm(c, "sacctmgr", "-i", "delete", "account", acct)


def test_array_tasks_are_named_a_t(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    a = c.submit("-a", "0-1", "-c", "1", "-J", "arr", user="alice", wrap="sleep 300")
    try:
        for jid in (a, a + 1):
            c.wait_state(jid, "RUNNING", timeout=60)
        lines = ok(c, "squeue", "-h", "-j", str(a), "-o", "%i %A %F %K %j").splitlines()
        assert sorted(lines) == [f"{a}_0 {a} {a} 0 arr", f"{a}_1 {a + 1} {a} 1 arr"]
        assert ok(c, "squeue", "-h", "-j", f"{a}_1", "-o", "%i").split() == [f"{a}_1"]
        data = json.loads(ok(c, "squeue", "--json", "-j", f"{a}_1"))
        assert [(j["job_id"], j["array_job_id"], j["array_task_id"]) for j in data["jobs"]] == [(a + 1, a, 1)]
        one = ok(c, "scontrol", "-o", "show", "job", f"{a}_1")
        assert one.startswith(f"JobId={a + 1} ArrayJobId={a} ArrayTaskId=1 JobName=arr ")
        ok(c, "scontrol", "requeue", f"{a}_1", user="alice")
        wait_for(lambda: (c.job(a + 1) or {}).get("requeue_count"), 60, "task 1 requeued")
        c.step_pid(a, 1, timeout=60)  # task 0's batch step has started
    finally:
        clear(c)
    for jid in (a, a + 1):
        c.wait_state(jid, "CANCELLED", timeout=60)
    out = ok(c, "sacct", "-P", "-n", "-X", "-o", "JobID,JobIDRaw,State", "-j", str(a))
    assert out.splitlines() == [f"{a}_0|{a}|CANCELLED by 0", f"{a}_1|{a + 1}|CANCELLED by 0"]
    out = ok(c, "sacct", "-P", "-n", "-o", "JobID,State", "-j", f"{a}_0.batch")
    assert out.splitlines() == [f"{a}_0.batch|CANCELLED"]
