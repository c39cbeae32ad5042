"""Issue 12, the CLI side (a user's first day): ``ccancel -i`` answered no or
at end of input, a controller that is down or stopped answered within a
couple of seconds (and a submission never applied behind the user's back),
``ccancel -Q``/``-s`` wording, space-separated ids and state short codes,
``echo cmd | cbatch``, ``-t 0``, ``--help`` of every command, ``ccancel -``
and the man pages.

Real clusters, real processes, a real pseudo-terminal; every wait is a poll
with a deadline.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import BIN, Cluster

PROGRAMS = ("cbatch", "ccancel", "cqueue", "cacct", "cinfo", "ccontrol", "cacctmgr", "crun", "calloc", "crane")


@pytest.fixture
def c(cluster: Cluster) -> Iterator[Cluster]:
    """The module cluster, with whatever a test leaves behind cancelled."""
    yield cluster
    left = [str(j) for j in cluster.jobs()]
    if left:
        cluster.run("ccancel", "--force", ",".join(left))


def held(c: Cluster, name: str = "held") -> int:
    return c.submit("-H", "-J", name, wrap="true")


def run_on_pty(c: Cluster, argv: list[str], keys: bytes) -> tuple[int, str, str]:
    """Run a CLI with a pseudo-terminal as its stdin; ``keys`` typed once it
    asks. Returns (exit code, stdout, stderr)."""
    master, slave = os.openpty()
    try:
        p = subprocess.Popen(c.command(*argv), stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=c.env(), cwd=c.workdir)  # fmt: skip
        os.close(slave)
        slave = -1
        assert p.stdout is not None
        out = b""
        deadline = time.monotonic() + 60
        while b"[y/N]" not in out and p.poll() is None and time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 1.0)[0]:
                out += os.read(p.stdout.fileno(), 4096)
        os.write(master, keys)
        rest, err = p.communicate(timeout=60)
        return p.returncode, (out + rest).decode(), err.decode()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


# --------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("keys", [b"n\n", b"\x04", b"\n"], ids=["no", "eof", "default"])
def test_interactive_cancel_answered_no(c: Cluster, keys: bytes) -> None:
    j = held(c, "asked")
    code, out, err = run_on_pty(c, ["ccancel", "-i", str(j)], keys)
    assert (code, err) == (0, ""), (code, out, err)
    assert f"Cancel job {j} (asked," in out
    assert out.splitlines()[-1].endswith("No jobs cancelled."), out
    assert c.state(j) == "PENDING"


def test_interactive_cancel_answered_yes(c: Cluster) -> None:
    j = held(c, "asked")
    code, out, err = run_on_pty(c, ["ccancel", "-i", str(j)], b"y\n")
    assert (code, err) == (0, ""), (code, out, err)
    assert out.splitlines()[-1].endswith(f"Job {j} cancelled successfully."), out
    c.wait_state(j, "CANCELLED")


# --------------------------------------------------------------------------- item 2


def stale_config(c: Cluster, tmp_path: Any) -> tuple[str, str]:
    """A config whose controller socket exists but nobody listens on it (a
    controller that died): (config path, address)."""
    sock_path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock_path)
    s.close()
    cfg = c.config()
    address = f"ipc://{sock_path}"
    cfg["CliEndpoint"] = address
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    return str(path), address


COMMANDS = [
    ["cbatch", "--wrap", "true"],
    ["ccancel", "1"],
    ["cqueue"],
    ["cacct"],
    ["cinfo"],
    ["ccontrol", "show", "job", "1"],
    ["cacctmgr", "show", "qos"],
    ["crun", "true"],
    ["calloc", "true"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[a[0] for a in COMMANDS])
def test_controller_down_answers_at_once(c: Cluster, tmp_path: Any, argv: list[str]) -> None:
    """Today: 30 s (cbatch, crun, calloc: 120 s) before an answer. A generous
    subprocess timeout stands for "at once" (no timing is asserted)."""
    path, address = stale_config(c, tmp_path)
    env = {**c.env(), "CRANE_CONF": path}
    r = subprocess.run([os.path.join(BIN, argv[0]), *argv[1:]], capture_output=True, text=True,
                       env=env, cwd=c.workdir, timeout=25)  # fmt: skip
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith(f"{argv[0]}: error: cannot reach the controller at {address}: "), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


def test_connect_timeout_is_configurable(c: Cluster, tmp_path: Any) -> None:
    path, address = stale_config(c, tmp_path)
    env = {**c.env(), "CRANE_CONF": path, "CRANE_CONNECT_TIMEOUT": "0.5"}
    r = subprocess.run([os.path.join(BIN, "cqueue")], capture_output=True, text=True, env=env, timeout=25)
    assert r.returncode == 3
    assert r.stderr.strip() == (
        f"cqueue: error: cannot reach the controller at {address}: connection refused, no answer within 0.5 s"
    )


def test_stopped_controller_answers_at_once_and_nothing_is_submitted(make_cluster: Any) -> None:
    """A controller that cannot answer (stopped): every command says so within
    the connect timeout, and the submission it was not given never appears."""
    c: Cluster = make_cluster(nodes=1)
    pid = c.procs["cranectld"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for argv in (["cbatch", "-J", "never-submitted", "--wrap", "true"], ["cqueue"], ["ccancel", "1"]):
            r = c.run(*argv, timeout=25)
            assert r.returncode == 3, (argv, r.stdout, r.stderr)
            assert r.stderr.startswith(f"{argv[0]}: error: cannot reach the controller at "), r.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    names = [j["name"] for j in c.jobs()] + [j["name"] for j in c.jobs(history=True)]
    assert "never-submitted" not in names
    assert c.submit(wrap="true") > 0  # and it answers again


def test_long_waits_are_not_cut_by_the_connect_timeout(c: Cluster) -> None:
    """--wait may take far longer than the connect timeout: only the
    connection has the short limit."""
    flag = c.file("slow-term.flag")
    j = c.submit(wrap=f"trap 'sleep 4; echo done > {flag}; exit 0' TERM; sleep 300 & wait")
    c.wait_state(j, "RUNNING")
    c.step_pid(j)
    env = {**c.env(), "CRANE_CONNECT_TIMEOUT": "0.5"}
    r = subprocess.run([os.path.join(BIN, "ccancel"), "--wait", "--grace", "60", str(j)],
                       capture_output=True, text=True, env=env, cwd=c.workdir, timeout=90)  # fmt: skip
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert c.read("slow-term.flag") == "done\n"  # --wait returned after the trap ran to its end
    assert c.state(j) == "CANCELLED"


# --------------------------------------------------------------------------- item 8


def test_quiet_silences_errors_but_not_the_exit_code(c: Cluster) -> None:
    r = c.run("ccancel", "-Q", "999999")
    assert (r.returncode, r.stdout, r.stderr) == (4, "", "")
    j = held(c)
    r = c.run("ccancel", "-Q", f"{j},999999")
    assert (r.returncode, r.stdout, r.stderr) == (4, "", "")
    c.wait_state(j, "CANCELLED")


def test_signal_to_a_pending_job_is_not_a_failed_cancel(c: Cluster) -> None:
    j = held(c)
    r = c.run("ccancel", "-s", "TERM", str(j))
    assert r.returncode == 4
    assert "Failed to cancel" not in r.stdout
    assert r.stdout.startswith(f"Failed to send signal TERM to job: {j}. Reason: "), r.stdout
    assert c.state(j) == "PENDING"


# --------------------------------------------------------------------------- item 11


def test_space_separated_ids_mixed_with_commas(c: Cluster) -> None:
    a, b, d = held(c), held(c), held(c)
    r = c.run("ccancel", str(a), f"{b},{d}")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"Job {a},{b},{d} cancelled successfully.\n", "")
    for j in (a, b, d):
        c.wait_state(j, "CANCELLED")


@pytest.mark.parametrize("state", ["PD", "pd", "Pending", "P", "pd,r", "R,PD,S"])
def test_state_short_codes_in_ccancel(c: Cluster, state: str) -> None:
    j = held(c, "bystate")
    r = c.run("ccancel", "-t", state, "-n", "bystate")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"Job {j} cancelled successfully.\n", "")
    c.wait_state(j, "CANCELLED")


def test_ended_states_are_refused_by_ccancel(c: Cluster) -> None:
    for state in ("CD", "PR", "NF", "OOM"):
        r = c.run("ccancel", "-t", state)
        assert r.returncode == 2
        assert r.stderr == f'ccancel: error: invalid state "{state}": valid states are PENDING, RUNNING, SUSPENDED, ALL\n'


def test_state_names_and_codes_parse() -> None:
    from crane.core.ids import STATE_NAMES, parse_job_states
    from crane.core.states import JobState

    for code in ("PD", "R", "CG", "S", "CD", "CA", "F", "TO", "PR", "NF", "OOM"):
        assert code in STATE_NAMES
        assert parse_job_states(code.lower()) == parse_job_states(code)
    assert parse_job_states("PR") == {JobState.CANCELLED}
    assert parse_job_states("nf") == {JobState.FAILED}
    assert parse_job_states("r") == {JobState.RUNNING, JobState.CONFIGURING}
    assert parse_job_states("ALL") == set(JobState)


# --------------------------------------------------------------------------- item 17


def test_script_on_stdin(c: Cluster) -> None:
    out = c.file("from-stdin.out")
    r = c.run("cbatch", "--json", input=f"#!/bin/sh\n#CBATCH -J piped\necho hello > {out}\n")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)["job_id"]
    c.wait_state(j, "COMPLETED")
    assert c.read("from-stdin.out") == "hello\n"
    assert c.job(j)["name"] == "piped"  # type: ignore[index]
    r = c.run("cbatch", "--json", input=f"echo plain > {c.file('plain.out')}\n")  # no #! line
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)["job_id"]
    c.wait_state(j, "COMPLETED")
    assert c.read("plain.out") == "plain\n"
    assert c.job(j)["name"] == "cbatch"  # type: ignore[index]


def test_empty_stdin_is_not_a_script(c: Cluster) -> None:
    r = c.run("cbatch", input="")
    assert r.returncode == 2
    assert r.stderr.startswith("cbatch: error: give a script or --wrap COMMAND")


@pytest.mark.parametrize("limit", ["0", "00:00:00", "0-00:00:00", "UNLIMITED"])
def test_time_zero_is_unlimited(c: Cluster, limit: str) -> None:
    j = c.submit("-H", "-t", limit, wrap="true")
    assert c.job(j)["time_limit"] is None  # type: ignore[index]


@pytest.mark.parametrize(("limit", "seconds"), [("01:02:03", 3723), ("1-00:00:10", 86410), ("90", 5400)])
def test_one_time_format(c: Cluster, limit: str, seconds: int) -> None:
    j = c.submit("-H", "-t", limit, wrap="true")
    assert c.job(j)["time_limit"] == seconds  # type: ignore[index]


# --------------------------------------------------------------------------- item 18


def test_every_option_has_one_line_of_help() -> None:
    import click

    from crane.cli.manpages import command_of

    def options(cmd: Any, path: str) -> Iterator[tuple[str, Any]]:
        for p in cmd.params:
            if isinstance(p, click.Option):
                yield path, p
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from options(sub, f"{path} {name}")

    for prog in PROGRAMS:
        for path, opt in options(command_of(prog), prog):
            assert opt.help and "\n" not in opt.help.strip(), (path, opt.opts)


@pytest.mark.parametrize("prog", PROGRAMS)
def test_help_lists_exit_codes(c: Cluster, prog: str) -> None:
    out = c.ok(prog, "--help")
    assert "Exit codes: 0 success;" in " ".join(out.split())
    assert "3 controller unreachable" in " ".join(out.split())


def test_ccancel_help_describes_options(c: Cluster) -> None:
    out = " ".join(c.ok("ccancel", "--help").split())
    for text in ("only jobs with this name", "SIGTERM to the batch script only",
                 "print nothing, errors included", "reads them from standard input"):  # fmt: skip
        assert text in out


def test_ids_from_stdin(c: Cluster) -> None:
    a, b, d = held(c, "fromstdin"), held(c, "fromstdin"), held(c, "fromstdin")
    r = c.run("ccancel", "-", input=f"{a}\n{b},{d}\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"Job {a},{b},{d} cancelled successfully.\n", "")
    e = held(c, "fromstdin")
    r = c.run("ccancel", "-", input="\n")
    assert (r.returncode, r.stderr) == (2, "ccancel: error: no job ids on standard input\n")
    assert c.state(e) == "PENDING"
    c.ok("ccancel", str(e))


def test_cqueue_json_piped_into_ccancel(c: Cluster) -> None:
    mine = [held(c, "piped-json") for _ in range(3)]
    other = held(c, "not-piped")
    listing = c.ok("cqueue", "-n", "piped-json", "--json")
    assert sorted(j["job_id"] for j in json.loads(listing)) == sorted(mine)
    r = c.run("ccancel", "-", input=listing)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == f"Job {','.join(map(str, sorted(mine)))} cancelled successfully.\n"
    for j in mine:
        c.wait_state(j, "CANCELLED")
    assert c.state(other) == "PENDING"
    # a shell pipe, as a user types it
    cq, cc = os.path.join(BIN, "cqueue"), os.path.join(BIN, "ccancel")
    r2 = subprocess.run(["sh", "-c", f"{cq} -n not-piped --json | {cc} -"], capture_output=True, text=True,
                        env=c.env(), timeout=60)  # fmt: skip
    assert (r2.returncode, r2.stdout) == (0, f"Job {other} cancelled successfully.\n"), r2.stderr


def test_man_pages_are_generated_from_the_commands(tmp_path: Any) -> None:
    """Regenerating gives the committed pages (run python -m crane.cli.manpages
    after changing an option)."""
    from crane.cli.manpages import MAN_DIR, write_all

    written = write_all(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(f"{p}.1" for p in PROGRAMS)
    for path in written:
        name = os.path.basename(path)
        with open(path) as new, open(os.path.join(MAN_DIR, name)) as committed:
            assert new.read() == committed.read(), f"crane/man/{name} is stale: run python -m crane.cli.manpages"


def test_man_page_renders(tmp_path: Any) -> None:
    import shutil

    from crane.cli.manpages import MAN_DIR

    if shutil.which("man") is None:
        pytest.skip("no man(1) here")
    r = subprocess.run(["man", "-l", os.path.join(MAN_DIR, "ccancel.1")], capture_output=True, text=True,
                       env={**os.environ, "MANPAGER": "cat", "PAGER": "cat", "COLUMNS": "100"}, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "ccancel - Cancel jobs or steps" in text and "EXIT STATUS" in text and "--graceful" in text.replace("‐", "-")


def test_many_connections_in_one_process_never_collide(tmp_path: Any) -> None:
    """A process making many connections (crun's re-subscriptions, a test
    harness's threads) must never fail with a ZMQError: pyzmq's default
    monitor endpoint is named after the socket's fd and is "already in use"
    when a fd is reused before the old monitor is gone (seen in a standalone
    loop, suspected in a flaky crash-storm run); the client now names its
    own. This loop does not reproduce the race on the old code: it guards
    the behaviour, refused and accepted connections alternating."""
    import zmq

    from crane.client import Client, Unreachable

    refused = os.path.join(str(tmp_path), "nobody.sock")
    open(refused, "w").close()  # exists, nobody listens: each connect is refused
    listening = os.path.join(str(tmp_path), "router.sock")
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{listening}")
    try:
        for i in range(300):
            if i % 2:
                with pytest.raises(Unreachable):
                    Client(f"ipc://{refused}", 1, connect_timeout=0.01)
            else:
                Client(f"ipc://{listening}", 1, connect_timeout=10).close()
    finally:
        router.close(linger=0)
