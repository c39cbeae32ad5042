"""scontrol: Slurm's ``Key=Value`` views and job/node actions over the same
requests as ccontrol::

    scontrol [-o] show job [ID] | node [NAME] | partition [NAME]
    scontrol show hostnames [LIST] | hostlist LIST | hostlistsorted LIST | config
    scontrol ping | version
    scontrol hold|uhold|release|requeue|suspend|resume ID [ID...]
    scontrol update JobId=ID [TimeLimit=T] [Partition=P] [QOS=Q] [JobName=N] [Priority=N]
    scontrol update NodeName=LIST State=DRAIN|RESUME [Reason=TEXT]
    scontrol reconfigure

IDs are Slurm's: ``J``, ``A_T`` (an array task), ``A`` (every task of array
A). Exit codes as Slurm's: 0, or 1 with one line on stderr
(``slurm_load_jobs error: Invalid job id specified``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from crane.cli.common import CliError, call, load_config, run
from crane.core.states import ControlAction, NodeReason, NodeState
from crane.core.text import safe, safe_lines
from crane.slurm.records import (
    node_not_responding,
    record,
    scontrol_job,
    scontrol_node,
    scontrol_partition,
)
from crane.slurm.refs import id_matches, jobs_for_ids, parse_ids
from crane.slurm.squeue_fields import command_text
from crane.slurm.translate import VERSION, config_option

PROG = "scontrol"
INVALID_JOB = "slurm_load_jobs error: Invalid job id specified"
ACTIONS = {"hold": ControlAction.HOLD, "uhold": ControlAction.HOLD, "release": ControlAction.RELEASE,
           "requeue": ControlAction.REQUEUE, "suspend": ControlAction.SUSPEND,
           "resume": ControlAction.RESUME}  # fmt: skip
ENTITIES = {"job": "job", "jobs": "job", "jobid": "job", "node": "node", "nodes": "node", "nodename": "node",
            "partition": "partition", "partitions": "partition", "partitionname": "partition"}  # fmt: skip
#: update JobId=: Slurm's keys (any case) -> the Control request's fields
JOB_KEYS = {"timelimit": "time_limit", "partition": "partition", "qos": "qos", "priority": "priority",
            "jobname": "name", "name": "name"}  # fmt: skip
HELP = """\
Usage: scontrol [-o] [-Q] [-C CONFIG] COMMAND ...

  show job [ID] | show node [NAME] | show partition [NAME]
  show hostnames [LIST] | show hostlist LIST | show hostlistsorted LIST | show config
  ping | version
  hold|uhold|release|requeue|suspend|resume ID [ID...]   (J, A_T, or A: every task)
  update JobId=ID [TimeLimit=T] [Partition=P] [QOS=Q] [JobName=N] [Priority=N]
  update NodeName=LIST State=DRAIN|RESUME [Reason=TEXT]
  reconfigure

