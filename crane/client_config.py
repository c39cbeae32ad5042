"""What a command needs of the config, without PyYAML on every start.

Commands need three settings: where the controller answers them, how they
authenticate, where the Curve keys are. Parsing the YAML costs ~15 ms of a
command's start (PyYAML's import, crane.config's dataclasses), so whoever
owns the config file and parses it in full (cranectld and craned at start,
a command run by that owner) leaves those settings next to it, in
``<config>.cache``: msgpack, made private to the config's owner except for
reading, stamped with the config's device, inode, size, mtime and ctime.

A command uses the cache only when it is as trustworthy as the config
itself: owned by the config's owner, writable by nobody else, not a link,
and stamped with exactly the config as it is now (any change of the config,
even a ``touch``, changes its ctime). Otherwise it parses the YAML as
before, and the cache is rewritten when that command's user owns the
config. Either way the command sees the same settings.
"""

from __future__ import annotations

import os

import msgpack

DEFAULT_PATH = "/etc/crane/config.yaml"
FORMAT = 1  # of the cache file; with crane's version, a new release ignores an old cache
MAX_CACHE = 64 * 1024

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from crane.config import Config


class ConfigError(ValueError):
    """A config that cannot be used; the text names the key, in one line."""


class ClientConfig:
    """The settings a command uses (the same names as crane.config.Config's)."""

    __slots__ = ("path", "cli_address", "auth_type", "curve_key_dir")

    def __init__(self, path: str, cli_address: str, auth_type: str, curve_key_dir: str) -> None:
        self.path = path
        self.cli_address = cli_address
        self.auth_type = auth_type
        self.curve_key_dir = curve_key_dir


def find_path(explicit: str | None) -> str:
    return explicit or os.environ.get("CRANE_CONF") or DEFAULT_PATH


def cache_path(config_path: str) -> str:
    return config_path + ".cache"


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _version() -> str:
    from crane import __version__

    return __version__


def read_cache(path: str) -> ClientConfig | None:
    """The cached settings of the config at ``path``, or None when there is
    no cache this process may trust for the config as it is now."""
    try:
        st = os.stat(path)
        fd = os.open(cache_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        cst = os.fstat(fd)
        if cst.st_uid != st.st_uid or cst.st_mode & 0o022 or cst.st_size > MAX_CACHE:
            return None
        data = os.read(fd, MAX_CACHE + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        raw = msgpack.unpackb(data, raw=False)
    except Exception:  # a torn or foreign file: not a cache
        return None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != _version():
        return None
    if raw.get("stamp") != _stamp(st):
        return None
    values = [raw.get(k) for k in ("cli_address", "auth_type", "curve_key_dir")]
    if not all(isinstance(v, str) for v in values):
        return None
    return ClientConfig(path, *values)


def write_cache(cfg: Config) -> bool:
    """Leave ``cfg``'s command settings next to its file when this process's
    user owns that file (atomically: a reader sees the old cache or the new
    one). False when it did not (another owner, a read-only directory)."""
    try:
        st = os.stat(cfg.path)
        if st.st_uid != os.geteuid():
            return False
        body = msgpack.packb({"format": FORMAT, "version": _version(), "stamp": _stamp(st),
                              "cli_address": cfg.cli_address, "auth_type": cfg.auth_type,
                              "curve_key_dir": cfg.curve_key_dir})  # fmt: skip
        target = cache_path(cfg.path)
        tmp = f"{target}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: commands of every user read it
            os.write(fd, body)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        return True
    except OSError:
        try:
            os.unlink(f"{cache_path(cfg.path)}.{os.getpid()}.tmp")
        except OSError:
            pass
        return False


def load(explicit: str | None = None) -> ClientConfig:
    """The settings of the config at ``explicit`` / ``$CRANE_CONF`` / the
    default path: from its cache when it can be trusted, else from the YAML
    (crane.config.ConfigError as crane.config.load raises it)."""
    path = find_path(explicit)
    cached = read_cache(path)
    if cached is not None:
        return cached
    from crane.config import load as load_yaml

    cfg = load_yaml(path)
    write_cache(cfg)
    return ClientConfig(path, cfg.cli_address, cfg.auth_type, cfg.curve_key_dir)
