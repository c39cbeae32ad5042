"""ccancel: cancel jobs and steps by id or by filters (SPEC §5).

One request carries the whole selection; the controller selects, checks
permissions per job and answers once every cancel is on disk. ``--wait``
then blocks until every selected job is terminal and its processes are gone.
"""

from __future__ import annotations

import sys
import time

from crane.cli.common import (
    EXIT_ARGS,
    EXIT_PARTIAL,
    CliError,
    call,
    call_until_answered,
    check_text,
    click_main,
    load_config,
    print_json,
    run,
)
from crane.cli.common import (
    fast_parse as parse_simple,
)
from crane.core.text import safe

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

PROG = "ccancel"


def ids_from_text(text: str) -> list[str]:
    """Job ids read by ``ccancel -``: one per line, comma- or space-separated,
    or the JSON that ``cqueue --json`` (a list of jobs) or ``cbatch --json``
    print."""
    import json

    body = text.strip()
    if body[:1] in ("[", "{"):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # nested too deep: not cqueue's output either
            raise CliError("standard input is not valid JSON", EXIT_ARGS) from None
        return _ids_from_json(data)
    return [tok for line in body.splitlines() for tok in line.replace(",", " ").split()]


def _ids_from_json(data: Any) -> list[str]:
    if isinstance(data, dict):
        for key in ("jobs", "job_ids"):
            if isinstance(data.get(key), list):
                return _ids_from_json(data[key])
        data = [data]
    if not isinstance(data, list):
        raise CliError("no job ids in the JSON on standard input", EXIT_ARGS)
    out: list[str] = []
    for item in data:
        if isinstance(item, dict) and "job_id" in item:
            step = item.get("step_id")
            out.append(f"{item['job_id']}.{step}" if step is not None else str(item["job_id"]))
        elif isinstance(item, int | str) and not isinstance(item, bool):
            out.append(str(item))
        else:
            raise CliError("no job ids in the JSON on standard input", EXIT_ARGS)
    return out


def id_arguments(ids: str | tuple[str, ...] | list[str] | None) -> list[str] | None:
    """The job id arguments: ``22 23,24`` as several words; ``-`` reads them
    from standard input."""
    if ids is None:
        return None
    words = [ids] if isinstance(ids, str) else list(ids)
    if not words:
        return None
    if "-" in words:
        words = [w for w in words if w != "-"] + ids_from_text(sys.stdin.read())
        if not words:
            raise CliError("no job ids on standard input", EXIT_ARGS)
    return words


def plain_job_ids(words: list[str]) -> list[list[int | None]] | None:
    """``[[job, None], ...]`` when every word is a plain job number below 10^9
    (the usual ``ccancel 22 23``), without importing crane.core.ids (its
    regular expressions cost a command ~3 ms); None for anything else, which
    crane.core.ids parses (it gives the same result for plain numbers)."""
    seen: dict[int, None] = {}  # ordered, without duplicates
    for word in words:
        if not (word.isascii() and word.isdigit() and word[0] != "0" and len(word) < 10):
            return None
        seen[int(word)] = None
    return [[job, None] for job in seen]


def parse_selection(ids: str | tuple[str, ...] | list[str] | None,
                    o: dict[str, Any]) -> tuple[list[list[int | None]], dict[str, Any]]:  # fmt: skip
    words = id_arguments(ids) or []
    if words and all(o.get(key) is None for key in ("name", "user", "account", "partition", "qos", "state", "nodes")):
        plain = plain_job_ids(words)
        if plain is not None:
            return plain, {}
    from crane.core.ids import (
        CANCELLABLE,
        IdListError,
        expand_nodes,
        parse_job_refs,
        parse_job_states,
    )

    parsed: list[list[int | None]] = []
    tasks: list[list[int]] = []  # A_T[.S]: the array_tasks filter, [A, T(, S)]
    seen: set[tuple[int, int | None, int | None]] = set()
    for word in words:
        try:
            for j, s, t in parse_job_refs(word):  # J, J.S, A_T, A_T.S (an array id A: every task)
                if (j, s, t) not in seen:
                    seen.add((j, s, t))
                    if t is None:
                        parsed.append([j, s])
                    else:
                        tasks.append([j, t] if s is None else [j, t, s])
        except IdListError as e:
            raise CliError(str(e), EXIT_ARGS) from None
    filters: dict[str, Any] = {}
    if tasks:
        filters["array_tasks"] = tasks
    for key in ("name", "user", "account", "partition", "qos"):
        if o.get(key) is not None:
            filters[key] = o[key]
    if o.get("state") is not None:
        try:
            filters["states"] = sorted(str(s) for s in parse_job_states(o["state"], CANCELLABLE))
        except ValueError as e:
            raise CliError(str(e), EXIT_ARGS) from None
    if o.get("nodes") is not None:
        try:
            filters["nodes"] = expand_nodes(o["nodes"])
        except ValueError as e:
            raise CliError(str(e), EXIT_ARGS) from None
    if not parsed and not filters:
        raise CliError("at least one job id or filter is required", EXIT_ARGS)
    return parsed, filters


