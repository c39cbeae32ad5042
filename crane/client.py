"""The blocking pyzmq client of commands that keep a connection and poll it
(crun, calloc) and of the bench tools: one DEALER socket to the controller's
CLI socket, request/reply matched by request id. Commands that send one
request and read one reply use crane.oneshot (no pyzmq)."""

from __future__ import annotations

import itertools
import os
import time

import zmq

from crane.core import messages as m
from crane.oneshot import (  # noqa: F401  (re-exported: one definition for both clients)
    CONNECT_TIMEOUT,
    MAX_REPLY,
    Unreachable,
    connect_timeout_from_env,
    reply_timeout_from_env,
    seconds_from_env,
)

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
