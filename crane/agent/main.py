"""craned: the node agent. One DEALER socket to the controller (identity =
node name), registration with the steps it already runs, heartbeats, and the
dispatch of the controller's orders to the StepManager."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

import zmq

from crane import transport
from crane.agent import cgroup as cgmod
from crane.agent import kill
from crane.agent import stream as streams
from crane.agent.launcher import set_child_subreaper
from crane.agent.sessions import SessionService
from crane.agent.statedir import StateDirError
from crane.agent.steps import StepManager
from crane.agent.sweep import Sweeper
from crane.client_config import write_cache
from crane.config import Config, ConfigError, load
from crane.core import messages as m
from crane.core.states import RegisterRefusal, StepEnd

log = logging.getLogger("craned")

# A Register is answered within this long: meanwhile a "register again" (sent
# for a frame that left before it) is not answered with another one, and the
# heartbeat loop sends the next only once it has passed without an answer.
REGISTER_WAIT = 2.0


class Agent:
    def __init__(self, cfg: Config, node: str) -> None:
        self.cfg = cfg
        self.node = node
        self.mode = cgmod.detect_mode() if os.geteuid() == 0 else "none"
        self.scope = f"crane/{cfg.cluster}/{node}"
        self.state_dir = os.path.join(cfg.resolve(cfg.craned_state_dir), node)
        epilog = cfg.resolve(cfg.epilog) if cfg.epilog else ""  # never relative to our cwd
        self.steps = StepManager(node, self.scope, self.state_dir, self.mode, self.send, epilog,
                                 try_send=self.try_send)  # fmt: skip
        self.sweeper = Sweeper(node, self.state_dir, cfg.sweep_strays, cfg.sweep_min_uid, cfg.exempt_users,
                               cfg.kill_wait, self.steps.has_step, self.send)  # fmt: skip
        self.steps.on_release = lambda job, uid: self.sweeper.job_released(job, uid, self.mode)
        self.sessions = SessionService(node, self.state_dir, self.mode, self.steps, self.sweeper.exempt, self.send)
        self.ctx = zmq.Context()
        self.endpoint: transport.Endpoint | None = None
        self.registered = False
        self.clock_offset = 0.0  # the controller's wall clock minus ours, from its RegisterAck
        self.register_sent = -REGISTER_WAIT  # monotonic time of our last Register
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    def send(self, msg: m.Message) -> None:
        if self.endpoint is not None and not self.endpoint.send(b"", msg):
            log.warning("send of %s failed (controller away); it is re-sent on registration", msg.TYPE)

    def try_send(self, msg: m.Message) -> bool:
        """A send the link may refuse (its queue is full, or no controller):
        the caller keeps the message and slows down (live output)."""
        return self.endpoint is not None and self.endpoint.send(b"", msg)

    def register(self) -> None:
        conf = self.cfg.nodes[self.node]
        self.register_sent = time.monotonic()
        self.send(m.Register(
            self.node, conf.cpus, conf.memory, self.steps.running(),
            list(self.steps.ended.values()), self.mode,
        ))  # fmt: skip

    def on_message(self, peer: transport.Peer, msg: m.Message, rid: int) -> None:
        if isinstance(msg, m.RegisterAck):
            if msg.ok:
                if msg.now:
                    self.clock_offset = msg.now - time.time()
                if not self.registered:
                    log.info("registered with the controller")
                self.registered = True
            elif _refusal(msg) == RegisterRefusal.UNKNOWN_NODE:
                log.error("the controller does not know node %s", self.node)
                self.registered = False  # the heartbeat loop tries again
            elif self.register_pending():
                # asked about a frame that left before our Register: its answer is on the way
                log.debug("controller asks to register again: a registration is in flight")
            else:
                log.info("controller asks to register again (%s)", msg.reason or msg.code)
                self.registered = False
                self.register()
        elif isinstance(msg, m.LaunchStep):
            if not self._stale_launch(msg):
                self.steps.launch(msg)
        elif isinstance(msg, m.KillJob):
            self._spawn(self.steps.kill_job(msg))
        elif isinstance(msg, m.SignalJob):
            self.steps.signal_job(msg)
        elif isinstance(msg, m.SuspendJob):
            self.steps.suspend_job(msg)
        elif isinstance(msg, m.SetTimeLimit):
            kill.set_time_limit(self.steps, msg)
        elif isinstance(msg, (m.StepInput, m.StepResize)):
            streams.on_input(msg)  # crun's stdin / terminal size (owner checked by the controller)
        else:
            log.warning("unexpected %s from the controller", msg.TYPE)

    def _stale_launch(self, msg: m.LaunchStep) -> bool:
        """A launch that reached us after the controller held this node down:
        CranedTimeout past its last report from us (``spec["heard_at"]``, by
        the controller's clock, which the RegisterAck told us) it declares the node down and requeues or
        ends the job, so a launch the network held that long is refused, not
        run beside the job's next run. Reported as a failed launch (dropped
        by a controller that holds the node down; the job's end otherwise)."""
        heard = msg.spec.get("heard_at")
        if not isinstance(heard, (int, float)) or isinstance(heard, bool):
            return False
        late = time.time() + self.clock_offset - float(heard) - self.cfg.craned_timeout
        if late <= 0:
            return False
        why = f"launch arrived {late:.0f}s after CranedTimeout without contact: refused"
        log.warning("launch of %d.%d: %s", msg.job_id, msg.step_id, why)
        self.send(m.StepEnded(msg.job_id, msg.step_id, 127, 0, StepEnd.LAUNCH_FAILED, why))
        return True

    def on_bad(self, peer: transport.Peer, why: str, rid: int) -> None:
        log.warning("bad frame from the controller: %s", why)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        set_child_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self.steps.reap)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.steps.adopt()
        self.steps.reap()
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)  # exponential backoff up to 2 s
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.MAXMSGSIZE, m.MAX_FRAME + 1024)
        if self.cfg.curve_key_dir:
            from crane import keys

            sock.curve_publickey, sock.curve_secretkey = keys.node_keys(self.cfg.curve_key_dir, self.node)
            sock.curve_serverkey = keys.controller_public(self.cfg.curve_key_dir)
        sock.connect(self.cfg.agent_address)
        self.endpoint = transport.Endpoint(sock, self.on_message, self.on_bad, router=False)
        log.info("craned %s up (cgroup mode %s), controller %s", self.node, self.mode, self.cfg.agent_address)
        self.register()
        await self.sessions.start()
        hb = asyncio.ensure_future(self._heartbeat())
        await self.stopping.wait()
        hb.cancel()
        await self.sessions.close()
        # steps keep running: their cgroups outlive the agent, which re-adopts them
        self.endpoint.close()
        self.ctx.term()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_interval)
            if self.registered:
                self.send(m.Heartbeat(self.node))
            elif not self.register_pending():
                self.register()

    def register_pending(self) -> bool:
        """Whether our last Register left less than REGISTER_WAIT ago."""
        return time.monotonic() - self.register_sent < REGISTER_WAIT


def _refusal(msg: m.RegisterAck) -> RegisterRefusal | None:
    """Why the controller refused us (``RegisterAck.code``); None if it gave no code we know."""
    try:
        return RegisterRefusal(msg.code)
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="craned", description="Crane node agent")
    ap.add_argument("-C", "--config")
    ap.add_argument("-n", "--node", required=True, help="this node's name in the config")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    os.umask(0o077)  # our files (state, scripts, logs) are private unless made otherwise
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"craned: {e}", file=sys.stderr)
        sys.exit(1)
    if args.node not in cfg.nodes:
        print(f"craned: node {args.node} is not in the config {cfg.path}", file=sys.stderr)
        sys.exit(1)
    write_cache(cfg)  # commands run in jobs read it without parsing the YAML (crane.client_config)
    os.chdir("/")  # nothing may resolve against the directory we were started in
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s craned[{args.node}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )

    async def amain() -> None:
        await Agent(cfg, args.node).run()

    try:
        asyncio.run(amain())
    except StateDirError as e:
        print(f"craned: state directory: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
