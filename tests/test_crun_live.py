"""crun (issue 13, first slice): a job of its own outside an allocation, the
step's output live on crun's stdout/stderr, Ctrl-C and SIGTERM, the exit
code; only the step's owner receives its output; a fast writer through a
slow reader neither grows the controller nor loses output silently."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
from typing import Any

import pytest

from tests.conftest import BIN, Cluster, open_ancestors, wait_for

DEADLINE = 60.0


class Crun:
    """A crun process with its stdout and stderr read in the background."""

    def __init__(self, c: Cluster, *args: str, user: str | None = None, read_stdout: bool = True,
                 extra_env: dict[str, str] | None = None) -> None:  # fmt: skip
        cmd = c.command("crun", *args, user=user)
        env = c.env()
        env.pop("CRANE_JOB_ID", None)
        env.update(extra_env or {})
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=c.workdir)
        self.out = bytearray()
        self.err = bytearray()
        self.threads = [threading.Thread(target=self._pump, args=(self.p.stderr, self.err), daemon=True)]
        if read_stdout:
            self.threads.append(threading.Thread(target=self._pump, args=(self.p.stdout, self.out), daemon=True))
        for t in self.threads:
            t.start()

    @staticmethod
    def _pump(f: Any, buf: bytearray) -> None:
        while True:
            data = os.read(f.fileno(), 65536)
            if not data:
                return
            buf += data

    def wait_out(self, text: str, what: str = "stdout") -> None:
        buf = self.out if what == "stdout" else self.err
        wait_for(lambda: text.encode() in buf or self.p.poll() is not None, DEADLINE, f"{text!r} on crun's {what}")
        assert text.encode() in buf, f"crun ended (rc {self.p.returncode}) without {text!r}: {bytes(self.err)!r}"

    def finish(self) -> int:
        rc = self.p.wait(timeout=DEADLINE)
        for t in self.threads:
            t.join(DEADLINE)
        return rc


def go(c: Cluster, name: str) -> None:
    with open(c.file(name), "w"):
        pass
    os.chmod(c.file(name), 0o644)


def waiting_step(flag: str, before: str = "", after: str = "") -> str:
    """A step that prints ready, then waits (polling) for ``flag`` to exist."""
    return f"{before}echo ready; while [ ! -e {flag} ]; do sleep 0.1; done; {after}"


def test_live_output_exit_code_and_own_job(cluster: Cluster) -> None:
    c = cluster
    script = waiting_step("go-live", before="echo warn-early >&2; ", after="echo done; echo warn-late >&2; exit 3")
    cr = Crun(c, "-c", "2", "-J", "live", "sh", "-c", script)
    cr.wait_out("ready")  # before the step ends: it waits for go-live
    cr.wait_out("warn-early", "stderr")
    assert cr.p.poll() is None
    assert b"warn" not in cr.out and b"ready" not in cr.err  # each stream to its own
    go(c, "go-live")
    assert cr.finish() == 3
    assert cr.out == b"ready\ndone\n"
    assert b"warn-late" in cr.err
    jobs = [j for j in json.loads(c.ok("cacct", "-S", "2000-01-01", "--json")) if j["name"] == "live"]
    assert len(jobs) == 1 and jobs[0]["state"] == "FAILED" and jobs[0]["exit_code"] == 3
    assert jobs[0]["cpus"] == 2
    assert not os.path.exists(c.file(f"crane-{jobs[0]['job_id']}.out"))  # output was crun's, not a file


def test_own_job_completed_with_partition(cluster: Cluster) -> None:
    c = cluster
    part = c.config()["Partitions"][0]["name"] if isinstance(c.config().get("Partitions"), list) else None
    args = ["-p", part] if part else []
    r = c.run("crun", *args, "-c", "1", "-J", "ok-job", "sh", "-c", "echo hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"
    jobs = [j for j in json.loads(c.ok("cacct", "-S", "2000-01-01", "--json")) if j["name"] == "ok-job"]
    assert len(jobs) == 1 and jobs[0]["state"] == "COMPLETED"


def test_ctrl_c_once_reaches_the_step(cluster: Cluster) -> None:
    c = cluster
    script = waiting_step("go-int", before="trap 'echo got-int' INT; ", after="echo bye")
    cr = Crun(c, "-J", "int-once", "sh", "-c", script)
    cr.wait_out("ready")
    cr.p.send_signal(signal.SIGINT)
    cr.wait_out("got-int")
    go(c, "go-int")
    assert cr.finish() == 0
    assert cr.out.endswith(b"bye\n")


def test_ctrl_c_twice_cancels(cluster: Cluster) -> None:
    c = cluster
    # the second Ctrl-C must come within the window after the first: one
    # generous enough for a slow machine (two signals sent at once would be
    # merged into one by the kernel, so the second waits for crun's notice)
    cr = Crun(c, "-J", "int-twice", "sh", "-c", waiting_step("never-int", before="trap 'echo got-int' INT; "),
              extra_env={"CRUN_INTERRUPT_WINDOW": "60"})  # fmt: skip
    cr.wait_out("ready")
    cr.p.send_signal(signal.SIGINT)
    cr.wait_out("one more within", "stderr")
    cr.p.send_signal(signal.SIGINT)
    rc = cr.finish()
    assert rc != 0
    assert b"cancelled" in cr.err
    jobs = [j for j in json.loads(c.ok("cacct", "-S", "2000-01-01", "--json")) if j["name"] == "int-twice"]
    assert len(jobs) == 1 and jobs[0]["state"] == "CANCELLED"


def test_sigterm_to_crun_cancels_its_step(cluster: Cluster) -> None:
    c = cluster
    j = c.submit("-c", "2", wrap="sleep 300")
    c.wait_state(j, "RUNNING")
    cr = Crun(c, "--jobid", str(j), "sh", "-c", waiting_step("never-term"))
    cr.wait_out("ready")
    cr.p.send_signal(signal.SIGTERM)
    assert cr.finish() != 0

    def step2() -> dict[str, Any] | None:
        steps = {s["step_id"]: s for s in (c.job(j) or {}).get("steps", [])}
        return steps.get(2) if steps.get(2, {}).get("state") == "CANCELLED" else None

    wait_for(step2, DEADLINE, "step 2 cancelled")
    assert c.state(j) == "RUNNING"  # only the step: the job is not crun's
    # -o sends stdout to a file (written as the owner), stderr stays live
    r = c.run("crun", "--jobid", str(j), "-o", "rt-crun-o.txt", "sh", "-c", "echo to-file; echo to-term >&2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == "to-term\n"
    assert c.read("rt-crun-o.txt") == "to-file\n"
    os.unlink(c.file("rt-crun-o.txt"))
    r = c.run("crun", "--jobid", str(j), "-p", "CPU", "true")  # resources are for a new job only
    assert r.returncode == 2 and "only for a new job" in r.stderr
    c.ok("ccancel", str(j))
    c.wait_state(j, "CANCELLED", timeout=DEADLINE)


def test_killed_crun_cancels_its_step(cluster: Cluster) -> None:
    c = cluster
    cr = Crun(c, "-J", "killed-crun", "sh", "-c", waiting_step("never-kill"))
    cr.wait_out("ready")
    cr.p.kill()  # SIGKILL: crun says nothing; the controller sees its connection gone
    cr.finish()
    jobs = wait_for(lambda: [j for j in json.loads(c.ok("cacct", "-S", "2000-01-01", "--json")) if j["name"] == "killed-crun"],
                    DEADLINE, "the job of the killed crun to end")  # fmt: skip
    assert jobs[0]["state"] == "CANCELLED" and jobs[0]["message"] == "crun gone"


def test_a_vanished_watcher_of_a_batch_jobs_output_does_not_cancel_it(cluster: Cluster) -> None:
    """Only crun's own job ends with its crun: a batch job whose output root
    (or its owner) watched with WaitStep(stream=True) runs on when the
    watcher's process is killed (the fuzzer's finding)."""
    c = cluster
    j = c.submit(wrap="sleep 300")
    c.wait_state(j, "RUNNING")
    ipc = "ipc://" + os.path.join(c.base, "cranectld.sock")
    code = ("import sys, time\nfrom crane.client import Client\nfrom crane.core import messages as m\n"
            f"cl = Client({ipc!r}, 300)\ncl.send(m.WaitStep({j}, 1, True))\nprint('sent', flush=True)\n"
            "time.sleep(300)  # holds the subscription open until killed\n")  # fmt: skip
    watcher = subprocess.Popen([os.path.join(BIN, "python"), "-c", code], env=c.env(), stdout=subprocess.PIPE)
    try:
        assert watcher.stdout is not None and watcher.stdout.readline() == b"sent\n"
        # a crun killed after it: once its job is CANCELLED "crun gone", the
        # controller has seen both connections gone
        probe = Crun(c, "-J", "probe-departed", "sh", "-c", waiting_step("never-probe"))
        probe.wait_out("ready")
    finally:
        watcher.kill()
        watcher.wait()
    probe.p.kill()
    probe.finish()
    ended = wait_for(lambda: [x for x in json.loads(c.ok("cacct", "-S", "2000-01-01", "--json"))
                              if x["name"] == "probe-departed"], DEADLINE, "the probe crun's job to end")  # fmt: skip
    assert ended[0]["message"] == "crun gone"
    assert c.state(j) == "RUNNING", c.job(j)
    c.ok("ccancel", str(j))


def test_only_the_owner_receives_the_output(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    cr = Crun(c, "-J", "mine", "sh", "-c", waiting_step("/tmp/never-rt-own") + "echo secret", user="alice")
    cr.wait_out("ready")  # alice's own crun gets her output

    def job_id() -> int | None:
        js = [j for j in json.loads(c.ok("cqueue", "--json")) if j["name"] == "mine"]
        return js[0]["job_id"] if js else None

    jid = wait_for(job_id, DEADLINE, "alice's crun job")
    # attack: bob subscribes to alice's step output with a hand-made WaitStep(stream=True)
    code = ("import sys\nfrom crane.core import messages as m\nfrom crane.cli.common import call, load_config, CliError\n"
            f"try:\n    call(load_config(None), m.WaitStep({jid}, 1, True), timeout=5)\n    print('SUBSCRIBED')\n"
            "except CliError as e:\n    print(e)\n")  # fmt: skip
    open_ancestors(c.base)
    r = subprocess.run(["runuser", "-u", "bob", "--", "env", f"CRANE_CONF={c.config_path}", "HOME=/tmp",
                        os.path.join(BIN, "python"), "-c", code], capture_output=True, text=True,
                       timeout=DEADLINE, cwd="/")  # fmt: skip
    assert "Permission denied" in r.stdout, (r.stdout, r.stderr)
    c.ok("ccancel", str(jid))
    assert cr.finish() != 0
    assert b"secret" not in cr.out


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_fast_writer_slow_reader_is_bounded_and_loss_reported(cluster: Cluster) -> None:
    """50 MB written at once while crun's stdout is not read: the controller
    relays without keeping, drops what crun's connection cannot take, and
    crun reports the loss; received + lost is exactly what was written."""
    c = cluster
    total = 50_000_000
    ctld = c.procs["cranectld"].pid
    before = _rss_kb(ctld)
    cr = Crun(c, "-J", "flood", "sh", "-c", f"head -c {total} /dev/zero; touch flood-written", read_stdout=False)
    wait_for(lambda: os.path.exists(c.file("flood-written")) or cr.p.poll() is not None, DEADLINE * 2,
             "the step to write everything")  # fmt: skip
    grown = _rss_kb(ctld) - before
    got = 0
    fd = cr.p.stdout.fileno()  # type: ignore[union-attr]
    while True:  # now read it all
        ready, _, _ = select.select([fd], [], [], DEADLINE)
        assert ready, "crun's stdout went silent"
        data = os.read(fd, 1 << 20)
        if not data:
            break
        got += len(data)
    rc = cr.finish()
    assert rc == 0, bytes(cr.err)[-1000:]
    lost = 0
    for line in bytes(cr.err).decode().splitlines():
        if line.startswith("crun: ") and line.endswith(" bytes of output lost"):
            lost = int(line.split()[1])
    print(f"flood: received {got}, lost {lost}, controller grew {grown} kB")
    assert got + lost == total, (got, lost, bytes(cr.err)[-500:])
    assert grown < 200_000, f"controller grew by {grown} kB"
    os.unlink(c.file("flood-written"))


@pytest.fixture(autouse=True)
def _clean(cluster: Cluster) -> Any:
    yield
    for name in ("go-live", "go-int"):
        try:
            os.unlink(cluster.file(name))
        except OSError:
            pass


def test_relay_keeps_nothing_and_counts_what_it_drops() -> None:
    """crane.actors.streams: a chunk goes to the subscriber at once or is
    counted as lost; no subscriber yet, held (bounded) and sent to the next
    subscriber first; the count ends with the step."""
    from crane.actors.streams import Relay
    from crane.core import messages as m

    class Endpoint:
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, m.Message, int]] = []
            self.full = False

        def send(self, identity: bytes, msg: m.Message, rid: int = 0) -> bool:
            if self.full:
                return False
            self.sent.append((identity, msg, rid))
            return True

    class Replier:
        def __init__(self, ep: Endpoint, rid: int) -> None:
            self.endpoint, self.identity, self.rid = ep, b"crun", rid

    ep, relay = Endpoint(), Relay()
    relay.relay(m.StepOutput(1, 2, 1, b"nobody", 0))
    assert relay.dropped == 0 and not ep.sent and relay.held_bytes == 6
    relay.subscribe((1, 2), Replier(ep, 7))
    relay.relay(m.StepOutput(1, 2, 1, b"abc", 1))
    ep.full = True
    relay.relay(m.StepOutput(1, 2, 2, b"defg", 0))
    relay.subscribe((1, 2), Replier(ep, 8))  # crun asked again: the count carries over
    assert [(r, x.data) for _, x, r in ep.sent] == [(7, b"nobody"), (7, b"abc")]  # type: ignore[attr-defined]
    assert relay.end((1, 2)) == 4 and relay.end((1, 2)) == 0 and not relay.subs and relay.held_bytes == 0


def test_relay_holds_a_bounded_amount_without_subscriber() -> None:
    """Output of a step nobody listens to (yet): at most HOLD_STEP bytes are
    held; the rest is counted as lost and told to the next subscriber."""
    from crane.actors import streams
    from crane.core import messages as m

    class Endpoint:
        def __init__(self) -> None:
            self.sent: list[m.Message] = []

        def send(self, identity: bytes, msg: m.Message, rid: int = 0) -> bool:
            self.sent.append(msg)
            return True

    class Replier:
        def __init__(self, ep: Endpoint) -> None:
            self.endpoint, self.identity, self.rid = ep, b"crun", 1

    relay, chunk = streams.Relay(), b"x" * 32768
    n = streams.HOLD_STEP // len(chunk)
    for i in range(n + 3):
        relay.relay(m.StepOutput(4, 2, 1, chunk, i))
    assert relay.held_bytes == streams.HOLD_STEP
    ep = Endpoint()
    relay.subscribe((4, 2), Replier(ep))
    assert len(ep.sent) == n and relay.lost((4, 2)) == 3 * len(chunk) and relay.held_bytes == 0


def test_agent_pipe_pauses_while_the_link_refuses() -> None:
    """crane.agent.stream: a refused send keeps the chunk and stops reading
    (the writer then blocks on a full pipe); nothing is lost or reordered."""
    import asyncio

    from crane.agent import stream
    from crane.core import messages as m

    async def run() -> list[bytes]:
        got: list[m.StepOutput] = []
        refuse = {"n": 3}

        def send(msg: m.Message) -> bool:
            if refuse["n"] > 0:
                refuse["n"] -= 1
                return False
            assert isinstance(msg, m.StepOutput)
            got.append(msg)
            return True

        r, w = os.pipe()
        p = stream.Pipe(5, 2, 1, r, send)
        payload = bytes(range(256)) * 1000
        os.set_blocking(w, False)
        view = memoryview(payload)
        while view:  # write as the step would, the pipe draining as the agent reads it
            try:
                view = view[os.write(w, view[: 1 << 16]) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the event loop must run to read the pipe
        os.close(w)
        await p.drained(30)
        assert [x.seq for x in got] == list(range(len(got)))
        assert all(len(x.data) <= stream.CHUNK for x in got)
        return [x.data for x in got]

    payload = bytes(range(256)) * 1000
    assert b"".join(asyncio.run(run())) == payload
