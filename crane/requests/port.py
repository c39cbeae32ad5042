"""What a request handler sees: the controller through one typed port, and
the caller's end of the request (``Reply``).

Handlers never hold ``Controller`` itself nor read an actor's fields: every
job record, step, wait and stream goes through a method of ``RequestPort``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from crane.core import messages as m

if TYPE_CHECKING:
    from crane.accounts import AccountDB
    from crane.config import Config
    from crane.core.job import Job, Step
    from crane.permissions import Caller

log = logging.getLogger("crane.requests")

# Error codes are the CLIs' exit codes (crane/cli/common.py, EXIT_*).
INTERNAL = 1  # EXIT_INTERNAL: the controller failed (a handler raised, the store could not write)
ARGS = 2  # EXIT_ARGS: a bad request
REFUSED = 4  # EXIT_PARTIAL: not found, not permitted, not in a state for it
AUTH = 5  # EXIT_AUTH

OnError = Callable[[str], None]  # a store barrier's error path: called with the reason


class StorePort(Protocol):
    """The part of ``crane.store.Store`` handlers use."""

    def pack(self, obj: Any) -> bytes: ...

    def put_launch(self, job_id: int, blob: bytes) -> None: ...

    def put_next_id(self, next_id: int) -> None: ...

    def put_entity(self, kind: str, name: str, data: Any | None) -> None: ...

    def finished_jobs(self, ids: list[int] | None = None, limit: int = ...,
                      ended_after: float | None = None) -> list[dict[str, Any]]: ...  # fmt: skip

    def barrier(self, callback: Callable[[], None], on_error: OnError | None = None) -> None: ...


class RequestPort(Protocol):
    """Everything the request handlers need from the controller."""

    @property
    def cfg(self) -> Config: ...

    @property
    def store(self) -> StorePort: ...

    @property
    def acct(self) -> AccountDB: ...

    @property
    def metrics(self) -> collections.Counter[str]: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    # -- identity and rights
    def caller(self, uid: int) -> Caller: ...

    def may_act(self, caller: Caller, job: Job) -> bool: ...

    def hold_rank(self, caller: Caller, job: Job) -> int: ...

    def qos_priority(self, qos: str | None) -> int: ...

    def default_time_limit(self, qos: str | None) -> int | None: ...

    def accounts_check_submit(self, caller: Caller, spec: dict[str, Any], part: str,
                              repeat: int) -> tuple[str, str | None]: ...  # fmt: skip

    # -- jobs (records are read-only views: change a job by telling it an event)
    def job(self, job_id: int) -> Job | None: ...

    def active_jobs(self) -> Iterable[Job]: ...

    def active_count(self, uid: int | None = None) -> int: ...

    def finished_state(self, job_id: int) -> str | None: ...

    def step(self, job_id: int, step_id: int) -> Step | None: ...

    def step_count(self, job_id: int) -> int: ...

    def dependency_refs(self, uid: int) -> int: ...

    def take_job_ids(self, n: int) -> range: ...

    def add_job(self, job: Job) -> None: ...

    def launch_saved(self, job_id: int, launch: dict[str, Any]) -> None: ...

    def job_event(self, job_id: int, event: Any) -> None: ...

    def ask_job(self, job_id: int, event: Any) -> asyncio.Future[Any]: ...

    # -- persistence and waiting
    def after_persisted(self, callback: Callable[[], None], on_error: OnError | None = None) -> None: ...

    def wait_jobs(self, uid: int, job_ids: list[int], callback: Callable[[], None],
                  alive: Callable[[], bool] | None = None) -> str | None: ...  # fmt: skip

    def wait_step(self, uid: int, job_id: int, step_id: int, done: Callable[[dict[str, Any]], None],
                  alive: Callable[[], bool] | None = None) -> str | None: ...  # fmt: skip

    def subscribe_stream(self, job_id: int, step_id: int, replier: Any) -> None: ...

    def to_node(self, node: str, msg: m.Message) -> None: ...

    # -- scheduler and nodes
    def pending_reasons(self) -> Mapping[int, str]: ...

    def node_snapshot(self) -> list[dict[str, Any]]: ...

    def tell_scheduler(self, msg: Any) -> None: ...

    # -- the controller itself
    def reload_config(self) -> str | None:
        """Re-read the config file and apply it (ccontrol reconfigure); its
        error line if refused."""
        ...


class Reply:
    """The caller's end of one request: answered at most once, whatever
    happens (a second answer is dropped). ``send`` is the transport's
    ``Replier`` (or any callable taking a message). ``cause``: the request's
    number, given to the events it causes (crane.core.events.Traced)."""

    __slots__ = ("send", "type", "metrics", "cause", "answered")

    def __init__(self, send: Callable[[m.Message], None], type_: str, metrics: collections.Counter[str],
                 cause: int = 0) -> None:  # fmt: skip
        self.send = send
        self.type = type_
        self.metrics = metrics
        self.cause = cause
        self.answered = False

    def __call__(self, answer: m.Message) -> None:
        if self.answered:
            return
        self.answered = True
        self.send(answer)

    def alive(self) -> bool:
        """Whether the caller can still receive the answer."""
        alive = getattr(self.send, "alive", None)
        return bool(alive()) if alive is not None else True

    def fail(self, exc: BaseException) -> None:
        """A handler (or one of its callbacks) raised: log it, count it, and
        answer the caller at once."""
        self.metrics["handler_failures"] += 1
        log.error("handling %s failed (request %d)", self.type, self.cause, exc_info=exc)
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        self(m.Error(INTERNAL, f"internal error handling {self.type}: {text}"))

    def guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn`` for a later callback (a store barrier, a future): if it
        raises, the caller is answered with the error."""

        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:
                self.fail(e)

        return guarded

    def unsaved(self, what: str) -> OnError:
        """A store barrier's error path: the write failed, say so."""

        def failed(reason: str) -> None:
            self.metrics["unsaved_replies"] += 1
            self(m.Error(INTERNAL, f"the controller could not save {what}: {reason}"))

        return failed

    def after_saved(self, port: RequestPort, answer: Callable[[], m.Message], what: str) -> None:
        """Answer ``answer()`` once what was written so far is committed,
        or the error if the write failed."""
        port.store.barrier(self.guard(lambda: self(answer())), self.unsaved(what))


def own_job(port: RequestPort, caller: Caller, job_id: int, reply: Reply, execute: bool = False) -> Job | None:
    """The job if the caller may act on it, else answer an error (None).
    ``execute``: running code in the job (a step) is its owner's and
    root's alone; coordinators, operators and admins may cancel, signal,
    hold and requeue it, never run code as its owner."""
    job = port.job(job_id)
    if job is None:
        reply(m.Error(REFUSED, f"Job {job_id} not found or not active"))
        return None
    allowed = caller.uid in (0, job.uid) if execute else port.may_act(caller, job)
    if not allowed:
        reply(m.Error(REFUSED, "Permission denied"))
        return None
    return job
