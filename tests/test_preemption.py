"""Job preemption end to end (SPEC §6, seed 001): real cranectld + craned
processes, real job processes, QoS set up through cacctmgr.

Waiting is always polling with a deadline (``wait_for``); "nothing happened"
is checked after the scheduler provably ran more passes (a filler job placed
and finished after the job that might have preempted)."""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

from tests.conftest import IS_ROOT, Cluster, pid_alive, wait_for

ACCT = ("-A", "MyAccount")


# --------------------------------------------------------------------------- helpers


def acctmgr(c: Cluster, *argv: str) -> None:
    """One cacctmgr operation: the CLI when it exists, else the same parsed
    operation sent through the Python API."""
    if importlib.util.find_spec("crane.cli.cacctmgr") is not None:
        c.ok("cacctmgr", *argv)
        return
    from crane.cacctmgr_parse import parse_argv
    from crane.cli.common import call, load_config
    from crane.core import messages as m

    call(load_config(c.config_path), m.AcctOp(parse_argv(list(argv))))


def setup_qos(
    c: Cluster,
    background: tuple[str, ...] = (),
    interactive: tuple[str, ...] = ("Preempt=Background", "PreemptMode=CANCEL"),
    extra_qos: dict[str, tuple[str, ...]] | None = None,
    default_account: bool = False,
) -> None:
    """The seed's QoS pair (plus ``extra_qos``), account MyAccount allowing
    all of them, root a member of MyAccount."""
    acctmgr(c, "add", "qos", "Background", "Priority=100", *background)
    for name, args in (extra_qos or {}).items():
        acctmgr(c, "add", "qos", name, *args)
    acctmgr(c, "add", "qos", "Interactive", "Priority=5000", *interactive)
    acctmgr(c, "add", "account", "MyAccount")
    allowed = ",".join(["Background", "Interactive", *(extra_qos or {})])
    acctmgr(c, "modify", "account", "where", "Name=MyAccount", "set", f"AllowedQos+={allowed}")
    user = ["add", "user", "root", "Account=MyAccount"]
    if default_account:
        user.append("DefaultAccount=MyAccount")
    acctmgr(c, *user)


def script(c: Cluster, name: str, body: str) -> str:
    path = c.file(name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body.strip() + "\n")
    os.chmod(path, 0o755)
    return path


def start(c: Cluster, *argv: str, wrap: str | None = None) -> tuple[int, int]:
    """Submit, wait until RUNNING, return (job id, batch step pid)."""
    jid = c.submit(*argv, wrap=wrap)
    c.wait_state(jid, "RUNNING")
    return jid, c.step_pid(jid)


def settle(c: Cluster, partition: str = "GPU", *argv: str) -> None:
    """Make the scheduler run further passes after everything submitted so far:
    a filler job is placed (one pass) and finishes (resources freed: another
    pass). A preemption that was going to happen would have happened by then."""
    jid = c.submit("-p", partition, *argv, wrap="true")
    c.wait_state(jid, "COMPLETED", "FAILED", timeout=30)
    assert c.state(jid) == "COMPLETED"


def assert_untouched(c: Cluster, victims: dict[int, int], pending: int) -> None:
    for jid, pid in victims.items():
        j = c.job(jid)
        assert j is not None and j["state"] == "RUNNING", j
        assert not j["reason"].startswith("Preempted"), j
        assert j["requeue_count"] == 0
        assert pid_alive(pid), f"job {jid} step pid {pid} died"
    p = c.job(pending)
    assert p is not None and p["state"] == "PENDING", p
    assert p["reason"] != "Waiting for preemption", p


def preempted_reason(high: int) -> str:
    return f"Preempted by job {high}"


def counter(c: Cluster, name: str) -> int:
    text = c.read(name).strip()
    return int(text) if text.isdigit() else -1


def stable_for(read: Any, seconds: float, timeout: float = 15.0, what: str = "value stable") -> Any:
    """Poll ``read()`` until it returned the same value for ``seconds``."""
    state: dict[str, Any] = {"v": object(), "since": 0.0}

    def cond() -> Any:
        v = read()
        now = time.monotonic()
        if v != state["v"]:
            state["v"], state["since"] = v, now
            return None
        return (v,) if now - state["since"] >= seconds else None

    return wait_for(cond, timeout, what, interval=0.05)[0]


