"""Issue 14, proof with real clients: released submitit, dask-jobqueue and
simple-slurm (their own venv, pinned, from the package registry) and a
classic #SBATCH array script drive a real Crane cluster through Crane's
Slurm-named commands, unmodified, as a real Unix user.

What each client runs and parses: tests/slurm_clients.py (with the pins)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from crane.core.states import JobState
from tests import slurm_clients as sc
from tests.conftest import Cluster, clear, wait_for

USER = "alice"
DONE = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.OUT_OF_MEMORY)


@pytest.fixture(scope="session")
def clients_venv() -> str:
    try:
        took = sc.ensure_venv()
    except sc.RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable, cannot install {' '.join(sc.PINS)}: {e}")
    if took:
        print(f"[clients venv {sc.CLIENTS_VENV} built in {took:.1f} s]")
    return sc.CLIENTS_VENV


@pytest.fixture
def slurm_cluster(cluster: Cluster, users: dict[str, int], clients_venv: str) -> Iterator[Cluster]:
    missing = sc.missing_commands()
    assert not missing, f"Crane's Slurm-named commands not installed next to cbatch: {' '.join(missing)}"
    yield cluster
    clear(cluster)  # nothing a failed client left behind reaches the next test


def cacct_state(c: Cluster, job_id: int) -> str:
    """The State column of ``cacct -P`` (as root), e.g. ``CANCELLED by alice``."""
    out = c.ok("cacct", "-P", "--format=JobID,State", "-j", str(job_id))
    rows = [line.split("|") for line in out.splitlines() if line.startswith(f"{job_id}|")]
    assert rows, f"job {job_id} not in cacct:\n{out}"
    return rows[0][1]


def array_tasks(c: Cluster, array_id: int) -> dict[int, dict[str, object]]:
    """Crane's own view (cacct --json) of an array's tasks: index -> job."""
    return {int(j["array_task_id"]): j for j in c.jobs(history=True).values()
            if j.get("array_job_id") == array_id and j.get("array_task_id") is not None}  # fmt: skip


def parsable_id(out: str) -> int:
    """``sbatch --parsable`` prints ``ID`` or ``ID;CLUSTER``."""
    return int(out.strip().split(";")[0])


# ----------------------------------------------------------------- submitit

SUBMITIT_RESULT = """
import json, sys
import submitit

folder = sys.argv[1]
ex = submitit.AutoExecutor(folder=folder)  # picks "slurm" because srun is on PATH
assert ex.cluster == "slurm", ex.cluster
ex.update_parameters(name="sub-result", timeout_min=5, cpus_per_task=1, mem_gb=1, nodes=1, tasks_per_node=1)

def work(x):
    import os
    import submitit
    env = submitit.JobEnvironment()
    return {"value": x * 7, "env_job_id": env.job_id, "uid": os.getuid(), "global_rank": env.global_rank,
            "num_tasks": env.num_tasks, "hostnames": list(env.hostnames)}

job = ex.submit(work, 6)
other = ex.submit(work, 7)
result = job.result()
other_result = other.result()
# the client's own view of the end: one sacct poll for both jobs
# (sacct -o JobID,State,NodeList --parsable2 -j ID -j ID2)
import time
states, info, deadline = {}, {}, time.monotonic() + 60
while time.monotonic() < deadline:
    states = {j.job_id: j.watcher.get_state(j.job_id, mode="force") for j in (job, other)}
    if all(s not in ("READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING") for s in states.values()):
        break
    time.sleep(1)
info = job.get_info(mode="cache")
print(json.dumps({"job_id": job.job_id, "result": result, "state": states[job.job_id], "info": info,
                  "other_id": other.job_id, "other_result": other_result, "other_state": states[other.job_id]}))
"""

SUBMITIT_CANCEL = """
import json, sys, time
import submitit

folder = sys.argv[1]
ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
ex.update_parameters(name="sub-cancel", timeout_min=5, cpus_per_task=1, mem_gb=1)