def check_combinations(o: dict[str, Any]) -> None:
    if o["force"] and o["graceful"]:
        raise CliError("--force and --graceful cannot be used together")
    if o["signal"] is not None and (o["graceful"] or o["end_state"] is not None):
        raise CliError("--signal cannot be combined with --graceful or --end-state")
    if o["signal"] is not None and o["force"]:
        raise CliError("--signal cannot be combined with --force")
    if o["message"] is not None and len(o["message"]) > 320:
        raise CliError("--message is longer than 320 characters")
    check_text("--message", o["message"])
    if o["grace"] is not None and o["force"]:
        raise CliError("--grace cannot be combined with --force")


def _ref_text(ref: list[int | None]) -> str:
    """``[12, 2]`` -> ``12.2``."""
    return f"{ref[0]}.{ref[1]}" if ref[1] else str(ref[0])


def format_result(res: dict[str, Any], quiet: bool, signal_name: str | None) -> list[str]:
    lines: list[str] = []
    if quiet:  # -Q: nothing, errors included (as scancel -Q); the exit code still tells
        return lines
    whole = [c["job_id"] for c in res["cancelled"] if not c["steps"]]
    ids_text = ",".join(str(i) for i in sorted(set(whole)))  # crane.core.ids.format_ids, not imported: ~4 ms
    if whole:
        if signal_name:
            lines.append(f"Signal {signal_name} sent to job {ids_text}.")
        else:
            lines.append(f"Job {ids_text} cancelled successfully.")
    for c in res["cancelled"]:
        for s in c["steps"]:
            verb = f"Signal {signal_name} sent to" if signal_name else "cancelled successfully"
            lines.append(f"{verb} step {c['job_id']}.{s}." if signal_name else f"Step {c['job_id']}.{s} {verb}.")
    for f in res["not_cancelled"]:
        kind, ident = ("step", f"{f['job_id']}.{f['step_id']}") if f["step_id"] else ("job", str(f["job_id"]))
        if signal_name:
            lines.append(f"Failed to send signal {signal_name} to {kind}: {ident}. Reason: {f['reason']}.")
        else:
            lines.append(f"Failed to cancel {kind}: {ident}. Reason: {f['reason']}.")
    return lines


