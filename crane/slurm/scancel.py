"""scancel: Slurm's scancel onto Crane's Cancel request (the one ccancel sends).

Ids: ``J``, ``J.S`` (Slurm's step numbers: ``J.batch`` is Crane's step 1,
``J.0`` its step 2: crane.slurm.ids), ``A_T`` and ``A_[T1-T2,...]`` (array
tasks; ``A`` alone is every task of array A). Filters ``-u -A -p -q -t -n
-w --me``; ``-s/--signal`` signals instead of cancelling: by default the
job's steps but not its batch shell (Slurm's rule), ``-b`` the batch shell
only, ``-f`` every step and the shell.

Output and exit codes are Slurm's (22.05): nothing on success. With ids
only, a job that does not exist or has ended is not an error (silent, exit
0; ``-v`` says so). With a filter, ``-s``, ``-b``, ``-i`` or a step id, such
an id is ``scancel: error: Kill job error on job id J: Invalid job id
specified`` and exit 1. A job of another user: ``... Access/permission
denied``, exit 1. ``-Q`` prints no errors (the exit code still tells)."""

from __future__ import annotations

import os
import re
import signal
import sys

from crane.core.states import JobState
from crane.slurm.ids import crane_step
from crane.slurm.translate import (
    IGNORE,
    LOCAL,
    NONE,
    REFUSE,
    VERSION,
    Opt,
    TranslateError,
    main_guard,
    parse,
)

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

PROG = "scancel"

ROWS: list[Opt] = [
    Opt(("-s", "--signal"), kind=LOCAL),
    Opt(("-b", "--batch"), value=NONE, kind=LOCAL),
    Opt(("-f", "--full"), value=NONE, kind=LOCAL),
    Opt(("-u", "--user"), kind=LOCAL),
    Opt(("--me",), value=NONE, kind=LOCAL),
    Opt(("-A", "--account"), kind=LOCAL),
    Opt(("-p", "--partition"), kind=LOCAL),
    Opt(("-q", "--qos"), kind=LOCAL),
    Opt(("-t", "--state"), kind=LOCAL),
    Opt(("-n", "--name", "--jobname"), kind=LOCAL, dest="name"),
    Opt(("-w", "--nodelist"), kind=LOCAL),
    Opt(("-i", "--interactive"), value=NONE, kind=LOCAL),
    Opt(("-Q", "--quiet"), value=NONE, kind=LOCAL),
    Opt(("-v", "--verbose"), value=NONE, kind=LOCAL),
    Opt(("-H", "--hurry"), value=NONE, kind=IGNORE, reason="no burst buffer to stage out"),
    Opt(("--ctld",), value=NONE, kind=IGNORE, reason="every request goes to the controller"),
    Opt(("-R", "--reservation"), kind=REFUSE, reason="no reservations"),
    Opt(("--wckey",), kind=REFUSE, reason="no workload characterization keys"),
    Opt(("-M", "--clusters", "--cluster"), kind=REFUSE, reason="one cluster"),
    Opt(("--sibling",), kind=REFUSE, reason="no federation"),
    Opt(("-h", "--help"), value=NONE, kind=LOCAL),
    Opt(("--usage",), value=NONE, kind=LOCAL),
    Opt(("-V", "--version"), value=NONE, kind=LOCAL),
]

HELP = """\
Usage: scancel [OPTIONS] [JOB_ID[_ARRAY_ID][.STEP_ID]]...

Cancel or signal jobs, array tasks and steps, as Slurm's scancel (onto Crane's
cancel, the one ccancel sends). Step ids are Slurm's: J.batch is the batch
shell (Crane's step J.1), J.0 the first srun step (Crane's J.2), ...

  -s, --signal=SIG       send SIG (USR1, TERM, 10, ...) instead of cancelling;
                         by default to the job's steps, not its batch shell
  -b, --batch            the signal (default KILL) to the batch shell only
  -f, --full             the signal to the batch shell and every step
  -u, --user=USER        only jobs of USER (a name or a uid)
      --me               only my jobs
  -A, --account=ACCOUNT  only jobs of ACCOUNT
  -p, --partition=PART   only jobs in PART
  -q, --qos=QOS          only jobs of QOS
  -t, --state=STATES     only jobs in these states (PENDING, RUNNING, SUSPENDED)
  -n, --name=NAME        only jobs named NAME
  -w, --nodelist=NODES   only jobs on these nodes (crane[01-02])
  -i, --interactive      ask before each job
  -Q, --quiet            no error messages (the exit code still tells)
  -v, --verbose          say what is done, and the errors Slurm keeps quiet
  -H, --hurry            accepted (no burst buffers)
  -V, --version          print the version
  -h, --help             this help
Refused (not supported by Crane): -R/--reservation, --wckey, -M/--clusters, --sibling.

Input variables (the command line wins): SCANCEL_ACCOUNT, _BATCH, _FULL,
_INTERACTIVE, _NAME, _PARTITION, _QOS, _STATE, _USER, _VERBOSE.

Exit codes (Slurm's): 0 done, or only ids that do not exist or have ended
(given with no filter, signal, -b, -i or step id); 1 any error.

Crane's extras are ccancel's: ccancel --wait (return once the jobs have
ended and their processes are gone), --end-state FINISHED, --force (SIGKILL
at once), --graceful, --grace SECONDS, -m/--message, --dry-run, --json, and
one "Failed to cancel job: J. Reason: ..." line per id it could not cancel.
"""

