"""One translation layer from Slurm's submission options to Crane's (pure
parsing plus the in-process runner the Slurm-named commands share).

Every Slurm option a command knows is one :class:`Opt` row: passed under the
same or another Crane name, its value mapped, accepted and ignored (with the
reason, shown by ``--help``), refused (``sbatch: error: --X is not supported
by Crane``, exit 1), or handled by the command itself (``local``). An option
in no row is refused as unrecognized, as Slurm does. Values follow getopt's
rules, as Slurm's commands parse them: ``--opt=V``, ``--opt V``, ``-oV``,
``-o V``, clustered short flags (``-lu``), unambiguous long prefixes.

The commands run Crane's click commands in this process (no second
interpreter start) under the Slurm name: every error line starts with
``sbatch:``/``srun:``/``salloc:``, and every failure exits 1, as Slurm's do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

TYPE_CHECKING = False  # typing and dataclasses cost a command ~10 ms to import
if TYPE_CHECKING:
    from typing import Any, NoReturn

PASS, MAP, IGNORE, REFUSE, LOCAL = "pass", "map", "ignore", "refuse", "local"
NONE, REQUIRED, OPTIONAL = 0, 1, 2  # does the option take a value


class TranslateError(Exception):
    """A Slurm command line Crane cannot run: one line, exit 1."""


class Opt:
    """One Slurm option's row (read-only by convention)."""

    __slots__ = ("names", "value", "kind", "crane", "mapper", "reason", "dest")

    def __init__(self, names: tuple[str, ...], value: int = REQUIRED, kind: str = PASS, crane: str = "",
                 mapper: Callable[[str], list[str]] | None = None, reason: str = "", dest: str = "") -> None:  # fmt: skip
        self.names = names  # Slurm's spellings: ("-p", "--partition")
        self.value = value
        self.kind = kind
        self.crane = crane  # PASS: the Crane option (default: the Slurm long name)
        self.mapper = mapper  # MAP: value -> Crane words
        self.reason = reason  # IGNORE / REFUSE: why (shown by --help)
        self.dest = dest  # LOCAL: the key the command reads

    def __repr__(self) -> str:
        return f"Opt({self.names!r}, kind={self.kind!r})"

    @property
    def long(self) -> str:
        return next((n for n in self.names if n.startswith("--")), self.names[0])

    @property
    def key(self) -> str:
        return self.dest or self.long.lstrip("-").replace("-", "_")


class Parsed:
    """A command line: the options in order (``(opt, value, spelling)``) and
    the words left after the first non-option (a script, a command)."""

    __slots__ = ("options", "rest")

    def __init__(self) -> None:
        self.options: list[tuple[Opt, str | None, str]] = []
        self.rest: list[str] = []

    def local(self) -> dict[str, Any]:
        """The LOCAL options' values (a flag: True; the last one wins)."""
        out: dict[str, Any] = {}
        for opt, value, _ in self.options:
            if opt.kind == LOCAL:
                out[opt.key] = True if value is None else value
        return out


def parse(argv: list[str], table: Iterable[Opt], stop_at_word: bool = True) -> Parsed:
    """Parse ``argv`` with getopt's rules. ``stop_at_word``: the first word
    that is not an option ends the options (sbatch's script, srun's
    command); else words may be interspersed (scancel's ids)."""
    rows = list(table)
    by_name = {n: o for o in rows for n in o.names}
    longs = sorted(n for n in by_name if n.startswith("--"))
    out = Parsed()
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            out.rest += argv[i:]
            break
        if not tok.startswith("-") or tok == "-":
            if stop_at_word:
                out.rest += argv[i - 1 :]
                break
            out.rest.append(tok)
            continue
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            opt = by_name.get(name)
            if opt is None:
                matches = {by_name[n] for n in longs if n.startswith(name)}
                if len(matches) != 1:
                    what = "ambiguous" if matches else "unrecognized"
                    raise TranslateError(f"{what} option '{name}'")
                opt = matches.pop()
            if opt.value == NONE and eq:
                raise TranslateError(f"option '{opt.long}' doesn't allow an argument")
            if opt.value == REQUIRED and not eq:
                if i >= len(argv):
                    raise TranslateError(f"option '{opt.long}' requires an argument")
                value, eq = argv[i], "="
                i += 1
            out.options.append((opt, value if eq else None, name))
            continue
        j = 1  # short options, maybe clustered: -lu, -N2, -o file
        while j < len(tok):
            name = "-" + tok[j]
            opt = by_name.get(name)
            if opt is None:
                raise TranslateError(f"invalid option -- '{tok[j]}'")
            attached = tok[j + 1 :]
            if opt.value == NONE:
                out.options.append((opt, None, name))
                j += 1
                continue
            if attached:
                out.options.append((opt, attached, name))
            elif opt.value == REQUIRED:
                if i >= len(argv):
                    raise TranslateError(f"option requires an argument -- '{tok[j]}'")
                out.options.append((opt, argv[i], name))
                i += 1
            else:
                out.options.append((opt, None, name))
            break
    return out


