"""Hostile input for the controller's two sockets (issue 6, item 4).

``FrameGen`` is a pure, seeded generator of malformed or adversarial frames:
random bytes, msgpack of the wrong shape, unknown versions and types, every
real message type (from ``crane.core.messages._REGISTRY``) with fields of the wrong
type, missing or extra fields, huge and negative numbers, NaN, invalid UTF-8,
bin where str is expected, deep nesting, huge sizes (a frame over
``MAX_FRAME``, a msgpack header claiming a 4 GB array), valid messages with
adversarial values, and wrong frame counts (1 to 6 payload frames).

Each ``Frame`` says what the controller must do with it (``expect``):

- ``"error"``: a reply, if any, is an ``Error`` (``code`` in ``codes``);
- ``"drop"``: no reply (frame counts ZeroMQ or the transport drop, oversized
  frames that make ZeroMQ close the connection);
- ``"any"``: a well-formed request; any reply is fine, a crash is not.

The driver half (``Sender``, ``GoodClient``, ``RssSampler``) is shared by
``bench/fuzz.py`` (the 100,000-frame soak) and ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import struct
import threading
import time
import types
import typing
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

from crane import PROTOCOL_VERSION
from crane.client import MAX_REPLY
from crane.core import messages as m

CLI_TYPES = (
    "SubmitJob",
    "QueryJobs",
    "QueryNodes",
    "Cancel",
    "WaitJobs",
    "StartStep",
    "WaitStep",
    "Control",
    "AcctOp",
)
AGENT_TYPES = ("Register", "Heartbeat", "StepStarted", "StepEnded", "JobReleased")
# job ids no real job has in a fuzzed cluster: adversarial CLI requests (from root,
# who may cancel anything) never touch real work; agent frames also name the real
# jobs a campaign is given (``real_jobs``), which must come through unharmed
FAR = 10**9


@dataclass(slots=True)
class Frame:
    parts: list[bytes]
    kind: str
    expect: str = "error"  # "error" | "drop" | "any"
    rid: int = 0
    codes: tuple[int, ...] = (1, 2, 4, 5)

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)


# ---------------------------------------------------------------- raw msgpack


def _pk(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def raw_map(items: list[tuple[Any, bytes]]) -> bytes:
    """A msgpack map from already-encoded values (to embed hand-made bytes)."""
    n = len(items)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(_pk(k) + v for k, v in items)


def deep_list(depth: int) -> bytes:
    """``depth`` nested one-element arrays around nil (msgpack only: Python's
    packer refuses past 512 levels)."""
    return b"\x91" * depth + b"\xc0"


def deep_map(depth: int) -> bytes:
    return b"\x81\xa1k" * depth + b"\xc0"


def envelope(t: Any, body: bytes, rid: int, v: Any = PROTOCOL_VERSION) -> bytes:
    return raw_map([("v", _pk(v)), ("t", _pk(t)), ("rid", _pk(rid)), ("b", body)])


def frame_of(t: str, body: dict[str, Any], rid: int) -> bytes:
    return _pk({"v": PROTOCOL_VERSION, "t": t, "rid": rid, "b": body})


# huge claims: headers announcing far more than the frame holds
HUGE_HEADERS = (
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 G items
    b"\xdf\xff\xff\xff\xff",  # map32 of 4 G pairs
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GB
    b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GB
)

U64 = 2**64 - 1  # msgpack's largest integer: 2**70 cannot be encoded at all
I64 = -(2**63)


class FrameGen:
    """Seeded generator: the same seed gives the same frames."""

    def __init__(
        self, seed: int, target: str = "cli", rid_base: int = 1, oversize: bool = True,
        real_jobs: typing.Sequence[int] = (),
    ) -> None:  # fmt: skip
        assert target in ("cli", "agent")
        self.r = random.Random(seed)
        self.target = target
        # agent frames only: ids of real jobs, named by some job_id fields and by
        # frames made to end, start or release them (no extra draws without them:
        # the same seed gives the same frames as before)
        self.real = tuple(real_jobs) if target == "agent" else ()
        self.heavy = float(
            os.environ.get("CRANE_FUZZ_HEAVY", "0.01")
        )  # share of heavy adversarial frames
        self.rid = rid_base
        self.types = {n: c for n, c in m._REGISTRY.items()}
        self.hints = {n: m._hints(c) for n, c in self.types.items()}
        own = CLI_TYPES if target == "cli" else AGENT_TYPES
        self.own = [t for t in own if t in self.types]
        kinds: list[tuple[str, float]] = [
            ("random_bytes", 8), ("non_map", 5), ("map_no_keys", 4), ("bad_version", 4),
            ("unknown_type", 4), ("long_type", 2), ("body_not_map", 4), ("wrong_field_type", 14),
            ("missing_field", 5), ("extra_field", 5), ("huge_numbers", 4), ("nan", 3),
            ("bad_utf8", 3), ("bin_for_str", 3), ("deep_nesting", 3), ("deep_any", 3),
            ("huge_header", 3), ("truncated", 4), ("bad_rid", 2), ("bad_keys", 2),
            ("frame_count", 5), ("too_large", 0.1 if oversize else 0), ("adversarial", 12 if target == "cli" else 8),
        ]  # fmt: skip
        self.kinds = [k for k, _ in kinds]
        self.weights = [w for _, w in kinds]

    # ------------------------------------------------------------ helpers

    def _rid(self) -> int:
        self.rid += 1
        return self.rid

    def _str(self, n: int = 12) -> str:
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_-./ %$\\\"'\u00e9\u4e2d\U0001f600\x00\n"
        return "".join(self.r.choice(alphabet) for _ in range(self.r.randint(0, n)))

    def _scalar(self) -> Any:
        r = self.r
        return r.choice([
            None, True, False, 0, -1, 1, U64, I64, 2**31, -(2**31), 1.5, -0.0, math.nan, math.inf,
            -math.inf, "", self._str(), "x" * r.randint(100, 5000), b"\xff\xfe", b"", [], {},
            msgpack.ExtType(r.randint(0, 127), b"ext"), msgpack.Timestamp(r.randint(0, 2**32)),
        ])  # fmt: skip

    def _value(self, depth: int = 0) -> Any:
        r = self.r
        if depth > 3 or r.random() < 0.6:
            return self._scalar()
        if r.random() < 0.5:
            return [self._value(depth + 1) for _ in range(r.randint(0, 4))]
        keys = [self._str(6), r.randint(-5, 5), None, b"k", 1.5, True]
        return {r.choice(keys): self._value(depth + 1) for _ in range(r.randint(0, 4))}

    def _wrong_for(self, hint: Any) -> Any:
        """A value that ``hint`` does not accept (as far as ``_check`` goes)."""
        for _ in range(20):
            v = self._value()
            try:
                m._check(v, hint, "x")
            except m.BadMessage:
                return v
        return object  # unreachable in practice; the caller re-checks

    def _valid_for(self, hint: Any) -> Any:
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            alts = [a for a in typing.get_args(hint) if a is not type(None)]
            return self._valid_for(alts[0]) if alts else None
        if origin is list or hint is list:
            return []
        if origin is dict or hint is dict:
            return {}
        if hint is bool:
            return self.r.random() < 0.5
        if hint is int:
            if self.real and self.r.random() < 0.3:
                return self.r.choice(self.real)
            return self.r.choice([FAR + self.r.randint(0, 10**6), 1, 2])
        if hint is float:
            return 1.0
        if hint is str:
            return self._str(8)
        return None

    def _body(self, t: str) -> dict[str, Any]:
        """A body with every field present and well typed (values arbitrary)."""
        return {n: self._valid_for(h) for n, h in self.hints[t].items()}

    def _pick_type(self) -> str:
        r = self.r
        if r.random() < 0.8:
            return r.choice(self.own)
        return r.choice(sorted(self.types))

    # ------------------------------------------------------------ the frames

    def __iter__(self) -> FrameGen:
        return self

    def __next__(self) -> Frame:
        return self.next()

    def next(self) -> Frame:
        kind = self.r.choices(self.kinds, self.weights)[0]
        f: Frame = getattr(self, "k_" + kind)()
        f.kind = kind if not f.kind else f.kind
        return f

    def one(self, kind: str) -> Frame:
        f: Frame = getattr(self, "k_" + kind)()
        f.kind = f.kind or kind
        return f

    def k_random_bytes(self) -> Frame:
        r = self.r
        n = r.choice([0, 1, 2, 5, 16, 100, 1000, r.randint(0, 70000)])
        return Frame([r.randbytes(n)], "")

    def k_non_map(self) -> Frame:
        v = self.r.choice(
            [
                None,
                1,
                -1,
                "frame",
                b"frame",
                [1, 2, 3],
                3.14,
                True,
                [PROTOCOL_VERSION, "QueryNodes", 1, {}],
            ]
        )
        return Frame([_pk(v)], "")

    def k_map_no_keys(self) -> Frame:
        full = {"v": PROTOCOL_VERSION, "t": self._pick_type(), "rid": self._rid(), "b": {}}
        drop = self.r.sample(["v", "t", "b"], self.r.randint(1, 3))
        return Frame([_pk({k: v for k, v in full.items() if k not in drop})], "")

    def k_bad_version(self) -> Frame:
        v = self.r.choice([0, 2, -1, PROTOCOL_VERSION + 1, U64, "1", None, 1.0000001, [1], True])
        if v == PROTOCOL_VERSION and type(v) is int:  # noqa: E721 - 1.0 == 1 would pass
            v = 99
        t = self._pick_type()
        return Frame([_pk({"v": v, "t": t, "rid": self._rid(), "b": self._body(t)})], "")

    def k_unknown_type(self) -> Frame:
        t = self.r.choice(["", "Message", "Frobnicate", "submitjob", "SUBMITJOB", "__class__", "_REGISTRY",
                           "SubmitJob ", None, 7, ["SubmitJob"], b"SubmitJob", "Ok", "Error"])  # fmt: skip
        body = self._body("SubmitJob")
        f = Frame([_pk({"v": PROTOCOL_VERSION, "t": t, "rid": self._rid(), "b": body})], "")
        if t in ("Ok", "Error"):  # real types that are not requests
            f.kind = "reply_as_request"
            f.parts = [
                frame_of(
                    t,
                    {"code": 1, "message": "x"} if t == "Error" else {"data": {}},
                    f.rid or self._rid(),
                )
            ]
        return f

    def k_long_type(self) -> Frame:
        t = "SubmitJob" * 1200  # ~10 KB
        return Frame(
            [
                _pk(
                    {
                        "v": PROTOCOL_VERSION,
                        "t": t[: self.r.randint(10_000, 10_800)],
                        "rid": self._rid(),
                        "b": {},
                    }
                )
            ],
            "",
        )

    def k_body_not_map(self) -> Frame:
        t = self._pick_type()
        b = self.r.choice([None, [], [1, 2], "body", 5, b"body", True, 1.5])
        return Frame([_pk({"v": PROTOCOL_VERSION, "t": t, "rid": self._rid(), "b": b})], "")

    def k_wrong_field_type(self) -> Frame:
        t = self._pick_type()
        hints = self.hints[t]
        if not hints:
            return self.k_extra_field()
        body = self._body(t)
        name = self.r.choice(sorted(hints))
        body[name] = self._wrong_for(hints[name])
        return Frame([frame_of(t, body, self._rid())], f"wrong_field_type:{t}.{name}")

    def k_missing_field(self) -> Frame:
        t = self._pick_type()
        required = [f.name for f in dataclasses.fields(self.types[t])  # type: ignore[arg-type]
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # fmt: skip
        if not required:
            return self.k_extra_field()
        body = self._body(t)
        for n in self.r.sample(required, self.r.randint(1, len(required))):
            del body[n]
        return Frame([frame_of(t, body, self._rid())], f"missing_field:{t}")

    def k_extra_field(self) -> Frame:
        t = self._pick_type()
        body = self._body(t)
        extra = self.r.choice(
            [
                "uid",
                "gid",
                "user",
                "admin",
                "node",
                "identity",
                "__dict__",
                "TYPE",
                self._str(8) or "z",
            ]
        )
        if extra in body:
            extra = extra + "_"
        body[extra] = self.r.choice([0, "root", True, None, [0]])
        return Frame([frame_of(t, body, self._rid())], f"extra_field:{t}")

    def k_huge_numbers(self) -> Frame:
        t = self._pick_type()
        hints = self.hints[t]
        ints = [n for n, h in hints.items() if h is int]
        if not ints:
            return self.k_wrong_field_type()
        body = self._body(t)
        for n in ints:
            body[n] = self.r.choice([U64, I64, -1, 0, 2**63, -(2**31)])
        f = Frame([frame_of(t, body, self._rid())], f"huge_numbers:{t}", expect="any")
        return f

    def k_nan(self) -> Frame:
        t = self._pick_type()
        body = self._body(t)
        hints = self.hints[t]
        floats = [n for n, h in hints.items() if "float" in str(h)]
        if floats:
            body[self.r.choice(floats)] = self.r.choice([math.nan, math.inf, -math.inf, -1e308])
            return Frame([frame_of(t, body, self._rid())], f"nan:{t}", expect="any")
        name = self.r.choice(sorted(hints)) if hints else "x"
        body[name] = math.nan
        return Frame([frame_of(t, body, self._rid())], f"nan:{t}")

    def k_bad_utf8(self) -> Frame:
        rid = self._rid()
        bad = b"\xa4\xff\xfe\xc0\x80"  # fixstr of 4 invalid bytes
        where = self.r.randint(0, 2)
        if where == 0:  # the type name
            data = raw_map(
                [("v", _pk(PROTOCOL_VERSION)), ("t", bad), ("rid", _pk(rid)), ("b", _pk({}))]
            )
        elif where == 1:  # a body key
            data = envelope(self._pick_type(), b"\x81" + bad + _pk(1), rid)
        else:  # a str field value
            t = self.r.choice(["Control", "AcctOp", "Heartbeat", "Register"])
            name = {"Control": "action", "AcctOp": "op", "Heartbeat": "node", "Register": "node"}[t]
            data = envelope(t, b"\x81" + _pk(name) + bad, rid)
        return Frame([data], "")

    def k_bin_for_str(self) -> Frame:
        t = self._pick_type()
        strs = [n for n, h in self.hints[t].items() if h is str]
        body = self._body(t)
        if strs:
            body[self.r.choice(strs)] = b"bytes-not-str"
            return Frame([frame_of(t, body, self._rid())], f"bin_for_str:{t}")
        return Frame(
            [_pk({b"v": PROTOCOL_VERSION, b"t": t.encode(), b"rid": self._rid(), b"b": {}})],
            "bin_for_str:keys",
        )

    def k_deep_nesting(self) -> Frame:
        depth = self.r.choice([10_000, 100_000, 2000, 1025])
        rid = self._rid()
        where = self.r.randint(0, 2)
        nest = deep_list(depth) if self.r.random() < 0.5 else deep_map(depth)
        if where == 0:
            data = nest
        elif where == 1:
            data = envelope("SubmitJob", raw_map([("spec", nest)]), rid)
        else:
            data = envelope(
                "Control",
                raw_map([("action", _pk("hold")), ("args", raw_map([("job_id", nest)]))]),
                rid,
            )
        return Frame([data], "")

    def k_deep_any(self) -> Frame:
        """Nesting msgpack accepts (< 1024 levels) inside fields typed ``Any``."""
        depth = self.r.choice([17, 100, 500, 1000])
        nest = deep_list(depth) if self.r.random() < 0.5 else deep_map(depth)
        rid = self._rid()
        if self.target == "agent":
            ended = b"\x91" + raw_map(
                [("job_id", nest), ("step_id", _pk(1)), ("exit_code", _pk(0))]
            )
            body = raw_map(
                [("node", _pk("fuzz-node")), ("cpus", _pk(1)), ("memory", _pk(1)), ("ended", ended)]
            )
            return Frame([envelope("Register", body, rid)], "", expect="any")
        choice = self.r.randint(0, 4)
        if choice == 0:
            body = raw_map([("spec", raw_map([("name", nest), ("argv", _pk(["true"]))]))])
            t = "SubmitJob"
        elif choice == 1:
            body = raw_map(
                [
                    ("action", _pk("update_node")),
                    ("args", raw_map([("node", nest), ("state", nest)])),
                ]
            )
            t = "Control"
        elif choice == 2:
            body = raw_map(
                [
                    (
                        "op",
                        raw_map(
                            [
                                ("verb", _pk("add")),
                                ("entity", _pk("qos")),
                                ("name", nest),
                                ("set", nest),
                            ]
                        ),
                    )
                ]
            )
            t = "AcctOp"
        elif choice == 3:
            body = raw_map([("filters", raw_map([("name", nest)]))])
            t = self.r.choice(["QueryJobs", "Cancel"])
        else:
            body = raw_map(
                [("op", raw_map([("verb", _pk("show")), ("entity", nest), ("name", nest)]))]
            )
            t = "AcctOp"
        return Frame([envelope(t, body, rid)], f"deep_any:{t}")

    def k_huge_header(self) -> Frame:
        rid = self._rid()
        head = self.r.choice(HUGE_HEADERS)
        tail = self.r.randbytes(self.r.randint(0, 20))
        where = self.r.randint(0, 1)
        data = (
            head + tail
            if where == 0
            else envelope("SubmitJob", raw_map([("spec", head + tail)]), rid)
        )
        return Frame([data], "")

    def k_truncated(self) -> Frame:
        t = self._pick_type()
        data = frame_of(t, self._body(t), self._rid())
        cut = self.r.randint(0, max(0, len(data) - 1))
        return Frame([data[:cut]], "")

    def k_bad_rid(self) -> Frame:
        t = self._pick_type()
        rid = self.r.choice([None, "1", -1, U64, I64, 1.5, True, [1], b"\x01"])
        f = Frame([_pk({"v": PROTOCOL_VERSION, "t": t, "rid": rid, "b": self._body(t)})], "")
        if isinstance(rid, int) and not isinstance(rid, bool):  # a legal rid: the body decides
            f.expect = "any"
        return f

    def k_bad_keys(self) -> Frame:
        t = self._pick_type()
        body: dict[Any, Any] = self._body(t)
        body[self.r.choice([1, None, 1.5, b"uid", True, -7])] = 0
        return Frame([_pk({"v": PROTOCOL_VERSION, "t": t, "rid": self._rid(), "b": body})], "")

    def k_frame_count(self) -> Frame:
        t = self._pick_type()
        good = frame_of(t, self._body(t), self._rid())
        extra = self.r.randint(1, 5)
        parts = [good] + [self.r.choice([b"", good, self.r.randbytes(8)]) for _ in range(extra)]
        self.r.shuffle(parts)
        # 2-3 payload frames: an Error reply; more: dropped without one
        return Frame(
            parts, f"frame_count:{len(parts)}", expect="error" if len(parts) <= 3 else "drop"
        )

    def k_too_large(self) -> Frame:
        """A frame over MAX_FRAME: refused by ZeroMQ (MAXMSGSIZE closes the
        connection) or, just over the limit, by ``decode``."""
        if self.r.random() < 0.5:
            n = 5 * 1024 * 1024
            return Frame(
                [b"\xc6" + struct.pack(">I", n) + b"\0" * n], "too_large:5MB", expect="drop"
            )
        pad = m.MAX_FRAME + 10
        data = frame_of("SubmitJob", {"spec": {"script": "#" * pad}}, self._rid())
        return Frame([data], "too_large:edge")

    # ------------------------------------------------------------ adversarial but well-formed

    def k_adversarial(self) -> Frame:
        if self.target == "agent":
            return self._adversarial_agent()
        r = self.r
        rid = self._rid()
        far = FAR + r.randint(0, 10**6)
        ok_script = {
            "script": "#!/bin/sh\nexit 0\n",
            "cwd": "/tmp",
            "stdout": "/dev/null",
            "hold": True,
        }
        if r.random() < self.heavy:  # heavy but legal: rare, or they dominate the run time
            heavy = [
                ("cancel_100k_ids", "Cancel", {"ids": [[FAR + i, None] for i in range(100_000)], "dry_run": True}, "any"),
                ("submit_script_3mb", "SubmitJob", {"spec": {**ok_script, "hold": False,
                 "script": "#!/bin/sh\nexit 0\n" + "#" * (3 << 20)}}, "any"),
                ("submit_script_3mb_bad", "SubmitJob", {"spec": {**ok_script, "script": "#" * (3 << 20), "cpus": 0}}, "error"),
            ]  # fmt: skip
            name, t, body, expect = r.choice(heavy)
            return Frame([frame_of(t, body, rid)], "adv:" + name, expect=expect, rid=rid)
        cases: list[tuple[str, str, dict[str, Any], str]] = [
            ("cancel_neg_ids", "Cancel", {"ids": [[-1, 0]]}, "error"),
            ("cancel_zero_step", "Cancel", {"ids": [[far, 0]]}, "error"),
            ("cancel_huge_id", "Cancel", {"ids": [[U64, None]]}, "any"),
            ("cancel_short_id", "Cancel", {"ids": [[far]]}, "error"),
            ("cancel_long_id", "Cancel", {"ids": [[far, 1, 2]]}, "error"),
            ("cancel_unknown_filter", "Cancel", {"filters": {"uid": 0, "states": ["RUNNING"]}}, "error"),
            ("cancel_states_not_list", "Cancel", {"filters": {"states": "RUNNING"}}, "error"),
            ("cancel_bad_signal", "Cancel", {"ids": [[far, None]], "signal": r.choice([0, 65, -9, U64])}, "error"),
            ("cancel_nan_grace", "Cancel", {"ids": [[far, None]], "grace": r.choice([math.nan, math.inf, -1.0])}, "error"),
            ("cancel_force_graceful", "Cancel", {"ids": [[far, None]], "force": True, "graceful": True}, "error"),
            ("cancel_end_state", "Cancel", {"ids": [[far, None]], "end_state": "COMPLETED"}, "error"),
            ("cancel_long_message", "Cancel", {"ids": [[far, None]], "message": "m" * 100_000}, "error"),
            ("cancel_nothing", "Cancel", {}, "error"),
            ("cancel_uid_field", "Cancel", {"ids": [[far, None]], "uid": 0}, "error"),
            ("query_unknown_filter", "QueryJobs", {"filters": {"bogus": 1}}, "error"),
            ("query_states_not_list", "QueryJobs", {"filters": {"states": 5}}, "error"),
            ("query_huge_jobs", "QueryJobs", {"filters": {"jobs": [U64, I64, -1]}}, "any"),
            ("query_history_huge", "QueryJobs", {"filters": {"jobs": [U64]}, "history": True}, "any"),
            ("submit_uid", "SubmitJob", {"spec": {**ok_script, "uid": 0}}, "error"),
            ("submit_user", "SubmitJob", {"spec": {**ok_script, "user": "root"}}, "error"),
            ("submit_cpus", "SubmitJob", {"spec": {**ok_script, "cpus": 10**12}}, "error"),
            ("submit_cpus_u64", "SubmitJob", {"spec": {**ok_script, "cpus": U64}}, "error"),
            ("submit_neg_mem", "SubmitJob", {"spec": {**ok_script, "memory": -1}}, "error"),
            ("submit_repeat", "SubmitJob", {"spec": ok_script, "repeat": r.choice([10**9, 0, -1, U64])}, "error"),
            ("submit_env", "SubmitJob", {"spec": {**ok_script, "env": {"A": 1, "B": None}}}, "error"),
            ("submit_argv_ints", "SubmitJob", {"spec": {"argv": [1, 2, 3]}}, "error"),
            ("submit_nnodes", "SubmitJob", {"spec": {**ok_script, "nnodes": 10**6}}, "error"),
            ("submit_time_limit", "SubmitJob", {"spec": {**ok_script, "time_limit": -5}}, "error"),
            ("submit_partition", "SubmitJob", {"spec": {**ok_script, "partition": "\x00" * 300}}, "error"),
            ("submit_nodelist", "SubmitJob", {"spec": {**ok_script, "nodelist": [None, 5]}}, "error"),
            ("submit_empty", "SubmitJob", {"spec": {}}, "error"),
            ("start_step_missing_job", "StartStep", {"job_id": far, "argv": ["true"]}, "error"),
            ("start_step_neg_job", "StartStep", {"job_id": -1, "argv": ["true"], "cpus": -5}, "error"),
            ("wait_step_missing_job", "WaitStep", {"job_id": far, "step_id": U64}, "error"),
            ("wait_jobs_far", "WaitJobs", {"job_ids": [far, -1, 0]}, "any"),
            ("wait_jobs_huge", "WaitJobs", {"job_ids": [U64, I64]}, "any"),
            ("control_unknown", "Control", {"action": r.choice(["explode", "", "update_node " * 50]), "args": {"job_id": far}}, "error"),
            ("control_no_job", "Control", {"action": "hold", "args": {}}, "error"),
            ("control_job_str", "Control", {"action": "release", "args": {"job_id": "1"}}, "error"),
            ("control_missing_job", "Control", {"action": r.choice(["hold", "release", "requeue", "suspend"]), "args": {"job_id": far}}, "error"),
            ("control_update_node_garbage", "Control", {"action": "update_node", "args": {"node": [1], "state": {"a": 1}}}, "error"),
            ("control_update_node_unknown", "Control", {"action": "update_node", "args": {"node": "nosuchnode", "state": "DRAIN"}}, "error"),
            ("acct_set_int", "AcctOp", {"op": {"verb": "add", "entity": "qos", "set": 5}}, "error"),
            ("acct_garbage", "AcctOp", {"op": {"verb": r.choice([1, None, "explode", ["add"]]), "entity": r.choice(["qos", 5, None, "x"])}}, "error"),
            ("acct_set_items", "AcctOp", {"op": {"verb": "modify", "entity": "user", "name": "root", "set": [[1], "x", [None, None, None]]}}, "error"),
            ("acct_where_garbage", "AcctOp", {"op": {"verb": "delete", "entity": "account", "where": 7}}, "error"),
            ("acct_name_bad", "AcctOp", {"op": {"verb": "add", "entity": "account", "name": "../../etc\n"}}, "error"),
            ("acct_show_unknown", "AcctOp", {"op": {"verb": "show", "entity": "frobs"}}, "error"),
            ("acct_empty", "AcctOp", {"op": {}}, "error"),
            ("agent_msg_to_cli", r.choice(AGENT_TYPES), {}, "error"),
            ("reply_to_cli", r.choice(["RegisterAck", "LaunchStep", "KillJob", "SignalJob", "SuspendJob"]), {}, "error"),
        ]  # fmt: skip
        name, t, body, expect = r.choice(cases)
        if name in ("agent_msg_to_cli", "reply_to_cli"):
            body = self._body(t)
        f = Frame([frame_of(t, body, rid)], "adv:" + name, expect=expect, rid=rid)
        return f

    def _adversarial_agent(self) -> Frame:
        r = self.r
        rid = self._rid()
        far = FAR + r.randint(0, 10**6)
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("register_other_node", "Register", {"node": "fuzz-" + self._str(4), "cpus": U64, "memory": -1}),
            ("register_garbage_steps", "Register", {"node": "x" * 5000, "cpus": 1, "memory": 1, "steps": [[], [far], [far, 1, 2, 3]]}),
            ("heartbeat_other", "Heartbeat", {"node": self._str(20)}),
            ("step_started_far", "StepStarted", {"job_id": far, "step_id": 1, "pid": -1}),
            ("step_ended_far", "StepEnded", {"job_id": far, "step_id": U64, "exit_code": I64, "signal": 999, "reason": "x" * 1000}),
            ("released_far", "JobReleased", {"job_id": far}),
            ("cli_msg_to_agent", r.choice(CLI_TYPES), {}),
            ("reply_to_agent", r.choice(["RegisterAck", "LaunchStep", "KillJob"]), {}),
        ]  # fmt: skip
        # frames that would end, start or release a real job if the controller believed them
        if self.real:
            real = r.choice(self.real)
            cases += [
                ("step_ended_real", "StepEnded", {"job_id": real, "step_id": r.choice([1, 2]), "exit_code": r.choice([0, 1, 137]),
                                                  "signal": r.choice([0, 9]), "reason": r.choice(["", "x"])}),
                ("step_started_real", "StepStarted", {"job_id": real, "step_id": 1, "pid": r.choice([1, 2**31 - 1])}),
                ("released_real", "JobReleased", {"job_id": real, "epilog_ok": r.random() < 0.5, "kill_failed": r.random() < 0.5}),
                ("output_real", "StepOutput", {"job_id": real, "step_id": 1, "stream": 1, "data": b"forged output\n"}),
                ("register_ended_real", "Register", {"node": "fuzz-" + self._str(4), "cpus": 1, "memory": 1,
                                                     "steps": [[real, 1]], "ended": [{"job_id": real, "step_id": 1, "exit_code": 0}]}),
            ] * 2  # fmt: skip
        name, t, body = r.choice(cases)
        if name in ("cli_msg_to_agent", "reply_to_agent"):
            body = self._body(t)
            if t == "Cancel":
                body = {"dry_run": True, "ids": [[far, None]]}
        kind = "adv_real:" + name if name.endswith("_real") else "adv:" + name  # counted apart
        return Frame([frame_of(t, body, rid)], kind, expect="any", rid=rid)


# ---------------------------------------------------------------- driver (not pure)


@dataclass
class SendStats:
    sent: int = 0
    bytes: int = 0
    replies: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    replies_by: Counter[str] = field(default_factory=Counter)  # "Error:2", "Ok", ...
    violations: list[str] = field(default_factory=list)  # replies that break a frame's expectation
    send_errors: int = 0
    expected: int = 0  # frames that must be answered (all but "drop" ones)

    def merge(self, other: SendStats) -> None:
        self.sent += other.sent
        self.bytes += other.bytes
        self.replies += other.replies
        self.by_kind.update(other.by_kind)
        self.replies_by.update(other.replies_by)
        self.violations.extend(other.violations[:50])
        self.send_errors += other.send_errors
        self.expected += other.expected

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "bytes": self.bytes, "replies": self.replies, "send_errors": self.send_errors,
            "expected_replies": self.expected, "unanswered": max(0, self.expected - self.replies),
            "replies_by": dict(self.replies_by), "violations": self.violations[:20],
            "kinds": dict(self.by_kind.most_common()),
        }  # fmt: skip


def send_frames(address: str, frames: typing.Iterable[Frame], identity: bytes | None = None,
                settle: float = 2.0, stop: threading.Event | None = None,
                pace: float = 0.0, cli: bool = True) -> SendStats:  # fmt: skip
    """Send every frame from one DEALER socket, collect the replies, and check
    each against its frame's expectation. Replies to frames the decoder
    refused carry request id 0 and must be ``Error`` code 2."""
    import zmq

    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 1000)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.SNDTIMEO, 60_000)  # the controller pushes back (CLI_HWM): wait for it
    s.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY)
    if identity is not None:
        s.setsockopt(zmq.IDENTITY, identity)
    s.connect(address)
    st = SendStats()
    expect: dict[int, Frame] = {}

    def take(block_ms: int) -> bool:
        if not s.poll(block_ms, zmq.POLLIN):
            return False
        while True:
            try:
                data = s.recv(zmq.NOBLOCK)
            except zmq.Again:
                return True
            st.replies += 1
            try:
                msg, rid = m.decode(data, MAX_REPLY)
            except m.BadMessage as e:
                st.violations.append(f"undecodable reply: {e}")
                continue
            key = msg.TYPE + (f":{msg.code}" if isinstance(msg, m.Error) else "")
            st.replies_by[key] += 1
            f = expect.pop(rid, None) if rid else None
            if not cli:  # the agent socket answers only RegisterAck (to strangers)
                if not isinstance(msg, m.RegisterAck) or msg.ok:
                    st.violations.append(
                        f"agent socket replied {key} ok={getattr(msg, 'ok', None)}"
                    )
                continue
            if rid == 0:
                if not (isinstance(msg, m.Error) and msg.code == 2):
                    st.violations.append(f"rid 0 reply is {key}")
            elif (
                f is not None
                and f.expect == "error"
                and not (isinstance(msg, m.Error) and msg.code in f.codes)
            ):
                st.violations.append(
                    f"{f.kind}: expected Error, got {key} {str(getattr(msg, 'data', ''))[:80]}"
                )
            elif f is not None and f.expect == "drop":
                st.violations.append(f"{f.kind}: expected no reply, got {key}")

    try:
        for f in frames:
            if stop is not None and stop.is_set():
                break
            if f.rid:
                expect[f.rid] = f
            try:
                s.send_multipart(f.parts)
            except zmq.ZMQError:
                st.send_errors += 1
                continue
            st.sent += 1
            st.bytes += f.size
            st.expected += f.expect != "drop"
            st.by_kind[f.kind.split(":")[0]] += 1
            if st.sent % 64 == 0:
                take(0)
            if pace:
                time.sleep(pace)
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and st.replies < st.expected:
            if take(100):
                deadline = time.monotonic() + settle
    finally:
        s.close(linger=0)
    return st


class GoodClient(threading.Thread):
    """A well-behaved cqueue client: round trips in a loop, latencies kept."""

    def __init__(self, address: str, interval: float = 0.02) -> None:
        super().__init__(daemon=True, name="good-client")
        self.address = address
        self.interval = interval
        self.lat: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from crane.client import Client, Unreachable

        c = Client(self.address, timeout=10)
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    reply = c.request(m.QueryJobs())
                except Unreachable as e:
                    self.failures.append(str(e))
                    c.close()
                    c = Client(self.address, timeout=10)
                    continue
                dt = time.perf_counter() - t0
                if isinstance(reply, m.Ok) and "jobs" in reply.data:
                    self.lat.append(dt)
                else:
                    self.failures.append(f"unexpected reply {reply!r}"[:200])
                self.stop.wait(self.interval)
        finally:
            c.close()

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.lat)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {"round_trips": len(lat), "failures": len(self.failures), "first_failures": self.failures[:5],
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(lat[-1] * 1000, 2) if lat else None}  # fmt: skip


class RssSampler(threading.Thread):
    """Samples the RSS of the named processes every ``interval`` seconds;
    keeps the peak and notes the processes that vanished."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        import psutil

        self.procs = {k: psutil.Process(p) for k, p in pids.items()}
        self.first: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.gone: set[str] = set()
        self.timeline: list[tuple[float, dict[str, int]]] = []  # about once a second
        self.t0 = time.monotonic()
        self.interval = interval
        self.stop = threading.Event()
        self.sample()
        self.first = dict(self.last)

    def sample(self) -> None:
        import psutil

        for k, p in self.procs.items():
            if k in self.gone:
                continue
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(p.pid)
                rss = p.memory_info().rss
            except psutil.NoSuchProcess:
                self.gone.add(k)
                continue
            self.last[k] = rss
            self.peak[k] = max(self.peak.get(k, 0), rss)

    def run(self) -> None:
        n = 0
        while not self.stop.wait(self.interval):
            self.sample()
            n += 1
            if n % max(1, round(1 / self.interval)) == 0:
                mb = {k: round(v / 1048576, 1) for k, v in self.last.items()}
                self.timeline.append((round(time.monotonic() - self.t0, 1), mb))

    def summary(self) -> dict[str, Any]:
        mb = 1024 * 1024
        return {k: {"start_mb": round(self.first.get(k, 0) / mb, 1), "peak_mb": round(self.peak.get(k, 0) / mb, 1),
                    "end_mb": round(self.last.get(k, 0) / mb, 1)} for k in self.procs}  # fmt: skip


