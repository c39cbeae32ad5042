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
from typing import Any

import zmq

from crane import transport
from crane.actors.agent_gate import AgentGate
from crane.actors.base import Actor
from crane.actors.jobs import JobTable, LateSender
from crane.actors.node import NodeActor, Reregister, Tick
from crane.actors.scheduler import Scheduler
from crane.actors.streams import Relay
from crane.actors.waits import Waits
from crane.authority import Authority
from crane.client_config import write_cache
from crane.config import Config, ConfigError, load
from crane.core.job import Job
from crane.core.scheduling import Policy as SchedulingPolicy
from crane.core.states import HOLDING, JobState
from crane.requests.envelope import Envelope
from crane.requests.gate import CliGate
from crane.requests.services import JobIds, RequestServices
from crane.store import Store

log = logging.getLogger("crane.ctld")


class Controller:
    """Wiring only: builds the parts, recovers their state, opens the sockets
    and runs the loop. Who does what:

    - ``JobTable`` (crane.actors.jobs): the job actors and their ends; the
      port of the job and node actors;
    - ``Scheduler`` (crane.actors.scheduler): the pure scheduling machine;
    - ``NodeActor``s (crane.actors.node) behind the ``AgentGate``;
    - ``Authority`` (crane.authority): accounts, rights, submit rules;
    - ``Envelope`` (crane.requests) behind the ``CliGate``: CLI requests.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        Actor.bind_loop(self.loop)
        self.metrics: collections.Counter[str] = collections.Counter()
        self.store = Store(cfg.db_file)
        self.authority = Authority(cfg, self.store)
        self.agents = LateSender()  # the agent socket, once open
        self.nodes: dict[str, NodeActor] = {}
        self.scheduler = Scheduler(SchedulerLinks(self), cfg.nodes.values())
        self.table = JobTable(self.loop, self.store, self.scheduler, self.nodes, cfg.nodes,  # type: ignore[arg-type]
                              Waits(cfg.max_waits_per_user), Relay(), self.metrics, self.agents)  # fmt: skip
        self.reregister = Reregister(self.agents, len(cfg.nodes))
        self.nodes.update({n: NodeActor(conf, self.table, cfg.craned_timeout, self.reregister)
                           for n, conf in cfg.nodes.items()})  # fmt: skip
        self.ids = JobIds()
        self.services = RequestServices(cfg, self.loop, self.store, self.authority, self.table, self.scheduler,
                                        self.nodes, self.ids, self.metrics, self.reload_config)  # fmt: skip
        self.gate = CliGate(Envelope(self.services), transport.RateLimiter(cfg.cli_rate, cfg.cli_burst),
                            self.loop, self.metrics)  # fmt: skip
        self.collector: Any = None  # Prometheus snapshot holder when MetricsPort is set
        self.ctx = zmq.Context()
        self.endpoints: list[transport.Endpoint] = []
        self.stopping = asyncio.Event()
        self.auth: Any = None
        self.agent_gate: AgentGate | None = None  # once the agent socket is open

    # ------------------------------------------------------------ start / stop

    def recover(self) -> None:
        next_id, jobs, ents, nodes = self.store.load()
        self.ids.next = next_id
        self.authority.recover(ents)
        for name, data in nodes.items():
            if data.get("drain"):
                self.scheduler.restore_node(name, True, data.get("reason", ""))
        actors = []
        for rec in jobs:
            job = Job.from_dict(rec)
            actors.append(self.table.add(job, new=False))
            if job.state in HOLDING:
                live = [n for n in job.nodes if n not in job.released]
                self.scheduler.adopt(job.id, live, job.cpus, job.memory, job.exclusive, job.state == JobState.SUSPENDED,
                                     job.gpu_alloc, qos=job.qos, partition=job.partition, uid=job.uid,
                                     start_time=job.start_time, ending=job.state == JobState.COMPLETING or bool(job.cancel))  # fmt: skip
        for actor in actors:
            actor.start()
        log.info("recovered %d active jobs, next job id %d", len(jobs), next_id)

    async def run(self) -> None:
        self.store.start()
        self.recover()
        self.open_agent_socket()
        self.open_cli_sockets()
        log.info("cranectld up %.2fs after its start: agents %s, clis %s", process_age(), self.cfg.agent_address,
                 self.cfg.cli_address)  # fmt: skip
        sd_notify("READY=1")
        if self.cfg.metrics_port:
            from crane import metrics

            self.collector = metrics.serve(self.cfg.metrics_port, self.cfg.metrics_address)
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics_address, self.cfg.metrics_port)
        ticker = asyncio.ensure_future(self._tick())
        await self.stopping.wait()
        ticker.cancel()
        for endpoint in reversed(self.endpoints):
            endpoint.close()
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

    def open_agent_socket(self) -> None:
        curve, keys_of = None, None
        if self.cfg.curve_key_dir:
            from zmq.auth.asyncio import AsyncioAuthenticator

            from crane import keys

            keys_of = keys.accepted_agents(self.cfg.curve_key_dir)
            self.auth = AsyncioAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=os.path.join(self.cfg.curve_key_dir, "agents"))
            curve = keys.controller_keys(self.cfg.curve_key_dir)
            log.info("agent link: CurveZMQ, %d agent keys on file", len(keys_of))
        sock = transport.bind_router(self.ctx, self.cfg.agent_address, curve=curve)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable -> error -> node outbox
        gate = self.agent_gate = AgentGate(self.nodes, self.table, self.agents, self.reregister, self.metrics, keys_of)
        endpoint = transport.Endpoint(sock, gate.on_frame, gate.on_bad_frame, router=True, user_ids=curve is not None)
        self.agents.endpoint = endpoint
        self.endpoints.append(endpoint)

    def open_cli_sockets(self) -> None:
        gate = self.gate
        sock = transport.bind_router(self.ctx, self.cfg.cli_ipc_address, hwm=transport.CLI_HWM, send_hwm=transport.CLI_REPLY_HWM,
                                     heartbeat_ms=transport.CLI_HEARTBEAT_MS)  # fmt: skip
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a gone client is seen (waiters are dropped)
        ipc: transport.Endpoint = transport.Endpoint(
            sock, lambda p, msg, rid: gate.on_request(ipc, p, msg, rid), lambda p, why, rid: gate.on_bad(ipc, p, why, rid),
            router=True, credentials=True, admit=gate.admit,
        )  # fmt: skip
        self.endpoints.append(ipc)
        if self.cfg.auth_type == "munge":
            sock = transport.bind_router(self.ctx, self.cfg.cli_address, hwm=transport.CLI_HWM, send_hwm=transport.CLI_REPLY_HWM,
                                         heartbeat_ms=transport.CLI_HEARTBEAT_MS)  # fmt: skip
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            tcp: transport.Endpoint = transport.Endpoint(
                sock, lambda p, msg, rid: gate.on_munge_request(tcp, p, msg, rid),
                lambda p, why, rid: gate.on_bad(tcp, p, why, rid), router=True, cred_frame=True,
            )  # fmt: skip
            self.endpoints.append(tcp)

    # ------------------------------------------------------------ reconfigure

    def reload_config(self) -> str | None:
        """SIGHUP and ``ccontrol reconfigure``: re-read the config file this
        controller started with and apply it; the one-line error if it is
        refused (the running configuration then stays)."""
        try:
            new = load(self.cfg.path)
        except ConfigError as e:
            log.error("reconfigure refused, the configuration stays as it was: %s", e)
            return str(e)
        write_cache(new)
        return self.reconfigure(new)

    def reconfigure(self, new_cfg: Config) -> str | None:
        """Swap ``new_cfg`` in everywhere the parts hold the configuration,
        without dropping a job: partitions, limits and preemption settings
        at once; new nodes added (down until their agent registers); nodes
        resized; a node left out only if no job uses it (else it is kept, and
        the error logged). What only a restart can change (addresses, ports,
        directories, authentication) is kept, with a warning. Refused (the
        error line returned, nothing changed) if a partition left out has
        active jobs."""
        old = self.cfg
        err = self._reconfigure_refusal(new_cfg)
        if err:
            log.error("reconfigure refused, the configuration stays as it was: %s", err)
            return err
        fixed = {k: getattr(old, k) for k in RESTART_ONLY if getattr(new_cfg, k) != getattr(old, k)}
        for k in fixed:
            log.warning("reconfigure: %s changed: it takes effect at the next restart", k)
        new = dataclasses.replace(new_cfg, **fixed)
        for name, why in self.scheduler.reconfigure(new.nodes.values()).items():
            log.error("reconfigure: node %s kept as it was (%s)", name, why)
            if name not in new.nodes:
                new.nodes[name] = old.nodes[name]
            else:  # its GPUs stay as they were
                new.nodes[name] = dataclasses.replace(new.nodes[name], gpus=list(old.nodes[name].gpus))
        for name, conf in new.nodes.items():
            actor = self.nodes.get(name)
            if actor is None:
                log.info("reconfigure: node %s added", name)
                self.nodes[name] = NodeActor(conf, self.table, new.craned_timeout, self.reregister)
            else:
                actor.conf, actor.timeout = conf, new.craned_timeout
        for name in [n for n in self.nodes if n not in new.nodes]:
            log.info("reconfigure: node %s removed", name)
            del self.nodes[name]
        self.reregister.keep = 4 * len(new.nodes) + 64
        self.table.node_conf = new.nodes
        self.table.waits.per_user = new.max_waits_per_user
        self.gate.limiter.rate, self.gate.limiter.burst = new.cli_rate, new.cli_burst
        self.authority.cfg = self.services.cfg = self.cfg = new
        if new.curve_key_dir and self.agent_gate is not None and self.agent_gate.keys is not None:
            self._reload_agent_keys(new.curve_key_dir)
        self.scheduler.request_pass()
        log.info("reconfigured from %s: %d nodes, %d partitions", new.path, len(new.nodes), len(new.partitions))
        return None

    def _reconfigure_refusal(self, new: Config) -> str | None:
        active = collections.Counter(j.partition for j in self.services.active_jobs())
        for part in sorted(set(self.cfg.partitions) - set(new.partitions)):
            if active[part]:
                return f"partition {part} has {active[part]} active jobs: it cannot be removed"
        return None

    def _reload_agent_keys(self, key_dir: str) -> None:
        """New nodes' agent keys (CurveZMQ): accepted from now on."""
        from crane import keys

        assert self.agent_gate is not None and self.agent_gate.keys is not None
        try:
            found = keys.accepted_agents(key_dir)
        except (OSError, ValueError) as e:
            log.error("reconfigure: agent keys not re-read: %s", e)
            return
        self.agent_gate.keys.clear()
        self.agent_gate.keys.update(found)
        if self.auth is not None:
            self.auth.configure_curve(domain="*", location=os.path.join(key_dir, "agents"))

    async def _tick(self) -> None:
        turn = 0
        table = self.table
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for node in self.nodes.values():
                node.tell(Tick(now))
            turn += 1
            if table.streams.subs:
                table.crun_departed(float(self.cfg.kill_wait))
            if turn % WAIT_SWEEP_EVERY == 0 and table.waits.by_uid:
                self.metrics["waits_dropped"] += table.waits.sweep()
            if self.collector is not None:
                from crane import metrics

                self.collector.latest = metrics.snapshot(table, self.metrics, *self.endpoints[:2], self.store,
                                                         self.nodes.values(), self.scheduler.ledgers.values())  # fmt: skip


