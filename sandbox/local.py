"""Local backend: each job in a fresh OS process, in its own session and private directory."""

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
from pathlib import Path

from forge.evaluator.result import SandboxInfo
from forge.sandbox.base import ChannelError, SandboxJob, SandboxOutcome, decode_message, scrubbed_environment
from forge.sandbox.policy import (
    NOBODY,
    PidsCgroup,
    SandboxConfig,
    cache_environment,
    network_namespace_available,
    preexec,
    running_as_root,
    world_traversable,
)

OUTPUT_CAP = 1 << 20
WORKER = ["-P", "-m", "forge.sandbox.worker"]


class _Drain(threading.Thread):
    """Reads a pipe to EOF, keeping at most `cap` bytes (a chatty candidate cannot fill memory)."""

    def __init__(self, stream, cap: int = OUTPUT_CAP):
        super().__init__(daemon=True)
        self.stream, self.cap, self.data = stream, cap, bytearray()

    def run(self) -> None:
        while chunk := self.stream.read(65536):
            if len(self.data) < self.cap:
                self.data += chunk[: self.cap - len(self.data)]


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


def _worker_paths() -> list[str]:
    """What uid 65534 must be able to read to start the worker: interpreter and packages."""
    import importlib.util

    specs = [importlib.util.find_spec(name) for name in ("forge", "pydantic", "torch")]
    return [sys.executable, *(os.path.dirname(s.origin) for s in specs if s and s.origin)]


def _gpu_devices_open_to_all() -> bool:
    """uid 65534 can use the GPU only if the NVIDIA device files are read-write for others."""
    devices = [p for p in Path("/dev").glob("nvidia*") if not p.is_dir()]
    return bool(devices) and all(p.stat().st_mode & 0o006 == 0o006 for p in devices)


class LocalSandbox:
    name = "local"

    def __init__(self, config: SandboxConfig | None = None, cache_dir: Path | None = None):
        self.config = config or SandboxConfig.from_env()
        self.cache_dir = Path(cache_dir or tempfile.gettempdir()) / "forge-cache"
        self.drop = self.config.drop_privileges and running_as_root() and all(map(world_traversable, _worker_paths()))
        self.isolate_network = self.config.isolate_network and network_namespace_available()

    def _prepare_dir(self, path: Path, drop: bool) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if drop:
            os.chown(path, NOBODY, NOBODY)

    def run(self, job: SandboxJob) -> SandboxOutcome:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        drop = self.drop and world_traversable(str(self.cache_dir)) and (not job.gpu or _gpu_devices_open_to_all())
        token = secrets.token_hex(16)
        cache = self.cache_dir / (f"uid-{NOBODY}" if drop else f"uid-{os.geteuid()}")
        self._prepare_dir(cache, drop)
        with tempfile.TemporaryDirectory(prefix="forge-job-") as tmp:
            workdir = Path(tmp)
            self._prepare_dir(workdir, drop)
            env = {**scrubbed_environment(), **self.config.extra_env, **cache_environment(cache, workdir)}
            read_fd, write_fd = os.pipe()
            spec = {
                "token": token,
                "channel": {"kind": "fd", "fd": write_fd},
                "writable": [str(workdir), str(cache), "/dev", *job.writable_dirs],
                "restrict_writes": self.config.restrict_writes,
                "job": job.payload,
            }
            cgroup = None if drop else PidsCgroup.create(f"forge-{token}", self.config.max_processes)
            start = time.perf_counter()
            proc = subprocess.Popen(
                [*job.argv_prefix, sys.executable, *WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
                preexec_fn=preexec(self.config, self.isolate_network, drop, cgroup),
            )
            os.close(write_fd)
            drains = [_Drain(proc.stdout), _Drain(proc.stderr), _Drain(os.fdopen(read_fd, "rb"))]
            for d in drains:
                d.start()
            proc.stdin.write(json.dumps(spec).encode())
            proc.stdin.close()
            timed_out = False
            try:
                proc.wait(timeout=job.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            kill_session(proc.pid)
            if cgroup is not None:
                cgroup.remove()
            proc.wait()
            for d in drains:
                d.join(timeout=5)
            wall = time.perf_counter() - start
        stdout, stderr, channel = (bytes(d.data) for d in drains)
        message, channel_error = None, ""
        if channel:
            try:
                message = decode_message(token, channel)
            except ChannelError as exc:
                channel_error = str(exc)
        code = proc.returncode
        return SandboxOutcome(
            message=message,
            channel_error=channel_error,
            timed_out=timed_out,
            exit_code=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            stdout=SandboxOutcome.logs(stdout),
            stderr=SandboxOutcome.logs(stderr),
            wall_s=wall,
            info=SandboxInfo(
                backend=self.name,
                exit_code=code if code is not None and code >= 0 else None,
                signal=-code if code is not None and code < 0 else None,
                network_isolated=self.isolate_network,
                filesystem_restricted=bool(message and message.get("sandbox", {}).get("filesystem")),
                killed_on_timeout=timed_out,
                privileges_dropped=drop,
                process_limit="cgroup" if cgroup is not None else ("rlimit" if drop or not running_as_root() else "none"),
            ),
        )
