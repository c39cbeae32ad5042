"""sbatch: Slurm's sbatch onto cbatch (crane.slurm.translate).

A script file, a script on standard input, or ``--wrap``; ``#SBATCH`` lines
(and ``#CBATCH`` ones, in Crane's syntax) at the top of the script, the
command line winning. As Slurm: the output goes to ``slurm-%j.out``
(``slurm-%A_%a.out`` for an array) in the working directory, opened in
truncate mode, unless ``-o``/``--open-mode`` say otherwise; ``Submitted
batch job N`` (``--parsable``: ``N``); ``-W/--wait`` waits for the job and
exits with its exit code; every error exits 1."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stdout

from crane.slurm.translate import (
    IGNORE,
    LOCAL,
    MAP,
    NONE,
    REFUSE,
    VERSION,
    Opt,
    TranslateError,
    batch_file,
    given,
    help_text,
    input_env,
    main_guard,
    parse,
    run_crane,
    table,
    to_crane,
)

TYPE_CHECKING = False  # typing costs a command ~3 ms to import
if TYPE_CHECKING:
    from typing import Any

PROG = "sbatch"

OWN: list[Opt] = [
    Opt(("--parsable",), value=NONE, kind=LOCAL),
    Opt(("--wrap",), kind=LOCAL),
    Opt(("-W", "--wait"), value=NONE, kind=LOCAL),
    Opt(("-h", "--help"), value=NONE, kind=LOCAL),
    Opt(("--usage",), value=NONE, kind=LOCAL),
    Opt(("-V", "--version"), value=NONE, kind=LOCAL),
    Opt(("-o", "--output"), kind=MAP, mapper=batch_file("--output")),
    Opt(("-e", "--error"), kind=MAP, mapper=batch_file("--error")),
    Opt(("-a", "--array")),
    Opt(("--signal",)),
    Opt(("--open-mode",)),
    Opt(("--test-only",), value=NONE, kind=REFUSE, reason="Crane cannot tell a start time in advance"),
    Opt(("-i", "--input"), kind=REFUSE, reason="a batch job's stdin is /dev/null"),
    Opt(("--export-file",), kind=REFUSE, reason="use --export"),
    Opt(("--ignore-pbs",), value=NONE, kind=IGNORE, reason="#PBS lines are never read"),
    Opt(("--batch",), kind=REFUSE, reason="no node features"),
    Opt(("--wait-all-nodes",), kind=IGNORE, reason="a job starts once all its nodes run it"),
]
ROWS = table(OWN)

USAGE = "[OPTIONS] [SCRIPT]   (or --wrap=COMMAND, or a script on standard input)"
INTRO = ("Submit a batch script to Crane, as Slurm's sbatch: the options (command line, then the script's "
         "#SBATCH lines, then its #CBATCH lines in cbatch's syntax) are translated onto cbatch. "
         "Output: slurm-%j.out (slurm-%A_%a.out for arrays), truncated, unless -o/--open-mode say otherwise.")  # fmt: skip
EPILOG = ("Exit codes: 0 submitted (with -W: the job's exit code); 1 any error.\n"
          "Input variables: SBATCH_PARTITION, _ACCOUNT, _QOS, _TIMELIMIT, _JOB_NAME, _EXPORT, _OPEN_MODE, _GRES, "
          "_GPUS, _MEM_PER_CPU, _MEM_PER_NODE, _CPUS_PER_TASK, _NTASKS_PER_NODE, _ARRAY_INX, _EXCLUSIVE, _HOLD "
          "(over #SBATCH lines, under the command line).\n"
          "Crane's own extras (cbatch): --repeat N, --json, -C/--config.")  # fmt: skip


def directives(script: str) -> tuple[list[str], list[str]]:
    """The ``#SBATCH`` words and the ``#CBATCH`` words at the top of a script
    (before its first command), each in the script's order."""
    slurm: list[str] = []
    crane: list[str] = []
    lines = script.splitlines()
    for line in lines[1:] if script.startswith("#!") else lines:
        s = line.strip()
        if not s:
            continue
        for tag, out in (("#SBATCH", slurm), ("#CBATCH", crane)):
            if s.startswith(tag) and (len(s) == len(tag) or s[len(tag)].isspace()):
                import shlex  # here: it costs ~5 ms (re), and --wrap needs none

                try:
                    out += shlex.split(s[len(tag) :].split(" #", 1)[0])
                except ValueError as e:
                    raise TranslateError(f"bad {tag} line {s!r}: {e}") from None
                break
        else:
            if not s.startswith("#"):
                break
    return slurm, crane


def read_script(path: str | None) -> str | None:
    """The script's text: the file, else standard input; None with --wrap."""
    if path is None:
        from crane.cli.cbatch import read_stdin_script

        text = read_stdin_script()
        if text is None:
            raise TranslateError("Batch script is empty!")
        return text
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        raise TranslateError(f"Unable to open file {path}") from None


