"""GPU device isolation: a step may open only the GPU device files it was given.

The controller sends, with each LaunchStep, ``gpu_devices`` (``[[index, path],
...]`` for every GPU of the node that has a device file, from the node's
``DeviceFileList``) and ``gpus`` (the indices given to the job on this node).
Before the step's first process joins its cgroup, the agent denies the step
the device files of every GPU *not* given:

* each path is read with ``lstat`` (a symlink is never followed) and must be a
  character or block device node; a missing path, or anything that is not a
  device node, fails the launch (fail closed: a device file created later,
  e.g. by nvidia-modprobe, would otherwise be open to every job; the config
  must name the real /dev/nvidiaN nodes);
* **cgroup v1 ``devices`` controller** (modes ``v1`` and ``hybrid``, when
  ``/sys/fs/cgroup/devices`` is mounted): the step gets a cgroup in that
  hierarchy too and ``c MAJOR:MINOR rwm`` is written to its ``devices.deny``;
* **cgroup v2** (mode ``v2``, or ``hybrid`` without a v1 ``devices``
  hierarchy): a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program that refuses exactly
  those (type, major, minor) and allows everything else is loaded with
  bpf(2) and attached to the step's cgroup (``BPF_F_ALLOW_MULTI``, so that
  programs of parent cgroups still apply); the cgroup keeps it after the
  agent closes its descriptor, across agent restarts;
* mode ``none`` (agent not root, no cgroups): no isolation; the agent logs it
  once. ``CUDA_VISIBLE_DEVICES`` is still set, so well-behaved programs use
  only their GPUs, but nothing stops one from opening the others.

A denied open fails with ``EPERM`` ("Operation not permitted"). If the
mechanism exists but applying it fails, the launch fails (fail closed); if
the kernel has no device BPF support, the agent warns once and runs the step
without isolation. Only the GPUs' device files are filtered: shared control
files (``/dev/nvidiactl``, ``/dev/nvidia-uvm``) stay open to every job.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import stat
import struct
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("craned.devices")

_warned: set[str] = set()


def _warn_once(key: str, text: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(text, *args)


@dataclass(frozen=True, slots=True)
class Device:
    kind: str  # "c" (character) or "b" (block)
    major: int
    minor: int
    path: str

    def rule(self) -> str:
        """The v1 devices.deny line."""
        return f"{self.kind} {self.major}:{self.minor} rwm"


def parse_spec(spec: dict[str, Any]) -> tuple[list[tuple[int, str]], set[int]]:
    """(gpu_devices, given indices) from a LaunchStep spec; malformed entries
    are dropped (logged)."""
    devices: list[tuple[int, str]] = []
    raw = spec.get("gpu_devices")
    for item in raw if isinstance(raw, list) else []:
        if (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], int)
                and isinstance(item[1], str) and os.path.isabs(item[1]) and "\0" not in item[1]):  # fmt: skip
            devices.append((item[0], item[1]))
        else:
            log.warning("ignoring malformed gpu_devices entry %r", item)
    gpus = spec.get("gpus")  # anything malformed gives nothing: every GPU denied
    given = {g for g in gpus if isinstance(g, int)} if isinstance(gpus, list) else set()
    return devices, given


def device_of(path: str) -> Device:
    """The device node at ``path`` (never following a symlink). OSError when
    there is none: a GPU that cannot be denied fails the launch (red team:
    skipping it left a device created later open to every job)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise OSError(e.errno, f"GPU device {path}: {e.strerror}; cannot isolate it") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise OSError(errno.ENODEV, f"GPU device {path} is not a device node (symlink or file?); cannot isolate it")
    return Device(kind, os.major(st.st_rdev), os.minor(st.st_rdev), path)


def denied_devices(spec: dict[str, Any]) -> list[Device]:
    """The device nodes of the node's GPUs that the step was not given."""
    devices, given = parse_spec(spec)
    out: list[Device] = []
    for index, path in devices:
        if index in given:
            continue
        dev = device_of(path)
        if dev not in out:
            out.append(dev)
    return out


