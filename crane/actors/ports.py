"""The small typed ports through which the controller's actors reach the rest.

An actor names what it needs here, not the controller: a type checker (and a
reader) follows every call. The controller's wiring (crane.controller)
builds the objects that satisfy them: ``JobTable`` (crane.actors.jobs) for
the job and node ports, the scheduler actor, the store, the agent socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from crane.core import messages as m
from crane.core.job import Job, Step


class Mailbox(Protocol):
    """An actor, seen from outside: it can be told a message."""

    def tell(self, msg: Any) -> None: ...


class AgentSender(Protocol):
    """The agent socket: send a message on one agent's route."""

    def send(self, identity: bytes, msg: m.Message, rid: int = 0) -> bool: ...


class JobStore(Protocol):
    """What a job actor reads and writes in the store."""

    def get_launch(self, job_id: int) -> dict[str, Any] | None: ...

    def put_job(self, rec: dict[str, Any]) -> None: ...

    def barrier(self, callback: Callable[[], None], on_error: Callable[[str], None] | None = None) -> None: ...

    @property
    def incarnation(self) -> int: ...


class JobPort(Protocol):
    """Everything a job actor does beyond its own record."""

    store: JobStore
    scheduler: Mailbox

    def to_node(self, node: str, msg: m.Message) -> None: ...

    def node_devices(self, node: str) -> list[list[Any]]: ...

    def ended(self, job: Job) -> None: ...

    def step_done(self, job: Job, step_id: int, step: Step) -> None: ...


class NodePort(Protocol):
    """What a node actor needs: the jobs it reports on, the scheduler, the agent socket."""

    scheduler: Mailbox
    agents: AgentSender

    def job_event(self, job_id: int, event: Any) -> None: ...

    def job_expected_on(self, job_id: int, node: str) -> bool: ...

    def jobs_on_node(self, node: str) -> list[int]: ...

    def node_lost(self, node: str, job_ids: list[int]) -> None:
        """``node`` went DOWN with these jobs on it: their processes there are unconfirmed."""

    def node_back(self, node: str, running: dict[int, list[int]]) -> None:
        """``node``'s agent registered, running these steps (job id -> step ids)."""

    def step_gone(self, node: str, job_id: int, step_id: int) -> None:
        """``node`` reported a step's end (also of a job the controller has forgotten)."""
