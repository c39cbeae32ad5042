"""Security of the node agent's file operations (issue 10, classes 1, 4, 9).

Real users (alice, bob), real daemons. Each attack test says what it attacked
and why it succeeded before the fix:

- the cancel / time-limit banner was appended as root to the job's stderr path:
  a symlink or hard link planted there after the launch made root append to
  any file; a FIFO there hung the whole agent;
- job scripts, step specs (with the job's environment) and rc files lay in a
  world-readable state directory;
- crane-pam-check read a numeric PAM_USER as a uid ("0" = root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from crane.agent import as_user, statedir
from crane.agent.pam_check import _listed_uids, _uid_of
from crane.agent.steps import StepManager, path_problem
from crane.config import load
from crane.core import messages as m
from tests.conftest import BIN, IS_ROOT, Cluster, open_ancestors, wait_for

PAM_CHECK = os.path.join(BIN, "crane-pam-check")
ROOT_TEXT = b"root:x:0:0:root:/root:/bin/bash\n"  # stands in for /etc/passwd


def as_(user: str, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    argv = ["runuser", "-u", user, "--", "env", f"PATH={BIN}:/usr/bin:/bin", "HOME=/tmp", *extra]
    return subprocess.run([*argv, "sh", "-c", script], capture_output=True, text=True, timeout=60, cwd="/")


def snapshot(path: str) -> tuple[bytes, int, int, int]:
    st = os.lstat(path)
    with open(path, "rb") as f:
        return f.read(), st.st_mode, st.st_uid, st.st_mtime_ns


@pytest.fixture
def home(cluster: Cluster, users: dict[str, int]) -> Iterator[dict[str, str]]:
    """A directory of alice's and of bob's (on the cluster's file system), and
    a root-only file next to them (a stand-in for /etc/passwd)."""
    made = {}
    for user in ("alice", "bob"):
        d = tempfile.mkdtemp(prefix=f"rt-{user}-", dir=cluster.workdir)
        os.chown(d, users[user], users[user])
        os.chmod(d, 0o755)
        made[user] = d
    vault = tempfile.mkdtemp(prefix="rt-rootonly-", dir=cluster.base)  # 0700 root
    root_file = os.path.join(vault, "passwd")
    with open(root_file, "wb") as f:
        f.write(ROOT_TEXT)
    os.chmod(root_file, 0o600)
    made["root_file"] = root_file
    try:
        yield made
    finally:
        for d in (made["alice"], made["bob"], vault):
            shutil.rmtree(d, ignore_errors=True)


def submit(c: Cluster, user: str, *args: str, wrap: str, env: dict[str, str] | None = None) -> int:
    env = {"CRANE_CONF": c.config_path, **(env or {})}
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in (*args, "--wrap", wrap))
    r = as_(user, f"cbatch --json {quoted}", env)
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["job_id"])


def swap_script(d: str, variant: str, root_file: str) -> str:
    """The job (as alice): start, then swap its own stderr file for the attack."""
    err = f"{d}/err"
    swap = {
        "normal": ":",
        "symlink": f"rm -f {err} && ln -s {root_file} {err}",
        "fifo": f"rm -f {err} && mkfifo {err}",
        "hardlink": ":",  # done by the test as root (fs.protected_hardlinks)
    }[variant]
    return f"echo started >&2; {swap} && echo swapped > {d}/flag; sleep 300"


def wait_file(path: str, what: str) -> None:
    wait_for(lambda: os.path.exists(path), 60, what)


# ------------------------------------------------------------------ the banner


@pytest.mark.parametrize("variant", ["normal", "symlink", "hardlink", "fifo"])
def test_cancel_banner_is_written_as_the_owner(cluster: Cluster, home: dict[str, str], variant: str) -> None:
    """Attack (symlink, hardlink): after the launch, alice points her -e file at
    a root-only file and cancels with a message; the agent appended the banner
    there as root. Attack (fifo): a FIFO at the path, no reader: the agent's
    open as root blocked its event loop forever. Normal: the banner still lands
    in her own file."""
    c, d, root_file = cluster, home["alice"], home["root_file"]
    before = snapshot(root_file)
    job = submit(c, "alice", "-o", f"{d}/out", "-e", f"{d}/err", wrap=swap_script(d, variant, root_file))
    node = c.wait_state(job, "RUNNING", timeout=60)["nodes"][0]
    wait_file(f"{d}/flag", "the job to start and swap its file")
    if variant == "hardlink":
        os.unlink(f"{d}/err")
        os.link(root_file, f"{d}/err")  # alice could, where fs.protected_hardlinks is 0
    r = as_("alice", f"ccancel -m 'x' {job}", {"CRANE_CONF": c.config_path})
    assert r.returncode == 0, r.stderr
    c.wait_state(job, "CANCELLED", timeout=60)
    assert snapshot(root_file) == before  # root's file untouched
    if variant == "normal":
        lines = open(f"{d}/err").read().splitlines()
        assert lines[0] == "started"
        assert lines[-1].startswith(f"*** JOB {job} CANCELLED AT ") and lines[-1].endswith(" BY alice: x ***")
        assert os.stat(f"{d}/err").st_uid == os.stat(d).st_uid
    if variant == "fifo":
        assert stat.S_ISFIFO(os.lstat(f"{d}/err").st_mode)
        # the agent is not stuck: the next job on that node runs to the end
        nxt = submit(c, "alice", "-w", node, "-o", f"{d}/next", wrap="echo next")
        c.wait_state(nxt, "COMPLETED", timeout=60)


def test_time_limit_banner_is_written_as_the_owner(cluster: Cluster, home: dict[str, str]) -> None:
    """Attack: as above, through the TIMEOUT banner (no cancel needed)."""
    c, root_file = cluster, home["root_file"]
    before = snapshot(root_file)
    jobs = {}
    for variant in ("normal", "symlink"):
        d = os.path.join(home["alice"], variant)
        as_("alice", f"mkdir {d}")
        jobs[variant] = (d, submit(c, "alice", "-t", "0:08", "-o", f"{d}/out", "-e", f"{d}/err",
                                   wrap=swap_script(d, variant, root_file)))  # fmt: skip
    for d, job in jobs.values():
        c.wait_state(job, "TIMEOUT", timeout=90)
        assert os.path.exists(f"{d}/flag")  # the swap was done before the limit
    assert snapshot(root_file) == before
    d, job = jobs["normal"]
    last = open(f"{d}/err").read().splitlines()[-1]
    assert last.startswith(f"*** JOB {job} CANCELLED AT ") and last.endswith(" DUE TO TIME LIMIT ***")


# ------------------------------------------------------------------ secrets


def test_job_files_are_private_to_their_owner(cluster: Cluster, home: dict[str, str], users: dict[str, int]) -> None:
    """Attack: alice reads bob's job script, his environment (the step JSON) and
    his rc file under the agent's state directory while his job runs: they
    were 0755/0644 in 0755 directories."""
    c, d = cluster, home["bob"]
    token = uuid.uuid4().hex
    job = submit(c, "bob", "-o", f"{d}/out", env={"RT_SECRET": f"env-{token}"},
                 wrap=f": script-{token}; id -u > {d}/uid; while [ ! -e {d}/go ]; do sleep 0.2; done")  # fmt: skip
    node = c.wait_state(job, "RUNNING", timeout=60)["nodes"][0]
    wait_file(f"{d}/uid", "bob's job to run")
    cfg = load(c.config_path)
    top = cfg.resolve(cfg.craned_state_dir)
    sd = os.path.join(top, node)
    files = {
        "spec": os.path.join(sd, "steps", f"{job}.1.json"),
        "script": os.path.join(sd, "scripts", f"job_{job}.sh"),
        "rc": os.path.join(sd, "rc", f"{job}.1"),
        "users": os.path.join(sd, "users"),
    }
    spec = open(files["spec"]).read()
    assert f"env-{token}" in spec and f"script-{token}" in spec  # the secrets are there
    assert f"script-{token}" in open(files["script"]).read()

    probe = "".join(f'cat "{p}" >/dev/null 2>&1 && echo "read {p}"; ' for p in files.values())
    probe += "".join(f'ls "{p}" >/dev/null 2>&1 && echo "listed {p}"; ' for p in (
        top, sd, f"{sd}/steps", f"{sd}/scripts", f"{sd}/rc"))  # fmt: skip
    probe += f'grep -rl {token} "{top}" 2>/dev/null; true'
    r = as_("alice", probe)
    assert r.stdout == "", r.stdout

    # modes: root-only spec; script and rc file the owner's alone
    for key, uid, mode in (("spec", 0, 0o600), ("script", users["bob"], 0o500), ("rc", users["bob"], 0o600)):
        st = os.lstat(files[key])
        assert (key, st.st_uid, stat.S_IMODE(st.st_mode)) == (key, uid, mode)
    assert stat.S_IMODE(os.stat(f"{sd}/steps").st_mode) == 0o700
    # the owner reaches his own script; his job runs as him
    assert as_("bob", f'cat "{files["script"]}"').stdout.count(f"script-{token}") == 1
    assert open(f"{d}/uid").read().strip() == str(users["bob"])
    # the agent resolves nothing against the directory it was started in
    assert os.readlink(f"/proc/{c.procs[f'craned-{node}'].pid}/cwd") == "/"

    as_("bob", f"touch {d}/go")
    c.wait_state(job, "COMPLETED", timeout=60)
    assert stat.S_IMODE(os.stat(f"{d}/out").st_mode) == 0o644  # jobs keep the usual umask
    wait_for(lambda: not any(os.path.exists(p) for k, p in files.items() if k != "users"), 30, "job files removed")


# ------------------------------------------------------------------ crane-pam-check


def test_pam_check_takes_names_only(cluster: Cluster, users: dict[str, int]) -> None:
    """Attack: PAM_USER "0" was read as uid 0 and let in as root."""

    def pam(user: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAM_")}
        env.update(PAM_USER=user, PAM_TYPE="account", CRANE_CONF=cluster.config_path)
        return subprocess.run([PAM_CHECK], env=env, capture_output=True, text=True, timeout=30)

    for name in ("0", "00", str(users["alice"]), "rt-no-such-user", " root", "root\t"):
        r = pam(name)
        assert r.returncode == 1, name
        assert r.stderr.startswith("crane-pam-check: unknown user ") and r.stderr.count("\n") == 1, r.stderr
    assert pam("root").returncode == 0


# ------------------------------------------------------------------ units


def test_path_problem() -> None:
    assert path_problem({"cwd": "/home/a", "stdout": "/home/a/o", "stderr": "/home/a/e"}) == ""
    assert path_problem({"cwd": "/", "stdout": "", "stderr": None}) == ""
    assert "cwd" in path_problem({"cwd": "home/a"})
    assert "stdout" in path_problem({"stdout": "out.txt"})
    assert "stderr" in path_problem({"stderr": "../etc/passwd"})
    assert "NUL" in path_problem({"stderr": "/tmp/a\0b"})
    assert path_problem({"stdout": 5})


def test_relative_paths_refused_by_the_agent(tmp_path: Any) -> None:
    """A LaunchStep with a relative path fails to launch; nothing is created
    in the agent's working directory."""
    sent: list[m.Message] = []
    work = tmp_path / "cwd"
    work.mkdir()
    old = os.getcwd()
    os.chdir(work)
    try:
        async def go() -> None:
            sm = StepManager("n1", f"crane/rt{os.getpid()}/n1", str(tmp_path / "state"), "none", sent.append)
            spec = {"uid": os.getuid(), "gid": os.getgid(), "user": "", "argv": ["true"], "cwd": str(work),
                    "env": {}, "stdout": "out.txt", "stderr": "out.txt"}  # fmt: skip
            sm.launch(m.LaunchStep(1, 1, spec))

        asyncio.run(go())
    finally:
        os.chdir(old)
    ended = [x for x in sent if isinstance(x, m.StepEnded)]
    assert [(e.job_id, e.reason) for e in ended] == [(1, "LAUNCH_FAILED")]
    assert os.listdir(work) == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root to act as another user")
def test_append_as_owner(tmp_path: Any, users: dict[str, int]) -> None:
    alice = as_user.owner_of(users["alice"], users["alice"], "alice")
    d = tmp_path / "d"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    open_ancestors(str(tmp_path))  # pytest's temp root is 0700
    os.chown(d, alice.uid, alice.gid)
    mine, theirs, fifo = d / "mine", tmp_path / "theirs", d / "fifo"
    mine.write_bytes(b"")
    os.chown(mine, alice.uid, alice.gid)
    theirs.write_bytes(ROOT_TEXT)
    theirs.chmod(0o600)
    os.mkfifo(fifo)
    os.chown(fifo, alice.uid, alice.gid)
    (d / "link").symlink_to(theirs)

    def run(path: str, create: bool = False) -> str:
        pid = as_user.start(alice, lambda: as_user.append(path, b"banner\n", create))
        _, status = os.waitpid(pid, 0)
        return as_user.exit_error(status)

    assert run(str(mine)) == "" and mine.read_bytes() == b"banner\n"
    assert run(str(d / "link")) == os.strerror(13)  # EACCES: alice may not write root's file
    assert run(str(theirs)) == os.strerror(13)
    assert run(str(fifo)) == os.strerror(6)  # ENXIO: no reader, and no hang
    assert run(str(d)) != ""  # a directory
    assert run("relative") != ""
    assert run(str(d / "new")) == os.strerror(2) and not (d / "new").exists()
    assert run(str(d / "new"), create=True) == ""
    st = os.stat(d / "new")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o644)
    assert theirs.read_bytes() == ROOT_TEXT


