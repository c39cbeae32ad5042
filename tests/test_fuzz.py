"""Hostile input (issue 6, item 4), CI-sized: ~10,000 malformed or adversarial
frames on both controller sockets of a real 2-node cluster. The 100,000-frame
soak is ``bench/fuzz.py`` (same generator and checks)."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from bench import fuzzer as fuzz
from crane import PROTOCOL_VERSION, transport
from crane.config import load
from crane.core import messages as m
from tests.conftest import Cluster, pid_alive

FRAMES = int(os.environ.get("CRANE_FUZZ_FRAMES", "10000"))


def raw_request(cluster: Cluster, parts: list[bytes], timeout: float = 10.0) -> m.Message | None:
    """Send raw payload frames to the CLI socket; the reply, or None."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(load(cluster.config_path).cli_address)
    try:
        s.send_multipart(parts)
        if not s.poll(int(timeout * 1000)):
            return None
        return m.decode(s.recv())[0]
    finally:
        s.close(linger=0)


def frame(t: str, body: dict[str, Any], rid: int = 7) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": t, "rid": rid, "b": body})


# ---------------------------------------------------------------- pure: the decoder


def test_decoder_refuses_every_generated_frame_with_bad_message_only() -> None:
    """Whatever the generator makes, decode returns a message or raises
    BadMessage: never another exception, never a RecursionError."""
    for target in ("cli", "agent"):
        gen = fuzz.FrameGen(42, target)
        for _ in range(5000):
            f = gen.next()
            for part in f.parts:
                try:
                    m.decode(part)
                except m.BadMessage:
                    pass


def test_generator_is_deterministic() -> None:
    a = [f.parts for f in (fuzz.FrameGen(3).next() for _ in range(300))]
    b = [f.parts for f in (fuzz.FrameGen(3).next() for _ in range(300))]
    assert a == b


@pytest.mark.parametrize(
    "data, why",
    [
        (fuzz.deep_list(10_000), "not msgpack"),
        (fuzz.deep_map(10_000), "not msgpack"),
        (b"\xdd\xff\xff\xff\xff\x01\x02", "not msgpack"),  # a 4 G-item array in 7 bytes
        (b"\xdb\xff\xff\xff\xffab", "not msgpack"),
        (fuzz.envelope("SubmitJob", fuzz.raw_map([("spec", fuzz.raw_map([("name", fuzz.deep_list(1000))]))]), 1), "nested too deeply"),
        (fuzz.envelope("Control", fuzz.raw_map([("action", msgpack.packb("x")), ("args", fuzz.deep_map(500))]), 1), "nested too deeply"),
        (msgpack.packb({"v": True, "t": "QueryNodes", "rid": 1, "b": {}}), "version"),
        (msgpack.packb({"v": 1.0, "t": "QueryNodes", "rid": 1, "b": {}}), "version"),
        (msgpack.packb({"v": PROTOCOL_VERSION, "t": "Q" * 10_000, "rid": 1, "b": {}}), "unknown message type"),
        (frame("Cancel", {"ids": [[1, None]], "uid": 0}), "unknown field 'uid'"),
        (frame("Cancel", {"grace": "soon"}), "field grace"),
        (frame("SubmitJob", {"spec": {}, "repeat": True}), "field repeat"),
        (b"\x84\xa1v\x01\xa1t\xa4\xff\xfe\xc0\x80\xa3rid\x01\xa1b\x80", "not msgpack"),  # invalid UTF-8
        (b"\0" * (m.MAX_FRAME + 1), "too large"),
    ],
)  # fmt: skip
def test_decoder_refuses(data: bytes, why: str) -> None:
    with pytest.raises(m.BadMessage, match=why):
        m.decode(data)


def test_nan_grace_decodes_and_is_refused_by_validation() -> None:
    from crane.requests.cancel import validate

    msg, _ = m.decode(frame("Cancel", {"ids": [[5, None]], "grace": math.nan}))
    assert isinstance(msg, m.Cancel)
    assert validate(msg) is not None


# ---------------------------------------------------------------- a storm on a real cluster


