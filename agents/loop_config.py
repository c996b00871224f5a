"""The settings of one optimize run (`LoopConfig`), stored with the run and reused by
`--resume`; `forge.agents.loop` plays them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from forge.agents.interfaces import LLMOptions
from forge.evaluator.config import EvalConfig
from forge.evaluator.executors import ExecutorSpecError, check_spec, on_this_machine


class LoopConfig(BaseModel):
    """Settings of one `forge optimize` run (stored with the run; `--resume` reuses them)."""

    backend: Literal["triton", "cuda"] = "triton"
    """Kernel backend the Coder writes."""

    rounds: int = Field(8, ge=1)
    """Rounds per trajectory, round 0 included; each round yields at most
    `candidates_per_round` candidates."""

    candidates_per_round: int = Field(1, ge=1)
    """Coder answers per round, all to the same prompt (one plan), each evaluated (best-of-N;
    needs a model that samples: not temperature 0). The trajectory goes on from the best: the
    fastest at the target sets by device time; without timings (cpu) the first that passed.
    The Judge sees all of them, one line each, and the kept one in full."""

    autotune_configs: bool = True
    """A candidate may declare `CONFIGS`, a list of configs (flat dicts of literal ints, strings
    and bools) it reads as `CONFIG`: each is evaluated as a candidate of its own and the answer's
    result is its best (`forge.agents.configs`). Off: the prompts do not mention it and
    `CONFIGS` is plain code."""

    max_configs: int = Field(8, ge=1)
    """Most configs a candidate's `CONFIGS` may list (more is a rejection the Coder is told of)."""

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

    sol_stop: float | None = Field(0.95, gt=0, le=1)
    """Stop a trajectory once its best candidate runs at this fraction of the speed of light
    (the roofline floor) at the target sets, geometric mean: what is left is within the noise of
    the bound (None: never). The Judge is shown the headroom and this threshold."""

    min_gain: float = Field(0.02, ge=0)
    """A faster correct candidate counts as progress (for `patience`) and becomes what its
    trajectory builds on only if its speedup is this fraction higher. The run's best is the
    fastest trusted candidate, by any margin."""

    memory_examples: int = Field(1, ge=0)
    """Verified kernels of similar operators, from earlier runs and the library, that the first
    Coder prompt shows as examples (`forge.agents.memory`); with none found, or 0 here, the
    fixed example of another operator."""

    history: int = Field(8, ge=0)
    """Most recent attempts shown to the agents as the search's history."""

    technique_hints: bool = True
    """Offer the Judge the technique catalogue (`forge.agents.techniques`) to name in its plans
    (the Coder then gets the named technique's how-to)."""

    judge_turns: int = Field(4, ge=1)
    """Judge prompts per conversation: a trajectory's Judge prompts form one conversation
    (rules, operator and target GPU stated once, at its start) of at most this many turns, then
    a fresh one starts; 1 sends every Judge prompt on its own."""

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
        target_gpu: str | None = None,
        sampling: dict[str, object] | None = None,
        search: dict[str, object] | None = None,
    ) -> LoopConfig:
        """The settings of a new run from a user's options (None: not given, the default);
        `patience` 0 means never, `sampling` holds LLMOptions fields for Coder and Judge,
        `search` the `SEARCH_SETTINGS` given (`parse_search`). Raises ExecutorSpecError for an
        executor that names none, and for a `target_gpu` that is unknown or given to an executor
        that evaluates on this machine (which detects its GPU)."""
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
        if target_gpu is not None:
            evaluation.target_gpu = checked_target_gpu(target_gpu, evaluation)
        return cls(
            backend=backend,
            coder=LLMOptions(**llm),
            judge=LLMOptions(**llm),
            evaluation=evaluation,
            budget_usd=budget_usd,
            gpu_budget_s=gpu_budget_s,
            time_limit_s=time_limit_s,
            **chosen,
            **(search or {}),
        )


SEARCH_SETTINGS = (
    "autotune_configs",
    "candidates_per_round",
    "judge_turns",
    "max_configs",
    "memory_examples",
    "sol_stop",
    "technique_hints",
)
"""The search's settings `--search NAME=VALUE` may set (to compare them, say)."""


class SearchSettingError(ValueError):
    """A `--search NAME=VALUE` that names no search setting or gives it a bad value."""


def parse_search(pairs: list[str]) -> dict[str, object]:
    """`["judge_turns=1", "sol_stop=none"]` -> their values, checked against LoopConfig's
    fields (`none` sets an optional one to None)."""
    chosen: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = (part.strip() for part in pair.partition("="))
        if not sep or name not in SEARCH_SETTINGS:
            raise SearchSettingError(
                f"--search expects NAME=VALUE with NAME one of {', '.join(SEARCH_SETTINGS)}, "
                f"got '{pair}'"
            )
        value = None if text.lower() == "none" else text
        try:
            checked = LoopConfig.model_validate({name: value})
        except ValidationError as exc:
            raise SearchSettingError(f"--search {pair}: {exc.errors()[0]['msg']}") from None
        chosen[name] = getattr(checked, name)
    return chosen


def checked_target_gpu(name: str, evaluation: EvalConfig) -> str:
    """`name` as the known GPU's full name, for an executor whose workers run elsewhere."""
    from forge.agents.coder import named_gpu

    if on_this_machine(evaluation.executor):
        raise ExecutorSpecError(
            f"--gpu names the GPU of a queue:DIR or ray: executor's workers; executor "
            f"{evaluation.executor} evaluates here and detects its GPU: drop --gpu"
        )
    return named_gpu(name).name
