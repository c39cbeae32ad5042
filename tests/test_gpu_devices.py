"""GPU device isolation (crane.agent.devices) on the real kernel.

No GPU here: the tests create character device nodes with nvidia's major
(195). Opening one that the cgroup allows fails with ENXIO (no driver behind
it); one the cgroup denies fails with EPERM. Needs root and cgroups; skipped
otherwise.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from crane.agent import cgroup as cgmod
from crane.agent import devices
from crane.agent.cgroup import StepCgroup
from crane.agent.launcher import spawn

from .conftest import ensure_user

IS_ROOT = os.geteuid() == 0
MAJOR = 195  # nvidia's

# the child: try to open each path, print the errno name (or OK)
PROBE = (
    "import errno, os, sys\n"
    "for p in sys.argv[1:]:\n"
    "    try:\n"
    "        os.close(os.open(p, os.O_RDWR))\n"
    "        print('OK', flush=True)\n"
    "    except OSError as e:\n"
    "        print(errno.errorcode.get(e.errno, e.errno), flush=True)\n"
)


# ---------------------------------------------------------------- pure


def test_denied_devices_fail_closed_on_missing_and_non_devices(tmp_path: Any) -> None:
    """Red team: a missing or non-device path was skipped, so a device node
    created there later (as nvidia-modprobe does) was open to every job."""
    real = tmp_path / "file"
    real.write_text("x")
    link = tmp_path / "link"
    os.symlink("/dev/null", link)  # a symlink to a device: never followed
    spec = {"gpus": [0], "gpu_devices": [[0, "/dev/null"], [4, "/dev/zero"], ["x", "/dev/zero"]]}
    got = devices.denied_devices(spec)
    z = os.stat("/dev/zero").st_rdev
    assert got == [devices.Device("c", os.major(z), os.minor(z), "/dev/zero")]
    assert got[0].rule() == f"c {os.major(z)}:{os.minor(z)} rwm"
    for bad in (real, link, tmp_path / "missing"):
        with pytest.raises(OSError, match="cannot isolate"):
            devices.denied_devices({"gpus": [0], "gpu_devices": [[0, "/dev/null"], [1, str(bad)]]})
    # a GPU given to the step need not be resolvable: nothing is denied for it
    assert devices.denied_devices({"gpus": [1], "gpu_devices": [[1, str(tmp_path / "missing")]]}) == []
    assert devices.denied_devices({}) == []
    assert devices.denied_devices({"gpus": [0, 1], "gpu_devices": [[0, "/dev/null"], [1, "/dev/zero"]]}) == []


def test_bpf_program_shape() -> None:
    prog = devices.bpf_program([devices.Device("c", 195, 1, "/x"), devices.Device("b", 8, 0, "/y")])
    assert len(prog) % 8 == 0 and len(prog) // 8 == 4 + 5 * 2 + 2
    assert prog[-8:-7] == b"\x95"  # ends with exit


# ---------------------------------------------------------------- kernel


@pytest.fixture
def nodes() -> Iterator[tuple[str, str]]:
    """Two fake GPU device nodes in a directory every user can traverse."""
    if not IS_ROOT:
        pytest.skip("needs root (mknod, cgroups)")
    d = tempfile.mkdtemp(prefix="crane-gpudev-")
    os.chmod(d, 0o755)
    paths = []
    for i in (0, 1):
        p = os.path.join(d, f"nvidia{i}")
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(MAJOR, 200 + i))
        os.chmod(p, 0o666)
        paths.append(p)
    try:
        try:
            os.close(os.open(paths[0], os.O_RDWR))
        except OSError as e:
            if e.errno != errno.ENXIO:  # e.g. a nodev mount: device nodes unusable here
                pytest.skip(f"device nodes not usable in {d}: {e}")
        yield paths[0], paths[1]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def wait_exit(pid: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.01)


def run_probe(cg: StepCgroup, user: str, paths: list[str], out_dir: str) -> list[str]:
    uid = ensure_user(user)
    gid = pwd.getpwnam(user).pw_gid
    out = os.path.join(out_dir, f"probe-{uuid.uuid4().hex[:6]}.out")
    os.close(os.open(out, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.chown(out, uid, gid)
    pid = spawn(cg, [sys.executable, "-c", PROBE, *paths], uid=uid, gid=gid, user=user, cwd="/",
                env={"PATH": "/usr/bin:/bin"}, stdout=out, stderr=out)  # fmt: skip
    status = wait_exit(pid)
    with open(out) as f:
        text = f.read()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, text
    return text.split()


def cg_modes() -> list[str]:
    return [m for m in cgmod.available_modes() if m != "none"] if IS_ROOT else []


@pytest.mark.parametrize("how", ["auto", "bpf"])
def test_step_denied_gpu_it_was_not_given(nodes: tuple[str, str], how: str) -> None:
    """gpus=[0] of [[0, p0], [1, p1]]: p0 opens as far as the (absent)
    driver, ENXIO; p1 is refused by the cgroup, EPERM. ``auto`` is what the
    agent does in this mode (v1 devices where mounted); ``bpf`` forces the
    cgroup v2 device program on the step's v2 cgroup (hybrid/v2 only)."""
    modes = cg_modes()
    if not modes:
        pytest.skip("no writable cgroup hierarchy")
    mode = modes[0]
    p0, p1 = nodes
    spec = {"gpus": [0], "gpu_devices": [[0, p0], [1, p1]]}
    cg = StepCgroup(f"crane-test-gpu/{uuid.uuid4().hex[:8]}", 1, 1, mode)
    out_dir = os.path.dirname(p0)
    try:
        cg.create()
        if how == "bpf":
            if "v2" not in cg.paths:
                pytest.skip(f"mode {mode}: no cgroup v2 directory for a device program")
            try:
                devices.attach_bpf(cg.paths["v2"], [])  # an allow-all program: is BPF usable here?
            except OSError as e:
                pytest.skip(f"cgroup device BPF not available here: {e}")
            cg.paths.pop("devices", None)  # as in mode v2: no v1 devices hierarchy
            used = devices.apply(cg, spec)
            assert used == "bpf"
        else:
            used = devices.apply(cg, spec)
            assert used in ("v1", "bpf")
        assert run_probe(cg, "alice", [p0, p1], out_dir) == ["ENXIO", "EPERM"], used
        # a step with no GPU is denied both
        spec_none = {"gpus": [], "gpu_devices": [[0, p0], [1, p1]]}
        cg2 = StepCgroup(cg.scope, 1, 2, mode)
        try:
            cg2.create()
            if how == "bpf":
                cg2.paths.pop("devices", None)
            assert devices.apply(cg2, spec_none) == used
            assert run_probe(cg2, "alice", [p0, p1], out_dir) == ["EPERM", "EPERM"]
        finally:
            cg2.kill()
            cg2.remove()
    finally:
        cg.kill()
        cg.remove()
        cgmod.remove_job(cg.scope, 1, mode)
        for root in cgmod.hierarchy_roots(mode):
            for sub in (cg.scope, os.path.dirname(cg.scope)):
                try:
                    os.rmdir(os.path.join(root, sub))
                except OSError:
                    pass


