"""Slurm's output vocabulary and formats, for squeue, sacct, sinfo, scontrol
and sacctmgr (pure: no I/O; what needs the system, such as a user's uid, is
passed in).

- states: Slurm's names (``PREEMPTED`` for a job a preemption cancelled,
  ``NODE_FAIL`` for one its node's failure ended, ``CANCELLED by UID``) and
  compact codes (``PD R CG CD CA F TO PR NF OOM``);
- times as each Slurm command prints them: squeue ``M:SS``/``H:MM:SS``/
  ``D-HH:MM:SS``, sacct and scontrol ``HH:MM:SS``/``D-HH:MM:SS``, dates
  ``YYYY-MM-DDTHH:MM:SS``;
- squeue's ``%[.][width]X`` formats (a field without a width is printed as
  it is, unpadded) and ``-O name[:[.]width]``; sacct's field table
  (``JobID,State%20``) with its fixed widths and ``+`` truncation marker;
  sinfo's letters; scontrol's ``Key=Value`` records;
- Slurm job ids: ``J``, ``A_T`` (array task), ``J.batch``/``J.S`` (steps),
  resolved against the jobs the controller returned.

Every value comes from a job or node view of the controller's answer
(crane/requests/query.py); fields it may not carry yet (``array_job_id``,
``comment``, ``gid``...) are read with ``.get``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from crane.core.ids import compress_nodes
from crane.core.states import CancelPath, EndReason, JobState, NodeReason, NodeState, PendingReason
from crane.slurm.ids import slurm_job_id, slurm_step

Rec = dict[str, Any]
Getter = Callable[[Rec, float], str]
UidOf = Callable[[str], int | None]

# --------------------------------------------------------------------------- states

#: Slurm's job states that Crane has no state of its own for (shown from the
#: job's CANCELLED/FAILED state and why it ended)
PREEMPTED = "PREEMPTED"
NODE_FAIL = EndReason.NODE_FAIL.value
REQUEUED = "REQUEUED"

#: Slurm's compact state codes (squeue %t, scancel/sacct -s)
STATE_CODES: dict[str, str] = {
    JobState.PENDING: "PD", JobState.RUNNING: "R", JobState.SUSPENDED: "S", JobState.COMPLETING: "CG",
    JobState.COMPLETED: "CD", JobState.CONFIGURING: "CF", JobState.CANCELLED: "CA", JobState.FAILED: "F",
    JobState.TIMEOUT: "TO", PREEMPTED: "PR", NODE_FAIL: "NF", JobState.OUT_OF_MEMORY: "OOM",
    "BOOT_FAIL": "BF", "DEADLINE": "DL", REQUEUED: "RQ", "REQUEUE_HOLD": "RH", "REQUEUE_FED": "RF",
    "RESV_DEL_HOLD": "RD", "RESIZING": "RS", "REVOKED": "RV", "SIGNALING": "SI", "SPECIAL_EXIT": "SE",
    "STAGE_OUT": "SO", "STOPPED": "ST",
}  # fmt: skip
#: code -> Slurm state name
CODE_STATES: dict[str, str] = {v: k for k, v in STATE_CODES.items()}

_NODE_DOWN = re.compile(r"^Node \S+ down$")


def job_state(j: Rec) -> str:
    """A job's (or step's) state as Slurm names it: PREEMPTED for a job
    ended by a preemption, NODE_FAIL for one its node's failure ended, else
    Crane's state (which are Slurm's names)."""
    st = str(j.get("state") or "")
    if st == JobState.CANCELLED and j.get("cancel_path") == CancelPath.PREEMPTION:
        return PREEMPTED
    if st == JobState.FAILED and (
        j.get("end_reason") == EndReason.NODE_FAIL or _NODE_DOWN.match(str(j.get("reason") or ""))
    ):
        return NODE_FAIL
    return st


def state_code(state: str) -> str:
    return STATE_CODES.get(state, state)


def canceller_uid(j: Rec, uid_of: UidOf) -> str | None:
    """The uid (as text) of who cancelled the job: ``cancelled_by_uid`` when
    the view has it, else the name's uid (``uid_of``), else the name."""
    uid = j.get("cancelled_by_uid")
    if uid is not None:
        return str(uid)
    name = j.get("cancelled_by")
    if not name:
        return None
    found = uid_of(str(name))
    return str(found) if found is not None else str(name)


def acct_state(j: Rec, uid_of: UidOf) -> str:
    """sacct's State: ``CANCELLED by 1001`` when someone cancelled it, else :func:`job_state`."""
    st = job_state(j)
    if st == JobState.CANCELLED:
        who = canceller_uid(j, uid_of)
        if who is not None:
            return f"{st} by {who}"
    return st


