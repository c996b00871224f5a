"""Containment of the local sandbox backend, seen from inside with probe jobs
(`{"kind": "probe"}` in forge.sandbox.worker) and from outside (/proc, the host's files and
sockets). No torch import in the worker for a probe: each job takes well under a second."""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import pytest
from loopback import Listener

from forge.evaluator.result import LOG_LIMIT
from forge.sandbox.base import (
    MAGIC,
    ChannelError,
    SandboxJob,
    decode_message,
    encode_message,
    scrubbed_environment,
)
from forge.sandbox.local import LocalSandbox
from forge.sandbox.policy import SandboxConfig, landlock_abi, network_namespace_available

MARKER_VAR = "FORGE_TEST_MARKER"

SECRET_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "GITHUB_TOKEN",
    "MY_SERVICE_TOKEN",
    "STRIPE_SECRET",
    "DATABASE_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "OPENROUTER_API_KEY",
)


@pytest.fixture
def marker() -> str:
    return secrets.token_hex(8)


@pytest.fixture
def sandbox(tmp_path: Path, marker: str) -> LocalSandbox:
    config = SandboxConfig(extra_env={MARKER_VAR: marker}, max_processes=256)
    return LocalSandbox(config, cache_dir=tmp_path / "cache")


def probe(
    sandbox: LocalSandbox, timeout_s: float = 30.0, argv_prefix: list[str] | None = None, **fields
):
    job = SandboxJob(
        payload={"kind": "probe", **fields}, timeout_s=timeout_s, argv_prefix=argv_prefix or []
    )
    return sandbox.run(job)


def facts_of(outcome) -> dict:
    assert outcome.message is not None, (
        f"no result: channel_error={outcome.channel_error!r} exit={outcome.exit_code} signal={outcome.signal} stderr={outcome.stderr[-1500:]}"
    )
    assert "worker_error" not in outcome.message, outcome.message
    return outcome.message


