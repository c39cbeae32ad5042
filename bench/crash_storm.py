"""Controller crash storm (issue 6, item 1): ``python -m bench.crash_storm --crashes 20``.

Starts a local cluster (controller + 4 agents, QoS Background/Interactive with
preemption), runs a random workload from a thread (short, long, held,
multi-step ``crun`` and Background/Interactive jobs; cancels by id, by filters,
by step, forced, with a grace and graceful) and kill -9s ``cranectld`` at random
moments (uniform 0.2-2 s after the previous check; sometimes during recovery,
before it answers). After every restart it checks:

* every ACKNOWLEDGED submission exists (active or history) in a legal state;
* job ids are never reused (acknowledged ids unique and increasing);
* every ACKNOWLEDGED cancel completes (job terminal / step not RUNNING) within
  ``--deadline`` seconds of the restart;
* no process of a terminal (or unknown) job is alive: recorded step pids, a
  scan of /proc for processes in the cluster's cgroups, and (as root) no
  ``job_<id>`` cgroup left for a terminal job;
* ``PRAGMA integrity_check`` of ``<CraneBaseDir>/cranectld/crane.db`` is ok.

A request that fails with exit code 3 (controller unreachable) is not
acknowledged and not counted. At the end everything is cancelled and the same
checks run once more. Prints the figures, writes bench/results/crash_storm.json,
exits 1 if an invariant failed.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

from crane.cacctmgr_parse import parse_argv
from crane.cli.common import EXIT_UNREACHABLE, CliError, call, load_full_config
from crane.core import messages as m
from crane.local import LocalCluster, make_config
from crane.polling import pid_alive

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "crash_storm.json")
BIN = os.path.dirname(sys.executable)
CGROUP_V2 = "/sys/fs/cgroup/unified"

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "COMPLETING"}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"}
QOS_SETUP = (
    ["add", "qos", "Background", "Priority=100"],
    ["add", "qos", "Interactive", "Priority=5000", "Preempt=Background"],
    ["modify", "account", "where", "Name=default", "set", "AllowedQos+=Background,Interactive"],
)
# ERROR lines a crash storm may log without a bug behind them (substrings);
# anything else logged at ERROR, and every traceback, fails the storm
EXPECTED_LOG_ERRORS: tuple[str, ...] = ()
MULTI_SCRIPT = "#!/bin/sh\ncrun sleep 10\ncrun sleep 1\n"
MAX_PENDING = 30  # no new submissions (but "keep" jobs) while this many jobs wait
KEEP_MULTI_SCRIPT = "#!/bin/sh\ncrun sleep 3\ncrun sleep 2\ncrun true\n"


# Why a cancel the storm sent may leave a job it named alone: the job or the
# step ended between the storm's look at the queue and the cancel. Any other
# refusal is a finding (the storm runs as root, names only jobs it submitted,
# sends no signal and no filters with ids).
EXPECTED_REFUSALS = ("Job already finished (", "Step not found")


def cancel_surprises(ids: list[list[int | None]] | None, reply: dict[str, Any],
                     expected: tuple[str, ...] = EXPECTED_REFUSALS,
                     being_cancelled: set[int] | frozenset[int] = frozenset()) -> list[str]:  # fmt: skip
    """What a Cancel's reply says that the request did not ask for. With
    ``ids``: each (job, step) asked is cancelled or refused (a step is also
    covered by its whole job; a step of a job ``being_cancelled`` may go
    unmentioned: it dies with its job), nothing else is cancelled, and every
    refusal gives an ``expected`` reason. Without ids (filters): every
    refusal is a surprise unless its reason is expected."""
    out: list[str] = []
    cancelled: dict[int, list[int]] = {}
    for c in reply.get("cancelled") or []:
        cancelled[c["job_id"]] = list(c.get("steps") or [])
    refused: dict[tuple[int, int | None], str] = {}
    for r in reply.get("not_cancelled") or []:
        refused[r["job_id"], r.get("step_id")] = str(r.get("reason"))
        if not str(r.get("reason")).startswith(expected):
            out.append(f"job {r['job_id']}{'' if r.get('step_id') is None else '.' + str(r['step_id'])} "
                       f"not cancelled: {r.get('reason')!r}")  # fmt: skip
    if ids is None:
        return out
    asked = {(int(j), s) for j, s in ((i[0], i[1]) for i in ids) if j is not None}
    for jid, steps in cancelled.items():
        whole = not steps
        if (whole and (jid, None) not in asked) or any((jid, s) not in asked for s in steps):
            out.append(
                f"job {jid} cancelled ({'whole' if whole else 'steps ' + str(steps)}) but not asked"
            )
    for jid, step in sorted(asked, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        if (jid, step) in refused:
            continue
        done = jid in cancelled and (not cancelled[jid] or step in cancelled[jid])
        if not done and not (step is not None and jid in being_cancelled):
            out.append(
                f"job {jid}{'' if step is None else '.' + str(step)} asked, neither cancelled nor refused"
            )
    return out


def log(text: str) -> None:
    print(f"[storm {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Storm:
    def __init__(self, base: str, nodes: int = 4, cpus: int = 4, seed: int | None = None,
                 deadline: float = 30.0, grace: float = 10.0, stalls: str | None = None) -> None:  # fmt: skip
        self.base = base
        self.rng = random.Random(seed)
        self.seed = seed
        self.deadline = deadline
        self.grace = grace
        if stalls:  # cranectld under bench/profiled.py's stall watchdog
            from bench import profiled

            self.cluster = profiled.watched(base, stalls)
        else:
            self.cluster = LocalCluster(base)
        self.workdir = os.path.join(base, "work")
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o1777)
        raw = make_config(base, nodes=nodes, cpus=cpus)
        self.cluster.write_config(raw)
        self.cfg = load_full_config(self.cluster.config_path)
        self.scope = f"crane/{self.cfg.cluster}"
        self.db = self.cfg.db_file
        self.root = os.geteuid() == 0 and os.path.isdir(CGROUP_V2)
        self.lock = threading.Lock()
        self.stop_workload = threading.Event()
        # what was acknowledged
        self.jobs: dict[int, str] = {}  # job id -> kind
        self.windows: dict[
            int, tuple[float, float]
        ] = {}  # job id -> wall clock (sent, acknowledged)
        self.max_id = 0
        self.acks: list[tuple[float, int]] = []  # (ack time, highest id acknowledged so far)
        self.cancels: dict[int, float] = {}  # job -> ack time (whole-job cancels)
        self.step_cancels: dict[tuple[int, int], float] = {}
        self.verified_cancels: set[int] = set()
        # refusals that said "Job already finished (STATE)": checked against the
        # job's record at the end (it must be over, in that state if terminal)
        self.finished_claims: dict[int, str] = {}
        # step cancels the reply did not mention: fine only if the job was cancelled whole
        self.step_omissions: dict[int, list[int]] = {}
        self.last_error = ""  # the last request that failed: named if the controller stops answering
        self.verified_steps: set[tuple[int, int]] = set()
        self.pids: dict[int, set[int]] = {}  # job -> step pids seen while running
        self.view: dict[int, dict[str, Any]] = {}  # last active view (workload targets)
        self.stats: Counter[str] = Counter()
        self.violations: list[str] = []
        self.recovery_s: list[float] = []
        self.check_s: list[float] = []
        self.threads = 0
        self.orphan_jobs: set[int] = set()
        self.finish_timeout = (
            60.0  # after the storm: the longest wait for the next job to end by itself
        )

    # ------------------------------------------------------------ requests

    def req(self, msg: m.Message, timeout: float = 5.0) -> dict[str, Any] | None:
        """Ok payload, or None when not acknowledged (controller down: exit 3)
        or refused (an Error reply, e.g. a job that ended meanwhile)."""
        try:
            return call(self.cfg, msg, timeout=timeout)
        except CliError as e:
            self.stats["unacknowledged" if e.code == EXIT_UNREACHABLE else "refused"] += 1
            self.last_error = f"{type(msg).__name__}: {e} (exit {e.code})"
            return None

    def violation(self, text: str) -> None:
        log("VIOLATION: " + text)
        with self.lock:
            self.violations.append(text)

    # ------------------------------------------------------------ setup

    def start(self) -> None:
        self.cluster.up(timeout=60)
        # the first request from root creates user root in account "default"
        call(self.cfg, m.QueryJobs())
        for argv in QOS_SETUP:
            try:
                call(self.cfg, m.AcctOp(parse_argv(argv)))
            except CliError as e:
                if argv[0] != "modify":
                    raise
                # account "default" appears with the first submission: make it now
                log(f"{' '.join(argv)}: {e}; creating it with a held job")
                jid = call(self.cfg, m.SubmitJob(self.spec("setup", "sleep 1", hold=True)))[
                    "job_ids"
                ][0]
                self.record_submit([jid], "setup")
                call(self.cfg, m.AcctOp(parse_argv(argv)))
                setup = m.Cancel(ids=[[jid, None]])
                self.record_cancel(setup, call(self.cfg, setup))

    def stop(self) -> None:
        self.cluster.down()

    def spec(self, name: str, command: str, **kw: Any) -> dict[str, Any]:
        s: dict[str, Any] = {
            "name": name, "script": "#!/bin/sh\n" + command + "\n", "cwd": self.workdir,
            "stdout": os.path.join(self.workdir, "storm-%j.out"),
            "env": {"PATH": f"{BIN}:/usr/bin:/bin", "CRANE_CONF": self.cluster.config_path},
        }  # fmt: skip
        s.update(kw)
        return s

    # ------------------------------------------------------------ recording

    def record_submit(
        self, ids: list[int], kind: str, sent: float = 0.0, sent_wall: float = 0.0
    ) -> None:
        """Ids must be unique, and above every id acknowledged before this
        request was sent (several workload threads submit concurrently)."""
        ack_wall = time.time()
        with self.lock:
            i = bisect.bisect_left(self.acks, (sent, -1))
            floor = self.acks[i - 1][1] if i else 0
            for jid in ids:
                if jid in self.jobs or jid <= floor:
                    self.stats["id_reuse"] += 1
                    self.violations.append(
                        f"job id {jid} reused or below an id acknowledged earlier ({floor})"
                    )
                self.jobs[jid] = kind
                self.windows[jid] = (sent_wall, ack_wall)
                self.max_id = max(self.max_id, jid)
            self.acks.append((time.monotonic(), self.max_id))
            self.stats["jobs_acknowledged"] += len(ids)

    def record_cancel(self, msg: m.Cancel, res: dict[str, Any] | None) -> None:
        """Record an acknowledged cancel and compare its reply with what was
        asked (``cancel_surprises``): a job left alone without a reason the
        storm expects is a violation."""
        if res is None:
            return
        now = time.monotonic()
        # a step left unmentioned is fine if its job is being cancelled: another
        # workload thread's cancel may be acknowledged but not yet recorded here,
        # so those are judged at the final check (``step_omissions``)
        steps_asked = {int(i[0]) for i in msg.ids if i[1] is not None} if msg.ids else set()
        done = {c["job_id"] for c in res.get("cancelled") or []}
        refused = {(r["job_id"], r.get("step_id")) for r in res.get("not_cancelled") or []}
        with self.lock:
            being = set(self.cancels) | steps_asked
            for jid, step in msg.ids or []:
                if step is not None and jid not in done and (jid, step) not in refused:
                    self.step_omissions.setdefault(int(jid), []).append(int(step))
        for text in cancel_surprises(msg.ids or None, res, being_cancelled=being):
            self.stats["cancel_surprises"] += 1
            self.violation(f"cancel {self._describe(msg)}: {text}")
        if not msg.ids:  # a filter selects jobs of the storm only as the filter says
            for text in self._filter_mismatch(msg.filters, res):
                self.stats["cancel_surprises"] += 1
                self.violation(f"cancel {self._describe(msg)}: {text}")
        with self.lock:
            for r in res.get("not_cancelled") or []:
                reason = str(r.get("reason"))
                if reason.startswith("Job already finished (") and r.get("step_id") is None:
                    self.finished_claims[r["job_id"]] = reason[len("Job already finished (") : -1]
            self.stats["cancels_acknowledged"] += 1
            for c in res["cancelled"]:
                if c["steps"]:
                    for s in c["steps"]:
                        self.step_cancels.setdefault((c["job_id"], s), now)
                        self.stats["step_cancels_acknowledged"] += 1
                else:
                    self.cancels.setdefault(c["job_id"], now)
                    self.stats["job_cancels_acknowledged"] += 1

    @staticmethod
    def _describe(msg: m.Cancel) -> str:
        what = (
            f"ids {msg.ids[:5]}{'...' if len(msg.ids) > 5 else ''}"
            if msg.ids
            else f"filters {msg.filters}"
        )
        return what + (" force" if msg.force else "") + (" graceful" if msg.graceful else "")

    def _filter_mismatch(self, filters: dict[str, Any], res: dict[str, Any]) -> list[str]:
        """Jobs of the storm a filter cancel selected although their kind
        does not match its name or QoS (the storm names its jobs by kind)."""
        want = filters.get("name") or ("bg" if filters.get("qos") == "Background" else None)
        if want is None:
            return []
        with self.lock:
            kinds = dict(self.jobs)
        out = []
        for c in res.get("cancelled") or []:
            kind = kinds.get(c["job_id"])
            if kind is not None and kind != want:
                out.append(f"job {c['job_id']} ({kind}) cancelled by a filter for {want!r}")
        return out

    def refresh_view(self, rng: random.Random | None = None) -> None:
        data = self.req(m.QueryJobs(), timeout=3)
        if data is None:
            return
        view = {j["job_id"]: j for j in data["jobs"]}
        with self.lock:
            self.view = view
            for jid, j in view.items():
                for st in j.get("steps", []):
                    if st.get("pid") and st.get("state") == "RUNNING":
                        ps = self.pids.setdefault(jid, set())
                        if int(st["pid"]) not in ps:
                            self.stats["pids_recorded"] += 1
                            ps.add(int(st["pid"]))

    # ------------------------------------------------------------ the workload

    def workload(self, seed: int) -> None:
        rng = random.Random(seed)
        actions = [
            (25, self.submit_short), (10, self.submit_long), (6, self.submit_held),
            (8, self.submit_multi), (6, self.submit_background), (6, self.submit_interactive),
            (15, self.cancel_by_id), (7, self.cancel_by_filter), (8, self.cancel_step),
            (9, self.refresh_view), (3, self.submit_keep),
        ]  # fmt: skip
        weights = [w for w, _ in actions]
        while not self.stop_workload.is_set():
            _, fn = rng.choices(actions, weights)[0]
            try:
                fn(rng)
            except Exception as e:  # a harness bug must not silently stop the load
                self.violation(f"workload {fn.__name__} raised {type(e).__name__}: {e}")
                return
            self.stop_workload.wait(rng.uniform(0.01, 0.1))

    def _submit(self, kind: str, spec: dict[str, Any], repeat: int = 1) -> None:
        with self.lock:
            pending = sum(
                1 for j in self.view.values() if j["state"] == "PENDING" and not j["held"]
            )
        if pending >= MAX_PENDING and not kind.startswith("keep"):
            return  # keep the queue short: the drain waits for it
        sent, sent_wall = time.monotonic(), time.time()
        res = self.req(m.SubmitJob(spec, repeat), timeout=5)
        if res is not None:
            self.record_submit(list(res["job_ids"]), kind, sent, sent_wall)

    def submit_short(self, rng: random.Random) -> None:
        part = rng.choice(["CPU", "GPU"])
        t = round(rng.uniform(0.5, 3.0), 2)
        self._submit(
            "short", self.spec("short", f"sleep {t}", partition=part), rng.choice([1, 1, 1, 2, 3])
        )

    def submit_long(self, rng: random.Random) -> None:
        self._submit("long", self.spec("long", "sleep 300", partition="GPU"))

    def submit_held(self, rng: random.Random) -> None:
        self._submit(
            "held", self.spec("held", "sleep 1", hold=True, partition=rng.choice(["CPU", "GPU"]))
        )

    def submit_multi(self, rng: random.Random) -> None:
        spec = self.spec("multi", "", partition="GPU", cpus=2)
        spec["script"] = MULTI_SCRIPT
        self._submit("multi", spec)

    def submit_keep(self, rng: random.Random) -> None:
        """Jobs the workload never cancels: they must end by themselves, crashes or not."""
        if rng.random() < 0.5:
            spec = self.spec("keep-multi", "", partition="GPU")
            spec["script"] = KEEP_MULTI_SCRIPT
            self._submit("keep-multi", spec)
        else:
            t = round(rng.uniform(0.5, 5.0), 2)
            self._submit(
                "keep-short",
                self.spec("keep-short", f"sleep {t}", partition=rng.choice(["CPU", "GPU"])),
            )

    def submit_background(self, rng: random.Random) -> None:
        self._submit(
            "bg",
            self.spec(
                "bg", "sleep 300", partition="CPU", qos="Background", exclusive=rng.random() < 0.5
            ),
        )

    def submit_interactive(self, rng: random.Random) -> None:
        t = round(rng.uniform(1.0, 4.0), 2)
        self._submit(
            "ia",
            self.spec(
                "ia", f"sleep {t}", partition="CPU", qos="Interactive", cpus=rng.choice([1, 2, 4])
            ),
        )

    def _live(self, kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [j for jid, j in self.view.items() if j["state"] in ("PENDING", "RUNNING", "SUSPENDED")
                    and not j["name"].startswith("keep")
                    and (kinds is None or self.jobs.get(jid) in kinds)]  # fmt: skip

    def cancel_by_id(self, rng: random.Random) -> None:
        live = self._live()
        if not live:
            return
        j = rng.choice(live)
        kind = self.jobs.get(j["job_id"])
        how = rng.choice(["plain", "plain", "force", "grace"] + (["graceful"] * 2 if kind in ("short", "held", "ia") or j["state"] == "PENDING" else []))  # fmt: skip
        kw: dict[str, Any] = {"force": how == "force", "graceful": how == "graceful",
                              "grace": 1.0 if how == "grace" else None, "message": f"storm {how}"}  # fmt: skip
        ids: list[list[int | None]] = [[j["job_id"], None]]
        if rng.random() < 0.3 and len(live) > 1:  # several ids in one request
            ids += [[o["job_id"], None] for o in rng.sample(live, min(3, len(live)))
                    if o["job_id"] != j["job_id"] and how != "graceful"]  # fmt: skip
        msg = m.Cancel(ids=ids, **kw)
        self.record_cancel(msg, self.req(msg, timeout=5))

    def cancel_by_filter(self, rng: random.Random) -> None:
        filters = rng.choice([
            {"name": "long"}, {"name": "held", "states": ["PENDING"]}, {"partition": "GPU", "name": "long"},
            {"states": ["PENDING"], "name": "short"}, {"name": "bg", "states": ["PENDING"]}, {"qos": "Background"},
            {"name": "multi", "states": ["RUNNING"]},
        ])  # fmt: skip
        msg = m.Cancel(filters=filters, message="storm filter")
        self.record_cancel(msg, self.req(msg, timeout=5))

    def cancel_step(self, rng: random.Random) -> None:
        cands = []
        for j in self._live(("multi",)):
            for st in j.get("steps", []):
                if st["step_id"] >= 2 and st.get("state") == "RUNNING":
                    cands.append([j["job_id"], st["step_id"]])
        if not cands:
            return
        msg = m.Cancel(ids=[rng.choice(cands)], message="storm step")
        self.record_cancel(msg, self.req(msg, timeout=5))

    # ------------------------------------------------------------ the storm

    def crash(self, early: bool) -> float:
        """kill -9 the controller, restart it, return seconds until it answers."""
        p = self.cluster.procs["cranectld"]
        p.send_signal(signal.SIGKILL)
        p.wait()
        self.stats["crashes"] += 1
        t0 = time.monotonic()
        self.cluster.start_controller()
        if early:  # crash again in the middle of recovery
            time.sleep(self.rng.uniform(0.05, 0.6))
            p = self.cluster.procs["cranectld"]
            p.send_signal(signal.SIGKILL)
            p.wait()
            self.stats["crashes"] += 1
            self.stats["crashes_during_recovery"] += 1
            t0 = time.monotonic()
            self.cluster.start_controller()
        deadline = t0 + 60
        while time.monotonic() < deadline:
            if self.cluster.procs["cranectld"].poll() is not None:
                raise RuntimeError(
                    f"cranectld exited with {self.cluster.procs['cranectld'].returncode} after restart; see {self.base}/log"
                )
            try:
                call(self.cfg, m.QueryNodes(), timeout=1)
                return time.monotonic() - t0
            except CliError:
                time.sleep(0.01)  # the figure's resolution
        raise RuntimeError("cranectld did not answer within 60 s of its restart")

    def run(self, crashes: int, threads: int = 3) -> None:
        workers = [threading.Thread(target=self.workload, args=(self.rng.randrange(2**31),), name=f"workload-{i}",
                                    daemon=True) for i in range(threads)]  # fmt: skip
        self.threads = threads
        for w in workers:
            w.start()
        try:
            while self.stats["crashes"] < crashes:
                time.sleep(self.rng.uniform(0.2, 2.0))
                early = self.stats["crashes"] + 2 <= crashes and self.rng.random() < 0.2
                took = self.crash(early)
                self.recovery_s.append(took)
                log(f"crash {self.stats['crashes']}/{crashes}{' (twice, during recovery)' if early else ''}: "
                    f"answering again after {took:.2f}s; {self.stats['jobs_acknowledged']} jobs, "
                    f"{self.stats['cancels_acknowledged']} cancels acknowledged; {self.queue_summary()}")  # fmt: skip
                t = time.monotonic()
                self.check(time.monotonic())
                self.check_s.append(time.monotonic() - t)
        finally:
            self.stop_workload.set()
            for w in workers:
                w.join(30)
        self.drain()

    def queue_summary(self) -> str:
        with self.lock:
            c = Counter((j["state"], j["name"], j["partition"]) for j in self.view.values())
        return " ".join(f"{st[:3]}:{n}@{p}={k}" for (st, n, p), k in sorted(c.items()))

    def drain(self) -> None:
        """After the storm: cancel the jobs that never end by themselves (long,
        Background, held); every other job must then finish on its own (a job
        stuck after a restart, e.g. a crun that lost its controller, is a
        violation: "hung"); then cancel whatever is left and check once more."""
        log("draining: cancelling long, Background and held jobs")
        for filters in ({"name": "long"}, {"name": "bg"}, {"name": "held"}, {"qos": "Background"}):
            msg = m.Cancel(filters=filters, force=True)
            self.record_cancel(msg, self._retry(msg))
        finite = ("short", "ia", "multi", "keep-multi", "keep-short")
        # the queue drains at its own pace: wait while jobs keep finishing; stop when
        # none has finished for ``finish_timeout`` seconds (a hung one blocks the rest)
        stall_until = time.monotonic() + self.finish_timeout
        left: list[int] = []
        known: dict[int, dict[str, Any]] = {}
        while time.monotonic() < stall_until:
            known = self.all_jobs() or known
            with self.lock:
                now_left = [
                    j
                    for j, k in self.jobs.items()
                    if k in finite and known.get(j, {}).get("state") in ACTIVE
                ]
            if not now_left:
                left = []
                break
            if len(now_left) < len(left) or not left:
                stall_until = time.monotonic() + self.finish_timeout
            left = now_left
            time.sleep(0.5)
        for jid in left:
            j = known.get(jid, {})
            self.stats["hung"] += 1
            ran = time.time() - j["start_time"] if j.get("start_time") else None
            self.violation(
                f"job {jid} ({self.jobs.get(jid)}) did not finish by itself (no job finished for "
                f"{self.finish_timeout:g}s after the storm): {j.get('state')}"
                + (f" for {ran:.0f}s" if ran is not None else "")
                + f", steps {[(s['step_id'], s['state']) for s in j.get('steps', [])]}"
            )
        log("draining: cancelling every active job")
        msg = m.Cancel(filters={"states": ["PENDING", "RUNNING", "SUSPENDED"]}, force=True)
        self.record_cancel(msg, self._retry(msg))
        self.check(time.monotonic(), final=True)

    def _retry(self, msg: m.Message) -> dict[str, Any] | None:
        for _ in range(20):
            res = self.req(msg, timeout=10)
            if res is not None:
                return res
            time.sleep(0.5)
        return None

    # ------------------------------------------------------------ invariants

    def all_jobs(self) -> dict[int, dict[str, Any]] | None:
        """Every job the controller knows: active first, then history (a job
        ending in between is committed before it leaves the active set)."""
        for _ in range(40):
            act = self.req(m.QueryJobs(), timeout=10)
            hist = self.req(m.QueryJobs(history=True), timeout=20) if act is not None else None
            if act is not None and hist is not None:
                out = {j["job_id"]: j for j in hist["jobs"]}
                out.update({j["job_id"]: j for j in act["jobs"]})
                return out
            time.sleep(0.25)
        return None

    def check(self, restarted: float, final: bool = False) -> None:
        self.check_integrity()
        with self.lock:
            acked = dict(self.jobs)
        known = self.all_jobs()
        if known is None:
            p = self.cluster.procs["cranectld"]
            self.violation("controller stopped answering during the check: " + self.last_error
                           + f" [cranectld pid {p.pid} returncode {p.poll()}]")
            return
        # 1. every acknowledged job exists, in a legal state
        for jid in acked:
            j = known.get(jid)
            if j is None:
                self.stats["lost"] += 1
                self.violation(f"acknowledged job {jid} ({acked[jid]}) is lost")
                continue
            sent_wall, ack_wall = self.windows.get(jid, (0.0, 0.0))
            if j["name"] != acked[jid] or (
                sent_wall and not sent_wall - 1 <= j["submit_time"] <= ack_wall + 1
            ):  # the id names another job: the acknowledged one was lost and its id reused
                self.stats["lost"] += 1
                self.violation(
                    f"acknowledged job {jid} ({acked[jid]}) is lost: the id now names "
                    f"{j['name']!r} submitted at {j['submit_time']:.3f} (acknowledged in "
                    f"[{sent_wall:.3f}, {ack_wall:.3f}])"
                )
                with self.lock:
                    self.jobs.pop(jid, None)
                continue
            err = illegal(j)
            if err:
                self.stats["illegal_state"] += 1
                self.violation(f"job {jid}: {err}")
        with self.lock:
            for jid in acked:  # forget lost ones once reported
                if jid not in known:
                    self.jobs.pop(jid, None)
        # 2. every acknowledged cancel completes
        deadline = restarted + self.deadline
        while True:
            with self.lock:
                todo = [j for j in self.cancels if j not in self.verified_cancels]
                todo_steps = [k for k in self.step_cancels if k not in self.verified_steps]
            for jid in todo:
                j = known.get(jid)
                if j is not None and j["state"] in TERMINAL:
                    self.verified_cancels.add(jid)
            for key in todo_steps:
                j = known.get(key[0])
                if j is None:
                    continue
                st = {s["step_id"]: s for s in j.get("steps", [])}.get(key[1])
                if j["state"] in TERMINAL or st is None or st.get("state") != "RUNNING":
                    self.verified_steps.add(key)
            left = [j for j in todo if j not in self.verified_cancels]
            left_steps = [k for k in todo_steps if k not in self.verified_steps]
            if not left and not left_steps:
                break
            if time.monotonic() > deadline:
                for jid in left:
                    j = known.get(jid)
                    self.stats["cancel_not_done"] += 1
                    self.violation(f"acknowledged cancel of job {jid} not done {self.deadline:g}s after the restart: "
                                   f"{j and j['state']} {j and j.get('nodes')}")  # fmt: skip
                    self.verified_cancels.add(jid)  # reported once
                for key in left_steps:
                    self.stats["cancel_not_done"] += 1
                    self.violation(
                        f"acknowledged cancel of step {key[0]}.{key[1]} not done {self.deadline:g}s after the restart"
                    )
                    self.verified_steps.add(key)
                break
            time.sleep(0.2)
            self.refresh_view()
            fresh = self.all_jobs()
            if fresh is not None:
                known = fresh
        if final:
            self.check_claims(known)
            stuck = [jid for jid, j in known.items() if j["state"] not in TERMINAL]
            for jid in stuck:
                self.violation(f"job {jid} still {known[jid]['state']} after the final cancel")
            self.stats["stuck_at_end"] += len(stuck)
        # 3. no process or cgroup of a terminal or unknown job
        self.check_orphans(known)
        # 4. a RUNNING step has its cgroup on its node (no phantom: RUNNING with nothing running)
        if self.root:
            self.check_phantoms(known)

    def check_claims(self, known: dict[int, dict[str, Any]]) -> None:
        """A refusal said "Job already finished (STATE)": the job is over, in
        that state when it named a terminal one (COMPLETING ends on its own)."""
        with self.lock:
            claims = dict(self.finished_claims)
            omitted = {
                j: steps for j, steps in self.step_omissions.items() if j not in self.cancels
            }
        for jid, steps in sorted(omitted.items()):
            self.stats["cancel_surprises"] += 1
            self.violation(f"a cancel of steps {steps} of job {jid} was neither done nor refused, "
                           "and the job was not cancelled")  # fmt: skip
        for jid, said in sorted(claims.items()):
            j = known.get(jid)
            if j is None:
                continue  # reported as lost already
            if j["state"] not in TERMINAL or (said in TERMINAL and j["state"] != said):
                self.stats["cancel_surprises"] += 1
                self.violation(
                    f"a cancel of job {jid} was refused as already finished ({said}); it is {j['state']}"
                )

    def check_phantoms(self, known: dict[int, dict[str, Any]]) -> None:
        def suspects(known: dict[int, dict[str, Any]]) -> list[tuple[int, int, str]]:
            out = []
            for jid, j in known.items():
                if j["state"] != "RUNNING":
                    continue
                for st in j.get("steps", []):
                    if st.get("state") == "RUNNING" and st.get("node"):
                        path = os.path.join(
                            CGROUP_V2, self.scope, st["node"], f"job_{jid}", f"step_{st['step_id']}"
                        )
                        if not os.path.isdir(path):
                            out.append((jid, st["step_id"], st["node"]))
            return out

        deadline = time.monotonic() + self.grace
        bad = suspects(known)
        first = set(bad)
        while bad and time.monotonic() < deadline:
            time.sleep(0.25)
            fresh = self.all_jobs()
            if fresh is None:
                continue
            bad = [
                b for b in suspects(fresh) if b in first
            ]  # new launches get their own grace next round
        for jid, sid, node in bad:
            self.stats["phantoms"] += 1
            self.violation(
                f"step {jid}.{sid} RUNNING on {node} for over {self.grace:g}s but no cgroup there"
            )

    def daemon_errors(self) -> list[str]:
        """Tracebacks and ERROR lines in the daemons' logs (each one a bug the
        daemons' safety nets caught), but those in ``EXPECTED_LOG_ERRORS``."""
        out = []
        logdir = os.path.join(self.base, "log")
        for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
            with open(os.path.join(logdir, name), errors="replace") as f:
                lines = f.read().splitlines()
            for i, line in enumerate(lines):
                if ("Traceback" in line or " ERROR " in line or " CRITICAL " in line) and not any(
                    e in line for e in EXPECTED_LOG_ERRORS
                ):
                    out.append(
                        f"{name}: {line[:200]}"
                        + (
                            f" | {lines[i + 1][:120]}"
                            if "Traceback" in line and i + 1 < len(lines)
                            else ""
                        )
                    )
        return out

    def check_integrity(self) -> None:
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
            try:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as e:
            rows = [(f"cannot check: {e}",)]
        self.stats["integrity_checks"] += 1
        if rows != [("ok",)]:
            self.stats["integrity_failures"] += 1
            self.violation(f"PRAGMA integrity_check: {rows[:5]}")

    def scan(self) -> tuple[dict[int, set[int]], dict[int, list[str]]]:
        """Processes and cgroup dirs of this cluster, by job id."""
        procs: dict[int, set[int]] = {}
        marker = f"/{self.scope}/"
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            jid = None
            try:
                with open(f"/proc/{d}/cgroup") as f:
                    for line in f:
                        if marker in line:
                            part = line.split(marker, 1)[1].split("/")
                            if len(part) > 1 and part[1].startswith("job_"):
                                jid = int(part[1][4:])
                                break
                if jid is None:
                    with open(f"/proc/{d}/environ", "rb") as f:
                        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
                    if env.get(b"CRANE_SCOPE", b"").decode().startswith(
                        self.scope + "/"
                    ) and env.get(b"CRANE_JOB_ID"):
                        jid = int(env[b"CRANE_JOB_ID"])
            except (OSError, ValueError):
                continue
            if jid is not None and pid_alive(int(d)):
                procs.setdefault(jid, set()).add(int(d))
        self.stats["job_processes_seen"] = max(
            self.stats["job_processes_seen"], sum(map(len, procs.values()))
        )
        cgs: dict[int, list[str]] = {}
        if self.root:
            top = os.path.join(CGROUP_V2, self.scope)
            for node in os.listdir(top) if os.path.isdir(top) else []:
                try:
                    entries = os.listdir(os.path.join(top, node))
                except OSError:
                    continue
                for e in entries:
                    if e.startswith("job_"):
                        try:
                            cgs.setdefault(int(e[4:]), []).append(os.path.join(top, node, e))
                        except ValueError:
                            pass
        return procs, cgs

    def check_orphans(self, known: dict[int, dict[str, Any]]) -> None:
        def suspects() -> tuple[dict[int, set[int]], dict[int, list[str]]]:
            procs, cgs = self.scan()
            with self.lock:
                recorded = {j: set(p) for j, p in self.pids.items()}
            for jid, pids in recorded.items():  # recorded step pids still alive in their cgroup
                j = known.get(jid)
                if j is not None and j["state"] in TERMINAL:
                    for pid in pids:
                        if pid_alive(pid) and self._belongs(pid, jid):
                            procs.setdefault(jid, set()).add(pid)
            bad_p = {
                j: p
                for j, p in procs.items()
                if known.get(j, {}).get("state", "UNKNOWN") not in ACTIVE
            }
            bad_c = {
                j: c
                for j, c in cgs.items()
                if known.get(j, {}).get("state", "UNKNOWN") not in ACTIVE
            }
            return bad_p, bad_c

        deadline = time.monotonic() + self.grace
        bad_p, bad_c = suspects()
        while (bad_p or bad_c) and time.monotonic() < deadline:
            time.sleep(0.25)
            fresh = self.all_jobs()
            if fresh is not None:
                known = fresh
            bad_p, bad_c = suspects()
        for jid, pids in bad_p.items():
            if jid not in self.orphan_jobs:  # a job with leftovers counts once
                self.stats["orphans"] += 1
                self.orphan_jobs.add(jid)
            st = known.get(jid, {}).get("state", "unknown to the controller")
            self.violation(
                f"orphan processes of job {jid} ({st}): {sorted(pids)} {[cmdline(p) for p in sorted(pids)][:3]}"
            )
        for jid, dirs in bad_c.items():
            if jid in bad_p:
                continue
            if jid not in self.orphan_jobs:
                self.stats["orphans"] += 1
                self.orphan_jobs.add(jid)
            st = known.get(jid, {}).get("state", "unknown to the controller")
            self.violation(f"cgroup of job {jid} ({st}) left behind: {dirs}")
        # a leftover is reported once; stop tracking pids of finished jobs
        with self.lock:
            for jid in list(self.pids):
                if known.get(jid, {}).get("state") in TERMINAL:
                    del self.pids[jid]
        if bad_p or bad_c:
            self._kill_leftovers(bad_p, bad_c)

    def _belongs(self, pid: int, jid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                cg = f.read()
            if f"/{self.scope}/" in cg and f"/job_{jid}/" in cg:
                return True
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            return f"CRANE_JOB_ID={jid}".encode() in env and any(
                e.startswith(f"CRANE_SCOPE={self.scope}/".encode()) for e in env)  # fmt: skip
        except OSError:
            return False

    def _kill_leftovers(self, bad_p: dict[int, set[int]], bad_c: dict[int, list[str]]) -> None:
        """Reported already: clean up so one leak is not counted again."""
        for pids in bad_p.values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            pid_alive(p) for ps in bad_p.values() for p in ps
        ):
            time.sleep(0.05)
        for dirs in bad_c.values():
            for d in dirs:
                for sub in (
                    sorted(
                        (os.path.join(d, e) for e in os.listdir(d) if e.startswith("step_")),
                        reverse=True,
                    )
                    if os.path.isdir(d)
                    else []
                ):
                    try:
                        os.rmdir(sub)
                    except OSError:
                        pass
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    # ------------------------------------------------------------ report

    def preemptions(self) -> int:
        data = self.req(m.QueryJobs(history=True), timeout=20) or {"jobs": []}
        return sum(1 for j in data["jobs"] if j.get("cancel_path") == "preemption")

    def result(self, crashes: int, wall: float) -> dict[str, Any]:
        s = self.stats
        kinds = Counter(self.jobs.values())
        errors = self.daemon_errors()
        return {
            "crashes_requested": crashes,
            "crashes_injected": s["crashes"],
            "crashes_during_recovery": s["crashes_during_recovery"],
            "jobs_acknowledged": s["jobs_acknowledged"],
            "jobs_by_kind": dict(kinds),
            "cancels_acknowledged": s["cancels_acknowledged"],
            "job_cancels_acknowledged": s["job_cancels_acknowledged"],
            "step_cancels_acknowledged": s["step_cancels_acknowledged"],
            "preemptions": self.preemptions(),
            "requests_unacknowledged": s["unacknowledged"],
            "requests_refused": s["refused"],
            "lost": s["lost"],
            "orphans": s["orphans"],
            "id_reuse": s["id_reuse"],
            "illegal_state": s["illegal_state"],
            "phantoms": s["phantoms"],
            "pids_recorded": s["pids_recorded"],
            "job_processes_seen": s["job_processes_seen"],
            "daemon_errors": errors[:100],
            "cancel_not_done": s["cancel_not_done"],
            "stuck_at_end": s["stuck_at_end"],
            "hung": s["hung"],
            "integrity_checks": s["integrity_checks"],
            "integrity_ok": s["integrity_failures"] == 0 and s["integrity_checks"] > 0,
            "recovery_s_median": sorted(self.recovery_s)[len(self.recovery_s) // 2]
            if self.recovery_s
            else None,
            "recovery_s_max": max(self.recovery_s) if self.recovery_s else None,
            "check_s_max": max(self.check_s) if self.check_s else None,
            "wall_s": round(wall, 1),
            "seed": self.seed,
            "workload_threads": self.threads,
            "root_cgroups_checked": self.root,
            "cancel_surprises": s["cancel_surprises"],
            "violations": self.violations[:200],
            "ok": not self.violations and not errors,
        }


def illegal(j: dict[str, Any]) -> str | None:
    st = j["state"]
    if st not in ACTIVE and st not in TERMINAL:
        return f"unknown state {st}"
    if st in TERMINAL and j.get("end_time") is None:
        return f"{st} without an end time"
    if st in ("RUNNING", "SUSPENDED", "COMPLETING") and not j.get("nodes"):
        return f"{st} on no node"
    if (
        st == "PENDING"
        and j.get("cancelled_by")
        and not j.get("reason", "").startswith(("Preempted", "Requeued"))
    ):
        return "PENDING with a cancel intent"
    for s in j.get("steps", []):
        if st in TERMINAL and s.get("state") == "RUNNING":
            return f"{st} with step {s['step_id']} RUNNING"
    return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


def run_storm(crashes: int = 20, nodes: int = 4, seed: int | None = None, deadline: float = 30.0,
              base: str | None = None, keep: bool = False, out: str | None = RESULTS,
              threads: int = 3, stalls: str | None = None) -> dict[str, Any]:  # fmt: skip
    own = base is None
    base = base or tempfile.mkdtemp(prefix="crane-storm-")
    os.chmod(base, 0o755)
    if seed is None:
        seed = random.randrange(2**31)
    stalls = stalls or os.environ.get("CRANE_STORM_STALLS") or None  # also for the CI test
    storm = Storm(base, nodes=nodes, seed=seed, deadline=deadline, stalls=stalls)
    t0 = time.monotonic()
    log(f"seed {seed}, cluster in {base}")
    try:
        storm.start()
        storm.run(crashes, threads)
        res = storm.result(crashes, time.monotonic() - t0)
    finally:
        storm.stop_workload.set()
        try:
            storm.stop()
        except Exception as e:
            log(f"cluster stop failed: {e}")
    res["base"] = base
    if out:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=2)
    if own and not keep and res["ok"]:
        shutil.rmtree(base, ignore_errors=True)
    return res


