"""The Slurm-named submission and cancel commands (issue 14): sbatch, srun,
salloc and scancel translated onto cbatch, crun, calloc and Crane's cancel.
The pure translation first (direct unit tests), then real clusters, real
users, real files."""

from __future__ import annotations

import io
import os
import re
import subprocess
import threading
from typing import Any

import pytest

from crane.slurm import salloc, sbatch, scancel, srun
from crane.slurm.translate import (
    IGNORE,
    JOB_OPTIONS,
    REFUSE,
    Renamed,
    TranslateError,
    job_step_pattern,
    parse,
    to_crane,
)
from tests.conftest import Cluster, clear, wait_for

DEADLINE = 60.0
STEP_ONLY = ("cpus_per_task", "output", "error", "chdir")

# ---------------------------------------------------------------- pure translation


def test_getopt_rules() -> None:
    p = parse(["-N2", "-c", "4", "--mem=4G", "--time", "10", "--part=debug", "-Hv", "script.sh", "-x"], JOB_OPTIONS)
    got = [(o.long, v) for o, v, _ in p.options]
    assert got == [("--nodes", "2"), ("--cpus-per-task", "4"), ("--mem", "4G"), ("--time", "10"),
                   ("--partition", "debug"), ("--hold", None), ("--verbose", None)]  # fmt: skip
    assert p.rest == ["script.sh", "-x"]  # the first word ends the options
    assert to_crane(p) == ["--nodes", "2", "--cpus-per-task", "4", "--mem", "4G", "--time", "10",
                           "--partition", "debug", "--hold"]  # fmt: skip
    assert to_crane(parse(["-N", "2-4", "--exclusive=user"], JOB_OPTIONS)) == ["--nodes", "2", "--exclusive"]
    assert to_crane(parse(["--gpus-per-node=a100:2"], JOB_OPTIONS)) == ["--gres", "gpu:a100:2"]
    for argv, message in ((["--frobnicate"], "unrecognized option '--frobnicate'"),
                          (["--ntasks"], "option '--ntasks' requires an argument"),
                          (["--hold=yes"], "option '--hold' doesn't allow an argument"),
                          (["-Y"], "invalid option -- 'Y'"),
                          (["--mem"], "option '--mem' requires an argument"),
                          (["--no"], "ambiguous option '--no'")):  # fmt: skip
        with pytest.raises(TranslateError, match=re.escape(message)):
            to_crane(parse(argv, JOB_OPTIONS))
    with pytest.raises(TranslateError, match=r"^--constraint is not supported by Crane \(no node features\)$"):
        to_crane(parse(["--constraint=big"], JOB_OPTIONS))
    with pytest.raises(TranslateError, match=r"^-C/--constraint is not supported by Crane"):
        to_crane(parse(["-C", "big"], JOB_OPTIONS))
    # ignored ones leave nothing, and every ignored or refused one says why
    assert to_crane(parse(["--mail-type=END", "--wckey", "k", "--requeue", "--cpu-bind=cores"], JOB_OPTIONS)) == []
    assert all(o.reason for o in JOB_OPTIONS if o.kind in (IGNORE, REFUSE))


