"""Acknowledged means on disk: the store's commits are durable (WAL with
``synchronous=FULL``: each group commit fsyncs the WAL) and a barrier's
callback runs only after what was queued before it is committed — read back
here through a separate connection to the real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from crane.core.job import Job
from crane.store import Store

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def test_commits_fsync_the_wal_and_barriers_follow_the_commit(tmp_path: Any) -> None:
    path = str(tmp_path / "crane.db")

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        store = Store(path)
        assert store.read.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.start()
        seen: list[int] = []
        try:
            for job_id in (1, 2, 3):
                done: asyncio.Future[None] = loop.create_future()
                rec = Job(id=job_id, name="d", uid=1, user="u", gid=1, account="a", qos="q", partition="p").to_dict()
                store.put_job(rec)

                def acknowledged(d: asyncio.Future[None] = done, j: int = job_id) -> None:
                    other = sqlite3.connect(path)  # what a restarted controller would read
                    try:
                        if other.execute("SELECT 1 FROM jobs WHERE id=?", (j,)).fetchone():
                            seen.append(j)
                    finally:
                        other.close()
                    d.set_result(None)

                store.barrier(acknowledged)
                await asyncio.wait_for(done, 30)
        finally:
            store.stop()
        return seen

    assert asyncio.run(scenario()) == [1, 2, 3]
    from crane import store as store_mod

    conn = store_mod.connect(path)
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == FULL
    finally:
        conn.close()


def test_making_the_files_private_keeps_sqlites_locks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """crane.store.private runs while the store's connections are open (the
    writer thread connects after the read connection). Closing any ordinary
    descriptor of the -shm file drops every POSIX lock the process holds on
    it, SQLite's "this WAL is in use" lock (byte 128) included: another
    process opening the database then reset the shared memory under the
    controller's mapping, which died of SIGBUS (the crash storm's integrity
    check, 1 restart in ~25)."""
    import subprocess
    import sys

    from crane.store import connect, private

    db = str(tmp_path / "crane.db")
    conn = connect(db)
    conn.execute("SELECT count(*) FROM jobs").fetchall()  # maps the shared memory, holds its lock
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)\n    print('free')\n"
             "except OSError:\n    print('held')\n")  # fmt: skip

    def dms() -> str:
        return subprocess.run([sys.executable, "-c", probe, db + "-shm"], capture_output=True, text=True).stdout.strip()

    assert dms() == "held"
    private(db)
    assert dms() == "held", "private() dropped SQLite's lock on the shared-memory file"
    conn.close()
