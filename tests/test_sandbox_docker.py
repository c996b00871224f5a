"""The docker sandbox backend, against a real engine (nothing about docker is mocked).

Without an engine these tests skip, unless the `CI` variable is set: then a missing engine is a
failure (`.ci/docker.sh` starts one). Most jobs are the worker's `probe`; a few replace the
worker by a short script through `argv_prefix` (the wrapper slot a profiler uses), which runs
inside the same container as the worker would, to exercise what a probe cannot (sleeping past
the deadline, forking, allocating, forging the result file). Those scripts never reach the
worker's Landlock rules, so what they show is the container's own containment.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest

from forge.sandbox.base import ChannelError, SandboxJob, decode_message, encode_message
from forge.sandbox.docker import (
    FORGE_DIR,
    LABEL,
    RESULT_FILE,
    WORK_DIR,
    DockerSandbox,
    DockerUnavailable,
    ensure_image,
    read_result_file,
)
from forge.sandbox.policy import NOBODY, SandboxConfig


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> DockerSandbox:
    try:
        return DockerSandbox(cache_dir=tmp_path_factory.mktemp("docker-cache"))
    except DockerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the docker backend cannot run: {exc}")
        pytest.skip(str(exc))


def variant(sandbox: DockerSandbox, **config) -> DockerSandbox:
    """Another backend on the same engine and cache, with other settings."""
    return DockerSandbox(SandboxConfig(**config), sandbox.cache_dir.parent, client=sandbox.client)


def script(code: str) -> list[str]:
    """argv_prefix that runs `code` in the container instead of the worker (whose argv follows
    and is ignored)."""
    return [sys.executable, "-c", code]


def probe(sandbox: DockerSandbox, timeout_s: float = 30, **fields):
    outcome = sandbox.run(SandboxJob(payload={"kind": "probe", **fields}, timeout_s=timeout_s))
    assert outcome.channel_error == "", outcome
    assert outcome.message is not None, outcome.stderr
    return outcome


def leftover_containers(sandbox: DockerSandbox) -> list:
    return sandbox.client.containers.list(all=True, filters={"label": LABEL})


def test_probe_runs_as_nobody_in_private_dir_without_secrets(sandbox, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-forge-test-secret-1")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "forge-test-secret-2")
    outcome = probe(sandbox, look_for=["sk-forge-test-secret-1", "forge-test-secret-2"])
    facts = outcome.message
    assert facts["uid"] == NOBODY
    assert facts["cwd"] == WORK_DIR
    assert "OPENAI_API_KEY" not in facts["env"] and "MY_SERVICE_TOKEN" not in facts["env"]
    assert facts["secret_values_seen"] == []
    assert {"TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "HOME", "TMPDIR"} <= set(facts["env"])
    # The container mounts only what the worker needs read-only, so no Landlock read allowlist.
    assert facts["sandbox"] == {"filesystem": True, "reads": False, "network": True}, (
        "Landlock applied inside"
    )
    assert (outcome.exit_code, outcome.signal, outcome.timed_out) == (0, None, False)
    info = outcome.info
    assert info.backend == "docker" and info.process_limit == "container"
    assert info.network_isolated and info.filesystem_restricted and info.privileges_dropped
    assert not leftover_containers(sandbox)


@pytest.mark.parametrize("landlock", [False, True])
def test_network_is_unreachable(sandbox, landlock):
    box = variant(sandbox, restrict_writes=landlock)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # control: the host reaches its listener
        local = probe(box, host="127.0.0.1", port=port).message["network"]
    remote = probe(box, host="192.0.2.1", port=80).message["network"]
    assert local.startswith("blocked"), local
    assert remote.startswith("blocked"), remote
    if not landlock:
        # Docker alone: a loopback of its own (refused), and no route anywhere else.
        assert local == "blocked: ConnectionRefusedError"
        assert remote == "blocked: OSError"


@pytest.mark.parametrize("landlock", [False, True])
def test_writes_outside_private_dirs_fail(sandbox, landlock):
    box = variant(sandbox, restrict_writes=landlock)
    package = str(FORGE_DIR / "escaped-from-docker.txt")
    for target in ("/escaped.txt", "/usr/escaped.txt", package):  # root, system and package mounts
        result = probe(box, write_outside=target).message["write_outside"]
        assert result.startswith("blocked"), (target, result)
    assert not Path(package).exists()
    for target in (f"{WORK_DIR}/ok.txt", "/tmp/ok.txt"):
        assert probe(box, write_outside=target).message["write_outside"] == "written", target


def test_timeout_kills_and_removes_the_container(sandbox):
    tmp_before = set(Path(tempfile.gettempdir()).glob("forge-docker-job-*"))
    sleeper = script(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('sleeping', flush=True)\n"
        "time.sleep(60)\n"
    )
    outcome = sandbox.run(SandboxJob(payload={"kind": "probe"}, timeout_s=2.0, argv_prefix=sleeper))
    assert outcome.timed_out and outcome.info.killed_on_timeout
    assert (outcome.signal, outcome.exit_code, outcome.message) == (9, None, None)
    assert "sleeping" in outcome.stdout
    assert 2.0 <= outcome.wall_s < 8.0
    assert not leftover_containers(sandbox)
    assert set(Path(tempfile.gettempdir()).glob("forge-docker-job-*")) == tmp_before


def test_a_second_ctrl_c_kills_the_containers_in_flight(sandbox):
    """`kill_live_containers` (what the loop's second Ctrl-C calls) ends a running job at once,
    long before its deadline, and its container is removed."""
    from forge.sandbox import docker as docker_sandbox

    sleeper = script("import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n")
    outcomes = []
    worker = threading.Thread(
        target=lambda: outcomes.append(
            sandbox.run(SandboxJob(payload={"kind": "probe"}, timeout_s=100, argv_prefix=sleeper))
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while not docker_sandbox._LIVE and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let the worker start in its container
    assert docker_sandbox.kill_live_containers() == 1
    worker.join(30)
    assert not worker.is_alive()
    (outcome,) = outcomes
    assert outcome.message is None and outcome.wall_s < 60, outcome
    assert outcome.signal == 9 or outcome.exit_code == 137, outcome
    assert not leftover_containers(sandbox)


def test_timeout_holds_when_stdin_is_never_read(sandbox):
    sleeper = script("import time; time.sleep(60)")
    job = SandboxJob(
        payload={"kind": "probe", "padding": "x" * (8 << 20)}, timeout_s=2.0, argv_prefix=sleeper
    )
    outcome = sandbox.run(job)
    assert outcome.timed_out and outcome.signal == 9 and outcome.wall_s < 8.0
    assert "not read from stdin before the deadline" in outcome.stderr
    assert not leftover_containers(sandbox)


def test_timeout_shorter_than_startup(sandbox):
    outcome = sandbox.run(SandboxJob(payload={"kind": "probe"}, timeout_s=0.05))
    assert outcome.timed_out and outcome.message is None and outcome.signal == 9
    assert not leftover_containers(sandbox)


def test_unknown_job_kind_is_reported_as_data(sandbox):
    outcome = sandbox.run(SandboxJob(payload={"kind": "no-such-kind"}, timeout_s=30))
    assert "unknown job kind 'no-such-kind'" in outcome.message["worker_error"]
    assert outcome.exit_code == 0 and outcome.channel_error == ""


def test_large_job_spec_arrives_whole_on_stdin(sandbox):
    outcome = probe(sandbox, padding="x" * (4 << 20))
    assert outcome.message["uid"] == NOBODY


def test_exit_code_and_logs_are_collected(sandbox):
    code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(3)"
    outcome = sandbox.run(SandboxJob(payload={}, timeout_s=30, argv_prefix=script(code)))
    assert (outcome.exit_code, outcome.signal, outcome.timed_out) == (3, None, False)
    assert outcome.stdout.strip() == "to stdout" and outcome.stderr.strip() == "to stderr"
    assert outcome.message is None and outcome.channel_error == ""


def test_forged_result_file_is_rejected(sandbox):
    forged = encode_message("0" * 32, {"status": "correct"})
    code = (
        f"import sys; data = {forged!r}\n"
        f"open({RESULT_FILE!r}, 'wb').write(data)\n"
        "sys.stdout.buffer.write(data)\n"
    )
    outcome = sandbox.run(SandboxJob(payload={}, timeout_s=30, argv_prefix=script(code)))
    assert outcome.message is None
    assert outcome.channel_error == "result channel tampered: wrong token"
    assert "FORGE-RESULT-1" in outcome.stdout  # printed, and never parsed as a result


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (f"os.mkfifo({RESULT_FILE!r})", "not a regular file"),
        (f"os.symlink('/etc/hostname', {RESULT_FILE!r})", "cannot open the result file"),
        (f"open({RESULT_FILE!r}, 'wb').truncate(64 << 20)", "bytes (>"),
    ],
)
def test_hostile_result_file_is_refused_without_blocking(sandbox, make, error):
    outcome = sandbox.run(
        SandboxJob(payload={}, timeout_s=30, argv_prefix=script(f"import os; {make}"))
    )
    assert outcome.message is None
    assert error in outcome.channel_error


def test_decode_of_forged_file(tmp_path):
    token = secrets.token_hex(16)
    good = tmp_path / "good"
    good.write_bytes(encode_message(token, {"x": 1}))
    assert decode_message(token, read_result_file(good)) == {"x": 1}
    for name, data in {
        "wrong-token": encode_message(secrets.token_hex(16), {"x": 1}),
        "appended": encode_message(token, {"x": 1}) + b'{"x": 2}',
        "bare-json": b'{"status": "correct"}',
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ChannelError):
            decode_message(token, read_result_file(tmp_path / name))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ChannelError, match="not a regular file"):
        read_result_file(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(good)
    with pytest.raises(ChannelError, match="cannot open"):
        read_result_file(tmp_path / "link")
    assert read_result_file(tmp_path / "missing") is None


def test_pids_limit(sandbox):
    code = (
        "import threading, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 300:\n"
        "        threading.Thread(target=time.sleep, args=(3,), daemon=True).start(); n += 1\n"
        "except RuntimeError:\n"
        "    pass\n"
        "print(n)\n"
    )
    job = SandboxJob(payload={}, timeout_s=30, argv_prefix=script(code))
    assert int(variant(sandbox, docker_pids=32).run(job).stdout) < 32
    assert int(sandbox.run(job).stdout) == 300  # control: the default limit allows them


def test_memory_limit(sandbox):
    code = "x = b'x' * (512 << 20); print('allocated')"
    outcome = variant(sandbox, docker_memory="128m").run(
        SandboxJob(payload={}, timeout_s=30, argv_prefix=script(code))
    )
    assert outcome.signal == 9 and "allocated" not in outcome.stdout
    assert "OOM killer" in outcome.stderr
    assert not leftover_containers(sandbox)


def test_private_work_dirs_and_shared_cache(sandbox):
    name = f"shared-{secrets.token_hex(4)}"
    code = (
        "import os, sys, time\n"
        "first = sorted(os.listdir('.'))\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(0.5)\n"
        "cache = os.environ['TRITON_CACHE_DIR']\n"
        "os.makedirs(cache, exist_ok=True); open(os.path.join(cache, sys.argv[1]), 'w').write('c')\n"
        "print(first, sorted(os.listdir('.')), cache)\n"
    )

    def job(i: int):
        return sandbox.run(
            SandboxJob(payload={}, timeout_s=30, argv_prefix=script(code) + [f"{name}-{i}"])
        )

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(job, range(4)))
    for i, outcome in enumerate(outcomes):
        assert outcome.exit_code == 0, outcome.stderr
        assert outcome.stdout.strip() == f"[] ['{name}-{i}'] /forge/cache/triton"
    host_cache = sandbox.cache_dir / f"docker-uid-{NOBODY}" / "triton"
    assert sorted(p.name for p in host_cache.glob(f"{name}-*")) == [f"{name}-{i}" for i in range(4)]
    assert os.stat(host_cache).st_uid == NOBODY
    assert not leftover_containers(sandbox)


def test_gpu_request_on_an_engine_without_gpu_support(sandbox):
    if "nvidia" in sandbox.client.info().get("Runtimes", {}):
        pytest.skip("this engine has the nvidia runtime")
    with pytest.raises(DockerUnavailable, match="nvidia-container-toolkit"):
        sandbox.run(SandboxJob(payload={"kind": "probe"}, timeout_s=30, gpu=True))
    assert not leftover_containers(sandbox)


def test_ensure_image_imports_an_empty_image(sandbox):
    tag = f"forge-sandbox-test-{secrets.token_hex(4)}:t"
    try:
        image_id = ensure_image(sandbox.client, tag)
        assert ensure_image(sandbox.client, tag) == image_id
        assert sandbox.client.images.get(tag).attrs["Size"] == 0
    finally:
        sandbox.client.images.remove(tag)


def test_unreachable_engine_gives_one_clear_line():
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    with pytest.raises(DockerUnavailable) as info:
        DockerSandbox(client=client)
    message = str(info.value)
    assert "\n" not in message and "--sandbox local" in message and "dockerd" in message


def test_each_job_starts_with_empty_private_dirs_and_leaks_no_thread(sandbox):
    code = f"import os; print(os.listdir({str(Path(RESULT_FILE).parent)!r}), os.listdir('.'), oct(os.stat('.').st_mode & 0o777))"
    threads_before = threading.active_count()
    for _ in range(2):
        outcome = sandbox.run(SandboxJob(payload={}, timeout_s=30, argv_prefix=script(code)))
        assert outcome.stdout.strip() == "[] [] 0o700"
    assert threading.active_count() == threads_before
