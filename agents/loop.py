"""The optimize loop: Coder writes, the evaluator judges, the Judge plans, the Coder revises.

Round 0 of a trajectory asks the Coder for a kernel, with the best verified kernel of a similar
operator as its example (`forge.agents.memory`). Each later round looks at the candidate the
trajectory goes on from: if it failed, the Judge diagnoses it and the Coder repairs it; if it
passed, the Judge reads its measurements and plans one optimisation, which the Coder implements.
A round asks the Coder `candidates_per_round` times and goes on from the best answer; an answer
that declares `CONFIGS` is evaluated once per config and its result is its best config
(`forge.agents.configs`). The Judge's prompts of a trajectory form one conversation
(`forge.agents.judge.Conversation`). A trajectory stops at its round limit, after `patience`
rounds without a new best, or once its best is within `sol_stop` of the speed of light. `width`
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

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from pydantic import BaseModel

from forge.agents.coder import Attempt, Coder, GpuSpec, PromptContext
from forge.agents.configs import ConfigError, ConfigTrial, Variant, variants
from forge.agents.errors import (
    Converged,
    FormatError,
    InfrastructureFailure,
    LimitReached,
    ResumeError,
    StopTrajectory,
)
from forge.agents.interfaces import LLM, Evaluator, JudgePlan, Message
from forge.agents.judge import Conversation, Judge
from forge.agents.llm import (
    LLMError,
    LLMTransientError,
    RecordingModel,
    cost_known,
    resume_model,
    stop_retries_on,
)
from forge.agents.loop_config import LoopConfig
from forge.agents.memory import examples_for
from forge.db.models import LLMCall, Run, RunStatus
from forge.db.redact import redact
from forge.db.store import RunStore, Step
from forge.evaluator import EvaluatorError
from forge.evaluator.executors import Executor, make_executor
from forge.evaluator.precision import resolve as resolve_precision
from forge.evaluator.problem import Problem, load_problem
from forge.evaluator.result import Environment, EvalResult, Status, geomean
from forge.sandbox.local import kill_session

log = logging.getLogger("forge.loop")

STOPPING = "stopping after this step (Ctrl-C again to stop now)"
STOPPING_NOW = "stopping now"
UNUSABLE = "unusable answer: "
UNTRIABLE = "autotune configs: "
PASSING = (Status.correct, Status.compiled)


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
    configs: list[ConfigTrial] = field(default_factory=list)
    """Every config of the answer it is the best config of (none when it declared none)."""

    @property
    def rank(self) -> tuple[int, float]:
        """Its place among one round's candidates (higher is better): trusted correct, then
        compiled, then suspicious correct, then failed; then less device time at the target
        sets (a tie on cpu, where nothing is timed, which keeps the first)."""
        r = self.result
        tier = {Status.correct: 3 if not r.suspicious else 1, Status.compiled: 2}
        ms = self.target_ms
        return tier.get(r.status, 0), -ms if ms is not None else float("-inf")

    @property
    def passed(self) -> bool:
        return self.result.status in PASSING

    @property
    def speedup(self) -> float | None:
        r = self.result
        return r.speedup_vs_eager if r.timing_meaningful and not r.suspicious else None

    @property
    def target_ms(self) -> float | None:
        """Device time per call at the target sets (geometric mean), when its timings are
        trusted."""
        targets = [t.candidate.median_ms for t in self.result.timings if t.target]
        return geomean(targets) if self.speedup is not None and targets else None

    @property
    def speed_of_light(self) -> float | None:
        """Its fraction of the roofline at the target sets, when its timings are trusted."""
        return self.result.roofline_at_targets if self.speedup is not None else None


@dataclass
class Trajectory:
    index: int
    journal: deque[LLMCall]
    stored: dict[int, deque[Step]]
    """Recorded candidates not yet replayed, per round, in the order they were made."""
    round: int = 0
    current: Evaluated | None = None
    judged: bool = False
    plan: JudgePlan | None = None
    best: Evaluated | None = None
    rounds_without_gain: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    stop: StopTrajectory | None = None
    conversation: Conversation = field(default_factory=Conversation)

    @property
    def replaying(self) -> bool:
        return bool(self.journal) or bool(self.stored)

    def take_stored(self) -> Step | None:
        """The next recorded candidate of this round, when there is one."""
        waiting = self.stored.get(self.round)
        if not waiting:
            return None
        step = waiting.popleft()
        if not waiting:
            del self.stored[self.round]
        return step

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


def first_reason(result: EvalResult) -> str:
    """Why a verdict does not count: its first failure, or why its speed is not trusted."""
    if result.status not in PASSING:
        return result.reasons[0] if result.reasons else ""
    return result.suspicious_reasons[0] if result.suspicious and result.suspicious_reasons else ""


def config_choice(evaluated: Evaluated) -> str:
    """Which of its answer's configs a candidate is, and why it was kept ("" without configs)."""
    kept = next((c for c in evaluated.configs if c.kept), None)
    if kept is None:
        return ""
    if kept.device_ms is not None:
        why = "the fastest correct one"
    elif evaluated.passed:
        why = "the first that passed (nothing is timed here)"
    else:
        why = "none passed"
    return f"config {kept.index} of {len(evaluated.configs)} kept: {why}"


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
        device); without one, an executor's own placement decides what runs at once (a
        candidate's configs are submitted together), and a bare `evaluator` runs one at a time;
        `halt`, asked before every round and LLM call, returns why the run must stop
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
            sol_stop=config.sol_stop,
            max_configs=config.max_configs if config.autotune_configs else None,
        )
        self.coder = Coder(context)
        self.judge = Judge(context, None if config.technique_hints else [])
        self.examples = examples_for(
            store, problem, config.backend, context.precision, run_id, config.memory_examples
        )
        self.executor = executor
        self.owns_executor = owns_executor
        if evaluator is None:  # where `config.evaluation.executor` says: local, queue:DIR ...
            self.executor = executor or make_executor(config.evaluation)
            evaluator = partial(self.executor.evaluate, config=config.evaluation)
        self.evaluator = evaluator
        self.on_event = on_event or (lambda event: None)
        self.on_interrupt = on_interrupt or log.warning
        self.device_lock = device_lock or (
            contextlib.nullcontext() if self.executor is not None else threading.Lock()
        )
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
        stored: dict[int, deque[Step]] = {}
        for step in self.store.history(self.run_id, trajectory=index):
            stored.setdefault(step.candidate.round, deque()).append(step)
        return Trajectory(
            index=index,
            journal=deque(calls),
            stored=stored,
            conversation=Conversation(max_turns=self.config.judge_turns),
        )

    def check_limits(self, traj: Trajectory) -> None:
        if self.interrupt.is_set():
            raise StopTrajectory("interrupted")
        if traj.replaying:
            return
        if traj.round >= self.config.rounds:
            raise LimitReached("rounds", f"{self.config.rounds} rounds played")
        if self.config.patience is not None and traj.rounds_without_gain >= self.config.patience:
            raise Converged("patience", f"no new best in {traj.rounds_without_gain} rounds")
        self.check_speed_of_light(traj)
        self.check_spending()

    def check_speed_of_light(self, traj: Trajectory) -> None:
        best, stop_at = traj.best, self.config.sol_stop
        reached = best.speed_of_light if best is not None else None
        if stop_at is not None and reached is not None and reached >= stop_at:
            raise Converged(
                "speed_of_light",
                f"candidate {best.candidate_id} runs at {reached:.0%} of the speed of light at "
                f"the target sets (the run stops a trajectory at {stop_at:.0%})",
            )

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
        produced = [self.attempt(traj) for _ in range(self.config.candidates_per_round)]
        self.observe(traj, produced)
        traj.round += 1

    def attempt(self, traj: Trajectory) -> Evaluated | None:
        """One candidate of the round: the Coder's answer to the round's prompt, evaluated
        (None when no answer was usable); an answer with `CONFIGS`, its best config."""
        source, call_id = self.ask_coder(traj)
        if source is None:
            return None
        try:
            pinned = (
                variants(source, self.config.max_configs) if self.config.autotune_configs else None
            )
        except ConfigError as error:
            return self.evaluate(traj, source, call_id, self.untriable(str(error)))
        if pinned is None:
            return self.evaluate(traj, source, call_id)
        return self.autotune(traj, pinned, call_id)

    def autotune(
        self, traj: Trajectory, pinned: list[Variant], coder_call_id: int | None
    ) -> Evaluated:
        """Every config as a candidate of its own; the best (by `Evaluated.rank`: the fastest
        trusted correct one, on cpu the first correct one) stands for the answer."""
        recorded = [
            self.record_candidate(
                traj, v.source, coder_call_id, detail=f"config {v.index} of {len(pinned)}"
            )
            for v in pinned
        ]
        with ThreadPoolExecutor(len(pinned), thread_name_prefix="config") as pool:
            tried = list(
                pool.map(
                    lambda pair: self.finish_evaluation(traj, pair[0].source, *pair[1]),
                    zip(pinned, recorded, strict=True),
                )
            )
        kept = max(tried, key=lambda e: e.rank)
        if coder_call_id is not None:
            self.store.link_llm_call(coder_call_id, kept.candidate_id)
        kept.configs = [
            ConfigTrial(
                index=variant.index,
                config=variant.config,
                candidate_id=e.candidate_id,
                status=e.result.status.value,
                device_ms=e.target_ms,
                note=first_reason(e.result),
                kept=e is kept,
            )
            for variant, e in zip(pinned, tried, strict=True)
        ]
        return kept

    def untriable(self, reason: str) -> EvalResult:
        """The verdict on an answer whose `CONFIGS` the evaluator cannot try: rejected, with
        the reason, as the evaluator rejects a static-check violation."""
        return EvalResult(
            status=Status.rejected,
            reasons=[UNTRIABLE + reason],
            problem=self.problem.name,
            backend=self.config.backend,
            environment=Environment(device=self.config.evaluation.device),
        )

    def ask_judge(self, traj: Trajectory) -> JudgePlan | None:
        current = traj.current
        ask = self.judge.optimize if current.passed else self.judge.repair
        this_round = [a for a in self.history(traj) if a.round == current.round]
        messages = ask(
            current.source,
            current.result,
            self.history(traj),
            current.round,
            traj.conversation,
            this_round,
            current.configs,
        )
        plan, answer = self.query(traj, "judge", self.judge, messages, current.candidate_id)
        if plan is not None:
            traj.conversation.record(messages, answer.text, current.source, current.round)
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
            messages = self.coder.initial(self.examples)
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

    def evaluate(
        self,
        traj: Trajectory,
        source: str,
        coder_call_id: int | None,
        verdict: EvalResult | None = None,
        detail: str = "",
    ) -> Evaluated:
        """`source` recorded as a candidate and evaluated (or given `verdict`, known without
        evaluating it); a recorded one's stored verdict when replaying. `detail`: what the
        progress display says of it."""
        recorded = self.record_candidate(traj, source, coder_call_id, detail)
        return self.finish_evaluation(traj, source, *recorded, verdict=verdict)

    def record_candidate(
        self, traj: Trajectory, source: str, coder_call_id: int | None, detail: str = ""
    ) -> tuple[int, EvalResult | None]:
        """`source` stored as the round's next candidate (the recorded one when replaying):
        its id, and its stored verdict if it has one."""
        stored = traj.take_stored()
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
        self.emit("candidate", traj, candidate_id=candidate_id, replayed=replayed, detail=detail)
        return candidate_id, result

    def finish_evaluation(
        self,
        traj: Trajectory,
        source: str,
        candidate_id: int,
        result: EvalResult | None,
        verdict: EvalResult | None = None,
    ) -> Evaluated:
        replayed = result is not None
        if result is None:
            result = verdict or self.evaluate_on_device(source)
            if self.aborted.is_set():  # its sandbox was killed under it: not a verdict
                raise StopTrajectory("interrupted")
            self.store.add_evaluation(candidate_id, result)
            self.store.update_run_totals(self.run_id)
            with self.totals_lock:
                self.eval_seconds += result.phase_seconds.total
        return Evaluated(candidate_id, traj.round, traj.kind, source, result, traj.plan, replayed)

    def evaluate_on_device(self, source: str) -> EvalResult:
        with self.device_lock:
            self.check_interrupt()
            return self.evaluator(self.problem, source)

    def observe(self, traj: Trajectory, produced: list[Evaluated | None]) -> None:
        """Record a round's candidates; the trajectory goes on from the best of them."""
        for evaluated in produced:
            self.record_attempt(traj, evaluated)
        evaluated = [e for e in produced if e is not None]
        if not evaluated:
            traj.rounds_without_gain += 1
            return
        kept = max(evaluated, key=lambda e: e.rank)  # the first of equals: cpu keeps the first
        if is_improvement(kept, traj.best, self.config.min_gain):
            traj.best = kept
            traj.rounds_without_gain = 0
        else:
            traj.rounds_without_gain += 1
        traj.current, traj.judged, traj.plan = kept, False, None

    def record_attempt(self, traj: Trajectory, evaluated: Evaluated | None) -> None:
        """One line of the history; the run's best and the live display follow it."""
        plan = traj.plan.plan if traj.plan else ""
        if evaluated is None:
            traj.attempts.append(
                Attempt(round=traj.round, kind=traj.kind, plan=plan, status="no usable code")
            )
            return
        result = evaluated.result
        traj.attempts.append(
            Attempt(
                round=evaluated.round,
                kind=evaluated.kind,
                plan=plan,
                status=result.status.value,
                speedup=result.speedup_vs_eager,
                device_ms=evaluated.target_ms,
                note="" if evaluated.passed else (result.reasons[0] if result.reasons else ""),
                candidate_id=evaluated.candidate_id,
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
            detail=config_choice(evaluated),
        )

    def history(self, traj: Trajectory) -> list[Attempt]:
        best = traj.best.candidate_id if traj.best else None
        kept = traj.current.candidate_id if traj.current else None
        recent = traj.attempts[-self.config.history :] if self.config.history else []
        return [
            a.model_copy(
                update={
                    "is_best": a.candidate_id is not None and a.candidate_id == best,
                    "kept": a.candidate_id is not None and a.candidate_id == kept,
                }
            )
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
