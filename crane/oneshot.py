"""One request, one reply: what most commands do, over crane.zmtp (the
standard library's sockets speaking ZMTP 3.1) rather than pyzmq, which costs
a command ~12 ms to import and starts an I/O thread. The controller's ROUTER
cannot tell the difference; on the ipc socket the kernel's peer credentials
still identify the caller, over TCP a MUNGE credential travels with the
request as with crane.client.

The connection has its own deadline (``$CRANE_CONNECT_TIMEOUT``): a refused
or unanswered connection is tried again until then, as libzmq does, so a
controller restarting within it is reached. A request that went out is never
sent again: its reply has one deadline, and a missing reply says the request
may have been applied."""

from __future__ import annotations

import os
import time

from crane.core.wire import BadMessage, unpack
from crane.zmtp import Dealer, ZmtpError

MAX_REPLY = 256 * 1024 * 1024  # a CLI accepts replies this large (requests: wire.MAX_FRAME)

#: The default of the connect timeout the CLIs use (seconds): how long a
#: command waits for the controller to answer the connection (the ZMTP
#: handshake, done by the controller's I/O thread however busy it is) before
#: it says the controller cannot be reached. ``$CRANE_CONNECT_TIMEOUT`` sets it.
CONNECT_TIMEOUT = 2.0
RETRY_INTERVAL = 0.1  # seconds between connection attempts (libzmq's reconnect interval)


class Unreachable(Exception):
    """The controller did not answer. ``sent``: the request had been handed to
    the controller (it may have been applied) when the answer did not come."""

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


def seconds_from_env(name: str, default: float) -> float:
    """``$name`` as seconds (a number, 0 < s < 1e6), else ``default``."""
    text = os.environ.get(name, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            return default
        if 0 < value < 1e6:
            return value
    return default


def connect_timeout_from_env(default: float = CONNECT_TIMEOUT) -> float:
    """``$CRANE_CONNECT_TIMEOUT`` (seconds, > 0), else ``default``."""
    return seconds_from_env("CRANE_CONNECT_TIMEOUT", default)


def reply_timeout_from_env(default: float) -> float:
    """``$CRANE_REPLY_TIMEOUT`` (seconds, > 0): how long a command waits for
    the answer to a request already sent, else ``default``. A request whose
    answer does not come is never sent again by the client (see
    crane.cli.common.call): it may have been applied."""
    return seconds_from_env("CRANE_REPLY_TIMEOUT", default)


def connect(address: str, limit: float) -> Dealer:
    """A connection whose handshake completed within ``limit`` seconds."""
    if address.startswith("ipc://") and not os.path.exists(address[6:]):
        raise Unreachable(f"{address[6:]} does not exist (is cranectld running?)")
    deadline = time.monotonic() + limit
    why = "no answer"
    while True:
        try:
            return Dealer(address, deadline)
        except (ConnectionRefusedError, FileNotFoundError):
            why = "connection refused, no answer"
        except TimeoutError:
            raise Unreachable(f"{why} within {limit:g} s") from None
        except ZmtpError:
            why = "connection refused by the controller (handshake failed), no answer"
        except OSError as e:  # unreachable network, no route, ...
            why = f"{e.strerror or e}, no answer"
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unreachable(f"{why} within {limit:g} s")
        time.sleep(min(RETRY_INTERVAL, left))  # retry pacing, as libzmq's reconnect interval


def request(address: str, frame: bytes, *, munge: bool, connect_timeout: float,
            reply_timeout: float) -> tuple[str, dict, int]:  # type: ignore[type-arg]  # fmt: skip
    """Send one request frame (request id 1) and return its reply as
    ``(type, body, rid)``; Unreachable when the controller does not answer."""
    dealer = connect(address, connect_timeout)
    try:
        parts = [frame]
        if munge:
            from crane import munge as munge_lib

            parts = [munge_lib.credential_for(frame), frame]
        deadline = time.monotonic() + reply_timeout
        try:
            dealer.send(parts, deadline)
        except TimeoutError:
            raise Unreachable(f"no reply within {reply_timeout:g} s", sent=True) from None
        except OSError as e:
            raise Unreachable(f"connection lost while sending ({e.strerror or e})", sent=True) from None
        while True:
            try:
                frames = dealer.recv(deadline)
            except TimeoutError:
                raise Unreachable(f"no reply within {reply_timeout:g} s", sent=True) from None
            except OSError as e:  # ZmtpError included: closed, refused, over the limit
                raise Unreachable(f"no reply: {e}", sent=True) from None
            try:
                t, body, rid = unpack(frames[-1], MAX_REPLY)
            except BadMessage as e:
                raise Unreachable(f"bad reply: {e}", sent=True) from None
            if rid == 1:  # others: the controller's liveness probes of a pending wait
                return t, body, rid
    finally:
        dealer.close()
