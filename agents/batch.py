"""Batches: many problems optimized unattended, each item by an optimize run of its own.

`create_batch` stores a batch and its items (each with its problem and the settings of its run);
`BatchRunner(...).run()` plays the items, highest priority first (suite order among equals),
`concurrency` of them at once in threads: their LLM calls overlap while evaluations run, and
items whose evaluations use this machine's devices share one executor (`local`: its pool gives
each GPU one evaluation at a time, so no item times its kernels while another evaluates there). Each item's run is an ordinary `forge.agents.loop` run, held by its run lease; the
batch is held by its own lease.

An item ends as one of:
- `finished`: its run finished (rounds, patience or its own budget ended it);
- `failed`: its run failed for a reason not worth retrying (a refused LLM request, a script
  error), or for infrastructure reasons (`Outcome.retryable`: the LLM provider unreachable after
  its retries, no evaluation verdict) more than `max_retries` times; until then it is put back
  in the queue and its run resumed;
- `stopped`: a batch limit (deadline, total dollars or GPU time) cut its run; the batch stops,
  and `--resume` continues the run;
- `interrupted`: Ctrl-C.

A wrong kernel is a verdict, not a failure: its run goes on. Each item that finishes, fails or
is stopped ends by promoting its run's verified best candidate under the library's rules
(`forge.db.library.promote_best`); what entered the library, or why nothing did, is stored
with the item.

Resume (`forge batch --resume B`, after a crash, Ctrl-C or kill -9): finished and failed items
are left alone; an item with a run resumes that run from its records (nothing is asked or
evaluated twice); the others start.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlmodel import Session, col, select

from forge.agents import loop
from forge.agents.coder import GpuSpec
from forge.agents.errors import ResumeError
from forge.agents.llm import ScriptError, check_credentials, get_model, resolve_models
from forge.agents.suite import ItemSettings, Suite
from forge.db.batches import FINAL, BatchStore
from forge.db.library import promote_best
from forge.db.models import (
    Batch,
    BatchItem,
    BatchStatus,
    ItemStatus,
    Run,
    RunStatus,
    utcnow,
)
from forge.db.store import Lease, RecordNotFound, RunLeased, ensure_datetime
from forge.evaluator import EvaluatorError
from forge.evaluator.config import EvalConfig
from forge.evaluator.executors import Executor, make_executor, shares_device
from forge.evaluator.precision import resolve as resolve_precision
from forge.evaluator.problem import Problem, ProblemError, load_problem
from forge.kernels_library.storage import LibraryError

STOPPED_BY_CTRL_C = "Ctrl-C"


class BatchSettings(BaseModel):
    """Batch-wide settings, stored with the batch (`--resume` may replace them)."""

    concurrency: int = Field(1, ge=1)
    """Items whose runs are in flight at once."""
    max_retries: int = Field(2, ge=0)
    """Times an item whose run failed for infrastructure reasons is resumed before it counts
    as failed."""


@dataclass
class Limits:
    """What stops the whole batch (`stopped`; `--resume` continues it)."""

    budget_usd: float | None = None
    """Dollars of LLM calls of all items' runs together."""
    budget_gpu_s: float | None = None
    """Seconds of evaluation of all items' runs together (recorded wall time)."""
    deadline: datetime | None = None
    """Nothing new starts after this moment (UTC)."""


@dataclass
class PlannedItem:
    """An item before it is stored: its problem and the settings of its run."""

    label: str
    problem: Problem
    config: loop.LoopConfig
    coder_model: str
    judge_model: str
    priority: int = 0


class BatchError(ValueError):
    """A batch that cannot be run or resumed as asked; the message names the fix."""


@dataclass
class Models:
    """Model names from the command line (None: not given)."""

    model: str | None = None
    coder_model: str | None = None
    judge_model: str | None = None

    def choose(self, stored: dict) -> tuple[str, str]:
        """(coder, judge) of an item whose stored config names its models: these replace them."""
        return (
            self.coder_model or self.model or stored["coder_model"],
            self.judge_model or self.model or stored["judge_model"],
        )

    def for_item(self, settings: ItemSettings) -> tuple[str, str]:
        """(coder, judge) of a new item: its own, else these, else $FORGE_MODEL."""
        return resolve_models(
            self.model,
            settings.coder_model or settings.model or self.coder_model,
            settings.judge_model or settings.model or self.judge_model,
        )


