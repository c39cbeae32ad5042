"""One node actor per configured node: the link to its agent.

It knows whether the agent is registered and alive (heartbeats), sends what
job actors ask it to send, keeps an outbox while the agent is away or its
link quiet (delivered when it is heard from again or re-registers, so a
cancel for an unreachable node is not lost), forwards the agent's reports
to the job actors, and reconciles both ways when the agent (re-)registers:
steps the controller expects but the agent lacks end as lost; jobs the
agent runs that the controller does not know are killed.

The outbox is bounded without losing a kill silently (:class:`Outbox`): what
a later message makes pointless is coalesced (one kill per job and step, the
latest winning; a whole-job kill drops the job's pending signals, suspends,
time limits, step kills and input; a repeated signal is pending once; at most
SIGNALS_PER_JOB distinct signals per job and a step's input up to
m.INPUT_WINDOW, more dropped with a log line; the latest suspend, time
limit and terminal size), launches are never dropped; and at the hard
limit (``MaxNodeOutbox``) the whole outbox is dropped and the node is DOWN
(reason ``outbox full``): its jobs end as on a node failure (a cancelled
job stays CANCELLED), and when the agent registers again everything it
still runs is unknown to the controller and killed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from crane.actors.base import Actor
from crane.actors.ports import AgentSender, NodePort
from crane.config import NodeConf
from crane.core import events as ev
from crane.core import messages as m
from crane.core.states import KillReason, NodeReason, RegisterRefusal

log = logging.getLogger("crane.node")
SIGNALS_PER_JOB = 8  # distinct pending signals per job in an outbox; more are dropped (logged)
OUTBOX_FULL = "outbox full"  # the start of a node's DOWN reason when its outbox overflowed
# An agent not heard from for this many heartbeat intervals has a quiet link
# (a partition, a stalled host): what is sent to it waits in its outbox
# (coalesced, bounded) until it is heard from again, not in the socket's
# queue, which would take up to its high-water mark of anything, stdin included.
QUIET_HEARTBEATS = 2.5


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


OutboxKey = tuple[Any, ...]


class Outbox:
    """What is waiting for an unreachable agent, in order, coalesced per job
    (see the module's docstring). ``add`` returns False when the message
    would make it hold more than ``limit`` messages: the caller then drops it
    all (:meth:`clear`) and marks the node down."""

    __slots__ = ("items", "per_job", "serial", "dropped")

    def __init__(self) -> None:
        self.items: dict[OutboxKey, m.Message] = {}  # insertion-ordered: delivery order
        self.per_job: dict[int, set[OutboxKey]] = {}
        self.serial = 0  # makes the keys of messages never coalesced unique
        self.dropped = 0  # signals and input dropped (past their bounds) since the last delivery

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Any:
        return iter(list(self.items.values()))

    def _key(self, msg: m.Message) -> OutboxKey:
        if isinstance(msg, m.KillJob):
            return ("kill", msg.job_id, msg.step_id)
        if isinstance(msg, m.SignalJob):
            return ("signal", msg.job_id, msg.step_id, msg.signal)
        if isinstance(msg, m.SuspendJob):
            return ("suspend", msg.job_id)
        if isinstance(msg, m.SetTimeLimit):
            return ("limit", msg.job_id)
        if isinstance(msg, m.StepResize):
            return ("resize", msg.job_id, msg.step_id)
        if isinstance(msg, m.StepInput):
            # a chunk crun sends again is kept once
            return ("input", msg.job_id, msg.step_id, msg.seq)
        self.serial += 1  # launches and anything else: kept, in order
        return ("once", getattr(msg, "job_id", None), self.serial)

    def add(self, msg: m.Message, limit: int) -> bool:
        key = self._key(msg)
        job = key[1]
        if key[0] == "signal":
            if key in self.items:
                return True  # pending already: sent once
            mine = self.per_job.get(job, ())
            if sum(1 for k in mine if k[0] == "signal") >= SIGNALS_PER_JOB:
                why = f"more than {SIGNALS_PER_JOB} signals pending for job {job}: signal {msg.signal}"
                return self._drop(why)
        elif key[0] == "input":
            if key in self.items:
                return True
            assert isinstance(msg, m.StepInput)
            held = sum(len(self.items[k].data) for k in self.per_job.get(job, ())  # type: ignore[attr-defined]
                       if k[0] == "input" and k[2] == key[2])  # fmt: skip
            # crun never sends more ahead; the agent would drop it too
            if held + len(msg.data) > m.INPUT_WINDOW:
                why = f"more than {m.INPUT_WINDOW} bytes of input pending for step {job}.{key[2]}"
                return self._drop(why)
        elif key[0] == "kill" and key[2] is None:
            # the whole job is killed: what is pending for it is moot, but its launches
            for k in [k for k in self.per_job.get(job, ()) if k[0] != "once" or k == key]:
                self._remove(k)
        elif key[0] != "once":
            self._remove(key)  # the latest wins, and goes after what was queued before it
        if key not in self.items and len(self.items) >= limit:
            return False
        self.items[key] = msg
        self.per_job.setdefault(job, set()).add(key)
        return True

    def _drop(self, why: str) -> bool:
        if not self.dropped:
            log.warning("outbox: %s: dropped (later drops are counted until delivery)", why)
        self.dropped += 1
        return True

    def _remove(self, key: OutboxKey) -> None:
        if self.items.pop(key, None) is not None:
            keys = self.per_job.get(key[1])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.per_job[key[1]]

    def first(self) -> m.Message:
        return next(iter(self.items.values()))

    def pop_first(self) -> m.Message:
        key = next(iter(self.items))
        msg = self.items[key]
        self._remove(key)
        return msg

    def clear(self) -> None:
        self.items.clear()
        self.per_job.clear()


class NodeActor(Actor):
    __slots__ = ("conf", "port", "timeout", "reregister", "identity", "registered", "last_seen", "outbox",
                 "overflowed", "cgroup_mode")  # fmt: skip

    def __init__(self, conf: NodeConf, port: NodePort, timeout: float, reregister: Reregister) -> None:
        super().__init__()
        self.conf = conf
        self.port = port
        self.reregister = reregister
        self.timeout = timeout  # CranedTimeout: seconds without a heartbeat before the node is down
        self.identity: bytes = b""  # the ROUTER's routing id of the registered agent
        self.registered = False
        self.last_seen = 0.0
        self.outbox = Outbox()
        self.overflowed = False  # the outbox overflowed since the agent last registered
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

    @property
    def outbox_max(self) -> int:
        return max(1, self.conf.outbox_max)

    def _quiet(self) -> bool:
        """Not heard from for QUIET_HEARTBEATS heartbeat intervals."""
        beat = self.conf.heartbeat
        return time.monotonic() - self.last_seen > QUIET_HEARTBEATS * beat

    def _send(self, msg: m.Message) -> None:
        if isinstance(msg, m.LaunchStep) and self.last_seen:
            # when we last heard from the agent (our wall clock): CranedTimeout past
            # it the node is DOWN here and the job requeued or ended, so the agent
            # refuses a launch that the network or the outbox held that long
            msg.spec["heard_at"] = time.time() - (time.monotonic() - self.last_seen)
        direct = self.registered and not self.outbox and not self._quiet()
        if direct and self.port.agents.send(self.identity, msg):
            return
        if self.overflowed and not isinstance(msg, m.KillJob):
            self.outbox.dropped += 1  # down for it: its jobs are ending; only their kills are kept
            return
        if not self.outbox.add(msg, self.outbox_max):
            if self.overflowed:  # a kill its registration makes anyway (what it runs is unknown)
                self.outbox.dropped += 1
            else:
                self._overflow()
            return
        if self.registered and not self._quiet():
            self._flush()

    def _flush(self) -> None:
        """Hand the outbox to the registered agent's link, in order, until the
        link refuses one (the agent gone, or its queue full)."""
        while self.outbox and self.registered:
            if not self.port.agents.send(self.identity, self.outbox.first()):
                return
            self.outbox.pop_first()
        if self.outbox.dropped:
            log.warning("node %s: %d messages were dropped from its outbox (signals, input, or past MaxNodeOutbox)",
                        self.name, self.outbox.dropped)  # fmt: skip
            self.outbox.dropped = 0

    def _overflow(self) -> None:
        """The outbox holds MaxNodeOutbox messages: drop them all and treat
        the node as down, so that nothing depends on what was dropped: its
        jobs end (a cancelled one as CANCELLED, the others as on a node
        failure) and, when its agent registers again, whatever it still runs
        is unknown here and killed."""
        n = len(self.outbox)
        self.outbox.clear()
        self.overflowed = True
        log.error("node %s: outbox full (%d messages, MaxNodeOutbox): dropped; the node is DOWN until its agent "
                  "registers again, its jobs end and what it still runs then is killed", self.name, n)  # fmt: skip
        self._lost(f"{OUTBOX_FULL} ({n} messages)")

    def _from_agent(self, identity: bytes, msg: m.Message) -> None:
        if isinstance(msg, m.Register):
            self._register(identity, msg)
            return
        if not self.registered or identity != self.identity:
            # the controller restarted, timed the agent out, or this is a stale route
            self.reregister.ask(identity)
            return
        self.last_seen = time.monotonic()
        if self.outbox:
            self._flush()  # held while the link was quiet, or refused (a full queue): now
        if isinstance(msg, m.Heartbeat):
            return
        if isinstance(msg, m.StepStarted):
            if self.port.job_expected_on(msg.job_id, self.name):
                self.port.job_event(msg.job_id, ev.StepStartedEv(self.name, msg.step_id, msg.pid))
        elif isinstance(msg, m.StepEnded):
            self._step_ended(msg)
        elif isinstance(msg, m.JobReleased):
            if self.port.job_expected_on(msg.job_id, self.name):
                self.port.job_event(msg.job_id, ev.ReleasedEv(self.name, msg.kill_failed))
            if not msg.epilog_ok:  # as Slurm: a failing epilog drains the node
                self.port.scheduler.tell(ev.NodeStatus(self.name, drain=True, reason=NodeReason.EPILOG_ERROR))
        else:
            log.warning("node %s: unexpected %s", self.name, msg.TYPE)

    def _step_ended(self, msg: m.StepEnded) -> None:
        """A step's end here. Told to the job only while the job runs on this
        node: an earlier run's end, reported when this node came back after
        the job was requeued and started elsewhere, is not the new run's."""
        if self.port.job_expected_on(msg.job_id, self.name):
            e = ev.StepEndedEv(self.name, msg.step_id, msg.exit_code, msg.signal, msg.reason, msg.detail)
            self.port.job_event(msg.job_id, e)
        self.port.step_gone(self.name, msg.job_id, msg.step_id)

    def _register(self, identity: bytes, msg: m.Register) -> None:
        conf = self.conf
        self.identity = identity
        self.registered = True
        self.reregister.forget(identity)
        self.last_seen = time.monotonic()
        self.cgroup_mode = msg.cgroup
        self.port.agents.send(identity, m.RegisterAck(True, now=time.time()))
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
        self.port.node_back(self.name, running)  # jobs that ended while it was DOWN: gone there now?
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
        self._flush()
        self.overflowed = False
        self.port.scheduler.tell(ev.NodeStatus(self.name, up=True))

    def _lost(self, why: str) -> None:
        log.warning("node %s is DOWN: %s", self.name, why)
        self.registered = False
        # shown by cinfo/ccontrol: an overflowed outbox by name, else Slurm's "Not responding"
        shown = why if why.startswith(OUTBOX_FULL) else ""
        self.port.scheduler.tell(ev.NodeStatus(self.name, up=False, reason=shown))
        jobs = self.port.jobs_on_node(self.name)
        self.port.node_lost(self.name, jobs)  # their processes there may live on: unconfirmed
        for job_id in jobs:
            self.port.job_event(job_id, ev.NodeDownEv(self.name))
