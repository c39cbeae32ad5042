from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crane.core.ids import (
    ACTIVE,
    CANCELLABLE,
    MAX_ID,
    SHORT_CODES,
    TERMINAL,
    IdListError,
    JobState,
    compress_nodes,
    expand_nodes,
    format_duration,
    format_ids,
    format_memory,
    parse_bool,
    parse_id_list,
    parse_memory,
    parse_signal,
    parse_state_filter,
    parse_time_limit,
)

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4

# --------------------------------------------------------------------------- states


def test_state_sets() -> None:
    assert TERMINAL == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
    }
    assert CANCELLABLE == {
        JobState.PENDING,
        JobState.CONFIGURING,
        JobState.RUNNING,
        JobState.SUSPENDED,
    }
    assert ACTIVE == CANCELLABLE | {JobState.COMPLETING}
    assert not ACTIVE & TERMINAL
    assert ACTIVE | TERMINAL == set(JobState)


def test_state_values_and_codes() -> None:
    assert JobState("RUNNING") is JobState.RUNNING
    assert JobState.RUNNING == "RUNNING"
    assert str(JobState.OUT_OF_MEMORY) == "OUT_OF_MEMORY"
    assert set(SHORT_CODES) == set(JobState)
    assert [SHORT_CODES[s] for s in JobState] == [
        "PD", "CF", "R", "S", "CG", "CD", "F", "CA", "TO", "OOM",
    ]  # fmt: skip
    assert JobState.PENDING.short == "PD"
    assert JobState.TIMEOUT.is_terminal
    assert not JobState.COMPLETING.is_terminal


# --------------------------------------------------------------------------- id lists


def _id_error(text: str) -> str:
    return f'invalid job id list "{text}": use <job_id>[.<step_id>][,<job_id>[.<step_id>]...]'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", [(1, None)]),
        ("12,13", [(12, None), (13, None)]),
        ("12.3", [(12, 3)]),
        ("12.3,12,12.4", [(12, 3), (12, None), (12, 4)]),
        ("1.2,1.2", [(1, 2)]),
        ("5,3,5,3.1,3.1", [(5, None), (3, None), (3, 1)]),
        (str(MAX_ID), [(MAX_ID, None)]),
        (f"1.{MAX_ID}", [(1, MAX_ID)]),
    ],
)
def test_parse_id_list_ok(text: str, expected: list[tuple[int, int | None]]) -> None:
    assert parse_id_list(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", ",", "1,", ",1", "1,,2", "01", "1.01", "1.0", "0", "0.1", "1.2.3",
        " 1", "1 ", "1 ,2", "1, 2", "-1", "1.-2", "+1", "99999999999",
        str(MAX_ID + 1), f"1.{MAX_ID + 1}", "1.", ".1", "a", "1a", "1e3",
        "\u0661", "1\n", "0x10", "1_000",
    ],
)  # fmt: skip
def test_parse_id_list_errors(text: str) -> None:
    with pytest.raises(IdListError) as info:
        parse_id_list(text)
    assert str(info.value) == _id_error(text)
    assert info.value.text == text
    assert isinstance(info.value, ValueError)


def test_id_list_error_message_exact() -> None:
    assert str(IdListError("x")) == (
        'invalid job id list "x": use <job_id>[.<step_id>][,<job_id>[.<step_id>]...]'
    )


ids = st.integers(min_value=1, max_value=MAX_ID)


@given(st.lists(ids, min_size=1))
def test_format_ids_round_trip(values: list[int]) -> None:
    text = format_ids(values)
    assert parse_id_list(text) == [(v, None) for v in sorted(set(values))]


@given(st.lists(st.tuples(ids, st.none() | ids), min_size=1))
def test_parse_id_list_dedups_keeping_order(pairs: list[tuple[int, int | None]]) -> None:
    text = ",".join(str(j) if s is None else f"{j}.{s}" for j, s in pairs)
    assert parse_id_list(text) == list(dict.fromkeys(pairs))


def test_format_ids() -> None:
    assert format_ids([13, 12]) == "12,13"
    assert format_ids([7]) == "7"
    assert format_ids([3, 3, 1]) == "1,3"
    assert format_ids([]) == ""


