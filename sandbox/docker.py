"""Docker backend: each job in a fresh container built from an empty image.

The image holds nothing (`ensure_image` imports an empty tar, so no registry is needed); the
host's Python environment and system libraries are bind-mounted read-only at their own paths,
which keeps every absolute path (the interpreter, `sys.prefix`, an editable install's mapping of
`forge`) valid inside. The container has no network, a read-only root, a tmpfs /tmp, memory and
pids limits, all capabilities dropped, `no-new-privileges`, and runs as 65534:65534. Three host
temp dirs are bind-mounted read-write: the private work dir (cwd), the shared compiler cache and
a dedicated result dir holding the worker's framed message (`{"kind": "file"}` channel).

The job spec (which carries the channel token) goes to the worker's stdin through the attach
socket, opened before the container starts and half-closed after writing; the container is
created with StdinOnce, so the engine closes the worker's stdin at that EOF. It is never written
to a file or an environment variable, where candidate code could read the token back.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import site
import socket
import stat
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest, LogConfig, Ulimit
from docker.utils import parse_repository_tag

from forge.evaluator.result import SandboxInfo
from forge.sandbox.base import (
    RUNNER_AHEAD,
    ChannelError,
    SandboxJob,
    SandboxOutcome,
    decode_message,
    evaluates_candidate,
    scrubbed_environment,
)
from forge.sandbox.policy import NOBODY, SandboxConfig, cache_environment

FORGE_DIR = Path(__file__).resolve().parents[1]
"""The directory of the `forge` package (the repository root for an editable install)."""
LABEL = "forge.sandbox.job"
"""Every container this backend creates carries this label (value: a random job id)."""

WORK_DIR = "/forge/work"
CACHE_DIR = "/forge/cache"
RESULT_DIR = "/forge/result"
RESULT_FILE = f"{RESULT_DIR}/message"
OUTPUT_CAP = 1 << 20
_LIVE: dict[str, DockerSandbox] = {}
"""Containers of this process's evaluations now running (`kill_live_containers`)."""
_LIVE_LOCK = threading.Lock()


def kill_live_containers() -> int:
    """Kill the containers of this process's evaluations in flight (a second Ctrl-C): each
    `run` then returns at once as a killed job and removes its container. Returns how many."""
    with _LIVE_LOCK:
        live = list(_LIVE.items())
    for container, sandbox in live:
        sandbox._kill(container)
    return len(live)


"""Bytes kept of stdout, of stderr, and the most the result file may hold (as the local backend)."""
TMPFS = "rw,nosuid,nodev,exec,size=1g,mode=1777"
WORKER = ["-P", "-m", "forge.sandbox.worker"]
KILL_GRACE_S = 30.0
"""How long the engine may take to report a killed container's exit."""

SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
"""Mounted read-only where present (a merged-/usr symlink such as /lib -> usr/lib is followed)."""
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
)
"""What the loader, compilers (`cc` via /etc/alternatives), ssl and `getpass.getuser()` read."""


class DockerUnavailable(RuntimeError):
    """The Docker engine cannot be reached (or the sandbox image cannot be made)."""

    @classmethod
    def because(cls, reason: object) -> DockerUnavailable:
        text = " ".join(str(reason).split())
        return cls(
            f"Docker engine unavailable ({text}): install and start it (`.ci/docker.sh`, or "
            "`apt-get install -y docker.io` then `dockerd &`), or use `--sandbox local`"
        )


def connect(client: docker.DockerClient | None = None) -> docker.DockerClient:
    """A client whose engine answers, or `DockerUnavailable`."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if client is None:
            client = docker.from_env()
        else:
            where = "the given client's engine"
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        raise DockerUnavailable.because(f"no answer from {where}: {exc}") from exc
    return client


def empty_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    return buffer.getvalue()


def ensure_image(client: docker.DockerClient, tag: str) -> str:
    """The id of image `tag`, importing it from an empty tar first if it does not exist."""
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        pass
    repository, version = parse_repository_tag(tag)
    response = client.api.import_image_from_data(
        empty_tar(), repository=repository, tag=version or "latest"
    )
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound as exc:
        raise DockerUnavailable.because(f"importing image {tag} failed: {response}") from exc


def python_paths(env: dict[str, str]) -> list[str]:
    """Host paths the worker's interpreter and imports need (mounted read-only, same path): the
    prefixes, site-packages, the directory of the `forge` package (an editable install maps
    `forge` to the repository) and the PYTHONPATH the worker inherits. Not every `sys.path`
    entry: a script's directory (say /root) would expose whatever lies beside it."""
    candidates = [
        sys.base_prefix,
        sys.prefix,
        sys.base_exec_prefix,
        sys.exec_prefix,
        str(FORGE_DIR),
    ]
    candidates += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    candidates += env.get("PYTHONPATH", "").split(os.pathsep)
    return [p for p in candidates if os.path.isabs(p) and os.path.exists(p)]


