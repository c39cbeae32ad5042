"""The CLI sockets' gate: who is asking (kernel peer credentials on the ipc
socket, a MUNGE credential on the TCP one), at what rate, and the hand-over
to the request envelope (crane.requests.envelope)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from crane import transport
from crane.core import messages as m
from crane.requests.envelope import Envelope
from crane.requests.port import ARGS, AUTH

log = logging.getLogger("crane.requests")


class CliGate:
    def __init__(self, envelope: Envelope, limiter: transport.RateLimiter, loop: asyncio.AbstractEventLoop,
                 metrics: collections.Counter[str]) -> None:  # fmt: skip
        self.envelope = envelope
        self.limiter = limiter
        self.loop = loop
        self.metrics = metrics

    def admit(self, peer: transport.Peer) -> bool:
        """Per-uid rate limit, checked before decoding; root is not limited."""
        if peer.uid == 0:
            return True
        if peer.uid is not None and self.limiter.allow(peer.uid, time.monotonic()):
            return True
        self.metrics["cli_rate_limited"] += 1
        return False

    def on_request(self, endpoint: transport.Endpoint, peer: transport.Peer, msg: m.Message, rid: int) -> None:
        self.metrics["cli_requests"] += 1
        self.envelope.handle(peer, msg, rid, transport.Replier(endpoint, peer.identity, rid))

    def on_bad(self, endpoint: transport.Endpoint, peer: transport.Peer, why: str, rid: int) -> None:
        self.metrics["cli_bad_frames"] += 1
        endpoint.send(peer.identity, m.Error(ARGS, f"bad request: {why}"), rid)

    def on_munge_request(self, endpoint: transport.Endpoint, peer: transport.Peer, msg: m.Message, rid: int) -> None:
        """Decode the MUNGE credential off the loop; serve only if it vouches
        for exactly this request (munged refuses replays)."""
        from crane import munge

        assert peer.cred is not None
        fut = self.loop.run_in_executor(None, munge.verify, peer.cred, peer.raw)

        def done(f: asyncio.Future[int]) -> None:
            exc = f.exception()
            if exc is not None:
                self.metrics["munge_refused"] += 1
                log.warning("MUNGE credential refused: %s", exc)
                endpoint.send(peer.identity, m.Error(AUTH, f"authentication failed: {exc}"), rid)
                return
            peer.uid = f.result()
            if self.admit(peer):
                self.on_request(endpoint, peer, msg, rid)

        fut.add_done_callback(done)