def test_sbatch_directives_and_defaults() -> None:
    script = ("#!/bin/sh\n#SBATCH -J from-script -t 5\n#SBATCH --output=o-%j.txt # a comment\n"
              "#CBATCH -c 2\n\n#SBATCH --mail-type=ALL\necho hi\n#SBATCH -N 3\n")  # fmt: skip
    assert sbatch.directives(script) == (["-J", "from-script", "-t", "5", "--output=o-%j.txt", "--mail-type=ALL"],
                                         ["-c", "2"])  # fmt: skip
    p = sbatch.plan(["-J", "from-line", "--parsable", "job.sh"], script)
    words = p["words"]
    # the script's lines first, the command line after them: its value wins (click: the last one)
    assert words[:2] == ["-c", "2"] and words.index("from-line") > words.index("from-script")
    assert "--nodes" not in words  # an #SBATCH line after the first command is not read (Slurm's rule)
    assert words[-2:] == ["--open-mode", "truncate"] and "slurm-%j.out" not in words  # -o given in the script
    assert p["own"] == {"parsable": True} and p["path"] == "job.sh"
    plain = sbatch.plan(["--wrap", "hostname"])["words"]
    assert plain == ["--output", "slurm-%j.out", "--open-mode", "truncate", "--wrap", "hostname"]
    array = sbatch.plan(["-a", "1-3%2", "--open-mode=append", "--wrap=true"])["words"]
    assert array == ["--array", "1-3%2", "--open-mode", "append", "--output", "slurm-%A_%a.out", "--wrap", "true"]
    env = {"SBATCH_PARTITION": "from-env", "SBATCH_TIMELIMIT": "7", "SBATCH_EXCLUSIVE": "1"}
    words = sbatch.plan(["-p", "from-line", "x.sh"], "#!/bin/sh\n#SBATCH -p from-script -t 3\n", env)["words"]
    # Slurm's precedence: the command line, then the input variables, then the script
    assert words[:10] == ["--partition", "from-script", "--time", "3", "--partition", "from-env", "--time", "7",
                          "--exclusive", "--partition"]  # fmt: skip
    assert salloc.plan([], {"SALLOC_ACCOUNT": "a"})["words"][:2] == ["--account", "a"]
    stdin = sbatch.plan([], "#!/bin/sh\ntrue\n")["words"]
    assert stdin[-2:] == ["--job-name", "sbatch"]  # Slurm's name for a script on standard input
    for argv, text, message in (([], "true\n", "This does not look like a batch script"),
                                ([], "  \n", "Batch script is empty!"),
                                ([], "#!/bin/sh\r\ntrue\r\n", "DOS line breaks"),
                                (["a.sh", "arg"], "#!/bin/sh\n", "arguments after the script"),
                                (["--wrap=x", "a.sh"], None, "a script and --wrap"),
                                ([], "#!/bin/sh\n#SBATCH --test-only\n", "--test-only is not supported by Crane"),
                                ([], "#!/bin/sh\n#SBATCH hostname\n", "is not an option")):  # fmt: skip
        with pytest.raises(TranslateError, match=re.escape(message)):
            sbatch.plan(argv, text)


