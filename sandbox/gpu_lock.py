"""A reader-writer lock per device between the sandbox processes of one host (`flock` on a file).

A pre-started worker (`LocalSandbox` with `prestart`) is started while the previous evaluation
still runs where another job is already waiting. Its start-up (its runners' CUDA start-up,
ncu's, its own CUDA context) holds the lock shared (`shared`); the trusted process of an
evaluation holds it exclusive (`exclusive`) around everything it clocks: the candidate's and the
baselines' timed batches with their calibration, and the Nsight Compute profile. So a worker's start-up never runs on the GPU while
an evaluation is being timed on it: whichever comes second waits.

The worker opens the file in `sandbox.worker.prepare`, before Landlock restricts it; the fd is
close-on-exec, so the runners (candidate code) never inherit it, and the file lies where the
runner's Landlock read allowlist does not reach.
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
"""Set for a worker started ahead of its job: its start-up holds the lock shared."""

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

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)

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
