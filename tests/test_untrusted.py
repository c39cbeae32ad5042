"""Unit tests of the pure rules for user-sent text (crane.core.untrusted) and of
the per-user bounded waiter registry (crane.actors.waits)."""

from __future__ import annotations

import pytest

from crane.actors.waits import Waits
from crane.config import ConfigError, parse
from crane.core import untrusted as u


@pytest.mark.parametrize("ch", ["\n", "\r", "\t", "\x1b", "\x00", "\x7f", "\x85", "\x9b", "\u202e", "\u2028"])
def test_control_characters_are_refused_naming_the_field(ch: str) -> None:
    assert u.check_name("job name", f"a{ch}b") == "job name contains a control character"
    assert u.check_text("message", f"x{ch}") == "message contains a control character"
    assert u.check_path("output path", f"/tmp/a{ch}") == "output path contains a control character"
    assert u.check_spec({"name": "ok", "stderr": f"/x{ch}"}) == "error path contains a control character"


def test_printable_text_passes() -> None:
    for s in ("job-1", "Ünïcödé 作业", "a b c", "x" * u.NAME_MAX):
        assert u.check_name("job name", s) is None
    assert u.check_path("output path", "/home/alice/out %j.txt") is None


def test_lengths_are_bounded() -> None:
    assert u.check_name("job name", "x" * (u.NAME_MAX + 1)) == f"job name is longer than {u.NAME_MAX} characters"
    assert u.check_text("message", "x" * (u.TEXT_MAX + 1)) is not None
    assert "longer than" in (u.check_path("output path", "/" + "x" * u.PATH_MAX) or "")
    assert "larger than" in (u.check_env({"A": "x" * u.ENV_MAX}) or "")
    assert "longer than" in (u.check_argv(["x" * 1000] * 2000) or "")


def test_paths_must_be_absolute() -> None:
    assert u.check_path("output path", "out.txt") == "output path must be an absolute path"
    assert u.check_path("working directory", "../x") == "working directory must be an absolute path"
    assert u.check_spec({"cwd": "rel"}) == "working directory must be an absolute path"
    assert u.check_path("output path", 5) == "output path must be a string"


def test_env_and_argv() -> None:
    # exported shell functions hold newlines in their values: allowed
    assert u.check_env({"BASH_FUNC_f%%": "() {  echo hi\n}", "PATH": "/bin"}) is None
    assert u.check_env({"A=B": "x"}) is not None
    assert u.check_env({"": "x"}) is not None
    assert u.check_env({"A\x1b": "x"}) is not None
    assert u.check_env({"A": "x\0y"}) is not None
    assert u.check_env({"A": 1}) == "env must map strings to strings"
    assert u.check_argv(["/bin/echo", "a\nb"]) is None
    assert u.check_argv(["a\0b"]) == "command contains a NUL character"
    assert u.check_argv([1]) == "argv must be a list of strings"


def test_check_strings_walks_nested_values() -> None:
    op = {"entity": "user", "set": [["Description", "=", "x\x1b[2Jy"]]}
    assert u.check_strings("cacctmgr value", op) == "cacctmgr value contains a control character"
    assert u.check_strings("cacctmgr value", {"k\n": 1}) is not None
    assert u.check_strings("cacctmgr value", {"entity": "user", "set": [["a", "=", "b"]]}) is None


def test_bound_filters() -> None:
    f, err = u.bound_filters({"jobs": [1, 2, 2], "states": ["RUNNING"], "user": "alice"})
    assert err is None and f["jobs"] == frozenset({1, 2}) and f["user"] == "alice"
    assert u.bound_filters({"jobs": list(range(u.LIST_MAX + 1))})[1] is not None
    assert u.bound_filters({"jobs": [{"a": 1}]})[1] == "filter jobs must be a list of integers"
    assert u.bound_filters({"nodes": [1]})[1] == "filter nodes must be a list of strings"


def test_limit_config_keys() -> None:
    base = {"Nodes": [{"name": "n1", "cpu": 1, "memory": "1G"}]}
    cfg = parse(base)
    assert (cfg.max_job_count, cfg.max_submit_jobs_per_user, cfg.max_waits_per_user) == (100_000, 10_000, 64)
    cfg = parse({**base, "MaxJobCount": 5, "MaxSubmitJobsPerUser": 2, "MaxWaitsPerUser": 3, "MaxStepCount": 9})
    assert (cfg.max_job_count, cfg.max_submit_jobs_per_user, cfg.max_waits_per_user, cfg.max_step_count) == (5, 2, 3, 9)
    for key in ("MaxJobCount", "MaxSubmitJobsPerUser", "MaxWaitsPerUser", "MaxStepCount"):
        with pytest.raises(ConfigError, match=f"^{key}: must be at least 1"):
            parse({**base, key: 0})
        with pytest.raises(ConfigError, match=f"^{key}: "):
            parse({**base, key: "many"})


# ---------------------------------------------------------------- waiters


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_waiter_answers_when_every_key_fired() -> None:
    w = Waits(per_user=4)
    got: list[object] = []
    assert w.add(1000, [1, 2], got.append) is None
    w.fire(1)
    assert got == []
    w.fire(2, "v")
    assert got == ["v"] and len(w) == 0 and not w.by_key and not w.keys_of_uid


def test_per_user_bound_and_root_exempt() -> None:
    w = Waits(per_user=2)
    assert w.add(1000, [1], print) is None
    assert w.add(1000, [1], print) is None
    assert "MaxWaitsPerUser" in (w.add(1000, [2], print) or "")
    assert w.add(1001, [1], print) is None  # another user has their own budget
    for _ in range(5):
        assert w.add(0, [1], print) is None
    w.fire(1)
    assert len(w) == 0 and not w.by_key and not w.by_uid


def test_gone_clients_are_dropped_at_the_limit_and_by_sweeps() -> None:
    clock = Clock()
    w = Waits(per_user=2, ttl=100, clock=clock)
    alive = {"a": True, "b": True}
    assert w.add(1000, [7], print, lambda: alive["a"]) is None
    assert w.add(1000, [(7, 2)], print, lambda: alive["b"]) is None
    assert w.keys_of_job(7) == [(7, 2)]
    alive["a"] = False  # its connection closed: the slot is freed when needed
    assert w.add(1000, [8], print, lambda: True) is None
    assert 7 not in w.by_key and len(w) == 2
    alive["b"] = False
    assert w.sweep() == 1 and w.keys_of_job(7) == [] and len(w) == 1
    clock.t = 101  # past the ttl, even with a live client
    assert w.sweep() == 1 and len(w) == 0 and not w.by_key and not w.keys_of_uid


def test_keys_per_user_bound() -> None:
    w = Waits(per_user=10, keys_per_user=5)
    assert w.add(1000, [1, 2, 3], print) is None
    assert "too many jobs" in (w.add(1000, [4, 5, 6], print) or "")
    assert w.add(1000, [4, 5], print) is None