def processes_with_marker(marker: str) -> list[int]:
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def wait_until_gone(marker: str, grace_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + grace_s
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _wrapper(code: str) -> list[str]:
    """argv_prefix running `code` in a Python process that then execs the real worker."""
    return [sys.executable, "-c", code + "\nimport os, sys\nos.execv(sys.argv[1], sys.argv[1:])"]


# ---- environment ---------------------------------------------------------------------------------


def test_secret_variables_are_scrubbed(sandbox: LocalSandbox, monkeypatch):
    values = {}
    for var in SECRET_VARS:
        values[var] = f"sk-forge-test-{secrets.token_hex(12)}"
        monkeypatch.setenv(var, values[var])
    monkeypatch.setenv("FORGE_UNRELATED_SETTING", "not-needed-by-a-build")
    facts = facts_of(probe(sandbox, look_for=list(values.values())))
    leaked = sorted(set(SECRET_VARS) & set(facts["env"]))
    assert not leaked, f"secret variables reached the worker: {leaked}"
    assert facts["secret_values_seen"] == [], "a secret value reached the worker under another name"
    assert "FORGE_UNRELATED_SETTING" not in facts["env"], "the environment is an allowlist"
    assert "PATH" in facts["env"]


def test_scrubbed_environment_is_an_allowlist_without_secrets():
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "CUDA_VISIBLE_DEVICES": "0",
        "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
        **{v: "secret" for v in SECRET_VARS},
        "PYTHONSTARTUP": "/home/user/evil.py",
        "LD_PRELOAD": "/tmp/hook.so",
        "TRITON_INTERPRET": "0",
    }
    env = scrubbed_environment(base)
    assert set(env) == {"PATH", "HOME", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"}


def test_worker_runs_in_a_fresh_private_directory(sandbox: LocalSandbox):
    first = facts_of(probe(sandbox))
    second = facts_of(probe(sandbox))
    tmp = os.path.realpath(tempfile.gettempdir())
    for facts in (first, second):
        cwd = facts["cwd"]
        assert os.path.realpath(cwd).startswith(os.path.join(tmp, "forge-job-")), cwd
        assert not os.path.exists(cwd), f"{cwd} was not removed after the job"
    assert first["cwd"] != second["cwd"]


# ---- network -------------------------------------------------------------------------------------


def test_network_is_blocked(sandbox: LocalSandbox):
    listener = Listener()
    try:
        outcome = probe(sandbox, host="127.0.0.1", port=listener.port)
    finally:
        listener.close()
    facts = facts_of(outcome)
    assert facts["network"].startswith("blocked"), facts["network"]
    assert listener.connections == 0, "the worker reached a socket on the host"
    assert outcome.info.network_isolated or facts["sandbox"]["network"], (
        "neither a network namespace nor Landlock's TCP rules were applied"
    )


@pytest.mark.skipif(not network_namespace_available(), reason="no network namespaces here")
def test_network_namespace_is_reported(sandbox: LocalSandbox):
    outcome = probe(sandbox, host="127.0.0.1", port=9)
    assert outcome.info.network_isolated is True


# ---- filesystem ----------------------------------------------------------------------------------


@pytest.mark.skipif(landlock_abi() < 1, reason="Landlock is not available on this kernel")
@pytest.mark.parametrize("where", ["/work", "/tmp", "home"])
def test_writes_outside_the_private_directory_are_blocked(sandbox: LocalSandbox, where: str):
    base = Path.home() if where == "home" else Path(where)
    if not base.is_dir():
        pytest.skip(f"{base} does not exist here")
    target = base / f"forge-escape-{secrets.token_hex(8)}.txt"
    try:
        outcome = probe(sandbox, write_outside=str(target))
        facts = facts_of(outcome)
        assert facts["write_outside"].startswith("blocked"), facts["write_outside"]
        assert not target.exists(), f"the worker wrote {target}"
        assert outcome.info.filesystem_restricted is True
    finally:
        target.unlink(missing_ok=True)


# ---- processes and timeouts ----------------------------------------------------------------------


def test_timeout_kills_the_whole_process_tree(sandbox: LocalSandbox, marker: str):
    """The job spawns 40 children (two of which leave its session with setsid) and then hangs:
    after its tiny wall-clock limit nothing of it may survive."""
    spawn = (
        "import subprocess, time\n"
        "kids = [subprocess.Popen(['sleep', '300']) for _ in range(38)]\n"
        "kids += [subprocess.Popen(['sleep', '300'], start_new_session=True) for _ in range(2)]\n"
        "time.sleep(300)"
    )
    started = time.perf_counter()
    outcome = probe(sandbox, timeout_s=2.0, argv_prefix=_wrapper(spawn))
    elapsed = time.perf_counter() - started
    assert outcome.timed_out is True
    assert outcome.info.killed_on_timeout is True
    assert outcome.message is None
    assert elapsed < 15, f"the timeout took {elapsed:.1f} s to take effect"
    left = wait_until_gone(marker)
    assert not left, f"{len(left)} processes of the job outlived its timeout: {left[:10]}"


def test_children_are_killed_when_the_worker_exits_normally(sandbox: LocalSandbox, marker: str):
    """A job that leaves a daemon behind (setsid'd) and then finishes normally."""
    spawn = "import subprocess\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\nsubprocess.Popen(['sleep', '300'])"
    outcome = probe(sandbox, argv_prefix=_wrapper(spawn))
    assert outcome.timed_out is False
    facts_of(outcome)
    left = wait_until_gone(marker)
    assert not left, f"{len(left)} processes of the job outlived it: {left[:10]}"


def test_process_limit_contains_a_fork_bomb(sandbox: LocalSandbox, marker: str):
    bomb = (
        "import os, time\n"
        "deadline = time.time() + 4\n"
        "failures = 0\n"
        "while time.time() < deadline:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(300)\n"
        "            os._exit(0)\n"
        "    except OSError:\n"
        "        failures += 1\n"
        "        if failures > 50:\n"
        "            break\n"
        "        time.sleep(0.01)\n"
        "print('fork failures', failures, flush=True)\n"
    )
    outcome = probe(sandbox, timeout_s=30.0, argv_prefix=_wrapper(bomb))
    facts_of(outcome)
    assert "fork failures" in outcome.stdout
    failures = int(outcome.stdout.split("fork failures", 1)[1].split()[0])
    assert failures > 0, "the process limit never stopped the fork loop"
    assert outcome.info.process_limit in ("cgroup", "rlimit", "container")
    left = wait_until_gone(marker)
    assert not left, f"{len(left)} processes of the job outlived it: {left[:10]}"


# ---- the result channel --------------------------------------------------------------------------


def test_channel_round_trip():
    token = secrets.token_hex(16)
    payload = {"status": "correct", "x": [1.5, float("inf")]}
    assert decode_message(token, encode_message(token, payload)) == payload


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (lambda t: encode_message("0" * 32, {"status": "correct"}), "wrong token"),
        (lambda t: encode_message("", {"status": "correct"}), "wrong token"),
        (lambda t: b'{"status": "correct"}', "malformed frame"),
        (
            lambda t: (
                encode_message(t, {"status": "incorrect"})
                + encode_message(t, {"status": "correct"})
            ),
            "extra or missing bytes",
        ),
        (
            lambda t: (
                encode_message("0" * 32, {"status": "correct"})
                + encode_message(t, {"status": "incorrect"})
            ),
            "wrong token",
        ),
        (lambda t: encode_message(t, {"status": "correct"})[:-3], "extra or missing bytes"),
        (lambda t: MAGIC + b" " + t.encode() + b" 5\n{oops", "result channel tampered"),
        (lambda t: MAGIC + b" " + t.encode() + b" -1\n", "extra or missing bytes"),
        (lambda t: b"FORGE-RESULT-2 " + t.encode() + b" 2\n{}", "malformed frame"),
    ],
)
def test_channel_rejects_forged_frames(frame, why: str):
    token = secrets.token_hex(16)
    with pytest.raises(ChannelError, match=why):
        decode_message(token, frame(token))


