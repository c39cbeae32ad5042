"""Security issue 10, class 6 (terminal injection), output side, and the CLI
side of class 1 (paths sent absolute, control characters refused early).

The controller refuses control characters in new requests; these tests make
sure nothing is printed raw even when a record holds one anyway (a database
row from before the fix, a value planted some other way): the records are
edited in the controller's SQLite database while it is stopped, then every
viewer is run as a real user and its raw bytes are checked.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crane import store
from crane.config import load
from crane.core.text import safe
from tests.conftest import Cluster

# OSC window title + BEL, clear screen, C1 CSI, DEL, carriage return, a bidi
# override: each one would act on the terminal if printed raw.
EVIL = "ev\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\rX\u202eY\nZ"
SHOWN = safe(EVIL)  # what the viewers must print instead
assert SHOWN == "ev\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x7f\\rX\\u202eY\\nZ"


def run_raw(c: Cluster, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """A CLI as ``user``, its output as bytes (what reaches the terminal)."""
    return subprocess.run(c.command(*argv, user=user), capture_output=True, timeout=60, env=c.env(), cwd=c.workdir)


def raw_controls(data: bytes) -> list[str]:
    """Terminal controls in ``data``: C0 bytes other than the newline between
    lines, DEL, C1 (UTF-8 encoded or bare), bidi overrides."""
    bad = [f"{b:#04x}" for b in data if (b < 0x20 and b != 0x0A) or b == 0x7F]
    text = data.decode("utf-8", "replace")
    bad += [f"U+{ord(ch):04X}" for ch in text if 0x80 <= ord(ch) <= 0x9F or ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]
    if b"\x9b" in data and "\x9b" not in text:
        bad.append("0x9b")
    return bad


def clean(c: Cluster, *argv: str, user: str | None = None, code: int = 0) -> str:
    r = run_raw(c, *argv, user=user)
    assert r.returncode == code, (argv, r.returncode, r.stdout, r.stderr)
    for stream in (r.stdout, r.stderr):
        assert not raw_controls(stream), (argv, raw_controls(stream), stream)
    return (r.stdout + r.stderr).decode()


# --------------------------------------------------------------------------- planting


def plant(c: Cluster, edit: Callable[[Any], None]) -> None:
    """Stop the controller, let ``edit`` change its database, start it again."""
    c.stop("cranectld")
    db = load(c.config_path).db_file
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        edit(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    c.start_controller()
    c.wait_nodes_up(60)


def edit_job(conn: Any, job_id: int, change: Callable[[dict[str, Any]], None]) -> None:
    (data,) = conn.execute("SELECT data FROM jobs WHERE id=?", (job_id,)).fetchone()
    rec = store.unpack(data)
    change(rec)
    conn.execute("UPDATE jobs SET data=? WHERE id=?", (store.pack(rec), job_id))


def edit_rows(conn: Any, table: str, pick: Callable[[dict[str, Any]], bool],
              change: Callable[[dict[str, Any]], None]) -> int:  # fmt: skip
    n = 0
    for rowid, data in conn.execute(f"SELECT rowid, data FROM {table}").fetchall():
        rec = store.unpack(data)
        if isinstance(rec, dict) and pick(rec):
            change(rec)
            conn.execute(f"UPDATE {table} SET data=? WHERE rowid=?", (store.pack(rec), rowid))
            n += 1
    return n


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLIs as real users (root only)")
def test_hostile_records_print_escaped_everywhere(make_cluster: Callable[..., Cluster],
                                                  users: dict[str, int]) -> None:  # fmt: skip
    """Attack: a job name, cancel message, paths, a node's drain reason and an
    account description holding escape sequences (clear screen, window title,
    C1 CSI, bidi override, carriage return) were printed raw by cqueue, cacct,
    ccancel --dry-run, ccontrol show, cinfo and cacctmgr to whoever ran them
    (root included). Now each prints the escaped form, and --json gives the
    original string back."""
    c = make_cluster(nodes=2)
    held = c.submit("-H", "-J", "plain", "-o", "out_%j.txt", user="alice", wrap="true")
    gone = c.submit("-H", "-J", "plain2", user="alice", wrap="true")
    c.ok("ccancel", "-m", "plain message", str(gone), user="alice")
    c.wait_state(gone, "CANCELLED")
    c.ok("ccontrol", "update", "NodeName=crane02", "State=DRAIN", "Reason=maintenance")

    def edit(conn: Any) -> None:
        def hostile(rec: dict[str, Any]) -> None:
            rec.update(name=EVIL, cwd="/tmp/" + EVIL, stdout="/tmp/" + EVIL + "/o", stderr="/tmp/" + EVIL)
            if rec.get("cancel"):
                rec["cancel"]["message"] = EVIL

        edit_job(conn, held, hostile)
        edit_job(conn, gone, hostile)
        assert edit_rows(conn, "nodes", lambda r: bool(r.get("drain")), lambda r: r.update(reason=EVIL)) == 1
        assert edit_rows(conn, "entities", lambda r: "parent" in r and r.get("name") == "default",
                         lambda r: r.update(description=EVIL)) == 1  # fmt: skip

    plant(c, edit)
    try:
        # active job: the table, a format with every path, the long view, the dry run
        out = clean(c, "cqueue", user="root")
        assert f"{held} " in out and SHOWN[:20] in out
        out = clean(c, "cqueue", "-o", "%i %j %Z %o", user="root")
        assert SHOWN in out and f"/tmp/{SHOWN}/o" in out
        out = clean(c, "ccontrol", "show", "job", str(held), user="root")
        assert f"JobName={SHOWN}" in out and f"WorkDir=/tmp/{SHOWN}" in out and f"StdErr=/tmp/{SHOWN}" in out
        out = clean(c, "ccancel", "--dry-run", str(held), user="alice")
        assert f"name={SHOWN}," in out
        # finished job: cacct table, its reason column (the cancel message), show job
        out = clean(c, "cacct", "-S", "2000-01-01", "-o", "%i %j %r %Z", user="root")
        assert out.count(SHOWN) == 3 and f"/tmp/{SHOWN}" in out
        out = clean(c, "cacct", "-S", "2000-01-01", user="root")
        assert SHOWN[:10] in out
        out = clean(c, "ccontrol", "show", "job", str(gone), user="root")
        assert f"CancelMessage={SHOWN}" in out
        # node reason, account description
        out = clean(c, "cinfo", "-N", user="bob")
        assert SHOWN in out
        out = clean(c, "ccontrol", "show", "node", "crane02", user="bob")
        assert f"Reason={SHOWN}" in out
        out = clean(c, "cacctmgr", "show", "account", user="root")
        # the controller renders this table (and may escape it already): escaped once, not twice
        assert SHOWN in out or safe(EVIL.replace("\n", " ")) in out
        # JSON: escaped by itself, and the original comes back
        jobs = {j["job_id"]: j for j in json.loads(clean(c, "cqueue", "--json", user="root"))}
        assert jobs[held]["name"] == EVIL and jobs[held]["stdout"] == "/tmp/" + EVIL + "/o"
        hist = {j["job_id"]: j for j in json.loads(clean(c, "cacct", "--json", user="root"))}
        assert hist[gone]["message"] == EVIL
        nodes = json.loads(clean(c, "cinfo", "--json", user="bob"))["nodes"]
        assert [n["reason"] for n in nodes if n["name"] == "crane02"] == [EVIL]
        accts = json.loads(clean(c, "cacctmgr", "--json", "show", "account", user="root"))
        assert any(v == EVIL for row in accts for v in row.values())
        # the owner's cancel reports the job by id only; the summary stays clean
        clean(c, "ccancel", str(held), user="alice")
    finally:
        c.run("ccancel", str(held))


# --------------------------------------------------------------------------- errors and early refusals


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLIs as real users (root only)")
def test_errors_echoing_input_are_escaped(cluster: Cluster, users: dict[str, int]) -> None:
    """Attack: an error that repeats the request (an unknown partition, user
    or account name) wrote the escape sequence straight to stderr."""
    for argv in (("ccontrol", "show", "partition", EVIL), ("cinfo", "-p", EVIL),
                 ("cacctmgr", "show", "account", EVIL), ("cqueue", "-t", EVIL)):  # fmt: skip
        r = run_raw(cluster, *argv, user="bob")
        assert r.returncode != 0, argv
        assert not raw_controls(r.stdout + r.stderr), (argv, r.stderr)
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{argv[0]}: error: "), (argv, r.stderr)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLIs as real users (root only)")
def test_cli_refuses_control_characters_before_sending(cluster: Cluster, users: dict[str, int]) -> None:
    """Attack: a job name, output path or cancel message with a newline or
    ESC was sent and stored (and the message written into the job's stderr
    by the cancel banner). The CLIs refuse them with exit 2 and say why."""
    before = {j["job_id"] for j in json.loads(cluster.ok("cqueue", "--json"))}
    cases = [
        (("cbatch", "-H", "-J", "a\x1b[2Jb", "--wrap", "true"), "--job-name contains control characters (U+001B)"),
        (("cbatch", "-H", "-o", "out\nroot::0:0::/:/bin/sh", "--wrap", "true"), "--output contains control characters (U+000A)"),
        (("cbatch", "-H", "-e", "e\x9b\x7f", "--wrap", "true"), "--error contains control characters (U+009B, U+007F)"),
        (("ccancel", "-m", "bye\nroot::0:0::/:/bin/sh", "999999"), "--message contains control characters (U+000A)"),
        (("ccontrol", "update", "NodeName=crane01", "State=DRAIN", "Reason=a\x1bb"), "Reason contains control characters (U+001B)"),
    ]  # fmt: skip
    for argv, reason in cases:
        r = run_raw(cluster, *argv, user="alice")
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert r.stderr.decode() == f"{argv[0]}: error: {reason}: not allowed\n"
    assert {j["job_id"] for j in json.loads(cluster.ok("cqueue", "--json"))} == before  # nothing submitted


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLIs as real users (root only)")
def test_cbatch_sends_absolute_paths(cluster: Cluster, users: dict[str, int]) -> None:
    """Attack: a relative -o/-e resolved against the agent's own working
    directory (root's), not the submitter's. cbatch now sends every path
    absolute, from the command line and from #CBATCH lines alike."""
    sub = os.path.join(cluster.workdir, "rt_abs")
    os.makedirs(sub, exist_ok=True)
    os.chmod(sub, 0o777)
    script = os.path.join(sub, "job.sh")
    Path(script).write_text("#!/bin/sh\n#CBATCH -D rt_abs\n#CBATCH -o ./logs/../o.txt\n#CBATCH -e e.txt\ntrue\n")
    os.chmod(script, 0o644)
    ids = []
    try:
        ids.append(cluster.submit("-H", script, user="alice"))
        ids.append(cluster.submit("-H", "-D", "rt_abs/.", "-o", "x/y.txt", user="alice", wrap="true"))
        jobs = {j["job_id"]: j for j in json.loads(cluster.ok("cqueue", "--json"))}
        a, b = jobs[ids[0]], jobs[ids[1]]
        assert a["work_dir"] == sub and a["stdout"] == f"{sub}/o.txt" and a["stderr"] == f"{sub}/e.txt"
        assert b["work_dir"] == sub and b["stdout"] == f"{sub}/x/y.txt"
    finally:
        if ids:
            cluster.run("ccancel", ",".join(map(str, ids)))
        os.unlink(script)
        os.rmdir(sub)


# --------------------------------------------------------------------------- the class stays fixed

CLI_DIR = Path(__file__).resolve().parent.parent / "crane" / "cli"
ESCAPERS = {"safe", "safe_lines", "json_text"}


def _escaped(node: ast.expr) -> bool:
    """A constant, a call to an escaping function, or a sum of those."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _escaped(node.left) and _escaped(node.right)
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name) and f.id in ESCAPERS:
            return True
        if isinstance(f, ast.Attribute) and f.attr == "dumps" and isinstance(f.value, ast.Name) and f.value.id == "json":
            return True
    return False


def _output_call(node: ast.Call) -> bool:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id in ("print", "input")
    if isinstance(f, ast.Attribute):
        if f.attr in ("echo", "secho"):
            return True
        if f.attr == "write" and isinstance(f.value, ast.Attribute) and f.value.attr in ("stdout", "stderr"):
            return True
        if f.attr == "write" and isinstance(f.value, ast.Name) and f.value.id == "os":
            return True
    return False


# Functions allowed to write raw bytes: a step's own output (crun), sent by
# the agent to the step's owner only, goes to the owner's terminal unchanged,
# as srun does (escaping it would break the user's own programs' output:
# colours, progress bars, binary). Text crun shows about others (a cancel
# message) still goes through safe().
RAW_OUTPUT_HELPERS = {("crun.py", "write_step_output"),
                      # the man page generator (a build tool): troff made from our own option definitions
                      ("manpages.py", "main")}  # fmt: skip


def test_every_cli_output_is_escaped() -> None:
    """Every print/input/click.echo/sys.std*.write in crane/cli prints a
    constant or text passed through safe()/safe_lines()/json_text(), so a new
    view cannot print a record's field raw."""
    bad = []
    files = sorted(CLI_DIR.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        raw = {id(n) for f in ast.walk(tree)
               if isinstance(f, ast.FunctionDef) and (path.name, f.name) in RAW_OUTPUT_HELPERS
               for n in ast.walk(f)}  # fmt: skip
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _output_call(node) and id(node) not in raw:
                args = [*node.args, *(k.value for k in node.keywords if k.arg in ("message", "text"))]
                if not all(_escaped(a) for a in args):
                    bad.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:100]}")
    assert not bad, "output not passed through crane.core.text.safe:\n" + "\n".join(bad)