# ---------------------------------------------------------------- cgroup v2: BPF

_BPF_NR = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2
_ATTR_SIZE = 128


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def bpf_program(devs: list[Device]) -> bytes:
    """Instructions: deny (return 0) the listed devices, allow (1) the rest.

    ctx is ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor}``
    with the device type in the low 16 bits of access_type."""
    ldx_w, and32_k, jne_k, mov64_k, exit_ = 0x61, 0x54, 0x55, 0xB7, 0x95
    code = [
        _insn(ldx_w, dst=2, src=1, off=0),  # r2 = ctx->access_type
        _insn(and32_k, dst=2, imm=0xFFFF),  # r2 &= 0xffff (the type)
        _insn(ldx_w, dst=3, src=1, off=4),  # r3 = ctx->major
        _insn(ldx_w, dst=4, src=1, off=8),  # r4 = ctx->minor
    ]
    for d in devs:
        kind = BPF_DEVCG_DEV_CHAR if d.kind == "c" else BPF_DEVCG_DEV_BLOCK
        code += [
            _insn(jne_k, dst=2, off=4, imm=kind),
            _insn(jne_k, dst=3, off=3, imm=d.major),
            _insn(jne_k, dst=4, off=2, imm=d.minor),
            _insn(mov64_k, dst=0, imm=0),
            _insn(exit_),
        ]
    code += [_insn(mov64_k, dst=0, imm=1), _insn(exit_)]
    return b"".join(code)


def _bpf(cmd: int, attr: bytes) -> int:
    nr = _BPF_NR.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    rc = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(_ATTR_SIZE))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(rc)


def attach_bpf(cgroup_dir: str, devs: list[Device]) -> None:
    """Load the device program and attach it to ``cgroup_dir`` (a v2 cgroup)."""
    insns = bpf_program(devs)
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    logbuf = ctypes.create_string_buffer(4096)
    attr = struct.pack("<IIQQIIQ", BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8, ctypes.addressof(ibuf),
                       ctypes.addressof(lic), 1, len(logbuf), ctypes.addressof(logbuf))  # fmt: skip
    try:
        prog = _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        text = logbuf.value.decode(errors="replace").strip()
        raise OSError(e.errno, f"BPF_PROG_LOAD: {e.strerror}" + (f" ({text})" if text else "")) from None
    try:
        cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _bpf(BPF_PROG_ATTACH, struct.pack("<IIII", cg, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI))
        except OSError as e:
            raise OSError(e.errno, f"BPF_PROG_ATTACH to {cgroup_dir}: {e.strerror}") from None
        finally:
            os.close(cg)
    finally:
        os.close(prog)


# ---------------------------------------------------------------- apply


def apply(cg: Any, spec: dict[str, Any]) -> str:
    """Deny the step in ``cg`` (an existing StepCgroup with no process yet)
    the GPUs it was not given. Returns how ("", "v1", "bpf", "none").
    Raises OSError when the mechanism is present but fails."""
    if not spec.get("gpu_devices"):
        return ""
    devs = denied_devices(spec)
    if not devs:
        return ""
    if cg.mode == "none":
        _warn_once("none", "no cgroups (agent not root): GPU device files are not isolated")
        return "none"
    v1 = cg.paths.get("devices")
    if v1:
        for d in devs:
            path = os.path.join(v1, "devices.deny")
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, d.rule().encode())
            except OSError as e:
                raise OSError(e.errno, f"cannot write {d.rule()!r} to {path}: {e.strerror}") from None
            finally:
                os.close(fd)
        log.info("%s: denied %s", cg.rel, ", ".join(d.path for d in devs))
        return "v1"
    v2 = cg.paths.get("v2")
    if not v2:
        _warn_once("nodev", "no devices cgroup controller: GPU device files are not isolated")
        return "none"
    try:
        attach_bpf(v2, devs)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            _warn_once("bpf", "cgroup device BPF unavailable (%s): GPU device files are not isolated", e)
            return "none"
        raise
    log.info("%s: denied %s (bpf)", cg.rel, ", ".join(d.path for d in devs))
    return "bpf"