def test_frame_written_by_job_code_on_the_channel_is_rejected(sandbox: LocalSandbox):
    """Code running before the worker (standing in for candidate code) writes a fake 'correct'
    frame to every inherited descriptor: the host refuses the channel instead of trusting it."""
    forge = (
        "import json, os\n"
        "body = json.dumps({'status': 'correct'}).encode()\n"
        "for fd in sorted(int(n) for n in os.listdir('/proc/self/fd')):\n"
        "    if fd < 3: continue\n"
        "    try:\n"
        "        os.write(fd, b'FORGE-RESULT-1 ' + b'0' * 32 + b' ' + str(len(body)).encode() + b'\\n' + body)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    outcome = probe(sandbox, argv_prefix=_wrapper(forge))
    assert outcome.message is None
    assert outcome.channel_error.startswith("result channel tampered"), outcome.channel_error


def test_stdout_is_not_the_result_channel(sandbox: LocalSandbox):
    fake = "import json\nprint('FORGE-RESULT-1 ' + '0' * 32 + ' 21'); print(json.dumps({'status': 'correct'}), flush=True)"
    outcome = probe(sandbox, argv_prefix=_wrapper(fake))
    facts = facts_of(outcome)
    assert "status" not in facts
    assert "FORGE-RESULT-1" in outcome.stdout


def test_stdout_and_stderr_are_captured_and_truncated(sandbox: LocalSandbox):
    chatty = (
        "import sys\n"
        "sys.stdout.write('HEAD-OUT ' + 'o' * 3_000_000 + ' TAIL-OUT\\n'); sys.stdout.flush()\n"
        "sys.stderr.write('HEAD-ERR ' + 'e' * 50_000 + ' TAIL-ERR\\n'); sys.stderr.flush()\n"
    )
    outcome = probe(sandbox, argv_prefix=_wrapper(chatty))
    facts_of(outcome)
    for text, head in ((outcome.stdout, "HEAD-OUT"), (outcome.stderr, "HEAD-ERR")):
        assert text.startswith(head)
        assert len(text) <= LOG_LIMIT + 100
        assert "characters cut" in text
    assert "TAIL-ERR" in outcome.stderr, "the end of stderr (where errors are) must be kept"


def test_probe_reports_what_was_applied(sandbox: LocalSandbox):
    outcome = probe(sandbox)
    facts = facts_of(outcome)
    info = outcome.info
    assert info.backend == "local"
    assert set(facts["sandbox"]) == {"filesystem", "reads", "network"}
    assert info.filesystem_restricted == bool(facts["sandbox"]["filesystem"])
    if info.privileges_dropped:
        assert facts["uid"] == 65534
    json.dumps(facts)


def _kill_leftovers(marker: str) -> None:
    for pid in processes_with_marker(marker):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="GAP: without a pids cgroup and without a PID namespace (a host run by a non-root user) only "
    "kill_session() cleans up, and a descendant that called setsid() is in another session and survives",
)
def test_escaped_children_are_killed_without_a_cgroup(tmp_path: Path, marker: str, monkeypatch):
    """What a non-root user gets, and the privilege-dropping root path: no cgroup, no PID namespace."""
    from forge.sandbox import local

    monkeypatch.setattr(local.PidsCgroup, "create", classmethod(lambda cls, name, limit: None))
    config = SandboxConfig(
        extra_env={MARKER_VAR: marker}, max_processes=256, isolate_processes=False
    )
    sandbox = LocalSandbox(config, cache_dir=tmp_path / "cache")
    spawn = "import subprocess\nsubprocess.Popen(['sleep', '300'], start_new_session=True)"
    try:
        outcome = probe(sandbox, argv_prefix=_wrapper(spawn))
        facts_of(outcome)
        assert outcome.info.process_limit != "cgroup"
        left = wait_until_gone(marker, grace_s=3.0)
        assert not left, f"{len(left)} setsid'd processes of the job outlived it: {left[:10]}"
    finally:
        _kill_leftovers(marker)
