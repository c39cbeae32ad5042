"""Issue 12, the viewing side of a user's first day: `crane local down`
stops whatever runs for its directory, `restart`, `status` with $CRANE_CONF
(item 9); cacct time windows, -P, --format, step rows (12); cinfo -o/-s/-l,
cqueue --me, awk-parseable default tables (16); one time format (17); empty
cells instead of None (18); config key suggestions (19); `Not responding`
for a node whose agent is gone (10); no CLI imports another's command module."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from crane.cli.cacct import in_window, parse_when
from crane.cli.common import CliError
from crane.cli.format import duration, is_named_format
from crane.config import ConfigError, parse
from tests.conftest import BIN, Cluster, pid_alive, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
HMS = re.compile(r"^(\d+-)?\d\d:\d\d:\d\d$")


def rows(out: str) -> dict[str, list[str]]:
    """Table lines split on whitespace (as awk does), keyed by their first column."""
    return {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}


@pytest.fixture
def cleanup(cluster: Cluster) -> Iterator[list[int]]:
    ids: list[int] = []
    yield ids
    if ids:
        cluster.run("ccancel", "--wait", ",".join(str(i) for i in ids))


# --------------------------------------------------------------------------- pure parts


def test_duration_is_one_format() -> None:
    assert duration(5) == "00:00:05"
    assert duration(600) == "00:10:00"
    assert duration(3723) == "01:02:03"
    assert duration(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2-03:04:05"
    assert duration(None) == "UNLIMITED" and duration(float("inf")) == "UNLIMITED"
    assert duration(-3) == "00:00:00"


def test_time_window_parsing_and_overlap() -> None:
    now = time.mktime((2026, 3, 10, 15, 30, 0, 0, 0, -1))
    assert parse_when("now", now) == now
    assert parse_when("now-2hours", now) == now - 7200
    assert parse_when("now-30minutes", now) == now - 1800
    assert parse_when("NOW-1day", now) == now - 86400
    assert parse_when("today", now) == time.mktime((2026, 3, 10, 0, 0, 0, 0, 0, -1))
    assert parse_when("2026-03-01", now) == time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    assert parse_when("2026-03-01T08:15", now) == time.mktime((2026, 3, 1, 8, 15, 0, 0, 0, -1))
    assert parse_when("2026-03-01T08:15:09", now) == time.mktime((2026, 3, 1, 8, 15, 9, 0, 0, -1))
    assert parse_when("09:00", now) == time.mktime((2026, 3, 10, 9, 0, 0, 0, 0, -1))
    for bad in ("yesterday-ish", "now-3fortnights", "2026-13-01", ""):
        with pytest.raises(CliError):
            parse_when(bad, now)
    job = {"submit_time": 100.0, "start_time": 110.0, "end_time": 200.0}
    assert in_window(job, 150, None, 1000) and in_window(job, None, 120, 1000)
    assert not in_window(job, 201, None, 1000)  # ended before the window
    assert not in_window(job, None, 99, 1000)  # submitted after it
    assert in_window({"submit_time": 100.0, "end_time": None}, 900, None, 1000)  # still running


def test_named_format_is_told_from_letters() -> None:
    assert is_named_format("JobID,JobName%20,State")
    assert is_named_format("jobid")
    assert not is_named_format("%i %T")
    assert not is_named_format("%i|%j")


def test_unknown_config_key_suggests_the_nearest(tmp_path: pytest.TempPathFactory) -> None:
    node = {"name": "a", "cpu": 1, "memory": "1G"}
    with pytest.raises(ConfigError) as e:
        parse({"KillWiat": 3, "Nodes": [node]})
    assert str(e.value) == "KillWiat: unknown key (did you mean KillWait?)"
    with pytest.raises(ConfigError) as e:
        parse({"Nodes": [{**node, "cpus": 2}]})
    assert str(e.value) == "Nodes[0].cpus: unknown key (did you mean cpu?)"
    with pytest.raises(ConfigError) as e:
        parse({"Nodes": [node], "Preempt": {"PreemtMode": "OFF"}})
    assert str(e.value) == "Preempt.PreemtMode: unknown key (did you mean PreemptMode?)"
    with pytest.raises(ConfigError) as e:
        parse({"Bogus": 1, "Nodes": [node]})
    assert str(e.value) == "Bogus: unknown key"
    # the daemon says it in one line
    path = os.path.join(str(tmp_path), "bad.yaml")
    with open(path, "w") as f:
        f.write("KillWiat: 3\nNodes: [{name: a, cpu: 1, memory: 1G}]\n")
    r = subprocess.run([os.path.join(BIN, "cranectld"), "-C", path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == "cranectld: KillWiat: unknown key (did you mean KillWait?)"


def _imports(path: str) -> set[str]:
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_clis_do_not_import_each_others_commands() -> None:
    commands = {"crane.cli." + n[:-3] for n in os.listdir(os.path.join(ROOT, "crane", "cli"))
                if n.endswith(".py") and n not in ("__init__.py", "common.py", "format.py", "gres.py", "filter_options.py")}  # fmt: skip
    for mod in ("crane.cli.cqueue", "crane.cli.cacct", "crane.cli.cinfo", "crane.cli.ccontrol", "crane.cli.crane"):
        path = mod.replace(".", "/") + ".py"
        others = {i for i in _imports(path) if i in commands and i != mod}
        if mod == "crane.cli.crane":
            others.discard("crane.local")
        assert not others, f"{path} imports {others}"
    assert not {i for i in _imports("crane/local.py") if i == "crane.cli" or i.startswith("crane.cli.")}


# --------------------------------------------------------------------------- cacct


def test_cacct_steps_parsable_format_and_window(cluster: Cluster, cleanup: list[int]) -> None:
    job = cluster.submit("-J", "fd steps", "-t", "10", wrap="sleep 300")
    cleanup.append(job)
    cluster.wait_state(job, "RUNNING")
    cluster.ok("crun", "--jobid", str(job), "true")
    cluster.ok("ccancel", "--wait", str(job), "-m", "no longer needed")
    end = cluster.wait_state(job, "CANCELLED")["end_time"]
    me = json.loads(cluster.ok("cacct", "--json", "-j", str(job)))[0]["user"]

    # step rows under the job row, each with its own state and exit code
    out = cluster.ok("cacct", "--steps", "-j", str(job))
    by_id = rows(out)
    assert [k for k in by_id if k.startswith(str(job))] == [str(job), f"{job}.1", f"{job}.2"]
    assert by_id[f"{job}.1"][1] == "batch" and by_id[f"{job}.1"][5] == "CANCELLED"
    assert by_id[f"{job}.2"][1] == "true" and by_id[f"{job}.2"][5:7] == ["COMPLETED", "0:0"]
    # without --steps, the job only (the default table is unchanged)
    assert list(rows(cluster.ok("cacct", "-N", "-j", str(job)))) == [str(job)]
    # -j with a step id: that step's row only
    assert list(rows(cluster.ok("cacct", "-N", "-j", f"{job}.2"))) == [f"{job}.2"]

    # -P: "|"-separated, no padding, no trailing "|"; the header too
    head, line = cluster.ok("cacct", "-P", "-j", str(job)).splitlines()
    assert head == "JOBID|JOBNAME|PARTITION|ACCOUNT|USER|STATE|EXITCODE|ELAPSED|NODELIST|REASON"
    cells = line.split("|")
    assert cells[:6] == [str(job), "fd steps", "CPU", "default", me, f"CANCELLED by {me}"]
    assert cells[-1] == "no longer needed" and not line.endswith("|")

    # --format with sacct's names, any case, %N widths
    out = cluster.ok("cacct", "-P", "--format=jobid,JobName,state,ExitCode,Elapsed,Start,End,TimeLimit,NodeList",
                     "-j", str(job), "--steps")  # fmt: skip
    table = [ln.split("|") for ln in out.splitlines()]
    assert table[0] == ["JobID", "JobName", "State", "ExitCode", "Elapsed", "Start", "End", "TimeLimit", "NodeList"]
    assert [r[0] for r in table[1:]] == [str(job), f"{job}.1", f"{job}.2"]
    assert table[1][2] == f"CANCELLED by {me}" and table[1][7] == "00:10:00"
    assert all(HMS.match(r[4]) and ISO.match(r[5]) and ISO.match(r[6]) for r in table[1:]), table
    out = cluster.ok("cacct", "-N", "--format=JobID%12,JobName%4", "-j", str(job))
    assert out.rstrip("\n") == f"{job:<12} fd s"
    r = cluster.run("cacct", "--format=JobID,Stat")
    assert r.returncode == 2 and "unknown field Stat (did you mean State?)" in r.stderr

    # time windows: -S/-E (explicit ones apply with -j too)
    assert str(job) in rows(cluster.ok("cacct", "-N", "-S", "now-1hours", "-j", str(job)))
    assert rows(cluster.ok("cacct", "-N", "-S", "now+1hours", "-j", str(job))) == {}
    assert rows(cluster.ok("cacct", "-N", "-E", "2000-01-01", "-j", str(job))) == {}
    assert str(job) in rows(cluster.ok("cacct", "-N", "-S", "2000-01-01T00:00", "-E", "now", "-n", "fd steps"))
    r = cluster.run("cacct", "-S", "sometime")
    assert r.returncode == 2 and r.stderr.startswith('cacct: error: invalid time "sometime"')
    # the default window starts at midnight today (skip when the day changed meanwhile)
    if time.localtime(end)[:3] == time.localtime()[:3]:
        assert str(job) in rows(cluster.ok("cacct", "-N", "-n", "fd steps"))


# --------------------------------------------------------------------------- awk, times, empty cells


def test_default_tables_split_like_awk_and_one_time_format(cluster: Cluster, cleanup: list[int]) -> None:
    run = cluster.submit("-J", "fd my job", "-t", "10", wrap="sleep 300")
    cleanup.append(run)
    held = cluster.submit("-J", "fd held", "-H", wrap="true")
    cleanup.append(held)
    cluster.wait_state(run, "RUNNING")

    # cqueue: a name with spaces is shown with "_", so awk's columns hold
    out = cluster.ok("cqueue", "-j", f"{run},{held}")
    head = out.splitlines()[0].split()
    q = rows(out)
    assert len(q[str(run)]) == len(head) and len(q[str(held)]) == len(head)
    assert q[str(run)][2] == "fd_my_job" and q[str(run)][5] == "RUNNING"
    assert q[str(run)][7:9][1] == "00:10:00" and HMS.match(q[str(run)][7])
    assert q[str(held)][7:9] == ["00:00:00", "UNLIMITED"] and q[str(held)][-1] == "(JobHeldUser)"
    awk = subprocess.run(["awk", "NR>1 {print $1, $3, $6}"], input=out, capture_output=True, text=True, check=True)
    assert f"{run} fd_my_job RUNNING" in awk.stdout.splitlines()
    # -l and --json keep the name as it is
    assert "fd my job" in cluster.ok("cqueue", "-l", "-j", str(run))
    assert json.loads(cluster.ok("cqueue", "--json", "-j", str(run)))[0]["name"] == "fd my job"

    # ccontrol: durations and dates in one format, nothing "None"/"Unknown"
    show = cluster.ok("ccontrol", "show", "job", str(held))
    kv = dict(w.split("=", 1) for w in show.split() if "=" in w)
    assert kv["TimeLimit"] == "UNLIMITED" and kv["RunTime"] == "00:00:00"
    assert ISO.match(kv["SubmitTime"]) and kv["StartTime"] == "" and kv["EndTime"] == ""
    assert "None" not in show and "Unknown" not in show
    show = cluster.ok("ccontrol", "show", "job", str(run))
    assert "TimeLimit=00:10:00" in show and "None" not in show

    # cacct: CANCELLED+ in the default table, the detail with -l/-P/--json
    cluster.ok("ccancel", "--wait", str(run), "-m", "no longer needed")
    cluster.ok("ccancel", "--wait", str(held))
    out = cluster.ok("cacct", "-j", f"{run},{held}")
    head = out.splitlines()[0].split()
    a = rows(out)
    assert a[str(run)][1] == "fd_my_job" and a[str(run)][5] == "CANCELLED+" and len(a[str(run)]) == len(head)
    assert a[str(run)][-1] == "no_longer_needed"
    assert HMS.match(a[str(run)][7])
    assert "None" not in out and "Unknown" not in out
    # a job that never ran: empty node list and reason, not "None"
    cells = cluster.ok("cacct", "-P", "-N", "-j", str(held)).strip().split("|")
    assert cells[0] == str(held) and cells[8] == "" and "None" not in cells
    long = cluster.ok("cacct", "-l", "-j", str(run))
    assert "CANCELLED by" in long and "no longer needed" in long and "fd my job" in long
    lhead, lline = long.splitlines()
    dates = re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", lline)
    assert len(dates) == 3, lline  # SUBMIT START END


# --------------------------------------------------------------------------- cinfo, cqueue --me


def test_cinfo_format_summarize_long(cluster: Cluster, cleanup: list[int]) -> None:
    job = cluster.submit("-w", "crane01", "-J", "fd_cinfo", wrap="sleep 300")
    cleanup.append(job)
    cluster.wait_state(job, "RUNNING")

    want = {"CPU*": ["CPU*", "up", "UNLIMITED", "1/1/0/2", "crane[01-02]"],
            "GPU": ["GPU", "up", "UNLIMITED", "0/2/0/2", "crane[03-04]"]}  # fmt: skip

    def summary() -> bool:  # other tests' jobs are gone once their nodes are idle again
        head, *lines = cluster.ok("cinfo", "-s").splitlines()
        assert head.split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES(A/I/O/T)", "NODELIST"]
        return {ln.split()[0]: ln.split() for ln in lines} == want

    wait_for(summary, 60, "cinfo -s with one allocated node")

    out = cluster.ok("cinfo", "--noheader", "-o", "%P|%a|%l|%D|%t|%N|%c|%m|%G")
    # a field without a width is as wide as its widest value (as cqueue -o)
    assert sorted("|".join(c.strip() for c in ln.split("|")) for ln in out.splitlines()) == sorted([
        "CPU*|up|UNLIMITED|1|mix|crane01|4|8G|-",
        "CPU*|up|UNLIMITED|1|idle|crane02|4|8G|-",
        "GPU|up|UNLIMITED|2|idle|crane[03-04]|4|8G|-",
    ])  # fmt: skip
    out = cluster.ok("cinfo", "-p", "GPU", "-o", "%.10P %-6t %5D")
    assert out.splitlines() == [" PARTITION STATE  NODES", "       GPU idle   2"]
    r = cluster.run("cinfo", "-o", "%P %Y")
    assert r.returncode == 2 and "unknown field %Y" in r.stderr

    out = cluster.ok("cinfo", "-l")
    head = out.splitlines()[0].split()
    assert head == ["PARTITION", "AVAIL", "TIMELIMIT", "CPUS", "MEMORY", "GRES", "NODES", "STATE", "NODELIST"]
    assert ["CPU*", "up", "UNLIMITED", "4", "8G", "-", "1", "MIX", "crane01"] in [ln.split() for ln in out.splitlines()]
    out = cluster.ok("cinfo", "-N", "-l", "-n", "crane01")
    assert out.splitlines()[1].split()[:4] == ["crane01", "CPU*", "MIX", "1/3/0/4"]


def test_cqueue_me(cluster: Cluster, users: dict[str, int], cleanup: list[int]) -> None:
    mine = cluster.submit("-J", "fd_me_alice", user="alice", wrap="sleep 300")
    cleanup.append(mine)
    other = cluster.submit("-J", "fd_me_bob", user="bob", wrap="sleep 300")
    cleanup.append(other)
    cluster.wait_state(mine, "RUNNING", "PENDING")
    ids = set(rows(cluster.ok("cqueue", "--me", "-N", user="alice")))
    assert str(mine) in ids and str(other) not in ids
    assert {j["user"] for j in json.loads(cluster.ok("cqueue", "--me", "--json", user="bob"))} == {"bob"}
    r = cluster.run("cqueue", "--me", "-u", "bob", user="alice")
    assert r.returncode == 2 and r.stderr.startswith("cqueue: error:")


# --------------------------------------------------------------------------- a node whose agent is gone


def test_down_node_says_not_responding(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=2, CranedTimeout=3)
    c.stop("craned-crane02")

    def down() -> list[str] | None:
        line = rows(c.ok("cinfo", "-N", "--noheader", "-n", "crane02")).get("crane02")
        return line if line and line[2] == "DOWN" else None

    line = wait_for(down, 60, "crane02 DOWN")
    assert " ".join(line[5:]) == "Not responding", line
    assert "Reason=Not responding" in c.ok("ccontrol", "show", "node", "crane02")
    assert rows(c.ok("cinfo", "-N", "-o", "%N %T %E"))["crane02"] == ["crane02", "DOWN", "Not", "responding"]
    # a node that is up has an empty reason, not "None"
    assert "None" not in c.ok("cinfo", "-N")


# --------------------------------------------------------------------------- crane local


def _crane(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run([os.path.join(BIN, "crane"), *argv], capture_output=True, text=True, timeout=180,
                          env=e, cwd="/")  # fmt: skip


def _pids(d: str) -> dict[str, int]:
    with open(os.path.join(d, "pids.json")) as f:
        return {k: int(v) for k, v in json.load(f).items()}


def _by_hand(argv: list[str], cwd: str) -> int:
    """A daemon started by hand (not by crane local), detached like a daemon."""
    p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    return p.pid


def test_local_down_stops_what_runs_for_its_dir(make_cluster: Callable[..., Cluster]) -> None:
    bystander = make_cluster(nodes=1)  # another cluster on this machine: never touched
    others = [p.pid for p in bystander.procs.values()]
    top = tempfile.mkdtemp(prefix="crane-fd-local-", dir="/tmp")
    os.chmod(top, 0o755)
    d = os.path.join(top, "lc")
    conf = os.path.join(d, "config.yaml")
    hand: list[int] = []
    try:
        r = _crane("local", "up", "--dir", d, "--nodes", "2")
        assert r.returncode == 0, r.stderr
        env = {"CRANE_CONF": conf}
        first = _pids(d)

        # restart: the daemons stop, start again; a job is kept
        held = json.loads(subprocess.run([os.path.join(BIN, "cbatch"), "--json", "-H", "--wrap", "true"],
                                         env={**os.environ, **env}, capture_output=True, text=True,
                                         cwd=top, check=True, timeout=60).stdout)["job_id"]  # fmt: skip
        r = _crane("local", "restart", env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Stopped ") and f"cranectld (pid {first['cranectld']})" in r.stdout
        assert f"Local cluster restarted: 2 nodes, config {conf}" in r.stdout
        assert not any(pid_alive(p) for p in first.values())
        second = _pids(d)
        q = subprocess.run([os.path.join(BIN, "cqueue"), "-N", "-j", str(held)], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert q.returncode == 0 and q.stdout.split()[0] == str(held), q

        # an agent and the controller restarted by hand, with other spellings of the config
        os.kill(second["craned-crane02"], signal.SIGTERM)
        wait_for(lambda: not pid_alive(second["craned-crane02"]), 30, "crane02's agent gone")
        hand.append(_by_hand([os.path.join(BIN, "craned"), "-C", "config.yaml", "-n", "crane02"], cwd=d))
        os.kill(second["cranectld"], signal.SIGTERM)
        wait_for(lambda: not pid_alive(second["cranectld"]), 30, "controller gone")
        hand.append(_by_hand([os.path.join(BIN, "cranectld"), f"--config={conf}"], cwd="/"))

        # status, through $CRANE_CONF alone, sees them
        def status() -> str | None:
            r = _crane("local", "status", env=env)
            ok = r.returncode == 0 and all(f"pid {p:<8} running (not started by crane local)" in r.stdout for p in hand)
            return r.stdout if ok and f"{'crane02':<20} IDLE" in r.stdout else None

        out = wait_for(status, 60, "status listing the daemons started by hand")
        assert f"{'craned-crane02':<20} pid {second['craned-crane02']:<8} dead" in out
        assert f"export CRANE_CONF={conf}" in out

        # down, through $CRANE_CONF alone, stops all of them and says which
        r = _crane("local", "down", env=env)
        assert r.returncode == 0, r.stderr
        assert f"craned-crane02 (pid {hand[0]})" in r.stdout and f"cranectld (pid {hand[1]})" in r.stdout
        assert f"craned-crane01 (pid {second['craned-crane01']})" in r.stdout
        assert r.stdout.rstrip().endswith("Local cluster stopped.")
        wait_for(lambda: not any(pid_alive(p) for p in hand), 30, "the hand-started daemons gone")
        assert not pid_alive(second["craned-crane01"])
        assert all(pid_alive(p) for p in others)  # the other cluster's daemons
        r = _crane("local", "status", env=env)
        assert r.returncode == 1 and r.stderr.strip() == f"crane: error: no local cluster in {d}"
    finally:
        _crane("local", "down", "--dir", d)
        for p in hand:
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_cacct_window_start_is_read_by_the_controller(tmp_path: os.PathLike[str]) -> None:
    """Red team: every cacct made the controller read the whole history; the
    window's start is now a filter the store applies (jobs_end index)."""
    import asyncio

    from crane.core.selection import check_filters
    from crane.store import Store

    assert check_filters({"ended_after": 1.5}) is None
    assert check_filters({"ended_after": True}) and check_filters({"ended_after": "x"})

    async def scenario() -> None:
        store = Store(os.path.join(tmp_path, "db", "crane.db"))
        store.start()
        try:
            now = time.time()
            for job_id, ended in ((1, now - 86400 * 3), (2, now - 60), (3, now)):
                store.put_job({"id": job_id, "state": "COMPLETED", "uid": 0, "end_time": ended})
            committed = asyncio.Event()
            store.barrier(committed.set)
            await asyncio.wait_for(committed.wait(), 30)
            assert [r["id"] for r in store.finished_jobs(ended_after=now - 3600)] == [2, 3]
            assert [r["id"] for r in store.finished_jobs()] == [1, 2, 3]
        finally:
            store.stop()

    asyncio.run(scenario())