COUNTER_BODY = """
i=0
while true; do
  i=$((i+1))
  echo $i > {out}.tmp && mv {out}.tmp {out}
  sleep 0.05
done
"""


# --------------------------------------------------------------------------- 1. the seed


def test_seed_example_cancel_preemption(make_cluster: Any) -> None:
    c = make_cluster(nodes=2)  # partition CPU = crane01 alone
    # 1. two QoS levels; 2. the account may use both (root's default account)
    acctmgr(c, "add", "qos", "Background", "Priority=100")
    acctmgr(
        c, "add", "qos", "Interactive", "Priority=5000", "Preempt=Background", "PreemptMode=CANCEL"
    )
    acctmgr(c, "add", "account", "MyAccount")
    acctmgr(
        c,
        "modify",
        "account",
        "where",
        "Name=MyAccount",
        "set",
        "AllowedQos+=Background,Interactive",
    )
    acctmgr(c, "add", "user", "root", "Account=MyAccount", "DefaultAccount=MyAccount")
    long_job = script(c, "long_job.sh", "sleep 300")
    short_job = script(c, "short_job.sh", "sleep 60")

    # 3. a low-priority job fills the node
    out = c.ok("cbatch", "-p", "CPU", "--exclusive", "-q", "Background", long_job)
    low = int(out.split(":")[1].strip().rstrip("."))
    c.wait_state(low, "RUNNING")
    pid = c.step_pid(low)
    assert c.job(low)["nodes"] == ["crane01"]  # type: ignore[index]

    # 4. a high-priority job preempts it
    out = c.ok("cbatch", "-p", "CPU", "-q", "Interactive", short_job)
    high = int(out.split(":")[1].strip().rstrip("."))
    hj = c.wait_state(high, "RUNNING", timeout=20)
    assert hj["nodes"] == ["crane01"]
    v = c.wait_state(low, "CANCELLED", timeout=20)
    assert v["reason"] == preempted_reason(high)
    assert v["message"] == preempted_reason(high)
    assert v["cancel_path"] == "preemption"
    wait_for(lambda: not pid_alive(pid), 10, f"victim pid {pid} dead")
    assert c.state(high) == "RUNNING"
    assert c.job(high)["requeue_count"] == 0  # type: ignore[index]


# --------------------------------------------------------------------------- 2-4, 6: no preemption


def test_no_preemption_when_preempt_type_none(make_cluster: Any) -> None:
    c = make_cluster(nodes=2, Preempt={"PreemptType": "none", "PreemptMode": "OFF"})
    setup_qos(c)
    low, pid = start(c, "-p", "CPU", "--exclusive", *ACCT, "-q", "Background", wrap="sleep 300")
    high = c.submit("-p", "CPU", *ACCT, "-q", "Interactive", wrap="sleep 60")
    settle(c, "GPU", *ACCT, "-q", "Background")
    settle(c, "GPU", *ACCT, "-q", "Interactive")
    assert_untouched(c, {low: pid}, high)
    assert c.job(high)["reason"] == "Resources"  # type: ignore[index]


def test_no_preemption_without_preempt_list(make_cluster: Any) -> None:
    c = make_cluster(nodes=2)
    setup_qos(c, interactive=())  # Interactive: high priority, but no Preempt list
    low, pid = start(c, "-p", "CPU", "--exclusive", *ACCT, "-q", "Background", wrap="sleep 300")
    high = c.submit("-p", "CPU", *ACCT, "-q", "Interactive", wrap="sleep 60")
    settle(c, "GPU", *ACCT, "-q", "Background")
    assert_untouched(c, {low: pid}, high)


