"""Hostile-input soak (issue 6, item 4): fuzz both controller sockets of a
fresh 2-node local cluster and show that the daemons keep serving.

Usage (root, from the repository)::

    /opt/crane-venv/bin/python bench/fuzz.py                 # 100,000 frames
    /opt/crane-venv/bin/python bench/fuzz.py --frames 20000 --seed 7 --keep

Frames (``bench.fuzzer.FrameGen``) are split between processes (``bench.fuzzer.ROLES``):
CLI socket as uid 0, as a plain user (daemon) and one identity of another plain
user (nobody) flooding as fast as it can; agent socket
with random identities and with the identity of a real node ("crane01"),
each both without a CurveZMQ key (refused at the handshake) and with the key
of another real node (a compromised node: the frames reach the decoder).
The agent fuzzers' frames also name the real jobs (the sentinel, a job running
on the other node, a held one and one waiting for resources): they must come
through unharmed. Meanwhile a good client does cqueue round trips (p50/p99 before, during and
after the storm) and the RSS of cranectld and the agents is sampled every
100 ms. A job runs on crane01 through the storm. At the end: daemon crashes
(must be 0), nodes up, that job still RUNNING and then cancelled, a new job
completes, another is cancelled while running, processes gone; every cancel's
reply says it cancelled what was asked; no traceback or ERROR line in the
daemons' logs.

Prints a summary and writes bench/results/fuzz.json. Exit status 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import fuzzer as fuzz  # noqa: E402
from bench import profiled  # noqa: E402
from crane.local import LocalCluster, make_config  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def say(text: str) -> None:
    print(f"[fuzz {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument(
        "--no-curve",
        action="store_true",
        help="agent link without CurveZMQ (every frame reaches the decoder)",
    )
    ap.add_argument(
        "--rss-limit-mb", type=float, default=200.0, help="allowed RSS growth of any daemon"
    )
    ap.add_argument(
        "--p99-limit-ms",
        type=float,
        default=1000.0,
        help="allowed good-client p99 during the storm",
    )
    ap.add_argument("--out", default=os.path.join(RESULTS, "fuzz.json"))
    ap.add_argument("--keep", action="store_true", help="keep the cluster directory (logs)")
    ap.add_argument(
        "--stalls",
        metavar="FILE",
        help="run cranectld under bench/profiled.py's stall watchdog; the loop's stalls go to FILE",
    )
    args = ap.parse_args(argv)

    base = tempfile.mkdtemp(prefix="crane-fuzz-")
    os.chmod(base, 0o755)
    extra = {"Auth": {"Type": "local"}} if args.no_curve else {}
    cluster = profiled.watched(base, args.stalls) if args.stalls else LocalCluster(base)
    cluster.write_config(make_config(base, args.nodes, 2, **extra))
    say(f"cluster in {base}")
    cluster.up(timeout=60)
    ok = False
    try:
        sentinel = fuzz.start_sentinel(cluster)
        guards = fuzz.start_guards(cluster, sentinel=sentinel)
        say(f"sentinel job {sentinel} running on crane01, guard jobs {sorted(set(guards) - {sentinel})} "
            f"(running elsewhere, held, waiting); fuzzing {args.frames} frames naming them too")  # fmt: skip
        res = fuzz.campaign(cluster, args.frames, args.seed, progress=say, real_jobs=sorted(guards))
        say("storm over; post checks")
        res["post"] = fuzz.post_checks(cluster, sentinel, guards=guards)
        res["caught_exceptions"] = fuzz.log_failures(cluster)
        res["log_errors"] = fuzz.log_errors(cluster)
        growth = {k: v["peak_mb"] - v["start_mb"] for k, v in res["rss"].items()}
        res["rss_growth_mb"] = growth
        checks = {
            "daemon_crashes == 0": res["daemon_crashes"] == 0,
            "post checks": res["post"]["ok"],
            "no reply broke its frame's expectation": res["violation_count"] == 0,
            f"rss growth < {args.rss_limit_mb:g} MB": max(growth.values()) < args.rss_limit_mb,
            "good client never failed": res["good_during"]["failures"] == 0 and res["good_after"]["failures"] == 0,
            f"good client p99 < {args.p99_limit_ms:g} ms": (res["good_during"]["p99_ms"] or 1e9) < args.p99_limit_ms,
            "no fuzzer process error": not res["worker_errors"],
            "no traceback or ERROR line in the daemons' logs": not res["log_errors"],
            "real jobs the forged frames named unharmed": not res["post"].get("guards_harmed"),
            "every cancel did what was asked": not res["post"].get("cancel_surprises") and not res["post"].get("guards_cancel"),
        }  # fmt: skip
        res["checks"] = checks
        ok = all(checks.values())
        res["ok"] = ok
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
        print_summary(res, args.out)
    finally:
        cluster.down()
        if args.keep or not ok:
            say(f"cluster directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


def print_summary(res: dict, path: str) -> None:  # type: ignore[type-arg]
    g0, g1, g2 = res["good_before"], res["good_during"], res["good_after"]
    print(
        f"frames fuzzed:      {res['frames_sent']} ({res['bytes_sent'] / 1e6:.0f} MB) in {res['seconds']} s "
        f"({res['frames_per_s']}/s); refused at send (no key: handshake) {res['send_errors']}"
    )
    print(
        f"to the decoder:     {res['frames_to_decoder']} (CLI {res['cli_frames']}, agent with a key "
        f"{res['frames_to_decoder'] - res['cli_frames']}); refused at the CurveZMQ handshake "
        f"{res['frames_refused_handshake']}"
    )
    print(
        f"CLI unanswered:     {res['cli_unanswered']} (rate-limited plain users, and frames in flight on "
        f"the {res['oversize_frames']} connections ZeroMQ closed for an oversized frame)"
    )
    print(f"replies:            {res['replies']} {res['replies_by']}")
    print(f"expectation breaks: {res['violation_count']} {res['violations'][:3]}")
    print(f"daemon crashes:     {res['daemon_crashes']} alive {res['daemons_alive']}")
    for k, v in res["rss"].items():
        print(f"peak RSS {k:20s} {v['peak_mb']:7.1f} MB (start {v['start_mb']}, end {v['end_mb']})")
    for name, g in (("before", g0), ("during", g1), ("after", g2)):
        print(
            f"good cqueue {name:7s} n={g['round_trips']:5d} p50 {g['p50_ms']} ms p99 {g['p99_ms']} ms "
            f"max {g['max_ms']} ms failures {g['failures']}"
        )
    print(f"caught exceptions:  {res['caught_exceptions']}")
    print(f"log errors:         {len(res['log_errors'])} {res['log_errors'][:3]}")
    print(
        f"guard jobs:         {res['post'].get('guards')} harmed: {res['post'].get('guards_harmed')}"
    )
    print(f"post checks:        {res['post']}")
    for name, passed in res["checks"].items():
        print(f"  [{'ok' if passed else 'FAIL'}] {name}")
    print(f"written: {path}")


if __name__ == "__main__":
    sys.exit(main())
