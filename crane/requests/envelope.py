"""Every CLI request goes through here: who is calling (the transport's
peer credentials, never the message body), which handler serves the
request's type, and a guard around the call.

A handler that raises answers its caller at once with
``Error(1, "internal error handling <Type>: <text>")`` (1 is the CLIs'
EXIT_INTERNAL), counts ``handler_failures`` and logs the traceback: a CLI
never waits for its timeout because the controller failed. Callbacks a
handler leaves behind (store barriers, job replies) are guarded the same
way through ``Reply.guard``; a failed store write answers through
``Reply.unsaved``.
"""

from __future__ import annotations

import pwd
from collections.abc import Callable
from typing import Any

from crane.core import messages as m
from crane.permissions import Caller
from crane.requests import accounting, cancel, control, query, steps, submit
from crane.requests.port import ARGS, AUTH, Reply, RequestPort

Handler = Callable[[RequestPort, Caller, Any, str, Reply], None]

HANDLERS: dict[type[m.Message], Handler] = {
    m.SubmitJob: submit.handle,
    m.Cancel: cancel.handle,
    m.WaitJobs: cancel.handle_wait,
    m.QueryJobs: query.handle_jobs,
    m.QueryNodes: query.handle_nodes,
    m.Control: control.handle,
    m.StartStep: steps.handle_start,
    m.WaitStep: steps.handle_wait,
    m.StepInput: steps.handle_input,
    m.StepResize: steps.handle_input,
    m.AcctOp: accounting.handle,
}


class Envelope:
    """Not an actor of its own: it runs in the CLI endpoint's callback and
    keeps no job state."""

    def __init__(self, port: RequestPort) -> None:
        self.port = port
        self.count = 0  # requests handled: each one's number is the cause of what it does

    def handle(self, peer: Any, msg: m.Message, rid: int, send: Callable[[m.Message], None]) -> None:
        if peer.uid is None:
            send(m.Error(AUTH, "authentication failed: no peer credentials"))
            return
        handler = HANDLERS.get(type(msg))
        if handler is None:
            send(m.Error(ARGS, f"{msg.TYPE} is not a request"))
            return
        self.count += 1
        reply = Reply(send, msg.TYPE, self.port.metrics, self.count)
        try:
            handler(self.port, self.port.caller(peer.uid), msg, f"{peer.pid}:{rid}", reply)
        except Exception as e:
            reply.fail(e)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
