"""Commands that start fast keep their behaviour (issue 16): cqueue's and
cbatch's parsers without click parse exactly as their click commands (or
defer to them), ccancel's plain ids parse as crane.core.ids parses them, a
reply is read as crane.core.messages reads it, and the installed commands
are launchers that run without site processing and ignore PYTHONPATH.
The config cache: tests/test_client_config.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crane.cli import cacct, cbatch, cqueue
from crane.cli.ccancel import plain_job_ids
from crane.core import messages as m
from crane.core import wire
from crane.core.ids import parse_job_refs

BIN = os.path.dirname(sys.executable)

CQUEUE_CASES = [
    [],
    ["-u", "alice"],
    ["--user=alice", "--json"],
    ["-j", "12,13.2", "-s"],
    ["-t", "R,PD", "-p", "CPU", "-A", "acct", "-q", "normal", "-n", "name"],
    ["-w", "crane[01-02]", "-N", "-l", "--me"],
    ["-o", "%i %T", "-C", "/etc/crane/config.yaml"],
    ["--steps", "--jobs", "7"],
]


@pytest.mark.parametrize("argv", CQUEUE_CASES)
def test_cqueue_fast_path_matches_click(argv: list[str]) -> None:
    fast = cqueue.fast_parse(argv, cqueue.SIMPLE_OPTIONS)
    assert fast is not None and fast[1] == []
    assert fast[0] == cqueue.make_command().make_context("cqueue", list(argv)).params


@pytest.mark.parametrize("argv", [["--help"], ["-V"], ["x"], ["--bogus"], ["-u"], ["-uroot"], ["-Nl"], ["--json=1"]])
def test_cqueue_unusual_forms_go_to_click(argv: list[str]) -> None:
    assert cqueue.fast_parse(argv, cqueue.SIMPLE_OPTIONS) is None


CACCT_CASES = [
    [],
    ["-j", "12,13.2", "--steps"],
    ["-a", "-S", "2000-01-01", "-E", "now", "-P", "-N"],
    ["--format=JobID,State", "-u", "alice", "-t", "CA", "-l", "--json", "-C", "/x.yaml"],
    ["--starttime", "now-1days", "--endtime=now", "-p", "CPU", "-A", "a", "-q", "q", "-n", "n", "-w", "c01"],
]


@pytest.mark.parametrize("argv", CACCT_CASES)
def test_cacct_fast_path_matches_click(argv: list[str]) -> None:
    fast = cacct.fast_parse(argv, cacct.SIMPLE_OPTIONS)
    assert fast is not None and fast[1] == []
    assert fast[0] == cacct.make_command().make_context("cacct", list(argv)).params


@pytest.mark.parametrize("argv", [["--help"], ["-V"], ["x"], ["-aP"], ["-S"], ["--steps=1"]])
def test_cacct_unusual_forms_go_to_click(argv: list[str]) -> None:
    assert cacct.fast_parse(argv, cacct.SIMPLE_OPTIONS) is None


CBATCH_CASES = [
    ["--wrap", "sleep 1"],
    ["job.sh"],
    ["--json", "-p", "CPU", "--", "-job.sh"],
    ["job.sh", "-p", "CPU", "-N", "2", "-c", "4", "--mem", "1G", "-t", "10"],
    ["--wrap=true", "--repeat", "5", "--json", "-H", "--exclusive"],
    ["-J", "name", "-o", "out-%j", "-e", "err", "-D", "/tmp", "-w", "crane01", "-C", "/x.yaml", "s.sh"],
    ["--open-mode", "append", "--gres", "gpu:1", "-G", "2", "-n", "3", "--ntasks-per-node", "2", "x"],
    ["--mem-per-cpu", "1G", "-a", "1-3", "-d", "afterok:1", "--signal", "B:USR1@60", "--comment", "c",
     "--export", "NONE", "-q", "high", "-A", "acct", "--wrap", "x"],
]


@pytest.mark.parametrize("argv", CBATCH_CASES)
def test_cbatch_fast_path_matches_click(argv: list[str]) -> None:
    fast = cbatch.fast_parse(argv)
    assert fast is not None
    assert fast == cbatch.make_command().make_context("cbatch", list(argv)).params


@pytest.mark.parametrize("argv", [["--help"], ["-V"], ["-N", "abc", "x"], ["-N", "0", "x"], ["-N", "+2", "x"],
                                  ["--repeat", "0", "--wrap", "x"], ["--open-mode", "APPEND", "x"],
                                  ["a", "b"], ["-Hx"], ["--exclusive=1", "x"], ["/"], ["a", "--", "b"]])  # fmt: skip
def test_cbatch_unusual_forms_go_to_click(argv: list[str]) -> None:
    assert cbatch.fast_parse(argv) is None


def test_script_lines_parse_as_click_parses_them() -> None:
    args = ["-J", "hello", "-c", "2", "--exclusive", "--mem", "100M", "-t", "5"]
    fast = cbatch.fast_job_options(args, [])
    assert fast is not None
    import click

    sub = click.Command("s", params=[], callback=lambda **kw: kw)
    for opt in cbatch.click_options():
        opt(sub)
    assert fast[0] == sub.main(args, standalone_mode=False)


@pytest.mark.parametrize("words", [["12"], ["12", "13", "12"], ["999999999"], ["1", "2", "3"]])
def test_plain_ids_parse_as_crane_core_ids(words: list[str]) -> None:
    expected: list[list[int | None]] = []
    for w in words:
        for j, s, _t in parse_job_refs(w):
            if [j, s] not in expected:
                expected.append([j, s])
    assert plain_job_ids(words) == expected


@pytest.mark.parametrize("word", ["012", "1.2", "1_3", "1,2", "1234567890", "٣", "", "-1"])
def test_other_ids_are_left_to_crane_core_ids(word: str) -> None:
    assert plain_job_ids([word]) is None


def test_replies_read_as_the_message_classes_read_them() -> None:
    ok = m.encode(m.Ok({"job_ids": [3]}), 1)
    t, body, rid = wire.unpack(ok)
    assert (t, rid) == ("Ok", 1) and wire.reply_data(t, body) == ({"job_ids": [3]}, 0, "")
    err = m.encode(m.Error(5, "permission denied"), 2)
    t, body, _ = wire.unpack(err)
    assert wire.reply_data(t, body) == (None, 5, "permission denied")
    # a Request and its message class make the same frame
    req = wire.Request("Cancel", {f: getattr(m.Cancel(), f) for f in m.Cancel.__dataclass_fields__})
    assert wire.pack(req.TYPE, req.body, 4) == m.encode(m.Cancel(), 4)
    for bad in ({"code": "5", "message": "x"}, {"code": 1}, {"code": 1, "message": "x", "extra": 1}):
        with pytest.raises(wire.BadMessage):
            wire.reply_data("Error", bad)
    with pytest.raises(wire.BadMessage):
        wire.reply_data("Ok", {"data": [1]})
    with pytest.raises(wire.BadMessage):
        wire.reply_data("JobEvent", {})


def _launcher(name: str) -> str:
    return os.path.join(BIN, name)


def test_commands_are_launchers_without_site_processing(tmp_path: object) -> None:
    """Each installed command runs ``python -I -S``: no site processing
    (the editable install of a checkout falls back to it, see bin/), and
    $PYTHONPATH cannot put another ``crane`` in front of the installed one."""
    names = ["cbatch", "ccancel", "cqueue", "cacct", "cinfo", "ccontrol", "cacctmgr", "crun", "calloc", "crane",
             "sbatch", "srun", "salloc", "scancel", "squeue", "sacct", "sinfo", "scontrol", "sacctmgr"]  # fmt: skip
    for name in names:
        with open(_launcher(name), "rb") as f:
            head = f.read(400)
        assert head.startswith(b"#!/bin/sh\n") and b'-IS "$0" "$@"' in head, name
    evil = os.path.join(str(tmp_path), "crane")
    os.makedirs(os.path.join(evil, "cli"))
    for rel in ("__init__.py", "cli/__init__.py"):
        with open(os.path.join(evil, rel), "w") as f:
            f.write("raise SystemExit('imported from PYTHONPATH')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([_launcher("ccancel"), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ccancel" in out.stdout, out.stderr
    assert "PYTHONPATH" not in out.stderr
    # through a symbolic link (a command linked into /usr/local/bin) and a relative path
    link = os.path.join(str(tmp_path), "cq")
    os.symlink(_launcher("cqueue"), link)
    out = subprocess.run([link, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "cqueue" in out.stdout, out.stderr
    out = subprocess.run(["./cinfo", "--version"], cwd=BIN, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "cinfo" in out.stdout, out.stderr


def test_slurm_config_option() -> None:
    from crane.cli.common import CliError
    from crane.slurm.translate import config_option

    argv = ["-C", "a.yaml", "--config=b.yaml", "-M", "x", "--clusters", "y", "--config", "c.yaml", "-o"]
    assert config_option(argv, 0, "--clusters") == ("a.yaml", 1)
    assert config_option(argv, 2, "--clusters") == ("b.yaml", 2)
    assert config_option(argv, 3, "--clusters") == (None, 4)
    assert config_option(argv, 5, "--clusters") == (None, 6)
    assert config_option(argv, 5, "--cluster") is None  # sacctmgr's spelling differs
    assert config_option(argv, 7, "--clusters") == ("c.yaml", 8)
    assert config_option(argv, 9, "--clusters") is None
    with pytest.raises(CliError, match="option -C requires an argument"):
        config_option(["-C"], 0, "--clusters")
