"""Issue 11: states and reasons are named through the core's enums
(crane/core/states.py), never as string literals elsewhere: a grep for one
finds every place that uses it. Checked on the syntax tree: a string constant
equal to a state or reason value, outside the enums' own module, is a
finding. (Mentions inside longer texts, e.g. help, are not.)"""

from __future__ import annotations

import ast
import pathlib

from crane.core import states

ROOT = pathlib.Path(__file__).resolve().parent.parent / "crane"
ENUMS = (states.JobState, states.StepEnd, states.KillReason, states.EndReason, states.PendingReason,
         states.NodeState, states.NodeReason, states.PreemptMode, states.RegisterRefusal)  # fmt: skip
VALUES = {str(v) for e in ENUMS for v in e if len(str(v)) >= 4} - {"Priority"}  # also a QoS field's name


def findings(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in VALUES:
            out.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {node.value!r}")
    return out


def test_no_state_or_reason_literal_outside_the_core_enums() -> None:
    found = [f for p in sorted(ROOT.rglob("*.py")) if p.name != "states.py" for f in findings(p)]
    assert not found, "state/reason literals (use crane.core.states):\n" + "\n".join(found)
