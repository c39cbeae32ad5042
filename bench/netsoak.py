"""A soak on the multi-host lab: ``python -m bench.netsoak [--duration 300] [--seed N]``.

Root only. Builds a :class:`bench.netlab.NetCluster` (controller host, login
host, ``--nodes`` compute hosts; HeartbeatInterval 1 s, CranedTimeout
``--timeout`` s; PreemptType qos, PreemptMode CANCEL, QoS ``high`` may
preempt QoS ``low``) and for ``--duration`` seconds runs, from the login host
as the real users alice, bob and carol (CLIs over TCP with MUNGE):

* ``cbatch --array`` bursts of short low-QoS jobs (``soak-a``), ``cbatch
  --repeat`` batches of longer low-QoS jobs (``soak-l``: the preemption
  victims and filter targets), and single high-QoS jobs (``soak-h``, 2 or 4
  cpus) that preempt low ones;
* ``ccancel`` by ids, by ids with ``--wait``, by array id, by filter (``-u U
  -n soak-l``, ``-u U -t pd -n soak-a``); each call carries its own message
  ``-m soak-<n>`` and ``--json``, so a cancelled job names the call that
  cancelled it;

under rotating faults (one at a time, always healed, then a gap): a compute
host cut for less than CranedTimeout (``cut_short``) and for more
(``cut_long``), a compute host's veth pulled off the bridge (``pull``, short
or long), a slow lossy link (``slow``, tbf), the login host cut (``login``),
the controller blackholed from one agent (``block``, short or long).

Afterwards everything is healed, the nodes must come back, the jobs still
active are cancelled by root (message ``soak-final``) and must end, and the
outcome is classified by bench/soak_verdicts.py (the exact definitions of
lost, duplicated, orphaned, wrongly killed, false downs and early waits;
pure functions tested in tests/test_netsoak.py). Every count must be 0
(exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

from bench.soak_verdicts import (
    ARRAY,
    COUNTS,
    CUTS_CTL,
    EXTRA,
    FINAL,
    HI,
    HIGH,
    LONG,
    LOW,
    ORPHAN_GRACE,
    CancelCall,
    Fault,
    Submit,
    array_ids,
    duplicate_ids,
    duplicate_runs,
    early_waits,
    false_downs,
    fault_mix,
    held_resources,
    lost_cancels,
    lost_submissions,
    orphans,
    plan_fault,
    why_ended,
)
from crane.core.states import JobState, NodeState, PreemptMode

BIN = os.path.dirname(sys.executable)
QOS_SETUP = (
    ["add", "qos", LOW, "Priority=100"],
    ["add", "qos", HIGH, "Priority=5000", f"Preempt={LOW}"],
    ["modify", "account", "where", "Name=default", "set", f"AllowedQos+={LOW},{HIGH}"],
)
PENDING_CAP = 60  # no new low-QoS submissions while this many of ours wait
USERS = ("alice", "bob", "carol")
FAULT_KINDS = ("cut_short", "cut_long", "pull", "slow", "login", "block")


def log(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, duration: float, seed: int, nodes: int = 4, timeout: float = 6.0) -> None:
        from bench.netlab import NetCluster

        self.duration, self.seed, self.timeout = duration, seed, timeout
        self.rng = random.Random(seed)
        self.base = tempfile.mkdtemp(prefix="soak-", dir="/tmp")
        os.chmod(self.base, 0o755)
        tag = f"sk{os.getpid() % 100000}"
        self.c = NetCluster(self.base, tag, nodes, 4, HeartbeatInterval=1, CranedTimeout=timeout,
                            Preempt={"PreemptType": "qos", "PreemptMode": PreemptMode.CANCEL.value})  # fmt: skip
        self.cluster_name = str(self.c.cfg["ClusterName"])
        self.work = os.path.join(self.base, "work")
        self.marks = os.path.join(self.base, "marks")
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.subs: list[Submit] = []
        self.calls: list[CancelCall] = []
        self.faults: list[Fault] = []
        self.view: dict[int, dict[str, Any]] = {}  # active jobs, refreshed every second
        self.downs: list[tuple[str, float, float]] = []  # node, first seen DOWN, last seen DOWN
        self.orphan_found: dict[int, str] = {}
        self.seq = 0
        self.errors: list[str] = []
        self.started = 0.0

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        import pwd

        for u in USERS:
            try:
                pwd.getpwnam(u)
            except KeyError:
                subprocess.run(
                    ["useradd", "-M", "-s", "/bin/sh", u], check=True, capture_output=True
                )
        for d in (self.work, self.marks):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o1777)
        t0 = time.monotonic()
        self.c.create(timeout=90)
        log(
            f"lab and cluster up in {time.monotonic() - t0:.1f}s ({self.base}, cluster {self.cluster_name})"
        )
        from crane.cacctmgr_parse import parse_argv
        from crane.core import messages as m

        self.c.request(m.QueryJobs())  # root's first request: root joins account "default"
        for argv in QOS_SETUP:
            try:
                self.c.request(m.AcctOp(parse_argv(argv)))
            except Exception:
                if argv[0] != "modify":
                    raise
                # account "default" appears with the first submission
                r = self.cli("alice", "cbatch", "--json", "-H", "-J", "setup", "--wrap", "true")
                jid = int(json.loads(r.stdout)["job_id"])
                self.c.request(m.AcctOp(parse_argv(argv)))
                self.c.request(m.Cancel(ids=[[jid, None]], message=FINAL))

    def teardown(self, keep: bool) -> None:
        try:
            self.c.lab.heal_all()
        finally:
            try:
                self.c.destroy()
            finally:
                self.kill_leftovers()
        if keep:
            log(f"logs kept in {self.base}/log")
        else:
            shutil.rmtree(self.base, ignore_errors=True)

    def kill_leftovers(self) -> None:
        """Job processes of this cluster that outlived it (a product bug,
        reported as orphans): ours, so ended by pid; then its empty cgroups."""
        leaked = self.scan()
        for ps in leaked.values():
            for pid, _node in ps:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        if leaked:
            log(
                f"killed {sum(map(len, leaked.values()))} leftover job processes of {len(leaked)} jobs"
            )
        deadline = time.monotonic() + 10
        while self.scan() and time.monotonic() < deadline:
            time.sleep(0.1)
        for top in glob.glob(f"/sys/fs/cgroup/*/crane/{self.cluster_name}"):
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass

    # ------------------------------------------------------------ requests

    def cli(self, user: str, *argv: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        """A CLI on the login host as ``user``; a timeout is rc None (not acknowledged)."""
        env = [f"CRANE_CONF={self.c.config_path}", f"PATH={BIN}:/usr/bin:/bin", "HOME=/tmp"]
        cmd = self.c.lab.argv(
            "login",
            ["runuser", "-u", user, "--", "env", *env, os.path.join(BIN, argv[0]), *argv[1:]],
        )
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd=self.work
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return subprocess.CompletedProcess(cmd, -999, out, "timeout")

    def ask(self, msg: Any, timeout: float = 10.0) -> dict[str, Any] | None:
        try:
            return self.c.request(msg, timeout)
        except Exception as e:  # the controller's ipc socket: never cut by a fault
            log(f"admin request {type(msg).__name__} failed: {e}")
            return None

    def next_seq(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def script(self, seconds: str, leftover: bool = False) -> str:
        """Its marker line, then a sleep; ``leftover``: a background child
        that outlives the script (the agent must end it with the job)."""
        mark = f'echo "$CRANE_NODENAME $$ $CRANE_RESTART_COUNT" >> {self.marks}/$CRANE_JOB_ID'
        return f"{mark}; {'sleep 300 & ' if leftover else ''}sleep {seconds}"

    # ------------------------------------------------------------ workload

    def submit(self, user: str, name: str, qos: str, count: int, extra: list[str], seconds: str,
               array: bool, leftover: bool = False) -> None:  # fmt: skip
        s = Submit(self.next_seq(), user, name, qos, count, time.time())
        argv = ["cbatch", "--json", "-q", qos, "-J", name, "-o", "/dev/null", "-t", "30", *extra]
        if array:
            argv += ["-a", f"0-{count - 1}"]
        elif count > 1:
            argv += ["--repeat", str(count)]
        r = self.cli(user, *argv, "--wrap", self.script(seconds, leftover))
        s.done, s.rc = time.time(), (None if r.returncode == -999 else r.returncode)
        if r.returncode == 0:
            data = json.loads(r.stdout)
            s.ids = (
                array_ids(int(data["job_id"]), count)
                if array
                else ([int(data["job_id"])] if count == 1 else [int(x) for x in data["job_ids"]])
            )
        elif r.returncode != 3:
            log(f"cbatch #{s.seq} as {user}: exit {r.returncode}: {r.stderr.strip()[:200]}")
        with self.lock:
            self.subs.append(s)

    def pending(self) -> int:
        with self.lock:
            return sum(
                1 for j in self.view.values() if j["state"] == JobState.PENDING and j["qos"] == LOW
            )

    def submitter(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            if self.pending() >= PENDING_CAP:
                self.stop.wait(0.5)
                continue
            user = rng.choice(USERS)
            if rng.random() < 0.75:
                n = rng.randint(10, 40)
                self.submit(
                    user,
                    ARRAY,
                    LOW,
                    n,
                    [],
                    f"$((CRANE_ARRAY_TASK_ID % 3)).{rng.randint(1, 9)}",
                    True,
                    rng.random() < 0.25,
                )
            else:
                self.submit(user, LONG, LOW, rng.randint(2, 6), [], str(rng.randint(15, 40)), False)
            self.stop.wait(rng.uniform(0.3, 1.2))

    def high(self, rng: random.Random) -> None:
        while not self.stop.wait(rng.uniform(3.0, 6.0)):
            self.submit(
                rng.choice(USERS),
                HI,
                HIGH,
                1,
                ["-c", str(rng.choice([2, 4]))],
                str(rng.randint(1, 3)),
                False,
            )

    def canceller(self, rng: random.Random) -> None:
        while not self.stop.wait(rng.uniform(0.8, 2.0)):
            with self.lock:
                live = [j for j in self.view.values() if j["state"] in (JobState.PENDING, JobState.RUNNING)
                        and j["name"] in (ARRAY, LONG, HI)]  # fmt: skip
            if not live:
                continue
            user = rng.choice(live)["user"]
            mine = [j for j in live if j["user"] == user]
            kind = rng.choices(["ids", "wait", "array", "long", "pending"], [5, 3, 2, 2, 1])[0]
            c = CancelCall(self.next_seq(), user)
            argv = ["ccancel", "--json", "-m", c.message]
            if kind == "ids":
                c.ids = sorted(
                    int(j["job_id"]) for j in rng.sample(mine, min(len(mine), rng.randint(1, 4)))
                )
            elif kind == "wait":
                running = [j for j in mine if j["state"] == JobState.RUNNING] or mine
                c.ids, c.wait = (
                    sorted(int(j["job_id"]) for j in rng.sample(running, min(len(running), 2))),
                    True,
                )
                argv.append("--wait")
            elif kind == "array":
                arrays = sorted({int(j["array_job_id"]) for j in mine if j.get("array_job_id")})
                if not arrays:
                    continue
                c.ids, c.array = [rng.choice(arrays)], True
            elif kind == "long":
                c.filters = {"user": user, "name": LONG}
                argv += ["-u", user, "-n", LONG]
            else:
                c.filters = {"user": user, "name": ARRAY, "pending": True}
                argv += ["-u", user, "-n", ARRAY, "-t", "pd"]
            argv += [str(i) for i in c.ids]
            c.sent = time.time()
            r = self.cli(user, *argv, timeout=120)
            c.done, c.rc = time.time(), (None if r.returncode == -999 else r.returncode)
            if r.returncode in (0, 4):
                try:
                    c.result = json.loads(r.stdout)
                except ValueError:
                    log(
                        f"ccancel #{c.seq}: exit {r.returncode}, not JSON: {r.stdout[:200]!r} {r.stderr[:200]!r}"
                    )
            elif r.returncode != 3:
                log(f"ccancel #{c.seq} as {user}: exit {r.returncode}: {r.stderr.strip()[:200]}")
            if c.wait and r.returncode == 0:
                self.after_wait(c)
            with self.lock:
                self.calls.append(c)

    def after_wait(self, c: CancelCall) -> None:
        from crane.core import messages as m

        assert c.result is not None
        ids = [int(x["job_id"]) for x in c.result.get("cancelled", [])]
        procs = self.scan()
        for hist in (False, True):
            data = self.ask(m.QueryJobs({"jobs": ids}, history=hist)) or {"jobs": []}
            for j in data["jobs"]:
                c.after.setdefault(int(j["job_id"]), j["state"])
        c.after_procs = {jid: [p for p, _ in procs[jid]] for jid in ids if procs.get(jid)}

    # ------------------------------------------------------------ faults

    def apply(self, kind: str, host: str, on: bool) -> None:
        lab = self.c.lab
        if kind in ("cut_short", "cut_long", "login"):
            (lab.cut if on else lab.heal)(host)
        elif kind == "pull":
            (lab.pull if on else lab.plug)(host)
        elif kind == "slow":
            (lab.slow if on else lab.fast)(host)
        elif kind == "block":
            (lab.block if on else lab.unblock)("ctl", host)

    def faulter(self, rng: random.Random) -> None:
        nodes = list(self.c.node_list)
        kinds: list[str] = []
        while not self.stop.wait(rng.uniform(1.0, 2.5)):
            if not kinds:  # every kind once per round, in a random order
                kinds = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
            kind = kinds.pop()
            host, secs = plan_fault(rng, kind, nodes, self.timeout)
            if kind in CUTS_CTL:  # where it hurts: the node running the most long jobs
                with self.lock:
                    busy = Counter(n for j in self.view.values() if j["state"] == JobState.RUNNING
                                   and j["name"] == LONG for n in j["nodes"])  # fmt: skip
                if busy:
                    host = max(nodes, key=lambda n: (busy[n], rng.random()))
            left = self.started + self.duration - time.time()
            if (
                secs > left
            ):  # no room for it: a short cut, if that fits (never one cut in the middle)
                kind, (host, secs) = "cut_short", plan_fault(rng, "cut_short", nodes, self.timeout)
                if secs > left:
                    break
            f = Fault(kind, host, time.time())
            with self.lock:
                self.faults.append(f)
            self.apply(kind, host, True)
            self.stop.wait(secs)
            self.apply(kind, host, False)
            f.end = time.time()
            log(f"fault {kind} on {host}: {f.seconds:.1f}s")

    # ------------------------------------------------------------ monitor

    def scan(self) -> dict[int, list[tuple[int, str]]]:
        """Live processes of this cluster's jobs: job -> [(pid, node)]."""
        out: dict[int, list[tuple[int, str]]] = {}
        marker = f"/crane/{self.cluster_name}/"
        name = self.cluster_name.encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            jid, node = None, "?"
            try:
                with open(f"/proc/{d}/cgroup") as f:
                    for line in f:
                        if marker in line:
                            part = line.split(marker, 1)[1].strip().split("/")
                            if len(part) > 1 and part[1].startswith("job_"):
                                jid, node = int(part[1][4:]), part[0]
                                break
                if jid is None:
                    with open(f"/proc/{d}/environ", "rb") as f:
                        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
                    if (
                        env.get(b"CRANE_CLUSTER_NAME") == name
                        and env.get(b"CRANE_JOB_ID", b"").isdigit()
                    ):
                        jid, node = (
                            int(env[b"CRANE_JOB_ID"]),
                            env.get(b"CRANE_NODENAME", b"?").decode(),
                        )
                with open(f"/proc/{d}/stat", "rb") as f:
                    if f.read().rsplit(b") ", 1)[-1][:1] in (b"Z", b"X"):
                        continue
            except (OSError, ValueError):
                continue
            if jid is not None:
                out.setdefault(jid, []).append((int(d), node))
        return out

    def cgroups(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for p in glob.glob(f"/sys/fs/cgroup/*/crane/{self.cluster_name}/*/job_*"):
            try:
                out.setdefault(int(p.rsplit("job_", 1)[1]), []).append(p)
            except ValueError:
                pass
        return out

    def lookup(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        from crane.core import messages as m

        out: dict[int, dict[str, Any]] = {}
        for hist in (True, False):
            data = self.ask(m.QueryJobs({"jobs": ids}, history=hist), timeout=20) or {"jobs": []}
            out.update({int(j["job_id"]): j for j in data["jobs"]})
        return out

    def monitor(self) -> None:
        from crane.core import messages as m

        last_scan = time.monotonic()
        while not self.stop.wait(1.0):
            data = self.ask(m.QueryJobs())
            if data is not None:
                with self.lock:
                    self.view = {int(j["job_id"]): j for j in data["jobs"]}
            nodes = self.ask(m.QueryNodes())
            now = time.time()
            for n in (nodes or {}).get("nodes", []):
                if n["state"] == NodeState.DOWN:
                    with self.lock:
                        if (
                            self.downs
                            and self.downs[-1][0] == n["name"]
                            and now - self.downs[-1][2] < 3
                        ):
                            self.downs[-1] = (n["name"], self.downs[-1][1], now)
                        else:
                            self.downs.append((n["name"], now, now))
            if time.monotonic() - last_scan > 5:
                last_scan = time.monotonic()
                self.orphan_round()

    def orphan_round(self) -> None:
        procs = self.scan()
        with self.lock:
            active = set(self.view)
        cand = [j for j in procs if j not in active and j not in self.orphan_found]
        if not cand:
            return
        known = self.lookup(cand)
        with self.lock:
            faults = list(self.faults)
        for jid, why in orphans({j: procs[j] for j in cand}, known, faults, time.time()).items():
            log(f"ORPHAN: {why}")
            self.orphan_found[jid] = why

    # ------------------------------------------------------------ run

    def run(self) -> None:
        self.started = time.time()
        threads = [threading.Thread(target=self.monitor, name="monitor", daemon=True)]
        for name, fn in (("submitter", self.submitter), ("high", self.high), ("canceller", self.canceller),
                         ("faulter", self.faulter)):  # fmt: skip
            threads.append(threading.Thread(target=self.guard, args=(fn, random.Random(self.rng.randrange(2**31))),
                                            name=name, daemon=True))  # fmt: skip
        for t in threads:
            t.start()
        deadline = self.started + self.duration
        while time.time() < deadline and not self.stop.is_set():
            time.sleep(min(5.0, max(0.0, deadline - time.time())))
            with self.lock:
                n = sum(len(s.ids) for s in self.subs)
            log(f"{time.time() - self.started:.0f}s: {n} jobs acknowledged, {len(self.calls)} cancels, "
                f"{len(self.faults)} faults, {len(self.view)} active")  # fmt: skip
        self.stop.set()
        for t in threads:
            t.join(180)
            if t.is_alive():
                self.errors.append(f"thread {t.name} did not stop within 180 s")

    def guard(self, fn: Any, rng: random.Random) -> None:
        try:
            fn(rng)
        except Exception as e:  # a harness bug must not silently stop the load
            import traceback

            self.errors.append(f"{fn.__name__} raised {type(e).__name__}: {e}")
            log(traceback.format_exc())
            self.stop.set()

    def settle(self) -> None:
        """Heal, wait for the nodes, cancel what is left, wait for every job to end."""
        from crane.core import messages as m

        self.c.lab.heal_all()
        try:
            self.c.wait_nodes_up(60)
        except TimeoutError as e:
            self.errors.append(f"nodes not back after healing: {e}")
        self.ask(
            m.Cancel(
                filters={
                    "states": [
                        JobState.PENDING.value,
                        JobState.RUNNING.value,
                        JobState.SUSPENDED.value,
                    ]
                },
                force=True,
                message=FINAL,
            )
        )
        deadline = time.monotonic() + 60
        left: list[Any] = []
        while time.monotonic() < deadline:
            data = self.ask(m.QueryJobs())
            left = (data or {"jobs": [0]})["jobs"]
            if not left:
                break
            time.sleep(0.5)
        if left:
            self.errors.append(f"{len(left)} jobs still active 60 s after the final cancel: "
                               f"{[(j['job_id'], j['state']) for j in left[:10]]}")  # fmt: skip

    def final_orphans(self, known: dict[int, dict[str, Any]]) -> list[str]:
        """At the end nothing of any job may remain (polled up to ORPHAN_GRACE)."""
        deadline = time.monotonic() + ORPHAN_GRACE
        while True:
            procs, cgs = self.scan(), self.cgroups()
            if not procs and not cgs or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        out = [self.orphan_found[j] for j in sorted(self.orphan_found)]
        for jid, ps in sorted(procs.items()):
            if jid not in self.orphan_found:
                out.append(
                    f"job {jid} ({(known.get(jid) or {}).get('state')}): processes {ps} alive at the end"
                )
        for jid, paths in sorted(cgs.items()):
            if jid not in self.orphan_found and jid not in procs:
                out.append(f"job {jid}: cgroups {paths} left at the end")
        from crane.core import messages as m

        nodes = (self.ask(m.QueryNodes()) or {}).get("nodes", [])
        out += held_resources(nodes, [])
        return out

    def marks_by_job(self) -> dict[int, list[str]]:
        out = {}
        for name in os.listdir(self.marks):
            if name.isdigit():
                with open(os.path.join(self.marks, name), errors="replace") as f:
                    out[int(name)] = [ln for ln in f.read().splitlines() if ln.strip()]
        return out

    def classify(self) -> tuple[dict[str, list[str]], Counter[str]]:
        from crane.core import messages as m

        known: dict[int, dict[str, Any]] = {}
        for hist in (True, False):
            data = self.ask(m.QueryJobs(history=hist), timeout=60) or {"jobs": []}
            known.update({int(j["job_id"]): j for j in data["jobs"]})
        calls = {c.message: c for c in self.calls}
        problems: dict[str, list[str]] = {k: [] for k in COUNTS + EXTRA}
        problems["early_waits"] = early_waits(self.calls)
        problems["false_downs"] = false_downs(self.downs, self.faults, self.timeout)
        problems["lost"] = lost_submissions(self.subs, known) + lost_cancels(self.calls, known)
        problems["duplicated"] = duplicate_ids(self.subs) + duplicate_runs(
            self.marks_by_job(), known
        )
        problems["orphaned"] = self.final_orphans(known)
        tally: Counter[str] = Counter()
        for j in known.values():
            if j["name"] not in (ARRAY, LONG, HI):
                continue
            cat, why = why_ended(j, calls, self.faults, self.timeout, known)
            tally[cat] += 1
            if why:
                problems["wrongly_killed"].append(why)
        return problems, tally


def report(s: Soak, problems: dict[str, list[str]], tally: Counter[str], took: float) -> str:
    acked = sum(len(x.ids) for x in s.subs)
    lines = [f"netsoak: seed {s.seed}, {len(s.c.node_list)} compute hosts, HeartbeatInterval 1s, "
             f"CranedTimeout {s.timeout:g}s",
             f"duration: {s.duration:g}s of load and faults ({took:.0f}s in all)"]  # fmt: skip
    mix = fault_mix(s.faults)
    lines.append(
        "faults: "
        + ", ".join(f"{k} {n}x {t:.0f}s" for k, (n, t) in sorted(mix.items()))
        + f" (total {sum(n for n, _ in mix.values())}, {sum(t for _, t in mix.values()):.0f}s)"
    )
    downs = Counter(n for n, _, _ in s.downs)
    lines.append(f"nodes seen DOWN: {sum(downs.values())} times ({dict(sorted(downs.items()))})")
    calls = [c for c in s.calls]
    lines.append(f"cbatch calls: {len(s.subs)} ({sum(1 for x in s.subs if x.ids)} acknowledged); "
                 f"ccancel calls: {len(calls)} ({sum(1 for c in calls if c.acknowledged)} acknowledged, "
                 f"{sum(1 for c in calls if c.wait and c.rc == 0)} --wait)")  # fmt: skip
    lines.append(f"jobs: submitted {acked} (acknowledged), completed {tally['completed']}, "
                 f"cancelled {tally['cancelled']}, preempted {tally['preempted']}, "
                 f"failed {tally['failed'] + tally['node_fail']} (node down {tally['node_fail']}), "
                 f"cancelled at the end {tally['final']}")  # fmt: skip
    for k in COUNTS + EXTRA:
        lines.append(f"{k}: {len(problems[k])}")
        lines += [f"  {p}" for p in problems[k][:20]]
    if s.errors:
        lines.append(f"harness errors: {len(s.errors)}")
        lines += [f"  {e}" for e in s.errors[:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netsoak", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--duration", type=float, default=300.0, help="seconds of load and faults (default 300)"
    )
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    ap.add_argument("--nodes", type=int, default=4, help="compute hosts (default 4)")
    ap.add_argument(
        "--timeout", type=float, default=6.0, help="CranedTimeout in seconds (default 6)"
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the cluster's directory (logs) even when all is well",
    )
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "netsoak: error: needs root (network namespaces, cgroups, real users)", file=sys.stderr
        )
        return 1
    seed = a.seed if a.seed is not None else int(time.time()) % 100000
    t0 = time.monotonic()
    s = Soak(a.duration, seed, a.nodes, a.timeout)
    bad = True
    try:
        s.setup()
        s.run()
        s.settle()
        problems, tally = s.classify()
        bad = any(problems[k] for k in COUNTS + EXTRA) or bool(s.errors)
        print(report(s, problems, tally, time.monotonic() - t0), flush=True)
    finally:
        s.teardown(keep=bad or a.keep)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
