"""What a report says about a list of runs (one item per run), computed from the database rows
rather than from a run's cached totals, which a run killed mid-step may have left stale.

Definitions (docs/report.md repeats them for readers):

- best kernel: the run's correct, non-suspicious candidate with the highest speedup vs eager
  (`RunStore.best_candidate`); its speedups vs eager and vs torch.compile are the geometric means
  over the problem's target input sets (`EvalResult.speedup_vs_eager`), so both columns describe
  the same kernel.
- speed of light: that kernel's roofline fraction (roofline floor / its median time), geometric
  mean over the target sets; known only where the problem declares FLOP and byte counts and the
  kernel was timed on a GPU.
- verdict: the most advanced verdict any candidate of the run reached (latest evaluation per
  candidate), in the order of `VERDICT_ORDER`; `suspicious` is a correct verdict the evaluator
  flagged (not counted as correct).
- rounds: rounds with an evaluated candidate (the highest such round + 1, as `forge runs` counts).
- tokens, dollars, model seconds: sums over every LLM call of the run (failed calls included).
- evaluation time: the evaluator's wall time (`phase_seconds.total`: static checks, sandbox
  start, compile, correctness, timing, profiling) summed over every evaluation of the run,
  re-evaluations included. On a run with device `cuda` that is the time it held a GPU:
  GPU-minutes; runs on `cpu` are counted apart.
- waiting: the seconds an evaluation waited for a worker before it ran, summed: the `local`
  pool's wait (`phase_seconds.detail['worker_wait']`) and, for `queue:DIR` and `ray`, the
  controller's time from submission to answer less the evaluation's own
  (`detail['queue_wait']`). Not evaluation time.
- wall-time split (`WallSplit`): the wall time of the runs together, from the first run's start
  to the last one's end (a run still going ends at its last recorded LLM call or evaluation),
  cut by what was going on, by priority: at least one evaluation running, else at least one
  evaluation waiting for a worker, else at least one LLM call in flight, else controller/other
  (prompt building, the Judge's bookkeeping, the database, a lock between a run's evaluations).
  The database stores when a call or an evaluation was recorded, i.e. when it ended, so the
  intervals are derived: an LLM call is [created_at - latency_s, created_at]; an evaluation is
  [created_at - phase_seconds.total, created_at]; its wait is the `worker_wait` + `queue_wait`
  seconds just before that (for `local` the wait came after the static check, a few
  milliseconds, which this puts before it). Intervals are cut to the wall window. The sums of
  the same categories overlap when runs or trajectories go in parallel, so they do not add up
  to the wall time; the split does.
- fast_p (KernelBench): the share of all items whose best kernel is correct and more than p
  times faster than the baseline; a correct kernel without timings is not fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from pydantic import BaseModel, Field, computed_field
from sqlalchemy.engine import Engine

import forge
from forge.db.models import utcnow
from forge.db.store import (
    RecordNotFound,
    RunStore,
    Step,
    ensure_datetime,
    recorded_seconds,
)
from forge.evaluator.result import EvalResult, Status, geomean

VERDICT_ORDER = (
    "correct",
    "suspicious",
    "compiled",
    "incorrect",
    "runtime_error",
    "timeout",
    "rejected",
    "compile_error",
)
"""Verdicts from the most to the least advanced."""
NOT_EVALUATED = "not evaluated"
FAST_P = (1.0, 1.5, 2.0)
"""The fast_p thresholds the summary counts."""
GPU_DEVICES = ("cuda",)
WAITS = ("worker_wait", "queue_wait")
"""The `phase_seconds.detail` entries that count an evaluation's wait for a worker."""

Interval = tuple[float, float]
"""(start, end) in Unix seconds."""


class ReportError(Exception):
    """Nothing to report, or runs that are not in the database (one-line message)."""


class RoundPoint(BaseModel):
    """The best measured kernel of a run up to and including one round."""

    round: int
    speedup_vs_eager: float | None = Field(
        description="best speedup vs eager of a correct, non-suspicious candidate so far"
    )
    speedup_vs_compile: float | None = Field(description="that same candidate's vs compile")