def identities(seed: int, n: int) -> list[bytes]:
    """Random agent-socket identities (never starting with a zero byte, which
    ZeroMQ reserves for the identities it makes up)."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        ident = bytes([r.randint(1, 255)]) + r.randbytes(r.randint(0, 40))
        out.append(ident)
    return out


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- a whole campaign

# role -> share of the frames; "key": the agent link's CurveZMQ keypair of a real
# node (a compromised node), "nokey": none (a stranger on the network)
ROLES: dict[str, float] = {
    "cli-root": 0.20,  # malformed and adversarial requests from uid 0
    "cli-user": 0.15,  # the same from a plain user (daemon, uid 1)
    "cli-flood": 0.25,  # one identity of another plain user (nobody) sending as fast as it can
    "agent-random-nokey": 0.025,  # random identities, no key (refused at the handshake)
    "agent-random-key": 0.20,  # random identities, a real node's key
    "agent-forged-key": 0.125,  # identity "crane01" with the key of another node
    "agent-forged-nokey": 0.025,  # identity "crane01", no key
}
# plain users the CLI fuzzers run as (root, if the socket is not reachable by others)
ROLE_USERS = {"cli-user": "daemon", "cli-flood": "nobody"}


def _worker(role: str, address: str, n: int, seed: int, curve: tuple[bytes, bytes, bytes] | None,
            forged: str, as_uid: int | None, out: Any, oversize: bool = True,
            real_jobs: tuple[int, ...] = ()) -> None:  # fmt: skip
    """One fuzzing process (spawned): sends ``n`` frames, puts its stats on ``out``."""
    import zmq

    try:
        if as_uid is not None:
            os.setgroups([])
            os.setgid(as_uid)
            os.setuid(as_uid)
        target = "cli" if role.startswith("cli") else "agent"
        gen = FrameGen(
            seed, target, rid_base=seed * 10_000_000, oversize=oversize, real_jobs=real_jobs
        )
        stats = SendStats()
        if target == "cli":
            ident = b"flood" if role == "cli-flood" else None
            stats = send_frames(address, (gen.next() for _ in range(n)), ident, settle=10.0)
        else:
            ctx = zmq.Context.instance()
            idents = [forged.encode()] if "forged" in role else identities(seed, max(1, n // 500))
            per = -(-n // len(idents))
            left = n
            for ident in idents:
                k = min(per, left)
                left -= k
                stats.merge(
                    _agent_burst(ctx, address, ident, (gen.next() for _ in range(k)), curve)
                )
        out.put((role, stats.to_dict(), None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put((role, None, f"{type(e).__name__}: {e}"))


def _agent_burst(ctx: Any, address: str, ident: bytes, frames: typing.Iterable[Frame],
                 curve: tuple[bytes, bytes, bytes] | None) -> SendStats:  # fmt: skip
    import zmq

    st = SendStats()

    def connect() -> Any:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, ident)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.SNDTIMEO, 2000)
        if curve is not None:
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve
        s.connect(address)
        return s

    s = connect()
    reconnects = 0
    try:
        for f in frames:
            try:
                s.send_multipart(f.parts)
            except zmq.ZMQError:
                st.send_errors += 1
                if curve is not None and reconnects < 20:
                    # with a key, the link was up: an oversized frame stalled or
                    # closed it; an attacker would just connect again
                    reconnects += 1
                    s.close(linger=0)
                    s = connect()
                else:  # refused at the handshake: the pipe never drains
                    s.setsockopt(zmq.SNDTIMEO, 0)  # count the rest as refused, fast
                continue
            st.sent += 1
            st.bytes += f.size
            st.by_kind[f.kind.split(":")[0]] += 1
            while s.poll(0, zmq.POLLIN):
                data = s.recv()
                st.replies += 1
                try:
                    msg, _ = m.decode(data)
                    st.replies_by[msg.TYPE + (":ok" if getattr(msg, "ok", False) else "")] += 1
                    if isinstance(msg, m.RegisterAck) and msg.ok:
                        st.violations.append(f"a fuzzing agent ({ident[:16]!r}) was accepted")
                    elif not isinstance(msg, m.RegisterAck):
                        st.violations.append(
                            f"the controller sent {msg.TYPE} to a fuzzing agent ({ident[:16]!r})"
                        )
                except m.BadMessage as e:
                    st.violations.append(f"undecodable reply: {e}")
        time.sleep(0.2)
        while s.poll(0, zmq.POLLIN):
            s.recv()
            st.replies += 1
    finally:
        s.close(linger=0)
    return st


def _reachable_by(path: str, uid: int) -> bool:
    p = os.path.realpath(path)
    while p != "/":
        p = os.path.dirname(p)
        st = os.stat(p)
        if not st.st_mode & 0o001 and st.st_uid != uid:
            return False
    return True


def _daemon_pids(cluster: Any) -> dict[str, int]:
    pids = {k: p.pid for k, p in cluster.procs.items()}
    for k, pid in cluster.pids().items():
        pids.setdefault(k, pid)
    return pids


# ERROR lines a fuzzing run may log without a bug behind them (substrings); every
# other ERROR line, and every traceback, is a bug a safety net caught
EXPECTED_LOG_ERRORS: tuple[str, ...] = ()


def log_failures(cluster: Any) -> dict[str, int]:
    """Exceptions the daemons' safety nets caught (each one is a bug): the
    tracebacks in each daemon's log."""
    out: dict[str, int] = {}
    logdir = os.path.join(cluster.base, "log")
    for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
        with open(os.path.join(logdir, name), errors="replace") as f:
            text = f.read()
        out[name] = text.count("Traceback")
    return out


