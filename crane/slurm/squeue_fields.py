"""squeue's fields (pure): the ``-o`` letters (Slurm 22.05's headers), the
``-O/--Format`` names (``name[:[.]width]``, :func:`parse_squeue_names`) and
the default formats, each field a getter of a job view."""

from __future__ import annotations

from crane.slurm.job_values import job_id_text, nodelist_reason, nodes_text, reason_text, total_cpus
from crane.slurm.layout import Col, FormatError, Getter, Layout, Rec, getter, parse_width
from crane.slurm.states import job_state, state_code
from crane.slurm.times import date, elapsed, mem_text, squeue_time


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


def command_text(j: Rec, now: float) -> str:
    cmd = j.get("command")
    if isinstance(cmd, list):
        return " ".join(str(x) for x in cmd)
    return str(cmd) if cmd else "(null)"


#: squeue ``-o`` letters: letter -> (header, getter), Slurm 22.05's headers
SQUEUE_FIELDS: dict[str, tuple[str, Getter]] = {
    "a": ("ACCOUNT", getter("account")),
    "A": ("JOBID", lambda j, now: str(j["job_id"])),
    "b": ("TRES_PER_NODE", lambda j, now: str(j.get("gres") or "N/A")),
    "c": ("MIN_CPUS", getter("cpus")),
    "C": ("CPUS", lambda j, now: str(total_cpus(j))),
    "D": ("NODES", getter("num_nodes")),
    "e": ("END_TIME", lambda j, now: date(j.get("end_time"), "N/A")),
    "E": ("DEPENDENCY", getter("dependency", "(null)")),
    "F": ("ARRAY_JOB_ID", _array_job),
    "g": ("GROUP", getter("group", "(null)")),
    "G": ("GID", getter("gid")),
    "h": ("OVER_SUBSCRIBE", lambda j, now: "NO" if j.get("exclusive") else "OK"),
    "i": ("JOBID", lambda j, now: job_id_text(j)),
    "j": ("NAME", getter("name")),
    "k": ("COMMENT", getter("comment", "(null)")),
    "K": ("ARRAY_TASK_ID", _array_task),
    "l": ("TIME_LIMIT", lambda j, now: squeue_time(j.get("time_limit"))),
    "L": ("TIME_LEFT", _time_left),
    "m": ("MIN_MEMORY", lambda j, now: mem_text(j.get("memory"))),
    "M": ("TIME", lambda j, now: squeue_time(elapsed(j, now))),
    "N": ("NODELIST", lambda j, now: nodes_text(j)),
    "o": ("COMMAND", command_text),
    "p": ("PRIORITY", lambda j, now: f"{float(j.get('priority') or 0) / 4294967295:.8f}"),
    "P": ("PARTITION", getter("partition")),
    "q": ("QOS", getter("qos")),
    "Q": ("PRIORITY", getter("priority", "0")),
    "r": ("REASON", lambda j, now: reason_text(j)),
    "R": ("NODELIST(REASON)", nodelist_reason),
    "S": ("START_TIME", lambda j, now: date(j.get("start_time"), "N/A")),
    "t": ("ST", lambda j, now: state_code(job_state(j))),
    "T": ("STATE", lambda j, now: job_state(j)),
    "u": ("USER", getter("user")),
    "U": ("UID", getter("uid")),
    "V": ("SUBMIT_TIME", lambda j, now: date(j.get("submit_time"), "N/A")),
    "y": ("NICE", lambda j, now: "0"),
    "Z": ("WORK_DIR", getter("work_dir")),
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
            header, get = SQUEUE_NAME_HEADERS[key], getter(key)
        else:
            raise FormatError(f"Invalid job format specification: {name}")
        right = size.startswith(".")
        digits = size.lstrip(".")
        if digits and not digits.isdigit():
            raise FormatError(f"Invalid job format specification: {item}")
        width = parse_width(digits, spec) if digits else 20
        out.append(Col(header, get, width, right))
    if not out:
        raise FormatError("Invalid job format specification: (empty)")
    return out
