"""The blocking client the CLIs use: one DEALER socket to the controller's
CLI socket, request/reply matched by request id. Imports only zmq and the
message module, so a CLI starts fast."""

from __future__ import annotations

import os
import time

import zmq

from crane.core import messages as m

MAX_REPLY = 256 * 1024 * 1024  # a CLI accepts replies this large (requests: m.MAX_FRAME)

class Unreachable(Exception):
    pass


class Client:
    """Blocking request/reply to the controller's CLI socket."""

    def __init__(self, address: str, timeout: float = 30.0, munge: bool = False) -> None:
        self.address = address
        self.munge = munge
        self.timeout = timeout
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY)
        if address.startswith("ipc://") and not os.path.exists(address[6:]):
            raise Unreachable(f"controller socket {address[6:]} does not exist")
        self.sock.connect(address)
        self._rid = 0

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
                raise Unreachable("timed out waiting for the controller")
            data = self.sock.recv()
            try:
                reply, got = m.decode(data, MAX_REPLY)
            except m.BadMessage as e:
                raise Unreachable(f"bad reply from controller: {e}") from None
            if got == rid:
                return reply

    def close(self) -> None:
        self.sock.close(linger=0)
