"""sacct's fields and table (pure): the field table (``JobID,State%20``)
with sacct's fixed widths and ``+`` truncation marker, its ``-P``/``-p``
parsable output, and its rows: each job followed by its steps
(``J.batch``, ``J.0``...)."""

from __future__ import annotations

from collections.abc import Callable

from crane.slurm.ids import slurm_step
from crane.slurm.job_values import exit_code, job_id_text, nodes_text, reason_text, total_cpus
from crane.slurm.layout import MAX_WIDTH, Col, FormatError, Getter, Layout, Rec, UidOf, fit, getter
from crane.slurm.states import acct_state
from crane.slurm.times import clock, date, elapsed, mem_text


def _step_blank(get: Getter) -> Getter:
    """A job field a step row leaves empty (as sacct: User, Partition, Timelimit...)."""
    return lambda r, now: "" if r.get("is_step") else get(r, now)


def _elapsed_raw(r: Rec, now: float) -> str:
    return str(int(elapsed(r, now)))


#: sacct's fields: lower-case name -> (header, width, getter); a negative
#: width is left-justified (sacct's own widths). The State getter is set by
#: :func:`sacct_fields` (it needs the uid lookup).
def sacct_fields(uid_of: UidOf) -> dict[str, tuple[str, int, Getter]]:
    table: list[tuple[str, int, Getter]] = [
        ("JobID", -12, lambda r, now: str(r["slurm_id"])),
        ("JobIDRaw", -12, lambda r, now: str(r["raw_id"])),
        ("JobName", 10, getter("name")),
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
        ("User", 9, _step_blank(getter("user"))),
        ("UID", 6, _step_blank(getter("uid"))),
        ("Group", 9, _step_blank(getter("group"))),
        ("GID", 6, _step_blank(getter("gid"))),
        ("Account", 10, getter("account")),
        ("Partition", 10, _step_blank(getter("partition"))),
        ("QOS", 10, _step_blank(getter("qos"))),
        ("AllocCPUS", 10, lambda r, now: str(r.get("alloc_cpus") or 0)),
        ("NCPUS", 10, lambda r, now: str(r.get("alloc_cpus") or 0)),
        ("ReqCPUS", 8, lambda r, now: str(r.get("req_cpus") or 0)),
        ("AllocNodes", 10, lambda r, now: str(len(r.get("nodes") or []))),
        ("ReqMem", 10, _step_blank(lambda r, now: mem_text(r.get("memory")))),
        ("Timelimit", 10, _step_blank(lambda r, now: clock(r.get("time_limit")))),
        ("TimelimitRaw", 10, _step_blank(lambda r, now: "UNLIMITED" if r.get("time_limit") is None
                                         else str(int(r["time_limit"]) // 60))),
        ("Comment", 15, _step_blank(getter("comment"))),
        ("Reason", 20, _step_blank(lambda r, now: reason_text(r))),
        ("WorkDir", 15, _step_blank(getter("work_dir"))),
        ("Priority", 10, _step_blank(getter("priority", "0"))),
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
        lines.append(" ".join(fit(c.header, c) for c in cols) + " ")
        lines.append(" ".join("-" * (c.width or len(c.header)) for c in cols) + " ")
    lines += [" ".join(fit(escape(c.get(r, now)), c) for c in cols) + " " for r in rows]
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
