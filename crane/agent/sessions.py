"""Adoption of ssh sessions into jobs: the agent's side.

Each agent listens on ``<state dir>/adopt.sock`` (0600, in its 0711 state
directory; only root, or the agent's own user when it is not root, is
served: the peer's SO_PEERCRED is checked). ``crane-pam-check`` in the PAM
session phase asks every agent of the host, then has one of them move the
session's process (sshd's, which forks the user's shell afterwards) into a
job's cgroup: the session then ends with the job, through the same cgroup
kill.

Protocol: one JSON line each way (at most ``MAX_LINE`` bytes, ``TIMEOUT``
seconds). Request ``{"op": "query"|"adopt", "user": NAME, "pid": PID,
"job": JOB|null}``. Replies: ``{"job": J, "step": S, "start": T}`` (the
job asked for when it is one of the user's running jobs here, else the
newest; ``"job": null`` when the user has none), ``{"exempt": WHY}`` (root,
system accounts, ExemptUsers: never adopted) or ``{"error": WHY}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from crane.agent.pam_check import _uid_of
from crane.core import messages as m

log = logging.getLogger("craned.sessions")
SOCK = "adopt.sock"
MAX_LINE = 4096
TIMEOUT = 5.0
MAX_CLIENTS = 16
_OPS = ("query", "adopt")


def parse_request(req: Any) -> tuple[str, str, int, int | None]:
    """(op, user, pid, job) of a request, or ValueError saying why not."""
    if not isinstance(req, dict):
        raise ValueError("request is not a JSON object")
    unknown = set(req) - {"op", "user", "pid", "job"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0][:40]!r}")
    op, user, pid, job = req.get("op"), req.get("user"), req.get("pid"), req.get("job")
    if op not in _OPS:
        raise ValueError("op must be query or adopt")
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a name")
    if type(pid) is not int or pid <= 1:
        raise ValueError("pid must be a process id")
    if job is not None and type(job) is not int:
        raise ValueError("job must be a job id or null")
    return op, user, pid, job


def choose(candidates: list[tuple[int, int, float]], wanted: int | None) -> tuple[int, int, float] | None:
    """(job, step, start) of the job to adopt into, from (job, step, start)
    of the user's running steps: the job ``wanted`` if it is there, else the
    newest (latest start of its first step; ties: the highest job id). The
    step is the job's lowest-numbered running step."""
    jobs: dict[int, tuple[int, float]] = {}
    for job, step, start in candidates:
        cur = jobs.get(job)
        jobs[job] = (step, start) if cur is None else (min(cur[0], step), min(cur[1], start))
    if not jobs:
        return None
    job = wanted if wanted in jobs else max(jobs, key=lambda j: (jobs[j][1], j))
    return job, jobs[job][0], jobs[job][1]


class SessionService:
    """Answers crane-pam-check on the agent's unix socket."""

    def __init__(self, node: str, state_dir: str, mode: str, steps: Any, exempt: Callable[[int], str],
                 send: Callable[[m.Message], None]) -> None:  # fmt: skip
        self.node = node
        self.path = os.path.join(state_dir, SOCK)
        self.mode = mode
        self.steps = steps  # the agent's StepManager
        self.exempt = exempt
        self.send = send
        self.server: asyncio.AbstractServer | None = None
        self.clients = 0

    # ------------------------------------------------------------ requests

    def candidates(self, uid: int) -> list[tuple[int, int, float]]:
        """(job, step, start) of ``uid``'s steps that run here and may take a
        session: not ending, not suspended (a frozen cgroup would freeze it)."""
        out = []
        for run in list(self.steps.steps.values()):
            spec = run.spec
            if "uid" not in spec or int(spec["uid"]) != uid:
                continue
            if run.killing or run.reported or run.frozen or not (run.pid or run.adopted):
                continue
            out.append((run.job_id, run.step_id, float(run.start)))
        return out

    async def handle(self, req: Any) -> dict[str, Any]:
        try:
            op, user, pid, wanted = parse_request(req)
        except ValueError as e:
            return {"error": str(e)}
        # NSS (passwd, groups) may ask a directory server: never on the event loop
        uid = await asyncio.to_thread(_uid_of, user)
        if uid is None:
            return {"error": f"unknown user {user[:64]!r}"}
        why = await asyncio.to_thread(self.exempt, uid)
        if why:
            return {"exempt": why}
        chosen = choose(self.candidates(uid), wanted)
        if chosen is None:
            return {"job": None}
        job, step, start = chosen
        if op == "query":
            return {"job": job, "step": step, "start": start}
        if self.mode == "none":
            return {"error": "this agent runs without cgroups: a session cannot be adopted"}
        if pid == os.getpid():
            return {"error": "not the agent itself"}
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return {"error": f"no process {pid}"}
        except PermissionError:
            pass  # exists (the agent is not root)
        run = self.steps.steps.get((job, step))
        if run is None:
            return {"error": f"job {job} step {step} ended meanwhile"}
        try:  # here, not in a thread: the step cannot end between the choice and the move
            run.cg.attach_pid(pid)
        except OSError as e:
            return {"error": f"cannot move pid {pid} into job {job}: {e.strerror or e}"}
        log.info("adopted pid %d (user %s) into job %d step %d", pid, user, job, step)
        self.send(m.SessionEvent(self.node, "adopt", user, job, [pid]))
        return {"job": job, "step": step, "start": start}

    # ------------------------------------------------------------ socket

    async def start(self) -> None:
        """Listen (never fatal: without the socket logins are not adopted)."""
        try:
            try:
                os.unlink(self.path)  # ours: only the agent writes in its state directory
            except FileNotFoundError:
                pass
            self.server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_LINE)
            os.chmod(self.path, 0o600)
        except (OSError, ValueError) as e:
            log.error("cannot listen on %s (ssh sessions will not be adopted): %s", self.path, e)
            self.server = None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _peer_uid(self, writer: asyncio.StreamWriter) -> int | None:
        sock = writer.get_extra_info("socket")
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (OSError, AttributeError):
            return None
        return int(struct.unpack("3i", raw)[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = self._peer_uid(writer)
            if uid not in (0, os.geteuid()) or self.clients >= MAX_CLIENTS:
                return
            self.clients += 1
            try:
                try:
                    line = await asyncio.wait_for(reader.readline(), TIMEOUT)
                    reply = await self.handle(json.loads(line)) if line.endswith(b"\n") else {"error": "no request"}
                except (ValueError, asyncio.LimitOverrunError):
                    reply = {"error": f"not one JSON line of at most {MAX_LINE} bytes"}
                except TimeoutError:
                    return
                writer.write(json.dumps(reply).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), TIMEOUT)
            finally:
                self.clients -= 1
        except (OSError, TimeoutError):
            pass
        except Exception:
            log.exception("adoption request failed")
        finally:
            writer.close()
