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

import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from crane.core.text import check_no_control, safe, safe_lines

if TYPE_CHECKING:
    from crane.config import Config
    from crane.core import messages as m

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


def load_config(path: str | None) -> Config:
    from crane.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        raise CliError(str(e), EXIT_INTERNAL) from None


def connect_timeout(cfg: Config) -> float:
    """How long a command waits for the connection to the controller:
    ``$CRANE_CONNECT_TIMEOUT``, else the config's ``connect_timeout`` when
    the config has one, else 2 s (crane.client.CONNECT_TIMEOUT)."""
    from crane.client import CONNECT_TIMEOUT, connect_timeout_from_env

    configured = getattr(cfg, "connect_timeout", None)
    default = float(configured) if isinstance(configured, int | float) and configured > 0 else CONNECT_TIMEOUT
    return connect_timeout_from_env(default)


def call(cfg: Config, msg: m.Message, timeout: float = 30.0) -> dict[str, Any]:
    """One request; returns the Ok payload or raises CliError with the
    documented exit code. Only the connection has the short connect timeout:
    once the controller has answered it, ``timeout`` (or
    ``$CRANE_REPLY_TIMEOUT``) is for the reply. Never
    retried here: a request that went out without an answer is reported as
    such (it may have been applied), so no request is applied twice."""
    from crane.client import Client, Unreachable, reply_timeout_from_env
    from crane.core import messages as mm

    client = None
    timeout = reply_timeout_from_env(timeout)
    try:
        client = Client(cfg.cli_address, timeout, munge=cfg.auth_type == "munge",
                        connect_timeout=connect_timeout(cfg))  # fmt: skip
        reply = client.request(msg)
    except Unreachable as e:
        note = ""
        if e.sent and isinstance(msg, mm.SubmitJob):
            note = " (the submission was sent and may have been accepted: check cqueue before submitting again)"
        elif e.sent and isinstance(msg, mm.Cancel) and msg.signal is not None:
            note = " (the signal was sent and may have been delivered: sending it again may deliver it twice)"
        elif e.sent and isinstance(msg, mm.Cancel) and not msg.dry_run:
            note = " (the cancel was sent and may have been applied: check cqueue; cancelling again is harmless)"
        raise CliError(f"cannot reach the controller at {cfg.cli_address}: {e}{note}", EXIT_UNREACHABLE) from None
    except OSError as e:  # MungeError: no munged, bad key, ...
        raise CliError(f"authentication failed: {e}", EXIT_AUTH) from None
    finally:
        if client is not None:
            client.close()
    if isinstance(reply, mm.Error):
        raise CliError(reply.message, reply.code if 1 <= reply.code <= 5 else EXIT_INTERNAL)
    if not isinstance(reply, mm.Ok):
        raise CliError(f"unexpected reply {reply.TYPE}", EXIT_INTERNAL)
    return reply.data


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
