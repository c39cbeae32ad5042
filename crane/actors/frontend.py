"""The CLI-facing side of the controller: one handler per request type.

The caller's identity comes from the transport (kernel peer credentials on
the ipc socket); nothing in a message body is trusted for identity. Each
handler validates, then either answers at once or tells actors and answers
when they (and the store) are done.
"""

from __future__ import annotations

import os
import pwd
import time
from typing import Any

from crane import transport
from crane.actors import cancel
from crane.core import events as ev
from crane.core import messages as m
from crane.core import untrusted
from crane.core.job import Job, step_answer
from crane.core.selection import check_filters, matches

SPEC_KEYS = {
    "name": str, "partition": str, "qos": str, "account": str, "cpus": int, "memory": int,
    "nnodes": int, "nodelist": list, "exclusive": bool, "time_limit": int, "script": str,
    "argv": list, "cwd": str, "env": dict, "stdout": str, "stderr": str, "hold": bool,
    "gpus_per_node": int, "gpu_type": str, "stream": list,
}  # fmt: skip
MAX_GPUS_ASKED = 2**31 - 1  # per node (more than any node has is refused by fits_gpus, naming what nodes have)
MAX_TIME_LIMIT = 2**31 - 1  # seconds: what every timer downstream can hold
MAX_REPEAT = 100_000  # jobs per SubmitJob; MaxJobCount and MaxSubmitJobsPerUser bound the total
FINAL_RETRY = 60.0  # seconds a streamed step's end waits for room in its crun's queue
FINAL_PAUSE = 0.1  # seconds between those tries


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def user_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def check_spec(spec: dict[str, Any], cfg: Any) -> str | None:
    for k, v in spec.items():
        t = SPEC_KEYS.get(k)
        if t is None:
            return f"unknown job field {k!r}"
        if v is None:
            continue
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            return f"job field {k} must be {t.__name__}"
    err = untrusted.check_spec(spec)  # first: the errors below echo names back
    if err:
        return err
    if spec.get("partition") and spec["partition"] not in cfg.partitions:
        return f"invalid partition: {spec['partition']}"
    for k in ("cpus", "nnodes"):
        if k in spec and spec[k] is not None and spec[k] < 1:
            return f"{k} must be at least 1"
    if spec.get("memory") is not None and spec["memory"] < 0:
        return "memory must not be negative"
    err = check_gpus(spec)
    if err:
        return err
    if spec.get("time_limit") is not None and not 1 <= spec["time_limit"] <= MAX_TIME_LIMIT:
        return f"time limit must be between 1 and {MAX_TIME_LIMIT} seconds"
    if not spec.get("script") and not spec.get("argv"):
        return "a script or a command is required"
    if any(not isinstance(a, str) for a in spec.get("argv") or []):
        return "argv must be a list of strings"
    nodelist = spec.get("nodelist") or []
    if any(not isinstance(n, str) for n in nodelist):
        return "nodelist must be a list of node names"
    for n in nodelist:
        if n not in cfg.nodes:
            return f"invalid node name: {n}"
    if len(set(nodelist)) != len(nodelist):
        # one node twice was taken twice from its ledger and never given back
        return "the node list names a node more than once"
    env = spec.get("env") or {}
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in env.items()):
        return "env must map strings to strings"
    return check_streams(spec.get("stream"))


def check_streams(stream: Any) -> str | None:
    """The streams sent live to crun: a subset of [1 (stdout), 2 (stderr)]."""
    if stream is None:
        return None
    if not isinstance(stream, list) or len(stream) > 2 or any(s not in (1, 2) or isinstance(s, bool) for s in stream):
        return "stream must be a list of 1 (stdout) and 2 (stderr)"
    return None


def check_limits(ctl: Any, caller: Any, repeat: int) -> str | None:
    """MaxJobCount (active jobs in the cluster) and MaxSubmitJobsPerUser
    (active jobs of one user; root is exempt, as from the CLI rate limit:
    it cannot be the attacker, and ``crane local down`` or an admin's
    bulk work must not be refused by it). Operators and admins are bound
    like every other user."""
    cfg = ctl.cfg
    total = len(ctl.jobs)
    if total + repeat > cfg.max_job_count:
        return (f"MaxJobCount reached: the cluster has {total} active jobs, at most "
                f"{cfg.max_job_count} (this request adds {repeat})")  # fmt: skip
    mine = ctl.active_by_uid.get(caller.uid, 0)
    if caller.uid != 0 and mine + repeat > cfg.max_submit_jobs_per_user:
        return (f"MaxSubmitJobsPerUser reached: user {caller.name} has {mine} active jobs, at most "
                f"{cfg.max_submit_jobs_per_user} (this request adds {repeat})")  # fmt: skip
    return None