# --------------------------------------------------------------------------- state filter


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PENDING", {JobState.PENDING}),
        ("p", {JobState.PENDING}),
        ("Running", {JobState.RUNNING, JobState.CONFIGURING}),
        ("R", {JobState.RUNNING, JobState.CONFIGURING}),
        ("suspended", {JobState.SUSPENDED}),
        ("S", {JobState.SUSPENDED}),
        ("ALL", set(CANCELLABLE)),
        ("all", set(CANCELLABLE)),
        ("P,R", {JobState.PENDING, JobState.RUNNING, JobState.CONFIGURING}),
        ("p,s,p", {JobState.PENDING, JobState.SUSPENDED}),
    ],
)
def test_parse_state_filter_ok(text: str, expected: set[JobState]) -> None:
    assert parse_state_filter(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "X", "COMPLETED", "CONFIGURING", "CF", "P,", ",R", "P,,R", "P, R", " R", "ſ", "PD"],
)
def test_parse_state_filter_errors(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_state_filter(text)
    assert str(info.value) == (
        f'invalid state "{text}": valid states are PENDING, RUNNING, SUSPENDED, ALL'
    )


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TERM", signal.SIGTERM),
        ("SIGTERM", signal.SIGTERM),
        ("sigterm", signal.SIGTERM),
        ("sigusr1", signal.SIGUSR1),
        ("usr2", signal.SIGUSR2),
        ("KILL", signal.SIGKILL),
        ("HUP", signal.SIGHUP),
        ("INT", signal.SIGINT),
        ("CONT", signal.SIGCONT),
        ("STOP", signal.SIGSTOP),
        ("Tstp", signal.SIGTSTP),
        ("9", 9),
        ("1", 1),
        ("64", 64),
    ],
)
def test_parse_signal_ok(text: str, expected: int) -> None:
    assert parse_signal(text) == int(expected)


@pytest.mark.parametrize(
    "text",
    ["", "0", "65", "-9", "1000", "FOO", "SIG", "SIGSIGTERM", "SIG_DFL", "DFL", " TERM",
     "TERM ", "9.0", "ſigterm", "\u0669"],
)  # fmt: skip
def test_parse_signal_errors(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_signal(text)
    assert str(info.value) == f'invalid signal "{text}"'


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 * GiB),
        ("8g", 8 * GiB),
        ("512M", 512 * MiB),
        ("1gb", GiB),
        ("1GB", GiB),
        ("1024K", MiB),
        ("1024kb", MiB),
        ("2T", 2 * TiB),
        ("100", 100 * MiB),
        ("0", 0),
    ],
)
def test_parse_memory_ok(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize(
    "text", ["", "G", "1.5G", "-1G", "1B", "1X", "1 G", " 1G", "1GiB", "1GBB", "1P", "\u0661G"]
)
def test_parse_memory_errors(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(text)
    assert str(info.value) == f'invalid memory size "{text}"'


@pytest.mark.parametrize(
    ("nbytes", "expected"),
    [
        (8 * GiB, "8G"),
        (512 * MiB, "512M"),
        (1536 * MiB, "1536M"),
        (3 * TiB, "3T"),
        (1024 * TiB, "1024T"),
        (0, "0"),
        (MiB + MiB // 2, "2M"),
        (MiB + 1, "1M"),
        (1, "1M"),
        (1536 * KiB, "2M"),
    ],
)
def test_format_memory(nbytes: int, expected: str) -> None:
    assert format_memory(nbytes) == expected


def test_format_memory_negative() -> None:
    with pytest.raises(ValueError):
        format_memory(-1)


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from([MiB, GiB, TiB]))
def test_memory_round_trip(n: int, unit: int) -> None:
    assert parse_memory(format_memory(n * unit)) == n * unit


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", 30 * 60),
        ("90", 90 * 60),
        ("5:30", 5 * 60 + 30),
        ("0:05", 5),
        ("1:02:03", 3723),
        ("48:00:00", 48 * 3600),
        ("2-3", 2 * 86400 + 3 * 3600),
        ("2-03:04", 2 * 86400 + 3 * 3600 + 4 * 60),
        ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("0-0:0:1", 1),
        ("UNLIMITED", None),
        ("unlimited", None),
        ("INFINITE", None),
        ("Infinite", None),
    ],
)
def test_parse_time_limit_ok(text: str, expected: int | None) -> None:
    assert parse_time_limit(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "0", "00", "0:00", "0:0:0", "0-0", "0-00:00:00", "-1", "1:60", "1:00:60",
        "1:60:00", "1-24", "1-00:60", "1:2:3:4", "1-2-3", "1-", "-1:00", ":30", "30:",
        "1.5", " 30", "30 ", "abc", "1h", "UNLIMITEDX", "unlımıted", "\u0661",
    ],
)  # fmt: skip
def test_parse_time_limit_errors(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_time_limit(text)
    assert str(info.value) == f'invalid time limit "{text}"'


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "UNLIMITED"),
        (float("inf"), "UNLIMITED"),
        (0, "0:00"),
        (5, "0:05"),
        (5.9, "0:05"),
        (-3, "0:00"),
        (65, "1:05"),
        (3599, "59:59"),
        (3600, "1:00:00"),
        (3723, "1:02:03"),
        (86399, "23:59:59"),
        (86400, "1-00:00:00"),
        (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2-03:04:05"),
        (400 * 86400, "400-00:00:00"),
    ],
)
def test_format_duration(seconds: float | None, expected: str) -> None:
    assert format_duration(seconds) == expected


