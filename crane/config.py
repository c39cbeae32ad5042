"""YAML config → a typed, validated Config. Every error names its key, in one line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from crane.client_config import DEFAULT_PATH, ConfigError, find_path  # noqa: F401  (re-exported)
from crane.core.states import PreemptMode


@dataclass(slots=True, frozen=True)
class GpuDevice:
    index: int  # 0..n-1 on its node, in declaration order
    type: str  # "" when untyped
    path: str | None = None  # device file (DeviceFileList), None for a counted GPU


@dataclass(slots=True)
class NodeConf:
    name: str
    cpus: int
    memory: int  # bytes
    gpus: list[GpuDevice] = field(default_factory=list)
    outbox_max: int = 10_000  # MaxNodeOutbox (the same for every node)
    heartbeat: float = 2.0  # HeartbeatInterval (the same for every node)


@dataclass(slots=True)
class PartitionConf:
    name: str
    nodes: list[str]
    priority: int = 0
    grace_time: int = 0
    preempt_mode: str | None = None


@dataclass(slots=True)
class Config:
    path: str
    cluster: str = "crane"
    control_machine: str = "127.0.0.1"
    agent_port: int = 10011
    cli_port: int = 10012
    base_dir: str = "/var/lib/crane"
    db_path: str = "cranectld/crane.db"
    nodes: dict[str, NodeConf] = field(default_factory=dict)
    partitions: dict[str, PartitionConf] = field(default_factory=dict)
    default_partition: str = ""
    preempt_type: str = "none"
    preempt_mode: str = "OFF"
    preempt_exempt_time: int = 0
    kill_wait: float = 0.0
    auth_type: str = "local"
    curve_key_dir: str = ""  # CurveZMQ keys for the agent link; empty = no encryption
    cli_endpoint: str = ""  # ipc path or tcp://host:port; derived when empty
    agent_endpoint: str = ""
    craned_timeout: float = 30.0
    heartbeat_interval: float = 2.0
    epilog: str = ""
    prolog: str = ""
    auto_create_users: bool = False
    metrics_port: int = 0  # Prometheus /metrics on this port; 0 = off
    metrics_address: str = "127.0.0.1"
    cli_rate: float = 2000.0  # requests/s per non-root user before frames are dropped
    cli_burst: float = 5000.0
    craned_state_dir: str = "craned"
    log_dir: str = "log"
    # exhaustion bounds (root is exempt from the per-user ones; see crane/actors/frontend.py)
    max_job_count: int = 100_000  # active jobs in the whole cluster
    max_submit_jobs_per_user: int = 10_000  # active (pending, running, ...) jobs of one user
    max_waits_per_user: int = 64  # WaitJobs/WaitStep requests one user may have pending
    max_step_count: int = 40_000  # steps of one job (Slurm's MaxStepCount)
    max_array_size: int = 1001  # --array indices are 0..MaxArraySize-1 (Slurm's MaxArraySize)
    # messages the controller keeps for one unreachable agent (coalesced per
    # job); past it they are dropped and the node is DOWN (crane/actors/node.py)
    max_node_outbox: int = 10_000
    # after a user's last job on a host ends, the agent kills that user's
    # processes outside any job (crane/agent/sweep.py), except these users'
    sweep_strays: bool = True
    sweep_min_uid: int = 1000  # uids below it (system accounts) are never swept nor adopted
    exempt_users: list[str] = field(default_factory=list)

    def resolve(self, rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(self.base_dir, rel)

    @property
    def db_file(self) -> str:
        return self.resolve(self.db_path)

    @property
    def cli_ipc_address(self) -> str:
        """Always bound: local CLIs, identified by the kernel's peer credentials."""
        return "ipc://" + self.resolve("cranectld.sock")

    @property
    def cli_address(self) -> str:
        """Where CLIs connect: the ipc socket, or with MUNGE the TCP port."""
        if self.cli_endpoint:
            return self.cli_endpoint
        if self.auth_type == "local":
            return self.cli_ipc_address
        return f"tcp://{self.control_machine}:{self.cli_port}"

    @property
    def agent_address(self) -> str:
        return self.agent_endpoint or f"tcp://{self.control_machine}:{self.agent_port}"


