"""The side-by-side table of ``python -m bench --with-slurm`` (bench/side_by_side.py):
medians, p99, the ratio, the goal verdicts computed from the floor measured
in the same run, and our column read from the bench's result records. Pure
functions, tested directly."""

from __future__ import annotations

from bench import side_by_side as sbs
from bench.common import Result


def test_p99_is_nearest_rank_and_the_maximum_below_100_samples() -> None:
    assert sbs.p99([]) is None
    assert sbs.p99([5.0]) == 5.0
    assert sbs.p99([3.0, 1.0, 2.0, 50.0]) == 50.0
    xs = [float(i) for i in range(1, 201)]  # 1..200: rank ceil(0.99 * 200) = 198
    assert sbs.p99(xs) == 198.0
    xs = [float(i) for i in range(1, 101)]
    assert sbs.p99(xs) == 99.0


def test_summary_median_and_spread() -> None:
    s = sbs.summary([10.0, 30.0, 20.0, 40.0])
    assert s == {"n": 4, "median": 25.0, "p99": 40.0, "min": 10.0, "max": 40.0}
    assert sbs.summary([]) is None


def test_slow_tail_of_rates_is_the_low_side() -> None:
    assert sbs.slow_tail([10.0, 20.0, 30.0], "jobs/s") == 10.0
    assert sbs.slow_tail([10.0, 20.0, 30.0], "ms") == 30.0


def test_ratio_is_crane_over_slurm() -> None:
    assert sbs.ratio(30.0, 15.0) == 2.0
    assert sbs.ratio(None, 15.0) is None
    assert sbs.ratio(30.0, None) is None
    assert sbs.ratio(30.0, 0.0) is None
    assert sbs.fmt_ratio(2.0, "ms") == "2.0x (slower)"
    assert sbs.fmt_ratio(0.5, "ms") == "0.50x (faster)"
    assert sbs.fmt_ratio(31.25, "jobs/s") == "31.2x (faster)"
    assert sbs.fmt_ratio(0.2, "jobs/s") == "0.20x (slower)"


def test_goal_verdicts_from_the_floor() -> None:
    floor = 25.0
    x13 = sbs.Goal("floor_x", 1.3)  # <= 32.5 ms
    assert sbs.verdict(32.5, x13, floor) == "met"
    assert sbs.verdict(32.6, x13, floor) == "missed"
    plus10 = sbs.Goal("floor_plus", 10)  # <= 35 ms
    assert sbs.verdict(35.0, plus10, floor) == "met"
    assert sbs.verdict(35.1, plus10, floor) == "missed"
    # a floor-relative goal without a floor cannot be judged
    assert sbs.verdict(1.0, x13, None) == "n/a"
    assert sbs.verdict(None, x13, floor) == "n/a"
    assert sbs.verdict(1.0, None, floor) == "n/a"
    # absolute goals do not need it
    assert sbs.verdict(2.9, sbs.Goal("max", 3.0), None) == "met"
    assert sbs.verdict(3.1, sbs.Goal("max", 3.0), None) == "missed"
    assert sbs.verdict(120_000.0, sbs.Goal("min", 100_000.0), None) == "met"
    assert sbs.verdict(99_999.0, sbs.Goal("min", 100_000.0), None) == "missed"
    assert sbs.fmt_goal(x13, "ms", floor) == "<= 1.3 x floor = <= 32.5 ms"
    assert sbs.fmt_goal(plus10, "ms", None) == "<= floor + 10 ms"


def test_cells_show_p99_or_min_max_and_say_how_many_runs() -> None:
    ten = sbs.Figure([float(x) for x in range(10, 20)])
    assert sbs.fmt_figure(ten, "ms") == "14.5 ms (p99 19.0 ms, n=10)"
    two = sbs.Figure([6200.0, 6400.0], "256 running")
    assert sbs.fmt_figure(two, "ms") == "6.30 s (min-max 6.20 s-6.40 s, n=2; 256 running)"
    assert sbs.fmt_figure(sbs.Figure([800.0]), "jobs/s") == "800 jobs/s (1 run)"
    rates = sbs.Figure([float(x) for x in range(20, 32)])
    assert "slow p99 20.0 jobs/s" in sbs.fmt_figure(rates, "jobs/s")
    assert sbs.fmt_figure(None, "ms") == "-"


def test_the_markdown_table_uses_the_floor_of_the_same_run() -> None:
    crane = {
        "floor": sbs.Figure([20.0] * 10),
        "ccancel_wall": sbs.Figure([30.0] * 10),  # <= 1.3 x 20 = 26: missed
        "cqueue_wall": sbs.Figure([29.0] * 10),  # <= 1.5 x 20 = 30: met
    }
    slurm = {"ccancel_wall": sbs.Figure([15.0] * 10)}
    rows = sbs.build_rows(crane, slurm, {"cqueue_wall": ["one job in the queue"]})
    assert [r.key for r in rows] == [k for k, *_ in sbs.SPECS]
    assert sbs.floor_of(rows) == 20.0
    md = sbs.markdown(rows, sbs.floor_of(rows), ["machine X, date Y"])
    lines = md.splitlines()
    assert lines[0] == "machine X, date Y"
    assert lines[2] == "| measure | Slurm | Crane | Crane/Slurm | goal | met? |"
    ccancel = next(line for line in lines if line.startswith("| `ccancel ID`"))
    assert ccancel.split(" | ")[1:] == ["15.0 ms (p99 15.0 ms, n=10)", "30.0 ms (p99 30.0 ms, n=10)",
                                        "2.0x (slower)", "<= 1.3 x floor = <= 26.0 ms", "missed |"]  # fmt: skip
    cqueue = next(line for line in lines if line.startswith("| `cqueue`"))
    assert cqueue.endswith("| - | <= 1.5 x floor = <= 30.0 ms | met |")
    assert "- `cqueue` whole-command wall (Slurm: `squeue`): one job in the queue" in lines
    # a row with no figures on either side still shows up, judged n/a
    dead = next(line for line in lines if line.startswith("| cancel one running job"))
    assert dead.endswith("| - | - | - | <= floor + 10 ms = <= 30.0 ms | n/a |")
    # a faster floor makes the same figure a miss
    js = sbs.to_json(rows, 25.0)
    assert next(r for r in js if r["key"] == "cqueue_wall")["verdict"] == "met"
    assert next(r for r in js if r["key"] == "cqueue_wall")["goal"] == "<= 1.5 x floor = <= 37.5 ms"


