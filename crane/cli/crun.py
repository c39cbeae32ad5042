"""crun: run a command interactively, its output live on crun's terminal.

* Inside an allocation (``CRANE_JOB_ID`` set, or ``--jobid N`` for the job's
  owner): the command runs as the job's next step.
* Outside one: crun submits a job with cbatch's resource options (``-p -q -A
  -N -c --mem -t -w --exclusive -J --gres --gpus``) whose batch step is the
  command; the job ends when the command ends.

The step's stdout and stderr reach crun's stdout and stderr as they are
produced (``-o``/``-e``: that stream goes to the file instead). crun exits
with the step's exit code (128+N when signal N ended it). Ctrl-C forwards
SIGINT to the step; a second one within a second cancels it; SIGTERM and
SIGHUP cancel it (for crun's own job: the job); a crun killed outright has
its step (job) cancelled by the controller within about two seconds.

How output flows, and where it is bounded: ``crane.agent.stream`` (the
agent reads the step's pipes, and stops reading while its link to the
controller is full, which slows the writer down) and
``crane.actors.streams`` (the controller relays each chunk at once; a chunk
this crun's connection cannot take is dropped and counted: crun then prints
``crun: N bytes of output lost``).

Tasks: the step runs on every node of the allocation, one task per node or
``-n``/``--ntasks-per-node`` (block distribution, crane.core.job.task_layout;
several tasks on a node under crane.agent.tasks). Each chunk says which node
sent it: with several nodes (or ``-l``) crun writes whole lines per node, so
lines never mix; ``-l`` prefixes ``RANK: `` (written by the node's runner,
or here for crun's own job, one task per node).

Input: crun's stdin reaches the step when it is a pipe, a file or a socket
(a terminal only with ``--pty``), as ``StepInput`` chunks, one at a time and
never more than ``INPUT_WINDOW`` bytes ahead of the agent's credit
(``StepOutput`` stream 0): a step that does not read stops crun's reading.
``--pty``: the step runs on a pseudo-terminal of its own (stdin, stdout and
stderr; output as stream 1); crun's terminal is raw while it runs (every key,
^C included, goes to the step) and its size follows (SIGWINCH ->
``StepResize``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import click

from crane.cli.common import (
    EXIT_UNREACHABLE,
    CliError,
    call,
    check_text,
    click_main,
    connect_timeout,
    load_config,
)
from crane.cli.job_options import absolute, build_spec, click_options, current_dir
from crane.core.states import JobState
from crane.core.text import safe

PROG = "crun"
WAIT_REASK = float(os.environ.get("CRUN_WAIT_REASK", "5"))  # s without a word from the controller (it probes each second)
DOUBLE_INT = float(os.environ.get("CRUN_INTERRUPT_WINDOW", "1"))  # s: a second Ctrl-C within this cancels
STEP_ONLY = ("cpus_per_task", "output", "error", "chdir", "ntasks", "ntasks_per_node", "nodes")  # a step's options
LINE_MAX = 64 * 1024  # -l or several nodes: a longer line is written in pieces


def write_step_output(fd: int, data: bytes) -> bool:
    """The step's own bytes to crun's stdout/stderr, raw (as srun does): they
    are the user's output on the user's terminal, not text crun shows from
    others (which goes through crane.core.text.safe). False once ``fd`` is closed
    (e.g. ``crun ... | head``): further output of that stream is dropped."""
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError:
        return False
    return True


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True,
                                "allow_interspersed_args": False})
@click.option("-j", "--jobid", type=int, help="the allocation (default: $CRANE_JOB_ID)")
@click.option("-C", "--config", help="the config file (default: $CRANE_CONF, else /etc/crane/config.yaml)")
@click.option("--pty", is_flag=True, help="run the command on a pseudo-terminal (an interactive shell, an editor)")
@click.option("-l", "--label", is_flag=True, help="prefix each output line with its task's rank (RANK: )")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def command(jobid: int | None, config: str | None, pty: bool, label: bool, argv: tuple[str, ...],
            **opts: Any) -> int:  # fmt: skip
    """Run COMMAND as a step of the current job, or in a new job."""
    from crane.core import messages as m

    if opts.get("hold"):
        raise CliError("--hold makes no sense for crun")
    if pty and (opts.get("output") or opts.get("error")):
        raise CliError("--pty takes no --output or --error: the terminal is the step's output")
    if pty and label:
        raise CliError("--pty takes no --label: the terminal is one task's")
    if pty and ((opts.get("ntasks") or 1) > 1 or (opts.get("ntasks_per_node") or 1) > 1):
        raise CliError("--pty runs one task")
    stdin = pty or forwards_stdin()
    job_id = jobid or int(os.environ.get("CRANE_JOB_ID", "0") or 0)
    cfg = load_config(config)
    # The stream's connection is made before the step is asked for, so that its
    # WaitStep follows the answer at once: a step that ends in a few ms (the
    # controller forgets a job once it has ended) is still found.
    first = Follower.connect(cfg)
    if job_id:
        extra = sorted(k for k, v in opts.items() if v is not None and k not in STEP_ONLY)
        if extra:
            names = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise CliError(f"{names}: only for a new job (crun outside an allocation), not for a step of job {job_id}")
        cwd = absolute(opts.get("chdir") or ".", current_dir())
        out, err = (absolute(opts[k], cwd) if opts.get(k) else "" for k in ("output", "error"))
        for what, value in (("the working directory", cwd), ("--output", out), ("--error", err)):
            check_text(what, value)
        env = dict(os.environ)
        req = m.StartStep(job_id, list(argv), opts.get("cpus_per_task") or 1, env, cwd, True, out, err,
                          stdin=stdin and not pty, pty=pty, ntasks=opts.get("ntasks") or 0,
                          ntasks_per_node=opts.get("ntasks_per_node") or 0, label=label,
                          nnodes=opts.get("nodes") or 0)  # fmt: skip
        started: dict[str, Any] = call(cfg, req)
        step_id, own_job = int(started["step_id"]), False
        lines = label or len(started.get("nodes") or []) > 1  # the agents' runner labels (crane.agent.tasks)
        prefixes: list[bytes] = []
        if os.environ.get("CRUN_VERBOSE"):
            where = ",".join(started.get("nodes") or [started.get("node") or ""])
            print(safe(f"crun: step {job_id}.{step_id} started on {where}"), file=sys.stderr)
    else:
        spec = build_spec(opts, None, None, argv=list(argv))
        spec["stream"] = [s for s, k in ((1, "stdout"), (2, "stderr")) if k not in spec]
        for s, k in ((1, "stdout"), (2, "stderr")):
            if s in spec["stream"]:
                spec[k] = os.devnull  # no file: the stream is crun's (a cancel banner goes nowhere)
        if pty:
            spec["stream"] = [1, 3]  # the terminal: stdin, stdout, stderr
        elif stdin:
            spec["stream"].append(0)
        prefixes = own_job_labels(opts) if label else []
        lines = label or ((opts.get("nodes") or 1) > 1 and not pty)  # a terminal's output goes as it comes
        data = call(cfg, m.SubmitJob(spec), timeout=120)
        job_id, step_id, own_job = int(data["job_ids"][0]), 1, True
        if os.environ.get("CRUN_VERBOSE"):
            print(safe(f"crun: job {job_id} submitted"), file=sys.stderr)
    follower = Follower(cfg, job_id, step_id, own_job, stdin=stdin, pty=pty, lines=lines, prefixes=prefixes,
                        first=first)  # fmt: skip
    saved = None
    if pty and os.isatty(0):
        import termios
        import tty

        saved = termios.tcgetattr(0)
        tty.setraw(0, termios.TCSANOW)  # every key goes to the step's terminal, ^C included; typed-ahead kept
    try:
        done = follower.run()
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)
    return exit_code(job_id, step_id, done)


def own_job_labels(opts: dict[str, Any]) -> list[bytes]:
    """``crun -l`` outside an allocation: each node's prefix (its task's
    rank), crun writing them itself (the job's batch step carries no
    label). Several tasks on a node cannot be told apart here: refused."""
    from crane.core.job import task_layout

    nnodes = opts.get("nodes") or 1
    layout = task_layout(["?"] * nnodes, 1 << 30, 1, opts.get("ntasks") or 0, opts.get("ntasks_per_node") or 0)
    if isinstance(layout, str):
        raise CliError(layout)
    if any(c != 1 for c in layout):
        raise CliError("--label with several tasks on a node: run crun -l inside an allocation (calloc)")
    return [f"{rank}: ".encode() for rank in range(len(layout))]


def forwards_stdin() -> bool:
    """Whether crun's stdin goes to the step (without --pty): a pipe, a
    file, a socket; not a terminal (use --pty), /dev/null or a closed fd."""
    import stat

    try:
        st = os.fstat(0)
    except OSError:
        return False
    if os.isatty(0):
        return False
    if stat.S_ISCHR(st.st_mode):
        try:
            return os.stat(os.devnull).st_rdev != st.st_rdev
        except OSError:
            return False
    return True


def exit_code(job_id: int, step_id: int, done: dict[str, Any]) -> int:
    st = done.get("step") or {}
    lost = int(done.get("lost") or 0)
    if lost:
        print(safe(f"crun: {lost} bytes of output lost"), file=sys.stderr)
    state = st.get("state")
    code, sig = int(st.get("exit_code") or 0), int(st.get("signal") or 0)
    if state == JobState.CANCELLED or st.get("cancelled"):
        print(safe(cancel_line(job_id, step_id, st)), file=sys.stderr)
    elif state == JobState.FAILED and st.get("reason"):  # a node down, a launch failure
        print(safe(f"crun: step {job_id}.{step_id} failed: {st['reason']}"), file=sys.stderr)
    if sig:
        return 128 + sig
    if state == JobState.CANCELLED:
        return code or 130
    if state != JobState.COMPLETED and code == 0:
        return 1
    return code


def cancel_line(job_id: int, step_id: int, st: dict[str, Any]) -> str:
    """``crun: step J.S cancelled by USER: MESSAGE`` or ``... preempted by job K``
    from the step's end (its own cancel, or its job's: see step_answer)."""
    c = st.get("cancelled") or {}
    by, msg = c.get("by_name") or st.get("cancelled_by"), c.get("message") or ""
    head = f"crun: step {job_id}.{step_id}"
    if c.get("path") == "preemption" and msg.startswith("Preempted by job "):
        return f"{head} preempted by job {msg.removeprefix('Preempted by job ')}"
    return f"{head} cancelled" + (f" by {by}" if by else "") + (f": {msg}" if msg else "")


class Follower:
    """Waits for the step with its live output (WaitStep(stream=True)),
    writes each chunk to crun's stdout/stderr, and turns crun's signals into
    a SIGINT for the step or a cancel."""

    def __init__(self, cfg: Any, job_id: int, step_id: int, own_job: bool, stdin: bool = False,
                 pty: bool = False, lines: bool = False, prefixes: list[bytes] | None = None,
                 first: Any = None) -> None:  # fmt: skip
        """``first``: a connection made beforehand (Follower.connect) for the first subscription."""
        self.cfg, self.job_id, self.step_id, self.own_job = cfg, job_id, step_id, own_job
        self.first = first
        # several nodes (or -l): each node's output is written a whole line at
        # a time, so that lines of different nodes never mix; ``prefixes``:
        # crun labels the lines itself (by the sending node's index)
        self.lines = lines
        self.prefixes = prefixes or []
        self.partial: dict[tuple[int, int], bytearray] = {}  # (node, fd) -> the start of a line
        self.input = Input(job_id, step_id, pty) if stdin else None
        self.pty = pty
        self.signals: list[tuple[int, float]] = []  # (signal, when it arrived)
        self.last_int = -1e9
        self.cancelled = False
        self.open = {1: True, 2: True}
        self.asks = 0  # WaitStep requests sent

    def _on_signal(self, signo: int, frame: Any) -> None:
        self.signals.append((signo, time.monotonic()))

    def run(self) -> dict[str, Any]:
        wanted = [signal.SIGTERM, signal.SIGHUP] + ([signal.SIGWINCH] if self.pty else [signal.SIGINT])
        if self.input is not None and self.pty:
            self.input.resize()
        for s in wanted:
            if signal.getsignal(s) != signal.SIG_IGN:  # e.g. SIGINT of a `crun ... &` in a script
                signal.signal(s, self._on_signal)
        client = None
        try:
            while True:
                client = self._subscribe(client)
                done = self._follow(client)
                if done is not None:
                    self._flush_lines()
                    return done
        finally:
            if client is not None:
                client.close()

    @staticmethod
    def connect(cfg: Any) -> Any:
        """A connection to the controller for the stream (exit 3 when the
        controller cannot be reached: nothing was asked of it yet)."""
        from crane.client import Client, Unreachable

        try:
            return Client(cfg.cli_address, WAIT_REASK, munge=cfg.auth_type == "munge",
                          connect_timeout=connect_timeout(cfg))  # fmt: skip
        except Unreachable as e:
            raise CliError(f"cannot reach the controller at {cfg.cli_address}: {e}", EXIT_UNREACHABLE) from None

    def _subscribe(self, old: Any) -> Any:
        """A new connection and subscription (after a silence: the controller
        may have restarted and forgotten the request)."""
        from crane.client import Client, Unreachable
        from crane.core import messages as m

        while True:
            try:
                client, self.first = self.first, None
                if client is None:
                    client = Client(self.cfg.cli_address, WAIT_REASK, munge=self.cfg.auth_type == "munge",
                                    connect_timeout=connect_timeout(self.cfg))
                self.rid = client.send(m.WaitStep(self.job_id, self.step_id, True))
                self.asks += 1
                if self.input is not None:
                    self.input.inflight = None  # its answer went with the old connection: sent again
                if old is not None:  # only now: a crun gone for good has its step cancelled
                    old.close()
                return client
            except Unreachable:
                self._handle_signals()
                time.sleep(1.0)  # retry pacing while the controller is down, not a wait for a condition

    def _follow(self, client: Any) -> dict[str, Any] | None:
        import zmq

        from crane.client import MAX_REPLY
        from crane.core import messages as m

        heard = time.monotonic()
        inp = self.input
        while True:
            self._handle_signals()
            poller = zmq.Poller()
            poller.register(client.sock, zmq.POLLIN)
            if inp is not None:
                inp.pump(client)
                if inp.wants_read():
                    poller.register(0, zmq.POLLIN)
            ready = dict(poller.poll(100))
            if inp is not None and ready.get(0):
                inp.read()
            if not ready.get(client.sock):
                if time.monotonic() - heard > WAIT_REASK:
                    return None
                continue
            try:
                msg, rid = m.decode(client.sock.recv(), MAX_REPLY)
            except m.BadMessage as e:
                raise CliError(f"bad reply from controller: {e}", EXIT_UNREACHABLE) from None
            heard = time.monotonic()
            if inp is not None and rid == inp.inflight:
                inp.answered(msg)
                continue
            if rid != self.rid:
                continue  # a liveness probe, or the answer to an earlier subscription
            if isinstance(msg, m.StepOutput) and msg.stream == 0 and msg.seq < 0:
                if inp is not None and inp.open:  # a restarted agent took the step back without its input
                    print(safe(f"crun: step {self.job_id}.{self.step_id}: its input is closed "
                               "(the agent on its node restarted)"), file=sys.stderr)  # fmt: skip
                    inp.close()
            elif isinstance(msg, m.StepOutput) and msg.stream == 0:
                if inp is not None:  # the agent's credit: bytes written into the step's stdin
                    inp.acked = max(inp.acked, msg.seq)
            elif isinstance(msg, m.StepOutput):
                self._output(1 if msg.stream == 1 else 2, msg.node, msg.data)
            elif isinstance(msg, m.Ok):
                return msg.data
            elif isinstance(msg, m.Error):
                if self.asks > 1 and msg.code == 4:  # asked again: the job may have ended meanwhile
                    done = self._from_history()
                    if done is not None:
                        return done
                raise CliError(msg.message, msg.code if 1 <= msg.code <= 5 else 1)

    def _output(self, fd: int, node: int, data: bytes) -> None:
        if not self.lines:
            if self.open[fd]:
                self.open[fd] = write_step_output(fd, data)
            return
        buf = self.partial.setdefault((node, fd), bytearray())
        buf += data
        end = buf.rfind(b"\n")
        whole = b""
        if end >= 0:
            whole = bytes(buf[: end + 1])
            del buf[: end + 1]
        if len(buf) >= LINE_MAX:  # a line without end: in pieces
            whole += bytes(buf) + b"\n"
            buf.clear()
        self._write_lines(fd, node, whole)

    def _write_lines(self, fd: int, node: int, whole: bytes) -> None:
        if not whole or not self.open[fd]:
            return
        if 0 <= node < len(self.prefixes):
            label, parts = self.prefixes[node], whole.split(b"\n")  # lines end at \n only (a \r is a line's)
            whole = b"".join(label + p + b"\n" for p in parts[:-1]) + (label + parts[-1] if parts[-1] else b"")
        self.open[fd] = write_step_output(fd, whole)

    def _flush_lines(self) -> None:
        """The step ended: what is left of each node's last line."""
        for (node, fd), buf in sorted(self.partial.items()):
            if buf:
                self._write_lines(fd, node, bytes(buf) + (b"\n" if self.prefixes else b""))
                buf.clear()

    def _from_history(self) -> dict[str, Any] | None:
        """The step's end from the finished jobs (its answer did not reach
        this crun: a controller restart, or a reader too slow for too long)."""
        from crane.core import messages as m

        data = call(self.cfg, m.QueryJobs({"jobs": [self.job_id]}, history=True))
        for job in data.get("jobs") or []:
            for st in job.get("steps") or []:
                if st.get("step_id") == self.step_id and st.get("state") != JobState.RUNNING:
                    lost = st.get("output_lost") or 0
                    if not lost:
                        print("crun: the end of the step's output may be lost", file=sys.stderr)
                    return {"step": st, "lost": lost}
        return None

    def _handle_signals(self) -> None:
        while self.signals:
            signo, now = self.signals.pop(0)
            if signo == signal.SIGWINCH:
                if self.input is not None:
                    self.input.resize()
            elif signo == signal.SIGINT and now - self.last_int > DOUBLE_INT and not self.cancelled:
                self.last_int = now
                print("crun: interrupt (one more within 1 sec to abort)", file=sys.stderr)
                self._request(signal.SIGINT)
            else:
                self._cancel()

    def _cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        print(safe(f"crun: cancelling {'job' if self.own_job else 'step'} "
                   f"{self.job_id if self.own_job else f'{self.job_id}.{self.step_id}'}"), file=sys.stderr)  # fmt: skip
        self._request(None)

    def _request(self, signo: int | None) -> None:
        from crane.core import messages as m

        target = [self.job_id, None if self.own_job and signo is None else self.step_id]
        try:
            data = call(self.cfg, m.Cancel(ids=[target], signal=signo))
            if signo is not None and data.get("not_cancelled"):  # not running yet: cancel instead
                self._cancel()
        except CliError as e:
            if signo is None:
                print(safe(f"crun: cannot cancel: {e}"), file=sys.stderr)
            else:  # not running yet (crun's own job still pending): cancel instead
                self._cancel()


