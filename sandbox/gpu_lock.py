"""A reader-writer lock per device between the sandbox processes of one host (`flock` on a file).

A pre-started worker (`LocalSandbox` with `prestart`) is started while the previous evaluation
still runs. The GPU-touching part of its start-up holds the lock shared (`shared`): its own
CUDA start-up, and each of its runners' CUDA start-up (with the profiler's, and Nsight
Compute's injection in the ncu-wrapped runner), each process for its own window only; the
imports and everything else run outside it. The trusted process of an evaluation holds it
exclusive (`exclusive`) around everything it clocks: the candidate's and the baselines' timed
batches with their calibration, and the Nsight Compute profile. So no start-up touches the GPU
while an evaluation is being timed on it: whichever comes second waits.

The worker opens the file in `sandbox.worker.prepare`, before Landlock restricts it; that fd is
close-on-exec. A runner started ahead gets its own open file description of it (`for_child`)
as an inherited fd named in `FD_VAR`, not the path; it takes the fd (`passed`: the variable
removed, the fd made close-on-exec) first thing, and closes it right after its CUDA start-up
(`start_up`), before privileges are dropped and before any candidate code. The file lies where
the runner's Landlock read allowlist does not reach.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

PATH_VAR = "FORGE_GPU_LOCK"
"""The lock file of the worker's device, set by `LocalSandbox` where its pre-started workers
overlap the running job (`SandboxConfig.overlap_prestart`); unset, no lock is taken."""
AHEAD_VAR = "FORGE_WORKER_AHEAD"
"""Set for a worker started ahead of its job: its CUDA start-up, and its runners', hold the
lock shared."""
FD_VAR = "FORGE_GPU_LOCK_FD"
"""The lock's fd a runner started ahead inherits (`for_child`), for its CUDA start-up only."""

EXCLUSIVE_WAIT_S = 300.0
"""The longest an evaluation waits to time (or profile) its candidate; longer, the evaluation
fails without a verdict (something holds the lock that should not)."""
POLL_S = (0.001, 0.02)
"""First and longest pause between tries of the exclusive lock."""


class GpuLockTimeout(RuntimeError):
    """The exclusive lock could not be had within `EXCLUSIVE_WAIT_S`."""


class GpuLock:
    """One open description of the lock file; its locks end when every copy of the fd closes
    (the process exits)."""

    def __init__(self, path: Path | str, fd: int | None = None):
        """Opens `path`, or adopts `fd` (already open on it)."""
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC) if fd is None else fd

    def for_child(self) -> int:
        """A new open file description of the lock file, for a child process to inherit
        (`pass_fds`) and lock on its own: a copy of this fd (`dup`, inheritance) would share
        this one's lock, and the child's unlock would end it. Close it once the child has it."""
        return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)

    @contextlib.contextmanager
    def shared(self) -> Iterator[float]:
        """Held shared for the block (a worker's start-up); yields the seconds waited for it."""
        t0 = time.perf_counter()
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self, max_wait_s: float = EXCLUSIVE_WAIT_S) -> Iterator[float]:
        """Held exclusive for the block (a timed region); yields the seconds waited for it.
        Raises GpuLockTimeout after `max_wait_s` without it."""
        t0 = time.perf_counter()
        pause = POLL_S[0]
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.perf_counter() - t0
                if waited > max_wait_s:
                    raise GpuLockTimeout(
                        f"{self.path} stayed locked for {waited:.0f} s: another process holds "
                        "this device's timing lock"
                    ) from None
                time.sleep(pause)
                pause = min(2 * pause, POLL_S[1])
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


def lock_file(directory: Path, device_name: str) -> Path:
    """The lock file of `device_name` (`gpu-0`, `cpu`) under `directory`, created if missing,
    readable by its owner only."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_name)
    path = directory / f"{safe}.lock"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    return path


_opened: GpuLock | None = None


def open_inherited() -> GpuLock | None:
    """Open the lock file `PATH_VAR` names (once per process; None when unset). The worker does
    this in `prepare`, before Landlock."""
    global _opened
    path = os.environ.get(PATH_VAR)
    if _opened is None and path:
        _opened = GpuLock(path)
    return _opened


def inherited() -> GpuLock | None:
    """The lock this worker opened in `prepare`, if any."""
    return _opened


def started_ahead() -> bool:
    return bool(os.environ.get(AHEAD_VAR))


def passed() -> GpuLock | None:
    """The lock fd this process's starter passed in `FD_VAR` (a runner started ahead), None
    when none was: the variable is removed and the fd made close-on-exec, so nothing this
    process starts inherits either."""
    fd = os.environ.pop(FD_VAR, None)
    if fd is None:
        return None
    lock = GpuLock(os.readlink(f"/proc/self/fd/{fd}"), int(fd))
    os.set_inheritable(lock.fd, False)
    return lock


@contextlib.contextmanager
def start_up(lock: GpuLock | None) -> Iterator[None]:
    """The block (a runner's CUDA start-up) runs holding `lock` shared, which is then closed
    for good, also when the block fails; with None, it just runs."""
    if lock is None:
        yield
        return
    try:
        with lock.shared():
            yield
    finally:
        lock.close()
