"""The optimize loop: Coder writes, the evaluator judges, the Judge plans, the Coder revises.

Round 0 of a trajectory asks the Coder for a kernel. Each later round looks at the trajectory's
last candidate: if it failed, the Judge diagnoses it and the Coder repairs it; if it passed, the
Judge reads its measurements and plans one optimisation, which the Coder implements. `width`
trajectories run in threads (LLM calls in parallel, evaluations serialized by one device lock).

Ctrl-C (or `stop_soon()`): the steps in flight finish and are recorded, and nothing new starts:
no LLM call (no retry either) and no evaluation; the run ends `interrupted`. A second Ctrl-C
(or `stop_now()`) stops at once: the run is marked `interrupted`, the sandboxed evaluations in
flight are killed, and what the trajectories were doing is dropped unrecorded.

Every LLM call, candidate and evaluation is committed as it happens. Resuming replays a
trajectory from the database: recorded answers are used instead of new calls, stored candidates
and evaluations instead of new ones, and the loop goes on from where the records end.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from pydantic import BaseModel, Field

from forge.agents.coder import Attempt, Coder, GpuSpec, PromptContext
from forge.agents.errors import (
    Converged,
    FormatError,
    InfrastructureFailure,
    LimitReached,
    ResumeError,
    StopTrajectory,
)
from forge.agents.interfaces import LLM, Evaluator, JudgePlan, LLMOptions, Message
from forge.agents.judge import Judge
from forge.agents.llm import (
    LLMError,
    LLMTransientError,
    RecordingModel,
    cost_known,
    resume_model,
    stop_retries_on,
)
from forge.db.models import LLMCall, Run, RunStatus
from forge.db.redact import redact
from forge.db.store import RunStore, Step
from forge.evaluator import EvaluatorError
from forge.evaluator.config import EvalConfig
from forge.evaluator.executors import Executor, check_spec, make_executor
from forge.evaluator.precision import resolve as resolve_precision
from forge.evaluator.problem import Problem, load_problem
from forge.evaluator.result import EvalResult, Status
from forge.sandbox.local import kill_session

log = logging.getLogger("forge.loop")

STOPPING = "stopping after this step (Ctrl-C again to stop now)"
STOPPING_NOW = "stopping now"
UNUSABLE = "unusable answer: "
PASSING = (Status.correct, Status.compiled)


class LoopConfig(BaseModel):
    """Settings of one `forge optimize` run (stored with the run; `--resume` reuses them)."""

    backend: Literal["triton", "cuda"] = "triton"
    """Kernel backend the Coder writes."""

    rounds: int = Field(8, ge=1)
    """Rounds per trajectory, round 0 included; each round yields at most one candidate."""

    width: int = Field(1, ge=1)
    """Independent trajectories run at once."""

    budget_usd: float | None = Field(None, gt=0)
    """Stop starting LLM calls once the run's recorded cost reaches this many dollars."""

    time_limit_s: float | None = Field(None, gt=0)
    """Stop starting rounds after this many seconds of this invocation (a resume starts afresh)."""

    gpu_budget_s: float | None = Field(None, gt=0)
    """Stop starting LLM calls once the run's evaluations have taken this many seconds: the
    wall time each evaluation recorded (`phase_seconds.total`: static check, sandbox start,
    compile, correctness, timing, profiling), not the time a job waited in a queue."""

    patience: int | None = Field(4, ge=1)
    """Stop a trajectory after this many rounds in a row without a new best (None: never)."""

    min_gain: float = Field(0.02, ge=0)
    """A faster correct candidate counts as progress (for `patience`) and becomes what its
    trajectory builds on only if its speedup is this fraction higher. The run's best is the
    fastest trusted candidate, by any margin."""

    history: int = Field(8, ge=0)
    """Most recent attempts shown to the agents as the search's history."""

    coder: LLMOptions = Field(default_factory=LLMOptions)
    """LLM options of the Coder's calls."""

    judge: LLMOptions = Field(default_factory=LLMOptions)
    """LLM options of the Judge's calls (the same token bound as the Coder's: a reasoning
    model spends part of it thinking)."""

    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    """How candidates are evaluated (device, trials, timeouts ...)."""

    @classmethod
    def from_options(
        cls,
        *,
        backend: str | None = None,
        api_base: str | None = None,
        rounds: int | None = None,
        width: int | None = None,
        patience: int | None = None,
        budget_usd: float | None = None,
        gpu_budget_s: float | None = None,
        time_limit_s: float | None = None,
        device: str | None = None,
        executor: str | None = None,
        precision: str | None = None,
        queue_wait_s: float | None = None,
        sampling: dict[str, object] | None = None,
    ) -> LoopConfig:
        """The settings of a new run from a user's options (None: not given, the default);
        `patience` 0 means never, `sampling` holds LLMOptions fields for Coder and Judge.
        Raises ExecutorSpecError for an executor that names none."""
        chosen = {k: v for k, v in {"rounds": rounds, "width": width}.items() if v is not None}
        if patience is not None:
            chosen["patience"] = patience or None
        backend = backend or "triton"
        defaults = cls()
        given = {k: v for k, v in (sampling or {}).items() if v is not None}
        llm = {**defaults.coder.model_dump(), **given, "api_base": api_base}
        evaluation = EvalConfig(device=device or "cuda", backend=backend, precision=precision)
        if queue_wait_s is not None:
            evaluation.queue_wait_s = queue_wait_s
        if executor is not None:
            evaluation.executor = check_spec(executor)
        return cls(
            backend=backend,
            coder=LLMOptions(**llm),
            judge=LLMOptions(**llm),
            evaluation=evaluation,
            budget_usd=budget_usd,
            gpu_budget_s=gpu_budget_s,
            time_limit_s=time_limit_s,
            **chosen,
        )


