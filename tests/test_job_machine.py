"""The job state machine, driven directly: events in, actions out, no sockets."""

from __future__ import annotations

from crane import messages as m
from crane.actors import events as ev
from crane.actors.job import Job, JobMachine


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
    launch = acts[0]
    assert isinstance(launch, ev.ToNode) and launch.node == "n1"
    assert isinstance(launch.msg, m.LaunchStep) and launch.msg.step_id == 1
    assert launch.msg.spec["env"]["CRANE_JOB_NODELIST"] == "n1,n2" and launch.msg.spec["env"]["A"] == "1"
    assert mc.job.state == "RUNNING" and mc.job.launch is None


def test_cancel_pending_ends_at_once() -> None:
    mc = machine()
    acts = mc.handle(ev.CancelEv(0, "root", message="bye"), 5.0)
    assert kinds(acts) == ["ToScheduler", "Persist", "Terminal"]
    assert isinstance(acts[0], ev.ToScheduler) and isinstance(acts[0].msg, ev.Dequeue)
    j = mc.job
    assert j.state == "CANCELLED" and j.start_time == j.end_time == 5.0
    assert j.cancel is not None and j.cancel["message"] == "bye"


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
    assert mc.job.state == "FAILED" and mc.job.steps[1]["reason"] == "Node re-registered but step lost"
