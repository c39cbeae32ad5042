"""`crane local` cannot be hijacked through its directory (issue 10, class 5).

The attacks: another user creates the cluster directory first (a symlinked
config.yaml, planted agent keys, a planted pids.json), hands root a directory
anyone may write into, or a symlink as the directory. Before the fix root
wrote its config through the symlink, pinned the planted agent key and killed
whatever pid pids.json named; now each is refused with one error line and
nothing is written or started. A fresh start makes private directories and
secrets and still runs jobs for other users."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import zmq
import zmq.auth

from crane import keys
from crane.local import check_ancestors, default_dir, dir_problem, prefixes
from tests.conftest import BIN, IS_ROOT, pid_alive, wait_for

CRANE = os.path.join(BIN, "crane")


def _st(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


def test_dir_problem_rules() -> None:
    d = stat.S_IFDIR
    # the cluster's own directory: the caller's, writable by no one else
    assert dir_problem(_st(d | 0o711, 0), 0, own=True) is None
    assert "owned by uid 1001" in (dir_problem(_st(d | 0o700, 1001), 0, own=True) or "")
    assert "writable" in (dir_problem(_st(d | 0o777, 0), 0, own=True) or "")
    assert "writable" in (dir_problem(_st(d | 0o1777, 0), 0, own=True) or "")  # sticky is no excuse here
    assert "symlink" in (dir_problem(_st(stat.S_IFLNK | 0o777, 0), 0, own=True) or "")
    assert "not a directory" in (dir_problem(_st(stat.S_IFREG | 0o600, 0), 0, own=True) or "")
    # a directory on the way: root's or the caller's; others may write only if sticky (/tmp)
    assert dir_problem(_st(d | 0o1777, 0), 1001, own=False) is None
    assert dir_problem(_st(d | 0o755, 1001), 1001, own=False) is None
    assert "writable" in (dir_problem(_st(d | 0o777, 0), 1001, own=False) or "")
    assert "writable" in (dir_problem(_st(d | 0o775, 0), 1001, own=False) or "")
    assert "owned by uid 1002" in (dir_problem(_st(d | 0o755, 1002), 1001, own=False) or "")
    assert prefixes("/a/b") == ["/", "/a", "/a/b"] and prefixes("/") == ["/"]


@pytest.mark.skipif(not IS_ROOT, reason="root's default directory")
def test_roots_default_dir_is_not_in_a_shared_directory() -> None:
    d = default_dir()
    assert not d.startswith(("/tmp/", "/var/tmp/", "/dev/shm/"))
    check_ancestors(d)  # every directory above it is root's and closed to others


# --------------------------------------------------------------------------- helpers


def _as(user: str, script: str, cwd: str = "/") -> subprocess.CompletedProcess[str]:
    env = ["env", "-i", f"PATH={BIN}:/usr/bin:/bin", "HOME=/tmp"]
    return subprocess.run(["runuser", "-u", user, "--", *env, "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, cwd=cwd)  # fmt: skip


def _crane(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": "/root"}
    return subprocess.run([CRANE, *argv], capture_output=True, text=True, timeout=180, env=env, cwd="/")


def _daemons_of(config_path: str | None, under: str | None = None) -> list[int]:
    """Processes whose argv names this config (or a path under ``under``)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if (config_path is not None and os.fsencode(config_path) in argv) or (
                under is not None and any(a.startswith(os.fsencode(under + "/")) for a in argv)
            ):
                out.append(int(name))
    return out


def _refused(r: subprocess.CompletedProcess[str], what: str) -> None:
    assert r.returncode == 1, f"{r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert r.stderr.startswith("crane: error: refusing ") and r.stderr.count("\n") == 1, r.stderr
    assert what in r.stderr, r.stderr


@pytest.fixture
def shared_tmp() -> Iterator[str]:
    """A directory like /tmp (root's, 1777): where a predictable path can be taken first."""
    top = tempfile.mkdtemp(prefix="crane-sec-local-", dir="/tmp")
    os.chmod(top, 0o1777)
    try:
        yield top
    finally:
        _kill_daemons_under(top)  # only if a refusal regressed into a start
        shutil.rmtree(top, ignore_errors=True)


