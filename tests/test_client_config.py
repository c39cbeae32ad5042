"""The command settings cached next to the config (crane.client_config):
used only when as trustworthy as the config itself and stamped with the
config as it is now; written only by the config's owner; the same settings
either way. Real files, real users, a real cluster."""

from __future__ import annotations

import json
import os
import subprocess

import msgpack
import pytest

from crane import client_config as cc
from crane.config import load as load_yaml
from tests.conftest import BIN, Cluster, open_ancestors, wait_for

CONFIG = """ClusterName: t
ControlMachine: 127.0.0.1
CraneBaseDir: {base}
Nodes:
  - name: n1
    cpu: 1
    memory: 1G
Partitions:
  - name: P
    nodes: n1
"""


def _config(tmp_path: object, endpoint: str = "") -> str:
    base = str(tmp_path)
    path = os.path.join(base, "config.yaml")
    with open(path, "w") as f:
        f.write(CONFIG.format(base=base) + (f"CliEndpoint: {endpoint}\n" if endpoint else ""))
    return path


def _settings(c: cc.ClientConfig) -> tuple[str, str, str]:
    return c.cli_address, c.auth_type, c.curve_key_dir


def test_owner_writes_the_cache_and_commands_read_it(tmp_path: object) -> None:
    path = _config(tmp_path)
    assert cc.read_cache(path) is None
    first = cc.load(path)  # parsed from the YAML; this process owns the file: cache written
    st = os.lstat(cc.cache_path(path))
    assert st.st_mode & 0o777 == 0o644 and st.st_uid == os.geteuid()
    cached = cc.read_cache(path)
    assert cached is not None
    full = load_yaml(path)
    assert _settings(cached) == _settings(first) == (full.cli_address, full.auth_type, full.curve_key_dir)
    assert not [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")]


def test_any_change_of_the_config_makes_the_cache_stale(tmp_path: object) -> None:
    path = _config(tmp_path)
    cc.load(path)
    _config(tmp_path, endpoint="ipc:///run/elsewhere.sock")  # rewritten in place: size and mtime differ
    assert cc.read_cache(path) is None
    assert cc.load(path).cli_address == "ipc:///run/elsewhere.sock"
    assert cc.read_cache(path) is not None
    # the same bytes and the same mtime, touched (utime): only the ctime moves, and
    # the cache no longer vouches for it (retouched until the kernel's clock ticks)
    st = os.stat(path)

    def retouched() -> bool:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return os.stat(path).st_ctime_ns != st.st_ctime_ns

    wait_for(retouched, 10, "the config's ctime to move")
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert cc.read_cache(path) is None
    os.chmod(path, 0o600)  # a change of mode moves ctime as well
    cc.load(path)
    os.chmod(path, 0o644)
    assert cc.read_cache(path) is None


def _plant(path: str, cli_address: str, uid: int | None = None, mode: int = 0o644) -> None:
    """A cache that would send commands to ``cli_address``, stamped with the config as it is."""
    st = os.stat(path)
    from crane import __version__

    body = msgpack.packb({"format": cc.FORMAT, "version": __version__,
                          "stamp": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns],
                          "cli_address": cli_address, "auth_type": "local", "curve_key_dir": ""})  # fmt: skip
    target = cc.cache_path(path)
    if os.path.lexists(target):
        os.unlink(target)
    with open(target, "wb") as f:
        f.write(body)
    os.chmod(target, mode)
    if uid is not None:
        os.chown(target, uid, -1)


def test_an_untrustworthy_cache_is_ignored(tmp_path: object, users: dict[str, int]) -> None:
    path = _config(tmp_path)
    _plant(path, "ipc:///tmp/x.sock")
    trusted = cc.read_cache(path)
    assert trusted is not None and trusted.cli_address == "ipc:///tmp/x.sock"  # the owner's: followed
    for uid, mode in ((users["alice"], 0o644), (None, 0o664), (None, 0o646)):
        _plant(path, "ipc:///tmp/x.sock", uid=uid, mode=mode)
        assert cc.read_cache(path) is None, (uid, oct(mode))
    # a link (to a file the owner made, here the config itself)
    os.unlink(cc.cache_path(path))
    os.symlink(path, cc.cache_path(path))
    assert cc.read_cache(path) is None
    os.unlink(cc.cache_path(path))
    for garbage in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"format": 99}), b"x" * (cc.MAX_CACHE + 10)):
        with open(cc.cache_path(path), "wb") as f:
            f.write(garbage)
        assert cc.read_cache(path) is None
    # and load() then parses the YAML (and, as the owner, mends the cache)
    assert cc.load(path).cli_address == load_yaml(path).cli_address
    assert cc.read_cache(path) is not None


def _as(user: str, code: str, cwd: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, cwd=cwd)  # fmt: skip


def test_only_the_owner_writes_the_cache(tmp_path: object, users: dict[str, int]) -> None:
    shared = os.path.join(str(tmp_path), "shared")
    os.makedirs(shared)
    os.chmod(shared, 0o1777)  # anyone may create files here: only the code refuses
    open_ancestors(shared)
    path = _config(shared)
    os.chmod(path, 0o644)
    r = _as("alice", f"from crane import client_config as cc; print(cc.load({path!r}).cli_address)", shared)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == load_yaml(path).cli_address
    assert sorted(os.listdir(shared)) == ["config.yaml"]  # alice parsed the YAML, left nothing
    cc.load(path)  # root owns the config: writes it
    r = _as("alice", f"from crane import client_config as cc; print(cc.read_cache({path!r}) is not None)", shared)
    assert r.stdout.strip() == "True", r.stderr  # and every user reads it


def test_a_planted_cache_does_not_redirect_a_command(make_cluster, users: dict[str, int], tmp_path: object) -> None:  # type: ignore[no-untyped-def]
    """alice plants, next to a config in a directory she may write in, a cache
    stamped with that config and naming a socket of hers: bob's command
    ignores it (not the config's owner) and reaches the real controller."""
    c: Cluster = make_cluster(nodes=1, cpus=1)
    shared = os.path.join(str(tmp_path), "shared")
    os.makedirs(shared)
    os.chmod(shared, 0o1777)
    open_ancestors(shared)
    path = os.path.join(shared, "config.yaml")
    with open(c.config_path) as src, open(path, "w") as dst:
        dst.write(src.read())
    os.chmod(path, 0o644)
    trap = os.path.join(shared, "alice.sock")
    _plant(path, f"ipc://{trap}", uid=users["alice"])
    env = [f"CRANE_CONF={path}", f"PATH={BIN}:/usr/bin:/bin", "HOME=/tmp"]
    r = subprocess.run(["runuser", "-u", "bob", "--", "env", *env, os.path.join(BIN, "cqueue"), "--json"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    # the same cache, had it been the config owner's, would have been followed
    os.chown(cc.cache_path(path), 0, -1)
    r = subprocess.run(["runuser", "-u", "bob", "--", "env", *env, os.path.join(BIN, "cqueue")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 3 and trap in r.stderr, (r.returncode, r.stderr)


def test_the_controller_leaves_the_cache_at_start(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster(nodes=1, cpus=1)
    cached = cc.read_cache(c.config_path)
    assert cached is not None
    full = load_yaml(c.config_path)
    assert _settings(cached) == (full.cli_address, full.auth_type, full.curve_key_dir)


@pytest.fixture(autouse=True)
def _readable(tmp_path: object) -> None:
    os.chmod(str(tmp_path), 0o755)