ARRAY_RE = re.compile(r"(\d+)_(\d+|\[[0-9,\-]+\])$")


class Target:
    """One id as the user wrote it, and what it names (a plain class:
    dataclasses costs a command ~8 ms to import)."""

    __slots__ = ("text", "job", "tasks", "step", "found")

    def __init__(self, text: str, job: int, tasks: list[int] | None = None, step: int | None = None,
                 found: list[int] | None = None) -> None:  # fmt: skip
        self.text = text  # as written: 12, 12_3, 12.0, 12.batch
        self.job = job  # the job id, or the array id for A_T
        self.tasks = tasks  # array task indexes (A_T, A_[..])
        self.step = step  # Crane's step number
        self.found: list[int] = [] if found is None else found  # the active jobs it names

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return f"Target({self.text!r}, {self.job}, tasks={self.tasks}, step={self.step}, found={self.found})"


def parse_id(text: str) -> Target:
    """``J``, ``J.S``, ``A_T``, ``A_[1-3,5]``, with ``.S`` (``batch`` or a number)."""
    base, dot, step = text.partition(".")
    t = Target(text, 0)
    if dot:
        try:
            t.step = crane_step(step)
        except ValueError:
            raise TranslateError(f"Invalid job id {text}") from None
    m = ARRAY_RE.fullmatch(base)
    if m is not None:
        t.job, t.tasks = int(m.group(1)), expand_tasks(m.group(2), text)
    elif base.isdigit() and len(base) <= 10:
        t.job = int(base)
    else:
        raise TranslateError(f"Invalid job id {text}")
    if t.job <= 0:
        raise TranslateError(f"Invalid job id {text}")
    return t


def expand_tasks(spec: str, text: str) -> list[int]:
    out: list[int] = []
    for part in spec.strip("[]").split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise TranslateError(f"Invalid job id {text}")
        a, b = int(lo), int(hi) if dash else int(lo)
        if b < a or b - a > 1_000_000:
            raise TranslateError(f"Invalid job id {text}")
        out += range(a, b + 1)
    return out


def resolve(targets: list[Target], jobs: list[dict[str, Any]]) -> None:
    """Each target's active jobs: the job, or for an array id every task of
    it, or the named tasks of A_T."""
    by_id = {j["job_id"]: j for j in jobs}
    by_array: dict[int, list[dict[str, Any]]] = {}
    for j in jobs:
        if j.get("array_job_id"):
            by_array.setdefault(int(j["array_job_id"]), []).append(j)
    for t in targets:
        if t.tasks is not None:
            wanted = set(t.tasks)
            t.found = sorted(j["job_id"] for j in by_array.get(t.job, []) if j.get("array_task_id") in wanted)
        else:
            found = {j["job_id"] for j in by_array.get(t.job, [])} if t.step is None else set()
            if t.job in by_id:
                found.add(t.job)
            t.found = sorted(found)


def filters_of(o: dict[str, Any]) -> dict[str, Any]:
    """Crane's cancel filters from scancel's options."""
    from crane.core.ids import CANCELLABLE, expand_nodes, parse_job_states

    f: dict[str, Any] = {}
    user = o.get("user")
    if o.get("me"):
        user = current_user()
    if user is not None:
        if user.isdigit():
            import pwd

            try:
                user = pwd.getpwuid(int(user)).pw_name
            except KeyError:
                raise TranslateError(f"Invalid user id: {user}") from None
        f["user"] = user
    for key in ("account", "partition", "qos", "name"):
        if o.get(key) is not None:
            f[key] = o[key]
    if o.get("state") is not None:
        try:
            f["states"] = sorted(str(s) for s in parse_job_states(o["state"], CANCELLABLE))
        except ValueError:
            raise TranslateError(f"Invalid job state specified: {o['state']}") from None
    if o.get("nodelist") is not None:
        try:
            f["nodes"] = expand_nodes(o["nodelist"])
        except ValueError as e:
            raise TranslateError(str(e)) from None
    return f