@dataclass
class Answer:
    call_id: int | None
    text: str
    cost_usd: float
    tokens: int
    replayed: bool


@dataclass
class Evaluated:
    candidate_id: int
    round: int
    kind: str
    source: str
    result: EvalResult
    plan: JudgePlan | None
    replayed: bool = False

    @property
    def passed(self) -> bool:
        return self.result.status in PASSING

    @property
    def speedup(self) -> float | None:
        r = self.result
        return r.speedup_vs_eager if r.timing_meaningful and not r.suspicious else None


@dataclass
class Trajectory:
    index: int
    journal: deque[LLMCall]
    stored: dict[int, Step]
    round: int = 0
    current: Evaluated | None = None
    judged: bool = False
    plan: JudgePlan | None = None
    best: Evaluated | None = None
    rounds_without_gain: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    stop: StopTrajectory | None = None

    @property
    def replaying(self) -> bool:
        return bool(self.journal) or bool(self.stored)

    @property
    def kind(self) -> str:
        if self.current is None:
            return "initial"
        return "optimize" if self.current.passed else "repair"


class Event(BaseModel):
    """Progress of a run, for a live display."""

    kind: Literal["plan", "candidate", "evaluated", "unusable", "stopped"]
    trajectory: int
    round: int
    candidate_id: int | None = None
    status: str = ""
    speedup: float | None = None
    best_candidate_id: int | None = None
    best_speedup: float | None = None
    detail: str = ""
    replayed: bool = False
    cost_usd: float = 0.0
    cost_known: bool = True
    tokens: int = 0


class Outcome(BaseModel):
    """How a run ended, read back from the database."""

    run_id: int
    status: str
    stops: dict[int, str]
    error: str = ""
    candidates: int
    best_candidate_id: int | None
    best_speedup_vs_eager: float | None
    best_speedup_vs_compile: float | None
    cost_usd: float
    cost_known: bool = True
    prompt_tokens: int
    completion_tokens: int
    retryable: bool = False
    """The run failed only because a service failed (`InfrastructureFailure`): not the kernel's
    fault, and resuming it later may succeed."""


def is_improvement(new: Evaluated, best: Evaluated | None, min_gain: float) -> bool:
    """Correct beats compiled beats failed; among correct ones a measured speedup must beat the
    best by `min_gain` (unmeasured speedups, as on the CPU, never displace an earlier best)."""
    if new.result.status not in PASSING or (
        new.result.status is Status.correct and new.result.suspicious
    ):
        return False
    if best is None:
        return True
    if new.result.status is not best.result.status:
        return new.result.status is Status.correct
    if new.speedup is None:
        return False
    return best.speedup is None or new.speedup > best.speedup * (1 + min_gain)


def answered(call: LLMCall) -> bool:
    """A recorded call that returned text (usable or not), as opposed to a failed request."""
    return not call.error or call.error.startswith(UNUSABLE)


