"""The Slurm column of ``python -m bench --with-slurm``: drives the anchor
cluster of ``../shared/anchor-slurm/`` (Slurm 22.05 from Debian, 16 slurmd,
munge, slurmdbd; installed with its ``setup.sh`` into ``$ANCHOR_DIR``, default
``~/slurm-anchor``) in the same run as our scenarios.

The cluster is started with the anchor's ``cluster.sh start --fresh`` and
stopped with ``cluster.sh stop`` (which stops exactly the daemons it started)
before our part runs. Measurements: the anchor's own ``measure.py`` tests
(imported from the shared directory, unchanged) for cancel -> processes dead
/ CANCELLED visible, the mass cancel of pending jobs and of running jobs;
our own, with its commands and ``SLURM_CONF``, for the whole-command walls
(``scancel ID``, ``squeue``) and one ``sbatch`` per job, sequential.
Figures are returned in ms (times) or jobs/s (rates)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from types import ModuleType, SimpleNamespace
from typing import Any

from bench.common import log, whole_command_ms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR_SRC = os.environ.get(
    "ANCHOR_SRC", os.path.normpath(os.path.join(ROOT, "..", "shared", "anchor-slurm"))
)
ANCHOR_DIR = os.environ.get("ANCHOR_DIR", os.path.expanduser("~/slurm-anchor"))


def available() -> str | None:
    """None when the anchor can run here, else why not."""
    if not os.path.isfile(os.path.join(ANCHOR_SRC, "measure.py")):
        return f"no anchor at {ANCHOR_SRC}"
    if os.geteuid() != 0:
        return "the Slurm anchor needs root"
    return None


def ensure_installed() -> None:
    """Run the anchor's setup.sh once (Debian packages + $ANCHOR_DIR layout)."""
    if shutil.which("slurmctld") and os.path.exists(os.path.join(ANCHOR_DIR, "etc", "slurm.conf")):
        return
    log(f"slurm: installing the anchor ({ANCHOR_SRC}/setup.sh -> {ANCHOR_DIR})")
    env = dict(os.environ, ANCHOR_DIR=ANCHOR_DIR)
    subprocess.run(
        ["bash", os.path.join(ANCHOR_SRC, "setup.sh")], check=True, env=env, timeout=1800
    )


def _cluster(action: str, *args: str, timeout: float = 300) -> None:
    env = dict(os.environ, ANCHOR_DIR=ANCHOR_DIR, SLURM_CONF=slurm_conf())
    r = subprocess.run([os.path.join(ANCHOR_DIR, "cluster.sh"), action, *args], env=env,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"cluster.sh {action} -> {r.returncode}: {r.stderr.strip()[-500:]}")


def slurm_conf() -> str:
    return os.path.join(ANCHOR_DIR, "etc", "slurm.conf")


def _measure_module() -> ModuleType:
    """The anchor's measure.py, imported from the shared directory as it is
    (it reads ANCHOR_DIR and sets SLURM_CONF at import)."""
    os.environ["ANCHOR_DIR"] = ANCHOR_DIR
    sys.dont_write_bytecode = True  # the shared directory is read-only
    added = ANCHOR_SRC not in sys.path
    if added:
        sys.path.insert(0, ANCHOR_SRC)
    try:
        return importlib.import_module("measure")
    finally:
        if added:
            sys.path.remove(ANCHOR_SRC)


def _version() -> str:
    r = subprocess.run(["sinfo", "-V"], capture_output=True, text=True)
    return r.stdout.strip() or "slurm ?"


def _running_job(ms: ModuleType) -> str:
    jid, _ = ms.sbatch("-J", "bench_single")
    if not ms.wait_until(lambda: (ms.job_pids(jid) or (0, 0, []))[2], 60, 0.02, "job running"):
        raise RuntimeError(f"slurm job {jid} did not start")
    return str(jid)


def scancel_walls(ms: ModuleType, rounds: int, warm: int = 1) -> list[float]:
    """`scancel ID` of a running job: whole-process wall (nothing else polling).
    The jobs are submitted together and cancelled one by one: Slurm starts a
    submitted job only at its next scheduling pass (~3 s here), once for all."""
    jids = [ms.sbatch("-J", "bench_single")[0] for _ in range(rounds + warm)]
    if not ms.wait_until(
        lambda: all((ms.job_pids(j) or (0, 0, []))[2] for j in jids), 120, 0.05, "jobs running"
    ):
        raise RuntimeError(f"slurm jobs {jids} did not all start")
    time.sleep(0.3)  # as measure.py: let slurmstepd settle
    out = []
    for r, jid in enumerate(jids):
        dt, rc = whole_command_ms(["scancel", str(jid)])
        if rc != 0:
            raise RuntimeError(f"scancel {jid} -> {rc}")
        ms.wait_until(
            lambda jid=jid: ms.job_state(str(jid)) in ("CANCELLED", "GONE"), 60, 0.05, "cancelled"
        )
        if r >= warm:
            out.append(dt)
    ms.cleanup(60)
    return out


def squeue_walls(ms: ModuleType, rounds: int, warm: int = 1) -> list[float]:
    """`squeue` whole-process wall with one running job in the queue."""
    _running_job(ms)
    out = []
    for r in range(rounds + warm):
        dt, rc = whole_command_ms(["squeue"])
        if rc != 0:
            raise RuntimeError(f"squeue -> {rc}")
        if r >= warm:
            out.append(dt)
    ms.cleanup(60)
    return out


