"""The loop's exceptions. Each carries what the handler needs: a format error carries the LLM's
text and the reason it was unusable (it becomes a reminder for the LLM); a stop carries why the
trajectory ended (it becomes the run's recorded status)."""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agents' exceptions."""


class FormatError(AgentError):
    """The LLM's answer could not be used (no code block, invalid JSON): recorded, retried once."""

    def __init__(self, reason: str, response: str):
        super().__init__(reason)
        self.reason = reason
        self.response = response


class NoCodeBlock(FormatError):
    """The Coder's answer holds no ```python block defining ModelNew."""


class InvalidPlan(FormatError):
    """The Judge's answer is not a JSON object matching JudgePlan."""


class StopTrajectory(AgentError):
    """A trajectory ends; `reason` is recorded (rounds, budget_usd, time_limit, patience, ...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class InfrastructureFailure(StopTrajectory):
    """A service the run depends on failed, not the kernel: the LLM provider after its retries
    (connection, timeout, rate limit, server error) or the evaluator (no verdict could be had).
    The same step may succeed later: a batch retries such runs (`Outcome.retryable`)."""


class LimitReached(StopTrajectory):
    """A configured limit (rounds, dollars, wall clock) is used up."""


class Converged(StopTrajectory):
    """No improvement for `patience` rounds, or the best is within `sol_stop` of the speed of
    light."""


class ResumeError(AgentError):
    """The stored run cannot be continued as asked (unknown id, finished, different problem)."""
