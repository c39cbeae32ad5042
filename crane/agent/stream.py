"""Live output of a step (crun): the step's stdout/stderr are pipes the agent
reads in its event loop (non-blocking) and sends as ``StepOutput`` chunks on
its link to the controller.

Bounds, agent side: one chunk (at most CHUNK bytes) is held per stream. When
the link refuses a send (its queue to the controller is full: ZeroMQ's send
high-water mark, or the controller is away), the agent stops reading that
pipe and tries again a little later; the pipe fills and the step's writes
block. A fast writer is slowed down, never buffered without bound here.
The agent never runs user code: it only reads bytes from the pipes.

Input (crun's stdin, ``StepInput``): the agent writes it into the step's
stdin (a pipe, or the master of the step's pseudo-terminal with ``pty``)
without blocking, holding at most INPUT_LIMIT bytes per step. crun sends
no more than that ahead of the agent's credit (``StepOutput`` stream 0:
bytes written so far), so a step that does not read its stdin stops crun's
reading, not the agent; input beyond the limit (a crun that ignores the
credit) is dropped and counted in the log.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import termios
from collections.abc import Callable
from typing import Any

from crane.core import messages as m

log = logging.getLogger("craned.stream")
CHUNK = 32 * 1024  # bytes per StepOutput
RETRY = 0.05  # seconds before a refused send is tried again
STDIN, STDOUT, STDERR, PTY = 0, 1, 2, 3  # spec["stream"] members
INPUT_LIMIT = m.INPUT_WINDOW  # bytes of input held per step, at most


class Pipe:
    """One stream of one step: the read end of its pipe."""

    def __init__(self, job_id: int, step_id: int, stream: int, fd: int,
                 send: Callable[[m.Message], bool], node: int = 0) -> None:  # fmt: skip
        self.job_id, self.step_id, self.stream = job_id, step_id, stream
        self.node = node  # this node's index among the step's (crun keeps lines of each node whole)
        self.fd = fd
        self.send = send
        self.seq = 0
        self.pending: bytes | None = None  # a chunk the link refused
        self.eof = False
        self.closed = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.retry: asyncio.TimerHandle | None = None
        os.set_blocking(fd, False)
        self.reading = False
        self._resume()

    def _resume(self) -> None:
        if not self.reading and not self.eof:
            self.loop.add_reader(self.fd, self._readable)
            self.reading = True

    def _pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _push(self, data: bytes) -> bool:
        if self.send(m.StepOutput(self.job_id, self.step_id, self.stream, data, self.seq, self.node)):
            self.seq += 1
            return True
        self.pending = data
        return False

    def _readable(self) -> None:
        if self.pending is not None:
            return
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: a pty whose every slave is closed (its end)
                log.warning("step %d.%d: read of stream %d failed: %s", self.job_id, self.step_id, self.stream, e)
            data = b""
        if not data:
            self.eof = True
            self._pause()
            self._close()
            return
        if not self._push(data):  # the link is full: stop reading, the step's writes block
            self._pause()
            self.retry = self.loop.call_later(RETRY, self._again)

    def _again(self) -> None:
        self.retry = None
        data, self.pending = self.pending, None
        if data is not None and not self._push(data):
            self.retry = self.loop.call_later(RETRY, self._again)
            return
        self._resume()

    def _close(self) -> None:
        if self.pending is None and self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
            self.closed.set()

    async def drained(self, timeout: float) -> None:
        """Wait until every byte written has been sent (EOF reached and no
        chunk pending); after ``timeout`` give up (what is left is dropped)."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            log.warning("step %d.%d: stream %d not drained in %.0fs: rest dropped",
                        self.job_id, self.step_id, self.stream, timeout)  # fmt: skip
            self.abort()

    def abort(self) -> None:
        self._pause()
        if self.retry is not None:
            self.retry.cancel()
        self.pending = None
        self._close()


