"""MUNGE credentials through a thin ctypes binding to libmunge (Debian's
``libmunge2``). A CLI on another host sends, with each request, a credential
whose payload is the SHA-256 of the request frame; the controller decodes it
(off the event loop), checks the digest, and takes the uid from MUNGE. munged
refuses replayed credentials itself (EMUNGE_CRED_REPLAYED)."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from dataclasses import dataclass

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_libc.free.argtypes = [ctypes.c_void_p]


class MungeError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("munge") or "libmunge.so.2"
        try:
            _lib = ctypes.CDLL(name)
        except OSError as e:
            raise MungeError(-1, f"libmunge is not installed ({e})") from None
        _lib.munge_encode.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_int]  # fmt: skip
        _lib.munge_encode.restype = ctypes.c_int
        _lib.munge_decode.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                      ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint32),
                                      ctypes.POINTER(ctypes.c_uint32)]  # fmt: skip
        _lib.munge_decode.restype = ctypes.c_int
        _lib.munge_strerror.argtypes = [ctypes.c_int]
        _lib.munge_strerror.restype = ctypes.c_char_p
    return _lib


def _error(code: int) -> MungeError:
    return MungeError(code, lib().munge_strerror(code).decode(errors="replace"))


def encode(payload: bytes) -> bytes:
    cred = ctypes.c_char_p()
    buf = ctypes.create_string_buffer(payload, len(payload))
    rc = lib().munge_encode(ctypes.byref(cred), None, buf, len(payload))
    if rc != 0:
        raise _error(rc)
    try:
        return ctypes.string_at(cred)
    finally:
        _libc.free(ctypes.cast(cred, ctypes.c_void_p))


@dataclass(slots=True)
class Decoded:
    uid: int
    gid: int
    payload: bytes


def decode(cred: bytes) -> Decoded:
    buf = ctypes.c_void_p()
    n = ctypes.c_int()
    uid = ctypes.c_uint32()
    gid = ctypes.c_uint32()
    rc = lib().munge_decode(cred, None, ctypes.byref(buf), ctypes.byref(n), ctypes.byref(uid), ctypes.byref(gid))
    try:
        if rc != 0:
            raise _error(rc)
        data = ctypes.string_at(buf, n.value) if buf.value else b""
    finally:
        if buf.value:
            _libc.free(buf)
    return Decoded(uid.value, gid.value, data)


def credential_for(frame: bytes) -> bytes:
    return encode(hashlib.sha256(frame).digest())


def verify(cred: bytes, frame: bytes) -> int:
    """The uid MUNGE vouches for, if ``cred`` is valid, fresh and made for
    exactly this frame; else MungeError."""
    d = decode(cred)
    if d.payload != hashlib.sha256(frame).digest():
        raise MungeError(-2, "credential does not match the request")
    return d.uid