def test_srun_inside_and_outside_an_allocation() -> None:
    outside = srun.plan(["-N2", "-p", "cpu", "-u", "--mpi=none", "--export=NONE", "-J", "x", "hostname", "-f"],
                        {}, set(), STEP_ONLY)  # fmt: skip
    assert outside["words"] == ["--nodes", "2", "--partition", "cpu", "--job-name", "x", "--export", "NONE",
                                "--", "hostname", "-f"]  # fmt: skip
    assert outside["job"] is None
    inside = srun.plan(["-p", "cpu", "-t", "5", "--mem=1G", "-c", "2", "-o", "out-%t", "-n", "2", "--exclusive",
                        "--overlap", "cmd"], {"CRANE_JOB_ID": "12"}, set(), STEP_ONLY)  # fmt: skip
    # the job-only options are moot in an allocation; the task layout is crun's to take or refuse
    assert inside["words"] == ["--cpus-per-task", "2", "--output", "out-%t", "--ntasks", "2", "--error", "out-%t",
                               "--", "cmd"]  # fmt: skip
    # -o without -e: stderr into the same file, as srun
    assert srun.error_like_output(["--output=o"]) == ["--output=o", "--error", "o"]
    assert srun.error_like_output(["--output", "o", "--error", "e"]) == ["--output", "o", "--error", "e"]
    assert inside["job"] == 12
    # no -n/-N: the allocation's tasks, as Slurm's srun reads SLURM_NTASKS/SLURM_NTASKS_PER_NODE
    env = {"CRANE_JOB_ID": "4", "SLURM_JOB_ID": "4", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2",
           "SLURM_CPUS_PER_TASK": "3"}  # fmt: skip
    assert srun.plan(["x"], env, set(), STEP_ONLY)["words"] == ["--ntasks", "4", "--ntasks-per-node", "2", "--", "x"]
    three = {**env, "SLURM_NNODES": "2", "SLURM_NTASKS": "3", "SLURM_NTASKS_PER_NODE": "", "SRUN_CPUS_PER_TASK": "2"}
    assert srun.plan(["x"], three, set(), STEP_ONLY)["words"] == [
        "--cpus-per-task", "2", "--ntasks", "3", "--ntasks-per-node", "2", "--", "x"]  # fmt: skip
    assert srun.plan(["-n1", "x"], env, set(), STEP_ONLY)["words"] == ["--ntasks", "1", "--", "x"]
    assert srun.plan(["--jobid=9", "x"], env, set(), STEP_ONLY)["words"] == ["--jobid", "9", "--", "x"]
    # -N K for a step: as many tasks per node as fill K nodes in blocks
    assert srun.plan(["-N1", "-n1", "x"], {"CRANE_JOB_ID": "1"}, set(), STEP_ONLY)["words"] == [
        "--ntasks", "1", "--ntasks-per-node", "1", "--", "x"]  # fmt: skip
    assert srun.plan(["-N", "2", "x"], {"CRANE_JOB_ID": "1"}, set(), STEP_ONLY)["words"][:4] == [
        "--ntasks", "2", "--ntasks-per-node", "1"]  # fmt: skip
    assert srun.nodes_as_tasks(["--nodes", "2", "--ntasks", "5", "-c", "1"]) == [
        "-c", "1", "--ntasks", "5", "--ntasks-per-node", "3"]  # fmt: skip
    assert srun.nodes_as_tasks(["--ntasks-per-node", "2", "--nodes", "3"]) == ["--ntasks", "6", "--ntasks-per-node", "2"]
    assert srun.plan(["-N2", "x"], {"CRANE_JOB_ID": "1"}, set(), (*STEP_ONLY, "nodes"))["words"][:2] == ["--nodes", "2"]
    slurm_only = srun.plan(["true"], {"SLURM_JOB_ID": "7"}, set(), STEP_ONLY)
    assert slurm_only["words"] == ["--jobid", "7", "--", "true"] and slurm_only["job"] == 7
    assert srun.plan(["--jobid=9", "true"], {"CRANE_JOB_ID": "12"}, set(), STEP_ONLY)["words"][:2] == ["--jobid", "9"]
    assert srun.plan(["-l", "true"], {}, {"label"}, STEP_ONLY)["words"] == ["--label", "--", "true"]
    with pytest.raises(TranslateError, match="label"):
        srun.plan(["-l", "true"], {}, set(), STEP_ONLY)
    with pytest.raises(TranslateError, match="No command given to execute"):
        srun.plan(["-N", "1"], {}, set(), STEP_ONLY)
    with pytest.raises(TranslateError, match="--multi-prog is not supported by Crane"):
        srun.plan(["--multi-prog", "conf"], {}, set(), STEP_ONLY)
    env = srun.step_environment("NONE,A=1", {"HOME": "/h", "CRANE_JOB_ID": "3", "SLURM_JOB_ID": "3", "CRANE_CONF": "c"})
    assert env == {"A": "1", "CRANE_JOB_ID": "3", "SLURM_JOB_ID": "3", "CRANE_CONF": "c"}


def test_percent_capital_j_is_jobid_dot_stepid() -> None:
    assert job_step_pattern("w-%J.out", "") == "w-%j.out"  # a batch script's: the job id
    assert job_step_pattern("%%J-%J-%t%", ".%s") == "%%J-%j.%s-%t%"
    assert sbatch.plan(["-e", "d-%J.err", "--wrap=x"])["words"][:2] == ["--error", "d-%j.err"]
    assert srun.plan(["--output", "o-%J", "x"], {}, set(), STEP_ONLY)["words"][:2] == ["--output", "o-%j.%s"]
    # submitit's and dask-jobqueue's spellings: options after the id, values apart, SIG or not
    line = parse(["123", "--signal", "SIGTERM", "-s", "USR2"], scancel.ROWS, stop_at_word=False)
    assert line.rest == ["123"] and line.local() == {"signal": "USR2"}


