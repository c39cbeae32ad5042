"""Table formatting shared by the viewing CLIs (cqueue, cacct, cinfo,
ccontrol): state filters, Slurm-like ``-o`` format strings, column
rendering, and one way to print times (their common click options:
crane.cli.filter_options; this module does not import click).

Times: durations and limits are ``[D-]HH:MM:SS`` (``UNLIMITED`` for none),
dates ``YYYY-MM-DDTHH:MM:SS`` (local time); a missing value is an empty cell.
In the default tables no cell holds a space (each space of a name or reason
is shown as ``_``), so ``awk`` splits them into the same columns; ``-l``,
``-o``, ``-P`` and ``--json`` show values as they are (escaped).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from crane.cli.common import EXIT_ARGS, CliError
from crane.cli.gres import alloc_text, gres_text
from crane.core.text import safe

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

    Job = dict[str, Any]
    Getter = Callable[[Job, float], str]

#: The options cqueue and cacct share (job selection, output form), as
#: (flags, dest, takes a value): their fast parsers' rows, and the click
#: options' (crane.cli.filter_options adds the help texts).
FILTER_FLAGS: list[tuple[tuple[str, ...], str, bool]] = [
    (("-j", "--job", "--jobs"), "job", True), (("-n", "--name"), "name", True),
    (("-u", "--user"), "user", True), (("-A", "--account"), "account", True),
    (("-p", "--partition"), "partition", True), (("-q", "--qos"), "qos", True),
    (("-t", "--state"), "state", True), (("-w", "--nodelist"), "nodelist", True),
    (("-o", "--format"), "fmt", True), (("-N", "--noheader"), "noheader", False),
    (("--json",), "as_json", False), (("-C", "--config"), "config", True),
]

# --------------------------------------------------------------------------- states


def _state_aliases() -> dict[str, list[str]]:
    from crane.core.ids import SHORT_CODES, JobState

    out: dict[str, list[str]] = {}
    for s in JobState:
        out[s.value] = [s.value]
        out[SHORT_CODES[s]] = [s.value]
    out["P"] = [JobState.PENDING.value]
    out["CANCELED"] = [JobState.CANCELLED.value]
    out["OOM"] = [JobState.OUT_OF_MEMORY.value]
    return out


def parse_states(text: str, all_states: Sequence[str]) -> list[str]:
    """``"R,pd"`` -> ``["PENDING", "RUNNING"]``: full names or short codes,
    any case, comma-separated; ``ALL`` means ``all_states``."""
    from crane.core.ids import SHORT_CODES, JobState

    aliases = _state_aliases()
    out: set[str] = set()
    for item in text.split(","):
        key = item.strip().upper() if item.isascii() else ""
        if key == "ALL":
            out.update(all_states)
        elif key in aliases:
            out.update(aliases[key])
        else:
            valid = ", ".join(f"{s.value}({SHORT_CODES[s]})" for s in JobState)
            raise CliError(f'invalid state "{text}": valid states are {valid}, ALL', EXIT_ARGS)
    return sorted(out)


def build_filters(
    o: dict[str, Any], all_states: Sequence[str]
) -> tuple[dict[str, Any], set[tuple[Any, int]]]:
    """The QueryJobs filter map from the common options, plus the step ids
    named with ``-j J.S`` or ``-j A_T.S`` (used by ``--step``: keys
    ``(job id, step)`` or ``("A_T", step)``). ``-j A`` with an array id
    selects every task of the array; ``A_T`` one task (``array_tasks``)."""
    filters: dict[str, Any] = {}
    steps: set[tuple[Any, int]] = set()
    for key in ("name", "user", "account", "partition", "qos"):
        if o.get(key) is not None:
            filters[key] = o[key]
    if o.get("job") is not None:
        from crane.core.ids import IdListError, parse_job_refs

        try:
            refs = parse_job_refs(o["job"])
        except IdListError as e:
            raise CliError(str(e), EXIT_ARGS) from None
        jobs = sorted({j for j, _, t in refs if t is None})
        tasks = sorted({(j, t) for j, _, t in refs if t is not None})
        filters["jobs"] = jobs
        filters["expand_arrays"] = True  # -j A: every task of array A (as squeue/sacct)
        if tasks:
            filters["array_tasks"] = [[a, t] for a, t in tasks]
        steps = {(j if t is None else f"{j}_{t}", s) for j, s, t in refs if s is not None}
    if o.get("state") is not None:
        filters["states"] = parse_states(o["state"], all_states)
    if o.get("nodelist") is not None:
        from crane.core.ids import expand_nodes

        try:
            filters["nodes"] = expand_nodes(o["nodelist"])
        except ValueError as e:
            raise CliError(str(e), EXIT_ARGS) from None
    return filters, steps


# --------------------------------------------------------------------------- values


def duration(seconds: float | None) -> str:
    """Seconds -> ``[D-]HH:MM:SS``: ``00:00:05``, ``01:02:03``, ``2-03:04:05``;
    ``None`` (or +inf) is ``UNLIMITED``; negative values (clock skew) are 0."""
    if seconds is None or seconds == math.inf:
        return "UNLIMITED"
    if math.isnan(seconds):
        return ""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hms}" if days else hms


def fmt_time(t: float | None) -> str:
    """A date as ``YYYY-MM-DDTHH:MM:SS`` (local time); empty when unknown."""
    if not t:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def elapsed(start: float | None, end: float | None, now: float) -> float:
    if not start:
        return 0.0
    return (end or now) - start


def job_elapsed(j: Job, now: float) -> str:
    return duration(elapsed(j.get("start_time"), j.get("end_time"), now))


def nodelist(j: Job) -> str:
    names = [str(n) for n in j.get("nodes") or [] if n]
    if len(names) == 1:  # nothing to compress (and no hostlist, re, crane.core.ids to import: ~3 ms)
        return names[0]
    from crane.core.ids import compress_nodes

    return compress_nodes(names)


def nodelist_reason(j: Job, now: float) -> str:
    from crane.core.states import JobState

    if j.get("nodes") and j["state"] != JobState.PENDING:
        return nodelist(j)
    return f"({j['reason']})" if j.get("reason") else ""


def node_reason(n: dict[str, Any]) -> str:
    """A node's reason; ``Not responding`` for a DOWN node the controller
    gives none for (its agent is gone); else empty."""
    from crane.core.states import NodeReason, NodeState

    if n.get("reason"):
        return str(n["reason"])
    return NodeReason.NOT_RESPONDING.value if n.get("state") == NodeState.DOWN else ""


def aiot_counts(nodes: list[dict[str, Any]]) -> tuple[str, str]:
    """sinfo's A/I/O/T of some nodes, as cinfo and sinfo show them: nodes
    (allocated/idle/other/total) and CPUs (allocated/idle/other/total).
    "Other": drained, draining or down (their CPUs count as other, all of them)."""
    from crane.core.states import NodeState

    other = (NodeState.DRAIN, NodeState.DRAINING, NodeState.DOWN)
    a = i = o = ca = ci = co = ct = 0
    for n in nodes:
        st, total, alloc = n.get("state"), int(n.get("cpus") or 0), int(n.get("cpus_alloc") or 0)
        ct += total
        if st in other:
            o, co = o + 1, co + total
        else:
            i, a = (i + 1, a) if st == NodeState.IDLE else (i, a + 1)
            ca, ci = ca + alloc, ci + total - alloc
    return f"{a}/{i}/{o}/{a + i + o}", f"{ca}/{ci}/{co}/{ct}"


def short_state(state: str) -> str:
    from crane.core.ids import JobState

    try:
        return JobState(state).short
    except ValueError:
        return state


def time_limit(j: Job, now: float) -> str:
    return duration(j.get("time_limit"))


def memory(j: Job, now: float) -> str:
    from crane.core.ids import format_memory

    return format_memory(int(j.get("memory") or 0))


def job_label(j: Job, now: float = 0.0) -> str:
    """A job's id as users name it: ``A_T`` for an array task, else the id."""
    return str(j.get("job_label") or j["job_id"])


