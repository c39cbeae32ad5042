"""Control (ccontrol): drain, resume or idle a node; hold, release,
suspend, resume, requeue or update a job; re-read the configuration.
Answered once the change is on disk."""

from __future__ import annotations

from typing import Any

from crane.core import events as ev
from crane.core import messages as m
from crane.core import untrusted
from crane.core.job import Job
from crane.core.states import AdminLevel, CancelPath, ControlAction, JobState, NodeState
from crane.permissions import Caller
from crane.requests.port import ARGS, REFUSED, Reply, RequestPort, own_job

JOB_ACTIONS = frozenset(ControlAction) - {ControlAction.UPDATE_NODE, ControlAction.RECONFIGURE}
NODE_RESUME = "RESUME"  # ccontrol update node state=RESUME: undrain (not a node state of its own)
NODE_UPDATES = (NodeState.DRAIN, NodeState.IDLE, NODE_RESUME)
REQUEUEABLE = (JobState.RUNNING, JobState.SUSPENDED)


def handle(port: RequestPort, caller: Caller, msg: m.Control, rid: str, reply: Reply) -> None:
    err = check_args(msg.args)
    if err:
        reply(m.Error(ARGS, err))
        return
    if msg.action == ControlAction.UPDATE_NODE:
        update_node(port, caller, msg.args, reply)
        return
    if msg.action == ControlAction.RECONFIGURE:
        reconfigure(port, caller, reply)
        return
    job_id = msg.args.get("job_id")
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        reply(m.Error(ARGS, "a job id is required"))
        return
    if msg.action not in JOB_ACTIONS:
        reply(m.Error(ARGS, f"unknown action {msg.action}"))
        return
    job = own_job(port, caller, job_id, reply)
    if job is None:
        return
    if msg.action == ControlAction.UPDATE_JOB:
        update_job(port, caller, job, msg.args, reply)
        return
    if msg.action == ControlAction.REQUEUE:
        if job.state not in REQUEUEABLE:
            reply(m.Error(REFUSED, f"Job {job_id} is {job.state}, not running"))
            return
        port.job_event(job_id, ev.CancelEv(caller.uid, caller.name, CancelPath.ADMIN, requeue=True,
                                           reason="Requeued by " + caller.name, cause=reply.cause))  # fmt: skip
        port.after_persisted(reply.guard(lambda: reply(m.Ok())), reply.unsaved(f"the requeue of job {job_id}"))
        return
    if msg.action in (ControlAction.SUSPEND, ControlAction.RESUME) and caller.admin_level == AdminLevel.NONE:
        reply(m.Error(REFUSED, "Permission denied"))
        return
    # A hold on another's job is an admin hold (JobHeldAdmin) of the
    # holder's rank; the owner's own is a user hold (rank 0). A release
    # needs at least the rank of the hold: a coordinator does not undo an
    # operator's, an admin's or root's hold.
    own_hold = msg.action == ControlAction.HOLD and caller.uid == job.uid
    rank = 0 if own_hold else port.hold_rank(caller, job)
    what = f"the {msg.action} of job {job_id}"

    def answered(result: m.Message) -> None:
        if isinstance(result, m.Error):  # refused: nothing was written
            reply(result)
        else:
            reply.after_saved(port, lambda: result, what)

    port.ask_job(job_id, ev.ControlEv(msg.action, rank=rank, cause=reply.cause)).add_done_callback(
        reply.guard(lambda f: answered(f.result())))


# ---------------------------------------------------------------- update job

UPDATE_FIELDS = ("name", "time_limit", "partition", "qos", "priority")
MAX_TIME_LIMIT = 2**31 - 1  # seconds, as at submission
MAX_PRIORITY = 2**31 - 1


def update_job(port: RequestPort, caller: Caller, job: Job, args: dict[str, Any], reply: Reply) -> None:
    """ccontrol update JobId=N Key=Value...: the caller may act on the job
    (checked by ``own_job``: its owner, a coordinator over its account, an
    operator, an admin); as in Slurm, only an operator, an admin or root
    (rank 2 over the job) raises a time limit or sets a priority. A new
    partition or QoS is checked as a submission would be."""
    fields = {k: v for k, v in args.items() if k in UPDATE_FIELDS}
    extra = sorted(set(args) - set(UPDATE_FIELDS) - {"job_id"})
    if extra:
        reply(m.Error(ARGS, f"update: unknown field {extra[0]}"))
        return
    if not fields:
        reply(m.Error(ARGS, "update: nothing to change"))
        return
    privileged = port.hold_rank(caller, job) >= 2
    err = check_update(port, caller, job, fields, privileged)
    if err:
        code, text = err
        reply(m.Error(code, text))
        return
    if "qos" in fields and "priority" not in fields and job.priority == port.qos_priority(job.qos or None):
        # the new QoS's priority, as at submission; a priority set by hand stays
        fields["priority"] = port.qos_priority(fields["qos"])
    what = f"the update of job {job.id}"

    def answered(result: m.Message) -> None:
        if isinstance(result, m.Error):  # refused by the job (its state): nothing was written
            reply(result)
        else:
            reply.after_saved(port, lambda: result, what)

    port.ask_job(job.id, ev.UpdateEv(fields, cause=reply.cause)).add_done_callback(
        reply.guard(lambda f: answered(f.result())))