def extra_tool_paths(env: dict[str, str]) -> list[str]:
    return [env[k] for k in ("CUDA_HOME", "CUDA_PATH") if k in env and os.path.isdir(env[k])]


def outermost(paths: list[str]) -> list[str]:
    """Drop duplicates and paths that lie under another path of the list."""
    chosen: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}, key=len):
        if not any(path == c or path.startswith(c.rstrip("/") + "/") for c in chosen):
            chosen.append(path)
    return chosen


def read_result_file(path: Path, cap: int = OUTPUT_CAP) -> bytes | None:
    """The bytes of the result file, or None when the worker wrote none. Refuses anything but a
    regular file (candidate code may have replaced it by a symlink to a host file, a FIFO that
    would block this read, or /dev/zero) and anything larger than `cap`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ChannelError(
            f"result channel tampered: cannot open the result file ({exc.strerror})"
        ) from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ChannelError("result channel tampered: the result file is not a regular file")
        if info.st_size > cap:
            raise ChannelError(
                f"result channel tampered: the result file holds {info.st_size} bytes (> {cap})"
            )
        return f.read(cap + 1)


class _Waiter(threading.Thread):
    """Blocks on the engine's wait endpoint, so the caller can join with a deadline."""

    def __init__(self, client: docker.DockerClient, container_id: str):
        super().__init__(daemon=True)
        self.client, self.container_id = client, container_id
        self.status: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.status = self.client.api.wait(self.container_id)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            self.error = exc