def parse_state_list(text: str) -> set[str]:
    """``-t/--states`` of squeue and ``-s/--state`` of sacct: names or
    compact codes, any case, comma-separated, ``ALL``: Slurm state names
    (ValueError on an unknown one)."""
    out: set[str] = set()
    for item in text.split(","):
        key = item.strip().upper()
        if not key:
            continue
        if key == "ALL":
            out |= set(STATE_CODES)
        elif key in STATE_CODES:
            out.add(key)
        elif key in CODE_STATES:
            out.add(CODE_STATES[key])
        elif key == "CANCELED":
            out.add(JobState.CANCELLED)
        else:
            raise ValueError(f"Invalid job state specified: {item.strip()}")
    return out


# --------------------------------------------------------------------------- times


def clock(seconds: float | None) -> str:
    """secs2time_str: ``HH:MM:SS``, ``D-HH:MM:SS``; None: ``UNLIMITED``
    (sacct Elapsed/Timelimit, scontrol RunTime/TimeLimit)."""
    if seconds is None:
        return "UNLIMITED"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    mi, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{mi:02d}:{s:02d}" if days else f"{h:02d}:{mi:02d}:{s:02d}"


def squeue_time(seconds: float | None) -> str:
    """squeue's TIME and TIME_LIMIT: ``0:05``, ``1:02:03``, ``2-03:04:05``;
    None: ``UNLIMITED``."""
    if seconds is None:
        return "UNLIMITED"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    mi, s = divmod(rest, 60)
    if days:
        return f"{days}-{h:02d}:{mi:02d}:{s:02d}"
    if h:
        return f"{h}:{mi:02d}:{s:02d}"
    return f"{mi}:{s:02d}"


def date(t: float | None, missing: str = "Unknown") -> str:
    if not t:
        return missing
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def elapsed(j: Rec, now: float) -> float:
    start = j.get("start_time")
    if not start:
        return 0.0
    return float(j.get("end_time") or now) - float(start)


def mb(nbytes: Any) -> int:
    """Bytes -> Slurm's megabytes (MiB), rounded up."""
    n = int(nbytes or 0)
    return (n + (1 << 20) - 1) >> 20


def mem_text(nbytes: Any) -> str:
    """squeue %m / sacct ReqMem: ``512M``, ``4G``; ``0`` when none asked."""
    n = mb(nbytes)
    if not n:
        return "0"
    return f"{n // 1024}G" if n % 1024 == 0 else f"{n}M"


# --------------------------------------------------------------------------- job values


def job_id_text(j: Rec) -> str:
    """``A_T`` for an array task, else the job id."""
    return slurm_job_id(int(j["job_id"]), int(j.get("array_job_id") or 0), j.get("array_task_id"))


def nodes_text(j: Rec) -> str:
    return compress_nodes([str(n) for n in j.get("nodes") or [] if n])


def is_pending(j: Rec) -> bool:
    return j.get("state") == JobState.PENDING


#: Crane's pending reasons that Slurm has another word for
SLURM_REASONS = {PendingReason.WAITING_FOR_PREEMPTION.value: PendingReason.RESOURCES.value}


def reason_text(j: Rec) -> str:
    """Slurm's Reason: the pending job's reason (a preemptor waiting for
    its victims: ``Resources``), ``None`` otherwise (or when empty)."""
    r = str(j.get("reason") or "")
    if not r or (not is_pending(j) and j.get("state") in (JobState.RUNNING, JobState.CONFIGURING)):
        return "None"
    return SLURM_REASONS.get(r, r)


def nodelist_reason(j: Rec, now: float) -> str:
    if is_pending(j) or not j.get("nodes"):
        return f"({reason_text(j)})"
    return nodes_text(j)


def total_cpus(j: Rec) -> int:
    return int(j.get("cpus") or 0) * max(1, int(j.get("num_nodes") or 1))


def _g(key: str, missing: str = "") -> Getter:
    def get(j: Rec, now: float) -> str:
        v = j.get(key)
        return missing if v is None or v == "" else str(v)

    return get


def _array_job(j: Rec, now: float) -> str:
    return str(j.get("array_job_id") or j["job_id"])


def _array_task(j: Rec, now: float) -> str:
    t = j.get("array_task_id")
    return "N/A" if t is None or not j.get("array_job_id") else str(t)


def _time_left(j: Rec, now: float) -> str:
    limit = j.get("time_limit")
    if limit is None:
        return "UNLIMITED"
    return squeue_time(float(limit) - elapsed(j, now))


def _command(j: Rec, now: float) -> str:
    cmd = j.get("command")
    if isinstance(cmd, list):
        return " ".join(str(x) for x in cmd)
    return str(cmd) if cmd else "(null)"