class Input:
    """The step's stdin, agent side: the write end of its stdin pipe (or a
    dup of its pty master), a bounded queue, the credit sent back."""

    def __init__(self, job_id: int, step_id: int, fd: int, send: Callable[[m.Message], bool],
                 tty: bool = False) -> None:  # fmt: skip
        self.job_id, self.step_id, self.fd, self.send, self.tty = job_id, step_id, fd, send, tty
        self.queue = bytearray()
        self.next_seq = 0
        self.written = 0  # bytes taken from the queue (written, or dropped after the step closed its stdin)
        self.dropped = 0  # bytes beyond INPUT_LIMIT
        self.eof = False
        self.writing = False
        self.credit_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        INPUTS[(job_id, step_id)] = self

    def take(self, msg: m.StepInput) -> None:
        if self.fd < 0 or msg.seq < self.next_seq or self.eof:
            return  # gone, sent again, or after the end
        self.next_seq = msg.seq + 1
        room = max(INPUT_LIMIT - len(self.queue), 0)
        if len(msg.data) > room:
            self.dropped += len(msg.data) - room
            log.warning("step %d.%d: input beyond %d bytes held: %d bytes dropped",
                        self.job_id, self.step_id, INPUT_LIMIT, self.dropped)  # fmt: skip
        self.queue += msg.data[:room]
        self.eof = msg.eof and not self.tty  # a terminal is not closed: the user types exit or ^D
        self._write()

    def resize(self, msg: m.StepResize) -> None:
        if self.tty and self.fd >= 0:
            try:
                fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", msg.rows, msg.cols, 0, 0))
            except OSError as e:
                log.debug("step %d.%d: resize: %s", self.job_id, self.step_id, e)

    def _write(self) -> None:
        before = self.written
        while self.queue and self.fd >= 0:
            try:
                n = os.write(self.fd, self.queue[:CHUNK])
            except BlockingIOError:
                break
            except OSError:  # the step closed its stdin (EPIPE) or its terminal is gone
                n = len(self.queue)
            del self.queue[:n]
            self.written += n
        if self.queue and not self.writing and self.fd >= 0:
            self.loop.add_writer(self.fd, self._write)
            self.writing = True
        elif not self.queue and self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        if self.eof and not self.queue:
            self._close()
        if self.written != before:
            self._credit()

    def _credit(self) -> None:
        self.credit_timer = None
        if not self.send(m.StepOutput(self.job_id, self.step_id, STDIN, b"", self.written)):
            self.credit_timer = self.loop.call_later(RETRY, self._credit)  # the link is full: later

    def _close(self) -> None:
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    async def drained(self, timeout: float) -> None:
        """The step ended: input not yet written is dropped."""
        self.abort()

    def abort(self) -> None:
        self._close()
        if self.credit_timer is not None:
            self.credit_timer.cancel()
        INPUTS.pop((self.job_id, self.step_id), None)


INPUTS: dict[tuple[int, int], Input] = {}  # this agent's steps that take input


def on_input(msg: m.StepInput | m.StepResize) -> None:
    """A StepInput or StepResize from the controller (its owner checked
    there): for a step here that takes input, else ignored."""
    inp = INPUTS.get((msg.job_id, msg.step_id))
    if inp is None:
        return
    if isinstance(msg, m.StepInput):
        inp.take(msg)
    else:
        inp.resize(msg)


# the wrapper's own ends of the step's pipes: opened read-only through /proc they give a new read end
WRAPPER_FDS = {STDOUT: 1, STDERR: 2}
INPUT_CLOSED = -1  # StepOutput(stream=STDIN, seq=INPUT_CLOSED): the step's input is gone (crun stops sending)


def reattach(run: Any, send: Callable[[m.Message], bool]) -> None:
    """An adopted step (the agent restarted) that streamed to a crun: read
    its stdout/stderr again: the wrapper keeps a read end of each (see
    ``launch.WRAPPER``), so the step was not killed by SIGPIPE,
    its writes blocked while the pipes were full, and its output goes on to
    crun (a new read end is opened through the wrapper's fds 1 and 2). Its stdin cannot come back (the old agent held the only write
    end: the step read end of file) nor can a terminal (the master closed:
    the step got SIGHUP): crun is told its input is closed."""
    flags = run.spec.get("stream") or []
    if not flags:
        return
    node = int(run.spec.get("node_index") or 0)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # a direct call (no loop): nothing to read with
    if STDIN in flags or PTY in flags:  # once the link is up (after our Register on it)
        notice = m.StepOutput(run.job_id, run.step_id, STDIN, b"", INPUT_CLOSED, node)
        loop.call_soon(_send_until_taken, loop, send, notice, 600)
    if PTY in flags:
        return
    wrapper = _wrapper_of(run.cg.pids())
    if wrapper is None:
        log.warning("step %d.%d: its wrapper is gone: its live output is lost", run.job_id, run.step_id)
        return
    for stream, held in WRAPPER_FDS.items():
        if stream not in flags:
            continue
        fd = _reopen_pipe(wrapper, held, _recorded_id(run.spec, stream))
        if fd < 0:
            log.warning("step %d.%d: stream %d cannot be read again", run.job_id, run.step_id, stream)
            continue
        run.pipes.append(Pipe(run.job_id, run.step_id, stream, fd, send, node))
        log.info("step %d.%d: stream %d read again", run.job_id, run.step_id, stream)


