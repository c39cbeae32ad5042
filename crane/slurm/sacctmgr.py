"""sacctmgr: Slurm's accounting admin syntax over cacctmgr's requests::

    sacctmgr [-i] [-n] [-P|-p] show|list user|account|qos|assoc [NAME] [where K=V...] [format=F,F%N]
    sacctmgr [-i] add|create account NAME[,NAME] [Parent=P] [Description=D] [QOS=Q1,Q2] [DefaultQOS=Q]
    sacctmgr [-i] add|create user NAME[,NAME] Account=A [DefaultAccount=A] [AdminLevel=None|Operator|Admin]
    sacctmgr [-i] add|create qos NAME [Priority=N] [Preempt=Q] [PreemptMode=M] [MaxWall=T] [MaxJobsPU=N] ...
    sacctmgr [-i] modify user|account|qos [where] Name=X [Account=A] set K=V ...
    sacctmgr [-i] delete|remove user|account|qos [where] Name=X [Account=A]

Adding a user who exists adds the account to them (as Slurm adds an
association). ``Cluster=``, ``Organization=``, ``Fairshare=`` are accepted
and ignored (one cluster, no fair share). Changes are committed at once,
with or without ``-i`` (no prompt). Exit codes: 0, or 1 on any error.
"""

from __future__ import annotations

import sys
from typing import Any

from crane.cli.common import CliError, call, load_config, run
from crane.core.text import safe, safe_lines
from crane.slurm.layout import MAX_WIDTH, Col, Getter, Layout
from crane.slurm.sacct_fields import render_sacct
from crane.slurm.times import clock
from crane.slurm.translate import VERSION, config_option

PROG = "sacctmgr"
VERBS = {"show": "show", "list": "show", "add": "add", "create": "add", "modify": "modify", "update": "modify",
         "delete": "delete", "remove": "delete"}  # fmt: skip
ENTITIES = {"user": "user", "users": "user", "account": "account", "accounts": "account", "qos": "qos",
            "association": "assoc", "associations": "assoc", "assoc": "assoc"}  # fmt: skip
IGNORED = {"cluster", "clusters", "organization", "org", "fairshare", "share", "shares", "wckey", "defaultwckey"}
#: Slurm's keys -> cacctmgr's (the others are passed as they are; crane.accounts knows its aliases)
KEYS = {"maxjobspu": "MaxJobsPerUser", "maxsubmitpu": "MaxSubmitJobsPerUser", "maxsubmit": "MaxSubmitJobsPerUser",
        "maxwalldurationperjob": "MaxTimeLimitPerJob", "defaultqos": "DefaultQos", "names": "Name",
        "parentname": "Parent", "descr": "Description", "defaultaccount": "DefaultAccount",
        "adminlevel": "Level"}  # fmt: skip
HELP = "\n" + __doc__.split("::", 1)[1].strip("\n").split("\n\n")[0] if __doc__ else ""


class Opts:
    immediate = False
    noheader = False
    parsable: str | None = None
    trailing = False
    config: str | None = None


def fail(message: str) -> CliError:
    return CliError(message, 1)


def acct(cfg: Any, op: dict[str, Any]) -> dict[str, Any]:
    from crane.core import messages as m

    try:
        return call(cfg, m.AcctOp(op))
    except CliError as e:
        raise fail(str(e)) from None


def rows(cfg: Any, entity: str) -> list[dict[str, Any]]:
    op = {"verb": "show", "entity": entity, "name": None, "where": {}, "set": [], "format": None}
    return list(acct(cfg, op).get("rows") or [])


def to_argv(argv: list[str]) -> list[str]:
    """A Slurm key's value to cacctmgr's spelling (``AdminLevel=Admin`` -> ``Level=admin``)."""
    out = []
    for tok in argv:
        key, sep, value = tok.partition("=")
        if not sep or key.rstrip("+-").lower() in ("set", "where"):
            out.append(tok)
            continue
        sign = "+" if key.endswith("+") else "-" if key.endswith("-") else ""
        base = key.rstrip("+-")
        if base.lower() in IGNORED:
            continue
        k = KEYS.get(base.lower(), base)
        if k == "Level":
            value = {"administrator": "admin"}.get(value.lower(), value.lower())
        out.append(f"{k}{sign}={value}")
    return out


