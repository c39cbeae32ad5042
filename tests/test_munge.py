"""MUNGE authentication for CLIs on the TCP port: real munged, real users."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import zmq

from crane.core import messages as m
from tests.conftest import IS_ROOT, Cluster, wait_for


def munge_works() -> bool:
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def munged() -> None:
    if not IS_ROOT or not shutil.which("munged"):
        pytest.skip("needs root and Debian's munge package (scripts/setup.sh installs it)")
    if munge_works():
        return
    if not os.path.exists("/etc/munge/munge.key"):
        subprocess.run(["mungekey", "--create"], check=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    wait_for(munge_works, 10, "munged to answer")


def test_cli_over_tcp_with_munge_identifies_the_user(munged, make_cluster, users) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=1, Auth={"Type": "munge", "CurveKeyDir": "keys"})
    out = c.ok("cbatch", "--json", "-H", "--wrap", "true", user="alice")
    jid = json.loads(out)["job_id"]
    j = c.job(jid)
    assert j is not None and j["user"] == "alice" and j["uid"] == users["alice"]
    r = c.run("ccancel", str(jid), user="bob")
    assert r.returncode == 4 and "Permission denied" in r.stdout
    c.ok("ccancel", str(jid), user="alice")


def _raw_client(c: Cluster) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{c.config()['CraneCtldCliPort']}")
    return s


def _reply(s: zmq.Socket) -> m.Message:
    assert s.poll(10_000), "no reply"
    return m.decode(s.recv())[0]


def test_replayed_and_mismatched_credentials_are_refused(munged, make_cluster) -> None:  # type: ignore[no-untyped-def]
    from crane import munge

    c: Cluster = make_cluster(nodes=1, Auth={"Type": "munge", "CurveKeyDir": "keys"})
    s = _raw_client(c)
    frame = m.encode(m.QueryNodes(), 1)
    cred = munge.credential_for(frame)
    s.send_multipart([cred, frame])
    assert isinstance(_reply(s), m.Ok)
    s.send_multipart([cred, frame])  # the same credential again: a replay
    r = _reply(s)
    assert isinstance(r, m.Error) and r.code == 5 and "authentication failed" in r.message
    other = m.encode(m.Cancel(filters={"states": ["RUNNING"]}), 2)
    s.send_multipart([munge.credential_for(frame), other])  # valid credential, other request
    r = _reply(s)
    assert isinstance(r, m.Error) and r.code == 5
    s.send_multipart([b"not a credential", frame])
    r = _reply(s)
    assert isinstance(r, m.Error) and r.code == 5
    s.send(frame)  # no credential at all: wrong frame count
    r = _reply(s)
    assert isinstance(r, m.Error) and r.code == 2
    s.close()
