"""What "acknowledged means on disk" costs: the store's group commit with
``PRAGMA synchronous=FULL`` (every commit fsyncs the WAL: survives a power
cut) against ``NORMAL`` (survives a process crash only), on this machine's
disk, through the real ``crane.store.Store``.

    python -m bench.durability [--runs 200] [--burst 2000] [--dir DIR]

Two figures per mode: the latency of one acknowledged write alone (a job
record, then a barrier; median and p99 of ``--runs``), and the throughput of
a burst of ``--burst`` writes each with its own barrier, all queued at once
(what a storm of submissions or cancels sees: the group commit pays one
fsync per batch, not per request)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any

from crane import store as store_mod
from crane.core.job import Job


def record(job_id: int) -> dict[str, Any]:
    return Job(id=job_id, name="bench", uid=1000, user="u", gid=1000, account="a", qos="q", partition="p").to_dict()


async def measure(path: str, runs: int, burst: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    st = store_mod.Store(path)
    st.start()
    lat: list[float] = []
    try:
        for i in range(runs):
            done: asyncio.Future[None] = loop.create_future()
            t0 = time.perf_counter()
            st.put_job(record(i + 1))
            st.barrier(lambda d=done: d.set_result(None))
            await done
            lat.append((time.perf_counter() - t0) * 1000)
        left = burst
        all_done: asyncio.Future[None] = loop.create_future()

        def one() -> None:
            nonlocal left
            left -= 1
            if left == 0:
                all_done.set_result(None)

        t0 = time.perf_counter()
        for i in range(burst):
            st.put_job(record(runs + i + 1))
            st.barrier(one)
        await all_done
        rate = burst / (time.perf_counter() - t0)
    finally:
        st.stop()
    lat.sort()
    return {"median_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "burst_per_s": rate}  # fmt: skip


def run_mode(mode: str, base: str, runs: int, burst: int) -> dict[str, float]:
    original = store_mod.connect

    def connect(path: str) -> Any:
        conn = original(path)
        conn.execute(f"PRAGMA synchronous={mode}")
        return conn

    store_mod.connect = connect  # the same store, its one PRAGMA changed
    try:
        d = tempfile.mkdtemp(dir=base)
        return asyncio.run(measure(os.path.join(d, "crane.db"), runs, burst))
    finally:
        store_mod.connect = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--dir", default="/var/tmp", help="where the databases go (the disk the controller would use)")
    a = ap.parse_args()
    print(f"{'mode':8} {'one write: median':>18} {'p99':>9} {'burst of ' + str(a.burst):>16}")
    for mode in ("NORMAL", "FULL"):
        r = run_mode(mode, a.dir, a.runs, a.burst)
        print(f"{mode:8} {r['median_ms']:15.2f} ms {r['p99_ms']:6.2f} ms {r['burst_per_s']:10.0f} /s")


if __name__ == "__main__":
    main()
