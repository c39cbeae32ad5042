"""crane.core.text: escaping for terminals (pure, no cluster)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from crane.cli.common import json_text
from crane.core.text import check_no_control, control_chars, safe, safe_lines
from crane.core.untrusted import has_control


def test_controls_become_visible_escapes() -> None:
    assert safe("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"
    assert safe("\x7f\x9b\x00") == "\\x7f\\x9b\\x00"
    assert safe("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert safe("\u202eevil\u200b") == "\\u202eevil\\u200b"  # bidi override, zero-width space
    assert safe("\U000e0041") == "\\U000e0041"  # tag character (format, not printable)
    assert safe("\udcff") == "\\udcff"  # a surrogate-escaped byte of a non-UTF-8 file name


def test_printable_text_is_unchanged() -> None:
    for s in ("", "job_1 sleep 60", "é中文 Ünïcødé", "/home/alice/out %j.txt", "😀"):
        assert safe(s) == s


def test_backslash_is_kept_and_escaping_twice_changes_nothing() -> None:
    # text escaped by the controller (an account table) and again by the CLI prints once escaped
    assert safe("C:\\dir") == "C:\\dir"
    once = safe("a\x1bb\u202e")
    assert once == "a\\x1bb\\u202e" and safe(once) == once


def test_safe_lines_keeps_structure() -> None:
    assert safe_lines("NAME\nev\x1bil\n") == "NAME\nev\\x1bil\n"


def test_control_chars_and_check() -> None:
    assert control_chars("ok name") == []
    assert control_chars("a\nb\x1b\x1b\x85") == ["\n", "\x1b", "\x85"]
    assert control_chars("\u202ex\u2028") == ["\u202e", "\u2028"]  # bidi override, line separator
    assert control_chars("\u200b é") == []  # other format characters are escaped on output, not refused
    assert check_no_control("--job-name", "fine") is None
    msg = check_no_control("--job-name", "x\x1b[2J\n")
    assert msg == "--job-name contains control characters (U+001B, U+000A): not allowed"


def test_json_text_escapes_every_control_and_round_trips() -> None:
    obj = {"name": "a\x1b\x7f\x9b\n\u202e"}
    text = json_text(obj)
    assert all(0x20 <= ord(c) < 0x7F for c in text)
    assert json.loads(text) == obj


@given(st.text())
def test_output_is_printable_and_idempotent(s: str) -> None:
    out = safe(s)
    assert out.isprintable()
    assert safe(out) == out
    assert control_chars(out) == [] and not has_control(out)  # what safe() makes, the controller accepts
    if s.isprintable():
        assert out == s


@given(st.text())
def test_printable_characters_survive_in_order(s: str) -> None:
    kept = "".join(c for c in s if c.isprintable())
    it = iter(safe(s))
    assert all(c in it for c in kept)


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_output_never_holds_a_terminal_control(s: str) -> None:
    out = safe(s)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)


@given(st.text())
def test_same_rule_as_the_controller(s: str) -> None:
    assert bool(control_chars(s)) == has_control(s)