class Input:
    """crun's stdin to the step: read in chunks, sent one StepInput at a
    time (the next once it is answered) and never more than INPUT_WINDOW
    bytes ahead of the agent's credit (StepOutput stream 0); a chunk the
    controller refuses because the step is not running yet is sent again
    a little later. With --pty, also the terminal's size (StepResize)."""

    def __init__(self, job_id: int, step_id: int, pty: bool) -> None:
        from collections import deque

        self.job_id, self.step_id, self.pty = job_id, step_id, pty
        self.outbox: deque[Any] = deque()
        self.inflight: int | None = None  # request id of the message sent, unanswered
        self.retry_at = 0.0
        self.seq = 0
        self.sent = 0  # bytes read from stdin
        self.acked = 0  # bytes the agent wrote into the step's stdin
        self.open = True

    def close(self) -> None:
        """The step takes no more input: nothing more is read or sent."""
        self.open = False
        self.outbox.clear()
        self.inflight = None

    def wants_read(self) -> bool:
        from crane.core import messages as m

        return self.open and len(self.outbox) < 4 and self.sent - self.acked <= m.INPUT_WINDOW - m.INPUT_CHUNK

    def read(self) -> None:
        from crane.core import messages as m

        try:
            data = os.read(0, m.INPUT_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.open = False
            if not self.pty:
                self.outbox.append(m.StepInput(self.job_id, self.step_id, self.seq, b"", True))
                self.seq += 1
            return
        self.sent += len(data)
        self.outbox.append(m.StepInput(self.job_id, self.step_id, self.seq, data))
        self.seq += 1

    def resize(self) -> None:
        import fcntl
        import struct
        import termios

        from crane.core import messages as m

        try:
            rows, cols = struct.unpack("hhhh", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        except OSError:
            return
        if rows > 0 and cols > 0:
            self.outbox.append(m.StepResize(self.job_id, self.step_id, rows, cols))

    def pump(self, client: Any) -> None:
        if self.inflight is None and self.outbox and time.monotonic() >= self.retry_at:
            self.inflight = client.send(self.outbox[0])

    def answered(self, msg: Any) -> None:
        from crane.core import messages as m

        self.inflight = None
        if isinstance(msg, m.Ok):
            self.outbox.popleft()
        elif isinstance(msg, m.Error) and msg.code == 4:  # not running (yet): again a little later
            self.retry_at = time.monotonic() + 0.2
        else:
            print(safe(f"crun: input not sent: {getattr(msg, 'message', msg)}"), file=sys.stderr)
            self.outbox.clear()
            self.open = False


def main() -> None:
    click_main(command, PROG)


for _opt in click_options():
    command = _opt(command)
