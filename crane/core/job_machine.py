"""One job: its record and its state machine.

``JobMachine.handle(event, now)`` is pure: it changes the job record and
returns actions (``ToNode``, ``ToScheduler``, ``Persist``, ``AfterSaved``,
``Terminal``, ``Reply``). ``crane.actors.job.JobActor`` executes those actions against the controller. Tests
drive ``JobMachine`` directly, with no sockets.

Life of a job::

    PENDING --Allocated--> RUNNING --batch step ends / cancel--> COMPLETING
        --every node released--> COMPLETED | FAILED | CANCELLED | TIMEOUT | OUT_OF_MEMORY
    PENDING --cancel--> CANCELLED (start = end = now)
    RUNNING --requeue (preemption)--> COMPLETING --released--> PENDING
"""

from __future__ import annotations

from typing import Any

from crane.core import events as ev
from crane.core import messages as m
from crane.core import patterns
from crane.core.bulk_cancel import end_pending, intent_of
from crane.core.ids import compress_nodes
from crane.core.job import (
    CancelIntent,
    Job,
    Step,
    _argv_summary,
    _prune_ended_steps,
    cancel_banner,
    request_of,
    task_layout,
)
from crane.core.states import (
    ACTIVE,
    CANCELLABLE,
    CancelPath,
    ControlAction,
    EndReason,
    EndState,
    KillReason,
    NodeReason,
    PendingReason,
    StepEnd,
)
from crane.core.states import JobState as S

UPDATABLE = (S.PENDING, S.RUNNING, S.SUSPENDED)
PENDING_ONLY = ("partition", "qos", "priority")  # fields of a pending job only (Slurm's rule)
RESCHEDULE = PENDING_ONLY  # what the scheduler's request holds of these
UPDATE_NAMES = {"partition": "Partition", "qos": "QOS", "priority": "Priority"}

FAILED_PART = (StepEnd.LOST, StepEnd.LAUNCH_FAILED)  # a node's part of a step that failed there
STDIN, PTY = 0, 3  # NewStepEv.stream members (crane.agent.stream): crun's stdin, a terminal
_HANDLERS, on = ev.handler_table()  # one handler per event type, filled by @on


