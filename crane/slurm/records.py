"""scontrol's ``Key=Value`` records (pure): ``show job``, ``show node`` and
``show partition`` (Slurm 22.05's keys), and Slurm's words for node states
(scontrol State=, sinfo %t/%T/-t)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from crane.core.ids import compress_nodes
from crane.core.states import NodeState, PendingReason
from crane.slurm.job_values import exit_code, is_pending, nodes_text, reason_text, total_cpus
from crane.slurm.layout import Rec
from crane.slurm.states import job_state
from crane.slurm.times import clock, date, elapsed, mb, mem_text

DEPENDENCY_KEY = PendingReason.DEPENDENCY.value  # scontrol's key is the pending reason's word


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    return " ".join(f"{k}={'(null)' if v is None else v}" for k, v in pairs)


def record(lines: list[list[tuple[str, Any]]], oneliner: bool) -> str:
    """scontrol's record: the first line, then the others indented by three
    spaces; ``oneliner``: all on one line."""
    texts = [kv(line) for line in lines if line]
    if oneliner:
        return " ".join(texts)
    return "\n".join(texts[:1] + ["   " + t for t in texts[1:]])


def scontrol_job(j: Rec, now: float, group: str, gid: Any, command: str) -> list[list[tuple[str, Any]]]:
    """``scontrol show job``'s lines for job view ``j`` (Slurm 22.05's keys)."""
    state = job_state(j)
    jid = j["job_id"]
    first: list[tuple[str, Any]] = [("JobId", jid)]
    if j.get("array_job_id"):
        first += [("ArrayJobId", j["array_job_id"]), ("ArrayTaskId", j.get("array_task_id"))]
    first.append(("JobName", j.get("name") or ""))
    nodes = nodes_text(j)
    pending = is_pending(j)
    ended = bool(j.get("end_time"))
    start = j.get("start_time")
    end_t = j.get("end_time") or (float(start) + float(j["time_limit"]) if start and j.get("time_limit") else None)
    lines = [
        first,
        [("UserId", f"{j.get('user')}({j.get('uid')})"), ("GroupId", f"{group}({gid})"), ("MCS_label", "N/A")],
        [("Priority", j.get("priority") or 0), ("Nice", 0), ("Account", j.get("account") or ""),
         ("QOS", j.get("qos") or "")],
        [("JobState", state), ("Reason", reason_text(j)), (DEPENDENCY_KEY, j.get("dependency") or None)],
        [("Requeue", 1), ("Restarts", j.get("requeue_count") or 0), ("BatchFlag", 1), ("Reboot", 0),
         ("ExitCode", exit_code(j))],
        [("RunTime", clock(elapsed(j, now))), ("TimeLimit", clock(j.get("time_limit"))), ("TimeMin", "N/A")],
        [("SubmitTime", date(j.get("submit_time"))), ("EligibleTime", date(j.get("submit_time")))],
        [("AccrueTime", date(j.get("submit_time")))],
        [("StartTime", date(start)), ("EndTime", date(end_t) if not pending else "Unknown"), ("Deadline", "N/A")],
        [("SuspendTime", "None"), ("SecsPreSuspend", 0), ("LastSchedEval", date(j.get("start_time") or now))],
        [("Partition", j.get("partition") or ""), ("AllocNode:Sid", "(null)")],
        [("ReqNodeList", None), ("ExcNodeList", None)],
        [("NodeList", nodes or None)],
        [("BatchHost", (j.get("nodes") or [None])[0])] if nodes and not ended else [],
        [("NumNodes", j.get("num_nodes") or 1), ("NumCPUs", total_cpus(j)), ("NumTasks", j.get("ntasks") or 1),
         ("CPUs/Task", j.get("cpus") or 1), ("ReqB:S:C:T", "0:0:*:*")],
        [("TRES", f"cpu={total_cpus(j)},mem={mem_text(j.get('memory'))},node={j.get('num_nodes') or 1}")],
        [("MinCPUsNode", j.get("cpus") or 1), ("MinMemoryNode", mem_text(j.get("memory"))), ("MinTmpDiskNode", 0)],
        [("Features", None), ("DelayBoot", "00:00:00")],
        [("OverSubscribe", "NO" if j.get("exclusive") else "OK"), ("Contiguous", 0), ("Licenses", None),
         ("Network", None)],
        [("Command", command)],
        [("WorkDir", j.get("work_dir") or "")],
    ]  # fmt: skip
    if j.get("comment"):
        lines.append([("Comment", j["comment"])])
    lines += [[("StdErr", j.get("stderr") or j.get("stdout") or "")], [("StdIn", "/dev/null")],
              [("StdOut", j.get("stdout") or "")]]  # fmt: skip
    if j.get("gres"):
        lines.append([("TresPerNode", f"gres:{j['gres']}")])
    return lines


#: Slurm's long node states (scontrol State=, sinfo %T) and compact ones (sinfo %t)
NODE_LONG = {NodeState.IDLE: "idle", NodeState.MIX: "mixed", NodeState.ALLOC: "allocated",
             NodeState.DRAIN: "drained", NodeState.DRAINING: "draining", NodeState.DOWN: "down"}  # fmt: skip
NODE_SHORT = {NodeState.IDLE: "idle", NodeState.MIX: "mix", NodeState.ALLOC: "alloc",
              NodeState.DRAIN: "drain", NodeState.DRAINING: "drng", NodeState.DOWN: "down"}  # fmt: skip
#: sinfo -t names (any case) -> Crane node states
NODE_STATE_NAMES: dict[str, set[str]] = {
    **{v.upper(): {k} for k, v in NODE_LONG.items()}, **{v.upper(): {k} for k, v in NODE_SHORT.items()},
    NodeState.DRAIN.value: {NodeState.DRAIN, NodeState.DRAINING}, "DRAINED": {NodeState.DRAIN},
    NodeState.ALLOC.value: {NodeState.ALLOC}, NodeState.MIX.value: {NodeState.MIX},
}  # fmt: skip


def node_not_responding(n: Rec) -> bool:
    return n.get("state") == NodeState.DOWN and not n.get("reason")


def node_short(n: Rec) -> str:
    st = NODE_SHORT.get(str(n.get("state")), str(n.get("state") or "").lower())
    return st + ("*" if node_not_responding(n) else "")


def node_long(n: Rec) -> str:
    st = NODE_LONG.get(str(n.get("state")), str(n.get("state") or "").lower())
    return st + ("*" if node_not_responding(n) else "")


def scontrol_node_state(n: Rec) -> str:
    """``IDLE``, ``MIXED``, ``ALLOCATED``, ``IDLE+DRAIN``, ``MIXED+DRAIN``
    (draining), ``DOWN+NOT_RESPONDING``."""
    st = str(n.get("state") or "")
    if st == NodeState.DRAIN:
        return "IDLE+DRAIN"
    if st == NodeState.DRAINING:
        return ("ALLOCATED" if int(n.get("cpus_free") or 0) == 0 else "MIXED") + "+DRAIN"
    if st == NodeState.DOWN:
        return f"{NodeState.DOWN}+NOT_RESPONDING" if node_not_responding(n) else NodeState.DOWN.value
    return NODE_LONG.get(st, st.lower()).upper()


def scontrol_node(n: Rec, partitions: list[str], reason: str) -> list[list[tuple[str, Any]]]:
    cpus = int(n.get("cpus") or 0)
    lines: list[list[tuple[str, Any]]] = [
        [("NodeName", n["name"]), ("Arch", "x86_64"), ("CoresPerSocket", 1)],
        [("CPUAlloc", n.get("cpus_alloc") or 0), ("CPUEfctv", cpus), ("CPUTot", cpus), ("CPULoad", "0.00")],
        [("AvailableFeatures", None)],
        [("ActiveFeatures", None)],
        [("Gres", n.get("gres") or None)],
        [("NodeAddr", n["name"]), ("NodeHostName", n["name"])],
        [("RealMemory", mb(n.get("memory"))), ("AllocMem", mb(int(n.get("memory") or 0) - int(n.get("mem_free") or 0))),
         ("FreeMem", mb(n.get("mem_free")))],
        [("Sockets", cpus), ("Boards", 1)],
        [("State", scontrol_node_state(n)), ("ThreadsPerCore", 1), ("TmpDisk", 0), ("Weight", 1)],
        [("Partitions", ",".join(partitions) or None)],
        [("CfgTRES", f"cpu={cpus},mem={mem_text(n.get('memory'))},billing={cpus}")],
        [("AllocTRES", f"cpu={n.get('cpus_alloc')}" if n.get("cpus_alloc") else "")],
    ]  # fmt: skip
    if reason:
        lines.append([("Reason", reason)])
    return lines


def scontrol_partition(p: Rec, nodes: dict[str, Rec]) -> list[list[tuple[str, Any]]]:
    members = [nodes[x] for x in p.get("nodes") or [] if x in nodes]
    limit = p.get("time_limit") or p.get("max_time")
    return [
        [("PartitionName", p["name"])],
        [("AllowGroups", "ALL"), ("AllowAccounts", "ALL"), ("AllowQos", "ALL")],
        [("AllocNodes", "ALL"), ("Default", "YES" if p.get("default") else "NO"), ("QoS", "N/A")],
        [("DefaultTime", "NONE"), ("DisableRootJobs", "NO"), ("ExclusiveUser", "NO"), ("GraceTime", 0),
         ("Hidden", "NO")],
        [("MaxNodes", "UNLIMITED"), ("MaxTime", clock(limit) if limit else "UNLIMITED"), ("MinNodes", 0),
         ("LLN", "NO"), ("MaxCPUsPerNode", "UNLIMITED")],
        [("Nodes", compress_nodes(list(p.get("nodes") or [])) or None)],
        [("PriorityJobFactor", 1), ("PriorityTier", p.get("priority") or 1), ("RootOnly", "NO"),
         ("ReqResv", "NO"), ("OverSubscribe", "NO")],
        [("OverTimeLimit", "NONE"), ("PreemptMode", "OFF")],
        [("State", "UP"), ("TotalCPUs", sum(int(n.get("cpus") or 0) for n in members)),
         ("TotalNodes", len(p.get("nodes") or [])), ("SelectTypeParameters", "NONE")],
        [("JobDefaults", None)],
        [("DefMemPerNode", "UNLIMITED"), ("MaxMemPerNode", "UNLIMITED")],
    ]  # fmt: skip