def sleeper():
    import time
    time.sleep(600)

job = ex.submit(sleeper)
seen = []

def poll(until, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        state = job.watcher.get_state(job.job_id, mode="force")
        if not seen or seen[-1] != state:
            seen.append(state)
        if until(state):
            return state
        time.sleep(1)
    return None

running = poll(lambda s: s == "RUNNING", 90)
job.cancel()  # scancel ID, check_call
final = poll(lambda s: job.watcher.is_done(job.job_id, mode="cache"), 60)
print(json.dumps({"job_id": job.job_id, "running": running, "final": final, "seen": seen, "done": job.done()}))
"""


def test_submitit_runs_a_function_and_returns_its_result(slurm_cluster: Cluster, users: dict[str, int]) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "submitit-result")
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), SUBMITIT_RESULT, USER), d)
    job_id = out["job_id"]
    assert job_id.isdigit(), out
    res = out["result"]
    assert res["value"] == 42
    assert res["uid"] == users[USER]  # ran as its owner
    assert res["env_job_id"] == job_id  # SLURM_JOB_ID in the task = the id sbatch printed
    assert res["global_rank"] == 0 and res["num_tasks"] == 1
    assert res["hostnames"] and all(h.startswith("crane") for h in res["hostnames"]), res
    assert out["state"] == JobState.COMPLETED, out  # submitit's sacct poll saw it end
    assert out["info"]["NodeList"].startswith("crane"), out
    assert out["other_result"]["value"] == 49 and out["other_result"]["env_job_id"] == out["other_id"] != job_id
    assert out["other_state"] == JobState.COMPLETED, out
    c.wait_state(int(job_id), *DONE, timeout=60)
    assert cacct_state(c, int(job_id)) == JobState.COMPLETED


def test_submitit_cancel_leaves_the_job_cancelled(slurm_cluster: Cluster) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "submitit-cancel")
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), SUBMITIT_CANCEL, USER), d)
    assert out["running"] == "RUNNING", out
    assert out["final"] and out["final"].startswith(JobState.CANCELLED), out  # e.g. "CANCELLED by 1001"
    assert out["done"] is True
    job_id = int(out["job_id"])
    assert sc.sacct_states(c, USER, d, str(job_id))[str(job_id)].startswith(JobState.CANCELLED)
    c.wait_state(job_id, JobState.CANCELLED, timeout=60)
    assert cacct_state(c, job_id).startswith(JobState.CANCELLED)


SUBMITIT_FAIL = """
import json, sys, time
import submitit

folder = sys.argv[1]
ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
ex.update_parameters(name="sub-fail", timeout_min=5)

def boom():
    raise ValueError("boom from the job")

job = ex.submit(boom)
error = repr(job.exception())  # waits; the task's traceback, pickled by the job
state, deadline = "UNKNOWN", time.monotonic() + 60
while time.monotonic() < deadline:
    state = job.watcher.get_state(job.job_id, mode="force")
    if state not in ("READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING"):
        break
    time.sleep(1)
print(json.dumps({"job_id": job.job_id, "error": error, "state": state}))
"""


def test_submitit_exception_comes_back_and_the_job_failed(slurm_cluster: Cluster) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "submitit-fail")
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), SUBMITIT_FAIL, USER), d)
    assert "ValueError: boom from the job" in out["error"], out
    assert out["state"] == JobState.FAILED, out  # srun's exit 1 is the script's: FAILED, as Slurm
    c.wait_state(int(out["job_id"]), JobState.FAILED, timeout=60)


SUBMITIT_ARRAY = """
import json, sys, time
import submitit

folder = sys.argv[1]
ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
ex.update_parameters(name="sub-array", timeout_min=5, slurm_array_parallelism=2)

def square(x):
    import os
    return {"value": x * x, "task": os.environ.get("SLURM_ARRAY_TASK_ID"), "job": submitit.JobEnvironment().job_id}

jobs = ex.map_array(square, [1, 2, 3, 4])  # one sbatch: --array=0-3%2, output %A_%a_0_log.out
results = [j.result() for j in jobs]
states, deadline = {}, time.monotonic() + 60
while time.monotonic() < deadline:
    states = {j.job_id: j.watcher.get_state(j.job_id, mode="force") for j in jobs}
    if all(s == "COMPLETED" for s in states.values()):
        break
    time.sleep(1)
print(json.dumps({"job_ids": [j.job_id for j in jobs], "results": results, "states": states}))
"""

# preemption the submitit way: job._interrupt() is scancel ID --signal SIGTERM (ignored by the
# task), then scancel ID --signal USR2: the task checkpoints, runs scontrol requeue ID and exits;
# the requeued job runs the checkpointed callable, which now returns at once
SUBMITIT_REQUEUE = """
import json, os, sys, time
import submitit

folder = sys.argv[1]
ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
ex.update_parameters(name="sub-requeue", timeout_min=%(minutes)d)

class Waiter(submitit.helpers.Checkpointable):
    def __init__(self):
        self.checkpointed = False

    def __call__(self, marker):
        import os, time
        if not self.checkpointed:
            open(marker, "w").close()
            time.sleep(600)
        return {"checkpointed": self.checkpointed, "restarts": os.environ.get("SLURM_RESTART_COUNT"),
                "job": os.environ.get("SLURM_JOB_ID")}

    def checkpoint(self, *args, **kwargs):
        self.checkpointed = True
        return super().checkpoint(*args, **kwargs)

marker = os.path.join(folder, "started")
job = ex.submit(Waiter(), marker)
deadline = time.monotonic() + 90
while not os.path.exists(marker) and time.monotonic() < deadline:
    time.sleep(0.2)
if not os.path.exists(marker):
    raise SystemExit("the task never started")
if %(interrupt)s:
    job._interrupt()
print(json.dumps({"job_id": job.job_id, "result": job.result()}))
"""


def test_submitit_map_array(slurm_cluster: Cluster) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "submitit-array")
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), SUBMITIT_ARRAY, USER), d)
    a = out["job_ids"][0].split("_")[0]
    assert out["job_ids"] == [f"{a}_{i}" for i in range(4)], out
    assert out["results"] == [{"value": x * x, "task": str(i), "job": f"{a}_{i}"} for i, x in enumerate([1, 2, 3, 4])]
    assert set(out["states"].values()) == {JobState.COMPLETED}, out
    for i in range(4):  # sbatch's -o with %A_%a, srun's with %A_%a_%t
        assert os.path.exists(os.path.join(d, f"{a}_{i}_0_log.out")), os.listdir(d)
    assert {i: j["state"] for i, j in array_tasks(c, int(a)).items()} == dict.fromkeys(range(4), JobState.COMPLETED)


SUBMITIT_TASKS = """
import json, sys
import submitit

folder = sys.argv[1]
ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
ex.update_parameters(name="sub-tasks", timeout_min=5, nodes=2, tasks_per_node=2, cpus_per_task=1,
                     slurm_partition="CPU")

def rank():
    import socket
    import submitit
    env = submitit.JobEnvironment()
    return {"global_rank": env.global_rank, "local_rank": env.local_rank, "node": env.node,
            "num_tasks": env.num_tasks, "num_nodes": env.num_nodes, "hostnames": list(env.hostnames),
            "job_id": env.job_id}

job = ex.submit(rank)  # srun starts 2 tasks on each of the 2 nodes; each writes %j_%t_result.pkl
print(json.dumps({"job_id": job.job_id, "results": job.results()}))
"""


def test_submitit_multi_node_multi_task(slurm_cluster: Cluster) -> None:
    """nodes=2, tasks_per_node=2: one srun step of four tasks, ranks from
    SLURM_PROCID/LOCALID/NODEID, hosts from SLURM_JOB_NODELIST."""
    c = slurm_cluster
    d = sc.user_dir(c, USER, "submitit-tasks")
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), SUBMITIT_TASKS, USER), d)
    results = out["results"]
    assert [r["global_rank"] for r in results] == [0, 1, 2, 3], out
    assert sorted((r["node"], r["local_rank"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)], out
    hosts = results[0]["hostnames"]
    assert len(hosts) == 2 and len(set(hosts)) == 2, out
    assert all(r["num_tasks"] == 4 and r["num_nodes"] == 2 and r["hostnames"] == hosts for r in results), out
    assert all(r["job_id"] == out["job_id"] for r in results)


def test_submitit_multi_task_logs_one_file_per_task(slurm_cluster: Cluster) -> None:
    """srun --output F/%j_%t_log.out: %t is the task's rank, one file each
    (submitit's job.stdout(rank) reads it)."""
    c = slurm_cluster
    d = sc.user_dir(c, USER, "submitit-task-logs")
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), SUBMITIT_TASKS, USER), d)
    for t in range(4):
        path = os.path.join(d, f"{out['job_id']}_{t}_log.out")
        assert os.path.exists(path), sorted(os.listdir(d))
        with open(path) as f:
            assert f"global_rank={t}(4)" in f.read()


