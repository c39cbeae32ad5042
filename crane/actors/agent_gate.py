"""The agent socket's gate: which node a frame speaks for, and where it goes.

Routing ids are random (ROUTER-assigned), never chosen by the agent: a node
is named by its CurveZMQ key when keys are on, else by its Register; later
frames are accepted only on the route that registered. Frames go to the
node's actor, except live step output (relayed at once, crane.actors.streams)
and session reports (logged and counted).
"""

from __future__ import annotations

import collections
import logging

from crane import transport
from crane.actors.jobs import JobTable
from crane.actors.node import FromAgent, NodeActor, Reregister
from crane.actors.ports import AgentSender
from crane.core import messages as m
from crane.core.states import RegisterRefusal

log = logging.getLogger("crane.agents")


class AgentGate:
    def __init__(self, nodes: dict[str, NodeActor], table: JobTable, agents: AgentSender, reregister: Reregister,
                 metrics: collections.Counter[str], keys: dict[str, str] | None) -> None:  # fmt: skip
        self.nodes = nodes
        self.table = table
        self.agents = agents
        self.metrics = metrics
        self.keys = keys  # z85 public key -> node, when CurveZMQ is on
        self.routes: dict[bytes, str] = {}  # routing id -> the node that registered on it
        self.reregister = reregister

    def on_frame(self, peer: transport.Peer, msg: m.Message, rid: int) -> None:
        name = self._node_of(peer, msg)
        if name is None:
            return
        node = self.nodes.get(name)
        if node is None:
            self.metrics["agent_rejected"] += 1
            if isinstance(msg, m.Register):
                self.agents.send(peer.identity, m.RegisterAck(False, f"unknown node {name[:64]}",
                                                              RegisterRefusal.UNKNOWN_NODE))  # fmt: skip
            else:
                self.reregister.ask(peer.identity)
            return
        if isinstance(msg, m.Register):
            self.routes = {r: n for r, n in self.routes.items() if n != name}
            self.routes[peer.identity] = name
        self.metrics["agent_msgs"] += 1
        if isinstance(msg, m.SessionEvent):
            self._session_event(name, msg)
        elif isinstance(msg, m.StepOutput):
            # at once, not through the actors: it is ahead of the step's
            # StepEnded on the same link, so its crun gets it before the end
            job = self.table.get(msg.job_id)
            if job is not None and name in job.nodes:
                self.table.streams.relay(msg, job.uid)  # held output bounded per user too
        else:
            node.tell(FromAgent(peer.identity, msg))

    def _node_of(self, peer: transport.Peer, msg: m.Message) -> str | None:
        if self.keys is not None:
            name = self.keys.get(peer.user_id or "")
            if name is None or (isinstance(msg, m.Register) and msg.node != name):
                self.metrics["agent_forged"] += 1
                log.warning("agent frame refused: key of %r, claims %r", name,
                            str(getattr(msg, "node", None))[:64])  # fmt: skip
                return None
            return name
        if isinstance(msg, m.Register):
            return str(msg.node)
        name = self.routes.get(peer.identity)
        if name is None:
            self.metrics["agent_rejected"] += 1
            self.reregister.ask(peer.identity)
        return name

    def _session_event(self, node: str, msg: m.SessionEvent) -> None:
        """An agent adopted an ssh session into a job or swept a user's strays."""
        pids = ", ".join(map(str, msg.pids[:20])) + (" ..." if len(msg.pids) > 20 else "")
        if msg.kind == "adopt":
            self.metrics["sessions_adopted"] += 1
            log.info("node %s: session of user %r adopted into job %d (pids %s)", node, msg.user, msg.job, pids)
        elif msg.kind == "sweep":
            self.metrics["strays_swept"] += len(msg.pids)
            log.info("node %s: swept %d processes of user %r after job %d: %s", node, len(msg.pids), msg.user, msg.job, pids)
        else:
            log.warning("node %s: unknown session event %r", node, msg.kind[:32])

    def on_bad_frame(self, peer: transport.Peer, why: str, rid: int) -> None:
        self.metrics["agent_bad_frames"] += 1
        log.debug("bad agent frame from %r: %s", peer.identity[:32], why)
