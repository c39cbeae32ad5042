"""Output file name patterns, as sbatch's ``-o``/``-e`` (pure).

``%j`` job id, ``%x`` job name, ``%u`` user name, ``%N`` short name of the
node (the job's first node for the batch step), ``%A`` array master job id
(the job id when not an array task), ``%a`` array index (``4294967294``,
Slurm's value for a job that is not an array task), for a step's output
``%s`` the step id, ``%t`` the task rank, ``%n`` the node index, ``%%`` a
literal ``%``.
A number between ``%`` and a numeric letter zero-pads it (``%5j`` ->
``00042``, at most ``MAX_PAD`` wide). Any other ``%`` sequence is kept as
written.

Substituted names never change the directory the file lands in: a ``/`` in
a job, user or node name becomes ``_``, and a name made only of dots
(``.``, ``..``) becomes as many ``_`` (so ``-o /data/%x/out`` with job name
``../../etc`` writes ``/data/.._.._etc/out``, and ``-J ..`` gives
``/data/__/out``). The result stays absolute when the pattern is.

Two passes: at submission the node is not known yet, so :func:`expand_known`
fills in everything else and returns a pattern again (``%N`` and ``%%``
kept, a ``%`` in a substituted name doubled); at launch :func:`expand`
finishes it. ``expand(expand_known(p, ...), ...) == expand(p, ...)``.
"""

from __future__ import annotations

import re

NOT_AN_ARRAY = 4294967294  # Slurm's %a of a job that is not an array task (NO_VAL - 1)
Task = tuple[int, int, int]  # (step id as the user sees it, task rank, node index)
MAX_PAD = 10  # widest zero padding (%10j): an id has at most 10 digits

_SEQ = re.compile(r"%(\d*)([A-Za-z%])")


def safe_component(value: str) -> str:
    """``value`` made unable to leave the directory it is put in: ``/``
    replaced by ``_``, and a value of dots only (``.``, ``..``) turned into
    as many ``_`` (a NUL, refused upstream anyway, also becomes ``_``)."""
    value = value.replace("/", "_").replace("\0", "_")
    if value and value.strip(".") == "":
        value = "_" * len(value)
    return value


def short_node(node: str) -> str:
    """``crane01.example.org`` -> ``crane01`` (Slurm's %N is the short hostname)."""
    return node.split(".", 1)[0]


def _expand(pattern: str, job_id: int, name: str, user: str, node: str | None,
            array: tuple[int, int] | None = None, task: Task | None = None) -> str:  # fmt: skip
    final = node is not None
    array_id, index = array if array is not None else (job_id, NOT_AN_ARRAY)
    numbers: dict[str, int] = {"j": job_id, "A": array_id, "a": index}
    names = {"x": safe_component(name), "u": safe_component(user)}
    if final:
        names["N"] = safe_component(short_node(node or ""))
    if task is not None:  # a step's task: %s step, %t task rank, %n node index
        numbers.update(s=task[0], t=task[1], n=task[2])

    def one(mo: re.Match[str]) -> str:
        pad, letter = mo.group(1), mo.group(2)
        if letter == "%":
            if pad:
                return mo.group(0)  # "%5%": not a pattern
            return "%" if final else "%%"
        if letter in numbers:
            width = min(int(pad), MAX_PAD) if pad else 0
            return str(numbers[letter]).zfill(width)
        if letter in names:
            text = names[letter]
            return text if final else text.replace("%", "%%")
        return mo.group(0)  # unknown (or %N before the node is known): kept

    return _SEQ.sub(one, pattern)


def expand_known(pattern: str, job_id: int, name: str, user: str, array: tuple[int, int] | None = None) -> str:
    """Everything but the node filled in (at submission): still a pattern,
    for :func:`expand` at launch. ``array``: (array job id, task index) of
    an array task (``%A``, ``%a``)."""
    return _expand(pattern, job_id, name, user, None, array)


def expand(pattern: str, job_id: int, name: str, user: str, node: str,
           array: tuple[int, int] | None = None, task: Task | None = None) -> str:  # fmt: skip
    """The file name: every pattern expanded, ``%%`` made ``%``. ``task``:
    a step's (``%s``, ``%t``, ``%n``); without it they are kept as written."""
    return _expand(pattern, job_id, name, user, node, array, task)
