"""Jobs whose processes may still run on a node that went DOWN.

A node cut off past ``CranedTimeout`` goes DOWN and its jobs end (FAILED,
or CANCELLED if a cancel was pending), but the controller cannot know that
their processes died: the host may only be unreachable. Until the node's
agent registers again and shows it no longer runs them (not in its
registration, or every such step reported ended after the controller's
kill), these jobs are *unconfirmed* on that node, and ``ccancel --wait``
(WaitJobs) does not return for them (SPEC: it returns once the jobs and
their processes are gone).

Memory only: after a controller restart, a job ended before it is not held.
"""

from __future__ import annotations


class Leftovers:
    """job id -> node -> the steps still to be confirmed gone there (None:
    not known yet, the node has not registered since)."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict[str, set[int] | None]] = {}

    def __contains__(self, job_id: int) -> bool:
        return job_id in self.jobs

    def node_down(self, node: str, job_ids: list[int]) -> None:
        for j in job_ids:
            self.jobs.setdefault(j, {})[node] = None

    def node_back(self, node: str, running: dict[int, list[int]]) -> list[int]:
        """The agent registered, running these steps: the jobs now confirmed
        gone everywhere (the others wait for their steps' ends)."""
        done = []
        for j, nodes in list(self.jobs.items()):
            if node not in nodes:
                continue
            steps = running.get(j)
            if steps:
                nodes[node] = set(steps)
                continue
            del nodes[node]
            if not nodes:
                del self.jobs[j]
                done.append(j)
        return done

    def step_gone(self, node: str, job_id: int, step_id: int) -> bool:
        """A step of ``job_id`` ended on ``node``: True if that confirmed the
        job gone everywhere."""
        nodes = self.jobs.get(job_id)
        steps = nodes.get(node) if nodes else None
        if nodes is None or steps is None:
            return False
        steps.discard(step_id)
        if steps:
            return False
        del nodes[node]
        if nodes:
            return False
        del self.jobs[job_id]
        return True
