"""What every CLI shares: exit codes, the one-line error format, finding the
config, and one request to the controller. Imports are kept lazy so that a
CLI pays only for what it uses.

Terminal output: every line a CLI prints goes through :func:`crane.core.text.safe`
(tables, views, errors, dry-run lists) or is JSON from :func:`json_text`, so
no control character stored in a record or echoed in an error reaches a
terminal raw (tests/test_security_terminal.py checks the modules' print
calls).
"""

from __future__ import annotations

import sys

from crane.core.text import check_no_control, safe, safe_lines

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from crane.client_config import ClientConfig
    from crane.config import Config
    from crane.core import messages as m
    from crane.core.wire import Request

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_ARGS = 2
EXIT_UNREACHABLE = 3
EXIT_PARTIAL = 4
EXIT_AUTH = 5

#: The exit codes, as every command's --help (and man page) lists them.
EXIT_CODES_EPILOG = (
    "Exit codes: 0 success; 1 internal or config error; 2 bad arguments or request refused; "
    "3 controller unreachable (no answer within $CRANE_CONNECT_TIMEOUT seconds, default 2); "
    "4 partial failure (some jobs not acted on); 5 authentication failed or permission denied."
)


def help_option_names() -> list[str]:
    return ["-h", "--help"]


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ARGS) -> None:
        super().__init__(message)
        self.code = code


def die(prog: str, message: str, code: int) -> NoReturn:
    print(safe(f"{prog}: error: {message}"), file=sys.stderr)
    sys.exit(code)


def check_text(what: str, value: str | None) -> None:
    """Refuse a name, message or path holding a control character before
    sending it (exit 2); the controller refuses it too, this only gives the
    error without a round trip."""
    if value is not None:
        reason = check_no_control(what, value)
        if reason is not None:
            raise CliError(reason, EXIT_ARGS)


def load_config(path: str | None) -> ClientConfig:
    """What a command needs of the config (crane.client_config: read from
    the cache the config's owner leaves, else from the YAML)."""
    from crane.client_config import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        raise CliError(str(e), EXIT_INTERNAL) from None


def load_full_config(path: str | None) -> Config:
    """The whole config (the YAML parsed), for the commands that need more
    than crane.client_config keeps (``crane keygen``: the nodes)."""
    from crane.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        raise CliError(str(e), EXIT_INTERNAL) from None


def connect_timeout(cfg: Config | ClientConfig) -> float:
    """How long a command waits for the connection to the controller:
    ``$CRANE_CONNECT_TIMEOUT``, else the config's ``connect_timeout`` when
    the config has one, else 2 s (crane.oneshot.CONNECT_TIMEOUT)."""
    from crane.oneshot import CONNECT_TIMEOUT, connect_timeout_from_env

    configured = getattr(cfg, "connect_timeout", None)
    default = float(configured) if isinstance(configured, int | float) and configured > 0 else CONNECT_TIMEOUT
    return connect_timeout_from_env(default)


def _sent_note(msg: m.Message | Request) -> str:
    """What a request that went out without an answer may have done."""
    fields = msg.body if hasattr(msg, "body") else {"signal": getattr(msg, "signal", None),
                                                    "dry_run": getattr(msg, "dry_run", False)}  # fmt: skip
    signal, dry_run = fields.get("signal"), fields.get("dry_run")
    if msg.TYPE == "SubmitJob":
        return " (the submission was sent and may have been accepted: check cqueue before submitting again)"
    if msg.TYPE == "Cancel" and signal is not None:
        return " (the signal was sent and may have been delivered: sending it again may deliver it twice)"
    if msg.TYPE == "Cancel" and not dry_run:
        return " (the cancel was sent and may have been applied: check cqueue; cancelling again is harmless)"
    return ""


def call(cfg: Config | ClientConfig, msg: m.Message | Request, timeout: float = 30.0) -> dict[str, Any]:
    """One request; returns the Ok payload or raises CliError with the
    documented exit code. Only the connection has the short connect timeout:
    once the controller has answered it, ``timeout`` (or
    ``$CRANE_REPLY_TIMEOUT``) is for the reply. Never
    retried here: a request that went out without an answer is reported as
    such (it may have been applied), so no request is applied twice.
    ``msg``: a message, or a crane.core.wire.Request (no message classes to
    import: the commands' fast paths)."""
    from crane.core.wire import BadMessage, pack, reply_data
    from crane.oneshot import Unreachable, reply_timeout_from_env, request

    if hasattr(msg, "body"):
        frame = pack(msg.TYPE, msg.body, 1)
    else:
        from crane.core import messages as mm

        frame = mm.encode(msg, 1)
    try:
        t, body, _ = request(cfg.cli_address, frame, munge=cfg.auth_type == "munge",
                             connect_timeout=connect_timeout(cfg),
                             reply_timeout=reply_timeout_from_env(timeout))  # fmt: skip
        data, code, message = reply_data(t, body)
    except Unreachable as e:
        note = _sent_note(msg) if e.sent else ""
        raise CliError(f"cannot reach the controller at {cfg.cli_address}: {e}{note}", EXIT_UNREACHABLE) from None
    except BadMessage as e:
        raise CliError(str(e), EXIT_INTERNAL) from None
    except OSError as e:  # MungeError: no munged, bad key, ...
        raise CliError(f"authentication failed: {e}", EXIT_AUTH) from None
    if data is None:
        raise CliError(message, code if 1 <= code <= 5 else EXIT_INTERNAL)
    return data