class Item(BaseModel):
    """One run of the report."""

    run_id: int
    op: str
    dtype: str
    backend: str
    device: str
    gpu_name: str
    coder_model: str
    judge_model: str
    status: str = Field(description="the run's status: finished | failed | interrupted | running")
    verdict: str = Field(description="the most advanced verdict reached (VERDICT_ORDER)")
    best_candidate_id: int | None
    speedup_vs_eager: float | None
    speedup_vs_compile: float | None
    speed_of_light: float | None = Field(description="roofline fraction of the best kernel")
    target_sets: list[str]
    rounds: int
    candidates: int
    evaluations: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    llm_seconds: float = Field(description="LLM call latency, summed")
    eval_seconds: float = Field(description="evaluator wall time, summed over all evaluations")
    wait_seconds: float = Field(description="evaluations' wait for a worker (WAITS), summed")
    started_at: datetime
    finished_at: datetime | None
    error: str
    progress: list[RoundPoint] = Field(description="best measured kernel after each round")

    @computed_field
    @property
    def correct(self) -> bool:
        return self.best_candidate_id is not None

    @computed_field
    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @computed_field
    @property
    def on_gpu(self) -> bool:
        return self.device in GPU_DEVICES

    @computed_field
    @property
    def eval_minutes(self) -> float:
        return self.eval_seconds / 60

    @computed_field
    @property
    def wall_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @computed_field
    @property
    def label(self) -> str:
        return f"run {self.run_id} {self.op}"

    def fast(self, p: float, baseline: str) -> bool:
        """fast_p for this item: correct and more than `p` times faster than `baseline`."""
        value = getattr(self, f"speedup_vs_{baseline}")
        return self.correct and value is not None and value > p


class FastP(BaseModel):
    """How many items are correct and faster than p x the baseline."""

    p: float
    vs_eager: int
    vs_compile: int


class Summary(BaseModel):
    """Totals over the items and the fast_p-style shares."""

    items: int
    correct: int
    timed: int = Field(description="correct items whose best kernel has a speedup vs eager")
    fast: list[FastP]
    geomean_vs_eager: float | None = Field(description="over correct items with a speedup")
    geomean_vs_eager_n: int
    geomean_vs_compile: float | None
    geomean_vs_compile_n: int
    rounds: int
    candidates: int
    evaluations: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    llm_seconds: float
    wait_seconds: float = Field(description="evaluations' wait for a worker, summed")
    gpu_seconds: float = Field(description="evaluation time of the runs on a GPU")
    other_eval_seconds: float = Field(description="evaluation time of the runs on the CPU")
    cost_per_correct: float | None = Field(description="dollars per correct kernel")
    cost_per_fast: float | None = Field(description="dollars per fast_1 kernel (vs eager)")

    @computed_field
    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @computed_field
    @property
    def gpu_minutes(self) -> float:
        return self.gpu_seconds / 60

    @computed_field
    @property
    def other_eval_minutes(self) -> float:
        return self.other_eval_seconds / 60

    def share(self, count: int) -> float | None:
        return count / self.items if self.items else None


