"""cbatch: submit a batch job (a script with #CBATCH lines, or --wrap).

Paths are sent absolute: ``-D`` against the submitter's current directory,
``-o``/``-e`` against the job's working directory (``-D``, else the current
directory), from the command line and ``#CBATCH`` lines alike; the
controller refuses relative ones. A job name, path or working directory
holding a control character is refused here with exit 2 (the controller
refuses it too). GPUs: ``--gres gpu:[TYPE:]N`` per node, ``--gpus [TYPE:]N``
per job (``crane.cli.gres``)."""

from __future__ import annotations

import os
import sys

from crane.cli.common import (
    EXIT_CODES_EPILOG,
    CliError,
    SimpleOptions,
    call,
    click_main,
    load_config,
    print_json,
    run,
)
from crane.cli.job_options import build_spec, click_options, fast_job_options
from crane.core.text import safe

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

PROG = "cbatch"


def script_options(script: str) -> list[str]:
    """The arguments of the #CBATCH lines at the top of a script (before the
    first command), as Slurm reads #SBATCH lines."""
    args: list[str] = []
    for line in script.splitlines()[1:] if script.startswith("#!") else script.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#CBATCH"):
            import shlex  # here: it costs a command ~5 ms (re), and --wrap needs none

            try:
                args += shlex.split(s[len("#CBATCH") :].split(" #", 1)[0])
            except ValueError as e:
                raise CliError(f"bad #CBATCH line {s!r}: {e}") from None
        elif not s.startswith("#"):
            break
    return args


def _parse_script_args(args: list[str]) -> dict[str, Any]:
    """Parse #CBATCH arguments with the same options as the command line."""
    fast = fast_job_options(args, [])
    if fast is not None:
        return fast[0]
    import click

    sub = click.Command("cbatch-script", params=[], callback=lambda **kw: kw)
    for opt in click_options():
        opt(sub)
    try:
        return sub.main(args, standalone_mode=False)  # type: ignore[no-any-return]
    except click.UsageError as e:
        raise CliError(f"in #CBATCH lines: {e.format_message()}") from None


def merge_options(script: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """#CBATCH options overridden by the command line's; a GPU request on the
    command line (--gres or --gpus) replaces the script's either way."""
    merged = dict(script)
    if line.get("gres") is not None or line.get("gpus") is not None:
        merged["gres"] = merged["gpus"] = None
    for k, v in line.items():
        if v is not None:
            merged[k] = v
    return merged


STDIN_WAIT = 10.0  # s: a pipe on stdin that gives nothing (no data, no EOF) this long is not a script


def read_stdin_script() -> str | None:
    """The script on standard input when no script file and no --wrap are
    given (``echo cmd | cbatch``, as sbatch): None when stdin is a terminal,
    or a pipe that gives neither data nor end of input within STDIN_WAIT
    seconds (an inherited, idle stdin: cbatch never hangs on it)."""
    import select
    import stat

    try:
        if sys.stdin is None or sys.stdin.isatty():
            return None
        mode = os.fstat(sys.stdin.fileno()).st_mode
        if (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) and not select.select([sys.stdin], [], [], STDIN_WAIT)[0]:
            return None
        return sys.stdin.read()
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def submit(script: str | None, wrap: str | None, repeat: int, as_json: bool, config: str | None, **opts: Any) -> int:
    """Submit a batch job: SCRIPT (#CBATCH lines at its top take the same
    options), --wrap COMMAND, or a script on standard input (echo cmd | cbatch)."""
    ids = submitted(script, wrap, repeat, config, opts)
    if as_json:
        print_json({"job_id": ids[0]} if repeat == 1 else {"job_ids": ids})
    elif repeat == 1:
        print(safe(f"Job id allocated: {ids[0]}."))
    else:
        print(safe(f"Job ids allocated: {ids[0]}-{ids[-1]}."))
    return 0


def submitted(script: str | None, wrap: str | None, repeat: int, config: str | None, opts: dict[str, Any]) -> list[int]:
    """What submit does, without printing: the new jobs' ids."""
    if script is not None and wrap is not None:
        raise CliError("give a script or --wrap COMMAND (not both)")
    text = None
    if script is None and wrap is None:
        text = read_stdin_script()
        if text is None or not text.strip():
            raise CliError("give a script or --wrap COMMAND (or a script on standard input)")
    elif script is not None:
        try:
            with open(script) if script != "-" else sys.stdin as f:
                text = f.read()
        except OSError as e:
            raise CliError(f"cannot read {script}: {e.strerror}") from None
    if text is not None:
        if not text.strip():
            raise CliError(f"{script} is empty")
        opts = merge_options(_parse_script_args(script_options(text)), opts)
        if not opts.get("job_name"):  # the script's file name, non-printables escaped
            name = os.path.basename(script) if script is not None else "cbatch"  # stdin: as sbatch
            opts["job_name"] = safe(name)
    spec = build_spec(opts, text, wrap)
    from crane.core.wire import Request

    cfg = load_config(config)
    # never retried: a submission is sent once (a lost answer is reported as such);
    # crane.core.messages.SubmitJob, without importing the message classes
    data = call(cfg, Request("SubmitJob", {"spec": spec, "repeat": repeat}), timeout=120)
    return [int(i) for i in data["job_ids"]]


MAX_REPEAT = 100_000

#: cbatch's own options for the fast path (the job options: crane.cli.job_options)
CBATCH_OPTIONS: SimpleOptions = [
    (("--wrap",), "wrap", True), (("--repeat",), "repeat", True),
    (("--json",), "as_json", False), (("-C", "--config"), "config", True),
]


def fast_parse(argv: list[str]) -> dict[str, Any] | None:
    """The command line parsed as make_command's click command parses it,
    without click (~20 ms of cbatch's start); None: click parses it."""
    parsed = fast_job_options(argv, CBATCH_OPTIONS, max_args=1)
    if parsed is None:
        return None
    o, args = parsed
    o["script"] = args[0] if args else None
    if o["script"] is not None and os.path.isdir(o["script"]):
        return None  # click's error message
    repeat = o["repeat"]
    if repeat is None:
        o["repeat"] = 1
    elif repeat.isascii() and repeat.isdigit() and 1 <= int(repeat) <= MAX_REPEAT:
        o["repeat"] = int(repeat)
    else:
        return None
    return o


def make_command() -> Any:
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_EPILOG)
    @click.argument("script", required=False, type=click.Path(dir_okay=False))
    @click.option("--wrap", help="run COMMAND as the job's script")
    @click.option("--repeat", type=click.IntRange(1, MAX_REPEAT), default=1, help="submit N identical jobs")
    @click.option("--json", "as_json", is_flag=True, help="print the job id as JSON")
    @click.option("-C", "--config", help="the config file (default: $CRANE_CONF, else /etc/crane/config.yaml)")
    @click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG, help="print the version and exit")
    def command(**o: Any) -> int:
        """Submit a batch job: SCRIPT (#CBATCH lines at its top take the same
        options), --wrap COMMAND, or a script on standard input (echo cmd | cbatch)."""
        return submit(**o)

    for opt in click_options():
        command = opt(command)
    return command


def main() -> None:
    o = fast_parse(sys.argv[1:])
    if o is not None:
        run(PROG, submit, **o)
    click_main(make_command(), PROG)