def current_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def slurm_reason(reason: str) -> str | None:
    """Slurm's error text for a refusal; None: Slurm says nothing (an id a
    filter left out)."""
    if reason.startswith(("Job not found", "Step not found")):
        return "Invalid job id specified"
    if reason.startswith("Job already finished"):
        return "Job/step already completing or completed"
    if reason == "Permission denied":
        return "Access/permission denied"
    if reason == "Job does not match the filters":
        return None
    if reason.startswith("Job is PENDING"):
        return "Job is pending execution"
    return reason


class Output:
    def __init__(self, quiet: bool, verbose: bool) -> None:
        self.quiet, self.verbose, self.rc = quiet, verbose, 0

    def error(self, text: str, counts: bool = True) -> None:
        from crane.core.text import safe

        if counts:
            self.rc = 1
        if not self.quiet:
            print(safe(f"{PROG}: error: {text}"), file=sys.stderr, flush=True)

    def info(self, text: str) -> None:
        from crane.core.text import safe

        if self.verbose and not self.quiet:
            print(safe(f"{PROG}: {text}"), file=sys.stderr, flush=True)


#: SCANCEL_* input variables (the command line wins): option key, is a flag
INPUT_ENV = {"ACCOUNT": ("account", False), "BATCH": ("batch", True), "FULL": ("full", True),
             "INTERACTIVE": ("interactive", True), "NAME": ("name", False), "PARTITION": ("partition", False),
             "QOS": ("qos", False), "STATE": ("state", False), "USER": ("user", False),
             "VERBOSE": ("verbose", True)}  # fmt: skip


def with_input_env(o: dict[str, Any], environ: Any) -> dict[str, Any]:
    out = dict(o)
    for suffix, (key, flag) in INPUT_ENV.items():
        value = environ.get(f"SCANCEL_{suffix}")
        if value and key not in out:
            out[key] = True if flag else value
    return out


def body(argv: list[str]) -> int:
    line = parse(argv, ROWS, stop_at_word=False)
    o = with_input_env(line.local(), os.environ)
    if o.get("help") or o.get("usage"):
        print(HELP, end="")
        return 0
    if o.get("version"):
        print(VERSION)
        return 0
    for opt, _, _spelling in line.options:
        if opt.kind == REFUSE:
            raise TranslateError(f"{opt.long} is not supported by Crane ({opt.reason})")
    words = [w for arg in line.rest for w in split_ids(arg)]
    targets = [parse_id(w) for w in words]
    filters = filters_of(o)
    signo = None
    if o.get("signal") is not None:
        from crane.core.ids import parse_signal

        try:
            signo = parse_signal(o["signal"])
        except ValueError:
            raise TranslateError(f"Unknown job signal: {o['signal']}") from None
    if not targets and not filters:
        raise TranslateError("No job identification provided")
    out = Output(bool(o.get("quiet")), bool(o.get("verbose")))
    plain = not filters and not o.get("batch") and not o.get("interactive") and signo is None \
        and all(t.step is None for t in targets)  # fmt: skip
    from crane.cli.common import call, load_config
    from crane.core.wire import Request

    # crane.core.messages' Cancel and QueryJobs as wire Requests: the classes cost ~20 ms to import
    cfg = load_config(None)
    jobs = call(cfg, Request("QueryJobs", {"filters": {}})).get("jobs") or []
    resolve(targets, jobs)
    by_id = {j["job_id"]: j for j in jobs}
    # a cancel: no signal, or -s KILL (Slurm cancels the job then); -b signals the batch shell (default KILL)
    kill = not o.get("batch") and (signo is None or signo == signal.SIGKILL)
    o["kill"] = kill
    if not targets and not kill:
        # a signal or -b with filters only: the jobs they select, then each one's steps as for an id
        found = call(cfg, Request("Cancel", {"filters": filters, "dry_run": True})).get("would_cancel") or []
        targets = [Target(display_id(by_id.get(j["job_id"]), j["job_id"]), j["job_id"], found=[j["job_id"]])
                   for j in found]  # fmt: skip
        filters = {}
        if not targets:
            return out.rc
    ids: list[list[int | None]] = []
    label: dict[tuple[int, int | None], str] = {}
    for t in targets:
        if not t.found:
            if plain:
                out.info(f"error: Kill job error on job id {t.text}: Invalid job id specified")
            elif t.step is None:
                out.error(f"Kill job error on job id {t.text}: Invalid job id specified")
            else:
                out.error(f"Kill job error on job step id {t.text}: Invalid job id specified")
            continue
        for jid in t.found:
            job = by_id.get(jid)
            name = t.text if len(t.found) == 1 else display_id(job, jid)
            if t.step is None and not kill and not o.get("batch") and not o.get("full") \
                    and (job or {}).get("state") == JobState.PENDING:  # fmt: skip
                out.error(f"Kill job error on job id {name}: Job is pending execution")
                continue
            for item in cancel_items(jid, t.step, job, o):
                if (item[0], item[1]) not in label:
                    label[(item[0], item[1])] = name if item[1] is None or t.step is not None else f"{name}.{step_name(item[1])}"
                    ids.append(item)
    if not ids and targets:  # ids that all name nothing select nothing (never every job the filters match)
        return out.rc
    if o.get("interactive"):
        ids = confirm(cfg, ids, filters, by_id, label)
        if not ids:
            return out.rc
    sig = None if kill else (signo if signo is not None else int(signal.SIGKILL))
    res = call(cfg, Request("Cancel", {"ids": ids, "filters": filters, "signal": sig,
                                       "force": signo == signal.SIGKILL and kill}))  # fmt: skip
    for c in res.get("cancelled") or []:
        for s in c.get("steps") or [None]:
            what = label.get((c["job_id"], s)) or display_id(by_id.get(c["job_id"]), c["job_id"], s)
            kind = "job" if s is None else "step"
            out.info(f"Terminating {kind} {what}" if kill else f"Signal {sig} to {kind} {what}")
    for f in res.get("not_cancelled") or []:
        key = (f["job_id"], f.get("step_id"))
        what = label.get(key) or display_id(by_id.get(f["job_id"]), f["job_id"], f.get("step_id"))
        text = slurm_reason(str(f.get("reason") or ""))
        if text is None:
            continue
        gone = text in ("Invalid job id specified", "Job/step already completing or completed")
        head = "job step id" if f.get("step_id") else "job id"
        if plain and gone:
            out.info(f"error: Kill job error on {head} {what}: {text}")
        else:
            out.error(f"Kill job error on {head} {what}: {text}")
    if filters and not targets and not res.get("cancelled") and not res.get("not_cancelled"):
        shown = " ".join(f"{k}={v}" for k, v in sorted(filters.items()))
        out.info(f"error: No active jobs match ALL job filters, including: {shown}")
    return out.rc