class SchedulerLinks:
    """The scheduler's port (crane.actors.scheduler.SchedulerPort): jobs
    through the job table, nodes saved in the store, the policy from the
    accounts. Bound to the controller's parts once they exist."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.metrics = ctl.metrics

    def job_event(self, job_id: int, event: Any) -> None:
        self.ctl.table.job_event(job_id, event)

    def save_node(self, name: str, drain: bool, reason: str) -> None:
        self.ctl.store.put_node(name, {"drain": drain, "reason": reason})

    def policy(self) -> SchedulingPolicy:
        return self.ctl.authority.policy()


RESTART_ONLY = ("path", "cluster", "control_machine", "agent_port", "cli_port", "base_dir", "db_path", "auth_type",
                "curve_key_dir", "cli_endpoint", "agent_endpoint", "metrics_port", "metrics_address",
                "craned_state_dir", "log_dir")  # fmt: skip


def on_sighup(ctl: Controller) -> None:
    log.info("SIGHUP: re-reading %s", ctl.cfg.path)
    try:
        ctl.reload_config()  # a refusal is logged there
    except Exception:  # a daemon never dies of a reload
        log.exception("reconfigure failed")


WAIT_SWEEP_EVERY = 2  # ticks (seconds) between sweeps of waiters whose client is gone


def process_age() -> float:
    """Seconds since this process started (the kernel's count, 10 ms steps),
    0.0 if /proc does not say: the start-up time, imports included."""
    try:
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(") ", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return max(0.0, up - start / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


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
    write_cache(cfg)  # the settings commands read without parsing the YAML (crane.client_config)
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
        loop.add_signal_handler(signal.SIGHUP, on_sighup, ctl)
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
