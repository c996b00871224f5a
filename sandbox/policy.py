"""OS-level containment applied around a worker: rlimits, a private network namespace, dropped
privileges (host side, before exec), and a Landlock write-restriction (worker side, before any
candidate code is imported).

Each measure is best-effort where the kernel or the privileges do not allow it, and what was
actually applied is reported in `SandboxInfo`, never silently assumed.
"""

from __future__ import annotations

import ctypes
import os
import resource
import struct
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

CLONE_NEWNET = 0x40000000
NOBODY = 65534


class SandboxConfig(BaseModel):
    """Containment settings of the sandbox backends."""

    isolate_network: bool = True
    """Run the worker in a fresh network namespace (needs root or user namespaces)."""

    isolate_processes: bool = True
    """As root (when privileges are not dropped): run the worker in its own PID namespace with a
    private /proc, so no other process, nor the host's environment, is visible to it."""

    drop_privileges: bool = True
    """Run candidate code (the runner) as uid/gid 65534 when the evaluation starts as root."""

    restrict_writes: bool = True
    """Landlock: the worker may write only its private directory, caches and /dev."""

    restrict_reads: bool = True
    """Landlock: the worker may read only system directories, its interpreter and packages, its
    private directory and caches (not home directories, /tmp, /var or /run). On GPU jobs it is
    applied after CUDA is up (verified on an H200 with Triton, NVRTC and load_inline builds)."""

    max_processes: int = 4096
    """RLIMIT_NPROC for the worker's user (threads count too: CUDA and torch start many)."""

    max_file_bytes: int = 4 << 30
    """RLIMIT_FSIZE: the largest file the worker may write."""

    max_open_files: int = 4096
    """RLIMIT_NOFILE."""

    docker_image: str = "forge-sandbox:latest"
    """Image of the docker backend (`forge sandbox image` builds it without a registry)."""

    docker_memory: str = "16g"
    """Memory limit of the docker backend's container."""

    docker_pids: int = 4096
    """pids limit of the docker backend's container."""

    extra_env: dict[str, str] = Field(default_factory=dict)
    """Variables added to the scrubbed environment (never secrets)."""

    overlap_prestart: Literal["gpu", "always", "never"] = "gpu"
    """Where the next worker is started ahead of its job (`forge worker`, the `local`
    executor's workers): `gpu` starts it as soon as a GPU job starts if another job is already
    waiting (`LocalSandbox.backlog`; else when it ends, so a lone job's timing never waits for
    it), so its start-up (Python, torch, CUDA, its runners and ncu) runs alongside the job,
    while a lock per device (`forge.sandbox.gpu_lock`) keeps that start-up off the GPU whenever
    the job is timed or profiled. `always` does the same for CPU jobs, whose evaluation is itself CPU
    work that the start-up competes with (worth it only with cores to spare: on 2 cores it
    slows a CPU drain). `never` (FORGE_SANDBOX_OVERLAP_PRESTART=never) starts the next worker
    once the job has ended, and takes no lock."""

    @classmethod
    def from_env(cls) -> SandboxConfig:
        """Defaults overridden by `FORGE_SANDBOX_<FIELD>` variables (e.g. FORGE_SANDBOX_ISOLATE_NETWORK=0)."""
        values = {}
        for name in cls.model_fields:
            raw = os.environ.get(f"FORGE_SANDBOX_{name.upper()}")
            if raw is not None:
                values[name] = raw
        return cls.model_validate(values)


def running_as_root() -> bool:
    return os.geteuid() == 0


@cache
def network_namespace_available() -> bool:
    probe = (
        "import ctypes,sys;"
        f"sys.exit(0 if ctypes.CDLL(None, use_errno=True).unshare({CLONE_NEWNET}) == 0 else 1)"
    )
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def world_traversable(path: str) -> bool:
    """Whether uid 65534 could run the interpreter at `path` (every parent must be o+x)."""
    current = Path(path).resolve()
    return all(os.stat(p).st_mode & 0o001 for p in [current, *current.parents])


