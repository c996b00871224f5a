"""The `ray` executor against a real Ray instance, started as users start one (`ray start
--head`), with CPU-mode jobs (Triton interpreter) evaluated by Forge on the Ray workers.

One instance serves the module (starting it takes seconds). It has 2 CPUs and declares one GPU
that this CPU machine does not have: a GPU job is scheduled there and its worker cannot evaluate
it, which is how a misconfigured node fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from forge.db.store import RunStore
from forge.evaluator import EvalConfig, EvaluatorError, resolve_problem
from forge.evaluator.executors import make_executor
from forge.evaluator.ray_executor import import_ray

FIXTURES = Path(__file__).parent / "fixtures"
LEGIT = (FIXTURES / "legit" / "triton_softmax.py").read_text()
CHEAT = (FIXTURES / "cheats" / "row04_zeroes_inputs.py").read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def address(forge_cache_dir: Path) -> Iterator[str]:
    """HOST:PORT of a Ray head node started for this module, with token authentication and a
    token of its own in the environment of both sides (Ray reads it when first imported, which
    the executor does); its workers' FORGE_HOME is the test cache."""
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths live under it
    port = free_port()
    log = Path(temp) / "start.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        with log.open("w") as out:
            head = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ray.scripts.scripts",
                    "start",
                    "--head",
                    "--block",
                    f"--port={port}",
                    "--num-cpus=2",
                    "--num-gpus=1",
                    "--object-store-memory=100000000",  # 100 MB: jobs and answers are small
                    f"--temp-dir={temp}",
                    "--include-dashboard=false",
                    "--disable-usage-stats",
                ],
                env={**os.environ, "FORGE_HOME": str(forge_cache_dir)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 120
            while "Ray runtime started" not in log.read_text():
                assert head.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            yield f"127.0.0.1:{port}"
        finally:
            try:
                if "ray" in sys.modules:
                    sys.modules["ray"].shutdown()  # this process's connection, if any
            finally:
                head.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
                try:
                    head.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(head.pid, signal.SIGKILL)
                    head.wait()
                shutil.rmtree(temp, ignore_errors=True)


def config_for(address: str, home: Path, device: str = "cpu") -> EvalConfig:
    return EvalConfig(device=device, executor=f"ray:{address}", cache_dir=home / "cache")


def test_ray_tasks_give_forges_verdicts(address, forge_cache_dir):
    """A legit kernel and a cheat, evaluated at once as two Ray tasks: the sandboxed verdicts of
    a local run (correct; incorrect for the cheat)."""
    config = config_for(address, forge_cache_dir)
    problem = resolve_problem("softmax")
    executor = make_executor(config)
    try:
        with ThreadPoolExecutor(2) as pool:
            legit, cheat = pool.map(lambda s: executor.evaluate(problem, s, config), [LEGIT, CHEAT])
    finally:
        executor.close()
    assert legit.status.value == "correct", legit.reasons
    assert cheat.status.value == "incorrect"
    assert "the candidate modified input 0" in cheat.reasons[0]
    for result in (legit, cheat):
        assert result.sandbox.worker == f"ray {socket.gethostname()}"  # set by the Ray task
        assert result.sandbox.backend == "local" and result.sandbox.held_from is not None
    assert not executor.in_flight


def test_a_worker_that_cannot_evaluate_is_an_evaluator_error(address, forge_cache_dir):
    """The cluster's GPU exists only on paper: the GPU job lands on the node, whose worker finds
    no CUDA GPU. The controller gets one clear EvaluatorError."""
    config = config_for(address, forge_cache_dir, device="cuda")
    executor = make_executor(config)
    try:
        with pytest.raises(EvaluatorError) as error:
            executor.evaluate(resolve_problem("softmax"), LEGIT, config)
    finally:
        executor.close()
    message = str(error.value)
    assert message.startswith(f"ray {socket.gethostname()} gpu 0 could not evaluate: ")
    assert "--device cuda needs a CUDA GPU" in message and "\n" not in message


def test_without_ray_installed_one_line_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # how Python sees a package that is absent
    with pytest.raises(EvaluatorError, match=r"^the ray executor needs Ray, which is not "):
        import_ray()


def test_an_unreachable_cluster_fails_optimize_before_anything_is_recorded(tmp_path):
    port = free_port()  # nothing listens there
    db = f"sqlite:///{tmp_path / 'forge.db'}"
    env = {**os.environ, "FORGE_HOME": str(tmp_path), "FORGE_DB_URL": db}
    env.pop("FORGE_MODEL", None)
    script = FIXTURES / "scripts" / "softmax_cpu.json"
    run = subprocess.run(
        [sys.executable, "-m", "forge.cli.main", "optimize", "softmax", "--device", "cpu"]
        + ["--model", f"scripted:{script}", "--executor", f"ray:127.0.0.1:{port}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused"
    ]
    assert RunStore(db).list_runs() == []