def test_submitit_checkpoint_and_requeue_on_preemption_signal(slurm_cluster: Cluster) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "submitit-requeue")
    script = SUBMITIT_REQUEUE % {"minutes": 5, "interrupt": True}
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), script, USER), d, timeout=180)
    assert out["result"] == {"checkpointed": True, "restarts": "1", "job": out["job_id"]}, out
    job_id = int(out["job_id"])
    c.wait_state(job_id, JobState.COMPLETED, timeout=60)
    with open(os.path.join(d, f"{job_id}_0_log.out")) as f:
        log = f.read()  # --open-mode=append: both runs' logs
    assert "Bypassing signal SIGTERM" in log and "Calling checkpoint method" in log, log
    assert log.count("Starting with JobEnvironment") == 2, log


def test_submitit_requeue_before_the_time_limit(slurm_cluster: Cluster) -> None:
    """--signal=USR2@90 with --time=2: USR2 30 s into the job; submitit
    checkpoints and requeues (scontrol requeue) itself."""
    c = slurm_cluster
    d = sc.user_dir(c, USER, "submitit-timeout")
    script = SUBMITIT_REQUEUE % {"minutes": 2, "interrupt": False}
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), script, USER), d, timeout=240)
    assert out["result"] == {"checkpointed": True, "restarts": "1", "job": out["job_id"]}, out
    with open(os.path.join(d, f"{out['job_id']}_0_log.out")) as f:
        log = f.read()
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log, log
    assert log.count("Starting with JobEnvironment") == 2, log


