"""The job state machine, driven directly: events in, actions out, no sockets."""

from __future__ import annotations

from crane.core import events as ev
from crane.core import messages as m
from crane.core.job import Job
from crane.core.job_machine import JobMachine
from crane.core.states import CancelPath, JobState, PendingReason, StepEnd


def machine(**kw: object) -> JobMachine:
    return JobMachine(Job(id=7, name="j", uid=1000, user="alice", gid=1000, account="A",
                          qos="normal", partition="CPU", **kw))  # type: ignore[arg-type]  # fmt: skip


def kinds(actions: list[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_pending_job_enqueues_then_launches_its_batch_step() -> None:
    mc = machine()
    assert kinds(mc.start(0.0)) == ["ToScheduler"]
    mc.job.launch = {"script": "#!/bin/sh\ntrue\n", "argv": [], "env": {"A": "1"}}
    acts = mc.handle(ev.Allocated(["n1", "n2"], 2), 1.0)
    # RUNNING on disk before the launch leaves (issue 15): a crash in between
    # restarts the job PENDING with nothing of it running anywhere
    assert kinds(acts) == ["Persist", "AfterSaved", "ToNode"], kinds(acts)
    launch = acts[2]
    assert isinstance(launch, ev.ToNode) and launch.node == "n1"
    assert isinstance(launch.msg, m.LaunchStep) and launch.msg.step_id == 1
    assert launch.msg.spec["env"]["CRANE_JOB_NODELIST"] == "n[1-2]" and launch.msg.spec["env"]["A"] == "1"
    assert mc.job.state == "RUNNING" and mc.job.launch is None


def test_cancel_pending_ends_at_once() -> None:
    mc = machine()
    acts = mc.handle(ev.CancelEv(0, "root", message="bye"), 5.0)
    assert kinds(acts) == ["ToScheduler", "Persist", "Terminal"]
    assert isinstance(acts[0], ev.ToScheduler) and isinstance(acts[0].msg, ev.Dequeue)
    j = mc.job
    assert j.state == "CANCELLED" and j.start_time == j.end_time == 5.0
    assert j.cancel is not None and j.cancel.message == "bye"


def test_cancel_running_kills_every_node_then_ends_when_all_released() -> None:
    mc = machine()
    mc.handle(ev.Allocated(["n1", "n2"], 1), 1.0)
    acts = mc.handle(ev.CancelEv(0, "root", grace=5.0), 2.0)
    kills = [a for a in acts if isinstance(a, ev.ToNode)]
    assert sorted(a.node for a in kills) == ["n1", "n2"]
    assert all(isinstance(a.msg, m.KillJob) and a.msg.grace == 5.0 and not a.msg.force for a in kills)
    assert mc.job.state == "COMPLETING"
    assert mc.handle(ev.CancelEv(0, "root"), 2.5) == []  # a duplicate is harmless
    mc.handle(ev.StepEndedEv("n1", 1, 0, 15, "CANCELLED"), 3.0)
    assert "Terminal" not in kinds(mc.handle(ev.ReleasedEv("n1"), 3.0))
    assert kinds(mc.handle(ev.ReleasedEv("n2"), 4.0))[-1] == "Terminal"
    assert mc.job.state == "CANCELLED" and mc.job.end_time == 4.0


def test_force_escalates_a_graceful_kill_in_progress() -> None:
    mc = machine()
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    mc.handle(ev.CancelEv(0, "root", grace=60.0), 2.0)
    acts = mc.handle(ev.CancelEv(0, "root", force=True), 3.0)
    assert any(isinstance(a, ev.ToNode) and isinstance(a.msg, m.KillJob) and a.msg.force for a in acts)


def test_batch_step_exit_code_decides_the_end_state() -> None:
    mc = machine()
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    acts = mc.handle(ev.StepEndedEv("n1", 1, 3, 0, ""), 2.0)
    assert any(isinstance(a, ev.ToNode) and isinstance(a.msg, m.KillJob) for a in acts)  # cleanup
    assert any(isinstance(a, ev.StepDone) and a.step_id == 1 for a in acts)
    mc.handle(ev.ReleasedEv("n1"), 3.0)
    assert mc.job.state == "FAILED" and mc.job.exit_code == 3


def test_end_state_finished_and_timeout() -> None:
    mc = machine()
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    mc.handle(ev.CancelEv(0, "root", end_state="FINISHED"), 2.0)
    mc.handle(ev.ReleasedEv("n1"), 3.0)
    assert mc.job.state == "COMPLETED"
    t = machine()
    t.handle(ev.Allocated(["n1"], 1), 1.0)
    t.handle(ev.StepEndedEv("n1", 1, 0, 9, "TIMEOUT"), 2.0)
    t.handle(ev.ReleasedEv("n1"), 3.0)
    assert t.job.state == "TIMEOUT" and t.job.reason == "ExceedTimeLimit"


def test_requeue_goes_back_to_pending_and_enqueues() -> None:
    mc = machine()
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    mc.handle(ev.CancelEv(0, "preemption", path="preemption", requeue=True, reason="Preempted by job 9"), 2.0)
    acts = mc.handle(ev.ReleasedEv("n1"), 3.0)
    assert mc.job.state == "PENDING" and mc.job.requeue_count == 1 and mc.job.reason == "Preempted by job 9"
    assert any(isinstance(a, ev.ToScheduler) and isinstance(a.msg, ev.Enqueue) for a in acts)


def test_allocation_after_cancel_gives_the_nodes_back() -> None:
    mc = machine()
    mc.handle(ev.CancelEv(0, "root"), 1.0)
    acts = mc.handle(ev.Allocated(["n1"], 1), 1.5)
    assert [type(a.msg).__name__ for a in acts if isinstance(a, ev.ToScheduler)] == ["FreeNode"]


def test_step_lost_at_reregistration_fails_the_job() -> None:
    mc = machine()
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    mc.handle(ev.AgentStepsEv("n1", []), 2.0)
    mc.handle(ev.ReleasedEv("n1"), 3.0)
    assert mc.job.state == "FAILED" and mc.job.steps[1].reason == "Node re-registered but step lost"


def _ok(acts: list[object]) -> dict[str, object] | None:
    for a in acts:
        if isinstance(a, ev.Reply):
            return a.value.data if isinstance(a.value, m.Ok) else None  # type: ignore[no-any-return]
    return None


def test_running_steps_fit_in_the_jobs_cpus() -> None:
    """Red team: steps were limited one by one, not together, so a 1-CPU
    job ran 100 steps at once (each with its own copy of the memory limit)."""
    mc = machine(cpus=2)
    mc.handle(ev.Allocated(["n1"], 2), 1.0)
    assert _ok(mc.handle(ev.NewStepEv(["sleep", "9"], 1, {}, "/"), 2.0)) == {"step_id": 2, "node": "n1"}
    assert _ok(mc.handle(ev.NewStepEv(["sleep", "9"], 1, {}, "/"), 2.0)) == {"step_id": 3, "node": "n1"}
    refused = mc.handle(ev.NewStepEv(["sleep", "9"], 1, {}, "/"), 2.0)
    err = [a.value for a in refused if isinstance(a, ev.Reply)][0]
    assert isinstance(err, m.Error) and "0 of the job's 2 are free" in err.message
    mc.handle(ev.StepEndedEv("n1", 2, 0, 0, ""), 3.0)
    assert _ok(mc.handle(ev.NewStepEv(["true"], 1, {}, "/"), 4.0)) == {"step_id": 4, "node": "n1"}


def test_the_job_record_keeps_a_bounded_step_history() -> None:
    """Red team: every step persisted the whole record with every step ever
    run (quadratic); ended steps beyond the last ENDED_STEPS_KEPT are dropped."""
    from crane.core.job import ENDED_STEPS_KEPT, STEP_ARGV_CHARS

    mc = machine(cpus=1)
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    for i in range(ENDED_STEPS_KEPT + 50):
        data = _ok(mc.handle(ev.NewStepEv(["x" * 1000] * 50, 1, {}, "/"), 2.0 + i))
        assert data is not None
        mc.handle(ev.StepEndedEv("n1", int(data["step_id"]), 0, 0, ""), 2.5 + i)  # type: ignore[call-overload]
    steps = mc.job.steps
    assert 1 in steps and len(steps) <= ENDED_STEPS_KEPT + 2
    assert max(steps) == ENDED_STEPS_KEPT + 51  # the newest are kept
    assert all(sum(len(a) for a in st.argv) <= STEP_ARGV_CHARS for st in steps.values())


def test_every_action_carries_the_cause_of_its_event() -> None:
    """Issue 11: a transition traces back to the request that caused it."""
    mc = machine(cpus=1)
    allocated = mc.handle(ev.Allocated(["n1"], 1, cause=11), 1.0)
    assert allocated and all(a.cause == 11 for a in allocated)
    cancelled = mc.handle(ev.CancelEv(0, "root", CancelPath.ADMIN, cause=42), 2.0)
    kills = [a for a in cancelled if isinstance(a, ev.ToNode)]
    assert kills and all(a.cause == 42 for a in cancelled)
    released = mc.handle(ev.ReleasedEv("n1", cause=43), 3.0)
    frees = [a for a in released if isinstance(a, ev.ToScheduler)]
    assert frees and frees[0].msg.cause == 43 and mc.job.state == JobState.CANCELLED


def test_a_graceful_cancel_shows_and_a_time_limit_still_ends_in_timeout() -> None:
    """Issue 12 item 4: the pending graceful cancel is visible; the job its
    time limit ends is TIMEOUT, not CANCELLED."""
    mc = machine(cpus=1)
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    mc.handle(ev.CancelEv(1000, "alice", CancelPath.USER, graceful=True), 2.0)
    assert mc.job.state == JobState.RUNNING and mc.job.reason == PendingReason.CANCEL_PENDING_GRACEFUL
    mc.handle(ev.StepEndedEv("n1", 1, 0, 15, StepEnd.TIMEOUT), 3.0)
    mc.handle(ev.ReleasedEv("n1"), 4.0)
    assert mc.job.state == JobState.TIMEOUT and mc.job.reason == PendingReason.EXCEED_TIME_LIMIT


def test_a_requeue_says_requeued_in_the_banner() -> None:
    """Issue 12 item 7: ccontrol requeue's banner says REQUEUED, not CANCELLED."""
    mc = machine(cpus=1)
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    acts = mc.handle(ev.CancelEv(0, "root", CancelPath.ADMIN, requeue=True, reason="Requeued by root"), 2.0)
    kill = [a.msg for a in acts if isinstance(a, ev.ToNode)][0]
    assert isinstance(kill, m.KillJob) and "JOB 7 REQUEUED AT" in kill.banner and "CANCELLED" not in kill.banner
    mc.handle(ev.ReleasedEv("n1"), 3.0)
    assert mc.job.state == JobState.PENDING and mc.job.requeue_count == 1


def test_a_launch_failure_carries_its_reason_to_the_job() -> None:
    """Issue 12 item 6: why the launch failed reaches the job's reason."""
    mc = machine(cpus=1)
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    mc.handle(ev.StepEndedEv("n1", 1, 127, 0, StepEnd.LAUNCH_FAILED, "cannot open /nope/out: No such file"), 2.0)
    mc.handle(ev.ReleasedEv("n1"), 3.0)
    assert mc.job.state == JobState.FAILED
    assert mc.job.reason == "Launch failed: cannot open /nope/out: No such file"


# ---------------------------------------------------------------- ccontrol update job


def test_update_pending_job_requeues_its_new_request() -> None:
    mc = machine(time_limit=600)
    mc.start(0.0)
    acts = mc.handle(ev.UpdateEv({"partition": "GPU", "qos": "high", "priority": 9, "name": "renamed",
                                  "time_limit": None}), 1.0)  # fmt: skip
    sched = [a.msg for a in acts if isinstance(a, ev.ToScheduler)]
    assert [type(x).__name__ for x in sched] == ["Dequeue", "Enqueue"]
    assert kinds(acts)[-2:] == ["Persist", "Reply"]
    reply = acts[-1]
    assert isinstance(reply, ev.Reply) and isinstance(reply.value, m.Ok)
    j = mc.job
    assert (j.partition, j.qos, j.priority, j.name, j.time_limit) == ("GPU", "high", 9, "renamed", None)


def test_update_held_job_stays_out_of_the_queue() -> None:
    mc = machine(held=True)
    mc.start(0.0)
    acts = mc.handle(ev.UpdateEv({"priority": 3}), 1.0)
    assert not [a for a in acts if isinstance(a, ev.ToScheduler)]
    assert mc.job.priority == 3


def test_update_running_job_time_limit_reaches_its_agents() -> None:
    mc = machine(time_limit=3600)
    mc.handle(ev.Allocated(["n1", "n2"], 1), 1.0)
    mc.handle(ev.ReleasedEv("n2"), 1.5)  # n2 released: nothing sent there
    mc.job.state = JobState.RUNNING
    acts = mc.handle(ev.UpdateEv({"time_limit": 60, "name": "x"}), 2.0)
    sent = [a for a in acts if isinstance(a, ev.ToNode)]
    assert [a.node for a in sent] == ["n1"]
    assert sent[0].msg == m.SetTimeLimit(7, 60)
    assert mc.job.time_limit == 60 and mc.job.name == "x"
    acts = mc.handle(ev.UpdateEv({"time_limit": None}), 3.0)
    assert [a.msg for a in acts if isinstance(a, ev.ToNode)] == [m.SetTimeLimit(7, 0)]


def test_update_running_job_partition_is_refused_and_nothing_changes() -> None:
    mc = machine()
    mc.handle(ev.Allocated(["n1"], 1), 1.0)
    acts = mc.handle(ev.UpdateEv({"partition": "GPU", "name": "new"}), 2.0)
    assert kinds(acts) == ["Reply"]
    reply = acts[0]
    assert isinstance(reply, ev.Reply) and isinstance(reply.value, m.Error)
    assert "Partition can only be changed while pending" in reply.value.message
    assert mc.job.partition == "CPU" and mc.job.name == "j"


def test_update_ended_job_is_refused() -> None:
    mc = machine()
    mc.handle(ev.CancelEv(0, "root"), 1.0)
    acts = mc.handle(ev.UpdateEv({"name": "late"}), 2.0)
    assert kinds(acts) == ["Reply"] and isinstance(acts[0].value, m.Error)  # type: ignore[attr-defined]


# ---------------------------------------------------------- the typed record: Step and CancelIntent


def test_a_step_round_trips_and_its_dict_holds_only_what_was_set() -> None:
    from crane.core.job import Step

    st = Step(JobState.RUNNING, "n1", 2.0, 1, ["echo", "hi"])
    assert st.to_dict() == {"state": "RUNNING", "node": "n1", "start": 2.0, "cpus": 1, "argv": ["echo", "hi"]}
    st.pid, st.cancelled = 42, {"by_name": "bob", "by_uid": 1001, "message": "m"}
    st.state, st.end, st.exit_code, st.signal, st.output_lost = JobState.CANCELLED, 3.0, 0, 15, 7
    d = st.to_dict()
    assert list(d) == ["state", "node", "start", "cpus", "argv", "pid", "cancelled", "end", "exit_code",
                       "signal", "output_lost"]  # fmt: skip
    assert Step.from_dict(d) == st and Step.from_dict(d).to_dict() == d


def test_a_cancel_intent_round_trips_with_every_key() -> None:
    from crane.core.job import CancelIntent

    c = CancelIntent(by_uid=0, by_name="root", path=CancelPath.ADMIN, message="m", time=5.0, force=True,
                     graceful=False, grace=2.0, end_state="CANCELLED", rid="r1", requeue=False, reason="x")  # fmt: skip
    d = c.to_dict()
    assert set(d) == {"by_uid", "by_name", "path", "message", "time", "force", "graceful", "grace",
                      "end_state", "rid", "requeue", "reason"}  # fmt: skip
    assert CancelIntent.from_dict(d) == c


def test_the_job_record_round_trips_steps_and_cancel_as_plain_dicts() -> None:
    import json

    from crane.core.job import CancelIntent, Step

    mc = machine(cpus=2)
    mc.handle(ev.Allocated(["n1"], 2), 1.0)
    mc.handle(ev.NewStepEv(["sleep", "9"], 1, {}, "/"), 2.0)
    mc.handle(ev.StepStartedEv("n1", 2, 4321), 2.1)
    mc.handle(ev.CancelEv(1001, "bob", CancelPath.USER, 2, "one step"), 2.5)
    mc.handle(ev.StepEndedEv("n1", 2, 0, 15, ""), 3.0)
    mc.handle(ev.CancelEv(0, "root", CancelPath.ADMIN, None, "bye", grace=1.0), 4.0)
    rec = mc.job.to_dict()
    stored = json.loads(json.dumps(rec))  # as the store keeps it: plain data, string keys
    assert stored["steps"]["2"] == {"state": "CANCELLED", "node": "n1", "start": 2.0, "cpus": 1,
                                    "argv": ["sleep", "9"], "pid": 4321,
                                    "cancelled": {"by_name": "bob", "by_uid": 1001, "message": "one step"},
                                    "end": 3.0, "exit_code": 0, "signal": 15}  # fmt: skip
    assert stored["cancel"]["by_name"] == "root" and stored["cancel"]["time"] == 4.0
    back = Job.from_dict(stored)
    assert isinstance(back.cancel, CancelIntent) and all(isinstance(s, Step) for s in back.steps.values())
    assert sorted(back.steps) == [1, 2] and back.to_dict() == rec
    # the loaded job goes on where it stopped: its nodes released, it ends CANCELLED
    mc2 = JobMachine(back)
    mc2.handle(ev.ReleasedEv("n1"), 5.0)
    assert back.state == "CANCELLED" and back.steps[1].state == "CANCELLED" and back.steps[1].end == 5.0


def test_an_old_style_record_with_missing_keys_loads() -> None:
    """Records written before the typed steps (any age): missing keys take
    their defaults, and the wire view is what it was."""
    from crane.requests.query import job_view

    old = {"id": 9, "name": "o", "uid": 1000, "user": "alice", "gid": 1000, "account": "A", "qos": "normal",
           "partition": "CPU", "state": "RUNNING", "nodes": ["n1"],
           "steps": {"1": {"state": "RUNNING", "node": "n1", "start": 1.0, "cpus": 1, "argv": ["batch"]},
                     "2": {"state": "COMPLETED", "node": "n1", "start": 2.0, "end": 3.0}},
           "cancel": {"by_name": "root", "path": "admin", "time": 4.0}}  # fmt: skip
    j = Job.from_dict(old)
    assert j.steps[2].cpus == 0 and j.steps[2].argv == [] and j.steps[2].exit_code is None
    assert j.cancel is not None and j.cancel.by_name == "root" and not j.cancel.force and j.cancel.message == ""
    view = job_view(j)
    assert view["cancelled_by"] == "root" and view["cancel_path"] == "admin" and view["message"] == ""
    assert view["cancel_time"] == 4.0 and view["steps"][0]["step_id"] == 1 and view["steps"][0]["cancelled_by"] is None
    assert "exit_code" not in view["steps"][1] and "pid" not in view["steps"][1]
    assert Job.from_dict({**old, "cancel": None, "steps": None}).steps == {}


def test_a_steps_launch_waits_for_its_record_on_disk() -> None:
    """Issue 15: a crun step's LaunchStep came before its Persist, so a
    controller crash in between left a step running that the restarted
    controller did not know. Now: Persist, then AfterSaved (what follows goes
    to the nodes once committed), the launches, then the reply."""
    mc = machine(cpus=2)
    mc.handle(ev.Allocated(["n1", "n2"], 2), 1.0)
    acts = mc.handle(ev.NewStepEv(["hostname"], 1, {}, "/"), 2.0)
    names = kinds(acts)
    assert names == ["Persist", "AfterSaved", "ToNode", "ToNode", "Reply"], names
    assert all(isinstance(a.msg, m.LaunchStep) and a.msg.step_id == 2 for a in acts if isinstance(a, ev.ToNode))
    assert _ok(acts) == {"step_id": 2, "node": "n1", "nodes": ["n1", "n2"], "tasks": [1, 1]}
    # a refused step writes nothing and launches nothing
    assert kinds(mc.handle(ev.NewStepEv(["x"], 9, {}, "/"), 3.0)) == ["Reply"]


def test_the_job_actor_sends_a_launch_only_once_its_step_is_committed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The job actor with a real store: the launch leaves only after the
    barrier, the saved record already holds the step, a cancel of the step
    made meanwhile follows its launch, and the launch carries the database's
    incarnation (issue 15)."""
    import asyncio

    from crane.actors.job import JobActor
    from crane.store import Store

    store = Store(str(tmp_path / "db" / "crane.db"))
    sent: list[tuple[str, m.Message, dict[str, object] | None]] = []

    class Port:  # what a job actor uses of the job table here: the real store, a recorded send
        def __init__(self) -> None:
            self.store = store

        def to_node(self, node: str, msg: m.Message) -> None:
            sent.append((node, msg, store.get_job(7)))  # what is on disk when it leaves

        def node_devices(self, node: str) -> list[list[object]]:
            return []

        def step_done(self, *args: object) -> None:
            pass

    async def run() -> None:
        store.start()
        try:
            actor = JobActor(machine(cpus=2).job, Port())  # type: ignore[arg-type]
            actor.machine.handle(ev.Allocated(["n1"], 2), 1.0)
            done = asyncio.get_running_loop().create_future()
            actor.execute(actor.machine.handle(ev.NewStepEv(["sleep", "9"], 1, {}, "/"), 2.0))
            assert sent == []  # not before the commit
            actor.execute(actor.machine.handle(ev.CancelEv(0, "root", step_id=2), 2.5))
            assert sent == []  # queued behind the launch, never ahead of it
            store.barrier(lambda: done.set_result(None))
            await asyncio.wait_for(done, 30)
        finally:
            store.stop()
            store.read.close()

    asyncio.run(run())
    assert [type(msg).__name__ for _n, msg, _rec in sent] == ["LaunchStep", "KillJob"], sent
    node, launch, rec = sent[0]
    assert node == "n1" and isinstance(launch, m.LaunchStep) and launch.step_id == 2
    assert rec is not None and "2" in {str(k) for k in rec["steps"]}, rec
    assert launch.spec["incarnation"] == store.incarnation and store.incarnation > 0
