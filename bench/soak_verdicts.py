"""What the soak counts (bench/netsoak.py), as pure functions over its records.

**lost**
  * an acknowledged submission (cbatch exit 0 with its ids) whose id the
    controller does not know (active or history), or knows as another job
    (other name or user);
  * an acknowledged cancel (ccancel exit 0 or 4 with its JSON answer):
    a job in ``cancelled`` that did not end CANCELLED; an id asked that is
    in neither list (an array's id, which is its first task's, names every
    task of it, as in Slurm: not checked so); an id in
    ``not_cancelled`` whose reason is false: ``Job not found`` or
    ``Permission denied`` for one of the user's own known jobs, ``Job
    already finished (S)`` for a job that ended CANCELLED by that very call,
    or, S being final, that did not end in S or ended after the answer;

**duplicated**
  * a job whose marker file (a line ``NODE PID RESTART_COUNT`` appended by
    its script when it starts) has more lines than its runs (requeue count
    + 1: never requeued here, PreemptMode CANCEL), or two lines with the
    same restart count;
  * a job id acknowledged by two submissions.

**orphaned**
  * a live process of this cluster (its ``CRANE_CLUSTER_NAME`` and
    ``CRANE_JOB_ID`` in its environment, or in the cluster's cgroups) whose
    job has ended for more than ``ORPHAN_GRACE`` seconds while its node has
    had no fault for that long (checked every few seconds), or at the end;
  * a job's cgroup directory left at the end; a node holding cpus (or
    listing jobs) at the end, when no job is active.

**wrongly killed**: a job whose end is not COMPLETED and not explained:
  * CANCELLED by a user: its message names a ccancel call by the job's owner
    that asked for it (its id or its array's id (its first task's) among the ids, or it matches
    the filters: same user and name, and for ``-t pd`` it never started);
    CANCELLED by root with ``soak-final`` (the end);
  * CANCELLED by preemption (``Preempted by job N``): the victim is low QoS,
    N is a high-QoS job, and N started or was cancelled by a call (or at the end);
  * FAILED ``Node X down``: X is one of the job's nodes and a fault cut X off
    the controller (cut, pull, block) for at least CranedTimeout, and the job
    ended between that fault's start and CranedTimeout after its heal;
  * anything else (FAILED otherwise, TIMEOUT, a cancel without a known
    call) is wrongly killed.

Beside the four counts, **false downs**: a node the controller showed DOWN
with no fault that cut it off for CranedTimeout (a short cut, a slow link
must not take a node down), and **early waits**: ``ccancel --wait`` that returned 0
while a job it cancelled was not yet ended (queried right after it
returned) or still had a process alive (README: it returns "once the jobs
and their processes are gone", also when their node went DOWN behind a
cut: it waits for the node to come back; found by this soak). Printed
beside the four, and exit 1 too.

A request that is not acknowledged (exit 3, a timeout) asks nothing for
``lost`` but does ask for ``wrongly killed``: its cancel may have happened.
The jobs' exit is 0 by construction, and their time limit far away.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from crane.core.states import CancelPath, JobState

LOW, HIGH = "low", "high"
ARRAY, LONG, HI = "soak-a", "soak-l", "soak-h"
FINAL = "soak-final"
ORPHAN_GRACE = 15.0  # seconds after a job's end (and its node's last fault) its processes may live
#: faults that cut a compute host off the controller (its jobs may end FAILED
#: when they last at least CranedTimeout)
CUTS_CTL = frozenset({"cut_short", "cut_long", "pull", "block"})
ENDED = frozenset(JobState) - {JobState.PENDING, JobState.CONFIGURING, JobState.RUNNING,
                               JobState.SUSPENDED, JobState.COMPLETING}  # fmt: skip
COUNTS = ("lost", "duplicated", "orphaned", "wrongly_killed")
EXTRA = ("early_waits", "false_downs")


# ---------------------------------------------------------------- records


@dataclass
class Submit:
    """One cbatch call."""

    seq: int
    user: str
    name: str
    qos: str
    count: int  # jobs asked (array size, --repeat)
    sent: float
    done: float = 0.0
    rc: int | None = None  # None: killed by its timeout
    ids: list[int] = field(default_factory=list)  # acknowledged ids ([] when not acknowledged)


@dataclass
class CancelCall:
    """One ccancel call; ``message`` is ``soak-<seq>``."""

    seq: int
    user: str
    ids: list[int] = field(default_factory=list)
    filters: dict[str, Any] = field(default_factory=dict)  # {"user", "name", "pending"}
    array: bool = False  # ids are array ids (every task)
    wait: bool = False
    sent: float = 0.0
    done: float = 0.0
    rc: int | None = None
    result: dict[str, Any] | None = None  # the --json answer, when acknowledged
    after: dict[int, str] = field(
        default_factory=dict
    )  # --wait: job -> state right after it returned
    after_procs: dict[int, list[int]] = field(default_factory=dict)  # --wait: job -> live pids then

    @property
    def message(self) -> str:
        return f"soak-{self.seq}"

    @property
    def acknowledged(self) -> bool:
        return self.result is not None


@dataclass
class Fault:
    kind: str
    host: str
    start: float
    end: float = 0.0  # 0: not healed yet

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end or time.time()) - self.start)


# ---------------------------------------------------------------- pure classification


def plan_fault(
    rng: random.Random, kind: str, nodes: list[str], timeout: float
) -> tuple[str, float]:
    """The next fault of ``kind``: (host, seconds). Short ones stay well
    under CranedTimeout (0.3 of it), long ones well over (1.7x)."""
    short, long_ = round(0.3 * timeout, 1), round(1.7 * timeout, 1)
    if kind == "login":
        return "login", round(rng.uniform(3.0, 6.0), 1)
    node = rng.choice(nodes)
    if kind == "cut_short":
        return node, short
    if kind == "cut_long":
        return node, long_
    if kind == "slow":
        return node, round(rng.uniform(5.0, 10.0), 1)
    return node, rng.choice([short, long_])  # pull, block


def array_ids(first: int, count: int) -> list[int]:
    """An array's tasks have consecutive ids from its first."""
    return list(range(first, first + count))