# ----------------------------------------------------------------- dask-jobqueue

DASK = """
import json, os, sys
from dask_jobqueue import SLURMCluster
from dask.distributed import Client

d = sys.argv[1]
cluster = SLURMCluster(cores=1, memory="1GB", processes=1, walltime="00:10:00", interface="lo", queue="CPU",
                       scheduler_options={"interface": "lo", "dashboard_address": ":0"},
                       log_directory=d, local_directory=os.path.join(d, "scratch"), death_timeout=60)
script = cluster.job_script()
cluster.scale(1)
client = Client(cluster)
client.wait_for_workers(1, timeout=120)
job_ids = [w.job_id for w in cluster.workers.values()]
value = client.submit(lambda x: x + 1, 41).result(timeout=60)
total = client.submit(sum, list(range(1000))).result(timeout=60)
envs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
client.close()
cluster.close()  # scale(0): scancel ID of every worker job
print(json.dumps({"job_ids": job_ids, "value": value, "total": total, "envs": list(envs.values()), "script": script}))
"""


def test_dask_jobqueue_scales_computes_and_close_cancels(slurm_cluster: Cluster) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "dask")
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), DASK, USER), d, timeout=240)
    assert out["value"] == 42 and out["total"] == 499500
    assert len(out["job_ids"]) == 1, out
    job_id = int(out["job_ids"][0])
    assert out["envs"] == [str(job_id)]  # the worker runs inside the job sbatch reported
    c.wait_state(job_id, *DONE, timeout=60)
    assert cacct_state(c, job_id).startswith(JobState.CANCELLED), sc.logs(d)
    assert os.path.exists(os.path.join(d, f"dask-worker-{job_id}.err"))  # -e D/dask-worker-%J.err