def log_errors(cluster: Any, expected: tuple[str, ...] = EXPECTED_LOG_ERRORS) -> list[str]:
    """Tracebacks, ERROR and CRITICAL lines in the daemons' logs, but the
    ``expected`` ones (with the line after a traceback's first, for context)."""
    out: list[str] = []
    logdir = os.path.join(cluster.base, "log")
    for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
        with open(os.path.join(logdir, name), errors="replace") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if ("Traceback" in line or " ERROR " in line or " CRITICAL " in line or "handler failed" in line) \
                    and not any(e in line for e in expected):  # fmt: skip
                nxt = (
                    f" | {lines[i + 1][:160]}" if "Traceback" in line and i + 1 < len(lines) else ""
                )
                out.append(f"{name}: {line[:240]}{nxt}")
    return out


def campaign(cluster: Any, frames: int, seed: int = 1, roles: dict[str, float] | None = None,
             forged: str = "crane01", baseline: float = 3.0, progress: Any = None,
             oversize: bool = True, real_jobs: typing.Iterable[int] = ()) -> dict[str, Any]:  # fmt: skip
    """Fuzz a running cluster with ``frames`` frames split between roles
    (processes), while a good client does cqueue round trips and the daemons'
    RSS is sampled; the agent fuzzers' frames also name ``real_jobs``.
    Returns the figures; checks nothing itself."""
    import multiprocessing

    from crane.config import load

    cfg = load(cluster.config_path)
    roles = dict(roles or ROLES)
    curve_key: tuple[bytes, bytes, bytes] | None = None
    if cfg.curve_key_dir:
        from crane import keys

        other = [n for n in cfg.nodes if n != forged][-1]
        pub, sec = keys.node_keys(cfg.curve_key_dir, other)
        curve_key = (pub, sec, keys.controller_public(cfg.curve_key_dir))
    import pwd

    role_uid: dict[str, int] = {}
    for role, user in ROLE_USERS.items():
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            continue
        if (
            os.geteuid() == 0
            and cfg.cli_address.startswith("ipc://")
            and _reachable_by(cfg.cli_address[6:], uid)
        ):
            role_uid[role] = uid
    pids = _daemon_pids(cluster)
    sampler = RssSampler(pids)
    sampler.start()

    def good_phase(seconds: float) -> dict[str, Any]:
        g = GoodClient(cfg.cli_address)
        g.start()
        time.sleep(seconds)
        g.stop.set()
        g.join(15)
        return g.summary()

    result: dict[str, Any] = {
        "frames_requested": frames,
        "seed": seed,
        "curve": curve_key is not None,
    }
    result["good_before"] = good_phase(baseline)
    total = sum(roles.values())
    mp = multiprocessing.get_context("spawn")
    out = mp.Queue()
    procs: list[tuple[str, Any]] = []
    plan = {}
    t0 = time.monotonic()
    for i, (role, share) in enumerate(sorted(roles.items())):
        n = int(round(frames * share / total))
        if n <= 0:
            continue
        addr = cfg.cli_address if role.startswith("cli") else cfg.agent_address
        key = curve_key if role.endswith("-key") else None
        uid = role_uid.get(role)
        plan[role] = {"frames": n, "uid": 0 if uid is None else uid, "key": key is not None}
        p = mp.Process(target=_worker, args=(role, addr, n, seed * 100 + i, key, forged, uid, out, oversize,
                                             tuple(real_jobs)), daemon=True)  # fmt: skip
        p.start()
        procs.append((role, p))
    good = GoodClient(cfg.cli_address)
    good.start()
    stats: dict[str, Any] = {}
    errors: dict[str, str] = {}
    while len(stats) + len(errors) < len(procs):
        try:
            role, st, err = out.get(timeout=1.0)
        except Exception:  # queue.Empty
            if progress:
                progress(
                    f"{time.monotonic() - t0:.0f}s: {len(stats)}/{len(procs)} fuzzers done; rss {sampler.last}"
                )
            if not any(p.is_alive() for _, p in procs) and out.empty():
                break
            continue
        if err:
            errors[role] = err
        else:
            stats[role] = st
    for role, p in procs:
        p.join(10)
        if role not in stats and role not in errors:
            errors[role] = f"fuzzer process exited with {p.exitcode} without a report"
    elapsed = time.monotonic() - t0
    good.stop.set()
    good.join(15)
    result["good_during"] = good.summary()
    result["good_after"] = good_phase(baseline)
    sampler.stop.set()
    sampler.join(5)
    sampler.sample()
    total_stats = SendStats()
    for st in stats.values():
        total_stats.sent += st["sent"]
        total_stats.replies += st["replies"]
        total_stats.bytes += st["bytes"]
        total_stats.send_errors += st["send_errors"]
        total_stats.expected += st["expected_replies"]
        total_stats.replies_by.update(st["replies_by"])
        total_stats.violations.extend(st["violations"])
        total_stats.by_kind.update(st["kinds"])
    alive = {k: p.poll() is None for k, p in cluster.procs.items()}
    result.update({
        "frames_sent": total_stats.sent, "bytes_sent": total_stats.bytes, "seconds": round(elapsed, 1),
        "frames_per_s": round(total_stats.sent / elapsed) if elapsed else None,
        "replies": total_stats.replies, "replies_by": dict(total_stats.replies_by),
        "cli_frames": sum(st["sent"] for r, st in stats.items() if r.startswith("cli")),
        "cli_unanswered": sum(st["unanswered"] for r, st in stats.items() if r.startswith("cli")),
        "oversize_frames": total_stats.by_kind.get("too_large", 0),
        "send_errors": total_stats.send_errors, "violations": total_stats.violations[:50],
        "violation_count": len(total_stats.violations), "kinds": dict(total_stats.by_kind.most_common()),
        "plan": plan, "roles": stats, "worker_errors": errors,
        "daemons_alive": alive, "daemon_crashes": sum(1 for a in alive.values() if not a) + len(sampler.gone - set(alive)),
        "rss": sampler.summary(), "rss_timeline": sampler.timeline, "caught_exceptions": log_failures(cluster),
        "frames_to_decoder": sum(st["sent"] for r, st in stats.items() if not r.endswith("-nokey")),
        "frames_refused_handshake": sum(st["sent"] + st["send_errors"] for r, st in stats.items() if r.endswith("-nokey")),
    })  # fmt: skip
    return result


