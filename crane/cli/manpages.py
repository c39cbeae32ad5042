"""Man pages for every command, made from the click definitions their --help
comes from (so the two cannot drift): ``crane/man/<prog>.1``, installed with
the package (package data, and ``share/man/man1`` as data files).

    python -m crane.cli.manpages [DIR]     # (re)write DIR/<prog>.1 (default crane/man)
    python -m crane.cli.manpages --show ccancel   # print one page (pipe to `man -l -`)

tests/test_first_day_cli.py checks that regenerating gives the committed files.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

#: Every command with a man page; the module's ``command`` or ``make_command()``.
PROGRAMS = ("cbatch", "ccancel", "cqueue", "cacct", "cinfo", "ccontrol", "cacctmgr", "crun", "calloc", "crane")
MAN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "man")


def command_of(prog: str) -> Any:
    """The click command behind ``prog``, with the shared exit-codes epilog."""
    from crane.cli.common import with_exit_codes

    mod = importlib.import_module(f"crane.cli.{prog}")
    cmd = mod.make_command() if hasattr(mod, "make_command") else mod.command
    return with_exit_codes(cmd)


def _esc(text: str) -> str:
    """Text for troff: backslashes and dashes escaped, no line starting with a
    control character."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in out.split("\n"))


def _paragraphs(text: str) -> list[str]:
    """click's help text as troff: ``\\b`` blocks kept verbatim, the rest filled."""
    import inspect

    out: list[str] = []
    for block in inspect.cleandoc(text).split("\n\n"):
        if block.startswith("\b\n"):
            out += [".PP", ".nf", _esc(block[2:].rstrip("\n")), ".fi"]
        elif block.strip():
            out += [".PP", _esc(" ".join(block.split()))]
    return out


def _options(cmd: Any, ctx: Any) -> list[str]:
    out: list[str] = []
    import click

    for param in cmd.get_params(ctx):
        if not isinstance(param, click.Option):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        flags, help_text = record
        out += [".TP", f"\\fB{_esc(flags)}\\fR", _esc(" ".join(help_text.split()))]
    return out


def render(prog: str, cmd: Any | None = None) -> str:
    """The troff source of ``prog``'s man page (deterministic: no date)."""
    import click

    cmd = cmd if cmd is not None else command_of(prog)
    ctx = click.Context(cmd, info_name=prog)
    summary = (cmd.get_short_help_str(limit=200) or prog).rstrip(".")
    lines = [
        f'.TH {prog.upper()} 1 "" "Crane" "Crane Manual"',
        ".SH NAME",
        f"{prog} \\- {_esc(summary)}",
        ".SH SYNOPSIS",
        f"\\fB{prog}\\fR {_esc(' '.join(cmd.collect_usage_pieces(ctx)))}",
        ".SH DESCRIPTION",
        *_paragraphs(cmd.help or ""),
        ".SH OPTIONS",
        *_options(cmd, ctx),
    ]
    if isinstance(cmd, click.Group):
        lines.append(".SH COMMANDS")
        lines += _subcommands(cmd, ctx, prog)
    lines += [".SH EXIT STATUS", *_paragraphs(cmd.epilog or "")]
    others = [p for p in PROGRAMS if p != prog]
    lines += [".SH SEE ALSO", ", ".join(f"\\fB{p}\\fR(1)" for p in others)]
    return "\n".join(lines) + "\n"


def _subcommands(group: Any, ctx: Any, path: str) -> list[str]:
    import click

    out: list[str] = []
    for name in sorted(group.commands):
        sub = group.commands[name]
        sub_ctx = click.Context(sub, info_name=name, parent=ctx)
        out += [".SS", f"\\fB{_esc(path + ' ' + name)}\\fR {_esc(' '.join(sub.collect_usage_pieces(sub_ctx)))}"]
        out += _paragraphs(sub.help or "")
        opts = _options(sub, sub_ctx)
        if opts:
            out += [".RS", *opts, ".RE"]
        if isinstance(sub, click.Group):
            out += _subcommands(sub, sub_ctx, f"{path} {name}")
    return out


def write_all(directory: str = MAN_DIR) -> list[str]:
    """Write ``<prog>.1`` for every program; the paths written."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for prog in PROGRAMS:
        path = os.path.join(directory, f"{prog}.1")
        with open(path, "w") as f:
            f.write(render(prog))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--show"] and len(args) == 2 and args[1] in PROGRAMS:
        sys.stdout.write(render(args[1]))
        return 0
    if len(args) > 1 or (args and args[0].startswith("-")):
        print(f"usage: python -m crane.cli.manpages [DIR] | --show {{{','.join(PROGRAMS)}}}", file=sys.stderr)
        return 2
    for path in write_all(args[0] if args else MAN_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