def _s(key: str, default: str = "") -> Getter:
    def get(j: Job, now: float) -> str:
        v = j.get(key)
        return default if v is None or v == "" else str(v)

    return get


#: ``-o`` letters (Slurm's squeue where they exist): letter -> (header, getter)
JOB_FIELDS: dict[str, tuple[str, Getter]] = {
    "i": ("JOBID", job_label),  # A_T for an array task (as squeue's %i)
    "A": ("JOBID", _s("job_id")),  # the job's own id, also for an array task (squeue's %A)
    "F": ("ARRAY_JOB_ID", lambda j, now: str(j.get("array_job_id") or j["job_id"])),
    "K": ("ARRAY_TASK_ID", lambda j, now: "N/A" if j.get("array_task_id") is None else str(j["array_task_id"])),
    "E": ("DEPENDENCY", lambda j, now: str(j.get("dependency") or "(null)")),
    "k": ("COMMENT", lambda j, now: str(j.get("comment") or "(null)")),
    "j": ("NAME", _s("name")),
    "u": ("USER", _s("user")),
    "U": ("UID", _s("uid")),
    "a": ("ACCOUNT", _s("account")),
    "P": ("PARTITION", _s("partition")),
    "q": ("QOS", _s("qos")),
    "T": ("STATE", lambda j, now: str(j["state"])),
    "t": ("ST", lambda j, now: short_state(j["state"])),
    "M": ("TIME", job_elapsed),
    "l": ("TIME_LIMIT", time_limit),
    "D": ("NODES", _s("num_nodes")),
    "N": ("NODELIST", lambda j, now: nodelist(j)),
    "R": ("NODELIST(REASON)", nodelist_reason),
    "r": ("REASON", _s("reason")),
    "C": ("CPUS", _s("cpus")),
    "m": ("MIN_MEMORY", memory),
    "p": ("PRIORITY", _s("priority")),
    "Q": ("PRIORITY", _s("priority")),
    "V": ("SUBMIT_TIME", lambda j, now: fmt_time(j.get("submit_time"))),
    "S": ("START_TIME", lambda j, now: fmt_time(j.get("start_time"))),
    "e": ("END_TIME", lambda j, now: fmt_time(j.get("end_time"))),
    "Z": ("WORK_DIR", _s("work_dir")),
    "o": ("STDOUT", _s("stdout")),
    "h": ("HELD", lambda j, now: "yes" if j.get("held") else "no"),
    "y": ("TYPE", lambda j, now: "Batch"),
    "b": ("GRES", lambda j, now: gres_text(j) or "N/A"),
    "G": ("GPU_ALLOC", lambda j, now: alloc_text(j) or "N/A"),
}


