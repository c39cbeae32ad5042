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
