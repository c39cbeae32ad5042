"""Every message that crosses a socket, and its msgpack encoding.

A frame is a msgpack map ``{"v": PROTOCOL_VERSION, "t": TYPE, "rid": INT, "b": {fields}}``.
``decode`` checks the version, the type name, the field names and each field's
type against the dataclass annotations, so a handler only ever sees a
well-formed message. Anything else raises ``BadMessage`` (never another error).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from crane.core.states import EndState, KillReason
from crane.core.wire import (  # noqa: F401  (MAX_FRAME, PROTOCOL_VERSION, BadMessage: re-exported)
    MAX_DEPTH,
    MAX_FRAME,
    PROTOCOL_VERSION,
    BadMessage,
    Request,
    pack,
    unpack,
)

_REGISTRY: dict[str, type[Message]] = {}
_HINTS: dict[type, dict[str, Any]] = {}


class Message:
    """Base of every wire message; subclasses are slotted dataclasses and
    register themselves by class name (the wire ``t`` field)."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        cls.TYPE = cls.__name__
        _REGISTRY[cls.__name__] = cls


def _check(value: Any, hint: Any, name: str, depth: int = 0) -> None:
    """Raise BadMessage unless ``value`` is of type ``hint``. Each hint is
    compiled once into a checker (a 100,000-id Cancel took 0.45 s to check
    with typing's introspection per item, a stall of the controller's loop)."""
    _checker(hint)(value, name, depth)


_Checker = typing.Callable[[Any, str, int], None]
_CHECKERS: dict[Any, _Checker] = {}


def _checker(hint: Any) -> _Checker:
    fn = _CHECKERS.get(hint)
    if fn is None:
        fn = _CHECKERS[hint] = _compile(hint)
    return fn


def _too_deep(name: str) -> BadMessage:
    return BadMessage(f"field {name}: nested too deeply")


def _classes(hint: Any) -> tuple[tuple[type, ...], bool] | None:
    """The classes ``hint`` accepts and whether it accepts a bool, for hints
    checked by isinstance alone (None, int, float, a class, a union of
    these); None for the others (generics, Any)."""
    if hint is type(None):
        return (type(None),), False
    if hint is int:
        return (int,), False
    if hint is float:
        return (int, float), False
    if isinstance(hint, type) and hint is not Any and typing.get_origin(hint) is None:
        return (hint,), isinstance(True, hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_classes(a) for a in typing.get_args(hint)]
        if all(p is not None for p in parts):
            return tuple(c for p in parts if p for c in p[0]), any(p[1] for p in parts if p)
    return None


def _test(hint: Any) -> typing.Callable[[Any], bool] | None:
    """``hint``'s check as a predicate, when isinstance is enough."""
    found = _classes(hint)
    if found is None:
        return None
    classes, bools = found
    if bools:
        return lambda v: isinstance(v, classes)
    return lambda v: isinstance(v, classes) and not isinstance(v, bool)


