"""The next worker started while the current job runs (`LocalSandbox(prestart=True)` with
`SandboxConfig.overlap_prestart`) and the device lock that keeps its start-up out of the job's
timed regions (`forge.sandbox.gpu_lock`). Real worker and runner processes on the CPU, watched
from outside (/proc: environments, sessions, open files, /proc/locks)."""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

import pytest
import torch

from forge.evaluator import EvalConfig, evaluate, resolve_problem
from forge.sandbox.gpu_lock import GpuLock, GpuLockTimeout
from forge.sandbox.local import LocalSandbox
from forge.sandbox.policy import SandboxConfig

MARKER_VAR = "FORGE_TEST_MARKER"
LEGIT = (Path(__file__).parent / "fixtures" / "legit" / "triton_softmax.py").read_text()


@pytest.fixture
def marker() -> str:
    return secrets.token_hex(8)


def marked_sandbox(cache_dir: Path, marker: str, overlap: str = "always") -> LocalSandbox:
    """A pre-starting sandbox whose every process carries the marker in its environment; its
    CPU jobs overlap the next worker's start-up (`always`), as GPU jobs do by default."""
    config = SandboxConfig(extra_env={MARKER_VAR: marker}, overlap_prestart=overlap)
    return LocalSandbox(config, cache_dir=cache_dir, prestart=True)


def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of the processes with the marker."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError):
        return None


def worker_sessions(marker: str) -> set[int]:
    """One session per sandbox worker (the worker and its runners share it)."""
    return {
        s
        for pid, cmd in marked_processes(marker).items()
        if "forge.sandbox.worker" in cmd and (s := session_of(pid)) is not None
    }


def runners(marker: str) -> list[int]:
    return [pid for pid, cmd in marked_processes(marker).items() if "forge.evaluator.runner" in cmd]


def lock_entries(path: Path) -> list[str]:
    """/proc/locks lines on `path`: `WRITE`, `READ`, and `-> READ` for a blocked request."""
    st = os.stat(path)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    entries = []
    for line in Path("/proc/locks").read_text().splitlines():
        if device in line:
            fields = line.split()
            blocked = fields[1] == "->"
            entries.append(("-> " if blocked else "") + fields[4 if blocked else 3])
    return entries


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)
    return value


def holders_of(path: Path, pids) -> list[int]:
    """Those of `pids` with an fd open on `path`."""
    target = os.path.realpath(path)
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    ("overlap", "waiting", "next_worker"),
    [
        ("always", True, "with_job"),
        ("always", False, "after_job"),
        ("never", None, "after_job"),
    ],
)
def test_the_next_worker_starts_with_the_job_only_while_another_waits(
    forge_cache_dir, marker, overlap, waiting, next_worker
):
    """With overlap and another job waiting (the sandbox's backlog says so; none known counts
    as yes), while the job runs (at each phase it announces) a second worker is up: the one the next job
    gets, still there after the job. Else it starts after the job ended, so a job no other waits
    behind is never slowed by it. The backlog is asked once, as the job starts; either way one
    worker waits afterwards, the result says which way it went, the verdict is the same and
    close() leaves no process behind."""
    sandbox = marked_sandbox(forge_cache_dir, marker, overlap)
    asked: list[bool] = []
    if waiting is not None:
        sandbox.backlog = lambda: asked.append(waiting) or waiting
    config = EvalConfig(device="cpu", cache_dir=forge_cache_dir)
    during: list[set[int]] = []
    try:
        result = evaluate(
            resolve_problem("softmax"),
            LEGIT,
            config,
            sandbox=sandbox,
            on_phase=lambda _: during.append(worker_sessions(marker)),
        )
        after = worker_sessions(marker)
    finally:
        sandbox.close()
    assert result.status.value == "correct", result.reasons
    assert result.sandbox.next_worker == next_worker
    assert len(asked) == (1 if overlap == "always" and waiting is not None else 0)
    assert during, "no phase announced"
    assert len(after) == 1  # the next job's worker, waiting
    if next_worker == "with_job":
        assert all(len(s) == 2 for s in during), during
        assert after < during[0], "the waiting worker is not the one started with the job"
    else:
        assert all(len(s) == 1 for s in during), during
        assert not after & during[0]
    assert not wait_for_gone(marker)