def sbatch_sequential(ms: ModuleType, n: int, warm: int = 1) -> list[float]:
    """One `sbatch --hold` per job, one after the other: per-command wall ms."""
    out = []
    for r in range(n + warm):
        dt, rc = whole_command_ms(["sbatch", "--hold", "-J", "bench_seq", "-o", "/dev/null",
                                   "--wrap", "true"])  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"sbatch -> {rc}")
        if r >= warm:
            out.append(dt)
    ms.cleanup(120)
    return out


def _ms_list(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [round(1000 * r[key], 3) for r in rows if r.get(key) is not None and "error" not in r]


def run(opts: Any) -> dict[str, Any]:
    """Start the anchor cluster, measure, stop it. Returns {"figures": {key:
    (samples, note)}, "version", "errors", "seconds"}."""
    ensure_installed()
    t_all = time.monotonic()
    figures: dict[str, tuple[list[float], str]] = {}
    errors: dict[str, str] = {}
    quick = bool(getattr(opts, "quick", False))
    rounds = opts.rounds
    log("slurm: starting the anchor cluster (cluster.sh start --fresh)")
    t0 = time.monotonic()
    _cluster("start", "--fresh", timeout=600)
    log(f"slurm: cluster up in {time.monotonic() - t0:.1f}s")
    version = "slurm ?"
    try:
        os.environ["SLURM_CONF"] = slurm_conf()
        ms = _measure_module()
        version = _version()
        os.makedirs(ms.PIDDIR, exist_ok=True)
        ms.cleanup(60)
        rss = SimpleNamespace(phase="")  # measure.py's tests only set .phase on it

        def step(key: str, fn: Any) -> None:
            t = time.monotonic()
            try:
                fn()
            except Exception as e:  # one failed measurement does not stop the others
                errors[key] = f"{type(e).__name__}: {e}"[:300]
                log(f"slurm: {key} failed: {errors[key]}")
                ms.cleanup(120)
            log(f"slurm: {key} took {time.monotonic() - t:.1f}s")

        def walls() -> None:
            log(f"slurm: scancel ID / squeue whole-command walls, {rounds} rounds each")
            figures["ccancel_wall"] = (scancel_walls(ms, rounds), "")
            figures["cqueue_wall"] = (squeue_walls(ms, rounds), "")

        def single() -> None:
            res: dict[str, Any] = {}
            ms.test_single(res, rounds)
            rows = res["single"]["rows"]
            figures["cancel_dead"] = (_ms_list(rows, "procs_gone"), "")
            figures["visible_queue"] = (_ms_list(rows, "scontrol_CANCELLED"), "")
            figures["visible_acct"] = (_ms_list(rows, "sacct_CANCELLED"), "")

        def sbatch_seq() -> None:
            n = max(rounds, 10) if not quick else rounds
            log(f"slurm: {n} sequential sbatch --hold")
            figures["cbatch_seq"] = ([round(1000 / x, 2) for x in sbatch_sequential(ms, n)], "")

        def pending() -> None:
            n = opts.slurm_pending
            reps = opts.slurm_pending_reps
            res: dict[str, Any] = {}
            rmap = {(n, mode, method): 0 for mode, method in
                    [("array", "scancel ARRAYID"), ("array", "scancel -u root"),
                     ("individual", "scancel <id list>")]}  # fmt: skip
            rmap[(n, "individual", "scancel -u root")] = reps
            ms.test_pending(res, [n], rmap, rss)
            ok = [r for r in res.get("pending", []) if "error" not in r]
            if not ok:
                raise RuntimeError(str([r.get("error") for r in res.get("pending", [])])[:200])
            figures["mass_pending"] = ([round(r["cancel_rate_jobs_per_s"], 1) for r in ok],
                                       f"{n:,} individually submitted held jobs, `scancel -u root`")  # fmt: skip

        def running() -> None:
            n = opts.slurm_running
            res: dict[str, Any] = {}
            ms.test_running(res, [n], {n: opts.slurm_running_reps}, rss)
            ok = [r for r in res.get("running", []) if r.get("all_done_s")]
            if not ok:
                raise RuntimeError(str([r.get("error") for r in res.get("running", [])])[:200])
            figures["cancel_running"] = ([round(n / r["all_done_s"], 1) for r in ok],
                                         f"Slurm's {n}-running figure: {n} jobs on 16 slurmd, `scancel -u root`, "
                                         "until dead and in sacct")  # fmt: skip

        step("walls", walls)
        step("single", single)
        step("sbatch_seq", sbatch_seq)
        step("pending", pending)
        step("running", running)
    finally:
        log("slurm: stopping the anchor cluster (cluster.sh stop)")
        t0 = time.monotonic()
        try:
            _cluster("stop", timeout=600)
        except Exception as e:
            errors["stop"] = f"{type(e).__name__}: {e}"[:300]
        log(f"slurm: cluster stopped in {time.monotonic() - t0:.1f}s")
    return {"figures": figures, "version": version, "errors": errors,
            "seconds": round(time.monotonic() - t_all, 1)}  # fmt: skip
