"""Containment the evaluator's runner applies to itself, in Python, before candidate code runs.

The runner (`python -P -m forge.evaluator.runner`) is started by the trusted process, possibly as
root, and then contains itself in this order:

1. `private_mounts` (still root, still single-threaded): its own mount namespace with a fresh
   tmpfs on /tmp and /dev/shm, /dev reduced to the device nodes the job needs, and directories
   that uid 65534 could not traverse (e.g. /root holding the interpreter) masked so that only
   the needed child stays visible.
2. imports of torch/triton and, on GPU hosts, CUDA initialisation (not here).
3. `drop_privileges` to uid/gid 65534, keeping CAP_DAC_READ_SEARCH only when a needed path is
   still not world-traversable.
4. Landlock (`forge.sandbox.policy.restrict_filesystem`).
5. `apply_seccomp`: no new UNIX (pathname or abstract) or vsock sockets, no device nodes, no
   ptrace-like access, no io_uring.

Row 27 of EXPLOITS.md is why: Landlock and a network namespace do not cover /dev/shm, pathname
and abstract UNIX sockets (the Docker daemon's, another job's) or device nodes, and a root
runner can kill or read anything.

Every step reports what applied and never raises because the host does not support it (not
root, a container without CAP_SYS_ADMIN, an unknown architecture): the report says why.
`before_imports` / `after_imports` chain the steps and return the fields of `SandboxInfo`.

Kernel constants are cited from include/uapi/linux/{sched,mount,prctl,capability,seccomp,
filter,audit,elf-em}.h, include/linux/socket.h and the syscall tables of x86_64
(arch/x86/entry/syscalls/syscall_64.tbl) and aarch64 (include/uapi/asm-generic/unistd.h).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from forge.sandbox.policy import NOBODY, default_readable, restrict_filesystem

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
_libc.syscall.restype = ctypes.c_long

# include/uapi/linux/sched.h
CLONE_NEWNS = 0x00020000
# include/uapi/linux/mount.h
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2

TMP, DEV, SHM = Path("/tmp"), Path("/dev"), Path("/dev/shm")
DEVICE_NODES = ("null", "zero", "full", "random", "urandom")
"""What any job needs from /dev; on GPU hosts every /dev/nvidia* node is added."""
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


class MountReport(BaseModel):
    """What `private_mounts` applied."""

    namespace: bool = False
    """Own mount namespace, every mount private (nothing propagates to or from the host)."""

    private_tmp: bool = False
    """A fresh tmpfs on /tmp; the workdir and kept directories under it bound back in place."""

    private_dev_shm: bool = False
    """A fresh tmpfs on /dev/shm (POSIX shared memory of other jobs and the host is out of
    sight)."""

    dev_limited: bool = False
    """/dev is a read-only tmpfs holding only the needed device nodes, /dev/shm and links."""

    masked: list[str] = Field(default_factory=list)
    """Directories others cannot traverse (e.g. /root) hidden under a mode-0711 tmpfs that holds
    only the needed child (e.g. /root/.pyenv), so uid 65534 reaches the interpreter without a
    capability and sees nothing else there."""

    notes: list[str] = Field(default_factory=list)
    """Why something did not apply."""


class PrivilegeReport(BaseModel):
    """What `drop_privileges` applied (uids and capabilities read back from the kernel)."""

    privileges_dropped: bool = False
    uid: int = Field(default_factory=os.getuid)
    gid: int = Field(default_factory=os.getgid)
    kept_capabilities: list[str] = Field(default_factory=list)
    """Capabilities still effective after the drop (at most CAP_DAC_READ_SEARCH)."""

    notes: list[str] = Field(default_factory=list)


class SeccompReport(BaseModel):
    """What `apply_seccomp` applied."""

    applied: bool = False
    arch: str = Field(default_factory=platform.machine)
    all_threads: bool = False
    """Installed with SECCOMP_FILTER_FLAG_TSYNC: threads started by torch/CUDA are filtered too."""

    unix_sockets_blocked: bool = False
    """Verified after installing: socket(AF_UNIX) fails with EPERM."""

    denied: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# ---- small wrappers --------------------------------------------------------------------------


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: Path | str, fstype: str | None, flags: int, data=None):
    enc = [None if v is None else str(v).encode() for v in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], flags, enc[3]) != 0:
        raise _fail(f"mount {source or ''} on {target}")


def _detach(target: Path) -> None:
    """Undo a half-built mount (and everything bound below it) so the host's view comes back."""
    _libc.umount2(str(target).encode(), MNT_DETACH)


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    if _libc.prctl(option, arg2, arg3, 0, 0) != 0:
        raise _fail(f"prctl({option}, {arg2}, {arg3})")


