"""Requests that wait for something to end (WaitJobs: jobs; WaitStep: a
step), bounded per user.

A waiter is registered under keys (a job id, or ``(job_id, step_id)``) and
answered once every key has fired. It is dropped, unanswered, when its
client can no longer be reached (``alive()`` is False: the connection is
gone) or after ``ttl`` seconds; the CLIs ask again on their own
(``call_until_answered``), as after a controller restart. A user (root
excepted) holds at most ``per_user`` waiters over at most ``keys_per_user``
keys: a held job never ends, so without these bounds memory would grow
with every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

KEYS_PER_USER = 100_000
TTL = 600.0  # seconds; the CLIs re-ask every 10 s, so a live CLI never sees it


class Waiter:
    __slots__ = ("uid", "keys", "left", "done", "alive", "since")

    def __init__(self, uid: int, keys: list[Hashable], done: Callable[[Any], None],
                 alive: Callable[[], bool] | None, since: float) -> None:  # fmt: skip
        self.uid = uid
        self.keys = keys
        self.left = len(keys)
        self.done = done
        self.alive = alive
        self.since = since


class Waits:
    def __init__(self, per_user: int, keys_per_user: int = KEYS_PER_USER, ttl: float = TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.per_user = per_user
        self.keys_per_user = keys_per_user
        self.ttl = ttl
        self.clock = clock
        self.by_key: dict[Hashable, dict[Waiter, None]] = {}
        self.by_uid: dict[int, dict[Waiter, None]] = {}
        self.keys_of_uid: dict[int, int] = {}
        self.step_keys: dict[int, set[Hashable]] = {}  # job id -> its (job, step) keys
        self.dropped = 0

    def __len__(self) -> int:
        return sum(len(ws) for ws in self.by_uid.values())

    def add(self, uid: int, keys: Iterable[Hashable], done: Callable[[Any], None],
            alive: Callable[[], bool] | None = None) -> str | None:  # fmt: skip
        """Register a waiter (``keys`` non-empty, distinct); an error line if
        the user is at a limit (after dropping their waiters whose client
        is gone)."""
        keys = list(keys)
        if uid != 0:
            mine = self.by_uid.get(uid)
            if mine and len(mine) >= self.per_user:
                self.sweep(only=list(mine))
                mine = self.by_uid.get(uid)
            if mine and len(mine) >= self.per_user:
                return f"MaxWaitsPerUser reached: at most {self.per_user} waiting requests per user"
            if self.keys_of_uid.get(uid, 0) + len(keys) > self.keys_per_user:
                return f"too many jobs waited on: at most {self.keys_per_user} per user"
        w = Waiter(uid, keys, done, alive, self.clock())
        self.by_uid.setdefault(uid, {})[w] = None
        self.keys_of_uid[uid] = self.keys_of_uid.get(uid, 0) + len(keys)
        for k in keys:
            self.by_key.setdefault(k, {})[w] = None
            if isinstance(k, tuple):
                self.step_keys.setdefault(k[0], set()).add(k)
        return None

    def fire(self, key: Hashable, value: Any = None) -> None:
        """``key`` ended: answer the waiters for which it was the last."""
        ws = self.by_key.pop(key, None)
        if ws is None:
            return
        if isinstance(key, tuple):
            self._unindex(key)
        for w in ws:
            w.left -= 1
            if w.left <= 0:
                self._forget(w)
                w.done(value)

    def keys_of_job(self, job_id: int) -> list[Hashable]:
        """The step keys of ``job_id`` that have waiters."""
        return list(self.step_keys.get(job_id, ()))

    def sweep(self, only: list[Waiter] | None = None) -> int:
        """Drop waiters past their ttl or whose client is gone; the count."""
        now = self.clock()
        gone = []
        for ws in ([only] if only is not None else list(self.by_uid.values())):
            for w in list(ws):
                if now - w.since > self.ttl or (w.alive is not None and not w.alive()):
                    gone.append(w)
        for w in gone:
            self._forget(w)
        self.dropped += len(gone)
        return len(gone)

    def _forget(self, w: Waiter) -> None:
        mine = self.by_uid.get(w.uid)
        if mine is None or w not in mine:
            return
        del mine[w]
        if not mine:
            del self.by_uid[w.uid]
        left = self.keys_of_uid.get(w.uid, 0) - len(w.keys)
        if left > 0:
            self.keys_of_uid[w.uid] = left
        else:
            self.keys_of_uid.pop(w.uid, None)
        for k in w.keys:
            ws = self.by_key.get(k)
            if ws is not None:
                ws.pop(w, None)
                if not ws:
                    del self.by_key[k]
                    if isinstance(k, tuple):
                        self._unindex(k)

    def _unindex(self, key: tuple[Any, ...]) -> None:
        s = self.step_keys.get(key[0])
        if s is not None:
            s.discard(key)
            if not s:
                del self.step_keys[key[0]]
