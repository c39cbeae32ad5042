"""Without root: a whole local cluster run by a plain user. No cgroups: steps
are tracked by process group and by the environment they inherit, so escapees
(setsid, double fork) still die on cancel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from tests.conftest import BIN, pid_alive, wait_for


def _as(user: str, script: str, cwd: str) -> subprocess.CompletedProcess[str]:
    env = f"PATH={BIN}:/usr/bin:/bin HOME={cwd}"
    return subprocess.run(["runuser", "-u", user, "--", "env", *env.split(), "bash", "-c", script],
                          capture_output=True, text=True, timeout=120, cwd=cwd)  # fmt: skip


def test_plain_user_cluster_kills_escapees(users) -> None:  # type: ignore[no-untyped-def]
    base = tempfile.mkdtemp(prefix="crane-nonroot-")
    os.chmod(base, 0o1777)
    d = os.path.join(base, "lc")
    up = _as("bob", f"crane local up --dir {d} --nodes 2", base)
    assert up.returncode == 0, up.stderr
    try:
        conf = f"export CRANE_CONF={d}/config.yaml; "
        job = ("sleep 1201 & echo $! > pids; setsid sleep 1202 & echo $! >> pids; "
               "( (sleep 1203 & echo $! >> pids) & ); sleep 1204")  # fmt: skip
        r = _as("bob", conf + f"cbatch --json --wrap '{job}'", base)
        assert r.returncode == 0, r.stderr
        jid = json.loads(r.stdout)["job_id"]

        def pids() -> list[int] | None:
            try:
                with open(os.path.join(base, "pids")) as f:
                    got = [int(x) for x in f.read().split()]
            except OSError:
                return None
            return got if len(got) == 3 else None

        recorded = wait_for(pids, 30, "the job to record its escapees")
        assert all(pid_alive(p) for p in recorded)
        info = _as("bob", conf + "cinfo --json", base)
        assert '"cgroup": "none"' in info.stdout.replace("'", '"')
        r = _as("bob", conf + f"ccancel --wait {jid}", base)
        assert r.returncode == 0 and f"Job {jid} cancelled successfully." in r.stdout, r.stderr
        assert not any(pid_alive(p) for p in recorded), [p for p in recorded if pid_alive(p)]
        st = _as("bob", conf + f"cacct --json -j {jid}", base)
        assert json.loads(st.stdout)[0]["state"] == "CANCELLED"
    finally:
        _as("bob", f"crane local down --dir {d}", base)
        shutil.rmtree(base, ignore_errors=True)
