"""The viewing and admin CLIs against a real local cluster: cqueue, cacct,
cinfo, ccontrol, cacctmgr (SPEC §6, §7)."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator

import pytest

from tests.conftest import Cluster, open_ancestors, wait_for

ME = pwd.getpwuid(os.getuid()).pw_name

QUEUE_HEADER = "JOBID PARTITION NAME USER ACCOUNT STATUS TYPE TIME TIMELIMIT NODES NODELIST(REASON)"
ACCT_HEADER = "JOBID JOBNAME PARTITION ACCOUNT USER STATE EXITCODE ELAPSED NODELIST REASON"


def rows(out: str) -> dict[str, str]:
    """Table lines keyed by their first column."""
    return {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}


def cancel(cluster: Cluster, *ids: int) -> None:
    if ids:
        cluster.run("ccancel", "--wait", ",".join(str(i) for i in ids))


@pytest.fixture
def running(cluster: Cluster) -> Iterator[list[int]]:
    """A list the test appends job ids to; they are cancelled (and gone) afterwards."""
    ids: list[int] = []
    yield ids
    cancel(cluster, *ids)


def start(cluster: Cluster, ids: list[int], *argv: str, wrap: str = "sleep 300") -> int:
    job = cluster.submit(*argv, wrap=wrap)
    ids.append(job)
    return job


# --------------------------------------------------------------------------- cqueue


def test_cqueue_default_table(cluster: Cluster, running: list[int]) -> None:
    job = start(cluster, running, "-J", "cq_default", "-t", "10")
    cluster.wait_state(job, "RUNNING")
    out = cluster.ok("cqueue")
    header, *_ = out.splitlines()
    assert header.split() == QUEUE_HEADER.split()
    line = rows(out)[str(job)]
    cols = line.split()
    assert cols[1:7] == ["CPU", "cq_default", ME, "default", "RUNNING", "Batch"]
    assert cols[8] == "00:10:00" and cols[9] == "1"
    assert cols[10] in ("crane01", "crane02")
    j = cluster.job(job)
    assert j is not None and cols[10] == j["nodes"][0]
    # columns are left-aligned: every value starts under its header
    for name, value in (("PARTITION", "CPU"), ("NAME", "cq_default"), ("STATUS", "RUNNING"),
                        ("NODELIST(REASON)", cols[10])):  # fmt: skip
        assert line.index(value) == header.index(name), (name, header, line)


def test_cqueue_pending_reason_and_filters(cluster: Cluster, running: list[int]) -> None:
    a = start(cluster, running, "-J", "cq_fa", "-p", "GPU", "-w", "crane03")
    b = start(cluster, running, "-J", "cq_fb")
    held = start(cluster, running, "-J", "cq_fheld", "-H")
    cluster.wait_state(a, "RUNNING")
    cluster.wait_state(b, "RUNNING")
    assert rows(cluster.ok("cqueue"))[str(held)].split()[-1] == "(JobHeldUser)"

    def ids(*argv: str) -> set[int]:
        return {int(k) for k in rows(cluster.ok("cqueue", "-N", *argv))}

    assert ids("-j", f"{a},{held}") == {a, held}
    assert ids("-n", "cq_fb") == {b}
    assert ids("-p", "GPU", "-j", f"{a},{b},{held}") == {a}
    assert ids("-w", "crane03") == {a}
    assert ids("-w", "crane[03-04]", "-n", "cq_fa") == {a}
    assert ids("-t", "PD", "-j", f"{a},{b},{held}") == {held}
    assert ids("-t", "pending,r", "-j", f"{a},{b},{held}") == {a, b, held}
    assert ids("--state", "RUNNING", "-j", f"{a},{b},{held}") == {a, b}
    assert ids("-u", ME, "-j", f"{a},{b}") == {a, b}
    assert ids("-u", str(os.getuid()), "-j", f"{a},{b}") == {a, b}
    assert ids("-u", "nosuchuser") == set()
    assert ids("-A", "default", "-q", "normal", "-j", f"{a},{b}") == {a, b}
    assert ids("-A", "nosuchaccount") == set()

    r = cluster.run("cqueue", "-t", "bogus")
    assert r.returncode == 2 and r.stderr.startswith('cqueue: error: invalid state "bogus"')
    r = cluster.run("cqueue", "-j", "0")
    assert r.returncode == 2 and "invalid job id list" in r.stderr


def test_cqueue_noheader_format_json(cluster: Cluster, running: list[int]) -> None:
    job = start(cluster, running, "-J", "cq_fmt", "-c", "2")
    cluster.wait_state(job, "RUNNING")
    out = cluster.ok("cqueue", "-N", "-j", str(job))
    assert len(out.splitlines()) == 1 and out.split()[0] == str(job)

    out = cluster.ok("cqueue", "-N", "-j", str(job), "-o", "%i|%j|%t|%T|%u|%a|%P|%q|%D|%C")
    assert out.strip() == f"{job}|cq_fmt|R|RUNNING|{ME}|default|CPU|normal|1|2"
    out = cluster.ok("cqueue", "-j", str(job), "-o", "%.8i %-10j %t")
    head, line = out.splitlines()
    assert head == "   JOBID NAME       ST"
    assert line == f"{job:>8} cq_fmt     R"
    r = cluster.run("cqueue", "-o", "%i %Y")
    assert r.returncode == 2 and "unknown field %Y" in r.stderr

    jobs = json.loads(cluster.ok("cqueue", "--json", "-j", str(job)))
    assert isinstance(jobs, list) and len(jobs) == 1
    j = jobs[0]
    for key in ("job_id", "name", "user", "account", "partition", "qos", "state", "reason", "nodes", "steps"):
        assert key in j, key
    assert (j["job_id"], j["name"], j["user"], j["state"], j["cpus"]) == (job, "cq_fmt", ME, "RUNNING", 2)
    assert j["steps"][0]["step_id"] == 1
    assert json.loads(cluster.ok("cqueue", "--json", "-n", "no_such_job_name")) == []


def test_cqueue_steps(cluster: Cluster, running: list[int]) -> None:
    job = start(cluster, running, "-J", "cq_steps")
    cluster.wait_state(job, "RUNNING")
    node = cluster.job(job)["nodes"][0]  # type: ignore[index]
    out = cluster.ok("cqueue", "-s", "-j", str(job))
    head, *lines = out.splitlines()
    assert head.split() == ["STEPID", "NAME", "PARTITION", "USER", "STATE", "TIME", "NODELIST"]
    assert [ln.split()[:5] for ln in lines] == [[f"{job}.1", "batch", "CPU", ME, "RUNNING"]]
    assert lines[0].split()[-1] == node
    steps = json.loads(cluster.ok("cqueue", "--step", "--json", "-j", str(job)))
    assert [(s["job_id"], s["step_id"], s["state"]) for s in steps] == [(job, 1, "RUNNING")]
    out = cluster.ok("cqueue", "-s", "-N", "-o", "%i %T", "-j", f"{job}.1")
    assert out.strip() == f"{job}.1 RUNNING"


# --------------------------------------------------------------------------- cacct


def test_cacct_states_exit_codes_and_cancels(cluster: Cluster, running: list[int]) -> None:
    ok = cluster.submit("-J", "ca_ok", wrap="true")
    bad = cluster.submit("-J", "ca_bad", wrap="exit 3")
    victim = start(cluster, running, "-J", "ca_victim")
    cluster.wait_state(victim, "RUNNING")
    cluster.ok("ccancel", "--wait", str(victim), "-m", "no longer needed")
    cluster.wait_state(ok, "COMPLETED")
    cluster.wait_state(bad, "FAILED")

    out = cluster.ok("cacct", "-j", f"{ok},{bad},{victim}")
    head, *_ = out.splitlines()
    assert head.split() == ACCT_HEADER.split()
    by_id = rows(out)
    assert by_id[str(ok)].split()[1:7] == ["ca_ok", "CPU", "default", ME, "COMPLETED", "0:0"]
    assert by_id[str(bad)].split()[5:7] == ["FAILED", "3:0"]
    v = by_id[str(victim)]
    assert v.split()[5] == "CANCELLED+" and v.endswith("no_longer_needed")  # no spaces in a cell (issue 12)
    assert f"CANCELLED by {ME}" in cluster.ok("cacct", "-l", "-j", str(victim))
    assert v.index("CANCELLED") == head.index("STATE")

    jobs = {j["job_id"]: j for j in json.loads(cluster.ok("cacct", "--json", "-j", f"{ok},{bad},{victim}"))}
    assert set(jobs) == {ok, bad, victim}
    for j in jobs.values():
        for key in ("exit_code", "cancelled_by", "message", "start_time", "end_time", "state"):
            assert key in j, key
    assert jobs[bad]["exit_code"] == 3
    assert jobs[victim]["cancelled_by"] == ME and jobs[victim]["message"] == "no longer needed"
    assert jobs[victim]["state"] == "CANCELLED" and jobs[victim]["end_time"] >= jobs[victim]["start_time"]

    # filters on finished jobs
    assert set(rows(cluster.ok("cacct", "-N", "-t", "CA", "-j", f"{ok},{bad},{victim}"))) == {str(victim)}
    assert set(rows(cluster.ok("cacct", "-N", "-t", "failed,cd", "-j", f"{ok},{bad},{victim}"))) == {str(ok), str(bad)}
    assert set(rows(cluster.ok("cacct", "-N", "-S", "2000-01-01", "-n", "ca_bad"))) == {str(bad)}
    out = cluster.ok("cacct", "-N", "-j", str(bad), "-o", "%i %x %T")
    assert out.strip() == f"{bad} 3:0 FAILED"
    # a finished job is not in cqueue
    assert json.loads(cluster.ok("cqueue", "--json", "-j", str(ok))) == []


# --------------------------------------------------------------------------- cinfo


def test_cinfo_partitions_and_nodes(cluster: Cluster, running: list[int]) -> None:
    job = start(cluster, running, "-w", "crane01", "-J", "ci_mix")
    cluster.wait_state(job, "RUNNING")
    out = cluster.ok("cinfo")
    head, *lines = out.splitlines()
    assert head.split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"]
    table = [ln.split() for ln in lines]
    assert ["CPU*", "up", "UNLIMITED", "1", "MIX", "crane01"] in table
    assert ["CPU*", "up", "UNLIMITED", "1", "IDLE", "crane02"] in table
    assert ["GPU", "up", "UNLIMITED", "2", "IDLE", "crane[03-04]"] in table

    out = cluster.ok("cinfo", "-N")
    by_node = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:]}
    assert by_node["crane01"][1:4] == ["CPU*", "MIX", "1/4"]
    assert by_node["crane03"][1:4] == ["GPU", "IDLE", "0/4"]
    assert set(rows(cluster.ok("cinfo", "-N", "--noheader", "-p", "GPU"))) == {"crane03", "crane04"}
    assert [ln.split()[4] for ln in cluster.ok("cinfo", "--noheader", "-t", "mix").splitlines()] == ["MIX"]

    data = json.loads(cluster.ok("cinfo", "--json"))
    parts = {p["name"]: p for p in data["partitions"]}
    assert parts["CPU"]["default"] and parts["CPU"]["nodes"] == ["crane01", "crane02"]
    nodes = {n["name"]: n for n in data["nodes"]}
    assert nodes["crane01"]["state"] == "MIX" and nodes["crane01"]["cpus_alloc"] == 1
    assert nodes["crane04"]["state"] == "IDLE" and nodes["crane04"]["partitions"] == ["GPU"]
    r = cluster.run("cinfo", "-p", "NOPE")
    assert r.returncode == 2 and "NOPE" in r.stderr


# --------------------------------------------------------------------------- ccontrol


def test_ccontrol_show_job_node_partition(cluster: Cluster, running: list[int]) -> None:
    job = start(cluster, running, "-J", "cc_show", "-c", "2", "--mem", "1G", "-t", "1:00:00")
    cluster.wait_state(job, "RUNNING")
    out = cluster.ok("ccontrol", "show", "job", str(job))
    assert out.startswith(f"JobId={job} JobName=cc_show\n")
    kv = dict(w.split("=", 1) for w in out.split() if "=" in w)
    assert kv["UserId"] == f"{ME}({os.getuid()})"
    assert (kv["Account"], kv["QOS"], kv["JobState"], kv["Partition"]) == ("default", "normal", "RUNNING", "CPU")
    assert (kv["NumNodes"], kv["NumCPUs"], kv["Memory"], kv["TimeLimit"]) == ("1", "2", "1G", "01:00:00")
    assert kv["NodeList"] in ("crane01", "crane02") and kv["ExitCode"] == "0:0"
    assert kv["WorkDir"] == cluster.workdir and kv["StdOut"] == cluster.file(f"crane-{job}.out")
    assert kv["RequeueCount"] == "0" and f"StepId={job}.1" in out
    assert "CancelledBy" not in out
    data = json.loads(cluster.ok("ccontrol", "--json", "show", "job", str(job)))
    assert [j["job_id"] for j in data["jobs"]] == [job]

    cluster.ok("ccancel", "--wait", str(job), "-m", "done with it")
    out = cluster.ok("ccontrol", "show", "job", str(job))
    assert "JobState=CANCELLED" in out and f"CancelledBy={ME}" in out
    assert "CancelMessage=done with it" in out

    r = cluster.run("ccontrol", "show", "job", "999999")
    assert (r.returncode, r.stderr.strip()) == (1, "ccontrol: error: Job 999999 not found")
    r = cluster.run("ccontrol", "show", "job", "x1")
    assert r.returncode == 2

    out = cluster.ok("ccontrol", "show", "node", "crane03")
    assert out.startswith("NodeName=crane03 State=IDLE CPUTot=4 CPUAlloc=0")
    assert "Partitions=GPU" in out
    assert json.loads(cluster.ok("ccontrol", "show", "node", "crane03", "--json"))["nodes"][0]["name"] == "crane03"
    r = cluster.run("ccontrol", "show", "node", "nonode")
    assert r.returncode == 1 and "nonode not found" in r.stderr
    out = cluster.ok("ccontrol", "show", "partition", "GPU")
    assert out.startswith("PartitionName=GPU Default=NO") and "Nodes=crane[03-04]" in out
    assert "PartitionName=CPU Default=YES" in cluster.ok("ccontrol", "show", "partition")
    r = cluster.run("ccontrol", "frobnicate", "1")
    assert r.returncode == 2 and r.stderr.startswith('ccontrol: error: unknown command "frobnicate"')


def test_ccontrol_drain_and_resume_node(cluster: Cluster) -> None:
    def cinfo_state(node: str) -> list[str]:
        line = rows(cluster.ok("cinfo", "-N", "--noheader", "-n", node))[node]
        return line.split(None, 5)[2::3]  # STATE, REASON

    try:
        cluster.ok("ccontrol", "update", "NodeName=crane04", "State=DRAIN", "Reason=maint")
        assert cinfo_state("crane04") == ["DRAIN", "maint"]
        assert ["GPU", "up", "UNLIMITED", "1", "DRAIN", "crane04"] in [
            ln.split() for ln in cluster.ok("cinfo").splitlines()
        ]
        assert "Reason=maint" in cluster.ok("ccontrol", "show", "node", "crane04")
        # a drained node takes no new jobs
        job = cluster.submit("-w", "crane04", "-p", "GPU", wrap="true")
        try:
            j = cluster.wait_state(job, "PENDING")
            assert j["nodes"] == []
        finally:
            cancel(cluster, job)
    finally:
        cluster.ok("ccontrol", "update", "NodeName=crane04", "State=RESUME")
    assert cinfo_state("crane04")[0] == "IDLE"
    r = cluster.run("ccontrol", "update", "NodeName=crane04", "State=SLEEPY")
    assert r.returncode == 2 and "SLEEPY" in r.stderr
    r = cluster.run("ccontrol", "update", "NodeName=nonode", "State=DRAIN")
    assert r.returncode == 2


def test_ccontrol_hold_release(cluster: Cluster, running: list[int]) -> None:
    held = start(cluster, running, "-H", "-J", "cc_held")
    j = cluster.wait_state(held, "PENDING")
    assert j["held"] and j["reason"] == "JobHeldUser"
    assert rows(cluster.ok("cqueue", "-j", str(held)))[str(held)].endswith("(JobHeldUser)")
    cluster.ok("ccontrol", "release", str(held))
    cluster.wait_state(held, "RUNNING")
    r = cluster.run("ccontrol", "hold", str(held))
    assert r.returncode == 4 and f"Job {held} is not pending" in r.stderr

    # hold a job that is pending for resources; it stays pending when they free up
    blocker = start(cluster, running, "-p", "GPU", "-w", "crane03", "-c", "4")
    cluster.wait_state(blocker, "RUNNING")
    waiting = start(cluster, running, "-p", "GPU", "-w", "crane03", "-c", "4", "-J", "cc_wait")
    cluster.wait_state(waiting, "PENDING")
    cluster.ok("ccontrol", "hold", str(waiting))
    assert cluster.job(waiting)["reason"] == "JobHeldUser"  # type: ignore[index]
    cancel(cluster, blocker)
    wait_for(lambda: cluster.ok("cinfo", "-N", "--noheader", "-n", "crane03").split()[2] == "IDLE",
             what="crane03 idle")  # fmt: skip
    assert cluster.state(waiting) == "PENDING"
    cluster.ok("ccontrol", "release", str(waiting))
    cluster.wait_state(waiting, "RUNNING")

    r = cluster.run("ccontrol", "release", "999999")
    assert r.returncode == 4 and "999999" in r.stderr


def test_ccontrol_suspend_resume_requeue(cluster: Cluster, running: list[int]) -> None:
    job = start(cluster, running, "-J", "cc_susp")
    cluster.wait_state(job, "RUNNING")
    cluster.ok("ccontrol", "suspend", str(job))
    cluster.wait_state(job, "SUSPENDED")
    assert "SUSPENDED" in rows(cluster.ok("cqueue", "-j", str(job)))[str(job)]
    cluster.ok("ccontrol", "resume", str(job))
    cluster.wait_state(job, "RUNNING")
    cluster.ok("ccontrol", "requeue", str(job))
    wait_for(lambda: (cluster.job(job) or {}).get("requeue_count") == 1, what="requeue count 1")
    cluster.wait_state(job, "PENDING", "RUNNING")
    assert "RequeueCount=1" in cluster.ok("ccontrol", "show", "job", str(job))


# --------------------------------------------------------------------------- cacctmgr


def test_cacctmgr_seed_example(cluster: Cluster) -> None:
    assert cluster.ok("cacctmgr", "add", "qos", "Background", "Priority=100").strip()
    cluster.ok("cacctmgr", "add", "qos", "Interactive", "Priority=5000", "Preempt=Background",
               "PreemptMode=CANCEL")  # fmt: skip
    cluster.ok("cacctmgr", "add", "account", "MyAccount")
    cluster.ok("cacctmgr", "modify", "account", "where", "Name=MyAccount", "set",
               "AllowedQos+=Background,Interactive")  # fmt: skip
    out = cluster.ok("cacctmgr", "show", "qos", "format=Name,Priority,Preempt,PreemptMode")
    table = [[c.strip() for c in ln.strip("|").split("|")] for ln in out.splitlines() if ln.startswith("|")]
    assert table[0] == ["NAME", "PRIORITY", "PREEMPT", "PREEMPTMODE"]
    assert ["Background", "100", "-", "CANCEL"] in table
    assert ["Interactive", "5000", "Background", "CANCEL"] in table

    out = cluster.ok("cacctmgr", "show", "account", "MyAccount", "format=Name,AllowedQos")
    assert "Background" in out and "Interactive" in out

    cluster.ok("cacctmgr", "modify", "qos", "where", "Name=Interactive", "set", 'Preempt=""')
    rows_ = json.loads(cluster.ok("cacctmgr", "--json", "show", "qos", "Interactive"))
    assert rows_[0]["name"] == "Interactive" and rows_[0]["preempt"] == []
    assert rows_[0]["priority"] == 5000
    # the config option before the verb
    out = cluster.ok("cacctmgr", "-C", cluster.config_path, "show", "qos", "Interactive", "format=Name,Preempt")
    assert "| Interactive | -       |" in out


def test_cacctmgr_errors(cluster: Cluster) -> None:
    cluster.ok("cacctmgr", "add", "qos", "ErrQos")
    r = cluster.run("cacctmgr", "modify", "qos", "where", "Name=ErrQos", "set", "Preempt=NoSuchQos")
    assert r.returncode == 1, r
    assert r.stderr.startswith("cacctmgr: error: Failed to modify information:")
    assert "NoSuchQos" in r.stderr and r.stdout == ""
    r = cluster.run("cacctmgr", "modify", "qos", "where", "Name=ErrQos", "set", "Preempt=ErrQos")
    assert r.returncode == 1 and r.stderr.startswith("cacctmgr: error: ")
    r = cluster.run("cacctmgr", "frob", "qos")
    assert r.returncode == 2 and r.stderr.startswith('cacctmgr: error: Unknown command "frob"')
    r = cluster.run("cacctmgr")
    assert r.returncode == 2 and r.stderr.startswith("cacctmgr: error: usage:")
    r = cluster.run("cacctmgr", "--bogus", "show", "qos")
    assert r.returncode == 2
    r = cluster.run("cacctmgr", "show", "qos", "format=Name,Nope")
    assert r.returncode == 2 and "Nope" in r.stderr
    assert "Usage: cacctmgr" in cluster.ok("cacctmgr", "--help")


def test_plain_user_views_and_refusals(cluster: Cluster, users: dict[str, int], running: list[int]) -> None:
    open_ancestors(cluster.base)
    r = cluster.run("cacctmgr", "add", "qos", "AliceQos", user="alice")
    assert r.returncode == 1 and r.stderr.strip() == "cacctmgr: error: Permission denied"
    out = cluster.run("cacctmgr", "show", "qos", user="alice")
    assert out.returncode == 0 and "AliceQos" not in out.stdout
    r = cluster.run("ccontrol", "update", "NodeName=crane02", "State=DRAIN", user="alice")
    assert r.returncode != 0 and "Permission denied" in r.stderr

    job = cluster.submit("-J", "al_job", wrap="sleep 300", user="alice")
    running.append(job)
    cluster.wait_state(job, "RUNNING")
    line = rows(cluster.ok("cqueue", "-u", "alice", "-j", str(job), user="alice"))[str(job)]
    assert line.split()[2:4] == ["al_job", "alice"]
    r = cluster.run("ccontrol", "hold", str(job), user="bob")
    assert r.returncode == 4 and "Permission denied" in r.stderr
    cluster.ok("ccancel", "--wait", str(job), "-m", "alice is done", user="alice")
    line = rows(cluster.ok("cacct", "-j", str(job), user="bob"))[str(job)]
    assert "CANCELLED+" in line and line.endswith("alice_is_done")
    line = cluster.ok("cacct", "-P", "-N", "-j", str(job), user="bob")
    assert "|CANCELLED by alice|" in line and line.rstrip("\n").endswith("|alice is done")
