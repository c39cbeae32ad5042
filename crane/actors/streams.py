"""Live output of steps, controller side: the relay from an agent's
``StepOutput`` chunks to the crun subscribed to the step (its WaitStep with
``stream``).

Each chunk is sent at once, without blocking, under the subscriber's
request id. A chunk that cannot be sent (the crun's reply queue is full: it
reads slower than the step writes, bounded by the CLI socket's send
high-water mark; or the crun is gone) is dropped and its bytes counted; the
count is in the WaitStep's final answer ("lost") and crun reports it.

Without a subscriber (a step that writes before its crun's WaitStep
arrives, or while a crun asks again after a controller restart) chunks are
held, at most HOLD_STEP bytes per step, HOLD_USER for the steps of one
user, HOLD_TOTAL in all, for HOLD_SECONDS,
and sent to the next subscriber first; beyond that they are dropped and
counted as lost (told to that subscriber). A crun that goes away without a
word (SIGKILL) has its step cancelled (``departed``). One subscription per
step (the newest replaces the older: a crun that asks again after a
controller restart or a silence); it ends with the step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable
from typing import Any

from crane.core import messages as m

GONE_TICKS = 2  # a subscriber seen gone on this many ticks in a row (1 s apart) is gone
HOLD_STEP = 1024 * 1024  # bytes of output held for a step without a subscriber
HOLD_TOTAL = 64 * 1024 * 1024  # ... for all of them
HOLD_SECONDS = 60.0  # held output nobody asked for within this is dropped
HOLD_USER = 8 * 1024 * 1024  # ... for the steps of one user (one user's unasked steps never fill HOLD_TOTAL for all)


class Held:
    __slots__ = ("chunks", "size", "since", "lost", "owner")

    def __init__(self, owner: Hashable = None) -> None:
        self.chunks: deque[m.StepOutput] = deque()
        self.size = 0
        self.since = time.monotonic()
        self.lost = 0
        self.owner = owner  # the step's user (its uid)


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
        self.held: dict[Hashable, Held] = {}  # output of steps without a subscriber (yet)
        self.held_bytes = 0
        self.held_by: dict[Hashable, int] = {}  # bytes held per owner

    def _forget(self, held: Held) -> None:
        self.held_bytes -= held.size
        left = self.held_by.get(held.owner, 0) - held.size
        if left > 0:
            self.held_by[held.owner] = left
        else:
            self.held_by.pop(held.owner, None)

    def subscribe(self, key: Hashable, replier: Any) -> None:
        old = self.subs.get(key)
        sub = self.subs[key] = Subscription(replier, old.lost if old else 0)
        held = self.held.pop(key, None)
        if held is not None:  # what the step wrote before: first
            self._forget(held)
            sub.lost += held.lost
            for chunk in held.chunks:
                self._send(sub, chunk)

    def lost(self, key: Hashable) -> int:
        s = self.subs.get(key)
        return s.lost if s else 0

    def end(self, key: Hashable) -> int:
        """The step ended: forget its subscription; the bytes it lost. What
        is held for it stays (until HOLD_SECONDS) for a crun whose WaitStep
        comes after the end (a step faster than its crun's WaitStep)."""
        s = self.subs.pop(key, None)
        held = self.held.get(key)
        lost = held.lost if held is not None else 0
        if held is not None:
            held.lost = 0
        return lost + (s.lost if s else 0)

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

    def relay(self, msg: m.StepOutput, owner: Hashable = None) -> None:
        """``owner``: the step's user (its uid), whose held bytes are bounded."""
        key = (msg.job_id, msg.step_id)
        s = self.subs.get(key)
        if s is None:
            self._hold(key, msg, owner)
            return
        self._send(s, msg)

    def _send(self, s: Subscription, msg: m.StepOutput) -> None:
        n = len(msg.data)
        r = s.replier
        if r.endpoint.send(r.identity, msg, r.rid):
            self.relayed += n
        else:
            s.lost += n
            self.dropped += n

    def _hold(self, key: Hashable, msg: m.StepOutput, owner: Hashable = None) -> None:
        now = time.monotonic()
        for k in [k for k, h in self.held.items() if now - h.since > HOLD_SECONDS]:
            old = self.held.pop(k)
            self._forget(old)
            self.dropped += old.size
        held = self.held.get(key)
        if held is None:
            held = self.held[key] = Held(owner)
        n = len(msg.data)
        mine = self.held_by.get(held.owner, 0)
        if held.size + n > HOLD_STEP or self.held_bytes + n > HOLD_TOTAL or mine + n > HOLD_USER:
            held.lost += n
            self.dropped += n
            return
        held.chunks.append(msg)
        held.size += n
        self.held_bytes += n
        self.held_by[held.owner] = mine + n
