"""crun (issue 13, last slice): a step on every node of its allocation, its
tasks (-n, --ntasks-per-node) and their variables, -l labels, per-node ends
(largest exit code, a signal wins), a cancel reaching every node; a killed
agent and a restarted controller under a running crun; calloc's wait."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Cluster, clear, pid_alive, start_cluster, wait_for
from tests.test_calloc import Proc
from tests.test_crun_live import Crun, go

DEADLINE = 60.0
VARS = "n=$SLURM_NODEID r=$SLURM_PROCID l=$SLURM_LOCALID t=$SLURM_STEP_NUM_TASKS N=$SLURM_STEP_NUM_NODES s=$SLURM_STEP_ID"


# ---------------------------------------------------------------- pure: layout and the job machine


def test_task_layout_is_slurms_block_distribution() -> None:
    from crane.core.job import task_layout

    nodes = ["a", "b", "c"]
    assert task_layout(nodes, 4, 1) == [1, 1, 1]  # one task per node by default
    assert task_layout(nodes, 4, 1, ntasks=5) == [2, 2, 1]  # the first nodes take the extra tasks
    assert task_layout(nodes, 4, 1, ntasks=2) == [1, 1]  # fewer tasks than nodes: the first nodes
    assert task_layout(nodes, 4, 1, ntasks_per_node=2) == [2, 2, 2]
    assert task_layout(nodes, 4, 1, ntasks=3, ntasks_per_node=2) == [2, 1]
    assert "at most 6 tasks" in str(task_layout(nodes, 4, 2, ntasks=7))  # 2 cpus a task, 4 a node
    assert "do not fit" in str(task_layout(nodes, 4, 1, ntasks=7, ntasks_per_node=2))


def _two_node_machine() -> Any:
    from crane.core import events as ev
    from crane.core.job import Job
    from crane.core.job_machine import JobMachine

    mc = JobMachine(Job(id=7, name="j", uid=1000, user="alice", gid=1000, account="A", qos="normal",
                        partition="CPU", cpus=2, nnodes=2))  # fmt: skip
    mc.handle(ev.Allocated(["n1", "n2"], 2), 1.0)
    return mc


def test_a_step_ends_when_every_node_reported() -> None:
    from crane.core import events as ev
    from crane.core import messages as m
    from crane.core.job import Step

    mc = _two_node_machine()
    acts = mc.handle(ev.NewStepEv(["hostname"], 1, {}, "/", None, [1, 2], ntasks=3, label=True), 2.0)
    launches = [(a.node, a.msg.spec) for a in acts if isinstance(a, ev.ToNode)]
    assert [n for n, _ in launches] == ["n1", "n2"]
    (_, s1), (_, s2) = launches
    assert s1["tasks"] == {"rank": 0, "count": 2, "label": True} and s2["tasks"] == {"rank": 2, "count": 1, "label": True}
    assert (s1["env"]["SLURM_PROCID"], s2["env"]["SLURM_PROCID"], s2["env"]["SLURM_NODEID"]) == ("0", "2", "1")
    assert s1["env"]["SLURM_STEP_NODELIST"] == "n[1-2]" and s1["env"]["SLURM_NTASKS"] == "3"
    st = mc.job.steps[2]
    assert (st.node, st.nodes, st.tasks) == ("n1", ["n1", "n2"], [2, 1])
    assert Step.from_dict(st.to_dict()) == st
    assert not [a for a in mc.handle(ev.StepEndedEv("n2", 2, 9, 0, ""), 3.0) if isinstance(a, ev.StepDone)]
    assert st.state == "RUNNING"
    done = [a for a in mc.handle(ev.StepEndedEv("n1", 2, 3, 0, ""), 4.0) if isinstance(a, ev.StepDone)]
    assert done and (st.state, st.exit_code, st.signal) == ("FAILED", 9, 0)  # the largest exit code
    # a signal-ended task wins; a cancel reaches every node still running it
    mc.handle(ev.NewStepEv(["x"], 1, {}, "/"), 5.0)
    kills = [a.node for a in mc.handle(ev.CancelEv(0, "root", step_id=3), 5.5) if isinstance(a, ev.ToNode)]
    assert kills == ["n1", "n2"]
    mc.handle(ev.StepEndedEv("n1", 3, 0, 15, ""), 6.0)
    mc.handle(ev.StepEndedEv("n2", 3, 2, 0, ""), 6.0)
    assert (mc.job.steps[3].state, mc.job.steps[3].signal) == ("CANCELLED", 15)
    # too many tasks: refused with the reason
    refused = mc.handle(ev.NewStepEv(["x"], 2, {}, "/", ntasks=3), 7.0)
    assert [a.value.message for a in refused if isinstance(a, ev.Reply) and isinstance(a.value, m.Error)]


def test_a_node_losing_its_part_fails_the_step_and_names_it() -> None:
    from crane.core import events as ev
    from crane.core import messages as m

    mc = _two_node_machine()
    mc.handle(ev.NewStepEv(["sleep", "9"], 1, {}, "/"), 2.0)
    acts = mc.handle(ev.AgentStepsEv("n2", [1]), 3.0)  # n2 came back without step 2
    kills = [(a.node, a.msg) for a in acts if isinstance(a, ev.ToNode)]
    assert [(n, type(k).__name__, k.step_id) for n, k in kills] == [("n1", "KillJob", 2)]
    assert all(isinstance(k, m.KillJob) for _, k in kills)
    mc.handle(ev.StepEndedEv("n1", 2, 0, 9, "CANCELLED"), 4.0)
    st = mc.job.steps[2]
    assert st.state == "FAILED" and "n2" in (st.reason or ""), st


def test_a_terminal_step_runs_one_task_on_the_first_node() -> None:
    from crane.core import events as ev
    from crane.core import messages as m

    mc = _two_node_machine()
    acts = mc.handle(ev.NewStepEv(["bash"], 1, {}, "/", None, [1, 3]), 2.0)
    assert [a.node for a in acts if isinstance(a, ev.ToNode)] == ["n1"] and mc.job.steps[2].nodes == []
    refused = mc.handle(ev.NewStepEv(["bash"], 1, {}, "/", None, [1, 3], ntasks=2), 3.0)
    assert [a.value.message for a in refused if isinstance(a, ev.Reply) and isinstance(a.value, m.Error)] == [
        "--pty runs one task"]  # fmt: skip


def test_the_task_runner_labels_lines_and_ends_as_the_worst_task(tmp_path: Any) -> None:
    """crane.agent.tasks run directly: per-task variables, whole labelled
    lines, the largest exit status; a task killed by a signal wins."""
    import sys

    def runner(rank: int, count: int, label: bool, script: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        spec = f'{{"rank": {rank}, "count": {count}, "label": {"true" if label else "false"}}}'
        return subprocess.run([sys.executable, "-I", "-m", "crane.agent.tasks", spec, "--", "sh", "-c", script],
                              capture_output=True, text=True, timeout=DEADLINE, cwd=str(tmp_path), input=stdin)  # fmt: skip

    r = runner(4, 3, True, "printf 'a'; printf 'b%s\\n' $SLURM_PROCID; echo e$CRANE_LOCALID >&2; exit $SLURM_LOCALID")
    assert r.returncode == 2
    assert sorted(r.stdout.splitlines()) == ["4: ab4", "5: ab5", "6: ab6"]
    assert sorted(r.stderr.splitlines()) == ["4: e0", "5: e1", "6: e2"]
    r = runner(0, 2, False, "if [ $SLURM_LOCALID = 1 ]; then kill -TERM $$; fi; exit 3")
    assert r.returncode == -signal.SIGTERM
    r = runner(0, 2, True, "read x; echo got=$x", stdin="hello\n")  # stdin: global rank 0's only
    assert sorted(r.stdout.splitlines()) == ["0: got=hello", "1: got="]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """4 nodes, partition CPU = crane[01-02], 2 cpus each."""
    base = str(tmp_path_factory.mktemp("cluster"))
    os.chmod(base, 0o755)
    c = start_cluster(base, nodes=4, cpus=2)
    try:
        yield c
    finally:
        c.down()


@pytest.fixture
def alloc(two: Cluster) -> Iterator[int]:
    """A running 2-node job holding 2 cpus on each node."""
    job = two.submit("-p", "CPU", "-N", "2", "-c", "2", wrap="sleep 600")
    two.wait_state(job, "RUNNING")
    yield job
    clear(two)


def crun(c: Cluster, job: int, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    return c.run("crun", "--jobid", str(job), *args, timeout=timeout)


def fields(out: str) -> list[dict[str, str]]:
    rows = []
    for line in out.splitlines():
        rows.append(dict(kv.split("=", 1) for kv in line.split()))
    return sorted(rows, key=lambda r: int(r["r"]))


def test_a_step_runs_once_on_every_node(two: Cluster, alloc: int) -> None:
    r = crun(two, alloc, "sh", "-c", f"echo {VARS}; exit $((SLURM_PROCID + 3))")
    assert r.returncode == 4, r.stderr  # the largest exit code of the tasks
    rows = fields(r.stdout)
    assert [(x["n"], x["r"], x["l"]) for x in rows] == [("0", "0", "0"), ("1", "1", "0")]
    assert {(x["t"], x["N"], x["s"]) for x in rows} == {("2", "2", "0")}  # Slurm's step 0 (Crane's step 2)
    step = [s for s in two.job(alloc)["steps"] if s["step_id"] == 2][0]
    assert step["state"] == "FAILED" and step["exit_code"] == 4
    assert step["nodes"] == ["crane01", "crane02"] and step["tasks"] == [1, 1]


def test_ntasks_block_distribution_and_labels(two: Cluster, alloc: int) -> None:
    r = crun(two, alloc, "-n", "3", "-l", "sh", "-c", f"echo {VARS}")
    assert r.returncode == 0, r.stderr
    rows = []
    for line in r.stdout.splitlines():
        label, rest = line.split(": ", 1)
        row = dict(kv.split("=", 1) for kv in rest.split())
        assert label == row["r"]  # srun -l: "RANK: "
        rows.append(row)
    rows.sort(key=lambda x: int(x["r"]))
    # block: the first node takes the extra task; ranks consecutive per node
    assert [(x["r"], x["n"], x["l"]) for x in rows] == [("0", "0", "0"), ("1", "0", "1"), ("2", "1", "0")]
    assert {x["t"] for x in rows} == {"3"}

    r = crun(two, alloc, "--ntasks-per-node", "2", "sh", "-c", "echo r=$SLURM_PROCID n=$SLURM_NODEID l=$SLURM_LOCALID")
    assert r.returncode == 0, r.stderr
    assert [(x["r"], x["n"], x["l"]) for x in fields(r.stdout)] == [
        ("0", "0", "0"), ("1", "0", "1"), ("2", "1", "0"), ("3", "1", "1")]  # fmt: skip


def test_nodes_option_takes_the_first_nodes(two: Cluster, alloc: int) -> None:
    r = crun(two, alloc, "-N", "1", "sh", "-c", "echo $SLURM_STEP_NUM_NODES $SLURM_STEP_NODELIST")
    assert (r.returncode, r.stdout) == (0, "1 crane01\n"), r.stderr
    r = crun(two, alloc, "-N", "3", "true")
    assert r.returncode == 2 and "the job has 2" in r.stderr, r.stderr


def test_more_tasks_than_cpus_refused(two: Cluster, alloc: int) -> None:
    r = crun(two, alloc, "-n", "5", "true")
    assert r.returncode == 2 and r.stderr.startswith("crun: ") and "at most 4 tasks" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1
    r = crun(two, alloc, "-n", "2", "-c", "2", "--ntasks-per-node", "2", "true")
    assert r.returncode == 2 and "cpus" in r.stderr, r.stderr


def test_labelled_lines_never_mix(two: Cluster, alloc: int) -> None:
    """Every task writes its lines in pieces, both nodes at once: each line
    arrives whole, with its own task's label."""
    script = "i=0; while [ $i -lt 200 ]; do printf 'aaa%s-' $SLURM_PROCID; printf 'bbb%s\\n' $SLURM_PROCID; i=$((i+1)); done"
    r = crun(two, alloc, "-l", "-n", "4", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 800
    for line in lines:
        m = re.fullmatch(r"(\d): aaa(\d)-bbb(\d)", line)
        assert m and m.group(1) == m.group(2) == m.group(3), line
    # without -l, a 2-node step's lines stay whole too
    r = crun(two, alloc, "sh", "-c", script)
    assert r.returncode == 0 and all(re.fullmatch(r"aaa(\d)-bbb\1", x) for x in r.stdout.splitlines())


def test_signal_ended_task_wins_and_cancel_reaches_every_node(two: Cluster, alloc: int) -> None:
    r = crun(two, alloc, "sh", "-c", "if [ $SLURM_PROCID = 1 ]; then kill -TERM $$; fi; exit 5")
    assert r.returncode == 128 + signal.SIGTERM, (r.returncode, r.stderr)

    pidfile = two.file(f"pids-{alloc}")
    cr = Crun(two, "--jobid", str(alloc), "-n", "3", "sh", "-c", f"echo $$ >> {pidfile}; echo up; exec sleep 600")
    wait_for(lambda: cr.out.count(b"up") == 3 or cr.p.poll() is not None, DEADLINE, "3 tasks up")
    pids = [int(x) for x in open(pidfile).read().split()]
    assert len(pids) == 3
    two.ok("ccancel", f"{alloc}.{cr_step(two, alloc)}", "-m", "enough")
    assert cr.finish() != 0
    assert "cancelled by root: enough" in cr.err.decode()
    wait_for(lambda: not any(pid_alive(p) for p in pids), DEADLINE, "every task gone")


def cr_step(c: Cluster, job: int) -> int:
    def running() -> int | None:
        steps = [s["step_id"] for s in c.job(job)["steps"] if s["state"] == "RUNNING" and s["step_id"] != 1]
        return max(steps) if steps else None

    return wait_for(running, DEADLINE, "a running step")  # type: ignore[no-any-return]


def test_output_of_quick_steps_is_never_lost(two: Cluster, alloc: int) -> None:
    """A step that prints and ends before its crun's WaitStep arrives: the
    controller held its output for the subscription."""
    for i in range(8):
        r = crun(two, alloc, "-n", "1", "echo", f"quick{i}")
        assert (r.returncode, r.stdout, r.stderr) == (0, f"quick{i}\n", "")


def test_output_files_per_task(two: Cluster, alloc: int) -> None:
    pattern = two.file("o-%j.%s-%t-%n.txt")
    r = crun(two, alloc, "-o", pattern, "sh", "-c", "echo rank $SLURM_PROCID")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    step = cr_last(two, alloc) - 2
    assert two.read(f"o-{alloc}.{step}-0-0.txt") == "rank 0\n"
    assert two.read(f"o-{alloc}.{step}-1-1.txt") == "rank 1\n"


def test_output_files_per_task_with_several_tasks_on_a_node(two: Cluster, alloc: int) -> None:
    """-o with %t and two tasks on each node: one file per task (as srun;
    submitit's logs are named so), opened by the runner as the user."""
    pattern = two.file("m-%j.%s-%t.txt")
    r = crun(two, alloc, "-n", "4", "-o", pattern, "-e", pattern, "sh", "-c", "echo rank $SLURM_PROCID; echo err $SLURM_PROCID >&2")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    step = cr_last(two, alloc) - 2
    for rank in range(4):
        assert sorted(two.read(f"m-{alloc}.{step}-{rank}.txt").splitlines()) == [f"err {rank}", f"rank {rank}"]


def cr_last(c: Cluster, job: int) -> int:
    return max(s["step_id"] for s in c.job(job)["steps"])


def test_crun_outside_an_allocation_on_two_nodes(two: Cluster) -> None:
    r = two.run("crun", "-p", "CPU", "-N", "2", "-l", "sh", "-c", "echo r=$SLURM_PROCID n=$SLURM_NODEID", timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0: r=0 n=0", "1: r=1 n=1"]
    r = two.run("crun", "-p", "CPU", "-N", "2", "-n", "4", "sh", "-c", "echo r=$SLURM_PROCID; exit $SLURM_PROCID", timeout=DEADLINE)
    assert r.returncode == 3 and sorted(r.stdout.split()) == ["r=0", "r=1", "r=2", "r=3"], r.stderr


# ---------------------------------------------------------------- failures


@pytest.fixture
def quick(make_cluster: object) -> Cluster:
    """A cluster whose controller gives up on a silent agent after 5 s."""
    return make_cluster(nodes=4, cpus=2, CranedTimeout=5)  # type: ignore[operator, no-any-return]


def test_killed_agent_ends_crun_with_a_clear_error(quick: Cluster) -> None:
    c = quick
    c.ok("cinfo")
    pidfile = c.file("killed-agent-pids")
    cr = Crun(c, "-N", "2", "-p", "CPU", "sh", "-c", f"echo $$ >> {pidfile}; echo up; exec sleep 600")
    if cr.p.poll() is not None:
        pytest.fail(cr.err.decode())
    wait_for(lambda: cr.out.count(b"up") == 2 or cr.p.poll() is not None, DEADLINE, "both tasks up")
    assert cr.out.count(b"up") == 2, cr.err
    c.stop("craned-crane02", signal.SIGKILL)
    t0 = time.monotonic()
    rc = cr.finish()
    assert time.monotonic() - t0 < DEADLINE
    err = cr.err.decode()
    assert rc == 1 and re.search(r"^crun: step \d+\.1 failed: Node crane02 down$", err, re.M), err
    assert len([x for x in err.splitlines() if x.startswith("crun: step")]) == 1, err
    c.start_agent("crane02")  # back: it kills what it still runs for the failed job
    pids = [int(x) for x in open(pidfile).read().split()]
    wait_for(lambda: not any(pid_alive(p) for p in pids), DEADLINE, "the step's tasks gone on both nodes")


def test_crun_survives_a_controller_restart(quick: Cluster) -> None:
    """kill -9 the controller while a 2-node crun step prints: once a new
    controller runs, crun prints the step's later lines and gets its exit
    code (lines printed while no controller ran may be lost)."""
    c = quick
    flag = c.file("go-restart")
    script = f"i=0; while [ ! -e {flag} ]; do echo tick$i; i=$((i+1)); sleep 0.2; done; echo bye; exit 7"
    cr = Crun(c, "-N", "2", "-p", "CPU", "-l", "sh", "-c", script)
    cr.wait_out("0: tick1")
    cr.wait_out("1: tick1")
    ctld = c.procs.pop("cranectld")
    ctld.kill()
    ctld.wait()
    c.start_controller()
    c.wait_nodes_up()
    seen = len(cr.out)
    wait_for(lambda: b"1: tick" in cr.out[seen:] and b"0: tick" in cr.out[seen:] or cr.p.poll() is not None,
             DEADLINE, "ticks after the restart")  # fmt: skip
    assert cr.p.poll() is None, cr.err
    go(c, "go-restart")
    assert cr.finish() == 7, cr.err
    assert b"0: bye" in cr.out and b"1: bye" in cr.out


def test_streaming_step_survives_an_agent_restart(make_cluster: Any, users: dict[str, int]) -> None:
    """kill -9 the agent of a crun step's node and start it again: the step
    was not killed by SIGPIPE (its wrapper keeps its pipes open), what it
    printed meanwhile and afterwards reaches crun; its stdin was closed
    (the old agent held its only write end): the step read end of file and
    crun says so, once. As a user: the pipes are the user's (the wrapper
    opens its read ends through /proc)."""
    c = make_cluster(nodes=2, cpus=2)
    flag = c.file("go-agent")
    script = f"cat; echo stdin-eof; i=0; while [ ! -e {flag} ]; do echo tick$i; i=$((i+1)); sleep 0.2; done; echo bye; exit 5"
    env = c.env()
    env.pop("CRANE_JOB_ID", None)
    p = subprocess.Popen(c.command("crun", "-p", "CPU", "sh", "-c", script, user="alice"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=c.workdir)  # fmt: skip
    out, err = bytearray(), bytearray()
    threads = [threading.Thread(target=Crun._pump, args=(f, b), daemon=True) for f, b in ((p.stdout, out), (p.stderr, err))]
    for t in threads:
        t.start()
    assert p.stdin is not None
    p.stdin.write(b"hello\n")
    p.stdin.flush()
    wait_for(lambda: b"hello" in out or p.poll() is not None, DEADLINE, "the input echoed")
    assert b"hello" in out, err
    agent = c.procs.pop("craned-crane01")
    agent.kill()
    agent.wait()
    c.start_agent("crane01")
    c.wait_nodes_up()
    wait_for(lambda: b"tick3" in out or p.poll() is not None, DEADLINE, "ticks after the agent restart")
    assert p.poll() is None and b"stdin-eof" in out, (bytes(out), bytes(err))
    wait_for(lambda: b"input is closed" in err, DEADLINE, "crun told its input is closed")
    go(c, "go-agent")
    assert p.wait(timeout=DEADLINE) == 5, err
    for t in threads:
        t.join(DEADLINE)
    assert b"bye" in out and err.count(b"input is closed") == 1 and b"crane-step" not in err, bytes(err)
    p.stdin.close()


# ---------------------------------------------------------------- calloc


def test_calloc_on_two_nodes_with_crun_inside(two: Cluster) -> None:
    ca = Proc(two, "calloc", "-p", "CPU", "-N", "2", "-c", "1", "--", "sh", "-c",
              "crun -l sh -c 'echo node $SLURM_NODEID of $SLURM_STEP_NUM_NODES'")  # fmt: skip
    assert ca.finish() == 0, bytes(ca.err)
    assert sorted(bytes(ca.out).decode().splitlines()) == ["0: node 0 of 2", "1: node 1 of 2"]
    job_id = int(ca.wait_err(r"calloc: Granted job allocation (\d+)").group(1))
    assert two.wait_state(job_id, "COMPLETED", timeout=DEADLINE)["state"] == "COMPLETED"


def test_killed_calloc_ends_its_allocation(two: Cluster) -> None:
    """calloc waits on its job through a subscription (no polling), like
    crun: killed outright, its connection goes and the controller ends the job."""
    pidfile = two.file("calloc-child")
    ca = Proc(two, "calloc", "--", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 300")
    job_id = int(ca.wait_err(r"calloc: Granted job allocation (\d+)").group(1))
    wait_for(lambda: two.read("calloc-child").strip(), DEADLINE, "the command started")
    child = int(two.read("calloc-child"))
    ca.p.kill()
    ca.p.wait(timeout=DEADLINE)
    os.kill(child, signal.SIGKILL)  # it holds calloc's stdout: gone before the readers end
    ca.finish()
    assert two.wait_state(job_id, "CANCELLED", timeout=DEADLINE)["state"] == "CANCELLED"
