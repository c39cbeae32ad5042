"""What the agent's event loop never waits for: kernel operations that
wait (a cgroup's freeze settling, the kill sweeps of v1 and of mode 'none'
with their deadlines), scans of every process of the host (mode 'none'),
signals to a step of many processes, rmdir and state files run in threads.

Two pools, so that one kind never queues behind the other:

* ``urgent``: signals, kills, freezes of steps (a few threads: a freeze or
  a v1 kill may wait up to ``cgroup.FREEZE_TIMEOUT``);
* ``cleanup``: what steps and jobs leave once their processes are dead
  (``reclaim``): one thread.

What stays on the loop, because it never waits and a hand-off to a thread
would cost more than it (two context switches; under load, a time slice):
one read of ``cgroup.events`` (is the step empty?), one write to
``cgroup.kill`` (the kernel's kill of a whole cgroup; it does not wait for
the processes to die) or to ``cgroup.freeze``/``freezer.state`` to thaw, and
a signal to a step of at most ``INLINE_SIGNAL`` processes (a read of
``cgroup.procs``, one ``kill`` each).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from crane.agent import cgroup as cgmod

T = TypeVar("T")

URGENT_THREADS = 8
INLINE_SIGNAL = 64  # processes a signal is sent to from the loop itself
_urgent = ThreadPoolExecutor(max_workers=URGENT_THREADS, thread_name_prefix="craned-urgent")
_cleanup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="craned-cleanup")


def urgent(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` in the urgent pool (signals, kills, freeze, thaw)."""
    return asyncio.get_running_loop().run_in_executor(_urgent, functools.partial(fn, *args))


def cleanup(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` in the cleanup thread (rmdir, state files)."""
    return asyncio.get_running_loop().run_in_executor(_cleanup, functools.partial(fn, *args))


async def empty(cg: cgmod.StepCgroup) -> bool:
    """Whether the step has no process left. With cgroups one read of a
    cgroup file, done here; without (mode 'none') a scan of every process,
    done in a thread."""
    if cg.mode == "none":
        return await urgent(cg.empty)
    return cg.empty()


async def kill(cg: cgmod.StepCgroup) -> None:
    """SIGKILL every process of the step: one write to ``cgroup.kill`` here,
    else (v1, mode 'none': freeze or stop sweeps, kill sweeps) in a thread."""
    if cg.kill_file():
        cg.kill()
    else:
        await urgent(cg.kill)


async def signal(cg: cgmod.StepCgroup, sig: int) -> None:
    """``sig`` to every process of the step: here for a few processes, else in a thread."""
    if cg.mode == "none" or len(cg.pids()) > INLINE_SIGNAL:
        await urgent(cg.signal, sig)
    else:
        cg.signal(sig)


async def thaw(cg: cgmod.StepCgroup) -> None:
    """Thaw the step: one write here (mode 'none': a scan, in a thread)."""
    if cg.mode == "none":
        await urgent(cg.thaw)
    else:
        cg.thaw()