def to_crane(parsed: Parsed, skip: Callable[[Opt], bool] | None = None) -> list[str]:
    """The Crane words for the parsed options (LOCAL and IGNORE ones give
    none; ``skip`` leaves more out). REFUSE raises TranslateError."""
    words: list[str] = []
    for opt, value, spelling in parsed.options:
        if opt.kind == REFUSE:
            shown = opt.long if spelling.startswith("--") or len(opt.names) == 1 else f"{spelling}/{opt.long}"
            raise TranslateError(f"{shown} is not supported by Crane" + (f" ({opt.reason})" if opt.reason else ""))
        if opt.kind in (LOCAL, IGNORE) or (skip is not None and skip(opt)):
            continue
        if opt.kind == MAP:
            assert opt.mapper is not None
            words += opt.mapper(value or "")
        elif value is None:
            words.append(opt.crane or opt.long)
        else:
            words += [opt.crane or opt.long, value]
    return words


def crane_dest(word: str) -> str:
    """A Crane long option's click parameter name: --cpus-per-task -> cpus_per_task."""
    return word.lstrip("-").replace("-", "_")


def given(words: list[str], *names: str) -> bool:
    """Whether Crane words (from the table or a #CBATCH line) set one of ``names``."""
    for w in words:
        for n in names:
            if w == n or (n.startswith("--") and w.startswith(n + "=")) or (len(n) == 2 and w.startswith(n) and len(w) > 2 and not w.startswith("--")):
                return True
    return False


# ---------------------------------------------------------------- value maps


def nodes_value(value: str) -> list[str]:
    """``-N MIN[-MAX]``: Crane allocates exactly MIN nodes."""
    low = value.split("-", 1)[0].strip()
    if not low.isdigit():
        raise TranslateError(f"invalid node count '{value}'")
    return ["--nodes", low]


def exclusive_value(value: str) -> list[str]:
    """``--exclusive[=user|mcs|topo]``: whole nodes either way."""
    return ["--exclusive"]


def gpus_per_node_value(value: str) -> list[str]:
    """``--gpus-per-node=[TYPE:]N`` is Crane's ``--gres gpu:[TYPE:]N``."""
    return ["--gres", "gpu:" + value.removeprefix("gpu:")]