class OptimizeLoop:
    def __init__(
        self,
        run_id: int,
        problem: Problem,
        config: LoopConfig,
        coder_model: LLM,
        judge_model: LLM,
        store: RunStore,
        *,
        gpu: GpuSpec | None = None,
        evaluator: Evaluator | None = None,
        executor: Executor | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_interrupt: Callable[[str], None] | None = None,
        device_lock: threading.Lock | None = None,
        halt: Callable[[], str | None] | None = None,
        owns_executor: bool = True,
    ):
        """`device_lock` serialises evaluations (pass one lock to the loops that share a
        device); `halt`, asked before every round and LLM call, returns why the run must stop
        now (a batch's deadline or total budget) or None: the run then ends `interrupted`.
        An `executor` shared with other runs (`owns_executor=False`) is left open at the end."""
        self.run_id = run_id
        self.problem = problem
        self.config = config
        self.store = store
        self.models = {
            "coder": RecordingModel(coder_model, store, run_id, "coder"),
            "judge": RecordingModel(judge_model, store, run_id, "judge"),
        }
        context = PromptContext(
            problem=problem,
            backend=config.backend,
            device=config.evaluation.device,
            gpu=gpu,
            precision=resolve_precision(
                config.evaluation.precision, problem.name, problem.precisions
            ),
        )
        self.coder = Coder(context)
        self.judge = Judge(context)
        self.executor = executor
        self.owns_executor = owns_executor
        if evaluator is None:  # where `config.evaluation.executor` says: local, queue:DIR ...
            self.executor = executor or make_executor(config.evaluation)
            evaluator = partial(self.executor.evaluate, config=config.evaluation)
        self.evaluator = evaluator
        self.on_event = on_event or (lambda event: None)
        self.on_interrupt = on_interrupt or log.warning
        self.device_lock = device_lock or threading.Lock()
        self.halt = halt or (lambda: None)
        self.totals_lock = threading.Lock()
        self.cost_usd = 0.0
        self.cost_known = cost_known(coder_model) and cost_known(judge_model)
        self.tokens = 0
        self.eval_seconds = store.evaluation_seconds(run_id)
        """Recorded evaluation time of the run so far (for `gpu_budget_s`)."""
        self.best: Evaluated | None = None
        self.interrupt = threading.Event()
        """Set by the first Ctrl-C (`stop_soon`): nothing new starts."""
        self.aborted = threading.Event()
        """Set by the second (`stop_now`): the trajectories' threads are abandoned."""
        for model in (coder_model, judge_model):
            stop_retries_on(model, self.interrupt)
        self.started = time.monotonic()

    def run(self) -> Outcome:
        """Play every trajectory to its end. A first Ctrl-C lets the steps in flight finish and
        be recorded and starts nothing new; a second stops at once. Either way the run ends as
        `interrupted`."""
        self.started = time.monotonic()
        futures = [Future() for _ in range(self.config.width)]
        for index, future in enumerate(futures):
            threading.Thread(
                target=self._play, args=(index, future), name=f"trajectory-{index}", daemon=True
            ).start()
        try:
            try:
                wait_interruptibly(futures)
            except KeyboardInterrupt:
                self.stop_soon()
                wait_interruptibly(futures)
        except KeyboardInterrupt:
            return self.stop_now()
        finally:
            if self.executor is not None and self.owns_executor and not self.aborted.is_set():
                self.executor.close()
        return self.finish([f.result() for f in futures])

    def _play(self, index: int, future: Future) -> None:
        """A trajectory's thread (a daemon: a second Ctrl-C must not wait for it)."""
        try:
            future.set_result(self.run_trajectory(index))
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread, re-raised there)
            future.set_exception(exc)

    def stop_soon(self) -> None:
        """The first Ctrl-C: finish the steps in flight, start nothing new."""
        if not self.interrupt.is_set():
            self.interrupt.set()
            self.on_interrupt(STOPPING)

    def stop_now(self) -> Outcome:
        """The second Ctrl-C: mark the run interrupted and kill the evaluations in flight; the
        trajectories' threads are left to die with the process, recording nothing more."""
        self.interrupt.set()
        self.aborted.set()
        self.on_interrupt(STOPPING_NOW)
        kill_sandbox_sessions()
        if self.executor is not None and self.owns_executor:
            self.executor.close()
        run = self.store.finish_run(self.run_id, RunStatus.interrupted, "")
        return self.outcome(run, {})

    def run_trajectory(self, index: int) -> Trajectory:
        traj = self.restore(index)
        while traj.stop is None:
            try:
                self.check_limits(traj)
                self.step(traj)
            except StopTrajectory as stop:
                traj.stop = stop
            except LLMTransientError as error:
                traj.stop = InfrastructureFailure("llm_error", str(error))
            except LLMError as error:
                traj.stop = StopTrajectory("llm_error", str(error))
            except EvaluatorError as error:
                traj.stop = InfrastructureFailure("evaluator_error", str(error))
            except ResumeError as error:
                traj.stop = StopTrajectory("resume_error", str(error))
        self.emit("stopped", traj, detail=str(traj.stop))
        return traj

    def restore(self, index: int) -> Trajectory:
        calls = [c for c in self.store.llm_calls(self.run_id, trajectory=index) if answered(c)]
        stored = {s.candidate.round: s for s in self.store.history(self.run_id, trajectory=index)}
        return Trajectory(index=index, journal=deque(calls), stored=stored)

    def check_limits(self, traj: Trajectory) -> None:
        if self.interrupt.is_set():
            raise StopTrajectory("interrupted")
        if traj.replaying:
            return
        if traj.round >= self.config.rounds:
            raise LimitReached("rounds", f"{self.config.rounds} rounds played")
        if self.config.patience is not None and traj.rounds_without_gain >= self.config.patience:
            raise Converged("patience", f"no new best in {traj.rounds_without_gain} rounds")
        self.check_spending()

    def check_interrupt(self) -> None:
        """Before anything that costs money or device time: nothing new after Ctrl-C."""
        if self.interrupt.is_set():
            raise StopTrajectory("interrupted")

    def check_spending(self) -> None:
        halted = self.halt()
        if halted:
            raise StopTrajectory("interrupted", halted)
        if self.config.budget_usd is not None and self.cost_usd >= self.config.budget_usd:
            raise LimitReached(
                "budget_usd", f"${self.cost_usd:.4f} spent of ${self.config.budget_usd:.4f}"
            )
        gpu_budget = self.config.gpu_budget_s
        if gpu_budget is not None and self.eval_seconds >= gpu_budget:
            raise LimitReached(
                "gpu_budget", f"{self.eval_seconds:.1f} s of evaluation of {gpu_budget:.1f} s"
            )
        elapsed = time.monotonic() - self.started
        if self.config.time_limit_s is not None and elapsed >= self.config.time_limit_s:
            raise LimitReached(
                "time_limit", f"{elapsed:.0f} s elapsed of {self.config.time_limit_s:.0f} s"
            )

    def step(self, traj: Trajectory) -> None:
        if traj.current is not None and not traj.judged:
            traj.plan = self.ask_judge(traj)
            traj.judged = True
        source, call_id = self.ask_coder(traj)
        if source is None:
            self.observe(traj, None)
        else:
            self.observe(traj, self.evaluate(traj, source, call_id))
        traj.round += 1

    def ask_judge(self, traj: Trajectory) -> JudgePlan | None:
        current = traj.current
        history = self.history(traj)
        if current.passed:
            messages = self.judge.optimize(current.source, current.result, history, current.round)
        else:
            messages = self.judge.repair(current.source, current.result, history, current.round)
        plan, answer = self.query(traj, "judge", self.judge, messages, current.candidate_id)
        if plan is not None:
            self.emit(
                "plan",
                traj,
                candidate_id=current.candidate_id,
                detail=plan.plan,
                replayed=answer.replayed,
            )
        return plan

    def ask_coder(self, traj: Trajectory) -> tuple[str | None, int | None]:
        current = traj.current
        if current is None:
            messages = self.coder.initial()
        elif current.passed:
            messages = self.coder.optimize(
                current.source, current.result, traj.plan, self.history(traj), current.round
            )
        else:
            messages = self.coder.repair(
                current.source, current.result, traj.plan, self.history(traj), current.round
            )
        source, answer = self.query(traj, "coder", self.coder, messages)
        return source, answer.call_id

    def query(
        self,
        traj: Trajectory,
        role: str,
        agent: Coder | Judge,
        messages: list[Message],
        candidate_id: int | None = None,
    ):
        for _ in range(2):
            answer = self.ask(traj, role, messages, candidate_id)
            try:
                return agent.parse(answer.text), answer
            except FormatError as error:
                self.record_unusable(traj, answer, error)
                messages = [
                    *messages,
                    Message(role="assistant", content=answer.text),
                    agent.reminder(error),
                ]
        return None, answer

    def ask(
        self, traj: Trajectory, role: str, messages: list[Message], candidate_id: int | None
    ) -> Answer:
        if traj.journal:
            answer = self.replay(traj, role)
        else:
            self.check_interrupt()
            self.check_spending()
            model = self.models[role].bind(
                trajectory=traj.index, round=traj.round, candidate_id=candidate_id
            )
            options = self.config.coder if role == "coder" else self.config.judge
            result = model.complete(messages, options)
            if not result.cost_known:
                self.cost_known = False
            tokens = result.prompt_tokens + result.completion_tokens
            answer = Answer(result.call_id, result.text, result.cost_usd, tokens, replayed=False)
        with self.totals_lock:
            self.cost_usd += answer.cost_usd
            self.tokens += answer.tokens
        return answer

    def replay(self, traj: Trajectory, role: str) -> Answer:
        call = traj.journal.popleft()
        if (call.role, call.round) != (role, traj.round):
            raise ResumeError(
                f"trajectory {traj.index}: the records hold a {call.role} call for round {call.round} "
                f"where the loop expects a {role} call for round {traj.round}"
            )
        tokens = call.prompt_tokens + call.completion_tokens
        return Answer(call.id, call.response_text, call.cost_usd, tokens, replayed=True)

    def record_unusable(self, traj: Trajectory, answer: Answer, error: FormatError) -> None:
        self.store.set_llm_call_error(answer.call_id, UNUSABLE + error.reason)
        self.emit("unusable", traj, detail=error.reason, replayed=answer.replayed)

    def evaluate(self, traj: Trajectory, source: str, coder_call_id: int | None) -> Evaluated:
        stored = traj.stored.pop(traj.round, None)
        parent = traj.current.candidate_id if traj.current else None
        if stored is None:
            self.check_interrupt()  # the Coder's answer is recorded: a resume evaluates it
            candidate_id = self.store.add_candidate(
                self.run_id,
                traj.index,
                traj.round,
                source,
                self.config.backend,
                traj.kind,
                parent_id=parent,
                plan=traj.plan,
            )
            result = None
        else:
            if stored.candidate.source != redact(source):
                raise ResumeError(
                    f"candidate {stored.id} differs from the recorded Coder answer it came from"
                )
            candidate_id, result = stored.id, stored.result
        if coder_call_id is not None:
            self.store.link_llm_call(coder_call_id, candidate_id)
        replayed = result is not None
        self.emit("candidate", traj, candidate_id=candidate_id, replayed=replayed)
        if result is None:
            with self.device_lock:
                self.check_interrupt()
                result = self.evaluator(self.problem, source)
            if self.aborted.is_set():  # its sandbox was killed under it: not a verdict
                raise StopTrajectory("interrupted")
            self.store.add_evaluation(candidate_id, result)
            self.store.update_run_totals(self.run_id)
            with self.totals_lock:
                self.eval_seconds += result.phase_seconds.total
        return Evaluated(candidate_id, traj.round, traj.kind, source, result, traj.plan, replayed)

    def observe(self, traj: Trajectory, evaluated: Evaluated | None) -> None:
        if evaluated is None:
            traj.rounds_without_gain += 1
            traj.attempts.append(
                Attempt(
                    round=traj.round,
                    kind=traj.kind,
                    plan=traj.plan.plan if traj.plan else "",
                    status="no usable code",
                )
            )
            return
        improved = is_improvement(evaluated, traj.best, self.config.min_gain)
        if improved:
            traj.best = evaluated
            traj.rounds_without_gain = 0
        else:
            traj.rounds_without_gain += 1
        traj.current, traj.judged, traj.plan = evaluated, False, None
        result = evaluated.result
        traj.attempts.append(
            Attempt(
                round=evaluated.round,
                kind=evaluated.kind,
                plan=evaluated.plan.plan if evaluated.plan else "",
                status=result.status.value,
                speedup=result.speedup_vs_eager,
                note="" if evaluated.passed else (result.reasons[0] if result.reasons else ""),
            )
        )
        with self.totals_lock:
            if is_improvement(evaluated, self.best, 0.0):
                self.best = evaluated
        self.emit(
            "evaluated",
            traj,
            candidate_id=evaluated.candidate_id,
            status=result.status.value,
            speedup=result.speedup_vs_eager,
            replayed=evaluated.replayed,
        )

    def history(self, traj: Trajectory) -> list[Attempt]:
        best_round = traj.best.round if traj.best else None
        recent = traj.attempts[-self.config.history :] if self.config.history else []
        return [
            a.model_copy(update={"is_best": a.round == best_round and a.status != "no usable code"})
            for a in recent
        ]

    def emit(self, kind: str, traj: Trajectory, **fields: object) -> None:
        with self.totals_lock:
            best = self.best
            totals = {
                "cost_usd": self.cost_usd,
                "cost_known": self.cost_known,
                "tokens": self.tokens,
                "best_candidate_id": best.candidate_id if best else None,
                "best_speedup": best.speedup if best else None,
            }
        self.on_event(Event(kind=kind, trajectory=traj.index, round=traj.round, **totals, **fields))

    def finish(self, trajectories: list[Trajectory]) -> Outcome:
        stops = {t.index: str(t.stop) for t in trajectories}
        reasons = {t.stop.reason for t in trajectories}
        failed = [t.stop for t in trajectories if t.stop.reason.endswith("_error")]
        failures = [str(stop) for stop in failed]
        if "interrupted" in reasons or self.interrupt.is_set():
            status = RunStatus.interrupted
        elif failures:
            status = RunStatus.failed
        else:
            status = RunStatus.finished
        run = self.store.finish_run(self.run_id, status, "; ".join(failures))
        retryable = status is RunStatus.failed and all(
            isinstance(stop, InfrastructureFailure) for stop in failed
        )
        return self.outcome(run, stops, retryable)

    def outcome(self, run: Run, stops: dict[int, str], retryable: bool = False) -> Outcome:
        return Outcome(
            run_id=self.run_id,
            status=run.status,
            stops=stops,
            error=run.error,
            candidates=len(self.store.candidates(self.run_id)),
            best_candidate_id=run.best_candidate_id,
            best_speedup_vs_eager=run.best_speedup_vs_eager,
            best_speedup_vs_compile=run.best_speedup_vs_compile,
            cost_usd=run.cost_usd,
            cost_known=self.cost_known,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
            retryable=retryable,
        )


