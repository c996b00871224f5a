"""Executors (`forge.evaluator.executors`): `local` and `queue:DIR` with real `forge worker`
processes on the CPU (Triton interpreter), real files, real signals.

A worker started here serves `--device cpu` jobs; evaluations that end at the static check
(a syntax error: `compile_error` at once, no sandbox) keep the racing tests fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from forge.db.store import RunStore
from forge.evaluator import EvalConfig, EvaluatorError, evaluate, resolve_problem
from forge.evaluator.executors import ExecutorSpecError, check_spec, make_executor
from forge.evaluator.job_queue import Queue, QueueJob, QueueResult

FIXTURES = Path(__file__).parent / "fixtures"
LEGIT = (FIXTURES / "legit" / "triton_softmax.py").read_text()
BROKEN = "def f(:\n    pass\n"


@pytest.fixture
def home(forge_cache_dir: Path) -> Path:
    """FORGE_HOME of the workers: its cache is where a privilege-dropping sandbox can reach."""
    return forge_cache_dir


def start_worker(queue: Path, home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "FORGE_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "forge.cli.main", "worker", "--queue", str(queue), *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(worker: subprocess.Popen) -> str:
    """Ctrl-C a serving worker; its stderr."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGINT)
    return finish(worker)


def finish(worker: subprocess.Popen) -> str:
    """Wait for a draining worker to exit by itself; its stderr."""
    _, stderr = worker.communicate(timeout=120)
    return stderr


def config_for(queue: Path, home: Path, **fields) -> EvalConfig:
    return EvalConfig(device="cpu", executor=f"queue:{queue}", cache_dir=home / "cache", **fields)


def verdict(result) -> tuple:  # noqa: ANN001 (EvalResult)
    return (
        result.status,
        result.reasons,
        sorted((c.input_set, c.seed_index, c.phase, c.passed) for c in result.checks),
    )


def test_specs_are_checked_by_the_registry():
    assert check_spec("local") == "local"
    assert check_spec("queue:jobs") == f"queue:{Path.cwd() / 'jobs'}"
    for bad, message in (
        ("ray", "unknown executor 'ray': use one of local, queue:DIR"),
        ("queue", "needs a directory"),
        ("local:x", "takes no argument"),
    ):
        with pytest.raises(ExecutorSpecError, match=message):
            check_spec(bad)


def test_queue_gives_the_local_verdict(tmp_path, home):
    problem = resolve_problem("softmax")
    local = evaluate(problem, LEGIT, EvalConfig(device="cpu", cache_dir=home / "cache"))
    worker = start_worker(tmp_path / "q", home, "--device", "cpu")
    executor = make_executor(config_for(tmp_path / "q", home))
    try:
        queued = executor.evaluate(problem, LEGIT, config_for(tmp_path / "q", home))
    finally:
        executor.close()
        log = stop(worker)
    assert local.status.value == "correct"
    assert verdict(queued) == verdict(local)
    assert worker.returncode == 130
    assert "softmax from" in log and ": correct in" in log
    queue = tmp_path / "q"
    assert not any(list((queue / d).iterdir()) for d in ("pending", "results", "claimed", "tmp"))


def test_racing_workers_never_run_one_job_twice(tmp_path, home):
    queue = Queue(tmp_path / "q")
    problem = resolve_problem("softmax")
    jobs = [QueueJob.create(problem, BROKEN, config_for(queue.root, home)) for _ in range(40)]
    for job in jobs:
        queue.submit(job)
    workers = [start_worker(queue.root, home, "--device", "cpu", "--drain") for _ in range(2)]
    logs = [finish(w) for w in workers]  # --drain: each exits once nothing is pending
    assert [w.returncode for w in workers] == [0, 0], logs
    answered = [
        line.split()[0] for log in logs for line in log.splitlines() if "compile_error" in line
    ]
    assert sorted(answered) == sorted(j.id for j in jobs)  # each job run once, by one worker
    results = [QueueResult.from_json(p.read_text()) for p in (queue.root / "results").iterdir()]
    assert sorted(r.id for r in results) == sorted(j.id for j in jobs)
    assert all(r.result.status.value == "compile_error" for r in results)
    assert not list((queue.root / "pending").iterdir())
    assert not list((queue.root / "claimed").iterdir())  # claims removed, workers unregistered
    for log in logs:
        assert "queue empty" in log.splitlines()[-1]