#: squeue ``-o`` letters: letter -> (header, getter), Slurm 22.05's headers
SQUEUE_FIELDS: dict[str, tuple[str, Getter]] = {
    "a": ("ACCOUNT", _g("account")),
    "A": ("JOBID", lambda j, now: str(j["job_id"])),
    "b": ("TRES_PER_NODE", lambda j, now: str(j.get("gres") or "N/A")),
    "c": ("MIN_CPUS", _g("cpus")),
    "C": ("CPUS", lambda j, now: str(total_cpus(j))),
    "D": ("NODES", _g("num_nodes")),
    "e": ("END_TIME", lambda j, now: date(j.get("end_time"), "N/A")),
    "E": ("DEPENDENCY", _g("dependency", "(null)")),
    "F": ("ARRAY_JOB_ID", _array_job),
    "g": ("GROUP", _g("group", "(null)")),
    "G": ("GID", _g("gid")),
    "h": ("OVER_SUBSCRIBE", lambda j, now: "NO" if j.get("exclusive") else "OK"),
    "i": ("JOBID", lambda j, now: job_id_text(j)),
    "j": ("NAME", _g("name")),
    "k": ("COMMENT", _g("comment", "(null)")),
    "K": ("ARRAY_TASK_ID", _array_task),
    "l": ("TIME_LIMIT", lambda j, now: squeue_time(j.get("time_limit"))),
    "L": ("TIME_LEFT", _time_left),
    "m": ("MIN_MEMORY", lambda j, now: mem_text(j.get("memory"))),
    "M": ("TIME", lambda j, now: squeue_time(elapsed(j, now))),
    "N": ("NODELIST", lambda j, now: nodes_text(j)),
    "o": ("COMMAND", _command),
    "p": ("PRIORITY", lambda j, now: f"{float(j.get('priority') or 0) / 4294967295:.8f}"),
    "P": ("PARTITION", _g("partition")),
    "q": ("QOS", _g("qos")),
    "Q": ("PRIORITY", _g("priority", "0")),
    "r": ("REASON", lambda j, now: reason_text(j)),
    "R": ("NODELIST(REASON)", nodelist_reason),
    "S": ("START_TIME", lambda j, now: date(j.get("start_time"), "N/A")),
    "t": ("ST", lambda j, now: state_code(job_state(j))),
    "T": ("STATE", lambda j, now: job_state(j)),
    "u": ("USER", _g("user")),
    "U": ("UID", _g("uid")),
    "V": ("SUBMIT_TIME", lambda j, now: date(j.get("submit_time"), "N/A")),
    "y": ("NICE", lambda j, now: "0"),
    "Z": ("WORK_DIR", _g("work_dir")),
    # fields Crane has no value of its own for, printed as Slurm prints them unset
    "B": ("EXEC_HOST", lambda j, now: str((j.get("nodes") or ["n/a"])[0])),
    "d": ("MIN_TMP_DISK", lambda j, now: "0"),
    "f": ("FEATURES", lambda j, now: "(null)"),
    "H": ("SOCKETS_PER_NODE", lambda j, now: "*"),
    "I": ("CORES_PER_SOCKET", lambda j, now: "*"),
    "J": ("THREADS_PER_CORE", lambda j, now: "*"),
    "n": ("REQ_NODES", lambda j, now: ""),
    "O": ("CONTIGUOUS", lambda j, now: "0"),
    "v": ("RESERVATION", lambda j, now: "(null)"),
    "w": ("WCKEY", lambda j, now: "(null)"),
    "W": ("LICENSES", lambda j, now: "(null)"),
    "x": ("EXC_NODES", lambda j, now: ""),
    "X": ("CORE_SPEC", lambda j, now: "N/A"),
    "Y": ("SCHEDNODES", lambda j, now: "(null)"),
    "z": ("S:C:T", lambda j, now: "*:*:*"),
}

#: squeue ``-O/--Format`` names -> the letter of the same field
SQUEUE_NAMES: dict[str, str] = {
    "account": "a", "jobid": "A", "jobarrayid": "i", "arrayjobid": "F", "arraytaskid": "K",
    "name": "j", "state": "T", "statecompact": "t", "username": "u", "userid": "U", "uid": "U",
    "partition": "P", "qos": "q", "timeused": "M", "timelimit": "l", "timeleft": "L",
    "numnodes": "D", "numcpus": "C", "mincpus": "c", "nodelist": "N", "reason": "r",
    "reasonlist": "R", "submittime": "V", "starttime": "S", "endtime": "e", "workdir": "Z",
    "comment": "k", "priority": "Q", "prioritylong": "Q", "minmemory": "m", "command": "o",
    "dependency": "E", "groupid": "G", "groupname": "g", "tres-per-node": "b", "gres": "b",
    "oversubscribe": "h", "nice": "y",
}  # fmt: skip
SQUEUE_NAME_HEADERS = {"stdout": "STDOUT", "stderr": "STDERR"}

SQUEUE_DEFAULT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"
SQUEUE_LONG = "%.18i %.9P %.8j %.8u %.8T %.10M %.9l %.6D %R"
SQUEUE_STEPS = "%.15i %.8j %.9P %.8u %.9M %N"


# --------------------------------------------------------------------------- squeue/sinfo formats


@dataclass(slots=True)
class Col:
    """One field of a format: no width: printed as it is; ``right``: right-justified."""

    header: str
    get: Getter
    width: int | None = None
    right: bool = False
    plus: bool = False  # sacct: a value longer than the width ends in "+"
    auto: bool = False  # sinfo's %#X: as wide as the widest value (header included)