_KEYS = {
    "ClusterName": ("cluster", str),
    "ControlMachine": ("control_machine", str),
    "CraneCtldListenPort": ("agent_port", int),
    "CraneCtldCliPort": ("cli_port", int),
    "CraneBaseDir": ("base_dir", str),
    "CraneCtldDbPath": ("db_path", str),
    "DefaultPartition": ("default_partition", str),
    "KillWait": ("kill_wait", float),
    "CliEndpoint": ("cli_endpoint", str),
    "AgentEndpoint": ("agent_endpoint", str),
    "CranedTimeout": ("craned_timeout", float),
    "HeartbeatInterval": ("heartbeat_interval", float),
    "Epilog": ("epilog", str),
    "Prolog": ("prolog", str),
    "AutoCreateUsers": ("auto_create_users", bool),
    "CranedStateDir": ("craned_state_dir", str),
    "LogDir": ("log_dir", str),
    "PreemptExemptTime": ("preempt_exempt_time", int),
    "CliRateLimit": ("cli_rate", float),
    "MetricsPort": ("metrics_port", int),
    "MetricsAddress": ("metrics_address", str),
    "CliRateBurst": ("cli_burst", float),
    "MaxJobCount": ("max_job_count", int),
    "MaxSubmitJobsPerUser": ("max_submit_jobs_per_user", int),
    "MaxWaitsPerUser": ("max_waits_per_user", int),
    "MaxStepCount": ("max_step_count", int),
    "MaxArraySize": ("max_array_size", int),
    "MaxNodeOutbox": ("max_node_outbox", int),
    "SweepStrays": ("sweep_strays", bool),
    "SweepMinUid": ("sweep_min_uid", int),
}
_AT_LEAST_ONE = ("MaxJobCount", "MaxSubmitJobsPerUser", "MaxWaitsPerUser", "MaxStepCount", "MaxArraySize",
                 "MaxNodeOutbox")  # fmt: skip
_STRUCT_KEYS = {"Nodes", "Partitions", "Preempt", "Auth", "ExemptUsers"}
PREEMPT_TYPES = ("none", "qos", "partition")
PREEMPT_MODES = tuple(m.value for m in PreemptMode)  # OFF, CANCEL, REQUEUE, SUSPEND


def unknown_key(where: str, key: Any, known: Any) -> ConfigError:
    """``KillWiat: unknown key (did you mean KillWait?)``: the nearest known
    key (difflib, case-insensitive) when one is close enough."""
    import difflib

    names = [str(k) for k in known]
    by_lower = {n.lower(): n for n in names}
    near = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f" (did you mean {by_lower[near[0]]}?)" if near else ""
    return ConfigError(f"{where}: unknown key{hint}")


def check_entry(where: str, entry: Any, required: tuple[str, ...], known: tuple[str, ...], needs: str) -> None:
    """One list entry (a node, a partition, a GRES): a map holding every key
    of ``required`` and no key outside ``known``."""
    if not isinstance(entry, dict) or any(k not in entry for k in required):
        raise ConfigError(f"{where}: needs {needs}")
    for k in entry:
        if k not in known:
            raise unknown_key(f"{where}.{k}", k, known)


def _typed(key: str, value: Any, typ: type) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is float and isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if typ is str and isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")