def split_where(rest: list[str]) -> tuple[str | None, dict[str, str], list[str], list[str]]:
    """``[NAME] [where K=V...] [set K=V...] [format=...]`` -> (name, where, set, other)."""
    name = None
    where: dict[str, str] = {}
    sets: list[str] = []
    other: list[str] = []
    mode = "where"
    for tok in rest:
        low = tok.lower()
        if low == "where":
            mode = "where"
            continue
        if low == "set":
            mode = "set"
            continue
        if "=" not in tok and "+=" not in tok:
            if mode == "set" or name is not None:
                raise fail(f"Unknown option: {tok}")
            name = tok
            continue
        key, _, value = tok.partition("=")
        if mode == "set":
            sets.append(tok)
        elif key.lower() in ("format", "withassoc", "withcoord"):
            other.append(tok)
        else:
            where[key.lower()] = value
    return name, where, sets, other


# --------------------------------------------------------------------------- show

LEVELS = {"none": "None", "operator": "Operator", "admin": "Administrator"}


def _lst(v: Any) -> str:
    return ",".join(str(x) for x in v) if v else ""


def _v(key: str) -> Getter:
    return lambda r, now: "" if r.get(key) is None else str(r.get(key))


SHOW: dict[str, dict[str, tuple[str, int, Getter]]] = {
    "user": {
        "user": ("User", 10, _v("name")), "name": ("User", 10, _v("name")),
        "defaultaccount": ("Def Acct", 10, _v("default_account")),
        "admin": ("Admin", 9, lambda r, now: LEVELS.get(str(r.get("admin_level") or "none"), "None")),
        "adminlevel": ("Admin", 9, lambda r, now: LEVELS.get(str(r.get("admin_level") or "none"), "None")),
        "account": ("Account", 10, lambda r, now: _lst(r.get("accounts"))),
        "coordinators": ("Coord Accounts", 20, lambda r, now: _lst(r.get("coordinator_of"))),
        "uid": ("UID", 6, _v("uid")),
    },
    "account": {
        "account": ("Account", 10, _v("name")), "name": ("Account", 10, _v("name")),
        "description": ("Descr", 20, _v("description")), "descr": ("Descr", 20, _v("description")),
        "organization": ("Org", 20, _v("name")), "org": ("Org", 20, _v("name")),
        "parentname": ("Par Name", 10, _v("parent")), "parent": ("Par Name", 10, _v("parent")),
        "qos": ("QOS", 20, lambda r, now: _lst(r.get("allowed_qos"))),
        "defaultqos": ("Def QOS", 9, _v("default_qos")),
        "partition": ("Partition", 10, lambda r, now: _lst(r.get("allowed_partitions"))),
    },
    "qos": {
        "name": ("Name", 10, _v("name")), "priority": ("Priority", 10, lambda r, now: str(r.get("priority") or 0)),
        "gracetime": ("GraceTime", 10, lambda r, now: clock(r.get("grace_time") or 0)),
        "preempt": ("Preempt", 10, lambda r, now: _lst(r.get("preempt"))),
        "preemptexempttime": ("PreemptExemptTime", 19,
                              lambda r, now: "" if r.get("preempt_exempt_time") is None
                              else clock(r["preempt_exempt_time"])),
        "preemptmode": ("PreemptMode", 11, lambda r, now: str(r.get("preempt_mode") or "cluster").lower()),
        "flags": ("Flags", 10, lambda r, now: ""), "usagethres": ("UsageThres", 10, lambda r, now: ""),
        "usagefactor": ("UsageFactor", 11, lambda r, now: "1.000000"),
        "maxwall": ("MaxWall", 11, lambda r, now: "" if r.get("max_time_limit_per_job") is None
                    else clock(r["max_time_limit_per_job"])),
        "maxjobspu": ("MaxJobsPU", 9, lambda r, now: "" if r.get("max_jobs_per_user") is None
                      else str(r["max_jobs_per_user"])),
        "maxsubmitpu": ("MaxSubmitPU", 11, lambda r, now: "" if r.get("max_submit_jobs_per_user") is None
                        else str(r["max_submit_jobs_per_user"])),
        "description": ("Descr", 20, _v("description")),
    },
    "assoc": {
        "cluster": ("Cluster", 10, _v("cluster")), "account": ("Account", 10, _v("account")),
        "user": ("User", 10, _v("user")), "partition": ("Partition", 10, _v("partition")),
        "share": ("Share", 9, lambda r, now: "1"), "fairshare": ("Share", 9, lambda r, now: "1"),
        "priority": ("Priority", 10, lambda r, now: ""), "grpjobs": ("GrpJobs", 7, lambda r, now: ""),
        "maxjobs": ("MaxJobs", 7, lambda r, now: ""), "qos": ("QOS", 20, _v("qos")),
        "defaultqos": ("Def QOS", 9, _v("default_qos")), "parentname": ("Par Name", 10, _v("parent")),
        "id": ("ID", 6, _v("id")),
    },
}  # fmt: skip
DEFAULT_SHOW = {
    "user": ["user", "defaultaccount", "admin"],
    "account": ["account", "description", "organization"],
    "qos": ["name", "priority", "gracetime", "preempt", "preemptexempttime", "preemptmode", "flags",
            "usagethres", "usagefactor", "maxwall", "maxjobspu", "maxsubmitpu"],
    "assoc": ["cluster", "account", "user", "partition", "share", "priority", "grpjobs", "maxjobs", "qos",
              "defaultqos"],
}  # fmt: skip
ALIASES = {"def acct": "defaultaccount", "defacct": "defaultaccount", "defaultacct": "defaultaccount",
           "def qos": "defaultqos", "defqos": "defaultqos", "par name": "parentname", "users": "user",
           "accounts": "account", "maxjobsperuser": "maxjobspu", "maxsubmitjobsperuser": "maxsubmitpu",
           "maxtimelimitperjob": "maxwall"}  # fmt: skip


