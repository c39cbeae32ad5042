"""SubmitJob (cbatch, crun's and calloc's own job): check the spec, the
partition, the limits and the account; make the jobs; answer their ids once
they are on disk."""

from __future__ import annotations

import os
import pwd
import time
from typing import Any

from crane.core import dependency as dp
from crane.core import messages as m
from crane.core import untrusted
from crane.core.arrays import ArraySpec, parse_array
from crane.core.ids import MAX_ID
from crane.core.job import Job
from crane.core.patterns import expand, expand_known, short_node
from crane.core.signals import check_signal
from crane.permissions import Caller
from crane.requests.port import ARGS, Reply, RequestPort
from crane.requests.query import array_info, gres_request

SPEC_KEYS = {
    "name": str, "partition": str, "qos": str, "account": str, "cpus": int, "memory": int,
    "nnodes": int, "nodelist": list, "exclusive": bool, "time_limit": int, "script": str,
    "argv": list, "cwd": str, "env": dict, "stdout": str, "stderr": str, "hold": bool,
    "gpus_per_node": int, "gpu_type": str, "stream": list,
    "array": str, "dependency": str, "signal": str, "open_mode": str, "comment": str,
    "ntasks": int, "ntasks_per_node": int,
}  # fmt: skip
MAX_GPUS_ASKED = 2**31 - 1  # per node (more than any node has is refused by fits_gpus, naming what nodes have)
MAX_TIME_LIMIT = 2**31 - 1  # seconds: what every timer downstream can hold
MAX_REPEAT = 100_000  # jobs per SubmitJob; MaxJobCount and MaxSubmitJobsPerUser bound the total


def handle(port: RequestPort, caller: Caller, msg: m.SubmitJob, rid: str, reply: Reply) -> None:
    cfg, spec = port.cfg, msg.spec
    if not 1 <= msg.repeat <= MAX_REPEAT:
        reply(m.Error(ARGS, f"--repeat must be between 1 and {MAX_REPEAT}"))
        return
    err = check_spec(spec, cfg)
    array: ArraySpec | None = None
    if not err and spec.get("array"):
        array, err = check_array(spec, cfg, msg.repeat)
    count = array.count if array is not None else msg.repeat
    part = spec.get("partition") or cfg.default_partition
    err = err or check_dependency(port, spec.get("dependency") or "", caller if caller.uid != 0 else None, count)
    err = err or fits_partition(spec, cfg, part) or check_limits(port, caller, count)
    if err:
        reply(m.Error(ARGS, err))
        return
    try:
        account, qos = port.accounts_check_submit(caller, spec, part, count)
    except ValueError as e:
        reply(m.Error(ARGS, str(e)))
        return
    # no -t: the QoS's MaxTimeLimitPerJob is the default (as it is the cap, checked above)
    time_limit = spec.get("time_limit") if spec.get("time_limit") is not None else port.default_time_limit(qos)
    nodelist = spec.get("nodelist") or []
    proto = Job(
        id=0, name=spec.get("name") or "job", uid=caller.uid, user=caller.name,
        gid=user_gid(caller.uid), account=account, qos=qos or "", partition=part,
        cpus=spec.get("cpus") or 1, memory=spec.get("memory") or 0,
        nnodes=max(spec.get("nnodes") or 1, len(nodelist)), nodelist_req=nodelist,
        exclusive=bool(spec.get("exclusive")), time_limit=time_limit,
        gpus_per_node=spec.get("gpus_per_node") or 0, gpu_type=spec.get("gpu_type") or "",
        cwd=spec.get("cwd") or "/", priority=port.qos_priority(qos),
        submit_time=time.time(), held=bool(spec.get("hold")),
        dependency=spec.get("dependency") or "", signal=spec.get("signal") or "",
        open_mode=spec.get("open_mode") or "", comment=spec.get("comment") or "",
        ntasks=spec.get("ntasks") or 0, ntasks_per_node=spec.get("ntasks_per_node") or 0,
    )  # fmt: skip
    launch = {"script": spec.get("script") or "", "argv": spec.get("argv") or [],
              "env": spec.get("env") or {}, "stream": spec.get("stream") or []}  # fmt: skip
    out = spec.get("stdout") or os.path.join(proto.cwd, "crane-%j.out")
    err_out = spec.get("stderr") or out
    err = expanded_path_problem(out, err_out, proto, cfg)
    if err:
        reply(m.Error(ARGS, err))
        return
    ids = port.take_job_ids(count)
    port.store.put_launch(ids[0], port.store.pack(launch))  # once, shared by every repeat (and array task)
    proto_rec = proto.to_dict()
    proto_rec["launch_id"] = ids[0]
    if array is not None:  # one job per index, consecutive ids; the array's id is the first task's
        proto_rec.update(array_job_id=ids[0], array_limit=array.limit, array_task_count=array.count,
                         array_task_min=array.indices[0], array_task_max=array.indices[-1],
                         array_task_step=array.step)  # fmt: skip
    for n, job_id in enumerate(ids):
        proto_rec["id"] = job_id
        job = Job.from_dict(proto_rec)
        tag = None
        if array is not None:
            job.array_task_id = array.indices[n]
            tag = (ids[0], array.indices[n])
        job.stdout = expand_known(out, job_id, job.name, job.user, tag)  # %N (and %%) at launch: Job.step_spec
        job.stderr = expand_known(err_out, job_id, job.name, job.user, tag)
        job.launch = launch
        port.add_job(job)
    port.store.put_next_id(ids.stop)
    port.metrics["jobs_submitted"] += len(ids)

    def committed() -> None:
        for job_id in ids:  # on disk now: queued jobs need not hold their script and env
            port.launch_saved(job_id, launch)
        answer: dict[str, Any] = {"job_ids": list(ids)}
        if array is not None:  # the tasks' ids are job_ids, in the order of array_task_ids
            answer.update(array_job_id=ids[0], array_task_ids=list(array.indices))
        reply(m.Ok(answer))

    what = f"job {ids[0]}" if len(ids) == 1 else f"jobs {ids[0]}-{ids[-1]}"
    port.store.barrier(reply.guard(committed), reply.unsaved(what))