def post_checks(cluster: Any, sentinel: int | None = None, timeout: float = 30.0,
                guards: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """After the storm: every node up, the guard jobs (``start_guards``) as
    they were, the sentinel job still running (then cancelled, its process
    gone), a new job runs to completion, another is cancelled while running
    and its process is gone; every cancel's reply says it cancelled what was
    asked (the guards' too, cancelled once checked)."""
    from crane.cli.common import CliError, call, load_full_config

    cfg = load_full_config(cluster.config_path)
    res: dict[str, Any] = {}

    def job(jid: int) -> dict[str, Any] | None:
        for hist in (False, True):
            d = call(cfg, m.QueryJobs({"jobs": [jid]}, history=hist))
            if d["jobs"]:
                return d["jobs"][0]  # type: ignore[no-any-return]
        return None

    def wait(jid: int, states: tuple[str, ...]) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        j = None
        while time.monotonic() < deadline:
            j = job(jid)
            if (
                j
                and j["state"] in states
                and (j["state"] != "RUNNING" or any(s.get("pid") for s in j["steps"]))
            ):
                return j
            time.sleep(0.1)
        return j

    def pid_of(j: dict[str, Any] | None) -> int | None:
        for s in (j or {}).get("steps", []):
            if s.get("pid"):
                return int(s["pid"])
        return None

    def gone(pid: int | None) -> bool:
        if pid is None:
            return False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(") ", 1)[-1][0] in "ZX":
                        return True
            except OSError:
                return True
            time.sleep(0.05)
        return False

    res["cancel_surprises"] = []

    def cancel(ids: list[list[int | None]]) -> None:
        """A cancel whose reply must say each id was cancelled."""
        from bench.crash_storm import cancel_surprises

        res["cancel_surprises"] += cancel_surprises(ids, call(cfg, m.Cancel(ids=ids)), expected=())

    try:
        deadline = time.monotonic() + timeout
        nodes: dict[str, str] = {}
        while time.monotonic() < deadline:
            nodes = cluster.nodes_state()
            if all(s != "DOWN" for s in nodes.values()):
                break
            time.sleep(0.2)
        res["nodes"] = nodes
        res["nodes_up"] = all(s != "DOWN" for s in nodes.values())
        if guards:
            res["guards"] = sorted(guards)
            res["guards_harmed"] = check_guards(cluster, guards)
            # then cancelled (the one waiting for the sentinel's node would hold it after)
            res["guards_cancel"] = cancel_guards(cluster, [g for g in guards if g != sentinel])
        if sentinel is not None:
            j = job(sentinel)
            res["sentinel_state"] = j["state"] if j else None
            pid = pid_of(j)
            cancel([[sentinel, None]])
            j = wait(sentinel, ("CANCELLED",))
            res["sentinel_cancelled"] = bool(j and j["state"] == "CANCELLED")
            res["sentinel_process_gone"] = gone(pid)
        out = os.path.join(cluster.base, "fuzz-ok.out")
        spec = {
            "argv": ["/bin/sh", "-c", f"echo fuzz-ok > {out}"],
            "cwd": "/tmp",
            "stdout": "/dev/null",
        }
        jid = call(cfg, m.SubmitJob(spec))["job_ids"][0]
        j = wait(jid, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
        res["job_completed"] = bool(j and j["state"] == "COMPLETED")
        try:
            with open(out) as f:
                res["job_output_ok"] = f.read().strip() == "fuzz-ok"
        except OSError:
            res["job_output_ok"] = False
        jid = call(
            cfg, m.SubmitJob({"argv": ["sleep", "300"], "cwd": "/tmp", "stdout": "/dev/null"})
        )["job_ids"][0]
        j = wait(jid, ("RUNNING",))
        pid = pid_of(j)
        res["job_ran"] = bool(j and j["state"] == "RUNNING" and pid)
        cancel([[jid, None]])
        j = wait(jid, ("CANCELLED",))
        res["job_cancelled"] = bool(j and j["state"] == "CANCELLED")
        res["job_process_gone"] = gone(pid)
    except CliError as e:
        res["error"] = str(e)
    flags = ("nodes_up", "sentinel_cancelled", "sentinel_process_gone", "job_completed", "job_output_ok",
             "job_ran", "job_cancelled", "job_process_gone")  # fmt: skip
    findings = ("error", "cancel_surprises", "guards_harmed", "guards_cancel")
    res["ok"] = (all(res.get(k, True) for k in flags) and not any(res.get(k) for k in findings)
                 and (sentinel is None or res.get("sentinel_state") == "RUNNING"))  # fmt: skip
    return res


def start_guards(cluster: Any, forged: str = "crane01", sentinel: int | None = None,
                 timeout: float = 30.0) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Real jobs for the agent fuzzers to name (besides the sentinel on
    ``forged``): one running on every other node (the fuzzers hold the
    CurveZMQ key of the last of them), one held and one waiting for
    resources on ``forged``. Returns each job's record as it is now, the
    ``sentinel``'s too (``check_guards`` compares)."""
    from crane.cli.common import call, load_full_config

    cfg = load_full_config(cluster.config_path)
    others = [n for n in cfg.nodes if n != forged]
    base = {"argv": ["sleep", "3600"], "cwd": "/tmp", "stdout": "/dev/null", "name": "fuzz-guard"}
    ids: list[int] = []

    def part(node: str) -> str:
        return next(p.name for p in cfg.partitions.values() if node in p.nodes)

    for node in others:
        ids += call(cfg, m.SubmitJob({**base, "nodelist": [node], "partition": part(node)}))[
            "job_ids"
        ]
    ids += call(cfg, m.SubmitJob({**base, "hold": True}))["job_ids"]
    # all of the forged node's cpus: waits for the sentinel
    ids += call(cfg, m.SubmitJob({**base, "nodelist": [forged], "partition": part(forged),
                                  "cpus": cfg.nodes[forged].cpus}))["job_ids"]  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["job_id"]: j for j in call(cfg, m.QueryJobs({"jobs": ids}))["jobs"]}
        running = [jobs.get(i) for i in ids[: len(others)]]
        if all(j and j["state"] == "RUNNING" and any(s.get("pid") for s in j["steps"]) for j in running) \
                and all(jobs.get(i, {}).get("state") == "PENDING" for i in ids[len(others):]):  # fmt: skip
            snap = {i: jobs[i] for i in ids}
            if sentinel is not None:
                snap[sentinel] = call(cfg, m.QueryJobs({"jobs": [sentinel]}))["jobs"][0]
            return snap
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"guard jobs not in place: {[(i, (jobs.get(i) or {}).get('state')) for i in ids]}"
            )
        time.sleep(0.1)