class DockerSandbox:
    name = "docker"

    def __init__(
        self,
        config: SandboxConfig | None = None,
        cache_dir: Path | None = None,
        client: docker.DockerClient | None = None,
    ):
        self.config = config or SandboxConfig()
        self.cache_dir = Path(cache_dir or tempfile.gettempdir()) / "forge-cache"
        self.client = connect(client)
        self.image = ensure_image(self.client, self.config.docker_image)

    def _private_dir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o700)
        return path

    def volumes(
        self, env: dict[str, str], host: dict[str, Path], job: SandboxJob
    ) -> dict[str, dict]:
        read_only = [p for p in SYSTEM_DIRS + ETC_FILES if os.path.lexists(p)]
        read_only += python_paths(env) + extra_tool_paths(env)
        volumes = {p: {"bind": p, "mode": "ro"} for p in outermost(read_only) if os.path.exists(p)}
        for path in job.writable_dirs:
            # A missing one is not mounted (the engine would create it on the host as root); the
            # job cannot write there, as with the local backend, whose Landlock rules skip it too.
            if os.path.isdir(path):
                volumes[path] = {"bind": path, "mode": "rw"}
        volumes[str(host["work"])] = {"bind": WORK_DIR, "mode": "rw"}
        volumes[str(host["cache"])] = {"bind": CACHE_DIR, "mode": "rw"}
        volumes[str(host["result"])] = {"bind": RESULT_DIR, "mode": "rw"}
        return volumes

    def run(self, job: SandboxJob) -> SandboxOutcome:
        token = secrets.token_hex(16)
        job_id = secrets.token_hex(8)
        cache = self._private_dir(self.cache_dir / f"docker-uid-{NOBODY}")
        tmp = Path(tempfile.mkdtemp(prefix="forge-docker-job-"))
        container = None
        try:
            host = {
                "work": self._private_dir(tmp / "work"),
                "cache": cache,
                "result": self._private_dir(tmp / "result"),
            }
            env = {
                **scrubbed_environment(),
                **self.config.extra_env,
                **cache_environment(Path(CACHE_DIR), Path(WORK_DIR)),
                **({RUNNER_AHEAD: "1"} if evaluates_candidate(job) else {}),
            }
            spec = {
                "token": token,
                "channel": {"kind": "file", "path": RESULT_FILE},
                "writable": [WORK_DIR, CACHE_DIR, RESULT_DIR, "/tmp", "/dev", *job.writable_dirs],
                "restrict_writes": self.config.restrict_writes,
                "job": job.payload,
            }
            api = self.client.api
            host_config = api.create_host_config(
                binds=self.volumes(env, host, job),
                network_mode="none",
                read_only=True,
                tmpfs={"/tmp": TMPFS},
                mem_limit=self.config.docker_memory,
                memswap_limit=self.config.docker_memory,
                pids_limit=self.config.docker_pids,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ulimits=[
                    Ulimit(name="core", soft=0, hard=0),
                    Ulimit(
                        name="fsize",
                        soft=self.config.max_file_bytes,
                        hard=self.config.max_file_bytes,
                    ),
                    Ulimit(
                        name="nofile",
                        soft=self.config.max_open_files,
                        hard=self.config.max_open_files,
                    ),
                ],
                device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])]
                if job.gpu
                else None,
                log_config=LogConfig(type="json-file", config={"max-size": "4m", "max-file": "1"}),
            )
            start = time.perf_counter()
            # The low-level call: only it sets StdinOnce (stdin_open with detach=False), which
            # makes the engine close the worker's stdin when our attach stream half-closes.
            container = api.create_container(
                self.image,
                command=[*job.argv_prefix, sys.executable, *WORKER],
                stdin_open=True,
                detach=False,
                user=f"{NOBODY}:{NOBODY}",
                working_dir=WORK_DIR,
                environment=env,
                labels={LABEL: job_id},
                host_config=host_config,
            )["Id"]
            with _LIVE_LOCK:
                _LIVE[container] = self
            notes, timed_out, status = self._start_and_wait(container, spec, start + job.timeout_s)
            wall = time.perf_counter() - start
            state = api.inspect_container(container)["State"]
            if state.get("OOMKilled"):
                notes.append(
                    f"[forge sandbox] container killed by the OOM killer (memory limit {self.config.docker_memory})"
                )
            stdout = api.logs(container, stdout=True, stderr=False)[:OUTPUT_CAP]
            stderr = api.logs(container, stdout=False, stderr=True)[:OUTPUT_CAP]
            message, channel_error = None, ""
            try:
                raw = read_result_file(host["result"] / Path(RESULT_FILE).name)
                message = decode_message(token, raw) if raw is not None else None
            except ChannelError as exc:
                channel_error = str(exc)
        finally:
            if container is not None:
                with _LIVE_LOCK:
                    _LIVE.pop(container, None)
                api.remove_container(container, force=True)
            shutil.rmtree(tmp)
        code = status.get("StatusCode", state.get("ExitCode"))
        # The engine reports a death by signal N as exit status 128 + N; a kill on timeout is SIGKILL.
        signal_number = 9 if timed_out else (code - 128 if 128 < code <= 128 + 64 else None)
        exit_code = None if signal_number is not None else code
        if notes:
            stderr += ("\n" + "\n".join(notes)).encode()
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
                network_isolated=True,
                filesystem_restricted=True,
                privileges_dropped=True,
                process_limit="container",
                killed_on_timeout=timed_out,
            ),
        )

    def _start_and_wait(
        self, container: str, spec: dict, deadline: float
    ) -> tuple[list[str], bool, dict]:
        """Start `container`, feed `spec` on its stdin, wait until `deadline` (perf_counter),
        SIGKILL after. Returns (notes for stderr, timed_out, the engine's wait status)."""
        notes: list[str] = []
        api = self.client.api
        attached = api.attach_socket(container, params={"stdin": 1, "stream": 1})
        # Unix socket and plain TCP give a SocketIO around the socket; TLS gives the socket itself.
        sock = getattr(attached, "_sock", attached)
        try:
            try:
                api.start(container)
            except docker.errors.APIError as exc:
                if "device driver" in str(exc) and "gpu" in str(exc):
                    raise DockerUnavailable.because(
                        f"the engine cannot give containers a GPU, install nvidia-container-toolkit: {exc}"
                    ) from exc
                raise
            waiter = _Waiter(self.client, container)
            waiter.start()
            try:
                # Bounded by the deadline too: a process that never reads its stdin would
                # otherwise block a large spec here forever.
                sock.settimeout(max(deadline - time.perf_counter(), 0.001))
                sock.sendall(json.dumps(spec).encode())
                sock.shutdown(socket.SHUT_WR)
            except TimeoutError:
                notes.append("[forge sandbox] the job was not read from stdin before the deadline")
            except (BrokenPipeError, ConnectionResetError) as exc:
                notes.append(
                    f"[forge sandbox] the worker's stdin closed before the job was written: {exc}"
                )
            waiter.join(max(deadline - time.perf_counter(), 0.0))
            timed_out = waiter.is_alive()
            if timed_out:
                self._kill(container)
                waiter.join(KILL_GRACE_S)
                if waiter.is_alive():
                    raise RuntimeError(
                        f"docker engine did not report the exit of killed container {container[:12]}"
                    )
        finally:
            # Close the HTTP response first (closing the SocketIO under it makes its own close
            # fail later in a finalizer), then the socket.
            response = getattr(attached, "_response", None)
            if response is not None:
                response.close()
            sock.close()
        if waiter.error is not None:
            raise waiter.error
        return notes, timed_out, waiter.status or {}

    def _kill(self, container: str) -> None:
        try:
            self.client.api.kill(container)
        except docker.errors.APIError as exc:
            # 409: the container exited between the deadline and the kill; nothing left to kill.
            if exc.status_code != 409:
                raise