class PidsCgroup:
    """A pids cgroup capping the worker's process tree (fork bombs), as root, where rlimits do
    not bind. cgroup v1 (`/sys/fs/cgroup/pids`) or v2 with the pids controller enabled."""

    ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, name: str, limit: int) -> PidsCgroup | None:
        if not running_as_root():
            return None
        for root in cls.ROOTS:
            if not (root / "cgroup.procs").exists():
                continue
            if root.name == "cgroup" and "pids" not in _read(root / "cgroup.subtree_control"):
                continue
            path = root / name
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(limit))
            except OSError:
                continue
            return cls(path)
        return None

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def kill_all(self) -> None:
        for _ in range(20):
            pids = _read(self.path / "cgroup.procs").split()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def remove(self) -> None:
        self.kill_all()
        try:
            self.path.rmdir()
        except OSError:
            time.sleep(0.2)
            self.path.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


@cache
def pid_namespace_available() -> bool:
    try:
        return (
            subprocess.run([*PID_NAMESPACE, "true"], capture_output=True, timeout=30).returncode
            == 0
        )
    except FileNotFoundError:
        return False


def preexec(config: SandboxConfig, isolate_network: bool, drop: bool, cgroup: PidsCgroup | None):
    """The function the child runs between fork and exec (no Python threads there)."""

    def apply() -> None:
        if cgroup is not None:
            cgroup.enter()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (config.max_file_bytes, config.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (config.max_open_files, config.max_open_files))
        resource.setrlimit(resource.RLIMIT_NPROC, (config.max_processes, config.max_processes))
        if isolate_network and ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
            os._exit(97)
        if drop:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    return apply


# Landlock (Linux >= 5.13). Constants from include/uapi/linux/landlock.h.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_FS_WRITE_RIGHTS_V1 = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14
_FS_READ_FILE, _FS_READ_DIR = 1 << 2, 1 << 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1


def landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(version, 0)


SYSTEM_READABLE = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/proc",
    "/sys",
    "/dev",
)


def default_readable() -> list[str]:
    """What a worker reads: system directories, the interpreter and every import location.
    Home directories, /tmp (other jobs), /var, /run and /root are not among them."""
    import importlib.util

    places = [*SYSTEM_READABLE, sys.prefix, sys.base_prefix, sys.exec_prefix]
    places += [p for p in sys.path if p and os.path.isdir(p)]
    for name in ("forge", "torch", "triton", "cupy", "pydantic"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            places.append(os.path.dirname(os.path.realpath(spec.origin)))
    return sorted(set(places))


def restrict_filesystem(writable: list[str], readable: list[str] | None = None) -> dict[str, bool]:
    """Landlock for this process and its children: writes only beneath `writable`; when
    `readable` is given, reads only beneath it and `writable` (a root worker cannot read ~/.aws
    or another job's files); TCP connect/bind denied when the ABI allows. Returns what applied."""
    abi = landlock_abi()
    if abi < 1:
        return {"filesystem": False, "reads": False, "network": False}
    write_rights = (
        _FS_WRITE_RIGHTS_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    )
    read_rights = _FS_READ_FILE | _FS_READ_DIR if readable is not None else 0
    fs_rights = write_rights | read_rights
    net_rights = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    if abi >= 6:
        attr = struct.pack("QQQ", fs_rights, net_rights, 0)
    elif abi >= 4:
        attr = struct.pack("QQ", fs_rights, net_rights)
    else:
        attr = struct.pack("Q", fs_rights)
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(_SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    rules = [(path, fs_rights) for path in writable] + [
        (path, read_rights) for path in readable or []
    ]
    try:
        for path, rights in rules:
            if not os.path.isdir(path):
                continue
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
                if (
                    libc.syscall(
                        _SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, rule, ctypes.c_uint32(0)
                    )
                    != 0
                ):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return {"filesystem": True, "reads": readable is not None, "network": net_rights != 0}


def cache_environment(cache_dir: Path, workdir: Path) -> dict[str, str]:
    """Point every compiler cache at `cache_dir` and every scratch location at `workdir`."""
    return {
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "XDG_CACHE_HOME": str(cache_dir / "xdg"),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        "TORCH_EXTENSIONS_DIR": str(cache_dir / "torch_extensions"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"),
        "CUPY_CACHE_DIR": str(cache_dir / "cupy"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