def _send_until_taken(loop: asyncio.AbstractEventLoop, send: Callable[[m.Message], bool], msg: m.Message,
                      tries: int) -> None:  # fmt: skip
    if not send(msg) and tries > 1:
        loop.call_later(0.1, _send_until_taken, loop, send, msg, tries - 1)


def _wrapper_of(pids: set[int]) -> int | None:
    """The step's wrapper among ``pids``: ``/bin/sh -c WRAPPER crane-step ...``."""
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 3 and argv[1] == b"-c" and argv[3] == b"crane-step":
            return pid
    return None


def pipe_ids(fds: dict[int, tuple[int, int]]) -> dict[str, list[int]]:
    """``{stream: [st_dev, st_ino]}`` of the step's output pipes (saved with
    the step's record): the only pipes ``reattach`` opens again."""
    out: dict[str, list[int]] = {}
    for s, (r, _w) in fds.items():
        if s in (STDOUT, STDERR):
            st = os.fstat(r)
            out[str(s)] = [st.st_dev, st.st_ino]
    return out


def _recorded_id(spec: dict[str, Any], stream: int) -> tuple[int, int] | None:
    ids = spec.get("pipe_ids")
    v = ids.get(str(stream)) if isinstance(ids, dict) else None
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return int(v[0]), int(v[1])
    return None


def _reopen_pipe(pid: int, fdnum: int, expected: tuple[int, int] | None = None) -> int:
    """A new read end of the pipe ``pid`` has as ``fdnum``, or -1. The
    link is a user process's (any process of the step may pose as its
    wrapper, holding any pipe or FIFO it could open for writing): looked at
    through O_PATH (no open side effect) and opened only if it is the very
    pipe the agent made for the step (``expected``: its device and inode,
    from the step's record; without it, nothing is opened)."""
    import stat

    if expected is None:
        return -1
    link = f"/proc/{pid}/fd/{fdnum}"
    try:
        ref = os.open(link, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        # an anonymous pipe only ("pipe:[inode]", as the agent made it): a
        # named FIFO the user holds through O_PATH (a root daemon's 0600
        # FIFO, say) is never opened by root on their behalf; and only the
        # step's own (another user's pipe a process of the step holds is not)
        target = os.readlink(f"/proc/self/fd/{ref}")
        st = os.fstat(ref)
        if not stat.S_ISFIFO(st.st_mode) or not target.startswith("pipe:[") or (st.st_dev, st.st_ino) != expected:
            return -1
        return os.open(f"/proc/self/fd/{ref}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1
    finally:
        os.close(ref)


def open_pipes(job_id: int, step_id: int, which: list[int],
               owner: tuple[int, int] | None = None) -> dict[int, tuple[int, int]]:  # fmt: skip
    """``{stream: (read_fd, write_fd)}`` for the streams in ``which``; both
    ends close-on-exec (the child dup2s the write end onto 1 or 2). The
    output pipes belong to ``owner`` (uid, gid): the step's wrapper, the
    user, opens a read end of each through /proc to keep them open (see
    ``reattach``), which a root-owned pipe (mode 0600) refuses."""
    out: dict[int, tuple[int, int]] = {}
    try:
        for s in which:
            out[s] = os.pipe()
            if owner is not None and s != STDIN and os.geteuid() == 0:
                os.fchown(out[s][0], *owner)
    except OSError:
        close_all(out)
        raise
    return out


def close_all(pipes: dict[int, tuple[int, int]]) -> None:
    for r, w in pipes.values():
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass
