"""cacctmgr: accounts, users and QoS in CraneSched's syntax (SPEC §6, §7)::

    cacctmgr [-C FILE] [--json] add|modify|delete|show qos|account|user ...

The arguments after the verb are parsed by :mod:`crane.cacctmgr_parse`
(``Preempt=""`` and ``where``/``set`` clauses are not click-friendly, so the
few global options are taken by hand, before the verb).
"""

from __future__ import annotations

import sys
from typing import Any

from crane.cli.common import (
    EXIT_ARGS,
    EXIT_CODES_EPILOG,
    CliError,
    call,
    load_config,
    print_json,
    run,
)
from crane.core.text import safe, safe_lines

PROG = "cacctmgr"

SUMMARY = "Manage accounts, users and QoS (in CraneSched's syntax)."
FORMS = """\
  cacctmgr add qos NAME [Priority=N] [Preempt=Q1,Q2] [PreemptMode=OFF|CANCEL|REQUEUE|SUSPEND]
  cacctmgr add account NAME [Parent=P] [AllowedQos=Q1,Q2] [DefaultQos=Q]
  cacctmgr add user NAME Account=A [Level=none|operator|admin] [Coordinator=true]
  cacctmgr modify qos|account where Name=X set KEY=V KEY+=V KEY-=V ...
  cacctmgr modify user where Name=U [Account=A] set KEY=V ...
  cacctmgr delete qos|account|user NAME
  cacctmgr show qos|account|user [NAME] [format=Col,Col]
"""
# (flags, metavar, help): the options taken before the verb (split_options)
OPTIONS: list[tuple[tuple[str, ...], str, str]] = [
    (("-C", "--config"), "FILE", "the config file (default: $CRANE_CONF, else /etc/crane/config.yaml)"),
    (("--json",), "", "show: print the rows as JSON"),
    (("-V", "--version"), "", "print the version and exit"),
    (("-h", "--help"), "", "print this help and exit"),
]


def _help_text() -> str:
    import textwrap

    rows = [(", ".join(flags) + (f" {metavar}" if metavar else ""), text) for flags, metavar, text in OPTIONS]
    width = max(len(r[0]) for r in rows) + 2
    opts = "".join(f"  {left:<{width}}{text}\n" for left, text in rows)
    epilog = "\n".join(textwrap.wrap(EXIT_CODES_EPILOG, 78, initial_indent="  ", subsequent_indent="  "))
    return f"Usage: cacctmgr [-C FILE] [--json] VERB ENTITY [ARGS...]\n\n  {SUMMARY}\n\n{FORMS}\nOptions:\n{opts}\n{epilog}\n"


HELP = _help_text()


def make_command() -> Any:
    """The same options as a click command: what the man page is made from
    (cacctmgr itself parses by hand, see split_options)."""
    import click

    params: list[click.Parameter] = []
    for flags, metavar, text in OPTIONS:
        if "--help" in flags:
            continue
        if metavar:
            params.append(click.Option(list(flags), metavar=metavar, help=text))
        else:
            params.append(click.Option(list(flags), is_flag=True, help=text))
    params.append(click.Argument(["args"], nargs=-1, metavar="VERB ENTITY [ARGS...]"))
    body_text = SUMMARY + "\n\n\b\n" + FORMS
    return click.Command(PROG, params=params, help=body_text, epilog=EXIT_CODES_EPILOG,
                         context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip


def split_options(argv: list[str]) -> tuple[dict[str, object], list[str]]:
    """Take ``-C FILE``, ``--config[=]FILE``, ``--json``, ``-h``, ``-V``
    from before the verb; ``--json`` is also accepted after it."""
    opts: dict[str, object] = {"config": None, "json": False, "help": False, "version": False}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a in ("-C", "--config"):
            if i + 1 >= len(argv):
                raise CliError(f"option {a} requires an argument", EXIT_ARGS)
            opts["config"] = argv[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            opts["config"] = a.split("=", 1)[1]
        elif a.startswith("-C") and len(a) > 2:
            opts["config"] = a[2:]
        elif a == "--json":
            opts["json"] = True
        elif a in ("-h", "--help"):
            opts["help"] = True
        elif a in ("-V", "--version"):
            opts["version"] = True
        elif a == "--":
            i += 1
            break
        else:
            raise CliError(f"no such option: {a}", EXIT_ARGS)
        i += 1
    rest = argv[i:]
    if "--json" in rest:
        opts["json"] = True
        rest = [a for a in rest if a != "--json"]
    return opts, rest


def body(argv: list[str]) -> int:
    from crane.cacctmgr_parse import ParseError, parse_argv

    opts, rest = split_options(argv)
    if opts["help"]:
        print(safe_lines(HELP), end="")
        return 0
    if opts["version"]:
        from importlib.metadata import version

        print(safe(f"{PROG} {version('crane')}"))
        return 0
    try:
        op = parse_argv(rest)
    except ParseError as e:
        raise CliError(str(e), EXIT_ARGS) from None
    from crane.core import messages as m

    cfg = load_config(opts["config"])  # type: ignore[arg-type]
    data = call(cfg, m.AcctOp(op))
    if op["verb"] == "show":
        if opts["json"]:
            print_json(data.get("rows", []))
        else:
            print(safe_lines(str(data.get("text", ""))))  # the controller's table: each line escaped
        return 0
    if opts["json"]:
        print_json({"message": data.get("message", "")})
    elif data.get("message"):
        print(safe(str(data["message"])))
    return 0


def main() -> None:
    run(PROG, body, sys.argv[1:])
