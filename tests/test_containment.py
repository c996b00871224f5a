"""The runner's self-containment (`forge.sandbox.containment`), checked from the trusted side.

Each test starts a fresh Python process that applies the primitives the way the runner does,
then tries an escape (row 27 of EXPLOITS.md) and prints what happened as JSON; the assertions
are made here, in the parent, against the host's real /tmp, /dev/shm and sockets. The process
starts as root (CI runs as root); without root the primitives only report that they did not
apply, so those tests are skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.evaluator.result import SandboxInfo
from forge.sandbox import containment
from forge.sandbox.policy import NOBODY, cache_environment, default_readable

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: unshare(CLONE_NEWNS), mount and setresuid to 65534 are root-only, "
    "and the runner is started as root in CI",
)

# The child: applies `steps`, runs `probes`, prints {"applied": ..., "probes": {...}}.
CHILD = r"""
import errno, json, os, socket, subprocess, sys, threading
from pathlib import Path
from forge.sandbox import containment

spec = json.loads(sys.argv[1])
workdir = Path(spec["workdir"])
out = {"applied": {}, "probes": {}}


def unix_address(text):
    return "\0" + text[1:] if text.startswith("@") else text


def connect_unix(address):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(unix_address(address))
    return "connected"


def write(path, text="escaped"):
    with open(path, "w") as f:
        f.write(text)
    return "written"


def echo(fd):
    with socket.socket(fileno=fd) as s:
        s.sendall(b"ping from the runner")
        return s.recv(100).decode()


def ipc_fill(handle):
    import torch
    from forge.evaluator.shared import MappedBuffer

    buffer = MappedBuffer(4096, "cuda", handle)
    buffer.bytes.fill_(7)
    torch.cuda.synchronize()
    return int(buffer.bytes.sum())


def umount(path):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), 2) != 0:  # MNT_DETACH
        raise OSError(ctypes.get_errno(), "umount2")
    return "unmounted"


def import_new(name):
    if name in sys.modules:
        raise AssertionError(f"{name} already imported")
    __import__(name)
    return name in sys.modules


