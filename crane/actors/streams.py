"""Live output of steps, controller side: the relay from an agent's
``StepOutput`` chunks to the crun subscribed to the step (its WaitStep with
``stream``).

Nothing is kept: each chunk is sent at once, without blocking, under the
subscriber's request id. A chunk that cannot be sent (the crun's reply queue
is full: it reads slower than the step writes, bounded by the CLI socket's
send high-water mark; or the crun is gone) is dropped and its bytes counted;
the count is in the WaitStep's final answer ("lost") and crun reports it.
Without a subscriber chunks are dropped (counted in the metrics). A crun
that goes away without a word (SIGKILL) has its step cancelled (``departed``). One
subscription per step (the newest replaces the older: a crun that asks
again after a controller restart or a silence); it ends with the step.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from crane.core import messages as m

GONE_TICKS = 2  # a subscriber seen gone on this many ticks in a row (1 s apart) is gone


class Subscription:
    __slots__ = ("replier", "lost", "gone")

    def __init__(self, replier: Any, lost: int = 0) -> None:
        self.replier = replier
        self.lost = lost
        self.gone = 0  # ticks in a row its connection was seen gone


class Relay:
    def __init__(self) -> None:
        self.subs: dict[Hashable, Subscription] = {}
        self.relayed = 0  # bytes
        self.dropped = 0  # bytes: no subscriber, or the subscriber's queue full

    def subscribe(self, key: Hashable, replier: Any) -> None:
        old = self.subs.get(key)
        self.subs[key] = Subscription(replier, old.lost if old else 0)

    def lost(self, key: Hashable) -> int:
        s = self.subs.get(key)
        return s.lost if s else 0

    def end(self, key: Hashable) -> int:
        """The step ended: forget its subscription; the bytes it lost."""
        s = self.subs.pop(key, None)
        return s.lost if s else 0

    def departed(self) -> list[Hashable]:
        """The steps whose crun is gone (killed, its connection closed) and
        did not ask again since: forgotten here, to be cancelled by the
        caller. Called once a tick; a crun that asks again on a new
        connection replaces its subscription within this grace."""
        out = []
        for key, s in list(self.subs.items()):
            s.gone = 0 if s.replier.alive() else s.gone + 1
            if s.gone >= GONE_TICKS:
                del self.subs[key]
                out.append(key)
        return out

    def relay(self, msg: m.StepOutput) -> None:
        s = self.subs.get((msg.job_id, msg.step_id))
        n = len(msg.data)
        if s is None:
            self.dropped += n
            return
        r = s.replier
        if r.endpoint.send(r.identity, msg, r.rid):
            self.relayed += n
        else:
            s.lost += n
            self.dropped += n
