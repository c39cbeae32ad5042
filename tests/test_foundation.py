"""The running system: jobs really run, in cgroups, placed by partition,
cpus and --exclusive; time limits; steps; restarts of both daemons; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import zmq

from crane.core import messages as m
from tests.conftest import BIN, IS_ROOT, Cluster, pid_alive, wait_for


def test_job_runs_in_its_cgroup_and_finishes(cluster: Cluster) -> None:
    jid = cluster.submit("-J", "hello", wrap="echo hello from $CRANE_JOB_ID on $CRANE_JOB_NODELIST; sleep 1")
    pid = cluster.step_pid(jid)
    job = cluster.job(jid)
    assert job and job["state"] == "RUNNING" and job["nodes"]
    if IS_ROOT:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
        cfg = cluster.config()
        assert f"crane/{cfg['ClusterName']}/{job['nodes'][0]}/job_{jid}/step_1" in text
    done = cluster.wait_state(jid, "COMPLETED")
    assert done["exit_code"] == 0
    assert f"hello from {jid} on {job['nodes'][0]}" in cluster.read(f"crane-{jid}.out")


def test_exit_code_and_failed_state(cluster: Cluster) -> None:
    jid = cluster.submit(wrap="exit 3")
    j = cluster.wait_state(jid, "FAILED", "COMPLETED")
    assert j["state"] == "FAILED" and j["exit_code"] == 3


def test_placement_by_partition_cpus_and_exclusive(cluster: Cluster) -> None:
    gpu = cluster.submit("-p", "GPU", "-c", "2", wrap="sleep 300")
    excl = cluster.submit("-p", "CPU", "--exclusive", "-w", "crane02", wrap="sleep 300")
    big = cluster.submit("-p", "CPU", "-c", "4", wrap="sleep 300")
    try:
        assert cluster.wait_state(gpu, "RUNNING")["nodes"][0] in ("crane03", "crane04")
        assert cluster.wait_state(excl, "RUNNING")["nodes"] == ["crane02"]
        # crane02 is held exclusively, so the 4-cpu job can only go to crane01
        assert cluster.wait_state(big, "RUNNING")["nodes"] == ["crane01"]
        nxt = cluster.submit("-p", "CPU", "-c", "1", wrap="sleep 300")
        j = cluster.wait_state(nxt, "PENDING")
        assert j["reason"] in ("Resources", "Priority")
        cluster.ok("ccancel", str(big))
        assert cluster.wait_state(nxt, "RUNNING")["nodes"] == ["crane01"]
        cluster.ok("ccancel", str(nxt))
    finally:
        cluster.run("ccancel", f"{gpu},{excl},{big}")


def test_request_larger_than_partition_is_refused(cluster: Cluster) -> None:
    r = cluster.run("cbatch", "-p", "CPU", "-c", "64", "--wrap", "true")
    assert r.returncode == 2
    assert r.stderr.startswith("cbatch: error: Requested node configuration is not available")


def test_time_limit_ends_job_with_timeout(cluster: Cluster) -> None:
    jid = cluster.submit("-t", "0:02", wrap="sleep 300")
    pid = cluster.step_pid(jid)
    j = cluster.wait_state(jid, "TIMEOUT", timeout=30)
    assert j["reason"] == "ExceedTimeLimit"
    wait_for(lambda: not pid_alive(pid), 10, "timed-out process to die")
    assert "DUE TO TIME LIMIT" in cluster.read(f"crane-{jid}.out")


def test_crun_steps_get_ids_2_and_3(cluster: Cluster) -> None:
    script = "crun sh -c 'echo step $CRANE_STEP_ID'\ncrun sh -c 'exit 4'\necho crun=$?\n"
    jid = cluster.submit(wrap=script)
    j = cluster.wait_state(jid, "COMPLETED", "FAILED")
    steps = {s["step_id"]: s for s in j["steps"]}
    assert sorted(steps) == [1, 2, 3]
    assert steps[2]["state"] == "COMPLETED" and steps[3]["state"] == "FAILED"
    out = cluster.read(f"crane-{jid}.out")
    assert "step 2" in out and "crun=4" in out


def test_submit_repeat_and_json(cluster: Cluster) -> None:
    out = cluster.ok("cbatch", "--json", "--repeat", "3", "-H", "--wrap", "true")
    ids = json.loads(out)["job_ids"]
    assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3
    for i in ids:
        assert cluster.state(i) == "PENDING"
    cluster.ok("ccancel", ",".join(map(str, ids)))


def test_bad_cbatch_options(cluster: Cluster) -> None:
    for args, text in (
        (["-c", "0", "--wrap", "true"], "cbatch: error:"),
        (["--mem", "lots", "--wrap", "true"], 'cbatch: error: invalid memory size "lots"'),
        (["-t", "soon", "--wrap", "true"], 'cbatch: error: invalid time limit "soon"'),
        (["-p", "NOPE", "--wrap", "true"], "cbatch: error: invalid partition: NOPE"),
        (["-w", "ghost01", "--wrap", "true"], "cbatch: error: invalid node name: ghost01"),
        ([], "cbatch: error: give a script or --wrap COMMAND"),
        (["/nonexistent/script.sh"], "cbatch: error: cannot read /nonexistent/script.sh"),
    ):
        r = cluster.run("cbatch", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith(text), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cbatch_script_directives(cluster: Cluster) -> None:
    path = cluster.file("directives.sh")
    with open(path, "w") as f:
        f.write("#!/bin/bash\n#CBATCH -J fromscript\n#CBATCH -p GPU\n#CBATCH -c 2\necho ok\n")
    out = cluster.ok("cbatch", path)
    assert out.startswith("Job id allocated: ")
    jid = int(out.split(":")[1].strip().rstrip("."))
    j = cluster.wait_state(jid, "COMPLETED")
    assert j["name"] == "fromscript" and j["partition"] == "GPU" and j["cpus"] == 2


def test_garbage_frames_do_not_hurt_the_daemons(cluster: Cluster) -> None:
    cfg = cluster.config()
    ctx = zmq.Context.instance()
    cli = ctx.socket(zmq.DEALER)
    cli.connect("ipc://" + os.path.join(cfg["CraneBaseDir"], "cranectld.sock"))
    agent = ctx.socket(zmq.DEALER)
    agent.setsockopt(zmq.IDENTITY, b"not-a-node")
    agent.connect(f"tcp://127.0.0.1:{cfg['CraneCtldListenPort']}")
    bad = [b"", b"\xc1", b"\x93\x01\x02", b"garbage" * 100, m.encode(m.QueryNodes())[:-1],
           b"\x81\xa1v\x63", bytes(range(256))]  # fmt: skip
    for frame in bad:
        cli.send(frame)
        agent.send(frame)
    cli.send_multipart([b"a", b"b"])  # wrong frame count
    replies = []
    poller = zmq.Poller()
    poller.register(cli, zmq.POLLIN)
    while len(replies) < len(bad) and poller.poll(5000):
        replies.append(m.decode(cli.recv())[0])
    assert all(isinstance(r, m.Error) and r.code == 2 for r in replies)
    assert len(replies) >= len(bad)
    cli.close(0)
    agent.close(0)
    # still serving
    assert "crane01" in cluster.ok("cinfo", "--json") or cluster.nodes_state()


def test_bad_config_stops_daemon_with_one_line(tmp_path: pytest.TempPathFactory) -> None:
    cases = {
        "Bogus: 1\nNodes: [{name: a, cpu: 1, memory: 1G}]\n": "Bogus: unknown key",
        "Nodes: [{name: a, cpu: 1, memory: 1G}]\nPreempt: {PreemptType: none, PreemptMode: CANCEL}\n": "Preempt.PreemptMode",
        "Nodes: [{name: a, cpu: 1, memory: 1G}]\nPartitions: [{name: P, nodes: b}]\n": "Partitions[0].nodes: unknown node b",
        "Nodes: [{name: 'a[1-', cpu: 1, memory: 1G}]\n": "Nodes[0].name",
        "KillWait: soon\nNodes: [{name: a, cpu: 1, memory: 1G}]\n": "KillWait",
    }
    for i, (text, needle) in enumerate(cases.items()):
        path = os.path.join(str(tmp_path), f"bad{i}.yaml")
        with open(path, "w") as f:
            f.write(text)
        for prog in ("cranectld", "craned"):
            args = [os.path.join(BIN, prog), "-C", path] + (["-n", "a"] if prog == "craned" else [])
            r = subprocess.run(args, capture_output=True, text=True, timeout=30)
            assert r.returncode == 1, (prog, text, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"{prog}: ") and needle in lines[0], r.stderr


def test_controller_restart_keeps_jobs_and_id_counter(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=2)
    running = c.submit(wrap="sleep 300")
    held = c.submit("-H", wrap="true")
    pid = c.step_pid(running)
    c.procs["cranectld"].send_signal(signal.SIGKILL)
    c.procs["cranectld"].wait()
    c.start_controller()
    c.wait_nodes_up()
    assert c.state(running) == "RUNNING"
    assert c.state(held) == "PENDING"
    assert pid_alive(pid)
    nxt = c.submit("-H", wrap="true")
    assert nxt == held + 1
    c.ok("ccancel", f"{running},{held},{nxt}")
    c.wait_state(running, "CANCELLED")
    wait_for(lambda: not pid_alive(pid), 10, "process to die")


def test_agent_restart_does_not_kill_job_and_state_is_learned(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=2)
    jid = c.submit("-w", "crane01", wrap="sleep 4; exit 5")
    pid = c.step_pid(jid)
    agent = c.procs["craned-crane01"]
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    assert pid_alive(pid), "the job died with its agent"
    c.start_agent("crane01")
    c.wait_nodes_up()
    assert c.state(jid) == "RUNNING"
    # the restarted agent is not the job's parent, yet it learns how it ended
    j = c.wait_state(jid, "FAILED", "COMPLETED", timeout=30)
    assert j["state"] == "FAILED" and j["exit_code"] == 5


def test_daemons_survive_peer_death(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=1)
    ctld = c.procs["cranectld"]
    ctld.send_signal(signal.SIGKILL)
    ctld.wait()
    agent = c.procs["craned-crane01"]
    assert agent.poll() is None
    r = c.run("cinfo")
    assert r.returncode == 3 and r.stderr.startswith("cinfo: error:")
    c.start_controller()
    c.wait_nodes_up()  # the agent reconnected and registered again by itself
    assert agent.poll() is None


def test_sigterm_stops_controller_cleanly(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=1)
    p = c.procs["cranectld"]
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0


@pytest.mark.skipif(not IS_ROOT, reason="memory limits need cgroups (root)")
def test_memory_limit_ends_job_out_of_memory(cluster: Cluster) -> None:
    hog = "python3 -c 'x = bytearray(512 * 1024 * 1024); import time; time.sleep(30)'"
    jid = cluster.submit("--mem", "64M", wrap=hog)
    j = cluster.wait_state(jid, "OUT_OF_MEMORY", "FAILED", "COMPLETED", timeout=60)
    assert j["state"] == "OUT_OF_MEMORY", j


def test_prometheus_metrics_endpoint(make_cluster) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    from crane.local import free_port
    from tests.conftest import wait_for

    port = free_port()
    c: Cluster = make_cluster(nodes=1, MetricsPort=port)
    jid = c.submit(wrap="sleep 300")
    c.step_pid(jid)
    c.ok("ccancel", str(jid))
    c.wait_state(jid, "CANCELLED")

    def scrape() -> str | None:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return text if 'crane_cancels_total{path="admin"} 1.0' in text else None

    text = wait_for(scrape, 15, "metrics to show the cancel")
    assert 'crane_cancel_latency_seconds_count 1.0' in text
    assert 'crane_messages_total{direction="in",socket="cli"}' in text
    assert "crane_store_queue_depth" in text and "crane_nodes_up 1.0" in text


def test_qos_max_jobs_per_user_holds_jobs_pending(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=1)
    c.ok("cacctmgr", "add", "qos", "tiny", "MaxJobsPerUser=1", "MaxSubmitJobsPerUser=3")
    c.ok("cacctmgr", "modify", "account", "where", "Name=default", "set", "AllowedQos+=tiny")
    first = c.submit("-q", "tiny", wrap="sleep 300")
    second = c.submit("-q", "tiny", wrap="sleep 300")
    c.wait_state(first, "RUNNING")
    assert c.wait_state(second, "PENDING")["reason"] == "QOSMaxJobsPerUserLimit"
    c.submit("-q", "tiny", wrap="true")
    r = c.run("cbatch", "-q", "tiny", "--wrap", "true")  # a fourth exceeds MaxSubmitJobsPerUser
    assert r.returncode == 2 and "MaxSubmitJobsPerUser" in r.stderr
    c.ok("ccancel", str(first))
    c.wait_state(second, "RUNNING")


def test_interactive_cancel_asks_on_a_terminal(cluster: Cluster) -> None:
    import shutil

    keep = cluster.submit("-H", "-J", "keepme", wrap="true")
    drop = cluster.submit("-H", "-J", "dropme", wrap="true")
    r = cluster.run("ccancel", "-i", f"{keep},{drop}", input="y\n")
    assert r.returncode == 2 and r.stderr.strip() == "ccancel: error: --interactive needs a terminal"
    if shutil.which("script") is None:
        pytest.skip("util-linux script is needed for a pseudo-terminal")
    cmd = f"{BIN}/ccancel -i {keep},{drop}"
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], input="n\ny\n", capture_output=True,
                       text=True, timeout=60, env=cluster.env(), cwd=cluster.workdir)  # fmt: skip
    assert f"Cancel job {keep} (keepme, CPU)? [y/N]" in p.stdout, p.stdout
    assert f"Job {drop} cancelled successfully." in p.stdout, p.stdout
    assert cluster.state(keep) == "PENDING" and cluster.state(drop) == "CANCELLED"
    cluster.ok("ccancel", str(keep))