PROBES = {
    "write": write,
    "read": lambda path: Path(path).read_text(),
    "read_bytes": lambda path, n: len(Path(path).open("rb").read(n)),
    "listdir": lambda path: sorted(os.listdir(path)),
    "mknod_char": lambda path: os.mknod(path, 0o20600, os.makedev(1, 3)),
    "mkfifo": lambda path: os.mkfifo(path),
    "connect_unix": connect_unix,
    "socketpair_unix": lambda: socket.socketpair(socket.AF_UNIX).__class__.__name__,
    "socket_vsock": lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close(),
    "socket_inet": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
    "echo": echo,
    "ids": lambda: [os.getresuid(), os.getresgid(), os.getgroups()],
    "kill": lambda pid: os.kill(pid, 0),
    "import_new": import_new,
    "exec_python": lambda: subprocess.run(
        [sys.executable, "-c", "import json, wave; print(json.dumps('exec ok'))"],
        capture_output=True, text=True, timeout=60,
    ).stdout.strip(),
    "capabilities": containment.effective_capabilities,
    "cwd": os.getcwd,
    "exec": lambda argv: (lambda p: [p.returncode, p.stdout[-1500:]])(
        subprocess.run(argv, capture_output=False, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    ),
    "ipc_fill": ipc_fill,
    "umount": umount,
    "run_module": lambda name: (sys.path.insert(0, str(workdir)), __import__(name).run())[1],
}


def probe(label, name, *args):
    try:
        out["probes"][label] = {"ok": True, "value": PROBES[name](*args)}
    except OSError as exc:
        out["probes"][label] = {"ok": False, "errno": errno.errorcode.get(exc.errno), "error": str(exc)}


# A thread started before the filter (torch and CUDA start many): seccomp must cover it too.
gate, done, late = threading.Event(), threading.Event(), {}


def waiting_thread():
    gate.wait()
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
        late["unix_socket_from_old_thread"] = "created"
    except OSError as exc:
        late["unix_socket_from_old_thread"] = errno.errorcode.get(exc.errno)
    done.set()


for label, name, *args in spec.get("before", []):
    probe(label, name, *args)
steps = spec["steps"]
keep = spec.get("keep_dirs", [])
if "mounts" in steps:
    out["applied"]["mounts"] = containment.private_mounts(workdir, keep).model_dump()
if "before_imports" in steps:
    out["applied"]["before"] = containment.before_imports(workdir, False, keep_dirs=keep)
if "before_imports_gpu" in steps:
    out["applied"]["before"] = containment.before_imports(workdir, True, keep_dirs=keep)
if "cuda_init" in steps:  # what the runner does between the two halves on a GPU host
    import torch, triton  # noqa: E401, F401
    torch.cuda.init()
    out["applied"]["cuda_sum"] = float(torch.ones(8, device="cuda").sum())
if "thread" in steps:
    threading.Thread(target=waiting_thread, daemon=True).start()
if "drop" in steps:
    out["applied"]["drop"] = containment.drop_privileges().model_dump()
if "mounts_after_drop" in steps:
    out["applied"]["mounts_after_drop"] = containment.private_mounts(workdir, keep).model_dump()
if "drop_again" in steps:
    out["applied"]["drop_again"] = containment.drop_privileges().model_dump()
if "seccomp" in steps:
    out["applied"]["seccomp"] = containment.apply_seccomp().model_dump()
if "after_imports" in steps:
    out["applied"]["after"] = containment.after_imports()
if "thread" in steps:
    gate.set()
    done.wait(10)
    out["probes"].update(late)
for label, name, *args in spec.get("probes", []):
    probe(label, name, *args)
print(json.dumps(out))
"""


def run_child(
    workdir: Path,
    steps: list[str],
    probes: list[list] = (),
    before: list[list] = (),
    keep_dirs: list[str] = (),
    pass_fds: tuple[int, ...] = (),
    env: dict[str, str] | None = None,
    argv_prefix: list[str] = (),
) -> dict:
    spec = {
        "workdir": str(workdir),
        "steps": steps,
        "probes": list(probes),
        "before": list(before),
        "keep_dirs": list(keep_dirs),
    }
    proc = subprocess.run(
        [*argv_prefix, sys.executable, "-P", "-c", CHILD, json.dumps(spec)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        pass_fds=pass_fds,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"applied"')]
    result = json.loads(lines[-1])
    result["stdout"] = proc.stdout
    return result


def _job_dir(prefix: str) -> Path:
    """A per-job directory directly under the host's /tmp, owned by 65534 (as the trusted side
    prepares them): its parents stay traversable, unlike pytest's 0700 tmp_path."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chown(path, NOBODY, NOBODY)
    return path


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = _job_dir("forge-ctest-job-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    path = _job_dir("forge-ctest-cache-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ok(result: dict, label: str):
    entry = result["probes"][label]
    assert entry["ok"], f"{label}: {entry}"
    return entry["value"]


def failed(result: dict, label: str, *errnos: str) -> str:
    entry = result["probes"][label]
    assert not entry["ok"], f"{label} succeeded: {entry}"
    assert not errnos or entry["errno"] in errnos, f"{label}: {entry}"
    return entry["errno"]


@needs_root
def test_tmp_and_dev_shm_are_private_and_the_job_dirs_stay(workdir: Path, cache_dir: Path):
    name = f"forge-ctest-{secrets.token_hex(6)}"
    host_secret = Path("/tmp") / f"{name}-host-secret"
    host_secret.write_text("another job's file")
    (workdir / "from-trusted").write_text("input")
    try:
        result = run_child(
            workdir,
            ["mounts"],
            keep_dirs=[str(cache_dir)],
            probes=[
                ["tmp", "write", f"/tmp/{name}"],
                ["shm", "write", f"/dev/shm/{name}"],
                ["tmp_listing", "listdir", "/tmp"],
                ["shm_listing", "listdir", "/dev/shm"],
                ["host_secret", "read", str(host_secret)],
                ["workdir_read", "read", str(workdir / "from-trusted")],
                ["workdir_write", "write", str(workdir / "from-runner"), "output"],
                ["cache_write", "write", str(cache_dir / "kernel.bin"), "cached"],
                ["cwd", "cwd"],
            ],
        )
    finally:
        host_secret.unlink()
    mounts = result["applied"]["mounts"]
    assert mounts["namespace"] and mounts["private_tmp"] and mounts["private_dev_shm"], mounts
    # written inside, where the runner may write ...
    assert ok(result, "tmp") == ok(result, "shm") == "written"
    assert not Path(f"/tmp/{name}").exists()  # ... and nothing of it reached the host
    assert not Path(f"/dev/shm/{name}").exists()
    # Only the job's directories and the import paths under /tmp (a carried site-packages) are
    # bound back into the fresh /tmp; nothing else of the host's /tmp is there.
    imports = [Path(os.path.realpath(p)) for p in default_readable()]
    kept = {p.relative_to("/tmp").parts[0] for p in imports if Path("/tmp") in p.parents}
    assert ok(result, "tmp_listing") == sorted({workdir.name, cache_dir.name, name, *kept})
    assert ok(result, "shm_listing") == [name]
    failed(result, "host_secret", "ENOENT")
    assert ok(result, "workdir_read") == "input"
    assert (workdir / "from-runner").read_text() == "output"
    assert (cache_dir / "kernel.bin").read_text() == "cached"
    assert ok(result, "cwd") == str(workdir)


@needs_root
@pytest.mark.parametrize("steps", [["mounts"], ["before_imports", "after_imports"]])
def test_dev_holds_only_the_needed_nodes_and_is_read_only(workdir: Path, steps: list[str]):
    name = f"forge-ctest-{secrets.token_hex(6)}"
    result = run_child(
        workdir,
        steps,
        probes=[
            ["listing", "listdir", "/dev"],
            ["write_dev", "write", f"/dev/{name}"],
            ["mknod_dev", "mknod_char", f"/dev/{name}-null"],
            ["null", "write", "/dev/null"],
            ["urandom", "read_bytes", "/dev/urandom", 16],
            ["shm", "write", f"/dev/shm/{name}"],
            ["fd_link", "listdir", "/dev/fd/"],
        ],
    )
    assert ok(result, "listing") == sorted(
        [*containment.DEVICE_NODES, "shm", *containment.DEV_LINKS]
    )
    # EROFS as root (the remount); after the drop Landlock or the uid may answer first.
    failed(result, "write_dev", "EROFS", "EACCES")
    failed(result, "mknod_dev", "EROFS", "EPERM", "EACCES")
    assert not Path(f"/dev/{name}").exists() and not Path(f"/dev/{name}-null").exists()
    assert ok(result, "null") == ok(result, "shm") == "written"
    assert ok(result, "urandom") == 16
    assert "0" in ok(result, "fd_link")
    assert not Path(f"/dev/shm/{name}").exists()


@pytest.fixture
def unix_listeners(workdir: Path) -> Iterator[tuple[str, str]]:
    """A pathname socket in the job's own directory (mode 0777: only the filter can refuse it)
    and an abstract one, both listening on the host."""
    path = workdir / "daemon.sock"
    abstract = f"@forge-ctest-{secrets.token_hex(6)}"
    listeners = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    listeners[0].bind(str(path))
    os.chmod(path, 0o777)
    listeners[1].bind("\0" + abstract[1:])
    for s in listeners:
        s.listen(8)
    yield str(path), abstract
    for s in listeners:
        s.close()


@needs_root
@pytest.mark.parametrize("steps", [["seccomp"], ["before_imports", "after_imports"]])
def test_unix_and_vsock_sockets_cannot_be_created(
    workdir: Path, unix_listeners: tuple[str, str], steps: list[str]
):
    path, abstract = unix_listeners
    attempts = [
        ["pathname", "connect_unix", path],
        ["abstract", "connect_unix", abstract],
    ]
    result = run_child(
        workdir,
        steps,
        before=[[f"{label}_before", *rest] for label, *rest in attempts],
        probes=[
            *attempts,
            ["socketpair", "socketpair_unix"],
            ["vsock", "socket_vsock"],
            ["inet", "socket_inet"],
        ],
    )
    # The same connections succeed before the containment: the listeners are reachable.
    assert ok(result, "pathname_before") == ok(result, "abstract_before") == "connected"
    for label in ("pathname", "abstract", "socketpair", "vsock"):
        failed(result, label, "EPERM")
    ok(result, "inet")
    applied = result["applied"]
    assert (applied.get("seccomp") or applied["after"])["unix_sockets_blocked"]


@needs_root
def test_seccomp_covers_threads_started_before_it_and_spares_fifos(workdir: Path):
    """Still root (no drop): only the filter stands between the process and these calls."""
    result = run_child(
        workdir,
        ["mounts", "thread", "seccomp"],
        probes=[
            ["mknod_char", "mknod_char", str(workdir / "null-copy")],
            ["mkfifo", "mkfifo", str(workdir / "jobserver")],
            ["umount_tmp", "umount", "/tmp"],
        ],
    )
    assert result["applied"]["seccomp"]["all_threads"]
    assert result["probes"]["unix_socket_from_old_thread"] == "EPERM"
    failed(result, "mknod_char", "EPERM")
    failed(result, "umount_tmp", "EPERM")  # a root runner cannot uncover the host's /tmp
    ok(result, "mkfifo")
    assert stat.S_ISFIFO(os.stat(workdir / "jobserver").st_mode)


@needs_root
def test_inherited_socketpair_still_carries_the_protocol(workdir: Path):
    trusted, runner = socket.socketpair()
    trusted.sendall(b"pong from the trusted side")
    try:
        result = run_child(
            workdir,
            ["before_imports", "after_imports"],
            probes=[["echo", "echo", runner.fileno()], ["new_pair", "socketpair_unix"]],
            pass_fds=(runner.fileno(),),
        )
        trusted.settimeout(5)
        assert trusted.recv(100) == b"ping from the runner"
    finally:
        trusted.close()
        runner.close()
    assert ok(result, "echo") == "pong from the trusted side"
    failed(result, "new_pair", "EPERM")


@needs_root
def test_dropped_runner_cannot_touch_root_but_still_imports_and_execs(workdir: Path):
    root_file = workdir / "root-owned"
    root_file.write_text("verdict")
    os.chmod(root_file, 0o644)
    result = run_child(
        workdir,
        ["drop"],
        probes=[
            ["ids", "ids"],
            ["write_root_file", "write", str(root_file)],
            ["kill_parent", "kill", os.getpid()],
            ["kill_init", "kill", 1],
            ["mknod", "mknod_char", str(workdir / "null-copy")],
            ["import_stdlib", "import_new", "wave"],
            ["import_site_packages", "import_new", "pluggy"],
            ["exec", "exec_python"],
            ["caps", "capabilities"],
        ],
    )
    drop = result["applied"]["drop"]
    assert drop["privileges_dropped"] and drop["uid"] == NOBODY, drop
    assert ok(result, "ids") == [[NOBODY] * 3, [NOBODY] * 3, []]
    failed(result, "write_root_file", "EACCES")
    assert root_file.read_text() == "verdict"
    failed(result, "kill_parent", "EPERM")
    failed(result, "kill_init", "EPERM")
    failed(result, "mknod", "EPERM")
    assert ok(result, "import_stdlib") and ok(result, "import_site_packages")
    assert ok(result, "exec") == '"exec ok"'
    # Without private mounts, CAP_DAC_READ_SEARCH is kept exactly when the interpreter is out of
    # others' reach (here: under /root, mode 0700), and nothing else.
    expected = ["CAP_DAC_READ_SEARCH"] if containment.unreachable(default_readable()) else []
    assert drop["kept_capabilities"] == ok(result, "caps") == expected


@needs_root
def test_full_containment_needs_no_capability_and_fills_sandbox_info(workdir: Path):
    result = run_child(
        workdir,
        ["before_imports", "after_imports"],
        probes=[
            ["ids", "ids"],
            ["caps", "capabilities"],
            ["import_stdlib", "import_new", "wave"],
            ["exec", "exec_python"],
            ["write_workdir", "write", str(workdir / "out")],
            ["write_etc", "write", "/etc/forge-ctest"],
            ["root_listing", "listdir", "/root"],
        ],
    )
    fields = result["applied"]["after"]
    info = SandboxInfo(backend="local", **fields)
    assert info.privileges_dropped and info.runner_uid == NOBODY
    assert info.private_tmp and info.private_dev_shm and info.dev_limited
    assert info.unix_sockets_blocked and info.filesystem_restricted and info.reads_restricted
    # /root (mode 0700, holding the interpreter here) is masked: nothing needs the capability.
    assert info.kept_capabilities == [] == ok(result, "caps")
    assert ok(result, "ids")[0] == [NOBODY] * 3
    assert ok(result, "import_stdlib") and ok(result, "exec") == '"exec ok"'
    ok(result, "write_workdir")
    failed(result, "write_etc", "EACCES", "EPERM")
    assert not Path("/etc/forge-ctest").exists()
    if Path("/root").stat().st_mode & 0o001 == 0:
        failed(result, "root_listing", "EACCES")


@needs_root
def test_without_root_the_steps_report_instead_of_raising(workdir: Path):
    result = run_child(workdir, ["drop", "mounts_after_drop", "drop_again"], probes=[])
    mounts = result["applied"]["mounts_after_drop"]
    assert not mounts["namespace"] and not mounts["private_tmp"]
    assert "CAP_SYS_ADMIN" in mounts["notes"][0]
    again = result["applied"]["drop_again"]
    assert not again["privileges_dropped"] and again["notes"] == ["not started as root"]


def test_seccomp_program_jumps_stay_inside_it():
    for arch in containment.ARCHES.values():
        prog = containment.seccomp_program(arch)
        assert len(prog) < 4096
        for index, (code, jt, jf, _k) in enumerate(prog):
            if code & 0x07 == 0x05:  # BPF_JMP
                assert index + 1 + max(jt, jf) < len(prog)
        assert prog[-1] == (0x06, 0, 0, containment.SECCOMP_RET_ALLOW)


TRITON_MODULE = """
import torch
import triton
import triton.language as tl


@triton.jit
def _add_one(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)


def run():
    x = torch.arange(1000, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    _add_one[(4,)](x, y, 1000, BLOCK=256)
    return float((y - x - 1).abs().max())
"""

CUDA_KERNEL = (
    "__global__ void add_one(float* x, int n) { int i = threadIdx.x; if (i < n) x[i] += 1; }"
)


@pytest.mark.gpu
@needs_root
def test_gpu_runner_still_compiles_and_runs_kernels_once_contained(workdir: Path, cache_dir: Path):
    """CUDA is initialised between the two halves (as the runner does); afterwards, as uid 65534
    under Landlock and seccomp, Triton JIT-compiles (ptxas from site-packages) and launches a
    kernel, nvcc builds a cubin, and a CUDA IPC buffer of the trusted side is written."""
    import torch

    from forge.evaluator.shared import SharedBuffer

    (workdir / "forge_ctest_kernel.py").write_text(TRITON_MODULE)
    (workdir / "k.cu").write_text(CUDA_KERNEL)
    shared = SharedBuffer(1, 4096, "cuda")  # the trusted side's buffer, as in an evaluation
    shared.bytes.zero_()
    torch.cuda.synchronize()
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    cubin = ["-cubin", "-arch=sm_90", "-o", str(workdir / "k.cubin"), str(workdir / "k.cu")]
    result = run_child(
        workdir,
        ["before_imports_gpu", "cuda_init", "after_imports"],
        keep_dirs=[str(cache_dir)],
        env=cache_environment(cache_dir, workdir),
        probes=[
            ["dev", "listdir", "/dev"],
            ["triton", "run_module", "forge_ctest_kernel"],
            ["nvcc", "exec", [nvcc, *cubin]],
            ["unix", "socketpair_unix"],
            ["ids", "ids"],
            ["ipc", "ipc_fill", shared.ipc_handle],
        ],
    )
    print(json.dumps(result, indent=1))
    written = int(shared.bytes.sum())
    shared.release()
    fields = result["applied"]["after"]
    assert result["applied"]["cuda_sum"] == 8.0
    assert fields["dev_limited"] and fields["private_tmp"] and fields["unix_sockets_blocked"]
    assert fields["runner_uid"] == NOBODY
    assert "nvidiactl" in ok(result, "dev")
    assert ok(result, "triton") == 0.0
    assert ok(result, "nvcc")[0] == 0, ok(result, "nvcc")
    assert (workdir / "k.cubin").stat().st_size > 0
    failed(result, "unix", "EPERM")
    # CUDA IPC from the trusted process (root) into the contained runner (uid 65534) works.
    assert ok(result, "ipc") == written == 7 * 4096


@pytest.mark.gpu
@needs_root
def test_ncu_outside_still_profiles_a_contained_runner(workdir: Path, cache_dir: Path):
    """Profiling wraps the runner in ncu, whose injected library lives in the runner: private
    /tmp and /dev/shm and the socket filter must not cut it off from the ncu front end."""
    ncu = shutil.which("ncu")
    if ncu is None:
        pytest.skip("ncu is not on PATH")
    (workdir / "forge_ctest_kernel.py").write_text(TRITON_MODULE)
    log = workdir / "ncu.csv"
    result = run_child(
        workdir,
        ["before_imports_gpu", "cuda_init", "after_imports"],
        keep_dirs=[str(cache_dir)],
        env=cache_environment(cache_dir, workdir),
        probes=[["triton", "run_module", "forge_ctest_kernel"]],
        argv_prefix=[
            ncu,
            "--target-processes",
            "all",
            "--clock-control",
            "none",
            "--kernel-name",
            "regex:_add_one",
            "--metrics",
            "gpu__time_duration.sum",
            "--csv",
            "--log-file",
            str(log),
        ],
    )
    text = log.read_text() if log.exists() else ""
    print(result["stdout"][-3000:], text[-3000:])
    assert result["applied"]["after"]["unix_sockets_blocked"]
    assert ok(result, "triton") == 0.0
    assert "_add_one" in text and "gpu__time_duration.sum" in text