def test_no_preemption_when_freeing_candidates_is_not_enough(make_cluster: Any) -> None:
    c = make_cluster(nodes=2, cpus=4)
    setup_qos(c, extra_qos={"Protected": ("Priority=50",)})  # not in Interactive's Preempt list
    prot, ppid = start(c, "-p", "CPU", "-c", "2", *ACCT, "-q", "Protected", wrap="sleep 300")
    b1, pid1 = start(c, "-p", "CPU", "-c", "1", *ACCT, "-q", "Background", wrap="sleep 300")
    b2, pid2 = start(c, "-p", "CPU", "-c", "1", *ACCT, "-q", "Background", wrap="sleep 300")
    high = c.submit("-p", "CPU", "-c", "4", *ACCT, "-q", "Interactive", wrap="sleep 60")
    settle(c, "GPU", *ACCT, "-q", "Background")
    assert_untouched(c, {prot: ppid, b1: pid1, b2: pid2}, high)
    # it still starts once the node is free (the two preemptable jobs are not
    # enough, the protected one leaves on its own)
    c.ok("ccancel", str(prot))
    c.wait_state(high, "RUNNING", timeout=20)
    for jid in (b1, b2):
        v = c.wait_state(jid, "CANCELLED", timeout=20)
        assert v["reason"] == preempted_reason(high)


def test_exempt_time_respected(make_cluster: Any) -> None:
    c = make_cluster(nodes=2)
    setup_qos(c, background=("PreemptExemptTime=3600",))
    low, pid = start(c, "-p", "CPU", "--exclusive", *ACCT, "-q", "Background", wrap="sleep 300")
    high = c.submit("-p", "CPU", *ACCT, "-q", "Interactive", wrap="sleep 60")
    settle(c, "GPU", *ACCT, "-q", "Background")
    assert_untouched(c, {low: pid}, high)


# --------------------------------------------------------------------------- 5. victim choice


def test_smallest_victim_set_by_the_rules(make_cluster: Any) -> None:
    """Candidates are tried lowest QoS priority first, then youngest first,
    and the chosen set is made irreducible.

    crane01 (CPU, 4 cpus): j1 Background 2 cpus (oldest), j2 Background 1 cpu,
    j3 Batch (priority 200) 1 cpu (youngest). A 2-cpu Interactive job: j2 is
    tried first (Background, younger than j1) but is not enough, j1 is added,
    and then j2 is dropped again (j1 alone frees 2 cpus) -> victims {j1}; j3,
    the youngest, survives because of its higher priority.

    crane02 (GPU, 4 cpus): k1, k2, k3 Background and k4 Batch, 1 cpu each, in
    that order. A 1-cpu Interactive job: the youngest Background job, k3.
    """
    c = make_cluster(nodes=2, cpus=4)
    setup_qos(
        c,
        interactive=("Preempt=Background,Batch", "PreemptMode=CANCEL"),
        extra_qos={"Batch": ("Priority=200",)},
    )
    sleep = "sleep 300"
    j1, p1 = start(c, "-p", "CPU", "-c", "2", *ACCT, "-q", "Background", wrap=sleep)
    j2, p2 = start(c, "-p", "CPU", "-c", "1", *ACCT, "-q", "Background", wrap=sleep)
    j3, p3 = start(c, "-p", "CPU", "-c", "1", *ACCT, "-q", "Batch", wrap=sleep)
    high = c.submit("-p", "CPU", "-c", "2", *ACCT, "-q", "Interactive", wrap=sleep)
    c.wait_state(high, "RUNNING", timeout=20)
    v = c.wait_state(j1, "CANCELLED", timeout=20)
    assert v["reason"] == preempted_reason(high)
    wait_for(lambda: not pid_alive(p1), 10, "j1 dead")

    k1, q1 = start(c, "-p", "GPU", *ACCT, "-q", "Background", wrap=sleep)
    k2, q2 = start(c, "-p", "GPU", *ACCT, "-q", "Background", wrap=sleep)
    k3, q3 = start(c, "-p", "GPU", *ACCT, "-q", "Background", wrap=sleep)
    k4, q4 = start(c, "-p", "GPU", *ACCT, "-q", "Batch", wrap=sleep)
    high2 = c.submit("-p", "GPU", *ACCT, "-q", "Interactive", wrap=sleep)
    c.wait_state(high2, "RUNNING", timeout=20)
    v = c.wait_state(k3, "CANCELLED", timeout=20)
    assert v["reason"] == preempted_reason(high2)
    wait_for(lambda: not pid_alive(q3), 10, "k3 dead")

    survivors = {j2: p2, j3: p3, k1: q1, k2: q2, k4: q4}
    for jid, pid in survivors.items():
        j = c.job(jid)
        assert j is not None and j["state"] == "RUNNING", j
        assert pid_alive(pid)
    running = {jid for jid, j in c.jobs().items() if j["state"] == "RUNNING"}
    assert running == {j2, j3, k1, k2, k4, high, high2}


