"""The node agent's steps: the registry of what runs here, and the small API
the agent's main loop calls.

Every step lives in its own cgroup (``agent.cgroup``), which is the unit of
signalling and killing: processes that left the process group die too. A
step is reported ended only when its main process has exited AND its cgroup
is empty; a job is reported released only when all its steps on this node
have ended and the epilog has run (skipped by ``--force``).

The work itself reads in three files: ``launch`` (start or adopt a step),
``kill`` (signals, grace, escalation, time limits) and ``cleanup`` (reaping,
the step's end report, state files, the epilog and the job's release).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from crane.agent import cleanup, kill, launch, statedir
from crane.agent.reclaim import Reclaimer, UsersFile
from crane.agent.steprun import StepRun, path_problem, users_path
from crane.core import messages as m

__all__ = ["StepManager", "StepRun", "path_problem"]

log = logging.getLogger("craned.steps")

RELEASED_KEEP = 10_000  # recently released jobs remembered (stale launches refused)


class StepManager:
    def __init__(self, node: str, scope: str, state_dir: str, mode: str,
                 send: Callable[[m.Message], None], epilog: str = "",
                 try_send: Callable[[m.Message], bool] | None = None) -> None:  # fmt: skip
        self.node = node
        # a send that may be refused (the link's queue is full): live output only
        self.try_send = try_send or (lambda msg: send(msg) or True)
        self.scope = scope
        self.state_dir = state_dir
        self.mode = mode
        self.send = send
        self.epilog = epilog
        self.steps: dict[tuple[int, int], StepRun] = {}
        self.children: dict[int, Callable[[int], None]] = {}  # pid -> on exit(status)
        self.ended: dict[tuple[int, int], dict[str, Any]] = {}  # reports kept until the job is released
        self.released: dict[int, float] = {}  # recently released jobs
        # job -> (controller incarnation, requeue count) of its latest run launched here:
        # a job id is reused only by another controller database (another incarnation)
        self.launched: dict[int, tuple[Any, int]] = {}
        self.releasing: set[int] = set()
        self.tasks: set[asyncio.Future[Any]] = set()
        self.owners: dict[int, int] = {}  # job -> its owner's uid, until the job is released here
        # called with (job, owner uid or None) once a job is released here (the stray sweep)
        self.on_release: Callable[[int, int | None], None] | None = None
        # launches waiting for a cleanup of their job in progress (a few rmdirs)
        self.deferred: set[tuple[int, int]] = set()
        # what ended steps and released jobs leave, removed after their report (off the loop)
        self.reclaim = Reclaimer(scope, mode, state_dir, self.runs_here)
        self.users = UsersFile(users_path(state_dir), self.uids)
        statedir.prepare(state_dir)  # raises StateDirError

    # ------------------------------------------------------------ the agent's API

    def launch(self, msg: m.LaunchStep) -> None:
        launch.launch(self, msg)

    def adopt(self) -> None:
        """After a restart: take back every step whose cgroup still exists."""
        launch.adopt(self)

    async def kill_job(self, msg: m.KillJob) -> None:
        await kill.kill_job(self, msg)

    def reap(self) -> None:
        """SIGCHLD: collect every exited child and call its exit callback."""
        cleanup.reap(self)

    def signal_job(self, msg: m.SignalJob) -> None:
        for r in self.of_job(msg.job_id, msg.step_id):
            self.background(kill.step_signal(r, msg.signal))

    def suspend_job(self, msg: m.SuspendJob) -> None:
        for r in self.of_job(msg.job_id):
            r.frozen = msg.suspend  # at once (no ssh session is adopted into it meanwhile); the freezer after
            self.background(kill.set_frozen(r, msg.suspend))

    async def run_epilog(self, env: dict[str, str]) -> bool:
        return await cleanup.run_epilog(self, env)

    def write_users(self) -> None:
        """The uids with a running step here, for crane-pam-check (written at once)."""
        self.users.write_now()

    def uids(self) -> list[int]:
        return [int(r.spec["uid"]) for r in self.steps.values() if "uid" in r.spec]

    def runs_here(self, job_id: int, step_id: int | None) -> bool:
        """Whether a run of ``job_id`` (of its step ``step_id`` if given) is registered here."""
        if step_id is not None:
            return (job_id, step_id) in self.steps or (job_id, step_id) in self.deferred
        return any(j == job_id for (j, _s) in list(self.steps) + list(self.deferred))

    def has_step(self, uid: int) -> bool:
        """Whether ``uid`` has a step running here."""
        return any(int(r.spec.get("uid", -1)) == uid for r in self.steps.values())

    def running(self) -> list[list[int]]:
        return [[j, s] for (j, s) in self.steps]

    # ------------------------------------------------------------ the registry

    def of_job(self, job_id: int, step_id: int | None = None) -> list[StepRun]:
        """The running steps of ``job_id`` (one step if ``step_id`` is given)."""
        return [r for (j, s), r in list(self.steps.items()) if j == job_id and (step_id is None or s == step_id)]

    def add(self, run: StepRun) -> None:
        self.steps[run.key] = run
        if "uid" in run.spec:
            self.owners[run.job_id] = int(run.spec["uid"])

    def is_stale(self, job_id: int, step_id: int, attempt: int, incarnation: Any = "") -> bool:
        """Whether a launch was already handled (a resend, or a released run).
        A launch is told apart by (its controller database's incarnation, job
        id, requeue count): a released job id whose launch came from another
        incarnation (a replaced database counting from 1 again), or that was
        never launched here (killed as unknown), is a new job."""
        key = (job_id, step_id)
        if key in self.steps or key in self.ended or key in self.deferred:
            return True
        if job_id not in self.released:
            return False
        inc, last = self.launched.get(job_id, ("", 0))
        return inc == incarnation and attempt <= last

    def launching(self, job_id: int, attempt: int, incarnation: Any = "") -> None:
        self.released.pop(job_id, None)  # a requeued job's next run
        self.launched[job_id] = (incarnation, attempt)

    def ended_step(self, run: StepRun, body: dict[str, Any]) -> None:
        """``run`` ended: its report is kept (for re-registration) until its job is released."""
        self.ended[run.key] = body
        self.steps.pop(run.key, None)

    def released_job(self, job_id: int) -> int | None:
        """Forget a released job's ended steps; its owner's uid if known."""
        for key in [k for k in self.ended if k[0] == job_id]:
            del self.ended[key]
        self.released[job_id] = time.time()
        if len(self.released) > RELEASED_KEEP:
            for j in sorted(self.released, key=self.released.__getitem__)[: RELEASED_KEEP // 2]:
                del self.released[j]
                self.launched.pop(j, None)
        return self.owners.pop(job_id, None)

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task the manager keeps a reference to."""
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