def test_none_mode_runs_without_isolation(nodes: tuple[str, str], caplog: Any) -> None:
    p0, p1 = nodes
    cg = StepCgroup("crane-test-gpu-none", 1, 1, "none")
    assert devices.apply(cg, {"gpus": [0], "gpu_devices": [[0, p0], [1, p1]]}) == "none"


def test_probe_outside_any_restriction(nodes: tuple[str, str]) -> None:
    """Control: without a device rule both opens reach the (absent) driver."""
    r = subprocess.run([sys.executable, "-c", PROBE, *nodes], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["ENXIO", "ENXIO"]


# ---------------------------------------------------------------- end to end


def test_cluster_job_opens_only_its_gpu(nodes: tuple[str, str], make_cluster: Any, users: dict[str, int]) -> None:
    """A node declares two GPUs by DeviceFileList; a job given one GPU sees
    it in CUDA_VISIBLE_DEVICES and can open only its device file; a job with
    no GPU on the same node is denied both; the views show the allocation."""
    if not cg_modes():
        pytest.skip("no writable cgroup hierarchy")
    p0, p1 = nodes
    probe = os.path.join(os.path.dirname(p0), "probe.py")
    with open(probe, "w") as f:
        f.write(PROBE)
    os.chmod(probe, 0o644)
    gres = {"crane01": [{"name": "gpu", "type": "a100", "DeviceFileList": [p0, p1]}]}
    c = make_cluster(nodes=2, gres=gres)
    run = f'{sys.executable} {probe} {p0} {p1}; echo "CVD=${{CUDA_VISIBLE_DEVICES-unset}}"'

    gpu_job = c.submit("-w", "crane01", "--gres", "gpu:a100:1", "-o", c.file("gpu.out"), user="alice",
                       wrap=run + "; exec sleep 300")  # fmt: skip
    out = wait_for_text(c, "gpu.out", "CVD=")
    probe_lines, cvd = out.split()[:2], out.split()[2]
    assert cvd in ("CVD=0", "CVD=1"), out
    mine = int(cvd[4:])
    want = ["ENXIO", "EPERM"] if mine == 0 else ["EPERM", "ENXIO"]
    assert probe_lines == want, out  # its own GPU reaches the (absent) driver; the other is denied

    node = c.ok("ccontrol", "show", "node", "crane01")
    assert "Gres=gpu:a100:2 GpusUsed=1 GpusFree=1" in node, node
    job = c.ok("ccontrol", "show", "job", str(gpu_job))
    assert f"Gres=gpu:a100:1 GpuAlloc=crane01:{mine}" in job, job
    head, *rows = c.ok("cqueue", "-l").splitlines()
    assert "GRES" in head.split() and any("gpu:a100:1" in r.split() for r in rows), (head, rows)
    head, *rows = c.ok("cinfo", "-N").splitlines()
    assert "GPUS(A/F/T)" in head.split(), head
    assert any(r.split()[0] == "crane01" and "1/1/2" in r.split() for r in rows), rows
    c.ok("ccancel", str(gpu_job))
    c.wait_state(gpu_job, "CANCELLED", timeout=60)

    plain = c.submit("-w", "crane01", "-o", c.file("plain.out"), user="alice", wrap=run)
    c.wait_state(plain, "COMPLETED", timeout=60)
    out = wait_for_text(c, "plain.out", "CVD=")
    assert out.split() == ["EPERM", "EPERM", "CVD=unset"], out


def wait_for_text(c: Any, name: str, needle: str, timeout: float = 60.0) -> str:
    from crane.polling import wait_for

    return str(wait_for(lambda: needle in c.read(name) and c.read(name), timeout, f"{needle} in {name}"))