# --------------------------------------------------------------------------- rendering

_SPEC_RE = r"%(\.)?(-)?([0-9]*)([A-Za-z%])"  # compiled (and re imported) when a format is given


class Field:
    __slots__ = ("get", "header", "right", "width")

    def __init__(
        self, header: str, get: Getter, width: int | None = None, right: bool = False
    ) -> None:
        self.header, self.get, self.width, self.right = header, get, width, right


def parse_format(fmt: str, fields: dict[str, tuple[str, Getter]]) -> list[str | Field]:
    """A Slurm-like format string -> literal text and fields.

    ``%i`` a field sized to its widest value; ``%10i`` left-justified in 10
    columns; ``%.10i`` right-justified; ``%-10i`` left-justified (values
    longer than an explicit width are truncated); ``%%`` a percent sign.
    """
    out: list[str | Field] = []
    pos = 0

    def literal(text: str) -> None:
        if "%" in text:
            raise CliError(f'invalid format "{fmt}": stray "%"', EXIT_ARGS)
        out.append(text)

    import re

    for m in re.finditer(_SPEC_RE, fmt):
        if m.start() > pos:
            literal(fmt[pos : m.start()])
        pos = m.end()
        letter = m.group(4)
        if letter == "%":
            out.append("%")
            continue
        if letter not in fields:
            known = "".join(sorted(fields))
            raise CliError(
                f'invalid format "{fmt}": unknown field %{letter} (known: {known})', EXIT_ARGS
            )
        header, get = fields[letter]
        width = bounded_width(m.group(3), fmt)
        out.append(Field(header, get, width, right=bool(m.group(1))))
    if pos < len(fmt):
        literal(fmt[pos:])
    if not any(isinstance(p, Field) for p in out):
        raise CliError(f'invalid format "{fmt}": no fields', EXIT_ARGS)
    return out


MAX_WIDTH = 4096  # widest column a format may ask for (%4096P)


