"""A ZeroMQ DEALER in the standard library: ZMTP 3.1 with the NULL
mechanism (https://rfc.zeromq.org/spec/23/, 37/) over a Unix or TCP socket,
for commands that must start fast (pyzmq costs ~12 ms to import and starts
an I/O thread). The controller's ROUTER cannot tell it from libzmq's DEALER;
on the ipc socket the kernel's peer credentials still identify the caller.

Only what a command needs: one connection, whole messages (a list of
frames) in and out, PING answered with PONG (the controller's ROUTER sends
heartbeats to CLIs), every read bounded by a deadline."""

from __future__ import annotations

import select
import socket
import struct
import time

SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
GREETING = SIGNATURE + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
MORE, LONG, COMMAND = 0x01, 0x02, 0x04


class ZmtpError(OSError):
    """The peer broke the protocol, closed, or did not answer in time."""


def _command(name: bytes, body: bytes = b"") -> bytes:
    data = bytes([len(name)]) + name + body
    return _frame(data, COMMAND)


def _frame(data: bytes, flags: int) -> bytes:
    if len(data) > 255:
        return bytes([flags | LONG]) + struct.pack(">Q", len(data)) + data
    return bytes([flags, len(data)]) + data


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def parse_properties(body: bytes) -> dict[bytes, bytes]:
    """A READY command's metadata: name (1-byte length) and value (4-byte length) pairs."""
    out: dict[bytes, bytes] = {}
    i = 0
    while i < len(body):
        n = body[i]
        name = body[i + 1 : i + 1 + n]
        i += 1 + n
        if i + 4 > len(body):
            raise ZmtpError("truncated READY property")
        (v,) = struct.unpack(">I", body[i : i + 4])
        value = body[i + 4 : i + 4 + v]
        if len(value) != v or len(name) != n:
            raise ZmtpError("truncated READY property")
        out[name] = value
        i += 4 + v
    return out


class Dealer:
    """One ZMTP connection as a DEALER: ``send([frames])``, ``recv(deadline)``."""

    def __init__(self, address: str, deadline: float, max_message: int = 1 << 28) -> None:
        """``address``: ``ipc:///path`` or ``tcp://host:port``; ``deadline``
        (time.monotonic()) for the connection and the handshake."""
        self.max_message = max_message
        self.buf = bytearray()
        if address.startswith("ipc://"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: object = address[len("ipc://") :]
        elif address.startswith("tcp://"):
            host, _, port = address[len("tcp://") :].rpartition(":")
            family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target = (host.strip("[]"), int(port))
        else:
            raise ZmtpError(f"unsupported address {address}")
        try:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            self.sock.connect(target)  # type: ignore[arg-type]
            self.sock.setblocking(False)
            self._handshake(deadline)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # ---------------------------------------------------------------- wire

    def _send_all(self, data: bytes, deadline: float | None = None) -> None:
        """All of ``data``; TimeoutError at ``deadline`` (None: no limit)."""
        if deadline is None:
            self.sock.setblocking(True)
        else:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def _fill(self, n: int, deadline: float | None) -> None:
        """Read until ``n`` bytes are buffered; ZmtpError at the deadline or EOF."""
        while len(self.buf) < n:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("no answer in time")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                raise TimeoutError("no answer in time")
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except BlockingIOError:
                continue
            if not chunk:
                raise ZmtpError("connection closed by the controller")
            self.buf += chunk

    def _take(self, n: int, deadline: float | None) -> bytes:
        self._fill(n, deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _handshake(self, deadline: float) -> None:
        self._send_all(GREETING, deadline)
        peer = self._take(64, deadline)
        if peer[0] != 0xFF or peer[9] != 0x7F or peer[10] < 3:
            raise ZmtpError("not a ZMTP 3 peer")
        if peer[12:32].rstrip(b"\x00") != b"NULL":
            raise ZmtpError("the controller wants another security mechanism")
        self._send_all(_command(b"READY", _property(b"Socket-Type", b"DEALER")), deadline)
        flags, body = self._read_frame(deadline)
        if not flags & COMMAND or body[:6] != b"\x05READY":
            raise ZmtpError("no READY from the controller")
        kind = parse_properties(body[6:]).get(b"Socket-Type")
        if kind != b"ROUTER":
            raise ZmtpError(f"the controller's socket is {kind!r}, not ROUTER")

    def _read_frame(self, deadline: float | None) -> tuple[int, bytes]:
        head = self._take(1, deadline)[0]
        if head & LONG:
            (size,) = struct.unpack(">Q", self._take(8, deadline))
        else:
            size = self._take(1, deadline)[0]
        if size > self.max_message:
            raise ZmtpError(f"message of {size} bytes is over the limit")
        return head, self._take(size, deadline)

    # ---------------------------------------------------------------- messages

    def send(self, frames: list[bytes], deadline: float | None = None) -> None:
        out = b"".join(_frame(f, MORE if i < len(frames) - 1 else 0) for i, f in enumerate(frames))
        self._send_all(out, deadline)

    def recv(self, deadline: float | None) -> list[bytes]:
        """The next whole message; TimeoutError at ``deadline``. PINGs are
        answered on the way."""
        frames: list[bytes] = []
        while True:
            flags, body = self._read_frame(deadline)
            if flags & COMMAND:
                self._on_command(body)
                continue
            frames.append(body)
            if not flags & MORE:
                return frames

    def _on_command(self, body: bytes) -> None:
        n = body[0] if body else 0
        name = body[1 : 1 + n]
        if name == b"PING":  # TTL (2 bytes), then a context echoed in the PONG
            self._send_all(_command(b"PONG", body[1 + n + 2 :]))
        elif name == b"ERROR":
            raise ZmtpError(f"the controller refused the connection: {body[1 + n + 1 :].decode(errors='replace')}")


def pending(d: Dealer) -> bool:
    """Whether bytes are already buffered or readable (for callers that poll)."""
    if d.buf:
        return True
    ready, _, _ = select.select([d.sock], [], [], 0)
    return bool(ready)