def check_update(port: RequestPort, caller: Caller, job: Job, f: dict[str, Any],
                 privileged: bool) -> tuple[int, str] | None:  # fmt: skip
    """(error code, line) if the update is refused."""
    if "name" in f:
        err = untrusted.check_name("job name", f["name"])
        if err or not f["name"]:
            return ARGS, err or "the job name must not be empty"
    if "time_limit" in f:
        tl = f["time_limit"]
        if tl is not None and (not isinstance(tl, int) or isinstance(tl, bool) or not 1 <= tl <= MAX_TIME_LIMIT):
            return ARGS, f"time limit must be between 1 and {MAX_TIME_LIMIT} seconds, or unlimited"
        raised = job.time_limit is not None and (tl is None or tl > job.time_limit)
        if raised and not privileged:
            return REFUSED, "Permission denied: only an operator or an admin may raise a time limit"
    if "priority" in f:
        p = f["priority"]
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= MAX_PRIORITY:
            return ARGS, f"priority must be between 0 and {MAX_PRIORITY}"
        if not privileged:
            return REFUSED, "Permission denied: only an operator or an admin may set a priority"
    for k in ("partition", "qos"):
        if k in f and (not isinstance(f[k], str) or not f[k] or untrusted.check_name(k, f[k])):
            return ARGS, f"invalid {k}"
    if job.state != JobState.PENDING:
        return None  # the job refuses pending-only fields itself
    if "partition" in f or "qos" in f:
        return check_placement(port, job, f)
    return None


def check_placement(port: RequestPort, job: Job, f: dict[str, Any]) -> tuple[int, str] | None:
    """A new partition or QoS, checked as at submission: the partition
    exists and can hold the job, the account may use it and the QoS, and
    the QoS's limits allow the job."""
    from crane.accounts import AcctError
    from crane.requests.submit import fits_partition

    cfg = port.cfg
    part, qos = str(f.get("partition", job.partition)), f.get("qos", job.qos or None)
    if part not in cfg.partitions:
        return ARGS, f"invalid partition: {part}"
    spec = {"nnodes": job.nnodes, "nodelist": list(job.nodelist_req), "cpus": job.cpus, "memory": job.memory,
            "gpus_per_node": job.gpus_per_node, "gpu_type": job.gpu_type}  # fmt: skip
    err = fits_partition(spec, cfg, part)
    if err:
        return ARGS, err
    try:
        _account, qos = port.acct.check_submit(job.user, job.account, qos, part)
        if "qos" in f and qos is not None:
            mine = sum(1 for j in port.active_jobs() if j.uid == job.uid and j.qos == qos and j.id != job.id)
            # the limit the job will have: the new one if given; an unlimited
            # job takes the QoS's MaxTimeLimitPerJob, as at submission
            tl = f["time_limit"] if "time_limit" in f else job.time_limit
            if tl is None and port.default_time_limit(qos) is not None:
                tl = f["time_limit"] = port.default_time_limit(qos)
            port.acct.qos_limits_check(qos, 0, mine, tl)
    except AcctError as e:
        return ARGS, str(e)
    return None


# ---------------------------------------------------------------- reconfigure


def reconfigure(port: RequestPort, caller: Caller, reply: Reply) -> None:
    """ccontrol reconfigure: re-read the config file (as SIGHUP does);
    admins and root only. A config with an error is refused (its line is
    the answer) and the old one stays."""
    if caller.uid != 0 and caller.admin_level != AdminLevel.ADMIN:
        reply(m.Error(REFUSED, "Permission denied: only an admin may reconfigure the controller"))
        return
    err = port.reload_config()
    if err:
        reply(m.Error(ARGS, err))
        return
    port.after_persisted(reply.guard(lambda: reply(m.Ok())), reply.unsaved("the reconfiguration"))


def update_node(port: RequestPort, caller: Caller, args: dict[str, Any], reply: Reply) -> None:
    if caller.admin_level == AdminLevel.NONE:
        reply(m.Error(REFUSED, "Permission denied"))
        return
    node, state = args.get("node"), str(args.get("state", "")).upper()
    ok_node = isinstance(node, str) and node in port.cfg.nodes
    if not ok_node or state not in NODE_UPDATES:
        reply(m.Error(ARGS, f"invalid node update: node={str(node)[:64]} state={state[:64]}"))
        return
    reason = str(args.get("reason") or ("drained by " + caller.name))
    port.tell_scheduler(ev.NodeStatus(str(node), drain=state == NodeState.DRAIN, reason=reason, cause=reply.cause))
    port.after_persisted(reply.guard(lambda: reply(m.Ok())), reply.unsaved(f"the update of node {node}"))


def check_args(args: dict[str, Any]) -> str | None:
    """ccontrol arguments (node update reasons, messages) are stored and shown
    to others: no control characters, bounded length."""
    for k, v in args.items():
        what = k if isinstance(k, str) and k.isidentifier() else "argument"
        err = untrusted.check_strings(what, [k, v], untrusted.TEXT_MAX)
        if err:
            return err
    return None
