"""cranectld: the controller process. Wires the store, the actors and the two
sockets together, recovers state at start, and runs the event loop."""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from crane import transport
from crane.accounts import AccountDB, AcctError
from crane.actors import preemption
from crane.actors.base import Actor
from crane.actors.frontend import Frontend, user_name
from crane.actors.job import JobActor
from crane.actors.node import FromAgent, NodeActor, Send, Tick
from crane.actors.scheduler import Request, Scheduler
from crane.actors.streams import Relay
from crane.actors.waits import Waits
from crane.config import Config, ConfigError, load
from crane.core import events as ev
from crane.core import messages as m
from crane.core.job import Job
from crane.permissions import Caller, caller_from, may_act_on_job
from crane.store import Store

log = logging.getLogger("crane.ctld")


class Controller:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        Actor.bind_loop(self.loop)
        self.metrics: collections.Counter[str] = collections.Counter()
        self.store = Store(cfg.db_file)
        self.jobs: dict[int, JobActor] = {}
        self.recent: dict[int, str] = {}  # terminal, not yet committed: id -> state
        self.waits = Waits(cfg.max_waits_per_user)  # WaitJobs / WaitStep requests
        self.streams = Relay()  # live output of steps to their crun (crane.actors.streams)
        self.active_by_uid: collections.Counter[int] = collections.Counter()  # jobs in self.jobs per owner
        self._terminal: list[int] = []  # ended this loop turn, waiting for one barrier
        self.collector: Any = None  # Prometheus snapshot holder when MetricsPort is set
        from crane.metrics import LatencyHistogram

        self.cancel_latency = LatencyHistogram()
        self.nodes = {name: NodeActor(name, self) for name in cfg.nodes}
        self.scheduler = Scheduler(self)
        self.frontend = Frontend(self)
        self.next_job_id = 1
        self.acct = AccountDB.fresh()
        self.ctx = zmq.Context()
        self.agent_endpoint: transport.Endpoint
        self.cli_endpoint: transport.Endpoint
        self.stopping = asyncio.Event()
        self.agent_keys: dict[str, str] | None = None  # z85 key -> node (CurveZMQ on)
        self.routes: dict[bytes, str] = {}  # agent routing id -> node that registered on it
        self.limiter = transport.RateLimiter(cfg.cli_rate, cfg.cli_burst)
        self.auth: Any = None

    # ------------------------------------------------------------ start / stop

    def recover(self) -> None:
        next_id, jobs, ents, nodes = self.store.load()
        self.next_job_id = next_id
        if ents:
            self.acct = AccountDB.from_rows((k, d) for k, _n, d in ents)
        else:
            for kind, rows in self.acct.to_dict().items():
                for row in rows:
                    self.store.put_entity(kind, row["name"], row)
        for name, data in nodes.items():
            if name in self.scheduler.ledgers and data.get("drain"):
                self.scheduler.ledgers[name].drain = True
                self.scheduler.ledgers[name].reason = data.get("reason", "")
        actors = []
        for rec in jobs:
            job = Job.from_dict(rec)
            actor = JobActor(job, self)
            self.jobs[job.id] = actor
            self.active_by_uid[job.uid] += 1
            if job.state in ("RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING"):
                live = [n for n in job.nodes if n not in job.released]
                self.scheduler.adopt(job.id, live, job.cpus, job.memory, job.exclusive, job.state == "SUSPENDED",
                                     job.gpu_alloc)  # fmt: skip
            actors.append(actor)
        for actor in actors:
            actor.start()
        log.info("recovered %d active jobs, next job id %d", len(jobs), next_id)

    async def run(self) -> None:
        self.store.start()
        self.recover()
        curve = None
        if self.cfg.curve_key_dir:
            from zmq.auth.asyncio import AsyncioAuthenticator

            from crane import keys

            self.agent_keys = keys.accepted_agents(self.cfg.curve_key_dir)
            self.auth = AsyncioAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=os.path.join(self.cfg.curve_key_dir, "agents"))
            curve = keys.controller_keys(self.cfg.curve_key_dir)
            log.info("agent link: CurveZMQ, %d agent keys on file", len(self.agent_keys))
        asock = transport.bind_router(self.ctx, self.cfg.agent_address, curve=curve)
        asock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable -> error -> node outbox
        self.agent_endpoint = transport.Endpoint(
            asock, self.on_agent, self.on_agent_bad, router=True, user_ids=curve is not None
        )
        csock = transport.bind_router(self.ctx, self.cfg.cli_ipc_address, hwm=transport.CLI_HWM, send_hwm=transport.CLI_REPLY_HWM,
                                      heartbeat_ms=transport.CLI_HEARTBEAT_MS)  # fmt: skip
        csock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a gone client is seen (waiters are dropped)
        self.cli_endpoint = transport.Endpoint(
            csock, self.on_cli, self.on_cli_bad, router=True, credentials=True, admit=self.admit_cli
        )
        self.munge_endpoint: transport.Endpoint | None = None
        if self.cfg.auth_type == "munge":
            msock = transport.bind_router(self.ctx, self.cfg.cli_address, hwm=transport.CLI_HWM, send_hwm=transport.CLI_REPLY_HWM,
                                          heartbeat_ms=transport.CLI_HEARTBEAT_MS)  # fmt: skip
            msock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.munge_endpoint = transport.Endpoint(
                msock, self.on_munge_cli, self.on_munge_bad, router=True, cred_frame=True
            )
        log.info("cranectld up: agents %s, clis %s", self.cfg.agent_address, self.cfg.cli_address)
        sd_notify("READY=1")
        if self.cfg.metrics_port:
            from crane import metrics

            self.collector = metrics.serve(self.cfg.metrics_port, self.cfg.metrics_address)
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics_address, self.cfg.metrics_port)
        ticker = asyncio.ensure_future(self._tick())
        await self.stopping.wait()
        ticker.cancel()
        self.cli_endpoint.close()
        if self.munge_endpoint is not None:
            self.munge_endpoint.close()
        self.agent_endpoint.close()
        done = asyncio.Event()
        self.store.barrier(done.set)
        try:
            await asyncio.wait_for(done.wait(), 10)
        except TimeoutError:
            log.warning("store did not drain within 10s")
        self.store.stop()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()

    async def _tick(self) -> None:
        turn = 0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for node in self.nodes.values():
                node.tell(Tick(now))
            turn += 1
            if self.streams.subs:
                self.crun_departed()
            if turn % WAIT_SWEEP_EVERY == 0 and self.waits.by_uid:
                self.metrics["waits_dropped"] += self.waits.sweep()
            if self.collector is not None:
                from crane import metrics

                self.collector.latest = metrics.snapshot(self)

    def crun_departed(self) -> None:
        """A crun killed without a word (its connection gone, not back):
        cancel its step, as its own SIGTERM would (its job, if crun made it)."""
        for job_id, step_id in self.streams.departed():
            actor = self.jobs.get(job_id)
            running = (actor.job.steps.get(step_id) or {}).get("state") == "RUNNING" if actor else False
            if actor is None or not (running or (step_id == 1 and actor.job.state == "PENDING")):
                continue
            log.info("step %d.%d: its crun is gone: cancelled", job_id, step_id)
            self.metrics["crun_gone_cancels"] += 1
            whole = step_id == 1  # the batch step: crun's own job (only its crun streams step 1)
            actor.tell(ev.CancelEv(actor.job.uid, actor.job.user, "user", None if whole else step_id,
                                   "crun gone", grace=float(self.cfg.kill_wait)))  # fmt: skip

    # ------------------------------------------------------------ sockets

    def on_agent(self, peer: transport.Peer, msg: m.Message, rid: int) -> None:
        """Routing ids are random (ROUTER-assigned), never chosen by the agent:
        a node is named by its CurveZMQ key when keys are on, else by its
        Register; later frames are accepted only on the route that registered."""
        if self.agent_keys is not None:
            name = self.agent_keys.get(peer.user_id or "")
            if name is None or (isinstance(msg, m.Register) and msg.node != name):
                self.metrics["agent_forged"] += 1
                log.warning("agent frame refused: key of %r, claims %r", name,
                            str(getattr(msg, "node", None))[:64])  # fmt: skip
                return
        elif isinstance(msg, m.Register):
            name = msg.node
        else:
            name = self.routes.get(peer.identity)
        node = self.nodes.get(name) if name else None
        if node is None:
            self.metrics["agent_rejected"] += 1
            reason = f"unknown node {str(name)[:64]}" if isinstance(msg, m.Register) else "register again"
            self.agent_endpoint.send(peer.identity, m.RegisterAck(False, reason))
            return
        if isinstance(msg, m.Register):
            self.routes = {r: n for r, n in self.routes.items() if n != name}
            self.routes[peer.identity] = name
        self.metrics["agent_msgs"] += 1
        if isinstance(msg, m.SessionEvent):
            self.session_event(name, msg)
            return
        if isinstance(msg, m.StepOutput):
            # at once, not through the actors: it is ahead of the step's
            # StepEnded on the same link, so its crun gets it before the end
            actor = self.jobs.get(msg.job_id)
            if actor is not None and name in actor.job.nodes:
                self.streams.relay(msg)
            return
        node.tell(FromAgent(peer.identity, msg))

    def session_event(self, node: str, msg: m.SessionEvent) -> None:
        """An agent adopted an ssh session into a job or swept a user's strays."""
        pids = ", ".join(map(str, msg.pids[:20])) + (" ..." if len(msg.pids) > 20 else "")
        if msg.kind == "adopt":
            self.metrics["sessions_adopted"] += 1
            log.info("node %s: session of user %r adopted into job %d (pids %s)", node, msg.user, msg.job, pids)
        elif msg.kind == "sweep":
            self.metrics["strays_swept"] += len(msg.pids)
            log.info("node %s: swept %d processes of user %r after job %d: %s", node, len(msg.pids), msg.user, msg.job, pids)
        else:
            log.warning("node %s: unknown session event %r", node, msg.kind[:32])

    def on_agent_bad(self, peer: transport.Peer, why: str, rid: int) -> None:
        self.metrics["agent_bad_frames"] += 1
        log.debug("bad agent frame from %r: %s", peer.identity[:32], why)

    def admit_cli(self, peer: transport.Peer) -> bool:
        """Per-uid rate limit, checked before decoding; root is not limited."""
        if peer.uid == 0:
            return True
        if self.limiter.allow(peer.uid, time.monotonic()):
            return True
        self.metrics["cli_rate_limited"] += 1
        return False

    def on_munge_cli(self, peer: transport.Peer, msg: m.Message, rid: int) -> None:
        """Decode the MUNGE credential off the loop; serve only if it vouches
        for exactly this request (munged refuses replays)."""
        from crane import munge

        endpoint = self.munge_endpoint
        assert endpoint is not None and peer.cred is not None
        fut = self.loop.run_in_executor(None, munge.verify, peer.cred, peer.raw)

        def done(f: asyncio.Future[int]) -> None:
            exc = f.exception()
            if exc is not None:
                self.metrics["munge_refused"] += 1
                log.warning("MUNGE credential refused: %s", exc)
                endpoint.send(peer.identity, m.Error(5, f"authentication failed: {exc}"), rid)
                return
            peer.uid = f.result()
            if self.admit_cli(peer):
                self.on_cli(peer, msg, rid, endpoint)

        fut.add_done_callback(done)

    def on_munge_bad(self, peer: transport.Peer, why: str, rid: int) -> None:
        self.metrics["cli_bad_frames"] += 1
        if self.munge_endpoint is not None:
            self.munge_endpoint.send(peer.identity, m.Error(2, f"bad request: {why}"), rid)

    def on_cli(self, peer: transport.Peer, msg: m.Message, rid: int,
               endpoint: transport.Endpoint | None = None) -> None:  # fmt: skip
        self.metrics["cli_requests"] += 1
        endpoint = endpoint or self.cli_endpoint
        self.frontend.handle(peer, msg, rid, transport.Replier(endpoint, peer.identity, rid))

    def on_cli_bad(self, peer: transport.Peer, why: str, rid: int) -> None:
        self.metrics["cli_bad_frames"] += 1
        self.cli_endpoint.send(peer.identity, m.Error(2, f"bad request: {why}"), rid)

    # ------------------------------------------------------------ services for actors

    def to_node(self, node: str, msg: m.Message) -> None:
        actor = self.nodes.get(node)
        if actor is not None:
            actor.tell(Send(msg))

    def job_event(self, job_id: int, event: Any) -> None:
        actor = self.jobs.get(job_id)
        if actor is not None:
            actor.tell(event)
        elif isinstance(event, ev.Allocated):  # the job ended while being placed
            for n in event.nodes:
                self.scheduler.tell(ev.FreeNode(job_id, n))

    def add_job(self, job: Job) -> None:
        actor = JobActor(job, self)
        self.jobs[job.id] = actor
        self.active_by_uid[job.uid] += 1
        self.store.put_job(job.to_dict())
        actor.start()

    def job_terminal(self, actor: JobActor) -> None:
        job = actor.job
        if self.jobs.pop(job.id, None) is not None:
            self.active_by_uid[job.uid] -= 1
            if self.active_by_uid[job.uid] <= 0:
                del self.active_by_uid[job.uid]
        self.recent[job.id] = job.state
        self.metrics[_ENDED_KEY.get(job.state) or "jobs_" + job.state.lower()] += 1
        if job.cancel:
            self.metrics[_PATH_KEY.get(job.cancel.get("path")) or "cancel_path_other"] += 1
            self.cancel_latency.observe(max(0.0, time.time() - float(job.cancel.get("time") or time.time())))
        for key in self.waits.keys_of_job(job.id):
            self.waits.fire(key, dict(job.steps.get(key[1], {"state": job.state})))
        for key in [k for k in self.streams.subs if k[0] == job.id]:
            self.streams.end(key)
        self._terminal.append(job.id)
        if len(self._terminal) == 1:
            self.loop.call_soon(self._flush_terminal)

    def _flush_terminal(self) -> None:
        """One store barrier for every job that ended this loop turn: once
        their final state is committed, forget them and wake their waiters."""
        ids, self._terminal = self._terminal, []

        def committed() -> None:
            for job_id in ids:
                self.recent.pop(job_id, None)
                self.waits.fire(job_id)

        self.store.barrier(committed)

    def after_persisted(self, callback: Callable[[], None]) -> None:
        """Call back once the actors told so far have handled their mail and
        the store has committed what they wrote."""
        Actor.when_idle(lambda: self.store.barrier(callback))

    def wait_jobs(self, uid: int, job_ids: list[int], callback: Callable[[], None],
                  alive: Callable[[], bool] | None = None) -> str | None:  # fmt: skip
        """Call back once every job is terminal and committed; an error line
        if the caller is at a waiting limit."""
        live = [j for j in set(job_ids) if j in self.jobs or j in self.recent]
        if not live:
            self.store.barrier(callback)
            return None
        return self.waits.add(uid, live, lambda _v: callback(), alive)

    def finished_state(self, job_id: int) -> str | None:
        if job_id in self.recent:
            return self.recent[job_id]
        rec = self.store.get_job(job_id)
        return rec["state"] if rec else None

    def job_expected_on(self, job_id: int, node: str) -> bool:
        a = self.jobs.get(job_id)
        return a is not None and node in a.job.nodes and node not in a.job.released

    def jobs_on_node(self, node: str) -> list[int]:
        return [j for j, a in self.jobs.items() if node in a.job.nodes and node not in a.job.released]

    def request_of(self, job: Job) -> Request:
        return Request(job.id, job.partition, job.cpus, job.memory, job.nnodes, job.exclusive,
                       list(job.nodelist_req), job.qos, job.priority, job.uid,
                       job.gpus_per_node, job.gpu_type)  # fmt: skip

    # ------------------------------------------------------------ identity and accounts

    def caller(self, uid: int) -> Caller:
        return caller_from(self.acct, uid, user_name(uid))

    def may_act(self, caller: Caller, job: Job) -> bool:
        owner = self.acct.users.get(job.user)
        level = owner.admin_level if owner is not None else "none"
        if job.uid == 0:
            level = "admin"
        ancestors = self.acct.ancestors(job.account) if job.account in self.acct.accounts else []
        return may_act_on_job(caller, job.uid, level, job.account, ancestors)

    def hold_rank(self, caller: Caller, job: Job) -> int:
        """The caller's rank for holds on ``job``: 2 root, an admin or an
        operator over the job; 1 a coordinator over it; 0 its owner as such."""
        if caller.uid == 0 or caller.admin_level == "admin":
            return 2
        as_other = dataclasses.replace(caller, uid=-1)  # rights not merely from owning it
        if caller.admin_level == "operator" and self.may_act(as_other, job):
            return 2
        if self.may_act(dataclasses.replace(as_other, admin_level="none"), job):
            return 1
        return 0

    def qos_priority(self, qos: str | None) -> int:
        q = self.acct.qos.get(qos or "")
        return q.priority if q is not None else 0

    def accounts_check_submit(self, caller: Caller, spec: dict[str, Any], part: str, repeat: int) -> tuple[str, str | None]:
        db = self.acct
        try:
            if caller.name not in db.users and (self.cfg.auto_create_users or caller.uid == 0):
                db.ensure_user(caller.name, caller.uid)
                for kind, name, data in db.last_changes:
                    self.store.put_entity(kind, name, data)
            if caller.name not in db.users:
                raise AcctError(f"User {caller.name} is not registered (ask an admin: cacctmgr add user)")
            account, qos = db.check_submit(caller.name, spec.get("account"), spec.get("qos"), part)
            if qos is not None:
                mine = [a.job for a in self.jobs.values() if a.job.uid == caller.uid and a.job.qos == qos]
                for i in range(repeat):
                    db.qos_limits_check(qos, 0, len(mine) + i, spec.get("time_limit"))
        except AcctError as e:
            raise ValueError(str(e)) from None
        return account, qos

    def accounting(self, caller: Caller, op: dict[str, Any], reply: Callable[[m.Message], None]) -> None:
        from crane.accounting import handle_op

        handle_op(self, caller, op, reply)

    # ------------------------------------------------------------ preemption

    def preemption_enabled(self) -> bool:
        return self.cfg.preempt_type != "none"

    def victim_gone(self, job_id: int) -> bool:
        a = self.jobs.get(job_id)
        return a is None or a.job.state in ("PENDING", "SUSPENDED")

    def qos_job_limits(self) -> dict[str, int]:
        return {q.name: q.max_jobs_per_user for q in self.acct.qos.values() if q.max_jobs_per_user is not None}

    def running_per_user_qos(self) -> dict[tuple[int, str], int]:
        out: dict[tuple[int, str], int] = {}
        for a in self.jobs.values():
            j = a.job
            if j.state in ("RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING"):
                out[(j.uid, j.qos)] = out.get((j.uid, j.qos), 0) + 1
        return out

    def could_preempt(self, req: Request) -> bool:
        return preemption.could_preempt(self, req)

    def try_preempt(self, req: Request, ledgers: dict[str, Any], members: list[str]) -> bool:
        return preemption.try_preempt(self, req, ledgers, members)