def test_fuzz_storm_daemons_keep_serving(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, cpus=2)
    sentinel = fuzz.start_sentinel(cluster)
    # real jobs the agent fuzzers' frames name: running on the other node (whose
    # key they hold), held, waiting for resources; and the sentinel
    guards = fuzz.start_guards(cluster, sentinel=sentinel)
    t0 = time.monotonic()
    # no oversized frames here: ZeroMQ closes the connection of their sender,
    # which loses the replies in flight (test_oversized_frames covers them)
    res = fuzz.campaign(
        cluster, FRAMES, seed=11, baseline=1.0, oversize=False, real_jobs=sorted(guards)
    )
    named = res["kinds"].get("adv_real", 0)  # frames made to end, start or release a real job
    post = fuzz.post_checks(cluster, sentinel, guards=guards)
    took = time.monotonic() - t0
    summary = {k: res[k] for k in ("frames_sent", "frames_to_decoder", "replies_by", "rss", "good_during",
                                   "daemons_alive", "violations", "worker_errors", "cli_unanswered")}  # fmt: skip
    print(summary, post, f"{took:.1f}s")
    assert not res["worker_errors"], res["worker_errors"]
    assert res["frames_sent"] >= FRAMES * 0.9
    # both daemons (and every agent) alive
    assert res["daemon_crashes"] == 0 and all(res["daemons_alive"].values()), res["daemons_alive"]
    # every bad CLI request got an Error with the proper code (rid 0: code 2), never an Ok
    assert res["violation_count"] == 0, res["violations"]
    assert res["replies_by"].get("Error:2", 0) > FRAMES * 0.3
    # ... and none went unanswered (frames with > 3 parts are dropped by design)
    assert res["cli_unanswered"] == 0, res["roles"]
    # no handler hit the transport's safety net (each would be a bug)
    with open(os.path.join(cluster.base, "log", "cranectld.log")) as f:
        log = f.read()
    assert "handler failed" not in log, log[log.find("handler failed") :][:3000]
    # nor any other safety net: no traceback, no ERROR line in any daemon's log
    assert not fuzz.log_errors(cluster), fuzz.log_errors(cluster)[:10]
    # memory bounded
    for name, r in res["rss"].items():
        assert r["peak_mb"] - r["start_mb"] < 200, (name, r)
    # the good client kept working
    for phase in ("good_during", "good_after"):
        assert res[phase]["failures"] == 0 and res[phase]["round_trips"] > 0, res[phase]
    assert res["good_during"]["p99_ms"] < 3000, res["good_during"]
    # the real jobs the forged agent frames named are as they were (state, start,
    # step pids alive), then each cancel's reply says it cancelled what was asked
    assert named > 0 and post["guards"] == sorted(guards), (res["kinds"], post)
    assert post["guards_harmed"] == [], post
    assert post["cancel_surprises"] == [] and post["guards_cancel"] == [], post
    # a job ran through the storm on crane01 (the forged agent's name), then a
    # real job still submits, runs and cancels
    assert post["ok"], post


def test_oversized_frames_are_dropped_and_the_controller_serves_on(cluster: Cluster) -> None:
    cfg = load(cluster.config_path)
    # just over MAX_FRAME: ZeroMQ lets it in, decode refuses it with an Error
    edge = frame("SubmitJob", {"spec": {"script": "#" * (m.MAX_FRAME + 10)}})
    reply = raw_request(cluster, [edge])
    assert isinstance(reply, m.Error) and reply.code == 2 and "too large" in reply.message
    # far over it (5 MB): ZeroMQ closes the sender's connection, no reply
    big = b"\xc6" + (5 << 20).to_bytes(4, "big") + b"\0" * (5 << 20)
    assert raw_request(cluster, [big], timeout=2) is None
    # a 4 GB claim in a few bytes
    reply = raw_request(cluster, [b"\xdd\xff\xff\xff\xff\x01"])
    assert isinstance(reply, m.Error) and reply.code == 2
    # 2-3 payload frames: an Error; more: dropped
    reply = raw_request(cluster, [frame("QueryNodes", {}), b""])
    assert isinstance(reply, m.Error) and reply.code == 2
    assert raw_request(cluster, [frame("QueryNodes", {})] * 5, timeout=1) is None
    from crane.transport import Client

    c = Client(cfg.cli_address, timeout=10)
    try:
        assert isinstance(c.request(m.QueryNodes()), m.Ok)
    finally:
        c.close()