def check_models(names: list[tuple[str, str]], api_base: str | None) -> None:
    """Each (model, role) usable: its provider's key present, a scripted file readable."""
    for name, role in dict.fromkeys(names):
        check_credentials(name, api_base)
        get_model(name, role)


def plan_items(suite: Suite, options: dict, models: Models) -> list[PlannedItem]:
    """Each item's run settings: the item's own (a TOML suite), else `options` (the command
    line's `LoopConfig.from_options` arguments), else Forge's defaults. Problems must fit the
    device and models be usable (checked here, before anything is stored)."""
    planned = []
    for entry in suite.entries:
        s = entry.settings
        own = {
            "backend": s.backend,
            "rounds": s.rounds,
            "width": s.width,
            "patience": s.patience,
            "budget_usd": s.budget_usd,
            "gpu_budget_s": s.budget_gpu_hours * 3600 if s.budget_gpu_hours else None,
            "time_limit_s": s.time_limit,
            "precision": s.precision,
        }
        chosen = {k: v for k, v in own.items() if v is not None}
        config = loop.LoopConfig.from_options(**{**options, **chosen})
        entry.problem.sets_for(config.evaluation.device)
        resolve_precision(config.evaluation.precision, entry.problem.name, entry.problem.precisions)
        coder, judge = models.for_item(s)
        check_models([(coder, "coder"), (judge, "judge")], config.coder.api_base)
        planned.append(
            PlannedItem(entry.label, entry.problem, config, coder, judge, s.priority or 0)
        )
    return planned


def reopen(
    batches: BatchStore,
    batch_id: int,
    limits: Limits,
    concurrency: int | None,
    max_retries: int | None,
    models: Models,
) -> Lease:
    """Hold a stored batch for `--resume`, with the limits and settings given anew (those
    not given stay as stored). Refused for a finished batch, a deadline that has passed and
    was not replaced, a model that cannot be used, or a batch another process runs."""
    stored = batches.get(batch_id)
    if stored.status == BatchStatus.finished.value:
        raise BatchError(
            f"batch {batch_id} finished (`forge batches {batch_id}` shows it); start a new one"
        )
    passed = ensure_datetime(stored.deadline_at)
    if limits.deadline is None and passed is not None and passed <= utcnow():
        raise BatchError(
            f"batch {batch_id}'s deadline ({passed.astimezone():%Y-%m-%d %H:%M}) has passed: "
            "give --until or --time-limit for this session"
        )
    for item in batches.items(batch_id):
        if item.status not in FINAL:
            config = json.loads(item.config_json)
            coder, judge = models.choose(config)
            check_models([(coder, "coder"), (judge, "judge")], config["loop"]["coder"]["api_base"])
    lease = batches.acquire_lease(batch_id)
    settings = BatchSettings.model_validate_json(stored.settings_json)
    if concurrency is not None:
        settings.concurrency = concurrency
    if max_retries is not None:
        settings.max_retries = max_retries
    changes = {
        "settings_json": settings.model_dump_json(),
        "budget_usd": limits.budget_usd,
        "budget_gpu_s": limits.budget_gpu_s,
        "deadline_at": limits.deadline,
    }
    batches.update(batch_id, **{k: v for k, v in changes.items() if v is not None})
    return lease


def item_config(planned: PlannedItem) -> str:
    """The JSON stored with an item: its run's settings (without the compiler cache folder,
    which a run takes from its environment) and models."""
    return json.dumps(
        {
            "loop": planned.config.model_dump(mode="json", exclude={"evaluation": {"cache_dir"}}),
            "coder_model": planned.coder_model,
            "judge_model": planned.judge_model,
        },
        sort_keys=True,
    )


