"""The scenarios of issue 7's table. Each function starts the cluster(s) it
needs, measures from the outside (CLI subprocesses or the bench's persistent
API connection) and returns ``Result`` records. Latencies are in ms."""

from __future__ import annotations

import os
import re
import select
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil

from bench.common import (
    BIN,
    BenchCluster,
    Result,
    cluster,
    exec_done,
    floor_commands,
    log,
    median,
    pid_alive,
    wait_until,
    whole_command_ms,
)
from crane.core import messages as m
from crane.core.states import JobState

POLL = 0.0005  # the 0.5 ms poll of the method
Opts = Any  # argparse.Namespace


def _ms(t: float) -> float:
    return round(1000.0 * t, 3)


def _wait_done(c: BenchCluster, job_ids: list[int], timeout: float = 120) -> None:
    c.api()(m.WaitJobs(job_ids), timeout=timeout)


def _poll_until(cond: Any, timeout: float, what: str) -> float:
    """Busy-poll ``cond`` every 0.5 ms; return perf_counter() when it held."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if cond():
            return now
        if now > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


# ====================================================================== 1, 2, 3, 4


def cancel_one(opts: Opts) -> list[Result]:
    rounds, warm = opts.rounds, 1
    dead_ms: list[float] = []
    cli_exit_ms: list[float] = []
    visible_ms: list[float] = []
    visible_acct_ms: list[float] = []
    floor_ms: dict[str, list[float]] = {k: [] for k in floor_commands()}
    cqueue_ms: list[float] = []
    api_reply_ms: list[float] = []
    api_done_ms: list[float] = []
    notfound_ms: list[float] = []
    wall_ms: list[float] = []
    baseline: dict[str, list[float]] = {
        "python -c pass": [],
        "python -c 'import crane.cli.ccancel'": [],
    }
    with cluster("cancel1", nodes=1, cpus=4) as c:
        env = c.env()
        ccancel = os.path.join(BIN, "ccancel")

        # --- 1 (and 4): CLI start -> step pid dead; CLI exit time from the same rounds
        log(f"scenario 1/4: ccancel ID of a running job, {rounds} rounds (+{warm} warm-up)")
        for r in range(rounds + warm):
            jid = c.submit(c.spec())[0]
            pid = c.running_pid(jid)
            time.sleep(0.02)  # let the agent finish its launch bookkeeping
            t0 = time.perf_counter()
            p = subprocess.Popen(
                [ccancel, str(jid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
            )
            dead = exited = None
            deadline = t0 + 30
            while dead is None or exited is None:
                now = time.perf_counter()
                if dead is None and not pid_alive(pid):
                    dead = now
                if exited is None and p.poll() is not None:
                    exited = now
                if now > deadline:
                    p.kill()
                    raise TimeoutError(
                        f"job {jid}: pid {pid} alive={pid_alive(pid)} ccancel rc={p.poll()}"
                    )
                time.sleep(POLL)
            err = p.stderr.read().decode() if p.stderr else ""
            if p.returncode != 0:
                raise RuntimeError(f"ccancel {jid} failed ({p.returncode}): {err}")
            _wait_done(c, [jid])
            if r >= warm:
                dead_ms.append(_ms(dead - t0))
                cli_exit_ms.append(_ms(exited - t0))

        # --- 2: CLI start -> CANCELLED visible: to cqueue (its query, the active queue, shows
        # it CANCELLED or no longer lists it) and to cacct (its query, the history, shows CANCELLED)
        log(f"scenario 2: ccancel ID -> CANCELLED visible, {rounds} rounds (+{warm} warm-up)")
        api = c.api()
        for r in range(rounds + warm):
            jid = c.submit(c.spec())[0]
            c.running_pid(jid)
            time.sleep(0.02)
            q = m.QueryJobs({"jobs": [jid]})
            qh = m.QueryJobs({"jobs": [jid]}, history=True)
            seen: dict[str, float] = {}

            def visible(
                q: m.QueryJobs = q, qh: m.QueryJobs = qh, seen: dict[str, float] = seen
            ) -> bool:
                if "queue" not in seen:
                    jobs = api(q)["jobs"]
                    if not jobs or jobs[0]["state"] == JobState.CANCELLED:
                        seen["queue"] = time.perf_counter()
                if "acct" not in seen:
                    jobs = api(qh)["jobs"]
                    if jobs and jobs[0]["state"] == JobState.CANCELLED:
                        seen["acct"] = time.perf_counter()
                return len(seen) == 2

            t0 = time.perf_counter()
            p = subprocess.Popen(
                [ccancel, str(jid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
            )
            _poll_until(visible, 30, f"job {jid} CANCELLED")
            p.wait(30)
            _wait_done(c, [jid])
            if r >= warm:
                visible_ms.append(_ms(seen["queue"] - t0))
                visible_acct_ms.append(_ms(seen["acct"] - t0))

        # --- 3: API Cancel -> reply (intent on disk), + WaitJobs -> terminal, processes gone, persisted
        log(f"scenario 3: API Cancel + WaitJobs, {rounds} rounds (+{warm} warm-up)")
        for r in range(rounds + warm):
            jid = c.submit(c.spec())[0]
            pid = c.running_pid(jid)
            time.sleep(0.02)
            t0 = time.perf_counter()
            res = api(m.Cancel(ids=[[jid, None]]))
            t1 = time.perf_counter()
            api(m.WaitJobs([jid]))
            t2 = time.perf_counter()
            assert res["cancelled"] and not pid_alive(pid), (res, pid)
            if r >= warm:
                api_reply_ms.append(_ms(t1 - t0))
                api_done_ms.append(_ms(t2 - t0))

        # --- 4: whole command wall time (nothing else running in the bench meanwhile),
        # the not-found path, and interpreter baselines
        log(
            f"scenario 4: ccancel ID wall time, ccancel 999999 (not found), baselines, {rounds} rounds"
        )
        for r in range(rounds + warm):
            jid = c.submit(c.spec())[0]
            c.running_pid(jid)
            floor_round(floor_ms, r >= warm)  # the floor under the same conditions, just before
            time.sleep(0.02)
            dt, rc = whole_command_ms([ccancel, str(jid)], env=env)
            if rc != 0:
                raise RuntimeError(f"ccancel {jid} -> {rc}")
            _wait_done(c, [jid])
            if r >= warm:
                wall_ms.append(dt)
        # cqueue whole-command wall, one running job in the queue (as squeue's on the Slurm side);
        # a failing cqueue is this figure's error only
        cqueue = os.path.join(BIN, "cqueue")
        c.running_pid(c.submit(c.spec())[0])
        cqueue_err = ""
        for r in range(rounds + warm):
            floor_round(floor_ms, r >= warm)
            dt, rc = whole_command_ms([cqueue], env=env)
            if rc != 0:
                err = subprocess.run([cqueue], capture_output=True, text=True, env=env).stderr
                cqueue_err = f"cqueue -> {rc}: {(err.strip().splitlines() or [''])[-1]}"[:300]
                break
            if r >= warm:
                cqueue_ms.append(dt)
        api(m.Cancel(filters={"user": "root"}))
        for _ in range(rounds):
            t0 = time.perf_counter()
            r2 = subprocess.run([ccancel, "999999"], capture_output=True, env=env)
            notfound_ms.append(_ms(time.perf_counter() - t0))
            if r2.returncode not in (0, 4):
                raise RuntimeError(f"ccancel 999999 -> {r2.returncode}: {r2.stderr.decode()}")
        py = sys.executable
        for label, argv in (("python -c pass", [py, "-c", "pass"]),
                            ("python -c 'import crane.cli.ccancel'", [py, "-c", "import crane.cli.ccancel"])):  # fmt: skip
            for _ in range(max(5, rounds // 2)):
                t0 = time.perf_counter()
                subprocess.run(argv, check=True, env=env)
                baseline[label].append(_ms(time.perf_counter() - t0))
        imports = import_costs(env)

    base = "1 node x 4 cpus, job `sleep 300`, 1 warm-up round dropped"
    return floor_results(floor_ms) + [
        Result("cancel_cli_dead", "cancel one running job: CLI start -> all processes dead", "ms", dead_ms,
               "<= 30 ms", True, 30.0, note=base + "; `ccancel ID` subprocess, step pid polled every 0.5 ms"),
        Result("cancel_cli_visible", "same: CLI start -> CANCELLED visible in the queue", "ms", visible_ms,
               "<= 40 ms", True, 40.0,
               note=base + "; polled over the bench's API connection every 0.5 ms: active queue, then "
               "history (a terminal job leaves the active queue at once; cacct shows it once committed)"),
        Result("cancel_cli_visible_acct", "same: CLI start -> CANCELLED visible to cacct (history query)", "ms",
               visible_acct_ms, "<= floor + 15 ms", True, None, note=base + "; polled as scenario 2"),
        Result("cqueue_wall", "`cqueue` whole command wall time", "ms", cqueue_ms, "<= 1.5 x floor", True, None,
               note="one running job in the queue; fork+exec+wait, the bench idle meanwhile", error=cqueue_err),
        Result("cancel_api_done", "same, server side: request in -> processes dead -> persisted", "ms", api_done_ms,
               "<= 5 ms", True, 5.0,
               variant="measured outside: API Cancel + WaitJobs round trips (2 x ~0.25 ms zmq floor included)",
               note=base, extra={"cancel_reply_ms": {"median": statistics.median(api_reply_ms),
                                                     "max": max(api_reply_ms), "samples": api_reply_ms}}),
        Result("ccancel_wall", "`ccancel ID` whole command wall time", "ms", wall_ms, "<= 30 ms", True, 30.0,
               note="`ccancel ID` of a running job, subprocess.run wall time, the bench idle meanwhile",
               extra={"exit_during_scenario_1_ms": {"median": statistics.median(cli_exit_ms), "max": max(cli_exit_ms),
                                                    "samples": cli_exit_ms},
                      "not_found_ms": {"median": statistics.median(notfound_ms), "max": max(notfound_ms),
                                       "samples": notfound_ms},
                      "baselines_ms": {k: statistics.median(v) for k, v in baseline.items()},
                      "import_costs": imports}),
    ]  # fmt: skip


def import_costs(env: dict[str, str], runs: int = 3) -> dict[str, Any]:
    """``python -X importtime`` of the real ccancel path (``ccancel 999999``)
    and of ``import crane.cli.ccancel``: medians over ``runs`` of the
    top-level imports' cumulative and the modules' self time, in ms."""
    code_path = (
        "import sys; sys.argv=['ccancel','999999']; from crane.cli.ccancel import main; main()"
    )
    out: dict[str, Any] = {}
    for label, code in (
        ("import crane.cli.ccancel", "import crane.cli.ccancel"),
        ("ccancel 999999 (full path)", code_path),
    ):
        cum: dict[str, list[float]] = {}
        selfs: dict[str, list[float]] = {}
        totals = []
        for _ in range(runs):
            r = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", code],
                capture_output=True,
                text=True,
                env=env,
            )
            total = 0.0
            for line in r.stderr.splitlines():
                mo = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
                if not mo:
                    continue
                self_us, cum_us, indent, name = int(mo[1]), int(mo[2]), mo[3], mo[4]
                selfs.setdefault(name, []).append(self_us / 1000)
                if not indent:
                    cum.setdefault(name, []).append(cum_us / 1000)
                    total += cum_us / 1000
            totals.append(total)
        top = sorted(((statistics.median(v), k) for k, v in cum.items()), reverse=True)[:10]
        tops = sorted(((statistics.median(v), k) for k, v in selfs.items()), reverse=True)[:10]
        pkgs: dict[str, float] = {}
        for k, v in selfs.items():
            root = k.split(".")[0].lstrip("_")
            pkgs[root] = pkgs.get(root, 0.0) + statistics.median(v)
        by_pkg = sorted(((v, k) for k, v in pkgs.items()), reverse=True)[:12]
        out[label] = {
            "total_ms": round(statistics.median(totals), 1),
            "top_level_cumulative_ms": [[k, round(v, 1)] for v, k in top],
            "top_self_ms": [[k, round(v, 1)] for v, k in tops],
            "self_ms_by_package": [[k, round(v, 1)] for v, k in by_pkg],
        }
    return out


# ====================================================================== 5, 8, 9


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _one_line(text: str) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return (lines[-1] if lines else "")[:200]


def _cbatch_runs(c: BenchCluster, opts: Opts) -> dict[str, Any]:
    """`cbatch --hold --repeat 10000`, then ``opts.singles`` single `cbatch --hold`
    one after the other (whole-command walls)."""
    k = 10_000
    out: dict[str, Any] = {"repeat_rate": None, "single_ms": [], "single_rate": None, "error": ""}
    log(f"scenario 8b: cbatch --hold --repeat {k}; then {opts.singles} single cbatch")
    t0 = time.perf_counter()
    r = subprocess.run(c.cli("cbatch", "--hold", "--repeat", str(k), "--wrap", "true", "-o", "/dev/null"),
                       capture_output=True, text=True, env=c.env(), cwd=c.workdir)  # fmt: skip
    if r.returncode != 0:
        out["error"] = f"cbatch --repeat -> {r.returncode}: {_one_line(r.stderr)}"
        return out
    out["repeat_rate"] = round(k / (time.perf_counter() - t0), 1)
    argv = c.cli("cbatch", "--hold", "--wrap", "true", "-o", "/dev/null")
    t_all = time.perf_counter()
    for _ in range(opts.singles):
        dt, rc = whole_command_ms(argv, env=c.env(), cwd=c.workdir)
        if rc != 0:
            err = subprocess.run(
                argv, capture_output=True, text=True, env=c.env(), cwd=c.workdir
            ).stderr
            out["error"] = f"cbatch -> {rc}: {_one_line(err)}"
            return out
        out["single_ms"].append(dt)
    out["single_rate"] = round(opts.singles / (time.perf_counter() - t_all), 1)
    return out


def queue_scale(opts: Opts) -> list[Result]:
    n = 100_000 if opts.full else opts.pending
    chunk = 10_000
    submit_rates: list[float] = []
    with cluster("queue", nodes=1, cpus=4) as c:
        api = c.api()
        pid = c.ctld_pid
        spec = c.spec("true", hold=True)
        c.submit(spec)  # warm-up (user auto-created, code paths hot)
        api(m.Cancel(filters={"user": "root"}))
        time.sleep(0.5)
        rss0 = _rss(pid)
        # --- 8: batched API submission, 10,000 held jobs per request
        log(f"scenario 8/9: submitting {n} held jobs via SubmitJob(repeat={chunk})")
        ids: list[int] = []
        left = n
        while left > 0:
            k = min(chunk, left)
            t0 = time.perf_counter()
            got = c.submit(spec, k)
            dt = time.perf_counter() - t0
            submit_rates.append(round(k / dt, 1))
            ids += got
            left -= k
        time.sleep(1.0)
        rss1 = _rss(pid)
        per_job = (rss1 - rss0) / n
        log(f"  controller RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB: {per_job:.0f} B/job")

        # --- 5: ccancel -u root (one CLI request) until the reply, then until all terminal
        log(f"scenario 5: ccancel -u root over {n} pending jobs")
        t0 = time.perf_counter()
        r = subprocess.run(
            c.cli("ccancel", "-Q", "-u", "root"), capture_output=True, text=True, env=c.env()
        )
        t1 = time.perf_counter()
        if r.returncode != 0:
            raise RuntimeError(f"ccancel -u root -> {r.returncode}: {_one_line(r.stderr)}")
        _wait_done(c, ids, timeout=600)
        t2 = time.perf_counter()
        left_active = len(api(m.QueryJobs({"states": ["PENDING"]}))["jobs"])
        assert left_active == 0, left_active
        cancel_reply, cancel_all = t1 - t0, t2 - t0
        log(f"  reply after {cancel_reply:.2f}s, all terminal after {cancel_all:.2f}s")

        # --- 8b: cbatch --repeat, and one cbatch per job (a failing cbatch is these figures' error only)
        cb = _cbatch_runs(c, opts)

    # the target is stated for 100,000 jobs in <= 2 s: compare the rate (50,000 jobs/s)
    rate = n / cancel_all
    pend_extra = {"n": n, "reply_s": round(cancel_reply, 3), "all_terminal_s": round(cancel_all, 3),
                  "jobs_per_s": round(rate, 1), "extrapolated_100k_s": round(100_000 / rate, 2)}  # fmt: skip
    return [
        Result("cancel_pending_user", f"cancel {n} pending jobs by user (ccancel -u root -> all terminal)",
               "ms", [round(1000 * cancel_all, 1)], "100,000 in <= 2 s", True, 2000.0,
               note="held jobs; one CLI request; then WaitJobs over the API", extra=pend_extra)
        if n == 100_000 else
        Result("cancel_pending_user", f"cancel {n} pending jobs by user (ccancel -u root -> all terminal)",
               "jobs/s", [round(rate, 1)], "100,000 in <= 2 s (>= 50,000 jobs/s)", False, 50_000.0,
               variant=f"N={n} (pass --full for 100,000); compared as a rate",
               note="held jobs; one CLI request; then WaitJobs over the API", extra=pend_extra),
        Result("submit_api", f"submission: SubmitJob(repeat={chunk}) (held jobs)", "jobs/s", submit_rates,
               ">= 10,000 jobs/s", False, 10_000.0, note=f"{len(submit_rates)} requests of {chunk} held jobs",
               extra={"cbatch_repeat_10000_jobs_s": cb["repeat_rate"]}),
        Result("submit_cbatch_single", f"submission: one `cbatch` per job ({opts.singles} jobs)", "jobs/s",
               [cb["single_rate"]] if cb["single_rate"] else [], "(sbatch: 370 jobs/s)", False, None,
               note="sequential CLI processes (fork+exec+wait each); no target in the issue (Slurm reference 370 "
               "jobs/s)", error=cb["error"],
               extra={"per_command_ms_median": median(cb["single_ms"]), "per_command_ms_max": max(cb["single_ms"], default=None),
                      "per_command_ms": cb["single_ms"]}),
        Result("memory_per_job", "controller memory per queued job", "B/job", [round(per_job, 1)], "<= 2 KB",
               True, 2048.0, note=f"cranectld RSS before/after queueing {n} held jobs (psutil), divided",
               extra={"rss_before": rss0, "rss_after": rss1}),
    ]  # fmt: skip


# ====================================================================== 6


def _cpu_of(c: BenchCluster) -> dict[str, float]:
    """CPU seconds (user + system) of the controller and, summed, of the agents."""
    out = {"cranectld": 0.0, "agents": 0.0}
    for key, p in list(c.procs.items()):
        try:
            t = psutil.Process(p.pid).cpu_times()
        except psutil.Error:
            continue
        out["cranectld" if key == "cranectld" else "agents"] += t.user + t.system
    return out


def cancel_running(opts: Opts) -> list[Result]:
    agents, cpus = opts.agents, opts.agent_cpus
    njobs = agents * cpus
    names = [f"crane{i:02d}" for i in range(1, agents + 1)]
    rates: list[float] = []
    dead_s: list[float] = []
    reply_s: list[float] = []
    done_s: list[float] = []
    cpu_use: list[dict[str, float]] = []
    with cluster("running", nodes=agents, cpus=cpus, up_timeout=120,
                 Partitions=[{"name": "CPU", "nodes": ",".join(names)}]) as c:  # fmt: skip
        api = c.api()
        for rnd in range(opts.running_rounds):
            log(
                f"scenario 6: round {rnd + 1}/{opts.running_rounds}: starting {njobs} `sleep 300` jobs on {agents} agents"
            )
            ids = c.submit(c.spec(), njobs)
            t_start = time.monotonic()

            def pids(ids: list[int] = ids) -> dict[int, int] | None:
                jobs = api(m.QueryJobs({"jobs": ids}))["jobs"]
                out = {}
                for j in jobs:
                    for s in j["steps"]:
                        if j["state"] == "RUNNING" and s["step_id"] == 1 and s.get("pid"):
                            out[j["job_id"]] = int(s["pid"])
                if len(out) < len(ids) or not all(exec_done(p) for p in out.values()):
                    return None
                return out

            running = wait_until(pids, 180, f"{njobs} jobs running", 0.5)
            log(
                f"  {njobs} running after {time.monotonic() - t_start:.1f}s; ccancel -v --wait -t R"
            )
            time.sleep(0.5)
            # death of every step pid, without polling: one pidfd per pid in an epoll set
            ep = select.epoll()
            fds = []
            for pid in running.values():
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    raise RuntimeError(f"step pid {pid} gone before the cancel") from None
                fds.append(fd)
                ep.register(fd, select.EPOLLIN)
            cpu0 = _cpu_of(c)
            t0 = time.perf_counter()
            p = subprocess.Popen(c.cli("ccancel", "-v", "--wait", "-t", "R"), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env=c.env(), text=True)  # fmt: skip
            left_fds = len(fds)
            deadline = t0 + 120
            try:
                while left_fds:
                    for fd, _ in ep.poll(max(0.0, deadline - time.perf_counter())):
                        ep.unregister(fd)
                        left_fds -= 1
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"{left_fds} step pids still alive")
                t_dead = time.perf_counter()
            finally:
                ep.close()
                for fd in fds:
                    os.close(fd)
            _, err = p.communicate(timeout=120)
            t_done = time.perf_counter()
            cpu1 = _cpu_of(c)
            cpu_use.append({k: round(cpu1[k] - cpu0.get(k, 0.0), 3) for k in cpu1})
            if p.returncode != 0:
                raise RuntimeError(f"ccancel -t R -> {p.returncode}: {err}")
            mo = re.search(r"answered in ([\d.]+) ms", err)
            reply = float(mo[1]) / 1000 if mo else float("nan")
            left = api(m.QueryJobs({"jobs": ids}))["jobs"]
            assert not left, f"{len(left)} jobs still active after ccancel --wait"
            dead_s.append(round(t_dead - t0, 3))
            done_s.append(round(t_done - t0, 3))
            reply_s.append(round(reply, 3))
            log(f"  reply {reply:.3f}s, all dead {t_dead - t0:.3f}s, recorded {t_done - t0:.3f}s")
    exact = agents == 100 and njobs == 2000
    rates = [round(njobs / t, 1) for t in done_s]
    how = ("`ccancel -v --wait -t R` subprocess: the reply time is its own -v output; it exits when "
           "WaitJobs answers (terminal, processes gone, persisted); step pid deaths via pidfd + epoll")  # fmt: skip
    if exact:
        res = Result("cancel_running", f"cancel {njobs} running jobs on {agents} agents (ccancel -t R) until "
                     "dead and recorded", "ms", [1000 * t for t in done_s], "2,000 on 100 agents in <= 3 s",
                     True, 3000.0, note=f"{agents} real craned processes x {cpus} cpus, `sleep 300` jobs; " + how)  # fmt: skip
    else:
        res = Result("cancel_running", f"cancel {njobs} running jobs on {agents} agents (ccancel -t R) until "
                     "dead and recorded", "jobs/s", rates, "2,000 on 100 agents in <= 3 s (>= 667 jobs/s)", False,
                     2000 / 3, variant=f"{agents} real agents x {cpus} cpus, {njobs} jobs; compared as a rate",
                     note=how)  # fmt: skip
    res.extra = {
        "reply_s": reply_s,
        "all_dead_s": dead_s,
        "recorded_s": done_s,
        "jobs_per_s": rates,
        "cpu_s_in_window (2 cores)": cpu_use,
    }
    return [res]


# ====================================================================== 7


def preemption(opts: Opts) -> list[Result]:
    from crane.cacctmgr_parse import parse_argv

    rounds, warm = opts.rounds, 1
    run_ms: list[float] = []
    dead_ms: list[float] = []
    submit_ms: list[float] = []
    with cluster("preempt", nodes=1, cpus=2) as c:
        api = c.api()
        for argv in (["add", "qos", "Background", "Priority=100"],
                     ["add", "qos", "Interactive", "Priority=5000", "Preempt=Background", "PreemptMode=CANCEL"],
                     ["add", "account", "MyAccount"],
                     ["modify", "account", "where", "Name=MyAccount", "set", "AllowedQos+=Background,Interactive"],
                     ["add", "user", "root", "Account=MyAccount"]):  # fmt: skip
            api(m.AcctOp(parse_argv(argv)))
        low = c.spec(qos="Background", account="MyAccount", cpus=2)
        high = c.spec(qos="Interactive", account="MyAccount", cpus=2)
        log(f"scenario 7: QoS preemption (CANCEL), {rounds} rounds (+{warm} warm-up)")
        for r in range(rounds + warm):
            vid = c.submit(low)[0]
            vpid = c.running_pid(vid)
            time.sleep(0.02)
            t0 = time.perf_counter()
            hid = api(m.SubmitJob(high))["job_ids"][0]
            t_sub = time.perf_counter()
            q = m.QueryJobs({"jobs": [hid]})
            t_dead = t_run = None
            deadline = t0 + 30
            while t_run is None or t_dead is None:
                now = time.perf_counter()
                if t_dead is None and not pid_alive(vpid):
                    t_dead = now
                if t_run is None:
                    jobs = api(q)["jobs"]
                    if jobs and jobs[0]["state"] == "RUNNING":
                        t_run = time.perf_counter()
                if now > deadline:
                    raise TimeoutError(
                        f"preemption round {r}: victim dead={t_dead} high running={t_run}"
                    )
                time.sleep(POLL)
            v = c.job(vid)
            assert v is not None and v["state"] == "CANCELLED", v
            c.running_pid(hid)  # exec'd: a cancel before that can miss the process (see exec_done)
            api(m.Cancel(ids=[[hid, None]]))
            _wait_done(c, [hid, vid])
            if r >= warm:
                run_ms.append(_ms(t_run - t0))
                dead_ms.append(_ms(t_dead - t0))
                submit_ms.append(_ms(t_sub - t0))
    return [
        Result("preemption", "QoS preemption: high job submitted -> victim dead -> high job RUNNING", "ms", run_ms,
               "p50 <= 50 ms", True, 50.0,
               note="1 node x 2 cpus, victim QoS Background (cpus=2), preemptor QoS Interactive "
               "(PreemptMode=CANCEL); from the API SubmitJob call; state polled every 0.5 ms",
               extra={"victim_dead_ms": {"median": statistics.median(dead_ms), "max": max(dead_ms)},
                      "submit_reply_ms": {"median": statistics.median(submit_ms), "max": max(submit_ms)}}),
    ]  # fmt: skip


# ====================================================================== 10


def _idle_run(opts: Opts, curve: bool) -> tuple[list[float], dict[str, Any]]:
    n = opts.idle_agents
    width = max(4, len(str(n)))
    names = f"crane[{1:0{width}d}-{n:0{width}d}]"
    cpu: list[float] = []
    auth = {"Type": "local", "CurveKeyDir": "keys"} if curve else {"Type": "local"}
    t0 = time.monotonic()
    with cluster("idle", nodes=1, cpus=8, agents=False, Nodes=[{"name": names, "cpu": 8, "memory": "16G"}],
                 Partitions=[{"name": "CPU", "nodes": names}], DefaultPartition="CPU", Auth=auth) as c:  # fmt: skip
        setup_s = time.monotonic() - t0
        log(
            f"scenario 10: {n} fake agents (one process, one DEALER each, CurveZMQ {'on' if curve else 'off'})"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        fake = subprocess.Popen([sys.executable, "-m", "bench.fake_agents", "-C", c.config_path],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=c.env(), cwd=root)  # fmt: skip
        try:
            t0 = time.monotonic()
            c.wait_nodes_up(timeout=120)
            up_s = time.monotonic() - t0
            log(
                f"  all {n} nodes up after {up_s:.1f}s; settling 3 s, then measuring {opts.idle_seconds} s"
            )
            time.sleep(3)
            ctld = psutil.Process(c.ctld_pid)
            fk = psutil.Process(fake.pid)
            ctld.cpu_percent(None)
            fk.cpu_percent(None)
            for _ in range(int(opts.idle_seconds)):
                time.sleep(1.0)
                cpu.append(round(ctld.cpu_percent(None), 2))
            fake_pct = round(fk.cpu_percent(None), 2)  # average over the same window
            st = c.nodes_state()
            down = [k for k, v in st.items() if v == "DOWN"]
            extra = {"curve": curve, "setup_s (config, keys, controller)": round(setup_s, 2),
                     "nodes_up_after_s": round(up_s, 2), "nodes_down_at_end": len(down),
                     "ctld_rss_mib": round(ctld.memory_info().rss / 2**20, 1),
                     "ctld_threads": ctld.num_threads(), "fake_agents_cpu_pct": fake_pct,
                     "heartbeat_interval_s": c.config().get("HeartbeatInterval")}  # fmt: skip
            log(
                f"  controller CPU median {statistics.median(cpu):.1f}% (fake agents {fake_pct:.1f}%)"
            )
        finally:
            fake.send_signal(signal.SIGTERM)
            try:
                fake.wait(15)
            except subprocess.TimeoutExpired:
                fake.kill()
                fake.wait()
    return cpu, extra


def idle_agents(opts: Opts) -> list[Result]:
    n = opts.idle_agents
    cpu, extra = _idle_run(opts, curve=True)
    if not opts.no_plain_idle:
        plain, pextra = _idle_run(opts, curve=False)
        extra["without_curve"] = {
            "cpu_pct_median": statistics.median(plain),
            "cpu_pct_max": max(plain),
            **pextra,
        }
    return [
        Result("idle_agents_cpu", f"{n} agents connected, idle: controller CPU", "% core", cpu, "<= 5% of a core",
               True, 5.0,
               variant="agents are fake: one helper process, one DEALER socket per node, Register + Heartbeat only "
               "(no-process executor, scale run only)",
               note=f"cranectld cpu_percent (psutil) sampled each second for {opts.idle_seconds} s; "
               f"HeartbeatInterval {extra.get('heartbeat_interval_s')} s; CurveZMQ on (the local default); "
               "extra.without_curve: the same with Auth.CurveKeyDir unset", extra=extra),
    ]  # fmt: skip


# ====================================================================== the floor (issue 16)


def floor_round(got: dict[str, list[float]], keep: bool) -> None:
    """One run of each floor command (``common.floor_commands``), interleaved
    with the commands measured against it so both see the same machine."""
    for k, argv in floor_commands().items():
        dt, rc = whole_command_ms(argv)
        if rc != 0:
            raise RuntimeError(f"{' '.join(argv)} -> {rc}")
        if keep:
            got[k].append(dt)


def floor_results(got: dict[str, list[float]]) -> list[Result]:
    cmds = floor_commands()
    how = "whole-process walls, one run of each just before each `ccancel ID` and `cqueue` run of scenario 4: "
    return [
        Result("floor_bare", "floor: `python3 -I -S -c pass`", "ms", got["floor_bare"], "-", True, None,
               note=how + " ".join(cmds["floor_bare"])),
        Result("floor", "floor: `python3 -I -S` + `import socket, msgpack`", "ms", got["floor"], "-", True, None,
               note=how + " ".join(cmds["floor"])),
    ]  # fmt: skip