def layout_for(entity: str, fmt: str | None) -> Layout:
    table = SHOW[entity]
    names = [x.strip() for x in fmt.split(",") if x.strip()] if fmt else DEFAULT_SHOW[entity]
    out: Layout = []
    for item in names:
        name, _, size = item.partition("%")
        key = name.lower()
        key = key if key in table else ALIASES.get(key, key)
        if key not in table:
            raise fail(f'Unknown field "{name}"')
        header, width, get = table[key]
        if size:
            if not size.lstrip("-").isdigit() or abs(int(size)) > MAX_WIDTH:
                raise fail(f'Unknown field "{item}"')
            width = abs(int(size))
        out.append(Col(header, get, width, right=not size.startswith("-"), plus=True))
    return out


def assoc_rows(cfg: Any) -> list[dict[str, Any]]:
    """Slurm's associations: one per account (User empty) and one per
    account of each user, under the cluster's name."""
    cluster = str(getattr(cfg, "cluster", "") or "crane")
    accounts = {a["name"]: a for a in rows(cfg, "account")}
    out: list[dict[str, Any]] = []
    for name in sorted(accounts):
        a = accounts[name]
        out.append({"cluster": cluster, "account": name, "user": "", "partition": "",
                    "qos": _lst(a.get("allowed_qos")), "default_qos": a.get("default_qos") or "",
                    "parent": a.get("parent") or ""})  # fmt: skip
    for u in sorted(rows(cfg, "user"), key=lambda u: str(u["name"])):
        for acc in u.get("accounts") or []:
            a = accounts.get(acc, {})
            out.append({"cluster": cluster, "account": acc, "user": u["name"], "partition": "",
                        "qos": _lst(a.get("allowed_qos")), "default_qos": a.get("default_qos") or "",
                        "parent": acc})  # fmt: skip
    out.sort(key=lambda r: (str(r["account"]), str(r["user"])))
    for i, r in enumerate(out, 1):
        r["id"] = i
    return out


def show(cfg_path: str | None, entity: str, rest: list[str]) -> int:
    name, where, sets, other = split_where(rest)
    if sets:
        raise fail("show does not take set")
    fmt = next((t.partition("=")[2] for t in other if t.lower().startswith("format=")), None)
    layout = layout_for(entity, fmt)
    cfg = load_config(cfg_path)
    if entity == "assoc":
        records = assoc_rows(cfg)
        keys = {"user": "user", "users": "user", "account": "account", "accounts": "account",
                "cluster": "cluster", "clusters": "cluster", "partition": "partition"}  # fmt: skip
    else:
        records = rows(cfg, entity)
        keys = {"name": "name", "names": "name", entity: "name", entity + "s": "name"}
        if entity == "user":
            keys |= {"account": "accounts", "accounts": "accounts", "defaultaccount": "default_account",
                     "adminlevel": "admin_level"}  # fmt: skip
        if entity == "account":
            keys |= {"parent": "parent", "parentname": "parent"}
    if name is not None:
        where[("name" if entity != "assoc" else "user")] = name
    for k, v in where.items():
        if k in IGNORED - {"cluster", "clusters"} or (k in ("cluster", "clusters") and entity != "assoc"):
            continue
        field = keys.get(k)
        if field is None:
            raise fail(f"Unknown condition: {k}={v}")
        wanted = {x.lower() for x in v.split(",") if x}

        def hit(r: dict[str, Any], field: str = field, wanted: set[str] = wanted) -> bool:
            val = r.get(field)
            vals = [str(x).lower() for x in val] if isinstance(val, list) else [str(val or "").lower()]
            return bool(wanted.intersection(vals))

        records = [r for r in records if hit(r)]
    lines = render_sacct(layout, records, header=not Opts.noheader, now=0.0, parsable=Opts.parsable,
                           trailing=Opts.trailing, escape=safe)  # fmt: skip
    for line in lines:
        print(line)
    return 0


