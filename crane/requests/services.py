"""The controller's services as the request handlers see them
(``RequestPort``): the job table, the scheduler, the accounts authority, the
store and the configuration, composed; nothing here decides anything."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from crane.actors.base import Actor
from crane.actors.jobs import JobTable
from crane.actors.node import NodeActor
from crane.actors.scheduler import Scheduler
from crane.authority import Authority
from crane.config import Config
from crane.core import messages as m
from crane.core.job import Job, Step
from crane.permissions import Caller
from crane.requests.port import REFUSED, OnError
from crane.store import Store


class JobIds:
    """The job id counter (saved with each submission, recovered at start)."""

    def __init__(self) -> None:
        self.next = 1

    def take(self, n: int) -> range:
        first = self.next
        self.next = first + n
        return range(first, first + n)


class RequestServices:
    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop, store: Store, authority: Authority,
                 table: JobTable, scheduler: Scheduler, nodes: Mapping[str, NodeActor], ids: JobIds,
                 metrics: collections.Counter[str], reload_config: Callable[[], str | None]) -> None:  # fmt: skip
        self.cfg = cfg
        self.loop = loop
        self.store = store
        self.authority = authority
        self.table = table
        self.scheduler = scheduler
        self.nodes = nodes
        self.ids = ids
        self.metrics = metrics
        self.reload_config = reload_config  # the controller's (crane.controller.Controller.reload_config)

    # -- identity and rights
    @property
    def acct(self) -> Any:
        return self.authority.acct

    def caller(self, uid: int) -> Caller:
        return self.authority.caller(uid)

    def may_act(self, caller: Caller, job: Job) -> bool:
        return self.authority.may_act(caller, job)

    def hold_rank(self, caller: Caller, job: Job) -> int:
        return self.authority.hold_rank(caller, job)

    def qos_priority(self, qos: str | None) -> int:
        return self.authority.qos_priority(qos)

    def default_time_limit(self, qos: str | None) -> int | None:
        return self.authority.default_time_limit(qos)

    def accounts_check_submit(self, caller: Caller, spec: dict[str, Any], part: str,
                              repeat: int) -> tuple[str, str | None]:  # fmt: skip
        return self.authority.check_submit(caller, spec, part, repeat, self.active_jobs())

    # -- jobs
    def job(self, job_id: int) -> Job | None:
        return self.table.get(job_id)

    def active_jobs(self) -> Iterable[Job]:
        return [a.job for a in list(self.table.jobs.values())]

    def active_count(self, uid: int | None = None) -> int:
        return len(self.table.jobs) if uid is None else int(self.table.active_by_uid.get(uid, 0))

    def finished_state(self, job_id: int) -> str | None:
        return self.table.finished_state(job_id)

    def step(self, job_id: int, step_id: int) -> Step | None:
        job = self.table.get(job_id)
        return job.steps.get(step_id) if job is not None else None

    def step_count(self, job_id: int) -> int:
        job = self.table.get(job_id)
        return len(job.steps) if job is not None else 0

    def dependency_refs(self, uid: int) -> int:
        return self.table.deps.user_refs[uid]

    def take_job_ids(self, n: int) -> range:
        return self.ids.take(n)

    def add_job(self, job: Job) -> None:
        self.table.add(job)

    def launch_saved(self, job_id: int, launch: dict[str, Any]) -> None:
        job = self.table.get(job_id)
        if job is not None and job.launch is launch:  # on disk now: a queued job need not hold it
            job.launch = None

    def job_event(self, job_id: int, event: Any) -> None:
        self.table.job_event(job_id, event)

    def ask_job(self, job_id: int, event: Any) -> asyncio.Future[Any]:
        a = self.table.jobs.get(job_id)
        if a is None:
            fut: asyncio.Future[Any] = self.loop.create_future()
            fut.set_result(m.Error(REFUSED, f"Job {job_id} not found or not active"))
            return fut
        return a.ask(event)

    # -- persistence and waiting
    def after_persisted(self, callback: Callable[[], None], on_error: OnError | None = None) -> None:
        store = self.store
        Actor.when_idle(lambda: store.barrier(callback, on_error))

    def wait_jobs(self, uid: int, job_ids: list[int], callback: Callable[[], None],
                  alive: Callable[[], bool] | None = None) -> str | None:  # fmt: skip
        return self.table.wait_jobs(uid, job_ids, callback, alive)

    def wait_step(self, uid: int, job_id: int, step_id: int, done: Callable[[dict[str, Any]], None],
                  alive: Callable[[], bool] | None = None) -> str | None:  # fmt: skip
        return self.table.waits.add(uid, [(job_id, step_id)], done, alive)

    def subscribe_stream(self, job_id: int, step_id: int, replier: Any) -> None:
        self.table.streams.subscribe((job_id, step_id), replier)

    def to_node(self, node: str, msg: m.Message) -> None:
        self.table.to_node(node, msg)

    # -- scheduler and nodes
    def pending_reasons(self) -> Mapping[int, str]:
        return self.scheduler.reasons

    def node_snapshot(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = self.scheduler.snapshot()
        for n in nodes:
            n["cgroup"] = self.nodes[n["name"]].cgroup_mode
        return nodes

    def tell_scheduler(self, msg: Any) -> None:
        self.scheduler.tell(msg)
