"""CurveZMQ keys for the agent link: the controller's keypair and one keypair
per node. The controller accepts only agents whose public key is on file, and
only for the node name that key was made for (the key pins the identity).

Layout under the key directory::

    controller.key  controller.key_secret      (the agents need controller.key)
    agents/<node>.key                          (public keys the controller accepts)
    nodes/<node>.key_secret                    (each agent's own keypair)
"""

from __future__ import annotations

import os

import zmq.auth


def generate(key_dir: str, nodes: list[str], force: bool = False) -> list[str]:
    """Create missing keys; return the paths written."""
    written = []
    os.makedirs(os.path.join(key_dir, "agents"), exist_ok=True)
    os.makedirs(os.path.join(key_dir, "nodes"), mode=0o700, exist_ok=True)
    os.chmod(os.path.join(key_dir, "nodes"), 0o700)
    if force or not os.path.exists(os.path.join(key_dir, "controller.key_secret")):
        pub, sec = zmq.auth.create_certificates(key_dir, "controller")
        os.chmod(sec, 0o600)
        written += [pub, sec]
    for node in nodes:
        sec_path = os.path.join(key_dir, "nodes", f"{node}.key_secret")
        if not force and os.path.exists(sec_path):
            continue
        pub, sec = zmq.auth.create_certificates(os.path.join(key_dir, "nodes"), node)
        os.chmod(sec, 0o600)
        os.replace(pub, os.path.join(key_dir, "agents", f"{node}.key"))
        written += [sec]
    return written


def controller_keys(key_dir: str) -> tuple[bytes, bytes]:
    pub, sec = zmq.auth.load_certificate(os.path.join(key_dir, "controller.key_secret"))
    assert sec is not None
    return pub, sec


def controller_public(key_dir: str) -> bytes:
    pub, _ = zmq.auth.load_certificate(os.path.join(key_dir, "controller.key"))
    return pub


def node_keys(key_dir: str, node: str) -> tuple[bytes, bytes]:
    pub, sec = zmq.auth.load_certificate(os.path.join(key_dir, "nodes", f"{node}.key_secret"))
    if sec is None:
        raise OSError(f"no secret key for node {node} in {key_dir}/nodes")
    return pub, sec


def accepted_agents(key_dir: str) -> dict[str, str]:
    """z85 public key -> node name, for every key in agents/."""
    out = {}
    adir = os.path.join(key_dir, "agents")
    for name in sorted(os.listdir(adir)) if os.path.isdir(adir) else []:
        if name.endswith(".key"):
            pub, _ = zmq.auth.load_certificate(os.path.join(adir, name))
            out[pub.decode("ascii")] = name[: -len(".key")]  # load_certificate gives z85 text
    return out
