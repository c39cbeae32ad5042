"""crun's input (issue 13): stdin reaches the step (EOF closes it), the
input path is bounded (crun waits for the agent's credit, nothing is lost or
dropped) and only the step's owner may send input; ``--pty`` runs an
interactive shell on a real pseudo-terminal that follows the user's window
size."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import threading
import time

import psutil
import pytest

from tests.conftest import Cluster, wait_for

DEADLINE = 60.0


def crun_env(c: Cluster) -> dict[str, str]:
    env = c.env()
    env.pop("CRANE_JOB_ID", None)
    env["TERM"] = "dumb"
    return env


def test_stdin_round_trip(cluster: Cluster) -> None:
    c = cluster
    r = subprocess.run(c.command("crun", "cat"), input=b"hi\n", capture_output=True, env=crun_env(c),
                       cwd=c.workdir, timeout=DEADLINE)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hi\n"
    # EOF on crun's stdin closes the step's: a reader that waits for it ends
    r = subprocess.run(c.command("crun", "sh", "-c", "wc -c; echo after-eof"), input=b"x" * 1000,
                       capture_output=True, env=crun_env(c), cwd=c.workdir, timeout=DEADLINE)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"1000", b"after-eof"]
    # /dev/null (or a terminal without --pty) is not forwarded: the step's stdin is /dev/null
    r = subprocess.run(c.command("crun", "sh", "-c", "cat; echo empty"), stdin=subprocess.DEVNULL,
                       capture_output=True, env=crun_env(c), cwd=c.workdir, timeout=DEADLINE)  # fmt: skip
    assert r.returncode == 0 and r.stdout == b"empty\n", r.stderr
    # a step that stops reading (and ends) before crun's stdin does: crun ends with it
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        r = subprocess.run(c.command("crun", "head", "-n", "2"), stdin=yes.stdout, capture_output=True,
                           env=crun_env(c), cwd=c.workdir, timeout=DEADLINE)  # fmt: skip
        assert r.returncode == 0 and r.stdout == b"y\ny\n", r.stderr
    finally:
        yes.kill()
        yes.wait(DEADLINE)
        assert yes.stdout is not None
        yes.stdout.close()


def test_input_is_bounded_and_lossless(cluster: Cluster) -> None:
    """A step that does not read its stdin: crun stops reading its own after
    about INPUT_WINDOW bytes (the writer blocks), and once the step reads,
    every byte arrives in order."""
    c = cluster
    flag = c.file("io-go")
    out = c.file("io-out")
    total = 8 * 1024 * 1024  # well beyond the 1 MiB window plus the pipes' buffers
    script = f"while [ ! -e {flag} ]; do sleep 0.1; done; cat > {out}; echo got"
    r_fd, w_fd = os.pipe()
    p = subprocess.Popen(c.command("crun", "sh", "-c", script), stdin=r_fd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=crun_env(c), cwd=c.workdir)  # fmt: skip
    os.close(r_fd)
    data = bytes(range(256)) * (total // 256)
    written = [0]

    def feed() -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(w_fd, view[:65536])
                written[0] += n
                view = view[n:]
        except OSError:
            pass
        finally:
            os.close(w_fd)

    t = threading.Thread(target=feed, daemon=True)
    try:
        t.start()
        wait_for(lambda: written[0] >= 1024 * 1024, DEADLINE, "1 MiB taken by crun")
        # the step reads nothing yet: the rest cannot all have been taken
        assert t.is_alive() and written[0] < total
        with open(flag, "w"):
            pass
        t.join(DEADLINE)
        assert not t.is_alive() and written[0] == total
        stdout, stderr = p.communicate(timeout=DEADLINE)
        assert p.returncode == 0, stderr
        assert stdout == b"got\n"
        with open(out, "rb") as f:
            assert f.read() == data
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(DEADLINE)


def test_only_the_owner_sends_input(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    flag = c.file("io-owner")
    job = c.submit("-N", "1", wrap=f"while [ ! -e {flag} ]; do sleep 0.1; done", user="alice")
    try:
        c.wait_state(job, "RUNNING", timeout=DEADLINE)
        code = (
            "import sys\n"
            "from crane.config import load\n"
            "from crane.client import Client\n"
            "from crane.core import messages as m\n"
            "cfg = load(None)\n"
            "cl = Client(cfg.cli_address, 30, munge=cfg.auth_type == 'munge')\n"
            f"for msg in (m.StepInput({job}, 1, 0, b'x'), m.StepResize({job}, 1, 10, 10)):\n"
            "    r = cl.request(msg)\n"
            "    print(type(r).__name__, getattr(r, 'code', ''))\n"
        )
        r = subprocess.run(c.command("python", "-c", code, user="bob"), capture_output=True, text=True,
                           timeout=DEADLINE, cwd="/tmp")  # fmt: skip
        assert r.returncode == 0, r.stderr
        lines = r.stdout.split("\n")
        assert lines[0].startswith("Error") and lines[1].startswith("Error"), r.stdout
    finally:
        with open(flag, "w"):
            pass
        os.chmod(flag, 0o644)


class Term:
    """crun --pty in a real pseudo-terminal (the user's terminal)."""

    def __init__(self, c: Cluster, *argv: str, rows: int = 24, cols: int = 80) -> None:
        self.master, slave = pty.openpty()
        self.set_size(rows, cols, fd=slave)
        self.buf = b""
        self.p = subprocess.Popen(c.command("crun", "--pty", *argv), stdin=slave, stdout=slave, stderr=slave,
                                  env=crun_env(c), cwd=c.workdir, start_new_session=True,
                                  preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # fmt: skip
        self.slave = slave  # kept: the user's terminal settings are read back after crun
        self.cooked = termios.tcgetattr(slave)

    def set_size(self, rows: int, cols: int, fd: int | None = None) -> None:
        fcntl.ioctl(self.master if fd is None else fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, needle: bytes) -> bytes:
        """Read until ``needle`` shows up; everything read so far."""
        deadline = time.monotonic() + DEADLINE
        while needle not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen; got {self.buf[-2000:]!r}"
            r, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: crun and its terminal are gone
                    data = b""
                if not data:
                    assert needle in self.buf, f"{needle!r} not seen before the end; got {self.buf[-2000:]!r}"
                self.buf += data
        return self.buf

    def close(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(DEADLINE)
        os.close(self.master)
        os.close(self.slave)


def test_pty_interactive_shell(cluster: Cluster) -> None:
    c = cluster
    t = Term(c, "sh", "-i", rows=33, cols=101)
    try:
        t.write("echo $((6*7)); tty; stty size\n")
        buf = t.expect(b"33 101")
        assert b"42" in buf
        assert b"/dev/pts/" in buf
        # a resize while it runs reaches the step's terminal (SIGWINCH -> StepResize)
        t.set_size(44, 120)
        os.killpg(t.p.pid, signal.SIGWINCH)  # a real terminal's resize signals its foreground group
        deadline = time.monotonic() + DEADLINE
        for i in range(100, 10_000):  # the resize may land after the next command: ask again
            t.write(f"stty size; echo end-$((1+{i}))\n")
            t.expect(b"end-%d" % (i + 1))
            if b"44 120" in t.buf:
                break
            assert time.monotonic() < deadline, t.buf[-2000:]
        # ^C is a byte for the remote terminal: it interrupts the foreground command, not crun
        t.write("echo start-$((2+3)); sleep 9871\n")
        t.expect(b"start-5")
        # the ^C once the sleep runs: sent between the echo and the sleep's fork it
        # would reach the shell alone (which ignores it) and the sleep would go on
        wait_for(lambda: any(p.info["cmdline"] == ["sleep", "9871"] for p in psutil.process_iter(["cmdline"])),
                 DEADLINE, "the sleep in the terminal")  # fmt: skip
        t.write("\x03")
        t.write("echo still-$((1+1))\n")
        t.expect(b"still-2")
        t.write("exit 3\n")
        assert t.p.wait(DEADLINE) == 3
        assert termios.tcgetattr(t.slave) == t.cooked  # crun left raw mode
    finally:
        t.close()


@pytest.mark.skipif(not os.path.exists("/bin/bash"), reason="needs bash")
def test_pty_bash_in_an_allocation(cluster: Cluster) -> None:
    c = cluster
    flag = c.file("io-alloc")
    job = c.submit("-N", "1", "-c", "2", wrap=f"while [ ! -e {flag} ]; do sleep 0.1; done")
    try:
        c.wait_state(job, "RUNNING", timeout=DEADLINE)
        t = Term(c, "--jobid", str(job), "bash", "--norc", "--noprofile", "-i")
        try:
            t.write("echo $((6*7)); tty; echo id-$CRANE_JOB_ID; exit 3\n")
            buf = t.expect(b"id-%d" % job)
            assert b"42" in buf and b"/dev/pts/" in buf
            assert t.p.wait(DEADLINE) == 3
        finally:
            t.close()
    finally:
        with open(flag, "w"):
            pass
