"""crane.zmtp: the standard-library DEALER against the real controller's
ROUTER (ipc, peer credentials), and against peers that misbehave."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from crane.core import messages as m
from crane.zmtp import Dealer, ZmtpError, parse_properties
from tests.conftest import Cluster


def _ask(d: Dealer, msg: m.Message, rid: int, wait: float = 10.0) -> m.Message:
    d.send([m.encode(msg, rid)])
    deadline = time.monotonic() + wait
    while True:
        reply, got = m.decode(d.recv(deadline)[0])
        if got == rid:
            return reply


def test_requests_over_ipc_identify_the_caller(cluster: Cluster) -> None:
    d = Dealer("ipc://" + os.path.join(cluster.base, "cranectld.sock"), time.monotonic() + 5)
    try:
        r = _ask(d, m.QueryNodes(), 1)
        assert isinstance(r, m.Ok) and sorted(n["name"] for n in r.data["nodes"]) == cluster.node_names()
        # the controller knows who we are from the kernel: root may cancel anything
        jid = cluster.submit(wrap="sleep 300")
        r = _ask(d, m.Cancel(ids=[[jid, None]]), 2)
        assert isinstance(r, m.Ok) and [c["job_id"] for c in r.data["cancelled"]] == [jid]
        # a wait that outlives the controller's heartbeat interval (2 s): its PINGs are answered
        jid = cluster.submit(wrap="sleep 5")
        r = _ask(d, m.WaitJobs([jid]), 3, wait=60)
        assert isinstance(r, m.Ok), r
        assert cluster.state(jid) == "COMPLETED"
    finally:
        d.close()


def _server(handler) -> tuple[str, threading.Thread]:  # type: ignore[no-untyped-def]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        try:
            handler(conn)
        finally:
            conn.close()
            srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"tcp://127.0.0.1:{srv.getsockname()[1]}", t


def test_a_silent_peer_times_out_at_the_deadline() -> None:
    done = threading.Event()
    addr, t = _server(lambda conn: done.wait(10))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        Dealer(addr, time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 5
    done.set()


def test_a_peer_that_is_not_zmtp_is_refused() -> None:
    addr, t = _server(lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n" + b"x" * 64))
    with pytest.raises(ZmtpError):
        Dealer(addr, time.monotonic() + 5)


def test_nothing_listening_is_an_os_error() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError):
        Dealer(f"tcp://127.0.0.1:{port}", time.monotonic() + 2)


def test_ready_properties_parse_and_truncation_is_refused() -> None:
    body = b"\x0bSocket-Type\x00\x00\x00\x06ROUTER\x08Identity\x00\x00\x00\x00"
    assert parse_properties(body) == {b"Socket-Type": b"ROUTER", b"Identity": b""}
    with pytest.raises(ZmtpError):
        parse_properties(body[:-3] + b"\x00\x00")
    with pytest.raises(ZmtpError):
        parse_properties(b"\x0bSocket-Type\x00\x00\x00\x09ROUTER")
