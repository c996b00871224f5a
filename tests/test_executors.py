"""Executors (`forge.evaluator.executors`): `local` and `queue:DIR` with real `forge worker`
processes on the CPU (Triton interpreter), real files, real signals.

A worker started here serves `--device cpu` jobs; evaluations that end at the static check
(a syntax error: `compile_error` at once, no sandbox) keep the racing tests fast.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from forge_process import run_forge

from forge.db.store import RunStore
from forge.evaluator import EvalConfig, EvaluatorError, resolve_problem
from forge.evaluator.executors import (
    ExecutorSpecError,
    LocalExecutor,
    check_spec,
    make_executor,
    on_this_machine,
)
from forge.evaluator.job_queue import (
    Queue,
    QueueJob,
    QueueResult,
    Worker,
    process_gone,
    process_identity,
)
from forge.sandbox.gpu_lock import GpuLock
from forge.sandbox.local import LocalSandbox

FIXTURES = Path(__file__).parent / "fixtures"
LEGIT_FILE = FIXTURES / "legit" / "triton_softmax.py"
LEGIT = LEGIT_FILE.read_text()
BROKEN = "def f(:\n    pass\n"


@pytest.fixture
def home(forge_cache_dir: Path) -> Path:
    """FORGE_HOME of the workers: its cache is where a privilege-dropping sandbox can reach."""
    return forge_cache_dir


def start_worker(
    queue: Path, home: Path, *args: str, env_vars: dict[str, str] | None = None
) -> subprocess.Popen:
    env = {**os.environ, "FORGE_HOME": str(home), **(env_vars or {})}
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


def test_specs_are_checked_by_the_registry():
    assert check_spec("local") == "local"
    assert check_spec("local:03") == "local:3"
    assert check_spec("local:gpus= 0, 2") == "local:gpus=0,2"
    assert check_spec("queue:jobs") == f"queue:{Path.cwd() / 'jobs'}"
    assert check_spec("ray") == check_spec("ray:auto") == "ray:auto"
    assert check_spec("ray:10.0.0.5:6379") == "ray:10.0.0.5:6379"
    known = "local[:N|:gpus=LIST], queue:DIR, ray[:auto|:HOST:PORT]"
    for bad, message in (
        ("slurm", f"unknown executor 'slurm': use one of {known}"),
        ("queue", "needs a directory"),
        ("local:x", "a number of workers or a list of distinct GPUs"),
        ("local:0", "got 'local:0'"),
        ("local:gpus=0,0", "got 'local:gpus=0,0'"),
        ("local:gpus=", "got 'local:gpus='"),
        ("ray:6379", "auto or the cluster's HOST:PORT"),
    ):
        with pytest.raises(ExecutorSpecError, match=re.escape(message)):
            check_spec(bad)
    assert on_this_machine("local:gpus=1") and not on_this_machine("ray")


def test_a_remote_executors_gpu_is_named_for_the_prompts(tmp_path):
    from forge.agents.coder import target_gpu
    from forge.agents.loop_config import LoopConfig

    queue = f"queue:{tmp_path}"
    named = LoopConfig.from_options(executor=queue, target_gpu="h200").evaluation
    assert named.target_gpu == "NVIDIA H200"
    gpu = target_gpu(named)
    assert (gpu.name, gpu.sm_count, gpu.l2_mb, gpu.arch) == ("NVIDIA H200", 132, 60.0, "sm_90")
    assert gpu.bandwidth_tbs == pytest.approx(4.16) and gpu.fp32_tflops == pytest.approx(50.8)
    assert target_gpu(LoopConfig.from_options(executor=queue).evaluation) is None
    on_cpu = LoopConfig.from_options(executor=queue, device="cpu", target_gpu="H200").evaluation
    assert target_gpu(on_cpu) is None
    with pytest.raises(ExecutorSpecError, match=re.escape("--gpu A100: no GPU of that name")):
        LoopConfig.from_options(executor=queue, target_gpu="A100")
    with pytest.raises(ExecutorSpecError, match="evaluates here and detects its GPU: drop --gpu"):
        LoopConfig.from_options(executor="local", target_gpu="H200")


def placement(spec: str, device: str, home: Path) -> list[tuple[str, dict]]:
    """The evaluation workers `spec` gives jobs of `device` here: (label, environment added)."""
    executor = make_executor(EvalConfig(device=device, executor=spec, cache_dir=home / "cache"))
    try:
        free = executor.pool(device)
        slots = [free.get_nowait() for _ in range(free.qsize())]
        for slot in slots:  # each worker's sandbox carries its placement
            assert slot.sandbox.config.extra_env.items() >= slot.env.items()
        return [(slot.label, slot.env) for slot in slots]
    finally:
        executor.close()


def test_local_places_one_worker_on_each_gpu(monkeypatch, home):
    """The GPUs are CUDA_VISIBLE_DEVICES's entries up to the first invalid one (as for CUDA);
    each worker's sandboxes see only its own (no GPU needed: no job runs)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5,GPU-1a2b,-1,7")
    gpu = lambda name: (f"gpu {name}", {"CUDA_VISIBLE_DEVICES": name})  # noqa: E731
    assert placement("local", "cuda", home) == [gpu("3"), gpu("5"), gpu("GPU-1a2b")]
    assert placement("local:2", "cuda", home) == [gpu("3"), gpu("5")]
    assert placement("local:gpus=GPU-1a2b,3", "cuda", home) == [gpu("GPU-1a2b"), gpu("3")]
    assert placement("local", "cpu", home) == [("cpu 0", {})]  # CPU jobs: one at a time
    assert placement("local:3", "cpu", home) == [("cpu 0", {}), ("cpu 1", {}), ("cpu 2", {})]
    for spec, message in (
        ("local:gpus=0,3", "local:gpus=0,3: GPU 0 is not visible here (CUDA_VISIBLE_DEVICES="),
        ("local:4", "local:4 asks for 4 GPU workers, this machine has 3 (CUDA_VISIBLE_DEVICES="),
    ):
        with pytest.raises(EvaluatorError, match=re.escape(message)):
            placement(spec, "cuda", home)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with pytest.raises(EvaluatorError, match="no GPU for a GPU evaluation worker"):
        placement("local", "cuda", home)