def plan(argv: list[str], script_text: str | None = None, environ: Any = None) -> dict[str, Any]:
    """What sbatch does with ``argv`` (pure but for reading the script):
    the cbatch words, where the script comes from, and sbatch's own options.
    ``script_text``: the script already read (tests, standard input);
    ``environ``: for the SBATCH_* input variables."""
    line = parse(argv, ROWS)
    own = line.local()
    path = line.rest[0] if line.rest else None
    if len(line.rest) > 1:
        raise TranslateError("arguments after the script are not supported by Crane (pass them in the script)")
    wrap = own.get("wrap")
    if wrap is not None and path is not None:
        raise TranslateError("a script and --wrap cannot be used together")
    text = None
    if wrap is None:
        text = script_text if script_text is not None else read_script(path)
        if text is None or not text.strip():
            raise TranslateError("Batch script is empty!")
        if not text.startswith("#!"):
            raise TranslateError("This does not look like a batch script.  The first line must start with "
                                 "#! followed by the path to an interpreter.")  # fmt: skip
        if "\r\n" in text:
            raise TranslateError("Batch script contains DOS line breaks (\\r\\n) instead of expected UNIX line breaks (\\n).")
        if "\0" in text:
            raise TranslateError("The batch script contains a NULL character")
    slurm_words, crane_words = directives(text) if text is not None else ([], [])
    script = parse(slurm_words, ROWS)
    for opt, _, _ in script.options:
        if opt.kind == LOCAL and opt.key in ("help", "usage", "version", "wrap"):
            raise TranslateError(f"{opt.long} cannot be given in an #SBATCH line")
    if script.rest:
        raise TranslateError(f"bad #SBATCH line: {script.rest[0]!r} is not an option")
    own = {**script.local(), **own}
    words = crane_words + to_crane(script) + input_env("SBATCH", environ or {}) + to_crane(line)
    if not given(words, "-o", "--output"):
        array = given(words, "-a", "--array")
        words += ["--output", "slurm-%A_%a.out" if array else "slurm-%j.out"]
    if not given(words, "--open-mode"):
        words += ["--open-mode", "truncate"]
    if path is None and wrap is None and not given(words, "-J", "--job-name"):
        words += ["--job-name", "sbatch"]  # Slurm's name for a script on stdin
    if wrap is not None:
        words += ["--wrap", wrap]
    return {"words": words, "path": path, "text": text, "own": own}


def body(argv: list[str]) -> int:
    first = parse(argv, ROWS).local()  # --help and --version before reading any script
    if first.get("help") or first.get("usage"):
        print(help_text(PROG, "cbatch", USAGE, INTRO, ROWS, EPILOG), end="")
        return 0
    if first.get("version"):
        print(VERSION)
        return 0
    p = plan(argv, environ=os.environ)
    from crane.cli import cbatch

    words = ["--json", *p["words"]]
    saved_stdin = sys.stdin
    if p["path"] is None and p["own"].get("wrap") is None:
        sys.stdin = io.StringIO(p["text"])  # cbatch reads "-" from here
        words.append("-")
    elif p["path"] is not None:
        words += ["--", p["path"]]
    out = io.StringIO()
    got: list[int] = []  # the ids, when cbatch's click-free path took the line (no JSON to read back)
    o = cbatch.fast_parse(words)

    def fast() -> int:
        assert o is not None
        o.pop("as_json")
        got.extend(cbatch.submitted(o.pop("script"), o.pop("wrap"), o.pop("repeat"), o.pop("config"), o))
        return 0

    try:
        with redirect_stdout(out):
            run_crane(cbatch.make_command, words, PROG, "cbatch", None if o is None else fast)
    finally:
        sys.stdin = saved_stdin
    job_id = got[0] if got else job_id_of(out.getvalue())
    if p["own"].get("parsable"):
        print(job_id, flush=True)
    else:
        print(f"Submitted batch job {job_id}", flush=True)
    if p["own"].get("wait"):
        return wait(job_id)
    return 0


def job_id_of(cbatch_json: str) -> int:
    """The job id in what ``cbatch --json`` printed."""
    import json

    try:
        return int(json.loads(cbatch_json)["job_id"])
    except (ValueError, KeyError, TypeError):
        raise TranslateError(f"unexpected answer from cbatch: {cbatch_json.strip()[:200]!r}") from None


def wait(job_id: int) -> int:
    """-W/--wait: until the job (an array: every task) has ended; its exit
    code (the largest of the tasks'; 128+N for signal N; 1 for a job that
    failed without one)."""
    from crane.cli.common import call, call_until_answered, load_config
    from crane.core import messages as m
    from crane.core.states import JobState

    cfg = load_config(None)
    active = call(cfg, m.QueryJobs({})).get("jobs") or []
    ids = sorted({job_id} | {int(j["job_id"]) for j in active if j.get("array_job_id") == job_id})
    call_until_answered(cfg, m.WaitJobs(ids))
    jobs = call(cfg, m.QueryJobs({"jobs": ids}, history=True)).get("jobs") or []
    codes = [1] * (len(ids) - len({j.get("job_id") for j in jobs}))  # a job the history lacks: failed
    for job in jobs:
        code, sig = int(job.get("exit_code") or 0), int(job.get("exit_signal") or 0)
        codes.append(128 + sig if sig else 1 if code == 0 and job.get("state") != JobState.COMPLETED else code)
    return max(codes, default=1)


def main() -> None:
    main_guard(PROG, body)


if __name__ == "__main__":
    main()
