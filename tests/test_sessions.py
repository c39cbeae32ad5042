"""After a cancel nothing of the user's is left on the node (issue 17).

End to end, as real Unix users (dave, erin, frank: not the users other tests
run CLIs as, since a sweep ends a user's processes host-wide):

- a session opened through crane-pam-check (PAM session phase) while a job
  runs is moved into the job's cgroup and dies when the job is cancelled;
  CRANE_ADOPT_JOB picks another of the user's jobs; root is never adopted;
  a user without a job is refused;
- a stray process of a user outside any job dies when their last job on the
  host ends, and survives while another of their jobs runs there;
- root's and exempt users' processes are never touched;
- /metrics counts adoptions and swept processes.

The "sshd" here is a small root helper: it runs crane-pam-check as pam_exec
would (PAM_TYPE=open_session), then starts the user's "shell" as its child.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import psutil
import pytest

from crane.agent.cgroup import available_modes
from crane.agent.sessions import choose, parse_request
from crane.agent.sweep import exempt, in_job, is_dead, select, status_uid
from crane.config import ConfigError, parse
from crane.local import free_port
from tests.conftest import BIN, IS_ROOT, Cluster, ensure_user, start_cluster, wait_for

PAM_CHECK = os.path.join(BIN, "crane-pam-check")
WAIT = 60.0
OTHER_NODE = ("-p", "GPU", "-w", "crane02")  # make_config: CPU (the default) is crane01, GPU crane02

# plays sshd's privileged session process: PAM session first, then the shell
SSHD = r"""
import os, subprocess, sys
pam, conf, user = sys.argv[1:4]
env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PAM_TYPE": "open_session", "PAM_USER": user}
if len(sys.argv) > 4:
    env["CRANE_ADOPT_JOB"] = sys.argv[4]
r = subprocess.run([pam, "-C", conf], env=env, capture_output=True, text=True, timeout=60)
print(r.returncode, r.stderr.strip().replace("\n", " | "), flush=True)
if r.returncode:
    sys.exit(r.returncode)