# --------------------------------------------------------------------------- 7, 10. REQUEUE


def test_requeue_mode(make_cluster: Any) -> None:
    c = make_cluster(nodes=2, Preempt={"PreemptType": "qos", "PreemptMode": "REQUEUE"})
    setup_qos(c, interactive=("Preempt=Background",))  # the victim's mode: the global REQUEUE
    low, pid = start(c, "-p", "CPU", "--exclusive", *ACCT, "-q", "Background", wrap="sleep 300")
    short = script(c, "short.sh", "sleep 2")
    high = c.submit("-p", "CPU", *ACCT, "-q", "Interactive", short)
    seen: list[dict[str, Any]] = []

    def requeued() -> Any:
        j = c.job(low)
        assert j is not None
        seen.append(j)
        return j if j["state"] == "PENDING" else None

    v = wait_for(requeued, 20, "victim back to PENDING")
    assert v["reason"] == preempted_reason(high)
    assert v["requeue_count"] == 1
    assert not v["nodes"]
    assert all(j["state"] in ("RUNNING", "COMPLETING", "PENDING") for j in seen)
    wait_for(lambda: not pid_alive(pid), 10, "old victim pid dead")
    c.wait_state(high, "RUNNING", "COMPLETED", timeout=20)

    # the preemptor ends (sleep 2): the requeued job runs again
    c.wait_state(high, "COMPLETED", timeout=30)
    v = c.wait_state(low, "RUNNING", timeout=30)
    assert v["requeue_count"] == 1
    assert v["nodes"] == ["crane01"]
    new_pid = c.step_pid(low)
    assert new_pid != pid and pid_alive(new_pid)


def test_per_qos_mode_overrides_global(make_cluster: Any) -> None:
    c = make_cluster(nodes=2)  # global PreemptMode CANCEL
    setup_qos(c, background=("PreemptMode=REQUEUE",))
    low, pid = start(c, "-p", "CPU", "--exclusive", *ACCT, "-q", "Background", wrap="sleep 300")
    high = c.submit("-p", "CPU", *ACCT, "-q", "Interactive", wrap="sleep 300")
    c.wait_state(high, "RUNNING", timeout=20)
    v = c.wait_state(low, "PENDING", "CANCELLED", timeout=20)
    assert v["state"] == "PENDING", v
    assert v["requeue_count"] == 1
    assert v["reason"] == preempted_reason(high)
    wait_for(lambda: not pid_alive(pid), 10, "victim pid dead")
    c.ok("ccancel", str(high))
    v = c.wait_state(low, "RUNNING", timeout=30)
    assert v["requeue_count"] == 1


# --------------------------------------------------------------------------- 8. SUSPEND


def _frozen(c: Cluster, node: str, job_id: int) -> bool | None:
    """Whether the job's batch step cgroup is frozen (v2 ``cgroup.events``
    or v1 ``freezer.state``); None when the step has no cgroup."""
    rel = f"crane/{c.config()['ClusterName']}/{node}/job_{job_id}/step_1"
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        try:
            with open(os.path.join(root, rel, "cgroup.events")) as f:
                return any(line.split() == ["frozen", "1"] for line in f)
        except OSError:
            pass
    try:
        with open(os.path.join("/sys/fs/cgroup/freezer", rel, "freezer.state")) as f:
            return f.read().strip() == "FROZEN"
    except OSError:
        return None


