"""Many hosts on one machine: each host a Linux network namespace with its
own address on a bridge, and the faults a real network has.

    switch namespace  <tag>-sw : bridge br0, one veth end per host (h0, h1, ...)
    host namespaces   <tag>-ctl, <tag>-login, <tag>-c01 ... : eth0 10.77.0.X/24, lo

Needs root (``ip netns``, ``tc``). Nothing outside the lab's namespaces is
touched: the root namespace keeps its interfaces and routes, and only
addresses inside the lab (and each host's loopback) are used.

A host's processes run through :meth:`Lab.argv`: ``nsenter --net`` (not
``ip netns exec``, which remounts /sys and hides the cgroup hierarchy from
the agents) then a private mount namespace where the host's own munged
socket directory is bound over /run/munge: each host has its own munged,
all sharing one key, and libmunge's default socket is the host's.

Faults (this kernel has no netem):
  cut / heal       the host's cable: its switch port down (silent loss both ways)
  pull / plug      the veth taken off the bridge (the link stays up, nothing gets through)
  slow / fast      a token bucket (tbf) on both ends of the host's link: a slow
                   link that delays and drops what exceeds its queue
  block / unblock  blackhole routes between two hosts only (a partial partition)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from crane.local import LocalCluster, make_config

NETLAB_ROOT = "/run/crane-netlab"
SUBNET = "10.77.0"
MUNGE_SOCKET_DIR = "/run/munge"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r


@dataclass
class Host:
    name: str
    index: int  # its switch port h<index>

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index + 1}"


@dataclass
class Lab:
    """The namespaces, the bridge, the per-host munged; ``create`` then
    ``destroy`` (idempotent)."""

    tag: str
    host_names: list[str]
    hosts: dict[str, Host] = field(init=False)
    munged: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if len(self.tag) > 8 or not self.tag.isalnum():
            raise ValueError("tag: at most 8 letters or digits")
        self.hosts = {n: Host(n, i) for i, n in enumerate(self.host_names)}
        self.dir = os.path.join(NETLAB_ROOT, self.tag)

    # ---------------------------------------------------------------- names

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def port(self, host: str) -> str:
        return f"h{self.hosts[host].index}"

    def argv(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``host``: in its network namespace, with its munged."""
        mount = 'mount --bind "$0" ' + MUNGE_SOCKET_DIR + ' && exec "$@"'
        return ["nsenter", f"--net=/run/netns/{self.ns(host)}", "--", "unshare", "--mount", "--propagation", "private",
                "--", "sh", "-c", mount, self.munge_dir(host), *argv]  # fmt: skip

    def munge_dir(self, host: str) -> str:
        return os.path.join(self.dir, f"munge-{host}")

    # ---------------------------------------------------------------- life

    def create(self) -> None:
        self.destroy()
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        os.chmod(NETLAB_ROOT, 0o755)
        os.chmod(self.dir, 0o755)
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for name in self.hosts:
            ns, port = self.ns(name), self.port(name)
            sh("ip", "netns", "add", ns)
            sh(
                "ip",
                "-n",
                self.switch,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self._start_munged()

    def destroy(self) -> None:
        for p in self.munged.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.munged.clear()
        for name in self.host_names:  # munged started by another process (python -m bench.netlab up)
            try:
                with open(os.path.join(self.munge_dir(name), "munged.pid")) as f:
                    pid = int(f.read().strip())
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "munged":
                        os.kill(pid, 15)
            except (OSError, ValueError):
                pass
        for name in self.host_names:
            sh("ip", "netns", "del", self.ns(name), check=False)
        sh("ip", "netns", "del", self.switch, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start_munged(self) -> None:
        if not shutil.which("munged"):
            return  # MUNGE not installed: CurveZMQ agents and local CLIs only
        key = os.path.join(self.dir, "munge.key")
        sh("mungekey", "--create", f"--keyfile={key}")
        shutil.chown(key, "munge", "munge")
        os.chmod(key, 0o400)
        for name in self.hosts:
            d = self.munge_dir(name)
            os.makedirs(d, mode=0o755, exist_ok=True)
            shutil.chown(d, "munge", "munge")
            self.munged[name] = subprocess.Popen(
                self.argv(name, ["runuser", "-u", "munge", "--", "munged", "-F", f"--key-file={key}",
                                 f"--socket={MUNGE_SOCKET_DIR}/munge.socket.2", f"--pid-file={d}/munged.pid",
                                 f"--seed-file={d}/munged.seed", f"--log-file={d}/munged.log"]),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        for name in self.hosts:
            sock = os.path.join(self.munge_dir(name), "munge.socket.2")
            while not os.path.exists(sock):
                if self.munged[name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"munged on {name} did not start (see {self.munge_dir(name)}/munged.log)"
                    )
                time.sleep(0.02)

    # ---------------------------------------------------------------- faults

    def cut(self, host: str) -> None:
        """Unplug ``host``'s cable: nothing in or out, silently."""
        sh("ip", "-n", self.switch, "link", "set", self.port(host), "down")

    def heal(self, host: str) -> None:
        sh("ip", "-n", self.switch, "link", "set", self.port(host), "up")
        deadline = time.monotonic() + 5
        while "LOWER_UP" not in sh("ip", "-n", self.switch, "link", "show", self.port(host)).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.port(host)} of {host} did not come up")
            time.sleep(0.01)

    def pull(self, host: str) -> None:
        """Take ``host``'s veth off the bridge (its link stays up)."""
        sh("ip", "-n", self.switch, "link", "set", self.port(host), "nomaster")

    def plug(self, host: str) -> None:
        sh("ip", "-n", self.switch, "link", "set", self.port(host), "master", "br0")

    def slow(
        self, host: str, rate: str = "200kbit", burst: str = "4kb", latency: str = "100ms"
    ) -> None:
        """A slow link that drops: a token bucket on both ends of ``host``'s
        link; what waits longer than ``latency`` in its queue is dropped."""
        for ns, dev in ((self.ns(host), "eth0"), (self.switch, self.port(host))):
            sh("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", burst,
               "latency", latency)  # fmt: skip

    def fast(self, host: str) -> None:
        for ns, dev in ((self.ns(host), "eth0"), (self.switch, self.port(host))):
            sh("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)

    def block(self, a: str, b: str) -> None:
        """``a`` and ``b`` no longer reach each other (others still reach both)."""
        sh("ip", "-n", self.ns(a), "route", "replace", "blackhole", f"{self.address(b)}/32")
        sh("ip", "-n", self.ns(b), "route", "replace", "blackhole", f"{self.address(a)}/32")

    def unblock(self, a: str, b: str) -> None:
        sh(
            "ip",
            "-n",
            self.ns(a),
            "route",
            "del",
            "blackhole",
            f"{self.address(b)}/32",
            check=False,
        )
        sh(
            "ip",
            "-n",
            self.ns(b),
            "route",
            "del",
            "blackhole",
            f"{self.address(a)}/32",
            check=False,
        )

    def heal_all(self) -> None:
        for h in self.hosts:
            self.heal(h)
            self.plug(h)
            self.fast(h)
            for o in self.hosts:
                if o < h:
                    self.unblock(h, o)

    def reachable(self, a: str, b: str) -> bool:
        """A TCP connection from ``a`` to a closed port of ``b`` is refused
        (not lost) within a second: the two reach each other."""
        probe = f"exec 3<>/dev/tcp/{self.address(b)}/9"
        r = sh(
            "nsenter",
            f"--net=/run/netns/{self.ns(a)}",
            "timeout",
            "1",
            "bash",
            "-c",
            probe,
            check=False,
        )
        return "refused" in r.stderr


# ---------------------------------------------------------------- a cluster on the lab

CONTROLLER, LOGIN = "ctl", "login"


class NetCluster(LocalCluster):
    """A Crane cluster on a :class:`Lab`: cranectld on host ``ctl``, one
    craned per compute host (named as its node), CLIs on host ``login``
    over TCP with MUNGE; agents reach the controller over TCP with CurveZMQ.
    The state directory is shared (one filesystem), as on a cluster with a
    shared /home; each daemon keeps to its own subdirectory."""

    def __init__(self, base: str, tag: str, nodes: int = 2, cpus: int = 4, **extra: Any) -> None:
        super().__init__(base)
        cfg = make_config(base, nodes, cpus, **extra)
        self.node_list = [n["name"] for n in cfg["Nodes"]]
        self.lab = Lab(tag, [CONTROLLER, LOGIN, *self.node_list])
        cfg["ControlMachine"] = self.lab.address(CONTROLLER)
        cfg["CraneCtldListenPort"], cfg["CraneCtldCliPort"] = (
            10011,
            10012,
        )  # each host has its own ports
        cfg["Auth"] = {"Type": "munge", "CurveKeyDir": "keys"}
        cfg["Partitions"] = [{"name": "CPU", "nodes": ",".join(self.node_list), "priority": 5}]
        cfg.update(extra)
        self.cfg = cfg
        self.admin_config = os.path.join(self.base, "admin.yaml")

    def create(self, timeout: float = 60.0) -> None:
        """The lab, the configuration, the daemons; torn down again if any fails."""
        try:
            self.lab.create()
            self.write_config(self.cfg)
            # the controller host's own admin: the always-bound ipc socket
            # (identified by the kernel), reachable from the test's namespace
            import yaml

            admin = dict(
                self.cfg,
                CliEndpoint="ipc://" + os.path.join(self.base, "cranectld.sock"),
                Auth={"Type": "local", "CurveKeyDir": "keys"},
            )
            with open(self.admin_config, "w") as f:
                yaml.safe_dump(admin, f, sort_keys=False)
            os.chmod(self.admin_config, 0o600)
            self.up(timeout)
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        try:
            self.down()
        finally:
            self.lab.destroy()

    def start_controller(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "crane.controller", "-C", self.config_path]
        return self._spawn("cranectld", self.lab.argv(CONTROLLER, argv))

    def start_agent(self, node: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "crane.agent.main", "-C", self.config_path, "-n", node]
        return self._spawn(f"craned-{node}", self.lab.argv(node, argv))

    def request(self, msg: Any, timeout: float = 5.0) -> dict[str, Any]:
        """As the controller host's root, over the ipc socket (the lab's faults
        never cut the test itself off)."""
        return self.request_at("ipc://" + os.path.join(self.base, "cranectld.sock"), msg, timeout)


# ---------------------------------------------------------------- python -m bench.netlab

USAGE = """usage: python -m bench.netlab COMMAND   (as root)
  up [--nodes N] [--tag T]      make the lab and start a cluster on it (default 3 nodes, tag lab)
  run [--tag T] HOST [--user U] -- CMD ...
                                run CMD on HOST (ctl, login, crane01, ...) with the cluster's config
  fault [--tag T] FAULT HOST [HOST2]
                                cut|heal|pull|plug|slow|fast HOST, block|unblock HOST HOST2, heal-all
  down [--tag T]                stop the cluster, remove the namespaces"""


def _cluster(tag: str) -> NetCluster:
    import yaml

    base = os.path.join(NETLAB_ROOT, f"{tag}.cluster")
    with open(os.path.join(base, "config.yaml")) as f:
        nodes = len(yaml.safe_load(f)["Nodes"])
    return NetCluster(base, tag, nodes)


def main(argv: list[str]) -> int:
    tag, nodes, user = "lab", 3, None
    args: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--tag":
            tag = next(it, tag)
        elif a == "--nodes":
            nodes = int(next(it, "3"))
        elif a == "--user":
            user = next(it, None)
        elif a == "--":
            args += ["--", *it]
        else:
            args.append(a)
    if os.geteuid() != 0 or not args:
        print(USAGE, file=sys.stderr)
        return 2
    cmd, rest = args[0], args[1:]
    if cmd == "up":
        base = os.path.join(NETLAB_ROOT, f"{tag}.cluster")
        os.makedirs(NETLAB_ROOT, mode=0o755, exist_ok=True)
        c = NetCluster(base, tag, nodes, SweepStrays=False)
        c.create()
        print(f"cluster up: controller {c.lab.address(CONTROLLER)}, login {c.lab.address(LOGIN)}, "
              f"nodes {', '.join(f'{n} {c.lab.address(n)}' for n in c.node_list)}")  # fmt: skip
        print("try: python -m bench.netlab run login --user $SUDO_USER -- cbatch --wrap 'hostname -I; sleep 60'")
        return 0
    c = _cluster(tag)
    if cmd == "down":
        c.destroy()
        return 0
    if cmd == "run" and rest:
        host, command = rest[0], [a for a in rest[1:] if a != "--"]
        if user:
            command = ["runuser", "-u", user, "--", *command]
        env = dict(os.environ, CRANE_CONF=c.config_path, PATH=f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}")
        return subprocess.run(c.lab.argv(host, command), env=env).returncode
    if cmd == "fault" and rest:
        fault, hosts = rest[0].replace("-", "_"), rest[1:]
        if fault not in ("cut", "heal", "pull", "plug", "slow", "fast", "block", "unblock", "heal_all"):
            print(USAGE, file=sys.stderr)
            return 2
        getattr(c.lab, fault)(*hosts)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
