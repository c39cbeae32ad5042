"""AcctOp (cacctmgr): show at once; otherwise permission, apply, persist,
and answer once the change is on disk."""

from __future__ import annotations

from crane.accounts import AcctError
from crane.cacctmgr_parse import ParseError, render_show
from crane.core import messages as m
from crane.core import untrusted
from crane.permissions import Caller, denial
from crane.requests.port import ARGS, INTERNAL, Reply, RequestPort

REFUSED_OP = INTERNAL  # a refused or invalid cacctmgr operation exits 1, as it always has


def handle(port: RequestPort, caller: Caller, msg: m.AcctOp, rid: str, reply: Reply) -> None:
    op = msg.op
    err = untrusted.check_strings("cacctmgr value", op)
    if err:
        reply(m.Error(ARGS, err))
        return
    db = port.acct
    try:
        if op.get("verb") == "show":
            rows = db.show(str(op.get("entity")), [op["name"]] if op.get("name") else None)
            reply(m.Ok({"text": render_show(db, op, port.cfg.preempt_mode), "rows": rows}))
            return
        refused = denial(db, caller, op)
        if refused is not None:
            reply(m.Error(REFUSED_OP, refused))
            return
        message = db.apply(op)
    except (AcctError, ParseError) as e:
        reply(m.Error(REFUSED_OP, str(e)))
        return
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        reply(m.Error(ARGS, f"malformed operation: {type(e).__name__}"))
        return
    for kind, name, data in db.last_changes:
        port.store.put_entity(kind, name, data)
    reply.after_saved(port, lambda: m.Ok({"message": message}), "the account change")
