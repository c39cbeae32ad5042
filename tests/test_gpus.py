"""GPUs end to end (issue 18): real cranectld + craned processes on nodes
that declare GPUs (counts only: no hardware, no device files needed here).

crane03 has 2 a100 GPUs, crane04 none; partition GPU is crane[03-04]. Jobs
write ``$CUDA_VISIBLE_DEVICES`` into a file of the test's work directory.
Waiting is polling with a deadline; every test cancels what it started."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Cluster, pid_alive, start_cluster, wait_for
from tests.test_preemption import preempted_reason, setup_qos

GRES = {"crane03": [{"name": "gpu", "type": "a100", "count": 2}]}
DEADLINE = 60.0


@pytest.fixture(scope="module")
def gc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = str(tmp_path_factory.mktemp("gpus"))
    os.chmod(base, 0o755)
    c = start_cluster(base, 4, 4, gres=GRES)
    try:
        setup_qos(c)
        yield c
    finally:
        c.down()


def submit_gpu(c: Cluster, gres: str, *argv: str, wrap: str) -> int:
    """cbatch --gres when the CLI has it, else the same SubmitJob spec by hand."""
    if importlib.util.find_spec("crane.cli.gres") is not None:
        return c.submit("--gres", gres, *argv, wrap=wrap)
    from crane.cli.common import call, load_config
    from crane.core import messages as m

    parts = gres.split(":")
    spec: dict[str, Any] = {"argv": ["/bin/sh", "-c", wrap], "cwd": c.workdir, "env": {"PATH": "/usr/bin:/bin"},
                            "gpus_per_node": int(parts[-1]), "gpu_type": parts[1] if len(parts) == 3 else ""}
    it = iter(argv)
    for a in it:
        key = {"-p": "partition", "-w": "nodelist", "-c": "cpus", "-A": "account", "-q": "qos", "--qos": "qos"}[a]
        v = next(it)
        spec[key] = [v] if key == "nodelist" else int(v) if key == "cpus" else v
    return int(call(load_config(c.config_path), m.SubmitJob(spec))["job_ids"][0])


def devices_of(c: Cluster, name: str) -> str:
    """What the job wrote: its CUDA_VISIBLE_DEVICES (waits until written)."""
    return wait_for(lambda: c.read(name).strip() or None, DEADLINE, f"{name} written")  # type: ignore[no-any-return]


def node_row(c: Cluster, name: str) -> dict[str, Any]:
    from crane.cli.common import call, load_config
    from crane.core import messages as m

    rows = call(load_config(c.config_path), m.QueryNodes())["nodes"]
    return next(r for r in rows if r["name"] == name)


def gpus_all_free(c: Cluster) -> None:
    wait_for(lambda: node_row(c, "crane03")["gpus_free"] == 2 or None, DEADLINE, "crane03's GPUs free")


def finish(c: Cluster, *jobs: int) -> None:
    c.run("ccancel", ",".join(map(str, jobs)))
    for j in jobs:
        c.wait_state(j, "CANCELLED", "COMPLETED", "FAILED", timeout=DEADLINE)


def writer(c: Cluster, name: str) -> str:
    for suffix in ("", ".tmp"):
        try:
            os.unlink(c.file(name + suffix))
        except FileNotFoundError:
            pass
    # written whole then renamed: the reader never sees half a line
    return f'echo "$CUDA_VISIBLE_DEVICES" > {c.file(name)}.tmp && mv {c.file(name)}.tmp {c.file(name)}; sleep 300'


def test_distinct_devices_pend_and_freed_index_goes_to_the_next(gc: Cluster) -> None:
    c = gc
    gpus_all_free(c)
    j1 = submit_gpu(c, "gpu:1", "-p", "GPU", wrap=writer(c, "g1"))
    j2 = submit_gpu(c, "gpu:a100:1", "-p", "GPU", wrap=writer(c, "g2"))
    j3 = 0
    try:
        c.wait_state(j1, "RUNNING", timeout=DEADLINE)
        c.wait_state(j2, "RUNNING", timeout=DEADLINE)
        got = {j1: devices_of(c, "g1"), j2: devices_of(c, "g2")}
        assert sorted(got.values()) == ["0", "1"], got  # distinct, each exactly one
        for j, dev in got.items():
            view = c.job(j)
            assert view is not None and view["nodes"] == ["crane03"]
            assert view["gpu_alloc"] == {"crane03": [int(dev)]}
        assert c.job(j1)["gres"] == "gpu:1" and c.job(j2)["gres"] == "gpu:a100:1"  # type: ignore[index]
        row = node_row(c, "crane03")
        assert (row["gres"], row["gpus"], row["gpus_used"], row["gpus_free"]) == ("gpu:a100:2", 2, 2, 0)
        assert node_row(c, "crane04")["gpus"] == 0 and node_row(c, "crane04")["gres"] == ""

        # crane03 has CPUs left and crane04 has no GPU: the third one waits for resources
        j3 = submit_gpu(c, "gpu:1", "-p", "GPU", wrap=writer(c, "g3"))
        wait_for(lambda: (j := c.job(j3)) and j["state"] == "PENDING" and j["reason"] == "Resources",
                 DEADLINE, "job 3 pending for Resources")  # fmt: skip

        c.ok("ccancel", str(j1))
        c.wait_state(j3, "RUNNING", timeout=DEADLINE)
        assert devices_of(c, "g3") == got[j1]  # the freed index
        assert c.job(j3)["gpu_alloc"] == {"crane03": [int(got[j1])]}  # type: ignore[index]

        # a controller restart rebuilds the GPU ledger from the running jobs
        c.procs["cranectld"].send_signal(signal.SIGKILL)
        c.procs["cranectld"].wait()
        c.start_controller()
        c.wait_nodes_up(DEADLINE)
        assert node_row(c, "crane03")["gpus_used"] == 2
        j4 = submit_gpu(c, "gpu:1", "-p", "GPU", wrap="true")
        wait_for(lambda: (j := c.job(j4)) and j["reason"] == "Resources", DEADLINE, "job 4 pending")
        c.ok("ccancel", str(j2))
        j = c.wait_state(j4, "COMPLETED", "FAILED", timeout=DEADLINE)
        assert j["state"] == "COMPLETED" and j["gpu_alloc"] == {"crane03": [int(got[j2])]}, j
    finally:
        finish(c, *(j for j in (j1, j2, j3) if j))


def test_more_gpus_than_any_node_has_is_refused_at_submission(gc: Cluster) -> None:
    c = gc
    before = c.jobs()
    for gres, needle in (("gpu:3", "(gpu:3 per node) exceed what any node of partition GPU has (2)"),
                         ("gpu:h100:1", "(gpu:h100:1 per node) exceed what any node of partition GPU has (0)")):  # fmt: skip
        if importlib.util.find_spec("crane.cli.gres") is not None:
            r = c.run("cbatch", "-p", "GPU", "--gres", gres, "--wrap", "true")
            assert r.returncode != 0 and needle in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("cbatch")
        else:
            from crane.cli.common import CliError

            with pytest.raises(CliError, match=r"exceed what any node"):
                submit_gpu(c, gres, "-p", "GPU", wrap="true")
    r = c.run("cbatch", "-p", "CPU", "--gres", "gpu:1", "--wrap", "true")
    assert r.returncode != 0 and "partition CPU has (0)" in r.stderr, r.stderr
    assert c.jobs() == before  # nothing was queued


def test_qos_preemption_frees_the_gpus_and_leaves_a_cpu_job(gc: Cluster) -> None:
    c = gc
    gpus_all_free(c)
    bg = ("-A", "MyAccount", "--qos", "Background")
    holder = submit_gpu(c, "gpu:2", "-p", "GPU", "-w", "crane03", *bg, wrap="sleep 300")
    cpu_job = c.submit("-p", "GPU", "-w", "crane04", "-c", "4", *bg, wrap="sleep 300")
    high = 0
    try:
        c.wait_state(holder, "RUNNING", timeout=DEADLINE)
        c.wait_state(cpu_job, "RUNNING", timeout=DEADLINE)
        cpu_pid = c.step_pid(cpu_job)
        assert c.job(holder)["gpu_alloc"] == {"crane03": [0, 1]}  # type: ignore[index]
        high = submit_gpu(c, "gpu:1", "-p", "GPU", "-A", "MyAccount", "--qos", "Interactive", wrap=writer(c, "hi"))
        h = c.wait_state(high, "RUNNING", timeout=DEADLINE)
        assert h["nodes"] == ["crane03"] and len(h["gpu_alloc"]["crane03"]) == 1
        assert devices_of(c, "hi") == str(h["gpu_alloc"]["crane03"][0])
        v = c.wait_state(holder, "CANCELLED", timeout=DEADLINE)
        assert v["reason"] == preempted_reason(high), v
        # the job holding only CPUs (on the node without GPUs) is untouched
        other = c.job(cpu_job)
        assert other is not None and other["state"] == "RUNNING" and not other["reason"].startswith("Preempted")
        assert pid_alive(cpu_pid)
    finally:
        finish(c, *(j for j in (holder, cpu_job, high) if j))


def test_cinfo_json_shows_gpus(gc: Cluster) -> None:
    r = gc.run("cinfo", "--json")
    if r.returncode != 0:
        pytest.skip("cinfo --json not available")
    text = json.dumps(json.loads(r.stdout))
    assert "gpu:a100:2" in text