# --------------------------------------------------------------------------- changes


def change(cfg_path: str | None, verb: str, entity: str, rest: list[str]) -> int:
    from crane.cacctmgr_parse import ParseError, parse_argv

    if entity == "assoc":
        raise fail("associations are changed through users and accounts (add user NAME Account=A)")
    name, where, sets, _other = split_where(rest)
    where = {k: v for k, v in where.items() if k not in IGNORED}
    names_text = name or where.pop("name", None) or where.pop("names", None) or where.pop(entity, None)
    if not names_text:
        raise fail(f"{verb} {entity}: a name is required")
    names = [n for n in names_text.split(",") if n]
    cfg = load_config(cfg_path)
    existing = {str(r["name"]) for r in rows(cfg, "user")} if (verb == "add" and entity == "user") else set()
    messages = []
    for n in names:
        if verb == "add":
            extra = [f"{k}={v}" for k, v in where.items()] + sets
            if entity == "user" and n in existing:  # a new association of an existing user
                accts = [v for k, v in where.items() if k in ("account", "accounts")]
                if not accts:
                    raise fail(f"User {n} already exists")
                argv = ["modify", "user", "where", f"Name={n}", "set", *(f"Account+={a}" for a in accts)]
                others = [t for t in to_argv(extra) if not t.lower().startswith(("account=", "accounts="))]
                argv += others
            else:
                argv = ["add", entity, n, *to_argv(extra)]
        elif verb == "modify":
            if not sets:
                raise fail("modify: nothing to set (use set KEY=VALUE)")
            cond = [f"Name={n}"] + ([f"Account={where['account']}"] if entity == "user" and "account" in where else [])
            argv = ["modify", entity, "where", *cond, "set", *to_argv(sets)]
        else:
            argv = ["delete", entity, n] + ([f"Account={where['account']}"] if entity == "user" and "account" in where
                                            else [])  # fmt: skip
        try:
            op = parse_argv(argv)
        except ParseError as e:
            raise fail(str(e)) from None
        data = acct(cfg, op)
        if data.get("message"):
            messages.append(str(data["message"]))
    label = {"add": " Adding", "modify": " Modified", "delete": " Deleting"}[verb]
    kind = {"user": "User(s)", "account": "Account(s)", "qos": "QOS(s)"}[entity]
    print(safe(f"{label} {kind}"))
    for n in names:
        print(safe(f"  {n}"))
    return 0


def body(argv: list[str]) -> int:
    # options anywhere (sacctmgr's getopt permutes): the words starting with "-"
    opts: list[str] = []
    args: list[str] = []
    k = 0
    while k < len(argv):
        a = argv[k]
        if a.startswith("-") and "=" not in a and len(a) > 1:
            opts.append(a)
            if a in ("-C", "--config", "-M", "--cluster") and k + 1 < len(argv):
                opts.append(argv[k + 1])
                k += 1
        else:
            args.append(a)
        k += 1
    argv = opts
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-i", "--immediate"):
            Opts.immediate = True
        elif a in ("-n", "--noheader"):
            Opts.noheader = True
        elif a in ("-P", "--parsable2"):
            Opts.parsable, Opts.trailing = "|", False
        elif a in ("-p", "--parsable"):
            Opts.parsable, Opts.trailing = "|", True
        elif a in ("-Q", "--quiet", "-v", "--verbose", "-r", "--readonly", "-s", "--associations"):
            pass
        elif a in ("-h", "--help", "--usage"):
            print(safe_lines(f"Usage:{HELP}\n\nExit codes: 0, or 1 on any error. Crane's own command: cacctmgr.\n"),
                  end="")  # fmt: skip
            return 0
        elif a in ("-V", "--version"):
            print(VERSION)
            return 0
        elif (given := config_option(argv, i, "--cluster")) is not None:
            Opts.config = given[0] if given[0] is not None else Opts.config
            i = given[1]
        else:
            raise fail(f"unrecognized option '{a}'")
        i += 1
    if len(args) < 2:
        raise fail("use: show|add|modify|delete user|account|qos|assoc ...")
    verb = VERBS.get(args[0].lower())
    entity = ENTITIES.get(args[1].lower())
    if verb is None:
        raise fail(f"Unknown command: {args[0]}")
    if entity is None:
        raise fail(f"Unknown entity: {args[1]}")
    if verb == "show":
        return show(Opts.config, entity, args[2:])
    return change(Opts.config, verb, entity, args[2:])


def main() -> None:
    """Slurm's exit codes: 0, or 1 on any error."""
    try:
        run(PROG, body, sys.argv[1:])
    except SystemExit as e:
        sys.exit(0 if e.code in (0, None) else 1)


if __name__ == "__main__":
    main()