def test_crane_figures_from_the_bench_results() -> None:
    def res(key: str, samples: list[float], **kw: object) -> dict[str, object]:
        return Result(key, key, "ms", samples, "", True, None, **kw).to_json()  # type: ignore[arg-type]

    results = [
        res("floor", [20.0, 21.0]),
        res("ccancel_wall", [30.0]),
        res("cancel_cli_visible", [40.0]),
        res("cancel_cli_visible_acct", [41.0]),
        res("cancel_api_done", [5.0]),
        res("cqueue_wall", [], error="boom"),
        res(
            "cancel_pending_user",
            [900.0],
            extra={"n": 100_000, "jobs_per_s": 111_111.1, "all_terminal_s": 0.9},
        ),  # fmt: skip
        res("submit_cbatch_single", [6.0], extra={"per_command_ms": [100.0, 50.0]}),
    ]
    run = Result("cancel_running", "cancel 2000 running jobs on 100 agents (ccancel -t R) until dead",
                 "ms", [1000.0], "", True, None,
                 extra={"jobs_per_s": [2000.0, 1000.0], "recorded_s": [1.0, 2.0]}).to_json()  # fmt: skip
    figs = sbs.crane_figures(results + [run])
    assert figs["floor"].samples == [20.0, 21.0]
    assert figs["visible_queue"].samples == [40.0]
    assert figs["visible_acct"].samples == [41.0]
    assert figs["server_side"].samples == [5.0]
    assert "cqueue_wall" not in figs  # a failed scenario gives no figure
    assert figs["mass_pending"].samples == [111_111.1]
    assert "100,000 held jobs" in figs["mass_pending"].note
    assert figs["cbatch_seq"].samples == [10.0, 20.0]
    assert figs["cancel_running"].samples == [2000.0, 1000.0]
    assert figs["cancel_running"].note.startswith("2000 running jobs on 100 agents")


def test_the_scaling_table_rows_and_rates() -> None:
    pending = [
        {"jobs": 1000, "done_ms": {"samples": [10.0] * 10}, "reply_ms": {"samples": [5.0] * 10}},
        {"jobs": 100_000, "done_ms": {"samples": [900.0, 1100.0, 1000.0]},
         "reply_ms": {"samples": [400.0, 500.0, 600.0]}},
    ]  # fmt: skip
    agents = [
        {
            "agents": 10,
            "jobs": 2000,
            "jobs_per_agent": 200,
            "done_ms": [500.0] * 10,
            "reply_ms": [100.0] * 10,
        },
        {"agents": 1000, "jobs": 2000, "error": "TimeoutError: 1000 nodes up\nafter 120 s"},
    ]
    rows = sbs.scale_rows_pending(pending) + sbs.scale_rows_agents(agents)
    assert [r.size for r in rows] == [
        "1,000 jobs",
        "100,000 jobs",
        "10 agents x 200 jobs",
        "1,000 agents",
    ]
    md = sbs.scaling_markdown(rows, ["heading"]).splitlines()
    assert md[0] == "heading" and md[2].startswith("| scaling | size |")
    assert md[4] == ("| cancel pending jobs by filter | 1,000 jobs | 5.0 ms (p99 5.0 ms, n=10) | "
                     "10.0 ms (p99 10.0 ms, n=10) | 100,000 jobs/s |")  # fmt: skip
    # 3 runs: min-max, not a p99; jobs/s from the median (1 s for 100,000)
    assert md[5].endswith("| 1.00 s (min-max 900 ms-1.10 s, n=3) | 100,000 jobs/s |")
    assert md[6].endswith("| 500 ms (p99 500 ms, n=10) | 4,000 jobs/s |")
    # a failed size says so on one line, and the others stay
    assert (
        md[7]
        == "| cancel running jobs (fake agents) | 1,000 agents | - | FAILED: TimeoutError: 1000 nodes up after 120 s | - |"
    )


def test_with_slurm_and_quick_options() -> None:
    from bench.__main__ import SIDE_GROUPS, parse_args

    plain = parse_args([])
    assert (
        not plain.with_slurm and plain.only == "" and plain.pending == 20_000 and plain.rounds == 20
    )
    side = parse_args(["--with-slurm"])
    assert side.only == ",".join(SIDE_GROUPS) and side.pending == 100_000 and side.rounds == 20
    quick = parse_args(["--with-slurm", "--quick"])
    assert quick.rounds == 3 and quick.pending == 2000 and quick.slurm_running == 16
    # what is given explicitly stays
    mine = parse_args(
        ["--with-slurm", "--quick", "--rounds", "7", "--only=cancel1", "--pending", "500"]
    )
    assert mine.rounds == 7 and mine.only == "cancel1" and mine.pending == 500