def _beneath(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """Drop paths lying under another one: binding the outer directory keeps them visible."""
    chosen: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(_beneath(path, c) for c in chosen):
            chosen.append(path)
    return chosen


# ---- (1) private mounts -----------------------------------------------------------------------


@dataclass
class _Pin:
    """An O_PATH descriptor held on a path before something is mounted over it: binding
    /proc/self/fd/N back afterwards puts the very same directory or device at the same path."""

    path: Path
    fd: int
    is_dir: bool

    @classmethod
    def open(cls, path: Path) -> _Pin:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        return cls(path, fd, stat.S_ISDIR(os.fstat(fd).st_mode))

    def rebind(self) -> None:
        _make_dirs(self.path if self.is_dir else self.path.parent)
        if not self.is_dir and not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        _mount(f"/proc/self/fd/{self.fd}", self.path, None, MS_BIND | MS_REC)


def _make_dirs(path: Path) -> None:
    """mkdir -p with mode 0755 whatever the umask (uid 65534 must traverse them)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        os.mkdir(p)
        os.chmod(p, 0o755)


def _pin_all(paths: Iterable[Path]) -> list[_Pin]:
    pins: list[_Pin] = []
    try:
        for path in paths:
            pins.append(_Pin.open(path))
    except OSError:
        _close(pins)
        raise
    return pins


def _close(pins: Iterable[_Pin]) -> None:
    for pin in pins:
        os.close(pin.fd)


def _cover(target: Path, options: str, flags: int, keep: Sequence[Path]) -> None:
    """Mount a fresh tmpfs on `target` and bind the `keep` paths below it back in place.
    All or nothing: on any error the tmpfs is detached again and the error raised."""
    pins = _pin_all(keep)
    try:
        _mount("tmpfs", target, "tmpfs", flags, options)
        try:
            for pin in pins:
                pin.rebind()
        except OSError:
            _detach(target)
            raise
    finally:
        _close(pins)


def _new_namespace() -> None:
    """unshare(CLONE_NEWNS) then make every mount private (MS_REC|MS_PRIVATE on /): without the
    second step, mounts below a shared mount (systemd makes / shared) would propagate to the
    host. unshare fails with EINVAL once the process has threads (they share its fs_struct),
    which is why this runs before torch is imported."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise _fail("unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def _first_blocked(path: Path) -> Path | None:
    """The outermost directory on the way to `path` (or `path` itself when it is a directory)
    that others may not search (no o+x): uid 65534 cannot reach `path` through it."""
    for p in [*reversed(path.parents), path]:
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return p
    return None


def unreachable(paths: Iterable[str | Path]) -> list[str]:
    """The existing paths among `paths` that uid 65534 could not reach."""
    out = []
    for raw in paths:
        path = Path(os.path.realpath(raw))
        if path.exists() and _first_blocked(path) is not None:
            out.append(str(path))
    return out


def _mask_blocked(needed: Sequence[Path], notes: list[str]) -> list[str]:
    """Hide each non-traversable ancestor of a needed path (e.g. /root, mode 0700) under a
    mode-0711 tmpfs holding only the needed children, bound back: uid 65534 can then reach the
    interpreter without CAP_DAC_READ_SEARCH and sees nothing else of that directory (~/.aws,
    ~/.ssh, API key files). Repeats for deeper blocked levels."""
    masked: list[str] = []
    for _ in range(16):
        groups: dict[Path, set[Path]] = {}
        for path in needed:
            blocked = _first_blocked(path)
            if blocked is None or blocked == path:
                continue  # reachable, or the needed directory itself is closed: nothing to mask
            child = blocked / path.relative_to(blocked).parts[0]
            groups.setdefault(blocked, set()).add(child)
        if not groups:
            break
        top = min(groups, key=lambda p: len(p.parts))
        st = os.stat(top)
        options = f"size=1m,nr_inodes=4096,mode=0711,uid={st.st_uid},gid={st.st_gid}"
        try:
            _cover(top, options, MS_NOSUID | MS_NODEV, _outermost(groups[top]))
        except OSError as exc:
            notes.append(f"could not mask {top}: {exc}")
            break
        masked.append(str(top))
    return masked


def _private_tmp(keep: Sequence[Path], size: str, notes: list[str]) -> bool:
    inside = [p for p in keep if _beneath(p, TMP)]
    if TMP in inside:
        notes.append("/tmp itself is a kept directory: left shared")
        return False
    try:
        _cover(TMP, f"size={size},mode=1777", MS_NOSUID | MS_NODEV, _outermost(inside))
    except OSError as exc:
        notes.append(f"no private /tmp: {exc}")
        return False
    return True


def _private_shm(keep: Sequence[Path], size: str, notes: list[str]) -> bool:
    inside = [p for p in keep if _beneath(p, SHM) and p != SHM]
    if not SHM.is_dir():
        notes.append("no /dev/shm on this host")
        return False
    try:
        _cover(SHM, f"size={size},mode=1777", MS_NOSUID | MS_NODEV, _outermost(inside))
    except OSError as exc:
        notes.append(f"no private /dev/shm: {exc}")
        return False
    return True


def device_nodes(gpu: bool) -> list[Path]:
    """The character devices a job needs: null, zero, full, random, urandom and, on GPU hosts,
    every /dev/nvidia* node (nvidiactl, nvidiaN, nvidia-uvm[-tools], nvidia-modeset) and the
    nodes of /dev/nvidia-caps/ and any other /dev/nvidia* directory."""
    candidates = [DEV / name for name in DEVICE_NODES]
    if gpu:
        for entry in sorted(DEV.glob("nvidia*")):
            candidates += sorted(entry.iterdir()) if entry.is_dir() else [entry]
    return [p for p in candidates if p.exists() and stat.S_ISCHR(os.lstat(p).st_mode)]


def _limited_dev(gpu: bool, notes: list[str]) -> bool:
    """Replace /dev by a tmpfs with only the needed nodes (bind mounts keep the devtmpfs mount's
    flags, so the tmpfs itself can be nodev/noexec), /dev/shm and the fd links, then remount it
    read-only (MS_REMOUNT|MS_BIND|MS_RDONLY): nothing new can be created under /dev, even by a
    process that kept CAP_MKNOD, while /dev/shm, a mount of its own, stays writable."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    keep = [*device_nodes(gpu), *([SHM] if SHM.is_dir() else [])]
    try:
        _cover(DEV, "size=1m,nr_inodes=4096,mode=0755", flags, keep)
    except OSError as exc:
        notes.append(f"/dev not limited: {exc}")
        return False
    try:
        for name, target in DEV_LINKS.items():
            os.symlink(target, DEV / name)
        _mount(None, DEV, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    except OSError as exc:
        _detach(DEV)
        notes.append(f"/dev not limited: {exc}")
        return False
    return True


def _restore_cwd(cwd: str, workdir: Path, notes: list[str]) -> None:
    """Re-enter the working directory through the new mounts: the old cwd still points into the
    hidden /tmp, and `..` from there would lead into directories this namespace covers."""
    for place in (cwd, str(workdir)):
        try:
            os.chdir(place)
            return
        except OSError:
            continue
    notes.append(f"working directory {cwd} not reachable after the mounts")


def private_mounts(
    workdir: Path,
    keep_dirs: Sequence[Path | str] = (),
    gpu: bool = False,
    needed: Sequence[Path | str] | None = None,
    tmp_size: str = "1g",
    shm_size: str = "1g",
) -> MountReport:
    """(1) A private mount namespace for this process: fresh tmpfs on /tmp and /dev/shm, /dev
    limited to the job's device nodes, and non-traversable ancestors of `needed` paths masked.

    `workdir` and `keep_dirs` (caches) stay visible at the same paths when they live under /tmp
    or /dev/shm (they are pinned by an O_PATH descriptor before the tmpfs goes on and bound back
    from /proc/self/fd/N). `needed` lists what the process must still reach as uid 65534
    (default: `policy.default_readable()`: interpreter, packages, system directories); those
    under /tmp are kept too. Must run as root (CAP_SYS_ADMIN) before any thread is started."""
    report = MountReport()
    try:
        _new_namespace()
    except OSError as exc:
        report.notes.append(
            f"no private mounts: {exc} (needs CAP_SYS_ADMIN: not root, or a container without it;"
            " unshare also fails once the process has threads)"
        )
        return report
    report.namespace = True
    workdir = Path(os.path.realpath(workdir))
    wanted = [Path(os.path.realpath(p)) for p in (default_readable() if needed is None else needed)]
    wanted = [p for p in wanted if p.exists()]
    keep = [workdir, *(Path(os.path.realpath(p)) for p in keep_dirs)]
    keep += [p for p in wanted if _beneath(p, TMP) or _beneath(p, SHM)]
    cwd = os.getcwd()
    report.private_tmp = _private_tmp(keep, tmp_size, report.notes)
    report.masked = _mask_blocked(wanted, report.notes)
    report.private_dev_shm = _private_shm(keep, shm_size, report.notes)
    report.dev_limited = _limited_dev(gpu, report.notes)
    _restore_cwd(cwd, workdir, report.notes)
    return report


# ---- (3) dropping privileges ------------------------------------------------------------------

# include/uapi/linux/prctl.h
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
# include/uapi/linux/capability.h
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_DAC_READ_SEARCH = 2
CAPABILITY_NAMES = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID "
    "CAP_SETUID CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST "
    "CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO "
    "CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE "
    "CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE CAP_AUDIT_WRITE "
    "CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG CAP_WAKE_ALARM "
    "CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
).split()
"""Bit number -> name (include/uapi/linux/capability.h)."""


def _status_field(name: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{name}:"):
                return line.split(":", 1)[1].strip()
    return ""


def capability_names(mask: int) -> list[str]:
    return [
        CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"CAP_{bit}"
        for bit in range(64)
        if mask >> bit & 1
    ]


def effective_capabilities() -> list[str]:
    return capability_names(int(_status_field("CapEff") or "0", 16))


def _limit_bounding_set(keep: Sequence[int], notes: list[str]) -> None:
    """PR_CAPBSET_DROP every capability but `keep` while CAP_SETPCAP is still held: a setuid-root
    program exec'd later could otherwise regain them (NO_NEW_PRIVS, set below, also stops it)."""
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = len(CAPABILITY_NAMES) - 1
    for cap in range(last + 1):
        if cap not in keep and _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            notes.append(f"bounding set: {_fail(capability_names(1 << cap)[0])}")
            return


def _capset(caps: Sequence[int]) -> None:
    """capset(2), version 3: two 32-bit words per set. Effective, permitted and inheritable are
    all set to `caps` (inheritable is needed to raise them as ambient)."""
    low = sum(1 << c for c in caps if c < 32)
    high = sum(1 << (c - 32) for c in caps if c >= 32)
    header = ctypes.create_string_buffer(struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(struct.pack("=6I", low, low, low, high, high, high))
    if _libc.capset(header, data) != 0:
        raise _fail("capset")


def _keep_read_search_after_uid_change() -> None:
    """After setresuid with PR_SET_KEEPCAPS the permitted set survives but the effective set is
    empty: narrow everything to CAP_DAC_READ_SEARCH and raise it as an ambient capability, so
    programs this process execs (nvcc, Triton's ptxas in site-packages) keep it too."""
    _capset([CAP_DAC_READ_SEARCH])
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH)
    _prctl(PR_SET_KEEPCAPS, 0)


def drop_privileges(
    uid: int = NOBODY, gid: int = NOBODY, needed: Sequence[Path | str] | None = None
) -> PrivilegeReport:
    """(3) Become uid/gid `uid`/`gid` for good (real, effective and saved ids; no supplementary
    groups): the candidate cannot signal, trace or read root's processes, write root's files
    or mknod. glibc's setres[ug]id apply to every thread of the process.

    When a `needed` path (default `policy.default_readable()`) is still not reachable by others
    (interpreter or site-packages under /root, mode 0700, and `private_mounts` could not mask
    it), CAP_DAC_READ_SEARCH alone is kept, effective and ambient: lazily imported modules and
    exec'd compilers stay readable, and Landlock's read allowlist, applied right after,
    confines what it opens (seccomp denies open_by_handle_at, which the capability unlocks).
    Everything else is dropped, the bounding set included, and NO_NEW_PRIVS is set."""
    if os.geteuid() != 0:
        return PrivilegeReport(notes=["not started as root"])
    report = PrivilegeReport()
    blocked = unreachable(default_readable() if needed is None else needed)
    keep = [CAP_DAC_READ_SEARCH] if blocked else []
    if blocked:
        report.notes.append(f"kept CAP_DAC_READ_SEARCH: others cannot reach {blocked[0]}")
    try:
        _limit_bounding_set(keep, report.notes)
        if keep:
            _prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if keep:
            _keep_read_search_after_uid_change()
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        report.notes.append(f"privilege drop incomplete: {exc}")
    report.uid, report.gid = os.getuid(), os.getgid()
    ids = {*os.getresuid(), *os.getresgid()}
    report.privileges_dropped = ids <= {uid, gid} and 0 not in ids
    report.kept_capabilities = effective_capabilities()
    return report


# ---- (5) seccomp ------------------------------------------------------------------------------

# include/uapi/linux/filter.h, bpf_common.h: classic BPF opcodes
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
# include/uapi/linux/seccomp.h
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_NR, _ARCH, _ARGS = 0, 4, 16
# arch/x86/include/uapi/asm/unistd.h: x32 syscalls are native numbers with this bit set
_X32_SYSCALL_BIT = 0x40000000
# include/linux/socket.h
AF_INET, AF_INET6, AF_NETLINK = 2, 10, 16
ALLOWED_SOCKET_DOMAINS = (AF_INET, AF_INET6, AF_NETLINK)
"""socket()/socketpair() families left open. Not AF_UNIX (1): host daemons' pathname and
abstract sockets, which neither Landlock nor a network namespace (for pathname ones) stops.
Not AF_VSOCK (40): it reaches the hypervisor and is not namespaced. INET sockets stay (the
network namespace and Landlock's TCP rules govern them), NETLINK too (glibc's getaddrinfo)."""
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000


@dataclass(frozen=True)
class _Arch:
    audit: int  # AUDIT_ARCH_*: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    seccomp_nr: int
    socket: int
    socketpair: int
    mknod: tuple[tuple[str, int, int], ...]  # (name, nr, index of the mode argument)
    denied: tuple[tuple[str, int], ...]
    x32: bool = False


# Syscalls numbered alike on every architecture (added after the tables were unified).
_COMMON = (
    ("pidfd_getfd", 438),
    ("io_uring_setup", 425),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
    ("open_tree", 428),
    ("move_mount", 429),
    ("fsopen", 430),
    ("fsconfig", 431),
    ("fsmount", 432),
    ("fspick", 433),
    ("mount_setattr", 442),
)
ARCHES = {
    "x86_64": _Arch(
        audit=0xC000003E,  # EM_X86_64 (62)
        seccomp_nr=317,
        socket=41,
        socketpair=53,
        mknod=(("mknod", 133, 1), ("mknodat", 259, 2)),
        denied=(
            ("ptrace", 101),
            ("process_vm_readv", 310),
            ("process_vm_writev", 311),
            ("open_by_handle_at", 304),
            ("mount", 165),
            ("umount2", 166),
            ("pivot_root", 155),
            ("unshare", 272),
            ("setns", 308),
            *_COMMON,
        ),
        x32=True,
    ),
    "aarch64": _Arch(
        audit=0xC00000B7,  # EM_AARCH64 (183)
        seccomp_nr=277,
        socket=198,
        socketpair=199,
        mknod=(("mknodat", 33, 2),),
        denied=(
            ("ptrace", 117),
            ("process_vm_readv", 270),
            ("process_vm_writev", 271),
            ("open_by_handle_at", 265),
            ("mount", 40),
            ("umount2", 39),
            ("pivot_root", 41),
            ("unshare", 97),
            ("setns", 268),
            *_COMMON,
        ),
    ),
}
"""Why each denial: ptrace, process_vm_readv/writev and pidfd_getfd read or steer other
processes of the same uid (another job's runner); open_by_handle_at opens files by inode,
around paths, with the CAP_DAC_READ_SEARCH a runner may keep; io_uring runs socket/connect/
openat operations without passing through seccomp at all; the mount family, unshare and setns
would let a runner that still holds CAP_SYS_ADMIN (privileges not dropped) undo the private
mounts (Landlock denies mount changes too, where it is available)."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


_DENY = _insn(_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
_ALLOW = _insn(_RET_K, SECCOMP_RET_ALLOW)


def _arg(index: int) -> tuple[int, int, int, int]:
    """Load the low 32 bits of argument `index` (little-endian): the kernel reads int/mode_t
    arguments from those bits only, so high bits cannot smuggle a value past the check."""
    return _insn(_LD_W_ABS, _ARGS + 8 * index)


def _mknod_block(nr: int, mode_arg: int) -> list[tuple[int, int, int, int]]:
    """mknod of a character or block device fails with EPERM; FIFOs and regular files stay
    allowed (os.mkfifo is mknodat, and make's jobserver uses a FIFO). Ends by reloading nr."""
    return [
        _insn(_JEQ_K, nr, jf=5),
        _arg(mode_arg),
        _insn(_AND_K, S_IFMT),
        _insn(_JEQ_K, S_IFCHR, jt=1),
        _insn(_JEQ_K, S_IFBLK, jf=1),
        _DENY,
        _insn(_LD_W_ABS, _NR),
    ]


def _socket_block(arch: _Arch) -> list[tuple[int, int, int, int]]:
    """socket()/socketpair() with a family outside ALLOWED_SOCKET_DOMAINS fail with EPERM. Must
    be followed directly by the final ALLOW, which its jumps target."""
    n = len(ALLOWED_SOCKET_DOMAINS)
    block = [
        _insn(_JEQ_K, arch.socket, jt=1),
        _insn(_JEQ_K, arch.socketpair, jf=n + 2),
        _arg(0),
    ]
    block += [_insn(_JEQ_K, dom, jt=n - i) for i, dom in enumerate(ALLOWED_SOCKET_DOMAINS)]
    return [*block, _DENY]


def seccomp_program(arch: _Arch) -> list[tuple[int, int, int, int]]:
    """The filter: foreign-ABI syscalls (i386 through int 0x80, x32, arm32 compat) are denied
    outright, since their numbers differ (i386 multiplexes sockets through socketcall); then the
    denied syscalls, device mknod, socket families; everything else is allowed."""
    prog = [_insn(_LD_W_ABS, _ARCH), _insn(_JEQ_K, arch.audit, jt=1), _DENY, _insn(_LD_W_ABS, _NR)]
    if arch.x32:
        prog += [_insn(_JGE_K, _X32_SYSCALL_BIT, jf=1), _DENY]
    for _name, nr in arch.denied:
        prog += [_insn(_JEQ_K, nr, jf=1), _DENY]
    for _name, nr, mode_arg in arch.mknod:
        prog += _mknod_block(nr, mode_arg)
    return [*prog, *_socket_block(arch), _ALLOW]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install(prog: list[tuple[int, int, int, int]], arch: _Arch) -> bool:
    """Install the filter on every thread (seccomp(2) with TSYNC); where that fails, on this
    thread only (prctl). Returns whether all threads got it."""
    code = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # required for an unprivileged filter, kept across exec
    rc = _libc.syscall(
        ctypes.c_long(arch.seccomp_nr),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(fprog),
    )
    if rc == 0:
        return True
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise _fail("prctl(PR_SET_SECCOMP)")
    return False


def _unix_socket_denied() -> bool:
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    except PermissionError:
        return True
    return False


def apply_seccomp() -> SeccompReport:
    """(5) A seccomp filter (classic BPF built here: no libseccomp on GPU hosts) that makes new
    UNIX and vsock sockets, device-node mknod, ptrace, process_vm_readv/writev, pidfd_getfd,
    open_by_handle_at and io_uring fail with EPERM. Sockets already held (the runner's
    socketpair to the trusted process) keep working: send/recv are not filtered."""
    report = SeccompReport()
    arch = ARCHES.get(report.arch)
    if arch is None:
        report.notes.append(f"seccomp: no syscall table for {report.arch}")
        return report
    try:
        report.all_threads = _install(seccomp_program(arch), arch)
    except OSError as exc:
        report.notes.append(f"seccomp not applied: {exc}")
        return report
    report.applied = True
    report.denied = [n for n, _ in arch.denied] + [f"{n} (devices)" for n, _, _ in arch.mknod]
    report.denied.append("socket/socketpair (families other than INET, INET6, NETLINK)")
    if not report.all_threads:
        report.notes.append("seccomp: TSYNC failed, only the calling thread is filtered")
    report.unix_sockets_blocked = _unix_socket_denied()
    return report


# ---- orchestration ----------------------------------------------------------------------------


class RunnerContainment(BaseModel):
    """Everything the runner applied to itself, step by step."""

    mounts: MountReport = Field(default_factory=MountReport)
    privileges: PrivilegeReport | None = None
    landlock: dict[str, bool] = Field(default_factory=dict)
    seccomp: SeccompReport | None = None
    notes: list[str] = Field(default_factory=list)

    def all_notes(self) -> list[str]:
        parts = [self.mounts, self.privileges, self.seccomp]
        return [n for p in parts if p is not None for n in p.notes] + self.notes

    def sandbox_fields(self) -> dict[str, Any]:
        """The `SandboxInfo` fields this containment decides (the trusted side stores them)."""
        privileges, seccomp = self.privileges, self.seccomp
        fields: dict[str, Any] = {
            "private_tmp": self.mounts.private_tmp,
            "private_dev_shm": self.mounts.private_dev_shm,
            "dev_limited": self.mounts.dev_limited,
            "containment_notes": self.all_notes(),
        }
        if privileges is not None:
            fields["privileges_dropped"] = privileges.privileges_dropped
            fields["runner_uid"] = privileges.uid
            fields["kept_capabilities"] = privileges.kept_capabilities
        if self.landlock:
            fields["filesystem_restricted"] = self.landlock.get("filesystem", False)
            fields["reads_restricted"] = self.landlock.get("reads", False)
        if seccomp is not None:
            fields["unix_sockets_blocked"] = seccomp.unix_sockets_blocked
        return fields


_state: dict[str, Any] = {}


def contain_runner_before_imports(
    workdir: Path,
    gpu: bool = False,
    keep_dirs: Sequence[Path | str] = (),
    needed: Sequence[Path | str] | None = None,
) -> RunnerContainment:
    """Step (1): call first thing in the runner, as root, before torch starts threads."""
    containment = RunnerContainment(mounts=private_mounts(workdir, keep_dirs, gpu, needed))
    _state.update(workdir=Path(workdir), keep_dirs=list(keep_dirs), containment=containment)
    return containment


def _landlock(writable: list[str], readable: list[str] | None, notes: list[str]) -> dict:
    try:
        return restrict_filesystem(writable, readable)
    except OSError as exc:
        notes.append(f"Landlock not applied: {exc}")
        return {"filesystem": False, "reads": False, "network": False}


def contain_runner_after_imports(
    containment: RunnerContainment | None = None,
    writable: Sequence[str] | None = None,
    readable: Sequence[str] | None = (),
    uid: int = NOBODY,
    gid: int = NOBODY,
    needed: Sequence[Path | str] | None = None,
) -> RunnerContainment:
    """Steps (3)-(5) after the imports and CUDA start-up: drop privileges, Landlock, seccomp.

    `writable` defaults to the workdir, kept directories and /dev (device nodes are opened for
    writing; the read-only /dev mount stops new entries). `readable=()` means the default read
    allowlist (`policy.default_readable()`) plus `writable`; None leaves reads unrestricted."""
    containment = containment or _state.get("containment") or RunnerContainment()
    if writable is None:
        writable = [str(_state.get("workdir", Path.cwd())), *map(str, _state.get("keep_dirs", []))]
        writable.append(str(DEV))
    if readable is not None:
        readable = [*default_readable(), *(readable or []), *writable]
    privileges = drop_privileges(uid, gid, needed)
    landlock = _landlock(list(writable), readable, containment.notes)
    seccomp = apply_seccomp()
    return containment.model_copy(
        update={"privileges": privileges, "landlock": landlock, "seccomp": seccomp}
    )


def before_imports(workdir: Path, gpu: bool = False, **kwargs: Any) -> dict[str, Any]:
    """`contain_runner_before_imports` as the dict of `SandboxInfo` fields it decided."""
    return contain_runner_before_imports(workdir, gpu, **kwargs).sandbox_fields()


def after_imports(**kwargs: Any) -> dict[str, Any]:
    """`contain_runner_after_imports` as `SandboxInfo` fields, cumulative (the notes of step (1)
    included), so `before.update(after)` loses nothing."""
    return contain_runner_after_imports(**kwargs).sandbox_fields()
