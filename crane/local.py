"""A one-machine cluster: a controller and N agents as background processes
with a generated config. Used by ``crane local`` and by the tests.

The cluster's directory is trusted by root's daemons (config, agent keys,
pids, logs), so it must be one nobody else can change: owned by the caller,
writable by no one else, not a symlink, and reached through directories that
only root or the caller can change (others may write into one only if it is
sticky, like /tmp). Files in it are written through fresh temp files renamed
into place, never by following a name that is already there; agent keys are
generated fresh by every start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import zlib
from typing import Any

import yaml

from crane.core.states import NodeState, PreemptMode
from crane.polling import pid_alive

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOG = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
OWN_ENTRIES = ("config.yaml", "pids.json", "keys", "log")


class UnsafeDirError(RuntimeError):
    """A directory or file on the cluster's path that someone else could change."""


class ControllerError(RuntimeError):
    """A request to the local cluster's controller failed (one line)."""


# ------------------------------------------------------------ finding our daemons (pure)

#: how a daemon is started: ``python -m MODULE`` or its console script
DAEMON_MODULES = {"crane.controller": "cranectld", "crane.agent.main": "craned"}
DAEMON_SCRIPTS = ("cranectld", "craned")


def _opt(argv: list[str], short: str, long: str) -> str | None:
    """The value of ``-C X``, ``-CX``, ``--config X`` or ``--config=X`` (argparse's forms)."""
    for i, a in enumerate(argv):
        if a in (short, long):
            return argv[i + 1] if i + 1 < len(argv) else None
        if a.startswith(long + "="):
            return a[len(long) + 1 :]
        if a.startswith(short) and len(a) > len(short) and not a.startswith("--"):
            return a[len(short) :]
    return None


def daemon_of(argv: list[str]) -> tuple[str, str | None] | None:
    """``(key, config argument)`` of a cranectld/craned command line (key
    ``cranectld`` or ``craned-<node>``), None for any other process."""
    kind = None
    for i, a in enumerate(argv[:-1]):
        if a == "-m" and argv[i + 1] in DAEMON_MODULES:
            kind = DAEMON_MODULES[argv[i + 1]]
            break
    if kind is None:
        for a in argv[:2]:  # the script itself, or the interpreter running it
            if os.path.basename(a) in DAEMON_SCRIPTS:
                kind = os.path.basename(a)
                break
    if kind is None:
        return None
    if kind == "craned":
        node = _opt(argv, "-n", "--node")
        if not node:
            return None
        kind = f"craned-{node}"
    return kind, _opt(argv, "-C", "--config")


def _proc_argv(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]] if raw else None


def _proc_uids(pid: int) -> set[int] | None:
    """The real, effective, saved and filesystem uids of ``pid`` (as a set)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return {int(x) for x in line.split()[1:]}
    except (OSError, ValueError):
        return None
    return None


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def _port_inodes(port: int) -> set[int]:
    """Inodes of TCP sockets whose local or remote port is ``port`` (/proc/net/tcp, tcp6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10:
                continue
            ports = {int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16)}
            if port in ports and cols[9].isdigit() and int(cols[9]):
                out.add(int(cols[9]))
    return out


def _unix_inodes(path: str) -> set[int]:
    """Inodes of the unix sockets bound to ``path`` (/proc/net/unix)."""
    out = set()
    try:
        with open("/proc/net/unix") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        cols = line.split()
        if len(cols) >= 8 and cols[7] == path and cols[6].isdigit():
            out.add(int(cols[6]))
    return out


