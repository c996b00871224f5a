"""The agents' interfaces, in one place. Implementations: `forge.agents.llm` (LiteLLMModel,
ScriptedModel), `forge.evaluator.evaluate` (Evaluator), `forge.db.store` (RunStore)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, Field

from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult


class LLMOptions(BaseModel):
    """Options of one LLM call."""

    temperature: float = 0.2
    """Sampling temperature."""
    max_tokens: int = 8192
    """Upper bound on generated tokens."""
    timeout_s: float = 300.0
    """Per-call timeout."""
    retries: int = 4
    """Retries on rate limits, 5xx and timeouts (exponential backoff)."""
    backoff_s: float = 2.0
    """First backoff delay; doubles on each retry."""
    api_base: str | None = None
    """Base URL of an OpenAI-compatible server (`--api-base`)."""


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
