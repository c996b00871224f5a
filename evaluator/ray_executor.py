"""The `ray` executor: each evaluation is a Ray task on an existing cluster (`ray:auto`,
`ray:HOST:PORT`), with `num_gpus=1` for GPU jobs (`num_cpus=1` for CPU jobs).

The task runs Forge's normal sandboxed evaluation on the Ray worker node, which must have Forge
installed: the job and its answer cross as the queue's JSON (`QueueJob`, `QueueResult`), never
as pickled objects. Ray's own settings apply (RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import ModuleType

from forge.evaluator.config import EvalConfig
from forge.evaluator.executors import CLAIMED_MARGIN_S, MAX_ATTEMPTS, record_queue_wait
from forge.evaluator.host import EvaluatorError, deadline_for, evaluate
from forge.evaluator.job_queue import QueueJob, QueueResult
from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult

_connecting = threading.Lock()
_connected_to: str | None = None
"""The address this process connected to Ray with (`ray.init` holds one connection)."""


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise EvaluatorError(
            "the ray executor needs Ray, which is not installed: pip install 'opforge[ray]'"
        ) from exc
    return ray


def evaluate_job(job_json: str) -> str:
    """The Ray task: a QueueJob (JSON) evaluated on this node in Forge's sandbox, on the GPU Ray
    gave the task (its CUDA_VISIBLE_DEVICES), with this node's compiler cache; the QueueResult
    as JSON."""
    import ray

    job = QueueJob.model_validate_json(job_json)
    gpus = ",".join(str(gpu) for gpu in ray.get_gpu_ids())
    worker = f"ray {socket.gethostname()}" + (f" gpu {gpus}" if gpus else "")
    held_from = time.time()
    answer = job.answer(worker, evaluate, EvalConfig().cache_dir)
    result = answer.result
    if result is not None and result.sandbox is not None:
        placement = {"worker": worker, "held_from": held_from, "held_until": time.time()}
        result.sandbox = result.sandbox.model_copy(update=placement)
    return answer.to_json()


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def connect(ray: ModuleType, address: str) -> None:
    """Connect this process to the cluster at `address` once; a second executor for the same
    cluster shares the connection."""
    global _connected_to
    with _connecting:
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if address in ("auto", _connected_to, current):
                return
            raise EvaluatorError(
                f"this process is connected to the Ray cluster at {current} already, "
                f"not {address}: use ray:auto or ray:{current}"
            )
        if address != "auto":
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            except OSError as exc:
                raise EvaluatorError(
                    f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}"
                ) from exc
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise EvaluatorError(
                f"cannot connect to the Ray cluster at {address}: {_last_line(exc)}"
            ) from exc
        _connected_to = address


class RayExecutor:
    """Evaluations as Ray tasks. A task that finds no free worker within `queue_wait_s` plus the
    evaluation's deadline (and a margin) is cancelled and fails the evaluation; a Ray worker that
    dies holding one is retried by Ray (MAX_ATTEMPTS in all); any failure of Ray or the worker
    node is an EvaluatorError."""

    def __init__(self, address: str):
        self.ray = import_ray()
        self.address = address
        connect(self.ray, address)
        self.task = self.ray.remote(evaluate_job)
        self.in_flight: set = set()
        self._lock = threading.Lock()

    def evaluate(self, problem: Problem, source: str, config: EvalConfig) -> EvalResult:
        ray = self.ray
        gpus = 1 if config.device == "cuda" else 0
        if gpus and not ray.cluster_resources().get("GPU"):
            raise EvaluatorError(
                f"the Ray cluster at {self.address} has no GPU for --device cuda evaluations: "
                "start its GPU nodes (`ray start` sees their GPUs) or use --device cpu"
            )
        job = QueueJob.create(problem, source, config)
        wait_s = config.queue_wait_s + deadline_for(problem, source, config) + CLAIMED_MARGIN_S
        submitted = time.monotonic()
        ref = self.task.options(
            num_gpus=gpus,
            num_cpus=1,
            max_retries=MAX_ATTEMPTS - 1,
            name=f"forge-evaluate {problem.name}",
        ).remote(job.model_dump_json())
        with self._lock:
            self.in_flight.add(ref)
        try:
            text = ray.get(ref, timeout=wait_s)
        except ray.exceptions.GetTimeoutError as exc:
            ray.cancel(ref, force=True)
            raise EvaluatorError(
                f"the Ray cluster at {self.address} gave no result for evaluation job {job.id} "
                f"within {wait_s:.0f} s (queue_wait_s for a free worker, then the evaluation's "
                "deadline)"
            ) from exc
        except ray.exceptions.RayError as exc:
            raise EvaluatorError(
                f"Ray could not run evaluation job {job.id}: {_last_line(exc)}"
            ) from exc
        finally:
            with self._lock:
                self.in_flight.discard(ref)
        answer = QueueResult.from_json(text)
        if answer.result is None:
            raise EvaluatorError(f"{answer.worker} could not evaluate: {answer.error}")
        return record_queue_wait(answer.result, time.monotonic() - submitted)

    def close(self) -> None:
        """Cancel the evaluations in flight (their sandboxes are stopped); the connection stays
        for other executors of this process."""
        with self._lock:
            refs = list(self.in_flight)
        for ref in refs:
            self.ray.cancel(ref)