def lost_submissions(subs: Iterable[Submit], known: dict[int, dict[str, Any]]) -> list[str]:
    out = []
    for s in subs:
        for jid in s.ids:
            j = known.get(jid)
            if j is None:
                out.append(
                    f"submission #{s.seq} by {s.user}: job {jid} acknowledged, unknown to the controller"
                )
            elif j["name"] != s.name or j["user"] != s.user:
                out.append(f"submission #{s.seq} by {s.user}: job {jid} acknowledged as {s.name}, the controller "
                           f"has {j['name']} of {j['user']}")  # fmt: skip
    return out


def duplicate_ids(subs: Iterable[Submit]) -> list[str]:
    seen: dict[int, int] = {}
    out = []
    for s in subs:
        for jid in s.ids:
            if jid in seen:
                out.append(
                    f"job id {jid} acknowledged twice (submissions #{seen[jid]} and #{s.seq})"
                )
            else:
                seen[jid] = s.seq
    return out


def duplicate_runs(marks: dict[int, list[str]], known: dict[int, dict[str, Any]]) -> list[str]:
    """``marks``: job -> the lines of its marker file (``NODE PID RESTART``)."""
    out = []
    for jid, lines in sorted(marks.items()):
        runs = int((known.get(jid) or {}).get("requeue_count") or 0) + 1
        restarts = [ln.split()[2] if len(ln.split()) > 2 else "?" for ln in lines]
        if len(lines) > runs or len(set(restarts)) < len(restarts):
            out.append(f"job {jid} started {len(lines)} times ({runs} run(s) allowed): {lines}")
    return out


def _final(j: dict[str, Any] | None) -> str | None:
    return j["state"] if j is not None and j["state"] in ENDED else None