def bounded_width(digits: str, fmt: str) -> int | None:
    """A format's column width: None if not given; at most MAX_WIDTH (a
    wider one would make the CLI allocate gigabytes per line)."""
    if not digits:
        return None
    if len(digits) > 6 or int(digits) > MAX_WIDTH:
        raise CliError(f'invalid format "{fmt[:64]}": a width is at most {MAX_WIDTH}', EXIT_ARGS)
    return int(digits)


_NAMED_RE = r"^\s*[A-Za-z][A-Za-z0-9_]*(%-?\.?[0-9]+)?(\s*,\s*[A-Za-z][A-Za-z0-9_]*(%-?\.?[0-9]+)?)*\s*,?\s*$"


def is_named_format(fmt: str) -> bool:
    """``JobID,State%12`` (sacct's ``--format``), not ``%i %T``."""
    import re

    return bool(re.match(_NAMED_RE, fmt))


def parse_named_format(fmt: str, fields: dict[str, tuple[str, Getter]]) -> list[str | Field]:
    """sacct's ``--format=JobID,JobName%30,State``: field names in any case,
    an optional ``%N`` width (values longer are truncated), one space between
    columns. ``fields``: lower-case name -> (header, getter)."""
    out: list[str | Field] = []
    for item in (x.strip() for x in fmt.split(",")):
        if not item:
            continue
        name, _, width = item.partition("%")
        key = name.lower()
        if key not in fields:
            import difflib

            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {fields[near[0]][0]}?)" if near else ""
            raise CliError(f'invalid format "{fmt}": unknown field {name}{hint}', EXIT_ARGS)
        header, get = fields[key]
        w = width.lstrip("-.")
        if out:
            out.append(" ")
        out.append(Field(header, get, bounded_width(w, fmt), right=width.startswith(".")))
    if not out:
        raise CliError(f'invalid format "{fmt}": no fields', EXIT_ARGS)
    return out


def default_layout(columns: list[tuple[str, Getter]]) -> list[str | Field]:
    out: list[str | Field] = []
    for i, (header, get) in enumerate(columns):
        if i:
            out.append(" ")
        out.append(Field(header, get))
    return out


def no_spaces(text: str) -> str:
    """A default-table cell: each space shown as ``_`` (awk-parseable columns)."""
    return text.replace(" ", "_")


def render(
    layout: list[str | Field], records: list[Job], header: bool, now: float | None = None,
    plain: bool = False,
) -> list[str]:  # fmt: skip
    """The table's lines, every value (and literal of a ``-o`` format)
    escaped with :func:`safe` before it is measured and padded; ``plain``:
    no spaces inside a cell (:func:`no_spaces`)."""
    now = time.time() if now is None else now
    fields = [p for p in layout if isinstance(p, Field)]
    cell = (lambda v: no_spaces(safe(v))) if plain else safe
    values = [[cell(f.get(r, now)) for f in fields] for r in records]
    widths = []
    for i, f in enumerate(fields):
        if f.width is not None:
            widths.append(f.width)
        else:
            widths.append(max([len(f.header) if header else 0] + [len(v[i]) for v in values]))

    def line(cells: list[str]) -> str:
        parts: list[str] = []
        k = 0
        for p in layout:
            if isinstance(p, str):
                parts.append(safe(p))
                continue
            text, w = cells[k], widths[k]
            if p.width is not None:
                text = text[:w]
            parts.append(text.rjust(w) if p.right else text.ljust(w))
            k += 1
        return "".join(parts).rstrip()

    lines = [line([safe(f.header) for f in fields])] if header else []
    lines += [line(v) for v in values]
    return lines


def render_parsable(
    layout: list[str | Field], records: list[Job], header: bool, now: float | None = None, sep: str = "|"
) -> list[str]:
    """sacct's ``-P``: the fields joined by ``|``, unpadded, no trailing ``|``."""
    now = time.time() if now is None else now
    fields = [p for p in layout if isinstance(p, Field)]
    lines = [sep.join(safe(f.header) for f in fields)] if header else []
    lines += [sep.join(safe(f.get(r, now)) for f in fields) for r in records]
    return lines


# --------------------------------------------------------------------------- options

def sort_jobs(jobs: list[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: j["job_id"])
