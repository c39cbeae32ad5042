"""Job arrays (issue 14): the pure ``--array`` parser and array_env, array
task ids (``A_T``), and end to end on a real cluster: one job per index,
%A/%a, CRANE_ARRAY_*, the %LIMIT, ``A`` and ``A_T`` in ccancel/cqueue/cacct."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crane.core.arrays import ArraySpec, array_env, parse_array, task_label, uniform_step
from crane.core.ids import IdListError, parse_job_refs
from crane.core.job import Job
from crane.core.selection import expand_refs
from tests.conftest import IS_ROOT, Cluster, wait_for

# ---------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("text", "indices", "limit"),
    [
        ("7", (7,), 0),
        ("0-9", tuple(range(10)), 0),
        ("0-9:2", (0, 2, 4, 6, 8), 0),
        ("0-9:2%3", (0, 2, 4, 6, 8), 3),
        ("1,3,5-7", (1, 3, 5, 6, 7), 0),
        ("5-7,1,3,6", (1, 3, 5, 6, 7), 0),
        ("0-1000", tuple(range(1001)), 0),
        ("3-3", (3,), 0),
        ("1-10:20", (1,), 0),
        ("0%1", (0,), 1),
    ],
)
def test_parse_array(text: str, indices: tuple[int, ...], limit: int) -> None:
    spec = parse_array(text, 1001)
    assert spec == ArraySpec(indices, limit)
    assert spec.count == len(indices)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("1001", "between 0 and 1000"),
        ("0-1001", "between 0 and 1000"),
        ("5-3", "ends before it starts"),
        ("0-9:0", "step must be at least 1"),
        ("0-9%0", "at least 1"),
        ("0-9%", "must be a number"),
        ("0-9%x", "must be a number"),
        ("-1", "use N, N-M"),
        ("1,,2", "use N, N-M"),
        ("1-", "use N, N-M"),
        ("a-b", "use N, N-M"),
        (" 1", "use N, N-M"),
        ("1:2", "use N, N-M"),
        ("%3", "no indices"),
        ("99999999999999999999", "too large"),
        ("1-3%2%4", "must be a number"),
        ("1" * 5000, "longer than"),
        ("١", "use N, N-M"),  # a non-ASCII digit
    ],
)
def test_parse_array_refuses(text: str, words: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_array(text, 1001)
    assert words in str(e.value)
    assert len(str(e.value)) < 300


def test_max_array_size_bounds_the_indices() -> None:
    assert parse_array("0-9", 10).count == 10
    with pytest.raises(ValueError, match="between 0 and 9"):
        parse_array("10", 10)


@given(st.text(max_size=40))
def test_parse_array_never_crashes(text: str) -> None:
    try:
        spec = parse_array(text, 1001)
    except ValueError:
        return
    assert spec.indices == tuple(sorted(set(spec.indices)))
    assert all(0 <= i <= 1000 for i in spec.indices) and spec.count >= 1


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=30), st.integers(0, 50))
def test_parse_array_roundtrip(indices: list[int], limit: int) -> None:
    text = ",".join(map(str, indices)) + (f"%{limit}" if limit else "")
    spec = parse_array(text, 1001)
    assert spec.indices == tuple(sorted(set(indices))) and spec.limit == limit


@given(st.integers(0, 500), st.integers(0, 500), st.integers(1, 60))
def test_parse_array_ranges(lo: int, span: int, step: int) -> None:
    spec = parse_array(f"{lo}-{lo + span}:{step}", 1001)
    assert spec.indices == tuple(range(lo, lo + span + 1, step))
    assert spec.step == (step if spec.count > 1 else 1)


def test_uniform_step_and_label() -> None:
    assert uniform_step((1, 3, 5)) == 2 and uniform_step((1, 3, 6)) == 1 and uniform_step((4,)) == 1
    assert task_label(7, 3, 9) == "7_3" and task_label(0, None, 9) == "9" and task_label(7, 0, 7) == "7_0"


def test_array_env() -> None:
    job = Job(id=12, name="a", uid=0, user="root", gid=0, account="a", qos="", partition="p")
    assert array_env(job) == {}
    job.array_job_id, job.array_task_id = 10, 4
    job.array_task_count, job.array_task_min, job.array_task_max, job.array_task_step = 3, 0, 4, 2
    assert array_env(job) == {
        "CRANE_ARRAY_JOB_ID": "10", "CRANE_ARRAY_TASK_ID": "4", "CRANE_ARRAY_TASK_COUNT": "3",
        "CRANE_ARRAY_TASK_MIN": "0", "CRANE_ARRAY_TASK_MAX": "4", "CRANE_ARRAY_TASK_STEP": "2",
    }  # fmt: skip
    assert Job.from_dict(job.to_dict()).array_task_step == 2


# ---------------------------------------------------------------- ids


def test_parse_job_refs() -> None:
    assert parse_job_refs("12,7_3,7_4.2,7_0,5.1,12") == [
        (12, None, None), (7, None, 3), (7, 2, 4), (7, None, 0), (5, 1, None),
    ]  # fmt: skip
    for bad in ("7_", "7_01", "_3", "7_3_4", "7.1_3", "0", "7_-1", "7_99999999999", "", "7_3,", "7 _3"):
        with pytest.raises(IdListError):
            parse_job_refs(bad)


def test_expand_refs() -> None:
    # array 10: tasks 10..12 with indices 1, 3, 5 (11 ended); job 20 alone
    info = {10: (10, 1, 3, True), 11: (10, 3, 3, False), 12: (10, 5, 3, True), 20: (0, None, 0, True)}
    look = info.get
    assert expand_refs([(10, None, None)], look) == ([(10, None), (12, None)], [])
    assert expand_refs([(10, None, None)], look, active_only=False)[0] == [(10, None), (11, None), (12, None)]
    assert expand_refs([(10, 2, 5), (20, None, None)], look) == ([(12, 2), (20, None)], [])
    assert expand_refs([(10, None, 4), (20, None, 1), (99, None, 0)], look) == (
        [], [("10_4", None, "Job not found"), ("20_1", None, "Job not found"), ("99_0", None, "Job not found")])
    assert expand_refs([(11, None, None)], look) == ([(11, None)], [])  # a task's own id: that task
    ended = {10: (10, 1, 2, False), 11: (10, 3, 2, False)}
    assert expand_refs([(10, None, None)], ended.get) == ([(10, None)], [])  # nothing left: "already finished"


# ---------------------------------------------------------------- end to end


def _submit(c: Cluster, *argv: str, user: str | None = None) -> int:
    out = c.ok("cbatch", "--json", *argv, user=user)
    return int(json.loads(out)["job_id"])


def _queue(c: Cluster, *argv: str) -> list[dict[str, Any]]:
    return json.loads(c.ok("cqueue", "--json", *argv))  # type: ignore[no-any-return]


def test_array_end_to_end(cluster: Cluster) -> None:
    c = cluster
    out = c.file("arr-%A-%a.out")
    script = 'echo "$CRANE_ARRAY_JOB_ID $CRANE_ARRAY_TASK_ID $CRANE_ARRAY_TASK_COUNT $CRANE_ARRAY_TASK_MIN ' \
             '$CRANE_ARRAY_TASK_MAX $CRANE_ARRAY_TASK_STEP $CRANE_JOB_ID"'  # fmt: skip
    a = _submit(c, "-a", "1-5:2", "-J", "arr", "-o", out, "--wrap", script)
    want = {1: a, 3: a + 1, 5: a + 2}
    for index, jid in want.items():
        c.wait_state(jid, "COMPLETED", timeout=60)
        text = wait_for(lambda index=index: c.read(f"arr-{a}-{index}.out").strip(), 30, "array output")
        assert text.split() == [str(a), str(index), "3", "1", "5", "2", str(jid)], text
    rows = c.ok("cacct", "-j", str(a), "-P", "--format=JobID,JobIDRaw,State", "-N").split()
    assert rows == [f"{a}_{i}|{j}|COMPLETED" for i, j in want.items()], rows
    one = c.ok("cacct", "-j", f"{a}_3", "-P", "--format=JobID,State", "-N").split()
    assert one == [f"{a}_3|COMPLETED"], one
    hist = json.loads(c.ok("cacct", "-j", f"{a}_5", "--json"))
    assert [(j["job_id"], j["array_job_id"], j["array_task_id"]) for j in hist] == [(a + 2, a, 5)]


def test_array_limit_cancel_and_views(cluster: Cluster) -> None:
    c = cluster
    a = _submit(c, "--array", "0-3%2", "-J", "lim", "-o", "/dev/null", "--wrap", "sleep 300")
    tasks = list(range(a, a + 4))

    def two_running() -> list[dict[str, Any]] | None:
        jobs = _queue(c, "-j", str(a))
        states = sorted(j["state"] for j in jobs)
        return jobs if states == ["PENDING", "PENDING", "RUNNING", "RUNNING"] else None

    jobs = wait_for(two_running, 60, "two tasks running, two pending")
    assert sorted(j["job_id"] for j in jobs) == tasks
    pend = [j for j in jobs if j["state"] == "PENDING"]
    wait_for(lambda: all(j["reason"] == "JobArrayTaskLimit" for j in _queue(c, "-j", str(a))
                         if j["state"] == "PENDING") or None, 30, "JobArrayTaskLimit")  # fmt: skip
    table = [r.split() for r in c.ok("cqueue", "-N", "-j", str(a), "-o", "%i %A %F %K %T").splitlines()]
    assert [f"{a}_0", str(a), str(a), "0", "RUNNING"] in table, table
    assert [f"{a}_3", str(a + 3), str(a), "3", "PENDING"] in table, table
    assert f"{a}_3 " in c.ok("cqueue", "-j", f"{a}_3"), "the default table names a task A_T"
    # cancel one running task by A_T: a pending one takes its place, never more than 2
    running = [j for j in jobs if j["state"] == "RUNNING"]
    t = running[0]["array_task_id"]
    c.ok("ccancel", f"{a}_{t}")
    c.wait_state(running[0]["job_id"], "CANCELLED", timeout=60)
    wait_for(lambda: sum(j["state"] == "RUNNING" for j in _queue(c, "-j", str(a))) == 2 or None, 60, "refill")
    assert sum(j["state"] == "RUNNING" for j in _queue(c, "-j", str(a))) <= 2
    assert pend  # silence: the pending ones were pending
    # a task that does not exist: reported, exit 4
    r = c.run("ccancel", f"{a}_9")
    assert r.returncode == 4 and f"{a}_9" in r.stdout + r.stderr, (r.stdout, r.stderr)
    # the array id alone: every task left
    c.ok("ccancel", str(a))
    for jid in tasks:
        c.wait_state(jid, "CANCELLED", timeout=60)


def test_array_refusals(cluster: Cluster) -> None:
    c = cluster
    for argv, words in [
        (("-a", "0-5000"), "between 0 and 1000"),
        (("-a", "x"), "invalid array"),
        (("-a", "0-3", "--repeat", "2"), "--repeat"),
    ]:
        r = c.run("cbatch", *argv, "--wrap", "true")
        assert r.returncode != 0 and words in r.stderr, (argv, r.stderr)
        assert r.stderr.startswith("cbatch: "), r.stderr
    r = c.run("crun", "-a", "0-1", "true")
    assert r.returncode != 0, r.stdout


def test_array_counts_against_max_submit(make_cluster: Any, users: dict[str, int]) -> None:
    c = make_cluster(nodes=1, cpus=1, MaxSubmitJobsPerUser=3)
    r = c.run("cbatch", "-a", "0-3", "--wrap", "true", user="alice")
    assert r.returncode == 2 and "MaxSubmitJobsPerUser" in r.stderr, r.stderr
    a = _submit(c, "-a", "0-2", "-o", "/dev/null", "--wrap", "true", user="alice")
    for jid in range(a, a + 3):
        c.wait_state(jid, "COMPLETED", timeout=60)


@pytest.mark.skipif(not IS_ROOT, reason="the output file is the job owner's")
def test_array_output_patterns(cluster: Cluster) -> None:
    c = cluster
    a = _submit(c, "-a", "2,4", "-o", c.file("p-%A_%a-%j.out"), "--wrap", "echo hi")
    for n, i in enumerate((2, 4)):
        c.wait_state(a + n, "COMPLETED", timeout=60)
        path = c.file(f"p-{a}_{i}-{a + n}.out")
        wait_for(lambda path=path: os.path.exists(path) or None, 30, path)


def test_ccontrol_with_array_ids(cluster: Cluster) -> None:
    c = cluster
    a = _submit(c, "-a", "0-1", "-H", "-o", "/dev/null", "--wrap", "true")
    show = c.ok("ccontrol", "show", "job", f"{a}_1")
    assert f"JobId={a + 1} " in show and f"ArrayJobId={a} ArrayTaskId=1" in show, show
    heads = [ln.split()[0] for ln in show.splitlines() if ln.startswith("JobId=")]
    assert heads == [f"JobId={a + 1}"], show
    both = c.ok("ccontrol", "show", "job", str(a))
    heads = [ln.split()[0] for ln in both.splitlines() if ln.startswith("JobId=")]
    assert heads == [f"JobId={a}", f"JobId={a + 1}"], both
    r = c.run("ccontrol", "show", "job", f"{a}_7")
    assert r.returncode != 0 and f"{a}_7 not found" in r.stderr, r.stderr
    r = c.run("ccontrol", "release", f"{a}_5")
    assert r.returncode == 4 and f"{a}_5" in r.stderr, r.stderr
    c.ok("ccontrol", "release", f"{a}_1")  # one task
    c.wait_state(a + 1, "COMPLETED", timeout=60)
    assert c.job(a)["held"], "task 0 stays held"  # type: ignore[index]
    c.ok("ccontrol", "release", str(a))  # the array id: every task still active
    c.wait_state(a, "COMPLETED", timeout=60)


def test_array_tasks_filter_is_checked() -> None:
    from crane.core.selection import check_filters

    assert check_filters({"array_tasks": [[7, 0], [7, 3, 2]], "expand_arrays": True}) is None
    for bad in ([[7]], [[0, 1]], [[7, -1]], [[7, 1, 0]], [[7, 1, 2, 3]], [[7, True]], [["7", 1]], "7_1", [[7, 1.0]]):
        assert check_filters({"array_tasks": bad}) is not None, bad
    assert check_filters({"expand_arrays": 1}) is not None