def _kill_daemons_under(top: str) -> None:
    for pid in _daemons_of(None, top):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def scratch() -> Iterator[str]:
    """A root-only file the attacker wants root to overwrite."""
    d = tempfile.mkdtemp(prefix="crane-sec-scratch-", dir="/tmp")  # 0700, root's
    path = os.path.join(d, "precious")
    with open(path, "w") as f:
        f.write("precious\n")
    try:
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _rogue_key(tmp: str) -> tuple[str, str]:
    """An agent keypair the attacker made (files readable by the attacker)."""
    os.makedirs(tmp, exist_ok=True)
    pub, sec = zmq.auth.create_certificates(tmp, "rogue")
    os.chmod(tmp, 0o755)
    for p in (pub, sec):
        os.chmod(p, 0o644)
    return pub, sec


# --------------------------------------------------------------------------- attacks


def test_a_directory_taken_first_by_another_user_is_refused(users, shared_tmp, scratch) -> None:  # type: ignore[no-untyped-def]
    # Attack (worked before the fix): alice creates the directory root will use (the old default
    # was /tmp/crane-local-0), with config.yaml a symlink to a root-only file and her own agent
    # key pinned for crane01. `crane local up` overwrote the file through the symlink and kept
    # her key (her fake agent then got root's job scripts and forged completions).
    d = os.path.join(shared_tmp, "crane-local-0")
    conf = os.path.join(d, "config.yaml")
    pub, sec = _rogue_key(os.path.join(shared_tmp, "rogue"))  # where alice can read them
    plant = (f"mkdir -p {d}/keys/agents {d}/keys/nodes && chmod 755 {d} && ln -s {scratch} {conf} && "
             f"cp {pub} {d}/keys/agents/crane01.key && cp {sec} {d}/keys/nodes/crane01.key_secret")  # fmt: skip
    r = _as("alice", plant)
    assert r.returncode == 0, r.stderr
    assert os.stat(d).st_uid == users["alice"]

    _refused(_crane("local", "up", "--dir", d, "--nodes", "1"), f"refusing {d}: it is owned by uid")
    with open(scratch) as f:
        assert f.read() == "precious\n"
    assert os.path.islink(conf)
    assert not os.path.exists(os.path.join(d, "log"))
    assert not os.path.exists(os.path.join(d, "keys", "controller.key"))
    assert _daemons_of(conf) == []

    # Attack (worked before the fix): a pids.json there naming a root process; `crane local
    # down` (or a stop) killed whatever pid it named.
    victim = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        r = _as("alice", f"echo '{{\"cranectld\": {victim.pid}}}' > {d}/pids.json")
        assert r.returncode == 0, r.stderr
        _refused(_crane("local", "down", "--dir", d), "owned by uid")
        _refused(_crane("local", "status", "--dir", d), "owned by uid")
        assert pid_alive(victim.pid)
    finally:
        victim.kill()
        victim.wait()