def check_gpus(spec: dict[str, Any]) -> str | None:
    gpus, typ = spec.get("gpus_per_node") or 0, spec.get("gpu_type") or ""
    if not 0 <= gpus <= MAX_GPUS_ASKED:
        return f"gpus_per_node must be between 0 and {MAX_GPUS_ASKED}"
    if typ:
        err = untrusted.check_name("GPU type", typ)
        if err:
            return err
        if any(c in typ for c in " :,="):
            return f"invalid GPU type: {typ}"
        if not gpus:
            return "a GPU type needs a GPU count (gpus_per_node)"
    return None


def gres_request(gpus: int, gpu_type: str) -> str:
    """A per-node GPU request as Slurm writes it: "gpu:2", "gpu:a100:2", "" for none."""
    if not gpus:
        return ""
    return f"gpu:{gpu_type}:{gpus}" if gpu_type else f"gpu:{gpus}"


def fits_gpus(spec: dict[str, Any], cfg: Any, part: str, nnodes: int) -> str | None:
    """Refuse a GPU request no node (of the partition, or of ``-w``) can ever
    satisfy: fewer than ``nnodes`` nodes have that many GPUs of that type."""
    gpus, typ = spec.get("gpus_per_node") or 0, spec.get("gpu_type") or ""
    if not gpus:
        return None
    cpus, mem = spec.get("cpus") or 1, spec.get("memory") or 0
    names = [n for n in spec.get("nodelist") or cfg.partitions[part].nodes
             if cfg.nodes[n].cpus >= cpus and cfg.nodes[n].memory >= mem]  # fmt: skip
    have = sorted((sum(1 for g in cfg.nodes[n].gpus if not typ or g.type == typ) for n in names), reverse=True)
    if len(have) >= nnodes and have[nnodes - 1] >= gpus:
        return None
    where = f"partition {part}" if not spec.get("nodelist") else "the requested nodes"
    best = have[0] if have else 0
    nodes = "" if nnodes == 1 else f" on {nnodes} nodes"
    return (f"Requested GPUs ({gres_request(gpus, typ)} per node{nodes}) exceed what any node of "
            f"{where} has ({best})")  # fmt: skip


def fits_partition(spec: dict[str, Any], cfg: Any, part: str) -> str | None:
    p = cfg.partitions[part]
    nodes = [cfg.nodes[n] for n in p.nodes]
    nnodes = spec.get("nnodes") or 1
    if spec.get("nodelist"):
        if any(n not in p.nodes for n in spec["nodelist"]):
            return f"requested nodes are not in partition {part}"
        nnodes = max(nnodes, len(spec["nodelist"]))
    cpus, mem = spec.get("cpus") or 1, spec.get("memory") or 0
    big = [n for n in nodes if n.cpus >= cpus and n.memory >= mem]
    if len(big) < nnodes:
        return f"Requested node configuration is not available in partition {part}"
    return fits_gpus(spec, cfg, part, nnodes)


def job_view(job: Job, reason: str | None = None) -> dict[str, Any]:
    c = job.cancel or {}
    return {
        "job_id": job.id, "name": job.name, "user": job.user, "uid": job.uid,
        "account": job.account, "partition": job.partition, "qos": job.qos,
        "state": job.state, "reason": reason if reason is not None else job.reason,
        "nodes": list(job.nodes), "num_nodes": len(job.nodes) or job.nnodes,
        "cpus": job.cpus, "memory": job.memory, "time_limit": job.time_limit,
        "submit_time": job.submit_time, "start_time": job.start_time, "end_time": job.end_time,
        "exit_code": job.exit_code, "exit_signal": job.exit_signal, "priority": job.priority,
        "steps": [{"step_id": s, **{k: v for k, v in st.items() if k != "cancelled"},
                   "cancelled_by": (st.get("cancelled") or {}).get("by_name")}
                  for s, st in sorted(job.steps.items())],
        "cancelled_by": c.get("by_name"), "cancel_path": c.get("path"),
        "message": c.get("message", ""), "cancel_time": c.get("time"),
        "requeue_count": job.requeue_count, "held": job.held, "exclusive": job.exclusive,
        "gres": gres_request(job.gpus_per_node, job.gpu_type),
        "gpu_alloc": {n: list(ix) for n, ix in job.gpu_alloc.items()},
        "stdout": job.stdout, "stderr": job.stderr, "work_dir": job.cwd,
    }  # fmt: skip


