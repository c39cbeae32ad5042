"""ZeroMQ at the edges: an asyncio drain loop for ROUTER/DEALER sockets, and a
small blocking client for the CLIs.

The server side does not use zmq.asyncio futures: it registers the socket's FD
with the event loop and, when woken, takes every message already queued
without awaiting (the drain pattern), up to a batch, then yields to the loop.
ROUTER sends never block (unroutable or over-HWM messages are dropped by ZeroMQ).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from crane.client import MAX_REPLY, Client, Unreachable  # noqa: F401  (re-exported)
from crane.core import messages as m

log = logging.getLogger("crane.transport")
BATCH = 256
CLI_HWM = 1000  # per CLI connection: 1000 x MAX_FRAME at worst, a few MB in practice
# Replies queued per CLI connection. A client that sends many queries and reads
# no answer makes the controller hold up to this many replies for it; lower
# values drop answers of legitimate pipelining clients under load (the fuzzer's
# own clients lost answers at 128), so it stays at CLI_HWM. Known limit: see
# SECURITY.md.
CLI_REPLY_HWM = CLI_HWM
# ZMTP heartbeats on CLI connections. Besides finding dead peers, they close the
# connections a ROUTER (without handover) parks and never reads: a peer with a
# fixed routing id whose connection was dropped (e.g. for a frame over MAXMSGSIZE)
# reconnects while its old pipe still holds unread frames; the new connection is
# refused silently and kept open, even after the peer closes it (fd and buffers
# leak, libzmq 4.3). The heartbeat timeout closes it; the peer reconnects.
CLI_HEARTBEAT_MS = 2000
CLI_HEARTBEAT_TIMEOUT_MS = 10_000
MAX_FRAMES = 4
# A liveness probe for a client with a request pending (a WaitJobs waiter): an
# Ok under a request id no client uses (Client ignores replies to other ids).
# On a ROUTER with ROUTER_MANDATORY, sending it fails once the peer is gone.
PROBE_RID = -2
PROBE = m.encode(m.Ok({"waiting": True}), PROBE_RID)


@dataclass(slots=True)
class Peer:
    """Who sent a frame: the socket identity, and for ipc connections the
    kernel-verified uid/gid/pid (from libzmq's Peer-Address property)."""

    identity: bytes
    user_id: str | None = None  # ZAP User-Id (CurveZMQ: the client's z85 public key)
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    cred: bytes | None = None  # a MUNGE credential frame sent before the payload
    raw: bytes = b""  # the payload as received (what the credential signs)


def peer_credentials(frame: zmq.Frame) -> tuple[int | None, int | None, int | None]:
    try:
        addr = frame.get("Peer-Address")
    except (zmq.ZMQError, KeyError):
        return None, None, None
    parts = str(addr).split(":")
    # ipc with SO_PEERCRED: "<something>:<uid>:<gid>:<pid>"
    if len(parts) >= 4:
        try:
            return int(parts[-3]), int(parts[-2]), int(parts[-1])
        except ValueError:
            pass
    return None, None, None


Handler = Callable[[Peer, m.Message, int], None]


class Endpoint:
    """One socket on the event loop. ``router``: frames are [identity, payload];
    otherwise (DEALER) [payload]. ``on_message`` is called synchronously for each
    decoded message; ``on_bad`` for each malformed frame (it may reply)."""

    def __init__(
        self,
        sock: zmq.Socket,
        on_message: Handler,
        on_bad: Callable[[Peer, str, int], None] | None = None,
        *,
        router: bool,
        credentials: bool = False,
        user_ids: bool = False,
        admit: Callable[[Peer], bool] | None = None,
        cred_frame: bool = False,
    ) -> None:
        self.sock = sock
        self.router = router
        self.credentials = credentials
        self.user_ids = user_ids
        self.admit = admit  # called before decoding: False drops the frame (rate limits)
        self.cred_frame = cred_frame  # frames are [identity, credential, payload]
        self.on_message = on_message
        self.on_bad = on_bad
        self.received = 0
        self.dropped = 0
        self.sent = 0
        import asyncio  # not at module level: CLIs import crane.client only

        self._loop = asyncio.get_running_loop()
        self._pending = False
        self._closed = False
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._wake)
        self._wake()

    def _wake(self) -> None:
        if not self._pending and not self._closed:
            self._pending = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._pending = False
        if self._closed:
            return
        sock = self.sock
        for _ in range(BATCH):
            try:
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as e:
                log.warning("recv failed: %s", e)
                return
            self._one(parts)
        self._wake()  # more may be queued: continue on the next loop turn

    def _one(self, parts: list[zmq.Frame]) -> None:
        self.received += 1
        cred = None
        if self.router:
            want = 3 if self.cred_frame else 2
            if len(parts) != want:
                self.dropped += 1
                if len(parts) >= 1 and len(parts) <= MAX_FRAMES and self.on_bad:
                    self.on_bad(Peer(parts[0].bytes), f"expected {want - 1} frames, got {len(parts) - 1}", 0)
                return
            ident, payload = parts[0].bytes, parts[-1]
            if self.cred_frame:
                cred = parts[1].bytes
        else:
            if len(parts) != 1:
                self.dropped += 1
                return
            ident, payload = b"", parts[0]
        peer = Peer(ident)
        if cred is not None:
            peer.cred, peer.raw = cred, payload.bytes
        if self.credentials:
            peer.uid, peer.gid, peer.pid = peer_credentials(payload)
        if self.user_ids:
            try:
                peer.user_id = payload.get("User-Id")
            except (zmq.ZMQError, KeyError):
                peer.user_id = None
        if self.admit is not None and not self.admit(peer):
            self.dropped += 1
            return
        try:
            msg, rid = m.decode(payload.bytes)
        except m.BadMessage as e:
            self.dropped += 1
            if self.on_bad:
                self.on_bad(peer, str(e), 0)
            return
        try:
            self.on_message(peer, msg, rid)
        except Exception:  # a handler bug must never take the daemon down
            log.exception("handler failed for %s", msg.TYPE)
            if self.on_bad:
                self.on_bad(peer, "internal error", rid)

    def send(self, identity: bytes, msg: m.Message, rid: int = 0) -> bool:
        data = m.encode(msg, rid)
        try:
            if self.router:
                self.sock.send_multipart([identity, data], zmq.NOBLOCK)
            else:
                self.sock.send(data, zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        self.sent += 1
        # A send can consume the FD's edge for pending input: look again.
        self._wake()
        return True

    def reachable(self, identity: bytes) -> bool:
        """False once ``identity``'s connection is gone (needs ROUTER_MANDATORY:
        an unroutable send raises instead of vanishing)."""
        if self._closed:
            return False
        try:
            self.sock.send_multipart([identity, PROBE], zmq.NOBLOCK)
        except zmq.Again:  # connected, its queue full (a crun reading live output slowly)
            return True
        except zmq.ZMQError:
            return False
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._loop.remove_reader(self.sock.getsockopt(zmq.FD))
            except (zmq.ZMQError, ValueError):
                pass
            self.sock.close(linger=0)


class Replier:
    """Answers one request: ``replier(msg)`` sends the reply; ``alive()``
    tells whether the client can still receive it."""

    __slots__ = ("endpoint", "identity", "rid")

    def __init__(self, endpoint: Endpoint, identity: bytes, rid: int) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.rid = rid

    def __call__(self, answer: m.Message) -> None:
        self.endpoint.send(self.identity, answer, self.rid)

    def alive(self) -> bool:
        return self.endpoint.reachable(self.identity)


def bind_router(ctx: zmq.Context, address: str, mode: int = 0o666,
                curve: tuple[bytes, bytes] | None = None, hwm: int = 100_000,
                heartbeat_ms: int = 0, send_hwm: int | None = None) -> zmq.Socket:  # fmt: skip
    """``hwm``: messages queued per connection each way. Past it, ZeroMQ stops
    reading that connection (back-pressure on its sender) and drops replies to
    a peer that does not read them: this bounds what one client can make the
    controller buffer (a CLI has one request in flight; see CLI_HWM)."""
    sock = ctx.socket(zmq.ROUTER)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey = curve
        sock.curve_server = True
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, m.MAX_FRAME + 1024)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.SNDHWM, hwm if send_hwm is None else send_hwm)
    if heartbeat_ms:
        sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, CLI_HEARTBEAT_TIMEOUT_MS)
    if address.startswith("ipc://"):
        path = address[len("ipc://") :]
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):  # traversable by all (the daemons' umask is 077)
            os.makedirs(parent, exist_ok=True)
            os.chmod(parent, 0o711)
        if os.path.lexists(path):
            os.unlink(path)
    sock.bind(address)
    if address.startswith("ipc://"):
        os.chmod(address[len("ipc://") :], mode)
    return sock


class RateLimiter:
    """A token bucket per key (the caller's uid): a flood from one user is
    dropped before it is decoded, so it cannot starve the others."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[object, list[float]] = {}
        self.dropped: dict[object, int] = {}

    def allow(self, key: object, now: float) -> bool:
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) > 10_000:
                self.buckets.clear()
            b = self.buckets[key] = [self.burst, now]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        self.dropped[key] = self.dropped.get(key, 0) + 1
        return False