def test_salloc_words() -> None:
    wrapper = ["/bin/sh", "-c", salloc.SLURM_NAMES, "salloc"]
    assert salloc.plan(["-N2", "-t", "1:00", "bash", "-c", "srun hostname"])["words"] == [
        "--nodes", "2", "--time", "1:00", "--", *wrapper, "bash", "-c", "srun hostname"]  # fmt: skip
    assert salloc.plan(["-c", "2"], {"SHELL": "/bin/zsh"})["words"] == ["--cpus-per-task", "2", "--", *wrapper, "/bin/zsh"]
    env = {"SLURM_JOB_ID": "3", "SLURM_NTASKS": "8", "HOME": "/h"}
    salloc.shell_environment(["--ntasks-per-node", "2", "--", "sh", "--ntasks", "9"], env)
    assert env == {"HOME": "/h", "SLURM_NTASKS_PER_NODE": "2"}  # an enclosing job's variables dropped
    with pytest.raises(TranslateError, match="--no-shell is not supported by Crane"):
        to_crane(parse(["--no-shell"], salloc.ROWS))


def test_scancel_ids() -> None:
    assert scancel.split_ids("12,13_[1,3-4] 14.0") == ["12", "13_[1,3-4]", "14.0"]
    t = scancel.parse_id("13_[1,3-4]")
    assert (t.job, t.tasks, t.step) == (13, [1, 3, 4], None)
    assert scancel.parse_id("12.batch").step == 1 and scancel.parse_id("12.0").step == 2
    assert scancel.parse_id("12_3.1").step == 3
    for bad in ("x", "12.x", "0", "12_", "12_[3-1]", "-1"):
        with pytest.raises(TranslateError, match="Invalid job id"):
            scancel.parse_id(bad)
    jobs: list[dict[str, Any]] = [
        {"job_id": 20, "array_job_id": 20, "array_task_id": 1, "steps": []},
        {"job_id": 21, "array_job_id": 20, "array_task_id": 2, "steps": []},
        {"job_id": 30, "steps": [{"step_id": 1, "state": "RUNNING"}, {"step_id": 2, "state": "RUNNING"},
                                 {"step_id": 3, "state": "COMPLETED"}]},
    ]  # fmt: skip
    targets = [scancel.parse_id(x) for x in ("20", "20_2", "30", "30.0", "99")]
    scancel.resolve(targets, jobs)
    assert [t.found for t in targets] == [[20, 21], [21], [30], [30], []]
    assert scancel.display_id(jobs[1], 21, 2) == "20_2.0"
    # a signal goes to the steps, not the batch shell (Slurm's default); -b the shell; -f everything
    assert scancel.cancel_items(30, None, jobs[2], {"kill": False}) == [[30, 2]]
    assert scancel.cancel_items(30, None, jobs[2], {"kill": False, "batch": True}) == [[30, 1]]
    assert scancel.cancel_items(30, None, jobs[2], {"kill": False, "full": True}) == [[30, None]]
    assert scancel.cancel_items(30, None, jobs[2], {"kill": True}) == [[30, None]]
    assert scancel.cancel_items(30, 3, jobs[2], {"kill": True}) == [[30, 3]]
    assert scancel.with_input_env({"name": "a"}, {"SCANCEL_NAME": "b", "SCANCEL_FULL": "1"}) == {"name": "a", "full": True}
    assert scancel.slurm_reason("Permission denied") == "Access/permission denied"
    assert scancel.slurm_reason("Job not found") == "Invalid job id specified"
    assert scancel.slurm_reason("Job does not match the filters") is None


def test_renamed_stream() -> None:
    out = io.StringIO()
    r = Renamed(out, "crun", "srun")
    r.write("crun: interrupt")
    r.write("\n")
    r.write("a crun: inside\ncrun: second\n")
    assert out.getvalue() == "srun: interrupt\na crun: inside\nsrun: second\n"


# ---------------------------------------------------------------- real clusters


