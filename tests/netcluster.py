"""The multi-host test cluster: bench.netlab's namespaces as tests' Cluster.

CLIs run on the login host (TCP + MUNGE) unless ``host=`` says otherwise;
the test's own queries (``job``, ``request``) go to the controller host's
ipc socket, so that a fault never blinds the test itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.netlab import LOGIN, NetCluster
from tests.conftest import IS_ROOT, Cluster, open_ancestors


class NetTestCluster(NetCluster, Cluster):
    def command(self, *argv: str, user: str | None = None, host: str = LOGIN) -> list[str]:
        return self.lab.argv(host, Cluster.command(self, *argv, user=user))

    def query_config(self) -> str:
        return self.admin_config  # the controller host's ipc socket: never cut off by a fault

    def node_states(self) -> dict[str, str]:
        return self.nodes_state()


_works: bool | None = None


def netns_works() -> bool:
    """Root, the tools, and a network namespace can be made here (once per run)."""
    global _works
    if _works is None:
        _works = IS_ROOT and all(shutil.which(t) for t in ("ip", "tc", "nsenter", "unshare", "munged"))
        if _works:
            probe = f"crprobe{os.getpid()}"
            _works = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return _works


_serial = 0


@pytest.fixture
def make_net_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., NetTestCluster]]:
    """``make(nodes=2, **config)``: a fresh lab and cluster, destroyed after the test."""
    if not netns_works():
        pytest.skip("needs root, iproute2 (ip, tc), util-linux (nsenter, unshare) and munge")
    made: list[NetTestCluster] = []

    def make(nodes: int = 2, cpus: int = 4, **extra: Any) -> NetTestCluster:
        global _serial
        _serial += 1
        base = str(tmp_path_factory.mktemp("netcluster"))
        os.chmod(base, 0o755)
        open_ancestors(base)
        c = NetTestCluster(base, f"t{os.getpid() % 10000}{_serial % 100}", nodes, cpus, **extra)
        c.create()
        made.append(c)
        return c

    yield make
    for c in made:
        c.lab.heal_all()
        c.destroy()
