"""The fan-out runner of a step's tasks on one node (``crun -n``, ``-l``).

The agent keeps one process per (step, node): when a node runs several
tasks of a step, or their output is labelled (``crun -l``), that process is
``python -m crane.agent.tasks SPEC -- COMMAND...``, started like any step
(as the job's user, inside the step's cgroup, under the exit-status
wrapper). It

* forks one task per local rank, each with its own CRANE_PROCID /
  SLURM_PROCID (global rank) and CRANE_LOCALID / SLURM_LOCALID (the other
  per-task variables are the node's, set by the controller);
* gives crun's stdin (if any) to global rank 0 only, ``/dev/null`` to the others;
* copies each task's stdout and stderr to its own, a whole line at a time
  (lines of different tasks never mix; a line longer than LINE_MAX is cut),
  prefixed ``RANK: `` with ``label``;
* survives the signals the agent sends: every process of the step gets them
  from the agent directly (cgroup-wide, ``cgroup.StepCgroup.signal``), so
  the runner catches them and does not forward them again (a task would
  get each signal twice);
* waits for every task and ends like the worst of them: killed by the same
  signal if one was killed by a signal (as srun reports a signalled task),
  else with the largest exit status.

It imports nothing of the agent: it runs as the user, not as root.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sys

LINE_MAX = 64 * 1024  # a longer line is written in pieces of this size
MAX_DESC = 120 * 1024  # bytes of the runner's JSON argument (the kernel takes 128 KiB per argument)
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOCTTY
CAUGHT = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                      signal.SIGUSR2, signal.SIGALRM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)]  # fmt: skip


def runner_argv(spec: dict[str, object], argv: list[str]) -> list[str]:
    """The step's command line on this node: ``argv`` itself, or the runner
    around it when ``spec["tasks"]`` asks for one (agent side)."""
    tasks = spec.get("tasks")
    if not isinstance(tasks, dict) or not argv:
        return argv
    desc: dict[str, object] = {"rank": int(tasks.get("rank") or 0), "count": max(int(tasks.get("count") or 1), 1),
                               "label": bool(tasks.get("label"))}  # fmt: skip
    for k in ("stdout", "stderr"):  # a file per task (-o with %t)
        files = tasks.get(k)
        if isinstance(files, list) and len(files) == desc["count"] and all(isinstance(f, str) for f in files):
            desc[k] = files
    if len(json.dumps(desc)) > MAX_DESC:  # one argv string: past the kernel's limit, tasks share the node's file
        desc.pop("stdout", None)
        desc.pop("stderr", None)
    return [sys.executable, "-I", "-m", "crane.agent.tasks", json.dumps(desc), "--", *argv]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return  # our stdout is gone: the task's output is dropped
        view = view[n:]


class Lines:
    """One task's stream, cut into whole lines (prefixed with ``label``)."""

    def __init__(self, out: int, label: bytes) -> None:
        self.out, self.label, self.buf = out, label, bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.rfind(b"\n")
        if end >= 0:
            self._emit(bytes(self.buf[: end + 1]))
            del self.buf[: end + 1]
        while len(self.buf) >= LINE_MAX:
            self._emit(bytes(self.buf[:LINE_MAX]) + b"\n")
            del self.buf[:LINE_MAX]

    def close(self) -> None:
        if self.buf:
            self._emit(bytes(self.buf) + (b"\n" if self.label else b""))
            self.buf.clear()

    def _emit(self, lines: bytes) -> None:
        if self.label:  # lines end at \n only (a \r, a progress bar's, stays in its line)
            parts = lines.split(b"\n")
            lines = b"".join(self.label + p + b"\n" for p in parts[:-1]) + (self.label + parts[-1] if parts[-1] else b"")
        _write_all(self.out, lines)


def open_task_file(path: str) -> int:
    """A task's own output file (``-o`` with ``%t``): opened here, as the
    user, appending (a step's files are shared with the job's)."""
    return os.open(path, FILE_FLAGS, 0o644)


def run(rank: int, count: int, label: bool, argv: list[str],
        files: dict[int, list[str]] | None = None) -> int:  # fmt: skip
    """``files``: {1: stdout paths, 2: stderr paths}, one per local task,
    for output going to a file per task instead of the runner's own."""
    files = files or {}
    for s in CAUGHT:
        signal.signal(s, lambda *_: None)  # the tasks get them from the agent; we stay to collect them
    sel = selectors.DefaultSelector()
    pids: dict[int, int] = {}
    for local in range(count):
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        pid = os.fork()
        if pid == 0:  # the task
            try:
                for s in (*CAUGHT, signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores the last two: exec would keep that
                    signal.signal(s, signal.SIG_DFL)
                if rank + local != 0:
                    null = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(null, 0)
                os.dup2(w_out, 1)
                os.dup2(w_err, 2)
                for fd in (r_out, w_out, r_err, w_err):
                    os.close(fd)
                own = {stream: paths[local] for stream, paths in files.items()}
                for stream, path in sorted(own.items()):
                    if stream == 2 and own.get(1) == path:
                        os.dup2(1, 2)  # -e like -o: one file
                        continue
                    try:
                        fd = open_task_file(path)
                    except OSError as e:
                        os.write(2, f"crane: cannot open {path}: {e.strerror}\n".encode(errors="replace"))
                        os._exit(127)
                    os.dup2(fd, stream)
                    os.close(fd)
                env = dict(os.environ)
                g = str(rank + local)
                env.update(CRANE_PROCID=g, SLURM_PROCID=g, CRANE_LOCALID=str(local), SLURM_LOCALID=str(local))
                os.execvpe(argv[0], argv, env)
            except OSError as e:
                os.write(2, f"crane: {argv[0]}: {e.strerror}\n".encode())
                os._exit(127)
            os._exit(127)
        os.close(w_out)
        os.close(w_err)
        prefix = f"{rank + local}: ".encode() if label else b""
        sel.register(r_out, selectors.EVENT_READ, Lines(1, prefix))
        sel.register(r_err, selectors.EVENT_READ, Lines(2, prefix))
        pids[pid] = local
    if count > 0:
        os.close(0)  # rank 0 holds crun's stdin now: its EOF is not held up by us
    open_fds = len(sel.get_map())
    while open_fds:
        for key, _ in sel.select():
            fd = int(key.fd)  # type: ignore[arg-type]
            try:
                data = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            lines: Lines = key.data
            if data:
                lines.feed(data)
                continue
            lines.close()
            sel.unregister(fd)
            os.close(fd)
            open_fds -= 1
    worst_code, worst_sig = 0, 0
    while pids:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pids.pop(pid, None) is None:
            continue
        if os.WIFSIGNALED(status):
            worst_sig = max(worst_sig, os.WTERMSIG(status))
        else:
            worst_code = max(worst_code, os.waitstatus_to_exitcode(status))
    if worst_sig:
        signal.signal(worst_sig, signal.SIG_DFL)
        os.kill(os.getpid(), worst_sig)
        return 128 + worst_sig
    return worst_code


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m crane.agent.tasks SPEC -- COMMAND...", file=sys.stderr)
        sys.exit(2)
    desc = json.loads(args[0])
    files = {n: desc[k] for n, k in ((1, "stdout"), (2, "stderr")) if isinstance(desc.get(k), list)}
    sys.exit(run(int(desc["rank"]), int(desc["count"]), bool(desc.get("label")), args[2:], files))


if __name__ == "__main__":
    main()