# ---------------------------------------------------------------- identity in the body


def test_cancel_with_a_forged_uid_field_is_refused_and_cancels_nothing(cluster: Cluster) -> None:
    jid = cluster.submit("-w", "crane01", wrap="sleep 300")
    pid = cluster.step_pid(jid)
    for body in ({"ids": [[jid, None]], "uid": 0}, {"ids": [[jid, None]], "user": "root"},
                 {"filters": {"jobs": [jid], "uid": 0}}):  # fmt: skip
        reply = raw_request(cluster, [frame("Cancel", body)])
        assert isinstance(reply, m.Error) and reply.code == 2, reply
    time.sleep(0.5)
    assert cluster.state(jid) == "RUNNING" and pid_alive(pid)
    cluster.ok("ccancel", str(jid))
    cluster.wait_state(jid, "CANCELLED")


def test_submit_spec_with_a_uid_field_is_refused(cluster: Cluster) -> None:
    before = cluster.jobs()
    spec = {"argv": ["/bin/true"], "cwd": "/tmp", "stdout": "/dev/null"}
    for bad in ({**spec, "uid": 0}, {**spec, "gid": 0}, {**spec, "user": "root"}):
        reply = raw_request(cluster, [frame("SubmitJob", {"spec": bad})])
        assert isinstance(reply, m.Error) and reply.code == 2, reply
        assert "unknown job field" in reply.message
    reply = raw_request(cluster, [frame("SubmitJob", {"spec": spec, "uid": 0})])
    assert isinstance(reply, m.Error) and reply.code == 2 and "unknown field 'uid'" in reply.message
    assert cluster.jobs().keys() == before.keys()


@pytest.mark.parametrize("heartbeat", [transport.CLI_HEARTBEAT_MS])
def test_an_oversized_frame_on_a_backed_up_connection_does_not_wedge_it(
    tmp_path: Any, heartbeat: int
) -> None:
    """libzmq 4.3: a frame over MAXMSGSIZE drops the connection; a peer with a
    fixed routing id reconnects while its old pipe still holds unread frames
    (the reader lags), and the ROUTER parks the new connection unread for good
    (its fd leaks even after the peer closes). The CLI sockets' ZMTP heartbeat
    closes it; the client reconnects and is heard again (within ~12 s)."""
    ctx = zmq.Context()
    addr = f"ipc://{tmp_path}/s.sock"
    router = transport.bind_router(ctx, addr, hwm=transport.CLI_HWM, heartbeat_ms=heartbeat)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:  # a slow reader that answers, like a busy controller
        while not stop.is_set():
            if router.poll(100):
                parts = router.recv_multipart()
                got.append(parts[-1][:5])
                time.sleep(0.0003)
                router.send_multipart([parts[0], b"reply"], zmq.NOBLOCK)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.SNDTIMEO, 1000)
    d.setsockopt(zmq.RCVHWM, 0)
    d.setsockopt(zmq.IDENTITY, b"flood")  # a fixed identity: it reconnects under the same name
    d.connect(addr)
    gen = fuzz.FrameGen(104, "cli")  # a 5 MB frame at #716, in a stream of small ones
    try:
        for _ in range(2500):
            try:
                d.send_multipart(gen.next().parts)
            except zmq.Again:
                break
            while d.poll(0):
                d.recv()
        deadline = time.monotonic() + 40
        while b"probe" not in got and time.monotonic() < deadline:
            try:
                d.send(b"probe", zmq.NOBLOCK)
            except zmq.Again:
                pass
            while d.poll(0):
                d.recv()
            time.sleep(0.05)
        assert b"probe" in got, f"connection wedged after {len(got)} frames"
    finally:
        stop.set()
        t.join(2)
        d.close(0)
        router.close(0)
        ctx.term()


# ---------------------------------------------------------------- forged agent frames naming real jobs


