"""Where evaluations run: one small interface, implementations chosen by a registry.

An executor turns (problem, candidate source, EvalConfig) into an EvalResult. `EvalConfig.executor`
names one with a spec string:

- `local`: in this process's sandboxes (`forge.evaluator.evaluate`), with a worker process
  started ahead of each job (`LocalSandbox(prestart=True)`); one evaluation at a time.
- `queue:DIR`: a job file in DIR, evaluated by `forge worker --queue DIR` on a host that shares
  the directory (`forge.evaluator.job_queue`); the controller waits for the result file.

Add one by adding an `ExecutorKind` to `EXECUTORS`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from forge.evaluator.config import EvalConfig
from forge.evaluator.host import EvaluatorError, deadline_for, evaluate
from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult


class Executor(Protocol):
    def evaluate(self, problem: Problem, source: str, config: EvalConfig) -> EvalResult:
        """The verdict on `source` (raises EvaluatorError when no verdict can be had)."""
        ...

    def close(self) -> None:
        """Release what the executor holds (pre-started workers, queued jobs)."""
        ...


class ExecutorSpecError(ValueError):
    """An `--executor` spec that names no executor, or lacks (or has) an argument."""


class LocalExecutor:
    """Evaluations on this machine, one at a time, with the next sandbox worker started ahead
    of its job (a fresh process per job all the same)."""

    def __init__(self, config: EvalConfig):
        self.cache_dir = config.cache_dir
        self.sandbox = None
        if config.sandbox == "local":
            from forge.sandbox.local import LocalSandbox

            self.sandbox = LocalSandbox(cache_dir=config.cache_dir, prestart=True)

    @classmethod
    def from_spec(cls, argument: str, config: EvalConfig) -> LocalExecutor:
        return cls(config)

    def evaluate(
        self,
        problem: Problem,
        source: str,
        config: EvalConfig,
        on_phase: Callable[[str], None] | None = None,
    ) -> EvalResult:
        ours = config.sandbox == "local" and config.cache_dir == self.cache_dir
        return evaluate(
            problem, source, config, sandbox=self.sandbox if ours else None, on_phase=on_phase
        )

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()


CLAIMED_MARGIN_S = 120.0
"""Allowed on top of the evaluation's own deadline once a worker holds the job: its static
check, the sandbox's start, writing the result."""
MAX_ATTEMPTS = 3
"""Workers that may die holding one job before the controller gives up on it."""


