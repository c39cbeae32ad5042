"""A storm of concurrent CLI clients against a controller with running jobs.

Every client is a Python thread with its own DEALER socket (``crane.transport.Client``);
all of them send at once (a barrier releases them together): ``--queries``
QueryJobs (what cqueue sends) and ``--cancels`` Cancel requests for job ids that
do not exist (what ccancel sends). Every request must be answered with the
expected reply; the figures are the QueryJobs round trips under the storm.

Usage:
    python bench/load_storm.py                      # starts its own local cluster
    python bench/load_storm.py --config PATH        # against a running cluster
    python bench/load_storm.py --queries 1000 --cancels 200 --jobs 8 --json

Prints the figures (p50/p99/max of the QueryJobs round trip, errors) and, with
``--json``, one JSON line last. Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import zmq

BIN = os.path.dirname(sys.executable)
BOGUS_BASE = 900_000_000  # job ids no cluster of this size reaches


def _prepare(clients: int) -> None:
    """Room for ``clients`` sockets: fds and the context's socket cap. Must run
    before the process's first ZeroMQ socket exists."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = clients * 4 + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    zmq.Context.instance().set(zmq.MAX_SOCKETS, clients + 256)
    threading.stack_size(256 * 1024)


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def storm(cli_address: str, queries: int, cancels: int, munge: bool = False,
          timeout: float = 60.0, expect_jobs: set[int] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the storm; returns counts, errors and latencies (seconds)."""
    from crane.core import messages as m
    from crane.transport import Client, Unreachable

    total = queries + cancels
    barrier = threading.Barrier(total + 1)
    lock = threading.Lock()
    q_lat: list[float] = []
    c_lat: list[float] = []
    errors: list[str] = []
    ok = {"QueryJobs": 0, "Cancel": 0}

    def one(kind: str, i: int) -> None:
        client = None
        try:
            client = Client(cli_address, timeout, munge=munge)
            if kind == "QueryJobs":
                msg: m.Message = m.QueryJobs({})
            else:
                msg = m.Cancel(ids=[[BOGUS_BASE + i, None]])
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            with lock:
                errors.append(f"{kind} #{i}: setup: {type(e).__name__}: {e}")
            barrier.abort()
            return
        try:
            barrier.wait()
            t0 = time.perf_counter()
            try:
                reply = client.request(msg)
            except Unreachable as e:
                with lock:
                    errors.append(f"{kind} #{i}: {e}")
                return
            dt = time.perf_counter() - t0
            why = _check(kind, i, reply, expect_jobs)
            with lock:
                if why:
                    errors.append(f"{kind} #{i}: {why}")
                else:
                    ok[kind] += 1
                    (q_lat if kind == "QueryJobs" else c_lat).append(dt)
        except threading.BrokenBarrierError:
            with lock:
                errors.append(f"{kind} #{i}: barrier broken")
        finally:
            client.close()

    threads = [
        threading.Thread(target=one, args=("QueryJobs", i), daemon=True) for i in range(queries)
    ]
    threads += [
        threading.Thread(target=one, args=("Cancel", i), daemon=True) for i in range(cancels)
    ]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout + 30)
    wall = time.perf_counter() - t0
    hung = sum(t.is_alive() for t in threads)
    if hung:
        errors.append(f"{hung} clients still waiting after {timeout + 30:g}s")

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 2)

    return {
        "clients": total,
        "queries": queries,
        "cancels": cancels,
        "answered_ok": dict(ok),
        "errors": len(errors),
        "error_samples": errors[:10],
        "wall_s": round(wall, 3),
        "query_p50_ms": ms(percentile(q_lat, 0.50)),
        "query_p99_ms": ms(percentile(q_lat, 0.99)),
        "query_max_ms": ms(max(q_lat) if q_lat else None),
        "cancel_p50_ms": ms(percentile(c_lat, 0.50)),
        "cancel_p99_ms": ms(percentile(c_lat, 0.99)),
    }


def _check(kind: str, i: int, reply: Any, expect_jobs: set[int] | None) -> str:
    """Why ``reply`` is not the expected answer ('' if it is)."""
    from crane.core import messages as m

    if not isinstance(reply, m.Ok):
        return f"reply {reply.TYPE}: {getattr(reply, 'message', '')}"
    data = reply.data
    if kind == "QueryJobs":
        if not isinstance(data.get("jobs"), list):
            return f"no job list in {data!r:.200}"
        if expect_jobs:
            seen = {j["job_id"] for j in data["jobs"] if j.get("state") == "RUNNING"}
            if not expect_jobs <= seen:
                return f"running jobs {sorted(expect_jobs - seen)} missing from the answer"
        return ""
    if data.get("cancelled"):
        return f"cancelled something: {data['cancelled']!r}"
    refused = [r.get("job_id") for r in data.get("not_cancelled", [])]
    if refused != [BOGUS_BASE + i]:
        return f"expected job {BOGUS_BASE + i} refused, got {refused!r}"
    return ""


def report(res: dict[str, Any]) -> str:
    return (
        f"load storm: {res['queries']} QueryJobs + {res['cancels']} Cancel clients at once; "
        f"answered ok {res['answered_ok']}; errors {res['errors']}; wall {res['wall_s']} s\n"
        f"QueryJobs round trip under the storm: p50 {res['query_p50_ms']} ms, "
        f"p99 {res['query_p99_ms']} ms, max {res['query_max_ms']} ms; "
        f"Cancel p50 {res['cancel_p50_ms']} ms, p99 {res['cancel_p99_ms']} ms"
    )


def _own_cluster(jobs: int, stalls: str | None = None) -> tuple[Any, str, set[int]]:
    from crane.local import LocalCluster, make_config

    base = tempfile.mkdtemp(prefix="crane-loadstorm-")
    os.chmod(base, 0o755)
    if stalls:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from bench import profiled

        c = profiled.watched(base, stalls)
    else:
        c = LocalCluster(base)
    c.write_config(make_config(base, nodes=2, cpus=max(4, jobs)))
    c.up(timeout=60)
    env = {
        **os.environ,
        "CRANE_CONF": c.config_path,
        "PATH": BIN + ":" + os.environ.get("PATH", ""),
    }
    ids = set()
    for _ in range(jobs):
        out = subprocess.run([os.path.join(BIN, "cbatch"), "--json", "--wrap", "sleep 600"], env=env,
                             cwd=base, capture_output=True, text=True, check=True).stdout  # fmt: skip
        ids.add(int(json.loads(out)["job_id"]))
    return c, base, ids


def _wait_running(cfg_path: str, ids: set[int], timeout: float = 60.0) -> None:
    from crane.cli.common import call, load_config
    from crane.core import messages as m

    cfg = load_config(cfg_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = call(cfg, m.QueryJobs({}))
        if ids <= {j["job_id"] for j in data["jobs"] if j["state"] == "RUNNING"}:
            return
        time.sleep(0.1)  # polling with a deadline
    raise TimeoutError(f"jobs {sorted(ids)} not running after {timeout}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="a running cluster's config (default: start a local one)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--cancels", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=8, help="running jobs to start (own cluster only)")
    ap.add_argument(
        "--expect-jobs", default="", help="comma-separated ids every QueryJobs must show RUNNING"
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    ap.add_argument("--json", action="store_true", help="print one JSON line last")
    ap.add_argument("--stalls", metavar="FILE", help="own cluster: cranectld under bench/profiled.py's stall "
                    "watchdog (CRANE_STALL_MS, default 100), its stalls appended to FILE")  # fmt: skip
    args = ap.parse_args(argv)
    _prepare(args.queries + args.cancels)

    from crane.cli.common import load_config

    cluster = None
    base = None
    try:
        if args.config:
            cfg_path = args.config
            expect = {int(x) for x in args.expect_jobs.split(",") if x}
        else:
            cluster, base, expect = _own_cluster(args.jobs, args.stalls)
            cfg_path = cluster.config_path
        if expect:
            _wait_running(cfg_path, expect)
        cfg = load_config(cfg_path)
        res = storm(
            cfg.cli_address,
            args.queries,
            args.cancels,
            cfg.auth_type == "munge",
            args.timeout,
            expect,
        )
        if expect:  # still answering, jobs untouched
            _wait_running(cfg_path, expect, 10)
        res["running_jobs"] = len(expect)
    finally:
        if cluster is not None:
            cluster.down()
            shutil.rmtree(base or "", ignore_errors=True)
    print(report(res), flush=True)
    if res["error_samples"]:
        print("first errors:\n  " + "\n  ".join(res["error_samples"]), file=sys.stderr)
    if args.json:
        print(json.dumps(res), flush=True)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