def _user_names(key: str, value: Any) -> list[str]:
    """A list of user names (printable, no spaces); absent or null is empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of user names, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not name or not name.isprintable() or name.strip() != name or " " in name:
            raise ConfigError(f"{key}: not a user name: {name!r}")
    return list(value)


GRES_NAMES = ("gpu",)
MAX_GPUS_PER_NODE = 1024


def parse_gres(key: str, value: Any) -> list[GpuDevice]:
    """A node's ``gres:`` list -> its GPUs, indexed 0..n-1 in declaration
    order. Each entry: ``{name: gpu, type: T (optional), count: N}`` or
    ``{name: gpu, type: T, DeviceFileList: [/dev/..]}`` (both: they must agree)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of {{name, type, count}} entries, got {value!r}")
    gpus: list[GpuDevice] = []
    seen_paths: set[str] = set()
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        check_entry(where, entry, ("name",), ("name", "type", "count", "DeviceFileList"),
                    "name and count or DeviceFileList")  # fmt: skip
        name = entry["name"]
        if name not in GRES_NAMES:
            raise ConfigError(f"{where}.name: unknown generic resource {name!r} (known: {', '.join(GRES_NAMES)})")
        typ = _typed(f"{where}.type", entry.get("type", ""), str) if entry.get("type") is not None else ""
        if typ and (not typ.isprintable() or any(c in typ for c in " :,=")):
            raise ConfigError(f"{where}.type: not a GPU type name: {typ!r}")
        paths: list[str] | None = None
        if entry.get("DeviceFileList") is not None:
            raw = entry["DeviceFileList"]
            if not isinstance(raw, list) or not raw:
                raise ConfigError(f"{where}.DeviceFileList: expected a non-empty list of absolute paths")
            for p in raw:
                if not isinstance(p, str) or not os.path.isabs(p) or not p.isprintable():
                    raise ConfigError(f"{where}.DeviceFileList: not an absolute path: {p!r}")
                if p in seen_paths:
                    raise ConfigError(f"{where}.DeviceFileList: {p} listed twice")
                seen_paths.add(p)
            paths = list(raw)
        if "count" in entry:
            count = _typed(f"{where}.count", entry["count"], int)
            if count < 1:
                raise ConfigError(f"{where}.count: must be at least 1")
            if paths is not None and count != len(paths):
                raise ConfigError(f"{where}.count: {count} disagrees with DeviceFileList ({len(paths)} files)")
        elif paths is not None:
            count = len(paths)
        else:
            raise ConfigError(f"{where}: needs count or DeviceFileList")
        if len(gpus) + count > MAX_GPUS_PER_NODE:
            raise ConfigError(f"{where}.count: more than {MAX_GPUS_PER_NODE} GPUs on one node")
        for k in range(count):
            gpus.append(GpuDevice(len(gpus), typ, paths[k] if paths is not None else None))
    return gpus


def load(explicit: str | None = None) -> Config:
    import yaml

    path = find_path(explicit)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path}{where}: not valid YAML") from None
    return parse(raw, path)


