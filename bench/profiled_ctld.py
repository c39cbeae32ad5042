"""cranectld with a windowed cProfile, for the bench's profiling runs only.

    python bench/profiled_ctld.py OUT.prof -C config.yaml

SIGUSR1 starts profiling the event-loop thread, SIGUSR2 stops it and writes
OUT.prof (then OUT.prof.done). Everything else is ``crane.controller.main``.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import signal
import sys

from crane import controller


def main() -> None:
    out = sys.argv[1]
    prof = cProfile.Profile()
    orig = controller.Controller.run

    def stop() -> None:
        prof.disable()
        prof.dump_stats(out)
        with open(out + ".done", "w"):
            pass

    async def run(self: controller.Controller) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, prof.enable)
        loop.add_signal_handler(signal.SIGUSR2, stop)
        await orig(self)

    controller.Controller.run = run  # type: ignore[method-assign]
    controller.main(sys.argv[2:])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