Options: -o/--oneliner (a record on one line), -d/--details (accepted),
-Q/--quiet (no error messages), -C/--config FILE (Crane's config file).
Exit codes: 0, or 1 on any error. Crane's own command: ccontrol
(--json, per-reason exit codes).
"""


class Opts:
    oneliner = False
    quiet = False
    config: str | None = None


def fail(message: str) -> CliError:
    return CliError(message, 1)


def ask(cfg: Any, msg: Any) -> dict[str, Any]:
    try:
        return call(cfg, msg)
    except CliError as e:
        raise fail(str(e)) from None


def jobs_query(cfg: Any, filters: dict[str, Any], history: bool) -> list[dict[str, Any]]:
    from crane.core import messages as m

    return list(ask(cfg, m.QueryJobs(filters, history=history))["jobs"])


def group_of(j: dict[str, Any]) -> tuple[str, Any]:
    import grp
    import pwd

    gid = j.get("gid")
    if gid is None:
        try:
            gid = pwd.getpwnam(str(j.get("user"))).pw_gid
        except KeyError:
            return "(null)", "(null)"
    try:
        return grp.getgrgid(int(gid)).gr_name, gid
    except KeyError:
        return str(gid), gid


def emit(records: list[str]) -> None:
    if not records:
        return
    if Opts.oneliner:
        print(safe_lines("\n".join(records)))
        return
    for r in records:  # each record followed by an empty line, as Slurm's
        print(safe_lines(r))
        print()


def show_jobs(cfg: Any, name: str | None) -> int:
    now = time.time()
    if name is None:
        jobs = sorted(jobs_query(cfg, {}, False), key=lambda j: int(j["job_id"]))
        if not jobs:
            print("No jobs in the system")
            return 0
    else:
        try:
            ids = parse_ids(name)
        except ValueError:
            raise fail(INVALID_JOB) from None
        jobs, _ = jobs_for_ids(lambda f, h: jobs_query(cfg, f, h), ids, (False, True))
        if not jobs:
            raise fail(INVALID_JOB)
    out = []
    for j in jobs:
        group, gid = group_of(j)
        cmd = command_text(j, now)
        out.append(record(scontrol_job(j, now, group, gid, cmd), Opts.oneliner))
    emit(out)
    return 0


def show_nodes_or_parts(cfg: Any, entity: str, name: str | None) -> int:
    from crane.core import messages as m
    from crane.core.ids import expand_nodes

    data = ask(cfg, m.QueryNodes())
    parts, nodes = data["partitions"], data["nodes"]
    by_name = {n["name"]: n for n in nodes}
    if entity == "node":
        if name is not None:
            try:
                names = expand_nodes(name)
            except ValueError:
                raise fail(f"Node {name} not found") from None
            missing = [x for x in names if x not in by_name]
            if missing:
                raise fail(f"Node {missing[0]} not found")
            nodes = [by_name[x] for x in names]
        emit([record(scontrol_node(n, [p["name"] for p in parts if n["name"] in p["nodes"]],
                                       n.get("reason") or (NodeReason.NOT_RESPONDING.value if node_not_responding(n) else "")),
                       Opts.oneliner) for n in nodes])  # fmt: skip
        return 0
    if name is not None:
        parts = [p for p in parts if p["name"] == name]
        if not parts:
            raise fail(f"Partition {name} not found")
    emit([record(scontrol_partition(p, by_name), Opts.oneliner) for p in parts])
    return 0


def show_hostlist(kind: str, args: list[str]) -> int:
    from crane.core.ids import compress_nodes, expand_nodes

    if kind == "hostnames":
        text = ",".join(args) if args else os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("CRANE_JOB_NODELIST")
        if not text:
            raise fail("No hostlist specified")
        try:
            names = expand_nodes(text)
        except ValueError as e:
            raise fail(str(e)) from None
        for n in names:
            print(safe(n))
        return 0
    if not args:
        raise fail("No hostlist specified")
    try:
        names = [x for a in args for x in expand_nodes(a)]
        if kind == "hostlistsorted":
            names = sorted(set(names))
        print(safe(compress_nodes(names)))
    except ValueError as e:
        raise fail(str(e)) from None
    return 0


def show(cfg_path: str | None, rest: list[str]) -> int:
    if rest and "=" in rest[0]:  # show job=12, show NodeName=crane01
        rest = rest[0].split("=", 1) + rest[1:]
    if not rest:
        raise fail("show: use show job|node|partition [NAME] or show hostnames|hostlist LIST")
    what = rest[0].lower()
    if what in ("hostnames", "hostlist", "hostlistsorted"):
        return show_hostlist(what, rest[1:])
    if what == "config":
        cfg = load_config(cfg_path)
        print(time.strftime("Configuration data as of %Y-%m-%dT%H:%M:%S"))
        for key, value in (("ClusterName", getattr(cfg, "cluster", "crane")), ("MinJobAge", "300 sec"),
                           ("SLURM_VERSION", "22.05.0"), ("SlurmctldHost[0]", cfg.cli_address)):  # fmt: skip
            print(safe(f"{key:<24}= {value}"))
        return 0
    if what not in ENTITIES:
        raise fail(f"invalid entity: {rest[0]} for keyword: show")
    entity = ENTITIES[what]
    if len(rest) > 2:
        raise fail(f"too many arguments for keyword: show {rest[0]}")
    name = rest[1] if len(rest) == 2 else None
    cfg = load_config(cfg_path)
    if entity == "job":
        return show_jobs(cfg, name)
    return show_nodes_or_parts(cfg, entity, name)


def resolve(cfg: Any, text: str) -> list[int]:
    """Slurm job ids (``J``, ``A_T``, ``A``) -> Crane job ids; a plain id
    that is not an array's is sent as it is (the controller says if unknown)."""
    try:
        ids = parse_ids(text)
    except ValueError:
        raise fail(f"Invalid job id specified: {text}") from None
    if any(s.step is not None for s in ids):
        raise fail(f"Invalid job id specified: {text}")
    jobs, _ = jobs_for_ids(lambda f, h: jobs_query(cfg, f, h), ids, (False,))
    found = sorted(int(j["job_id"]) for j in jobs)
    rest = [s.job for s in ids if s.task is None and not any(id_matches(j, s) for j in jobs)]
    if not found and not rest:
        raise fail(f"Invalid job id specified: {text}")
    return sorted(set(found + rest))


def each(cfg: Any, ids: list[int], make: Any) -> int:
    code = 0
    for jid in ids:
        try:
            ask(cfg, make(jid))
        except CliError as e:
            if not Opts.quiet:
                text = str(e) if str(jid) in str(e) else f"{e} for job {jid}"
                print(safe(f"{PROG}: error: {text}"), file=sys.stderr)
            code = 1
    return code


def parse_kv(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    last = None
    for a in args:
        key, sep, value = a.partition("=")
        if not sep:
            if last is None:
                raise fail(f"Invalid input: {a}")
            out[last] += " " + a
            continue
        last = key.lower()
        out[last] = value
    return out


def update(cfg_path: str | None, args: list[str]) -> int:
    from crane.core import messages as m
    from crane.core.ids import expand_nodes, parse_time_limit
    from crane.core.text import check_no_control

    kv = parse_kv(args)
    job_key = next((k for k in ("jobid", "job") if k in kv), None)
    if job_key is not None:
        fields: dict[str, Any] = {}
        for key, value in kv.items():
            if key == job_key:
                continue
            field = JOB_KEYS.get(key)
            if field is None:
                raise fail(f"Update of this parameter is not supported: {key}")
            if field == "time_limit":
                if value[:1] in "+-" and value:
                    raise fail(f"Invalid TimeLimit value: {value} (increments are not supported)")
                try:
                    fields[field] = parse_time_limit(value.strip(), zero_unlimited=True)
                except ValueError:
                    raise fail(f"Invalid TimeLimit value: {value}") from None
            elif field == "priority":
                if not value.strip().isdigit():
                    raise fail(f"Invalid Priority value: {value}")
                fields[field] = int(value.strip())
            else:
                bad = check_no_control(key, value)
                if bad:
                    raise fail(bad)
                fields[field] = value
        if not fields:
            raise fail("No changes specified")
        cfg = load_config(cfg_path)
        ids = resolve(cfg, kv[job_key])
        return each(cfg, ids, lambda jid: m.Control(ControlAction.UPDATE_JOB, {"job_id": jid, **fields}))
    if "nodename" in kv:
        state = kv.get("state", "").upper()
        if state in ("UNDRAIN", NodeState.IDLE):
            state = "RESUME"
        if state not in (NodeState.DRAIN, "RESUME"):
            raise fail(f"Invalid node state specified: {kv.get('state', '')}")
        if state == NodeState.DRAIN and not kv.get("reason"):
            raise fail("You must specify a reason when DOWNING or DRAINING a node. Request denied")
        try:
            names = expand_nodes(kv["nodename"])
        except ValueError:
            raise fail(f"Invalid node name specified: {kv['nodename']}") from None
        cfg = load_config(cfg_path)
        code = 0
        for node in names:
            a: dict[str, Any] = {"node": node, "state": state}
            if kv.get("reason"):
                a["reason"] = kv["reason"]
            try:
                ask(cfg, m.Control(ControlAction.UPDATE_NODE, a))
            except CliError as e:
                if not Opts.quiet:
                    print(safe(f"{PROG}: error: {e}"), file=sys.stderr)
                code = 1
        return code
    raise fail("update: use JobId=ID KEY=VALUE... or NodeName=LIST State=DRAIN|RESUME [Reason=TEXT]")


def body(argv: list[str]) -> int:
    from crane.core import messages as m

    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a in ("-o", "--oneliner"):
            Opts.oneliner = True
        elif a in ("-Q", "--quiet"):
            Opts.quiet = True
        elif a in ("-d", "--details", "-v", "--verbose", "-a", "--all"):
            pass
        elif a in ("-h", "--help", "--usage"):
            print(safe_lines(HELP), end="")
            return 0
        elif a in ("-V", "--version"):
            print(VERSION)
            return 0
        elif (given := config_option(argv, i, "--clusters")) is not None:
            Opts.config = given[0] if given[0] is not None else Opts.config
            i = given[1]
        else:
            raise fail(f"unrecognized option '{a}'")
        i += 1
    args = argv[i:]
    if not args:
        print(safe_lines(HELP), end="")
        return 1
    verb, rest = args[0].lower(), args[1:]
    if verb == "show":
        return show(Opts.config, rest)
    if verb == "update":
        return update(Opts.config, rest)
    if verb == "version":
        print(VERSION)
        return 0
    if verb == "ping":
        cfg = load_config(Opts.config)
        try:
            call(cfg, m.QueryNodes())
        except CliError:
            print(safe(f"Slurmctld(primary) at {cfg.cli_address} is DOWN"))
            return 1
        print(safe(f"Slurmctld(primary) at {cfg.cli_address} is UP"))
        return 0
    if verb in ("reconfigure", "reconfig"):
        ask(load_config(Opts.config), m.Control(ControlAction.RECONFIGURE, {}))
        return 0
    if verb in ACTIONS:
        if not rest:
            raise fail(f"too few arguments for keyword:{verb}")
        cfg = load_config(Opts.config)
        ids = resolve(cfg, ",".join(rest))
        action = ACTIONS[verb]
        return each(cfg, ids, lambda jid: m.Control(action, {"job_id": jid}))
    raise fail(f"invalid keyword: {args[0]}")


def _run(argv: list[str]) -> int:
    try:
        return body(argv)
    except CliError:
        if Opts.quiet:
            return 1
        raise


def main() -> None:
    """Slurm's exit codes: 0, or 1 on any error."""
    try:
        run(PROG, _run, sys.argv[1:])
    except SystemExit as e:
        sys.exit(0 if e.code in (0, None) else 1)


if __name__ == "__main__":
    main()