def lost_cancels(calls: Iterable[CancelCall], known: dict[int, dict[str, Any]]) -> list[str]:
    out = []
    for c in calls:
        if not c.acknowledged:
            continue
        assert c.result is not None
        where = f"ccancel #{c.seq} by {c.user} ({c.message})"
        done = {int(x["job_id"]) for x in c.result.get("cancelled", [])}
        refused = {int(x["job_id"]): str(x.get("reason", "")) for x in c.result.get("not_cancelled", [])
                   if x.get("step_id") is None and isinstance(x.get("job_id"), int)}  # fmt: skip
        for jid in sorted(done):
            st = _final(known.get(jid))
            if st != JobState.CANCELLED:
                out.append(
                    f"{where}: job {jid} acknowledged cancelled, ended {st or (known.get(jid) or {}).get('state')}"
                )
        for jid in c.ids:
            if (
                int((known.get(jid) or {}).get("array_job_id") or 0) != jid
            ):  # an array id names its tasks
                if jid not in done and jid not in refused:
                    out.append(f"{where}: job {jid} asked, neither cancelled nor refused")
        for jid, why in sorted(refused.items()):
            j = known.get(jid)
            if why in ("Job not found", "Permission denied"):
                if j is not None and j["user"] == c.user:
                    out.append(f"{where}: job {jid} refused ({why}) but it is {c.user}'s and known")
            elif why.startswith("Job already finished ("):
                was = why[len("Job already finished (") : -1]
                st = _final(j)
                if j is not None and j.get("message") == c.message and st == JobState.CANCELLED:
                    out.append(f"{where}: job {jid} refused ({why}) yet cancelled by that call")
                elif was in ENDED and (st != was or (j or {}).get("end_time") is None
                                       or float(j["end_time"]) > c.done + 1.0):  # fmt: skip
                    out.append(f"{where}: job {jid} refused ({why}) but it ended {st} at "
                               f"{(j or {}).get('end_time')} (answer at {c.done:.3f})")  # fmt: skip
    return out


def early_waits(calls: Iterable[CancelCall]) -> list[str]:
    """``ccancel --wait`` calls that returned 0 while a job they cancelled was
    not ended yet (queried right after) or still had a live process."""
    out = []
    for c in calls:
        if not (c.wait and c.rc == 0 and c.result is not None):
            continue
        for x in c.result.get("cancelled", []):
            jid = int(x["job_id"])
            if c.after.get(jid) not in ENDED:
                out.append(f"ccancel #{c.seq} --wait by {c.user} returned at {c.done:.3f} while job {jid} was "
                           f"{c.after.get(jid)}")  # fmt: skip
            if c.after_procs.get(jid):
                out.append(f"ccancel #{c.seq} --wait by {c.user} returned at {c.done:.3f} while job {jid} had "
                           f"processes {c.after_procs[jid]}")  # fmt: skip
    return out


def _matches(call: CancelCall, j: dict[str, Any]) -> bool:
    f = call.filters
    if not f:
        return int(j["job_id"]) in call.ids or (
            int(j.get("array_job_id") or 0)
            in call.ids  # an array's id (its first task's): every task
        )
    if f.get("user") and f["user"] != j["user"]:
        return False
    if f.get("name") and f["name"] != j["name"]:
        return False
    return not (f.get("pending") and j.get("nodes"))  # a job cancelled while pending has no nodes


def _preemptor(reason: str) -> int | None:
    words = reason.split()
    if len(words) >= 4 and words[0] == "Preempted" and words[-1].isdigit():
        return int(words[-1])
    return None


def _node_down(reason: str) -> str | None:
    words = reason.split()
    if len(words) == 3 and words[0] == "Node" and words[2] == "down":
        return words[1]
    return None


def why_ended(j: dict[str, Any], calls: dict[str, CancelCall], faults: list[Fault], timeout: float,
              known: dict[int, dict[str, Any]]) -> tuple[str, str | None]:  # fmt: skip
    """(category, problem): the category of a job's end (completed, cancelled,
    final, preempted, node_fail, failed, active) and, when nothing explains
    it, why it counts as wrongly killed."""
    st, jid = j["state"], int(j["job_id"])
    if st not in ENDED:
        return "active", None
    if st == JobState.COMPLETED:
        return "completed", None
    path, msg, reason = j.get("cancel_path"), j.get("message") or "", j.get("reason") or ""
    if st == JobState.CANCELLED and path == CancelPath.PREEMPTION:
        n = _preemptor(reason)
        p = known.get(n) if n is not None else None
        if p is None or p["qos"] != HIGH or j["qos"] != LOW:
            return (
                "preempted",
                f"job {jid} ({j['qos']}) preempted: {reason!r}, not by a known {HIGH} job",
            )
        asked = p.get("message") == FINAL or any(
            _matches(c, p) for c in calls.values() if p.get("message") == c.message
        )
        if not p.get("nodes") and not asked:  # the controller gave it no nodes: it never started
            return (
                "preempted",
                f"job {jid} preempted by job {n}, which never started and was not cancelled",
            )
        return "preempted", None
    if st == JobState.CANCELLED and path in (CancelPath.USER, CancelPath.ADMIN):
        if msg == FINAL and j.get("cancelled_by") == "root":
            return "final", None
        c = calls.get(msg)
        if c is None:
            return (
                "cancelled",
                f"job {jid} cancelled by {j.get('cancelled_by')} with {msg!r}: no such ccancel",
            )
        if c.user != j.get("cancelled_by") or c.user != j["user"] or not _matches(c, j):
            return "cancelled", (f"job {jid} of {j['user']} ({j['name']}) cancelled by {j.get('cancelled_by')} "
                                 f"with {msg!r}, which did not ask for it ({c.ids or c.filters})")  # fmt: skip
        return "cancelled", None
    if st == JobState.FAILED and (node := _node_down(reason)) is not None:
        end = float(j.get("end_time") or 0)
        for f in faults:
            if (f.kind in CUTS_CTL and f.host == node and node in j.get("nodes", [])
                    and f.seconds >= timeout and f.start <= end <= (f.end or time.time()) + timeout):  # fmt: skip
                return "node_fail", None
        return "node_fail", f"job {jid} ended FAILED ({reason}) on {j.get('nodes')} at {end:.3f} without a fault " \
                            f"cutting {node} off for {timeout:g}s"  # fmt: skip
    return ("failed" if st == JobState.FAILED else str(st).lower()), (
        f"job {jid} ended {st} ({reason!r}, exit {j.get('exit_code')}:{j.get('exit_signal')}) without a cause"
    )


