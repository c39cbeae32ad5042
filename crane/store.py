"""The controller's durable state: SQLite in WAL mode, written by one thread.

The event loop never touches the disk for writes: it queues operations, and the
writer thread commits everything queued so far in one transaction (group
commit). ``barrier(callback)`` calls back on the loop once every operation
queued before it is committed, which is how "acknowledged means on disk" is
implemented for submissions and cancels. When that commit fails,
``barrier(callback, on_error)`` calls ``on_error(reason)`` on the loop
instead, so whoever waited can say so; a barrier without ``on_error`` is
then dropped (logged).

Pending jobs cancelled together (``put_cancelled``) are committed as one row
of the ``cancels`` table per range of ids (the fields every one of them got),
not one rewritten record each; reads lay those fields over the rows
(``record``), and the writer folds them into the rows once idle.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
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
    data BLOB NOT NULL,
    patch BLOB
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_end ON jobs(end_time);
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS launches (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cancels (lo INTEGER PRIMARY KEY, hi INTEGER NOT NULL, patch BLOB NOT NULL);
"""
FOLD_CHUNK = 500  # rows a background fold of a bulk cancel rewrites per transaction
FOLD_AFTER = 0.5  # seconds without writes before a fold starts (a request waits for one chunk at most)

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
    if "patch" not in {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}:  # a database of before
        conn.execute("ALTER TABLE jobs ADD COLUMN patch BLOB")
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


def record(data: bytes, *patches: bytes | None) -> dict[str, Any]:
    """A job's stored record: its packed record, with the fields of a bulk
    cancel laid over it when it has them (``Store.put_cancelled``)."""
    rec: dict[str, Any] = unpack(data)
    for patch in patches:
        if patch is not None:
            rec.update(unpack(patch))
    return rec


