"""A tiny actor core: one mailbox per actor, processed on the event loop.

An actor is not a task: ``tell`` appends to the mailbox and, if the actor is
idle, schedules one drain of the mailbox on the loop. Handlers are synchronous
(no awaits), so an actor processes one message at a time and never shares
mutable state with another. 100,000 idle job actors cost no tasks at all.

Supervision: an exception in a handler is logged with the actor and message,
counted, and passed to ``on_failure``; the actor keeps its mailbox and goes on.
A message that was asked (``ask``: it carries a reply future in ``reply``)
and not yet answered is answered with ``Error(1, "internal error handling
<Type>: <text>")`` at once, so its asker never waits for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from crane.core import messages as m

log = logging.getLogger("crane.actors")


_ready: deque[Actor] = deque()  # actors with mail, in arrival order
_DISPATCH_BUDGET = 2000  # actors run per loop turn before I/O gets its turn again
INTERNAL = 1  # the CLIs' EXIT_INTERNAL (crane/cli/common.py)
_idle_callbacks: list[Callable[[], None]] = []  # run once every ready actor has run


class Actor:
    __slots__ = ("_mailbox", "_scheduled", "failures")
    _loop: asyncio.AbstractEventLoop | None = None
    _dispatching = False

    def __init__(self) -> None:
        self._mailbox: deque[Any] | None = None
        self._scheduled = False
        self.failures = 0

    @classmethod
    def bind_loop(cls, loop: asyncio.AbstractEventLoop) -> None:
        Actor._loop = loop

    def tell(self, msg: Any) -> None:
        if self._mailbox is None:
            self._mailbox = deque()
        self._mailbox.append(msg)
        if not self._scheduled:
            self._scheduled = True
            _ready.append(self)
            if not Actor._dispatching:
                Actor._dispatching = True
                assert Actor._loop is not None
                Actor._loop.call_soon(Actor._dispatch)

    @staticmethod
    def _dispatch() -> None:
        """One loop callback runs many actors (no call_soon per actor)."""
        for _ in range(_DISPATCH_BUDGET):
            if not _ready:
                break
            _ready.popleft()._run()
        assert Actor._loop is not None
        if _ready:
            Actor._loop.call_soon(Actor._dispatch)
        else:
            Actor._dispatching = False
            while _idle_callbacks:
                _idle_callbacks.pop(0)()

    @staticmethod
    def when_idle(callback: Callable[[], None]) -> None:
        """Call back once every message told so far has been handled."""
        if Actor._dispatching:
            _idle_callbacks.append(callback)
        else:
            assert Actor._loop is not None
            Actor._loop.call_soon(callback)

    def ask(self, msg: Any) -> asyncio.Future[Any]:
        """Send ``(msg, future)``-style: the handler resolves ``msg.reply``."""
        assert Actor._loop is not None
        fut: asyncio.Future[Any] = Actor._loop.create_future()
        msg.reply = fut
        self.tell(msg)
        return fut

    def _run(self) -> None:
        self._scheduled = False
        box = self._mailbox
        if not box:
            return
        n = 0
        while box and n < 1000:
            msg = box.popleft()
            n += 1
            try:
                self.receive(msg)
            except Exception as e:
                self.failures += 1
                log.exception("actor %s failed on %s", self.describe(), type(msg).__name__)
                try:
                    self.on_failure(msg, e)
                except Exception:
                    log.exception("on_failure of %s failed", self.describe())
        if box:
            self._scheduled = True
            _ready.append(self)  # more mail: back of the line, after the others
        else:
            self._mailbox = None  # idle actors keep no deque

    def receive(self, msg: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_failure(self, msg: Any, exc: Exception) -> None:
        """Answer an asked message's future with the error (subclasses that
        override this call it too)."""
        fut = getattr(msg, "reply", None)
        if fut is None or not callable(getattr(fut, "set_result", None)) or fut.done():
            return
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        fut.set_result(m.Error(INTERNAL, f"internal error handling {type(msg).__name__}: {text}"))

    def describe(self) -> str:
        return type(self).__name__