def _compile(hint: Any) -> _Checker:  # noqa: C901 - one branch per kind of hint, as before
    if hint is Any:

        def any_(value: Any, name: str, depth: int) -> None:
            if depth > MAX_DEPTH:
                raise _too_deep(name)
            _depth(value, name, depth)

        return any_
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        alts = [_checker(a) for a in typing.get_args(hint)]
        simple = _test(hint)

        def union(value: Any, name: str, depth: int) -> None:
            if depth > MAX_DEPTH:
                raise _too_deep(name)
            if simple is not None:  # isinstance is enough: no exception per alternative
                if depth + 1 <= MAX_DEPTH and simple(value):
                    return
                raise BadMessage(f"field {name}: wrong type {type(value).__name__}")
            for alt in alts:
                try:
                    alt(value, name, depth + 1)
                    return
                except BadMessage:
                    continue
            raise BadMessage(f"field {name}: wrong type {type(value).__name__}")

        return union
    if hint is type(None):

        def nil(value: Any, name: str, depth: int) -> None:
            if depth > MAX_DEPTH:
                raise _too_deep(name)
            if value is not None:
                raise BadMessage(f"field {name}: expected nil")

        return nil
    if origin is list:
        (item_hint,) = typing.get_args(hint) or (Any,)
        item, fast = _checker(item_hint), _test(item_hint)

        def list_(value: Any, name: str, depth: int) -> None:
            if depth > MAX_DEPTH:
                raise _too_deep(name)
            if not isinstance(value, list):
                raise BadMessage(f"field {name}: expected a list")
            # items of a plain type: a predicate each
            if fast is not None and depth + 2 <= MAX_DEPTH:
                for v in value:
                    if not fast(v):
                        item(v, name, depth + 1)  # raises the item's own error
                return
            for v in value:
                item(v, name, depth + 1)

        return list_
    if origin is dict:
        k_hint, v_hint = typing.get_args(hint) or (Any, Any)
        key, val = _checker(k_hint), _checker(v_hint)

        def dict_(value: Any, name: str, depth: int) -> None:
            if depth > MAX_DEPTH:
                raise _too_deep(name)
            if not isinstance(value, dict):
                raise BadMessage(f"field {name}: expected a map")
            for kk, vv in value.items():
                key(kk, name, depth + 1)
                val(vv, name, depth + 1)

        return dict_
    if hint is int:

        def int_(value: Any, name: str, depth: int) -> None:
            if depth > MAX_DEPTH:
                raise _too_deep(name)
            if isinstance(value, bool):
                raise BadMessage(f"field {name}: expected an integer")
            if not isinstance(value, int):
                raise BadMessage(f"field {name}: expected int")

        return int_
    if hint is float:
        what = "expected a number"
    elif hint is list or hint is dict:
        what = f"expected a {hint.__name__}"
    else:
        what = f"expected {getattr(hint, '__name__', hint)}"
    test = _test(hint) or (lambda v: isinstance(v, hint))

    def scalar(value: Any, name: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _too_deep(name)
        if not test(value):
            raise BadMessage(f"field {name}: {what}")

    return scalar


def _depth(value: Any, name: str, depth: int) -> None:
    """Untyped values (``Any``) are still bounded in depth: a handler that
    prints or stores one must not hit Python's recursion limit."""
    if depth > MAX_DEPTH:
        raise BadMessage(f"field {name}: nested too deeply")
    if isinstance(value, list):
        for v in value:
            _depth(v, name, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            _depth(v, name, depth + 1)


def _hints(cls: type) -> dict[str, Any]:
    h = _HINTS.get(cls)
    if h is None:
        h = typing.get_type_hints(cls)
        h.pop("TYPE", None)
        _HINTS[cls] = h
    return h


def encode(msg: Message, rid: int = 0) -> bytes:
    return pack(msg.TYPE, {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}, rid)


def decode(frame: bytes, limit: int = MAX_FRAME) -> tuple[Message, int]:
    """Return (message, request id) or raise BadMessage. ``limit``: the largest
    frame accepted (replies to a CLI, e.g. a cqueue of 100k jobs, may be larger
    than any request)."""
    t, body, rid = unpack(frame, limit)
    cls = _REGISTRY.get(t)
    if cls is None:
        raise BadMessage(f"unknown message type {t[:40]!r}")
    hints = _hints(cls)
    kwargs = {}
    for name, hint in hints.items():
        if name in body:
            _check(body[name], hint, name)
            kwargs[name] = body[name]
    unknown = set(body) - set(hints)
    if unknown:
        raise BadMessage(f"unknown field {sorted(map(str, unknown))[0][:40]!r}")
    try:
        return cls(**kwargs), rid
    except TypeError:
        missing = [n for n in hints if n not in body]
        raise BadMessage(f"missing field {missing[0] if missing else '?'}") from None


# ---------------------------------------------------------------- replies


@dataclass(slots=True)
class Error(Message):
    """Any request can be answered with this. ``code`` is a CLI exit code."""

    code: int
    message: str


@dataclass(slots=True)
class Ok(Message):
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- CLI -> controller


@dataclass(slots=True)
class SubmitJob(Message):
    spec: dict[str, Any]
    repeat: int = 1


@dataclass(slots=True)
class QueryJobs(Message):
    filters: dict[str, Any] = field(default_factory=dict)
    history: bool = False  # False: active jobs (cqueue); True: finished jobs (cacct)


@dataclass(slots=True)
class QueryNodes(Message):
    pass


@dataclass(slots=True)
class Cancel(Message):
    """One ccancel invocation: selection and how to cancel. Selection is done
    by the controller in this one request."""

    ids: list[list[int | None]] = field(default_factory=list)  # [[job, step|None], ...]
    filters: dict[str, Any] = field(default_factory=dict)
    signal: int | None = None
    force: bool = False
    graceful: bool = False
    grace: float | None = None
    message: str = ""
    end_state: str = EndState.CANCELLED
    dry_run: bool = False


@dataclass(slots=True)
class WaitJobs(Message):
    """Reply (Ok) only when every job is terminal and its processes are gone."""

    job_ids: list[int]


@dataclass(slots=True)
class StartStep(Message):
    """crun: start the job's next step; the reply carries its id."""

    job_id: int
    argv: list[str]
    cpus: int = 1
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    # live output (crane.stream): the step's stdout/stderr go to the crun that
    # waits for it with WaitStep(stream=True), except a stream given a file here
    stream: bool = False
    stdout: str = ""  # absolute; "" = the stream goes to crun (stream) or the job's file
    stderr: str = ""
    stdin: bool = False  # crun's stdin reaches the step (StepInput); needs stream
    pty: bool = False  # the step runs on a pseudo-terminal (stdin, stdout, stderr); needs stream
    # tasks (crun -n, --ntasks-per-node): 0 = one task per node of the job
    ntasks: int = 0
    ntasks_per_node: int = 0
    label: bool = False  # crun -l: each output line prefixed with its task's rank ("RANK: ")
    nnodes: int = 0  # crun -N: the step on the job's first N nodes (0: all of them)


# the bytes of a step's input that may be on their way (sent by crun, not yet
# written into the step's stdin): crun waits for the agent's credit beyond it
INPUT_WINDOW = 1024 * 1024
INPUT_CHUNK = 32 * 1024  # bytes per StepInput at most


@dataclass(slots=True)
class StepInput(Message):
    """crun -> controller -> the step's agent: bytes for the step's stdin
    (its owner and root only; the step started with ``stdin`` or ``pty``).
    ``seq`` counts the chunks from 0 (a chunk sent again is ignored);
    ``eof``: close the step's stdin once the bytes before are written. The
    agent's credit comes back as ``StepOutput(stream=0, data=b"", seq=N)``:
    N bytes written into the step's stdin so far."""

    job_id: int
    step_id: int
    seq: int
    data: bytes = b""
    eof: bool = False


@dataclass(slots=True)
class StepResize(Message):
    """crun -> controller -> agent: the terminal size of a ``pty`` step."""

    job_id: int
    step_id: int
    rows: int
    cols: int


@dataclass(slots=True)
class WaitStep(Message):
    """Reply (Ok {"step": ..., "lost": bytes}) when the step has ended.
    ``stream``: also subscribe to its live output (the step's owner and root
    only): StepOutput messages are sent under this request's id meanwhile."""

    job_id: int
    step_id: int
    stream: bool = False


@dataclass(slots=True)
class Control(Message):
    """ccontrol actions other than show: hold, release, requeue, update_node."""

    action: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AcctOp(Message):
    """cacctmgr: one parsed operation (see crane.accounts)."""

    op: dict[str, Any]


# ---------------------------------------------------------------- agent -> controller


@dataclass(slots=True)
class Register(Message):
    node: str
    cpus: int
    memory: int
    # steps the agent already runs (after its own restart): [[job, step], ...]
    steps: list[list[int]] = field(default_factory=list)
    # steps that ended while the controller was unreachable: StepEnded bodies
    ended: list[dict[str, Any]] = field(default_factory=list)
    cgroup: str = "none"


@dataclass(slots=True)
class Heartbeat(Message):
    node: str


@dataclass(slots=True)
class StepStarted(Message):
    job_id: int
    step_id: int
    pid: int


@dataclass(slots=True)
class StepEnded(Message):
    """The step's main process has exited and its cgroup is empty."""

    job_id: int
    step_id: int
    exit_code: int
    signal: int = 0
    reason: str = ""  # a crane.core.states.StepEnd
    detail: str = ""  # LAUNCH_FAILED: why, in one line (shown as the job's reason)


@dataclass(slots=True)
class StepOutput(Message):
    """A chunk (at most crane.stream.CHUNK bytes) of a streamed step's stdout
    (``stream`` 1) or stderr (2), agent -> controller -> the subscribed crun.
    ``seq`` counts the chunks of one stream, from 0."""

    job_id: int
    step_id: int
    stream: int
    data: bytes
    seq: int = 0
    node: int = 0  # the index of the sending node among the step's nodes (seq counts per node)


@dataclass(slots=True)
class JobReleased(Message):
    """Every step of the job on this node is gone, the epilog ran (unless
    forced) and the node's share of the job's resources is free."""

    job_id: int
    epilog_ok: bool = True
    kill_failed: bool = False


@dataclass(slots=True)
class SessionEvent(Message):
    """The agent adopted a login session into a job (``adopt``: the session's
    process) or ended a user's processes left outside any job after their
    last job on the host (``sweep``: the processes signalled)."""

    node: str
    kind: str  # adopt | sweep
    user: str
    job: int
    pids: list[int] = field(default_factory=list)


# ---------------------------------------------------------------- controller -> agent


@dataclass(slots=True)
class RegisterAck(Message):
    ok: bool
    reason: str = ""  # for the log
    code: str = ""  # why refused: a crane.core.states.RegisterRefusal
    now: float = 0.0  # the controller's wall clock: the agent dates launches by it (LaunchStep spec "heard_at")


@dataclass(slots=True)
class LaunchStep(Message):
    job_id: int
    step_id: int
    spec: dict[str, Any]  # uid, gid, user, argv, cwd, env, stdout, stderr, cpus, memory, time_limit


@dataclass(slots=True)
class SignalJob(Message):
    job_id: int
    step_id: int | None
    signal: int


@dataclass(slots=True)
class KillJob(Message):
    """SIGCONT, SIGTERM, then SIGKILL after ``grace`` (0: SIGKILL at once).
    step_id None: the whole job on this node, then epilog, then JobReleased."""

    job_id: int
    step_id: int | None = None
    grace: float = 0.0
    force: bool = False
    reason: str = KillReason.CANCELLED
    banner: str = ""  # last line written to the step's stderr file
    env: dict[str, str] = field(default_factory=dict)  # for the epilog


@dataclass(slots=True)
class SuspendJob(Message):
    job_id: int
    suspend: bool  # True: freeze; False: thaw


@dataclass(slots=True)
class SetTimeLimit(Message):
    """A running job's time limit changed (ccontrol update): the agent
    re-arms its batch step's timer, ``seconds`` from the step's start
    (0: unlimited, no timer)."""

    job_id: int
    seconds: int