class QueueExecutor:
    """Evaluations as job files in a shared directory, answered by `forge worker --queue DIR`.

    `evaluate` writes the job, then polls for its result: it fails (EvaluatorError) when no
    worker takes the job within `queue_wait_s`, when the worker holding it gives no result
    within the evaluation's deadline plus `CLAIMED_MARGIN_S`, or after `MAX_ATTEMPTS` workers
    died holding it. A dead worker's job (heartbeat older than `stale_s`) is put back in the
    queue by whoever sees it first: a worker or this controller."""

    def __init__(self, directory: Path, stale_s: float | None = None, poll_s: float = 0.1):
        from forge.evaluator.job_queue import STALE_S, Queue

        try:
            self.queue = Queue(directory)
        except OSError as exc:
            raise EvaluatorError(f"cannot use queue directory {directory}: {exc}") from exc
        self.stale_s = STALE_S if stale_s is None else stale_s
        self.poll_s = poll_s
        self.consumed: set[str] = set()
        self.waiting: set[str] = set()

    @classmethod
    def from_spec(cls, argument: str, config: EvalConfig) -> QueueExecutor:
        return cls(Path(argument))

    def evaluate(self, problem: Problem, source: str, config: EvalConfig) -> EvalResult:
        from forge.evaluator.job_queue import QueueJob

        job = QueueJob.create(problem, source, config)
        running_s = deadline_for(problem, source, config) + CLAIMED_MARGIN_S
        try:
            self.queue.submit(job)
            self.waiting.add(job.id)
            answer = self._wait(job, config.queue_wait_s, running_s)
        except OSError as exc:
            raise EvaluatorError(f"queue directory {self.queue.root}: {exc}") from exc
        finally:
            self.waiting.discard(job.id)
            self.consumed.add(job.id)
            self.queue.forget(job.id)
            self.queue.drop_results(self.consumed)
        if answer.result is None:
            raise EvaluatorError(f"worker {answer.worker} could not evaluate: {answer.error}")
        return answer.result

    def _wait(self, job, queue_wait_s: float, running_s: float):  # noqa: ANN001, ANN202
        queue, device = self.queue, job.config.device
        since, holder, deaths, missing = time.monotonic(), None, 0, 0
        while True:
            answer = queue.take_result(job.id)
            if answer is not None:
                return answer
            queue.requeue_stale(self.stale_s)
            queue.drop_results(self.consumed)
            now, where = time.monotonic(), queue.where(job.id)
            missing = missing + 1 if where is None else 0
            if where == "pending":
                if holder is not None:  # its worker died: back in the queue
                    deaths, holder, since = deaths + 1, None, now
                    if deaths >= MAX_ATTEMPTS:
                        raise EvaluatorError(
                            f"evaluation job {job.id} in {queue.root}: {deaths} workers died "
                            "holding it; see their logs"
                        )
                if now - since > queue_wait_s:
                    flag = "" if device == "cuda" else f" --device {device}"
                    raise EvaluatorError(
                        f"no worker took evaluation job {job.id} from {queue.root} within "
                        f"{queue_wait_s:.0f} s: run `forge worker --queue {queue.root}{flag}` "
                        "where the GPU is (add --drain to process what is pending and exit)"
                    )
            elif where is not None:
                if holder != where:
                    holder, since = where, now
                if now - since > running_s:
                    raise EvaluatorError(
                        f"worker {holder} took evaluation job {job.id} from {queue.root} but "
                        f"gave no result within {running_s:.0f} s"
                    )
            elif missing * self.poll_s > 5.0:
                raise EvaluatorError(
                    f"evaluation job {job.id} vanished from {queue.root} without a result"
                )
            time.sleep(self.poll_s)

    def close(self) -> None:
        """Withdraw the jobs still waiting for a worker (a stopped run needs no verdict)."""
        for job_id in list(self.waiting):
            self.queue.forget(job_id)


@dataclass(frozen=True)
class ExecutorKind:
    usage: str
    """How the spec is written, for messages: `local`, `queue:DIR`."""
    argument: Callable[[str], str]
    """Checks the text after `name:` and returns it normalised (raises ExecutorSpecError)."""
    build: Callable[[str, EvalConfig], Executor]
    """Makes the executor from the normalised argument and the run's EvalConfig."""
    shares_device: bool = False
    """Its evaluations use this machine's device: runs in flight together (a batch's items)
    take turns, so that none times its kernels while another evaluation runs."""


def _none(argument: str) -> str:
    if argument:
        raise ExecutorSpecError(f"the local executor takes no argument, got 'local:{argument}'")
    return ""


def _directory(argument: str) -> str:
    if not argument:
        raise ExecutorSpecError("the queue executor needs a directory: queue:DIR")
    return os.path.abspath(os.path.expanduser(argument))


EXECUTORS: dict[str, ExecutorKind] = {
    "local": ExecutorKind("local", _none, LocalExecutor.from_spec, shares_device=True),
    "queue": ExecutorKind("queue:DIR", _directory, QueueExecutor.from_spec),
}
"""The executors by name: the part of a spec before its first colon."""


def check_spec(spec: str) -> str:
    """`spec` normalised (a queue directory made absolute); ExecutorSpecError names the known
    ones when it is not usable."""
    name, colon, argument = spec.partition(":")
    kind = EXECUTORS.get(name)
    if kind is None:
        known = ", ".join(k.usage for k in EXECUTORS.values())
        raise ExecutorSpecError(f"unknown executor '{spec}': use one of {known}")
    normalised = kind.argument(argument)
    return f"{name}:{normalised}" if normalised else name


def shares_device(spec: str) -> bool:
    """Whether evaluations through `spec` must take turns with other runs' (`ExecutorKind`)."""
    return EXECUTORS[check_spec(spec).partition(":")[0]].shares_device


def make_executor(config: EvalConfig) -> Executor:
    """The executor `config.executor` names, ready to evaluate."""
    name, _, argument = check_spec(config.executor).partition(":")
    return EXECUTORS[name].build(argument, config)
