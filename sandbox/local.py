"""Local backend: each job in a fresh OS process, in its own session and private directory.

The worker is the trusted side of an evaluation: it keeps the uid it was started with (as root,
in its own PID namespace) because it contains the runner, which drops to uid 65534 itself
(`forge.sandbox.containment`)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forge.evaluator.protocol import PHASE_MARK
from forge.evaluator.result import NextWorker, SandboxInfo
from forge.sandbox import gpu_lock
from forge.sandbox.base import (
    RUNNER_AHEAD,
    ChannelError,
    SandboxJob,
    SandboxOutcome,
    decode_message,
    evaluates_candidate,
    scrubbed_environment,
)
from forge.sandbox.policy import (
    PID_NAMESPACE,
    PidsCgroup,
    SandboxConfig,
    cache_environment,
    network_namespace_available,
    pid_namespace_available,
    preexec,
    running_as_root,
)

OUTPUT_CAP = 1 << 20
WORKER = ["-P", "-m", "forge.sandbox.worker"]


class _Drain(threading.Thread):
    """Reads a pipe to EOF, keeping at most `cap` bytes (a chatty candidate cannot fill memory).
    With `on_phase` set, the worker's phase lines (`PHASE_MARK name`) are passed on as they come
    and left out of the kept bytes."""

    def __init__(self, stream, cap: int = OUTPUT_CAP):
        super().__init__(daemon=True)
        self.stream, self.cap, self.data = stream, cap, bytearray()
        self.on_phase: Callable[[str], None] | None = None
        self._partial = b""

    def run(self) -> None:
        while chunk := self.stream.read1(65536):
            for piece in self._lines(chunk):
                if len(self.data) < self.cap:
                    self.data += piece[: self.cap - len(self.data)]
        self.data += self._partial[: max(0, self.cap - len(self.data))]

    def _lines(self, chunk: bytes) -> list[bytes]:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        kept = []
        for line in lines:
            if line.startswith(PHASE_MARK):
                if self.on_phase is not None:
                    self.on_phase(line[len(PHASE_MARK) :].decode(errors="replace").strip())
                continue
            kept.append(line + b"\n")
        return kept


def kill_session(session_id: int) -> None:
    """SIGKILL every process of a session: the group leader may be gone while children live on."""
    for _ in range(3):
        victims = [pid for pid in _pids() if _session_of(pid) == session_id]
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[3])


class LocalSandbox:
    name = "local"

    def __init__(
        self,
        config: SandboxConfig | None = None,
        cache_dir: Path | None = None,
        prestart: bool = False,
        backlog: Callable[[], bool] | None = None,
    ):
        """`prestart=True` keeps the next worker started ahead of its job (imports, CUDA and
        profiler initialised, no candidate code yet): each job still gets a fresh process.
        Where `config.overlap_prestart` says so and another job is already waiting, that
        worker is started when a job starts, under the device lock (`forge.sandbox.gpu_lock`);
        else when the job ends, so that a job nobody waits behind is never slowed by it.

        `backlog` (also settable as an attribute): whether another job is already waiting for
        this sandbox, asked once as each job starts; None counts as yes."""
        self.config = config or SandboxConfig.from_env()
        self.prestart = prestart
        self.backlog = backlog
        self._spare: _Launched | None = None
        self._spare_lock = threading.Lock()
        self.cache_dir = Path(cache_dir or tempfile.gettempdir()) / "forge-cache"
        self.isolate_network = self.config.isolate_network and network_namespace_available()

    def _prepare_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def lock_path(self, gpu: bool) -> Path:
        """The device lock file of this sandbox's workers: one per GPU as CUDA_VISIBLE_DEVICES
        names it (`gpu-0`; `gpu-all` when unset), one for CPU jobs (`cpu`), per user, shared
        by every sandbox with the same cache directory."""
        visible = self.config.extra_env.get(
            "CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "all")
        )
        locks = self.cache_dir / f"locks-uid-{os.geteuid()}"
        return gpu_lock.lock_file(locks, f"gpu-{visible}" if gpu else "cpu")

    def overlaps(self, gpu: bool) -> bool:
        """Whether this sandbox's workers take the device lock, so that the next worker of a
        job on `gpu` may start when that job starts rather than when it ends (it does where
        another job waits: `_next_worker_start`)."""
        mode = self.config.overlap_prestart
        return self.prestart and (mode == "always" or (mode == "gpu" and gpu))

    def _lock_environment(self, gpu: bool, ahead: bool) -> dict[str, str]:
        if not self.overlaps(gpu):
            return {}
        return {
            gpu_lock.PATH_VAR: str(self.lock_path(gpu)),
            **({gpu_lock.AHEAD_VAR: "1"} if ahead else {}),
        }

    def _launch(
        self, gpu: bool, argv_prefix: list[str], evaluates: bool, ahead: bool = False
    ) -> _Launched:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        name = secrets.token_hex(16)
        cache = self.cache_dir / f"uid-{os.geteuid()}"
        self._prepare_dir(cache)
        tmp = tempfile.TemporaryDirectory(prefix="forge-job-")
        workdir = Path(tmp.name)
        self._prepare_dir(workdir)
        env = {
            **scrubbed_environment(),
            **self.config.extra_env,
            **cache_environment(cache, workdir),
            "FORGE_WORKER_DEVICE": "cuda" if gpu else "cpu",
            **({RUNNER_AHEAD: "1"} if evaluates else {}),
            **self._lock_environment(gpu, ahead),
        }
        read_fd, write_fd = os.pipe()
        cgroup = PidsCgroup.create(f"forge-{name}", self.config.max_processes)
        isolate_pids = (
            self.config.isolate_processes and running_as_root() and pid_namespace_available()
        )
        proc = subprocess.Popen(
            [*(PID_NAMESPACE if isolate_pids else []), *argv_prefix, sys.executable, *WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            pass_fds=(write_fd,),
            start_new_session=True,
            preexec_fn=preexec(self.config, self.isolate_network, False, cgroup),
        )
        os.close(write_fd)
        drains = [_Drain(proc.stdout), _Drain(proc.stderr), _Drain(os.fdopen(read_fd, "rb"))]
        for d in drains:
            d.start()
        return _Launched(
            proc, drains, tmp, workdir, cache, write_fd, cgroup, gpu, isolate_pids, evaluates
        )

    def _take(self, job: SandboxJob) -> _Launched:
        """The pre-started worker when it fits the job; wrapped jobs (ncu) always start their own."""
        evaluates = evaluates_candidate(job)
        if job.argv_prefix:
            return self._launch(job.gpu, job.argv_prefix, evaluates)
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return self._launch(job.gpu, [], evaluates)
        if spare.gpu == job.gpu and spare.evaluates == evaluates and spare.proc.poll() is None:
            return spare
        spare.discard()
        return self._launch(job.gpu, [], evaluates)

    def _start_spare(self, gpu: bool, evaluates: bool) -> None:
        with self._spare_lock:
            if self.prestart and self._spare is None:
                self._spare = self._launch(gpu, [], evaluates, ahead=True)

    def start_ahead(self, gpu: bool) -> None:
        """With `prestart`, start the next evaluation's worker now (its runner with it) rather
        than after the first job: a resident process's first job finds it ready."""
        self._start_spare(gpu, evaluates=True)

    def close(self) -> None:
        """Stop the pre-started worker, if any (also one started for a job that turned out to
        be the last); jobs still running start no other."""
        with self._spare_lock:
            self.prestart = False
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()

    def run(self, job: SandboxJob, on_phase: Callable[[str], None] | None = None) -> SandboxOutcome:
        """`on_phase` hears the evaluation's phases as the worker reaches them."""
        worker = self._take(job)
        try:
            next_worker = self._next_worker_start(job)
            if next_worker == "with_job":
                self._start_spare(job.gpu, evaluates_candidate(job))
            return self._run_on(worker, job, on_phase, next_worker)
        finally:  # also when the wait is interrupted (Ctrl-C, a cancelled Ray task)
            worker.discard()

    def _next_worker_start(self, job: SandboxJob) -> NextWorker:
        """When the next job's worker is started, decided once as `job` starts: with it where
        it overlaps and another job is waiting, else after it ('' when none is kept)."""
        if not self.prestart or job.argv_prefix:
            return ""
        if self.overlaps(job.gpu) and (self.backlog is None or self.backlog()):
            return "with_job"
        return "after_job"

    def _run_on(
        self,
        worker: _Launched,
        job: SandboxJob,
        on_phase: Callable[[str], None] | None,
        next_worker: NextWorker,
    ) -> SandboxOutcome:
        worker.drains[1].on_phase = on_phase
        token = secrets.token_hex(16)
        spec = {
            "token": token,
            "channel": {"kind": "fd", "fd": worker.channel_fd},
            "writable": [
                str(worker.workdir),
                str(worker.cache),
                "/dev",
                *job.writable_dirs,
            ],
            "restrict_writes": self.config.restrict_writes,
            "restrict_reads": self.config.restrict_reads,
            "job": job.payload,
        }
        start = time.perf_counter()
        try:
            worker.proc.stdin.write(json.dumps(spec).encode())
            worker.proc.stdin.close()
        except BrokenPipeError:
            pass
        timed_out = False
        try:
            worker.proc.wait(timeout=job.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        worker.discard()
        wall = time.perf_counter() - start
        if next_worker == "after_job":
            self._start_spare(job.gpu, evaluates_candidate(job))
        stdout, stderr, channel = (bytes(d.data) for d in worker.drains)
        message, channel_error = None, ""
        if channel:
            try:
                message = decode_message(token, channel)
            except ChannelError as exc:
                channel_error = str(exc)
        code = worker.proc.returncode
        exit_code = code if code is not None and code >= 0 else None
        signal_number = -code if code is not None and code < 0 else None
        return SandboxOutcome(
            message=message,
            channel_error=channel_error,
            timed_out=timed_out,
            exit_code=exit_code,
            signal=signal_number,
            stdout=SandboxOutcome.logs(stdout),
            stderr=SandboxOutcome.logs(stderr),
            wall_s=wall,
            info=SandboxInfo(
                backend=self.name,
                exit_code=exit_code,
                signal=signal_number,
                network_isolated=self.isolate_network,
                filesystem_restricted=bool(
                    message and message.get("sandbox", {}).get("filesystem")
                ),
                reads_restricted=bool(message and message.get("sandbox", {}).get("reads")),
                killed_on_timeout=timed_out,
                processes_isolated=worker.isolate_pids,
                process_limit=worker.process_limit,
                next_worker=next_worker,
            ),
        )


@dataclass
class _Launched:
    """A worker process, started (possibly ahead of its job) with its pipes being drained."""

    proc: subprocess.Popen
    drains: list[_Drain]
    tmp: tempfile.TemporaryDirectory
    workdir: Path
    cache: Path
    channel_fd: int
    cgroup: PidsCgroup | None
    gpu: bool
    isolate_pids: bool
    evaluates: bool
    discarded: bool = False

    @property
    def process_limit(self) -> str:
        if self.cgroup is not None:
            return "cgroup"
        return "rlimit" if not running_as_root() else "none"

    def discard(self) -> None:
        """Kill its session, wait for it and remove its files (once; again is a no-op)."""
        if self.discarded:
            return
        self.discarded = True
        kill_session(self.proc.pid)
        if self.cgroup is not None:
            self.cgroup.remove()
        self.proc.wait()
        for d in self.drains:
            d.join(timeout=5)
        self.tmp.cleanup()