shell = subprocess.Popen(["runuser", "-u", user, "--", "sleep", "1000"])
print(shell.pid, flush=True)
shell.wait()
"""


# ------------------------------------------------------------------ pure parts


def test_in_job_reads_proc_cgroup() -> None:
    assert in_job("0::/crane/c1/crane01/job_7/step_1\n")
    assert in_job("12:freezer:/crane/c1/crane01/job_7/step_0\n11:memory:/process_api/x\n")
    assert in_job("0::/crane/local1-abc/crane02/job_3\n")  # left in the job dir itself
    assert not in_job("0::/\n")
    assert not in_job("0::/user.slice/user-1000.slice/session-3.scope\n")
    # a user may create cgroups under a delegated subtree, never at the top:
    # a look-alike path there is not a job
    assert not in_job("0::/user.slice/user-1000.slice/user@1000.service/crane/x/n/job_1\n")
    assert not in_job("0::/crane/c1/crane01\n")  # the agent's scope, not a job
    assert not in_job("garbage\n\n")


def test_select_strays() -> None:
    def status(uid: int, state: str = "S (sleeping)") -> str:
        return f"Name:\tx\nState:\t{state}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"

    procs = [
        (10, status(1001)),  # stray
        (11, status(1001)),  # in a job
        (12, status(1002)),  # someone else
        (13, status(1001, "Z (zombie)")),  # dead already
        (14, status(1001)),  # gone before its cgroup was read
        (15, status(1001)),  # excluded (the agent)
        (16, status(0)),
    ]
    cgroups = {10: "0::/\n", 11: "0::/crane/c/n/job_4/step_0\n", 12: "0::/\n", 13: "0::/\n",
               15: "0::/\n", 16: "0::/\n"}  # fmt: skip
    strays, in_jobs = select(procs, 1001, cgroups.get, exclude=(15,))
    assert strays == [10] and in_jobs == 1
    assert select(procs, 1002, cgroups.get) == ([12], 0)
    assert status_uid("Uid:\t5\t6\t7\t8\n") == 5 and status_uid("Name: x\n") is None
    assert is_dead("State:\tZ (zombie)\n") and not is_dead("State:\tR (running)\n")


def test_exempt_users() -> None:
    assert exempt(0, "root", 1000, []) == "root"
    assert "SweepMinUid" in exempt(999, "daemonish", 1000, [])
    assert exempt(1500, "frank", 1000, ["frank"]) == "listed in ExemptUsers"
    assert exempt(1500, "erin", 1000, ["frank"]) == ""


def test_choose_job_and_requests() -> None:
    steps = [(5, 0, 100.0), (5, 2, 300.0), (9, 1, 200.0), (9, 0, 200.0)]
    assert choose(steps, None) == (9, 0, 200.0)  # newest job, its lowest step
    assert choose(steps, 5) == (5, 0, 100.0)  # asked for
    assert choose(steps, 77) == (9, 0, 200.0)  # not one of them: the newest
    assert choose([], 5) is None
    assert parse_request({"op": "adopt", "user": "dave", "pid": 4242, "job": None}) == ("adopt", "dave", 4242, None)
    for bad in ([], {"op": "exec", "user": "d", "pid": 5}, {"op": "query", "user": "", "pid": 5},
                {"op": "query", "user": "d", "pid": 1}, {"op": "query", "user": "d", "pid": True},
                {"op": "query", "user": "d", "pid": 5, "job": "7"},
                {"op": "query", "user": "d", "pid": 5, "uid": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            parse_request(bad)


def test_config_keys() -> None:
    base = {"Nodes": [{"name": "n1"}]}
    cfg = parse(base)
    assert cfg.sweep_strays is True and cfg.sweep_min_uid == 1000 and cfg.exempt_users == []
    cfg = parse({**base, "SweepStrays": False, "SweepMinUid": 500, "ExemptUsers": ["frank", "admin1"]})
    assert (cfg.sweep_strays, cfg.sweep_min_uid, cfg.exempt_users) == (False, 500, ["frank", "admin1"])
    for key, value in (("SweepStrays", "yes"), ("SweepMinUid", -1), ("ExemptUsers", "frank"),
                       ("ExemptUsers", ["ok", "bad\nname"]), ("ExemptUsers", [3])):  # fmt: skip
        with pytest.raises(ConfigError, match=f"^{key}: "):
            parse({**base, key: value})


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not IS_ROOT:
        pytest.skip("needs root: real users, cgroups, a PAM helper as root")
    if [m for m in available_modes() if m != "none"] == []:
        pytest.skip("no writable cgroup hierarchy")
    if not os.access(sys.executable, os.X_OK) or not os.stat(os.path.dirname(sys.executable)).st_mode & 0o001:
        pytest.skip("the venv is not usable by other users")
    for name in ("dave", "erin", "frank"):
        ensure_user(name)
    base = str(tmp_path_factory.mktemp("sessions"))
    os.chmod(base, 0o755)
    c = start_cluster(base, nodes=2, cpus=4, SweepStrays=True, ExemptUsers=["frank"], MetricsPort=free_port())
    try:
        yield c
    finally:
        c.down()


def _logs(c: Cluster) -> str:
    out = []
    for path in sorted(glob.glob(os.path.join(c.base, "log", "craned-*.log"))):
        with open(path, errors="replace") as f:
            out.append(f.read())
    return "\n".join(out)


def _wait_log(c: Cluster, pattern: str) -> None:
    wait_for(lambda: re.search(pattern, _logs(c)), WAIT, f"agent log line {pattern!r}")


def _metric(c: Cluster, name: str) -> float:
    port = c.config()["MetricsPort"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _cgroup(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f.read()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def _user_proc(root_pid: int, user: str) -> int:
    """The pid of ``user``'s process under ``root_pid`` (runuser's child or itself)."""
    def find() -> int | None:
        try:
            top = psutil.Process(root_pid)
            for p in [top, *top.children(recursive=True)]:
                if p.username() == user and p.name() == "sleep":
                    return p.pid
        except psutil.NoSuchProcess:
            return None
        return None

    return wait_for(find, WAIT, f"{user}'s sleep under {root_pid}")  # type: ignore[no-any-return]


class Session:
    """A fake sshd session process for ``user``: PAM session, then a shell."""

    def __init__(self, c: Cluster, user: str, adopt_job: int | str | None = None) -> None:
        argv = [sys.executable, "-c", SSHD, PAM_CHECK, c.config_path, user]
        if adopt_job is not None:
            argv.append(str(adopt_job))
        self.user = user
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split(" ", 1)
        self.rc, self.stderr = int(first[0] or -1), (first[1].strip() if len(first) > 1 else "")
        self.shell = 0
        if self.rc == 0:
            runuser = int(self.proc.stdout.readline())
            self.shell = _user_proc(runuser, user)

    def kill(self) -> None:
        for pid in (self.shell, self.proc.pid):
            if pid and not _gone(pid):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass


def _stray(user: str) -> tuple[subprocess.Popen[bytes], int]:
    """A process of ``user`` outside any job (as a nohup or a tmux would be)."""
    if user == "root":
        p = subprocess.Popen(["sleep", "1000"], start_new_session=True)
        return p, p.pid
    p = subprocess.Popen(["runuser", "-u", user, "--", "sleep", "1000"], start_new_session=True)
    return p, _user_proc(p.pid, user)


def _end(procs: list[subprocess.Popen[bytes]], pids: list[int]) -> None:
    for pid in pids:
        if pid and not _gone(pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.kill()
            p.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _running_job(c: Cluster, user: str, *where: str) -> int:
    jid = c.submit("-c", "1", *where, wrap="sleep 1000", user=user)
    c.wait_state(jid, "RUNNING", timeout=WAIT)
    c.step_pid(jid, timeout=WAIT)
    return jid


def test_session_adopted_into_job_and_ended_by_cancel(sc: Cluster) -> None:
    c = sc
    sessions: list[Session] = []
    jobs: list[int] = []
    try:
        # no job: refused, in the session phase as in the account phase
        s = Session(c, "dave")
        sessions.append(s)
        assert s.rc == 1 and "dave has no running job" in s.stderr, s.stderr
        # root: allowed, never adopted
        s = Session(c, "root")
        sessions.append(s)
        assert s.rc == 0 and s.stderr == "", s.stderr
        assert "/crane/" not in _cgroup(s.proc.pid)
        s.kill()

        adopted_before = _metric(c, "crane_sessions_adopted_total")
        jid = _running_job(c, "dave")
        jobs.append(jid)
        s = Session(c, "dave")
        sessions.append(s)
        assert s.rc == 0 and s.stderr == "", s.stderr
        for pid in (s.proc.pid, s.shell):  # the session process and what it started later
            assert f"/job_{jid}/" in _cgroup(pid), _cgroup(pid)
        _wait_log(c, rf"adopted pid {s.proc.pid} \(user dave\) into job {jid} step \d+")
        wait_for(lambda: _metric(c, "crane_sessions_adopted_total") >= adopted_before + 1, WAIT, "adoption counted")

        # only root reaches the agent's socket
        sock = glob.glob(os.path.join(c.base, "craned", "*", "adopt.sock"))[0]
        probe = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])"
        r = subprocess.run(["runuser", "-u", "dave", "--", sys.executable, "-c", probe, sock],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr

        c.ok("ccancel", str(jid))
        wait_for(lambda: s.proc.poll() is not None and _gone(s.shell), WAIT, "the adopted session to die")
        c.wait_state(jid, "CANCELLED", timeout=WAIT)
        # and a new login is refused now
        s2 = Session(c, "dave")
        sessions.append(s2)
        assert s2.rc == 1
    finally:
        for jid in jobs:
            c.run("ccancel", str(jid))
        for s in sessions:
            s.kill()


@pytest.mark.parametrize("restart", [False, True], ids=["agent-up", "agent-restarted"])
def test_adopted_session_ends_when_the_job_completes(sc: Cluster, restart: bool) -> None:
    """The batch script ends by itself: what is left in the step (the adopted
    session) is killed, also by an agent restarted since (it re-adopts the
    step and learns of the script's end from its rc file, not as its parent)."""
    c = sc
    go = c.file(f"go-{os.getpid()}-{restart}")
    jid = c.submit("-c", "1", wrap=f"while [ ! -e {go} ]; do sleep 0.2; done", user="dave")
    s = None
    try:
        c.wait_state(jid, "RUNNING", timeout=WAIT)
        c.step_pid(jid, timeout=WAIT)
        s = Session(c, "dave")
        assert s.rc == 0 and f"/job_{jid}/" in _cgroup(s.shell), s.stderr
        if restart:
            (node,) = c.job(jid)["nodes"]  # type: ignore[index]
            c.stop(f"craned-{node}")
            c.start_agent(node)
            _wait_log(c, rf"adopted step {jid}\.\d+")
            c.wait_nodes_up(WAIT)
        with open(go, "w"):
            pass  # the batch script ends by itself
        c.wait_state(jid, "COMPLETED", timeout=WAIT)
        wait_for(lambda: _gone(s.shell), WAIT, "the adopted session to end with the job")
    finally:
        c.run("ccancel", str(jid))
        if s is not None:
            s.kill()
        if os.path.exists(go):
            os.unlink(go)


def test_adopt_job_chosen_by_the_user(sc: Cluster) -> None:
    c = sc
    sessions: list[Session] = []
    jobs: list[int] = []
    try:
        older = _running_job(c, "dave", *OTHER_NODE)  # the two jobs on two agents of this host
        jobs.append(older)
        newer = _running_job(c, "dave")
        jobs.append(newer)
        default = Session(c, "dave")
        chosen = Session(c, "dave", older)
        wrong = Session(c, "dave", 99999999)
        sessions += [default, chosen, wrong]
        assert default.rc == chosen.rc == wrong.rc == 0
        assert f"/job_{newer}/" in _cgroup(default.shell)
        assert f"/job_{older}/" in _cgroup(chosen.shell), chosen.stderr
        assert f"/job_{newer}/" in _cgroup(wrong.shell)
        assert "CRANE_ADOPT_JOB=99999999 is not a running job of dave" in wrong.stderr, wrong.stderr

        c.ok("ccancel", str(older))
        wait_for(lambda: _gone(chosen.shell), WAIT, "the session in the older job to die")
        assert not _gone(default.shell) and not _gone(wrong.shell)
        c.ok("ccancel", str(newer))
        wait_for(lambda: _gone(default.shell) and _gone(wrong.shell), WAIT, "the sessions in the newer job to die")
    finally:
        for jid in jobs:
            c.run("ccancel", str(jid))
        for s in sessions:
            s.kill()


def test_strays_swept_after_the_last_job_on_the_host(sc: Cluster) -> None:
    c = sc
    procs: list[subprocess.Popen[bytes]] = []
    pids: list[int] = []
    jobs: list[int] = []
    try:
        first = _running_job(c, "erin", *OTHER_NODE)  # on another agent of this host than the last one
        second = _running_job(c, "erin")
        jobs += [first, second]
        p, stray = _stray("erin")
        procs.append(p)
        pids.append(stray)
        swept_before = _metric(c, "crane_strays_swept_total")

        # another job of erin still runs on this host: nothing outside the jobs is touched
        c.ok("ccancel", str(first))
        c.wait_state(first, "CANCELLED", timeout=WAIT)
        _wait_log(c, rf"no sweep after job {first}: user erin still has a job on this host")
        assert not _gone(stray)

        # the last one: the stray ends with it
        c.ok("ccancel", str(second))
        wait_for(lambda: _gone(stray), WAIT, "erin's stray process to be swept")
        _wait_log(c, rf"swept \d+ processes of user erin after job {second}: .*\b{stray}\b")
        wait_for(lambda: _metric(c, "crane_strays_swept_total") >= swept_before + 1, WAIT, "sweep counted")
    finally:
        for jid in jobs:
            c.run("ccancel", str(jid))
        _end(procs, pids)


def test_exempt_users_and_root_are_never_swept(sc: Cluster) -> None:
    c = sc
    procs: list[subprocess.Popen[bytes]] = []
    pids: list[int] = []
    jobs: list[int] = []
    try:
        for user in ("frank", "root"):
            jid = _running_job(c, user)
            jobs.append(jid)
            p, stray = _stray(user)
            procs.append(p)
            pids.append(stray)
            c.ok("ccancel", str(jid))
            c.wait_state(jid, "CANCELLED", timeout=WAIT)
            _wait_log(c, rf"no sweep after job {jid}: user {user} is exempt")
            assert not _gone(stray), f"{user}'s process was swept"
        # frank is not adopted either
        jid = _running_job(c, "frank")
        jobs.append(jid)
        s = Session(c, "frank")
        try:
            assert s.rc == 0 and "/crane/" not in _cgroup(s.shell), _cgroup(s.shell)
        finally:
            s.kill()
    finally:
        for jid in jobs:
            c.run("ccancel", str(jid))
        _end(procs, pids)


def test_no_session_without_a_job_that_can_take_it(sc: Cluster) -> None:
    """Attack (red team): while the user's only job here was suspended (or
    being cancelled) the account phase let them in and nothing could adopt the
    session, so it outlived the job. The session phase refuses it now."""
    c = sc
    sessions: list[Session] = []
    jid = _running_job(c, "dave")
    try:
        c.ok("ccontrol", "suspend", str(jid))
        c.wait_state(jid, "SUSPENDED", timeout=WAIT)
        s = Session(c, "dave")
        sessions.append(s)
        assert s.rc == 1 and "no job to adopt the session into" in s.stderr, s.stderr
        c.ok("ccontrol", "resume", str(jid))
        c.wait_state(jid, "RUNNING", timeout=WAIT)
        s = Session(c, "dave")
        sessions.append(s)
        assert s.rc == 0, s.stderr
        assert f"/job_{jid}/" in _cgroup(s.shell), _cgroup(s.shell)
    finally:
        c.run("ccancel", str(jid))
        for s in sessions:
            s.kill()



def test_stop_all_of_a_user_stops_every_process_at_once(sc: Cluster) -> None:
    """Red team: a stray forking every 2 ms outran the sweep's scans. Before
    killing, the sweep now stops all of the user's processes in one kill(-1)
    made as the user (a stopped process cannot fork); processes of other users
    are untouched. (The race itself is not reproduced here: it depends on
    timing, and each of its exited parents is left for PID 1 to reap.)"""
    from crane.agent.sweep import stop_all_of

    # users no sweep of this module's jobs may reach (a sweep goes on for KillWait
    # after a job and takes strays that show up meanwhile): one without jobs, and
    # frank (ExemptUsers)
    ensure_user("rtstopper")
    mine, mine_pid = _stray("rtstopper")
    other, other_pid = _stray("frank")
    try:
        stop_all_of(pwd.getpwnam("rtstopper").pw_uid)
        wait_for(lambda: psutil.Process(mine_pid).status() == psutil.STATUS_STOPPED, WAIT, "rtstopper's process stopped")
        assert psutil.Process(other_pid).status() != psutil.STATUS_STOPPED
    finally:
        _end([mine, other], [mine_pid, other_pid])