Layout = list[str | Col]

_SPEC = re.compile(r"%(#)?(\.)?(-)?([0-9]*)([A-Za-z%])")
MAX_WIDTH = 4096


class FormatError(ValueError):
    pass


def _width(digits: str, fmt: str) -> int | None:
    if not digits:
        return None
    if len(digits) > 6 or int(digits) > MAX_WIDTH:
        raise FormatError(f"Invalid format specification: {fmt[:64]} (a width is at most {MAX_WIDTH})")
    return int(digits) or None


def parse_percent(fmt: str, fields: dict[str, tuple[str, Getter]]) -> Layout:
    """``"%.18i %.9P %j"`` -> literal text and fields (Slurm's ``-o``):
    ``%X`` unpadded, ``%NX`` left-justified in N columns, ``%.NX``
    right-justified (values longer than N are cut), ``%#X`` as wide as the
    widest value (sinfo's default formats), ``%%`` a percent sign."""
    out: Layout = []
    pos = 0
    for m in _SPEC.finditer(fmt):
        if m.start() > pos:
            out.append(fmt[pos : m.start()])
        pos = m.end()
        letter = m.group(5)
        if letter == "%":
            out.append("%")
            continue
        if letter not in fields:
            raise FormatError(f"Invalid job format specification: {letter}")
        header, get = fields[letter]
        out.append(Col(header, get, _width(m.group(4), fmt), right=bool(m.group(2)), auto=bool(m.group(1))))
    if pos < len(fmt):
        out.append(fmt[pos:])
    return out


def parse_squeue_names(spec: str) -> Layout:
    """squeue ``-O jobid,name:30,state:.10``: each field ``name[:[.][width]]``,
    20 columns by default, left-justified (``.``: right)."""
    out: Layout = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, size = item.partition(":")
        key = name.strip().lower()
        if key in SQUEUE_NAMES:
            header, get = SQUEUE_FIELDS[SQUEUE_NAMES[key]]
        elif key in SQUEUE_NAME_HEADERS:
            header, get = SQUEUE_NAME_HEADERS[key], _g(key)
        else:
            raise FormatError(f"Invalid job format specification: {name}")
        right = size.startswith(".")
        digits = size.lstrip(".")
        if digits and not digits.isdigit():
            raise FormatError(f"Invalid job format specification: {item}")
        width = _width(digits, spec) if digits else 20
        out.append(Col(header, get, width, right))
    if not out:
        raise FormatError("Invalid job format specification: (empty)")
    return out


def _fit(text: str, col: Col) -> str:
    if col.width is None:
        return text
    if len(text) > col.width:
        text = text[: col.width - 1] + "+" if col.plus else text[: col.width]
    return text.rjust(col.width) if col.right else text.ljust(col.width)


def render(layout: Layout, records: Iterable[Rec], header: bool, now: float,
           escape: Callable[[str], str] = str) -> list[str]:  # fmt: skip
    """The lines of a squeue/sinfo/sacct table: each field padded and cut to
    its width (none: as it is); ``escape`` applied to every value first (the
    format's own text is the caller's, printed as given: Open OnDemand
    separates fields with \\x1f)."""
    records = list(records)
    for c in layout:
        if isinstance(c, Col) and c.auto:
            c.width = max([len(c.header)] + [len(escape(c.get(r, now))) for r in records])
    lines = []
    if header:
        lines.append("".join(p if isinstance(p, str) else _fit(p.header, p) for p in layout))
    for r in records:
        lines.append("".join(p if isinstance(p, str) else _fit(escape(p.get(r, now)), p) for p in layout))
    return lines


# --------------------------------------------------------------------------- sacct


def _step_blank(get: Getter) -> Getter:
    """A job field a step row leaves empty (as sacct: User, Partition, Timelimit...)."""
    return lambda r, now: "" if r.get("is_step") else get(r, now)


def exit_code(r: Rec, now: float = 0.0) -> str:
    return f"{r.get('exit_code') or 0}:{r.get('exit_signal') or 0}"


def _elapsed_raw(r: Rec, now: float) -> str:
    return str(int(elapsed(r, now)))


