"""Where evaluations run: one small interface, implementations chosen by a registry.

An executor turns (problem, candidate source, EvalConfig) into an EvalResult. `EvalConfig.executor`
names one with a spec string:

- `local`: in this process's sandboxes (`forge.evaluator.evaluate`): one evaluation worker per
  visible GPU for GPU jobs and one for CPU jobs (`local:N`: N workers, `local:gpus=0,2`: those
  GPUs), each with its next sandbox process started ahead of its job.
- `queue:DIR`: a job file in DIR, evaluated by `forge worker --queue DIR` on a host that shares
  the directory (`forge.evaluator.job_queue`); the controller waits for the result file.
- `ray:ADDRESS`: a Ray task on an existing cluster (`forge.evaluator.ray_executor`).

Every executor's `evaluate` may be called from several threads at once. Add one by adding an
`ExecutorKind` to `EXECUTORS`.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from forge.evaluator.config import EvalConfig
from forge.evaluator.host import EvaluatorError, deadline_for, evaluate, make_sandbox
from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult

log = logging.getLogger("forge.evaluator")

if TYPE_CHECKING:
    from forge.sandbox.base import Sandbox, SandboxJob, SandboxOutcome


class Executor(Protocol):
    def evaluate(self, problem: Problem, source: str, config: EvalConfig) -> EvalResult:
        """The verdict on `source` (raises EvaluatorError when no verdict can be had)."""
        ...

    def close(self) -> None:
        """Release what the executor holds (pre-started workers, queued jobs)."""
        ...


class ExecutorSpecError(ValueError):
    """An `--executor` spec that names no executor, or lacks (or has) an argument."""


@dataclass
class Slot:
    """One evaluation worker of `local`: it runs one job at a time."""

    label: str
    """`gpu 0` (its sandboxes see only that GPU) or `cpu 1`."""
    env: dict[str, str]
    """Added to its sandboxes' environment: CUDA_VISIBLE_DEVICES for a GPU worker."""
    sandbox: Sandbox | None = None
    """Its sandbox, with the next worker process started ahead, for jobs with the executor's own
    sandbox settings (the local backend); other jobs get a sandbox of their own."""


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them: its entries when it
    is set (up to the first invalid one, like CUDA: `-1` hides every GPU), else 0..count-1."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    names = [name.strip() for name in listed.split(",")]
    return list(itertools.takewhile(lambda name: name and not name.startswith("-"), names))


class LocalExecutor:
    """Evaluations on this machine: one evaluation worker per visible GPU for GPU jobs, one for
    CPU jobs (`local:N`: N workers; `local:gpus=LIST`: those GPUs). A job waits for a free
    worker of its device and runs there; `evaluate` may be called from several threads at once.
    Each worker keeps its next sandbox process started ahead of its job (a fresh process per
    job all the same): as the job starts where another job of its device is waiting (`backlog`),
    else as it ends; the static check and the verdict's arithmetic run outside the worker.
    `more_jobs(device)` says whether jobs of `device` wait elsewhere too (a queue directory)."""

    def __init__(
        self,
        config: EvalConfig,
        workers: int | None = None,
        gpus: list[str] | None = None,
        more_jobs: Callable[[str], bool] | None = None,
    ):
        self.config = config
        self.workers = workers
        self.gpus = gpus
        self.more_jobs = more_jobs
        self._pools: dict[str, queue.LifoQueue[Slot]] = {}
        self._slots: list[Slot] = []
        self._waiting: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, argument: str, config: EvalConfig) -> LocalExecutor:
        if argument.startswith("gpus="):
            return cls(config, gpus=argument.removeprefix("gpus=").split(","))
        return cls(config, workers=int(argument) if argument else None)

    def evaluate(
        self,
        problem: Problem,
        source: str,
        config: EvalConfig,
        on_phase: Callable[[str], None] | None = None,
    ) -> EvalResult:
        placed = _PooledSandbox(self, config)
        return evaluate(problem, source, config, sandbox=placed, on_phase=on_phase)

    def pool(self, device: str) -> queue.LifoQueue[Slot]:
        """The free workers of `device` (made at its first job): the last freed is taken first,
        so that a lone caller keeps one warm worker."""
        with self._lock:
            if device not in self._pools:
                slots = self._gpu_slots() if device == "cuda" else self._cpu_slots()
                prestart = self.config.sandbox == "local"
                backlog = functools.partial(self.backlog, device)
                for slot in slots:
                    if prestart:
                        slot.sandbox = make_sandbox(
                            self.config, slot.env, prestart=True, backlog=backlog
                        )
                self._slots += slots
                free: queue.LifoQueue[Slot] = queue.LifoQueue()
                for slot in reversed(slots):
                    free.put(slot)
                self._pools[device] = free
            return self._pools[device]

    def take(self, device: str) -> Slot:
        """A free worker of `device`, waiting (counted in `waiting`) while every one is busy."""
        free = self.pool(device)
        try:
            return free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            self._waiting[device] += 1
        try:
            return free.get()
        finally:
            with self._lock:
                self._waiting[device] -= 1

    def waiting(self, device: str) -> int:
        """The jobs of `device` waiting for a free worker of this executor."""
        with self._lock:
            return self._waiting[device]

    def backlog(self, device: str) -> bool:
        """Whether another job of `device` is already waiting: for a worker of this executor,
        or (`more_jobs`) elsewhere."""
        return self.waiting(device) > 0 or (self.more_jobs is not None and self.more_jobs(device))

    def _cpu_slots(self) -> list[Slot]:
        return [Slot(f"cpu {i}", {}) for i in range(self.workers or 1)]

    def _gpu_slots(self) -> list[Slot]:
        visible = visible_gpus()
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"CUDA_VISIBLE_DEVICES={shown}" if shown is not None else f"{len(visible)} GPUs"
        if self.gpus is not None:
            unknown = [name for name in self.gpus if name not in visible]
            if unknown:
                raise EvaluatorError(
                    f"local:gpus={','.join(self.gpus)}: GPU {unknown[0]} is not visible here "
                    f"({where})"
                )
            chosen = self.gpus
        elif self.workers is not None:
            if self.workers > len(visible):
                raise EvaluatorError(
                    f"local:{self.workers} asks for {self.workers} GPU workers, this machine has "
                    f"{len(visible)} ({where})"
                )
            chosen = visible[: self.workers]
        else:
            chosen = visible
        if not chosen:
            raise EvaluatorError(f"no GPU for a GPU evaluation worker here ({where})")
        return [Slot(f"gpu {name}", {"CUDA_VISIBLE_DEVICES": name}) for name in chosen]

    def start_ahead(self, device: str) -> None:
        """Start the sandbox process (runner included) of the worker that the next job of
        `device` gets, before any job comes (a resident `forge worker`); without this, a worker's
        first job starts its own. Waits while every worker of `device` is busy."""
        free = self.pool(device)
        slot = free.get()
        try:
            if slot.sandbox is not None:
                slot.sandbox.start_ahead(gpu=device == "cuda")
        except OSError as exc:
            raise EvaluatorError(f"the sandbox of worker '{slot.label}' failed: {exc}") from exc
        finally:
            free.put(slot)

    def serves(self, config: EvalConfig) -> bool:
        """Whether its workers' pre-started sandboxes fit a job evaluated with `config`."""
        return config.sandbox == self.config.sandbox and config.cache_dir == self.config.cache_dir

    def close(self) -> None:
        with self._lock:
            for slot in self._slots:
                if slot.sandbox is not None:
                    slot.sandbox.close()


