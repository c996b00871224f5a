"""The worker cannot read other processes' environments (the host's holds the API keys)."""

import os
import subprocess

import pytest

from forge.sandbox.base import SandboxJob
from forge.sandbox.local import LocalSandbox
from forge.sandbox.policy import SandboxConfig

SECRET = "sk-forge-isolation-test-0123456789"


@pytest.fixture
def secret_in_host_env():
    """A process started with the key in its environment, as `forge optimize` is
    (/proc/PID/environ shows a process's start-up environment, not later os.environ edits)."""
    holder = subprocess.Popen(["sleep", "120"], env={**os.environ, "OPENAI_API_KEY": SECRET})
    yield holder
    holder.kill()
    holder.wait()


def probe(config: SandboxConfig) -> tuple[dict, object]:
    outcome = LocalSandbox(config).run(
        SandboxJob(payload={"kind": "probe", "look_for": [SECRET]}, timeout_s=60)
    )
    assert outcome.message is not None, outcome.stderr
    return outcome.message, outcome.info


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="PID namespaces need root; as a normal user other users' environ is unreadable anyway",
)
def test_host_environment_is_invisible_to_the_worker(secret_in_host_env):
    facts, info = probe(SandboxConfig())
    assert info.processes_isolated or info.privileges_dropped
    assert facts["secret_values_seen"] == []
    assert facts["secret_values_in_other_processes"] == []
    if info.processes_isolated:
        assert facts["visible_processes"] == [1]


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to compare with and without the namespace"
)
def test_without_process_isolation_the_leak_is_real(secret_in_host_env):
    """The probe can see the leak it guards against (so the test above can fail)."""
    facts, info = probe(SandboxConfig(isolate_processes=False, drop_privileges=False))
    assert not info.processes_isolated
    assert SECRET in facts["secret_values_in_other_processes"]