# ---------------------------------------------------------------- checks, in the order above


def check_array(spec: dict[str, Any], cfg: Any, repeat: int) -> tuple[ArraySpec | None, str | None]:
    """``--array``: batch jobs only (not crun's or calloc's own job), not
    with ``--repeat``; the indices within MaxArraySize."""
    if spec.get("argv") or spec.get("stream"):
        return None, "--array is for batch jobs only (cbatch), not crun or calloc"
    if repeat != 1:
        return None, "--array and --repeat cannot be used together"
    try:
        return parse_array(spec["array"], cfg.max_array_size), None
    except ValueError as e:
        return None, str(e)


def check_dependency(port: RequestPort, text: str, caller: Caller | None = None, count: int = 1) -> str | None:
    """``--dependency``: well formed, and every job it names known to the
    controller (active, or in its history: the store keeps every finished
    job's record, so a job that ended long ago still counts by how it ended)."""
    if not text:
        return None
    try:
        dep = dp.parse(text)
    except ValueError as e:
        return str(e)
    for job_id in dep.ids:
        if port.job(job_id) is None and port.finished_state(job_id) is None:
            return f"invalid dependency: job {job_id} not found"
    info = array_info(port)

    def tasks_of(job_id: int) -> int:  # an array id stands for each of its tasks
        inf = info(job_id)
        return max(inf[2], 1) if inf is not None and inf[0] == job_id else 1

    work = dp.work(dep, tasks_of)
    if work > dp.MAX_DEPENDENCY_TASKS:
        return f"invalid dependency: it names more than {dp.MAX_DEPENDENCY_TASKS} jobs (array tasks counted)"
    if caller is not None and port.dependency_refs(caller.uid) + work * count > dp.MAX_USER_DEPENDENCY_REFS:
        return (f"invalid dependency: your waiting jobs' dependencies would name more than "
                f"{dp.MAX_USER_DEPENDENCY_REFS} jobs in all (cancel some, or depend on an array id)")  # fmt: skip
    return None


def expanded_path_problem(out: str, err_out: str, proto: Job, cfg: Any) -> str | None:
    """The output paths once their patterns are expanded (the widest job id,
    the longest node name) stay within PATH_MAX: ``%x`` repeated would
    otherwise make a 4 KiB pattern hundreds of KiB held for every job."""
    node = max((short_node(n) for n in cfg.nodes), key=len, default="")
    for what, pattern in (("output path", out), ("error path", err_out)):
        full = expand(pattern, MAX_ID, proto.name, proto.user, node)
        if len(full.encode("utf-8", "surrogatepass")) > untrusted.PATH_MAX:
            return f"{what} is longer than {untrusted.PATH_MAX} bytes once its patterns are expanded"
    return None


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
    if spec.get("comment"):  # shown to every user (cqueue %k, ccontrol show job, squeue, sacct)
        err = untrusted.check_text("comment", spec["comment"])
        if err:
            return err
    err = check_signal(spec.get("signal") or "")
    if err:
        return err
    if spec.get("open_mode") not in (None, "", "append", "truncate"):
        return "--open-mode must be append or truncate"
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


def check_streams(stream: Any) -> str | None:
    """The streams live to and from crun: a subset of [0 (stdin), 1 (stdout),
    2 (stderr), 3 (a pseudo-terminal: stdin, stdout and stderr, output as 1)]."""
    if stream is None:
        return None
    if not isinstance(stream, list) or len(stream) > 4 or any(s not in (0, 1, 2, 3) or isinstance(s, bool) for s in stream):
        return "stream must be a list of 0 (stdin), 1 (stdout), 2 (stderr) and 3 (pty)"
    if 3 in stream and 1 not in stream:
        return "a pty (stream 3) needs stdout (1) streamed"
    return None


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


def check_limits(port: RequestPort, caller: Caller, repeat: int) -> str | None:
    """MaxJobCount (active jobs in the cluster) and MaxSubmitJobsPerUser
    (active jobs of one user; root is exempt, as from the CLI rate limit:
    it cannot be the attacker, and ``crane local down`` or an admin's
    bulk work must not be refused by it). Operators and admins are bound
    like every other user."""
    cfg = port.cfg
    total = port.active_count()
    if total + repeat > cfg.max_job_count:
        return (f"MaxJobCount reached: the cluster has {total} active jobs, at most "
                f"{cfg.max_job_count} (this request adds {repeat})")  # fmt: skip
    mine = port.active_count(caller.uid)
    if caller.uid != 0 and mine + repeat > cfg.max_submit_jobs_per_user:
        return (f"MaxSubmitJobsPerUser reached: user {caller.name} has {mine} active jobs, at most "
                f"{cfg.max_submit_jobs_per_user} (this request adds {repeat})")  # fmt: skip
    return None


def user_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid
