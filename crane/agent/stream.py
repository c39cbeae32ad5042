"""Live output of a step (crun): the step's stdout/stderr are pipes the agent
reads in its event loop (non-blocking) and sends as ``StepOutput`` chunks on
its link to the controller.

Bounds, agent side: one chunk (at most CHUNK bytes) is held per stream. When
the link refuses a send (its queue to the controller is full: ZeroMQ's send
high-water mark, or the controller is away), the agent stops reading that
pipe and tries again a little later; the pipe fills and the step's writes
block. A fast writer is slowed down, never buffered without bound here.
The agent never runs user code: it only reads bytes from the pipes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from crane.core import messages as m

log = logging.getLogger("craned.stream")
CHUNK = 32 * 1024  # bytes per StepOutput
RETRY = 0.05  # seconds before a refused send is tried again
STDOUT, STDERR = 1, 2


class Pipe:
    """One stream of one step: the read end of its pipe."""

    def __init__(self, job_id: int, step_id: int, stream: int, fd: int,
                 send: Callable[[m.Message], bool]) -> None:  # fmt: skip
        self.job_id, self.step_id, self.stream = job_id, step_id, stream
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
        if self.send(m.StepOutput(self.job_id, self.step_id, self.stream, data, self.seq)):
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


def open_pipes(job_id: int, step_id: int, which: list[int]) -> dict[int, tuple[int, int]]:
    """``{stream: (read_fd, write_fd)}`` for the streams in ``which``; both
    ends close-on-exec (the child dup2s the write end onto 1 or 2)."""
    out: dict[int, tuple[int, int]] = {}
    try:
        for s in which:
            out[s] = os.pipe()
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