def test_a_directory_others_can_change_is_refused(users, shared_tmp, scratch) -> None:  # type: ignore[no-untyped-def]
    # Attack (worked before the fix): root is handed a directory anyone may write into (or one
    # inside a non-sticky world-writable directory, whose entries anyone may swap), or a symlink
    # standing for the directory; each let another user choose where root writes.
    open_dir = os.path.join(shared_tmp, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    _refused(_crane("local", "up", "--dir", open_dir, "--nodes", "1"), "writable by group or others")
    assert os.listdir(open_dir) == []

    swap = os.path.join(shared_tmp, "swap")
    os.mkdir(swap)
    os.chmod(swap, 0o777)  # not sticky: alice could rename root's directory away and put hers there
    _refused(_crane("local", "up", "--dir", os.path.join(swap, "lc"), "--nodes", "1"), f"{swap} is writable")
    assert os.listdir(swap) == []

    target = os.path.dirname(scratch)  # a root-only directory
    link = os.path.join(shared_tmp, "link")
    r = _as("alice", f"ln -s {target} {link}")
    assert r.returncode == 0, r.stderr
    _refused(_crane("local", "up", "--dir", link, "--nodes", "1"), "symlink")
    assert os.listdir(target) == ["precious"]
    for d in (open_dir, link):
        assert _daemons_of(os.path.join(d, "config.yaml")) == []


def test_a_users_default_dir_taken_by_another_user_is_refused(users) -> None:  # type: ignore[no-untyped-def]
    # A plain user's default directory (no $XDG_RUNTIME_DIR) is /tmp/crane-local-<uid>, checked
    # like any other: taken first by alice, bob's `crane local up` is refused with one line
    # (before the fix it failed only by accident, with a traceback from chmod).
    d = f"/tmp/crane-local-{users['bob']}"

    def clear() -> None:
        if os.path.islink(d) or os.path.isfile(d):
            os.unlink(d)
        shutil.rmtree(d, ignore_errors=True)

    clear()
    try:
        r = _as("alice", f"mkdir -m 755 {d} && ln -s /tmp/bobs-file-{os.getpid()} {d}/config.yaml")
        assert r.returncode == 0, r.stderr
        r = _as("bob", "crane local up --nodes 1")
        _refused(r, f"refusing {d}: it is owned by uid {users['alice']}")
        assert not os.path.lexists(f"/tmp/bobs-file-{os.getpid()}")
        assert _daemons_of(os.path.join(d, "config.yaml")) == []
    finally:
        clear()


# --------------------------------------------------------------------------- the normal path


def _modes(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (stat.S_IMODE(st.st_mode), st.st_uid)
    return out


def test_fresh_up_is_private_and_runs_jobs(users, tmp_path) -> None:  # type: ignore[no-untyped-def]
    top = tempfile.mkdtemp(prefix="crane-sec-up-", dir="/tmp")
    os.chmod(top, 0o755)
    d = os.path.join(top, "lc")
    conf = os.path.join(d, "config.yaml")
    try:
        # keys left in the directory (here root's own) are never reused: up makes new ones
        old_pub, old_sec = _rogue_key(str(tmp_path / "old"))
        os.makedirs(os.path.join(d, "keys", "agents"))
        os.makedirs(os.path.join(d, "keys", "nodes"))
        shutil.copy(old_pub, os.path.join(d, "keys", "agents", "crane01.key"))
        shutil.copy(old_sec, os.path.join(d, "keys", "nodes", "crane01.key_secret"))
        os.chmod(d, 0o755)
        old = zmq.auth.load_certificate(old_pub)[0].decode()

        r = _crane("local", "up", "--dir", d, "--nodes", "1")
        assert r.returncode == 0, r.stderr
        assert f"export CRANE_CONF={conf}" in r.stdout
        key_dir = os.path.join(d, "keys")
        accepted = keys.accepted_agents(key_dir)
        assert old not in accepted and list(accepted.values()) == ["crane01"]

        st = os.stat(d)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o711, 0)  # others reach the socket, list nothing
        modes = _modes(d)
        assert modes["config.yaml"] == (0o644, 0)  # users run CLIs with it
        assert modes["pids.json"] == (0o600, 0)
        for name in ("keys", "keys/agents", "keys/nodes", "log"):
            assert modes[name] == (0o700, 0), (name, oct(modes[name][0]))
        secrets = [n for n in modes if n.endswith(".key_secret")]
        logs = [n for n in modes if n.startswith("log/")]
        assert len(secrets) == 2 and "log/cranectld.log" in logs and "log/craned-crane01.log" in logs
        for name in secrets + logs:
            assert modes[name] == (0o600, 0), (name, oct(modes[name][0]))

        # another user runs a job on root's cluster through the printed config
        work = os.path.join(top, "work")
        os.mkdir(work)
        os.chown(work, users["alice"], -1)
        r = _as("alice", f"CRANE_CONF={conf} cbatch --json --wrap 'echo ran as $(id -un)'", cwd=work)
        assert r.returncode == 0, r.stderr
        jid = json.loads(r.stdout)["job_id"]

        def output() -> str | None:
            try:
                with open(os.path.join(work, f"crane-{jid}.out")) as f:
                    text = f.read()
            except OSError:
                return None
            return text if "ran as" in text else None

        assert "ran as alice" in wait_for(output, 60, f"job {jid}'s output")
        r = _as("alice", f"CRANE_CONF={conf} crane local status --dir {d}")
        assert r.returncode != 0  # alice may not even list root's cluster directory
    finally:
        r = _crane("local", "down", "--dir", d)
        leftover = _daemons_of(conf)
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(top, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    assert leftover == []