class WallSplit(BaseModel):
    """The runs' wall time cut by what was going on, by priority (the module's definitions)."""

    started_at: datetime = Field(description="the first run's start")
    ended_at: datetime = Field(description="the last run's end")
    evaluating_seconds: float = Field(description="at least one evaluation running")
    waiting_seconds: float = Field(description="else at least one evaluation waiting for a worker")
    model_seconds: float = Field(description="else at least one LLM call in flight")
    other_seconds: float = Field(description="else: the controller's own work, or nothing")

    @computed_field
    @property
    def wall_seconds(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()

    def share(self, seconds: float) -> float | None:
        return seconds / self.wall_seconds if self.wall_seconds > 0 else None


class ReportData(BaseModel):
    """Everything a report shows; `write_report` renders it."""

    title: str
    meta: dict[str, str] = Field(description="shown under the title (batch id, suite, ...)")
    generated_at: datetime
    forge_version: str
    run_ids: list[int]
    items: list[Item]
    summary: Summary
    wall: WallSplit = Field(description="the runs' wall time split into model, wait, evaluation")


class Activity:
    """When a run's LLM calls, evaluations and evaluations' waits went on (derived intervals)."""

    def __init__(self, calls: Sequence, evaluations: Sequence):  # LLMCall, Evaluation rows
        self.model: list[Interval] = []
        self.evaluating: list[Interval] = []
        self.waiting: list[Interval] = []
        for call in calls:
            end = ensure_datetime(call.created_at).timestamp()
            self.model.append((end - call.latency_s, end))
        for evaluation in evaluations:
            end = ensure_datetime(evaluation.created_at).timestamp()
            seconds = json.loads(evaluation.result_json).get("phase_seconds", {})
            start = end - seconds.get("total", 0.0)
            waited = sum(seconds.get("detail", {}).get(name, 0.0) for name in WAITS)
            self.evaluating.append((start, end))
            if waited > 0:
                self.waiting.append((start - waited, start))

    @property
    def last_end(self) -> float | None:
        ends = [end for _, end in self.model + self.evaluating]
        return max(ends, default=None)


def covered(intervals: Iterable[Interval]) -> float:
    """Seconds covered by the union of `intervals`."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def split_wall(
    started_at: datetime,
    ended_at: datetime,
    evaluating: list[Interval],
    waiting: list[Interval],
    model: list[Interval],
) -> WallSplit:
    """The window [started_at, ended_at] cut by priority: evaluating, else waiting, else model,
    else other (each interval clipped to the window)."""
    lo, hi = started_at.timestamp(), ended_at.timestamp()

    def clip(intervals: list[Interval]) -> list[Interval]:
        return [(max(a, lo), min(b, hi)) for a, b in intervals if min(b, hi) > max(a, lo)]

    evaluating, waiting, model = clip(evaluating), clip(waiting), clip(model)
    busy = covered(evaluating)
    busy_or_waiting = covered(evaluating + waiting)
    any_ = covered(evaluating + waiting + model)
    return WallSplit(
        started_at=started_at,
        ended_at=ended_at,
        evaluating_seconds=busy,
        waiting_seconds=busy_or_waiting - busy,
        model_seconds=any_ - busy_or_waiting,
        other_seconds=max(0.0, hi - lo) - any_,
    )


def wall_split(runs: Sequence, activities: Sequence[Activity]) -> WallSplit:
    """The split of the runs' wall time: from the first start to the last end, a run without an
    end (still going, or killed) ending at its last recorded call or evaluation."""
    starts, ends = [], []
    for run, activity in zip(runs, activities, strict=True):
        started = ensure_datetime(run.started_at)
        starts.append(started)
        if run.finished_at is not None:
            ends.append(ensure_datetime(run.finished_at))
        elif activity.last_end is not None:
            ends.append(datetime.fromtimestamp(activity.last_end, started.tzinfo))
        else:
            ends.append(started)
    started_at = min(starts)
    ended_at = max(max(ends), started_at)
    return split_wall(
        started_at,
        ended_at,
        [i for a in activities for i in a.evaluating],
        [i for a in activities for i in a.waiting],
        [i for a in activities for i in a.model],
    )


def build_report(
    source: RunStore | Engine,
    run_ids: list[int],
    title: str | None = None,
    meta: dict[str, object] | None = None,
) -> ReportData:
    """The report of `run_ids` (in that order) from the database behind `source` (a store, or an
    engine, which is only read). Raises `ReportError` for an empty list, a run listed twice or
    runs that do not exist (all of them named in one line)."""
    store = source if isinstance(source, RunStore) else RunStore(source, read_only=True)
    ids = _checked_ids(run_ids)
    runs, missing = [], []
    for run_id in ids:
        try:
            runs.append(store.get_run(run_id))
        except RecordNotFound:
            missing.append(run_id)
    if missing:
        names = ", ".join(str(i) for i in missing)
        raise ReportError(
            f"no run {names} in the database (`forge runs` lists them)"
            if len(missing) == 1
            else f"no runs {names} in the database (`forge runs` lists them)"
        )
    records = [(store.llm_calls(run.id), store.evaluations(run.id)) for run in runs]
    items = [_item(store, run, *record) for run, record in zip(runs, records, strict=True)]
    activities = [Activity(*record) for record in records]
    listed = ", ".join(str(i) for i in ids)
    return ReportData(
        title=title or f"Forge report: run{'s' if len(ids) > 1 else ''} {listed}",
        meta={str(k): str(v) for k, v in (meta or {}).items()},
        generated_at=utcnow(),
        forge_version=forge.__version__,
        run_ids=ids,
        items=items,
        summary=summarize(items),
        wall=wall_split(runs, activities),
    )


def _checked_ids(run_ids: list[int]) -> list[int]:
    if not run_ids:
        raise ReportError("no runs to report: give at least one run id (`forge runs` lists them)")
    seen: set[int] = set()
    for run_id in run_ids:
        if run_id in seen:
            raise ReportError(f"run {run_id} is listed twice")
        seen.add(run_id)
    return list(run_ids)


def _item(store: RunStore, run, calls: Sequence, evaluations: Sequence) -> Item:  # noqa: ANN001
    steps = store.history(run.id)
    evaluated = [s for s in steps if s.result is not None]
    best = store.best_candidate(run.id)
    result = best.result if best is not None else None
    rounds = max((s.candidate.round for s in evaluated), default=-1) + 1
    return Item(
        run_id=run.id,
        op=run.op,
        dtype=store.problem(run.id).dtype,
        backend=run.backend,
        device=run.device,
        gpu_name=run.gpu_name,
        coder_model=run.coder_model,
        judge_model=run.judge_model,
        status=run.status,
        verdict=best_verdict(evaluated),
        best_candidate_id=best.id if best is not None else None,
        speedup_vs_eager=result.speedup_vs_eager if result else None,
        speedup_vs_compile=result.speedup_vs_compile if result else None,
        speed_of_light=speed_of_light(result) if result else None,
        target_sets=list(result.target_sets) if result else [],
        rounds=rounds,
        candidates=len(steps),
        evaluations=len(evaluations),
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        completion_tokens=sum(c.completion_tokens for c in calls),
        cost_usd=sum(c.cost_usd for c in calls),
        llm_seconds=sum(c.latency_s for c in calls),
        eval_seconds=recorded_seconds(evaluations),
        wait_seconds=waited_seconds(evaluations),
        started_at=ensure_datetime(run.started_at),
        finished_at=ensure_datetime(run.finished_at),
        error=run.error,
        progress=progress(evaluated, rounds),
    )


def waited_seconds(evaluations: Iterable) -> float:
    """The evaluations' waits for a worker (WAITS), summed."""
    total = 0.0
    for evaluation in evaluations:
        detail = json.loads(evaluation.result_json).get("phase_seconds", {}).get("detail", {})
        total += sum(detail.get(name, 0.0) for name in WAITS)
    return total


def _verdict(step: Step) -> str:
    result: EvalResult = step.result  # type: ignore[assignment]
    if result.status is Status.correct and result.suspicious:
        return "suspicious"
    return result.status.value


def best_verdict(evaluated: list[Step]) -> str:
    verdicts = {_verdict(s) for s in evaluated}
    return next((v for v in VERDICT_ORDER if v in verdicts), NOT_EVALUATED)


def speed_of_light(result: EvalResult) -> float | None:
    """Geometric mean of the roofline fraction over the target sets that have one."""
    fractions = [
        t.roofline_fraction
        for t in result.timings
        if (t.target or t.input_set in result.target_sets) and t.roofline_fraction is not None
    ]
    return geomean(fractions)


def _measured_correct(step: Step) -> bool:
    r = step.result
    return r is not None and r.passed and not r.suspicious and r.speedup_vs_eager is not None


def progress(evaluated: list[Step], rounds: int) -> list[RoundPoint]:
    """After each round, the best measured correct kernel so far (None before the first)."""
    points: list[RoundPoint] = []
    best: EvalResult | None = None
    for round_ in range(rounds):
        for step in evaluated:
            result = step.result
            if step.candidate.round != round_ or not _measured_correct(step):
                continue
            if best is None or result.speedup_vs_eager > best.speedup_vs_eager:
                best = result
        points.append(
            RoundPoint(
                round=round_,
                speedup_vs_eager=best.speedup_vs_eager if best else None,
                speedup_vs_compile=best.speedup_vs_compile if best else None,
            )
        )
    return points


def summarize(items: list[Item]) -> Summary:
    correct = [i for i in items if i.correct]
    vs_eager = [i.speedup_vs_eager for i in correct if i.speedup_vs_eager is not None]
    vs_compile = [i.speedup_vs_compile for i in correct if i.speedup_vs_compile is not None]
    cost = sum(i.cost_usd for i in items)
    fast_1 = sum(i.fast(1.0, "eager") for i in items)
    return Summary(
        items=len(items),
        correct=len(correct),
        timed=len(vs_eager),
        fast=[
            FastP(
                p=p,
                vs_eager=sum(i.fast(p, "eager") for i in items),
                vs_compile=sum(i.fast(p, "compile") for i in items),
            )
            for p in FAST_P
        ],
        geomean_vs_eager=geomean(vs_eager),
        geomean_vs_eager_n=len(vs_eager),
        geomean_vs_compile=geomean(vs_compile),
        geomean_vs_compile_n=len(vs_compile),
        rounds=sum(i.rounds for i in items),
        candidates=sum(i.candidates for i in items),
        evaluations=sum(i.evaluations for i in items),
        prompt_tokens=sum(i.prompt_tokens for i in items),
        completion_tokens=sum(i.completion_tokens for i in items),
        cost_usd=cost,
        llm_seconds=sum(i.llm_seconds for i in items),
        wait_seconds=sum(i.wait_seconds for i in items),
        gpu_seconds=sum(i.eval_seconds for i in items if i.on_gpu),
        other_eval_seconds=sum(i.eval_seconds for i in items if not i.on_gpu),
        cost_per_correct=cost / len(correct) if correct else None,
        cost_per_fast=cost / fast_1 if fast_1 else None,
    )
