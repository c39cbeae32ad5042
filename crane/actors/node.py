"""One node actor per configured node: the link to its agent.

It knows whether the agent is registered and alive (heartbeats), sends what
job actors ask it to send, keeps an outbox while the agent is away (delivered
on re-registration, so a cancel for an unreachable node is not lost), forwards
the agent's reports to the job actors, and reconciles both ways when the agent
(re-)registers: steps the controller expects but the agent lacks end as lost;
jobs the agent runs that the controller does not know are killed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from crane.actors.base import Actor
from crane.actors.ports import AgentSender, NodePort
from crane.config import NodeConf
from crane.core import events as ev
from crane.core import messages as m
from crane.core.states import KillReason, NodeReason, RegisterRefusal

log = logging.getLogger("crane.node")
OUTBOX_MAX = 100_000


@dataclass(slots=True)
class FromAgent:
    identity: bytes
    msg: m.Message


@dataclass(slots=True)
class Send:
    msg: m.Message


@dataclass(slots=True)
class Tick:
    now: float


REGISTER_AGAIN_EVERY = 5.0  # seconds: one "register again" per route, however many frames it sends


class Reregister:
    """Asks an agent whose route is unknown or stale (the controller restarted,
    or timed the agent out) to register: once per route every
    REGISTER_AGAIN_EVERY seconds, not once per frame (a backlog of reports
    made each agent register hundreds of times). Shared by the agent gate and
    the node actors."""

    def __init__(self, agents: AgentSender, nodes: int) -> None:
        self.agents = agents
        self.keep = 4 * nodes + 64  # routes remembered before the old ones are dropped
        self.told: dict[bytes, float] = {}  # routing id -> when it was told

    def ask(self, identity: bytes) -> None:
        now = time.monotonic()
        if now - self.told.get(identity, -REGISTER_AGAIN_EVERY) < REGISTER_AGAIN_EVERY:
            return
        if len(self.told) > self.keep:
            self.told = {r: t for r, t in self.told.items() if now - t < REGISTER_AGAIN_EVERY}
        self.told[identity] = now
        self.agents.send(identity, m.RegisterAck(False, "register again", RegisterRefusal.REGISTER_AGAIN))

    def forget(self, identity: bytes) -> None:
        self.told.pop(identity, None)


class NodeActor(Actor):
    __slots__ = ("conf", "port", "timeout", "reregister", "identity", "registered", "last_seen", "outbox",
                 "cgroup_mode")  # fmt: skip

    def __init__(self, conf: NodeConf, port: NodePort, timeout: float, reregister: Reregister) -> None:
        super().__init__()
        self.conf = conf
        self.port = port
        self.reregister = reregister
        self.timeout = timeout  # CranedTimeout: seconds without a heartbeat before the node is down
        self.identity: bytes = b""  # the ROUTER's routing id of the registered agent
        self.registered = False
        self.last_seen = 0.0
        self.outbox: deque[m.Message] = deque(maxlen=OUTBOX_MAX)
        self.cgroup_mode = "?"

    @property
    def name(self) -> str:
        return self.conf.name

    def describe(self) -> str:
        return f"node {self.name}"

    def receive(self, msg: Any) -> None:
        if isinstance(msg, Send):
            self._send(msg.msg)
        elif isinstance(msg, FromAgent):
            self._from_agent(msg.identity, msg.msg)
        elif isinstance(msg, Tick):
            if self.registered and msg.now - self.last_seen > self.timeout:
                self._lost(f"no heartbeat for {self.timeout:g}s")

    def _send(self, msg: m.Message) -> None:
        if self.registered and self.port.agents.send(self.identity, msg):
            return
        self.outbox.append(msg)

    def _from_agent(self, identity: bytes, msg: m.Message) -> None:
        if isinstance(msg, m.Register):
            self._register(identity, msg)
            return
        if not self.registered or identity != self.identity:
            # the controller restarted, timed the agent out, or this is a stale route
            self.reregister.ask(identity)
            return
        self.last_seen = time.monotonic()
        if isinstance(msg, m.Heartbeat):
            return
        if isinstance(msg, m.StepStarted):
            self.port.job_event(msg.job_id, ev.StepStartedEv(self.name, msg.step_id, msg.pid))
        elif isinstance(msg, m.StepEnded):
            self._step_ended(msg)
        elif isinstance(msg, m.JobReleased):
            self.port.job_event(msg.job_id, ev.ReleasedEv(self.name, msg.kill_failed))
            if not msg.epilog_ok:  # as Slurm: a failing epilog drains the node
                self.port.scheduler.tell(ev.NodeStatus(self.name, drain=True, reason=NodeReason.EPILOG_ERROR))
        else:
            log.warning("node %s: unexpected %s", self.name, msg.TYPE)

    def _step_ended(self, msg: m.StepEnded) -> None:
        e = ev.StepEndedEv(self.name, msg.step_id, msg.exit_code, msg.signal, msg.reason, msg.detail)
        self.port.job_event(msg.job_id, e)

    def _register(self, identity: bytes, msg: m.Register) -> None:
        conf = self.conf
        self.identity = identity
        self.registered = True
        self.reregister.forget(identity)
        self.last_seen = time.monotonic()
        self.cgroup_mode = msg.cgroup
        self.port.agents.send(identity, m.RegisterAck(True))
        log.info("node %s registered (%d steps running, cgroup %s)", self.name, len(msg.steps), msg.cgroup)
        if msg.cpus < conf.cpus:
            log.warning("node %s reports %d cpus, config says %d", self.name, msg.cpus, conf.cpus)
        # reports the agent could not deliver while we were apart
        for body in msg.ended:
            try:
                self._step_ended(m.StepEnded(**body))
            except TypeError:
                log.warning("node %s: malformed ended step %r", self.name, body)
        # reconcile: what the agent runs against what we expect
        running: dict[int, list[int]] = {}
        for job_id, step_id in (tuple(s[:2]) for s in msg.steps if len(s) >= 2):
            running.setdefault(job_id, []).append(step_id)
        for job_id in running:
            if not self.port.job_expected_on(job_id, self.name):
                log.warning("node %s runs unknown job %d: killing it", self.name, job_id)
                self.port.agents.send(identity, m.KillJob(job_id, None, 0.0, True, KillReason.ORPHAN))
        # launches still in the outbox (sent while the agent was away) are not
        # lost: they are delivered below, after the registration
        for out in self.outbox:
            if isinstance(out, m.LaunchStep):
                running.setdefault(out.job_id, []).append(out.step_id)
        for job_id in self.port.jobs_on_node(self.name):
            self.port.job_event(job_id, ev.AgentStepsEv(self.name, running.get(job_id, [])))
        while self.outbox and self.registered:
            self._send(self.outbox.popleft())
        self.port.scheduler.tell(ev.NodeStatus(self.name, up=True))

    def _lost(self, why: str) -> None:
        log.warning("node %s is DOWN: %s", self.name, why)
        self.registered = False
        self.port.scheduler.tell(ev.NodeStatus(self.name, up=False, reason=why))
        for job_id in self.port.jobs_on_node(self.name):
            self.port.job_event(job_id, ev.NodeDownEv(self.name))