def job_step_pattern(pattern: str, step: str) -> str:
    """Slurm's ``%J`` (``jobid.stepid``) in a file name pattern as Crane's
    patterns: ``%j`` + ``step`` (sbatch's batch script: ``""``, the job id
    alone, as Slurm writes it; srun: ``".%s"``). ``%%`` stays as it is."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append("%j" + step if nxt == "J" else c + nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def batch_file(option: str) -> Callable[[str], list[str]]:
    """-o/-e of a batch job: ``%J`` is the job id."""
    return lambda value: [option, job_step_pattern(value, "")]


def step_file(option: str) -> Callable[[str], list[str]]:
    """-o/-e of an srun step: ``%J`` is ``jobid.stepid``."""
    return lambda value: [option, job_step_pattern(value, ".%s")]


# ---------------------------------------------------------------- the job options

NOT_HERE = "Crane has no such feature"

#: The job options sbatch, srun and salloc share (Slurm's names).
JOB_OPTIONS: list[Opt] = [
    Opt(("-p", "--partition")),
    Opt(("-q", "--qos")),
    Opt(("-A", "--account")),
    Opt(("-J", "--job-name")),
    Opt(("-N", "--nodes"), kind=MAP, mapper=nodes_value),
    Opt(("-c", "--cpus-per-task")),
    Opt(("-n", "--ntasks")),
    Opt(("--ntasks-per-node",)),
    Opt(("--mem",)),
    Opt(("--mem-per-cpu",)),
    Opt(("-t", "--time")),
    Opt(("-w", "--nodelist")),
    Opt(("--exclusive",), value=OPTIONAL, kind=MAP, mapper=exclusive_value),
    Opt(("-D", "--chdir")),
    Opt(("-H", "--hold"), value=NONE),
    Opt(("--gres",)),
    Opt(("-G", "--gpus")),
    Opt(("--gpus-per-node",), kind=MAP, mapper=gpus_per_node_value),
    Opt(("-d", "--dependency")),
    Opt(("--comment",)),
    Opt(("--export",)),
    # accepted, no effect here
    Opt(("--mail-type",), kind=IGNORE, reason="Crane sends no mail"),
    Opt(("--mail-user",), kind=IGNORE, reason="Crane sends no mail"),
    Opt(("--wckey",), kind=IGNORE, reason="Crane has no workload characterization keys"),
    Opt(("--requeue",), value=NONE, kind=IGNORE, reason="requeueing is the partition's preemption policy"),
    Opt(("--no-requeue",), value=NONE, kind=IGNORE, reason="requeueing is the partition's preemption policy"),
    Opt(("--nice",), value=OPTIONAL, kind=IGNORE, reason="priorities come from the QoS and partition"),
    Opt(("--priority",), kind=IGNORE, reason="priorities come from the QoS and partition"),
    Opt(("--cpu-bind", "--cpu_bind"), kind=IGNORE, reason="tasks run in the step's cgroup, unbound"),
    Opt(("--mem-bind",), kind=IGNORE, reason="no NUMA binding"),
    Opt(("-m", "--distribution"), kind=IGNORE, reason="tasks are laid out in blocks"),
    Opt(("--hint",), kind=IGNORE, reason="no CPU topology hints"),
    Opt(("--threads-per-core",), kind=IGNORE, reason="no CPU topology"),
    Opt(("--cores-per-socket",), kind=IGNORE, reason="no CPU topology"),
    Opt(("--sockets-per-node",), kind=IGNORE, reason="no CPU topology"),
    Opt(("--ntasks-per-core",), kind=IGNORE, reason="no CPU topology"),
    Opt(("--ntasks-per-socket",), kind=IGNORE, reason="no CPU topology"),
    Opt(("-B", "--extra-node-info"), kind=IGNORE, reason="no CPU topology"),
    Opt(("--mpi",), kind=IGNORE, reason="no PMI: MPI programs start with mpirun inside the job"),
    Opt(("--propagate",), value=OPTIONAL, kind=IGNORE, reason="limits are not propagated"),
    Opt(("--get-user-env",), value=OPTIONAL, kind=IGNORE, reason="the submitter's environment is used"),
    Opt(("--acctg-freq",), kind=IGNORE, reason="accounting is per job"),
    Opt(("--profile",), kind=IGNORE, reason="no profiling plugin"),
    Opt(("--time-min",), kind=IGNORE, reason="jobs get their --time"),
    Opt(("--contiguous",), value=NONE, kind=IGNORE, reason="no network topology"),
    Opt(("--switches",), kind=IGNORE, reason="no network topology"),
    Opt(("--spread-job",), value=NONE, kind=IGNORE, reason="no placement policy"),
    Opt(("--use-min-nodes",), value=NONE, kind=IGNORE, reason="jobs get exactly -N nodes"),
    Opt(("-k", "--no-kill"), value=OPTIONAL, kind=IGNORE, reason="a failed node ends the job (NODE_FAIL)"),
    Opt(("-O", "--overcommit"), value=NONE, kind=IGNORE, reason="CPUs are never overcommitted"),
    Opt(("-s", "--oversubscribe"), value=NONE, kind=IGNORE, reason="nodes are shared unless --exclusive"),
    Opt(("-Q", "--quiet"), value=NONE, kind=IGNORE, reason="nothing to quiet"),
    Opt(("-v", "--verbose"), value=NONE, kind=IGNORE, reason="nothing more to say"),
    Opt(("--gres-flags",), kind=IGNORE, reason="no GPU binding policy"),
    Opt(("--delay-boot",), kind=IGNORE, reason="nodes are not rebooted"),
    Opt(("--network",), kind=IGNORE, reason="no network plugin"),
    Opt(("--power",), kind=IGNORE, reason="no power plugin"),
    Opt(("--prefer",), kind=IGNORE, reason="no node features"),
    Opt(("--kill-on-invalid-dep",), kind=IGNORE, reason="a dependency that cannot be met is reported by cqueue"),
    Opt(("--tmp",), kind=IGNORE, reason="no scratch space accounting"),
    Opt(("--mincpus",), kind=IGNORE, reason="nodes are chosen by -c and -n"),
    # refused: Crane cannot honour them, and running without them would be wrong
    Opt(("-C", "--constraint"), kind=REFUSE, reason="no node features"),
    Opt(("-x", "--exclude"), kind=REFUSE, reason="use -w/--nodelist"),
    Opt(("-b", "--begin"), kind=REFUSE, reason="no deferred start: use --hold and ccontrol release"),
    Opt(("--deadline",), kind=REFUSE, reason=NOT_HERE),
    Opt(("-L", "--licenses"), kind=REFUSE, reason=NOT_HERE),
    Opt(("--reservation",), kind=REFUSE, reason="no reservations"),
    Opt(("-M", "--clusters", "--cluster"), kind=REFUSE, reason="one cluster"),
    Opt(("--uid",), kind=REFUSE, reason="jobs run as the submitter"),
    Opt(("--gid",), kind=REFUSE, reason="jobs run as the submitter"),
    Opt(("-F", "--nodefile"), kind=REFUSE, reason="use -w/--nodelist"),
    Opt(("--gpus-per-task",), kind=REFUSE, reason="use --gres or --gpus"),
    Opt(("--gpus-per-socket",), kind=REFUSE, reason="use --gres or --gpus"),
    Opt(("--cpus-per-gpu",), kind=REFUSE, reason="use -c"),
    Opt(("--mem-per-gpu",), kind=REFUSE, reason="use --mem"),
    Opt(("--bb", "--bbf"), kind=REFUSE, reason="no burst buffers"),
    Opt(("--container",), kind=REFUSE, reason=NOT_HERE),
    Opt(("--core-spec", "-S"), kind=REFUSE, reason="no core specialization"),
    Opt(("--thread-spec",), kind=REFUSE, reason="no core specialization"),
    Opt(("-I", "--immediate"), value=OPTIONAL, kind=REFUSE, reason="a job waits until it can start"),
    Opt(("--mcs-label",), kind=REFUSE, reason=NOT_HERE),
    Opt(("--cluster-constraint",), kind=REFUSE, reason="one cluster"),
    Opt(("--heterogeneous", "--het-group"), kind=REFUSE, reason="no heterogeneous jobs"),
]

#: Input environment variables (``SBATCH_PARTITION``, ``SALLOC_ACCOUNT``...):
#: the variable's suffix and the Crane option it sets. As Slurm: they override
#: the script's #SBATCH lines, the command line overrides them.
INPUT_ENV: list[tuple[str, str]] = [
    ("PARTITION", "--partition"), ("ACCOUNT", "--account"), ("QOS", "--qos"), ("TIMELIMIT", "--time"),
    ("JOB_NAME", "--job-name"), ("EXPORT", "--export"), ("OPEN_MODE", "--open-mode"), ("GRES", "--gres"),
    ("GPUS", "--gpus"), ("MEM_PER_CPU", "--mem-per-cpu"), ("MEM_PER_NODE", "--mem"),
    ("CPUS_PER_TASK", "--cpus-per-task"), ("NTASKS_PER_NODE", "--ntasks-per-node"), ("ARRAY_INX", "--array"),
]  # fmt: skip


def input_env(prefix: str, environ: Any) -> list[str]:
    """The Crane words of ``PREFIX_*`` input variables (``SBATCH``, ``SALLOC``)."""
    words: list[str] = []
    for suffix, option in INPUT_ENV:
        value = environ.get(f"{prefix}_{suffix}")
        if value:
            words += [option, value]
    if environ.get(f"{prefix}_EXCLUSIVE"):
        words.append("--exclusive")
    if environ.get(f"{prefix}_HOLD") and prefix == "SBATCH":
        words.append("--hold")
    return words


VERSION = "slurm 22.05.0 (Crane translation layer)"


def table(*extra: Iterable[Opt], base: Iterable[Opt] = JOB_OPTIONS) -> list[Opt]:
    """``extra`` rows first (a command's own meaning of a letter wins), then
    the base rows whose names are not taken."""
    rows = [o for rows in extra for o in rows]
    taken = {n for o in rows for n in o.names}
    for o in base:
        kept = tuple(n for n in o.names if n not in taken)
        if kept:
            rows.append(o if kept == o.names else Opt(kept, o.value, o.kind, o.crane, o.mapper, o.reason, o.dest))
    return rows


def help_text(prog: str, crane_prog: str, usage: str, intro: str, rows: list[Opt], epilog: str = "") -> str:
    """--help: the options by what becomes of them."""
    def spell(o: Opt) -> str:
        arg = {NONE: "", REQUIRED: "=VALUE", OPTIONAL: "[=VALUE]"}[o.value]
        return ", ".join(o.names) + arg

    import textwrap

    lines = [f"Usage: {prog} {usage}", "", *textwrap.wrap(intro, 78), ""]
    groups = [("Options (as Slurm's; passed on to " + crane_prog + "):", [o for o in rows if o.kind in (PASS, MAP, LOCAL)]),
              ("Accepted and ignored (why):", [o for o in rows if o.kind == IGNORE]),
              ("Refused with an error (why):", [o for o in rows if o.kind == REFUSE])]  # fmt: skip
    for title, group in groups:
        lines.append(title)
        for o in group:
            note = o.reason
            if o.kind == PASS and (o.crane or o.long) != o.long:
                note = f"{crane_prog} {o.crane}"
            lines.append(f"  {spell(o):<34} {note}".rstrip())
        lines.append("")
    for para in epilog.splitlines():
        lines += textwrap.wrap(para, 78)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- running a Crane command here


class Renamed:
    """A text stream that writes ``slurm: `` where the Crane command wrote
    ``crane: `` at the start of a line (crun's and calloc's own notices), so
    that every line the Slurm-named command prints carries its name."""

    def __init__(self, stream: Any, crane: str, slurm: str) -> None:
        self.stream, self.old, self.new = stream, f"{crane}: ", f"{slurm}: "
        self.at_start = True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self.at_start and piece.startswith(self.old):
                piece = self.new + piece[len(self.old) :]
            out.append(piece)
            self.at_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def config_option(argv: list[str], i: int, cluster: str) -> tuple[str | None, int] | None:
    """``-C``/``--config FILE``/``--config=FILE`` (Crane's config file) or
    Slurm's cluster option (``-M`` or ``cluster``: its value taken and
    ignored) at ``argv[i]``: ``(the config file or None, the index of the
    last word it used)``; None when ``argv[i]`` is neither. A missing value:
    CliError (exit 1)."""
    a = argv[i]
    if a.startswith("--config="):
        return a.split("=", 1)[1], i
    if a not in ("-C", "--config", "-M", cluster):
        return None
    if i + 1 >= len(argv):
        from crane.cli.common import CliError

        raise CliError(f"option {a} requires an argument", 1)
    return (argv[i + 1] if a in ("-C", "--config") else None), i + 1


def fail(prog: str, message: str) -> NoReturn:
    from crane.core.text import safe

    print(safe(f"{prog}: error: {message}"), file=sys.stderr, flush=True)
    sys.exit(1)


def run_crane(command: Any, args: list[str], prog: str, crane_prog: str,
              fast: Callable[[], int | None] | None = None) -> int:  # fmt: skip
    """Run a Crane click command in this process as ``prog``: its notices
    renamed, every error one ``prog: error:`` line and exit 1 (Slurm's
    code for every failure); else the command's own exit code. ``fast``:
    the same command's click-free path when it took the line (then click is
    never imported); ``command`` may be a function that makes the click
    command."""
    from crane.cli.common import CliError

    saved = sys.stderr
    sys.stderr = Renamed(saved, crane_prog, prog)  # type: ignore[assignment]
    try:
        if fast is not None:
            rv = fast()
        else:
            cmd = command() if not hasattr(command, "main") else command
            rv = cmd.main(args=args, prog_name=prog, standalone_mode=False)
    except CliError as e:
        fail(prog, str(e))
    except KeyboardInterrupt:
        fail(prog, "interrupted")
    except BrokenPipeError:
        return 0
    except Exception as e:  # click's, when click ran (it is imported only then)
        click = sys.modules.get("click")
        if click is None:
            raise
        if isinstance(e, click.UsageError):
            fail(prog, e.format_message())
        if isinstance(e, click.exceptions.Abort):
            fail(prog, "aborted")
        if isinstance(e, click.exceptions.Exit):
            return int(e.exit_code)
        raise
    finally:
        sys.stderr = saved
    return int(rv or 0)


def main_guard(prog: str, body: Callable[[list[str]], int]) -> NoReturn:
    """The Slurm command's entry point: ``body(argv)``; a TranslateError or
    a CliError is one error line and exit 1."""
    from crane.cli.common import CliError

    try:
        code = body(sys.argv[1:])
    except (TranslateError, CliError) as e:
        fail(prog, str(e))
    except KeyboardInterrupt:
        fail(prog, "interrupted")
    except BrokenPipeError:
        code = 0
    sys.stdout.flush()
    sys.exit(code)


def click_slurm_main(command: Any, prog: str) -> NoReturn:
    """A click command as a Slurm-named one: its errors as ours (one line,
    the program's name first), Slurm's exit codes: 0, or 1 on any error."""
    from crane.cli.common import click_main

    try:
        click_main(command, prog)
    except SystemExit as e:
        sys.exit(0 if e.code in (0, None) else 1)
    sys.exit(0)