def test_generator_names_real_jobs_in_agent_frames_only_when_given() -> None:
    """With ``real_jobs`` the agent frames name them (ends, starts, releases
    of a real job); without, the same seed gives the same frames as before,
    and CLI frames never name them (root may cancel what it names)."""
    plain = [f.parts for f in (fuzz.FrameGen(9, "agent").next() for _ in range(300))]
    assert plain == [
        f.parts for f in (fuzz.FrameGen(9, "agent", real_jobs=()).next() for _ in range(300))
    ]
    gen = fuzz.FrameGen(9, "agent", real_jobs=(7, 8))
    named: dict[str, int] = {}
    for _ in range(4000):
        f = gen.next()
        try:
            msg, _ = m.decode(f.parts[0])
        except m.BadMessage:
            continue
        if getattr(msg, "job_id", None) in (7, 8):
            named[msg.TYPE] = named.get(msg.TYPE, 0) + 1
    assert {"StepEnded", "StepStarted", "JobReleased"} <= set(named), named
    cli = [f.parts for f in (fuzz.FrameGen(9, "cli", real_jobs=(7, 8)).next() for _ in range(300))]
    assert cli == [f.parts for f in (fuzz.FrameGen(9, "cli").next() for _ in range(300))]


def _forge(
    address: str, curve: tuple[bytes, bytes, bytes], ident: bytes, msg: m.Message
) -> m.Message | None:
    """One frame on a fresh connection with a real node's key; the
    controller's answer (a stranger's route is asked to register again once
    its frame has reached the node's actor)."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, ident)
    s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve
    s.connect(address)
    try:
        s.send(m.encode(msg, 1))
        if not s.poll(10_000):
            return None
        return m.decode(s.recv())[0]
    finally:
        s.close(linger=0)


def test_forged_agent_frames_naming_real_jobs_harm_nothing(cluster: Cluster) -> None:
    """A second connection with a real node's CurveZMQ key (a copied key)
    and a routing id of its own (random, or another node's name) reports a
    real running job's step ended, its release, a new start, and a pending
    job's start: each frame reaches the node's actor, which drops it (not
    the route that registered) and asks that route to register again. The
    jobs are as they were: same state, start time, step pid, alive."""
    from crane import keys

    cfg = load(cluster.config_path)
    if not cfg.curve_key_dir:
        pytest.skip("agent link without CurveZMQ")
    running = cluster.submit("-p", "CPU", "-w", "crane02", wrap="sleep 300")
    pending = cluster.submit("-p", "CPU", "-w", "crane02", "--hold", wrap="sleep 300")
    pid = cluster.step_pid(running)
    before = {j: cluster.job(j) for j in (running, pending)}
    pub, sec = keys.node_keys(cfg.curve_key_dir, "crane02")
    curve = (pub, sec, keys.controller_public(cfg.curve_key_dir))
    frames = [m.StepEnded(running, 1, 0), m.StepEnded(running, 1, 137, 9, "x"), m.JobReleased(running),
              m.StepStarted(running, 1, 1), m.StepStarted(pending, 1, os.getpid()), m.JobReleased(pending)]  # fmt: skip
    try:
        for i, msg in enumerate(frames):
            # a random routing id, and the names of nodes (each id once: one "register again" per id)
            for ident in [b"f" + os.urandom(8)] + ([b"crane01", b"crane02"] if i == 0 else []):
                reply = _forge(cfg.agent_address, curve, ident, msg)
                # the frame was handled (dropped) before that answer: the jobs are as they were
                for jid, was in before.items():
                    now = cluster.job(jid)
                    assert now is not None, (msg, jid)
                    for key in ("state", "start_time", "nodes", "cancelled_by", "requeue_count"):
                        assert now[key] == was[key], (msg, ident, jid, key, was[key], now[key])
                    assert [(s["step_id"], s.get("pid"), s["state"]) for s in now["steps"]] == \
                        [(s["step_id"], s.get("pid"), s["state"]) for s in was["steps"]], (msg, ident, jid)  # fmt: skip
                assert pid_alive(pid), (msg, ident)
                assert isinstance(reply, m.RegisterAck) and not reply.ok, (msg, ident, reply)
    finally:
        cluster.ok("ccancel", str(running), str(pending))
    cluster.wait_state(running, "CANCELLED")


# ---------------------------------------------------------------- storm-time stalls (issue 15)


def _reference_check(value: Any, hint: Any, name: str, depth: int = 0) -> None:
    """The decoder's field check as it was before it was compiled per hint
    (typing's introspection per value): the compiled one must agree."""
    import types
    import typing

    if depth > m.MAX_DEPTH:
        raise m.BadMessage(f"field {name}: nested too deeply")
    if hint is Any:
        m._depth(value, name, depth)
        return
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for alt in typing.get_args(hint):
            try:
                _reference_check(value, alt, name, depth + 1)
                return
            except m.BadMessage:
                continue
        raise m.BadMessage(f"field {name}: wrong type {type(value).__name__}")
    if hint is type(None):
        if value is not None:
            raise m.BadMessage(f"field {name}: expected nil")
        return
    if origin is list:
        if not isinstance(value, list):
            raise m.BadMessage(f"field {name}: expected a list")
        (item,) = typing.get_args(hint) or (Any,)
        for v in value:
            _reference_check(v, item, name, depth + 1)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise m.BadMessage(f"field {name}: expected a map")
        k, item = typing.get_args(hint) or (Any, Any)
        for kk, vv in value.items():
            _reference_check(kk, k, name, depth + 1)
            _reference_check(vv, item, name, depth + 1)
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise m.BadMessage(f"field {name}: expected a number")
        return
    if hint is int and isinstance(value, bool):
        raise m.BadMessage(f"field {name}: expected an integer")
    if hint is list or hint is dict:
        if not isinstance(value, hint):
            raise m.BadMessage(f"field {name}: expected a {hint.__name__}")
        return
    if not isinstance(value, hint):
        raise m.BadMessage(f"field {name}: expected {getattr(hint, '__name__', hint)}")


def test_compiled_field_checks_agree_with_the_reference() -> None:
    """Every field type of every message, against generated values and
    nestings around the depth limit: the same verdict, the same message."""

    def verdict(fn: Callable[..., None], v: Any, h: Any, depth: int) -> str | None:
        try:
            fn(v, h, "x", depth)
            return None
        except m.BadMessage as e:
            return str(e)

    hints = {h for c in m._REGISTRY.values() for h in m._hints(c).values()}
    gen = fuzz.FrameGen(5)
    values = [gen._value() for _ in range(3000)]
    for d in range(0, m.MAX_DEPTH + 4):
        for wrap in (
            lambda x: [x],
            lambda x: {"k": x},
            lambda x: [[1, x]],
            lambda x: [x, None, True],
        ):
            v: Any = None
            for _ in range(d):
                v = wrap(v)
            values.append(v)
    values += [[[1, None]] * 50, [[True, None]], [[1.5, 2]], [1, "a"], {"a": [1, 2.5, None]}]
    for v in values:
        for h in hints:
            for depth in (0, m.MAX_DEPTH - 2, m.MAX_DEPTH - 1, m.MAX_DEPTH, m.MAX_DEPTH + 1):
                assert verdict(m._check, v, h, depth) == verdict(_reference_check, v, h, depth), (
                    v,
                    h,
                    depth,
                )


def test_lookups_of_ids_above_every_job_run_no_query(tmp_path: Any) -> None:
    """A request naming ids no job ever had (a 100,000-id Cancel: two
    lookups per id on the event loop, 1.2-2.9 s stalls under the fuzzer)
    is answered from the store's highest id, without SQLite."""
    import asyncio

    from crane.store import Store

    async def go() -> None:
        store = Store(str(tmp_path / "db" / "crane.db"))
        store.start()
        store.put_job({"id": 5, "state": "COMPLETED", "uid": 0, "end_time": 1.0})
        done = asyncio.Event()
        store.barrier(done.set)
        await asyncio.wait_for(done.wait(), 30)
        queries: list[str] = []
        store.read.set_trace_callback(queries.append)
        assert store.get_job(5) is not None and len(queries) == 1
        assert all(store.get_job(fuzz.FAR + i) is None for i in range(1000))
        assert store.finished_jobs([fuzz.FAR, fuzz.FAR + 1]) == []
        assert len(queries) == 1, queries[:3]
        assert store.get_job(4) is None and len(queries) == 2  # below the top: asked
        store.stop()

    asyncio.run(go())
