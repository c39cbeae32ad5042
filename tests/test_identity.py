"""Identity on both links: agents are pinned by CurveZMQ keys, CLIs by the
kernel's peer credentials. Nothing a peer writes in a message names who it is."""

from __future__ import annotations

import os

import zmq
import zmq.auth

from crane import keys
from crane.core import messages as m
from tests.conftest import Cluster


def _agent_socket(c: Cluster, identity: str, pub: bytes, sec: bytes | None) -> zmq.Socket:
    cfg = c.config()
    key_dir = os.path.join(cfg["CraneBaseDir"], "keys")
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, 2000)  # a refused handshake leaves no pipe to queue on
    if sec is not None:
        s.curve_publickey, s.curve_secretkey = pub, sec
        s.curve_serverkey = keys.controller_public(key_dir)
    s.connect(f"tcp://127.0.0.1:{cfg['CraneCtldListenPort']}")
    return s


def _answers(s: zmq.Socket, timeout_ms: int = 1500) -> list[m.Message]:
    got = []
    while s.poll(timeout_ms):
        got.append(m.decode(s.recv())[0])
        timeout_ms = 200
    return got


def _register_as(s: zmq.Socket, node: str) -> list[m.Message]:
    try:
        s.send(m.encode(m.Register(node, 4, 8 << 30, [], [], "none")))
    except zmq.Again:
        return []  # never even connected: refused at the handshake
    return _answers(s)


def test_agents_without_a_known_key_cannot_register(cluster: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a plain (unencrypted) client and a client with a key that is not on file
    plain = _agent_socket(cluster, "crane01", b"", None)
    pub, sec = zmq.auth.load_certificate(zmq.auth.create_certificates(str(tmp_path), "rogue")[1])
    rogue = _agent_socket(cluster, "crane01", pub, sec)
    assert _register_as(plain, "crane01") == []
    assert _register_as(rogue, "crane01") == []
    plain.close()
    rogue.close()


def test_a_known_key_cannot_speak_for_another_node(cluster: Cluster) -> None:
    key_dir = os.path.join(cluster.config()["CraneBaseDir"], "keys")
    pub, sec = keys.node_keys(key_dir, "crane02")
    forged = _agent_socket(cluster, "crane01", pub, sec)
    assert _register_as(forged, "crane01") == []
    # a StepEnded forged for crane01 changes nothing either
    jid = cluster.submit("-w", "crane01", wrap="sleep 300")
    cluster.step_pid(jid)
    for msg in (m.StepEnded(jid, 1, 0, 0, ""), m.JobReleased(jid)):
        try:
            forged.send(m.encode(msg))
        except zmq.Again:
            pass
    # at most it is told to register (as crane02, the node its key is for)
    assert all(isinstance(a, m.RegisterAck) and not a.ok for a in _answers(forged, 500))
    forged.close()
    assert cluster.state(jid) == "RUNNING"
    # the real crane01 is still registered and obeys
    cluster.ok("ccancel", str(jid))
    assert cluster.wait_state(jid, "CANCELLED")["state"] == "CANCELLED"


def test_the_right_key_registers(cluster: Cluster) -> None:
    # the control case for the two refusals above: the same path with the right key works
    key_dir = os.path.join(cluster.config()["CraneBaseDir"], "keys")
    pub, sec = keys.node_keys(key_dir, "crane04")
    # the controller now routes crane04 to this socket: restart the real agent after
    s = _agent_socket(cluster, "crane04", pub, sec)
    answers = _register_as(s, "crane04")
    s.close()
    assert answers and isinstance(answers[0], m.RegisterAck) and answers[0].ok
    cluster.stop("craned-crane04")
    cluster.start_agent("crane04")
    cluster.wait_nodes_up()


def test_body_cannot_claim_an_identity(cluster: Cluster) -> None:
    # there is no uid field to forge: a body that adds one is refused outright
    cfg = cluster.config()
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect("ipc://" + os.path.join(cfg["CraneBaseDir"], "cranectld.sock"))
    import msgpack

    from crane import PROTOCOL_VERSION

    s.send(msgpack.packb({"v": PROTOCOL_VERSION, "t": "Cancel", "rid": 7,
                          "b": {"filters": {"states": ["RUNNING"]}, "uid": 0}}))  # fmt: skip
    reply = _answers(s)
    s.close()
    assert len(reply) == 1 and isinstance(reply[0], m.Error) and reply[0].code == 2
    assert "unknown field" in reply[0].message
