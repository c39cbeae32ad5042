"""Red-team tests of session 12's new surface (multi-task crun, output
re-attached after an agent restart, job arrays and dependencies, A_T ids,
--signal, --open-mode, SLURM_* variables, the Slurm-named commands).

Each test is an attack by a real unprivileged user against real daemons (or,
for a bound on the controller's work, against the pure function it runs);
it failed on the code before its fix."""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any

import pytest

from tests.conftest import IS_ROOT, Cluster, open_ancestors, pid_alive, wait_for
from tests.test_crun_live import Crun

DEADLINE = 60.0


def _log(c: Cluster, key: str) -> str:
    try:
        with open(os.path.join(c.base, "log", f"{key}.log")) as f:
            return f.read()
    except OSError:
        return ""


def _fake_wrappers(owner: int, target: str) -> list[int]:
    """alice's processes posing as a step wrapper with ``target`` as their fd 1."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != owner:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) > 3 and argv[1] == b"-c" and argv[3] == b"crane-step" and os.readlink(f"/proc/{name}/fd/1") == target:
                found.append(int(name))
        except OSError:
            continue
    return found


POSE = """import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
_, fds, _, _ = socket.recv_fds(s, 16, 1)
os.dup2(fds[0], 1)
os.execvp("sh", ["sh", "-c", "sleep 300; :", "crane-step"])
"""


@pytest.mark.skipif(not IS_ROOT, reason="needs root (real users, agent restart)")
def test_reattach_reads_only_the_steps_own_pipe(make_cluster: Any, users: dict[str, int]) -> None:
    """After an agent restart the agent (root) opened, for reading, whatever
    pipe a process of the step posing as its wrapper held as fd 1. alice
    was handed the write end of a root service's log pipe (here: over a
    unix socket); while the agent is away she kills her step's wrapper and
    leaves a ``sh -c ... crane-step`` whose stdout is that pipe: the
    restarted agent read the service's secret out of it and streamed it to
    alice's crun. Now it reopens only the pipe it made for the step (its
    device and inode are in the step's record)."""
    c = make_cluster(nodes=1, cpus=2)
    r, w = os.pipe()
    os.write(w, b"ROOT-SECRET-42")  # the service's own line, waiting for its reader
    sock_path = c.file("svc.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sock_path)
    os.chmod(sock_path, 0o666)
    srv.listen(1)
    srv.settimeout(DEADLINE)

    def hand_out() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            socket.send_fds(conn, [b"x"], [w])

    server = threading.Thread(target=hand_out, daemon=True)
    server.start()
    pose = c.file("pose.py")
    with open(pose, "w") as f:
        f.write(POSE)
    os.chmod(pose, 0o644)
    go, posed = c.file("go-pose"), c.file("posed")
    script = (f"echo ready; while [ ! -e {go} ]; do sleep 0.1; done; "
              f"{sys.executable} -I {pose} {sock_path} & kill -9 $PPID; touch {posed}; wait")  # fmt: skip
    cr = Crun(c, "-J", "rt-pose", "sh", "-c", script, user="alice")
    try:
        cr.wait_out("ready")
        job = wait_for(lambda: next((j for j, v in c.jobs().items() if v["name"] == "rt-pose"), None), DEADLINE, "the job")
        wrapper = c.step_pid(job)
        agent = c.procs.pop("craned-crane01")
        agent.kill()
        agent.wait(DEADLINE)
        with open(go, "w"):
            pass
        wait_for(lambda: os.path.exists(posed) and not pid_alive(wrapper), DEADLINE, "the wrapper killed")
        target = f"pipe:[{os.fstat(w).st_ino}]"
        wait_for(lambda: _fake_wrappers(users["alice"], target), DEADLINE, "alice's fake wrapper")
        c.start_agent("crane01")
        c.wait_nodes_up()
        marks = (f"step {job}.1: stream 1 cannot be read again", f"step {job}.1: stream 1 read again")

        def attempted() -> str | None:
            text = _log(c, "craned-crane01")
            return text if any(s in text for s in marks) else None

        log = wait_for(attempted, DEADLINE, "the agent's attempt to read the step's stdout again")
        assert marks[1] not in log and marks[0] in log, "the agent reopened a pipe that is not the step's"
        os.set_blocking(r, False)
        assert os.read(r, 100) == b"ROOT-SECRET-42"  # still there: nobody else read it
        c.ok("ccancel", str(job))
        cr.finish()
        assert b"SECRET" not in cr.out
    finally:
        if cr.p.poll() is None:
            cr.p.kill()
        srv.close()
        for fd in (r, w):
            os.close(fd)


def test_array_references_cost_a_bounded_number_of_lookups() -> None:
    """ccancel/cqueue ``A_T`` and ``A`` references: the controller once
    scanned the whole array (one history read per task of a finished array)
    for each of 10,000 ``A_T`` in one request, and expanded an array id
    once per reference (``A.S`` with many step ids: millions of pairs).
    Now each job is looked up once per request and at most MAX_PAIRS
    pairs are named."""
    from crane.core.selection import MAX_PAIRS, ArrayInfo, expand_refs

    first, size = 1000, 1001
    calls = [0]
    active = [False]

    def info(i: int) -> ArrayInfo | None:  # a finished array: every lookup is a read of the history
        calls[0] += 1
        return (first, i - first, size, active[0]) if first <= i < first + size else None

    refs: list[tuple[int, int | None, int | None]] = [(first, None, size + k) for k in range(10_000)]  # no such tasks
    pairs, missing = expand_refs(refs, info)
    assert pairs == [] and len(missing) == 10_000
    assert calls[0] <= size + 1
    calls[0] = 0
    active[0] = True  # the same array, running
    refs = [(first, None, 7)] * 1000 + [(first, s, None) for s in range(1, 501)]  # repeated; an array id with 500 steps
    pairs, missing = expand_refs(refs, info)
    assert pairs[0] == (first + 7, None) and len(pairs) == MAX_PAIRS and calls[0] <= size + 1
    assert missing and "more than" in missing[-1][2]


@pytest.mark.skipif(not IS_ROOT, reason="needs root (real users)")
def test_comment_with_control_characters_or_too_long_is_refused_at_the_controller(cluster: Cluster,
                                                                                 users: dict[str, int]) -> None:  # fmt: skip
    """``--comment`` is stored and shown to every user (cqueue ``%k``,
    ccontrol/scontrol show job, squeue, sacct); only cbatch checked it: a
    hand-made SubmitJob stored an escape sequence (and any length) as sent."""
    from tests.test_security_controller import jobs_of, send_as

    c = cluster
    open_ancestors(c.base)
    before = jobs_of(c, "alice")
    good = {"argv": ["/bin/true"], "cwd": c.workdir, "stdout": "/dev/null", "hold": True}
    cases = [("x\x1b]52;c;cHduZWQ=\x07", "comment contains a control character"),
             ("two\nlines", "comment contains a control character"),
             ("c" * 100_000, "comment")]  # fmt: skip
    answers = send_as(c, "alice", *[("SubmitJob", {"spec": {**good, "comment": text}}) for text, _ in cases])
    for (text, want), got in zip(cases, answers, strict=True):
        assert got.get("code") == 2 and want in got.get("error", ""), (text[:20], got)
    assert jobs_of(c, "alice") == before
    [ok] = send_as(c, "alice", ("SubmitJob", {"spec": {**good, "comment": "a plain comment"}}))
    jid = ok["ok"]["job_ids"][0]
    try:
        assert c.job(jid)["comment"] == "a plain comment"  # type: ignore[index]
    finally:
        c.ok("ccancel", str(jid))


def test_one_users_unasked_steps_cannot_fill_the_held_output_of_everyone() -> None:
    """The controller holds a step's output until its crun asks (1 MiB a
    step, 64 MiB in all). alice starts 64 streamed steps whose WaitStep
    never comes (a hand-made StartStep) and keeps the whole pool full:
    every other user's crun then lost what its step wrote first. Now one
    user's steps hold at most HOLD_USER."""
    from crane.actors.streams import HOLD_STEP, HOLD_TOTAL, HOLD_USER, Relay
    from crane.core import messages as m

    class Sink:  # bob's crun: its connection takes every chunk
        def __init__(self) -> None:
            self.got = bytearray()
            self.endpoint, self.identity, self.rid = self, b"bob", "r1"

        def send(self, identity: bytes, msg: m.StepOutput, rid: str) -> bool:
            self.got += msg.data
            return True

        def alive(self) -> bool:
            return True

    relay = Relay()
    alice, bob = 1001, 1002
    chunk = b"a" * (64 * 1024)
    for step in range(1, HOLD_TOTAL // HOLD_STEP + 2):
        for seq in range(HOLD_STEP // len(chunk)):
            relay.relay(m.StepOutput(10, step, 1, chunk, seq), alice)
    assert relay.held_bytes <= HOLD_USER < HOLD_TOTAL
    relay.relay(m.StepOutput(20, 1, 1, b"bob's first line\n", 0), bob)  # before bob's crun asks
    sink = Sink()
    relay.subscribe((20, 1), sink)
    assert bytes(sink.got) == b"bob's first line\n" and relay.lost((20, 1)) == 0


def test_a_dependency_costs_a_bounded_number_of_status_reads() -> None:
    """A dependency is evaluated again on every start and end of a job it
    names, reading the status of each job it stands for (an array id: each
    task). ``afterok:A`` repeated 300 times (one array of 1,001 tasks) read
    300,300 statuses per evaluation, 2,002 evaluations: the controller was
    busy for minutes. Now a term repeated is one term, and a submission
    whose dependency stands for more than MAX_DEPENDENCY_TASKS jobs is
    refused (``work``)."""
    from crane.core import dependency as dp

    array, size = 1000, 1001

    def tasks_of(i: int) -> int:
        return size if i == array else 1

    dep = dp.parse(",".join([f"afterok:{array}"] * 300))
    assert len(dep.terms) == 1 and dp.work(dep, tasks_of) == size
    # distinct arrays (10 of the maximum size and one more): refused at submission
    many = dp.parse(",".join(f"afterok:{array + k * size}" for k in range(11)))
    assert dp.work(many, lambda i: size) > dp.MAX_DEPENDENCY_TASKS
    # an honest dependency on one array and a few jobs passes
    assert dp.work(dp.parse(f"afterok:{array}:5:6?afterany:7"), tasks_of) <= dp.MAX_DEPENDENCY_TASKS


@pytest.mark.skipif(not IS_ROOT, reason="needs root (real users)")
def test_array_ids_select_only_what_the_caller_may_touch(cluster: Cluster, users: dict[str, int]) -> None:
    """bob names alice's array (``A``, ``A_T``) in ccancel: refused, her
    tasks stay; an ``A_T`` naming nothing selects nothing (a past bug
    cancelled every job of the caller's the filters allowed)."""
    c = cluster
    open_ancestors(c.base)
    import json

    sub = json.loads(c.ok("cbatch", "--json", "-H", "-a", "0-2", "--wrap", "true", user="alice"))
    array = int(sub.get("array_job_id") or sub["job_id"])
    own = c.submit("-H", wrap="true", user="bob")
    try:
        for ref in (f"{array}_1", str(array), f"{array}_[0-2]"):
            c.run("ccancel", ref, user="bob")
        c.run("ccancel", "-u", "bob", f"{array + 1000}_1", user="bob")  # an array task that does not exist
        c.run("ccancel", "-u", "bob", f"{own}_5", user="bob")  # bob's own job is no array
        tasks = [j for j in c.jobs().values() if j.get("array_job_id") == array]
        assert len(tasks) == 3 and all(t["state"] == "PENDING" for t in tasks), tasks
        assert c.state(own) == "PENDING"
    finally:
        c.run("ccancel", str(array), str(own))


def test_a_singleton_storm_costs_one_pass_over_the_jobs_per_event() -> None:
    """Each end of a job re-evaluates every ``--dependency=singleton`` job of
    its user and name, and each evaluation scanned every active job:
    MaxSubmitJobsPerUser (10,000) singletons in a cluster of 100,000 jobs
    made each end 10^9 steps of the controller's one loop. Now one event
    makes one pass (the real ``Dependencies`` over a table of real Jobs;
    only the scheduler's mailbox is a sink)."""
    from types import SimpleNamespace

    from crane.actors.jobs import Dependencies
    from crane.core.job import Job
    from crane.core.states import JobState

    class Jobs(dict[int, Any]):  # counts the passes over the active jobs
        passes = 0

        def values(self) -> Any:
            Jobs.passes += 1
            return super().values()

    def job(i: int, name: str, state: JobState = JobState.PENDING) -> Job:
        j = Job(id=i, name=name, uid=1001, user="alice", gid=1001, account="a", qos="", partition="p")
        j.state, j.dependency = state, "singleton"
        return j

    jobs = Jobs()
    told: list[Any] = []
    table = SimpleNamespace(jobs=jobs, recent={}, scheduler=SimpleNamespace(tell=told.append),
                            get=lambda i: jobs[i].job if i in jobs else None)  # fmt: skip
    deps = Dependencies(table)  # type: ignore[arg-type]
    jobs[1] = SimpleNamespace(job=job(1, "storm", JobState.RUNNING))
    for i in range(2, 302):
        jobs[i] = SimpleNamespace(job=job(i, "storm"))
        deps.watch(jobs[i].job)
    for i in range(1000, 1500):  # other jobs in the cluster
        jobs[i] = SimpleNamespace(job=job(i, "other", JobState.RUNNING))
    ended = jobs.pop(1).job
    ended.state = JobState.COMPLETED
    Jobs.passes, told[:] = 0, []
    deps.ended(ended)
    assert Jobs.passes <= 2, Jobs.passes
    cleared = [g for g in told if getattr(g, "reason", None) == ""]
    assert [g.job_id for g in cleared] == [2]  # the next one, and only it, may start


def test_one_users_waiting_dependencies_name_a_bounded_number_of_jobs(cluster: Cluster,
                                                                      users: dict[str, int]) -> None:  # fmt: skip
    """Each start or end of a job re-evaluates every dependent naming it: a
    user's waiting dependents together name at most MAX_USER_DEPENDENCY_REFS
    jobs (9,000 jobs each naming the same 680 cost ~10 s per event, for
    hours); past it a submission is refused, naming the limit, and cancelling
    dependents gives the room back."""
    from crane.core import dependency as dp

    c = cluster
    per = 1000
    array = c.submit("-H", f"--array=0-{per - 1}", wrap="true", user="alice")
    dependents = dp.MAX_USER_DEPENDENCY_REFS // per  # each names the array's 1000 tasks
    first = c.submit("-H", f"--array=0-{dependents - 1}", "-d", f"afterok:{array}", wrap="true", user="alice")
    r = c.run("cbatch", "-d", f"afterok:{array}", "--wrap", "true", user="alice")
    assert r.returncode == 2 and str(dp.MAX_USER_DEPENDENCY_REFS) in r.stderr, r.stderr
    # another user is not held back by alice's
    bob = c.submit("-H", "-d", f"afterany:{first}", wrap="true", user="bob")
    c.ok("ccancel", *[f"{first}_{i}" for i in range(10)], user="alice")
    again = c.submit("-d", f"afterok:{array}", wrap="true", user="alice")
    for job in (array, first, bob, again):
        c.run("ccancel", str(job))