def wait_for_gone(marker: str, grace_s: float = 5.0) -> dict[int, str]:
    deadline = time.monotonic() + grace_s
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_a_worker_started_ahead_starts_up_only_outside_a_timed_region(forge_cache_dir, marker):
    """The test holds the device lock exclusive, as an evaluation does while it times: the
    worker started ahead waits for it (a blocked shared request in /proc/locks) before starting
    its runner. Released, the worker starts up holding the lock shared, and an exclusive request
    waits until its runner is up (contained, ready to say so). Only the worker
    itself holds the lock file open, not its runner (candidate code)."""
    sandbox = marked_sandbox(forge_cache_dir, marker)
    path = sandbox.lock_path(gpu=False)
    timing = GpuLock(path)
    try:
        with timing.exclusive():
            sandbox.start_ahead(gpu=False)
            wait_for(lambda: "-> READ" in lock_entries(path), 60, "the worker asks for the lock")
            time.sleep(0.5)
            assert not runners(marker), "the runner started while the lock was held exclusive"
        wait_for(lambda: "READ" in lock_entries(path), 30, "the worker holds the lock shared")
        with timing.exclusive():
            (runner,) = runners(marker)
            status = Path(f"/proc/{runner}/status").read_text()
            # seccomp is the runner's last step before it says it is ready
            assert "Seccomp:\t2" in status, "the lock was let go before the runner was up"
            assert lock_entries(path) == ["WRITE"]
        (session,) = worker_sessions(marker)
        mine = [p for p in marked_processes(marker) if session_of(p) == session]
        holders = holders_of(path, mine)
        assert len(holders) == 1 and "forge.sandbox.worker" in marked_processes(marker)[holders[0]]
        assert runner not in holders
    finally:
        sandbox.close()
        timing.close()
    assert not wait_for_gone(marker)


def test_the_exclusive_lock_waits_for_a_shared_holder_and_says_how_long(tmp_path):
    """`exclusive` (what the trusted process takes around timed regions) waits while a start-up
    holds the lock shared, yields the seconds it waited, and gives up with an error rather than
    timing while a holder never lets go."""
    path = tmp_path / "gpu-0.lock"
    path.touch()
    starting, timing = GpuLock(path), GpuLock(path)
    held = threading.Event()

    def start_up() -> None:
        with starting.shared():
            held.set()
            time.sleep(0.5)

    holder = threading.Thread(target=start_up)
    holder.start()
    held.wait(5)
    with timing.exclusive() as waited:
        assert 0.4 <= waited < 5.0
    holder.join()
    with starting.shared(), pytest.raises(GpuLockTimeout, match="stayed locked"):
        with timing.exclusive(max_wait_s=0.2):
            pass
    with timing.exclusive() as waited:  # free again: no wait
        assert waited < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_timing_waits_while_a_worker_starts_up_and_records_the_wait(forge_cache_dir, marker):
    """On the GPU machine: a start-up that holds the device lock shared from before the job's
    timing phase until 3 s into it delays the timed batches by that much, recorded as
    `gpu_lock_wait`, and the verdict is the usual one."""
    sandbox = marked_sandbox(forge_cache_dir, marker, overlap="gpu")
    config = EvalConfig(device="cuda", cache_dir=forge_cache_dir, baselines=["eager"])
    start_up, released = GpuLock(sandbox.lock_path(gpu=True)), threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with start_up.shared():
            holding.set()
            released.wait(300)

    def on_phase(phase: str) -> None:
        if phase.startswith("timing on") and not released.is_set():
            threading.Timer(3.0, released.set).start()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    try:
        result = evaluate(
            resolve_problem("softmax"), LEGIT, config, sandbox=sandbox, on_phase=on_phase
        )
    finally:
        released.set()
        holder.join()
        sandbox.close()
        start_up.close()
    assert result.status.value == "correct", result.reasons
    # 3 s less the set's preparation before its lock; the spare started with the job may add
    # the rest of its own start-up
    assert 2.0 <= result.phase_seconds.detail["gpu_lock_wait"] < 30.0, result.phase_seconds
