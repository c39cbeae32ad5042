"""GPU requests on the command line (pure): ``--gres`` and ``--gpus``, as Slurm.

* ``--gres gpu:N``, ``--gres gpu:TYPE:N`` (``gpu`` alone is one, ``gpu:TYPE``
  one of that type): N GPUs on **each** node of the job;
* ``--gpus N`` / ``--gpus TYPE:N`` (``-G``): N GPUs for the **whole** job,
  N / nodes per node; N must be a multiple of the node count.

The result is the submit spec's ``gpus_per_node`` and ``gpu_type`` (absent
when no GPU is asked for). Errors are one line (exit 2).
"""

from __future__ import annotations

from crane.cli.common import EXIT_ARGS, CliError

TYPE_CHECKING = False  # typing and re cost a command's start ~5 ms: imported when used
if TYPE_CHECKING:
    from typing import Any

MAX_GPUS = 4096  # per node: anything larger is a typo
_TYPE_RE = r"^[A-Za-z][A-Za-z0-9_.+-]{0,63}$"
_COUNT_RE = r"^[0-9]{1,9}$"


def _count(text: str, opt: str, value: str) -> int:
    import re

    if not re.match(_COUNT_RE, text) or not 1 <= int(text) <= MAX_GPUS:
        raise CliError(f'invalid {opt} "{value}": the GPU count must be an integer from 1 to {MAX_GPUS}', EXIT_ARGS)
    return int(text)


def _type(text: str, opt: str, value: str) -> str:
    import re

    if not re.match(_TYPE_RE, text):
        raise CliError(f'invalid {opt} "{value}": bad GPU type "{text}" (a letter, then letters, digits, _.+-)', EXIT_ARGS)
    return text


def parse_gres(value: str) -> tuple[int, str]:
    """``"gpu:a100:2"`` -> ``(2, "a100")``: GPUs per node and type ("" = any)."""
    opt = "--gres"
    parts = value.strip().split(":")
    if "," in value:
        raise CliError(f'invalid {opt} "{value}": give one generic resource (gpu)', EXIT_ARGS)
    if parts[0] != "gpu":
        raise CliError(f'invalid {opt} "{value}": unknown generic resource "{parts[0]}" (known: gpu)', EXIT_ARGS)
    if len(parts) == 1:
        return 1, ""
    if len(parts) == 2:
        if parts[1].lstrip("-").isdigit():
            return _count(parts[1], opt, value), ""
        return 1, _type(parts[1], opt, value)
    if len(parts) == 3:
        return _count(parts[2], opt, value), _type(parts[1], opt, value)
    raise CliError(f'invalid {opt} "{value}": expected gpu:N or gpu:TYPE:N', EXIT_ARGS)


def parse_gpus(value: str) -> tuple[int, str]:
    """``--gpus`` value ``"4"`` or ``"a100:4"`` -> (GPUs for the job, type)."""
    opt = "--gpus"
    parts = value.strip().split(":")
    if parts[0] == "gpu" and len(parts) > 1:  # gpu:N, gpu:TYPE:N
        parts = parts[1:]
    if len(parts) == 1:
        return _count(parts[0], opt, value), ""
    if len(parts) == 2:
        return _count(parts[1], opt, value), _type(parts[0], opt, value)
    raise CliError(f'invalid {opt} "{value}": expected N or TYPE:N', EXIT_ARGS)


def gpu_spec(gres: str | None, gpus: str | None, nodes: int | None) -> dict[str, Any]:
    """The spec fields for ``--gres`` / ``--gpus`` with ``nodes`` nodes (None: 1)."""
    if gres and gpus:
        raise CliError("give --gres or --gpus, not both", EXIT_ARGS)
    if gres:
        per_node, gpu_type = parse_gres(gres)
    elif gpus:
        total, gpu_type = parse_gpus(gpus)
        n = nodes or 1
        if total % n:
            raise CliError(f"--gpus {total} cannot be split evenly over {n} nodes "
                           f"(use a multiple of {n}, or --gres gpu:N per node)", EXIT_ARGS)  # fmt: skip
        per_node = total // n
    else:
        return {}
    out: dict[str, Any] = {"gpus_per_node": per_node}
    if gpu_type:
        out["gpu_type"] = gpu_type
    return out


def gres_text(job: dict[str, Any]) -> str:
    """A job's request as shown: ``gpu:2``, ``gpu:a100:2`` or ``""``."""
    if job.get("gres") is not None:
        return str(job["gres"])
    n = int(job.get("gpus_per_node") or 0)
    if not n:
        return ""
    t = job.get("gpu_type") or ""
    return f"gpu:{t}:{n}" if t else f"gpu:{n}"


def alloc_text(job: dict[str, Any]) -> str:
    """``{"crane03": [0, 1]}`` -> ``crane03:0,1`` (nodes joined with ``;``)."""
    alloc = job.get("gpu_alloc") or {}
    if not isinstance(alloc, dict):
        return ""
    return ";".join(f"{node}:{','.join(str(i) for i in idx)}" for node, idx in sorted(alloc.items()) if idx)