def evaluate_in_threads(executor, problem, sources, config, on_phase=None) -> list:  # noqa: ANN001
    """`executor.evaluate` on each source from a thread of its own, all at once; `on_phase(i)`
    hears the phases of the i-th."""
    answers: list = [None] * len(sources)

    def evaluate_one(index: int) -> None:
        hear = {"on_phase": lambda _: on_phase(index)} if on_phase else {}
        answers[index] = executor.evaluate(problem, sources[index], config, **hear)

    threads = [threading.Thread(target=evaluate_one, args=(i,)) for i in range(len(sources))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    return answers


def one_job_at_a_time(*results) -> dict[str, int]:  # noqa: ANN002 (EvalResult)
    """The jobs each worker ran, after checking that no two of them held one worker at once."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        info = result.sandbox
        spans.setdefault(info.worker, []).append((info.held_from, info.held_until))
    for worker, held in spans.items():
        held.sort()
        for (_, end), (start, _) in itertools.pairwise(held):
            assert end <= start, f"two jobs held {worker} at once"
    return {worker: len(held) for worker, held in spans.items()}


def failure_within(seconds: float, call) -> tuple[float, str]:  # noqa: ANN001
    """`call()` in a thread: the EvaluatorError it raised within `seconds`, and when."""
    failed: list = []

    def target() -> None:
        try:
            call()
        except EvaluatorError as exc:
            failed.append((time.time(), str(exc)))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), f"still waiting for a worker after {seconds} s"
    assert failed, "no EvaluatorError"
    return failed[0]


def unusable_cache(config: EvalConfig, tmp_path: Path) -> EvalConfig:
    """`config` with a compiler cache where a sandbox cannot start (a file, not a folder)."""
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    return config.model_copy(update={"cache_dir": not_a_directory})


def test_local_workers_evaluate_side_by_side(tmp_path, home):
    """`local:2` with CPU jobs: two evaluations at once run on the two workers in parallel and
    give the verdicts one at a time would; a third job waits until a worker is free."""
    config = EvalConfig(device="cpu", executor="local:2", cache_dir=home / "cache")
    problem = resolve_problem("softmax")
    cheat = (FIXTURES / "cheats" / "row04_zeroes_inputs.py").read_text()
    executor = make_executor(config)
    running = [threading.Event(), threading.Event()]
    third: list = []

    def while_both_run() -> None:
        if all(event.wait(timeout=120) for event in running):
            third.append(failure_within(120, lambda: executor.evaluate(problem, LEGIT, bad)))

    bad = unusable_cache(config, tmp_path)
    waiter = threading.Thread(target=while_both_run)
    waiter.start()
    try:
        legit, cheated = evaluate_in_threads(
            executor, problem, [LEGIT, cheat], config, on_phase=lambda i: running[i].set()
        )
        waiter.join(timeout=120)
    finally:
        executor.close()
    assert legit.status.value == "correct"
    assert cheated.status.value == "incorrect"
    assert "the candidate modified input 0" in cheated.reasons[0]
    assert one_job_at_a_time(legit, cheated) == {"cpu 0": 1, "cpu 1": 1}
    spans = [(r.sandbox.held_from, r.sandbox.held_until) for r in (legit, cheated)]
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # side by side
    assert len(third) == 1, "the third job did not fail once both workers were busy"
    failed_at, message = third[0]
    assert failed_at >= min(end for _, end in spans)  # it waited for a worker
    assert message.startswith("the sandbox of worker 'cpu ") and "Not a directory" in message


def test_a_job_that_fails_frees_its_worker(tmp_path, home):
    """`local:1`: a job whose sandbox cannot start fails with one line and leaves the worker
    free: the next such job fails the same way instead of waiting for ever."""
    config = EvalConfig(device="cpu", executor="local:1", cache_dir=home / "cache")
    bad = unusable_cache(config, tmp_path)
    problem = resolve_problem("softmax")
    executor = make_executor(config)
    try:
        for _ in range(2):
            _, message = failure_within(30, lambda: executor.evaluate(problem, LEGIT, bad))
            assert message.startswith("the sandbox of worker 'cpu 0' failed: [Errno 20] ")
            assert "\n" not in message
    finally:
        executor.close()


def test_local_starts_a_workers_next_process_with_a_job_only_while_another_waits(monkeypatch, home):
    """`local:1` with CPU jobs overlapping as GPU jobs do (`always`): a job that starts while no
    other waits for the worker has its next process started as it ends; one that starts while
    another waits, as it starts (`sandbox.next_worker`). The first job is held (its process,
    started ahead, waits for the device lock that the test holds as a timing would) until two
    more wait for the worker."""
    monkeypatch.setenv("FORGE_SANDBOX_OVERLAP_PRESTART", "always")
    config = EvalConfig(device="cpu", cache_dir=home / "cache")
    decided = threading.Event()
    executor = LocalExecutor(config, workers=1, more_jobs=lambda _: decided.set() or False)
    problem = resolve_problem("softmax")
    timing = GpuLock(LocalSandbox(cache_dir=config.cache_dir).lock_path(gpu=False))
    answers: list = []

    def evaluate_one() -> None:
        answers.append(executor.evaluate(problem, LEGIT, config))

    threads = [threading.Thread(target=evaluate_one) for _ in range(3)]
    try:
        with timing.exclusive():
            executor.start_ahead("cpu")
            threads[0].start()
            assert decided.wait(60), "the first job did not start"
            assert not executor.backlog("cpu")
            for thread in threads[1:]:
                thread.start()
            deadline = time.monotonic() + 60
            while executor.waiting("cpu") < 2:
                assert time.monotonic() < deadline, "the other two jobs do not wait"
                time.sleep(0.05)
            assert executor.backlog("cpu")
        for thread in threads:
            thread.join(timeout=300)
    finally:
        executor.close()
        timing.close()
    assert [r.status.value for r in answers] == ["correct"] * 3, [r.reasons for r in answers]
    answers.sort(key=lambda r: r.sandbox.held_from)
    assert [r.sandbox.next_worker for r in answers] == ["after_job", "with_job", "after_job"]
    assert not executor.backlog("cpu")


@pytest.mark.gpu
def test_local_runs_one_evaluation_per_gpu_at_once(home):
    """On the GPU machine: twice as many evaluations at once as there are GPUs; each GPU runs
    its share one after the other and the GPUs run side by side."""
    from forge.evaluator.executors import visible_gpus

    gpus = visible_gpus()
    config = EvalConfig(device="cuda", cache_dir=home / "cache")
    executor = make_executor(config)
    try:
        results = evaluate_in_threads(
            executor, resolve_problem("softmax"), [LEGIT] * (2 * len(gpus)), config
        )
    finally:
        executor.close()
    assert all(r.status.value == "correct" for r in results), [r.reasons for r in results]
    assert one_job_at_a_time(*results) == {f"gpu {name}": 2 for name in gpus}
    waited = [r for r in results if r.phase_seconds.detail.get("worker_wait", 0.0) > 1.0]
    assert len(waited) >= len(gpus), "the second job on each GPU did not wait for its worker"
    for r in results:  # the wait for a free worker is not the evaluation's own (GPU) time
        held = r.sandbox.held_until - r.sandbox.held_from
        assert r.phase_seconds.total <= held + r.phase_seconds.static + 1.0, r.phase_seconds


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


def test_a_queue_workers_backlog_is_its_devices_pending_jobs(tmp_path, home):
    """`forge worker --queue DIR` starts a job's next sandbox process with the job only while
    another job of its device is pending in DIR: its executor's backlog is DIR/pending/."""
    queue = Queue(tmp_path / "q")
    worker = Worker(queue.root, "cpu", log=lambda _: None)
    problem = resolve_problem("softmax")
    on_gpu = config_for(queue.root, home).model_copy(update={"device": "cuda"})
    assert not worker.executor.backlog("cpu")
    queue.submit(QueueJob.create(problem, BROKEN, on_gpu))
    assert not worker.executor.backlog("cpu")  # not its device
    job = QueueJob.create(problem, BROKEN, config_for(queue.root, home))
    queue.submit(job)
    assert worker.executor.backlog("cpu")
    claim = queue.claim("another-worker", "cpu")
    assert claim is not None and claim.stem == job.id
    assert not worker.executor.backlog("cpu")
    queue.release(claim)
    assert worker.executor.backlog("cpu")


def processes_working_in(directory: Path) -> list[int]:
    """Processes whose working directory lies under `directory`."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if Path(cwd).is_relative_to(directory):
            found.append(int(entry))
    return found


def test_a_drain_answers_every_job_with_the_next_worker_started_while_jobs_wait(tmp_path, home):
    """`forge worker --drain` over two queued jobs, the next job's sandbox process started as a
    job starts while another is pending (FORGE_SANDBOX_OVERLAP_PRESTART=always, what GPU jobs
    get by default; CPU jobs start it as a job ends, the drains of
    test_optimize_through_a_queue_drained_between_rounds), as the last job ends: each job gets
    its verdict, and once the worker has exited none of its sandbox processes (the one started
    after the last job included) and none of their directories is left."""
    scratch = Path(tempfile.mkdtemp(prefix="forge-drain-"))
    os.chmod(scratch, 0o755)  # the runner (uid 65534) reaches its directory through it
    queue = Queue(tmp_path / "q")
    problem = resolve_problem("softmax")
    jobs = [QueueJob.create(problem, LEGIT, config_for(queue.root, home)) for _ in range(2)]
    for job in jobs:
        queue.submit(job)
    env_vars = {"TMPDIR": str(scratch), "FORGE_SANDBOX_OVERLAP_PRESTART": "always"}
    try:
        worker = start_worker(queue.root, home, "--device", "cpu", "--drain", env_vars=env_vars)
        log = finish(worker)
        assert worker.returncode == 0, log
        results = [QueueResult.from_json(p.read_text()) for p in (queue.root / "results").iterdir()]
        assert sorted(r.id for r in results) == sorted(j.id for j in jobs)
        assert [r.result.status.value for r in results] == ["correct"] * 2, log
        next_worker = {r.id: r.result.sandbox.next_worker for r in results}
        assert next_worker == {jobs[0].id: "with_job", jobs[1].id: "after_job"}
        assert len(re.findall(r"softmax from \S+: correct in", log)) == 2, log
        assert not processes_working_in(scratch)
        assert not list(scratch.iterdir())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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


def test_the_wait_for_a_worker_is_recorded_apart_from_the_evaluation(tmp_path, home):
    """No worker for the first 1.5 s: the verdict carries that wait as `queue_wait` (from the
    controller's clock), outside the evaluation's `total`."""
    queue = tmp_path / "q"
    config = config_for(queue, home)
    executor = make_executor(config)
    answer: dict = {}
    controller = threading.Thread(
        target=lambda: answer.update(
            result=executor.evaluate(resolve_problem("softmax"), BROKEN, config)
        )
    )
    started = time.monotonic()
    controller.start()
    time.sleep(1.5)
    worker = start_worker(queue, home, "--device", "cpu", "--drain")
    try:
        controller.join(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        executor.close()
        finish(worker)
    seconds = answer["result"].phase_seconds
    assert answer["result"].status.value == "compile_error"
    assert 1.5 <= seconds.detail["queue_wait"] <= elapsed - seconds.total
    assert seconds.total < 1.0  # a syntax error: the static check only


def forge_eval(home: Path, *args: str) -> subprocess.CompletedProcess:
    """`forge eval softmax <legit Triton softmax> --device cpu ...` as a user runs it."""
    env = {**os.environ, "FORGE_HOME": str(home)}
    return run_forge("eval", "softmax", str(LEGIT_FILE), "--device", "cpu", *args, env=env)


def json_verdict(out: subprocess.CompletedProcess) -> tuple[dict, tuple]:
    """The EvalResult `forge eval --json` printed, and what two runs of one candidate share."""
    assert out.returncode == 0, out.stderr + out.stdout
    result = json.loads(out.stdout)
    checks = sorted(
        (c["input_set"], c["seed_index"], c["phase"], c["passed"]) for c in result["checks"]
    )
    return result, (result["status"], result["reasons"], checks)


def test_one_shot_eval_through_a_resident_worker(tmp_path, home):
    """`forge eval --executor queue:DIR` hands the candidate to a `forge worker` already up and
    gives the verdict of a local `forge eval`; the worker's next job finds its sandbox process
    and runner started ahead, as soon as the previous job ended (a fresh pair per job)."""
    queue = tmp_path / "q"
    worker = start_worker(queue, home, "--device", "cpu")
    try:
        queued = forge_eval(home, "--executor", f"queue:{queue}", "--json")
        local = forge_eval(home, "--json")  # 7-10 s, while the worker starts its next runner
        again = forge_eval(home, "--executor", f"queue:{queue}", "--json")
    finally:
        log = stop(worker)
    (_, expected), (result, second) = json_verdict(local), json_verdict(again)
    assert expected[0] == "correct" and {c[0] for c in expected[2]} == {"tiny", "odd"}
    assert json_verdict(queued)[1] == expected
    assert second == expected
    seconds = result["phase_seconds"]
    # a runner started at the job's arrival is waited for as long as its start-up takes
    assert seconds["detail"]["runner_wait"] < 0.25 * seconds["prepare"], seconds
    # a sandbox process started then would import torch on the verdict's path as well
    assert seconds["detail"]["sandbox"] < 0.5 * seconds["prepare"], seconds
    # where the runner's start-up went, step by step, and when the worker's own was done
    detail = seconds["detail"]
    steps = {k.removeprefix("runner.startup.") for k in detail if k.startswith("runner.startup.")}
    assert steps == {"before_prepare", "imports", "monitor", "triton", "containment"}, detail
    assert sum(detail[f"runner.startup.{s}"] for s in steps) <= seconds["prepare"], detail
    assert 0 < detail["worker_start.own_ready"] < 120, detail
    assert worker.returncode == 130
    assert len(re.findall(r"softmax from \S+: correct in", log)) == 2, log
    assert not any(list((queue / d).iterdir()) for d in ("pending", "results", "claimed", "tmp"))


def test_one_shot_eval_without_a_worker_is_one_clear_error(tmp_path, home):
    queue = tmp_path / "q"
    started = time.monotonic()
    out = forge_eval(home, "--executor", f"queue:{queue}", "--queue-wait", "1")
    assert time.monotonic() - started < 30
    assert out.returncode != 0 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: no worker took evaluation job") and "within 1 s" in line
    assert f"`forge worker --queue {queue} --device cpu`" in line
    assert not list((queue / "pending").iterdir())  # the job is withdrawn


def test_a_worker_whose_sandbox_cannot_start_stops_with_one_line(tmp_path):
    """The worker starts its first job's sandbox process when it starts: a cache directory it
    cannot use is said then, not at each job."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").write_text("not a directory")
    worker = start_worker(tmp_path / "q", home, "--device", "cpu")
    log = finish(worker)
    assert worker.returncode == 2
    assert log.strip().splitlines()[-1].startswith("error: the sandbox of worker 'cpu 0' failed")
    assert not list((tmp_path / "q" / "claimed").iterdir())  # unregistered


def exited_process_identity() -> str:
    """The identity (`process_identity`) of a process that ran here and has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        identity = process_identity(child.pid)
    finally:
        child.kill()
        child.wait()
    return identity


def test_a_new_controller_withdraws_the_jobs_of_one_that_exited(tmp_path, home):
    """A batch killed with jobs in the queue and resumed submits its unevaluated candidates
    again: the first controller's jobs (pending, held by a worker, answered) are withdrawn, so
    nothing is evaluated twice; jobs of live controllers and of other hosts stay."""
    queue = Queue(tmp_path / "q")
    config = config_for(queue.root, home)
    problem = resolve_problem("softmax")
    gone = exited_process_identity()
    assert gone and process_gone(gone) and not process_gone(process_identity())
    assert not process_gone("other-host/pid:[1]/1/1")
    assert not process_gone("a job file from elsewhere") and not process_gone("")

    def job(owner: str) -> QueueJob:
        made = QueueJob.create(problem, BROKEN, config).model_copy(update={"owner": owner})
        queue.submit(made)
        return made

    orphan, held, answered = job(gone), job(gone), job(gone)
    alive, elsewhere = job(process_identity()), job("other-host/pid:[1]/1/1")
    claims = [queue.claim("worker-a", "cpu") for _ in range(2)]
    assert {c.stem for c in claims} == {orphan.id, held.id}  # oldest first
    queue.answer(claims[0], QueueResult(id=orphan.id, worker="worker-a", owner=gone, error="x"))
    queue.claim("worker-b", "cpu")  # `answered`, left held by worker-b
    queue._write(
        queue.root / "results" / f"{answered.id}.json",
        QueueResult(id=answered.id, worker="worker-b", owner=gone, error="x").to_json(),
    )
    executor = make_executor(config)  # a controller resuming the batch
    executor.close()
    left = {p.stem for p in queue.root.glob("*/*.json")} | {
        p.stem for p in queue.root.glob("claimed/*/*.json")
    }
    assert left == {alive.id, elsewhere.id}
    assert not queue.answer(claims[1], QueueResult(id=held.id, worker="worker-a", owner=gone))


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
            "--queue-wait",
            "120",
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
    assert store.run_config(row.id)["evaluation"]["queue_wait_s"] == 120
    assert [s.status for s in store.history(row.id)] == [
        "compile_error",
        "incorrect",
        "correct",
        "correct",
    ]
    assert drains >= 2
