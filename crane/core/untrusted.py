"""Rules for text a user sends the controller (pure).

Whatever a request carries into a stored record, a job's files or another
user's terminal is checked here first: job and account names, cancel and
control messages, paths, the environment and the command line. Each check
returns ``None`` or one error line that names the field ("job name contains
a control character"); the controller refuses the whole request on the first
error, so a refused request changes nothing.

A *control character* is a C0 control (newline, tab and ESC included), DEL,
a C1 control (U+0080-U+009F), a bidi embedding/override/isolate
(U+202A-U+202E, U+2066-U+2069) or a line/paragraph separator (U+2028,
U+2029): characters that move the cursor, start an escape sequence or
reorder what a terminal shows. Other non-ASCII text is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

NAME_MAX = 256  # job, partition, account, qos and node names (characters)
TEXT_MAX = 1024  # comments and messages (characters)
PATH_MAX = 4096  # bytes, as Linux's PATH_MAX
ENV_MAX = 1 << 20  # bytes of NAME=VALUE\0 over the whole environment
ARGV_MAX = 1 << 20  # bytes of ARG\0 over the whole command line
LIST_MAX = 100_000  # items in one list of a filter

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

SPEC_NAMES = {"name": "job name", "partition": "partition", "account": "account", "qos": "qos"}
SPEC_PATHS = {"cwd": "working directory", "stdout": "output path", "stderr": "error path"}


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_text(what: str, value: Any, limit: int = TEXT_MAX) -> str | None:
    """A one-line text of at most ``limit`` characters, without controls."""
    if not isinstance(value, str):
        return f"{what} must be a string"
    if has_control(value):
        return f"{what} contains a control character"
    if len(value) > limit:
        return f"{what} is longer than {limit} characters"
    return None


def check_name(what: str, value: Any) -> str | None:
    return check_text(what, value, NAME_MAX)


def check_path(what: str, value: Any) -> str | None:
    """An absolute path without controls, at most PATH_MAX bytes. Relative
    paths are refused: they would resolve against a daemon's directory, not
    the submitter's (the CLIs make paths absolute before sending)."""
    if not isinstance(value, str):
        return f"{what} must be a string"
    if has_control(value):
        return f"{what} contains a control character"
    if _bytes(value) > PATH_MAX:
        return f"{what} is longer than {PATH_MAX} bytes"
    if not value.startswith("/"):
        return f"{what} must be an absolute path"
    return None


def check_env(env: Any) -> str | None:
    """Names are non-empty, without ``=`` or controls; values hold no NUL
    (they may hold newlines: exported shell functions do); the whole
    environment is at most ENV_MAX bytes."""
    if not isinstance(env, Mapping):
        return "env must map strings to strings"
    size = 0
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            return "env must map strings to strings"
        if not k or "=" in k or has_control(k):
            return "environment variable name is empty or contains '=' or a control character"
        if "\0" in v:
            return "environment variable value contains a NUL character"
        size += _bytes(k) + _bytes(v) + 2
        if size > ENV_MAX:
            return f"environment is larger than {ENV_MAX} bytes"
    return None


def check_argv(argv: Any) -> str | None:
    """A list of strings without NUL, at most ARGV_MAX bytes in all."""
    if not isinstance(argv, list) or any(not isinstance(a, str) for a in argv):
        return "argv must be a list of strings"
    size = 0
    for a in argv:
        if "\0" in a:
            return "command contains a NUL character"
        size += _bytes(a) + 1
        if size > ARGV_MAX:
            return f"command is longer than {ARGV_MAX} bytes"
    return None


def check_spec(spec: Mapping[str, Any]) -> str | None:
    """The user-controlled text of a job spec (types are checked elsewhere;
    absent or None fields are not checked)."""
    for key, what in SPEC_NAMES.items():
        if spec.get(key) is not None:
            err = check_name(what, spec[key])
            if err:
                return err
    for key, what in SPEC_PATHS.items():
        if spec.get(key) is not None:
            err = check_path(what, spec[key])
            if err:
                return err
    for n in spec.get("nodelist") or []:
        err = check_name("node name", n)
        if err:
            return err
    if spec.get("argv") is not None:
        err = check_argv(spec["argv"])
        if err:
            return err
    if spec.get("env") is not None:
        return check_env(spec["env"])
    return None


def check_strings(what: str, value: Any, limit: int = PATH_MAX) -> str | None:
    """Every string anywhere in ``value`` (map keys included): no controls,
    at most ``limit`` characters. For free-form request parts (cacctmgr
    operations, control arguments) that end up stored and shown."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            err = check_text(what, v, limit)
            if err:
                return err
        elif isinstance(v, Mapping):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return None


def bound_filters(filters: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Filters with their lists (``jobs``, ``states``, ``nodes``) as frozensets
    of checked items, so that matching a job is one lookup, not a scan of a
    list as long as the request allows; lists of more than LIST_MAX items or
    of the wrong item type are refused. Other filters pass unchanged (their
    shape is checked by ``crane.core.selection.check_filters``)."""
    out = dict(filters)
    for key, typ in (("jobs", int), ("states", str), ("nodes", str)):
        v = filters.get(key)
        if not isinstance(v, list):
            continue
        if len(v) > LIST_MAX:
            return out, f"filter {key} lists more than {LIST_MAX} items"
        if any(not isinstance(x, typ) or isinstance(x, bool) for x in v):
            return out, f"filter {key} must be a list of {'integers' if typ is int else 'strings'}"
        out[key] = frozenset(v)
    return out, None