# ----------------------------------------------------------------- classic #SBATCH array + dependency

ARRAY = """
#!/bin/bash
#SBATCH --job-name=arr
#SBATCH --array=0-3%2
#SBATCH --output=%A_%a.out
#SBATCH --time=00:05:00
#SBATCH --cpus-per-task=1
echo "start $SLURM_ARRAY_TASK_ID $(date +%s.%N) job=$SLURM_JOB_ID array=$SLURM_ARRAY_JOB_ID count=$SLURM_ARRAY_TASK_COUNT"
sleep 2
echo "end $SLURM_ARRAY_TASK_ID $(date +%s.%N)"
"""

AFTER = 'date +%s.%N; for i in 0 1 2 3; do grep -q "^end $i " {a}_$i.out || exit 1; done; echo all-done'


def _task_lines(d: str, array_id: int) -> dict[int, dict[str, str]]:
    tasks: dict[int, dict[str, str]] = {}
    for i in range(4):
        with open(os.path.join(d, f"{array_id}_{i}.out")) as f:
            words = {w[0]: w for w in (line.split() for line in f) if w}
        tasks[i] = {"start": words["start"][2], "end": words["end"][2],
                    **dict(kv.split("=", 1) for kv in words["start"][3:])}  # fmt: skip
    return tasks


def test_sbatch_array_script_with_limit_then_afterok_dependency(slurm_cluster: Cluster) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "array")
    script = sc.write(os.path.join(d, "array.sh"), ARRAY, USER, 0o755)
    a = parsable_id(sc.slurm_ok(c, USER, d, "sbatch", "--parsable", script))
    after = parsable_id(sc.slurm_ok(c, USER, d, "sbatch", "--parsable", f"--dependency=afterok:{a}",
                                    "-J", "after", "-o", "after.out", "--wrap", AFTER.format(a=a)))  # fmt: skip

    def finished() -> str | None:
        state = sc.sacct_states(c, USER, d, str(after)).get(str(after), "")
        return state if state.split(" ")[0] in DONE else None

    wait_for(finished, 120, f"dependent job {after} ended", interval=1)
    states = sc.sacct_states(c, USER, d, str(a))
    assert {k: v for k, v in states.items() if k.startswith(f"{a}_")} == {
        f"{a}_{i}": JobState.COMPLETED for i in range(4)}, states  # fmt: skip
    tasks = _task_lines(d, a)
    ids = set()
    for t in tasks.values():
        assert t["array"] == str(a) and t["count"] == "4", t
        ids.add(t["job"])
    assert len(ids) == 4 and str(a) in ids  # each task a job of its own; the first one's id is the array's
    # %2: never more than two tasks at once
    events = sorted([(float(t["start"]), 1) for t in tasks.values()] + [(float(t["end"]), -1) for t in tasks.values()])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2, tasks
    with open(os.path.join(d, "after.out")) as f:
        lines = f.read().split()
    assert lines[-1] == "all-done", lines
    assert float(lines[0]) >= max(float(t["end"]) for t in tasks.values())  # started after the last task ended
    assert sc.sacct_states(c, USER, d, str(after))[str(after)] == JobState.COMPLETED
    assert {i: j["state"] for i, j in array_tasks(c, a).items()} == dict.fromkeys(range(4), JobState.COMPLETED)


