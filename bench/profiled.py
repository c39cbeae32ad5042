"""cranectld or craned with a windowed cProfile, for the bench's profiling runs only.

    python bench/profiled.py ctld OUT.prof -C config.yaml
    python bench/profiled.py agent OUT.prof -C config.yaml -n NODE
    python bench/profiled.py stalls OUT.txt -C config.yaml

SIGUSR1 starts profiling the event-loop thread, SIGUSR2 stops it and writes
OUT.prof (then OUT.prof.done). Everything else is the daemon's own ``main``.

``stalls``: cranectld with a stall watchdog instead of a profiler (the poor
man's py-spy, which is not installed here). A loop callback stamps the time
every 10 ms; a thread looks every 5 ms and, while the stamp is older than
``CRANE_STALL_MS`` (default 100), samples the event-loop thread's stack every
10 ms. Each stall is appended to OUT.txt when it ends: its length and its
stacks, most frequent first (the frame that kept the loop busy is the
innermost line common to them).
"""

from __future__ import annotations

import asyncio
import collections
import cProfile
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any


class StallWatch(threading.Thread):
    """Samples the loop thread's stack while the loop is late."""

    def __init__(self, out: str, threshold: float) -> None:
        super().__init__(daemon=True, name="stall-watch")
        self.out = out
        self.threshold = threshold
        self.stamp = time.monotonic()
        self.loop_thread = threading.get_ident()
        self.stalls = 0

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stamp = time.monotonic()
        loop.call_later(0.01, self.tick, loop)

    def run(self) -> None:
        while True:
            time.sleep(0.005)
            late = time.monotonic() - self.stamp
            if late < self.threshold:
                continue
            start = self.stamp
            samples: collections.Counter[str] = collections.Counter()
            while self.stamp == start:
                frame = sys._current_frames().get(self.loop_thread)
                if frame is not None:
                    samples["".join(traceback.format_stack(frame, limit=25))] += 1
                time.sleep(0.01)
            self.stalls += 1
            took = self.stamp - start
            with open(self.out, "a") as f:
                f.write(f"=== stall {self.stalls} at {time.strftime('%H:%M:%S')}: loop late "
                        f"{took * 1000:.0f} ms, {sum(samples.values())} samples\n")  # fmt: skip
                for stack, n in samples.most_common(4):
                    f.write(f"--- {n} samples:\n{stack}")


def watched(base: str, stalls: str) -> Any:
    """A LocalCluster whose cranectld runs under the stall watchdog
    (``stalls`` mode), its stalls appended to the file ``stalls``."""
    import subprocess

    from crane.local import LocalCluster

    class Watched(LocalCluster):
        def start_controller(self) -> subprocess.Popen[bytes]:
            argv = [sys.executable, os.path.abspath(__file__), "stalls", os.path.abspath(stalls), "-C",
                    self.config_path]  # fmt: skip
            return self._spawn("cranectld", argv)

    return Watched(base)


def main() -> None:
    which, out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    prof = cProfile.Profile()

    def stop() -> None:
        prof.disable()
        prof.dump_stats(out)
        with open(out + ".done", "w"):
            pass

    def patch(cls: Any) -> None:
        orig = cls.run

        async def run(self: Any) -> None:
            loop = asyncio.get_running_loop()
            if which == "stalls":
                watch = StallWatch(out, float(os.environ.get("CRANE_STALL_MS", "100")) / 1000)
                watch.tick(loop)
                watch.start()
            else:
                loop.add_signal_handler(signal.SIGUSR1, prof.enable)
                loop.add_signal_handler(signal.SIGUSR2, stop)
            await orig(self)

        cls.run = run

    if which in ("ctld", "stalls"):
        from crane import controller

        patch(controller.Controller)
        controller.main(argv)
    else:
        from crane.agent import main as agent

        patch(agent.Agent)
        agent.main(argv)


if __name__ == "__main__":
    main()
