"""Issue 14, what a job sees at run time: the SLURM_* variables beside
Crane's CRANE_* ones, ``--signal [B:]SIG@SECS`` before the time limit, and
``--open-mode append|truncate``.

Pure parts (the mapping, the parser) are tested directly; the rest on a
real cluster, as real users, with real files and signals; every wait is a
poll with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import types
from collections.abc import Iterator

import pytest

from crane.agent.kill import set_time_limit
from crane.agent.launch import node_env, truncates_output
from crane.agent.steps import StepManager
from crane.config import load
from crane.core import messages as m
from crane.core.job import Job
from crane.core.signals import JobSignal, check_signal, job_signal, parse_job_signal
from crane.core.slurm_env import MANAGED, repeat_counts, slurm_env, tasks_per_node
from crane.core.states import KillReason, StepEnd
from tests.conftest import Cluster, wait_for
from tests.test_agent_steps import Node, needs_cgroups, run, until
from tests.test_agent_steps import node as agent_node  # noqa: F401  (a fixture)
from tests.test_first_day_agent import file_with, read_env


def make_job(**kw: object) -> Job:
    base: dict[str, object] = dict(id=31, name="sim", uid=1001, user="alice", gid=1002, account="acct", qos="normal",
                                   partition="CPU", nodes=["crane01", "crane02"], cpus=4, nnodes=2,
                                   memory=256 * 1024 * 1024, cwd="/home/alice/run", ntasks=4)  # fmt: skip
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def env_of(job: Job, step_id: int = 1, cpus: int | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    spec = job.step_spec(step_id, [], dict(env or {}), job.cwd, job.cpus if cpus is None else cpus)
    return dict(spec["env"])


# ---------------------------------------------------------------- the mapping (pure)


def test_batch_step_variables_of_a_two_node_four_task_job() -> None:
    env = env_of(make_job())  # -N 2 -n 4 -c 2: 4 cpus on each node
    expected = {
        "SLURM_JOB_ID": "31", "SLURM_JOBID": "31", "SLURM_JOB_NAME": "sim",
        "SLURM_JOB_NODELIST": "crane[01-02]", "SLURM_NODELIST": "crane[01-02]",
        "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4",
        "SLURM_CPUS_PER_TASK": "2", "SLURM_CPUS_ON_NODE": "4", "SLURM_JOB_CPUS_PER_NODE": "4(x2)",
        "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_ACCOUNT": "acct", "SLURM_JOB_PARTITION": "CPU",
        "SLURM_JOB_QOS": "normal", "SLURM_JOB_USER": "alice", "SLURM_JOB_UID": "1001",
        "SLURM_JOB_GID": "1002", "SLURM_SUBMIT_DIR": "/home/alice/run", "SLURM_MEM_PER_NODE": "256",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
    }  # fmt: skip
    assert {k: env.get(k) for k in expected} == expected
    assert env["CRANE_NTASKS"] == "4" and env["CRANE_CPUS_PER_TASK"] == "2" and env["CRANE_NTASKS_PER_NODE"] == "2"
    # Slurm's batch shell has no step id; no restart yet; not an array task; no --ntasks-per-node
    absent = ("SLURM_STEP_ID", "SLURM_STEPID", "SLURM_RESTART_COUNT", "SLURM_ARRAY_JOB_ID",
              "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_GPUS")  # fmt: skip
    assert not set(absent) & set(env)


def test_every_slurm_name_is_the_value_of_its_crane_name() -> None:
    env = env_of(make_job(requeue_count=2, ntasks_per_node=2, dependency="afterok:12"))
    for k, v in env.items():
        if k.startswith("SLURM_") and f"CRANE_{k[6:]}" in env:
            assert v == env[f"CRANE_{k[6:]}"], k
    assert env["SLURM_RESTART_COUNT"] == "2" and env["SLURM_NTASKS_PER_NODE"] == "2"
    assert env["SLURM_JOB_DEPENDENCY"] == "afterok:12"


def test_defaults_one_task_per_node() -> None:
    env = env_of(make_job(ntasks=0, cpus=3, nodes=["crane01"], nnodes=1))
    assert env["SLURM_NTASKS"] == "1" and env["SLURM_CPUS_PER_TASK"] == "3" and env["SLURM_TASKS_PER_NODE"] == "1"
    assert env["SLURM_JOB_CPUS_PER_NODE"] == "3" and env["SLURM_JOB_NODELIST"] == "crane01"


def test_crun_step_has_slurms_step_number() -> None:
    env = env_of(make_job(), step_id=3, cpus=1)
    assert env["SLURM_STEP_ID"] == env["SLURM_STEPID"] == "1"  # Crane's step 2 is Slurm's 0
    assert env["SLURM_CPUS_ON_NODE"] == "1" and env["SLURM_JOB_CPUS_PER_NODE"] == "4(x2)"


def test_inherited_slurm_variables_do_not_leak() -> None:
    """A job submitted from inside another (an array task's step) inherits
    its SLURM_* names: those that do not apply are dropped, others kept."""
    inherited = {"SLURM_STEP_ID": "0", "SLURM_ARRAY_TASK_ID": "7", "SLURM_JOB_ID": "5",
                 "SLURM_RESTART_COUNT": "3", "SLURM_CONF": "/etc/slurm.conf", "HOME": "/h"}  # fmt: skip
    env = env_of(make_job(), env=inherited)
    assert env["SLURM_JOB_ID"] == "31"
    assert not {"SLURM_STEP_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"} & set(env)
    assert env["SLURM_CONF"] == "/etc/slurm.conf" and env["HOME"] == "/h"


def test_array_gpu_node_and_cluster_names_are_mapped() -> None:
    env = {"CRANE_ARRAY_JOB_ID": "40", "CRANE_ARRAY_TASK_ID": "3", "CRANE_ARRAY_TASK_COUNT": "4",
           "CRANE_ARRAY_TASK_MIN": "0", "CRANE_ARRAY_TASK_MAX": "6", "CRANE_ARRAY_TASK_STEP": "2",
           "CRANE_GPUS": "1,3", "CRANE_NODENAME": "crane02", "CRANE_CLUSTER_NAME": "c1",
           "CRANE_STEP_ID": "1"}  # fmt: skip
    out = slurm_env(env, make_job())
    assert out == {
        "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2",
        "SLURM_JOB_GPUS": "1,3", "SLURM_GPUS_ON_NODE": "2", "SLURMD_NODENAME": "crane02",
        "SLURM_CLUSTER_NAME": "c1",
    }  # fmt: skip
    assert set(out) <= MANAGED


def test_node_env_from_the_agent() -> None:
    sm = types.SimpleNamespace(node="crane03", scope="crane/local7-ab/crane03")
    assert node_env(sm) == {"CRANE_NODENAME": "crane03", "SLURMD_NODENAME": "crane03",  # type: ignore[arg-type]
                            "CRANE_CLUSTER_NAME": "local7-ab", "SLURM_CLUSTER_NAME": "local7-ab"}  # fmt: skip


@pytest.mark.parametrize(("nnodes", "ntasks", "per_node", "expected"), [
    (2, 0, 0, [1, 1]), (2, 4, 0, [2, 2]), (2, 3, 0, [2, 1]), (3, 0, 2, [2, 2, 2]), (2, 3, 2, [2, 1]),
    (1, 5, 0, [5]), (0, 0, 0, [1]),
])  # fmt: skip
def test_tasks_per_node(nnodes: int, ntasks: int, per_node: int, expected: list[int]) -> None:
    assert tasks_per_node(nnodes, ntasks, per_node) == expected


@pytest.mark.parametrize(("counts", "text"), [([4, 4], "4(x2)"), ([2, 1], "2,1"), ([2, 2, 1], "2(x2),1"),
                                              ([1], "1"), ([3, 1, 1, 3], "3,1(x2),3"), ([], "")])  # fmt: skip
def test_repeat_counts(counts: list[int], text: str) -> None:
    assert repeat_counts(counts) == text


# ---------------------------------------------------------------- --signal's parser (pure)


@pytest.mark.parametrize(("text", "expected"), [
    ("B:USR1@30", JobSignal(10, 30, True)), ("USR1", JobSignal(10, 60, False)),
    ("SIGUSR2@90", JobSignal(12, 90, False)), ("10@0", JobSignal(10, 0, False)),
    ("b:usr1@65535", JobSignal(10, 65535, True)), ("R:TERM", JobSignal(15, 60, False)),
    ("RB:INT@5", JobSignal(2, 5, True)),
])  # fmt: skip
def test_signal_parser(text: str, expected: JobSignal) -> None:
    assert parse_job_signal(text) == expected
    assert check_signal(text) is None and job_signal(text) == expected


@pytest.mark.parametrize("text", ["BB:USR1", "X:USR1", "USR1@65536", "USR1@", "USR1@-1", "USR1@3x", "FOO",
                                  "0", "65", "B:", "@30", "USR1@٣", "USR1@30@4", "B:" + "U" * 100])  # fmt: skip
def test_signal_parser_refuses_junk(text: str) -> None:
    why = check_signal(text)
    assert why is not None and why.startswith("invalid --signal") and len(why) < 200
    assert job_signal(text) is None
    with pytest.raises(ValueError):
        parse_job_signal(text)


def test_no_signal() -> None:
    assert check_signal("") is None and job_signal("") is None and job_signal(None) is None


def test_open_mode_truncates_only_the_first_run_of_the_batch_step() -> None:
    assert truncates_output({"open_mode": "truncate", "attempt": 0}, 1)
    assert not truncates_output({"open_mode": "truncate", "attempt": 1}, 1)  # requeued: appends, as Slurm
    assert not truncates_output({"open_mode": "truncate", "attempt": 0}, 2)  # a crun step
    assert not truncates_output({"open_mode": "append"}, 1) and not truncates_output({"open_mode": ""}, 1)


# ---------------------------------------------------------------- the agent alone


@needs_cgroups
def test_agent_signal_once_across_a_restart_and_a_new_limit(agent_node: Node) -> None:  # noqa: F811
    """The agent's timer sends B:USR1 to the batch shell once (the record
    keeps it); a restarted agent does not send it again, and a new time
    limit (SetTimeLimit) ends the step TIMEOUT."""
    node = agent_node
    log = node.work / "usr1.log"
    shell = f"trap 'echo usr1 >> {log}' USR1; while :; do sleep 0.1 & wait $!; done"

    async def body(sm: StepManager) -> None:
        sm.launch(m.LaunchStep(21, 1, node.spec(argv=["sh", "-c", shell], time_limit=300, signal="B:USR1@299")))
        await until(lambda: log.exists() and log.read_text() == "usr1\n", "the batch shell's trap")
        old = sm.steps[(21, 1)]
        assert old.spec["signal_sent"] is True and old.timer is not None  # now the time limit's
        old.timer.cancel()
        sm.children.clear()  # the old agent is gone
        new = node.manager()
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, new.reap)
        new.adopt()
        assert new.steps[(21, 1)].spec["signal_sent"] is True  # from the record: not sent again
        set_time_limit(new, m.SetTimeLimit(21, 1))  # already passed: ends it at once
        await until(lambda: node.of(m.StepEnded), "the step's TIMEOUT")
        assert node.of(m.StepEnded)[0].reason == StepEnd.TIMEOUT
        assert log.read_text() == "usr1\n"
        await new.kill_job(m.KillJob(21, None, 0.0, False, KillReason.COMPLETED))

    run(node, body)


# ---------------------------------------------------------------- end to end


@pytest.fixture
def c(cluster: Cluster) -> Iterator[Cluster]:
    """The module cluster, with whatever a test leaves behind cancelled."""
    yield cluster
    left = [str(j) for j in cluster.jobs()]
    if left:
        cluster.run("ccancel", "--force", ",".join(left))


def remove(*paths: str) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def test_batch_job_sees_slurm_variables(c: Cluster, users: dict[str, int]) -> None:
    out = c.file("slurm-env-%j.bin")
    jid = c.submit("-N", "2", "-n", "4", "-c", "2", "-w", "crane[01-02]", "-J", "envjob", "-o", out,
                   user="alice", wrap="env -0")  # fmt: skip
    c.wait_state(jid, "COMPLETED", timeout=60)
    path = c.file(f"slurm-env-{jid}.bin")
    env = read_env(path)
    expected = {
        "SLURM_JOB_ID": str(jid), "SLURM_JOBID": str(jid), "SLURM_JOB_NAME": "envjob",
        "SLURM_JOB_NODELIST": "crane[01-02]", "SLURM_NODELIST": "crane[01-02]", "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4", "SLURM_CPUS_PER_TASK": "2",
        "SLURM_CPUS_ON_NODE": "4", "SLURM_JOB_CPUS_PER_NODE": "4(x2)", "SLURM_TASKS_PER_NODE": "2(x2)",
        "SLURM_JOB_PARTITION": "CPU", "SLURM_JOB_USER": "alice", "SLURM_JOB_UID": str(users["alice"]),
        "SLURM_SUBMIT_DIR": c.workdir, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
        "SLURMD_NODENAME": "crane01", "SLURM_CLUSTER_NAME": load(c.config_path).cluster,
    }  # fmt: skip
    assert {k: env.get(k) for k in expected} == expected
    assert env["SLURM_JOB_ACCOUNT"] == env["CRANE_JOB_ACCOUNT"] and env["SLURM_JOB_QOS"] == env["CRANE_JOB_QOS"]
    assert env["SLURM_JOB_GID"] == env["CRANE_JOB_GID"] == str(os.stat(path).st_gid)
    absent = {k for k in env if k.startswith("SLURM_ARRAY_")} | {"SLURM_STEP_ID", "SLURM_RESTART_COUNT"}
    assert not absent & set(env), absent & set(env)
    remove(path)


WAIT_TRAP = "while :; do sleep 1 & wait $!; done"  # a shell that runs its traps at once


def test_signal_b_reaches_the_batch_shell_only(c: Cluster, users: dict[str, int]) -> None:
    """--signal=B:USR1@30 with a 40 s limit: the script's trap runs about
    10 s in, once; a child of the script is not signalled (B: is the batch
    shell only); the job then ends TIMEOUT."""
    log = c.file("sig-b.log")
    remove(log)
    child = f"sh -c 'trap \"echo child >> {log}\" USR1; {WAIT_TRAP}' &"
    jid = c.submit("-t", "00:00:40", "--signal=B:USR1@30", "-o", "/dev/null", user="alice",
                   wrap=f"trap 'echo batch >> {log}' USR1; {child} {WAIT_TRAP}")  # fmt: skip
    wait_for(file_with(log, "batch"), 60, "the batch shell's USR1 trap")
    c.wait_state(jid, "TIMEOUT", timeout=90)
    with open(log) as f:
        assert f.read() == "batch\n"  # once, and the child got nothing
    remove(log)


def test_signal_without_b_reaches_the_steps_not_the_batch_shell(c: Cluster, users: dict[str, int]) -> None:
    log = c.file("sig-steps.log")
    remove(log)
    step = f"crun sh -c 'trap \"echo step >> {log}\" USR1; {WAIT_TRAP}'"
    jid = c.submit("-t", "00:00:40", "--signal=USR1@30", "-o", "/dev/null", user="alice",
                   wrap=f"trap 'echo batch >> {log}' USR1; {step} & wait; {WAIT_TRAP}")  # fmt: skip
    wait_for(file_with(log, "step"), 60, "the step's USR1 trap")
    c.ok("ccancel", str(jid))
    c.wait_state(jid, "CANCELLED", timeout=30)
    with open(log) as f:
        assert f.read() == "step\n"
    remove(log)


def test_signal_follows_a_new_time_limit(c: Cluster, users: dict[str, int]) -> None:
    """A 10-minute limit lowered to 40 s while running: the signal comes
    30 s before the new limit (SetTimeLimit re-arms it)."""
    log = c.file("sig-update.log")
    remove(log)
    jid = c.submit("-t", "00:10:00", "--signal=B:USR1@30", "-o", "/dev/null", user="alice",
                   wrap=f"echo started >> {log}; trap 'echo usr1 >> {log}' USR1; {WAIT_TRAP}")  # fmt: skip
    wait_for(file_with(log, "started"), 60, "the job's start")
    c.ok("ccontrol", "update", f"JobId={jid}", "TimeLimit=00:00:40", user="alice")
    wait_for(file_with(log, "usr1"), 60, "USR1 before the new limit")
    c.ok("ccancel", str(jid))
    c.wait_state(jid, "CANCELLED", timeout=30)
    remove(log)


def test_signal_is_re_armed_when_the_agent_restarts(c: Cluster, users: dict[str, int]) -> None:
    """The agent stops (its steps keep running) and starts again: it takes
    the step back and sends the signal when it is due."""
    log = c.file("sig-restart.log")
    remove(log)
    jid = c.submit("-w", "crane02", "-t", "00:01:00", "--signal=B:USR1@40", "-o", "/dev/null", user="alice",
                   wrap=f"echo started >> {log}; trap 'echo usr1 >> {log}' USR1; {WAIT_TRAP}")  # fmt: skip
    wait_for(file_with(log, "started"), 60, "the job's start")
    agent = c.procs.pop("craned-crane02")
    agent.send_signal(signal.SIGTERM)
    agent.wait(30)
    c.start_agent("crane02")
    c.wait_nodes_up()
    wait_for(file_with(log, "usr1"), 60, "USR1 sent by the restarted agent")
    c.ok("ccancel", str(jid))
    c.wait_state(jid, "CANCELLED", timeout=30)
    with open(log) as f:
        assert f.read() == "started\nusr1\n"
    with open(os.path.join(c.base, "log", "craned-crane02.log"), errors="replace") as f:
        agent_log = f.read()
    adopted, sent = agent_log.find(f"adopted step {jid}.1"), agent_log.find(f"job {jid}: signal 10 sent")
    assert 0 <= adopted < sent, "the signal comes from the agent that took the step back"
    remove(log)


def test_a_bad_signal_is_refused_at_submission(c: Cluster, users: dict[str, int]) -> None:
    r = c.run("cbatch", "--signal=B:NOPE@30", "--wrap", "true", user="alice")
    assert r.returncode == 2 and "invalid --signal" in r.stderr


def write_as(path: str, text: str, uid: int) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, uid, -1)


@pytest.mark.parametrize(("mode", "expected"), [("truncate", "new\n"), ("append", "old\nnew\n"), (None, "old\nnew\n")])
def test_open_mode(c: Cluster, users: dict[str, int], mode: str | None, expected: str) -> None:
    out = c.file(f"open-mode-{mode}.out")
    write_as(out, "old\n", users["alice"])
    args = ["-o", out] + ([f"--open-mode={mode}"] if mode else [])
    jid = c.submit(*args, user="alice", wrap="echo new")
    c.wait_state(jid, "COMPLETED", timeout=60)
    with open(out) as f:
        assert f.read() == expected
    remove(out)


def test_open_mode_truncate_then_a_requeue_appends(c: Cluster, users: dict[str, int]) -> None:
    out = c.file("open-mode-requeue.out")
    write_as(out, "old\n", users["alice"])
    jid = c.submit("-o", out, "--open-mode", "truncate", user="alice",
                   wrap="echo run-$CRANE_RESTART_COUNT; sleep 300")  # fmt: skip
    wait_for(file_with(out, "run-0"), 60, "the first run's output")
    c.ok("ccontrol", "requeue", str(jid))
    wait_for(file_with(out, "run-1"), 60, "the second run's output")
    c.ok("ccancel", str(jid))
    c.wait_state(jid, "CANCELLED", timeout=30)
    with open(out) as f:
        text = f.read()
    assert "old" not in text and text.index("run-0") < text.index("run-1")
    remove(out)


def test_truncate_never_reaches_a_file_the_user_cannot_write(c: Cluster, users: dict[str, int]) -> None:
    """The output file is opened (and truncated) as the job's owner: a
    symlink to root's file fails the launch and leaves the file whole."""
    victim = c.file("root-owned.txt")
    link = c.file("open-mode-link.out")
    write_as(victim, "precious\n", 0)
    os.chmod(victim, 0o644)
    remove(link)
    os.symlink(victim, link)
    jid = c.submit("-o", link, "--open-mode", "truncate", user="alice", wrap="echo x")
    c.wait_state(jid, "FAILED", timeout=60)
    with open(victim) as f:
        assert f.read() == "precious\n"
    remove(link, victim)