def kill_sandbox_sessions() -> None:
    """Kill the sandboxed evaluations this process started: each local one runs in a session of
    its own (so a terminal's Ctrl-C does not reach it), led by a child of this process; docker
    ones in containers this process created."""
    if "forge.sandbox.docker" in sys.modules:  # imported only by a run with docker sandboxes
        sys.modules["forge.sandbox.docker"].kill_live_containers()
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid, parent, session = int(entry.name), int(fields[1]), int(fields[3])
        if parent == me and session == pid:
            kill_session(session)


def start(
    problem: Problem,
    config: LoopConfig,
    coder_model: LLM,
    judge_model: LLM,
    store: RunStore,
    **kwargs: object,
) -> OptimizeLoop:
    """A new run, recorded in the database, ready to `run()`. The stored settings leave out the
    compiler cache folder, which a resumed run takes from its own environment. The executor is
    made first: one that cannot be (no Ray, no cluster) leaves nothing recorded."""
    if kwargs.get("evaluator") is None and kwargs.get("executor") is None:
        kwargs["executor"] = make_executor(config.evaluation)
    run_id = store.create_run(
        problem,
        config.model_dump(mode="json", exclude={"evaluation": {"cache_dir"}}),
        coder_model.model_id,
        judge_model.model_id,
        config.backend,
        config.evaluation.device,
    )
    return OptimizeLoop(run_id, problem, config, coder_model, judge_model, store, **kwargs)


def resume(
    run_id: int, coder_model: LLM, judge_model: LLM, store: RunStore, **kwargs: object
) -> OptimizeLoop:
    """A stored run, continued from its records with its stored problem and settings."""
    run = store.get_run(run_id)
    if run.status == RunStatus.finished.value:
        raise ResumeError(
            f"run {run_id} finished ({run.rounds_done} rounds); start a new run instead"
        )
    config = LoopConfig.model_validate(store.run_config(run_id))
    if kwargs.get("evaluator") is None and kwargs.get("executor") is None:
        kwargs["executor"] = make_executor(config.evaluation)
    row = store.problem(run_id)
    problem = load_problem(row.source, row.name)
    resume_model(coder_model, store, run_id, "coder")
    resume_model(judge_model, store, run_id, "judge")
    store.reopen_run(run_id)
    return OptimizeLoop(run_id, problem, config, coder_model, judge_model, store, **kwargs)


def wait_interruptibly(futures: list[Future]) -> None:
    """Wait for `futures` in short slices, so that Ctrl-C reaches the main thread at once."""
    for future in futures:
        while not future.done():
            try:
                future.exception(timeout=0.1)
            except TimeoutError:
                continue