def _proc_config(pid: int, given: str | None) -> str | None:
    """The real path of the config a daemon runs with: its ``-C`` (relative to
    its cwd), else its ``$CRANE_CONF``, else the default path."""
    path = given
    if path is None:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            return None
        found = [e[len(b"CRANE_CONF=") :] for e in env if e.startswith(b"CRANE_CONF=")]
        from crane.config import DEFAULT_PATH

        path = os.fsdecode(found[-1]) if found and found[-1] else DEFAULT_PATH
    if not os.path.isabs(path):
        try:
            path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
        except OSError:
            return None
    return os.path.realpath(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_dir() -> str:
    """Root: a root-owned runtime directory. Others: their own runtime
    directory ($XDG_RUNTIME_DIR, if it really is theirs and private), else
    /tmp/crane-local-<uid> (checked like any other directory when used)."""
    uid = os.geteuid()
    if uid == 0:
        return "/run/crane-local" if os.path.isdir("/run") else "/var/lib/crane-local"
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        try:
            st = os.lstat(xdg)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077:
            return os.path.join(xdg, "crane-local")
    return f"/tmp/crane-local-{uid}"


def cluster_dir_mode(uid: int) -> int:
    """Root's cluster: others traverse to the CLI socket and config.yaml (0711).
    A plain user's: only that user (its agents run every job as that user)."""
    return 0o711 if uid == 0 else 0o700


# ------------------------------------------------------------ safe paths (pure)


def dir_problem(st: os.stat_result, uid: int, own: bool) -> str | None:
    """Why a directory (its lstat) is not safe for ``uid`` to trust, or None.

    ``own``: one of the cluster's own directories (the caller's, writable by
    no one else). Otherwise a directory on the way there: root's or the
    caller's, and writable by others only if sticky."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if own and st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by you (uid {uid})"
    if not own and st.st_uid not in (0, uid):
        return f"is owned by uid {st.st_uid}, not by root or you (uid {uid})"
    if st.st_mode & 0o022 and (own or not st.st_mode & stat.S_ISVTX):
        return "is writable by group or others"
    return None


def prefixes(path: str) -> list[str]:
    """Every directory down to ``path`` (absolute, normalized): /a/b -> /, /a, /a/b."""
    out = [path]
    while (parent := os.path.dirname(out[-1])) != out[-1]:
        out.append(parent)
    return out[::-1]


# ------------------------------------------------------------ safe paths (checks)


def check_ancestors(path: str) -> None:
    """Every existing directory above ``path``, as written and as resolved,
    must be safe (see :func:`dir_problem`); a symlink on the way must be
    root's or the caller's (its target is checked as resolved)."""
    uid = os.geteuid()
    parent = os.path.dirname(os.path.abspath(path))
    for p in prefixes(parent) + prefixes(os.path.realpath(parent)):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue  # created (and checked) by secure_dir
        if stat.S_ISLNK(st.st_mode) and st.st_uid in (0, uid):
            continue
        problem = dir_problem(st, uid, own=False)
        if stat.S_ISLNK(st.st_mode):
            problem = f"is a symlink owned by uid {st.st_uid}"
        if problem:
            raise UnsafeDirError(f"refusing {path}: {p} {problem}")


def secure_dir(path: str, mode: int | None = None, create: bool = False) -> None:
    """Check ``path`` is a directory only the caller can change (and every
    directory above it, see :func:`check_ancestors`); with ``create``, make
    it and missing parents with ``mode``; with ``mode``, set its mode.
    Raises UnsafeDirError, or FileNotFoundError when missing and not created."""
    path = os.path.abspath(path)
    uid = os.geteuid()
    check_ancestors(path)
    if create:
        for p in prefixes(path):
            if os.path.lexists(p):
                continue
            try:
                os.mkdir(p, 0o700)
            except FileExistsError:
                pass  # someone was faster: checked below like any existing one
            else:
                os.chmod(p, mode if mode is not None else 0o700)  # mkdir's mode is umasked
            if p != path:
                problem = dir_problem(os.lstat(p), uid, own=False)
                if problem:
                    raise UnsafeDirError(f"refusing {path}: {p} {problem}")
    problem = dir_problem(os.lstat(path), uid, own=True)
    if problem:
        raise UnsafeDirError(f"refusing {path}: it {problem}")
    check_ancestors(path)  # again: nothing above can change any more once this holds
    if mode is not None and stat.S_IMODE(os.lstat(path).st_mode) != mode:
        os.chmod(path, mode)


def check_entries(base: str, names: tuple[str, ...] = OWN_ENTRIES) -> None:
    """Refuse a cluster directory where one of our names is a symlink or
    belongs to someone else (planted before the directory became ours)."""
    uid = os.geteuid()
    for name in names:
        p = os.path.join(base, name)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeDirError(f"refusing {base}: {p} is a symlink")
        if st.st_uid != uid:
            raise UnsafeDirError(f"refusing {base}: {p} is owned by uid {st.st_uid}, not by you (uid {uid})")


def write_new(path: str, data: bytes, mode: int) -> None:
    """Replace ``path`` (in a directory already checked) with ``data``: a new
    temp file (O_EXCL|O_NOFOLLOW) renamed over it, so whatever was there (a
    symlink included) is replaced, never followed or reused."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, _NEW, mode)
    try:
        os.fchmod(fd, mode)  # the umask applies to os.open
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _own_regular(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        raise UnsafeDirError(f"refusing {path}: not a regular file of yours (uid {st.st_uid}, {st.st_nlink} links)")


def open_log(path: str) -> int:
    """Open (append, create 0600) a log file in a checked directory: never
    through a symlink, never someone else's file or a hard link to one."""
    try:
        fd = os.open(path, _LOG, 0o600)
    except OSError as e:
        raise UnsafeDirError(f"refusing {path}: {e.strerror}") from None
    _own_regular(fd, path)
    os.fchmod(fd, 0o600)
    return fd


def read_own(path: str) -> str | None:
    """The text of ``path`` if it is the caller's own regular file, else None."""
    try:
        fd = os.open(path, _READ)
    except OSError:
        return None
    try:
        _own_regular(fd, path)
    except UnsafeDirError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 20).decode("utf-8", "replace")


def make_config(base: str, nodes: int = 4, cpus: int = 4, memory: str = "8G",
                gres: dict[str, list[dict[str, Any]]] | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """``gres``: node name -> that node's ``gres:`` list (GPUs), e.g.
    ``{"crane03": [{"name": "gpu", "type": "a100", "count": 2}]}``."""
    names = [f"crane{i:02d}" for i in range(1, nodes + 1)]
    half = max(1, nodes // 2)
    parts = [{"name": "CPU", "nodes": ",".join(names[:half]), "priority": 5}]
    if nodes > half:
        parts.append({"name": "GPU", "nodes": ",".join(names[half:])})
    cfg: dict[str, Any] = {
        # unique per base dir: two clusters started by one process must not share
        # cgroup scopes (crane/<cluster>/<node>), or an agent adopts the other's steps
        "ClusterName": f"local{os.getpid() % 100000}-{zlib.crc32(os.path.abspath(base).encode()):08x}",
        "ControlMachine": "127.0.0.1",
        "CraneCtldListenPort": free_port(),
        "CraneCtldCliPort": free_port(),
        "CraneBaseDir": base,
        "Nodes": [{"name": n, "cpu": cpus, "memory": memory, **({"gres": gres[n]} if gres and n in gres else {})}
                  for n in names],  # fmt: skip
        "Partitions": parts,
        "DefaultPartition": "CPU",
        "Preempt": {"PreemptType": "qos", "PreemptMode": PreemptMode.CANCEL.value},
        "KillWait": 0,
        "AutoCreateUsers": True,
        "HeartbeatInterval": 1,
        "CranedTimeout": 30,
        "Auth": {"Type": "local", "CurveKeyDir": "keys"},
        # a local cluster runs on the user's own machine: sweeping a user's
        # processes after their last job would kill their shells and tools
        "SweepStrays": False,
    }
    cfg.update(extra)
    return cfg


class LocalCluster:
    def __init__(self, base: str) -> None:
        self.base = os.path.abspath(base)
        self.config_path = os.path.join(self.base, "config.yaml")
        self.pids_path = os.path.join(self.base, "pids.json")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ config

    def check_dir(self) -> bool:
        """False if the directory does not exist; UnsafeDirError if it is not
        one only the caller can change (nothing in it is trusted then)."""
        if not os.path.lexists(self.base):
            return False
        secure_dir(self.base)
        check_entries(self.base)
        return True

    def write_config(self, cfg: dict[str, Any]) -> None:
        """Create (or check) the directory, write config.yaml and fresh keys."""
        secure_dir(self.base, cluster_dir_mode(os.geteuid()), create=True)
        check_entries(self.base)
        # readable by everyone: users run CLIs against a root-run cluster with it
        write_new(self.config_path, yaml.safe_dump(cfg, sort_keys=False).encode(), 0o644)
        from crane.config import parse

        parsed = parse(cfg, self.config_path)
        if parsed.curve_key_dir:
            from crane import keys

            if os.path.dirname(os.path.abspath(parsed.curve_key_dir)) == self.base:
                keys.fresh(parsed.curve_key_dir, list(parsed.nodes))  # never trust keys found here
            else:
                keys.generate(parsed.curve_key_dir, list(parsed.nodes))

    def config(self) -> dict[str, Any]:
        with open(self.config_path) as f:
            return yaml.safe_load(f)  # type: ignore[no-any-return]

    def node_names(self) -> list[str]:
        from crane.config import parse

        return list(parse(self.config(), self.config_path).nodes)

    # ------------------------------------------------------------ processes

    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen[bytes]:
        logdir = os.path.join(self.base, "log")
        secure_dir(logdir, 0o700, create=True)
        fd = open_log(os.path.join(logdir, f"{key}.log"))  # daemons' logs may hold job scripts
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
        finally:
            os.close(fd)
        self.procs[key] = p
        self._save_pids()
        return p

    def _save_pids(self) -> None:
        pids = self.pids()
        pids.update({k: p.pid for k, p in self.procs.items()})
        write_new(self.pids_path, json.dumps(pids).encode(), 0o600)

    def pids(self) -> dict[str, int]:
        """The daemons recorded in pids.json: only from a checked directory,
        only from the caller's own file (UnsafeDirError otherwise)."""
        if not self.check_dir():
            return {}
        text = read_own(self.pids_path)
        try:
            return {str(k): int(v) for k, v in json.loads(text).items()} if text else {}
        except (ValueError, AttributeError, TypeError):
            return {}

    def is_ours(self, pid: int) -> bool:
        """Whether ``pid`` still is a daemon of this cluster (and not a process
        that got a recorded pid after ours died): a cranectld/craned of the
        caller's uid whose config is this cluster's config.yaml."""
        return self._key_of(pid) is not None

    def _key_of(self, pid: int) -> str | None:
        if not os.path.isdir("/proc"):
            return "?" if pid_alive(pid) else None
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
                return None  # never another user's process
        except OSError:
            return None
        if _proc_uids(pid) != {os.geteuid()}:
            return None  # /proc/PID is root's for any non-dumpable or setuid process: its real uid tells
        argv = _proc_argv(pid)
        found = daemon_of(argv) if argv else None
        if found is None:
            return None
        key, given = found
        conf = _proc_config(pid, given)
        if conf is not None and conf == os.path.realpath(self.config_path):
            return key
        if conf is not None and (given is None or os.path.isabs(given)):
            return None  # another config, named in full or by $CRANE_CONF: another cluster's daemon
        # a relative config (the daemons chdir to /, so it cannot be resolved
        # any more) or none: ours if it holds one of this cluster's sockets
        return key if _socket_inodes(pid) & self._our_sockets() else None

    def _our_sockets(self) -> set[int]:
        """Inodes of the sockets on this cluster's agent port (the controller
        listening, the agents connected) and of its controller's ipc socket."""
        try:
            port = int(self.config()["CraneCtldListenPort"])
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            return set()
        return _port_inodes(port) | _unix_inodes(os.path.join(self.base, "cranectld.sock"))

    def find_daemons(self) -> dict[str, int]:
        """Every live cranectld/craned of the caller's uid running with this
        cluster's config (started by ``up`` or restarted by hand), by key;
        a second daemon with the same key is ``key#pid``."""
        out: dict[str, int] = {}
        if not os.path.isdir("/proc"):
            return out
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            pid = int(entry)
            key = self._key_of(pid)
            if key is not None and pid_alive(pid):
                out[key if key not in out else f"{key}#{pid}"] = pid
        return out

    def running(self) -> dict[str, int]:
        """The cluster's live daemons: recorded (pids.json, still ours) or
        found by their config path. UnsafeDirError for an unsafe directory."""
        out: dict[str, int] = {}
        for key, pid in self.pids().items():
            if pid_alive(pid) and self.is_ours(pid):
                out[key] = pid
        for key, p in self.procs.items():
            if p.poll() is None:
                out[key] = p.pid
        for key, pid in self.find_daemons().items():
            if pid not in out.values():
                out[key if key not in out else f"{key}#{pid}"] = pid
        return out

    def start_controller(self) -> subprocess.Popen[bytes]:
        return self._spawn("cranectld", [sys.executable, "-m", "crane.controller", "-C", self.config_path])

    def start_agent(self, node: str) -> subprocess.Popen[bytes]:
        return self._spawn(f"craned-{node}", [sys.executable, "-m", "crane.agent.main", "-C", self.config_path, "-n", node])

    def up(self, timeout: float = 60.0) -> None:
        self.start_controller()
        for n in self.node_names():
            self.start_agent(n)
        self.wait_nodes_up(timeout)

    def request(self, msg: Any, timeout: float = 5.0) -> dict[str, Any]:
        """One request to this cluster's controller; ControllerError if it fails."""
        from crane.config import ConfigError, load

        try:
            cfg = load(self.config_path)
        except ConfigError as e:
            raise ControllerError(str(e)) from None
        return self.request_at(cfg.cli_address, msg, timeout, munge=cfg.auth_type == "munge")

    def request_at(self, address: str, msg: Any, timeout: float = 5.0, munge: bool = False) -> dict[str, Any]:
        """One request to the controller at ``address``; ControllerError if it fails."""
        from crane.client import Client, Unreachable
        from crane.core import messages as m

        try:
            client = Client(address, timeout, munge=munge)
            try:
                reply = client.request(msg)
            finally:
                client.close()
        except Unreachable as e:
            raise ControllerError(f"cannot reach the controller: {e}") from None
        except OSError as e:
            raise ControllerError(f"authentication failed: {e}") from None
        if isinstance(reply, m.Error):
            raise ControllerError(reply.message)
        if not isinstance(reply, m.Ok):
            raise ControllerError(f"unexpected reply {reply.TYPE}")
        return reply.data  # type: ignore[no-any-return]

    def nodes_state(self) -> dict[str, str]:
        from crane.core import messages as m

        data = self.request(m.QueryNodes(), timeout=2)
        return {n["name"]: n["state"] for n in data["nodes"]}

    def wait_nodes_up(self, timeout: float = 30.0, nodes: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        want = nodes or self.node_names()
        last: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                st = self.nodes_state()
                if all(st.get(n) not in (None, NodeState.DOWN) for n in want):
                    return
                last = st
            except ControllerError as e:
                last = str(e)
            time.sleep(0.05)  # polling a condition with a deadline
        raise TimeoutError(f"nodes not up after {timeout}s: {last}; logs in {self.base}/log")

    def _check_alive(self) -> None:
        p = self.procs.get("cranectld")
        if p is not None and p.poll() is not None:
            with open(os.path.join(self.base, "log", "cranectld.log")) as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"cranectld exited with {p.returncode}:\n{tail}")

    def stop(self, key: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if key in self.procs:
            self._stop_pid(key, self.procs[key].pid, sig, timeout)
            return
        pid = self.pids().get(key)
        if pid is not None:
            self._stop_pid(key, pid, sig, timeout)

    def _stop_pid(self, key: str, pid: int, sig: int = signal.SIGTERM, timeout: float = 15.0) -> bool:
        """Stop one daemon: ``sig``, then SIGKILL after ``timeout``. A pid not
        started by this object is signalled only while it still is one of
        this cluster's daemons (through a pidfd where there is one, so a pid
        reused meanwhile is never hit). True if it was running."""
        p = self.procs.get(key)
        if p is not None and p.pid == pid:
            if p.poll() is not None:
                del self.procs[key]
                return False
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            del self.procs[key]
            return True
        fd = None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except (OSError, AttributeError):
            fd = None

        def send(s: int) -> bool:
            if not self.is_ours(pid):
                return False  # a stale record: that pid is someone else's process now
            try:
                if fd is not None:
                    signal.pidfd_send_signal(fd, s)
                else:
                    os.kill(pid, s)
            except ProcessLookupError:
                return False
            return True

        try:
            if not send(sig):
                return False
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the process's end with a deadline
            if pid_alive(pid):
                send(signal.SIGKILL)
            return True
        finally:
            if fd is not None:
                os.close(fd)

    def stop_all(self, timeout: float = 15.0) -> list[tuple[str, int]]:
        """Stop every daemon of this cluster (agents first), recorded or found
        by config path; forget the records. What was stopped, as (key, pid)."""
        running = self.running()
        stopped = []
        for key in sorted(running, key=lambda k: (k.startswith("cranectld"), k)):  # agents first
            if self._stop_pid(key, running[key], timeout=timeout):
                stopped.append((key, running[key]))
        self.procs.clear()
        try:
            os.unlink(self.pids_path)
        except OSError:
            pass
        return stopped

    def down(self) -> list[tuple[str, int]]:
        """Cancel every job, stop every daemon of this cluster; what was stopped."""
        from crane.core import messages as m
        from crane.core.states import CANCELLABLE

        try:
            res = self.request(m.Cancel(filters={"states": sorted(CANCELLABLE)}, force=True), timeout=5)
            jobs = [c["job_id"] for c in res["cancelled"]]
            if jobs:
                self.request(m.WaitJobs(jobs), timeout=20)
        except (ControllerError, KeyError, TypeError):
            pass
        stopped = self.stop_all()
        self._remove_empty_cgroups()
        return stopped

    def restart(self, timeout: float = 60.0) -> list[tuple[str, int]]:
        """Stop every daemon of this cluster (jobs are not cancelled), write
        fresh keys and start the controller and the agents again."""
        stopped = self.stop_all()
        self.write_config(self.config())
        self.up(timeout)
        return stopped

    def _remove_empty_cgroups(self) -> None:
        """Drop this cluster's (now empty) cgroup scope: crane/<ClusterName>."""
        if os.geteuid() != 0:
            return
        try:
            from crane.agent.cgroup import hierarchy_roots

            scope = os.path.join("crane", str(self.config()["ClusterName"]))
            roots = hierarchy_roots()
        except (OSError, KeyError, ValueError):
            return
        for root in roots:
            top = os.path.join(root, scope)
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(dirpath)  # only empty cgroups can go; others stay
                except OSError:
                    pass
