"""The controller's durable state: SQLite in WAL mode, written by one thread.

The event loop never touches the disk for writes: it queues operations, and the
writer thread commits everything queued so far in one transaction (group
commit). ``barrier(callback)`` calls back on the loop once every operation
queued before it is committed, which is how "acknowledged means on disk" is
implemented for submissions and cancels. When that commit fails,
``barrier(callback, on_error)`` calls ``on_error(reason)`` on the loop
instead, so whoever waited can say so; a barrier without ``on_error`` is
then dropped (logged).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import secrets
import sqlite3
import stat
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import msgpack

from crane.core.ids import ACTIVE

log = logging.getLogger("crane.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    uid INTEGER NOT NULL,
    end_time REAL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_end ON jobs(end_time);
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS launches (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""

ACTIVE_STATES = tuple(sorted(str(s) for s in ACTIVE))  # jobs loaded back at start


def connect(path: str) -> sqlite3.Connection:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    private(path)  # files left by an older version or another umask
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: every commit fsyncs the WAL, so a barrier's callback (an
    # acknowledged submission or cancel) runs only once the group commit would
    # survive a power cut (NORMAL survives a process crash only). The group
    # commit pays one fsync per batch, not per request (bench/durability.py).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(SCHEMA)
    private(path)  # SQLite creates -wal and -shm with the database file's mode
    return conn


def private(path: str) -> None:
    """The database and its WAL and shared-memory files: 0600 (job scripts
    and environments are in them). Changed through a descriptor opened
    without following symlinks: an O_PATH one, because closing any other
    descriptor of these files drops every POSIX lock this process holds on
    them, SQLite's included; another process (the crash storm's integrity
    check, an admin's sqlite3) then took itself for the first user of the
    WAL, reset the shared-memory file under our mapping, and the controller
    died of SIGBUS."""
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            fd = os.open(p, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # absent, or a symlink: not changed through it
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_mode & 0o077:
                os.chmod(f"/proc/self/fd/{fd}", 0o600)  # fchmod refuses O_PATH descriptors
        finally:
            os.close(fd)


def incarnation(conn: sqlite3.Connection) -> int:
    """This database's incarnation: a random id made once with it and kept in
    it (the same across controller restarts, another for a replaced
    database). Launches carry it (crane.actors.job): job ids start at 1 again
    in a new database, and an agent tells the new job N from the old one by it."""
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('incarnation', ?)", (secrets.randbits(62) + 1,))
    return int(conn.execute("SELECT value FROM meta WHERE key='incarnation'").fetchone()[0])


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self.read = connect(path)  # loop-side reads only
        self._q: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.queued = 0
        self.committed = 0
        self.failed = False  # a batch failed to commit (see failures for how many)
        self.failures = 0
        self.incarnation = incarnation(self.read)
        # the highest job id ever written: a lookup above it needs no query
        # (a Cancel or QueryJobs naming 100,000 ids that no job has cost two
        # SQLite reads per id on the event loop, ~1.3 s of stall per request)
        self.top = int(self.read.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0])

    # ------------------------------------------------------------ loading

    def load(self) -> tuple[int, list[dict[str, Any]], list[tuple[str, str, Any]], dict[str, Any]]:
        """(next job id, active job records, entities, node records)."""
        cur = self.read.execute("SELECT value FROM meta WHERE key='next_job_id'")
        row = cur.fetchone()
        next_id = row[0] if row else 1
        cur = self.read.execute("SELECT max(id) FROM jobs")
        top = cur.fetchone()[0]
        if top is not None:
            next_id = max(next_id, top + 1)
        marks = ",".join("?" * len(ACTIVE_STATES))
        jobs = [
            unpack(d)
            for (d,) in self.read.execute(
                f"SELECT data FROM jobs WHERE state IN ({marks}) ORDER BY id", ACTIVE_STATES
            )
        ]
        ents = [(k, n, unpack(d)) for k, n, d in self.read.execute("SELECT kind, name, data FROM entities")]
        nodes = {n: unpack(d) for n, d in self.read.execute("SELECT name, data FROM nodes")}
        return next_id, jobs, ents, nodes

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        if not 0 < job_id <= self.top:  # never written (SQLite integers are 64-bit signed)
            return None
        row = self.read.execute("SELECT data FROM jobs WHERE id=?", (job_id,)).fetchone()
        return unpack(row[0]) if row else None

    def get_launch(self, job_id: int) -> dict[str, Any] | None:
        row = self.read.execute("SELECT data FROM launches WHERE id=?", (job_id,)).fetchone()
        return unpack(row[0]) if row else None

    def finished_jobs(self, ids: list[int] | None = None, limit: int = 100_000,
                      ended_after: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Finished job records, oldest first: the newest ``limit``, or only
        ``ids`` (looked up by key, not by reading the whole history); with
        ``ended_after``, only those that ended then or later (by index)."""
        marks = ",".join("?" * len(ACTIVE_STATES))
        if ids is not None:
            wanted = sorted({i for i in ids if isinstance(i, int) and 0 < i <= self.top})[:limit]
            out = []
            for start in range(0, len(wanted), 500):  # SQLite's variable limit
                chunk = wanted[start : start + 500]
                rows = self.read.execute(
                    f"SELECT data FROM jobs WHERE id IN ({','.join('?' * len(chunk))}) "
                    f"AND state NOT IN ({marks}) ORDER BY id", (*chunk, *ACTIVE_STATES),
                )  # fmt: skip
                out += [unpack(d) for (d,) in rows]
            return out
        since = "" if ended_after is None else " AND end_time >= ?"
        rows = self.read.execute(
            f"SELECT data FROM jobs WHERE state NOT IN ({marks}){since} ORDER BY id DESC LIMIT ?",
            (*ACTIVE_STATES, *(() if ended_after is None else (float(ended_after),)), limit),
        )
        return [unpack(d) for (d,) in rows][::-1]

    # ------------------------------------------------------------ writing

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()

    def put_job(self, rec: dict[str, Any]) -> None:
        # packed here, on the loop, so the writer never sees a record mid-change
        self.top = max(self.top, rec["id"])
        self._push(("job", (rec["id"], rec["state"], rec["uid"], rec.get("end_time"), pack(rec))))

    @staticmethod
    def pack(obj: Any) -> bytes:
        return pack(obj)

    def put_launch(self, job_id: int, blob: bytes) -> None:
        self._push(("launch", (job_id, blob)))

    def put_next_id(self, next_id: int) -> None:
        self._push(("meta", ("next_job_id", next_id)))

    def put_entity(self, kind: str, name: str, data: Any | None) -> None:
        self._push(("entity", (kind, name, data)))

    def put_node(self, name: str, data: dict[str, Any]) -> None:
        self._push(("node", (name, data)))

    def barrier(self, callback: Callable[[], None], on_error: Callable[[str], None] | None = None) -> None:
        """``callback()`` on the loop once everything queued before is
        committed; if that commit fails, ``on_error(reason)`` instead."""
        self._push(("barrier", (callback, on_error)))

    def _push(self, item: tuple[str, Any]) -> None:
        self.queued += 1
        self._q.put(item)

    def stop(self) -> None:
        if self._thread:
            self._q.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _writer(self) -> None:
        conn = connect(self.path)
        done = False
        while not done:
            item = self._q.get()
            batch = [item]
            while True:  # group commit: take what is already queued
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
                if len(batch) >= 20_000:
                    break
            # taken first: a batch that fails halfway still answers every barrier in it
            callbacks: list[tuple[Callable[[], None], Callable[[str], None] | None]] = [
                it[1] for it in batch if it is not None and it[0] == "barrier"
            ]
            done = done or None in batch
            jobs: dict[int, tuple[Any, ...]] = {}
            launches: list[tuple[int, bytes]] = []
            try:
                conn.execute("BEGIN")
                for it in batch:
                    if it is None:
                        continue
                    kind, val = it
                    if kind == "job":
                        jobs[val[0]] = val
                    elif kind == "launch":
                        launches.append(val)
                    elif kind == "meta":
                        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", val)
                    elif kind == "entity":
                        k, n, d = val
                        if d is None:
                            conn.execute("DELETE FROM entities WHERE kind=? AND name=?", (k, n))
                        else:
                            conn.execute("INSERT OR REPLACE INTO entities VALUES (?, ?, ?)", (k, n, pack(d)))
                    elif kind == "node":
                        conn.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?)", (val[0], pack(val[1])))
                if launches:
                    conn.executemany("INSERT OR REPLACE INTO launches VALUES (?, ?)", launches)
                if jobs:
                    conn.executemany("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?)", jobs.values())
                conn.execute("COMMIT")
                self.committed += len(batch)
            except Exception as e:
                log.exception("store write failed: %d operations not saved", len(batch))
                self.failed = True
                self.failures += 1
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                reason = " ".join(str(e).split()) or type(e).__name__
                errors = [partial(on_error, reason) for _cb, on_error in callbacks if on_error is not None]
                if len(errors) < len(callbacks):
                    log.error("%d barriers without an error path dropped", len(callbacks) - len(errors))
                self._call_back(errors)
                continue
            self._call_back([cb for cb, _on_error in callbacks])
        conn.close()

    def _call_back(self, callbacks: Sequence[Callable[[], None]]) -> None:
        if callbacks and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_run_all, callbacks)
            except RuntimeError:  # loop closed at shutdown
                pass


def _run_all(callbacks: Sequence[Callable[[], None]]) -> None:
    for cb in callbacks:
        try:
            cb()
        except Exception:
            log.exception("store barrier callback failed")
