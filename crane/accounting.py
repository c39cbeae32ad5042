"""cacctmgr inside the controller: permission, apply, persist, answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crane.accounts import AcctError
from crane.cacctmgr_parse import ParseError, render_show
from crane.core import messages as m
from crane.permissions import Caller, denial


def handle_op(ctl: Any, caller: Caller, op: dict[str, Any], reply: Callable[[m.Message], None]) -> None:
    db = ctl.acct
    verb = op.get("verb")
    try:
        if verb == "show":
            entity = str(op.get("entity"))
            rows = db.show(entity, [op["name"]] if op.get("name") else None)
            text = render_show(db, op, ctl.cfg.preempt_mode)
            reply(m.Ok({"text": text, "rows": rows}))
            return
        refused = denial(db, caller, op)
        if refused is not None:
            reply(m.Error(1, refused))
            return
        message = db.apply(op)
    except (AcctError, ParseError) as e:
        reply(m.Error(1, str(e)))
        return
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        reply(m.Error(2, f"malformed operation: {type(e).__name__}"))
        return
    for kind, name, data in db.last_changes:
        ctl.store.put_entity(kind, name, data)
    ctl.store.barrier(lambda: reply(m.Ok({"message": message})))
