"""One job's record: the ``Job`` model with its steps, as stored and shown."""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Any

from crane.core import arrays, patterns
from crane.core.ids import compress_nodes
from crane.core.ledger import Request
from crane.core.slurm_env import slurm_env
from crane.core.states import JobState

_STEP_OPTIONAL = ("pid", "cancelled", "end", "exit_code", "signal", "reason")  # in the order they are set


@dataclass(slots=True)
class Step:
    """One step of a job, as the job record keeps it. ``to_dict`` gives the
    stored and wire shape: the optional fields appear only once set."""

    state: str = ""  # a JobState (a step's end may be TIMEOUT, OUT_OF_MEMORY...)
    node: str = ""
    start: float = 0.0
    cpus: int = 0
    argv: list[str] = field(default_factory=list)
    pid: int | None = None  # once the agent started it
    end: float | None = None  # once it ended
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None  # why it failed (node down, lost, launch failed)
    cancelled: dict[str, Any] | None = None  # {"by_name", "by_uid", "message"}: ccancel J.S
    output_lost: int = 0  # live output its crun could not take
    # a step on several nodes (crun in a -N 2 job) or with several tasks:
    # every node (``node`` is the first), the tasks on each, and the nodes
    # whose part ended ({node: [exit_code, signal, reason]}); the step ends
    # when every node reported. Empty for a one-node one-task step (old records).
    nodes: list[str] = field(default_factory=list)
    tasks: list[int] = field(default_factory=list)
    ended: dict[str, list[Any]] = field(default_factory=dict)

    def all_nodes(self) -> list[str]:
        return list(self.nodes) or ([self.node] if self.node else [])

    def tasks_on(self, node: str) -> int:
        """How many of the step's tasks run on ``node``."""
        if self.nodes:
            return self.tasks[self.nodes.index(node)] if node in self.nodes and self.tasks else int(node in self.nodes)
        return int(node == self.node)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"state": self.state, "node": self.node, "start": self.start,
                             "cpus": self.cpus, "argv": self.argv}  # fmt: skip
        for k in _STEP_OPTIONAL:
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.output_lost:
            d["output_lost"] = self.output_lost
        if len(self.nodes) > 1 or any(t != 1 for t in self.tasks):
            d["nodes"], d["tasks"] = list(self.nodes), list(self.tasks)
            if self.ended:
                d["ended"] = {k: list(v) for k, v in self.ended.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        """A stored step (any age: missing keys take their defaults)."""
        known = cls.__dataclass_fields__
        st = cls(**{k: v for k, v in d.items() if k in known})
        st.output_lost = int(st.output_lost or 0)
        st.nodes, st.tasks = list(st.nodes or []), list(st.tasks or [])
        st.ended = dict(st.ended or {})
        return st


@dataclass(slots=True)
class CancelIntent:
    """Who cancelled a job, when, why and how: the durable cancel intent."""

    by_uid: int | None = None
    by_name: str | None = None
    path: str | None = None  # a CancelPath
    message: str = ""
    time: float | None = None
    force: bool = False
    graceful: bool = False  # running steps finish; no new ones start
    grace: float | None = None
    end_state: str | None = None  # an EndState
    rid: str = ""
    requeue: bool = False  # preemption in REQUEUE mode
    reason: str = ""  # shown in cqueue/cacct, e.g. "Preempted by job 12"

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(_CANCEL_FIELDS, _get_cancel(self), strict=True))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CancelIntent:
        """A stored intent (any age: missing keys take their defaults)."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


_CANCEL_FIELDS = tuple(CancelIntent.__dataclass_fields__)
_get_cancel = operator.attrgetter(*_CANCEL_FIELDS)


@dataclass(slots=True)
class Job:
    id: int
    name: str
    uid: int
    user: str
    gid: int
    account: str
    qos: str
    partition: str
    cpus: int = 1  # per node
    memory: int = 0  # bytes per node, 0 = unlimited
    nnodes: int = 1
    nodelist_req: list[str] = field(default_factory=list)
    exclusive: bool = False
    gpus_per_node: int = 0  # GPUs asked per node (0 = none)
    gpu_type: str = ""  # "" = any type
    gpu_alloc: dict[str, list[int]] = field(default_factory=dict)  # node -> GPU indices held there
    time_limit: int | None = None  # seconds
    cwd: str = "/"
    stdout: str = ""
    stderr: str = ""
    priority: int = 0
    submit_time: float = 0.0
    start_time: float | None = None
    end_time: float | None = None
    state: str = JobState.PENDING
    reason: str = ""
    exit_code: int = 0
    exit_signal: int = 0
    nodes: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    steps: dict[int, Step] = field(default_factory=dict)
    next_step: int = 2
    end_reason: str = ""  # TIMEOUT | OUT_OF_MEMORY | NODE_FAIL | LOST
    cancel: CancelIntent | None = None  # who/when/why/how: the durable cancel intent
    held: bool = False
    admin_hold: int = 0  # 0, or the rank of who held it if not the owner (JobHeldAdmin): 1 coordinator, 2 operator/admin/root
    requeue_count: int = 0
    # what the batch step runs: {"script", "argv", "env"}. Written once at
    # submission (store.put_launch), dropped from memory once committed and
    # read back when the job is launched: queued jobs stay small.
    launch: dict[str, Any] | None = None
    launch_id: int = 0  # the row holding it: the first job of a --repeat submission
    # Slurm-compatible submission options (issue 14)
    array_job_id: int = 0  # an array task: the array's id (its first task's job id); 0: not an array task
    array_task_id: int | None = None  # an array task: its index
    array_limit: int = 0  # --array ...%N: at most N tasks of the array run at once (0: no limit)
    array_task_count: int = 0  # an array task: how many tasks the array has (ids array_job_id.. consecutive)
    array_task_min: int = 0  # an array task: the array's smallest index
    array_task_max: int = 0  # an array task: the array's largest index
    array_task_step: int = 1  # an array task: the spacing of its indices (1 when not uniform)
    dependency: str = ""  # --dependency, as accepted (afterok:12:13,singleton, ...)
    signal: str = ""  # --signal [B:]SIG@SECS: signal the job SECS before its time limit
    open_mode: str = ""  # --open-mode append|truncate ("": append)
    comment: str = ""  # --comment
    ntasks: int = 0  # -n/--ntasks (0: one task per node)
    ntasks_per_node: int = 0  # --ntasks-per-node (0: from ntasks)

    def to_dict(self) -> dict[str, Any]:
        """The stored record: plain data (steps and cancel as dicts)."""
        d = dict(zip(_RECORD_FIELDS, _get_record(self), strict=True))
        d["steps"] = {k: st.to_dict() for k, st in self.steps.items()}
        if self.cancel is not None:
            d["cancel"] = self.cancel.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        d = dict(d)
        d["steps"] = {int(k): v if isinstance(v, Step) else Step.from_dict(v) for k, v in (d.get("steps") or {}).items()}
        c = d.get("cancel")
        d["cancel"] = CancelIntent.from_dict(c) if isinstance(c, dict) and c else (c or None)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    def step_spec(self, step_id: int, argv: list[str], env: dict[str, str], cwd: str, cpus: int,
                  script: str = "", node: str = "", task: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """The LaunchStep spec for ``node`` (the job's first node when "").
        ``gpu_devices`` (every device file of the node) is added by the
        JobActor, which knows the config. The output paths are the job's
        patterns expanded for ``node`` (``crane.core.patterns``).

        ``task`` (a crun step, see ``task_layout``): this node's part of the
        step: ``rank`` (the global rank of its first task), ``count`` (its
        tasks), ``index`` (the node's index), ``ntasks``, ``nodes`` (the
        step's node names) and ``label``. Its tasks' variables are set here
        for the first task; with several tasks on the node, or ``label``,
        ``spec["tasks"]`` asks the agent for the fan-out runner
        (``crane.agent.tasks``), which sets them per task."""
        node = node or (self.nodes[0] if self.nodes else "")
        full_env = dict(env)
        gpus = sorted(self.gpu_alloc.get(node, []))
        if gpus:
            ids = ",".join(map(str, gpus))
            full_env.update(CUDA_VISIBLE_DEVICES=ids, CRANE_GPUS=ids, GPU_DEVICE_ORDINAL=ids)
        full_env.update(self.job_env(step_id, cpus))
        full_env.update(arrays.array_env(self))
        full_env.update(slurm_env(full_env, self))
        if task is not None:
            full_env.update(task_env(step_id, task))
        spec = {
            "uid": self.uid,
            "gid": self.gid,
            "user": self.user,
            "argv": argv,
            "script": script,
            "cwd": cwd,
            "env": full_env,
            # a crun step's streams go to crun unless given a file (see spec["stream"])
            "stdout": self.output_path(self.stdout, node),
            "stderr": self.output_path(self.stderr, node),
            "cpus": cpus,
            "memory": self.memory,
            "time_limit": self.time_limit if step_id == 1 else None,
            "signal": self.signal if step_id == 1 else "",  # --signal [B:]SIG@SECS, armed with the time limit
            "open_mode": self.open_mode,
            "attempt": self.requeue_count,  # a requeued job runs again on a node that released it
            "gpus": gpus,
        }
        if task is not None:
            triple = (max(step_id - 2, 0), int(task["rank"]), int(task["index"]))  # %s: Slurm's step number
            for k, pattern in (("stdout", self.stdout), ("stderr", self.stderr)):
                if pattern:
                    spec[k] = patterns.expand(pattern, self.id, self.name, self.user, node, task=triple)
            if int(task["count"]) > 1 or task.get("label"):
                spec["tasks"] = {"rank": int(task["rank"]), "count": int(task["count"]), "label": bool(task.get("label"))}
                self.task_files(spec, {"stdout": self.stdout, "stderr": self.stderr}, node, triple[0], task)
            spec["node_index"] = int(task["index"])
        return spec

    def task_files(self, spec: dict[str, Any], paths: dict[str, str], node: str, step_num: int,
                   task: dict[str, Any]) -> None:  # fmt: skip
        """-o/-e with ``%t`` and several tasks on ``node``: a file per task
        (``spec["tasks"]["stdout"]``, a list by local rank), opened by the
        fan-out runner as the user, as srun writes one per task."""
        if "tasks" not in spec:
            return
        ranks = range(int(task["rank"]), int(task["rank"]) + int(task["count"]))
        for k, pattern in paths.items():
            if not pattern:
                continue
            files = [patterns.expand(pattern, self.id, self.name, self.user, node, task=(step_num, r, int(task["index"])))
                     for r in ranks]  # fmt: skip
            if len(set(files)) > 1:
                spec["tasks"][k] = files

    def job_env(self, step_id: int, cpus: int) -> dict[str, str]:
        """The CRANE_* variables a step of this job sees (the agent adds
        only what the node alone knows, CRANE_NODENAME and CRANE_CLUSTER_NAME:
        its internal state never reaches the job). ``slurm_env`` gives each
        its SLURM_* name."""
        from crane.core.slurm_env import repeat_counts, tasks_per_node

        nnodes = len(self.nodes) or self.nnodes
        per_node = tasks_per_node(nnodes, self.ntasks, self.ntasks_per_node)
        ntasks = sum(per_node)
        # the job's cpus are per node: its tasks there times --cpus-per-task
        # (a crun step's cpus are its own: one task of them)
        per_task = max(cpus // max(per_node[0], 1), 1) if step_id == 1 else cpus
        job_cpus = self.cpus if self.cpus > 0 else cpus
        env = {
            "CRANE_JOB_ID": str(self.id),
            "CRANE_STEP_ID": str(step_id),
            "CRANE_JOB_NAME": self.name,
            "CRANE_JOB_NODELIST": nodelist_text(self.nodes),
            "CRANE_NNODES": str(nnodes),
            "CRANE_NTASKS": str(ntasks),  # -n, else --ntasks-per-node on each node, else one per node
            "CRANE_NTASKS_PER_NODE": str(per_node[0]),
            "CRANE_TASKS_PER_NODE": repeat_counts(per_node),  # Slurm's form: 2(x2) or 2,1
            "CRANE_CPUS_PER_TASK": str(per_task),
            "CRANE_CPUS_ON_NODE": str(cpus),
            "CRANE_JOB_CPUS_PER_NODE": repeat_counts([job_cpus] * nnodes),
            "CRANE_JOB_ACCOUNT": self.account,
            "CRANE_JOB_PARTITION": self.partition,
            "CRANE_JOB_QOS": self.qos,
            "CRANE_JOB_USER": self.user,
            "CRANE_JOB_UID": str(self.uid),
            "CRANE_JOB_GID": str(self.gid),
            "CRANE_SUBMIT_DIR": self.cwd,
            "CRANE_RESTART_COUNT": str(self.requeue_count),
            # the batch step is task 0 on the job's first node (as Slurm's batch shell)
            "CRANE_PROCID": "0", "CRANE_LOCALID": "0", "CRANE_NODEID": "0",
        }  # fmt: skip
        if self.memory > 0:  # MB, as SLURM_MEM_PER_NODE; unset when the job has no memory limit
            env["CRANE_MEM_PER_NODE"] = str(max(self.memory // (1024 * 1024), 1))
        return env

    def output_path(self, pattern: str, node: str) -> str:
        """An output path of this job (``-o``/``-e``) with its patterns
        (``%j %x %u %N %A %a %%``) expanded for ``node``; "" stays ""."""
        if not pattern:
            return pattern
        return patterns.expand(pattern, self.id, self.name, self.user, node)


def task_env(step_id: int, task: dict[str, Any]) -> dict[str, str]:
    """The per-task variables of a crun step's first task on a node (the
    runner, ``crane.agent.tasks``, sets PROCID and LOCALID for the others).
    SLURM_STEP_ID is Slurm's step number (Crane step 2 is Slurm's 0, as
    ``crane.slurm.ids.slurm_step``; crun's own job runs as step 0, as srun's)."""
    from crane.core.slurm_env import repeat_counts

    ntasks, nodes = str(task["ntasks"]), list(task["nodes"])
    rank, index = str(task["rank"]), str(task["index"])
    return {
        "CRANE_PROCID": rank, "SLURM_PROCID": rank, "CRANE_LOCALID": "0", "SLURM_LOCALID": "0",
        "CRANE_NODEID": index, "SLURM_NODEID": index,
        "CRANE_STEP_NUM_TASKS": ntasks, "SLURM_STEP_NUM_TASKS": ntasks, "SLURM_NTASKS": ntasks,
        "SLURM_STEP_NUM_NODES": str(len(nodes)), "SLURM_STEP_NODELIST": nodelist_text(nodes),
        "SLURM_STEP_ID": str(max(step_id - 2, 0)),  # crun's own job (Crane step 1) is srun's step 0
        "SLURM_STEP_TASKS_PER_NODE": repeat_counts(list(task.get("counts") or [])),  # 2(x2),1
    }  # fmt: skip


def task_layout(nodes: list[str], cpus_per_node: int, cpus_per_task: int, ntasks: int = 0,
                ntasks_per_node: int = 0) -> list[int] | str:  # fmt: skip
    """How many tasks of a step run on each of ``nodes`` (Slurm's block
    distribution: consecutive ranks per node, the first nodes take one more
    when the tasks do not divide evenly; a step of fewer tasks than nodes
    uses the first nodes only). A string: why it cannot run."""
    k = len(nodes)
    if k == 0:
        return "the job has no nodes"
    if ntasks < 0 or ntasks_per_node < 0:
        return "--ntasks and --ntasks-per-node must be positive"
    per_node_max = cpus_per_node // max(cpus_per_task, 1)
    if ntasks_per_node:
        n = ntasks or ntasks_per_node * k
        if n > ntasks_per_node * k:
            return f"{n} tasks do not fit {ntasks_per_node} per node on the job's {k} node(s)"
        counts = []
        left = n
        for _ in nodes:
            counts.append(min(ntasks_per_node, left))
            left -= counts[-1]
    else:
        n = ntasks or k
        base, extra = divmod(n, k)
        counts = [base + (1 if i < extra else 0) for i in range(k)]
    if max(counts) > per_node_max:
        return (f"{n} tasks of {cpus_per_task} cpus need {max(counts) * cpus_per_task} cpus on a node: "
                f"the allocation has {cpus_per_node} per node on {k} node(s) (at most {per_node_max * k} tasks)")
    while counts and counts[-1] == 0:
        counts.pop()
    return counts


def nodelist_text(nodes: list[str]) -> str:
    """``crane[01-02],gpu07``: the compressed form, as SLURM_JOB_NODELIST
    (comma-separated if a name cannot be compressed)."""
    try:
        return compress_nodes(nodes)
    except ValueError:
        return ",".join(nodes)


STEP_ARGV_CHARS = 256  # of a step's command line, kept in the job record
ENDED_STEPS_KEPT = 256  # ended steps kept in the job record (the oldest go first)


def _argv_summary(argv: list[str]) -> list[str]:
    """The first arguments of a step, at most STEP_ARGV_CHARS in all."""
    shown: list[str] = []
    room = STEP_ARGV_CHARS
    for a in argv:
        if room <= 0:
            break
        shown.append(a[:room])
        room -= len(shown[-1]) + 1
    return shown


def _prune_ended_steps(steps: dict[int, Step]) -> None:
    """Keep the record bounded: every running step, the batch step, and the
    last ENDED_STEPS_KEPT ended ones (each new step persists the record)."""
    ended = [sid for sid, st in steps.items() if sid != 1 and st.state != JobState.RUNNING]
    for sid in sorted(ended)[: max(len(ended) - ENDED_STEPS_KEPT, 0)]:
        del steps[sid]
_RECORD_FIELDS = tuple(f for f in Job.__dataclass_fields__ if f != "launch")
_get_record = operator.attrgetter(*_RECORD_FIELDS)  # one C call for the whole record


def cancel_banner(job: Job, by_name: str | None, message: str, when: float | None = None) -> str:
    """``*** JOB 12 CANCELLED AT <time> BY <who>: <message> ***`` (``when``
    None: now)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() if when is None else when))
    text = f"*** JOB {job.id} CANCELLED AT {stamp} BY {'?' if by_name is None else by_name}"
    if message:
        text += f": {message}"
    return text + " ***"


def step_answer(job: Job, st: Step) -> dict[str, Any]:
    """A step's end for its waiter: who cancelled it and why, taken from the
    job's cancel when the whole job was cancelled (ccancel J, a preemption)."""
    out = st.to_dict()
    c = job.cancel
    if not st.cancelled and c is not None and st.state != JobState.COMPLETED:
        out["cancelled"] = {"by_name": c.by_name, "message": c.message, "path": c.path}
    return out


def request_of(job: Job) -> Request:
    """What the scheduling machine needs to place ``job``."""
    return Request(job.id, job.partition, job.cpus, job.memory, job.nnodes, job.exclusive,
                   list(job.nodelist_req), job.qos, job.priority, job.uid,
                   job.gpus_per_node, job.gpu_type)  # fmt: skip