def split_ids(arg: str) -> list[str]:
    """Ids in one argument: separated by commas or spaces, a bracketed task
    list (``12_[1,3]``) kept whole."""
    out, cur, depth = [], "", 0
    for c in arg:
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        if depth == 0 and (c == "," or c.isspace()):
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += c
    if cur:
        out.append(cur)
    return out


def step_name(step: int) -> str:
    from crane.slurm.ids import slurm_step

    return slurm_step(step)


def display_id(job: dict[str, Any] | None, job_id: int, step: int | None = None) -> str:
    from crane.slurm.ids import slurm_job_id

    base = slurm_job_id(job_id, int((job or {}).get("array_job_id") or 0), (job or {}).get("array_task_id"))
    return base if step is None else f"{base}.{step_name(step)}"


def cancel_items(job_id: int, step: int | None, job: dict[str, Any] | None,
                 o: dict[str, Any]) -> list[list[int | None]]:  # fmt: skip
    """What to send for one job: a step id as given; else the whole job
    (a cancel, ``-f``), the batch shell (``-b``), or for a signal the job's
    running steps other than the batch shell (Slurm's default)."""
    if step is not None:
        return [[job_id, step]]
    if o.get("batch") and not o.get("full"):
        return [[job_id, 1]]
    if o.get("kill", True) or o.get("full"):
        return [[job_id, None]]
    steps = [s["step_id"] for s in (job or {}).get("steps") or []
             if s.get("step_id", 0) > 1 and s.get("state") == JobState.RUNNING]  # fmt: skip
    return [[job_id, s] for s in steps]


def confirm(cfg: Any, ids: list[list[int | None]], filters: dict[str, Any], by_id: dict[int, dict[str, Any]],
            label: dict[tuple[int, int | None], str]) -> list[list[int | None]]:  # fmt: skip
    """-i: ``Cancel job_id=J name=N partition=P [y/n]? `` for each; the ids confirmed."""
    from crane.cli.common import call
    from crane.core.text import safe
    from crane.core.wire import Request

    if not ids:  # filters only: the jobs they select
        res = call(cfg, Request("Cancel", {"filters": filters, "dry_run": True}))
        ids = [[j["job_id"], None] for j in res.get("would_cancel") or []]
    chosen: list[list[int | None]] = []
    for item in ids:
        jid, step = int(item[0] or 0), item[1]
        job = by_id.get(jid) or {}
        what = label.get((jid, step)) or display_id(job, jid, step)
        head = f"job_id={what}" if step is None else f"step_id={what}"
        while True:
            sys.stdout.write(safe(f"Cancel {head} name={job.get('name', '')} partition={job.get('partition', '')} [y/n]? "))
            sys.stdout.flush()
            answer = sys.stdin.readline()
            if not answer:
                return chosen
            if answer[:1] in ("y", "Y"):
                chosen.append(item)
                break
            if answer[:1] in ("n", "N"):
                break
    return chosen


def main() -> None:
    main_guard(PROG, body)


if __name__ == "__main__":
    main()