def test_format_duration_nan() -> None:
    with pytest.raises(ValueError):
        format_duration(float("nan"))


@given(st.integers(min_value=1, max_value=10**9))
def test_time_round_trip(seconds: int) -> None:
    assert parse_time_limit(format_duration(seconds)) == seconds


# --------------------------------------------------------------------------- nodes


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("crane01", ["crane01"]),
        ("crane[01-03],gpu07", ["crane01", "crane02", "crane03", "gpu07"]),
        ("gpu07,crane[1-2]", ["gpu07", "crane1", "crane2"]),
        ("n[1,3-4]", ["n1", "n3", "n4"]),
        ("a,a", ["a"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("node-1.cluster_x", ["node-1.cluster_x"]),
    ],
)
def test_expand_nodes_ok(expr: str, expected: list[str]) -> None:
    assert expand_nodes(expr) == expected


@pytest.mark.parametrize(
    "expr",
    ["", ",", "a,", ",a", "a,,b", "a b", " a", "a[", "a]", "a[3-1]", "a[]", "a[1,,2]",
     "a[1-1000000]", "a/b", "a\n"],
)  # fmt: skip
def test_expand_nodes_errors(expr: str) -> None:
    with pytest.raises(ValueError) as info:
        expand_nodes(expr)
    assert str(info.value) == f'invalid node list "{expr}"'


def test_compress_nodes() -> None:
    assert compress_nodes([]) == ""
    assert compress_nodes(["crane01", "crane02", "crane03", "gpu07"]) == "crane[01-03],gpu07"
    assert compress_nodes(["gpu07"]) == "gpu07"
    with pytest.raises(ValueError):
        compress_nodes(["a,b"])
    with pytest.raises(ValueError):
        compress_nodes(["a[1]"])


hostnames = st.builds(
    lambda prefix, n, width: f"{prefix}{n:0{width}d}",
    st.sampled_from(["crane", "gpu", "n", "rack1-n"]),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=1, max_value=4),
) | st.sampled_from(["login", "head.example"])


@given(st.lists(hostnames, min_size=1, max_size=40))
def test_nodes_round_trip(names: list[str]) -> None:
    compressed = compress_nodes(names)
    assert sorted(expand_nodes(compressed)) == sorted(set(names))


# --------------------------------------------------------------------------- booleans


@pytest.mark.parametrize("text", ["true", "TRUE", "Yes", "1", "on", "ON"])
def test_parse_bool_true(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["false", "False", "NO", "0", "off", "Off"])
def test_parse_bool_false(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "y", "n", "2", "truthy", " true", "ye", "oN "])
def test_parse_bool_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(text)