def check_guards(cluster: Any, before: dict[int, dict[str, Any]]) -> list[str]:
    """What happened to the guard jobs that no one asked for: a state,
    start time, node or step pid changed, a cancel recorded, a step process
    gone. Empty when every one is as it was."""
    from crane.cli.common import call, load_full_config

    cfg = load_full_config(cluster.config_path)
    now = {j["job_id"]: j for j in call(cfg, m.QueryJobs({"jobs": list(before)}))["jobs"]}
    out = []
    for jid, was in sorted(before.items()):
        j = now.get(jid)
        if j is None:
            hist = call(cfg, m.QueryJobs({"jobs": [jid]}, history=True))["jobs"]
            out.append(f"job {jid} ({was['state']}) ended: {hist[0]['state'] if hist else 'unknown'} "
                       f"{hist[0].get('reason') if hist else ''}")  # fmt: skip
            continue
        for key in ("state", "nodes", "start_time", "cancelled_by", "requeue_count"):
            if j.get(key) != was.get(key):
                out.append(f"job {jid}: {key} {was.get(key)!r} -> {j.get(key)!r}")
        pids = [(s["step_id"], s.get("pid"), s.get("state")) for s in j["steps"]]
        if pids != [(s["step_id"], s.get("pid"), s.get("state")) for s in was["steps"]]:
            out.append(
                f"job {jid}: steps {[(s['step_id'], s.get('pid'), s.get('state')) for s in was['steps']]} -> {pids}"
            )
        for _sid, pid, _st in pids:
            if pid and not _alive(int(pid)):
                out.append(f"job {jid}: step process {pid} is gone")
    return out


