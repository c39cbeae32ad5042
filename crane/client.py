"""The blocking client the CLIs use: one DEALER socket to the controller's
CLI socket, request/reply matched by request id. Imports only zmq and the
message module, so a CLI starts fast."""

from __future__ import annotations

import itertools
import os
import time

import zmq

from crane.core import messages as m

MAX_REPLY = 256 * 1024 * 1024  # a CLI accepts replies this large (requests: m.MAX_FRAME)

#: The default of the connect timeout the CLIs use (seconds): how long a
#: command waits for the controller to answer the connection (the ZMTP
#: handshake, done by the controller's I/O thread however busy it is) before
#: it says the controller cannot be reached. ``$CRANE_CONNECT_TIMEOUT`` sets it.
CONNECT_TIMEOUT = 2.0


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


class Unreachable(Exception):
    """The controller did not answer. ``sent``: the request had been handed to
    the controller (it may have been applied) when the answer did not come."""

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


_MONITORS = itertools.count()  # this process's monitor endpoints, one per connection


class Client:
    """Blocking request/reply to the controller's CLI socket."""

    def __init__(self, address: str, timeout: float = 30.0, munge: bool = False,
                 connect_timeout: float | None = None) -> None:  # fmt: skip
        """``timeout``: for each reply; ``connect_timeout`` (None: no separate
        limit): for the connection to the controller, checked before anything
        is sent, so a request never goes out on a connection made too late."""
        self.address = address
        self.munge = munge
        self.timeout = timeout
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY)
        if address.startswith("ipc://") and not os.path.exists(address[6:]):
            self.sock.close(linger=0)
            raise Unreachable(f"{address[6:]} does not exist (is cranectld running?)")
        monitor = None
        if connect_timeout is not None and connect_timeout > 0:
            # a name of our own: pyzmq's default (from the socket's fd) is
            # "already in use" when a fd is reused before an old monitor is gone
            monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECT_RETRIED
                                                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                   | zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                                                   addr=f"inproc://crane-monitor-{os.getpid()}-{next(_MONITORS)}")  # fmt: skip
        self.sock.connect(address)
        self._rid = 0
        if monitor is not None:
            assert connect_timeout is not None
            try:
                self._await_connection(monitor, connect_timeout)
            except Unreachable:
                self.sock.disable_monitor()
                monitor.close(linger=0)
                self.sock.close(linger=0)
                raise
            self.sock.disable_monitor()
            monitor.close(linger=0)

    def _await_connection(self, monitor: zmq.Socket, limit: float) -> None:  # type: ignore[type-arg]
        from zmq.utils.monitor import recv_monitor_message

        deadline = time.monotonic() + limit
        why = "no answer"
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not monitor.poll(left_ms):
                raise Unreachable(f"{why} within {limit:g} s")
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == zmq.EVENT_CONNECT_RETRIED:
                why = "connection refused, no answer"
            else:
                why = "connection refused by the controller (handshake failed), no answer"

    def request(self, msg: m.Message, timeout: float | None = None) -> m.Message:
        return self.wait_reply(self.send(msg), timeout)

    def send(self, msg: m.Message) -> int:
        """Send a request without waiting; its request id."""
        self._rid += 1
        rid = self._rid
        data = m.encode(msg, rid)
        if self.munge:
            from crane import munge

            self.sock.send_multipart([munge.credential_for(data), data])
        else:
            self.sock.send(data)
        return rid

    def wait_reply(self, rid: int, timeout: float | None = None) -> m.Message:
        t = self.timeout if timeout is None else timeout
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        # one deadline for the whole wait: messages for other request ids (the
        # controller's liveness probes of a pending wait) do not extend it
        deadline = None if t <= 0 else time.monotonic() + t
        while True:
            left_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not poller.poll(left_ms):
                raise Unreachable(f"no reply within {t:g} s", sent=True)
            data = self.sock.recv()
            try:
                reply, got = m.decode(data, MAX_REPLY)
            except m.BadMessage as e:
                raise Unreachable(f"bad reply: {e}", sent=True) from None
            if got == rid:
                return reply

    def close(self) -> None:
        self.sock.close(linger=0)
