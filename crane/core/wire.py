"""The frame every message travels in, without the message classes.

A frame is a msgpack map ``{"v": PROTOCOL_VERSION, "t": TYPE, "rid": INT,
"b": {fields}}``. crane.core.messages checks a body against its class; a
command that sends one request and reads one reply (crane.oneshot) needs
only this module and msgpack, so it starts without dataclasses and typing
(about 20 ms of a command's start).
"""

from __future__ import annotations

import gc

import msgpack

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1  # crane.PROTOCOL_VERSION is the same number

MAX_FRAME = 4 * 1024 * 1024  # bytes; larger frames are refused before decoding
MAX_DEPTH = 16


class BadMessage(ValueError):
    """A frame that is not a valid message. The text says why, in one line."""


class Request:
    """A request built without its message class: ``TYPE`` (the class name
    on the wire) and ``body`` (its fields; those left out take the class's
    defaults at the controller, which checks every field)."""

    __slots__ = ("TYPE", "body")

    def __init__(self, type_name: str, body: dict[str, Any]) -> None:
        self.TYPE = type_name
        self.body = body


def pack(type_name: str, body: dict[str, Any], rid: int = 0) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": type_name, "rid": rid, "b": body})


def unpack(frame: bytes, limit: int = MAX_FRAME) -> tuple[str, dict[Any, Any], int]:
    """``(type name, body, request id)`` of a frame, or BadMessage. The body's
    fields are not checked here (crane.core.messages does that)."""
    if len(frame) > limit:
        raise BadMessage(f"frame too large ({len(frame)} bytes)")
    collecting = gc.isenabled()  # a large frame is many objects: no collections while they are made
    gc.disable()  # (a 100,000-job reply: 104 ms with, 32 ms without)
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=False, max_bin_len=limit)
    except Exception as e:  # msgpack raises many types for garbage
        raise BadMessage(f"not msgpack: {type(e).__name__}") from None
    finally:
        if collecting:
            gc.enable()
    if not isinstance(raw, dict):
        raise BadMessage("frame is not a map")
    v = raw.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:  # True == 1.0 == 1 in Python
        raise BadMessage(f"unsupported protocol version {str(v)[:40]!r}")
    rid = raw.get("rid", 0)
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise BadMessage("request id is not an integer")
    t = raw.get("t")
    if not isinstance(t, str):
        raise BadMessage(f"unknown message type {str(t)[:40]!r}")
    body = raw.get("b")
    if not isinstance(body, dict):
        raise BadMessage("message body is not a map")
    return t, body, rid


def reply_data(type_name: str, body: dict[Any, Any]) -> tuple[dict[str, Any] | None, int, str]:
    """A reply to a command: ``(data, 0, "")`` for Ok, ``(None, code,
    message)`` for Error; BadMessage for anything else or a malformed body."""
    if type_name == "Ok":
        data = body.get("data", {})
        if not isinstance(data, dict) or set(body) - {"data"}:
            raise BadMessage("malformed Ok reply")
        return data, 0, ""
    if type_name == "Error":
        code, message = body.get("code"), body.get("message")
        if type(code) is not int or not isinstance(message, str) or set(body) - {"code", "message"}:
            raise BadMessage("malformed Error reply")
        return None, code, message
    raise BadMessage(f"unexpected reply {type_name[:40]}")