HOLD = """
#!/bin/bash
#SBATCH --array=0-3%2
#SBATCH --output=%A_%a.out
#SBATCH --time=00:05:00
echo "start $SLURM_ARRAY_TASK_ID"
for i in $(seq 1200); do [ -e release ] && break; sleep 0.1; done
echo "end $SLURM_ARRAY_TASK_ID"
"""


def test_scancel_of_one_array_task_leaves_the_others(slurm_cluster: Cluster) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "array-cancel")
    script = sc.write(os.path.join(d, "hold.sh"), HOLD, USER, 0o755)
    a = parsable_id(sc.slurm_ok(c, USER, d, "sbatch", "--parsable", script))

    def running(n: int) -> dict[str, str] | None:
        states = sc.sacct_states(c, USER, d, str(a))
        return states if sum(s == JobState.RUNNING for s in states.values()) >= n else None

    wait_for(lambda: running(2), 60, f"two tasks of array {a} running", interval=0.5)
    r = sc.slurm(c, USER, d, "scancel", f"{a}_1")
    assert r.returncode == 0 and not r.stdout, r  # silent, as Slurm's

    def task1_cancelled() -> dict[str, str] | None:
        s = sc.sacct_states(c, USER, d, str(a))
        return s if s.get(f"{a}_1", "").startswith(JobState.CANCELLED) else None

    cancelled = wait_for(task1_cancelled, 30, f"{a}_1 cancelled", interval=0.5)
    others = {k: v for k, v in cancelled.items() if k != f"{a}_1"}
    assert not any(v.startswith(JobState.CANCELLED) for v in others.values()), cancelled
    wait_for(lambda: running(2), 60, "the limit lets the next task run", interval=0.5)  # 0,2,3 remain: two run
    open(os.path.join(d, "release"), "w").close()

    def ended() -> dict[str, str] | None:
        s = sc.sacct_states(c, USER, d, str(a))
        return s if all(s.get(f"{a}_{i}") == JobState.COMPLETED for i in (0, 2, 3)) else None

    states = wait_for(ended, 90, "the other tasks completed", interval=1)
    assert states[f"{a}_1"].startswith(JobState.CANCELLED), states
    for i in (0, 2, 3):
        with open(os.path.join(d, f"{a}_{i}.out")) as f:
            assert f.read().split() == ["start", str(i), "end", str(i)]
    crane = array_tasks(c, a)
    assert crane[1]["state"] == JobState.CANCELLED and all(crane[i]["state"] == JobState.COMPLETED for i in (0, 2, 3))


IDIOMS = """
set -e
a=$(sbatch --parsable -J idiom -t 5 --wrap 'sleep 300')
b=$(sbatch --parsable -J idiom -t 5 --wrap 'sleep 300')
for i in $(seq 300); do
    [ "$(squeue -h -o %T -j "$a,$b" | grep -c RUNNING)" = 2 ] && break
    sleep 0.2
done
scontrol show job "$a" | tr ' ' '\\n' | grep '^JobState='
squeue -h -o %i --me -n idiom | xargs -r scancel
for i in $(seq 300); do
    [ -z "$(squeue -h -o %i --me -n idiom)" ] && break
    sleep 0.2
done
sacct -X -n -P -o JobID,JobName,State -j "$a,$b"
"""


def test_shell_idioms_squeue_xargs_scancel(slurm_cluster: Cluster) -> None:
    """The loops of a decade of scripts: ids from squeue -h -o %i into
    scancel; scontrol show job in Key=Value form; sacct -X -n -P."""
    c = slurm_cluster
    d = sc.user_dir(c, USER, "idioms")
    r = sc.run_as(c, USER, ["bash", sc.write(os.path.join(d, "idioms.sh"), IDIOMS, USER)], d, timeout=150)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0] == "JobState=RUNNING", r.stdout
    rows = [line.split("|") for line in lines[1:]]
    assert len(rows) == 2 and all(row[1] == "idiom" and row[2].startswith(JobState.CANCELLED) for row in rows), r.stdout


# ----------------------------------------------------------------- simple-slurm

