"""What an ended step and a released job leave behind, removed after their
end is reported: the cgroup directories (in every hierarchy, with what the
kernel ties to them: memory accounting, device rules), the step's record
and exit-status file, the job's batch script; and the users file that
crane-pam-check reads.

All of it runs in the cleanup thread (``offloop.cleanup``), one batch for
what ended meanwhile. What fails (a directory the kernel refuses to remove: a
process or a child cgroup is left in it) is logged once and tried again
later, with a growing pause (``RETRY_FIRST`` .. ``RETRY_MAX``), until it is
gone: never dropped. A new launch of the same job takes its directories and
files over: what belongs to a step that runs again is no longer removed, and
the launch waits for a batch of that job in progress (a few rmdirs), so
that nothing is removed under it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from crane.agent import cgroup as cgmod
from crane.agent import offloop, statedir

log = logging.getLogger("craned.reclaim")

RETRY_FIRST = 0.5
RETRY_MAX = 10.0


@dataclass(slots=True)
class Item:
    """One thing to remove: directories (bottom-up, sub-directories first) or files."""

    what: str  # for the log: "step 7.1", "job 7"
    job_id: int
    step_id: int | None  # None: the whole job
    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    failed: str = ""  # why the last attempt failed ("" before any)
    next_try: float = 0.0  # monotonic time of the next attempt
    pause: float = RETRY_FIRST  # before the attempt after a failure


def attempt(items: list[Item]) -> list[str]:
    """Remove what ``items`` name (in the cleanup thread); per item, '' when
    done, else why not."""
    out = []
    for item in items:
        why = ""
        for d in item.dirs:
            why = cgmod.rmdir_tree(d) or why
        for f in item.files:
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
            except OSError as e:
                why = why or f"{f}: {e.strerror}"
        out.append(why)
    return out


class Reclaimer:
    """What is left to remove, and the one worker that removes it: the items
    queued while the loop runs go to the cleanup thread together (a burst of
    ends is one hand-off), failed ones again after their pause."""

    def __init__(
        self, scope: str, mode: str, state_dir: str, running: Callable[[int, int | None], bool]
    ) -> None:
        self.scope = scope
        self.mode = mode
        self.state_dir = state_dir
        self.running = running  # running(job, step or None): a run of it is registered here
        self.items: list[Item] = []
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.batch: asyncio.Future[list[str]] | None = None  # the attempt in progress
        self.batch_jobs: set[int] = set()
        self.attempts = 0  # attempts started
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []  # (attempt awaited, its future)
        self._roots: list[str] | None = None

    def roots(self) -> list[str]:
        if self._roots is None:
            try:
                self._roots = cgmod.hierarchy_roots(self.mode)
            except (OSError, ValueError) as e:
                log.debug("no cgroup hierarchies: %s", e)
                self._roots = []
        return self._roots

    # ------------------------------------------------------------ queueing

    def step(self, cg: cgmod.StepCgroup, files: list[str]) -> None:
        """A step ended (and its end was reported): its cgroup and files go."""
        what = f"step {cg.job_id}.{cg.step_id}"
        self._add(Item(what, cg.job_id, cg.step_id, list(cg.paths.values()), files))

    def job(self, job_id: int, files: list[str]) -> None:
        """A job was released here: its cgroup directories (every step's too) and files go."""
        rel = f"{self.scope}/job_{int(job_id)}"
        dirs = [os.path.join(r, rel) for r in self.roots()]
        self._add(Item(f"job {job_id}", int(job_id), None, dirs, files))

    def _add(self, item: Item) -> None:
        self.items.append(item)
        self._kick()

    def _kick(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._work())
        self.wake.set()

    # ------------------------------------------------------------ the agent's questions

    def in_progress(self, job_id: int) -> asyncio.Future[list[str]] | None:
        """The attempt running for ``job_id`` now (a launch of that job waits for it)."""
        b = self.batch
        return b if b is not None and not b.done() and job_id in self.batch_jobs else None

    async def settled(self, job_id: int) -> None:
        """Return after an attempt at what is queued for ``job_id`` now (at
        once if nothing is); its pause between retries is cut short."""
        mine = [i for i in self.items if i.job_id == job_id]
        if not mine:
            return
        for i in mine:
            i.next_try = 0.0
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append((self.attempts + 1, fut))  # the next attempt to start takes them
        self._kick()
        await fut

    def pending(self) -> list[str]:
        """What is left to remove, and why (for the log and the tests)."""
        return [f"{i.what}: {i.failed}" for i in self.items]

    # ------------------------------------------------------------ the worker

    def _current(self) -> None:
        """Drop what a new run of the job took over (its directories and files are the new run's)."""
        keep = []
        for item in self.items:
            if self.running(item.job_id, item.step_id):
                log.info("%s: left to its new run", item.what)
                continue
            keep.append(item)
        self.items = keep

    def _resolve(self, upto: int) -> None:
        for entry in [x for x in self.waiters if x[0] <= upto]:
            self.waiters.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)

    async def _work(self) -> None:
        try:
            while True:
                self.wake.clear()
                await asyncio.sleep(0)  # what the current loop turn queues joins this batch
                self._current()
                if not self.items:
                    break
                now = time.monotonic()
                ready = [i for i in self.items if i.next_try <= now]
                if not ready:
                    first = min(i.next_try for i in self.items)
                    try:
                        await asyncio.wait_for(self.wake.wait(), first - now)
                    except TimeoutError:
                        pass
                    continue
                self.attempts += 1
                done = self.attempts
                self.batch = offloop.cleanup(attempt, ready)
                self.batch_jobs = {i.job_id for i in ready}
                try:
                    results = await asyncio.shield(self.batch)
                except Exception as e:  # noqa: BLE001 - logged; the items are tried again
                    log.exception("cleanup failed")
                    results = [f"{type(e).__name__}: {e}"] * len(ready)
                finally:
                    self.batch = None
                    self.batch_jobs = set()
                now = time.monotonic()
                for item, why in zip(ready, results, strict=True):
                    if not why:
                        if item.failed:
                            log.info("%s: removed at last", item.what)
                        self.items.remove(item)
                        continue
                    if not item.failed:
                        log.warning(
                            "%s: cannot remove (%s); tried again until it goes", item.what, why
                        )
                    item.failed = why
                    item.next_try = now + item.pause
                    item.pause = min(item.pause * 2, RETRY_MAX)
                self._resolve(done)
        finally:
            self._resolve(self.attempts + 1)  # nothing left (or the loop ends): nobody waits


