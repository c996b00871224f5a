"""The agents' interfaces, in one place. Implementations: `forge.agents.llm` (LiteLLMModel,
ScriptedModel), `forge.evaluator.evaluate` (Evaluator), `forge.db.store` (RunStore)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, Field

from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult


class LLMOptions(BaseModel):
    """Options of one LLM call.

    The sampling options (`SAMPLING_OPTIONS`) are sent only when set, and only where the model
    takes them: litellm knows which parameters (and values) each model accepts, and a reasoning
    model's refusal of, say, `temperature` drops it instead of failing the call. None leaves the
    choice to the provider.
    """

    temperature: float | None = Field(None, ge=0)
    """Sampling temperature (None: the provider's default)."""
    top_p: float | None = Field(None, ge=0, le=1)
    """Nucleus sampling mass (None: the provider's default)."""
    reasoning_effort: str | None = None
    """Reasoning effort of a reasoning model, e.g. `low`, `medium`, `high` (None: its default)."""
    max_tokens: int | None = Field(8192, ge=1)
    """Upper bound on generated tokens, reasoning tokens included (None: the provider's)."""
    timeout_s: float = 300.0
    """Per-call timeout."""
    retries: int = 4
    """Retries on rate limits, 5xx, timeouts and lost connections (exponential backoff); a
    request that cannot succeed (bad key, bad request, unknown model) is never retried."""
    backoff_s: float = 2.0
    """First backoff delay; doubles on each retry."""
    api_base: str | None = None
    """Base URL of an OpenAI-compatible server (`--api-base`)."""


SAMPLING_OPTIONS = ("temperature", "top_p", "reasoning_effort", "max_tokens")
"""The LLMOptions fields sent to the provider as request parameters of the same name."""


class Message(BaseModel):
    role: str
    content: str


class LLMResponse(BaseModel):
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0


class LLM(Protocol):
    model_id: str

    def complete(self, messages: list[Message], options: LLMOptions) -> LLMResponse: ...


class Evaluator(Protocol):
    def __call__(self, problem: Problem, source: str) -> EvalResult: ...


class JudgePlan(BaseModel):
    """What the Judge returns after reading the evidence (validated JSON)."""

    diagnosis: str = Field(description="what is wrong or what limits speed, citing the evidence")
    bottleneck: str = Field(
        "", description="memory | compute | latency | occupancy | correctness | ..."
    )
    plan: str = Field(description="one concrete change for the Coder to make next")
    expected_gain: str = Field("", description="what should move and by how much")
    technique: str = Field(
        "", description="the name of the listed technique the plan applies, or empty for none"
    )
