"""Issue 12, item 13 (and 10, controller side): ``ccontrol update JobId=N
TimeLimit=... Partition=... QOS=... Priority=... JobName=...`` with the
permission rules of cancel plus Slurm's (an owner only lowers a time limit;
a priority is an operator's), its effect on the scheduler and on a running
job's time limit; ``ccontrol reconfigure`` and SIGHUP re-reading partitions,
nodes and limits without dropping a job, a broken config refused; a node
whose agent is gone shown ``Not responding`` by the controller.

Real clusters, real users (alice in PKU, bob in physics, carol a coordinator
of PKU, oscar an operator), every wait a poll with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from crane.cli.common import CliError, call, load_config
from crane.core import messages as m
from crane.core.states import TERMINAL, JobState, NodeReason
from crane.local import write_new
from tests.conftest import Cluster, acct, clear, open_ancestors, wait_for


@pytest.fixture
def c(cluster: Cluster) -> Iterator[Cluster]:
    clear(cluster)
    yield cluster
    clear(cluster)


@pytest.fixture(scope="module")
def _accounts(cluster: Cluster, users: dict[str, int]) -> dict[str, int]:
    acct(cluster, "add", "qos", "high", "Priority=100")
    acct(cluster, "add", "qos", "other", "Priority=7")
    acct(cluster, "add", "account", "PKU")
    acct(cluster, "add", "account", "physics", "Parent=PKU")
    acct(cluster, "modify", "account", "where", "Name=PKU", "set", "AllowedQos+=high")
    acct(cluster, "add", "user", "alice", "Account=PKU")
    acct(cluster, "add", "user", "bob", "Account=physics")
    acct(cluster, "add", "user", "carol", "Account=PKU", "Coordinator=true")
    acct(cluster, "add", "user", "oscar", "Account=default", "Level=operator")
    return users


@pytest.fixture
def accounts(c: Cluster, _accounts: dict[str, int]) -> dict[str, int]:
    open_ancestors(c.base)  # another pytest session may have closed pytest's temp root meanwhile
    return _accounts


def update(c: Cluster, job_id: int, *kv: str, user: str | None = None) -> Any:
    return c.run("ccontrol", "update", f"JobId={job_id}", *kv, user=user)


def refused(c: Cluster, job_id: int, *kv: str, user: str, says: str) -> None:
    r = update(c, job_id, *kv, user=user)
    assert r.returncode != 0, (kv, user, r.stdout)
    assert r.stderr.startswith("ccontrol:") and says in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def fill_cpu(c: Cluster) -> list[int]:
    """Both nodes of partition CPU taken (two 4-cpu jobs of root)."""
    ids = [c.submit("-p", "CPU", "-c", "4", wrap="sleep 300") for _ in range(2)]
    for j in ids:
        c.wait_state(j, JobState.RUNNING, timeout=60)
    return ids


def pending(c: Cluster, *args: str, user: str = "alice") -> int:
    jid = c.submit("-p", "CPU", "-c", "4", *args, wrap="sleep 300", user=user)
    assert c.wait_state(jid, JobState.PENDING)["nodes"] == []
    return jid


# --------------------------------------------------------------------------- update of a pending job


def test_owner_updates_a_pending_job_and_the_scheduler_uses_it(c: Cluster, accounts: dict[str, int]) -> None:
    fill_cpu(c)
    jid = pending(c, "-t", "10:00", "-J", "first")
    # keys case-insensitive, several at once
    r = update(c, jid, "jobname=renamed", "TIMELIMIT=5", "QOS=high", user="alice")
    assert r.returncode == 0, r.stderr
    j = c.job(jid)
    assert j is not None
    assert (j["name"], j["time_limit"], j["qos"], j["priority"]) == ("renamed", 300, "high", 100)
    shown = json.loads(c.ok("cqueue", "--json", "-j", str(jid)))
    assert shown[0]["name"] == "renamed" and shown[0]["qos"] == "high"
    # refused: a QoS the account does not allow, one that does not exist, an unknown partition
    refused(c, jid, "QOS=other", user="alice", says="not allowed for account PKU")
    refused(c, jid, "QOS=nosuch", user="alice", says="nosuch")
    refused(c, jid, "Partition=nosuch", user="alice", says="invalid partition")
    refused(c, jid, "Color=blue", user="alice", says="unknown key")
    # an owner lowers a time limit, never raises it (nor to UNLIMITED or 0)
    for limit in ("6", "UNLIMITED", "0"):
        refused(c, jid, f"TimeLimit={limit}", user="alice", says="Permission denied")
    assert c.job(jid)["time_limit"] == 300  # type: ignore[index]
    # a new partition: the job starts there
    assert update(c, jid, "Partition=GPU", user="alice").returncode == 0
    j = c.wait_state(jid, JobState.RUNNING, timeout=60)
    assert j["partition"] == "GPU" and set(j["nodes"]) <= {"crane03", "crane04"}
    # running: partition, QoS and priority no longer change
    refused(c, jid, "Partition=CPU", user="alice", says="only be changed while pending")
    refused(c, jid, "QOS=normal", user="root", says="only be changed while pending")
    assert c.job(jid)["partition"] == "GPU"  # type: ignore[index]


def test_priority_is_an_operators_and_moves_a_job_up_the_queue(c: Cluster, accounts: dict[str, int]) -> None:
    fillers = fill_cpu(c)
    first, second = pending(c), pending(c)
    refused(c, second, "Priority=1000", user="alice", says="Permission denied")
    refused(c, second, "Priority=1000", user="carol", says="Permission denied")  # a coordinator is no operator
    assert update(c, second, "Priority=1000", user="oscar").returncode == 0
    assert c.job(second)["priority"] == 1000  # type: ignore[index]
    c.ok("ccancel", str(fillers[0]))
    c.wait_state(second, JobState.RUNNING, timeout=60)
    assert c.state(first) == JobState.PENDING


def test_who_may_update_a_job(c: Cluster, accounts: dict[str, int]) -> None:
    jid = c.submit("-t", "10:00", wrap="sleep 300", user="alice")
    refused(c, jid, "JobName=mine", user="bob", says="Permission denied")  # another user
    assert update(c, jid, "JobName=by-carol", user="carol").returncode == 0  # a coordinator of PKU
    refused(c, jid, "TimeLimit=20:00", user="carol", says="Permission denied")  # raising: an operator's
    assert update(c, jid, "TimeLimit=20:00", user="oscar").returncode == 0  # an operator raises it
    assert update(c, jid, "TimeLimit=UNLIMITED").returncode == 0  # root too
    j = c.job(jid)
    assert j is not None and j["name"] == "by-carol" and j["time_limit"] is None
    r = update(c, 999999, "JobName=x")
    assert r.returncode != 0 and "999999" in r.stderr


# --------------------------------------------------------------------------- a running job's time limit


def test_a_running_jobs_lowered_time_limit_ends_it_timeout(c: Cluster, accounts: dict[str, int]) -> None:
    jid = c.submit("-t", "10:00", wrap="sleep 300", user="alice")
    c.wait_state(jid, JobState.RUNNING, timeout=60)
    c.step_pid(jid)  # the agent runs the batch step (its timer armed)
    refused(c, jid, "TimeLimit=11:00", user="alice", says="Permission denied")
    assert update(c, jid, "TimeLimit=0:10", user="alice").returncode == 0  # 10 seconds (M:S)
    j = c.wait_state(jid, *TERMINAL, timeout=60)
    assert j["state"] == JobState.TIMEOUT, j
    assert j["time_limit"] == 10
    assert j["end_time"] - j["start_time"] >= 9  # the new limit, not before


# --------------------------------------------------------------------------- reconfigure and SIGHUP


def write_config(c: Cluster, cfg: dict[str, Any]) -> None:
    write_new(c.config_path, yaml.safe_dump(cfg, sort_keys=False).encode(), 0o644)


def nodes(c: Cluster) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in json.loads(c.ok("ccontrol", "show", "node", "--json"))["nodes"]}


def partitions(c: Cluster) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads(c.ok("ccontrol", "show", "partition", "--json"))["partitions"]}


def ctld_log(c: Cluster) -> str:
    with open(os.path.join(c.base, "log", "cranectld.log")) as f:
        return f.read()


def test_reconfigure_with_jobs_running(make_cluster: Callable[..., Cluster], users: dict[str, int]) -> None:
    c = make_cluster(nodes=2, cpus=2, CranedTimeout=5)
    open_ancestors(c.base)
    job = c.submit("-p", "CPU", wrap="sleep 300")
    c.wait_state(job, JobState.RUNNING, timeout=60)
    cfg = c.config()
    # a new node (crane03: its agent key made first, its agent not yet started), a new partition, a new limit
    from crane import keys

    keys.generate(os.path.join(c.base, "keys"), ["crane03"])
    cfg["Nodes"].append({"name": "crane03", "cpu": 2, "memory": "8G"})
    cfg["Partitions"].append({"name": "NEW", "nodes": "crane02,crane03"})
    cfg["MaxSubmitJobsPerUser"] = 1
    write_config(c, cfg)
    c.ok("ccontrol", "reconfigure")
    assert c.state(job) == JobState.RUNNING
    assert set(partitions(c)) == {"CPU", "GPU", "NEW"}
    fresh = nodes(c)["crane03"]
    assert fresh["reason"] == NodeReason.NOT_RESPONDING  # no agent yet
    assert "Reason=Not responding" in c.ok("ccontrol", "show", "node", "crane03")
    # the limit applies at once (root is exempt from it)
    c.ok("cbatch", "--wrap", "sleep 300", user="alice")
    r = c.run("cbatch", "--wrap", "true", user="alice")
    assert r.returncode != 0 and "MaxSubmitJobsPerUser" in r.stderr, r.stderr
    # the new node's agent registers, and runs jobs of the new partition
    c.start_agent("crane03")
    c.wait_nodes_up(60, nodes=["crane03"])
    on_new = c.submit("-p", "NEW", "-w", "crane03", wrap="sleep 300")
    assert c.wait_state(on_new, JobState.RUNNING, timeout=60)["nodes"] == ["crane03"]
    # non-root users: only an admin reconfigures
    r = c.run("ccontrol", "reconfigure", user="alice")
    assert r.returncode != 0 and "Permission denied" in r.stderr

    # a broken config is refused with its one-line error, by ccontrol
    # reconfigure and by SIGHUP (logged); the old one stays
    good = load_config(c.config_path)
    write_config(c, dict(cfg, KillWiat=3))
    r = c.run("ccontrol", "reconfigure")  # (the CLI reads the file too)
    assert r.returncode != 0 and r.stderr.startswith("ccontrol:") and "KillWiat" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(CliError) as err:  # the controller's own answer
        call(good, m.Control("reconfigure", {}))
    assert "KillWiat: unknown key" in str(err.value) and "\n" not in str(err.value)
    refusals = ctld_log(c).count("reconfigure refused")
    os.kill(c.pids()["cranectld"], signal.SIGHUP)
    wait_for(lambda: ctld_log(c).count("reconfigure refused") > refusals, 30, "SIGHUP refusal logged")
    write_config(c, cfg)
    assert "NEW" in partitions(c) and c.state(on_new) == JobState.RUNNING
    assert c.state(job) == JobState.RUNNING

    # removing a node a job runs on: the node is kept (logged), the rest applies
    shrunk = dict(cfg, Nodes=[n for n in cfg["Nodes"] if n["name"] != "crane03"],
                  Partitions=[p for p in cfg["Partitions"] if p["name"] != "NEW"])  # fmt: skip
    write_config(c, shrunk)
    r = c.run("ccontrol", "reconfigure")
    assert r.returncode != 0 and "partition NEW has" in r.stderr, r.stderr  # NEW has an active job
    shrunk["Partitions"] = [*shrunk["Partitions"], {"name": "NEW", "nodes": "crane02"}]
    write_config(c, shrunk)
    c.ok("ccontrol", "reconfigure")
    assert "crane03" in nodes(c) and c.state(on_new) == JobState.RUNNING
    assert "node crane03 kept" in ctld_log(c)

    # SIGHUP: the same re-read
    shrunk["Partitions"] = [*shrunk["Partitions"], {"name": "HUP", "nodes": "crane01"}]
    write_config(c, shrunk)
    os.kill(c.pids()["cranectld"], signal.SIGHUP)
    wait_for(lambda: "HUP" in partitions(c), 30, "partition HUP after SIGHUP")
    assert c.state(job) == JobState.RUNNING and c.state(on_new) == JobState.RUNNING

    # once crane03 is free, it goes
    c.ok("ccancel", str(on_new))
    c.wait_state(on_new, *TERMINAL, timeout=60)
    os.kill(c.pids()["cranectld"], signal.SIGHUP)
    wait_for(lambda: "crane03" not in nodes(c), 30, "crane03 removed")
    assert c.state(job) == JobState.RUNNING


def test_a_stopped_agent_is_not_responding(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=2, cpus=2, CranedTimeout=3)
    assert nodes(c)["crane02"]["reason"] == ""
    c.stop("craned-crane02")
    wait_for(lambda: nodes(c)["crane02"]["reason"] == NodeReason.NOT_RESPONDING, 60, "crane02 not responding")
    assert "Reason=Not responding" in c.ok("ccontrol", "show", "node", "crane02")
    assert "heartbeat" in ctld_log(c)  # the detail stays in the log