class Frontend:
    """Not an actor of its own: it runs in the CLI endpoint's callback and only
    tells actors; it keeps no job state."""

    def __init__(self, ctl: Any) -> None:
        self.ctl = ctl

    def handle(self, peer: Any, msg: m.Message, rid: int, reply: Any) -> None:
        ctl = self.ctl
        if peer.uid is None:
            reply(m.Error(5, "authentication failed: no peer credentials"))
            return
        caller = ctl.caller(peer.uid)
        handler = getattr(self, "on_" + msg.TYPE, None)
        if handler is None:
            reply(m.Error(2, f"{msg.TYPE} is not a request"))
            return
        handler(caller, msg, f"{peer.pid}:{rid}", reply)

    # ---------------------------------------------------------------- jobs

    def on_SubmitJob(self, caller: Any, msg: m.SubmitJob, rid: str, reply: Any) -> None:
        ctl, cfg, spec = self.ctl, self.ctl.cfg, msg.spec
        if not 1 <= msg.repeat <= MAX_REPEAT:
            reply(m.Error(2, f"--repeat must be between 1 and {MAX_REPEAT}"))
            return
        err = check_spec(spec, cfg)
        part = spec.get("partition") or cfg.default_partition
        err = err or fits_partition(spec, cfg, part) or check_limits(ctl, caller, msg.repeat)
        if err:
            reply(m.Error(2, err))
            return
        try:
            account, qos = ctl.accounts_check_submit(caller, spec, part, msg.repeat)
        except ValueError as e:
            reply(m.Error(2, str(e)))
            return
        now = time.time()
        ids = []
        nodelist = spec.get("nodelist") or []
        proto = Job(
            id=0, name=spec.get("name") or "job", uid=caller.uid, user=caller.name,
            gid=user_gid(caller.uid), account=account, qos=qos or "", partition=part,
            cpus=spec.get("cpus") or 1, memory=spec.get("memory") or 0,
            nnodes=max(spec.get("nnodes") or 1, len(nodelist)), nodelist_req=nodelist,
            exclusive=bool(spec.get("exclusive")), time_limit=spec.get("time_limit"),
            gpus_per_node=spec.get("gpus_per_node") or 0, gpu_type=spec.get("gpu_type") or "",
            cwd=spec.get("cwd") or "/", priority=ctl.qos_priority(qos),
            submit_time=now, held=bool(spec.get("hold")),
        )  # fmt: skip
        launch = {"script": spec.get("script") or "", "argv": spec.get("argv") or [],
                  "env": spec.get("env") or {}, "stream": spec.get("stream") or []}  # fmt: skip
        blob = ctl.store.pack(launch)  # once, shared by every repeat
        proto_rec = proto.to_dict()
        out = spec.get("stdout") or os.path.join(proto.cwd, "crane-%j.out")
        err_out = spec.get("stderr") or out
        proto_rec["launch_id"] = ctl.next_job_id
        ctl.store.put_launch(ctl.next_job_id, blob)
        for _ in range(msg.repeat):
            job_id = ctl.next_job_id
            ctl.next_job_id += 1
            proto_rec["id"] = job_id
            job = Job.from_dict(proto_rec)
            job.stdout = out.replace("%j", str(job_id))
            job.stderr = err_out.replace("%j", str(job_id))
            job.launch = launch
            ctl.add_job(job)
            ids.append(job_id)
        ctl.store.put_next_id(ctl.next_job_id)
        ctl.metrics["jobs_submitted"] += len(ids)

        def committed() -> None:
            for jid in ids:  # on disk now: queued jobs need not hold their script and env
                a = ctl.jobs.get(jid)
                if a is not None and a.job.launch is launch:
                    a.job.launch = None
            reply(m.Ok({"job_ids": ids}))

        ctl.store.barrier(committed)

    def on_QueryJobs(self, caller: Any, msg: m.QueryJobs, rid: str, reply: Any) -> None:
        err = check_filters(msg.filters)
        f, err = (msg.filters, err) if err else untrusted.bound_filters(msg.filters)
        if err:
            reply(m.Error(2, err))
            return
        ctl = self.ctl
        if not msg.history:
            reasons = ctl.scheduler.reasons
            out = [
                job_view(a.job, reasons.get(a.job.id) if a.job.state == "PENDING" and not a.job.held and not a.job.reason.startswith("Preempted") else None)
                for a in ctl.jobs.values() if matches(a.job, f)
            ]  # fmt: skip
            reply(m.Ok({"jobs": out}))
            return

        def read() -> None:
            jobs = [Job.from_dict(d) for d in ctl.store.finished_jobs(f.get("jobs"))]
            reply(m.Ok({"jobs": [job_view(j) for j in jobs if matches(j, f)]}))

        ctl.store.barrier(read)

    def on_QueryNodes(self, caller: Any, msg: m.QueryNodes, rid: str, reply: Any) -> None:
        cfg = self.ctl.cfg
        parts = [{"name": p.name, "nodes": p.nodes, "priority": p.priority,
                  "default": p.name == cfg.default_partition} for p in cfg.partitions.values()]  # fmt: skip
        nodes = self.ctl.scheduler.snapshot()
        for n in nodes:
            na = self.ctl.nodes[n["name"]]
            n["cgroup"] = na.cgroup_mode
        reply(m.Ok({"partitions": parts, "nodes": nodes}))

    def on_Cancel(self, caller: Any, msg: m.Cancel, rid: str, reply: Any) -> None:
        cancel.handle_cancel(self.ctl, caller, msg, rid, reply)

    def on_WaitJobs(self, caller: Any, msg: m.WaitJobs, rid: str, reply: Any) -> None:
        """Only on jobs the caller may act on (their own; any a coordinator,
        operator or admin may cancel); bounded per user (crane.actors.waits)."""
        ctl = self.ctl
        for j in set(msg.job_ids):
            actor = ctl.jobs.get(j)
            if actor is not None and not ctl.may_act(caller, actor.job):
                reply(m.Error(4, f"Job {j}: Permission denied"))
                return
        err = ctl.wait_jobs(caller.uid, msg.job_ids, lambda: reply(m.Ok()), getattr(reply, "alive", None))
        if err:
            reply(m.Error(2, err))

    # ---------------------------------------------------------------- steps

    def _own_job(self, caller: Any, job_id: int, reply: Any, execute: bool = False) -> Any:
        """The job's actor if the caller may act on it, else reply an error.
        ``execute``: running code in the job (a step) is its owner's and
        root's alone; coordinators, operators and admins may cancel, signal,
        hold and requeue it, never run code as its owner."""
        actor = self.ctl.jobs.get(job_id)
        if actor is None:
            reply(m.Error(4, f"Job {job_id} not found or not active"))
            return None
        if execute:
            allowed = caller.uid in (0, actor.job.uid)
        else:
            allowed = self.ctl.may_act(caller, actor.job)
        if not allowed:
            reply(m.Error(4, "Permission denied"))
            return None
        return actor

    def on_StartStep(self, caller: Any, msg: m.StartStep, rid: str, reply: Any) -> None:
        actor = self._own_job(caller, msg.job_id, reply, execute=True)
        if actor is None:
            return
        if not msg.argv or msg.cpus < 1:
            reply(m.Error(2, "a command is required"))
            return
        err = (untrusted.check_argv(msg.argv) or untrusted.check_env(msg.env)
               or untrusted.check_path("working directory", msg.cwd))  # fmt: skip
        for what, path in (("--output", msg.stdout), ("--error", msg.stderr)):
            if path:
                err = err or untrusted.check_path(what, path)
                if not err and not os.path.isabs(path):
                    err = f"{what} must be an absolute path"
        if err:
            reply(m.Error(2, err))
            return
        limit = self.ctl.cfg.max_step_count
        if len(actor.job.steps) >= limit:
            reply(m.Error(2, f"MaxStepCount reached: job {msg.job_id} has {limit} steps"))
            return
        fut = self.ctl.loop.create_future()
        # acknowledged means on disk: a step id answered before a crash is known after it
        fut.add_done_callback(lambda f: self.ctl.store.barrier(lambda: reply(f.result())))
        stream = [s for s, path in ((1, msg.stdout), (2, msg.stderr)) if msg.stream and not path]
        actor.tell(ev.NewStepEv(msg.argv, msg.cpus, msg.env, msg.cwd, fut, stream, msg.stdout, msg.stderr))

    def on_WaitStep(self, caller: Any, msg: m.WaitStep, rid: str, reply: Any) -> None:
        """``stream``: also receive the step's live output (crane.actors.streams):
        like running code in the job, the owner's and root's alone. The batch
        step (1) of a pending job may be waited for: crun's own job."""
        actor = self._own_job(caller, msg.job_id, reply, execute=msg.stream)
        if actor is None:
            return
        key = (msg.job_id, msg.step_id)
        relay = self.ctl.streams
        st = actor.job.steps.get(msg.step_id)
        pending = msg.step_id == 1 and actor.job.state == "PENDING"
        if st is None and not pending:  # never started: waiting would never end
            reply(m.Error(4, f"Step {msg.job_id}.{msg.step_id} not found"))
            return
        if st is not None and st.get("state") != "RUNNING":
            reply(m.Ok({"step": step_answer(actor.job, st), "lost": st.get("output_lost", 0)}))
            return
        def done(step: dict[str, Any]) -> None:
            answer = m.Ok({"step": step, "lost": step.get("output_lost", 0)})
            if msg.stream and isinstance(reply, transport.Replier):
                self._deliver(reply, answer, time.monotonic() + FINAL_RETRY)
            else:
                reply(answer)

        err = self.ctl.waits.add(caller.uid, [key], done, getattr(reply, "alive", None))
        if err:
            reply(m.Error(2, err))
        elif msg.stream and isinstance(reply, transport.Replier):
            relay.subscribe(key, reply)

    def _deliver(self, reply: transport.Replier, answer: m.Message, deadline: float) -> None:
        """The end of a streamed step, behind its output in the crun's queue:
        when that queue is full (a slow reader) the answer is tried again
        until it fits, the crun is gone, or ``deadline`` (then the crun asks
        again and reads the step's end from the history)."""
        ep = reply.endpoint
        if ep.send(reply.identity, answer, reply.rid) or time.monotonic() > deadline or not reply.alive():
            return
        self.ctl.loop.call_later(FINAL_PAUSE, self._deliver, reply, answer, deadline)

    # ---------------------------------------------------------------- control

    def on_Control(self, caller: Any, msg: m.Control, rid: str, reply: Any) -> None:
        ctl = self.ctl
        err = check_args(msg.args)
        if err:
            reply(m.Error(2, err))
            return
        if msg.action == "update_node":
            if caller.admin_level == "none":
                reply(m.Error(4, "Permission denied"))
                return
            node, state = msg.args.get("node"), str(msg.args.get("state", "")).upper()
            ok_node = isinstance(node, str) and node in ctl.nodes
            if not ok_node or state not in ("DRAIN", "RESUME", "IDLE"):
                reply(m.Error(2, f"invalid node update: node={str(node)[:64]} state={state[:64]}"))
                return
            reason = str(msg.args.get("reason") or ("drained by " + caller.name))
            ctl.scheduler.tell(ev.NodeStatus(node, drain=state == "DRAIN", reason=reason))
            ctl.store.barrier(lambda: reply(m.Ok()))
            return
        job_id = msg.args.get("job_id")
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            reply(m.Error(2, "a job id is required"))
            return
        if msg.action not in ("hold", "release", "suspend", "resume", "requeue"):
            reply(m.Error(2, f"unknown action {msg.action}"))
            return
        actor = self._own_job(caller, job_id, reply)
        if actor is None:
            return
        if msg.action == "requeue":
            if actor.job.state not in ("RUNNING", "SUSPENDED"):
                reply(m.Error(4, f"Job {job_id} is {actor.job.state}, not running"))
                return
            actor.tell(ev.CancelEv(caller.uid, caller.name, "admin", requeue=True, reason="Requeued by " + caller.name))
            ctl.after_persisted(lambda: reply(m.Ok()))
            return
        if msg.action in ("suspend", "resume") and caller.admin_level == "none":
            reply(m.Error(4, "Permission denied"))
            return
        # A hold on another's job is an admin hold (JobHeldAdmin) of the
        # holder's rank; the owner's own is a user hold (rank 0). A release
        # needs at least the rank of the hold: a coordinator does not undo an
        # operator's, an admin's or root's hold.
        own_hold = msg.action == "hold" and caller.uid == actor.job.uid
        rank = 0 if own_hold else ctl.hold_rank(caller, actor.job)
        fut = ctl.loop.create_future()
        fut.add_done_callback(lambda f: ctl.store.barrier(lambda: reply(f.result())))
        actor.tell(ev.ControlEv(msg.action, fut, rank))

    def on_AcctOp(self, caller: Any, msg: m.AcctOp, rid: str, reply: Any) -> None:
        err = untrusted.check_strings("cacctmgr value", msg.op)
        if err:
            reply(m.Error(2, err))
            return
        self.ctl.accounting(caller, msg.op, reply)


def check_args(args: dict[str, Any]) -> str | None:
    """ccontrol arguments (node update reasons, messages) are stored and shown
    to others: no control characters, bounded length."""
    for k, v in args.items():
        what = k if isinstance(k, str) and k.isidentifier() else "argument"
        err = untrusted.check_strings(what, [k, v], untrusted.TEXT_MAX)
        if err:
            return err
    return None