def create_batch(
    batches: BatchStore,
    name: str,
    suite: str,
    settings: BatchSettings,
    limits: Limits,
    planned: list[PlannedItem],
) -> Batch:
    """Store a batch with its items, all `pending`."""
    items = [
        BatchItem(
            batch_id=0,
            position=index,
            label=p.label,
            problem_id=batches.runs.store_problem(p.problem),
            config_json=item_config(p),
            priority=p.priority,
            budget_usd=p.config.budget_usd,
            budget_gpu_s=p.config.gpu_budget_s,
        )
        for index, p in enumerate(planned)
    ]
    batch = Batch(
        name=name,
        suite=suite,
        settings_json=settings.model_dump_json(),
        budget_usd=limits.budget_usd,
        budget_gpu_s=limits.budget_gpu_s,
        deadline_at=limits.deadline,
    )
    return batches.create(batch, items)


def run_order(items: list[BatchItem]) -> list[BatchItem]:
    """Highest priority first, then suite order."""
    return sorted(items, key=lambda i: (-i.priority, i.position))


class BatchDisplay:
    """What the runner tells a live display (the CLI's); this one shows nothing."""

    def item_changed(self, item: BatchItem) -> None:
        """An item's status, run or totals changed (the stored row)."""

    def event(self, item: BatchItem, event: loop.Event) -> None:
        """A step of an item's run."""

    def message(self, text: str) -> None:
        """A notice about the whole batch."""


@dataclass
class BatchOutcome:
    batch: Batch
    items: list[BatchItem]


@dataclass
class _Active:
    item: BatchItem
    runner: loop.OptimizeLoop