#: sacct's fields: lower-case name -> (header, width, getter); a negative
#: width is left-justified (sacct's own widths). The State getter is set by
#: :func:`sacct_fields` (it needs the uid lookup).
def sacct_fields(uid_of: UidOf) -> dict[str, tuple[str, int, Getter]]:
    table: list[tuple[str, int, Getter]] = [
        ("JobID", -12, lambda r, now: str(r["slurm_id"])),
        ("JobIDRaw", -12, lambda r, now: str(r["raw_id"])),
        ("JobName", 10, _g("name")),
        ("State", 10, lambda r, now: acct_state(r, uid_of)),
        ("ExitCode", 8, exit_code),
        ("DerivedExitCode", 15, _step_blank(exit_code)),
        ("NodeList", -15, lambda r, now: nodes_text(r) or "None assigned"),
        ("NNodes", 8, lambda r, now: str(len(r.get("nodes") or []) or r.get("num_nodes") or 0)),
        ("Elapsed", 10, lambda r, now: clock(elapsed(r, now))),
        ("ElapsedRaw", 10, _elapsed_raw),
        ("Start", 19, lambda r, now: date(r.get("start_time"))),
        ("End", 19, lambda r, now: date(r.get("end_time"))),
        ("Submit", 19, lambda r, now: date(r.get("submit_time"))),
        ("Eligible", 19, lambda r, now: date(r.get("submit_time"))),
        ("User", 9, _step_blank(_g("user"))),
        ("UID", 6, _step_blank(_g("uid"))),
        ("Group", 9, _step_blank(_g("group"))),
        ("GID", 6, _step_blank(_g("gid"))),
        ("Account", 10, _g("account")),
        ("Partition", 10, _step_blank(_g("partition"))),
        ("QOS", 10, _step_blank(_g("qos"))),
        ("AllocCPUS", 10, lambda r, now: str(r.get("alloc_cpus") or 0)),
        ("NCPUS", 10, lambda r, now: str(r.get("alloc_cpus") or 0)),
        ("ReqCPUS", 8, lambda r, now: str(r.get("req_cpus") or 0)),
        ("AllocNodes", 10, lambda r, now: str(len(r.get("nodes") or []))),
        ("ReqMem", 10, _step_blank(lambda r, now: mem_text(r.get("memory")))),
        ("Timelimit", 10, _step_blank(lambda r, now: clock(r.get("time_limit")))),
        ("TimelimitRaw", 10, _step_blank(lambda r, now: "UNLIMITED" if r.get("time_limit") is None
                                         else str(int(r["time_limit"]) // 60))),
        ("Comment", 15, _step_blank(_g("comment"))),
        ("Reason", 20, _step_blank(lambda r, now: reason_text(r))),
        ("WorkDir", 15, _step_blank(_g("work_dir"))),
        ("Priority", 10, _step_blank(_g("priority", "0"))),
        ("Cluster", 10, lambda r, now: str(r.get("cluster") or "")),
        ("ArrayJobID", 15, lambda r, now: str(r.get("array_job_id") or "") if r.get("array_job_id") else ""),
        ("ArrayTaskID", 11, lambda r, now: "" if r.get("array_task_id") is None else str(r["array_task_id"])),
    ]  # fmt: skip
    return {name.lower(): (name, width, get) for name, width, get in table}


SACCT_DEFAULT = "JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode"
SACCT_BRIEF = "JobID,State,ExitCode"
SACCT_LONG = ("JobID,JobIDRaw,JobName,Partition,Account,AllocCPUS,AllocNodes,ReqCPUS,ReqMem,NNodes,"
              "Submit,Start,End,Elapsed,Timelimit,State,ExitCode,DerivedExitCode,NodeList,User,UID,QOS,Reason")  # fmt: skip
#: sacct's field aliases
SACCT_ALIASES = {"jobname": "jobname", "name": "jobname", "time": "elapsed", "timelimit": "timelimit",
                 "nodes": "nodelist", "exit": "exitcode"}  # fmt: skip


def parse_sacct_format(spec: str, fields: dict[str, tuple[str, int, Getter]]) -> Layout:
    """``JobID,JobName%30,State``: names in any case, ``%N`` a width (the
    value cut with a ``+`` when longer), one space after each column."""
    out: Layout = []
    for item in spec.replace(" ", ",").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, size = item.partition("%")
        key = name.lower()
        key = key if key in fields else SACCT_ALIASES.get(key, key)
        if key not in fields:
            raise FormatError(f'Invalid field requested: "{name}"')
        header, width, get = fields[key]
        if size:  # %N keeps the field's side, %-N left-justifies
            if not size.lstrip("-").isdigit() or len(size) > 6 or abs(int(size)) > MAX_WIDTH:
                raise FormatError(f'Invalid field requested: "{item}"')
            n = int(size)
            width = n if n < 0 else (-n if width < 0 else n)
        out.append(Col(header, get, abs(width) or None, right=width > 0, plus=True))
    if not out:
        raise FormatError("No fields requested")
    return out


def render_sacct(layout: Layout, rows: list[Rec], header: bool, now: float, parsable: str | None = None,
                 trailing: bool = False, escape: Callable[[str], str] = str) -> list[str]:  # fmt: skip
    """sacct's table: each column padded to its width plus a space, a line
    of dashes under the header; ``parsable``: the separator of ``-P``
    (fields joined by it, unpadded), ``trailing``: ``-p`` (each field
    followed by it)."""
    cols = [p for p in layout if isinstance(p, Col)]
    if parsable is not None:
        sep = parsable

        def join(cells: list[str]) -> str:
            return sep.join(cells) + (sep if trailing else "")

        lines = [join([c.header for c in cols])] if header else []
        lines += [join([escape(c.get(r, now)) for c in cols]) for r in rows]
        return lines
    lines = []
    if header:
        lines.append(" ".join(_fit(c.header, c) for c in cols) + " ")
        lines.append(" ".join("-" * (c.width or len(c.header)) for c in cols) + " ")
    lines += [" ".join(_fit(escape(c.get(r, now)), c) for c in cols) + " " for r in rows]
    return lines


def acct_rows(jobs: list[Rec], steps: bool, wanted_steps: set[tuple[int, int]] | None = None) -> list[Rec]:
    """sacct's rows: each job, followed (``steps``) by its steps as Slurm
    names them (``J.batch``, ``J.0``, ... for Crane's steps 1, 2, ...);
    ``wanted_steps``: only these (job, Crane step) pairs, and no job row
    unless the job itself is wanted (its pair ``(job, 0)``)."""
    out: list[Rec] = []
    for j in jobs:
        jid = int(j["job_id"])
        sid = job_id_text(j)
        if wanted_steps is None or (jid, 0) in wanted_steps:
            cpus = total_cpus(j)  # a job not started has none allocated (sacct's AllocCPUS 0)
            out.append({**j, "slurm_id": sid, "raw_id": str(jid), "alloc_cpus": cpus if j.get("nodes") else 0,
                        "req_cpus": cpus})  # fmt: skip
        if not steps:
            continue
        for s in j.get("steps") or []:
            n = int(s.get("step_id") or 0)
            if wanted_steps is not None and (jid, n) not in wanted_steps and (jid, 0) not in wanted_steps:
                continue
            node = s.get("node")
            name = slurm_step(n)
            argv = s.get("argv") or []
            out.append({
                "is_step": True, "slurm_id": f"{sid}.{name}", "raw_id": f"{jid}.{name}",
                "name": name if n == 1 else (str(argv[0]).rsplit("/", 1)[-1] if argv else str(j.get("name") or "")),
                "state": s.get("state") or "", "cancelled_by": s.get("cancelled_by"),
                "exit_code": s.get("exit_code"), "exit_signal": s.get("signal"),
                "start_time": s.get("start"), "end_time": s.get("end"), "submit_time": s.get("start"),
                "nodes": [node] if node else [], "alloc_cpus": s.get("cpus") or 0, "req_cpus": s.get("cpus") or 0,
                "reason": s.get("reason"),
                "account": j.get("account"), "user": j.get("user"), "uid": j.get("uid"),
                "array_job_id": j.get("array_job_id"), "array_task_id": j.get("array_task_id"),
                "cluster": j.get("cluster"),
            })  # fmt: skip
    return out


_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def _midnight(now: float) -> float:
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def parse_when(text: str, now: float) -> float:
    """sacct's ``-S``/``-E``: ``YYYY-MM-DD[THH:MM[:SS]]``, ``MM/DD[/YY]``,
    ``MMDD[YY]``, ``HH:MM[:SS]`` (today), ``now[{+|-}N[seconds|minutes|hours|days|weeks]]``,
    ``today``, ``midnight``, ``noon``, ``teatime``; local time (ValueError otherwise)."""
    s = text.strip()
    low = s.lower()
    if low in ("today", "midnight"):
        return _midnight(now)
    if low in ("noon", "teatime", "elevenses", "fika"):
        return _midnight(now) + {"noon": 12, "teatime": 16, "elevenses": 11, "fika": 15}[low] * 3600
    m = re.fullmatch(r"now(?:([+-])([0-9]{1,9})([a-z]*))?", low)
    if m:
        if not m.group(1):
            return now
        unit = m.group(3) or "second"
        unit = next((u for u in _UNITS if u.startswith(unit.rstrip("s")) or unit in (u + "s", u[0])), "")
        if not unit:
            raise ValueError(f"Invalid time specification: {text}")
        delta = int(m.group(2)) * _UNITS[unit]
        return now + delta if m.group(1) == "+" else now - delta
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d", "%m/%d/%y", "%m/%d/%Y", "%m.%d.%y", "%m%d%y"):
        try:
            return time.mktime(time.strptime(s, fmt))
        except ValueError:
            continue
    today = time.localtime(now)
    for fmt in ("%H:%M:%S", "%H:%M", "%m/%d", "%m.%d", "%m%d"):
        try:
            t = time.strptime(s, fmt)
        except ValueError:
            continue
        if "H" in fmt:
            return time.mktime((today.tm_year, today.tm_mon, today.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0, 0, -1))
        return time.mktime((today.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
    raise ValueError(f"Invalid time specification: {text}")


# --------------------------------------------------------------------------- job ids


@dataclass(frozen=True, slots=True)
class SlurmId:
    """One id of a Slurm command line: ``J``, ``A_T``, with ``.batch``/``.S``."""

    job: int
    task: int | None = None
    step: str | None = None  # "batch", "0", ...


_ID = re.compile(r"^([0-9]{1,10})(?:_([0-9]{1,10}))?(?:\.(batch|extern|[0-9]{1,9}))?$")


_TASKS = re.compile(r"^([0-9]{1,10})_\[([0-9,\-]+)(?:%[0-9]+)?\]$")
MAX_TASK_IDS = 10_000  # task ids one ``A_[...]`` may name


def parse_ids(text: str) -> list[SlurmId]:
    """``"12,13_2,14.batch 15.0 16_[1-3,5]"`` -> ids (ValueError on a bad one)."""
    out: list[SlurmId] = []
    for item in re.findall(r"[^,\s\[]+(?:\[[^\]]*\])?[^,\s]*", text.strip()):
        m = _ID.match(item)
        if m:
            out.append(SlurmId(int(m.group(1)), int(m.group(2)) if m.group(2) else None, m.group(3)))
            continue
        b = _TASKS.match(item)
        if not b:
            raise ValueError(f"Invalid job id: {item}")
        for part in b.group(2).split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ValueError(f"Invalid job id: {item}")
            first, last = int(lo), int(hi or lo)
            if last < first or last - first >= MAX_TASK_IDS or len(out) > MAX_TASK_IDS:
                raise ValueError(f"Invalid job id: {item}")
            out += [SlurmId(int(b.group(1)), t) for t in range(first, last + 1)]
    if not out:
        raise ValueError(f"Invalid job id: {text}")
    return out


def id_matches(j: Rec, sid: SlurmId) -> bool:
    """Whether job view ``j`` is the job of ``sid``: ``J`` is job J or, for an
    array, every task of array J (as Slurm); ``A_T`` is task T of array A."""
    array = int(j.get("array_job_id") or 0)
    if sid.task is not None:
        return array == sid.job and j.get("array_task_id") == sid.task
    return int(j["job_id"]) == sid.job or (array == sid.job and array != 0)


def select(jobs: Iterable[Rec], ids: list[SlurmId]) -> tuple[list[Rec], set[tuple[int, int]]]:
    """The jobs ``ids`` name, and the (job, Crane step) pairs they name (0:
    the job itself). A step ``extern`` names nothing (Crane has none)."""
    picked: dict[int, Rec] = {}
    pairs: set[tuple[int, int]] = set()
    for j in jobs:
        for sid in ids:
            if not id_matches(j, sid):
                continue
            jid = int(j["job_id"])
            picked[jid] = j
            if sid.step is None:
                pairs.add((jid, 0))
            elif sid.step != "extern":
                pairs.add((jid, 1 if sid.step == "batch" else int(sid.step) + 2))
    return [picked[k] for k in sorted(picked)], pairs


def candidate_ids(ids: list[SlurmId]) -> list[int]:
    """The Crane job ids to ask the controller for first (the array's own id
    for ``A_T``: its tasks are numbered from it)."""
    return sorted({s.job for s in ids})


# --------------------------------------------------------------------------- Key=Value records

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


# --------------------------------------------------------------------------- sinfo

SgRec = dict[str, Any]  # {"part": partition view, "members": [node view, ...]}


def _first(g: SgRec) -> Rec:
    return g["members"][0]  # type: ignore[no-any-return]


def _part_limit(g: SgRec, now: float) -> str:
    limit = g["part"].get("time_limit") or g["part"].get("max_time")
    return clock(limit) if limit else "infinite"


def _aiot_nodes(g: SgRec, now: float) -> str:
    a = i = o = 0
    for n in g["members"]:
        st = n.get("state")
        if st in (NodeState.DRAIN, NodeState.DRAINING, NodeState.DOWN):
            o += 1
        elif st == NodeState.IDLE:
            i += 1
        else:
            a += 1
    return f"{a}/{i}/{o}/{a + i + o}"


def _aiot_cpus(g: SgRec, now: float) -> str:
    a = i = o = t = 0
    for n in g["members"]:
        total = int(n.get("cpus") or 0)
        alloc = int(n.get("cpus_alloc") or 0)
        t += total
        if n.get("state") in (NodeState.DRAIN, NodeState.DRAINING, NodeState.DOWN):
            o += total
        else:
            a += alloc
            i += total - alloc
    return f"{a}/{i}/{o}/{t}"


def _nodelist(g: SgRec, now: float) -> str:
    return compress_nodes([n["name"] for n in g["members"]])


def _free_mem(g: SgRec, now: float) -> str:
    vals = sorted({mb(n.get("mem_free")) for n in g["members"]})
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


def _reason(g: SgRec, now: float) -> str:
    n = _first(g)
    if n.get("reason"):
        return str(n["reason"])
    return NodeReason.NOT_RESPONDING.value if node_not_responding(n) else "none"


#: sinfo ``-o`` letters: letter -> (header, getter of a group of nodes)
SINFO_FIELDS: dict[str, tuple[str, Getter]] = {
    "P": ("PARTITION", lambda g, now: str(g["part"]["name"]) + ("*" if g["part"].get("default") else "")),
    "R": ("PARTITION", lambda g, now: str(g["part"]["name"])),
    "a": ("AVAIL", lambda g, now: "up"),
    "l": ("TIMELIMIT", _part_limit),
    "L": ("DEFAULTTIME", lambda g, now: "n/a"),
    "D": ("NODES", lambda g, now: str(len(g["members"]))),
    "F": ("NODES(A/I/O/T)", _aiot_nodes),
    "t": ("STATE", lambda g, now: node_short(_first(g))),
    "T": ("STATE", lambda g, now: node_long(_first(g))),
    "N": ("NODELIST", _nodelist),
    "n": ("HOSTNAMES", _nodelist),
    "o": ("NODE_ADDR", _nodelist),
    "c": ("CPUS", lambda g, now: str(_first(g).get("cpus") or 0)),
    "C": ("CPUS(A/I/O/T)", _aiot_cpus),
    "m": ("MEMORY", lambda g, now: str(mb(_first(g).get("memory")))),
    "e": ("FREE_MEM", _free_mem),
    "O": ("CPU_LOAD", lambda g, now: "0.00"),
    "G": ("GRES", lambda g, now: str(_first(g).get("gres") or "(null)")),
    "E": ("REASON", _reason),
    "s": ("JOB_SIZE", lambda g, now: "1-infinite"),
    "r": ("ROOT", lambda g, now: "no"),
    "h": ("OVERSUBSCRIBE", lambda g, now: "NO"),
    "g": ("GROUPS", lambda g, now: "all"),
    "z": ("S:C:T", lambda g, now: f"{_first(g).get('cpus') or 1}:1:1"),
    "d": ("TMP_DISK", lambda g, now: "0"),
    "w": ("WEIGHT", lambda g, now: "1"),
    "f": ("AVAIL_FEATURES", lambda g, now: "(null)"),
}
SINFO_AGGREGATE = frozenset("DFNnoCe")  # computed over a line's nodes; the others group nodes into lines

SINFO_DEFAULT = "%#P %.5a %.10l %.6D %.6t %N"
SINFO_NODE = "%#N %.6D %#P %6t"
SINFO_SUMMARIZE = "%#P %.5a %.10l %.16F  %N"
SINFO_LONG = "%#P %.5a %.10l %.10s %.4r %.8h %.10g %.6D %.11T %N"
SINFO_NODE_LONG = "%#N %.6D %#P %.11T %.4c %.8z %.6m %.8d %.6w %.8f %20E"


def sinfo_groups(layout: Layout, parts: list[Rec], nodes: dict[str, Rec], per_node: bool) -> list[SgRec]:
    """The lines of sinfo as groups of nodes: per partition, the nodes whose
    non-aggregate fields print the same share a line (sinfo's grouping);
    ``per_node``: one line per node and partition (``-N``)."""
    aggregate = {SINFO_FIELDS[k][1] for k in SINFO_AGGREGATE}
    keyed = [c for c in layout if isinstance(c, Col) and c.get not in aggregate]
    out: list[SgRec] = []
    for p in parts:
        groups: dict[tuple[str, ...], SgRec] = {}
        for name in p.get("nodes") or []:
            n = nodes.get(name)
            if n is None:
                continue
            one = {"part": p, "members": [n]}
            if per_node:
                out.append(one)
                continue
            key = tuple(c.get(one, 0.0) for c in keyed)
            groups.setdefault(key, {"part": p, "members": []})["members"].append(n)
        out += groups.values()
    if per_node:
        out.sort(key=lambda g: _first(g)["name"])
    return out


def parse_sinfo_format(fmt: str) -> Layout:
    return parse_percent(fmt, SINFO_FIELDS)


Ask = Callable[[dict[str, Any], bool], list[Rec]]  # (filters, history) -> job views


def jobs_for_ids(ask: Ask, ids: list[SlurmId], kinds: tuple[bool, ...], filters: dict[str, Any] | None = None,
                 ) -> tuple[list[Rec], set[tuple[int, int]]]:  # fmt: skip
    """The jobs ``ids`` name (see :func:`select`), asked with ``ask`` of the
    active jobs (``False`` in ``kinds``) and/or the finished ones (``True``):
    first the ids themselves, then, for an array, all its tasks (numbered
    from the array's id: ``array_task_count`` of them, when the view says)."""
    base = dict(filters or {})
    found: dict[int, Rec] = {}

    def get(jobs: list[int] | None, extra: dict[str, Any] | None = None) -> None:
        for history in kinds:
            f = {**base, **(extra or {})}
            if jobs is not None:
                f["jobs"] = jobs
            for j in ask(f, history):
                found.setdefault(int(j["job_id"]), j)

    get(candidate_ids(ids))
    wanted = {s.job for s in ids}
    arrays = {int(j.get("array_job_id") or 0): j for j in found.values()
              if int(j.get("array_job_id") or 0) in wanted}  # fmt: skip
    for a, j in arrays.items():
        count = int(j.get("array_task_count") or 0)
        if count:
            get(list(range(a, a + min(count, 1_000_000))))
        else:  # tasks were submitted with the array: none ended before it was submitted
            get(None, {"ended_after": float(j.get("submit_time") or 0) - 1})
    return select(found.values(), ids)