def cancel_guards(cluster: Any, guards: typing.Iterable[int], timeout: float = 30.0) -> list[str]:
    """Cancel the guard jobs; what the reply or the jobs' ends contradict."""
    from bench.crash_storm import cancel_surprises
    from crane.cli.common import call, load_full_config

    cfg = load_full_config(cluster.config_path)
    ids = sorted(guards)
    asked: list[list[int | None]] = [[j, None] for j in ids]
    out = cancel_surprises(asked, call(cfg, m.Cancel(ids=asked)), expected=())
    deadline = time.monotonic() + timeout
    left = set(ids)
    while left and time.monotonic() < deadline:
        for j in call(cfg, m.QueryJobs({"jobs": sorted(left)}, history=True))["jobs"]:
            if j["state"] == "CANCELLED":
                left.discard(j["job_id"])
        time.sleep(0.1)
    out += [f"guard job {j} not CANCELLED {timeout:g}s after its cancel" for j in sorted(left)]
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][0] not in "ZX"
    except OSError:
        return False


def start_sentinel(cluster: Any, node: str = "crane01", timeout: float = 30.0) -> int:
    """A long job on ``node`` (the one the forged agent claims to be).

    Job ids 1 and 2 go first to two held jobs, cancelled at once: the CLI
    fuzzers' well-typed bodies put 1 or 2 in every integer field (cpus,
    step ids, job ids), and a request from root may do anything to a job it
    names (the agent fuzzers name the real jobs on purpose, ``start_guards``)."""
    from bench.crash_storm import cancel_surprises
    from crane.cli.common import call, load_full_config

    cfg = load_full_config(cluster.config_path)
    burnt = call(
        cfg, m.SubmitJob({"argv": ["true"], "cwd": "/tmp", "stdout": "/dev/null", "hold": True}, 2)
    )["job_ids"]
    ids: list[list[int | None]] = [[j, None] for j in burnt]
    surprises = cancel_surprises(ids, call(cfg, m.Cancel(ids=ids)), expected=())
    if surprises:
        raise RuntimeError(f"cancel of held jobs {burnt}: {surprises}")
    spec = {"argv": ["sleep", "3600"], "cwd": "/tmp", "stdout": "/dev/null", "nodelist": [node]}
    jid: int = call(cfg, m.SubmitJob(spec))["job_ids"][0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = call(cfg, m.QueryJobs({"jobs": [jid]}))
        if (
            d["jobs"]
            and d["jobs"][0]["state"] == "RUNNING"
            and any(s.get("pid") for s in d["jobs"][0]["steps"])
        ):
            return jid
        time.sleep(0.1)
    raise TimeoutError(f"sentinel job {jid} did not start")
