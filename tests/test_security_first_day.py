"""Red-team findings on the issue-12 surfaces (ccontrol update, output
patterns, ccancel -, format strings), each an end-to-end test with real
daemons and real Unix users (extra users are named ``rt...``).

- a plain user moved an unlimited pending job into a QoS with a
  MaxTimeLimitPerJob (``ccontrol update QOS=``) and kept it unlimited, or
  gave it any time limit above the QoS cap;
- an output pattern of ``%x`` repeated expanded a 4 KiB path into half a
  megabyte per job held by the controller (memory, database, every
  ``cqueue --json``);
- ``ccancel -`` fed deeply nested JSON died with a Python traceback;
- ``cinfo -o``/``cqueue -o`` with a huge width died with a traceback or
  tried to allocate gigabytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import zmq
import zmq.auth

from crane import keys
from crane.core.states import TERMINAL, JobState
from tests.conftest import Cluster, acct, clear, ensure_user, open_ancestors

RT_USER = "rtuser1"
RT_OPERATOR = "rtop1"




@pytest.fixture(scope="module")
def _rt(cluster: Cluster, users: dict[str, int]) -> str:
    ensure_user(RT_USER)
    ensure_user(RT_OPERATOR)
    acct(cluster, "add", "qos", "rtcap", "MaxTimeLimitPerJob=1:00:00", "Priority=50")
    acct(cluster, "add", "account", "rtacct")
    acct(cluster, "modify", "account", "where", "Name=rtacct", "set", "AllowedQos+=rtcap")
    acct(cluster, "add", "user", RT_USER, "Account=rtacct")
    acct(cluster, "add", "user", RT_OPERATOR, "Account=rtacct", "Level=operator")
    return RT_USER


@pytest.fixture
def rt(cluster: Cluster, _rt: str) -> Iterator[Cluster]:
    open_ancestors(cluster.base)
    clear(cluster)
    yield cluster
    clear(cluster)


def _one_line_error(r: subprocess.CompletedProcess[str], prog: str) -> None:
    stderr = r.stderr
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith(prog + ":") and len(stderr.strip().splitlines()) == 1, stderr


# --------------------------------------------------------------------------- ccontrol update and QoS caps


def test_update_into_a_capped_qos_cannot_keep_a_job_unlimited(rt: Cluster) -> None:
    jid = rt.submit("-H", wrap="sleep 300", user=RT_USER)  # QoS normal: no cap, unlimited
    j = rt.wait_state(jid, JobState.PENDING)
    assert j["time_limit"] in (None, 0)
    # a time limit over the cap with the move: refused, nothing changed
    r = rt.run("ccontrol", "update", f"JobId={jid}", "QOS=rtcap", "TimeLimit=2:00:00", user=RT_USER)
    _one_line_error(r, "ccontrol")
    assert rt.job(jid)["qos"] != "rtcap"  # type: ignore[index]
    # the move alone: the QoS cap becomes the job's limit (as at submission)
    r = rt.run("ccontrol", "update", f"JobId={jid}", "QOS=rtcap", user=RT_USER)
    if r.returncode == 0:
        j = rt.job(jid)
        assert j is not None and j["qos"] == "rtcap" and j["time_limit"] == 3600, j
    else:
        _one_line_error(r, "ccontrol")
        assert rt.job(jid)["qos"] != "rtcap"  # type: ignore[index]


def test_a_priority_set_by_an_operator_survives_the_owners_qos_change(rt: Cluster) -> None:
    jid = rt.submit("-H", "-t", "30", wrap="sleep 300", user=RT_USER)
    rt.wait_state(jid, JobState.PENDING)
    r = rt.run("ccontrol", "update", f"JobId={jid}", "Priority=3", user=RT_OPERATOR)
    assert r.returncode == 0, r.stderr
    r = rt.run("ccontrol", "update", f"JobId={jid}", "QOS=rtcap", user=RT_USER)
    assert r.returncode == 0, r.stderr
    j = rt.job(jid)
    assert j is not None and (j["qos"], j["priority"]) == ("rtcap", 3), j
    # an operator's own QoS change of a job with its QoS's priority: the new QoS's
    other = rt.submit("-H", "-t", "30", wrap="sleep 300", user=RT_USER)
    r = rt.run("ccontrol", "update", f"JobId={other}", "QOS=rtcap", user=RT_OPERATOR)
    assert r.returncode == 0, r.stderr
    assert rt.job(other)["priority"] == 50  # type: ignore[index]


def test_time_limit_still_ends_a_job_after_its_agent_restarted(rt: Cluster) -> None:
    """The agent alone enforces time limits: a step it adopts after a
    restart keeps its limit (and a limit lowered by ccontrol update)."""
    jid = rt.submit("-t", "10:00", wrap="sleep 300", user=RT_USER)
    node = rt.wait_state(jid, JobState.RUNNING, timeout=60)["nodes"][0]
    r = rt.run("ccontrol", "update", f"JobId={jid}", "TimeLimit=0:20", user=RT_USER)  # lowered: the owner may
    assert r.returncode == 0, r.stderr
    p = rt.procs.pop(f"craned-{node}")
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    rt.start_agent(node)
    rt.wait_nodes_up(60, [node])
    j = rt.wait_state(jid, JobState.TIMEOUT, *TERMINAL, timeout=90)
    assert j["state"] == JobState.TIMEOUT, j


# --------------------------------------------------------------------------- output patterns


def test_output_pattern_cannot_expand_beyond_path_max(rt: Cluster) -> None:
    name = "n" * 256
    pattern = "/tmp/" + "%x" * 2000  # 4005 bytes written, ~512 KB once expanded
    r = rt.run("cbatch", "-H", "-J", name, "-o", pattern, "--wrap", "true", user=RT_USER)
    _one_line_error(r, "cbatch")
    assert "4096" in r.stderr, r.stderr
    mine = [j for j in json.loads(rt.ok("cqueue", "--json")) if j.get("user") == RT_USER]
    assert mine == []
    # an ordinary pattern still works
    jid = rt.submit("-H", "-J", "rtname", "-o", "/tmp/rt-%x-%j.out", wrap="true", user=RT_USER)
    j = rt.job(jid)
    assert j is not None and j["stdout"] == f"/tmp/rt-rtname-{jid}.out", j


def test_step_output_pattern_cannot_expand_beyond_path_max(rt: Cluster) -> None:
    jid = rt.submit("-J", "n" * 256, wrap="sleep 300", user=RT_USER)
    rt.wait_state(jid, JobState.RUNNING, timeout=60)
    r = rt.run("crun", "--jobid", str(jid), "-o", "/tmp/" + "%x" * 2000, "true", user=RT_USER)
    _one_line_error(r, "crun")
    assert "4096" in r.stderr, r.stderr
    assert [s["step_id"] for s in rt.job(jid)["steps"]] == [1]  # type: ignore[index]


# --------------------------------------------------------------------------- CLIs on hostile input


def test_ccancel_stdin_deeply_nested_json_is_one_line(rt: Cluster) -> None:
    r = rt.run("ccancel", "-", input="[" * 100_000 + "]" * 100_000, user=RT_USER)
    _one_line_error(r, "ccancel")


@pytest.mark.parametrize("argv", [
    ("cinfo", "-o", "%" + "9" * 5000 + "P"),
    ("cinfo", "-o", "%999999999999P"),
    ("cqueue", "-o", "%999999999999i"),
])  # fmt: skip
def test_format_widths_are_bounded(rt: Cluster, argv: tuple[str, ...]) -> None:
    r = rt.run(*argv, user=RT_USER)
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
    if r.returncode == 0:
        assert max(len(line) for line in r.stdout.splitlines()) <= 1 << 16
    else:
        _one_line_error(r, argv[0])


@pytest.mark.parametrize("when", ["now-" + "9" * 5000 + "days", "now+" + "9" * 400 + "weeks"])
def test_cacct_time_window_absurd_values_are_one_line(rt: Cluster, when: str) -> None:
    r = rt.run("cacct", "-S", when, user=RT_USER)
    _one_line_error(r, "cacct")


# --------------------------------------------------------------------------- crane local's process scan


def test_crane_local_never_takes_a_users_lookalike_for_its_daemon(rt: Cluster) -> None:
    """A user's process whose command line is this cluster's controller's,
    made non-dumpable (its /proc/PID then belongs to root on Linux): not a
    daemon of the cluster, so ``crane local down`` (root) never signals it."""
    code = "import ctypes, os, sys, time; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); print(os.getpid(), flush=True); time.sleep(120)"
    argv = ["runuser", "-u", RT_USER, "--", sys.executable, "-c", code, "-m", "crane.controller", "-C", rt.config_path]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert p.stdout is not None
        pid = int(p.stdout.readline())
        assert pid not in rt.find_daemons().values()
        assert pid not in rt.running().values()
    finally:
        if pid:
            subprocess.run(["kill", "-KILL", str(pid)], check=False)
        p.wait(timeout=30)


def test_set_time_limit_is_not_a_cli_request(rt: Cluster) -> None:
    """SetTimeLimit is the controller's order to agents: a user's hand-made
    one on the CLI socket changes nothing."""
    jid = rt.submit("-t", "5", wrap="sleep 300", user=RT_USER)
    rt.wait_state(jid, JobState.RUNNING, timeout=60)
    code = (
        "import os, sys; from crane.client import Client; from crane.cli.common import load_config;"
        "from crane.core import messages as m; c = Client(load_config(os.environ['CRANE_CONF']).cli_address, 10);"
        f"r = c.request(m.SetTimeLimit({jid}, 0)); print(type(r).__name__, getattr(r, 'message', ''))"
    )
    r = rt.run("python", "-c", code, user=RT_USER)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Error") and "not a request" in r.stdout, r.stdout
    j = rt.job(jid)
    assert j is not None and j["state"] == JobState.RUNNING and j["time_limit"] == 300, j


# --------------------------------------------------------------------------- reconfigure and agent keys


def _curve_handshake(address: str, server_pub: bytes, pub: bytes, sec: bytes) -> bool:
    """Whether the agent port takes a CurveZMQ handshake with this keypair."""
    from zmq.utils.monitor import recv_monitor_message

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = pub, sec, server_pub
    mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)  # fmt: skip
    try:
        sock.connect(address)
        if not mon.poll(15_000):
            return False
        return bool(recv_monitor_message(mon)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED)
    finally:
        sock.disable_monitor()
        mon.close(linger=0)
        sock.close(linger=0)


def test_reconfigure_never_takes_agent_keys_others_could_write(
    make_cluster: Callable[..., Cluster], users: dict[str, int]
) -> None:
    """An agents/ directory others may write (a mistake of the admin's): a
    key a user swapped in there is not taken by ``ccontrol reconfigure`` (it
    would speak for the node: root's launch orders, forged completions)."""
    c = make_cluster(nodes=1)
    key_dir = os.path.join(c.base, "keys")
    adir = os.path.join(key_dir, "agents")
    mine = os.path.join(c.base, "rtkeys")
    os.makedirs(mine)
    pub_file, sec_file = zmq.auth.create_certificates(mine, "rogue")
    for path in (mine, pub_file, sec_file):
        os.chown(path, ensure_user(RT_USER), -1)
    os.chmod(mine, 0o755)
    os.chmod(adir, 0o777)
    os.chmod(key_dir, 0o755)
    swap = f"mv {adir}/crane01.key {adir}/crane01.old && cp {pub_file} {adir}/crane01.key"
    r = subprocess.run(["runuser", "-u", RT_USER, "--", "sh", "-c", swap], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    c.run("ccontrol", "reconfigure")  # root's: whatever it answers, the swapped key must not count
    pub, sec = zmq.auth.load_certificate(sec_file)
    assert sec is not None
    address = f"tcp://127.0.0.1:{c.config()['CraneCtldListenPort']}"
    assert not _curve_handshake(address, keys.controller_public(key_dir), pub, sec)
    assert c.nodes_state().get("crane01") not in (None, "DOWN")  # the real agent still speaks for it