def test_state_dir_prepare_and_files(tmp_path: Any) -> None:
    """Modes of an older agent are fixed; symlinks are neither followed nor accepted."""
    sd = tmp_path / "craned" / "n1"
    for sub in ("steps", "scripts"):
        (sd / sub).mkdir(parents=True)
    for p in (sd, sd / "steps", sd / "scripts", tmp_path / "craned"):
        p.chmod(0o755)
    old = sd / "steps" / "1.1.json"
    old.write_text("{}")
    old.chmod(0o644)
    statedir.prepare(str(sd))
    modes = {sub: stat.S_IMODE(os.stat(sd / sub).st_mode) for sub in ("", "steps", "scripts", "rc")}
    assert modes == {"": 0o711, "steps": 0o700, "scripts": 0o711, "rc": 0o711}
    assert stat.S_IMODE(old.stat().st_mode) == 0o600

    target = tmp_path / "target"
    target.write_text("keep")
    (sd / "steps" / "2.1.json.tmp").symlink_to(target)
    statedir.replace(str(sd / "steps" / "2.1.json"), b"{}")
    assert target.read_text() == "keep"
    assert stat.S_IMODE(os.stat(sd / "steps" / "2.1.json").st_mode) == 0o600
    (sd / "rc" / "1.1").symlink_to(target)
    with pytest.raises(OSError):
        statedir.read(str(sd / "rc" / "1.1"))

    bad = tmp_path / "bad" / "n1"
    bad.mkdir(parents=True)
    (bad / "steps").symlink_to(tmp_path)
    with pytest.raises(statedir.StateDirError):
        statedir.prepare(str(bad))


@pytest.mark.skipif(not IS_ROOT, reason="needs root to chown")
def test_pam_users_file_trusted_only_from_root(tmp_path: Any, users: dict[str, int]) -> None:
    assert _uid_of("0") is None and _uid_of("root") == 0 and _uid_of("") is None
    n = tmp_path / "n1"
    n.mkdir()
    f = n / "users"
    f.write_text(f"{users['alice']}\n")
    f.chmod(0o644)
    assert _listed_uids(str(tmp_path), None) == {users["alice"]}
    os.chown(f, users["alice"], users["alice"])  # a file a user could have written
    assert _listed_uids(str(tmp_path), None) == set()
    os.chown(f, 0, 0)
    f.chmod(0o666)
    assert _listed_uids(str(tmp_path), "n1") == set()
