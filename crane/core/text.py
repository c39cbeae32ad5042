"""Text that is safe to print on a terminal (pure).

Job names, messages, paths, user and node names, error texts that echo a
request: anything a user influenced may hold escape sequences (``ESC [ 2 J``,
OSC 52 clipboard writes, a bidi override that reorders a line, a carriage
return that overwrites one). Every CLI prints such text only through
:func:`safe` (or JSON, which escapes by itself), so a record holding one,
whatever its origin, reaches another user's terminal as visible escapes.

The escaped form is Python's: ``\\n`` ``\\t`` ``\\r``, ``\\xNN`` below 0x100,
``\\uNNNN``, ``\\UNNNNNNNN``. A backslash is printable and is left as it is:
escaping it too would make the output unambiguous (a name typed as the four
characters ``\\x1b`` looks like an escaped ESC here) but would also make
escaping twice visible, and text is escaped in more than one layer (the
controller escapes the account tables and errors it renders, the CLIs escape
every line they print). So :func:`safe` is idempotent, and a look-alike is
only a look-alike: every character that reaches the terminal is printable.
The exact value is always available with ``--json``.
"""

from __future__ import annotations

_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(c: str) -> str:
    short = _SHORT.get(c)
    if short is not None:
        return short
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def safe(s: str) -> str:
    """``s`` with every character that is not printable (``str.isprintable``:
    C0 controls, DEL, C1 controls, format characters such as bidi overrides
    and zero-width spaces, separators other than the space, surrogates,
    unassigned code points) written as a visible escape. Printable text,
    non-ASCII letters included, is unchanged, so ``safe(safe(s)) ==
    safe(s)``."""
    if s.isprintable():
        return s  # the common case, without a loop
    return "".join(c if c.isprintable() else _escape(c) for c in s)


def safe_lines(text: str) -> str:
    """A multi-line text whose line breaks are its structure (a table
    rendered elsewhere, a help text): each line made :func:`safe`, the
    ``\\n`` between them kept."""
    return "\n".join(safe(line) for line in text.split("\n"))


_BIDI_AND_BREAKS = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def control_chars(s: str) -> list[str]:
    """The control characters in ``s``, each once, in order: C0 (newline and
    tab included), DEL, C1, bidi embeddings/overrides/isolates and the line
    and paragraph separators; what a name, message or path must not contain
    (the controller's rule, crane.core.untrusted, is the same set)."""
    seen: list[str] = []
    for c in s:
        if (c < "\x20" or "\x7f" <= c <= "\x9f" or c in _BIDI_AND_BREAKS) and c not in seen:
            seen.append(c)
    return seen


def check_no_control(what: str, value: str) -> str | None:
    """None if ``value`` has no control character, else the one-line reason
    (``--job-name contains control characters (U+001B, U+000A): not
    allowed``)."""
    bad = control_chars(value)
    if not bad:
        return None
    return f"{what} contains control characters ({', '.join(f'U+{ord(c):04X}' for c in bad)}): not allowed"