def script(c: Cluster, name: str, text: str) -> str:
    path = c.file(name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def wait_file(c: Cluster, name: str, needle: str) -> str:
    wait_for(lambda: needle in c.read(name), DEADLINE, f"{needle!r} in {name}")
    return c.read(name)


def test_sbatch_script_with_directives(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    path = script(c, "sb1.sh", "#!/bin/sh\n#SBATCH -J ignored-name\n#SBATCH -o sb1-%j-%x.out\n"
                  "#SBATCH --error=sb1-%j.err\n#SBATCH -t 5 -N 1 --mail-type=END\n"
                  "echo out-line; echo err-line >&2\n")  # fmt: skip
    r = c.run("sbatch", "--parsable", "-J", "sbname", path, user="alice")
    assert r.returncode == 0 and r.stderr == "", r
    assert re.fullmatch(r"\d+\n", r.stdout), r.stdout
    job_id = int(r.stdout)
    job = c.wait_state(job_id, "COMPLETED", timeout=DEADLINE)
    assert (job["name"], job["user"], job["time_limit"], job["num_nodes"]) == ("sbname", "alice", 300, 1)
    assert wait_file(c, f"sb1-{job_id}-sbname.out", "out-line") == "out-line\n"
    assert wait_file(c, f"sb1-{job_id}.err", "err-line") == "err-line\n"


def test_sbatch_wrap_stdin_and_default_output(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    r = c.run("sbatch", "--wrap", "echo wrapped", user="alice")
    assert r.returncode == 0, r
    m = re.fullmatch(r"Submitted batch job (\d+)\n", r.stdout)
    assert m, r.stdout
    wrap_id = int(m.group(1))
    r = c.run("sbatch", "-J", "from-stdin", user="alice", input="#!/bin/sh\necho from-stdin\n")
    assert r.returncode == 0, r
    stdin_id = int(r.stdout.split()[-1])
    r = c.run("sbatch", user="alice", input="#!/bin/sh\ntrue\n")
    assert r.returncode == 0, r
    named_id = int(r.stdout.split()[-1])
    assert c.wait_state(wrap_id, "COMPLETED", timeout=DEADLINE)["name"] == "wrap"
    assert c.wait_state(stdin_id, "COMPLETED", timeout=DEADLINE)["name"] == "from-stdin"
    assert c.wait_state(named_id, "COMPLETED", timeout=DEADLINE)["name"] == "sbatch"
    assert wait_file(c, f"slurm-{wrap_id}.out", "wrapped") == "wrapped\n"  # Slurm's default output
    assert wait_file(c, f"slurm-{stdin_id}.out", "from-stdin") == "from-stdin\n"


def test_sbatch_errors_exit_1(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    for argv, message in ((["--constraint=big", "--wrap", "true"], "sbatch: error: --constraint is not supported by Crane"),
                          (["--frobnicate", "--wrap", "true"], "sbatch: error: unrecognized option '--frobnicate'"),
                          (["-p", "no-such-partition", "--wrap", "true"], "sbatch: error: "),
                          (["-N", "x", "--wrap", "true"], "sbatch: error: invalid node count"),
                          (["/nonexistent/job.sh"], "sbatch: error: Unable to open file /nonexistent/job.sh")):  # fmt: skip
        r = c.run("sbatch", *argv, user="alice")
        assert r.returncode == 1 and r.stdout == "", (argv, r)
        assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, (argv, r.stderr)
    r = c.run("sbatch", "--wait", "--wrap", "exit 3", user="alice")
    assert r.returncode == 3, r  # -W: the job's exit code
    assert r.stdout.startswith("Submitted batch job ")


def test_srun_outside_an_allocation(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    r = c.run("srun", "-N1", "-u", "--mpi=none", "sh", "-c", "echo to-out; echo to-err >&2; exit 3",
              user="alice", input="")  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (3, "to-out\n", "to-err\n"), r
    r = c.run("srun", "--frobnicate", "true", user="alice")
    assert r.returncode == 1 and r.stderr.startswith("srun: error: unrecognized option"), r
    r = c.run("srun", user="alice")
    assert r.returncode == 1 and r.stderr == "srun: error: No command given to execute.\n", r


def test_srun_inside_an_allocation(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    path = script(c, "sr1.sh", "#!/bin/sh\n#SBATCH -o sr1-%j.out\nsrun -p ignored-inside sh -c 'echo step $CRANE_STEP_ID; exit 4'\n"
                  "echo srun-exit=$?\n")  # fmt: skip
    job_id = int(c.ok("sbatch", "--parsable", path, user="alice"))
    c.wait_state(job_id, "COMPLETED", timeout=DEADLINE)
    out = wait_file(c, f"sr1-{job_id}.out", "srun-exit=")
    assert out == "step 2\nsrun-exit=4\n", out
    # an allocation named by SLURM_JOB_ID or --jobid, from outside the job
    holder = c.submit("--wrap", "sleep 300", user="alice")
    c.wait_state(holder, "RUNNING", timeout=DEADLINE)
    try:
        cmd = c.command("srun", "sh", "-c", "echo in $CRANE_JOB_ID", user="alice")
        cmd.insert(cmd.index("env") + 1, f"SLURM_JOB_ID={holder}")  # no CRANE_JOB_ID: Slurm's variable alone
        r = subprocess.run(cmd, capture_output=True, text=True, input="", timeout=DEADLINE, env=c.env(), cwd=c.workdir)
        assert (r.returncode, r.stdout) == (0, f"in {holder}\n"), r
        r = c.run("srun", f"--jobid={holder}", "-t", "5", "echo", "hi", user="alice", input="")
        assert (r.returncode, r.stdout) == (0, "hi\n"), r
    finally:
        c.ok("scancel", str(holder), user="alice")
    c.wait_state(holder, "CANCELLED", timeout=DEADLINE)


def test_srun_label(cluster: Cluster, users: dict[str, int]) -> None:
    from crane.cli import crun

    if "label" not in {p.name for p in crun.command.params}:
        pytest.skip("crun has no --label yet (issue 13's multi-node steps add it)")
    r = cluster.run("srun", "-l", "sh", "-c", "echo a; echo b", user="alice", input="")
    assert (r.returncode, r.stdout) == (0, "0: a\n0: b\n"), r


def test_salloc_with_srun_inside(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    r = c.run("salloc", "-N2", "-t", "5", "sh", "-c", "srun hostname; echo id=$SLURM_JOB_ID; exit 5",
              user="alice", input="")  # fmt: skip
    assert r.returncode == 5, r
    m = re.search(r"^salloc: Granted job allocation (\d+)$", r.stderr, re.M)
    assert m, r.stderr
    job_id = int(m.group(1))
    assert f"salloc: Relinquishing job allocation {job_id}" in r.stderr
    assert all(line.startswith("salloc: ") for line in r.stderr.splitlines()), r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == f"id={job_id}" and lines[:-1], r.stdout  # srun's step printed the host name(s)
    job = c.wait_state(job_id, "COMPLETED", timeout=DEADLINE)
    assert job["num_nodes"] == 2 and [s["step_id"] for s in job["steps"]][:2] == [1, 2]


def test_scancel_a_job_and_a_step(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    path = script(c, "sc1.sh", "#!/bin/sh\n#SBATCH -o sc1-%j.out\nsrun sleep 300\necho after-step=$?\n"
                  "while :; do sleep 1; done\n")  # fmt: skip
    job_id = int(c.ok("sbatch", "--parsable", path, user="alice"))
    c.step_pid(job_id, 2, timeout=DEADLINE)
    r = c.run("scancel", f"{job_id}.0", user="alice")  # Slurm's step 0 is Crane's step 2
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    out = wait_file(c, f"sc1-{job_id}.out", "after-step=")
    assert re.search(r"after-step=[1-9]", out), out  # the srun ended, the batch shell goes on
    assert c.state(job_id) == "RUNNING"
    r = c.run("scancel", str(job_id), user="alice")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    job = c.wait_state(job_id, "CANCELLED", timeout=DEADLINE)
    assert {s["step_id"]: s["state"] for s in job["steps"]}[2] == "CANCELLED"


def test_scancel_signals(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    step = "trap 'echo step-got-usr1; exit 0' USR1; echo step-ready; while :; do sleep 0.2; done"
    path = script(c, "sig.sh", "#!/bin/sh\n#SBATCH -o sig-%j.out\n"
                  "trap 'echo shell-got-usr1; exit 0' USR1\n"
                  f"srun sh -c \"{step}\"\necho after-step\nwhile :; do sleep 0.2; done\n")  # fmt: skip
    job_id = int(c.ok("sbatch", "--parsable", path, user="alice"))
    wait_file(c, f"sig-{job_id}.out", "step-ready")
    r = c.run("scancel", "-s", "USR1", str(job_id), user="alice")  # the steps, not the batch shell
    assert (r.returncode, r.stderr) == (0, ""), r
    out = wait_file(c, f"sig-{job_id}.out", "after-step")
    assert "step-got-usr1" in out and "shell-got-usr1" not in out, out
    r = c.run("scancel", "--batch", "--signal=SIGUSR1", str(job_id), user="alice")  # the batch shell only
    assert (r.returncode, r.stderr) == (0, ""), r
    assert c.wait_state(job_id, "COMPLETED", timeout=DEADLINE)["state"] == "COMPLETED"
    assert "shell-got-usr1" in wait_file(c, f"sig-{job_id}.out", "shell-got-usr1")


def test_scancel_filters_and_exit_codes(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    mine = [c.submit("-J", "flt", "--wrap", "sleep 300", user="alice") for _ in range(2)]
    other = c.submit("-J", "flt", "--wrap", "sleep 300", user="bob")
    done = c.submit("--wrap", "true", user="alice")
    try:
        c.wait_state(done, "COMPLETED", timeout=DEADLINE)
        for argv in (["999999"], [str(done)], ["999999", str(done)]):  # ids only: gone is not an error
            r = c.run("scancel", *argv, user="alice")
            assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), (argv, r)
        r = c.run("scancel", "-v", "999999", user="alice")
        assert r.returncode == 0 and "Invalid job id specified" in r.stderr, r
        r = c.run("scancel", "-s", "USR1", "999999", user="alice")  # with a signal it is
        assert (r.returncode, r.stderr) == (1, "scancel: error: Kill job error on job id 999999: Invalid job id specified\n"), r
        r = c.run("scancel", "-Q", "-s", "USR1", "999999", user="alice")
        assert (r.returncode, r.stderr) == (1, ""), r
        r = c.run("scancel", str(other), user="alice")  # another user's job
        assert (r.returncode, r.stderr) == (1, f"scancel: error: Kill job error on job id {other}: Access/permission denied\n"), r
        for argv, message in (([], "No job identification provided"),
                              (["--reservation=r", "1"], "--reservation is not supported by Crane"),
                              (["-t", "bogus", "1"], "Invalid job state specified: bogus"),
                              (["abc"], "Invalid job id abc")):  # fmt: skip
            r = c.run("scancel", *argv, user="alice")
            assert r.returncode == 1 and r.stderr.startswith(f"scancel: error: {message}"), (argv, r)
        r = c.run("scancel", "-n", "flt", "--me", "-t", "PD,R", user="alice")  # filters: alice's jobs only
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
        for j in mine:
            c.wait_state(j, "CANCELLED", timeout=DEADLINE)
        assert c.state(other) in ("PENDING", "RUNNING")
        r = c.run("scancel", "-u", "bob", "-n", "nothing-matches", user="bob")
        assert (r.returncode, r.stderr) == (0, ""), r
        r = c.run("scancel", "--help")
        assert r.returncode == 0 and "ccancel --wait" in r.stdout
    finally:
        c.run("scancel", str(other), user="bob")
        c.wait_state(other, "CANCELLED", timeout=DEADLINE)


def test_scancel_an_array_task(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    r = c.run("sbatch", "--parsable", "-a", "1-3", "--wrap", "sleep 300", user="alice")
    if r.returncode != 0:
        pytest.skip(f"arrays not accepted here yet: {r.stderr.strip()}")
    array_id = int(r.stdout.split(";")[0])

    def tasks() -> dict[int, dict[str, Any]]:
        jobs = c.jobs()
        return {int(j["array_task_id"]): j for j in jobs.values()
                if j.get("array_job_id") == array_id and j.get("array_task_id") is not None}  # fmt: skip

    try:
        if len(tasks()) < 3:
            pytest.skip("arrays are not expanded into tasks yet")
        r = c.run("scancel", f"{array_id}_2", user="alice")
        assert (r.returncode, r.stderr) == (0, ""), r
        victim = tasks().get(2)
        if victim is not None:
            c.wait_state(int(victim["job_id"]), "CANCELLED", timeout=DEADLINE)
        wait_for(lambda: sorted(tasks()) == [1, 3], DEADLINE, "tasks 1 and 3 left")
        r = c.run("scancel", str(array_id), user="alice")  # the array id: every task
        assert (r.returncode, r.stderr) == (0, ""), r
        wait_for(lambda: not tasks(), DEADLINE, "every task cancelled")
        # -W waits for every task: the largest exit code
        r = c.run("sbatch", "-W", "-a", "1-2", "--wrap", "exit $((SLURM_ARRAY_TASK_ID + 3))", user="alice")
        assert r.returncode == 5, r
    finally:
        clear(c)


def test_salloc_cancelled_by_scancel(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    p = subprocess.Popen(c.command("salloc", "sh", "-c", "echo ready; while :; do sleep 0.2; done", user="alice"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=c.env(), cwd=c.workdir)  # fmt: skip
    err = bytearray()

    def pump() -> None:
        assert p.stderr is not None
        while data := os.read(p.stderr.fileno(), 65536):
            err.extend(data)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        wait_for(lambda: re.search(rb"Granted job allocation (\d+)", err) or p.poll() is not None, DEADLINE, "granted")
        m = re.search(rb"Granted job allocation (\d+)", err)
        assert m, bytes(err)
        job_id = int(m.group(1))
        c.ok("scancel", str(job_id), user="alice")
        assert p.wait(timeout=DEADLINE) != 0
        t.join(DEADLINE)
        assert f"salloc: Job allocation {job_id} has been revoked.".encode() in err, bytes(err)
        c.wait_state(job_id, "CANCELLED", timeout=DEADLINE)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_scancel_kill_signal_and_pending_jobs(cluster: Cluster, users: dict[str, int]) -> None:
    c = cluster
    running = c.submit("-J", "sigflt", "--wrap", "sleep 300", user="alice")
    held = c.submit("-H", "--wrap", "true", user="alice")
    try:
        c.wait_state(running, "RUNNING", timeout=DEADLINE)
        r = c.run("scancel", "-s", "USR1", str(held), user="alice")  # a pending job has nothing to signal
        assert (r.returncode, r.stderr) == (1, f"scancel: error: Kill job error on job id {held}: Job is pending execution\n"), r
        r = c.run("scancel", "-v", "-s", "USR1", "-n", "sigflt", "-t", "R", user="alice")  # filters: steps only, none
        assert r.returncode == 0 and "Signal" not in r.stderr, r
        assert c.state(running) == "RUNNING"
        r = c.run("scancel", "--signal=KILL", str(running), user="alice")  # Slurm: -s KILL cancels the job
        assert (r.returncode, r.stderr) == (0, ""), r
        c.wait_state(running, "CANCELLED", timeout=DEADLINE)
        r = c.run("scancel", "-v", str(held), user="alice")
        assert r.returncode == 0 and r.stderr == f"scancel: Terminating job {held}\n", r
        c.wait_state(held, "CANCELLED", timeout=DEADLINE)
    finally:
        c.run("scancel", str(running), str(held), user="alice")


def test_srun_takes_the_allocations_tasks(cluster: Cluster, users: dict[str, int]) -> None:
    """srun without -n/-N in a job submitted with tasks runs the job's tasks
    (Slurm's srun reads SLURM_NTASKS/SLURM_NTASKS_PER_NODE); -N1 -n1 one."""
    c = cluster
    path = script(c, "tasks.sh", "#!/bin/sh\n#SBATCH -N 2 --ntasks-per-node=2 -o tasks-%j.out\n"
                  "srun sh -c 'echo rank=$SLURM_PROCID'\nsrun -N1 -n1 sh -c 'echo single=$SLURM_PROCID'\n")  # fmt: skip
    job_id = int(c.ok("sbatch", "--parsable", path, user="alice"))
    c.wait_state(job_id, "COMPLETED", timeout=DEADLINE)
    out = wait_file(c, f"tasks-{job_id}.out", "single=")
    assert sorted(out.splitlines()) == ["rank=0", "rank=1", "rank=2", "rank=3", "single=0"], out