def parse(raw: Any, path: str = "<config>") -> Config:
    from crane.core.ids import expand_nodes, parse_memory

    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping")
    cfg = Config(path=path)
    for key, value in raw.items():
        if key in _KEYS:
            attr, typ = _KEYS[key]
            setattr(cfg, attr, _typed(key, value, typ))
        elif key not in _STRUCT_KEYS:
            raise unknown_key(str(key), key, [*_KEYS, *sorted(_STRUCT_KEYS)])
    for key in _AT_LEAST_ONE:
        if getattr(cfg, _KEYS[key][0]) < 1:
            raise ConfigError(f"{key}: must be at least 1")
    cfg.exempt_users = _user_names("ExemptUsers", raw.get("ExemptUsers"))
    if not os.path.isabs(cfg.base_dir):
        cfg.base_dir = os.path.abspath(os.path.join(os.path.dirname(path), cfg.base_dir))

    for i, item in enumerate(raw.get("Nodes") or []):
        where = f"Nodes[{i}]"
        check_entry(where, item, ("name",), ("name", "cpu", "memory", "gres"), "name, cpu and memory")
        try:
            names = expand_nodes(str(item["name"]))
        except ValueError as e:
            raise ConfigError(f"{where}.name: {e}") from None
        cpus = _typed(f"{where}.cpu", item.get("cpu", 1), int)
        try:
            mem = parse_memory(str(item.get("memory", "1G")))
        except ValueError as e:
            raise ConfigError(f"{where}.memory: {e}") from None
        if cpus < 1:
            raise ConfigError(f"{where}.cpu: must be at least 1")
        gpus = parse_gres(f"{where}.gres", item.get("gres"))
        for n in names:
            if n in cfg.nodes:
                raise ConfigError(f"{where}.name: node {n} defined twice")
            cfg.nodes[n] = NodeConf(n, cpus, mem, list(gpus), cfg.max_node_outbox, cfg.heartbeat_interval)

    for i, item in enumerate(raw.get("Partitions") or []):
        where = f"Partitions[{i}]"
        check_entry(where, item, ("name", "nodes"), ("name", "nodes", "priority", "GraceTime", "PreemptMode"),
                    "name and nodes")  # fmt: skip
        try:
            members = expand_nodes(str(item["nodes"]))
        except ValueError as e:
            raise ConfigError(f"{where}.nodes: {e}") from None
        for n in members:
            if n not in cfg.nodes:
                raise ConfigError(f"{where}.nodes: unknown node {n}")
        mode = item.get("PreemptMode")
        if mode is not None and str(mode).upper() not in PREEMPT_MODES:
            raise ConfigError(f"{where}.PreemptMode: must be one of {', '.join(PREEMPT_MODES)}")
        p = PartitionConf(
            str(item["name"]),
            members,
            _typed(f"{where}.priority", item.get("priority", 0), int),
            _typed(f"{where}.GraceTime", item.get("GraceTime", 0), int),
            str(mode).upper() if mode is not None else None,
        )
        cfg.partitions[p.name] = p
    if not cfg.nodes:
        raise ConfigError("Nodes: at least one node is required")
    if not cfg.partitions:
        cfg.partitions["default"] = PartitionConf("default", list(cfg.nodes))
    if not cfg.default_partition:
        cfg.default_partition = next(iter(cfg.partitions))
    elif cfg.default_partition not in cfg.partitions:
        raise ConfigError(f"DefaultPartition: unknown partition {cfg.default_partition}")

    pre = raw.get("Preempt") or {}
    if not isinstance(pre, dict):
        raise ConfigError("Preempt: expected a mapping")
    for k in pre:
        if k not in ("PreemptType", "PreemptMode", "PreemptExemptTime"):
            raise unknown_key(f"Preempt.{k}", k, ("PreemptType", "PreemptMode", "PreemptExemptTime"))
    cfg.preempt_type = str(pre.get("PreemptType", "none")).lower()
    if cfg.preempt_type not in PREEMPT_TYPES:
        raise ConfigError("Preempt.PreemptType: must be one of none, qos, partition")
    default_mode = PreemptMode.OFF if cfg.preempt_type == "none" else PreemptMode.CANCEL
    cfg.preempt_mode = str(pre.get("PreemptMode", default_mode)).upper()
    if cfg.preempt_mode not in PREEMPT_MODES:
        raise ConfigError("Preempt.PreemptMode: must be one of OFF, CANCEL, REQUEUE, SUSPEND")
    if cfg.preempt_type == "none" and cfg.preempt_mode != "OFF":
        raise ConfigError(
            f"Preempt.PreemptMode: {cfg.preempt_mode} needs a PreemptType other than none"
        )
    if cfg.preempt_type != "none" and cfg.preempt_mode == "OFF":
        raise ConfigError(f"Preempt.PreemptMode: OFF contradicts PreemptType {cfg.preempt_type}")
    if "PreemptExemptTime" in pre:
        cfg.preempt_exempt_time = _typed(
            "Preempt.PreemptExemptTime", pre["PreemptExemptTime"], int
        )

    auth = raw.get("Auth") or {}
    if not isinstance(auth, dict):
        raise ConfigError("Auth: expected a mapping")
    for k in auth:
        if k not in ("Type", "CurveKeyDir"):
            raise unknown_key(f"Auth.{k}", k, ("Type", "CurveKeyDir"))
    if auth.get("CurveKeyDir"):
        cfg.curve_key_dir = cfg.resolve(_typed("Auth.CurveKeyDir", auth["CurveKeyDir"], str))
    cfg.auth_type = str(auth.get("Type", "local")).lower()
    if cfg.auth_type not in ("local", "munge"):
        raise ConfigError("Auth.Type: must be local or munge")
    return cfg
