"""Time StepCgroup.kill() of a ~200-process tree until empty() (median of 5 runs).

Usage: python bench/cgroup_kill.py [mode]   (default: detected mode; needs root for cgroups)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

from crane.agent.cgroup import StepCgroup, remove_job
from crane.agent.launcher import set_child_subreaper, spawn

TREE = "for i in $(seq 200); do sleep 1000 & done\nwait\n"
N = 200


def reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def poll(cond: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def one(mode: str | None, workdir: str, i: int) -> float:
    cg = StepCgroup(f"crane-bench/{uuid.uuid4().hex[:8]}", 1, i, mode=mode)
    cg.create()
    spawn(
        cg,
        ["/bin/bash", "-c", TREE],
        uid=os.getuid(),
        gid=os.getgid(),
        user="root",
        cwd=workdir,
        env={"PATH": "/usr/bin:/bin"},
        stdout="/dev/null",
        stderr="/dev/null",
    )
    poll(lambda: len(cg.pids()) > N)
    t0 = time.perf_counter()
    cg.kill()
    poll(cg.empty)
    dt = time.perf_counter() - t0
    reap()
    poll(cg.remove, 5)
    remove_job(cg.scope, 1, mode=cg.mode)
    for root in {os.path.dirname(os.path.dirname(p)) for p in cg.paths.values()}:
        for d in (root, os.path.dirname(root)):
            try:
                os.rmdir(d)
            except OSError:
                pass
    return dt


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else None
    set_child_subreaper()
    with tempfile.TemporaryDirectory() as wd:
        times = [one(mode, wd, i) for i in range(5)]
    name = mode or StepCgroup("x", 0, 0).mode
    print(
        f"mode={name} kill->empty of {N + 1} procs: median {statistics.median(times) * 1e3:.1f} ms "
        f"(runs: {', '.join(f'{t * 1e3:.1f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