def test_suspend_mode(make_cluster: Any) -> None:
    c = make_cluster(nodes=2, Preempt={"PreemptType": "qos", "PreemptMode": "SUSPEND"})
    setup_qos(c, interactive=("Preempt=Background",))
    body = COUNTER_BODY.format(out="count_$CRANE_JOB_ID")
    low, pid = start(
        c, "-p", "CPU", "--exclusive", *ACCT, "-q", "Background", script(c, "count.sh", body)
    )
    name = f"count_{low}"
    wait_for(lambda: counter(c, name) > 3, 10, "counter running")

    short = script(c, "short.sh", "sleep 4")
    high = c.submit("-p", "CPU", *ACCT, "-q", "Interactive", short)
    v = c.wait_state(low, "SUSPENDED", timeout=20)
    assert v["reason"] == preempted_reason(high)
    c.wait_state(high, "RUNNING", "COMPLETED", timeout=20)
    frozen_at = stable_for(lambda: counter(c, name), 0.6, what="counter stopped")
    assert pid_alive(pid)  # stopped, not killed
    frozen = _frozen(c, "crane01", low)
    assert frozen is not False  # the kernel says the step is frozen
    if IS_ROOT:
        assert frozen is True, "no cgroup found for the suspended step"
    if c.state(high) == "RUNNING":
        assert c.state(low) == "SUSPENDED"
        assert counter(c, name) == frozen_at

    # the preemptor ends: the victim is resumed where it stopped
    c.wait_state(high, "COMPLETED", timeout=30)
    v = c.wait_state(low, "RUNNING", timeout=30)
    assert v["requeue_count"] == 0
    assert c.step_pid(low) == pid
    wait_for(lambda: counter(c, name) > frozen_at + 3, 10, "counter growing again")
    assert _frozen(c, "crane01", low) is not True


# --------------------------------------------------------------------------- 9. partition priority


def test_partition_priority_preemption(make_cluster: Any) -> None:
    parts = [
        {"name": "low", "nodes": "crane01", "priority": 1},
        {"name": "high", "nodes": "crane01", "priority": 10},
    ]
    c = make_cluster(
        nodes=1,
        Partitions=parts,
        DefaultPartition="low",
        Preempt={"PreemptType": "partition", "PreemptMode": "CANCEL"},
    )
    low, pid = start(c, "--exclusive", wrap="sleep 300")
    assert c.job(low)["partition"] == "low"  # type: ignore[index]
    high = c.submit("-p", "high", wrap="sleep 60")
    c.wait_state(high, "RUNNING", timeout=20)
    v = c.wait_state(low, "CANCELLED", timeout=20)
    assert v["reason"] == preempted_reason(high)
    wait_for(lambda: not pid_alive(pid), 10, "victim pid dead")

    # a job of the same partition never preempts
    third = c.submit("-p", "high", "--exclusive", wrap="sleep 60")
    settle(c, "low")
    assert_untouched(c, {high: c.step_pid(high)}, third)


# --------------------------------------------------------------------------- 11. grace time


def test_preemptor_waits_for_victim_grace_time(make_cluster: Any) -> None:
    c = make_cluster(nodes=2)
    setup_qos(c, background=("GraceTime=3",))
    body = """
trap 'echo term >> trap_$CRANE_JOB_ID; sleep 2; echo done >> trap_$CRANE_JOB_ID; exit 0' TERM
echo started > trap_$CRANE_JOB_ID
sleep 300 &
wait $!
"""
    low, pid = start(
        c, "-p", "CPU", "--exclusive", *ACCT, "-q", "Background", script(c, "trap.sh", body)
    )
    wait_for(lambda: "started" in c.read(f"trap_{low}"), 10, "trap installed")
    t0 = time.monotonic()
    high = c.submit("-p", "CPU", *ACCT, "-q", "Interactive", wrap="sleep 60")

    def waiting() -> Any:
        j = c.job(high)
        return (
            j if j and j["state"] == "PENDING" and j["reason"] == "Waiting for preemption" else None
        )

    wait_for(waiting, 10, "preemptor waiting for preemption")
    q = c.jobs()
    assert q[high]["reason"] == "Waiting for preemption"
    assert q[high]["state"] == "PENDING"
    assert q[low]["state"] in ("RUNNING", "COMPLETING")
    wait_for(lambda: "term" in c.read(f"trap_{low}"), 10, "victim got SIGTERM")

    c.wait_state(high, "RUNNING", timeout=20)
    waited = time.monotonic() - t0
    assert "done" in c.read(f"trap_{low}")  # its trap finished within the grace
    assert waited >= 1.5, waited
    v = c.wait_state(low, "CANCELLED", timeout=10)
    assert v["reason"] == preempted_reason(high)
    assert not pid_alive(pid)