class Ranges:
    """Disjoint inclusive id ranges, each with a packed patch and its end
    time: the bulk cancels committed but not yet folded into their rows.
    Many at once stay cheap (a cancel of alternately held and queued jobs
    gives a range per job): added in bulk, dropped lazily."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[int, bytes, float | None]] = {}  # lo -> (hi, patch, end)
        self.los: list[int] = []  # sorted; may still hold los folded since (not in live)

    def __len__(self) -> int:
        return len(self.live)

    def add(self, spans: Sequence[tuple[int, int]], patch: bytes, end: float | None) -> None:
        for lo, hi in spans:
            self.live[lo] = (hi, patch, end)
        los = [lo for lo, _hi in spans]
        if self.los and los and min(los) <= self.los[-1]:
            self.los = sorted(self.live)
        else:
            self.los += sorted(los)

    def entry(self, job_id: int) -> tuple[int, bytes, float | None] | None:
        # disjoint ranges: only the nearest start at or below the id can hold it
        i = bisect.bisect_right(self.los, job_id) - 1
        got = self.live.get(self.los[i]) if i >= 0 else None
        return got if got is not None and got[0] >= job_id else None

    def find(self, job_id: int) -> bytes | None:
        got = self.entry(job_id) if self.live else None
        return got[1] if got is not None else None

    def folded(self, parts: Sequence[tuple[int, int]]) -> None:
        """The ids ``lo``..``upto`` of each range starting at ``lo`` are folded into their rows."""
        for lo, upto in parts:
            got = self.live.pop(lo, None)
            if got is not None and upto < got[0]:
                self.live[upto + 1] = got
                bisect.insort(self.los, upto + 1)
        if len(self.los) > 2 * len(self.live) + 64:
            self.los = sorted(self.live)

    def spans(self, ended_after: float | None = None) -> list[tuple[int, int]]:
        return sorted((lo, hi) for lo, (hi, _p, end) in self.live.items()
                      if ended_after is None or (end is not None and end >= ended_after))  # fmt: skip


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
        # bulk cancels committed and not yet folded into their rows (the writer
        # folds them when idle): read over the rows (``record``) until then
        self.cancels = Ranges()
        for lo, hi, patch in self.read.execute("SELECT lo, hi, patch FROM cancels ORDER BY lo"):
            self.cancels.add([(lo, hi)], patch, unpack(patch).get("end_time"))
        self._fold: collections.deque[tuple[int, int, bytes]] = collections.deque()  # the writer's, oldest first

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
        find = self.cancels.find
        jobs = [
            record(d, p)
            for i, d, p in self.read.execute(
                f"SELECT id, data, patch FROM jobs WHERE state IN ({marks}) ORDER BY id", ACTIVE_STATES
            )
            if find(i) is None  # cancelled in bulk: ended
        ]
        ents = [(k, n, unpack(d)) for k, n, d in self.read.execute("SELECT kind, name, data FROM entities")]
        nodes = {n: unpack(d) for n, d in self.read.execute("SELECT name, data FROM nodes")}
        return next_id, jobs, ents, nodes

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        if not 0 < job_id <= self.top:  # never written (SQLite integers are 64-bit signed)
            return None
        row = self.read.execute("SELECT data, patch FROM jobs WHERE id=?", (job_id,)).fetchone()
        return record(row[0], row[1], self.cancels.find(job_id)) if row else None

    def get_launch(self, job_id: int) -> dict[str, Any] | None:
        row = self.read.execute("SELECT data FROM launches WHERE id=?", (job_id,)).fetchone()
        return unpack(row[0]) if row else None

    def finished_jobs(self, ids: list[int] | None = None, limit: int = 100_000,
                      ended_after: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Finished job records, oldest first: the newest ``limit``, or only
        ``ids`` (looked up by key, not by reading the whole history); with
        ``ended_after``, only those that ended then or later (by index)."""
        marks = ",".join("?" * len(ACTIVE_STATES))
        find = self.cancels.find
        if ids is not None:
            wanted = sorted({i for i in ids if isinstance(i, int) and 0 < i <= self.top})[:limit]
            out = []
            for start in range(0, len(wanted), 500):  # SQLite's variable limit
                chunk = wanted[start : start + 500]
                # finished rows, and rows a bulk cancel not yet folded ended
                rows = self.read.execute(
                    f"SELECT id, state, data, patch FROM jobs WHERE id IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY id", chunk,
                )  # fmt: skip
                for i, state, d, p in rows:
                    over = find(i)
                    if over is not None or state not in ACTIVE_STATES:
                        out.append(record(d, p, over))
            return out
        since = "" if ended_after is None else " AND end_time >= ?"
        after = () if ended_after is None else (float(ended_after),)
        spans = self.cancels.spans(ended_after)  # ended by a bulk cancel maybe not yet folded
        if spans:  # one snapshot: a row folded between two reads is in one of them
            self.read.execute("BEGIN")
        try:
            rows = self.read.execute(
                f"SELECT id, data, patch FROM jobs WHERE state NOT IN ({marks}){since} ORDER BY id DESC LIMIT ?",
                (*ACTIVE_STATES, *after, limit),
            )
            got = [(i, record(d, p)) for i, d, p in rows]
            if spans:  # their rows still say pending: one read over all of them
                rows = self.read.execute(
                    f"SELECT id, data, patch FROM jobs WHERE id BETWEEN ? AND ? AND +state IN ({marks}) "
                    "ORDER BY id DESC", (spans[0][0], max(hi for _lo, hi in spans), *ACTIVE_STATES),
                )  # fmt: skip
                entry = self.cancels.entry
                taken = 0
                for i, d, p in rows:  # the newest first (by id, +state: not by its index): ``limit`` at most
                    e = entry(i)
                    if e is not None and (ended_after is None or (e[2] is not None and e[2] >= ended_after)):
                        got.append((i, record(d, p, e[1])))
                        taken += 1
                        if taken >= limit:
                            break
        finally:
            if spans:
                self.read.execute("COMMIT")
        if spans:
            got.sort(key=lambda x: -x[0])
            got = got[:limit]
        return [rec for _i, rec in got][::-1]

    # ------------------------------------------------------------ writing

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()

    def put_job(self, rec: dict[str, Any]) -> None:
        # packed here, on the loop, so the writer never sees a record mid-change
        self.top = max(self.top, rec["id"])
        self._push(("job", (rec["id"], rec["state"], rec["uid"], rec.get("end_time"), pack(rec))))

    def put_cancelled(self, fields: dict[str, Any], ranges: Sequence[tuple[int, int]]) -> None:
        """Jobs already stored, ended together by one cancel
        (crane.core.bulk_cancel): ``fields``, the same for every job whose id
        is in ``ranges`` (inclusive, disjoint, of ids written before), laid
        over each record. Committed as one row per range (a cancel of
        100,000 pending jobs rewrote ~60 MB of rows before its answer); the
        writer folds them into the rows afterwards, while idle, and reads lay
        them over the rows until then (``record``)."""
        patch = pack(fields)
        end = fields.get("end_time")
        spans = list(ranges)
        self._push(("patch", (patch, spans)))

        def committed() -> None:  # read over the rows once on disk (a failed commit: never)
            self.cancels.add(spans, patch, end)

        self.barrier(committed)

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
        folds = self._fold
        folds += conn.execute("SELECT lo, hi, patch FROM cancels ORDER BY lo").fetchall()
        done = False
        while not done:
            if folds:  # fold a bulk cancel into its rows while nothing else is written
                try:
                    item = self._q.get(timeout=FOLD_AFTER)
                except queue.Empty:
                    while folds and self._q.empty():
                        self._fold_some(conn, folds)
                    continue
            else:
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
            new_folds: list[tuple[int, int, bytes]] = []  # folded once committed
            try:
                conn.execute("BEGIN")
                for it in batch:
                    if it is None:
                        continue
                    kind, val = it
                    if kind == "job":
                        jobs[val[0]] = val
                    elif kind == "patch":
                        blob, spans = val
                        conn.executemany("INSERT OR REPLACE INTO cancels VALUES (?, ?, ?)",
                                         [(lo, hi, blob) for lo, hi in spans])  # fmt: skip
                        new_folds += [(lo, hi, blob) for lo, hi in spans]
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
                self._put_jobs(conn, jobs)
                conn.execute("COMMIT")
                self.committed += len(batch)
                folds += new_folds
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

    def _fold_some(self, conn: sqlite3.Connection, folds: collections.deque[tuple[int, int, bytes]]) -> None:
        """Lay the oldest bulk cancels' patches into up to FOLD_CHUNK of their
        rows (one transaction), then tell the loop those rows need them no more."""
        parts: list[tuple[int, int, int, bytes]] = []  # (lo, upto, hi, patch)
        rows = 0
        for lo, hi, blob in folds:
            upto = min(hi, lo + FOLD_CHUNK - rows - 1)
            parts.append((lo, upto, hi, blob))
            rows += upto - lo + 1
            if rows >= FOLD_CHUNK:
                break
        fields = {blob: unpack(blob) for _lo, _upto, _hi, blob in parts}
        try:
            conn.execute("BEGIN")
            conn.executemany("UPDATE jobs SET state=?, end_time=?, patch=? WHERE id BETWEEN ? AND ?",
                             [(fields[b]["state"], fields[b].get("end_time"), b, lo, upto)
                              for lo, upto, _hi, b in parts])  # fmt: skip
            conn.executemany("DELETE FROM cancels WHERE lo=?", [(lo,) for lo, upto, hi, _b in parts if upto >= hi])
            conn.executemany("UPDATE cancels SET lo=? WHERE lo=?",
                             [(upto + 1, lo) for lo, upto, hi, _b in parts if upto < hi])  # fmt: skip
            conn.execute("COMMIT")
        except Exception:
            log.exception("store: folding a bulk cancel into its rows failed: left to reads (and the next start)")
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            folds.clear()
            return
        for _lo, upto, hi, blob in parts:
            folds.popleft()
            if upto < hi:
                folds.appendleft((upto + 1, hi, blob))
        self._call_back([partial(self.cancels.folded, [(lo, upto) for lo, upto, _hi, _b in parts])])

    @staticmethod
    def _put_jobs(conn: sqlite3.Connection, jobs: dict[int, tuple[Any, ...]]) -> None:
        if jobs:  # a whole record replaces the row, a patch laid over the one before included
            conn.executemany("INSERT OR REPLACE INTO jobs (id, state, uid, end_time, data) VALUES (?, ?, ?, ?, ?)",
                             jobs.values())  # fmt: skip

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