def orphans(procs: dict[int, list[tuple[int, str]]], known: dict[int, dict[str, Any]], faults: list[Fault],
            now: float, grace: float = ORPHAN_GRACE) -> dict[int, str]:  # fmt: skip
    """``procs``: job -> [(pid, node)] alive. A job's processes are orphans
    once it has ended more than ``grace`` seconds ago and their node had no
    fault in the last ``grace`` seconds (a cut node keeps running what it ran
    until it hears from the controller again)."""
    out = {}
    for jid, ps in sorted(procs.items()):
        j = known.get(jid)
        if j is not None and j["state"] not in ENDED:
            continue
        end = float((j or {}).get("end_time") or 0)
        if now - end <= grace:
            continue
        quiet = [(pid, node) for pid, node in ps
                 if not any(f.host == node and (f.end == 0 or now - f.end <= grace) for f in faults)]  # fmt: skip
        if quiet:
            out[jid] = (
                f"job {jid} ({(j or {}).get('state', 'unknown')}, ended {now - end:.0f}s ago): processes {quiet}"
            )
    return out


def held_resources(nodes: list[dict[str, Any]], active: Iterable[dict[str, Any]]) -> list[str]:
    """Nodes holding cpus or listing jobs that no active job runs on."""
    on: dict[str, set[int]] = {}
    for j in active:
        for n in j.get("nodes", []):
            on.setdefault(n, set()).add(int(j["job_id"]))
    out = []
    for n in nodes:
        stray = set(n.get("jobs") or []) - on.get(n["name"], set())
        if stray or (n.get("cpus_alloc") and not on.get(n["name"])):
            out.append(f"node {n['name']}: {n.get('cpus_alloc')} cpus held, jobs {sorted(stray) or n.get('jobs')} "
                       "with no active job there")  # fmt: skip
    return out


def fault_mix(faults: Iterable[Fault]) -> dict[str, tuple[int, float]]:
    """kind -> (how many, total seconds)."""
    mix: dict[str, tuple[int, float]] = {}
    for f in faults:
        n, t = mix.get(f.kind, (0, 0.0))
        mix[f.kind] = (n + 1, t + f.seconds)
    return mix


def false_downs(
    downs: Iterable[tuple[str, float, float]], faults: list[Fault], timeout: float
) -> list[str]:
    """Nodes the controller showed DOWN (node, first seen, last seen) with no
    fault cutting them off it for at least ``timeout`` just before."""
    out = []
    for node, first, last in downs:
        if not any(f.kind in CUTS_CTL and f.host == node and f.seconds >= timeout
                   and f.start <= first <= (f.end or time.time()) + timeout for f in faults):  # fmt: skip
            near = [(f.kind, round(f.start, 1), round(f.seconds, 1)) for f in faults if f.host == node
                    and f.start - 30 <= first <= (f.end or time.time()) + 30]  # fmt: skip
            out.append(
                f"node {node} DOWN from {first:.1f} to {last:.1f} without a cut of {timeout:g}s (faults near: {near})"
            )
    return out