def report(res: dict[str, Any]) -> str:
    lines = [
        f"crashes injected:      {res['crashes_injected']} ({res['crashes_during_recovery']} during recovery)",
        f"jobs acknowledged:     {res['jobs_acknowledged']} {res['jobs_by_kind']}",
        f"cancels acknowledged:  {res['cancels_acknowledged']} ({res['job_cancels_acknowledged']} jobs, "
        f"{res['step_cancels_acknowledged']} steps)",
        f"preemptions:           {res['preemptions']}",
        f"unacknowledged reqs:   {res['requests_unacknowledged']} (controller down: not counted)",
        f"lost:                  {res['lost']} (must be 0)",
        f"orphans:               {res['orphans']} (must be 0)",
        f"id reuse:              {res['id_reuse']} (must be 0)",
        f"illegal states:        {res['illegal_state']} (must be 0)",
        f"phantom steps:         {res['phantoms']} (must be 0)",
        f"daemon errors logged:  {len(res['daemon_errors'])} (must be 0: tracebacks, ERROR lines) {res['daemon_errors'][:3]}",
        f"cancel surprises:      {res['cancel_surprises']} (must be 0: asked, neither cancelled nor refused as expected)",
        f"step pids recorded:    {res['pids_recorded']}, most job processes seen at once {res['job_processes_seen']}",
        f"cancels not done:      {res['cancel_not_done']} (must be 0)",
        f"stuck at end:          {res['stuck_at_end']} (must be 0)",
        f"hung (never ended):    {res['hung']} (must be 0)",
        f"integrity ok:          {res['integrity_ok']} ({res['integrity_checks']} checks)",
        f"recovery (restart -> answering): median {res['recovery_s_median']:.2f}s, max {res['recovery_s_max']:.2f}s"
        if res["recovery_s_median"] is not None else "recovery: -",
        f"wall:                  {res['wall_s']}s, seed {res['seed']}",
        "RESULT: " + ("OK" if res["ok"] else f"FAILED ({len(res['violations'])} violations)"),
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.crash_storm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--crashes", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--seed", type=int)
    ap.add_argument(
        "--deadline",
        type=float,
        default=30.0,
        help="seconds for an acknowledged cancel to complete",
    )
    ap.add_argument("--threads", type=int, default=3, help="concurrent workload threads")
    ap.add_argument("--keep", action="store_true", help="keep the cluster directory")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--stalls", metavar="FILE", help="cranectld under bench/profiled.py's stall watchdog "
                    "(CRANE_STALL_MS, default 100): its event loop's stalls appended to FILE")  # fmt: skip
    a = ap.parse_args(argv)
    res = run_storm(
        a.crashes, a.nodes, a.seed, a.deadline, keep=a.keep, out=a.out, threads=a.threads,
        stalls=a.stalls,
    )  # fmt: skip
    for v in res["violations"][:50]:
        print("violation:", v)
    print(report(res))
    if not res["ok"]:
        print(f"cluster kept in {res['base']}")
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
