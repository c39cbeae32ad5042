"""Output file name patterns (crane.core.patterns): pure, direct."""

from __future__ import annotations

import pytest

from crane.core.job import Job, nodelist_text
from crane.core.patterns import NOT_AN_ARRAY, expand, expand_known, safe_component


def full(p: str, name: str = "train", user: str = "alice", node: str = "crane02") -> str:
    return expand(p, 42, name, user, node)


def test_every_pattern() -> None:
    assert full("/o/%j.out") == "/o/42.out"
    assert full("/o/%x-%u-%N.out") == "/o/train-alice-crane02.out"
    assert full("/o/%A_%a") == f"/o/42_{NOT_AN_ARRAY}" == "/o/42_4294967294"
    assert full("/o/100%%-%j") == "/o/100%-42"
    assert full("/o/%%j") == "/o/%j"  # a literal %, then a plain j
    assert full("/o/plain") == "/o/plain"


def test_zero_padding_and_unknown_sequences() -> None:
    assert full("/o/%5j") == "/o/00042"
    assert full("/o/%3A") == "/o/042"
    assert full("/o/%99j") == "/o/" + "42".zfill(10)  # bounded width
    assert full("/o/%3x") == "/o/train"  # padding ignored for names, as Slurm
    assert full("/o/%z%J%s%") == "/o/%z%J%s%"  # unknown or trailing: kept as written
    assert full("/o/%5%") == "/o/%5%"


def test_node_short_name() -> None:
    assert full("/o/%N", node="crane01.cluster.example") == "/o/crane01"


def test_names_cannot_leave_the_directory() -> None:
    assert full("/data/%x/out", name="../../etc") == "/data/.._.._etc/out"
    assert full("/data/%x/out", name="..") == "/data/__/out"
    assert full("/data/%x/out", name=".") == "/data/_/out"
    assert full("/data/%x%x/out", name=".") == "/data/__/out"
    assert full("/data/%x.out", name="a/b") == "/data/a_b.out"
    assert full("/data/%x", name="...x") == "/data/...x"
    assert safe_component("/") == "_" and safe_component("") == ""
    for name in ("..", ".", "../..", "a/../..", "/etc/passwd"):
        out = full("/data/%x", name=name)
        assert out.startswith("/data/") and "/" not in out[len("/data/") :], out


def test_two_passes_equal_one() -> None:
    cases = ["/o/%j-%x-%u-%N-%A-%a-%%", "/o/%%j%%N", "/o/%5j%N%3N", "/o/%x%j", "/o/%5%%j%", "/o/%q%N"]
    names = ["train", "50%", "%N", "a%%b", "%j", "..", "x/y"]
    for p in cases:
        for name in names:
            known = expand_known(p, 42, name, "alice")
            assert expand(known, 42, name, "alice", "crane02") == full(p, name=name), (p, name, known)


def test_known_pass_keeps_node_and_percent() -> None:
    assert expand_known("/o/crane-%j.out", 7, "n", "u") == "/o/crane-7.out"
    assert expand_known("/o/%N-%%-%x", 7, "50%", "u") == "/o/%N-%%-50%%"


def make_job(**kw: object) -> Job:
    base: dict[str, object] = dict(id=9, name="sim", uid=1000, user="alice", gid=1000, account="a", qos="q",
                                   partition="CPU", nodes=["crane01", "crane02"], cpus=3, nnodes=2,
                                   memory=512 * 1024 * 1024, cwd="/home/alice/run", stdout="/o/%x-%j-%N.out")  # fmt: skip
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_step_spec_expands_output_for_the_node() -> None:
    j = make_job()
    spec = j.step_spec(1, [], {}, j.cwd, 3, "echo", "crane02")
    assert spec["stdout"] == "/o/sim-9-crane02.out"
    assert spec["stderr"] == ""  # "" (with stdout) stays ""
    assert j.step_spec(1, [], {}, j.cwd, 3)["stdout"] == "/o/sim-9-crane01.out"  # first node by default


def test_job_environment() -> None:
    j = make_job(requeue_count=2)
    env = j.step_spec(1, [], {"A": "1"}, j.cwd, 3)["env"]
    assert env["A"] == "1"
    assert env["CRANE_JOB_NODELIST"] == "crane[01-02]"
    assert env["CRANE_NNODES"] == "2" and env["CRANE_NTASKS"] == "2"
    assert env["CRANE_CPUS_PER_TASK"] == "3" and env["CRANE_CPUS_ON_NODE"] == "3"
    assert env["CRANE_MEM_PER_NODE"] == "512"
    assert env["CRANE_SUBMIT_DIR"] == "/home/alice/run"
    assert env["CRANE_RESTART_COUNT"] == "2"
    assert env["CRANE_JOB_ID"] == "9" and env["CRANE_STEP_ID"] == "1" and env["CRANE_JOB_NAME"] == "sim"
    assert not {"CRANE_RC_FILE", "CRANE_SCOPE"} & set(env)
    assert "CRANE_MEM_PER_NODE" not in make_job(memory=0).step_spec(1, [], {}, "/", 1)["env"]  # no limit: unset


@pytest.mark.parametrize(("nodes", "text"), [([], ""), (["n1", "n2"], "n[1-2]"), (["crane01", "gpu07"], "crane01,gpu07"),
                                             (["crane01", "crane02", "crane04"], "crane[01-02,04]")])  # fmt: skip
def test_nodelist_text(nodes: list[str], text: str) -> None:
    assert nodelist_text(nodes) == text