class JobMachine:
    """Pure transitions of one job. ``self.job`` is the record it owns."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.streamed = False  # crun's own job (its batch step streams to crun): never requeued by a node's fall

    # The job starts its life here (submission or recovery after a restart).
    def start(self, now: float) -> list[Any]:
        j = self.job
        if j.state == S.PENDING:
            if j.held:
                j.reason = j.reason or (PendingReason.HELD_ADMIN if j.admin_hold else PendingReason.HELD_USER)
                return []
            return [ev.ToScheduler(ev.Enqueue(request_of(j)))]
        if j.state == S.COMPLETING:  # a cancel or cleanup in flight before a restart: redo it
            return self._kill_nodes(j.cancel, cleanup=not j.cancel)
        return []

    def handle(self, event: Any, now: float) -> list[Any]:
        """One handler per event type (a dict lookup: no per-call wrapper)."""
        fn = _HANDLERS.get(type(event))
        if fn is None:
            raise TypeError(f"job {self.job.id}: unexpected event {type(event).__name__}")
        actions: list[Any] = fn(self, event, now)
        cause = event.cause
        if cause:
            for a in actions:  # what this event caused carries its cause on
                a.cause = cause
                if isinstance(a, ev.ToScheduler):
                    a.msg.cause = cause
        return actions

    # ---------------------------------------------------------- allocation and steps

    @on(ev.Allocated)
    def _on_Allocated(self, e: ev.Allocated, now: float) -> list[Any]:
        j = self.job
        if j.state != S.PENDING or j.held:
            # cancelled or held while the scheduler placed it: give the nodes back
            return [ev.ToScheduler(ev.FreeNode(j.id, n)) for n in e.nodes]
        j.state, j.reason, j.start_time, j.end_time = S.RUNNING, "", now, None
        j.nodes, j.released, j.cpus = list(e.nodes), [], e.cpus
        j.gpu_alloc = {n: list(ix) for n, ix in e.gpus.items()}
        j.steps = {1: Step(S.RUNNING, j.nodes[0], now, e.cpus, ["batch"])}
        j.next_step, j.end_reason, j.exit_code, j.exit_signal = 2, "", 0, 0
        launch = j.launch or {}
        j.launch = None  # a requeue reads it from the store again
        stream = list(launch.get("stream") or [])
        self.streamed = bool(stream)
        if stream:  # crun's own job: its command runs on every node (one task per node, or -n)
            return self._crun_job(launch, stream, now)
        spec = j.step_spec(1, launch.get("argv") or [], launch.get("env") or {}, j.cwd, e.cpus,
                           launch.get("script") or "", j.nodes[0])  # fmt: skip
        spec["stream"] = stream
        # launched once RUNNING is on disk: a controller that crashes before
        # restarts with the job PENDING and nothing of it running anywhere
        return [ev.Persist(), ev.AfterSaved(), ev.ToNode(j.nodes[0], m.LaunchStep(j.id, 1, spec))]

    def _crun_job(self, launch: dict[str, Any], stream: list[int], now: float) -> list[Any]:
        """The batch step of crun's own job: the command on each node (its
        tasks as task_layout places them: the job's cpus per node already
        hold its tasks, see crane.cli.job_options.build_spec)."""
        j = self.job
        layout = [1] if PTY in stream else task_layout(j.nodes, j.cpus, 1, j.ntasks, j.ntasks_per_node)
        if isinstance(layout, str):
            layout = [1] * len(j.nodes)
        nodes = j.nodes[: len(layout)]
        st = j.steps[1]
        if len(nodes) > 1 or layout != [1]:
            st.nodes, st.tasks = list(nodes), list(layout)
        actions: list[Any] = []
        rank = 0
        for index, (node, count) in enumerate(zip(nodes, layout, strict=True)):
            task = {"rank": rank, "count": count, "index": index, "ntasks": sum(layout), "nodes": nodes,
                    "counts": layout, "label": False}  # fmt: skip
            rank += count
            spec = j.step_spec(1, launch.get("argv") or [], launch.get("env") or {}, j.cwd, j.cpus,
                               launch.get("script") or "", node, task)  # fmt: skip
            spec["stream"] = [s for s in stream if index == 0 or s != STDIN]
            actions.append(ev.ToNode(node, m.LaunchStep(j.id, 1, spec)))
        return [ev.Persist(), ev.AfterSaved(), *actions]

    @on(ev.NewStepEv)
    def _on_NewStepEv(self, e: ev.NewStepEv, now: float) -> list[Any]:
        j = self.job
        if j.state != S.RUNNING:
            return [ev.Reply(e.reply, m.Error(4, f"Job {j.id} is {j.state}, not running"))]
        if j.cancel and j.cancel.graceful:
            return [ev.Reply(e.reply, m.Error(4, f"Job {j.id} is being cancelled: no new steps"))]
        if e.cpus > j.cpus:
            return [ev.Reply(e.reply, m.Error(2, f"step asks {e.cpus} cpus, the job has {j.cpus}"))]
        # one task per node of the job unless -n/--ntasks-per-node say otherwise
        # (a terminal step runs one task, on the first node)
        if e.nnodes > len(j.nodes):
            return [ev.Reply(e.reply, m.Error(2, f"step asks {e.nnodes} nodes, the job has {len(j.nodes)}"))]
        pool = j.nodes[: e.nnodes] if e.nnodes else j.nodes
        pty = PTY in e.stream
        layout = [1] if pty and not (e.ntasks or e.ntasks_per_node) else task_layout(
            pool, j.cpus, e.cpus, e.ntasks, e.ntasks_per_node)  # fmt: skip
        if isinstance(layout, str):
            return [ev.Reply(e.reply, m.Error(2, layout))]
        if pty and sum(layout) != 1:
            return [ev.Reply(e.reply, m.Error(2, "--pty runs one task"))]
        nodes = j.nodes[: len(layout)]
        # steps share the allocation (the batch step, 1, is the job's shell, as
        # in Slurm): the running ones together fit in the job's CPUs on each node
        for node, count in zip(nodes, layout, strict=True):
            busy = sum(int(st.cpus or 0) * st.tasks_on(node) for sid, st in j.steps.items()
                       if sid != 1 and st.state == S.RUNNING)  # fmt: skip
            want = e.cpus * count
            if busy + want > j.cpus:
                free = max(j.cpus - busy, 0)
                where = f" on {node}" if len(j.nodes) > 1 else ""
                return [ev.Reply(e.reply, m.Error(4, f"step asks {want} cpus{where}, {free} of the job's {j.cpus} are free (running steps hold the rest)"))]
        sid = j.next_step
        j.next_step += 1
        shown = _argv_summary(e.argv)  # the record keeps a bounded summary
        _prune_ended_steps(j.steps)
        st = Step(S.RUNNING, nodes[0], now, e.cpus, shown)
        if len(nodes) > 1 or layout != [1]:
            st.nodes, st.tasks = list(nodes), list(layout)
        j.steps[sid] = st
        ntasks = sum(layout)
        actions: list[Any] = []
        rank = 0
        for index, (node, count) in enumerate(zip(nodes, layout, strict=True)):
            task = {"rank": rank, "count": count, "index": index, "ntasks": ntasks, "nodes": nodes,
                    "counts": layout, "label": e.label}  # fmt: skip
            rank += count
            spec = j.step_spec(sid, e.argv, e.env, e.cwd, e.cpus, node=node, task=task)
            # crun's stdin reaches the first task only (as srun's default)
            spec["stream"] = [s for s in e.stream if index == 0 or s != STDIN]
            triple = (sid - 2, task["rank"], index)
            spec.update({k: patterns.expand(v, j.id, j.name, j.user, node, task=triple)
                         for k, v in (("stdout", e.stdout), ("stderr", e.stderr)) if v})  # fmt: skip
            j.task_files(spec, {k: v for k, v in (("stdout", e.stdout), ("stderr", e.stderr)) if v}, node, sid - 2, task)
            actions.append(ev.ToNode(node, m.LaunchStep(j.id, sid, spec)))
        answer: dict[str, Any] = {"step_id": sid, "node": nodes[0]}
        if st.nodes:
            answer.update(nodes=list(nodes), tasks=list(layout))
        # launched once the step is on disk: a controller that crashes before knows nothing ran
        return [ev.Persist(), ev.AfterSaved(), *actions, ev.Reply(e.reply, m.Ok(answer))]

    @on(ev.StepStartedEv)
    def _on_StepStartedEv(self, e: ev.StepStartedEv, now: float) -> list[Any]:
        st = self.job.steps.get(e.step_id)
        if st is not None:
            st.pid = e.pid
        return []

    @on(ev.StepEndedEv)
    def _on_StepEndedEv(self, e: ev.StepEndedEv, now: float) -> list[Any]:
        j = self.job
        st = j.steps.get(e.step_id)
        if st is None or st.state != S.RUNNING:
            return []  # duplicate report (e.g. after a re-registration)
        if len(st.nodes) > 1:  # a multi-node step ends when every node reported
            if e.node not in st.nodes or e.node in st.ended:
                return []
            first_failure = not any(x[2] in FAILED_PART for x in st.ended.values())
            st.ended[e.node] = [e.exit_code, e.signal, e.reason, e.detail]
            actions: list[Any] = []
            if e.reason in FAILED_PART and first_failure and not st.cancelled:
                # its part failed: the rest of the step is killed (as srun does), the node named
                kill = m.KillJob(j.id, e.step_id, 0.0, True, KillReason.CANCELLED, "")
                actions += [ev.ToNode(n, kill) for n in st.nodes if n not in st.ended and n not in j.released]
            if len(st.ended) < len(st.nodes):
                return actions + [ev.Persist()]
            e, failed = _combined(e, st)
            return actions + self._step_end(e, st, now, failed)
        return self._step_end(e, st, now, None)

    def _step_end(self, e: ev.StepEndedEv, st: Step, now: float, reason: str | None) -> list[Any]:
        j = self.job
        st.end, st.exit_code, st.signal = now, e.exit_code, e.signal
        if st.cancelled:
            st.state = S.CANCELLED
        elif e.reason:
            st.state = {StepEnd.LOST: S.FAILED, StepEnd.LAUNCH_FAILED: S.FAILED}.get(e.reason, e.reason)
        else:
            st.state = S.COMPLETED if e.exit_code == 0 and e.signal == 0 else S.FAILED
        if e.reason == StepEnd.LOST:
            st.reason = "Node re-registered but step lost"
        elif e.reason == StepEnd.LAUNCH_FAILED:
            st.reason = "Launch failed: " + e.detail if e.detail else "Launch failed"
        if reason:  # which node of a multi-node step failed
            st.reason = f"{st.reason} on {reason}" if st.reason else f"Failed on {reason}"
        actions: list[Any] = [ev.Persist(), ev.StepDone(e.step_id, st)]
        if e.step_id == 1 and j.state in (S.RUNNING, S.SUSPENDED):
            j.exit_code, j.exit_signal = e.exit_code, e.signal
            if e.reason in (StepEnd.TIMEOUT, StepEnd.OUT_OF_MEMORY):
                j.end_reason = e.reason
            elif e.reason in (StepEnd.LOST, StepEnd.LAUNCH_FAILED):
                j.end_reason = EndReason.FAILED
                j.reason = st.reason or ""
            actions += self._kill_nodes(j.cancel, cleanup=True)
        elif e.step_id == 1 and j.state == S.COMPLETING:
            j.exit_code, j.exit_signal = e.exit_code, e.signal
        return actions

    @on(ev.ReleasedEv)
    def _on_ReleasedEv(self, e: ev.ReleasedEv, now: float) -> list[Any]:
        j = self.job
        if e.node not in j.nodes or e.node in j.released:
            return []
        j.released.append(e.node)
        actions: list[Any] = [ev.ToScheduler(ev.FreeNode(j.id, e.node))]
        if e.kill_failed:
            actions.append(ev.ToScheduler(ev.NodeStatus(e.node, drain=True, reason=NodeReason.KILL_TASK_FAILED)))
        if j.state != S.COMPLETING:
            # an agent released the job on its own (its steps vanished): end it
            if j.state in (S.RUNNING, S.SUSPENDED):
                j.end_reason = j.end_reason or EndReason.FAILED
                actions += self._kill_nodes(j.cancel, cleanup=True)
            return actions
        if len(j.released) >= len(j.nodes):
            actions += self._finish(now)
        return actions

    # ---------------------------------------------------------- cancel, signal, control

    @on(ev.CancelEv)
    def _on_CancelEv(self, e: ev.CancelEv, now: float) -> list[Any]:
        j = self.job
        if e.signal is not None:
            return self._signal(e)
        if e.step_id is not None:
            return self._cancel_step(e)
        if j.state not in CANCELLABLE:
            if j.state == S.COMPLETING and j.cancel and e.force and not j.cancel.force:
                j.cancel.force = True  # escalate a graceful kill in progress
                return self._kill_nodes(j.cancel, cleanup=False) + [ev.Persist()]
            return []  # duplicate cancel: harmless
        if j.state == S.PENDING:  # no processes: the record alone (also in bulk: crane.core.bulk_cancel)
            end_pending(j, intent_of(e, now), e, now)
            return [ev.ToScheduler(ev.Dequeue(j.id)), ev.Persist(), ev.Terminal()]
        j.cancel = intent_of(e, now)
        if e.reason:
            j.reason = e.reason
        if e.graceful:  # running steps finish; no new ones start
            j.reason = PendingReason.CANCEL_PENDING_GRACEFUL
            return [ev.ToScheduler(ev.Ending(j.id)), ev.Persist()]
        return self._kill_nodes(j.cancel, cleanup=False) + [ev.Persist()]

    def _signal(self, e: ev.CancelEv) -> list[Any]:
        j = self.job
        assert e.signal is not None
        if e.step_id is None:
            return [ev.ToNode(n, m.SignalJob(j.id, None, e.signal)) for n in j.nodes if n not in j.released]
        st = j.steps[e.step_id]
        return [ev.ToNode(n, m.SignalJob(j.id, e.step_id, e.signal)) for n in _live_nodes(j, st)]

    def _cancel_step(self, e: ev.CancelEv) -> list[Any]:
        j = self.job
        st = j.steps.get(e.step_id or 0)
        if st is None or st.state != S.RUNNING:
            return []
        st.cancelled = {"by_name": e.by_name, "by_uid": e.by_uid, "message": e.message}
        grace = 0.0 if e.force else (e.grace or 0.0)
        banner = cancel_banner(j, e.by_name, e.message).replace(
            f"JOB {j.id}", f"STEP {j.id}.{e.step_id}"
        )
        kill = m.KillJob(j.id, e.step_id, grace, e.force, KillReason.CANCELLED, banner)
        return [ev.ToNode(n, kill) for n in _live_nodes(j, st)] + [ev.Persist()]

    @on(ev.ControlEv)
    def _on_ControlEv(self, e: ev.ControlEv, now: float) -> list[Any]:
        j = self.job
        if e.action == ControlAction.HOLD:  # e.rank: an admin hold's rank (a lower one never lowers a hold)
            if j.state != S.PENDING:
                return [ev.Reply(e.reply, m.Error(4, f"Job {j.id} is not pending"))]
            j.admin_hold = max(e.rank, int(j.admin_hold) if j.held else 0)
            j.held, j.reason = True, PendingReason.HELD_ADMIN if j.admin_hold else PendingReason.HELD_USER
            return [ev.ToScheduler(ev.Dequeue(j.id)), ev.Persist(), ev.Reply(e.reply, m.Ok())]
        if e.action == ControlAction.RELEASE:  # e.rank: the caller's rank; an admin hold needs as much
            if not j.held:
                return [ev.Reply(e.reply, m.Error(4, f"Job {j.id} is not held"))]
            if int(j.admin_hold) > e.rank:
                return [ev.Reply(e.reply, m.Error(4, "Permission denied"))]
            j.held, j.admin_hold, j.reason = False, 0, ""
            return [ev.ToScheduler(ev.Enqueue(request_of(j))), ev.Persist(), ev.Reply(e.reply, m.Ok())]
        if e.action in (ControlAction.SUSPEND, ControlAction.RESUME):
            want = e.action == ControlAction.SUSPEND
            if j.state != (S.RUNNING if want else S.SUSPENDED):
                return [ev.Reply(e.reply, m.Error(4, f"Job {j.id} is {j.state}"))]
            j.state = S.SUSPENDED if want else S.RUNNING
            live = [n for n in j.nodes if n not in j.released]
            return [ev.ToNode(n, m.SuspendJob(j.id, want)) for n in live] + [
                ev.ToScheduler(ev.Suspended(j.id, want)), ev.Persist(), ev.Reply(e.reply, m.Ok())
            ]
        return [ev.Reply(e.reply, m.Error(2, f"unknown action {e.action}"))]

    @on(ev.UpdateEv)
    def _on_UpdateEv(self, e: ev.UpdateEv, now: float) -> list[Any]:
        """ccontrol update job (rights checked by the request handler):
        partition, QoS and priority while pending (the scheduler gets the new
        request); name and time limit while pending, running or suspended (a
        live job's new limit goes to its nodes' agents)."""
        j, f = self.job, e.fields
        if j.state not in UPDATABLE:
            return [ev.Reply(e.reply, m.Error(4, f"Job {j.id} is {j.state}: it cannot be updated"))]
        queued = [k for k in PENDING_ONLY if k in f]
        if queued and j.state != S.PENDING:
            what = ", ".join(UPDATE_NAMES[k] for k in queued)
            return [ev.Reply(e.reply, m.Error(4, f"Job {j.id} is {j.state}: {what} can only be changed while pending"))]
        if "name" in f:
            j.name = str(f["name"])
        if "partition" in f:
            j.partition = str(f["partition"])
        if "qos" in f:
            j.qos = str(f["qos"])
        if "priority" in f:
            j.priority = int(f["priority"])
        actions: list[Any] = []
        if "time_limit" in f:
            j.time_limit = None if f["time_limit"] is None else int(f["time_limit"])
            if j.state != S.PENDING:
                seconds = j.time_limit or 0
                actions += [ev.ToNode(n, m.SetTimeLimit(j.id, seconds)) for n in j.nodes if n not in j.released]
        if j.state == S.PENDING and not j.held and any(k in f for k in RESCHEDULE):
            # the scheduler sees the new request: out of the queue and back in
            actions += [ev.ToScheduler(ev.Dequeue(j.id)), ev.ToScheduler(ev.Enqueue(request_of(j)))]
        return actions + [ev.Persist(), ev.Reply(e.reply, m.Ok())]

    @on(ev.SetReason)
    def _on_SetReason(self, e: ev.SetReason, now: float) -> list[Any]:
        self.job.reason = e.reason
        return [ev.Persist()]

    # ---------------------------------------------------------- node events

    @on(ev.NodeDownEv)
    def _on_NodeDownEv(self, e: ev.NodeDownEv, now: float) -> list[Any]:
        j = self.job
        if e.node not in j.nodes or e.node in j.released or j.state not in ACTIVE:
            return []
        actions: list[Any] = []
        if self._never_started_on(e.node):
            # its launch never reached the node (or its start never came back):
            # it never ran, so it goes back to the queue rather than ending with
            # the node, and a preemptor whose victims died for it still starts.
            # No kill for that node: its agent refuses the held launch (too old,
            # see LaunchStep's "heard_at") or kills it as unknown when it
            # registers; a kill would come back as a release that the job's next
            # run there would take for its own
            why = f"Node {e.node} down before the job started"
            requeue = self.handle(ev.CancelEv(0, "root", CancelPath.ADMIN, force=True, requeue=True, reason=why,
                                              cause=e.cause), now)  # fmt: skip
            actions = [a for a in requeue if not (isinstance(a, ev.ToNode) and a.node == e.node)]
        for sid, st in j.steps.items():
            if e.node in st.all_nodes() and st.state == S.RUNNING:
                st.state, st.end, st.reason = S.FAILED, now, f"Node {e.node} down"
                actions.append(ev.StepDone(sid, st))  # its crun learns it at once
        if not j.cancel:
            j.end_reason, j.reason = EndReason.NODE_FAIL, f"Node {e.node} down"
        if j.state != S.COMPLETING:
            actions += self._kill_nodes(j.cancel, cleanup=True)
        return actions + self.handle(ev.ReleasedEv(e.node), now)

    def _never_started_on(self, node: str) -> bool:
        """The job runs (not cancelled) and its batch step, on ``node`` alone,
        was never reported started there (no pid came back)."""
        j = self.job
        st = j.steps.get(1)
        return (j.state == S.RUNNING and j.cancel is None and not self.streamed and st is not None
                and st.node == node and not st.nodes and st.pid is None and st.state == S.RUNNING)  # fmt: skip

    @on(ev.AgentStepsEv)
    def _on_AgentStepsEv(self, e: ev.AgentStepsEv, now: float) -> list[Any]:
        """Reconcile after the node's agent (re-)registered."""
        j = self.job
        if e.node not in j.nodes or e.node in j.released:
            return []
        actions: list[Any] = []
        if j.state == S.COMPLETING:  # deliver the kill that may have been lost
            return self._kill_nodes(j.cancel, cleanup=not j.cancel, only=e.node)
        for sid, st in list(j.steps.items()):
            if (e.node in st.all_nodes() and e.node not in st.ended and st.state == S.RUNNING
                    and sid not in e.steps):  # fmt: skip
                actions += self.handle(ev.StepEndedEv(e.node, sid, -1, 0, StepEnd.LOST), now)
        return actions

    # ---------------------------------------------------------- helpers

    def _kill_nodes(self, cancel: CancelIntent | None, cleanup: bool, only: str | None = None) -> list[Any]:
        """Send KillJob to every node not yet released. ``cleanup``: the batch
        step ended by itself; kill leftovers at once and run the epilog."""
        j = self.job
        ending = [ev.ToScheduler(ev.Ending(j.id))] if j.state != S.COMPLETING else []  # no longer a preemption candidate
        j.state = S.COMPLETING
        if cleanup:
            kill = m.KillJob(j.id, None, 0.0, False, KillReason.COMPLETED, "", self._epilog_env())
        else:
            c = cancel or CancelIntent()
            force = bool(c.force)
            grace = 0.0 if force else float(c.grace or 0.0)
            if c.path == CancelPath.PREEMPTION:
                banner = f"*** JOB {j.id} PREEMPTED: {c.reason} ***"
            else:
                banner = cancel_banner(j, c.by_name, c.message, c.time)
                if c.requeue:
                    banner = banner.replace(" CANCELLED AT ", " REQUEUED AT ", 1)
            kill = m.KillJob(j.id, None, grace, force, KillReason.CANCELLED, banner, self._epilog_env())
        targets = [n for n in j.nodes if n not in j.released and (only is None or n == only)]
        return ending + [ev.ToNode(n, kill) for n in targets]

    def _epilog_env(self) -> dict[str, str]:
        j = self.job
        return {
            "CRANE_JOB_ID": str(j.id), "CRANE_JOB_USER": j.user, "CRANE_JOB_UID": str(j.uid),
            "CRANE_JOB_NODELIST": compress_nodes(j.nodes), "CRANE_JOB_PARTITION": j.partition,
        }  # fmt: skip

    def final_state(self) -> str:
        j = self.job
        c = j.cancel
        if c and c.graceful and j.end_reason in (EndReason.TIMEOUT, EndReason.OUT_OF_MEMORY):
            return j.end_reason  # a graceful cancel let it run: its time limit (or memory) ended it
        if c:
            return S.COMPLETED if c.end_state == EndState.FINISHED else S.CANCELLED
        if j.end_reason in (EndReason.TIMEOUT, EndReason.OUT_OF_MEMORY):
            return j.end_reason
        if j.end_reason in (EndReason.NODE_FAIL, EndReason.FAILED):
            return S.FAILED
        return S.COMPLETED if j.exit_code == 0 and j.exit_signal == 0 else S.FAILED

    def _finish(self, now: float) -> list[Any]:
        j = self.job
        for st in j.steps.values():
            if st.state == S.RUNNING:
                st.state, st.end = S.CANCELLED if j.cancel else S.COMPLETED, now
        if j.cancel and j.cancel.requeue:
            j.requeue_count += 1
            j.state, j.reason = S.PENDING, j.cancel.reason
            j.cancel, j.nodes, j.released, j.steps, j.gpu_alloc = None, [], [], {}, {}
            j.start_time = j.end_time = None
            return [ev.Persist(), ev.ToScheduler(ev.Enqueue(request_of(j)))]
        j.state, j.end_time = self.final_state(), now
        if j.state == S.TIMEOUT:
            j.reason = PendingReason.EXCEED_TIME_LIMIT
        return [ev.Persist(), ev.Terminal()]


def _live_nodes(j: Job, st: Step) -> list[str]:
    """The nodes where ``st`` may still run (not ended there, not released)."""
    return [n for n in st.all_nodes() if n not in st.ended and n not in j.released]


def _combined(e: ev.StepEndedEv, st: Step) -> tuple[ev.StepEndedEv, str | None]:
    """One end for a multi-node step from its nodes' ends: the largest exit
    code, a signal-ended task winning (as srun); a node's failure reason
    (lost, launch failed) over a plain end."""
    ends = list(st.ended.values())
    signals = [int(x[1]) for x in ends if int(x[1] or 0)]
    code = max(int(x[0]) for x in ends)
    failed = [(n, x) for n, x in st.ended.items() if x[2] in FAILED_PART]
    others = [(n, x) for n, x in st.ended.items() if x[2]]
    node, first = (failed or others or [(None, None)])[0]
    end = ev.StepEndedEv(e.node, e.step_id, code, max(signals) if signals else 0,
                         first[2] if first else "", first[3] if first else "")  # fmt: skip
    return end, node if failed else None