WAIT_SWEEP_EVERY = 2  # ticks (seconds) between sweeps of waiters whose client is gone
_ENDED_KEY = {s: "jobs_" + s.lower() for s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")}
_PATH_KEY = {p: "cancel_path_" + p for p in ("user", "admin", "preemption", "timeout", "node_failure")}


def sd_notify(state: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), path)
    except OSError as e:
        log.warning("sd_notify failed: %s", e)


def private_dirs(cfg: Config) -> None:
    """CraneBaseDir 0711 as root (the CLI socket in it stays reachable by
    path, its listing is not), 0700 otherwise (a non-root controller runs
    every job as its own user: no one else may reach it); the database's
    directory 0700. A base directory owned by someone else, or shared
    (sticky, like /tmp), is refused: its other users could replace the
    socket or the database."""
    base = cfg.base_dir
    mode = 0o711 if os.geteuid() == 0 else 0o700
    os.makedirs(base, mode=mode, exist_ok=True)
    st = os.stat(base)
    if st.st_uid != os.geteuid():
        raise OSError(f"CraneBaseDir {base} is owned by uid {st.st_uid}, not by this daemon's user")
    if st.st_mode & stat.S_ISVTX:
        raise OSError(f"CraneBaseDir {base} is a shared (sticky) directory")
    os.chmod(base, mode)
    db_dir = os.path.realpath(os.path.dirname(cfg.db_file))
    ours = not os.path.exists(db_dir) or db_dir.startswith(os.path.realpath(base) + os.sep)
    os.makedirs(db_dir, mode=0o700, exist_ok=True)
    if ours and os.stat(db_dir).st_uid == os.geteuid():
        os.chmod(db_dir, 0o700)  # the database files are 0600 in any case (crane.store)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="cranectld", description="Crane controller")
    ap.add_argument("-C", "--config")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"cranectld: {e}", file=sys.stderr)
        sys.exit(1)
    setup_logging(args.verbose)
    os.umask(0o077)  # the database, its journal and anything else created here: root only
    try:
        private_dirs(cfg)
    except OSError as e:
        print(f"cranectld: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def amain() -> None:
        ctl = Controller(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ctl.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: nothing to re-read yet"))
        await ctl.run()

    try:
        asyncio.run(amain())
    except zmq.ZMQError as e:
        print(f"cranectld: cannot bind: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"cranectld: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