REASK = 10.0  # seconds without an answer before a long wait is asked again


def call_until_answered(cfg: Config, msg: m.Message, reask: float = REASK) -> dict[str, Any]:
    """For requests that block until something happens (WaitJobs, WaitStep):
    a controller that restarted meanwhile has forgotten the request, not the
    jobs, so with no answer after ``reask`` seconds ask again (at most once a
    second while it is down). Other errors are raised."""
    import time

    while True:
        t0 = time.monotonic()
        try:
            return call(cfg, msg, timeout=reask)
        except CliError as e:
            if e.code != EXIT_UNREACHABLE:
                raise
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))  # retry pacing, not a wait for a condition


#: A fast parser's option table: (flags, dest, takes a value).
SimpleOptions = list[tuple[tuple[str, ...], str, bool]]


def fast_parse(argv: list[str], options: SimpleOptions, others: tuple[str, ...] = (),
               max_args: int = 0) -> tuple[dict[str, Any], list[str]] | None:  # fmt: skip
    """The common forms of a command line parsed without click (it costs a
    command ~35 ms to import): ``-x VALUE``, ``--long VALUE``,
    ``--long=VALUE``, flags, at most ``max_args`` arguments (``--``: only
    arguments follow). Options not
    given are None (flags False); ``others`` (options left to click) None.
    None for anything else (help, version, ``-xVALUE``, combined flags,
    unknown options, too many arguments): click then parses the line and
    gives every error message. Each command's table must parse as its click
    command does (tests/test_cli_fast_paths.py compares the two)."""
    table = {flag: (dest, takes) for flags, dest, takes in options for flag in flags}
    o: dict[str, Any] = {dest: (None if takes else False) for _, dest, takes in options}
    o.update(dict.fromkeys(others))
    args: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":  # what follows is arguments, as for click
            if len(args) + len(argv) - i > max_args:
                return None
            args += argv[i:]
            break
        if tok.startswith("-") and len(tok) > 1:
            name, eq, value = tok.partition("=")
            spec = table.get(name if name.startswith("--") else tok)
            if spec is None or (eq and not spec[1]):
                return None
            dest, takes = spec
            if takes:
                if not eq:
                    if i >= len(argv):
                        return None
                    value = argv[i]
                    i += 1
                o[dest] = value
            else:
                o[dest] = True
        elif len(args) < max_args:
            args.append(tok)
        else:
            return None
    return o, args


def run(prog: str, fn: Any, *args: Any, **kw: Any) -> NoReturn:
    """Run a CLI body; every failure becomes one line on stderr and an exit code."""
    try:
        code = fn(*args, **kw)
    except CliError as e:
        die(prog, str(e), e.code)
    except KeyboardInterrupt:
        die(prog, "interrupted", EXIT_INTERNAL)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    sys.exit(code or 0)


def json_text(obj: Any) -> str:
    """JSON with every character outside printable ASCII escaped (``\\u001b``,
    ``\\u007f``, ``\\u009b``, ``\\u202e``...): ``ensure_ascii`` does exactly
    that, and ``json.loads`` gives the original strings back."""
    import json

    return json.dumps(obj, sort_keys=False, ensure_ascii=True)


def print_json(obj: Any) -> None:
    print(json_text(obj))


def with_exit_codes(command: Any) -> Any:
    """``command`` (and its subcommands) with the exit codes as the epilog of
    its --help, when it has no epilog of its own."""
    if not getattr(command, "epilog", None):
        command.epilog = EXIT_CODES_EPILOG
    for sub in getattr(command, "commands", {}).values():
        with_exit_codes(sub)
    return command


def click_main(command: Any, prog: str) -> NoReturn:
    """Run a click command with our error format for usage errors (exit 2)."""
    import click

    with_exit_codes(command)
    try:
        rv = command.main(prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        print(safe_lines(e.format_message() if hasattr(e, "format_message") else str(e)))
        sys.exit(EXIT_ARGS)
    except click.UsageError as e:
        die(prog, e.format_message(), EXIT_ARGS)
    except click.exceptions.Abort:
        die(prog, "aborted", EXIT_INTERNAL)
    except CliError as e:
        die(prog, str(e), e.code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    sys.exit(rv or 0)
