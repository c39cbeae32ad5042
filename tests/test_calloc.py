"""calloc (issue 13, second slice): an allocation held while a command runs
on the submit host, crun inside it running steps of the allocation, the
command's exit code, the job ended when the command leaves, a cancel of the
job ending the command; and crun's one-line cancel notice with the message."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import termios
import threading
from typing import Any

from tests.conftest import BIN, Cluster, wait_for

DEADLINE = 60.0


class Proc:
    """A calloc/crun process with its stdout and stderr read in the background."""

    def __init__(self, c: Cluster, prog: str, *args: str, user: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:  # fmt: skip
        cmd = c.command(prog, *args, user=user)
        env = c.env()
        env.pop("CRANE_JOB_ID", None)
        env.update(extra_env or {})
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=env, cwd=c.workdir)  # fmt: skip
        self.out, self.err = bytearray(), bytearray()
        self.threads = [threading.Thread(target=self._pump, args=(f, b), daemon=True)
                        for f, b in ((self.p.stdout, self.out), (self.p.stderr, self.err))]  # fmt: skip
        for t in self.threads:
            t.start()

    @staticmethod
    def _pump(f: Any, buf: bytearray) -> None:
        while data := os.read(f.fileno(), 65536):
            buf += data

    def wait_err(self, pattern: str) -> re.Match[bytes]:
        def seen() -> re.Match[bytes] | None:
            return re.search(pattern.encode(), bytes(self.err))

        wait_for(lambda: seen() or self.p.poll() is not None, DEADLINE, f"{pattern!r} on stderr")
        found = seen()
        assert found, f"ended (rc {self.p.returncode}) without {pattern!r}: {bytes(self.err)!r}"
        return found

    def finish(self) -> int:
        rc = self.p.wait(timeout=DEADLINE)
        for t in self.threads:
            t.join(DEADLINE)
        return rc


def test_calloc_runs_crun_inside_and_completes_the_job(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    ca = Proc(c, "calloc", "-c", "2", "--", "sh", "-c", 'echo "id=$CRANE_JOB_ID n=$CRANE_JOB_NUM_NODES"; '
              "crun hostname; echo $CRANE_JOB_NODELIST; exit 7", user="alice")  # fmt: skip
    assert ca.finish() == 7, bytes(ca.err)  # the command's exit code
    job_id = int(ca.wait_err(r"calloc: Granted job allocation (\d+)").group(1))
    ca.wait_err(rf"calloc: Relinquishing job allocation {job_id}\b")
    lines = bytes(ca.out).decode().splitlines()
    assert lines[0] == f"id={job_id} n=1"
    assert lines[1] == socket.gethostname()  # crun's step ran in the allocation, its output here
    job = c.wait_state(job_id, "COMPLETED", timeout=DEADLINE)  # leaving the command ends the job
    assert job["user"] == "alice" and job["cpus"] == 2
    assert lines[2] == ",".join(job["nodes"])
    assert [s["step_id"] for s in job["steps"]] == [1, 2]  # the holder and crun's step


def test_cancel_of_the_job_revokes_the_command(cluster: Cluster) -> None:
    c = cluster
    ca = Proc(c, "calloc", "--", "sleep", "300")
    job_id = int(ca.wait_err(r"calloc: Granted job allocation (\d+)").group(1))
    c.ok("ccancel", str(job_id))
    ca.wait_err(rf"calloc: Job allocation {job_id} has been revoked\.")
    assert ca.finish() != 0
    assert c.wait_state(job_id, "CANCELLED", timeout=DEADLINE)["state"] == "CANCELLED"


def test_crun_prints_who_cancelled_its_step_and_why(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    job_id = c.submit("-c", "2", wrap="while :; do sleep 1; done", user="alice")
    c.wait_state(job_id, "RUNNING", timeout=DEADLINE)
    cr = Proc(c, "crun", "--jobid", str(job_id), "sh", "-c", "echo ready; while :; do sleep 0.1; done",
              user="alice")  # fmt: skip
    wait_for(lambda: b"ready" in cr.out or cr.p.poll() is not None, DEADLINE, "crun's step running")
    c.ok("ccancel", f"{job_id}.2", "-m", "why not")
    assert cr.finish() != 0
    cr.wait_err(rf"crun: step {job_id}\.2 cancelled by root: why not\n")
    c.ok("ccancel", "-m", "job over", str(job_id))
    c.wait_state(job_id, "CANCELLED", timeout=DEADLINE)


def test_crun_prints_the_cancel_of_its_job(cluster: Cluster) -> None:
    c = cluster
    cr = Proc(c, "crun", "sh", "-c", "echo ready; while :; do sleep 0.1; done", extra_env={"CRUN_VERBOSE": "1"})
    wait_for(lambda: b"ready" in cr.out or cr.p.poll() is not None, DEADLINE, "crun's step running")
    job_id = int(cr.wait_err(r"crun: job (\d+) submitted").group(1))
    c.ok("ccancel", "-m", "maintenance", str(job_id))
    assert cr.finish() != 0
    cr.wait_err(rf"crun: step {job_id}\.1 cancelled by root: maintenance\n")


def test_ctrl_c_goes_to_the_command_and_sigterm_relinquishes(cluster: Cluster) -> None:
    """In a real terminal: the command is the foreground process group (Ctrl-C
    reaches it, calloc stays); SIGTERM to calloc ends the job and the command."""
    c = cluster
    master, slave = os.openpty()
    script = 'trap "echo got-int" INT; echo ready; while :; do sleep 0.1; done'
    env = c.env()
    env.pop("CRANE_JOB_ID", None)

    def own_terminal() -> None:  # after setsid (start_new_session): the pty becomes the controlling terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen([os.path.join(BIN, "calloc"), "--", "sh", "-c", script], stdin=slave, stdout=slave,
                         stderr=slave, env=env, cwd=c.workdir, start_new_session=True,
                         preexec_fn=own_terminal)  # fmt: skip
    os.close(slave)
    buf = bytearray()

    def pump() -> None:
        try:
            while data := os.read(master, 65536):
                buf.extend(data)
        except OSError:  # EIO: every end of the terminal closed
            pass

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        wait_for(lambda: b"ready" in buf or p.poll() is not None, DEADLINE, "the command running")
        found = re.search(rb"Granted job allocation (\d+)", bytes(buf))
        assert found, bytes(buf)
        job_id = int(found.group(1))
        os.write(master, b"\x03")  # Ctrl-C typed on calloc's terminal
        wait_for(lambda: b"got-int" in buf or p.poll() is not None, DEADLINE, "SIGINT reaching the command")
        assert p.poll() is None and b"got-int" in buf  # calloc ignored it
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=DEADLINE) != 0
        t.join(DEADLINE)
        assert f"Relinquishing job allocation {job_id}".encode() in buf
        c.wait_state(job_id, "COMPLETED", timeout=DEADLINE)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(DEADLINE)
        os.close(master)


def test_pending_then_granted(cluster: Cluster) -> None:
    c = cluster
    blocker = c.submit("--exclusive", wrap="while :; do sleep 1; done")
    node = c.wait_state(blocker, "RUNNING", timeout=DEADLINE)["nodes"][0]
    ca = Proc(c, "calloc", "-w", node, "--", "sh", "-c", "echo inside $CRANE_JOB_NODELIST")  # waits for node
    job_id = int(ca.wait_err(r"calloc: Pending job allocation (\d+)").group(1))
    c.ok("ccancel", str(blocker))
    ca.wait_err(rf"calloc: Granted job allocation {job_id}\b")
    assert ca.finish() == 0, bytes(ca.err)
    assert bytes(ca.out).decode() == f"inside {node}\n"
    c.wait_state(job_id, "COMPLETED", timeout=DEADLINE)


def test_cancel_line_names_who_why_or_the_preemptor() -> None:
    from crane.cli.crun import cancel_line

    by_user = {"state": "CANCELLED", "cancelled": {"by_name": "root", "message": "why"}}
    assert cancel_line(3, 2, by_user) == "crun: step 3.2 cancelled by root: why"
    assert cancel_line(3, 2, {"state": "CANCELLED", "cancelled": {"by_name": "bob"}}) == "crun: step 3.2 cancelled by bob"
    preempted = {"state": "CANCELLED", "cancelled": {"by_name": "preemption", "path": "preemption",
                                                     "message": "Preempted by job 9"}}  # fmt: skip
    assert cancel_line(3, 1, preempted) == "crun: step 3.1 preempted by job 9"
