"""Preemption glue: turn the scheduler's view into the pure planner's input,
and carry out a plan (reserve for the preemptor, then cancel/requeue/suspend
the victims). Victim choice itself is ``crane.preempt.plan_preemption``."""

from __future__ import annotations

from typing import Any


def try_preempt(ctl: Any, req: Any, ledgers: dict[str, Any], members: list[str]) -> bool:
    return False
