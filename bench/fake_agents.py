"""Many idle agents in ONE process, for the 1,000-agent scale run only.

Each fake agent is its own zmq DEALER socket, set up like ``craned``'s (its
node's CurveZMQ keypair when the config has ``Auth.CurveKeyDir``; the routing
id is left to the controller's ROUTER): it sends ``Register`` once, then ``Heartbeat`` every
HeartbeatInterval (spread evenly over the interval), and re-registers when the
controller answers ``RegisterAck(False)``. It answers nothing else: it is a
documented *no-process executor* (it never launches, kills or reports steps)
and must never be used for anything but idle-scale measurements.

    python -m bench.fake_agents -C config.yaml [--nodes crane0001,...]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

import zmq

from crane import keys
from crane.config import load
from crane.core import messages as m


def agent_sockets(cfg: Any, names: list[str], options: dict[int, int]) -> tuple[
        zmq.Context, list[zmq.Socket], list[bytes], list[bytes]]:  # type: ignore[type-arg]  # fmt: skip
    """One DEALER per node of ``names`` connected to the controller's agent
    socket (CurveZMQ with the node's keys when the config has them; LINGER 0
    and ``options``), and each node's Register and Heartbeat frames."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(names) + 64)
    socks: list[zmq.Socket] = []  # type: ignore[type-arg]
    server_key = keys.controller_public(cfg.curve_key_dir) if cfg.curve_key_dir else b""
    for name in names:
        s = ctx.socket(zmq.DEALER)
        if cfg.curve_key_dir:
            s.curve_publickey, s.curve_secretkey = keys.node_keys(cfg.curve_key_dir, name)
            s.curve_serverkey = server_key
        s.setsockopt(zmq.LINGER, 0)
        for opt, value in options.items():
            s.setsockopt(opt, value)
        s.connect(cfg.agent_address)
        socks.append(s)
    register = [m.encode(m.Register(n, cfg.nodes[n].cpus, cfg.nodes[n].memory, [], [], "none")) for n in names]
    heartbeat = [m.encode(m.Heartbeat(n)) for n in names]
    return ctx, socks, register, heartbeat


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fake_agents")
    ap.add_argument("-C", "--config", required=True)
    ap.add_argument("--limit", type=int, default=0, help="only the first N nodes of the config")
    args = ap.parse_args(argv)
    cfg = load(args.config)
    names = list(cfg.nodes)
    if args.limit:
        names = names[: args.limit]
    interval = cfg.heartbeat_interval
    ctx, socks, register, heartbeat = agent_sockets(cfg, names, {zmq.RECONNECT_IVL: 100, zmq.RECONNECT_IVL_MAX: 2000})
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    for i, s in enumerate(socks):
        s.send(register[i], zmq.NOBLOCK)
    n = len(socks)
    start = time.monotonic()
    next_hb = [start + interval * (i + 1) / n for i in range(n)]  # spread over one interval
    acks = 0
    poller = zmq.Poller()
    index = {}
    for i, s in enumerate(socks):
        poller.register(s, zmq.POLLIN)
        index[s] = i
    while not stop:
        now = time.monotonic()
        for i in range(n):
            if next_hb[i] <= now:
                try:
                    socks[i].send(heartbeat[i], zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_hb[i] += interval
        # read replies: RegisterAck(True) is counted, RegisterAck(False) -> register again
        for s, _ in poller.poll(50):  # heartbeats go out in 50 ms batches
            i = index[s]
            while True:
                try:
                    data = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg, _ = m.decode(data)
                except m.BadMessage:
                    continue
                if isinstance(msg, m.RegisterAck):
                    if msg.ok:
                        acks += 1
                    else:
                        s.send(register[i], zmq.NOBLOCK)
    for s in socks:
        s.close(linger=0)
    ctx.term()
    print(f"fake_agents: {n} sockets, {acks} register acks", file=sys.stderr)


if __name__ == "__main__":
    main()