class UsersFile:
    """The uids with a running step here (``<state dir>/users``, read by
    crane-pam-check), rewritten after every change: at once by a launch
    (the step's owner must be listed before the step runs), in the cleanup
    thread after an end (one write for a burst of ends). A lock and a
    sequence number keep an older content from replacing a newer one."""

    def __init__(self, path: str, uids: Callable[[], list[int]]) -> None:
        self.path = path
        self.uids = uids
        self.lock = threading.Lock()
        self.seq = 0  # of the last content taken (on the loop)
        self.written = 0  # seq of the content on disk
        self.task: asyncio.Task[None] | None = None
        self.dirty = False

    def _content(self) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, "".join(f"{u}\n" for u in sorted(set(self.uids()))).encode()

    def _write(self, seq: int, data: bytes) -> None:
        with self.lock:
            if seq <= self.written:
                return  # a newer content is there already
            try:
                statedir.replace(self.path, data)
            except OSError as e:
                log.warning("cannot write %s: %s", self.path, e)
            self.written = seq

    def write_now(self) -> None:
        """Write at once, on the caller's thread (a launch)."""
        self._write(*self._content())

    def changed(self) -> None:
        """Rewrite soon, off the loop (coalesced)."""
        self.dirty = True
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._flusher())

    async def _flusher(self) -> None:
        while self.dirty:
            self.dirty = False
            seq, data = self._content()
            await offloop.cleanup(self._write, seq, data)

    async def flush(self) -> None:
        """Return once the content as of now is on disk."""
        if self.task is not None and not self.task.done():
            await asyncio.shield(self.task)
