"""cranectld or craned with a windowed cProfile, for the bench's profiling runs only.

    python bench/profiled.py ctld OUT.prof -C config.yaml
    python bench/profiled.py agent OUT.prof -C config.yaml -n NODE

SIGUSR1 starts profiling the event-loop thread, SIGUSR2 stops it and writes
OUT.prof (then OUT.prof.done). Everything else is the daemon's own ``main``.
"""

from __future__ import annotations

import asyncio
import cProfile
import signal
import sys
from typing import Any


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
            loop.add_signal_handler(signal.SIGUSR1, prof.enable)
            loop.add_signal_handler(signal.SIGUSR2, stop)
            await orig(self)

        cls.run = run

    if which == "ctld":
        from crane import controller

        patch(controller.Controller)
        controller.main(argv)
    else:
        from crane.agent import main as agent

        patch(agent.Agent)
        agent.main(argv)


if __name__ == "__main__":
    main()
