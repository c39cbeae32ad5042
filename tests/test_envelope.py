"""Errors reach the caller (issue 11): a handler that raises answers its CLI
at once (crane.requests.envelope), an asked actor that fails answers its
asker (crane.actors.base), a store batch that fails calls its barriers'
error path (crane.store)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from crane.actors.base import Actor
from crane.core import events as ev
from crane.core import messages as m
from crane.local import make_config
from crane.requests.port import Reply
from crane.store import Store
from tests.conftest import IS_ROOT, Cluster, open_ancestors

# cranectld whose QueryJobs handler (cqueue, cacct) raises: everything else is the real daemon
LAUNCHER = """
import sys
from crane.core import messages as m
from crane.requests import envelope

def broken(port, caller, msg, rid, reply):
    raise RuntimeError("deliberate failure for the test")

envelope.HANDLERS[m.QueryJobs] = broken
import crane.controller
crane.controller.main(sys.argv[1:])
"""


class BrokenQueryCluster(Cluster):
    def start_controller(self) -> subprocess.Popen[bytes]:
        return self._spawn("cranectld", [sys.executable, "-c", LAUNCHER, "-C", self.config_path])


@pytest.fixture
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = str(tmp_path_factory.mktemp("cluster"))
    os.chmod(base, 0o755)
    if IS_ROOT:
        open_ancestors(base)
    c = BrokenQueryCluster(base)
    c.write_config(make_config(base, 1, 2))
    try:
        c.up(timeout=60)
        yield c
    finally:
        c.down()


def test_failing_handler_answers_the_cli_at_once(broken: Cluster) -> None:
    t0 = time.monotonic()
    r = broken.run("cqueue")
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout, r.stderr)  # EXIT_INTERNAL (crane/cli/common.py)
    lines = r.stderr.strip().splitlines()
    assert lines == ["cqueue: error: internal error handling QueryJobs: deliberate failure for the test"], r.stderr
    print(f"failing handler answered in {elapsed:.3f} s")
    assert elapsed < 10, elapsed  # the CLI's own timeout is 30 s: it was answered, not timed out
    # the daemon keeps serving: other requests, and the failing one again
    assert set(broken.nodes_state()) == set(broken.node_names())  # QueryNodes
    job = broken.submit("-c", "1", wrap="sleep 300")
    assert "cancelled" in broken.ok("ccancel", str(job))
    again = broken.run("cqueue")
    assert again.returncode == 1 and "deliberate failure" in again.stderr
    with open(os.path.join(broken.base, "log", "cranectld.log")) as f:
        log = f.read()
    assert "handling QueryJobs failed (request " in log and "Traceback" in log and "RuntimeError" in log


def test_store_failure_answers_the_cli(make_cluster: Any) -> None:
    """While another process holds the database's write lock, the
    controller cannot commit: cbatch is told so (after the store's busy
    timeout) instead of waiting for its own; once the lock is gone the
    controller acknowledges again."""
    from crane.config import load

    c = make_cluster(nodes=1, cpus=2)
    blocker = sqlite3.connect(load(c.config_path).db_file, isolation_level=None, timeout=0)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        t0 = time.monotonic()
        r = c.run("cbatch", "--hold", "--wrap", "true")
        elapsed = time.monotonic() - t0
    finally:
        blocker.close()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("cbatch: error: the controller could not save job "), r.stderr
    assert "locked" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert elapsed < 25, elapsed  # the store's busy timeout (5 s), well before the CLI's 30 s
    job = c.submit("--hold", wrap="true")  # saved again
    assert "cancelled" in c.ok("ccancel", str(job))


# ---------------------------------------------------------------- asked actors


class Failing(Actor):
    __slots__ = ("seen",)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def receive(self, msg: Any) -> None:
        self.seen.append(msg)
        if isinstance(msg, ev.ControlEv) and msg.action == "boom":
            raise ValueError("no such thing")
        if isinstance(msg, ev.ControlEv) and msg.reply is not None:
            msg.reply.set_result(m.Ok())


def test_failing_actor_answers_an_asked_message() -> None:
    async def scenario() -> None:
        previous = Actor._loop
        Actor.bind_loop(asyncio.get_running_loop())
        try:
            a = Failing()
            failed = a.ask(ev.ControlEv("boom"))
            answer = await asyncio.wait_for(failed, 10)
            assert isinstance(answer, m.Error)
            assert answer.code == 1
            assert answer.message == "internal error handling ControlEv: no such thing"
            assert a.failures == 1
            # the actor goes on: the next asked message is answered normally
            assert isinstance(await asyncio.wait_for(a.ask(ev.ControlEv("hold")), 10), m.Ok)
            # a told message without a future fails quietly (logged, counted)
            a.tell(ev.ControlEv("boom"))
            fine = a.ask(ev.ControlEv("hold"))
            assert isinstance(await asyncio.wait_for(fine, 10), m.Ok)
            assert a.failures == 2
        finally:
            Actor._loop = previous

    asyncio.run(scenario())


def test_on_failure_keeps_an_answer_already_given() -> None:
    async def scenario() -> None:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(m.Ok({"x": 1}))
        Failing().on_failure(ev.ControlEv("boom", fut), RuntimeError("late"))
        assert fut.result() == m.Ok({"x": 1})

    asyncio.run(scenario())


# ---------------------------------------------------------------- the caller's end


def test_reply_answers_once_and_guards_callbacks() -> None:
    sent: list[m.Message] = []
    metrics: Any = __import__("collections").Counter()
    reply = Reply(sent.append, "SubmitJob", metrics)

    def later() -> None:
        raise KeyError("gone")

    reply.guard(later)()
    reply(m.Ok())  # too late: the caller has its answer
    assert sent == [m.Error(1, "internal error handling SubmitJob: 'gone'")]
    assert metrics["handler_failures"] == 1
    other: list[m.Message] = []
    Reply(other.append, "Cancel", metrics).unsaved("the cancel")("disk I/O error")
    assert other == [m.Error(1, "the controller could not save the cancel: disk I/O error")]


# ---------------------------------------------------------------- the store


def test_failed_batch_calls_the_barriers_error_path(tmp_path: Any) -> None:
    """A real failure on a real SQLite file: another connection holds the
    write lock, so the writer's transaction fails (database is locked, after
    the store's busy timeout); every barrier of that batch hears of it. Once
    the lock is gone the store commits again."""
    path = str(tmp_path / "crane.db")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = Store(path)
        blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            failed: asyncio.Future[str] = loop.create_future()
            saved: list[str] = []
            # queued before the writer starts: one batch, as group commit makes it
            store.put_next_id(41)
            store.barrier(lambda: saved.append("first"), failed.set_result)
            store.barrier(lambda: saved.append("no error path"))  # the one-callback form
            store.start()
            reason = await asyncio.wait_for(failed, 60)
            assert "locked" in reason
            assert saved == [] and store.failed and store.failures == 1
        finally:
            blocker.close()
        ok: asyncio.Future[None] = loop.create_future()
        store.put_next_id(42)
        store.barrier(lambda: ok.set_result(None), lambda why: ok.set_exception(AssertionError(why)))
        await asyncio.wait_for(ok, 60)
        store.stop()
        assert saved == []
        assert store.load()[0] == 42

    asyncio.run(scenario())


def test_unsavable_record_fails_its_batch_not_the_store(tmp_path: Any) -> None:
    path = str(tmp_path / "crane.db")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = Store(path)
        failed: asyncio.Future[str] = loop.create_future()
        store.put_entity("qos", "bad", {"x": object()})  # msgpack cannot write it
        store.barrier(lambda: failed.set_exception(AssertionError("committed")), failed.set_result)
        store.start()
        assert "serialize" in await asyncio.wait_for(failed, 60)
        ok: asyncio.Future[None] = loop.create_future()
        store.put_entity("qos", "good", {"x": 1})
        store.barrier(lambda: ok.set_result(None), lambda why: ok.set_exception(AssertionError(why)))
        await asyncio.wait_for(ok, 60)
        store.stop()
        ents = {n for _k, n, _d in store.load()[2]}
        assert ents == {"good"}

    asyncio.run(scenario())
