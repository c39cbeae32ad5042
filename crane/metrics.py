"""Prometheus metrics for the controller (``MetricsPort`` in the config).

The HTTP server runs in prometheus-client's own thread, so it never touches
live controller state: the event loop publishes an immutable snapshot once a
second (and the collector serves the latest one)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

# cancel latency: cancel request accepted by the job -> job terminal and released
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LatencyHistogram:
    """A plain histogram updated on the event loop (no locks needed there)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        cumulative, out = 0, []
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            cumulative += n
            out.append((bound, cumulative))
        return out, self.total


def snapshot(table: Any, counters: Any, agent: Any, cli: Any, store: Any, nodes: Any, ledgers: Any) -> dict[str, Any]:
    """Everything exported, read on the event loop: the job table
    (crane.actors.jobs), the counters, the agent and CLI sockets, the store,
    the node actors, the scheduler's ledgers."""
    states: dict[str, int] = {}
    for a in table.jobs.values():
        states[a.job.state] = states.get(a.job.state, 0) + 1
    return {
        "jobs_by_state": states,
        "counters": dict(counters),
        "messages": {
            ("cli", "in"): cli.received, ("cli", "out"): cli.sent,
            ("agent", "in"): agent.received, ("agent", "out"): agent.sent,
        },  # fmt: skip
        "store_queue": store.queued - store.committed,
        "nodes_up": sum(1 for n in nodes if n.registered),
        "gpus": gpu_counts(ledgers),
        "cancel_latency": table.cancel_latency.snapshot(),
    }


def gpu_counts(ledgers: Any) -> dict[str, int]:
    """GPUs of the cluster by state: used (held by a running job) and free."""
    total = free = 0
    for led in ledgers:
        total += len(led.gpu_types)
        free += len(led.gpus_free)
    return {"used": total - free, "free": free}


class Snapshots:
    """Holds the latest snapshot; read by the HTTP thread."""

    latest: dict[str, Any] | None = None


def families(s: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    g = GaugeMetricFamily("crane_jobs", "Active jobs by state", labels=["state"])
    for state, n in sorted(s["jobs_by_state"].items()):
        g.add_metric([state], n)
    yield g
    c = CounterMetricFamily("crane_cancels", "Cancelled jobs by path", labels=["path"])
    for key, n in sorted(s["counters"].items()):
        if key.startswith("cancel_path_"):
            c.add_metric([key[len("cancel_path_"):]], n)
    yield c
    ev = CounterMetricFamily("crane_events", "Controller event counters", labels=["event"])
    for key, n in sorted(s["counters"].items()):
        ev.add_metric([key], n)
    yield ev
    yield CounterMetricFamily("crane_sessions_adopted", "ssh sessions adopted into a job's cgroup",
                              value=s["counters"].get("sessions_adopted", 0))  # fmt: skip
    yield CounterMetricFamily("crane_strays_swept", "Processes of a user outside any job ended after their last job",
                              value=s["counters"].get("strays_swept", 0))  # fmt: skip
    msg = CounterMetricFamily("crane_messages", "Messages on the sockets", labels=["socket", "direction"])
    for (sock, direction), n in sorted(s["messages"].items()):
        msg.add_metric([sock, direction], n)
    yield msg
    yield GaugeMetricFamily("crane_store_queue_depth", "Store writes queued, not yet committed",
                            value=s["store_queue"])  # fmt: skip
    yield GaugeMetricFamily("crane_nodes_up", "Nodes whose agent is registered", value=s["nodes_up"])
    gpus = GaugeMetricFamily("crane_gpus", "GPUs of all nodes by state", labels=["state"])
    for state, n in sorted(s.get("gpus", {}).items()):
        gpus.add_metric([state], n)
    yield gpus
    buckets, total = s["cancel_latency"]
    yield HistogramMetricFamily("crane_cancel_latency_seconds",
                                "Cancel accepted -> job terminal with its processes gone",
                                buckets=buckets, sum_value=total)  # fmt: skip


def serve(port: int, addr: str = "127.0.0.1") -> Snapshots:
    """Start the /metrics server (prometheus-client is imported only here)."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import REGISTRY, Collector

    holder = Snapshots()

    class ControllerCollector(Collector):
        def collect(self) -> Iterator[Any]:
            if holder.latest is not None:
                yield from families(holder.latest)

    REGISTRY.register(ControllerCollector())
    start_http_server(port, addr=addr)
    return holder
