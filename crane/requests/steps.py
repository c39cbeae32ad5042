"""StartStep and WaitStep (crun): a step in a job, its end, and its live
output (crane.actors.streams) for the crun that waits with ``stream``."""

from __future__ import annotations

import os
import time
from typing import Any

from crane import transport
from crane.core import events as ev
from crane.core import messages as m
from crane.core import untrusted
from crane.core.job import step_answer
from crane.core.states import JobState
from crane.permissions import Caller
from crane.requests.port import ARGS, REFUSED, Reply, RequestPort, own_job
from crane.requests.submit import expanded_path_problem

FINAL_RETRY = 60.0  # seconds a streamed step's end waits for room in its crun's queue
FINAL_PAUSE = 0.1  # seconds between those tries
BATCH_STEP = 1
# spec["stream"] members (crane.agent.stream): what of the step goes live to and from crun
STDIN, STDOUT, STDERR, PTY = 0, 1, 2, 3


def handle_start(port: RequestPort, caller: Caller, msg: m.StartStep, rid: str, reply: Reply) -> None:
    job = own_job(port, caller, msg.job_id, reply, execute=True)
    if job is None:
        return
    if not msg.argv or msg.cpus < 1:
        reply(m.Error(ARGS, "a command is required"))
        return
    err = check_step(msg) or expanded_path_problem(msg.stdout or "", msg.stderr or "", job, port.cfg)
    if err:
        reply(m.Error(ARGS, err))
        return
    limit = port.cfg.max_step_count
    if port.step_count(msg.job_id) >= limit:
        reply(m.Error(ARGS, f"MaxStepCount reached: job {msg.job_id} has {limit} steps"))
        return
    stream = [s for s, path in ((1, msg.stdout), (2, msg.stderr)) if msg.stream and not path]
    if (msg.stdin or msg.pty) and not msg.stream:
        reply(m.Error(ARGS, "stdin and pty need stream"))
        return
    if msg.pty:  # one terminal: stdin, stdout and stderr (output as stream 1)
        if msg.stdout or msg.stderr:
            reply(m.Error(ARGS, "--pty takes no --output or --error"))
            return
        stream = [STDOUT, PTY]
    elif msg.stdin:
        stream.append(STDIN)
    if not all(0 <= v <= 1_000_000 for v in (msg.ntasks, msg.ntasks_per_node, msg.nnodes)):
        reply(m.Error(ARGS, "--ntasks, --ntasks-per-node and --nodes must be from 1 to 1000000"))
        return
    step = ev.NewStepEv(msg.argv, msg.cpus, msg.env, msg.cwd, None, stream, msg.stdout, msg.stderr,
                        msg.ntasks, msg.ntasks_per_node, msg.label, msg.nnodes, cause=reply.cause)  # fmt: skip

    def answered(result: m.Message) -> None:
        if isinstance(result, m.Error):  # refused: nothing was written
            reply(result)
        else:  # acknowledged means on disk: a step id answered before a crash is known after it
            reply.after_saved(port, lambda: result, f"step of job {msg.job_id}")

    port.ask_job(msg.job_id, step).add_done_callback(reply.guard(lambda f: answered(f.result())))


def check_step(msg: m.StartStep) -> str | None:
    err = (untrusted.check_argv(msg.argv) or untrusted.check_env(msg.env)
           or untrusted.check_path("working directory", msg.cwd))  # fmt: skip
    for what, path in (("--output", msg.stdout), ("--error", msg.stderr)):
        if path:
            err = err or untrusted.check_path(what, path)
            if not err and not os.path.isabs(path):
                err = f"{what} must be an absolute path"
    return err


def handle_wait(port: RequestPort, caller: Caller, msg: m.WaitStep, rid: str, reply: Reply) -> None:
    """``stream``: also receive the step's live output (crane.actors.streams):
    like running code in the job, the owner's and root's alone. The batch
    step of a pending job may be waited for: crun's own job."""
    job = own_job(port, caller, msg.job_id, reply, execute=msg.stream)
    if job is None:
        return
    st = port.step(msg.job_id, msg.step_id)
    pending = msg.step_id == BATCH_STEP and job.state == JobState.PENDING
    if st is None and not pending:  # never started: waiting would never end
        reply(m.Error(REFUSED, f"Step {msg.job_id}.{msg.step_id} not found"))
        return
    replier = reply.send if msg.stream and isinstance(reply.send, transport.Replier) else None
    if st is not None and st.state != JobState.RUNNING:
        answer = m.Ok({"step": step_answer(job, st), "lost": st.output_lost})
        if replier is None:
            reply(answer)
        else:  # output it wrote before this WaitStep came (held by the relay) first
            port.subscribe_stream(msg.job_id, msg.step_id, replier)
            reply.answered = True
            deliver(port, replier, answer, time.monotonic() + FINAL_RETRY)
        return

    def done(step: dict[str, Any]) -> None:
        answer = m.Ok({"step": step, "lost": step.get("output_lost", 0)})
        if replier is None:
            reply(answer)
        else:  # behind the step's output in the crun's queue
            reply.answered = True
            deliver(port, replier, answer, time.monotonic() + FINAL_RETRY)

    err = port.wait_step(caller.uid, msg.job_id, msg.step_id, reply.guard(done), reply.alive)
    if err:
        reply(m.Error(ARGS, err))
    elif replier is not None:
        port.subscribe_stream(msg.job_id, msg.step_id, replier)


def deliver(port: RequestPort, replier: transport.Replier, answer: m.Message, deadline: float) -> None:
    """The end of a streamed step, behind its output in the crun's queue:
    when that queue is full (a slow reader) the answer is tried again
    until it fits, the crun is gone, or ``deadline`` (then the crun asks
    again and reads the step's end from the history)."""
    if replier.endpoint.send(replier.identity, answer, replier.rid) or time.monotonic() > deadline or not replier.alive():
        return
    port.loop.call_later(FINAL_PAUSE, deliver, port, replier, answer, deadline)


def handle_input(port: RequestPort, caller: Caller, msg: m.StepInput | m.StepResize, rid: str, reply: Reply) -> None:
    """crun's stdin (StepInput) or terminal size (StepResize) for a running
    step: the job's owner and root only, passed on to the step's node (its
    agent takes it only for a step started with stdin or pty, and bounds
    what it holds: crane.agent.stream.Input). Nothing is kept here."""
    job = own_job(port, caller, msg.job_id, reply, execute=True)
    if job is None:
        return
    st = port.step(msg.job_id, msg.step_id)
    # not before its agent reported it started (a pid): input that reached the
    # agent before the step had its stdin was dropped there while crun, told
    # Ok, moved on (crun sends it again on this error, 0.2 s later)
    if st is None or st.state != JobState.RUNNING or not st.node or st.pid is None:
        reply(m.Error(REFUSED, f"Step {msg.job_id}.{msg.step_id} is not running"))
        return
    if isinstance(msg, m.StepInput) and (len(msg.data) > m.INPUT_CHUNK or msg.seq < 0):
        reply(m.Error(ARGS, f"at most {m.INPUT_CHUNK} bytes per StepInput"))
        return
    if isinstance(msg, m.StepResize) and not (0 < msg.rows < 2**16 and 0 < msg.cols < 2**16):
        reply(m.Error(ARGS, "bad terminal size"))
        return
    port.to_node(st.node, msg)
    reply(m.Ok({}))