def wait_terminal(cfg: Any, job_ids: list[int], progress: bool) -> None:
    from crane.core import messages as m

    if not progress:
        call_until_answered(cfg, m.WaitJobs(job_ids))
        return
    # a progress bar on a terminal: poll the queue, then confirm with WaitJobs
    total = len(job_ids)
    wanted = set(job_ids)
    while True:
        data = call(cfg, m.QueryJobs({"jobs": sorted(wanted)}))
        left = len(data["jobs"])
        done = total - left
        bar = "#" * (30 * done // total)
        sys.stderr.write("\r" + safe(f"ccancel: waiting [{bar:<30}] {done}/{total}"))
        sys.stderr.flush()
        if left == 0:
            break
        time.sleep(0.2)  # a progress display refresh, not a wait for a condition
    sys.stderr.write("\n")
    call_until_answered(cfg, m.WaitJobs(job_ids))


# The options, once: (flags, destination, takes a value). Both the click
# command (help, errors, everything) and the fast path are built from this.
SIMPLE_OPTIONS: list[tuple[tuple[str, ...], str, bool]] = [
    (("-n", "--name"), "name", True),
    (("-u", "--user"), "user", True),
    (("-A", "--account"), "account", True),
    (("-p", "--partition"), "partition", True),
    (("-q", "--qos"), "qos", True),
    (("-t", "--state"), "state", True),
    (("-w", "--nodes"), "nodes", True),
    (("-s", "--signal"), "signal_", True),
    (("--force",), "force", False),
    (("--graceful",), "graceful", False),
    (("-m", "--message"), "message", True),
    (("--dry-run", "--whatif"), "dry_run", False),
    (("-i", "--interactive", "--confirm"), "interactive", False),
    (("--wait",), "wait", False),
    (("--json",), "as_json", False),
    (("-C", "--config"), "config", True),
    (("-v", "--verbose"), "verbose", False),
    (("-Q", "--quiet"), "quiet", False),
]
HELP: dict[str, str] = {
    "name": "only jobs with this name",
    "user": "only jobs of this user",
    "account": "only jobs of this account",
    "partition": "only jobs in this partition",
    "qos": "only jobs of this QoS",
    "state": "only jobs in these states: PD,R,S (names or short codes, any case) or ALL",
    "nodes": "only jobs running on these nodes (crane[01-02])",
    "signal_": "send this signal (TERM, USR1, 9...) to running jobs instead of cancelling",
    "force": "kill at once (SIGKILL), without the KillWait grace period",
    "graceful": "SIGTERM to the batch script only; the job ends when it exits",
    "message": "a message recorded with the cancel (at most 320 characters)",
    "dry_run": "list what would be cancelled, cancel nothing",
    "interactive": "ask for each job before cancelling it (needs a terminal)",
    "wait": "return only when every cancelled job has ended and its processes are gone",
    "as_json": "print the result as JSON",
    "config": "the config file (default: $CRANE_CONF, else /etc/crane/config.yaml)",
    "verbose": "say what is selected and how long the controller took",
    "quiet": "print nothing, errors included; the exit code still says what failed",
}
CLICK_ONLY = ("grace", "end_state")  # typed options: the fast path leaves them to click


def fast_parse(argv: list[str]) -> tuple[str | None, dict[str, Any]] | None:
    """Parse the common forms without importing click (it costs ~35 ms of a
    command that should take a few). None: let click handle it (help,
    typed options, anything unusual, and every error message)."""
    parsed = parse_simple(argv, SIMPLE_OPTIONS, CLICK_ONLY, max_args=1)
    if parsed is None:
        return None
    o, args = parsed
    return (args[0] if args else None), o


def make_command() -> Any:
    import click

    from crane.cli.common import EXIT_CODES_EPILOG, help_option_names

    def one_or_many(ctx: Any, param: Any, value: tuple[str, ...]) -> str | tuple[str, ...] | None:
        # one word stays a string (as the fast path gives it); several a tuple
        return None if not value else value[0] if len(value) == 1 else value

    cmd = click.Command(
        "ccancel", callback=lambda job_ids, **o: cancel(job_ids, o),
        help="Cancel jobs or steps, by id and/or by filters.\n\n"
             "JOB_IDS: JOB_ID[.STEP_ID] words, comma- or space-separated (ccancel 22 23,24.1); "
             "an array task is ARRAY_ID_INDEX[.STEP_ID] (ccancel 40_3), an array id alone every "
             "task still active; "
             "- reads them from standard input, one per line or comma-separated, or the JSON "
             "of cqueue --json (cqueue -u alice --json | ccancel -). Filters select among the "
             "jobs not yet ended; an id given with filters must match them.",
        epilog=EXIT_CODES_EPILOG,
        context_settings={"help_option_names": help_option_names()},
        params=[click.Argument(["job_ids"], required=False, nargs=-1, callback=one_or_many)],
    )  # fmt: skip
    for flags, dest, takes in SIMPLE_OPTIONS:
        cmd.params.append(click.Option([*flags, dest], is_flag=not takes, help=HELP[dest]))
    cmd.params.append(click.Option(["--grace"], type=click.FloatRange(0, 86400),
                                   help="seconds between SIGTERM and SIGKILL for this cancel (default: KillWait)"))  # fmt: skip
    from crane.core.states import EndState

    cmd.params.append(click.Option(["--end-state", "end_state"],
                                   type=click.Choice(list(EndState), case_sensitive=False),
                                   help="the state the jobs end in (FINISHED: COMPLETED, as if done)"))  # fmt: skip
    return click.version_option(None, "-V", "--version", package_name="crane", prog_name=PROG,
                                help="print the version and exit")(cmd)  # fmt: skip


def cancel(job_ids: str | tuple[str, ...] | None, o: dict[str, Any]) -> int:
    """Cancel jobs or steps: JOB_ID[.STEP_ID][,JOB_ID[.STEP_ID]...] and/or filters."""
    from crane.core.wire import Request

    o["signal"] = o.pop("signal_")
    check_combinations(o)
    ids, filters = parse_selection(job_ids, o)
    signo = None
    if o["signal"] is not None:
        from crane.core.ids import parse_signal

        try:
            signo = parse_signal(o["signal"])
        except ValueError as e:
            raise CliError(str(e)) from None
    verbose = o["verbose"] and not o["quiet"]
    cfg = load_config(o["config"])
    req = Request("Cancel", dict(  # crane.core.messages.Cancel, without importing the classes
        ids=ids, filters=filters, signal=signo, force=o["force"], graceful=o["graceful"],
        grace=o["grace"], message=o["message"] or "",
        dry_run=o["dry_run"] or o["interactive"],
    ))  # fmt: skip
    if o["end_state"] is not None:  # else the controller's default, CANCELLED
        req.body["end_state"] = o["end_state"].upper()
    if verbose:
        print(safe(f"ccancel: selecting ids={','.join(_ref_text(r) for r in ids) or '-'} filters={filters}"), file=sys.stderr)
    t0 = time.monotonic()
    res = call(cfg, req)
    if o["interactive"] and not o["dry_run"]:
        confirmed = _confirm(cfg, req, res)
        if confirmed is None:
            for line in format_result({"cancelled": [], "not_cancelled": res["not_cancelled"]}, o["quiet"], None):
                print(safe(line))
            print("No jobs cancelled.")
            return EXIT_PARTIAL if res["not_cancelled"] else 0
        res = confirmed
    if req.body["dry_run"]:
        return _print_dry_run(res, o["as_json"], o["quiet"])
    if verbose:
        print(safe(f"ccancel: controller answered in {1000 * (time.monotonic() - t0):.1f} ms "
                   "(every cancel is on disk)"), file=sys.stderr)  # fmt: skip
    if o["wait"] and res["cancelled"]:
        jobs = [c["job_id"] for c in res["cancelled"] if not c["steps"]]
        steps = [c for c in res["cancelled"] if c["steps"]]
        if jobs:
            wait_terminal(cfg, jobs, sys.stderr.isatty() and len(jobs) > 5 and not o["quiet"])
        for c in steps:
            from crane.core import messages as m

            for s in c["steps"]:
                call_until_answered(cfg, m.WaitStep(c["job_id"], s))
        if verbose:
            print(safe(f"ccancel: all selected jobs terminal after {1000 * (time.monotonic() - t0):.1f} ms"),
                  file=sys.stderr)  # fmt: skip
    if o["as_json"]:
        print_json({"cancelled": res["cancelled"], "not_cancelled": res["not_cancelled"], "dry_run": False})
    else:
        for line in format_result(res, o["quiet"], o["signal"] and o["signal"].upper()):
            print(safe(line))
    return EXIT_PARTIAL if res["not_cancelled"] else 0


def _print_dry_run(res: dict[str, Any], as_json: bool, quiet: bool = False) -> int:
    if as_json:
        print_json({
            "cancelled": [{"job_id": j["job_id"], "steps": []} for j in res["would_cancel"]]
            + [{"job_id": s["job_id"], "steps": [s["step_id"]]} for s in res["would_cancel_steps"]],
            "not_cancelled": res["not_cancelled"], "dry_run": True,
        })  # fmt: skip
    else:
        for j in res["would_cancel"]:
            print(safe(f"Would cancel job {j['job_id']} (name={j['name']}, partition={j['partition']}, state={j['state']})."))
        for s in res["would_cancel_steps"]:
            print(safe(f"Would cancel step {s['job_id']}.{s['step_id']} (name={s['name']}, partition={s['partition']}, state={s['state']})."))
        for line in format_result({"cancelled": [], "not_cancelled": res["not_cancelled"]}, quiet, None):
            print(safe(line))
    return EXIT_PARTIAL if res["not_cancelled"] else 0


def _ask(question: str) -> bool:
    """A yes/no question on the terminal; end of input (Ctrl-D) is no."""
    try:
        answer = input(safe(question))
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def _confirm(cfg: Any, req: Any, res: dict[str, Any]) -> dict[str, Any] | None:
    """Ask for each selected job and cancel those confirmed; None: none was."""
    if not sys.stdin.isatty():
        raise CliError("--interactive needs a terminal")
    chosen: list[list[int | None]] = []
    for j in res["would_cancel"]:
        if _ask(f"Cancel job {j['job_id']} ({j['name']}, {j['partition']})? [y/N] "):
            chosen.append([j["job_id"], None])
    for s in res["would_cancel_steps"]:
        if _ask(f"Cancel step {s['job_id']}.{s['step_id']} ({s['name']}, {s['partition']})? [y/N] "):
            chosen.append([s["job_id"], s["step_id"]])
    if not chosen:
        return None
    req.body.update(ids=chosen, filters={}, dry_run=False)
    out = call(cfg, req)
    out["not_cancelled"] = res["not_cancelled"] + out["not_cancelled"]
    return out


def main() -> None:
    parsed = fast_parse(sys.argv[1:])
    if parsed is not None:
        run(PROG, cancel, *parsed)
    click_main(make_command(), PROG)
