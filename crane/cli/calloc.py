"""calloc: hold an allocation and run a shell (or a command) on the submit host.

Like salloc: calloc submits a job with cbatch's resource options whose batch
step only holds the allocation, waits until it runs (``calloc: Pending job
allocation N`` / ``calloc: Granted job allocation N`` on stderr), then starts
``$SHELL`` (or the command after ``--``) here with ``CRANE_JOB_ID``,
``CRANE_JOB_NODELIST`` and ``CRANE_JOB_NUM_NODES`` set, so that ``crun``
inside runs steps of the allocation (they share the job's CPUs).

calloc learns of its job's start and end as crun does (a WaitStep with
live output on the job's batch step, whose holder prints one line when it
starts: see Subscription), pushed by the controller, not polled.

When the command exits, calloc ends the job as COMPLETED (a cancel with end
state FINISHED, like salloc's shell leaving normally), prints ``calloc:
Relinquishing job allocation N`` and exits with the command's exit code
(128+N when signal N ended it). When the job ends under it (ccancel, a
preemption, the time limit), calloc prints ``calloc: Job allocation N has
been revoked.``, sends SIGHUP to the command's process group and SIGKILL a
few seconds later, and exits non-zero. The command runs in its own process
group, the terminal's foreground one: Ctrl-C reaches the shell, not calloc.
SIGTERM/SIGHUP to calloc relinquish the allocation and end the command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import click

from crane.cli.common import CliError, call, click_main, load_config
from crane.cli.job_options import build_spec, click_options
from crane.core.ids import compress_nodes
from crane.core.states import JobState
from crane.core.text import safe

PROG = "calloc"
REASK = float(os.environ.get("CALLOC_REASK", "5"))  # s without a word from the controller: subscribe again
KILL_AFTER = 5.0  # s between SIGHUP and SIGKILL to a revoked command
# the batch step: one line to calloc when it starts (live output, see
# Subscription), then wait until killed (POSIX sleep only, no GNU `sleep infinity`)
HOLD = ["/bin/sh", "-c", "echo; while :; do sleep 86400; done"]
LIVE = (JobState.RUNNING, JobState.SUSPENDED)


def note(text: str) -> None:
    print(safe(f"{PROG}: {text}"), file=sys.stderr, flush=True)


def status_code(status: int) -> int:
    """A Popen returncode as a shell would report it."""
    return 128 - status if status < 0 else status


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True,
                                "allow_interspersed_args": False})
@click.option("-C", "--config", help="the config file (default: $CRANE_CONF, else /etc/crane/config.yaml)")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def command(config: str | None, argv: tuple[str, ...], **opts: Any) -> int:
    """Allocate resources, then run COMMAND (default: $SHELL) here inside the allocation."""
    from crane.core import messages as m

    if opts.get("hold"):
        raise CliError("--hold makes no sense for calloc")
    for k in ("output", "error"):
        if opts.get(k):
            raise CliError(f"--{k}: calloc's job has no output of its own")
    cfg = load_config(config)
    argv = tuple(argv) or (os.environ.get("SHELL") or "/bin/sh",)
    spec = build_spec(opts, None, None, argv=HOLD)
    spec["name"] = opts.get("job_name") or "calloc"
    spec["stdout"] = spec["stderr"] = os.devnull  # nothing to keep
    spec["stream"] = [1]  # the holder's start line comes to calloc (Subscription)
    job_id = int(call(cfg, m.SubmitJob(spec), timeout=120)["job_ids"][0])
    return Allocation(cfg, job_id).run(list(argv))


class Subscription:
    """calloc's wait on its job, pushed by the controller (no polling): a
    WaitStep with ``stream`` on the job's batch step, as crun's. The holder
    prints one line when it starts (the allocation is granted); the
    WaitStep's answer comes when the step ends (the job ended: cancelled,
    preempted, timed out). The controller probes the connection every
    second; after REASK seconds without a word (a controller restart)
    calloc subscribes again. Like a crun, a calloc killed outright has its
    job cancelled by the controller (its connection gone)."""

    def __init__(self, cfg: Any, job_id: int) -> None:
        self.cfg, self.job_id = cfg, job_id
        self.client: Any = None
        self.rid = 0
        self.heard = 0.0
        self.started = False
        self.ended: dict[str, Any] | None = None

    def _connect(self) -> bool:
        from crane.cli.common import connect_timeout
        from crane.client import Client, Unreachable
        from crane.core import messages as m

        try:
            client = Client(self.cfg.cli_address, REASK, munge=self.cfg.auth_type == "munge",
                            connect_timeout=connect_timeout(self.cfg))  # fmt: skip
            self.rid = client.send(m.WaitStep(self.job_id, 1, True))
        except Unreachable:
            return False
        if self.client is not None:
            self.client.close()
        self.client, self.heard = client, time.monotonic()
        return True

    def wait(self, timeout: float) -> None:
        """Take what came within ``timeout`` seconds (sets started/ended)."""
        import zmq

        from crane.client import MAX_REPLY
        from crane.core import messages as m

        if self.client is None or time.monotonic() - self.heard > REASK:
            if not self._connect():
                time.sleep(timeout)  # the controller is away: try again on the next call
                return
        if not self.client.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return
        while self.client.sock.poll(0, zmq.POLLIN):
            try:
                msg, rid = m.decode(self.client.sock.recv(), MAX_REPLY)
            except m.BadMessage:
                continue
            self.heard = time.monotonic()
            if rid != self.rid:
                continue  # a liveness probe
            if isinstance(msg, m.StepOutput) and msg.stream == 1:
                self.started = True
            elif isinstance(msg, m.Ok):
                self.started, self.ended = True, msg.data or {}
            elif isinstance(msg, m.Error):
                self.ended = {"error": msg.message}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class Allocation:
    def __init__(self, cfg: Any, job_id: int) -> None:
        self.cfg, self.job_id = cfg, job_id
        self.signals: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.sub = Subscription(cfg, job_id)

    def _on_signal(self, signo: int, frame: Any) -> None:
        self.signals.append(signo)

    def job(self) -> dict[str, Any] | None:
        """The job's view, or None when the controller cannot tell now."""
        from crane.core import messages as m

        for history in (False, True):  # the queue, then the finished jobs
            try:
                data = call(self.cfg, m.QueryJobs({"jobs": [self.job_id]}, history=history))
            except CliError:
                return None
            jobs = [j for j in data.get("jobs") or [] if j.get("job_id") == self.job_id]
            if jobs:
                return jobs[0]
        return None

    def end(self, state: str) -> None:
        from crane.core import messages as m

        try:
            call(self.cfg, m.Cancel(ids=[[self.job_id, None]], end_state=state))
        except CliError as e:
            note(f"cannot end job {self.job_id}: {e}")

    def run(self, argv: list[str]) -> int:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, self._on_signal)
        try:
            return self._run(argv)
        finally:
            self.sub.close()

    def _run(self, argv: list[str]) -> int:
        job = self.granted()
        if job is None:
            return 1
        note(f"Granted job allocation {self.job_id}")
        env = dict(os.environ, CRANE_JOB_ID=str(self.job_id), CRANE_JOB_NODELIST=compress_nodes(job.get("nodes") or []),
                   CRANE_JOB_NUM_NODES=str(job.get("num_nodes") or len(job.get("nodes") or [])))  # fmt: skip
        env.pop("CRANE_STEP_ID", None)
        tty = terminal()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the command's
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # to take the terminal back afterwards
        try:
            self.proc = subprocess.Popen(argv, env=env, preexec_fn=lambda: foreground(tty))
        except OSError as e:
            note(f"cannot run {argv[0]}: {e.strerror}")
            self.relinquish()
            return 127 if isinstance(e, FileNotFoundError) else 126
        try:
            return self.watch(self.proc)
        finally:
            if tty is not None:
                try:
                    os.tcsetpgrp(tty, os.getpgrp())
                except OSError:
                    pass
                os.close(tty)

    def granted(self) -> dict[str, Any] | None:
        """Wait until the job runs; None when it ended first or calloc was told to stop."""
        job = self.job()
        if job is not None and job.get("state") == JobState.PENDING:
            note(f"Pending job allocation {self.job_id}")
        while True:
            if self.signals:
                note(f"Job allocation {self.job_id} has been revoked.")
                self.end(JobState.CANCELLED)
                return None
            self.sub.wait(0.2)  # a pushed start or end; the loop only looks at calloc's own signals
            if self.sub.ended is not None:
                job = self.job() or {}
                reason = job.get("reason") or self.sub.ended.get("error") or ""
                note(f"Job allocation {self.job_id} has been revoked." + (f" {reason}" if reason else ""))
                return None
            if self.sub.started:
                job = self.job()
                if job is not None and job.get("state") in LIVE:
                    return job

    def watch(self, proc: subprocess.Popen[bytes]) -> int:
        while True:
            status = proc.poll()
            if status is not None:
                self.relinquish()
                return status_code(status)
            if any(s in (signal.SIGTERM, signal.SIGHUP) for s in self.signals):
                self.relinquish()
                self.stop(proc)
                return 1
            self.signals.clear()
            self.sub.wait(0.2)  # the job's end is pushed (the WaitStep's answer)
            if self.sub.ended is not None:
                note(f"Job allocation {self.job_id} has been revoked.")
                status = self.stop(proc)
                return status_code(status) or 1

    def relinquish(self) -> None:
        note(f"Relinquishing job allocation {self.job_id}")
        self.end("FINISHED")

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGHUP to the command's process group, SIGKILL if still there after KILL_AFTER."""
        for sig, wait in ((signal.SIGHUP, KILL_AFTER), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return -signal.SIGKILL


def terminal() -> int | None:
    """calloc's controlling terminal when calloc is in its foreground, else None."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def foreground(tty: int | None) -> None:
    """In the child: its own process group, the terminal's foreground one."""
    os.setpgid(0, 0)
    if tty is not None:
        try:
            os.tcsetpgrp(tty, os.getpgrp())  # SIGTTOU is ignored (inherited from calloc)
        except OSError:
            pass
    for s in (signal.SIGINT, signal.SIGTTOU, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def main() -> None:
    click_main(command, PROG)


for _opt in click_options():
    command = _opt(command)