class _PooledSandbox:
    """The sandbox `evaluate` is given by LocalExecutor: each job waits for a free worker of its
    device, runs in that worker's sandbox and frees it again, also when the run fails."""

    def __init__(self, executor: LocalExecutor, config: EvalConfig):
        self.executor, self.config = executor, config

    def run(self, job: SandboxJob, on_phase: Callable[[str], None] | None = None) -> SandboxOutcome:
        device = "cuda" if job.gpu else "cpu"
        slot = self.executor.take(device)
        free = self.executor.pool(device)
        held_from = time.time()
        try:
            sandbox = slot.sandbox
            if sandbox is None or not self.executor.serves(self.config):
                sandbox = make_sandbox(self.config, slot.env)
            progress = {"on_phase": on_phase} if on_phase is not None else {}
            outcome = sandbox.run(job, **progress)
            held_until = time.time()
        except OSError as exc:
            raise EvaluatorError(f"the sandbox of worker '{slot.label}' failed: {exc}") from exc
        finally:
            free.put(slot)
        placement = {"worker": slot.label, "held_from": held_from, "held_until": held_until}
        outcome.info = outcome.info.model_copy(update=placement)
        return outcome


def record_queue_wait(result: EvalResult, elapsed_s: float) -> EvalResult:
    """`result` with `phase_seconds.detail['queue_wait']`: of the `elapsed_s` from the
    controller's submission of the job to its answer (the controller's own clock), what the
    evaluation itself did not take (its total, and the worker's pool wait when it had one):
    the wait for a worker, and the job's and the answer's way through the queue."""
    seconds = result.phase_seconds
    waited = elapsed_s - seconds.total - seconds.detail.get("worker_wait", 0.0)
    seconds.detail["queue_wait"] = max(0.0, waited)
    return result


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
            withdrawn = self.queue.withdraw_orphans()
        except OSError as exc:
            raise EvaluatorError(f"cannot use queue directory {directory}: {exc}") from exc
        if withdrawn:
            log.info(
                "%s: withdrew %d jobs of controllers on this host that have exited",
                directory,
                len(withdrawn),
            )
        self.stale_s = STALE_S if stale_s is None else stale_s
        self.poll_s = poll_s
        self.consumed: set[str] = set()
        self.waiting: set[str] = set()
        self._lock = threading.Lock()  # the sets, for callers on several threads

    @classmethod
    def from_spec(cls, argument: str, config: EvalConfig) -> QueueExecutor:
        return cls(Path(argument))

    def evaluate(self, problem: Problem, source: str, config: EvalConfig) -> EvalResult:
        from forge.evaluator.job_queue import QueueJob

        job = QueueJob.create(problem, source, config)
        running_s = deadline_for(problem, source, config) + CLAIMED_MARGIN_S
        submitted = time.monotonic()
        try:
            self.queue.submit(job)
            with self._lock:
                self.waiting.add(job.id)
            answer = self._wait(job, config.queue_wait_s, running_s)
        except OSError as exc:
            raise EvaluatorError(f"queue directory {self.queue.root}: {exc}") from exc
        finally:
            with self._lock:
                self.waiting.discard(job.id)
                self.consumed.add(job.id)
            self.queue.forget(job.id)
            self.queue.drop_results(self._answered())
        if answer.result is None:
            raise EvaluatorError(f"worker {answer.worker} could not evaluate: {answer.error}")
        return record_queue_wait(answer.result, time.monotonic() - submitted)

    def _wait(self, job, queue_wait_s: float, running_s: float):  # noqa: ANN001, ANN202
        queue, device = self.queue, job.config.device
        since, holder, deaths, missing = time.monotonic(), None, 0, 0
        while True:
            answer = queue.take_result(job.id)
            if answer is not None:
                return answer
            queue.requeue_stale(self.stale_s)
            queue.drop_results(self._answered())
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
                    flag, where = ("", " where the GPU is")
                    if device != "cuda":
                        flag, where = f" --device {device}", ""
                    raise EvaluatorError(
                        f"no worker took evaluation job {job.id} from {queue.root} within "
                        f"{queue_wait_s:.0f} s: run `forge worker --queue {queue.root}{flag}`"
                        f"{where} (it serves until Ctrl-C; add --drain to process what is "
                        "pending and exit)"
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

    def _answered(self) -> set[str]:
        with self._lock:
            return set(self.consumed)

    def close(self) -> None:
        """Withdraw the jobs still waiting for a worker (a stopped run needs no verdict)."""
        with self._lock:
            waiting = list(self.waiting)
        for job_id in waiting:
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
    """Its evaluations use this machine's devices: runs in flight together (a batch's items)
    share one executor, whose pool gives each device one evaluation at a time."""
    on_this_machine: bool = False
    """Whether the evaluations run on the controller's machine (its GPU is the one to name in
    the Coder's prompt)."""


def _local_workers(argument: str) -> str:
    if not argument:
        return ""
    if argument.isdigit() and int(argument) > 0:
        return str(int(argument))
    key, equals, value = argument.partition("=")
    names = [name.strip() for name in value.split(",")]
    if key == "gpus" and equals and all(names) and len(set(names)) == len(names):
        return "gpus=" + ",".join(names)
    raise ExecutorSpecError(
        "the local executor takes a number of workers or a list of distinct GPUs "
        f"(local:4, local:gpus=0,2), got 'local:{argument}'"
    )


def _directory(argument: str) -> str:
    if not argument:
        raise ExecutorSpecError("the queue executor needs a directory: queue:DIR")
    return os.path.abspath(os.path.expanduser(argument))


def _ray_address(argument: str) -> str:
    if argument in ("", "auto"):
        return "auto"
    host, colon, port = argument.rpartition(":")
    if not (host and colon and port.isdigit()):
        raise ExecutorSpecError(
            f"the ray executor takes auto or the cluster's HOST:PORT (ray:10.0.0.5:6379), "
            f"got 'ray:{argument}'"
        )
    return argument


def _ray_executor(argument: str, config: EvalConfig) -> Executor:
    from forge.evaluator.ray_executor import RayExecutor

    return RayExecutor(argument)


EXECUTORS: dict[str, ExecutorKind] = {
    "local": ExecutorKind(
        "local[:N|:gpus=LIST]",
        _local_workers,
        LocalExecutor.from_spec,
        shares_device=True,
        on_this_machine=True,
    ),
    "queue": ExecutorKind("queue:DIR", _directory, QueueExecutor.from_spec),
    "ray": ExecutorKind("ray[:auto|:HOST:PORT]", _ray_address, _ray_executor),
}
"""The executors by name: the part of a spec before its first colon."""


def check_spec(spec: str) -> str:
    """`spec` normalised (a queue directory made absolute, a Ray address made explicit);
    ExecutorSpecError names the known ones when it is not usable."""
    name, colon, argument = spec.partition(":")
    kind = EXECUTORS.get(name)
    if kind is None:
        known = ", ".join(k.usage for k in EXECUTORS.values())
        raise ExecutorSpecError(f"unknown executor '{spec}': use one of {known}")
    normalised = kind.argument(argument)
    return f"{name}:{normalised}" if normalised else name


def shares_device(spec: str) -> bool:
    """Whether runs evaluating through `spec` must share one executor (`ExecutorKind`)."""
    return EXECUTORS[check_spec(spec).partition(":")[0]].shares_device


def on_this_machine(spec: str) -> bool:
    """Whether the executor `spec` names evaluates on the controller's machine."""
    return EXECUTORS[check_spec(spec).partition(":")[0]].on_this_machine


def make_executor(config: EvalConfig) -> Executor:
    """The executor `config.executor` names, ready to evaluate."""
    name, _, argument = check_spec(config.executor).partition(":")
    return EXECUTORS[name].build(argument, config)