def test_a_killed_workers_job_is_retried(tmp_path, home):
    queue = tmp_path / "q"
    problem = resolve_problem("softmax")
    config = config_for(queue, home)
    executor = make_executor(config)
    executor.stale_s = 3.0
    answer: dict = {}
    controller = threading.Thread(
        target=lambda: answer.update(result=executor.evaluate(problem, LEGIT, config))
    )
    doomed = start_worker(queue, home, "--device", "cpu")
    controller.start()
    deadline = time.monotonic() + 30
    while not list((queue / "claimed").glob("*/*.json")):  # the job is in the doomed's hands
        assert time.monotonic() < deadline and doomed.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)  # mid-evaluation
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    rescuer = start_worker(queue, home, "--device", "cpu", "--stale-after", "3")
    try:
        controller.join(timeout=120)
    finally:
        log = stop(rescuer)
        executor.close()
    assert not controller.is_alive()
    assert answer["result"].status.value == "correct"
    assert ": correct in" in log  # the rescuer ran it (put back by it or by the controller)
    assert not list((queue / "claimed").glob("*/*.json"))
    assert not list((queue / "results").iterdir())


def test_no_worker_is_one_clear_error(tmp_path, home):
    queue = tmp_path / "q"
    config = config_for(queue, home, queue_wait_s=1.0)
    executor = make_executor(config)
    started = time.monotonic()
    with pytest.raises(EvaluatorError) as error:
        executor.evaluate(resolve_problem("softmax"), LEGIT, config)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "\n" not in message and "within 1 s" in message
    assert f"forge worker --queue {queue} --device cpu" in message
    assert not list((queue / "pending").iterdir())  # the job is withdrawn


def test_a_late_duplicate_result_is_never_applied(tmp_path, home):
    """A worker taken for dead answers after all: its answer to an answered job is deleted."""
    queue = Queue(tmp_path / "q")
    config = config_for(queue.root, home)
    executor = make_executor(config)
    problem = resolve_problem("softmax")
    worker = start_worker(queue.root, home, "--device", "cpu")
    try:
        first = executor.evaluate(problem, BROKEN, config)
        job_id = next(iter(executor.consumed))
        late = QueueResult(id=job_id, worker="ghost", result=first.model_copy())
        (queue.root / "results" / f"{job_id}.json").write_text(late.to_json())
        executor.evaluate(problem, BROKEN, config)  # its polling sweeps the duplicate
    finally:
        executor.close()
        stop(worker)
    assert not list((queue.root / "results").iterdir())


def test_optimize_through_a_queue_drained_between_rounds(tmp_path, home):
    """`forge optimize --executor queue:DIR` on a controller, `forge worker --drain` run again
    and again where the evaluations happen: the run finishes with the verdicts of a local run."""
    queue, db = tmp_path / "q", tmp_path / "forge.db"
    env = {**os.environ, "FORGE_HOME": str(home), "FORGE_DB_URL": f"sqlite:///{db}"}
    env.pop("FORGE_MODEL", None)
    script = FIXTURES / "scripts" / "softmax_cpu.json"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forge.cli.main",
            "optimize",
            "softmax",
            "--device",
            "cpu",
            "--model",
            f"scripted:{script}",
            "--rounds",
            "4",
            "--patience",
            "0",
            "--executor",
            f"queue:{queue}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    drains = 0
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        drained = start_worker(queue, home, "--device", "cpu", "--drain")
        finish(drained)
        assert drained.returncode == 0
        drains += 1
        time.sleep(0.2)
    output, _ = run.communicate(timeout=30)
    assert run.returncode == 0, output
    assert f"via queue:{queue}" in output
    store = RunStore(f"sqlite:///{db}")
    (row,) = store.list_runs()
    assert row.status == "finished"
    assert store.run_config(row.id)["evaluation"]["executor"] == f"queue:{queue}"
    assert [s.status for s in store.history(row.id)] == [
        "compile_error",
        "incorrect",
        "correct",
        "correct",
    ]
    assert drains >= 2