SIMPLE = """
import json, sys, time, datetime
from simple_slurm import Slurm

d = sys.argv[1]
limit = datetime.timedelta(minutes=5)

def wait_queue(jid, pred, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        s.squeue.update_squeue()  # squeue --me -o '"%i","%j","%t",...' parsed as CSV with a header
        row = s.squeue.jobs.get(jid)
        if pred(row):
            return row
        time.sleep(0.5)
    raise SystemExit(f"job {jid}: not as expected in squeue within {secs} s: {s.squeue.jobs}")

# 1. submit (script on stdin: sbatch << EOF), see it run, cancel it
s = Slurm(job_name="ss-sleep", output=f"{d}/ss-{Slurm.JOB_ID}.out", cpus_per_task=1, time=limit, mem="100M")
jid = s.sbatch("sleep 300", verbose=False)
row = wait_queue(jid, lambda r: r is not None and r["ST"] == "R", 60)
s.scancel.cancel_job(jid)  # scancel ID
wait_queue(jid, lambda r: r is None or r["ST"] in ("CA", "CG"), 60)

# 2. scancel --me: every job of the user
s.reset_cmd()
more = [s.sbatch("sleep 300", verbose=False) for _ in range(2)]
for j in more:
    wait_queue(j, lambda r: r is not None, 30)
s.scancel.cancel_all()
for j in more:
    wait_queue(j, lambda r: r is None or r["ST"] in ("CA", "CG"), 60)

# 3. a --parsable array job (last: simple-slurm's squeue parse does int(JOBID),
#    which fails on an array task's A_T, with Slurm's squeue as with ours)
a = Slurm(job_name="ss-array", array=range(0, 3), time=limit, parsable=True,
          output=f"{d}/ss-{Slurm.JOB_ARRAY_MASTER_ID}_{Slurm.JOB_ARRAY_ID}.out")
aid = a.sbatch(f"echo task {Slurm.SLURM_ARRAY_TASK_ID} of {Slurm.SLURM_ARRAY_JOB_ID}", verbose=False)
print(json.dumps({"job_id": jid, "row": row, "array_id": aid, "more": more}))
"""


def test_simple_slurm_submit_queue_and_cancel(slurm_cluster: Cluster) -> None:
    c = slurm_cluster
    d = sc.user_dir(c, USER, "simple")
    out = sc.run_client(c, USER, sc.write(os.path.join(d, "client.py"), SIMPLE, USER), d)
    jid, aid = int(out["job_id"]), int(out["array_id"])
    assert out["row"]["NAME"] == "ss-sleep" and out["row"]["ST"] == "R", out
    c.wait_state(jid, JobState.CANCELLED, timeout=60)
    assert cacct_state(c, jid).startswith(JobState.CANCELLED)
    assert sc.sacct_states(c, USER, d, str(jid))[str(jid)].startswith(JobState.CANCELLED)

    def arrays_done() -> bool:
        s = sc.sacct_states(c, USER, d, str(aid))
        return all(s.get(f"{aid}_{i}") == JobState.COMPLETED for i in range(3))

    wait_for(arrays_done, 90, f"array {aid} completed", interval=1)
    for j in out["more"]:
        c.wait_state(int(j), JobState.CANCELLED, timeout=60)
    for i in range(3):
        path = os.path.join(d, f"ss-{aid}_{i}.out")
        wait_for(lambda p=path: os.path.exists(p), 10, path, interval=0.2)
        with open(path) as f:
            assert f.read().split() == ["task", str(i), "of", str(aid)]


def test_clients_venv_is_usable_by_job_owners(users: dict[str, int], clients_venv: str) -> None:
    """The venv's python runs as another user (jobs run it as their owners)."""
    r = subprocess.run(["runuser", "-u", USER, "--", sc.python(), "-c",
                        "import submitit, dask_jobqueue, simple_slurm; print(submitit.__version__)"],
                       capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "1.5.4", r
