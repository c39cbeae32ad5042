"""The fast path of ccancel parses exactly like its click command, or defers to it."""

from __future__ import annotations

import pytest

from crane.cli.ccancel import fast_parse, make_command

CASES = [
    ["12"],
    ["12,13.2", "--json"],
    ["-n", "test1"],
    ["--name=test1", "-t", "Pending", "-p", "CPU"],
    ["-u", "alice", "-A", "PKU", "-q", "high", "-w", "crane[01-02]"],
    ["7", "-m", "maintenance window", "--force", "--wait", "-Q"],
    ["-t", "R", "--dry-run", "-v", "-C", "/etc/crane/config.yaml"],
    ["5", "-s", "USR1"],
    ["--whatif", "-i", "3"],
]


@pytest.mark.parametrize("argv", CASES)
def test_fast_path_matches_click(argv: list[str]) -> None:
    fast = fast_parse(argv)
    assert fast is not None
    ctx = make_command().make_context("ccancel", list(argv))
    params = dict(ctx.params)
    job_ids = params.pop("job_ids")
    assert fast[0] == job_ids
    assert fast[1] == params


@pytest.mark.parametrize("argv", [["--help"], ["-V"], ["--grace", "5", "1"], ["--end-state", "finished", "1"],
                                  ["1", "2"], ["--bogus"], ["-n"], ["--json=yes"], ["-nfoo"]])  # fmt: skip
def test_unusual_forms_go_to_click(argv: list[str]) -> None:
    assert fast_parse(argv) is None