@dataclass
class BatchRunner:
    batches: BatchStore
    batch_id: int
    models: Models = field(default_factory=Models)
    gpu: GpuSpec | None = None
    display: BatchDisplay = field(default_factory=BatchDisplay)

    def __post_init__(self) -> None:
        self.store = self.batches.runs
        batch = self.batches.get(self.batch_id)
        self.settings = BatchSettings.model_validate_json(batch.settings_json)
        self.limits = Limits(
            batch.budget_usd, batch.budget_gpu_s, ensure_datetime(batch.deadline_at)
        )
        self.lock = threading.Lock()
        self.executors: dict[str, Executor] = {}
        """Executors shared by the items whose evaluations use this machine's devices."""
        self.queue: list[BatchItem] = []
        self.active: dict[int, _Active] = {}
        self.gpu_seconds: dict[int, float] = {}
        """Evaluation seconds of items not in flight (those in flight: their loop's)."""
        self.halt_reason: str | None = None
        self.interrupted = False

    # ------------------------------------------------------------------ run

    def run(self) -> BatchOutcome:
        """Play the batch until every item is final, a batch limit stops it, or Ctrl-C. A first
        Ctrl-C lets the items' steps in flight finish; a second stops at once."""
        self.batches.update(self.batch_id, status=BatchStatus.running.value, stop_reason="")
        items = self.batches.items(self.batch_id)
        for item in items:
            self.gpu_seconds[item.id] = (
                self.store.evaluation_seconds(item.run_id) if item.run_id else 0.0
            )
        self.queue = run_order([i for i in items if i.status not in FINAL])
        self.halted()  # a deadline already past, a budget already spent: nothing starts
        workers = [Future() for _ in range(min(self.settings.concurrency, len(self.queue)))]
        for index, future in enumerate(workers):
            threading.Thread(
                target=self._work, args=(future,), name=f"batch-worker-{index}", daemon=True
            ).start()
        try:
            try:
                loop.wait_interruptibly(workers)
            except KeyboardInterrupt:
                self.stop_soon()
                loop.wait_interruptibly(workers)
        except KeyboardInterrupt:
            return self.stop_now()
        finally:
            self.close_executors()
        for future in workers:
            future.result()  # a bug in a worker surfaces here
        return self.finish()

    def shared_executor(self, evaluation: EvalConfig) -> Executor | None:
        """One executor per distinct local setting for the items that use this machine's
        devices; None where each run keeps its own (a queue, a Ray cluster)."""
        if not shares_device(evaluation.executor):
            return None
        key = evaluation.model_dump_json(include={"executor", "device", "sandbox", "cache_dir"})
        with self.lock:
            if key not in self.executors:
                self.executors[key] = make_executor(evaluation)
            return self.executors[key]

    def close_executors(self) -> None:
        with self.lock:
            executors, self.executors = list(self.executors.values()), {}
        for executor in executors:
            executor.close()

    def _work(self, future: Future) -> None:
        try:
            while (item := self.next_item()) is not None:
                self.play(item)
            future.set_result(None)
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread, re-raised there)
            future.set_exception(exc)

    def next_item(self) -> BatchItem | None:
        with self.lock:
            if self.interrupted or self.halted() or not self.queue:
                return None
            return self.queue.pop(0)

    def stop_soon(self) -> None:
        with self.lock:
            self.interrupted = True
            runners = [a.runner for a in self.active.values()]
        self.display.message(
            "stopping after the steps in flight (Ctrl-C again to stop now); "
            f"continue with `forge batch --resume {self.batch_id}`"
        )
        for runner in runners:
            runner.stop_soon()

    def stop_now(self) -> BatchOutcome:
        with self.lock:
            self.interrupted = True
            active = list(self.active.values())
        for entry in active:
            entry.runner.stop_now()
            self._set(entry.item, status=ItemStatus.interrupted.value, **self._totals(entry.item))
        return self.finish()

    def finish(self) -> BatchOutcome:
        items = self.batches.items(self.batch_id)
        if self.interrupted:
            status, reason = BatchStatus.interrupted, STOPPED_BY_CTRL_C
        elif all(i.status in FINAL for i in items):
            status, reason = BatchStatus.finished, ""
        else:
            status, reason = BatchStatus.stopped, self.halt_reason or "stopped"
        batch = self.batches.update(
            self.batch_id, status=status.value, stop_reason=reason, finished_at=utcnow()
        )
        return BatchOutcome(batch, items)

    # --------------------------------------------------------------- limits

    def halted(self) -> str | None:
        """Why the batch must stop now (kept once found), or None. Asked by every item's run
        before each round and LLM call."""
        if self.halt_reason is None:
            self.halt_reason = self._limit_reached()
        return self.halt_reason

    def _limit_reached(self) -> str | None:
        limits = self.limits
        if limits.deadline is not None and utcnow() >= limits.deadline:
            local = limits.deadline.astimezone().strftime("%Y-%m-%d %H:%M")
            return f"deadline {local} reached"
        if limits.budget_usd is not None:
            spent = self.spent_usd()
            if spent >= limits.budget_usd:
                return f"batch budget spent: ${spent:.4f} of ${limits.budget_usd:.4f}"
        if limits.budget_gpu_s is not None:
            used = self.spent_gpu_s()
            if used >= limits.budget_gpu_s:
                hours = limits.budget_gpu_s / 3600
                return f"batch GPU budget spent: {used / 3600:.4f} of {hours:.4f} GPU-hours"
        return None

    def spent_usd(self) -> float:
        """Dollars recorded for the runs of the batch's items (kept current by every call)."""
        query = (
            select(func.coalesce(func.sum(Run.cost_usd), 0.0))
            .select_from(BatchItem)
            .join(Run, col(Run.id) == col(BatchItem.run_id))
            .where(BatchItem.batch_id == self.batch_id)
        )
        with Session(self.store.engine) as s:
            return float(s.exec(query).one())

    def spent_gpu_s(self) -> float:
        live = {i: a.runner.eval_seconds for i, a in list(self.active.items())}
        return sum(live.get(i, seconds) for i, seconds in self.gpu_seconds.items())

    # ----------------------------------------------------------------- items

    def play(self, item: BatchItem) -> None:
        """One session of an item's run: start or resume it, play it, settle the item."""
        item = self._set(
            item,
            status=ItemStatus.running.value,
            attempts=item.attempts + 1,
            started_at=item.started_at or utcnow(),
            error="",
        )
        lease = None
        try:
            runner, lease = self._open(item)
        except (ResumeError, ScriptError, ProblemError, RecordNotFound, RunLeased) as exc:
            self.settle(item, RunStatus.failed.value, retryable=False, error=str(exc))
            return
        except EvaluatorError as exc:
            self.settle(item, RunStatus.failed.value, retryable=True, error=str(exc))
            return
        if runner is None:  # its run had finished before a crash could record it here
            self.settle(item, RunStatus.finished.value, retryable=False, error="")
            return
        item = self.batches.item(item.id)
        with self.lock:
            self.active[item.id] = _Active(item, runner)
            if self.interrupted:
                runner.interrupt.set()
        self.display.item_changed(item)
        try:
            with lease:
                outcome = runner.run()
        finally:
            with self.lock:
                self.active.pop(item.id, None)
                self.gpu_seconds[item.id] = runner.eval_seconds
        if runner.aborted.is_set():  # the second Ctrl-C: stop_now settles it
            return
        self.settle(item, outcome.status, outcome.retryable, outcome.error)

    def _open(self, item: BatchItem):  # noqa: ANN202 (OptimizeLoop | None, Lease | None)
        stored = json.loads(item.config_json)
        config = loop.LoopConfig.model_validate(stored["loop"])
        coder_name, judge_name = self.models.choose(stored)
        coder, judge = get_model(coder_name, "coder"), get_model(judge_name, "judge")
        hooks = {
            "gpu": self.gpu,
            "on_event": lambda event: self.display.event(item, event),
            "on_interrupt": lambda _message: None,
            "halt": self.halted,
        }
        if shared := self.shared_executor(config.evaluation):
            hooks.update(executor=shared, owns_executor=False)
        if item.run_id is None:
            row = self.batches.problem(item.problem_id)
            problem = load_problem(row.source, row.name)
            runner = loop.start(problem, config, coder, judge, self.store, **hooks)
            self._set(item, run_id=runner.run_id)
            return runner, self.store.acquire_run_lease(runner.run_id)
        if self.store.get_run(item.run_id).status == RunStatus.finished.value:
            return None, None
        lease = self.store.acquire_run_lease(item.run_id)
        try:
            return loop.resume(item.run_id, coder, judge, self.store, **hooks), lease
        except BaseException:
            lease.release()
            raise

    def settle(self, item: BatchItem, run_status: str, retryable: bool, error: str) -> None:
        """The item's status after a session of its run, its totals, and at its end the
        library promotion of the run's verified best."""
        item = self.batches.item(item.id)
        totals = self._totals(item)
        if run_status == RunStatus.failed.value and retryable:
            if item.retries < self.settings.max_retries:
                item = self._set(
                    item,
                    status=ItemStatus.pending.value,
                    retries=item.retries + 1,
                    error=error,
                    **totals,
                )
                with self.lock:
                    self.queue = run_order([*self.queue, item])
                self.display.message(
                    f"item {item.id} {item.label}: infrastructure failure, retry "
                    f"{item.retries} of {self.settings.max_retries}: {error}"
                )
                return
            error = f"{error} (after {item.retries} retries)"
        if run_status == RunStatus.finished.value:
            status = ItemStatus.finished
        elif run_status == RunStatus.failed.value:
            status = ItemStatus.failed
        elif self.interrupted:
            status = ItemStatus.interrupted
        else:
            status = ItemStatus.stopped
        ended = {"finished_at": utcnow()} if status.value in FINAL else {}
        promotion = {} if status is ItemStatus.interrupted else self._promote(item)
        self._set(item, status=status.value, error=error, **totals, **ended, **promotion)

    def _totals(self, item: BatchItem) -> dict:
        if item.run_id is None:
            return {}
        run = self.store.get_run(item.run_id)
        return {"cost_usd": run.cost_usd, "gpu_seconds": self.gpu_seconds.get(item.id, 0.0)}

    def _promote(self, item: BatchItem) -> dict:
        if item.run_id is None:
            return {"promotion": "nothing promoted: the item never started a run"}
        try:
            entry, reason = promote_best(self.store, item.run_id)
        except LibraryError as exc:
            return {"promotion": f"nothing promoted: {exc}"}
        return {"promotion": reason, "library_entry_id": entry.id if entry else None}

    def _set(self, item: BatchItem, **values: object) -> BatchItem:
        row = self.batches.update_item(item.id, **values)
        self.display.item_changed(row)
        return row
